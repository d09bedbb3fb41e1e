"""CSV import: good paths with known answers, and every kind of bad input named by row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ems.series_csv import DataError, read_series_csv
from ems.yamlfile import ConfigError
from optimizer.site import Location, PVSpec, SiteInfo
from simulations.synthetic import LoadShape, synthetic_year


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def errors_of(path: Path, **kw) -> dict[str, str]:
    with pytest.raises(DataError) as info:
        read_series_csv(path, **kw)
    assert isinstance(info.value, ConfigError)
    assert info.value.source == str(path)
    found: dict[str, str] = {}
    for e in info.value.errors:
        found[e.field] = f"{found[e.field]} | {e.message}" if e.field in found else e.message
    return found


def quarter_hour_csv(n: int = 8, start: str = "2026-05-04T00:00+07:00") -> str:
    idx = pd.date_range(pd.Timestamp(start), periods=n, freq="15min")
    lines = ["timestamp,pv_kw,load_kw"]
    lines += [f"{t.isoformat()},{10 * i},{500 + i}" for i, t in enumerate(idx)]
    return "\n".join(lines)


# ---------------------------------------------------------------- good paths


def test_quarter_hour_kw_with_offsets(tmp_path):
    df = read_series_csv(write(tmp_path, quarter_hour_csv()))
    assert list(df.columns) == ["pv_kw", "load_kw"]
    assert str(df.index.tz) == "UTC"
    assert df.index[0] == pd.Timestamp("2026-05-03T17:00Z")
    assert df["pv_kw"].tolist() == [10.0 * i for i in range(8)]
    assert df["load_kw"].iloc[3] == 503


def test_hourly_kwh_to_quarter_hour_kw_known_answer(tmp_path):
    text = """
time,load_kwh,pv_kwh
2026-01-05 08:00,600,120
2026-01-05 09:00,640,200
"""
    df = read_series_csv(write(tmp_path, text), timezone="Asia/Ho_Chi_Minh")
    # 600 kWh in one hour is 600 kW, held over the hour's four quarter hours (150 kWh each)
    assert df["load_kw"].tolist() == [600.0] * 4 + [640.0] * 4
    assert df["pv_kw"].tolist() == [120.0] * 4 + [200.0] * 4
    assert df.index[0] == pd.Timestamp("2026-01-05T01:00Z")
    assert (df.index[1:] - df.index[:-1] == pd.Timedelta(minutes=15)).all()
    assert (df["load_kw"] * 0.25).sum() == pytest.approx(1240)  # energy preserved


def test_quarter_hour_kwh_and_hourly_kw(tmp_path):
    df = read_series_csv(write(tmp_path, "timestamp,load_kwh\n2026-01-05T08:00Z,25\n2026-01-05T08:15Z,30"),
                         columns=("load",))
    assert df["load_kw"].tolist() == [100.0, 120.0]
    df = read_series_csv(write(tmp_path, "timestamp,load_kw\n2026-01-05T08:00Z,25\n2026-01-05T09:00Z,30", "h.csv"),
                         columns=("load",))
    assert df["load_kw"].tolist() == [25.0] * 4 + [30.0] * 4
    df = read_series_csv(write(tmp_path, "timestamp,load_kw\n2026-01-05T08:00Z,25\n2026-01-05T09:00Z,30", "h2.csv"),
                         columns=("load",), step_minutes=60)
    assert df["load_kw"].tolist() == [25.0, 30.0]


def test_unit_argument_for_bare_column_names(tmp_path):
    path = write(tmp_path, "Timestamp,Load\n2026-01-05T08:00Z,25\n2026-01-05T08:15Z,30")
    assert read_series_csv(path, columns=("load",), unit="kWh")["load_kw"].tolist() == [100.0, 120.0]
    assert read_series_csv(path, columns=("load",), unit="kW")["load_kw"].tolist() == [25.0, 30.0]


def test_dst_zone_file_spring_forward(tmp_path):
    # Europe/Berlin skips 02:00–03:00 on 2026-03-29: local 01:45 is followed by 03:00, 15 minutes later
    text = "timestamp,load_kw\n2026-03-29 01:30,10\n2026-03-29 01:45,11\n2026-03-29 03:00,12\n2026-03-29 03:15,13"
    df = read_series_csv(write(tmp_path, text), timezone="Europe/Berlin", columns=("load",))
    assert df["load_kw"].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert df.index[0] == pd.Timestamp("2026-03-29T00:30Z")
    assert df.index[-1] == pd.Timestamp("2026-03-29T01:15Z")


def test_dst_fall_back_with_offsets(tmp_path):
    text = """
