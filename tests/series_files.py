"""A study on a measured series (docs/data.md) with one value the reader refuses, written for tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

BASE_SCENARIO = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "nam-cau-kien.yaml"


def scenario_with_a_bad_row(folder: Path, bad_hour: int = 10, hours: int = 48) -> Path:
    """``series.csv``: hourly from 1 June 2026 00:00 +07, PV 100 kW and load 500 kW but PV −5 kW at ``bad_hour``
    (row ``bad_hour + 2`` of the file); and ``csv.yaml``, the Nam Cau Kien scenario on it with 60-minute steps.
    Returns the scenario file."""
    start = pd.Timestamp("2026-06-01T00:00:00+07:00")
    rows = ["timestamp,pv_kw,load_kw"] + [
        f"{(start + pd.Timedelta(hours=h)).isoformat()},{-5 if h == bad_hour else 100},500" for h in range(hours)]
    (folder / "series.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = yaml.safe_load(BASE_SCENARIO.read_text(encoding="utf-8"))
    data["data"] = {"csv": {"path": "series.csv"}}
    data["planner"]["step_minutes"] = 60
    (folder / "csv.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder / "csv.yaml"
