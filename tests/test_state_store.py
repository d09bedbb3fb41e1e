"""State store: survives restarts, a corrupt file is moved aside, the month-to-date peak is a 30-min average."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.state_store import (
    DemandTracker,
    EnergyCounters,
    StateStore,
    StoredDemand,
    StoredEnergy,
    read_stored,
)
from optimizer.tariff import Tariff

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)
TZ = "Asia/Ho_Chi_Minh"


def month(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m")


def test_values_survive_a_reopen(tmp_path):
    store = StateStore(tmp_path / "state.sqlite", T0)
    store.put("plan", {"steps": [1, 2]}, T0)
    store.put("mode", "auto", T0)
    store.close()
    again = StateStore(tmp_path / "state.sqlite", T0)
    assert again.get("plan") == {"steps": [1, 2]} and again.get("mode") == "auto" and again.alarm is None
    assert again.get("nothing") is None


def test_corrupt_file_is_moved_aside_and_the_store_starts_clean(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = StateStore(path, T0)
    assert store.alarm and "moved to" in store.alarm
    assert store.get("plan") is None
    store.put("x", 1, T0)
    assert store.get("x") == 1
    assert len(list(tmp_path.glob("state.sqlite.corrupt-*"))) == 1


def test_demand_peak_is_the_highest_interval_average():
    d = DemandTracker(month, TZ, 30)
    t = T0
    # 30 min at 600 kW, then 30 min alternating 1200 / 0 kW every minute (average 600), then 30 min at 700
    for minute in range(90):
        kw = 600 if minute < 30 else (1200 if minute % 2 == 0 else 0) if minute < 60 else 700
        t = T0 + timedelta(minutes=minute + 1)
        d.add(t, kw, 1 / 60)
    assert d.peak_kw == pytest.approx(600)  # the 700 kW interval is still open
    d.add(t + timedelta(seconds=1), 0, 1 / 3600)
    assert d.peak_kw == pytest.approx(700)
    assert d.month_peak_kw(t) == pytest.approx(700)
    assert d.month_peak_kw(datetime(2026, 6, 2, tzinfo=UTC)) == 0.0


def test_demand_peak_survives_a_restart_mid_interval(tmp_path):
    d = DemandTracker(month, TZ)
    for s in range(0, 45 * 60, 10):
        d.add(T0 + timedelta(seconds=s + 10), 800, 10 / 3600)
    store = StateStore(tmp_path / "s.sqlite", T0)
    store.put(DemandTracker.KEY, d.to_dict(), T0)
    store.close()
    d2 = DemandTracker(month, TZ)
    stored, why = read_stored(StateStore(tmp_path / "s.sqlite", T0), DemandTracker.KEY, StoredDemand)
    assert why is None
    d2.restore(stored)
    assert d2.peak_kw == pytest.approx(800)
    for s in range(45 * 60, 60 * 60, 10):
        d2.add(T0 + timedelta(seconds=s + 10), 800, 10 / 3600)
    d2.add(T0 + timedelta(minutes=61), 0, 60 / 3600)
    assert d2.peak_kw == pytest.approx(800)  # the interval across the restart averaged to 800 too


def test_demand_intervals_follow_the_local_clock_and_billing_month():
    site = Tariff.preset("evn-manufacturing-22kv").bind(TZ)
    d = DemandTracker(site.billing_month, TZ)
    # 2026-05-31 16:30 UTC = 23:30 local; 17:00 UTC = June 1st local midnight
    start = datetime(2026, 5, 31, 16, 30, tzinfo=UTC)
    for s in range(0, 3600, 60):
        d.add(start + timedelta(seconds=s + 60), 500 if s < 1800 else 100, 1 / 60)
    d.add(start + timedelta(minutes=61), 0, 1 / 60)
    assert d.month == "2026-06" and d.peak_kw == pytest.approx(100)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-500, 2000), min_size=1, max_size=200))
def test_peak_never_exceeds_the_highest_power(powers):
    d = DemandTracker(month, TZ, 15)
    for i, p in enumerate(powers):
        d.add(T0 + timedelta(minutes=i + 1), p, 1 / 60)
    d.add(T0 + timedelta(days=1), 0, 0)
    assert 0 <= d.peak_kw <= max(0.0, max(powers)) + 1e-9


def test_energy_counters_and_money_saved():
    c = EnergyCounters()
    # 1 h: load 500, PV 300, battery discharges 200 → grid 0. Without battery: import 200 at 2000/kWh.
    c.add("2026-05-04", grid_kw=0, pv_kw=300, battery_kw=200, dt_h=1, import_price=2000, export_price=0,
          export_cap_kw=0)
    # 1 h: load 100, PV 400, battery charges 300 → grid 0. Without battery: 300 kW would be curtailed.
    c.add("2026-05-04", grid_kw=0, pv_kw=400, battery_kw=-300, dt_h=1, import_price=1000, export_price=500,
          export_cap_kw=0)
    assert c.load_kwh == pytest.approx(600) and c.discharge_kwh == 200 and c.charge_kwh == 300
    assert c.cost == 0 and c.cost_no_battery == pytest.approx(400_000) and c.saved == pytest.approx(400_000)
    again = EnergyCounters.from_stored(StoredEnergy.model_validate(c.to_dict()))
    assert again.saved == pytest.approx(c.saved)
    c.add("2026-05-05", grid_kw=100, pv_kw=0, battery_kw=0, dt_h=1, import_price=1000, export_price=0,
          export_cap_kw=0)
    assert c.day == "2026-05-05" and c.import_kwh == 100 and c.saved == 0


def test_measured_history_averages_steps_and_marks_gaps():
    import numpy as np
    import pandas as pd

    from controller.planning import MeasuredHistory

    h = MeasuredHistory(step_minutes=15, keep_days=1)
    for s in range(0, 2 * 3600, 10):
        t = T0 + timedelta(seconds=s)
        load = None if 1800 <= s < 2700 else 300.0 + (s // 900) * 10  # a 15-min gap in the load meter data
        h.add(t, 100.0, load, 10 / 3600)
    pv, load = h.histories()
    assert list(pv.ns[:3]) == [pd.Timestamp(T0 + timedelta(minutes=m)).value for m in (0, 15, 30)]
    assert load.values[0] == pytest.approx(300) and load.values[1] == pytest.approx(310)
    assert np.isnan(load.values[2]) and np.isnan(pv.values[2])  # missing is NaN, never 0
    assert h.last_load_kw == pytest.approx(370)
    for s in range(0, 26 * 3600, 900):  # older than keep_days is dropped
        h.add(T0 + timedelta(hours=2, seconds=s), 1.0, 1.0, 0.25)
    assert h.histories()[0].ns[0] >= pd.Timestamp(T0 + timedelta(hours=2)).value


# --- values inside a valid state file that are not what the controller stores (issue 11, failure 6) ----------

GOOD_DEMAND = {"month": "2026-05", "peak_kw": 640.0, "peak_at": "2026-05-04T03:00:00+00:00",
               "interval_start": None, "interval_kwh": 0.0}
UNTIL = "2026-05-04T05:00:00+00:00"
BAD_VALUES = [
    ("mode", {"mode": "turbo", "until": UNTIL}),                                   # unknown mode
    ("mode", {"mode": "manual", "until": "tomorrow at noon", "setpoint_kw": 100}),  # unparseable time
    ("mode", {"mode": "manual", "until": UNTIL}),                                  # manual without setpoint
    ("mode", ["auto", UNTIL]),                                                     # a list instead of an object
    ("reserve", {"soc_pct": "forty", "until": UNTIL}),                             # a reserve of "forty"
    ("reserve", {"soc_pct": 140, "until": UNTIL}),                                 # beyond 100 %
    ("reserve", {"soc_pct": 40, "until": "2026-05-04T05:00:00"}),                  # a time without its zone
    ("demand", {"month": "2026-05", "peak_kw": "high"}),                           # a non-numeric peak
    ("demand", {"month": "2026-05", "peak_kw": 1e400}),                            # infinite (JSON Infinity)
    ("energy", {"day": "2026-05-04", "import_kwh": [1, 2]}),                       # wrong type
    ("plan", {"version": "1", "steps": "none"}),                                   # a broken plan
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}-{i}" for i, (k, _v) in enumerate(BAD_VALUES)])
def test_a_bad_value_is_reset_with_an_alarm_and_the_rest_kept(tmp_path, key, value):
    """Before: 7 of these 11 exited with a traceback when the controller started."""
    from controller.cli import EXAMPLE_SITE
    from controller.config import load_config
    from controller.service import STATE_FILE, Controller
    from ems.clock import ManualClock

    now = datetime(2026, 5, 4, 4, 0, tzinfo=UTC)
    store = StateStore(tmp_path / STATE_FILE, now)
    store.put(DemandTracker.KEY, GOOD_DEMAND, now)
    store.put("reserve", {"soc_pct": 30.0, "until": UNTIL}, now)
    store.put(key, value, now)
    store.close()
    controller = Controller.from_config(load_config(EXAMPLE_SITE), EXAMPLE_SITE, ManualClock(now),
                                        state_directory=tmp_path)
    try:
        assert "state_value_invalid" in controller.alarms
        assert controller.alarms["state_value_invalid"].split(": ", 1)[1].startswith(f"{key}:")
        assert controller.store.get(key) is None  # reset to its default
        if key != "demand":
            assert controller.demand.month_peak_kw(now) == 640.0  # the rest kept
        if key != "reserve":
            assert controller.commands.reserve is not None and controller.commands.reserve.soc_pct == 30.0
    finally:
        controller.store.close()


def test_a_state_file_locked_by_another_process_never_stops_the_controller(tmp_path):
    """Before: the controller's write waited 5 s for the lock on the event loop, then raised and the service
    exited. Now the write waits at most BUSY_TIMEOUT_MS, keeps the values, raises ``state_store_unwritable``,
    and lands them once the other process lets go."""
    import sqlite3

    from controller.cli import EXAMPLE_SITE
    from controller.config import load_config
    from controller.service import STATE_FILE, Controller
    from ems.clock import ManualClock

    now = datetime(2026, 5, 4, 4, 0, tzinfo=UTC)
    controller = Controller.from_config(load_config(EXAMPLE_SITE), EXAMPLE_SITE, ManualClock(now),
                                        state_directory=tmp_path)
    other = sqlite3.connect(tmp_path / STATE_FILE, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        controller.apply({"command": "soc_reserve", "soc_pct": 40, "ttl_s": 3600})  # persists at once
        assert "state_store_unwritable" in controller.alarms and "locked" in controller.alarms["state_store_unwritable"]
        assert controller.store.get("reserve")["soc_pct"] == 40  # kept in memory
        other.execute("ROLLBACK")
        controller.persist(now)
        assert "state_store_unwritable" not in controller.alarms
        assert json.loads(other.execute("SELECT value FROM kv WHERE key = 'reserve'").fetchone()[0])["soc_pct"] == 40
    finally:
        other.close()
        controller.store.close()