timestamp,load_kw
2026-10-25T02:00+02:00,1
2026-10-25T02:00+01:00,2
2026-10-25T03:00+01:00,3
"""
    df = read_series_csv(write(tmp_path, text), columns=("load",), step_minutes=60)
    assert df["load_kw"].tolist() == [1.0, 2.0, 3.0]
    assert df.index[0] == pd.Timestamp("2026-10-25T00:00Z")


def test_allow_gaps_gives_nan_not_zero(tmp_path):
    text = "timestamp,load_kw\n2026-01-05T08:00Z,25\n2026-01-05T08:15Z,\n2026-01-05T08:45Z,30\n2026-01-05T09:00Z,31"
    df = read_series_csv(write(tmp_path, text), columns=("load",), allow_gaps=True)
    assert len(df) == 5
    assert np.isnan(df["load_kw"].iloc[1]) and np.isnan(df["load_kw"].iloc[2])
    assert df["load_kw"].iloc[3] == 30


# ---------------------------------------------------------------- bad input


def test_header_problems(tmp_path):
    errors = errors_of(write(tmp_path, "when,pv_kw\n2026-01-01T00:00Z,1"))
    assert "no timestamp column" in errors["(header)"]
    errors = errors_of(write(tmp_path, "timestamp,pv_kw\n2026-01-01T00:00Z,1", "b.csv"))
    assert "no column load_kw or load_kwh" in errors["(header)"]
    errors = errors_of(write(tmp_path, "timestamp,load_kw,load_kwh\n2026-01-01T00:00Z,1,2", "c.csv"),
                       columns=("load",))
    assert "more than one column for load" in errors["(header)"]


def test_empty_and_missing_file(tmp_path):
    assert "empty" in errors_of(write(tmp_path, ""))["(file)"]
    assert "no data rows" in errors_of(write(tmp_path, "timestamp,load_kw", "h.csv"), columns=("load",))["(file)"]
    assert "(file)" in errors_of(tmp_path / "absent.csv")


def test_naive_timestamps_need_a_zone(tmp_path):
    errors = errors_of(write(tmp_path, "timestamp,load_kw\n2026-01-01 00:00,1\n2026-01-01 00:15,2"),
                       columns=("load",))
    assert "timezone" in errors["column timestamp"]


def test_every_row_error_collected_with_row_and_column(tmp_path):
    text = """
timestamp,pv_kw,load_kw
2026-05-04T00:00+07:00,0,500
2026-05-04T00:15+07:00,abc,510
2026-05-04T00:30+07:00,0,-5
2026-05-04T00:30+07:00,0,520
2026-05-04T01:15+07:00,0,530
not a time,0,540
2026-05-04T01:30+07:00,0,
2026-05-04T01:45+07:00,0,99999
2026-05-04T02:00+07:00,0,500
2026-05-04T02:15+07:00,0,500
2026-05-04T02:30+07:00,0,500
"""
    errors = errors_of(write(tmp_path, text))
    assert errors["row 3, column pv_kw"] == "'abc' is not a number"
    assert errors["row 4, column load_kw"] == "negative value -5"
    assert errors["row 5, column timestamp"] == "duplicate timestamp (same instant as row 4)"
    assert errors["row 6, column timestamp"] == "gap: 2 missing interval(s) after row 4"
    assert errors["row 7, column timestamp"] == "'not a time' is not an ISO 8601 timestamp"
    assert errors["row 8, column load_kw"] == "empty cell"
    assert "above the plausible bound" in errors["row 9, column load_kw"]
    assert "10 × the median" in errors["row 9, column load_kw"]
    assert len(errors) == 7


def test_ragged_rows(tmp_path):
    errors = errors_of(write(tmp_path, "timestamp,load_kw\n2026-01-01T00:00Z,1\n2026-01-01T00:15Z,2,3"),
                       columns=("load",))
    assert errors["row 3"] == "3 cells where the header has 2"


def test_dst_gap_and_ambiguous_local_times(tmp_path):
    text = """
