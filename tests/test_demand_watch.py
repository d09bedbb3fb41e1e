"""The demand watch (controller/demand_watch.py): the running window's outlook worked out by hand, its property
against the dispatcher's window ceiling, the alarm's smoothing and hysteresis, and the real controller raising and
clearing ``demand_peak_rising`` under the two-part tariff (fake devices, manual clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.accounting import StoredDemand
from controller.commands import Reserve
from controller.demand_watch import ALARM, SMOOTHING_S, DemandWatch, outlook
from controller.targets import DemandWindow

# 10 minutes into a 30-minute window with 100 kWh imported (600 kW so far), 600 kW held this month
WINDOW = DemandWindow(length_h=0.5, elapsed_h=10 / 60, import_kwh=100.0)
T0 = datetime(2026, 6, 10, 3, 10, tzinfo=UTC)   # 10:10 in Hai Phong


def test_the_outlook_of_a_window_worked_out_by_hand() -> None:
    # 690 kW for the 20 minutes left: (100 + 690/3) / 0.5 = 660 kW; holding 600 kW allows (300 − 100) × 3 = 600 kW
    found = outlook(WINDOW, 690.0, 600.0)
    assert found.projected_kw == pytest.approx(660.0) and found.shed_kw == pytest.approx(90.0)
    assert found.left_min == pytest.approx(20.0) and not found.certain
    assert found.message() == ("this demand window is on course for 660.0 kW, above the 600.0 kW held this month: "
                               "shed 90.0 kW of load for the remaining 20 min to hold it (import now 690.0 kW)")
    holds = outlook(WINDOW, 500.0, 600.0)
    assert holds.projected_kw == pytest.approx((100 + 500 / 3) / 0.5) and holds.shed_kw == 0.0
    exporting = outlook(WINDOW, -80.0, 600.0)   # export is no import
    assert (exporting.import_kw, exporting.projected_kw) == (0.0, pytest.approx(200.0))
    # 310 kWh already: more than 600 kW allows for the whole window (300 kWh); nothing shed now undoes it
    certain = outlook(DemandWindow(0.5, 25 / 60, 310.0), 700.0, 600.0)
    assert certain.certain and certain.shed_kw == 700.0
    assert certain.message().startswith("this demand window will set a new month peak whatever is shed now")
    ended = outlook(DemandWindow(0.5, 0.5, 320.0), 700.0, 600.0)
    assert (ended.shed_kw, ended.left_min, ended.projected_kw) == (0.0, 0.0, pytest.approx(640.0))
    # the battery can still give 60 kW more: the factory sheds only the 30 kW beyond it; with 120 kW, nothing (the
    # alarm told the operator to shed 107–137 kW while the battery discharged 290 of its 500 kW)
    assert outlook(WINDOW, 690.0, 600.0, headroom_kw=60.0).shed_kw == pytest.approx(30.0)
    assert outlook(WINDOW, 690.0, 600.0, headroom_kw=120.0).shed_kw == 0.0


@given(length=st.sampled_from([0.25, 0.5, 1.0]), share=st.floats(0.0, 0.99), so_far_kw=st.floats(0.0, 2000.0),
       import_kw=st.floats(0.0, 3000.0), hold_kw=st.floats(1.0, 2000.0))
def test_shedding_what_the_watch_says_lands_the_window_on_the_level(length: float, share: float, so_far_kw: float,
                                                                    import_kw: float, hold_kw: float) -> None:
    """Shedding ``shed_kw`` for the rest of the window ends it at the level held, never below it unless the import
    was already under the dispatcher's window ceiling; the projection is the window's average at the import."""
    window = DemandWindow(length, share * length, so_far_kw * share * length)
    found = outlook(window, import_kw, hold_kw)
    remaining = length - window.elapsed_h
    assert found.projected_kw == pytest.approx((window.import_kwh + import_kw * remaining) / length)
    assert found.shed_kw >= 0.0
    if not found.certain:
        after = outlook(window, import_kw - found.shed_kw, hold_kw)
        assert after.shed_kw == pytest.approx(0.0, abs=1e-6)
        assert after.projected_kw == pytest.approx(min(found.projected_kw, hold_kw), rel=1e-9, abs=1e-6)
        assert (found.shed_kw > 0) == (import_kw > window.ceiling_kw(hold_kw))


def feed(watch: DemandWatch, start: datetime, seconds: int, import_kw: float, hold_kw: float | None = 600.0,
         window: DemandWindow = WINDOW):
    """One update a second; the last outlook."""
    found = None
    for k in range(seconds):
        found = watch.update(start + timedelta(seconds=k), import_kw, window, hold_kw)
    return found


def test_the_alarm_follows_the_last_minute_with_hysteresis() -> None:
    watch = DemandWatch(warning_kw=10.0)
    feed(watch, T0, 59, 500.0)
    spike = watch.update(T0 + timedelta(seconds=59), 2000.0, WINDOW, 600.0)   # one second of 2 MW
    assert spike is not None and spike.import_kw == pytest.approx((59 * 500 + 2000) / 60)
    assert spike.shed_kw == 0.0 and not watch.alarm                          # 525 kW: no trend
    found = feed(watch, T0 + timedelta(seconds=60), 60, 700.0)                # a minute above
    assert found is not None and found.import_kw == pytest.approx(700.0) and watch.alarm
    assert found.shed_kw == pytest.approx(100.0)
    feed(watch, T0 + timedelta(seconds=120), int(SMOOTHING_S), 606.0)      # shed 6 kW: above half of 10, stays
    assert watch.alarm
    feed(watch, T0 + timedelta(seconds=180), int(SMOOTHING_S), 604.0)      # shed 4 kW: below half, clears
    assert not watch.alarm
    feed(watch, T0 + timedelta(seconds=240), int(SMOOTHING_S), 700.0)
    assert watch.alarm
    # the next window starts, 7 kW to shed in it: between half the warning and the warning, where the last window's
    # alarm would have stayed; the new window's is judged afresh
    start = DemandWindow(0.5, 1 / 3600, 700.0 / 3600)
    hold = (693.0 * (0.5 - 1 / 3600) + 700.0 / 3600) / 0.5   # the level whose ceiling for the rest is 693 kW
    fresh = watch.update(T0 + timedelta(seconds=301), 700.0, start, hold)
    assert fresh is not None and fresh.shed_kw == pytest.approx(7.0) and not watch.alarm


def test_no_outlook_without_a_level_or_a_measurement_and_no_alarm_when_switched_off() -> None:
    watch = DemandWatch(warning_kw=10.0)
    feed(watch, T0, 60, 800.0)
    assert watch.alarm
    assert watch.update(T0 + timedelta(seconds=60), None, WINDOW, 600.0) is None and not watch.alarm   # missing
    assert feed(watch, T0 + timedelta(seconds=61), 60, 800.0, hold_kw=None) is None and not watch.alarm
    assert feed(watch, T0 + timedelta(seconds=121), 60, 800.0, hold_kw=0.0) is None   # nothing held yet
    silent = DemandWatch(warning_kw=None)
    found = feed(silent, T0, 60, 800.0)
    assert found is not None and found.shed_kw > 100 and not silent.alarm


async def test_the_controller_warns_while_the_battery_cannot_hold_the_window(tmp_path) -> None:
    """The real controller under the two-part tariff, no plan (the month-to-date peak is the level), the BMS allowing
    no discharge: a load that puts the window above the month's peak raises the alarm with its figures in the state
    (valid against the state's schema); the load falling back clears it."""
    from tests.test_external_forecast import controller_on_fake_site

    controller, site, clock, schema = controller_on_fake_site(tmp_path, "nam-cau-kien-two-part",
                                                              "evn-two-part-22kv", T0)
    try:
        window_start = T0 - timedelta(minutes=10)
        controller.demand.restore(StoredDemand(month="2026-06", peak_kw=600.0, peak_at=T0 - timedelta(days=2),
                                               interval_start=window_start, interval_kwh=100.0))
        site.battery.set(max_discharge_kw=0.0, max_charge_kw=0.0)
        site.settle(690.0, 0.0)
        state = await controller.cycle()
        jsonschema.validate(state, schema)
        demand = state["demand"]
        assert demand["hold_kw"] == 600.0 and demand["window_projected_kw"] == pytest.approx(660.0)
        assert demand["shed_to_hold_kw"] == pytest.approx(90.0) and demand["window_left_min"] == pytest.approx(20.0)
        # the running window as the tariff measures it: 100 kWh over 30 min so far, 10 of the 30 min gone
        assert demand["window_minutes"] == 30.0 and demand["window_elapsed_min"] == pytest.approx(10.0)
        assert demand["interval_avg_kw"] == pytest.approx(200.0, abs=1.0)
        assert ALARM in state["alarms"]
        assert "shed 90.0 kW of load for the remaining 20 min" in controller.alarms[ALARM]
        for _ in range(int(SMOOTHING_S) + 1):   # the load falls to 300 kW for a minute: the window holds
            clock.advance(1.0)
            site.settle(300.0, 0.0)
            state = await controller.cycle()
        assert ALARM not in state["alarms"] and state["demand"]["shed_to_hold_kw"] == 0.0
    finally:
        controller.store.close()


@pytest.mark.parametrize(("control", "reserve", "alarm"), [(None, None, False),
                                                             ({"initial_mode": "monitor_only"}, None, True),
                                                             (None, 60.0, True)])
async def test_no_load_is_shed_that_the_battery_is_about_to_take(tmp_path, control, reserve, alarm) -> None:
    """The window of the test above, the battery idle and now allowed 100 kW of discharge: in control (no plan yet,
    self-consumption) the dispatcher takes 100 kW off, enough to hold 600 kW for the rest of the window, so nothing
    is to be shed (the alarm told the operator to shed load while the battery stood by); monitor-only writes
    nothing, and an operator's SOC reserve above the SOC holds the battery back, so the 90 kW are the factory's to
    shed. The zero-export site first watches its load's swing for 30 s
    (with no discharge for the load): the battery could not help then, and the watch said so."""
    from tests.test_external_forecast import controller_on_fake_site

    controller, site, clock, _ = controller_on_fake_site(tmp_path, "nam-cau-kien-two-part", "evn-two-part-22kv", T0,
                                                         control=control)
    try:
        site.battery.set(max_discharge_kw=0.0, max_charge_kw=0.0)
        controller.demand.restore(StoredDemand(month="2026-06", peak_kw=600.0, peak_at=T0 - timedelta(days=2),
                                               interval_start=T0 - timedelta(minutes=10), interval_kwh=100.0))

        def to_shed(demand: dict, battery_gives_kw: float) -> float:
            """690 kW less what the battery gives, against the import that holds 600 kW for the rest (by hand)."""
            so_far_kwh = demand["interval_avg_kw"] * 0.5
            return max(0.0, 690.0 - battery_gives_kw - (600.0 * 0.5 - so_far_kwh) / (demand["window_left_min"] / 60))

        for second in range(61):
            if second:
                clock.advance(1.0)
            site.settle(690.0, 0.0)
            state = await controller.cycle()
            assert state["demand"]["shed_to_hold_kw"] == pytest.approx(to_shed(state["demand"], 0.0))
        assert ALARM in state["alarms"]                       # nothing the battery may give: the factory sheds
        site.battery.set(max_discharge_kw=100.0)
        if reserve is not None:   # the fake battery stands at 50 %
            controller.commands.reserve = Reserve(reserve, clock.now() + timedelta(hours=1))
        clock.advance(1.0)
        site.settle(690.0, 0.0)
        state = await controller.cycle()
        shed = to_shed(state["demand"], 0.0 if alarm else 100.0)
        assert state["demand"]["shed_to_hold_kw"] == pytest.approx(shed) and (shed > 80.0) is alarm
        assert (ALARM in state["alarms"]) is alarm
        if not alarm:
            assert state["setpoints"]["battery_kw"] == pytest.approx(100.0)   # what the dispatcher takes off
        if reserve is not None:
            assert state["setpoints"]["battery_kw"] == 0.0
    finally:
        controller.store.close()


def test_a_clock_set_back_keeps_the_last_minute_a_minute() -> None:
    """A minute at 700 kW, the clock set back 10 minutes, a minute at 500 kW: the outlook averages the last minute
    (500 kW), not the old minute stamped in the new clock's future, which stayed in it for 10 minutes."""
    watch = DemandWatch(warning_kw=10.0)
    feed(watch, T0, int(SMOOTHING_S), 700.0)
    watch.clock_stepped(timedelta(minutes=-10))
    found = feed(watch, T0 + timedelta(seconds=SMOOTHING_S - 600), int(SMOOTHING_S), 500.0)
    assert found is not None and found.import_kw == pytest.approx(500.0)
