"""``ems forecast check`` (controller/forecast_check.py): a forecast file through the controller's own intake,
summarised in local time (known answers), refusals naming the line or field, and the warnings for PV at night and a
feed whose timestamps are shifted by whole hours (a clear-sky day sent 7 h late)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from controller.config import load_config
from controller.forecast_check import check_forecast_file
from ems.cli import main
from optimizer.solar import clear_sky_pv_kw

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "examples" / "nam-cau-kien-site.yaml"  # Hai Phong, Asia/Ho_Chi_Minh, 2,200 kW AC
NOW = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def config():
    return load_config(SITE)


def write_csv(path: Path, starts: pd.DatetimeIndex, columns: dict[str, list[float]]) -> Path:
    rows = ["timestamp," + ",".join(columns)]
    rows += [",".join([t.isoformat(), *(f"{columns[c][i]:g}" for c in columns)]) for i, t in enumerate(starts)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def clear_day(config, shift_h: int) -> tuple[pd.DatetimeIndex, list[float]]:
    """The site's clear-sky day × 0.7 from local midnight, with its timestamps ``shift_h`` hours late."""
    starts = pd.date_range("2026-12-05T17:00:00Z", periods=96, freq="15min")
    sky = clear_sky_pv_kw(starts - pd.Timedelta(hours=shift_h), 0.25, config.site, config.pv) * 0.7
    return starts, [round(float(v), 2) for v in sky]


def test_an_accepted_csv_is_summarised_in_local_time(tmp_path: Path, config) -> None:
    """Three 15-minute steps of 100/90/80 kW with a band 40 kW wide from 17:00 UTC = 00:00 in Hai Phong: 67.5 kWh of
    a local day that is 0.75 h long in the file; too little for 12 h of shape, so no shift is judged."""
    path = write_csv(tmp_path / "fc.csv", pd.date_range("2026-12-05T17:00:00Z", periods=3, freq="15min"),
                     {"pv_kw": [100, 90, 80], "pv_kw_p10": [80, 70, 60], "pv_kw_p90": [120, 110, 100]})
    ok, lines = check_forecast_file(path, config.site, config.pv, source="weather",
                                    issued_at=datetime(2026, 12, 5, 12, 0, tzinfo=UTC), now=NOW)
    assert ok
    assert lines == [
        "accepted: source weather, 3 steps of 15 min from 2026-12-06 00:00 +07 to 2026-12-06 00:45 +07",
        "issued 2026-12-05 19:00 +07, valid until 2026-12-06 01:00 +07 (5.0 h left)",
        "pv_kw: 80.0–100.0 kW, mean 90.0 kW, with P10/P90 band",
        "  band width P90 − P10: mean 40.0 kW, max 40.0 kW",
        "  2026-12-06: 68 kWh (part: 0.75 h)"]  # 100 kW at night is below 5 % of the 2,200 kW AC limit: no warning


def test_a_feed_sent_seven_hours_late_is_named_and_a_right_one_is_not(tmp_path: Path, config) -> None:
    issued = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    starts, right = clear_day(config, 0)
    ok, lines = check_forecast_file(write_csv(tmp_path / "right.csv", starts, {"pv_kw": right}), config.site,
                                    config.pv, issued_at=issued, valid_hours=24, now=NOW)
    assert ok and not [line for line in lines if line.startswith("warning")]
    assert "  2026-12-06: " in lines[-1] and lines[-1].endswith(" kWh")  # a whole local day: no "(part …)"
    _, late = clear_day(config, 7)
    ok, lines = check_forecast_file(write_csv(tmp_path / "late.csv", starts, {"pv_kw": late}), config.site,
                                    config.pv, issued_at=issued, valid_hours=24, now=NOW)
    warnings = [line for line in lines if line.startswith("warning")]
    assert ok and len(warnings) == 2
    assert "pv_kw follows the clear-sky day best shifted +7 h" in warnings[1]
    assert "at night on" in warnings[0]


def test_refusals_name_the_line_or_field_and_json_takes_the_overrides(tmp_path: Path, config) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("timestamp,pv_kw\n2026-12-05T17:00:00Z,10\n2026-12-05T17:15:00Z,ten\n", encoding="utf-8")
    ok, lines = check_forecast_file(bad_csv, config.site, config.pv, issued_at=NOW, now=NOW)
    assert not ok and lines == [f"{bad_csv}: CSV line 3: pv_kw: 'ten' is not a number"]
    payload = {"source": "solcast", "issued_at": "2026-12-05T19:00:00+07:00", "start": "2026-12-05T19:00:00+07:00",
               "pv_kw": [0, 3000.0]}
    path = tmp_path / "fc.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    ok, lines = check_forecast_file(path, config.site, config.pv, now=NOW)
    assert not ok and "pv_kw[1]: 3000 kW is above the PV AC limit" in lines[0]
    path.write_text(json.dumps({**payload, "load_kw": [400.0, 410.0], "pv_kw": [0.0, 0.0]}), encoding="utf-8")
    ok, lines = check_forecast_file(path, config.site, config.pv, source="plant", valid_hours=2, now=NOW)
    assert ok and lines[0].startswith("accepted: source plant, 2 steps")
    assert lines[1] == "issued 2026-12-05 19:00 +07, valid until 2026-12-05 21:00 +07 (1.0 h left)"
    assert "load_kw: 400.0–410.0 kW, mean 405.0 kW, no band" in lines


def test_the_command_exits_1_on_a_refusal_and_refuses_a_time_without_offset(tmp_path: Path, capsys) -> None:
    path = tmp_path / "fc.csv"
    when = ["--issued-at", "2026-12-05T12:00:00+00:00", "--at", NOW.isoformat()]  # the wall clock never matters
    path.write_text("timestamp,pv_kw\n2026-12-05T17:00:00Z,-1\n", encoding="utf-8")
    assert main(["forecast", "check", str(path), "--config", str(SITE), *when]) == 1
    assert "pv_kw[0]: -1.0 kW is negative" in capsys.readouterr().err
    path.write_text("timestamp,load_kw\n2026-12-05T17:00:00Z,400\n", encoding="utf-8")
    assert main(["forecast", "check", str(path), "--config", str(SITE), *when]) == 0
    assert "load_kw: 400.0–400.0 kW, mean 400.0 kW, no band" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["forecast", "check", str(path), "--config", str(SITE), "--issued-at", "2026-12-05T12:00"])
    assert exited.value.code == 2 and "has no UTC offset" in capsys.readouterr().err


def test_the_shipped_example_passes_as_the_readme_shows(capsys) -> None:
    """README: the example feed (a banded clear-sky day for Nam Cau Kien) judged at 05:00 on its day."""
    assert main(["forecast", "check", str(ROOT / "deploy" / "examples" / "pv-forecast.csv"), "--config", str(SITE),
                 "--at", "2026-06-01T05:00:00+07:00"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accepted: source csv, 96 steps of 15 min from 2026-06-01 00:00 +07 to 2026-06-02 00:00 +07")
    assert "pv_kw: 0.0–1012.2 kW, mean 325.2 kW, with P10/P90 band" in out and "warning" not in out