timestamp,load_kw
2026-03-29 01:30,1
2026-03-29 01:45,1
2026-03-29 02:30,2
2026-10-25 02:30,3
"""
    errors = errors_of(write(tmp_path, text), timezone="Europe/Berlin", columns=("load",))
    assert "does not exist in Europe/Berlin" in errors["row 4, column timestamp"]
    assert "ambiguous in Europe/Berlin" in errors["row 5, column timestamp"]


def test_mixed_offsets_and_backwards(tmp_path):
    text = """
timestamp,load_kw
2026-01-01T00:15Z,1
2026-01-01 00:30,2
2026-01-01T00:00Z,3
2026-01-01T00:15Z,4
"""
    errors = errors_of(write(tmp_path, text), columns=("load",))
    assert "no UTC offset while other rows have one" in errors["row 3, column timestamp"]
    assert "go backwards" in errors["row 4, column timestamp"]


def test_mixed_offsets_are_refused_even_when_the_file_has_a_time_zone(tmp_path):
    """Issue 11: with ``timezone=`` given, rows without an offset were localised and mixed silently with rows that
    had one (which clock did the logger mean?); now the first such row is named."""
    text = """
timestamp,load_kw
2026-01-01T00:00+07:00,1
2026-01-01T00:15+07:00,2
2026-01-01 00:30,3
2026-01-01T00:45+07:00,4
"""
    errors = errors_of(write(tmp_path, text), timezone="Asia/Ho_Chi_Minh", columns=("load",))
    assert "no UTC offset while other rows have one" in errors["row 4, column timestamp"]


def test_off_step_timestamp(tmp_path):
    text = "\n".join(["timestamp,load_kw"] + [f"2026-01-01T00:{m:02d}Z,1" for m in (0, 15, 30, 40, 55)])
    errors = errors_of(write(tmp_path, text), columns=("load",))
    assert "not on the file's 15-minute step" in errors["row 5, column timestamp"]


def test_file_step_not_multiple_of_target(tmp_path):
    text = "\n".join(["timestamp,load_kw"] + [f"2026-01-01T00:{m:02d}Z,1" for m in (0, 10, 20, 30)])
    assert errors_of(write(tmp_path, text), columns=("load",))["column timestamp"] == (
        "the file's step of 10 min is not a whole multiple of 15 min, nor a whole part of it")


def test_a_five_minute_file_is_averaged_over_each_quarter_hour_known_answer(tmp_path):
    """SCADA and meter portals export 1- or 5-minute data: each quarter hour is the mean power of its intervals
    (kWh per 5 min × 12 = kW); a quarter hour less than half measured is missing (NaN), never 0; the quarter hours
    are on the clock whatever minute the file starts at."""
    rows = ["timestamp,pv_kwh,load_kw"]
    minutes = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]            # from 00:05; 00:00 missing
    pv_kwh = [1, 2, 3, 4, 5, "", "", "", 6, "", ""]                   # 00:45 alone in its quarter hour
    load = [300, 330, 600, 600, 630, 100, 100, 100, 900, "", ""]
    rows += [f"2026-01-05T08:{m:02d}+07:00,{e},{w}" for m, e, w in zip(minutes, pv_kwh, load, strict=True)]
    df = read_series_csv(write(tmp_path, "\n".join(rows)), allow_gaps=True)
    assert df.index.tolist() == [pd.Timestamp("2026-01-05T01:00Z") + pd.Timedelta(minutes=15 * i) for i in range(4)]
    assert df.attrs["file_step_minutes"] == 5
    # 08:00: 2 of 3 intervals, (12 + 24) / 2 kW and (300 + 330) / 2; 08:15: (36 + 48 + 60) / 3 and 610;
    # 08:30: PV not measured at all, load 100; 08:45: 1 of 3 intervals measured, below half: missing
    np.testing.assert_allclose(df["pv_kw"].to_numpy(), [18.0, 48.0, np.nan, np.nan])
    np.testing.assert_allclose(df["load_kw"].to_numpy(), [315.0, 610.0, 100.0, np.nan])


def test_the_dashboards_own_csv_download_is_read_back(tmp_path):
    """The chart's CSV button (controller/dashboard/history_csv.py) names its times start_local and start_utc; the
    readers refused it ("no timestamp column"), so a controller's own export could feed neither a study nor
    ``ems history import`` on a replacement edge PC. Its day (1-minute rows) and its week (15-minute rows) read
    back to the same quarter hours."""
    from zoneinfo import ZoneInfo

    from controller.dashboard.history_csv import history_csv

    start_ms = int(pd.Timestamp("2026-05-04T06:00+07:00").value // 1_000_000)
    columns = ["ts_ms", "pv_kw", "load_kw", "grid_kw", "battery_kw", "soc_pct"]
    minute_rows = [[start_ms + 60_000 * i, 100.0 + i, 500.0 + (i % 15), 400.0, 0.0, 50.0] for i in range(60)]
    day = {"start_ms": start_ms, "end_ms": start_ms + 3_600_000, "step_ms": 60_000, "columns": columns,
           "rows": minute_rows}
    quarters = [[start_ms + 900_000 * q, *np.mean([r[1:] for r in minute_rows[15 * q:15 * q + 15]], axis=0)]
                for q in range(4)]
    week = {"start_ms": start_ms, "end_ms": start_ms + 3_600_000, "step_ms": 900_000, "columns": columns,
            "rows": quarters}
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    by_minute = read_series_csv(write(tmp_path, history_csv(day, tz, None), "day.csv"))
    by_quarter = read_series_csv(write(tmp_path, history_csv(week, tz, None), "week.csv"))
    pd.testing.assert_frame_equal(by_minute, by_quarter, check_exact=False, atol=1e-3)
    assert by_minute["pv_kw"].tolist() == pytest.approx([107.0, 122.0, 137.0, 152.0])
    assert by_minute["load_kw"].tolist() == pytest.approx([507.0] * 4)


def test_rated_bound_and_wrong_unit_hint(tmp_path):
    # a load_kwh column holding kW: 800 "kWh" per quarter hour would be 3,200 kW on a 1,000 kW site
    text = "timestamp,load_kwh\n2026-01-01T00:00Z,800\n2026-01-01T00:15Z,810"
    errors = errors_of(write(tmp_path, text), columns=("load",), rated_kw={"load": 1000})
    message = errors["row 2, column load_kwh"]
    assert "3200 kW is above the plausible bound 1500 kW (1.5 × rated 1000 kW)" in message
    assert "look like kW: name the column load_kw" in message


def test_error_cap(tmp_path):
    text = "\n".join(["timestamp,load_kw"] + [f"2026-01-01T{h:02d}:00Z,x" for h in range(20)])
    with pytest.raises(DataError) as info:
        read_series_csv(write(tmp_path, text), columns=("load",), max_errors=5)
    assert len(info.value.errors) == 6
    assert info.value.errors[-1].message == "15 more error(s) not shown"


def test_synthetic_year_round_trip(tmp_path):
    site = SiteInfo(name="hp", timezone="Asia/Ho_Chi_Minh", location=Location(latitude=20.86, longitude=106.68))
    year = synthetic_year(site, PVSpec(kwp=500, tilt_deg=12), 2026, LoadShape(), seed=5, step_minutes=60)
    local = year.tz_convert(site.timezone)
    local.index = local.index.strftime("%Y-%m-%dT%H:%M%z").rename("timestamp")
    path = tmp_path / "year.csv"
    local.rename(columns={"pv_kw": "pv_kwh", "load_kw": "load_kwh"}).to_csv(path)  # hourly kWh = kW
    back = read_series_csv(path, rated_kw={"pv": 500, "load": 1200})
    assert len(back) == 4 * len(year)
    assert np.allclose(back["load_kw"].to_numpy()[::4], year["load_kw"].to_numpy())
    assert (back["pv_kw"] * 0.25).sum() == pytest.approx((year["pv_kw"]).sum())


# ---------------------------------------------------------------- spreadsheet exports


def test_semicolon_file_with_decimal_commas_and_day_first_dates(tmp_path):
    """What a spreadsheet saves where the comma is the decimal sign (vi, de, fr…): cells separated by ';', decimal
    commas, dots grouping thousands, dates day first."""
    text = """
