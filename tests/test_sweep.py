"""Sizing sweeps: ranges, one process, two processes and a local Dask cluster give the same table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from simulations.scenario import Scenario, load_scenario
from simulations.sweep import parse_range, sweep, write_sweep
from tests.series_files import scenario_with_a_bad_row

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def test_parse_range() -> None:
    assert parse_range("0:2000:250") == [0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000]
    assert parse_range("500") == [500.0]
    assert parse_range("0,500,1500") == [0.0, 500.0, 1500.0]
    assert parse_range("0:1:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert parse_range("0:1000:600") == [0.0, 600.0]  # never past STOP (it once gave 1,200)
    assert parse_range("0:1000:400") == [0.0, 400.0, 800.0]
    for bad, problem in (("0:10", "START:STOP:STEP"), ("10:0:5", "STOP ≥ START"), ("0:10:0", "STEP > 0"),
                         ("-5", "negative"), ("nan", "'nan' is not a finite number"),
                         ("0:inf:100", "'inf' is not a finite number"), ("1,2,,3", "'' is not a number"),
                         ("100,kw", "'kw' is not a number"), ("100,100", "repeats"),
                         ("0:2000:0.5", "gives 4,001 sizes; at most 200")):
        with pytest.raises(ValueError, match=re.escape(problem)):
            parse_range(bad)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    base = load_scenario(SCENARIOS / "nam-cau-kien-qd963.yaml")
    data = base.model_dump()
    data["planner"].update(step_minutes=60)
    data["data"].update(start="2026-06-01", days=2)
    out = Scenario.model_validate(data)
    out._base_dir = base.base_dir
    return out


@pytest.fixture(scope="module")
def serial(scenario: Scenario) -> pd.DataFrame:
    return sweep(scenario, [0, 1000], [0, 1000], "perfect_foresight", workers=1)


def test_sweep_table(serial: pd.DataFrame, scenario: Scenario, tmp_path: Path) -> None:
    assert list(zip(serial["pv_kwp"], serial["battery_kwh"], strict=True)) == [(0, 0), (0, 1000), (1000, 0),
                                                                               (1000, 1000)]
    none = serial.iloc[0]
    assert none["savings_vs_no_system"] == pytest.approx(0.0, abs=1e-6) and none["capex"] == 0
    both = serial.iloc[3]
    assert both["savings_vs_no_system"] > serial.iloc[2]["savings_vs_no_system"] > 0
    assert both["battery_kw"] == pytest.approx(500)
    paths = write_sweep(serial, tmp_path, scenario, "ems sweep x", "VND")
    assert pd.read_csv(paths["table"]).shape[0] == 4
    assert paths["payback"].stat().st_size > 0 and (tmp_path / "npv.svg").is_file()
    assert "<svg" in paths["html"].read_text(encoding="utf-8")


def test_two_processes_give_the_same_table(serial: pd.DataFrame, scenario: Scenario) -> None:
    parallel = sweep(scenario, [0, 1000], [0, 1000], "perfect_foresight", workers=2)
    pd.testing.assert_frame_equal(serial, parallel)


def test_local_dask_cluster_gives_the_same_table(serial: pd.DataFrame, scenario: Scenario) -> None:
    from dask.distributed import LocalCluster

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        table = sweep(scenario, [0, 1000], [0, 1000], "perfect_foresight", dask_address=cluster.scheduler_address)
    pd.testing.assert_frame_equal(serial, table)


def test_ems_sweep_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ems.cli import main

    scenario = str(SCENARIOS / "nam-cau-kien-qd963.yaml")
    assert main(["sweep", scenario, "--pv", "1000", "--battery", "0,1000", "--start", "2026-06-01", "--days", "1",
                 "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert list(table["battery_kwh"]) == [0, 1000] and (tmp_path / "payback.png").is_file()
    assert main(["sweep", scenario, "--pv", "10:0:5", "--battery", "0", "--out", str(tmp_path)]) == 2
    assert "STOP" in capsys.readouterr().err


def test_heatmap_labels_contrast_with_their_cells() -> None:
    from matplotlib.colors import to_rgb

    from simulations.sweep import heatmap

    table = pd.DataFrame({"pv_kwp": [0, 0, 1000, 1000], "battery_kwh": [0, 1000, 0, 1000],
                          "npv": [0.0, 1.0, 2.0, float("nan")]})
    ax = heatmap(table, "npv", "t", "u").axes[0]
    colours = {t.get_text(): to_rgb(t.get_color()) for t in ax.texts}
    assert colours["2.0"] == (0.0, 0.0, 0.0)  # top of viridis is yellow: black label, not white
    assert colours["0.0"] == (1.0, 1.0, 1.0)  # bottom is dark purple: white label
    assert "never" in colours


def test_a_cell_without_a_battery_has_no_battery_payback_rather_than_never_one() -> None:
    """The battery maps said "never" (does not pay back) for the battery-0 row, where there is no battery; its NPV
    map said "—" for the same cells."""
    from simulations.sweep import DASH, NEVER, heatmap

    table = pd.DataFrame({"pv_kwp": [500, 500, 1000, 1000], "battery_kwh": [0, 1000, 0, 1000],
                          "battery_discounted_payback_years": [float("nan"), float("nan"), float("nan"), 14.2],
                          "simple_payback_years": [float("nan"), 12.0, 8.5, 10.1]})
    labels = {(t.get_position(), t.get_text()) for t in
              heatmap(table, "battery_discounted_payback_years", "t", "u").axes[0].texts}
    assert labels == {((0, 0), DASH), ((1, 0), DASH), ((0, 1), NEVER), ((1, 1), "14.2")}
    # a system payback with no battery is still a payback: "never" where it is not reached
    labels = {(t.get_position(), t.get_text()) for t in heatmap(table, "simple_payback_years", "t", "u").axes[0].texts}
    assert ((0, 0), NEVER) in labels


def test_the_sweep_table_says_never_for_a_payback_and_dash_for_no_battery(tmp_path: Path) -> None:
    from ems.cli import main

    scenario = str(SCENARIOS / "nam-cau-kien-qd963.yaml")
    assert main(["sweep", scenario, "--pv", "1000", "--battery", "0,1000", "--start", "2026-06-01", "--days", "1",
                 "--out", str(tmp_path)]) == 0
    page = (tmp_path / "sweep.html").read_text(encoding="utf-8")
    rows = page.split("<tr>")[2:]                           # after the header row
    cells = [[c.split("</td>")[0] for c in r.split("<td>")[1:]] for r in rows]
    table = pd.read_csv(tmp_path / "sweep.csv")
    column = list(table.columns).index("battery_discounted_payback_years")
    assert cells[0][column] == "—"                          # no battery
    assert cells[1][column] == "never"                      # one day's saving against a 20-year battery
    # the battery's own figures do not apply without one (its saving against PV only read "0.00"); money is in
    # whole units
    at = {c: i for i, c in enumerate(table.columns)}
    assert [cells[0][at[c]] for c in ("savings_vs_pv_only", "equivalent_full_cycles", "battery_npv")] == ["—"] * 3
    saved = table.loc[1, "savings_vs_pv_only"]
    assert cells[1][at["savings_vs_pv_only"]] == f"{saved:,.0f}" and saved > 0
    assert cells[0][at["annual_bill"]] == f"{table.loc[0, 'annual_bill']:,.0f}"
    assert '"never": the cell does not pay back within the study life' in page


def test_sweep_table_irr_is_a_percentage_or_missing(serial: pd.DataFrame) -> None:
    assert "irr" not in serial.columns
    values = serial["irr_pct"].dropna()
    assert ((values >= 0) & (values <= 1e4)).all()
    assert {"battery_npv", "battery_discounted_payback_years", "period_days", "whole_years"} <= set(serial.columns)


def test_a_failing_cell_costs_only_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One cell raises (injected here; `--pv 0` and a size written `1e+06` did for real): the other cells are
    written, the failed one is marked in sweep.csv, sweep.html and the maps, named on stderr, exit status 1.
    Before, the exception ended the sweep and every finished cell was lost."""
    import simulations.sweep as module
    from ems.cli import main

    real = module.run_cell

    def one_cell_fails(data, base, pv, battery, strategy):
        if (pv, battery) == (1000, 1000):
            raise ValueError("constructed failure")
        return real(data, base, pv, battery, strategy)

    monkeypatch.setattr(module, "run_cell", one_cell_fails)
    scenario = str(SCENARIOS / "nam-cau-kien-qd963.yaml")
    assert main(["sweep", scenario, "--pv", "0,1000", "--battery", "0,1000", "--start", "2026-06-01", "--days", "1",
                 "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error: cell PV 1000 kWp, battery 1000 kWh failed: ValueError: constructed failure" in err
    assert "1 of 4 cells failed" in err
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert table["failed"].notna().tolist() == [False, False, False, True] and table.columns[-1] == "failed"
    assert table.loc[:2, "annual_bill"].notna().all() and pd.isna(table.loc[3, "annual_bill"])
    page = (tmp_path / "sweep.html").read_text(encoding="utf-8")
    assert 'id="failed-cells"' in page and "1 of 4 cells failed" in page and ">nan<" not in page
    labels = [t.get_text() for t in module.heatmap(table, "npv", "t", "u", missing="—").axes[0].texts]
    assert labels.count("failed") == 1 and "—" not in labels

    def every_cell_fails(*_args):
        raise RuntimeError("solver gone")

    monkeypatch.setattr(module, "run_cell", every_cell_fails)  # no figure at all: the maps still drew (a KeyError)
    assert main(["sweep", scenario, "--pv", "0,1000", "--battery", "0", "--start", "2026-06-01", "--days", "1",
                 "--out", str(tmp_path), "--force"]) == 1
    assert "2 of 2 cells failed" in capsys.readouterr().err and (tmp_path / "payback.png").is_file()
    assert pd.read_csv(tmp_path / "sweep.csv")["failed"].tolist() == ["RuntimeError: solver gone"] * 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_data_file_still_ends_the_sweep_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      workers: str) -> None:
    """Every cell would fail on it alike: the file's error, once, as before cells were kept apart; also from a
    worker process (the error could not be unpickled there: "BrokenProcessPool", a traceback)."""
    from ems.cli import main

    scenario = scenario_with_a_bad_row(tmp_path)
    assert main(["sweep", str(scenario), "--pv", "0,1000", "--battery", "0", "--out",
                 str(tmp_path / "out"), "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert err.count("row 12, column pv_kw: negative value -5") == 1 and "cells failed" not in err


def test_measured_pv_scales_with_the_swept_size(tmp_path: Path) -> None:
    """Measured PV without data.csv.pv_kwp was measured on the base case's plant: a cell of half the kWp has half
    its PV (it had the same PV in every cell while the investment followed the size)."""
    from simulations.runner import load_data

    path = scenario_with_a_bad_row(tmp_path, bad_hour=-1)  # no bad row: 48 h of 100 kW PV, 500 kW load
    base = load_scenario(path)
    assert base.data.csv is not None and base.data.csv.pv_kwp is None
    assert load_data(base).pv_kw.max() == pytest.approx(100.0)
    half = base.resized(base.pv.kwp / 2, base.battery.capacity_kwh)
    assert half.data.csv is not None and half.data.csv.pv_kwp == base.pv.kwp
    assert load_data(half).pv_kw.tolist() == pytest.approx([50.0] * 48)
    assert load_data(base.resized(0, 0)).pv_kw.max() == 0.0
    table = sweep(base, [base.pv.kwp / 2, base.pv.kwp], [0.0], "self_consumption")
    assert table["pv_kwh"].iloc[1] == pytest.approx(2 * table["pv_kwh"].iloc[0])
