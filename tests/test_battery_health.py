"""The battery's state of health: the rule of what planning takes from a BMS (optimizer.site), the controller's
memory of it (controller/battery_health.py), a group's aggregate and split, the SOC-rate rule, and the planner
that plans the energy an aged battery holds (controller.planning.PlanKeeper.at_health)."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from controller.battery_health import BatteryHealth, SteadyReading
from controller.groups import BatteryGroup
from controller.planning import PlanKeeper
from controller.validation import ValidationSettings, Validator
from drivers.readings import Quality, Reading
from optimizer.planner import Planner
from optimizer.service import SiteState
from optimizer.site import BatterySpec, health_share, planning_soh_pct
from optimizer.tariff import load_tariff
from tests.test_groups import UNITS, bat
from tests.test_one_path import KnownSeries, scenario
from tests.test_validation import SITE, snapshot


@pytest.mark.parametrize(("measured", "used"), [
    (None, None), (math.nan, None), (0.0, None), (49.9, None), (50.0, 50.0), (87.4, 87.0), (87.6, 88.0),
    (100.0, 100.0), (100.5, None)])
def test_planning_takes_a_whole_percent_between_50_and_100(measured, used):
    assert planning_soh_pct(measured) == used
    assert health_share(measured) == (1.0 if used is None else used / 100.0)


def test_a_battery_at_health_holds_that_share_of_its_nameplate_and_keeps_its_powers_and_window():
    spec = BatterySpec(capacity_kwh=1000, max_charge_kw=500, max_discharge_kw=400, soc_min_pct=10, soc_max_pct=95,
                       wear_cost_per_kwh=120.0)
    aged = spec.at_health(85.2)
    assert isinstance(aged, BatterySpec)
    assert aged.capacity_kwh == pytest.approx(850.0)
    assert (aged.soc_min_kwh, aged.soc_max_kwh) == pytest.approx((85.0, 807.5))
    assert aged.model_dump(exclude={"capacity_kwh"}) == spec.model_dump(exclude={"capacity_kwh"})
    assert spec.at_health(None) is spec and spec.at_health(100.0) is spec and spec.at_health(12.0) is spec


def test_the_controller_keeps_the_last_valid_soh_and_ignores_a_bms_that_reports_0(caplog):
    health = BatteryHealth(1000.0)
    assert health.to_dict() == {"soh_pct": None, "capacity_kwh": 1000.0, "nameplate_kwh": 1000.0}
    health.observe(None, 0.0)  # nothing read yet: the nameplate
    assert health.capacity_kwh == 1000.0
    with caplog.at_level(logging.INFO, logger="controller.battery_health"):
        health.observe(87.3, 1.0)
        assert health.capacity_kwh == pytest.approx(870.0)
        health.observe(None, 2.0)  # a poll that missed it changes nothing
        health.observe(0.0, 3.0)  # a BMS's "not computed": ignored, said once
        health.observe(0.0, 4.0)
    assert health.to_dict() == {"soh_pct": 87.0, "capacity_kwh": pytest.approx(870.0), "nameplate_kwh": 1000.0}
    assert [r.getMessage() for r in caplog.records] == [
        "battery state of health 87 %: planning on 870 kWh of the 1000 kWh nameplate",
        "battery state of health 0 % is not used for planning (outside 50–100 %: a BMS that does not compute it "
        "commonly reports 0); planning stays on 870 kWh"]


def test_a_step_of_the_soh_is_taken_once_it_holds_never_from_one_poll():
    """87 % taken at once; 87.5 at once (a drift); a one-poll glitch to 60 % never; a recalibration to 84 % after
    it held SOH_SETTLE_S (600 s) of site time — the energy planned on follows only then."""
    health = BatteryHealth(1000.0)
    for t, soh, taken in ((0, 87.0, 87.0), (1, 87.5, 88.0), (2, 60.0, 88.0), (3, 87.5, 88.0), (10, 84.0, 88.0),
                          (300, 84.1, 88.0), (609, 84.0, 88.0), (610, 84.0, 84.0)):
        health.observe(soh, float(t))
        assert health.soh_pct == taken, (t, soh)
    assert health.capacity_kwh == pytest.approx(840.0)
    reading = SteadyReading()
    reading.offer(90.0, 0.0)
    reading.offer(80.0, 0.0)
    reading.offer(70.0, 700.0)  # a new step restarts the wait
    reading.offer(70.0, 1299.0)
    assert reading.value == 90.0
    reading.offer(70.0, 1300.0)
    assert reading.value == 70.0


def _with_soh(readings: dict[str, Reading], soh: float | None) -> dict[str, Reading]:
    ts = readings["soc_pct"].timestamp
    return {**readings, "soh_pct": Reading(soh, "%", ts) if soh is not None else Reading(None, "%", ts, Quality.STALE,
                                                                                          "older than 5 s")}


def test_a_group_weighs_its_units_by_the_energy_they_hold():
    """bess-1 (600 kWh, window 10–90 %) at SOH 75 % holds 450 kWh; bess-2 (400 kWh, 20–95 %) reports no SOH.
    At SOC 50 / 80 %: energy above the floors 450·0.4 = 180 and 400·0.6 = 240 kWh of 450·0.8 + 400·0.75 = 660 usable,
    on the aggregate window [14, 92] % → 14 + 78 · 420/660 = 63.64 % (62 % on the nameplates); the group's SOH
    (450 + 400) / 1000 = 85 %; 200 kW of discharge shared 180 : 240 → 85.7 / 114.3 kW, to 0.1 kW towards 0."""
    group = BatteryGroup(UNITS)
    readings = {"bess-1": _with_soh(bat(soc=50), 75.0), "bess-2": bat(soc=80, ch=150, dis=200)}
    agg = group.observe(readings, 0.0)
    assert agg["soc_pct"] == pytest.approx(14.0 + 78.0 * 420.0 / 660.0)
    assert agg["soh_pct"] == pytest.approx(85.0)
    assert group.split(200.0) == pytest.approx({"bess-1": 85.7, "bess-2": 114.2}, abs=0.11)
    assert group.units["bess-1"].state.to_dict("kW")["soh_pct"] == 75.0
    assert "soh_pct" not in group.units["bess-2"].state.to_dict("kW")
    # the next poll misses the SOH, then the BMS says 0, then 60 for one poll: bess-1 still holds 450 kWh
    for t, soh in ((1.0, None), (2.0, 0.0), (3.0, 60.0)):
        agg = group.observe({**readings, "bess-1": _with_soh(bat(soc=50), soh)}, t)
        assert agg["soh_pct"] == pytest.approx(85.0)
    # no unit ever reported one: no SOH, the nameplates
    fresh = BatteryGroup(UNITS).observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80, ch=150, dis=200)}, 0.0)
    assert "soh_pct" not in fresh and fresh["soc_pct"] == pytest.approx(62.0)  # absent, not missing: no alarm


def test_the_soc_rate_rule_allows_for_the_energy_the_battery_holds():
    """1,000 kWh nameplate, 500 kW, 600 s between readings (soc_lag_s 0): the rule allows 1.1 · 500 · 1/6 h of
    1,000 kWh = 9.17 % + 1 % resolution = 10.2 %. At SOH 60 % the battery holds 600 kWh, which 500 kW moves 13.9 % in
    those 600 s: a jump on the nameplate, allowed (1.1 · 83.3/600 = 15.3 % + 1 %) on the energy it holds."""
    for capacity_kwh, expected in ((None, Quality.IMPLAUSIBLE), (600.0, Quality.OK)):
        v = Validator(SITE, ValidationSettings(soc_lag_s=0.0))
        assert v.check(snapshot(0, soc_pct=50.0), None, capacity_kwh)[0].readings["soc_pct"].ok
        checked = v.check(snapshot(600, soc_pct=50.0 - 500.0 / 6.0 / 600.0 * 100.0, battery_kw=500.0), None,
                          capacity_kwh)[0]
        assert checked.readings["soc_pct"].quality is expected


def test_a_change_of_the_energy_the_battery_holds_is_no_soc_jump():
    """A group's SOC moves when a unit's SOH changes (units at 90 and 10 %, one's SOH 100 → 70 %: 50 → 42.9 %
    at once). In one second that is a jump; with the energy the battery holds changing in the same check (1,000 →
    850 kWh) the SOC level starts afresh, and the next real jump is caught again."""
    for capacity_then, expected in ((None, Quality.IMPLAUSIBLE), (850.0, Quality.OK)):
        v = Validator(SITE)
        assert v.check(snapshot(0, soc_pct=50.0))[0].readings["soc_pct"].ok
        assert v.check(snapshot(1, soc_pct=42.9), None, capacity_then)[0].readings["soc_pct"].quality is expected
    assert v.check(snapshot(2, soc_pct=30.0), None, 850.0)[0].readings["soc_pct"].quality is Quality.IMPLAUSIBLE


def two_part_keeper() -> tuple[BatterySpec, Planner, PlanKeeper]:
    """The Nam Cau Kien battery (its spec, its nameplate planner) and a plan keeper of the two-part tariff over a
    600 kW load without PV."""
    sc = scenario("evn-two-part-22kv")
    spec = sc.battery.spec()
    nameplate = Planner(spec, sc.grid, sc.planner, sc.planner.horizon_steps)
    tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    starts = pd.date_range("2026-05-03", periods=3 * 96, freq="15min", tz="UTC")
    return spec, nameplate, PlanKeeper(nameplate, sc.planner, sc.grid, tariff, KnownSeries(
        starts.as_unit("ns").asi8, np.zeros(len(starts)), np.full(len(starts), 600.0)))


def test_the_plan_keeper_plans_the_energy_an_aged_battery_holds():
    """The same site (two-part tariff) planned at SOH None, 80 %, 80.2 % and None again: the planner, the plan's
    capacity and SOC window follow the SOH planning uses, and the month's peak target counts the aged energy."""
    spec, nameplate, keeper = two_part_keeper()
    now = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
    plans = {}
    for soh in (None, 80.0, 80.2, None):
        share = health_share(soh)
        plans[soh] = keeper._solve(now, SiteState(soc_kwh=0.5 * spec.capacity_kwh * share, soh_pct=soh))
        battery = keeper.planner.battery
        assert battery.capacity_kwh == pytest.approx(spec.capacity_kwh * share)
        assert keeper.peak_target.energy_kwh == pytest.approx(
            (battery.soc_max_kwh - battery.soc_min_kwh) * spec.discharge_efficiency)
    assert keeper.planner is nameplate
    aged = plans[80.2]
    assert aged.capacity_kwh == pytest.approx(0.8 * spec.capacity_kwh)
    assert max(aged.soc_kwh) <= 0.8 * spec.soc_max_kwh + 1e-6
    # both plans empty the battery to its floor for the 600 kW load: 10 % of the energy each holds
    assert min(aged.soc_kwh) == pytest.approx(0.8 * spec.soc_min_kwh)
    assert min(plans[None].soc_kwh) == pytest.approx(spec.soc_min_kwh)
    assert plans[None].capacity_kwh == spec.capacity_kwh


