"""Study outputs: summary.json, the per-step series and an offline report.html."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulations.report import (
    DASH,
    assumption_rows,
    co2_sentence,
    demand_rows,
    demand_text,
    lead_strategy,
    local_period,
    month_ticks,
    plain_summary,
    strategy_rows,
    typical_week_start,
    verdict,
    write_outputs,
)
from simulations.runner import load_data, run
from simulations.scenario import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


@pytest.fixture(scope="module")
def result():
    base = load_scenario(SCENARIOS / "nam-cau-kien-legacy.yaml")
    data = base.model_dump()
    data["planner"].update(step_minutes=60)
    data["data"].update(start="2026-06-01", days=9)
    scenario = Scenario.model_validate(data)
    scenario._base_dir = base.base_dir
    return run(scenario, strategies=["pv_only", "self_consumption", "perfect_foresight"], data=load_data(scenario))


def test_outputs_are_written_and_consistent(result, tmp_path: Path) -> None:
    paths = write_outputs(result, tmp_path / "out", command="ems simulate x --out y")
    summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
    assert summary["command"] == "ems simulate x --out y"
    assert set(summary["strategies"]) == {"no_system", "pv_only", "self_consumption", "perfect_foresight"}
    assert set(summary["economics"]) == {"pv_only", "self_consumption", "perfect_foresight"}
    pf = summary["strategies"]["perfect_foresight"]
    assert len(pf["monthly_bills"]) == 1 and pf["bill_total_incl_vat"] == pytest.approx(
        sum(m["total"] for m in pf["monthly_bills"]))
    assert summary["economics"]["perfect_foresight"]["finance"]["battery"]["capex"] == pytest.approx(
        1000 * 6_575_000)
    series = pd.read_parquet(paths["timeseries"])
    assert len(series) == 4 * 9 * 24
    assert {"strategy", "start", "battery_kw", "grid_kw", "soc_pct", "period"} <= set(series.columns)
    # each step's start also in the site's time, for a spreadsheet: 00:00 local is 17:00 UTC the day before
    assert list(series.columns[:3]) == ["start", "start_local", "strategy"]
    local = series["start_local"].iloc[0]
    assert str(local.tz) == "Asia/Ho_Chi_Minh" and local == series["start"].iloc[0] and local.hour == 0
    html = paths["report"].read_text(encoding="utf-8")
    assert html.count("<svg") >= 4
    assert "<script" not in html and 'src="http' not in html and "href=\"http" not in html
    for sentence in plain_summary(summary):
        assert sentence.split(":")[0][:30] in html.replace("&#x27;", "'")
    csv_paths = write_outputs(result, tmp_path / "csv", command="c", csv=True)
    assert len(pd.read_csv(csv_paths["timeseries"])) == len(series)


def test_plain_summary_says_what_pays_back(result) -> None:
    text = " ".join(plain_summary(result.summary()))
    assert "PV alone saves" in text and "simple payback" in text
    assert "the battery saves" in text and "full cycles of its usable window" in text
    assert "replacement(s)" not in text


def test_the_energy_left_in_the_battery_is_said_as_an_amount_with_its_direction(result) -> None:
    """A battery ending the period emptier is charged what refilling it costs, said as a positive amount (the
    report said "valued at the cost of refilling it from the grid that is -0.5 million VND, charged against")."""
    summary = copy.deepcopy(result.summary())   # the module's result is shared
    battery = summary["economics"][lead_strategy(summary)]
    battery.update(soc_change_kwh=-400.0, soc_change_value_period=-512_000.0, soc_change_value=-512_000.0)
    text = " ".join(plain_summary(summary))
    assert ("The battery ended the period 400 kWh emptier than it started: refilling it from the grid would cost "
            "0.5 million VND, charged against its savings.") in text
    battery.update(soc_change_kwh=120.0, soc_change_value_period=160_000.0, soc_change_value=600_000.0)
    text = " ".join(plain_summary(summary))
    assert ("The battery ended the period 120 kWh fuller than it started: that energy, worth 0.2 million VND "
            "(0.6 million VND a year in the yearly figures, which scale the period) at the cost of buying it from "
            "the grid, is credited to its savings.") in text


def test_replacements_are_counted_in_words() -> None:
    from simulations.report import _replacements

    assert [_replacements(n) for n in (0, 1, 2)] == ["", " and 1 replacement", " and 2 replacements"]


def test_typical_week_is_a_whole_local_week(result) -> None:
    frame = result.results["pv_only"].frame
    start = typical_week_start(frame, "Asia/Ho_Chi_Minh")
    first = frame.index[start].tz_convert("Asia/Ho_Chi_Minh")
    assert first.day_of_week == 0 and first.hour == 0


def test_typical_week_in_a_time_zone_whose_midnight_is_skipped() -> None:
    # Asunción skipped 00:00–01:00 on Sunday 1 Oct 2023 (it raised ValueError while weeks were found with a
    # time-zone-aware normalize); weekly PV 0.5 / 1 / 2 / 3 kW from Monday 18 Sep: the week holding the 23-hour day
    # is not a whole week of steps, so of 0.5 / 2 / 3 the median week is the one from Monday 2 Oct
    tz = "America/Asuncion"
    index = pd.date_range(pd.Timestamp("2023-09-18", tz=tz), pd.Timestamp("2023-10-16", tz=tz), freq="15min",
                          inclusive="left").tz_convert("UTC")
    wall = index.tz_convert(tz).tz_localize(None)
    pv = np.select([wall < pd.Timestamp(d) for d in ("2023-09-25", "2023-10-02", "2023-10-09")], [0.5, 1.0, 2.0], 3.0)
    start = typical_week_start(pd.DataFrame({"pv_available_kw": pv}, index=index), tz)
    assert index[start].tz_convert(tz) == pd.Timestamp("2023-10-02", tz=tz)


def test_verdict_comes_first_and_follows_the_npv_signs(result, tmp_path: Path) -> None:
    summary = result.summary()
    text = verdict(summary)
    pv = summary["economics"]["pv_only"]["finance"]["system"]
    battery = summary["economics"]["self_consumption"]["finance"]["battery"]
    assert text.startswith("PV pays back in" if pv["npv"] >= 0 else "PV does not pay back at 8 %")
    # led by a strategy a plant can run, not by the perfect-foresight bound
    assert "the battery (run by self-consumption rule)" in text
    if battery["npv"] < 0:
        free = "it would not pay back even if it were free"
        tail = "break-even at" if battery["break_even_per_kwh"] is not None else free
        assert f"does not pay back at 8 % within its 20-year life — {tail}" in text
    else:
        assert "pays back in" in text.split(";")[1]
    html = write_outputs(result, tmp_path / "v", command="c")["report"].read_text(encoding="utf-8")
    body = html[html.index("<body>"):]
    assert body.index('id="verdict"') < body.index("<h2>")


def test_verdict_for_hand_made_figures() -> None:
    def fin(npv: float, disc: float | None) -> dict:
        return {"npv": npv, "discounted_payback_years": disc, "simple_payback_years": 6.0,
                "break_even_per_kwh": 2_500_000.0}

    summary = {"currency": "VND", "assumptions": {"discount_rate_pct": 8.0, "lifetime_years": 20,
                                                  "battery_capex_per_kwh": 6_575_000.0},
               "economics": {"pv_only": {"finance": {"system": fin(1e9, 9.25)}},
                             "mpc": {"finance": {"system": fin(-1e9, None), "battery": fin(-3.22e9, None)}},
                             "perfect_foresight": {"finance": {"system": fin(1e9, 9.0), "battery": fin(1e8, 18.0)}}}}
    text = verdict(summary)
    summary["economics"]["mpc"]["finance"]["battery"]["break_even_per_kwh"] = None
    assert verdict(summary).endswith("— it would not pay back even if it were free.")
    assert text == (
        "PV pays back in 9.2 years at 8 % (6.0 years undiscounted); the battery (run by MPC on forecasts) does not "
        "pay back at 8 % within its 20-year life — break-even at 2.50 million VND/kWh installed against 6.58 "
        "million assumed.")


def test_the_co2_sentence_gives_the_strategy_a_plant_can_run_first() -> None:
    """The Nam Cau Kien report said "up to 720 t a year (self-consumption rule)": the most of any strategy, while
    its verdict quoted the MPC (695 t) and PV alone avoided 694 t."""
    def econ(t: float, battery: bool = True) -> dict:
        return {"co2_avoided_t": t, "finance": {"system": {}, **({"battery": {}} if battery else {})}}

    summary = {"economics": {"pv_only": econ(694.2, battery=False), "self_consumption": econ(720.4),
                             "tou_rule": econ(676.0), "mpc": econ(695.1), "perfect_foresight": econ(696.3)}}
    assert co2_sentence(summary) == (
        "CO2 avoided through lower net grid import: 695 t a year with MPC on forecasts; 694 t a year with PV only; "
        "the most with self-consumption rule: 720 t; battery losses count against it.")
    summary["economics"]["self_consumption"]["co2_avoided_t"] = 600.0     # the most is a bound: named as one
    assert co2_sentence(summary).endswith("the most with perfect foresight (upper bound): 696 t; battery losses "
                                          "count against it.")
    del summary["economics"]["perfect_foresight"]                           # the lead avoids the most: said once
    assert "the most" not in co2_sentence(summary)


def test_period_is_printed_in_local_dates(result, tmp_path: Path) -> None:
    summary = result.summary()
    assert summary["period"]["start"] == "2026-06-01T00:00:00+07:00"
    assert summary["period"]["first_day"] == "2026-06-01" and summary["period"]["last_day"] == "2026-06-09"
    assert local_period(summary).startswith("1 Jun 2026 – 9 Jun 2026 (9 days")
    html = write_outputs(result, tmp_path / "d", command="c")["report"].read_text(encoding="utf-8")
    assert "+00:00" not in html and "T17:00" not in html
    assert "1 Jun 2026 – 9 Jun 2026" in html
    assert "<dc:date>" not in html  # no wall-clock time in the plots either: the same study gives the same report


def test_short_period_warns_in_the_report(result, tmp_path: Path) -> None:
    summary = result.summary()
    assert not summary["period"]["whole_years"]
    assert "9.0 days, shorter than a year" in summary["period"]["warning"]
    html = write_outputs(result, tmp_path / "w", command="c")["report"].read_text(encoding="utf-8")
    assert 'id="period-warning"' in html


def test_never_pays_back_is_a_dash_with_its_reason_everywhere(result, tmp_path: Path) -> None:
    # nine days of summer savings against a 20-year battery: the battery does not pay back undiscounted
    paths = write_outputs(result, tmp_path / "n", command="c")
    summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
    battery = summary["economics"]["self_consumption"]["finance"]["battery"]
    assert battery["npv"] < 0 and battery["discounted_payback_years"] is None
    assert battery["discounted_payback_note"] == "does not pay back at 8 % within the 20-year life"
    if battery["simple_payback_years"] is None:
        assert battery["irr"] is None and battery["irr_note"] == "does not pay back within the 20-year life"
    row = next(r for r in strategy_rows(summary) if r["strategy"] == "self-consumption rule")
    assert row["battery payback, discounted [yr]"] == "> 20"     # not a dash: the dash means "does not apply"
    pv_row = next(r for r in strategy_rows(summary) if r["strategy"] == "PV only")
    assert pv_row["battery payback, discounted [yr]"] is None and pv_row["battery IRR [%]"] is None
    assert pv_row["saving vs PV only [VND/yr]"] is None  # PV only against itself: does not apply (was "0.00")
    html = paths["report"].read_text(encoding="utf-8")
    assert "<td>&gt; 20</td>" in html and f"<td>{DASH}</td>" in html
    # each mark is explained for its own column (the report said "—: does not pay back at 8 % …; —: does not pay
    # back within …" for one dash that also stood for "no battery")
    assert "battery payback, discounted &gt; 20: does not pay back at 8 % within the 20-year life" in html
    assert f"{DASH} elsewhere: does not apply (no battery, or nothing invested)" in html
    if battery["irr"] is None:
        assert f"battery IRR {DASH}: none, the battery does not pay back within the 20-year life" in html
    assert "None" not in html and "nan" not in html.replace("nanum", "")
    assert f"discounted payback at 8 % {DASH} (does not pay back at 8 % within the 20-year life)" in " ".join(
        plain_summary(summary))


def test_assumptions_table_lists_every_cost_and_finance_input(result) -> None:
    summary = result.summary()
    rows = {r["input"]: (r["value"], r["unit"]) for r in assumption_rows(summary)}
    sc = result.scenario
    assert rows["PV installed cost"] == (f"{sc.costs.pv_per_kwp:,.0f}", "VND/kWp")
    assert rows["battery installed cost (energy)"][0] == f"{sc.costs.battery_per_kwh:,.0f}"
    assert rows["battery installed cost (power)"][0] == f"{sc.costs.battery_per_kw:,.0f}"
    assert rows["PV O&M"][0] == f"{sc.costs.pv_om_per_kwp_year:,.0f}"
    assert rows["battery O&M"][0] == f"{sc.costs.battery_om_per_kwh_year:,.0f}"
    assert rows["battery replacement cost"][0] == f"{sc.costs.battery_replacement_pct:g}"
    assert rows["discount rate (nominal)"][0] == "8" and rows["study life"][0] == "20"
    assert rows["electricity price escalation"][0] == "3"
    assert rows["O&M cost escalation"][0] == "3 (= tariff escalation)"
    assert rows["PV degradation"][0] == "0.5"
    assert rows["data"][0].startswith("synthetic year 2026 (seed 7")  # said once, not "synthetic: synthetic …"
    assert rows["random seed"][0] == "7"
    # the study starts on 1 June of a synthetic year: three weeks of the data's own May before it
    assert rows["MPC warm-up history"] == ("21 days before the period: 21 from the data", "")
    assert rows["MPC day-ahead PV forecast"][0] == "none (the built-in forecasts only)"
    costs = set(sc.costs.model_dump()) - {"currency"}
    finance = set(sc.finance.model_dump())
    assert len(costs) + len(finance) <= len(rows)  # every input has a row (names checked above)


def test_report_uses_plain_names(result, tmp_path: Path) -> None:
    html = write_outputs(result, tmp_path / "p", command="c")["report"].read_text(encoding="utf-8")
    for code in ("pv_available", "delta_soc", "battery_losses", ">perfect_foresight<", ">pv_only<"):
        assert code not in html
    assert "battery energy at the end minus at the start [kWh]" in html
    summary = result.summary()
    row = next(r for r in strategy_rows(summary) if r["strategy"] == "perfect foresight (upper bound)")
    usable, nameplate = row["full cycles/yr (usable window)"], row["full cycles/yr (nameplate)"]
    assert usable == pytest.approx(nameplate / 0.85)  # the 10-95 % window is 85 % of the nameplate


def test_a_study_with_mpc_reports_its_forecast_accuracy(tmp_path: Path) -> None:
    base = load_scenario(SCENARIOS / "nam-cau-kien-legacy.yaml")
    data = base.model_dump()
    data["planner"].update(step_minutes=60)
    data["data"].update(start="2026-06-01", days=5)
    scenario = Scenario.model_validate(data)
    scenario._base_dir = base.base_dir
    mpc = run(scenario, strategies=["pv_only", "mpc"], data=load_data(scenario))
    paths = write_outputs(mpc, tmp_path / "out", command="c")
    accuracy = json.loads(paths["summary"].read_text(encoding="utf-8"))["forecast_accuracy"]
    # issued on the 6-hour UTC lattice from a day after the start (persistence needs a day: 1 Jun 18:00 UTC) to the
    # last whose 24 h horizon ends by the period's end (4 Jun 12:00 UTC): 12 issues
    assert accuracy["load"]["issues"] == 12 and accuracy["pv"]["issues"] == 12
    day_ahead = accuracy["pv"]["by_lead"][-1]
    assert day_ahead["lead"] == "12-24 h" and day_ahead["n"] > 0 and day_ahead["mae_kw"] >= 0
    assert day_ahead["skill"] == pytest.approx(1 - day_ahead["mae_kw"] / day_ahead["persistence_mae_kw"], abs=1e-3)
    assert "Forecast accuracy by lead time" in paths["report"].read_text(encoding="utf-8")
    without = json.loads(write_outputs(run(scenario, strategies=["pv_only"], data=load_data(scenario)),
                                       tmp_path / "none", command="c")["summary"].read_text(encoding="utf-8"))
    assert without["forecast_accuracy"] is None


def test_a_study_with_a_day_ahead_forecast_reports_how_good_it_was(tmp_path: Path) -> None:
    """The day-ahead PV forecasts the MPC received are scored as live (optimizer/external_accuracy.py): one a day,
    issued at 06:00 local; the figures hang together and the report shows them."""
    base = load_scenario(SCENARIOS / "nam-cau-kien-legacy.yaml")
    data = base.model_dump()
    data["planner"].update(step_minutes=60)
    data["data"].update(start="2026-06-01", days=6, pv_forecast={"daily_error_pct": 20, "issue_hour": 6})
    scenario = Scenario.model_validate(data)
    scenario._base_dir = base.base_dir
    paths = write_outputs(run(scenario, strategies=["pv_only", "mpc"], data=load_data(scenario)), tmp_path / "out",
                          command="c")
    external = json.loads(paths["summary"].read_text(encoding="utf-8"))["forecast_accuracy"]["external"]
    [day_ahead] = external["pv"]
    # issued 06:00 local (23:00 UTC the day before) on 1..6 June and on 31 May; those from 1 June on are in the
    # period, and each has daylight steps measured after it with a day of data before them, except 1 June's
    # steps on 1 June (no persistence on the first day)
    assert day_ahead["source"] == "day-ahead" and day_ahead["issues"] == 6 and "load" not in external
    scored = [b for b in day_ahead["by_lead"] if b["n"]]
    assert {b["lead"] for b in scored} >= {"1-6 h", "24-48 h"}
    for b in scored:
        assert b["band_n"] == b["n"]
        assert b["band_coverage"] + b["below_p10"] + b["above_p90"] == pytest.approx(1.0, abs=2e-4)
        assert b["skill_vs_builtin"] == pytest.approx(1 - b["mae_kw"] / b["builtin_mae_kw"], abs=1e-3)
        assert b["rmse_kw"] >= b["mae_kw"] >= abs(b["bias_kw"])
    assert "Forecasts from outside" in paths["report"].read_text(encoding="utf-8")


def _month(label: str, demand_kw: float | None, peak_at: str | None = None, period: str | None = None) -> dict:
    return {"month": label, "demand_kw": demand_kw, "peak_at": peak_at, "peak_period": period,
            "demand_rate_per_kw_month": None if demand_kw is None else 235_414.0}


def test_demand_by_month_for_hand_made_bills() -> None:
    strategies = {
        "pv_only": {"monthly_bills": [_month("2026-03", 880.04, "2026-03-10T10:30:00+00:00", "peak"),
                                      _month("2026-04", 900.0, "2026-04-02T11:00:00+00:00", "peak")]},
        "mpc": {"monthly_bills": [_month("2026-03", 760.0, "2026-03-02T01:00:00+00:00", "normal"),
                                  _month("2026-04", 730.0, "2026-03-31T19:30:00+00:00", "off_peak")]},
        "perfect_foresight": {"monthly_bills": [_month("2026-03", 720.0, "2026-02-28T17:00:00+00:00", "off_peak"),
                                                _month("2026-04", 710.0, "2026-03-31T17:00:00+00:00", "off_peak")]},
    }
    summary = {"currency": "VND", "strategies": strategies, "period": {"timezone": "Asia/Ho_Chi_Minh"},
               "economics": {"mpc": {"finance": {"battery": {}}}, "perfect_foresight": {"finance": {"battery": {}}}}}
    rows = demand_rows(summary)
    assert rows[0] == {"month": "Mar 2026", "PV only [kW]": "880.0", "MPC on forecasts [kW]": "760.0",
                       "perfect foresight (upper bound) [kW]": "720.0",
                       "MPC on forecasts: month's peak set (local time)": "Mon 02 Mar 08:00",
                       "tariff period": "normal hours"}
    assert rows[1]["MPC on forecasts: month's peak set (local time)"] == "Wed 01 Apr 02:30"
    assert rows[1]["tariff period"] == "off-peak hours"
    assert demand_text(summary) == (
        "The billed demand is each month's highest average import over the tariff's demand window, charged at "
        "235,414 VND per kW and month. MPC on forecasts set its month's peak in normal hours in 1 of 2 "
        "months, off-peak hours in 1 of 2 months. Its billed demand was on average 30.0 kW above perfect foresight "
        "(upper bound) and 145.0 kW below PV only.")
    # a study that ends on 3 April: April is billed in full and counted for its 3 days; the table and text say so
    for s in strategies.values():
        s["monthly_bills"][1].update(hours=72.0, month_hours=720.0, covered_share=0.1)
    assert demand_rows(summary)[1]["month"] == "Apr 2026 (3 of 30 days)" and demand_rows(summary)[0]["month"] == \
        "Mar 2026"
    assert "A month the period covers only in part (days in brackets) is billed in full, as the utility would; " \
           "the yearly figures count its charge for the days covered." in demand_text(summary)
    assert month_ticks(strategies["mpc"]["monthly_bills"]) == ["2026-03", "2026-04\n(3 of 30 days)"]
    energy_only = {"currency": "VND", "economics": {},
                   "strategies": {"pv_only": {"monthly_bills": [_month("2026-03", None, "2026-03-10T10:30:00+00:00",
                                                                       "peak")]}}}
    assert demand_rows(energy_only) == []


def test_an_energy_only_study_has_no_demand_table(result, tmp_path: Path) -> None:
    html = write_outputs(result, tmp_path / "e", command="c")["report"].read_text(encoding="utf-8")
    assert 'id="demand"' not in html


def test_a_two_part_study_dates_each_month_peak_from_its_own_series(tmp_path: Path) -> None:
    """The report's date and period of the MPC's month peak are those of its time series, worked out apart: the
    last local half hour of the month whose average import was more than 0.05 kW above every one before it."""
    base = load_scenario(SCENARIOS / "nam-cau-kien-two-part.yaml")
    data = base.model_dump()
    data["data"].update(start="2026-06-27", days=6)  # the end of June and the start of July
    scenario = Scenario.model_validate(data)
    scenario._base_dir = base.base_dir
    result = run(scenario, strategies=["pv_only", "mpc"], data=load_data(scenario))
    paths = write_outputs(result, tmp_path / "d", command="c")
    html = paths["report"].read_text(encoding="utf-8")
    summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
    assert 'id="demand"' in html
    # under the demand charge the study simulates what the aged battery keeps, and says so
    kept = summary["economics"]["mpc"]["end_of_life_value_share"]
    assert summary["economics"]["mpc"]["end_of_life_value_simulated"] and 0.0 < kept <= 1.0
    assert f"{100 * kept:.0f} % (simulated)" in html
    assert summary["assumptions"]["battery_ageing_value"] == "simulated"
    frame = result.results["mpc"].frame.tz_convert(scenario.site.timezone)
    windows = frame["import_kw"].resample("30min").mean()
    rows = demand_rows(summary)
    assert [r["month"] for r in rows] == ["Jun 2026 (4 of 30 days)", "Jul 2026 (2 of 31 days)"]
    for row, (_, month) in zip(rows, windows.groupby(windows.index.strftime("%Y-%m")), strict=True):
        before = month.cummax().shift(1, fill_value=-np.inf)
        first = month[month > before + 0.05].index[-1]
        assert row["MPC on forecasts [kW]"] == f"{month.max():,.1f}"
        assert row["MPC on forecasts: month's peak set (local time)"] == first.strftime("%a %d %b %H:%M")
        plain = {"off_peak": "off-peak hours", "normal": "normal hours", "peak": "peak hours"}
        assert row["tariff period"] == plain[frame["period"][first]]
        assert row["MPC on forecasts: month's peak set (local time)"] in html


def test_the_soc_change_of_a_short_study_is_the_period_s_not_scaled_to_a_year(result) -> None:
    """9 days scaled to a year: the yearly figures carry the SOC credit 40 times over, but the battery (1,000 kWh)
    ended the study once; the summary said "ended the period 5,302 kWh fuller" of a month's study before."""
    summary = result.summary()
    econ = summary["economics"]["perfect_foresight"]
    change = result.results["perfect_foresight"].energy()["delta_soc"]
    assert econ["soc_change_kwh"] == pytest.approx(change) and abs(change) <= 1000
    scale = 365.25 / 9
    assert econ["soc_change_value"] == pytest.approx(econ["soc_change_value_period"] * scale)
    sentence = next(s for s in plain_summary(summary) if s.startswith("The battery ended the period"))
    assert f"{abs(change):,.0f} kWh" in sentence and "a year in the yearly figures, which scale the period" in sentence
