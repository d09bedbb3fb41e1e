"""Study outputs: summary.json, the per-step series and an offline report.html."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from simulations.report import plain_summary, typical_week_start, write_outputs
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
    html = paths["report"].read_text(encoding="utf-8")
    assert html.count("<svg") >= 4
    assert "<script" not in html and 'src="http' not in html and "href=\"http" not in html
    for sentence in plain_summary(summary):
        assert sentence.split(":")[0][:30] in html.replace("&#x27;", "'")
    csv_paths = write_outputs(result, tmp_path / "csv", command="c", csv=True)
    assert len(pd.read_csv(csv_paths["timeseries"])) == len(series)


def test_plain_summary_says_what_pays_back(result) -> None:
    text = " ".join(plain_summary(result.summary()))
    assert "PV alone saves" in text and "pays back in" in text
    assert "The battery is worth most under" in text and "full cycles a year" in text


def test_typical_week_is_a_whole_local_week(result) -> None:
    frame = result.results["pv_only"].frame
    start = typical_week_start(frame, "Asia/Ho_Chi_Minh")
    first = frame.index[start].tz_convert("Asia/Ho_Chi_Minh")
    assert first.day_of_week == 0 and first.hour == 0
