"""Park studies: each site of a park file runs as its own scenario (here, locally and on a local Dask
cluster), the park total is the sum of the sites, and a park file with a repeated site id is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ems.yamlfile import ConfigError
from simulations.economics import payback_years
from simulations.park import SUMMED, TOTAL, SharedBattery, load_park, run_park, run_shared_battery, write_park
from simulations.scenario import load_scenario
from simulations.sweep import run_cell
from tests.series_files import scenario_with_a_bad_row

SCENARIO = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "nam-cau-kien-qd963.yaml"
TWO_PART = SCENARIO.with_name("nam-cau-kien-two-part.yaml")


def park_file(tmp_path: Path, second_id: str = "factory-b") -> Path:
    path = tmp_path / "park.yaml"
    path.write_text(f"""name: test-park
start: 2026-06-01
days: 2
sites:
  - id: factory-a
    scenario: {SCENARIO}
    pv_kwp: 1000
    battery_kwh: 1000
  - id: {second_id}
    scenario: {SCENARIO}
    pv_kwp: 500
    battery_kwh: 0
""")
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    park, scenarios = load_park(park_file(tmp_path_factory.mktemp("park")))
    return run_park(park, scenarios)


def test_each_site_is_its_own_study_and_the_total_their_sum(table: pd.DataFrame, tmp_path: Path) -> None:
    assert list(table["site"]) == ["factory-a", "factory-b", TOTAL]
    park, scenarios = load_park(park_file(tmp_path))
    # a site's row is the sweep cell of its scenario at its size (one rule for both studies)
    cell = run_cell(scenarios[0].model_dump(mode="json"), str(scenarios[0].base_dir), 1000, 1000, "perfect_foresight")
    site_a = table.iloc[0]
    assert site_a["savings_vs_no_system"] == pytest.approx(cell["savings_vs_no_system"])
    assert site_a["capex"] == pytest.approx(cell["capex"]) and table.iloc[1]["battery_kwh"] == 0
    assert scenarios[0].data.days == 2 and load_scenario(SCENARIO).data.days != 2   # the park's period override
    total = table.iloc[2]
    for column in ("capex", "savings_vs_no_system", "co2_avoided_t", "annual_bill"):
        assert total[column] == pytest.approx(table.iloc[0][column] + table.iloc[1][column])
    assert total["investment_over_saving_years"] == pytest.approx(total["capex"] / total["savings_vs_no_system"])
    # the park's cash-flow payback: the sites' yearly cash flows (O&M, ageing, replacements) added year by year
    flows = [run_cell(scenarios[i].model_dump(mode="json"), str(scenarios[i].base_dir), pv, battery,
                      "perfect_foresight", with_cash_flow=True)["cash_flow_net"]
             for i, (pv, battery) in enumerate(((1000, 1000), (500, 0)))]
    assert len(flows[0]) == len(flows[1]) == 21                 # year 0 and a 20-year study life
    assert total["simple_payback_years"] == pytest.approx(payback_years(np.add(*flows)))
    assert "cash_flow_net" not in table.columns                 # park.csv stays a table of figures
    # JCM-style: PV used on site or exported × the scenario's conservative factor (no factor in the park file)
    for row in (table.iloc[0], table.iloc[1]):
        assert row["co2_jcm_t"] == pytest.approx(row["pv_kwh"] / 1000 * 0.5)
        assert row["jcm_factor_source"] == "scenario"
    assert total["co2_jcm_t"] == pytest.approx(table.iloc[0]["co2_jcm_t"] + table.iloc[1]["co2_jcm_t"])
    # PV only: the grid-factor CO2 is the same energy at 0.681 instead of 0.5
    assert table.iloc[1]["co2_avoided_t"] == pytest.approx(table.iloc[1]["co2_jcm_t"] * 0.681 / 0.5)
    paths = write_park(table, tmp_path / "out", park, "ems park park.yaml", "VND")
    report = paths["report"].read_text(encoding="utf-8")
    assert "| **park total** | **1,500** | **1,000** |" in report and "Warning" in report   # 2 days, not a year
    assert "factory-a 0.5 (scenario)" in report and "Shared park battery" not in report
    assert "marked 'grid factor'" not in report  # every factor here is the scenario's conservative one
    from_grid = table.copy()
    from_grid.loc[0, "jcm_factor_source"] = "grid factor"
    again = write_park(from_grid, tmp_path / "out2", park, "ems park park.yaml", "VND")["report"]
    assert "A factor marked 'grid factor' is not the methodology's" in again.read_text(encoding="utf-8")
    never = table.copy()
    never.loc[0, "simple_payback_years"] = np.nan  # factory-a's cash flow does not turn within its life
    lines = write_park(never, tmp_path / "out3", park, "ems park park.yaml", "VND")["report"].read_text(
        encoding="utf-8").splitlines()
    row = next(line for line in lines if line.startswith("| factory-a |")).split(" | ")
    assert row[6] == "never" and "never = not within the study life" in "".join(lines)
    assert next(line for line in lines if line.startswith("| **park total**")).split(" | ")[6] == (
        f"**{total['simple_payback_years']:.1f}**")
    never.loc[2, "simple_payback_years"] = np.nan  # nor the park's
    lines = write_park(never, tmp_path / "out4", park, "ems park park.yaml", "VND")["report"].read_text(
        encoding="utf-8").splitlines()
    assert next(line for line in lines if line.startswith("| **park total**")).split(" | ")[6] == "**never**"
    assert pd.read_csv(paths["table"]).shape[0] == 3
    # the default dispatch is perfect foresight: its savings are labelled as the upper bound they are
    assert "Battery dispatch: perfect foresight (upper bound). The savings, and every figure from them, are an " \
           "upper bound" in report and "| saving [VND/yr], upper bound |" in report
    mpc = write_park(table, tmp_path / "mpc", park.model_copy(update={"strategy": "mpc"}), "ems park p.yaml", "VND")
    text = mpc["report"].read_text(encoding="utf-8")
    assert "Battery dispatch: MPC on forecasts. Command" in text and "upper bound" not in text


def test_the_park_pays_back_when_the_sites_cash_flows_added_year_by_year_do() -> None:
    """Worked by hand: A −100 then 30 a year for 5 years, B −50 then 10 a year for a 3-year life; the park
    −150, 40, 40, 40, 30, 30: cumulative −150, −110, −70, −30, 0 → 4.0 years (B adds nothing after its life)."""
    from simulations.park import park_total

    sites = pd.DataFrame({"capex": [100.0, 50.0], "cash_flow_net": [[-100.0] + [30.0] * 5, [-50.0] + [10.0] * 3],
                          **{c: [0.0, 0.0] for c in SUMMED if c != "capex"}})
    assert park_total(sites)["simple_payback_years"] == pytest.approx(4.0)
    sites.loc[1, "cash_flow_net"] = [-50.0, -10.0, -10.0, -10.0]   # B costs more than it saves: never in 5 years
    assert park_total(sites)["simple_payback_years"] is None
    free = pd.DataFrame({"capex": [0.0], "cash_flow_net": [[0.0, 5.0]], **{c: [0.0] for c in SUMMED if c != "capex"}})
    assert park_total(free)["simple_payback_years"] is None      # nothing invested: nothing to pay back


def test_local_dask_cluster_gives_the_same_table(table: pd.DataFrame, tmp_path: Path) -> None:
    from dask.distributed import LocalCluster

    park, scenarios = load_park(park_file(tmp_path))
    park = park.model_copy(update={"shared_battery": SharedBattery(capacity_kwh=1000, power_kw=500)})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = run_park(park, scenarios, dask_address=cluster.scheduler_address)
        shared_on_dask = run_shared_battery(park, scenarios, on_dask, dask_address=cluster.scheduler_address)
    pd.testing.assert_frame_equal(table, on_dask)
    assert shared_on_dask == run_shared_battery(park, scenarios, table)   # the shared battery runs there too


def test_repeated_site_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="site id 'factory-a' appears twice") as twice:
        load_park(park_file(tmp_path, second_id="factory-a"))
    assert [e.field for e in twice.value.errors] == ["sites"]


def test_a_strategy_that_dispatches_no_battery_is_refused_at_its_key(tmp_path: Path) -> None:
    path = tmp_path / "park.yaml"
    path.write_text(f"name: p\nstrategy: pv_only\nsites:\n  - {{id: a, scenario: {SCENARIO}}}\n")
    with pytest.raises(ConfigError) as bad:
        load_park(path)
    assert [(e.field, e.message) for e in bad.value.errors] == [
        ("strategy", "'pv_only' is not a battery dispatch: one of self_consumption, tou_rule, mpc, mpc_perfect, "
                     "perfect_foresight")]


def test_a_bad_site_is_one_error_not_also_an_empty_park(tmp_path: Path) -> None:
    """Pydantic also reported "sites: Tuple should have at least 1 item after validation, not 0" when the only
    site was bad; that echo is dropped (ems.yamlfile.validate), and a park that lists no site still says so."""
    path = tmp_path / "park.yaml"
    path.write_text(f"name: p\ndays: 2\nsites:\n  - id: a\n    scenario: {SCENARIO}\n    pv_kwp: -5\n")
    with pytest.raises(ConfigError) as bad:
        load_park(path)
    assert [(e.field, e.message) for e in bad.value.errors] == [
        ("sites[0].pv_kwp", "Input should be greater than or equal to 0, got -5")]
    path.write_text("name: p\ndays: 2\nsites: []\n")
    with pytest.raises(ConfigError) as empty:
        load_park(path)
    assert [e.field for e in empty.value.errors] == ["sites"]


def test_a_missing_scenario_is_named_by_its_site_in_the_park_file(tmp_path: Path) -> None:
    """Every missing scenario, each by the park file's field and the site's id (it said "nonexist.yaml: (file):
    No such file or directory", the first one only, without the park file or the site)."""
    path = tmp_path / "park.yaml"
    path.write_text(f"name: p\ndays: 2\nsites:\n  - id: a\n    scenario: gone.yaml\n"
                    f"  - id: b\n    scenario: {SCENARIO}\n  - id: c\n    scenario: sub/also-gone.yaml\n")
    with pytest.raises(ConfigError) as missing:
        load_park(path)
    assert missing.value.source == str(path)
    assert [(e.field, e.message) for e in missing.value.errors] == [
        ("sites[0].scenario", f"site 'a': no scenario file {tmp_path / 'gone.yaml'}"),
        ("sites[2].scenario", f"site 'c': no scenario file {tmp_path / 'sub' / 'also-gone.yaml'}")]


def test_shared_battery_of_two_identical_sites_changes_nothing(tmp_path: Path) -> None:
    """Two identical sites behind one connection with one battery the size of both of theirs: every flow is
    twice one site's, so the park's bill, battery investment and CO2 are the sites' sums (a known answer);
    the park file's JCM factor applies to every site."""
    site_kw = load_scenario(SCENARIO).resized(1000, 1000).battery.max_discharge_kw
    path = tmp_path / "park.yaml"
    path.write_text(f"""name: twins
start: 2026-06-01
days: 2
jcm_factor_t_per_mwh: 0.45
shared_battery: {{capacity_kwh: 2000, power_kw: {2 * site_kw}}}
sites:
  - {{id: twin-a, scenario: {SCENARIO}, pv_kwp: 1000, battery_kwh: 1000}}
  - {{id: twin-b, scenario: {SCENARIO}, pv_kwp: 1000, battery_kwh: 1000}}
""")
    park, scenarios = load_park(path)
    table = run_park(park, scenarios)
    for row in (table.iloc[0], table.iloc[1]):
        assert row["co2_jcm_t"] == pytest.approx(row["pv_kwh"] / 1000 * 0.45)
        assert row["jcm_factor_source"] == "park file"
    shared = run_shared_battery(park, scenarios, table)
    per_site, one = shared["per_site"], shared["shared"]
    assert one["battery_capex"] == pytest.approx(per_site["battery_capex"])          # same kWh and kW bought
    assert one["annual_bill"] == pytest.approx(per_site["annual_bill"], rel=1e-4)
    assert one["annual_bill_pv_only"] == pytest.approx(per_site["annual_bill_pv_only"], rel=1e-9)  # nothing to net
    assert one["battery_saving"] == pytest.approx(per_site["battery_saving"], rel=1e-3)
    assert one["co2_avoided_t"] == pytest.approx(per_site["co2_avoided_t"], rel=1e-3)
    assert shared["change"]["annual_bill"] == pytest.approx(0.0, abs=1e-4 * per_site["annual_bill"])
    paths = write_park(table, tmp_path / "out", park, "ems park park.yaml", "VND", shared)
    report = paths["report"].read_text(encoding="utf-8")
    assert "## Shared park battery: 2,000 kWh" in report and "behind one park connection" in report
    years = one["battery_payback_years"]   # a year's payback or "never" (it read "— yr (— = not within …)")
    said = "never (not within the study life)" if years is None else f"{years:.1f} yr"
    assert f"The shared battery's cash-flow payback: {said}." in report
    from simulations.park import _change
    assert [_change(v) for v in (112_784_426.0, -449_597_748.0, -0.8, 0.0, 0.04, None)] == [
        "+112,784,426", "−449,597,748", "−0.8", "0", "0.0", "—"]   # a change says its sign
    assert paths["shared"].exists()


def test_shared_battery_needs_one_tariff(tmp_path: Path) -> None:
    path = tmp_path / "park.yaml"
    path.write_text(f"""name: mixed
shared_battery: {{capacity_kwh: 1000, power_kw: 500}}
sites:
  - {{id: a, scenario: {SCENARIO}}}
  - {{id: b, scenario: {TWO_PART}}}
""")
    with pytest.raises(ConfigError, match=r"shared_battery.*same tariff and time zone"):
        load_park(path)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_site_s_bad_data_file_is_named_by_the_site(tmp_path: Path, workers: int) -> None:
    """A site's CSV with a negative PV value: the error names the site (it named only the file), also from a
    worker process."""
    scenario = scenario_with_a_bad_row(tmp_path)
    (tmp_path / "park.yaml").write_text(f"name: p\nsites:\n  - id: csv-site\n    scenario: {scenario.name}\n")
    park, scenarios = load_park(tmp_path / "park.yaml")
    with pytest.raises(ConfigError) as bad:
        run_park(park, scenarios, workers=workers)
    assert bad.value.source.startswith("site 'csv-site': ") and "negative value -5" in str(bad.value)


def test_the_command_says_the_parks_cash_flow_payback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ems.cli import main

    assert main(["park", str(park_file(tmp_path)), "--out", str(tmp_path / "out")]) == 0
    total = pd.read_csv(tmp_path / "out" / "park.csv").iloc[-1]
    said = capsys.readouterr().out
    expected = "never" if pd.isna(total["simple_payback_years"]) else f"{total['simple_payback_years']:.1f} yr"
    assert f"investment ÷ saving {total['investment_over_saving_years']:.1f} yr, payback (cash flow) {expected}, " \
           in said
