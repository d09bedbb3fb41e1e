"""Asset groups (controller/groups.py): aggregation, split, units dropping out and coming back, verified control."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.groups import BatteryGroup, GroupSettings, PVGroup, water_fill
from drivers.readings import Quality, Reading, missing
from optimizer.site import BatteryUnit

TS = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
UNITS = {"bess-1": BatteryUnit(capacity_kwh=600, max_charge_kw=300, max_discharge_kw=300, soc_min_pct=10,
                               soc_max_pct=90),
         "bess-2": BatteryUnit(capacity_kwh=400, max_charge_kw=200, max_discharge_kw=250, soc_min_pct=20,
                               soc_max_pct=95)}


def bat(kw: float | None = 0.0, soc: float | None = 50.0, ch: float | None = 300.0, dis: float | None = 300.0,
        alarm: float = 0) -> dict[str, Reading]:
    def r(v: float | None, unit: str) -> Reading:
        return Reading(v, unit, TS) if v is not None else missing(unit, TS, "no answer within 0.4 s")
    return {"battery_kw": r(kw, "kW"), "soc_pct": r(soc, "%"), "max_charge_kw": r(ch, "kW"),
            "max_discharge_kw": r(dis, "kW"), "battery_alarm": r(alarm, "")}


def test_aggregate_is_sums_and_the_energy_weighted_soc():
    group = BatteryGroup(UNITS)
    agg = group.observe({"bess-1": bat(50, 50), "bess-2": bat(-20, 80, ch=150, dis=100)}, 0.0)
    # energy above the floors 600·0.4 + 400·0.6 = 480 of 480 + 300 usable, on the window [14, 92] % →
    # 14 + 78 · 480/780 = 62 %, the capacity-weighted mean (600·50 + 400·80) / 1000
    assert agg["soc_pct"] == pytest.approx(62.0)
    assert agg["battery_kw"] == 30.0
    assert agg["max_charge_kw"] == 300 + 150 and agg["max_discharge_kw"] == 300 + 100  # BMS capped by rating
    assert group.healthy and group.alarms() == {}


@pytest.mark.parametrize(("target", "expected"), [
    (200.0, {"bess-1": 100.0, "bess-2": 100.0}),    # equal available energy (240 kWh each): equal shares
    (350.0, {"bess-1": 250.0, "bess-2": 100.0}),    # bess-2's BMS allows 100 kW: bess-1 takes the rest
    (900.0, {"bess-1": 300.0, "bess-2": 100.0}),    # never beyond the group's allowance (400 kW)
    (-300.0, {"bess-1": -240.0, "bess-2": -60.0}),  # headroom 240 vs 60 kWh: 4 : 1
    (0.0, {"bess-1": 0.0, "bess-2": 0.0}),
])
def test_split_by_available_energy_and_headroom(target, expected):
    group = BatteryGroup(UNITS)
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80, ch=150, dis=100)}, 0.0)
    assert group.split(target) == expected


def test_a_unit_drops_out_at_once_and_comes_back_when_healthy():
    group = BatteryGroup(UNITS)
    cycles = [  # (readings of bess-2, in group, aggregate max discharge, split of 200 kW)
        (bat(soc=80, dis=100), True, 400.0, {"bess-1": 100.0, "bess-2": 100.0}),
        (bat(soc=None, dis=100), False, 300.0, {"bess-1": 200.0, "bess-2": 0.0}),
        (bat(soc=80, dis=100, alarm=4), False, 300.0, {"bess-1": 200.0, "bess-2": 0.0}),
        (bat(soc=80, dis=100), True, 400.0, {"bess-1": 100.0, "bess-2": 100.0}),
    ]
    for t, (readings, inside, max_dis, split) in enumerate(cycles):
        agg = group.observe({"bess-1": bat(soc=50), "bess-2": readings}, float(t))
        assert group.units["bess-2"].state.in_group is inside
        assert group.healthy is inside
        assert agg["max_discharge_kw"] == max_dis
        assert group.split(200.0) == split
        if not inside:
            assert set(group.alarms()) == {"unit_out:bess-2"}
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=None)}, 9.0)
    assert "soc_pct missing (no answer within 0.4 s)" in group.alarms()["unit_out:bess-2"]
    stale = bat(soc=80)
    stale["battery_kw"] = Reading(None, "kW", TS, Quality.STALE, "older than 5 s")
    group.observe({"bess-1": bat(soc=50), "bess-2": stale}, 10.0)
    assert "battery_kw stale (older than 5 s)" in group.alarms()["unit_out:bess-2"]
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80, alarm=4)}, 11.0)
    assert "faulted (alarm word 4)" in group.alarms()["unit_out:bess-2"]
    # a unit that does not answer: the points that share the cause are named together, the cause once
    group.observe({"bess-1": bat(soc=50), "bess-2": {}}, 12.0, {"bess-2": "cannot connect to tcp://10.0.0.32:502"})
    assert group.alarms()["unit_out:bess-2"] == ("bess-2 out of the battery group: battery_kw, soc_pct, max_charge_kw, "
                                                 "max_discharge_kw not read (cannot connect to tcp://10.0.0.32:502)")


def test_bms_zero_inside_the_window_takes_a_unit_out_but_a_full_unit_only_stops_charging():
    group = BatteryGroup(UNITS)
    agg = group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80, dis=0)}, 0.0)
    assert "in one direction: its BMS allows 0 kW discharge at SOC 80 %" in group.alarms()["unit_out:bess-2"]
    assert agg["max_discharge_kw"] == 300 and agg["max_charge_kw"] == 300 + 200  # it still charges
    assert not group.healthy
    assert group.split(250) == {"bess-1": 250.0, "bess-2": 0.0}
    assert group.split(-100)["bess-2"] < 0
    agg = group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=95, ch=0)}, 1.0)  # full: normal, no alarm
    assert group.alarms() == {} and group.healthy
    assert agg["max_charge_kw"] == 300 and agg["max_discharge_kw"] == 550
    assert group.split(-100) == {"bess-1": -100.0, "bess-2": 0.0}


def test_units_out_of_the_group_are_counted_with_what_they_do():
    group = BatteryGroup(UNITS)
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(kw=80, soc=80, alarm=1)}, 0.0)
    assert group.split(200) == {"bess-1": 120.0, "bess-2": 0.0}
    assert group.split(50) == {"bess-1": 0.0, "bess-2": 0.0}  # never charge one to cancel another
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(kw=-80, soc=80, alarm=1)}, 1.0)
    assert group.split(100) == {"bess-1": 100.0, "bess-2": 0.0}  # nor discharge more to cancel one charging


NOT_FOLLOWING = [  # power of bess-2 at t = 1..8 and from t = 9 on, after it was asked 100 kW at t = 0; verdict
    (0.0, 0.0, "stuck at 0.0 kW, asked 100.0 kW"),
    (-50.0, -50.0, "wrong sign: asked 100.0 kW, measures -50.0 kW"),
    (20.0, 60.0, "ignores its setpoint: asked 100.0 kW, measures 60.0 kW"),
]


@pytest.mark.parametrize(("early", "late", "verdict"), NOT_FOLLOWING)
def test_a_unit_not_following_is_named_and_taken_out(early, late, verdict):
    s = GroupSettings(response_s=5, ramp_pct_per_s=10, tolerance_kw=2, tolerance_pct=5, retry_s=60)
    group = BatteryGroup(UNITS, s)
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(kw=0, soc=80)}, 0.0)
    group.split(200)
    for name in ("bess-1", "bess-2"):
        group.wrote(name, 100.0, "", 0.0)
    # out of tolerance (max(2, 5 % of 250) = 12.5 kW) from t=1, from where it was then: 5 s + |100 − p| / (10 %/s
    # of 250 kW) → not following from t=10 (p = 0), 12 (p = −50), 9.2 (p = 20); asked something slightly
    # different meanwhile, the time runs on
    for t in (1.0, 5.0, 8.0):
        group.observe({"bess-1": bat(kw=100, soc=50), "bess-2": bat(kw=early, soc=80)}, t)
        group.wrote("bess-2", 100.0 + t, "", t)
        group.wrote("bess-2", 100.0, "", t)
        assert group.healthy, t
    agg = group.observe({"bess-1": bat(kw=100, soc=50), "bess-2": bat(kw=late, soc=80)}, 12.5)
    assert group.alarms() == {"unit_not_following:bess-2": f"bess-2 does not follow its setpoint: {verdict}; "
                                                           "taken out of the group"}
    assert not group.healthy and agg["max_discharge_kw"] == 300
    assert group.split(200)["bess-2"] == 0.0
    group.wrote("bess-2", 0.0, "", 13.0)
    group.observe({"bess-1": bat(kw=100, soc=50), "bess-2": bat(kw=0, soc=80)}, 30.0)  # follows 0 kW, too soon
    assert "unit_not_following:bess-2" in group.alarms()
    group.observe({"bess-1": bat(kw=100, soc=50), "bess-2": bat(kw=0, soc=80)}, 75.0)  # after retry_s: back
    assert group.healthy and group.alarms() == {}


def test_a_unit_within_tolerance_or_held_back_by_its_bms_is_following():
    group = BatteryGroup(UNITS, GroupSettings(response_s=1))
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80)}, 0.0)
    group.wrote("bess-2", 200.0, "", 0.0)
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(kw=189, soc=80)}, 100.0)
    assert group.healthy
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(kw=60, soc=80, dis=60)}, 200.0)  # BMS derated to 60 kW
    assert group.healthy


def test_a_failed_write_takes_the_unit_out_until_a_write_reaches_it():
    group = BatteryGroup(UNITS)
    group.wrote("bess-1", None, "read-back of battery_setpoint_kw is 0, wrote 100", 0.0)
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80)}, 0.0)
    assert "setpoint write failed: read-back" in group.alarms()["unit_out:bess-1"] and not group.healthy
    group.wrote("bess-1", 0.0, "", 1.0)
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80)}, 1.0)
    assert group.healthy


def test_pv_limit_is_shared_in_proportion_to_rating():
    group = PVGroup({"inv-1": 100.0, "inv-2": 100.0, "inv-3": 50.0})

    def pv(kw, pct=100.0):
        return {"pv_kw": Reading(kw, "kW", TS), "pv_limit_pct": Reading(pct, "%", TS)}

    agg = group.observe({"inv-1": pv(40, 40), "inv-2": pv(40, 40), "inv-3": pv(20, 40)}, 0.0)
    assert agg == {"pv_kw": 100.0, "pv_limit_pct": pytest.approx(40.0)}
    assert group.split(40.0) == {"inv-1": 40.0, "inv-2": 40.0, "inv-3": 40.0}   # 100 kW of 250
    agg = group.observe({"inv-1": pv(40, 40), "inv-2": {}, "inv-3": pv(20, 40)}, 1.0)
    assert "unit_out:inv-2" in group.alarms() and agg["pv_kw"] == 60.0
    split = group.split(40.0)  # 100 kW over the 150 kW still in the group
    assert split["inv-1"] == split["inv-3"] == pytest.approx(66.6)
    assert group.split(100.0)["inv-1"] == 100.0
    group.wrote("inv-1", 40.0, "", 2.0)
    for t in (3.0, 30.0):
        group.observe({"inv-1": pv(90, 40), "inv-2": pv(0), "inv-3": pv(20, 40)}, t)
    assert "produces 90.0 kW above its limit of 40.0 kW" in group.alarms()["unit_not_following:inv-1"]


def test_a_group_of_one_leaves_missing_data_and_failed_writes_to_the_device_alarms():
    group = BatteryGroup({"battery": UNITS["bess-1"]})
    group.observe({"battery": bat(soc=None)}, 0.0)
    assert not group.healthy and group.alarms() == {}      # point_missing:battery:soc_pct says it already
    group.observe({"battery": bat(soc=50, alarm=2)}, 1.0)
    assert "faulted (alarm word 2)" in group.alarms()["unit_out:battery"]


def test_water_fill():
    assert water_fill(10, [1, 1, 2], [10, 1, 10]) == pytest.approx([3.0, 1.0, 6.0])
    assert water_fill(100, [1, 0, 1], [10, 50, 20]) == pytest.approx([10, 0, 20])


# ---------------------------------------------------------------------------------------------- properties

unit_specs = st.builds(
    lambda cap, ch, dis, lo, width: BatteryUnit(capacity_kwh=cap, max_charge_kw=ch, max_discharge_kw=dis,
                                                soc_min_pct=lo, soc_max_pct=min(100.0, lo + width)),
    st.floats(0, 2000), st.floats(0, 1000), st.floats(0, 1000), st.floats(0, 50), st.floats(1, 100))
unit_readings = st.builds(
    lambda kw, soc, ch, dis, alarm, gone: bat(None if gone else kw, soc, ch, dis, alarm),
    st.floats(-1000, 1000), st.one_of(st.none(), st.floats(0, 100)), st.one_of(st.none(), st.floats(0, 1500)),
    st.one_of(st.none(), st.floats(0, 1500)), st.sampled_from([0, 0, 0, 1]), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(unit_specs, unit_readings), min_size=1, max_size=5), st.floats(-5000, 5000))
def test_no_unit_leaves_its_limits_and_none_works_against_the_target(units, target):
    specs = {f"u{i}": spec for i, (spec, _) in enumerate(units)}
    group = BatteryGroup(specs)
    agg = group.observe({f"u{i}": r for i, (_, r) in enumerate(units)}, 0.0)
    split = group.split(target)
    total = sum(split.values())
    for name, kw in split.items():
        spec, state = specs[name], group.units[name].state
        assert -spec.max_charge_kw - 1e-9 <= kw <= spec.max_discharge_kw + 1e-9
        assert -state.charge_kw - 1e-9 <= kw <= state.discharge_kw + 1e-9   # its BMS now and its SOC window
        assert kw * target >= 0                                               # never against the target
        if not state.in_group:
            assert kw == 0
    assert -(agg["max_charge_kw"] or 0.0) - 1e-6 <= total <= (agg["max_discharge_kw"] or 0.0) + 1e-6
    assert abs(total) <= abs(target) + 1e-9
    outside = sum(u.state.measured_kw or 0.0 for u in group.units.values() if not u.state.in_group)
    want = target - outside if target * (target - outside) > 0 else 0.0  # out units' power counts ...
    want = want if abs(want) <= abs(target) else target                   # ... only when it helps
    allowance = agg["max_discharge_kw"] if want > 0 else agg["max_charge_kw"]
    expected = min(abs(want), allowance or 0.0)
    assert abs(total) == pytest.approx(expected, abs=0.1 * len(split) + 1e-6)   # rounding towards 0 only


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 500), st.booleans()), min_size=1, max_size=12), st.floats(0, 100))
def test_pv_limits_stay_in_range_and_the_plant_under_its_limit(inverters, limit_pct):
    ratings = {f"inv-{i}": r for i, (r, _) in enumerate(inverters)}
    group = PVGroup(ratings)
    group.observe({f"inv-{i}": {"pv_kw": Reading(0.0, "kW", TS)} for i, (_, up) in enumerate(inverters) if up}, 0.0)
    split = group.split(limit_pct)
    assert all(0.0 <= pct <= 100.0 for pct in split.values())
    inside_kw = sum(ratings[n] * pct / 100 for n, pct in split.items() if group.units[n].state.in_group)
    assert inside_kw <= sum(ratings.values()) * limit_pct / 100 + 1e-6


@settings(max_examples=50, deadline=None)
@given(st.floats(15, 85), st.floats(15, 85), st.floats(-400, 400))
def test_socs_converge_under_the_split(soc_1, soc_2, target):
    """A steady charge or discharge never pulls the units' SOC fractions apart (lossless units, 1-min steps)."""
    socs = {"bess-1": soc_1, "bess-2": soc_2}
    group = BatteryGroup(UNITS)

    def fraction(name):
        s = UNITS[name]
        return (socs[name] - s.soc_min_pct) / (s.soc_max_pct - s.soc_min_pct)

    spread = abs(fraction("bess-1") - fraction("bess-2"))
    for _ in range(90):
        group.observe({n: bat(soc=min(100.0, max(0.0, socs[n]))) for n in socs}, 0.0)
        for name, kw in group.split(target).items():
            socs[name] -= 100.0 * kw / 60 / UNITS[name].capacity_kwh
        if not all(0.02 < fraction(n) < 0.98 for n in socs):
            break  # at the window's edge a 1-min step overshoots: the edge itself is the SOC limits' job
        now = abs(fraction("bess-1") - fraction("bess-2"))
        assert now <= spread + 1e-5  # the 0.1 kW rounding of a setpoint: 0.1 kW · 1 min of 400 kWh · 75 %
        spread = now


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-250, 250), min_size=1, max_size=60), st.integers(0, 4))
def test_a_unit_answering_late_is_never_taken_for_one_not_following(requests, delay_s):
    """Whatever the requests (a new one every second), a unit that carries each out ``delay_s`` < ``response_s``
    later is following."""
    group = BatteryGroup({"bess": UNITS["bess-1"]}, GroupSettings(response_s=5))
    for t in range(len(requests) + delay_s + 10):
        kw = requests[min(max(t - delay_s, 0), len(requests) - 1)] if t >= delay_s else 0.0
        group.observe({"bess": bat(kw=kw, soc=50)}, float(t))
        assert group.alarms() == {}, t
        group.wrote("bess", requests[min(t, len(requests) - 1)], "", float(t))
