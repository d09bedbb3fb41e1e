"""Gaps of measured data filled for a study (simulations/gap_fill.py): known answers by hand, the limits, and the
whole path through ``ems simulate`` to the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ems.cli import main
from simulations.gap_fill import fill_gaps
from simulations.report import filled_text
from tests.series_files import BASE_SCENARIO

TZ = "Asia/Ho_Chi_Minh"


def frame_of(days: int, step_minutes: int = 15) -> pd.DataFrame:
    """``days`` local days from Monday 1 June 2026: load = 100 × the local day number + the hour (a value telling
    its day and hour apart), PV = 10 × the day number in daylight (06–18 h), else 0. [kW]"""
    index = pd.date_range(pd.Timestamp("2026-06-01", tz=TZ), periods=days * 24 * 60 // step_minutes,
                          freq=f"{step_minutes}min").tz_convert("UTC")
    local = index.tz_convert(TZ)
    day = np.asarray((local.normalize() - pd.Timestamp("2026-06-01", tz=TZ)).days)
    hour = np.asarray(local.hour)
    load = 100.0 * day + hour
    pv = np.where((hour >= 6) & (hour < 18), 10.0 * day, 0.0)
    return pd.DataFrame({"pv_kw": pv, "load_kw": load}, index=index)


def test_a_short_gap_is_a_straight_line_between_its_neighbours():
    frame = frame_of(1)
    frame.loc[frame.index[40:43], "load_kw"] = np.nan  # 10:00–10:45, between 9 kW (09:45) and 10 kW (10:45)
    filled, gaps, errors = fill_gaps(frame, TZ, 2)
    assert errors == []
    assert filled["load_kw"].iloc[39:44].tolist() == [9.0, 9.25, 9.5, 9.75, 10.0]
    assert gaps.mask["load"].sum() == 3 and not gaps.mask["pv"].any()
    assert gaps.summary() == {"load": {"steps": 3, "share_pct": pytest.approx(300 / 96), "gaps": 1,
                                       "longest_h": 0.75}}


def test_a_longer_gap_takes_the_same_weekday_for_load_and_the_day_before_for_pv():
    frame = frame_of(15)
    day8 = slice(8 * 96 + 32, 8 * 96 + 48)  # Tuesday 9 June 08:00–12:00, four hours
    frame.loc[frame.index[day8], ["pv_kw", "load_kw"]] = np.nan
    filled, gaps, errors = fill_gaps(frame, TZ, 6)
    assert errors == []
    # load: the same hours a week before (day 1, Tuesday 2 June): 100 + hour; PV: the day before (day 7): 70 kW
    assert filled["load_kw"].iloc[day8].tolist() == [100.0 + 8 + k // 4 for k in range(16)]
    assert filled["pv_kw"].iloc[day8].tolist() == [70.0] * 16
    assert gaps.summary()["pv"]["longest_h"] == 4.0


def test_where_the_week_before_is_missing_too_the_week_after_fills():
    frame = frame_of(15)
    frame.loc[frame.index[1 * 96 + 32:1 * 96 + 48], "load_kw"] = np.nan  # day 1 08–12: no week before in the data
    filled, _, errors = fill_gaps(frame, TZ, 6)
    assert errors == [] and filled["load_kw"].iloc[1 * 96 + 32] == 800.0 + 8  # day 8, a week after


def test_gaps_beyond_the_limit_or_without_a_like_day_are_named_and_left():
    frame = frame_of(2)
    frame.loc[frame.index[96 + 32:96 + 60], "load_kw"] = np.nan  # day 1, 08:00–15:00: 7 h
    frame.loc[frame.index[0:8], "pv_kw"] = np.nan  # day 0 00:00–02:00: at the file's start, no day before
    frame.loc[frame.index[96:104], "pv_kw"] = np.nan  # … and day 1 00:00–02:00: the day before is missing there, the
    # day after and two days before are not in the data
    _, _, errors = fill_gaps(frame, TZ, 6)
    assert [(e.field, e.message) for e in errors] == [
        ("data.csv.fill_gaps_hours", f"pv: a gap of 2 h from 2026-06-01 00:00 to 2026-06-01 02:00 ({TZ}): "
                                     "no like day (-1, +1, -2, +2 days) was measured at those times; not filled"),
        ("data.csv.fill_gaps_hours", f"pv: a gap of 2 h from 2026-06-02 00:00 to 2026-06-02 02:00 ({TZ}): "
                                     "no like day (-1, +1, -2, +2 days) was measured at those times; not filled"),
        ("data.csv.fill_gaps_hours", f"load: a gap of 7 h from 2026-06-02 08:00 to 2026-06-02 15:00 ({TZ}) is "
                                     "longer than 6 h: not filled"),
    ]


def test_the_report_clause_reads_the_share_gaps_and_longest():
    assert filled_text({}) == ""
    assert filled_text({"load": {"steps": 40, "share_pct": 0.4, "gaps": 3, "longest_h": 5.25},
                        "pv": {"steps": 3, "share_pct": 0.03, "gaps": 1, "longest_h": 0.75}}) == (
        "; gaps filled: load 0.4 % of the steps (3 gaps, longest 5.25 h), PV 0.03 % of the steps (1 gap, "
        "longest 45 min)")


def write_study(folder: Path, frame: pd.DataFrame, drop: slice, fill_hours: float | None) -> Path:
    """``series.csv`` of ``frame`` (offsets, 15-min kW) with the rows of ``drop`` left out, and the Nam Cau Kien
    scenario on it for PV only."""
    kept = frame.drop(frame.index[drop])
    rows = ["timestamp,pv_kw,load_kw"] + [f"{t.tz_convert(TZ).isoformat()},{p:g},{v:g}"
                                           for t, p, v in zip(kept.index, kept["pv_kw"], kept["load_kw"], strict=True)]
    (folder / "series.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = yaml.safe_load(BASE_SCENARIO.read_text(encoding="utf-8"))
    data["data"] = {"csv": {"path": "series.csv"} | ({"fill_gaps_hours": fill_hours} if fill_hours else {}),
                    "warmup_days": 0}
    (folder / "study.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder / "study.yaml"


def test_ems_simulate_refuses_gaps_with_a_hint_and_fills_them_when_asked(tmp_path, capsys):
    frame = frame_of(15) + 400.0  # a plausible factory: load 400..1,800 kW
    drop = slice(8 * 96 + 32, 8 * 96 + 48)  # Tuesday 9 June 08:00–12:00 missing from the file
    study = write_study(tmp_path, frame, drop, None)
    assert main(["simulate", str(study), "--out", str(tmp_path / "o"), "--no-progress",
                 "--strategies", "pv_only"]) == 2
    err = capsys.readouterr().err
    assert "gap: 16 missing interval(s) after row 801" in err
    assert "data.csv.fill_gaps_hours: the data has gaps: set data.csv.fill_gaps_hours" in err

    write_study(tmp_path, frame, drop, 6)
    assert main(["simulate", str(study), "--out", str(tmp_path / "o"), "--no-progress", "--strategies", "pv_only",
                 "--csv"]) == 0
    err = capsys.readouterr().err
    assert "note: gaps filled: PV 1.1 % of the steps (1 gap, longest 4 h), load 1.1 % of the steps (1 gap" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    assert summary["data_filled"]["load"] == {"steps": 16, "share_pct": pytest.approx(100 * 16 / 1440), "gaps": 1,
                                              "longest_h": 4.0}
    series = pd.read_csv(tmp_path / "o" / "timeseries.csv")
    pv_only = series[series["strategy"] == "pv_only"].reset_index(drop=True)
    assert pv_only["load_kw"].iloc[drop].tolist() == (frame["load_kw"].iloc[1 * 96 + 32:1 * 96 + 48]).tolist()
    assert pv_only.index[pv_only["load_filled"]].tolist() == list(range(drop.start, drop.stop))  # said per step
    assert pv_only["pv_filled"].sum() == 16
    report = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "gaps filled: PV 1.1 % of the steps (1 gap, longest 4 h), load 1.1 % of the steps (1 gap" in report
    assert main(["sweep", str(study), "--pv", "1000", "--battery", "0", "--strategy", "self_consumption", "--out",
                 str(tmp_path / "s")]) == 0
    assert "note: gaps filled: PV 1.1 % of the steps (1 gap, longest 4 h)" in capsys.readouterr().err


@pytest.mark.parametrize(("column", "says", "remedy"), [
    # PV in W (or from a bigger plant without data.csv.pv_kwp) was clipped to the AC limit all day
    ("pv_kw", "row 2, column pv_kw: 4e+05 kW is above the plausible bound 1350 kW (1.5 × rated 900 kW)",
     "data.csv.pv_kwp: the PV is checked against the scenario's plant (AC limit 900 kW): if it was measured on "
     "another plant, give that plant's kWp here"),
    # Nam Cau Kien: 1,000 kW contracted + 900 kW of PV AC = 1,900 kW, × 1.5
    ("load_kw", "row 2, column load_kw: 4e+05 kW is above the plausible bound 2850 kW (1.5 × rated 1900 kW)",
     "grid.import_cap_kw: the load is checked against what the factory can draw"),
])
def test_a_series_in_w_is_refused_with_what_it_was_checked_against(tmp_path, capsys, column, says, remedy):
    frame = frame_of(15) + 400.0
    frame[column] = frame[column] * 1000  # W in a column named kW
    study = write_study(tmp_path, frame, slice(0, 0), None)
    assert main(["simulate", str(study), "--out", str(tmp_path / "o"), "--no-progress", "--strategies",
                 "pv_only"]) == 2
    err = capsys.readouterr().err
    assert says in err and remedy in err
