"""The system clock stepped while the controller runs (docs/controller.md, "The system clock stepped"): the real
``Controller.cycle`` against in-memory devices on a manual clock whose wall time is stepped
(``ManualClock.step_wall``; its monotonic time goes on), the site of ``tests/test_cycle_tables.py``: 400 kW of load
at night, no PV, one cycle a second."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from controller.service import Controller
from ems.clock import ManualClock
from tests.fakes import FakeSite
from tests.test_cycle_tables import SITE, TARIFF, UNPLANNED

NIGHT = datetime(2026, 5, 4, 16, 0, tzinfo=UTC)  # 23:00 local, a Monday
LOAD_KW = 400.0


@dataclass
class Night:
    """A controller over the fake site at night, its battery at a given SOC."""

    clock: ManualClock
    site: FakeSite
    controller: Controller

    async def run(self, seconds: int) -> dict:
        """``seconds`` cycles a second apart, the load steady, no PV; the last published state."""
        state: dict = {}
        for _ in range(seconds):
            self.site.settle(LOAD_KW, 0.0)
            state = await self.controller.cycle()
            self.clock.advance(1.0)
        return state


def night(tmp_path: Path, start: datetime = NIGHT, soc_pct: float = 50.0) -> Night:
    clock = ManualClock(start)
    site = FakeSite(clock, pv_rated_kw=900.0, resend_s=10.0, reversion_s=30.0, max_age_s=5.0)
    site.battery.set(soc_pct=soc_pct)
    return Night(clock, site, Controller(SITE, site.devices, clock, TARIFF, tmp_path / "state.sqlite",
                                         forecasts=UNPLANNED))


async def test_a_clock_set_back_across_midnight_and_the_month_end_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The system clock of the edge PC is set back 20 minutes (an NTP step, an operator) at 00:05 local on 1 June,
    one minute into a 60 s manual setpoint. Before: the manual setpoint held 21 minutes instead of one; the
    measured history got the 23:45 step twice, out of order, and every forecast failed ("History.ns must be
    strictly increasing") until it aged out; today's energy counters restarted as 31 May's and the demand
    tracker switched back to May (wiping June's peak so far); and the SOC rule judged an unchanged SOC a jump
    ("from 10 to 10 % in -1199 s"): safe state. Now: the setpoint lapses 60 s after it was given, the steps from
    23:45 on are measured again, and the day and month under way carry on."""
    # 23:50 local on 31 May; the battery empty: the load is imported, the demand tracker sees it
    n = night(tmp_path, datetime(2026, 5, 31, 16, 50, tzinfo=UTC), soc_pct=10.0)
    accounting = n.controller.accounting
    try:
        await n.run(15 * 60)  # to 00:05 on 1 June
        assert accounting.energy.day == "2026-06-01"
        june_kwh = accounting.energy.import_kwh
        assert n.controller.apply({"command": "manual_setpoint", "battery_kw": -50, "ttl_s": 60}).accepted
        assert (await n.run(1))["mode"] == "manual"
        with caplog.at_level("WARNING", logger="controller.service"):
            n.clock.step_wall(-20 * 60)  # 23:45:01 on 31 May
            state = await n.run(59)
        assert "the system clock was set back by 1200 s" in caplog.text
        assert state["mode"] == "manual" and "clock_stepped" in state["alarms"]  # the operator is told
        assert (await n.run(1))["mode"] != "manual"  # 60 s of real time after it was given, not 21 minutes
        await n.run(16 * 60)  # past midnight again, to 00:02 on 1 June
        history = n.controller.history.histories()[1]  # raised before
        assert np.all(np.diff(history.ns) > 0)
        assert accounting.energy.day == "2026-06-01" and accounting.energy.import_kwh >= june_kwh
        assert accounting.demand.month == "2026-06"
        assert accounting.demand.past_peaks["2026-05"] == pytest.approx(LOAD_KW, abs=1.0)
        assert "clock_stepped" not in n.controller.alarms  # cleared 10 minutes after the step
    finally:
        n.controller.store.close()


