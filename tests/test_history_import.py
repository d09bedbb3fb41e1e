"""``ems history import``: a new site's controller seeded with the factory's meter export
(controller/history_import.py).

Three weeks of a factory drawing 800 kW on weekdays 07:00–19:00 and 300 kW otherwise, written as a meter portal
exports it (interval ends, ``;`` and decimal commas), imported into the state file of the real controller (fake
devices, manual clock), which restores it at its start and forecasts the day it has never measured.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import yaml

from controller.history_import import ImportRefused, import_history
from controller.planning import MeasuredHistory, StoredHistory
from controller.state_store import StateStore, read_stored
from ems.cli import main
from optimizer.timegrid import regular_grid

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
NOW = datetime(2026, 6, 10, 5, 30, tzinfo=TZ).astimezone(UTC)   # Wednesday 05:30 local: the controller's first start
EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "simulated-site.yaml"


def factory_kw(local: pd.DatetimeIndex) -> np.ndarray:
    """800 kW on weekdays 07:00–19:00, 300 kW otherwise. [kW]"""
    day = (local.day_of_week < 5) & (local.hour >= 7) & (local.hour < 19)
    return np.where(day, 800.0, 300.0)


def meter_export(path: Path, days: int = 21, end: datetime = NOW) -> Path:
    """``days`` of quarter hours before ``end`` as a meter portal writes them: the interval's end, day-first dates,
    ``;`` and decimal commas."""
    last = pd.Timestamp(end).tz_convert(TZ).floor("15min")
    starts = pd.date_range(last - pd.Timedelta(days=days), last, freq="15min", inclusive="left")
    lines = ["Thoi gian;Cong suat", "timestamp;load_kw"]   # a title line above the header
    for start, kw in zip(starts, factory_kw(starts), strict=True):
        lines.append(f"{start + pd.Timedelta(minutes=15):%d/%m/%Y %H:%M};{kw:.1f}".replace(".", ","))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def site_file(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["control"]["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_command_imports_the_period_the_forecasts_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = site_file(tmp_path)
    export = meter_export(tmp_path / "meter.csv", days=30)
    code = main(["history", "import", str(export), "--config", str(site), "--timestamps-at", "end",
                 "--at", NOW.isoformat()])
    out = capsys.readouterr().out
    assert code == 0, out
    # control.history_days (23) of quarter hours before 05:30: 23 × 96 steps, from 17 May 05:30 to 10 June 05:15
    assert out.startswith(f"imported {23 * 96:,} steps of 15 min, load (no PV column: the PV forecast learns from "
                          "the controller's own days), 2026-05-18 05:30 – 2026-06-10 05:15 (Asia/Ho_Chi_Minh), into ")
    store = StateStore(tmp_path / "state" / "state.sqlite", NOW)
    stored, why = read_stored(store, MeasuredHistory.KEY, StoredHistory)
    store.close()
    assert why is None and stored is not None and len(stored.rows) == 23 * 96
    first = stored.rows[0]
    assert first[1] is None and first[2] == 300.0    # no PV measured; 05:30 on a Monday: the night's load


def test_a_new_controller_forecasts_the_factorys_day_from_the_import(tmp_path: Path) -> None:
    """Without the import the controller's first forecast for the day's noon is the night's 300 kW; with it, the
    weekday's 800 kW."""
    from tests.test_external_forecast import controller_on_fake_site

    def noon_forecast(directory: Path) -> float:
        controller, *_ = controller_on_fake_site(directory, "nam-cau-kien", "evn-manufacturing-22kv", NOW)
        try:
            grid = regular_grid(NOW, 96, 15)
            _, load = controller.forecasts.forecast(grid)
            noon = datetime(2026, 6, 10, 12, 0, tzinfo=TZ).astimezone(UTC)
            return float(load[list(grid.starts).index(pd.Timestamp(noon))])
        finally:
            controller.store.close()

    cold = tmp_path / "cold"   # a controller that has measured the two hours of night since it started
    cold.mkdir()
    first, *_ = controller_on_fake_site(cold, "nam-cau-kien", "evn-manufacturing-22kv", NOW)
    config = first.config
    first.store.close()
    store = StateStore(cold / "state.sqlite", NOW)
    night = pd.date_range(pd.Timestamp(NOW) - pd.Timedelta(hours=2), periods=8, freq="15min")
    store.put(MeasuredHistory.KEY, {"step_minutes": 15, "rows": [[int(t.value // 10**9), 0.0, 300.0] for t in night]},
              NOW - timedelta(minutes=5))
    store.close()
    assert noon_forecast(cold) == pytest.approx(300.0, abs=1.0)

    seeded = tmp_path / "seeded"
    done = import_history(meter_export(tmp_path / "meter.csv"), config, seeded / "state.sqlite", NOW, "end")
    assert done.steps == 21 * 96 and done.kept == 0 and not done.pv
    assert noon_forecast(seeded) == pytest.approx(800.0, abs=1.0)


def test_the_controllers_own_steps_are_kept_and_a_running_controller_is_refused(tmp_path: Path) -> None:
    from tests.test_external_forecast import controller_on_fake_site

    controller, *_ = controller_on_fake_site(tmp_path, "nam-cau-kien", "evn-manufacturing-22kv", NOW)
    config = controller.config
    controller.store.close()
    state = tmp_path / "state.sqlite"
    store = StateStore(state, NOW)
    own_start = int(pd.Timestamp(NOW - timedelta(hours=1)).value // 10**9)
    store.put(MeasuredHistory.KEY, {"step_minutes": 15, "rows": [[own_start, 12.5, 555.0]]}, NOW)
    store.close()
    with pytest.raises(ImportRefused, match=r"the controller looks running: its state file .* was saved 0 s ago"):
        import_history(meter_export(tmp_path / "meter.csv"), config, state, NOW, "end")
    later = NOW + timedelta(minutes=10)   # the service stopped ten minutes ago
    done = import_history(meter_export(tmp_path / "meter.csv", end=later), config, state, later, "end")
    store = StateStore(state, later)
    stored, _ = read_stored(store, MeasuredHistory.KEY, StoredHistory)
    store.close()
    assert done.kept == 1 and [r for r in stored.rows if r[0] == own_start] == [(own_start, 12.5, 555.0)]
    old = meter_export(tmp_path / "old.csv", end=NOW - timedelta(days=40))
    with pytest.raises(ImportRefused, match=r"no reading in the 23 days before 2026-06-10 05:30 .* it covers "
                                            r"2026-04-\d\d"):
        import_history(old, config, tmp_path / "other" / "state.sqlite", NOW, "end")
    assert not (tmp_path / "other").exists()    # a file with nothing to import touches no state file


def test_the_dashboards_minute_download_of_another_pc_seeds_a_replacement(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A replaced edge PC is seeded with the old one's dashboard CSV (a day of 1-minute rows, start_utc times, empty
    cells where nothing was measured): each quarter hour is the mean of its minutes, an unmeasured one stays
    missing."""
    from controller.dashboard.history_csv import history_csv

    start = pd.Timestamp(NOW).floor("D") - pd.Timedelta(days=1)
    start_ms = int(start.value // 1_000_000)
    rows = [[start_ms + 60_000 * i, 50.0, float(factory_kw(pd.DatetimeIndex([start + pd.Timedelta(minutes=i)])
                                                           .tz_convert(TZ))[0])]
            for i in range(24 * 60)]
    for row in rows[60:75]:                                    # 01:00–01:15 UTC not measured: empty cells
        row[1:] = [None, None]
    day = {"start_ms": start_ms, "end_ms": start_ms + 86_400_000, "step_ms": 60_000,
           "columns": ["ts_ms", "pv_kw", "load_kw"], "rows": rows}
    export = tmp_path / "dashboard.csv"
    export.write_text(history_csv(day, TZ, None))
    site = site_file(tmp_path)
    assert main(["history", "import", str(export), "--config", str(site), "--at", NOW.isoformat()]) == 0
    assert capsys.readouterr().out.startswith(f"imported {24 * 4 - 1} steps of 15 min, PV and load, ")
    store = StateStore(tmp_path / "state" / "state.sqlite", NOW)
    stored, why = read_stored(store, MeasuredHistory.KEY, StoredHistory)
    store.close()
    assert why is None and stored is not None
    by_start = {row[0]: list(row[1:]) for row in stored.rows}      # UTC epoch s of each quarter hour
    start_s = start_ms // 1000
    assert len(by_start) == 24 * 4 - 1 and start_s + 4 * 900 not in by_start   # not measured: missing, never 0
    night = int((pd.Timestamp(start.tz_convert(TZ).date(), tz=TZ) + pd.Timedelta(hours=22)).value // 10**9)
    assert by_start[start_s] == [50.0, 800.0] and by_start[night] == [50.0, 300.0]   # 07:00 and 22:00 local