Timestamp;load_kWh;pv_kWh
13/01/2026 08:00;1.200,5;120
13/01/2026 09:00;640,25;200,5
"""
    df = read_series_csv(write(tmp_path, text), timezone="Asia/Ho_Chi_Minh")
    assert df.index[0] == pd.Timestamp("2026-01-13T01:00Z")  # 13 January 08:00 at UTC+7
    assert df["load_kw"].tolist() == [1200.5] * 4 + [640.25] * 4
    assert df["pv_kw"].tolist() == [120.0] * 4 + [200.5] * 4


def test_semicolon_file_with_decimal_points_keeps_them(tmp_path):
    """No cell of a column has a comma: its dots are decimal points, not thousands (1.234 is 1.234)."""
    text = "timestamp;load_kw\n2026-01-05T08:00Z;1.234\n2026-01-05T08:15Z;2.5"
    df = read_series_csv(write(tmp_path, text), columns=("load",))
    assert df["load_kw"].tolist() == [1.234, 2.5]


def test_tab_separated_file(tmp_path):
    text = "timestamp\tload_kw\n2026-01-05T08:00Z\t100,5\n2026-01-05T08:15Z\t101"
    assert read_series_csv(write(tmp_path, text), columns=("load",))["load_kw"].tolist() == [100.5, 101.0]


def test_comma_file_is_not_read_with_decimal_commas(tmp_path):
    """In a comma-separated file a quoted '1,5' is text, not 1.5: said at its row."""
    text = 'timestamp,load_kw\n2026-01-05T08:00Z,"1,5"\n2026-01-05T08:15Z,2'
    assert errors_of(write(tmp_path, text), columns=("load",)) == {"row 2, column load_kw": "'1,5' is not a number"}


def test_month_first_dates_are_told_by_a_day_above_12(tmp_path):
    text = "date,load_kw\n01/13/2026 23:45,10\n01/14/2026 00:00,20"
    df = read_series_csv(write(tmp_path, text), columns=("load",), timezone="UTC")
    assert df.index.tolist() == [pd.Timestamp("2026-01-13T23:45Z"), pd.Timestamp("2026-01-14T00:00Z")]


def test_day_first_dates_all_12_or_less_are_told_by_running_day_by_day(tmp_path):
    """05/01 → 06/01 is one day on (5 → 6 January) read day first, a month on (1 May → 1 June) read month first."""
    lines = ["timestamp,load_kw"]
    lines += [f"{t:%d.%m.%Y %H:%M},{i}" for i, t in enumerate(pd.date_range("2026-01-05 22:00", periods=12,
                                                                           freq="15min"))]
    df = read_series_csv(write(tmp_path, "\n".join(lines)), columns=("load",), timezone="UTC")
    assert df.index[0] == pd.Timestamp("2026-01-05T22:00Z")
    assert df.index[-1] == pd.Timestamp("2026-01-06T00:45Z")
    newest_first = "\n".join([lines[0], *reversed(lines[1:])])  # a portal's export, newest row first
    reread = read_series_csv(write(tmp_path, newest_first, "r.csv"), columns=("load",), timezone="UTC")
    pd.testing.assert_frame_equal(reread, df)


def test_a_file_written_newest_first_is_read_in_time_order_and_checked(tmp_path):
    lines = quarter_hour_csv().splitlines()
    newest_first = write(tmp_path, "\n".join([lines[0], *reversed(lines[1:])]))
    pd.testing.assert_frame_equal(read_series_csv(newest_first), read_series_csv(write(tmp_path, "\n".join(lines),
                                                                                       "oldest_first.csv")))
    gap = [lines[0], *reversed(lines[1:])]
    del gap[3]  # 01:15 local is missing: between rows 3 (01:30) and 4 (01:00) of the file
    assert errors_of(write(tmp_path, "\n".join(gap), "gap.csv")) == {
        "row 3, column timestamp": "gap: 1 missing interval(s) after row 4"}
    unordered = [lines[0], lines[2], lines[1], *lines[3:]]  # one pair swapped: neither order holds
    assert errors_of(write(tmp_path, "\n".join(unordered), "swapped.csv")) == {
        "row 3, column timestamp": "timestamps go backwards (row 2 is later)",
        "row 4, column timestamp": "gap: 1 missing interval(s) after row 3"}


def test_dates_that_do_not_tell_day_from_month_are_refused_once(tmp_path):
    text = "timestamp,load_kw\n05/01/2026 08:00,10\n05/01/2026 08:15,20"
    assert errors_of(write(tmp_path, text), columns=("load",), timezone="UTC") == {
        "column timestamp": "'05/01/2026 08:00': no date in the file tells whether the day or the month comes first; "
                            "write ISO 8601 timestamps (year-month-day, e.g. 2026-01-05 08:00)"}
    text = "timestamp,load_kw\n13/01/2026 08:00,10\n01/13/2026 08:15,20"
    assert errors_of(write(tmp_path, text, "mixed.csv"), columns=("load",), timezone="UTC") == {
        "column timestamp": "some dates have the day first and others the month first; write ISO 8601 timestamps "
                            "(year-month-day, e.g. 2026-01-05 08:00)"}


def test_an_impossible_day_first_date_is_named_as_written(tmp_path):
    text = "timestamp,load_kw\n30/01/2026 08:00,10\n31/02/2026 08:15,20"
    assert errors_of(write(tmp_path, text), columns=("load",), timezone="UTC")["row 3, column timestamp"] == (
        "'31/02/2026 08:15' is not an ISO 8601 timestamp")


# ---------------------------------------------------------------- load from the grid meter


def test_load_is_the_grid_meters_net_import_plus_the_pv(tmp_path):
    """A factory with PV meters the grid (import +, export −) and the PV, not its load: load = grid + PV."""
    text = """