async def test_a_clock_set_forward_lapses_commands_on_the_safe_side_and_counts_no_skipped_hour(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Set forward an hour 10 s into a 120 s manual setpoint and SOC reserve: a step cannot be told from a suspend
    (the monotonic clock stops in one), so both lapse by the wall clock; the skipped hour is not counted."""
    n = night(tmp_path)
    try:
        await n.run(60)
        assert n.controller.apply({"command": "manual_setpoint", "battery_kw": -50, "ttl_s": 120}).accepted
        assert n.controller.apply({"command": "soc_reserve", "soc_pct": 40, "ttl_s": 120}).accepted
        assert (await n.run(10))["mode"] == "manual"
        kwh = n.controller.accounting.energy.import_kwh
        with caplog.at_level("WARNING", logger="controller.service"):
            n.clock.step_wall(3600)
            state = await n.run(10)
        assert "the system clock was set forward by 3600 s" in caplog.text and "clock_stepped" in state["alarms"]
        assert state["mode"] != "manual" and n.controller.commands.reserve_pct(n.clock.now()) is None
        assert n.controller.accounting.energy.import_kwh - kwh < LOAD_KW * 11 / 3600 + 1e-6  # not the skipped hour
    finally:
        n.controller.store.close()


async def test_the_battery_keeps_covering_the_load_across_a_clock_set_back(tmp_path: Path) -> None:
    """The dispatcher watches the load's swing 30 s before it discharges to cover load; set back 10 minutes, the
    watch kept its start in the new clock's future and the battery stopped covering the load for 10 minutes."""
    n = night(tmp_path)
    setpoints = []
    try:
        for t in range(90):
            if t == 60:
                n.clock.step_wall(-600)
            setpoints.append((await n.run(1))["setpoints"]["battery_kw"])
    finally:
        n.controller.store.close()
    assert setpoints[59] == pytest.approx(390.0, abs=0.5)  # the load less the 10 kW export margin
    assert all(kw == pytest.approx(390.0, abs=0.5) for kw in setpoints[60:]), setpoints[60:]


async def test_reads_of_varying_length_are_not_taken_for_clock_steps(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The snapshot's time is taken before the reads: a read that takes 3 s one cycle and none the next (site
    time; 5 ms at 600x) is no step of the wall clock against the monotonic one."""
    n = night(tmp_path)
    polls = 0
    meter_poll = n.site.meter.poll

    async def slow_every_other_poll() -> dict:
        nonlocal polls
        polls += 1
        if polls % 2:
            n.clock.advance(3.0)
        return await meter_poll()

    n.site.meter.poll = slow_every_other_poll  # type: ignore[method-assign]
    try:
        with caplog.at_level("WARNING", logger="controller.service"):
            await n.run(10)
        assert polls == 10 and "system clock" not in caplog.text
    finally:
        n.controller.store.close()


async def test_a_restart_with_the_clock_set_back_keeps_a_command_no_longer_than_it_had_left(tmp_path: Path) -> None:
    """A 600 s manual setpoint and SOC reserve saved at 23:00; the controller restarts with the clock an hour
    behind (a dead RTC corrected by NTP later, a clock set back while it was down): each holds the 600 s it had
    left when saved, not the hour and 600 s to its wall-clock expiry."""
    first = night(tmp_path).controller
    assert first.apply({"command": "manual_setpoint", "battery_kw": -50, "ttl_s": 600}).accepted
    assert first.apply({"command": "soc_reserve", "soc_pct": 40, "ttl_s": 600}).accepted
    first.persist(NIGHT)
    first.store.close()
    left, hour_behind = timedelta(seconds=600), NIGHT - timedelta(hours=1)
    earlier = night(tmp_path, hour_behind).controller
    try:
        assert earlier.modes.request is not None and earlier.modes.request.until == hour_behind + left
        assert earlier.commands.reserve is not None and earlier.commands.reserve.until == hour_behind + left
    finally:
        earlier.store.close()
    right = night(tmp_path, NIGHT + timedelta(seconds=100)).controller  # the clock right: the stored expiry
    try:
        assert right.modes.request is not None and right.modes.request.until == NIGHT + left
    finally:
        right.store.close()
