"""The offline runner: energy conservation, bills by hand, perfect-foresight bound, MPC vs perfect foresight,
no look-ahead, and errors surfaced through ``ems simulate``. Short periods at hourly steps keep it fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ems.cli import main
from ems.yamlfile import ConfigError
from optimizer.forecast import History
from simulations.runner import REFERENCE, load_data, make_strategy, price_inputs, run, simulate
from simulations.scenario import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"
STRATEGIES = ["pv_only", "self_consumption", "tou_rule", "mpc", "mpc_perfect", "perfect_foresight"]


def _scenario(preset: str = "evn-manufacturing-22kv-qd963", days: int = 4, **battery: float) -> Scenario:
    base = load_scenario(SCENARIOS / "nam-cau-kien.yaml")
    data = base.model_dump()
    data["tariff"]["preset"] = preset
    data["planner"].update(step_minutes=60, horizon_hours=24, terminal_value="auto")
    data["data"].update(start="2026-06-01", days=days)  # Monday 1 June: no public holiday in the period
    data["dispatch"]["soc_hysteresis_pct"] = 0.0
    data["battery"].update(battery)
    out = Scenario.model_validate(data)
    out._base_dir = base.base_dir
    return out


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return _scenario(wear_cost_per_kwh=0.0)


@pytest.fixture(scope="module")
def result(scenario: Scenario):
    return run(scenario, strategies=STRATEGIES, data=load_data(scenario))


def test_energy_is_conserved_for_every_strategy(result) -> None:
    assert set(result.results) == {REFERENCE, *STRATEGIES}
    for name, r in result.results.items():
        e = r.energy()
        lhs = e["pv_available"] + e["import"]
        rhs = e["load"] + e["export"] + e["curtailment"] + e["battery_losses"] + e["delta_soc"]
        assert lhs == pytest.approx(rhs, abs=1e-6), name
        assert e["export"] == pytest.approx(0.0, abs=1e-6), name  # zero-export site
        soc = r.frame["soc_pct"]
        if name not in (REFERENCE, "pv_only"):
            assert soc.min() >= 10.0 - 1e-6 and soc.max() <= 95.0 + 1e-6, name
            assert r.discharged_kwh > 0, name
    assert result.results[REFERENCE].frame["pv_kw"].eq(0).all()
    assert result.results["mpc"].replans == result.inputs.steps
    assert result.results["mpc"].planner_failures == [] and result.results["mpc_perfect"].planner_failures == []


def _local_period_qd963(starts: pd.DatetimeIndex) -> np.ndarray:
    """Decision 963 windows written out by hand: Mon–Sat peak 17:30–22:30, every day off-peak 00–06."""
    local = starts.tz_convert("Asia/Ho_Chi_Minh")
    minute = np.asarray(local.hour * 60 + local.minute)
    sunday = np.asarray(local.day_of_week) == 6
    period = np.where(minute < 360, "off_peak", "normal").astype(object)
    period[(~sunday) & (minute >= 1050) & (minute < 1350)] = "peak"
    return period


def test_bill_equals_hand_sum_energy_tariff(result) -> None:
    prices = {"off_peak": 1190.0, "normal": 1833.0, "peak": 3398.0}  # Decision 1279, 22 kV, before VAT
    for name, r in result.results.items():
        f = r.frame
        price = np.array([prices[p] for p in _local_period_qd963(f.index)])
        energy = float(np.sum(price * f["import_kw"] * f["duration_h"]))
        assert r.bill.total == pytest.approx(energy * 1.08, rel=1e-9), name
        assert r.bill.vat == pytest.approx(energy * 0.08, rel=1e-9), name


def test_bill_equals_hand_sum_two_part_tariff() -> None:
    sc = _scenario(preset="evn-two-part-22kv", days=3)
    result = run(sc, strategies=["perfect_foresight"], data=load_data(sc))
    prices = {"off_peak": 859.0, "normal": 1275.0, "peak": 2182.0}
    for name, r in result.results.items():
        f = r.frame
        price = np.array([prices[p] for p in _local_period_qd963(f.index)])
        energy = float(np.sum(price * f["import_kw"] * f["duration_h"]))
        demand = 235_414.0 * float(f["import_kw"].max())  # hourly steps: each step is its own 30-min average
        assert r.bill.total == pytest.approx((energy + demand) * 1.08, rel=1e-9), name
    saved = result.results["pv_only"].bill.total - result.results["perfect_foresight"].bill.total
    assert saved > 0


def test_a_short_study_counts_a_demand_charge_for_the_part_of_the_month_it_covers() -> None:
    """3 days of June under the two-part pilot: the bill charges June's whole capacity charge (as EVN would), but the
    study scales its 3 days to a year, so it counts 3/30 of it; before, a 3-day study counted ten capacity charges a
    month once scaled (a 62-day study from 1 January, three for its 2 months and 3 days)."""
    sc = _scenario(preset="evn-two-part-22kv", days=3)
    result = run(sc, strategies=["pv_only", "perfect_foresight"], data=load_data(sc))
    for name, r in result.results.items():
        june = r.bill.month("2026-06")
        assert june.covered_share == pytest.approx(72 / 720)
        energy_only = r.bill.total - r.bill.vat - june.demand_amount      # VAT recoverable in this scenario
        assert result.counted_bill(name) == pytest.approx(energy_only + june.demand_amount * 72 / 720, rel=1e-12)
        year = result.summary()["strategies"][name]["annual_bill"]
        assert year == pytest.approx(result.counted_bill(name) * 365.25 / 3, rel=1e-12)
    # a whole month counts the whole charge
    whole = _scenario(preset="evn-two-part-22kv", days=30)
    r = run(whole, strategies=["pv_only"], data=load_data(whole))
    assert r.counted_bill("pv_only") == pytest.approx(r.results["pv_only"].bill.total - r.results["pv_only"].bill.vat)


def test_perfect_foresight_bounds_every_strategy(result, scenario: Scenario) -> None:
    """On its own objective (bill minus the planner's terminal value of the energy left) perfect foresight is
    optimal, and the plant follows its plan exactly, so no strategy does better."""
    inputs = result.inputs
    tv = scenario.battery.discharge_efficiency * float(np.min(inputs.import_price[:inputs.steps]))

    def cost(name: str) -> float:
        r = result.results[name]
        return r.bill.total - tv * float(r.frame["soc_kwh"].iloc[-1])

    best = cost("perfect_foresight")
    for name in STRATEGIES:
        assert best <= cost(name) + 1e-6 * abs(best), name
    pv_only = result.results["pv_only"].bill.total
    for name in ("self_consumption", "tou_rule", "mpc", "mpc_perfect"):
        assert pv_only - result.results["perfect_foresight"].bill.total >= (
            pv_only - result.results[name].bill.total) - 1e-3 * pv_only, name


def test_mpc_with_perfect_forecasts_is_within_half_a_percent(result) -> None:
    pf = result.results["perfect_foresight"].bill.total
    mpc = result.results["mpc_perfect"].bill.total
    assert abs(mpc - pf) <= 0.005 * pf


def test_no_look_ahead() -> None:
    """Changing PV and load from step k on leaves every decision before k unchanged."""
    sc = _scenario(days=3)
    series = load_data(sc)
    tariff_result = run(sc, strategies=["pv_only"], data=series)
    inputs = tariff_result.inputs
    k = 40
    changed = replace(inputs, pv_kw=inputs.pv_kw.copy(), load_kw=inputs.load_kw.copy())
    changed.pv_kw[k:] *= 0.3
    changed.load_kw[k:] *= 1.7
    for name in ("self_consumption", "tou_rule", "mpc"):
        a = simulate(make_strategy(name, sc, inputs, tariff_result.tariff), sc, inputs, tariff_result.tariff,
                     battery=True)
        b = simulate(make_strategy(name, sc, changed, tariff_result.tariff), sc, changed, tariff_result.tariff,
                     battery=True)
        cols = ["battery_kw", "pv_kw", "grid_kw", "soc_kwh"]
        pd.testing.assert_frame_equal(a.frame[cols].iloc[:k], b.frame[cols].iloc[:k], check_exact=True, obj=name)
        assert not a.frame["grid_kw"].iloc[k:].equals(b.frame["grid_kw"].iloc[k:]), name


def test_price_inputs_cover_one_horizon_past_the_period(result, scenario: Scenario) -> None:
    inputs = price_inputs(result.data, result.tariff, scenario.planner.horizon_steps)
    assert len(inputs.starts) == inputs.steps + 24
    assert np.all(np.diff(inputs.starts.as_unit("ns").asi8) == 3_600_000_000_000)
    assert inputs.month[0] == 0 and inputs.demand_rate.max() == 0.0


def test_csv_errors_surface_through_ems_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["timestamp,pv_kw,load_kw"]
    for h in range(48):
        stamp = pd.Timestamp("2026-06-01T00:00:00+07:00") + pd.Timedelta(hours=h)
        rows.append(f"{stamp.isoformat()},{-5 if h == 10 else 100},{500}")
    (tmp_path / "series.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    scenario = (SCENARIOS / "nam-cau-kien.yaml").read_text(encoding="utf-8").replace(
        "  synthetic:\n", "  csv: {path: series.csv}\n  synthetic_unused:\n", 1)
    # keep the file valid YAML but swap the data source: drop the synthetic block entirely
    text = scenario.split("  synthetic_unused:\n")[0] + "costs:" + scenario.split("\ncosts:", 1)[1]
    (tmp_path / "bad.yaml").write_text(text.replace("planner:\n  step_minutes: 15", "planner:\n  step_minutes: 60"),
                                       encoding="utf-8")
    code = main(["simulate", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "series.csv" in err and "row 12, column pv_kw" in err and "negative" in err

    good = "\n".join(r.replace(",-5,", ",100,") for r in rows) + "\n"
    (tmp_path / "series.csv").write_text(good, encoding="utf-8")
    code = main(["simulate", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out"), "--no-progress",
                 "--strategies", "pv_only", "--csv"])
    assert code == 0
    assert (tmp_path / "out" / "summary.json").is_file() and (tmp_path / "out" / "timeseries.csv").is_file()


def test_scenario_errors_surface_through_ems_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (SCENARIOS / "nam-cau-kien.yaml").read_text(encoding="utf-8").replace("kwp: 1000", "kwp: -1")
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    assert main(["simulate", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "pv.kwp" in capsys.readouterr().err


@pytest.mark.parametrize(("start", "days", "field", "says"), [
    ("2026-12-30", 5, "data.days", "5 days from 2026-12-30 run past the end of the data (the data covers 2026-01-01 "
                                   "to 2026-12-31 (local days)): at most 2 from 2026-12-30"),
    ("2025-06-01", 4, "data.start", "2025-06-01 is outside the data: the data covers 2026-01-01 to 2026-12-31"),
    ("2027-01-01", 1, "data.start", "2027-01-01 is outside the data"),
])
def test_a_period_outside_the_data_is_refused(start: str, days: int, field: str, says: str) -> None:
    """The synthetic year is 2026: a period running past its end was simulated cut short (5 days asked, 2 run,
    the yearly figures scaled from 2) without a word; one before or after it said only "select no step"."""
    scenario = _scenario()
    data = scenario.model_dump()
    data["data"].update(start=start, days=days)
    moved = Scenario.model_validate(data)
    moved._base_dir = scenario.base_dir
    with pytest.raises(ConfigError) as refused:
        load_data(moved)
    assert [e.field for e in refused.value.errors] == [field] and says in refused.value.errors[0].message
    data["data"].update(start="2026-12-30", days=2)  # to the data's last day: taken
    whole = Scenario.model_validate(data)
    whole._base_dir = scenario.base_dir
    assert len(load_data(whole).starts) == 48


@pytest.mark.parametrize("k", [0, 1, 30])
def test_mpc_target_sees_nothing_from_its_own_step_on(k: int) -> None:
    """The MPC target for step k (its forecasts included, even the first one without any history) is the same
    whatever PV and load do from step k on."""
    from simulations.strategies import StepContext

    sc = _scenario(days=3)
    series = load_data(sc)
    base = run(sc, strategies=["pv_only"], data=series)
    inputs, tariff = base.inputs, base.tariff
    changed = replace(inputs, pv_kw=inputs.pv_kw.copy(), load_kw=inputs.load_kw.copy())
    changed.pv_kw[k:] *= 0.3
    changed.load_kw[k:] *= 1.7
    starts = inputs.starts[:inputs.steps]
    targets = []
    for data in (inputs, changed):
        pv_hist, load_hist = np.full(inputs.steps, np.nan), np.full(inputs.steps, np.nan)
        pv_hist[:k], load_hist[:k] = inputs.pv_kw[:k], inputs.load_kw[:k]
        ctx = StepContext(soc_kwh=500.0, max_charge_kw=250.0, max_discharge_kw=250.0, month_peak_kw=0.0,
                          pv_history=History(starts.as_unit("ns").asi8, pv_hist),
                          load_history=History(starts.as_unit("ns").asi8, load_hist))
        targets.append(make_strategy("mpc", sc, data, tariff).target(k, starts[k].to_pydatetime(), ctx))
    assert targets[0] == targets[1]


def test_mpc_forecasts_read_history_written_after_the_view_was_made() -> None:
    """The forecasters get views of the runner's history: measurements written after a view was made reach later
    re-plans of the same block, entries at and after the step do not."""
    from simulations.strategies import StepContext

    sc = _scenario(days=3)
    base = run(sc, strategies=["pv_only"], data=load_data(sc))
    inputs = base.inputs
    starts = inputs.starts[:inputs.steps]
    pv_hist, load_hist = np.full(inputs.steps, np.nan), np.full(inputs.steps, np.nan)
    ctx = StepContext(soc_kwh=500.0, max_charge_kw=250.0, max_discharge_kw=250.0, month_peak_kw=0.0,
                      pv_history=History(starts.as_unit("ns").asi8, pv_hist),
                          load_history=History(starts.as_unit("ns").asi8, load_hist))
    mpc = make_strategy("mpc", sc, inputs, base.tariff)
    mpc.forecasts(0, inputs.grid(0, mpc.horizon), ctx, False)  # makes the views of the first block
    load_hist[:10] = 321.0
    load_hist[10:] = 9999.0  # not yet measured at step 10: must not be read
    _, load = mpc.forecasts(10, inputs.grid(10, mpc.horizon), ctx, False)
    assert np.allclose(load, 321.0)


def test_mpc_history_views_forecast_as_the_whole_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MPC's bounded history views reach back as far as either forecaster reads: the load profile's weeks end
    at the start of the forecast's local day, so a view made at a block start that is not local midnight must
    reach a day further. Forecasts through the views equal those from the whole history."""
    import simulations.strategies as strategies
    from optimizer.forecast import LoadForecaster, PVForecaster
    from simulations.strategies import StepContext

    monkeypatch.setattr(strategies, "HISTORY_BLOCK_STEPS", 562)  # block 1 starts on Wednesday 24 June, 10:00 local
    sc = _scenario(days=40)
    base = run(sc, strategies=["pv_only"], data=load_data(sc))
    inputs = base.inputs
    mpc = make_strategy("mpc", sc, inputs, base.tariff)
    # the point forecasts are compared: no daylight room rule (which plans on a PV quantile before the peak)
    mpc.settings = mpc.settings.model_copy(update={"surplus_room_level": None})
    ns = inputs.starts[:inputs.steps].as_unit("ns").asi8
    pv_hist, load_hist = np.full(inputs.steps, np.nan), np.full(inputs.steps, np.nan)
    ctx = StepContext(soc_kwh=500.0, max_charge_kw=250.0, max_discharge_kw=250.0, month_peak_kw=0.0,
                      pv_history=History(ns, pv_hist), load_history=History(ns, load_hist))
    for t in (566, 570, 585):  # Wednesday 14:00 and 18:00, Thursday 09:00; filled as the runner does
        pv_hist[:t], load_hist[:t] = inputs.pv_kw[:t], inputs.load_kw[:t]
        grid = inputs.grid(t, mpc.horizon)
        pv, load = mpc.forecasts(t, grid, ctx, False)
        whole_pv = PVForecaster(mpc.pv_forecaster.site, mpc.pv_forecaster.pv).forecast(grid, History(ns, pv_hist))
        whole_load = LoadForecaster(sc.site.timezone, holiday_country=mpc.load_forecaster.holiday_country,
                                    fallback_kw=0.0).forecast(grid, History(ns, load_hist))
        np.testing.assert_allclose(pv, whole_pv, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(load, whole_load, rtol=1e-12, atol=1e-9)


def test_degraded_year_bill_equals_a_pv_only_run_on_the_degraded_pv(scenario: Scenario) -> None:
    """Re-billing a degraded year is exact for PV only: the same as simulating the weaker PV again."""
    from simulations.runner import degraded_bills

    data = load_data(scenario)
    first = run(scenario, strategies=["pv_only"], data=data)
    bills = degraded_bills(first, "pv_only")
    assert bills is not None and len(bills) == scenario.finance.lifetime_years
    factor = (1 - scenario.pv.degradation_pct_per_year / 100) ** 5
    again = run(scenario, strategies=["pv_only"], data=replace(data, pv_kw=data.pv_kw * factor))
    assert bills[0] == first.counted_bill("pv_only")
    assert bills[5] == pytest.approx(again.counted_bill("pv_only"), rel=1e-12)
    assert bills[5] > bills[0]


def test_annual_bill_is_the_sum_of_the_monthly_bills_for_a_whole_year() -> None:
    base = load_scenario(SCENARIOS / "nam-cau-kien.yaml")
    data = base.model_dump()
    data["planner"].update(step_minutes=60)
    one_year = Scenario.model_validate(data)
    one_year._base_dir = base.base_dir
    result = run(one_year, strategies=["pv_only"])
    summary = result.summary()
    for name in ("no_system", "pv_only"):
        s = summary["strategies"][name]
        months = s["monthly_bills"]
        assert len(months) == 12
        counted = sum(m["total"] - m["vat"] for m in months)
        assert s["annual_bill"] == pytest.approx(counted, rel=1e-12)
    assert summary["period"]["whole_years"] and summary["period"]["warning"] is None
    assert summary["period"]["start"] == "2026-01-01T00:00:00+07:00"


def test_degradation_lowers_pv_savings_and_leaves_the_battery_value_of_the_simulated_year(result,
                                                                                         scenario: Scenario) -> None:
    flow = pd.DataFrame(result.economics["mpc"]["cash_flow"]).iloc[1:]
    escalation = (1 + scenario.tariff.escalation_pct_per_year / 100) ** (flow["year"] - 1)
    battery = flow["battery_savings"] / (escalation * flow["battery_soh_pct"] / 100)
    assert np.allclose(battery, battery.iloc[0], rtol=1e-12)
    pv = (flow["pv_savings"] / escalation).to_numpy()
    assert (np.diff(pv) <= 1e-6).all() and pv[-1] < pv[0]


def test_battery_savings_credit_the_energy_left_in_the_battery_as_the_study_does(result) -> None:
    """The benchmarks' battery value (`battery_savings`) is the study's saving against PV only: counted bills and the
    battery's energy at the end over its start at the terminal price, per year. Worked by hand from the run."""
    from simulations.runner import battery_savings, terminal_price_per_kwh

    price = terminal_price_per_kwh(result)
    days = result.data.hours / 24.0
    assert price > 0 and days == pytest.approx(4.0)
    savings = battery_savings(result)
    assert set(savings) == set(STRATEGIES)
    assert savings["pv_only"] == 0.0
    pv_bill = result.counted_bill("pv_only")
    for name in ("mpc", "perfect_foresight", "tou_rule"):
        r = result.results[name]
        left_kwh = float(r.frame["soc_kwh"].iloc[-1] - r.soc0_kwh)
        by_hand = (pv_bill - result.counted_bill(name) + left_kwh * price) * 365.25 / days
        assert savings[name] == pytest.approx(by_hand, rel=1e-9)
        assert savings[name] == result.economics[name]["savings_vs_pv_only"]
        # the credit counts: each strategy ends the 4 days at its SOC floor, 400 kWh below its start
        assert left_kwh == pytest.approx(-400.0, abs=1e-3)
        assert savings[name] < (pv_bill - result.counted_bill(name)) * 365.25 / days


def test_the_mpc_target_takes_its_floor_ceiling_level_and_risk_from_its_hooks() -> None:
    """Under a demand charge the MPC's target goes through ``recharge_floor`` (the month's planned floor),
    ``planned_demand`` (the level the grid ceiling defends) and ``peak_risk`` (the net-load risk the hedges are sized
    from): the methods the diagnostic benchmark (benchmarks/bench_two_part_oracles.py) overrides with the actual
    future, so they must stay the ones used."""
    from simulations.strategies import Mpc, StepContext

    class Hooked(Mpc):
        def recharge_floor(self, *args) -> float:
            return 4321.0

        def planned_demand(self, schedule, inputs) -> np.ndarray:
            return np.full(len(inputs.grid), 777.0)

        def peak_risk(self, t, grid, ctx, pv, load) -> np.ndarray:
            return np.full(len(grid), 55.0)

    sc = _scenario(preset="evn-two-part-22kv", days=3)
    base = run(sc, strategies=["pv_only"], data=load_data(sc))
    k = 30
    starts = base.inputs.starts[:base.inputs.steps]
    ns = starts.as_unit("ns").asi8
    pv_hist, load_hist = np.full(len(ns), np.nan), np.full(len(ns), np.nan)
    pv_hist[:k], load_hist[:k] = base.inputs.pv_kw[:k], base.inputs.load_kw[:k]
    ctx = StepContext(soc_kwh=500.0, max_charge_kw=250.0, max_discharge_kw=250.0, month_peak_kw=100.0,
                      pv_history=History(ns, pv_hist), load_history=History(ns, load_hist))
    shipped = make_strategy("mpc", sc, base.inputs, base.tariff)
    hooked = Hooked.__new__(Hooked)  # the MPC exactly as make_strategy makes it, with the methods overridden
    hooked.__dict__.update(make_strategy("mpc", sc, base.inputs, base.tariff).__dict__)
    now = starts[k].to_pydatetime()
    plain, target = shipped.target(k, now, ctx), hooked.target(k, now, ctx)
    assert float(np.max(hooked._last[3].month_peak_kw)) == 4321.0
    assert float(np.max(shipped._last[3].month_peak_kw)) < 4321.0
    assert target.grid_ceiling_kw == pytest.approx(777.0)  # under the site's 1,000 kW import limit
    assert plain.grid_ceiling_kw != pytest.approx(777.0)
    assert np.all(hooked._last[3].peak_risk_kw == 55.0)
    assert not np.all(shipped._last[3].peak_risk_kw == 55.0)


@pytest.mark.parametrize("fallback", ["self_consumption", "tou_rule"])
def test_after_solver_failures_the_mpc_follows_the_studys_fallback_mode_as_live(fallback: str) -> None:
    """A solver time limit HiGHS cannot meet fails every re-plan (a real failure, recorded): with no plan ever made,
    the MPC follows ``control.fallback_mode`` from the first step, step for step what that mode's own strategy
    does, and not what the other mode does."""
    data = _scenario(days=2).model_dump()
    data["planner"]["time_limit_s"] = 1e-9
    data["control"] = {"fallback_mode": fallback}
    scenario = Scenario.model_validate(data)
    scenario._base_dir = SCENARIOS
    other = "tou_rule" if fallback == "self_consumption" else "self_consumption"
    result = run(scenario, strategies=["mpc", fallback, other], data=load_data(scenario))
    mpc = result.results["mpc"]
    assert len(mpc.planner_failures) == result.inputs.steps
    assert "time limit" in mpc.planner_failures[0][1]
    battery = mpc.frame["battery_kw"].to_numpy()
    assert battery == pytest.approx(result.results[fallback].frame["battery_kw"].to_numpy(), abs=1e-9)
    assert np.abs(battery - result.results[other].frame["battery_kw"].to_numpy()).max() > 10.0


def test_under_a_demand_charge_the_study_simulates_what_an_aged_battery_keeps() -> None:
    """`auto` under the two-part tariff: the share of its savings the battery keeps at end of life (SOH 80 %) is
    what a study of the same site with 80 % of the energy saves over what this one saves — both counted as the
    economics count them — and the economics interpolate with it. Under an energy-only tariff `auto` stays
    proportional (0.8, nothing simulated); `simulated` measures it there too."""
    sc = _scenario(preset="evn-two-part-22kv", days=7)
    data = load_data(sc)
    new = run(sc, strategies=["perfect_foresight"], data=data)
    aged_battery = sc.battery.model_copy(update={"capacity_kwh": 800.0, "ageing_value": "proportional"})
    aged = run(sc.model_copy(update={"battery": aged_battery}), strategies=["perfect_foresight"], data=data)
    assert aged.end_of_life_shares == {}
    share = aged.economics["perfect_foresight"]["savings_vs_pv_only"] \
        / new.economics["perfect_foresight"]["savings_vs_pv_only"]
    assert 0.8 < share <= 1.0
    assert new.end_of_life_shares["perfect_foresight"][0] == pytest.approx(share, rel=1e-9)
    assert new.end_of_life_shares["perfect_foresight"][1] == pytest.approx(
        aged.results["perfect_foresight"].discharged_kwh / new.results["perfect_foresight"].discharged_kwh)
    figures = new.economics["perfect_foresight"]
    assert figures["end_of_life_value_share"] == pytest.approx(share) and figures["end_of_life_value_simulated"]
    energy_only = _scenario(days=2)
    plain = run(energy_only, strategies=["perfect_foresight"], data=load_data(energy_only))
    assert plain.end_of_life_shares == {} and plain.economics["perfect_foresight"]["end_of_life_value_share"] == 0.8
    forced = energy_only.model_copy(update={"battery": energy_only.battery.model_copy(
        update={"ageing_value": "simulated"})})
    assert 0.0 < run(forced, strategies=["perfect_foresight"], data=load_data(forced)).end_of_life_shares[
        "perfect_foresight"][0] <= 1.0