timestamp,grid_kw,pv_kw
2026-01-05T08:00+07:00,500,100
2026-01-05T08:15+07:00,-40,300
2026-01-05T08:30+07:00,-0.5,0.2
"""
    df = read_series_csv(write(tmp_path, text))
    assert df["load_kw"].tolist() == [600.0, 260.0, 0.0]  # the last: −0.3 kW, within the meters' mismatch: 0
    assert df["pv_kw"].tolist() == [100.0, 300.0, 0.2]


def test_load_from_import_and_export_energies(tmp_path):
    text = """
timestamp,import_kwh,export_kwh,pv_kwh
2026-01-05 08:00,600,0,120
2026-01-05 09:00,0,50,400
"""
    df = read_series_csv(write(tmp_path, text), timezone="Asia/Ho_Chi_Minh")
    assert df["load_kw"].tolist() == [720.0] * 4 + [350.0] * 4


def test_load_of_a_site_without_pv_is_its_grid_import(tmp_path):
    text = "timestamp,grid_kw\n2026-01-05T08:00Z,500\n2026-01-05T08:15Z,510"
    assert read_series_csv(write(tmp_path, text), columns=("load",))["load_kw"].tolist() == [500.0, 510.0]
    assert errors_of(write(tmp_path, text, "no_pv.csv")) == {
        "(header)": "no column pv_kw or pv_kwh (found timestamp, grid_kw)"}


def test_a_load_column_wins_over_the_grid(tmp_path):
    text = "timestamp,load_kw,grid_kw,pv_kw\n2026-01-05T08:00Z,700,500,100\n2026-01-05T08:15Z,710,510,100"
    assert read_series_csv(write(tmp_path, text))["load_kw"].tolist() == [700.0, 710.0]


def test_a_load_below_zero_from_the_grid_is_named_with_its_parts(tmp_path):
    text = """