def test_a_unit_out_of_its_group_holds_energy_no_plan_counts_on():
    """Two units, 600 kWh at 50 % and 400 kWh not answering: the plan dispatches the 600 kWh unit only, 300 kWh
    in it (it was made for the whole 1,000 kWh at the first unit's SOC, 500 kWh it did not have)."""
    group = BatteryGroup(UNITS)
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(soc=80)}, 0.0)
    assert group.in_use_energy() is None                                   # every unit in: the whole battery
    group.observe({"bess-1": bat(soc=50), "bess-2": bat(kw=None, soc=None, ch=None, dis=None)}, 1.0)
    assert group.in_use_energy() == (600.0, 300.0)
    group.observe({"bess-1": bat(soc=None), "bess-2": bat(soc=None)}, 2.0)
    assert group.in_use_energy() is None                                   # none in: no plan is followed

    spec, nameplate, keeper = two_part_keeper()
    now = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
    half = keeper._solve(now, SiteState(soc_kwh=0.5 * 0.6 * spec.capacity_kwh, in_use_share=0.6))
    assert keeper.planner.battery.capacity_kwh == pytest.approx(0.6 * spec.capacity_kwh)
    assert half.capacity_kwh == pytest.approx(0.6 * spec.capacity_kwh)
    assert min(half.soc_kwh) == pytest.approx(0.6 * spec.soc_min_kwh)   # emptied to the floor of what is in use
    aged = keeper._solve(now, SiteState(soc_kwh=0.5 * 0.48 * spec.capacity_kwh, soh_pct=80.0, in_use_share=0.6))
    assert aged.capacity_kwh == pytest.approx(0.8 * 0.6 * spec.capacity_kwh)   # and of its state of health
    keeper._solve(now, SiteState(soc_kwh=0.5 * spec.capacity_kwh))
    assert keeper.planner is nameplate                                     # back in: the nameplate's planner


def test_the_live_planner_is_told_what_is_in_use():
    """The re-planner's site state: the in-use units' energy and share of the battery's while a unit is out; the
    group's SOC on the whole battery otherwise."""
    from controller.config import ControlSettings
    from controller.planning import Replanner

    in_use: list[tuple[float, float] | None] = [(600.0, 300.0)]
    replanner = Replanner(None, None, ControlSettings(), 15, BatteryHealth(1000.0), 1.0,  # type: ignore[arg-type]
                          lambda *_: None, lambda: in_use[0])
    site = replanner.site_now(snapshot(0, soc_pct=62.0), 0.0, 0.0)
    assert site is not None and (site.soc_kwh, site.in_use_share) == (300.0, 0.6)
    in_use[0] = None
    site = replanner.site_now(snapshot(0, soc_pct=62.0), 0.0, 0.0)
    assert site is not None and (site.soc_kwh, site.in_use_share) == (620.0, 1.0)
