"""State store: survives restarts, a corrupt file is moved aside, a bad stored value is reset with an alarm."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from controller.accounting import DemandTracker
from controller.state_store import StateStore

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)

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


def _history_over(h, start: datetime, hours: float) -> None:
    """Feed ``h`` 10-second cycles: PV 100 kW, load 300 kW + 10 kW per quarter hour, the load meter silent over
    the third quarter hour (a gap)."""
    for s in range(0, int(hours * 3600), 10):
        load = None if 1800 <= s < 2700 else 300.0 + (s // 900) * 10
        h.add(start + timedelta(seconds=s), 100.0, load, 10 / 3600)


def test_measured_history_survives_a_restart_through_the_state_file(tmp_path):
    """The closed steps go to the state file and come back as the same history, gaps still missing (NaN)."""
    import numpy as np

    from controller.planning import MeasuredHistory, StoredHistory

    h = MeasuredHistory(step_minutes=15, keep_days=1)
    _history_over(h, T0, 2)
    assert h.closed == 7  # the eighth step is still open
    store = StateStore(tmp_path / "state.sqlite", T0)
    store.put(MeasuredHistory.KEY, h.stored(), T0)
    store.close()
    stored = StoredHistory.model_validate(StateStore(tmp_path / "state.sqlite", T0).get(MeasuredHistory.KEY))
    again = MeasuredHistory(step_minutes=15, keep_days=1)
    assert again.restore(stored, T0 + timedelta(hours=2, minutes=5)) is None
    for before, after in zip(h.histories(), again.histories(), strict=True):
        assert np.array_equal(before.ns, after.ns)
        assert np.allclose(before.values, after.values, rtol=0, atol=5e-4, equal_nan=True)  # kept to the watt
    assert np.isnan(again.histories()[1].values[2])


def test_restored_history_keeps_only_what_fits_now():
    from controller.planning import MeasuredHistory, StoredHistory

    h = MeasuredHistory(step_minutes=15, keep_days=1)
    _history_over(h, T0, 2)
    stored = StoredHistory.model_validate(h.stored())
    late = MeasuredHistory(step_minutes=15, keep_days=1)  # a day and an hour later: the first 4 steps are too old
    late.restore(stored, T0 + timedelta(days=1, hours=1))
    assert len(late.histories()[0].ns) == 3
    early = MeasuredHistory(step_minutes=15, keep_days=1)  # the clock went back an hour: later steps dropped
    early.restore(stored, T0 + timedelta(hours=1))
    assert len(early.histories()[0].ns) == 4
    other = MeasuredHistory(step_minutes=30, keep_days=1)
    assert other.restore(stored, T0 + timedelta(hours=2)) == (
        "measured history of 15-minute steps not restored: the planning step is 30 minutes now")
    assert len(other.histories()[0].ns) == 0


def test_controller_restarts_with_its_measured_history(tmp_path):
    """Before: a restart emptied the history, so the forecasters, their errors and the month's peak target
    started over. Now the controller saves it with its state and a new controller forecasts from it."""
    import numpy as np

    from controller.cli import EXAMPLE_SITE
    from controller.config import load_config
    from controller.service import Controller
    from ems.clock import ManualClock

    config = load_config(EXAMPLE_SITE)
    step = config.planner.step_minutes
    now = datetime(2026, 5, 4, 4, 0, tzinfo=UTC)
    first = Controller.from_config(config, EXAMPLE_SITE, ManualClock(now), state_directory=tmp_path)
    try:
        for s in range(0, 4 * 3600, 60):  # four hours before now at a flat 321 kW
            first.history.add(now - timedelta(hours=4) + timedelta(seconds=s), 0.0, 321.0, 1 / 60)
        first.history.add(now, 0.0, 321.0, 1 / 60)  # closes the last of those steps
        first.persist(now)
        saved = first.history.histories()
    finally:
        first.store.close()
    second = Controller.from_config(config, EXAMPLE_SITE, ManualClock(now + timedelta(minutes=step // 2)),
                                    state_directory=tmp_path)
    try:
        assert "state_value_invalid" not in second.alarms
        for before, after in zip(saved, second.history.histories(), strict=True):
            assert len(after.ns) == 4 * 60 // step and np.array_equal(before.ns, after.ns)
            assert np.allclose(before.values, after.values, rtol=0, atol=5e-4)
        assert second.history.histories()[1].values[-1] == 321.0
    finally:
        second.store.close()


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
    ("history", {"step_minutes": 15, "rows": [[1777852800, 1.0, "much"]]}),        # a load of "much"
    ("history", {"step_minutes": 15, "rows": [[1777853700, 1, 2], [1777852800, 1, 2]]}),  # out of order
    ("history", {"step_minutes": 15, "rows": [[1777852801, 1, 2]]}),               # off the 15-minute step
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