timestamp,grid_kw,pv_kw
2026-01-05T08:00Z,-500,300
2026-01-05T08:15Z,-10,300
2026-01-05T08:30Z,200,-5
"""
    assert errors_of(write(tmp_path, text)) == {
        "row 2, column grid_kw": "the load derived from the grid is -200 kW, below 0 (grid_kw -500 kW + pv_kw 300 "
                                 "kW): the meters disagree, or the grid's sign is the other way (import is +)",
        "row 4, column pv_kw": "negative value -5",
    }  # row 3: −10 + 300 = 290 kW; row 2's −200 kW is beyond the 2 % of 300 kW (6 kW) two meters may disagree by
    text = "timestamp,import_kw,export_kw\n2026-01-05T08:00Z,-5,0\n2026-01-05T08:15Z,0,20"
    assert errors_of(write(tmp_path, text, "ie.csv"), columns=("load",)) == {
        "row 2, column import_kw": "negative value -5 | the load derived from the grid is -5 kW, below 0 (import_kw "
                                   "− export_kw = -5 kW): the meters disagree, or the grid's sign is the other way "
                                   "(import is +)",
        "row 3, column import_kw": "the load derived from the grid is -20 kW, below 0 (import_kw − export_kw = -20 "
                                   "kW): the meters disagree, or the grid's sign is the other way (import is +)",
    }


def test_no_load_and_no_grid_names_every_way_to_give_the_load(tmp_path):
    text = "timestamp,pv_kw,import_kw\n2026-01-05T08:00Z,1,2\n2026-01-05T08:15Z,1,2"
    assert errors_of(write(tmp_path, text)) == {
        "(header)": "no column load_kw or load_kwh; or the grid meter's grid_kw or grid_kwh (import +, export −), or "
                    "import_kw and export_kw (or _kwh), with the load derived from them and the PV (found timestamp, "
                    "pv_kw, import_kw)"}
    text = "timestamp,pv_kw,grid_kw,grid_kwh\n2026-01-05T08:00Z,1,2,3\n2026-01-05T08:15Z,1,2,3"
    assert errors_of(write(tmp_path, text, "two.csv")) == {
        "(header)": "more than one column for grid: grid_kw, grid_kwh; keep one"}


def test_a_meter_export_labelled_at_interval_ends_with_24_00(tmp_path):
    """00:15 labels 00:00–00:15 and 24:00 the day's last quarter hour: read with timestamps_at='end' they are the
    same intervals as the file labelled at their starts."""
    starts = pd.date_range("2026-01-13 00:00", periods=2 * 96, freq="15min")
    ends = [t + pd.Timedelta(minutes=15) for t in starts]
    as_end = [f"{t - pd.Timedelta(days=1):%d/%m/%Y} 24:00" if t.hour == t.minute == 0 else f"{t:%d/%m/%Y %H:%M}"
              for t in ends]
    assert as_end[95] == "13/01/2026 24:00" and as_end[96] == "14/01/2026 00:15"
    end_file = write(tmp_path, "\n".join(["timestamp,load_kw", *(f"{e},{i}" for i, e in enumerate(as_end))]))
    start_file = write(tmp_path, "\n".join(["timestamp,load_kw", *(f"{t:%Y-%m-%d %H:%M},{i}"
                                                                  for i, t in enumerate(starts))]), "starts.csv")
    expected = read_series_csv(start_file, columns=("load",), timezone="Asia/Ho_Chi_Minh")
    pd.testing.assert_frame_equal(read_series_csv(end_file, columns=("load",), timezone="Asia/Ho_Chi_Minh",
                                                  timestamps_at="end"), expected)
    assert expected.index[0] == pd.Timestamp("2026-01-12T17:00Z")
    iso_24 = write(tmp_path, "timestamp,load_kw\n2026-01-13 23:00,1\n2026-01-13 24:00,2", "iso24.csv")
    assert read_series_csv(iso_24, columns=("load",), timezone="UTC", step_minutes=60).index.tolist() == [
        pd.Timestamp("2026-01-13T23:00Z"), pd.Timestamp("2026-01-14T00:00Z")]


def test_a_column_named_with_its_unit_keeps_it_whatever_the_unit_of_bare_names(tmp_path):
    """``ems plan --series`` reads bare names as kW; a meter's hourly ``load_kWh`` is still energy per hour."""
    path = write(tmp_path, "timestamp,load_kWh\n2026-01-05T08:00Z,600\n2026-01-05T09:00Z,640")
    assert read_series_csv(path, columns=("load",), unit="kW")["load_kw"].tolist() == [600.0] * 4 + [640.0] * 4
    both = write(tmp_path, "timestamp,load,load_kwh\n2026-01-05T08:00Z,1,2\n2026-01-05T09:00Z,1,2", "both.csv")
    assert errors_of(both, columns=("load",), unit="kW") == {
        "(header)": "more than one column for load: load_kwh, load; keep one"}


def test_two_pv_columns_and_no_load_are_both_said(tmp_path):
    text = "timestamp,pv_kw,pv_kwh\n2026-01-05T08:00Z,1,2\n2026-01-05T08:15Z,1,2"
    found = errors_of(write(tmp_path, text))
    assert found["(header)"].startswith("more than one column for pv: pv_kw, pv_kwh; keep one | no column load_kw")


def test_title_lines_above_the_header_are_skipped_and_rows_keep_their_line_numbers(tmp_path):
    """A meter portal's export opens with a title and the meter; the header is the line naming the timestamp."""
    text = """Load profile export, 15-minute demand
Meter 12345678; customer Factory A

Timestamp;load_kWh
13/01/2026 08:00;150
13/01/2026 08:15;abc
"""
    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    assert errors_of(path, columns=("load",), timezone="Asia/Ho_Chi_Minh") == {
        "row 6, column load_kWh": "'abc' is not a number"}
    path.write_text(text.replace("abc", "160"), encoding="utf-8")
    df = read_series_csv(path, columns=("load",), timezone="Asia/Ho_Chi_Minh")
    assert df["load_kw"].tolist() == [600.0, 640.0]
    no_header = write(tmp_path, "Title\n13/01/2026 08:00;150", "no_header.csv")
    assert errors_of(no_header, columns=("load",))["(header)"].startswith("no timestamp column: name one of")
