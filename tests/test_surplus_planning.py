"""Surplus-day rule (optimizer/surplus.py): a constructed surplus day where the point forecast says "charge at
night" but the PV quantiles show a likely surplus, and the rule's known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer import surplus
from optimizer.planner import PlanInputs, Planner
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import regular_grid

# a wear cost at which a night-to-morning cycle does not pay (1190 / 0.95² + 2 · 300 > 1833 VND/kWh) while a
# night-to-evening-peak one does: the night charge is then only ever for the evening peak
BATTERY = BatterySpec(capacity_kwh=1000, max_charge_kw=500, max_discharge_kw=500, wear_cost_per_kwh=300)
GRID = GridSpec(import_cap_kw=1000, export_cap_kw=0)
SETTINGS = PlannerSettings()
OFF_PEAK, NORMAL, PEAK = 1190.0, 1833.0, 3398.0  # Decision 963 windows, VND/kWh

# 24 h of 15-minute steps from 02:00: off-peak until 06:00 (steps 0–15), normal until 17:30, peak until 22:30
# (steps 62–81), normal to the end
STEPS = 96
PRICE = np.full(STEPS, NORMAL)
PRICE[:16] = OFF_PEAK
PRICE[62:82] = PEAK
LOAD = np.full(STEPS, 300.0)
HOURS = 2 + np.arange(STEPS) / 4
SUN = np.clip(np.sin((HOURS - 6) / 12 * np.pi), 0, None)  # 06:00–18:00
POINT_PV = 250.0 * SUN  # below the load all day: no surplus on the point forecast
QUANTILES = np.stack([0.5 * POINT_PV, 3.0 * POINT_PV, np.minimum(3.6 * POINT_PV, 900.0)])  # P10, P50, P90


def day_plan(start: str, pv: np.ndarray, price: np.ndarray, soc0_kwh: float):
    """The plan over STEPS quarter hours from ``start`` (local, 6 June 2026) on the constructed day's load."""
    grid = regular_grid(pd.Timestamp(f"2026-06-06 {start}", tz="Asia/Ho_Chi_Minh"), STEPS, 15)
    inputs = PlanInputs(grid=grid, pv_kw=pv, load_kw=LOAD, import_price=price, export_price=np.zeros(STEPS),
                        soc0_kwh=soc0_kwh)
    return Planner(BATTERY, GRID, SETTINGS, STEPS).schedule(inputs)[0]


def plan_night_charge(pv: np.ndarray) -> float:
    """Energy the plan charges in the off-peak window (steps 0–15), all from the grid (no sun then). [kWh]"""
    return float(day_plan("02:00", pv, PRICE, 100.0).charge_kw[:16].sum() * 0.25)


def test_point_forecast_charges_at_night_the_rule_does_not():
    on_point = plan_night_charge(POINT_PV)
    assert on_point > 500.0  # the point forecast sees no surplus: fill up for the evening peak at the night price
    pv = surplus.surplus_day_pv(POINT_PV, QUANTILES, surplus.LEVELS, PRICE)
    assert np.array_equal(pv[:16], POINT_PV[:16])  # the cheap window itself keeps the point forecast
    assert plan_night_charge(pv) == pytest.approx(0.0, abs=1e-6)  # the likely surplus fills the battery instead


def test_level_is_the_price_ratio_and_the_quantile_is_interpolated():
    k, rho = surplus.surplus_level(PRICE, QUANTILES[2] - QUANTILES[0])
    assert k == 16 and rho == pytest.approx(OFF_PEAK / NORMAL)
    pv = surplus.surplus_day_pv(POINT_PV, QUANTILES, surplus.LEVELS, PRICE)
    w = (rho - 0.5) / 0.4
    assert np.allclose(pv[16:], (1 - w) * QUANTILES[1, 16:] + w * QUANTILES[2, 16:])
    assert np.allclose(surplus.at_level(QUANTILES, surplus.LEVELS, 0.05), QUANTILES[0])  # clamped
    assert np.allclose(surplus.at_level(QUANTILES, surplus.LEVELS, 0.3), 0.5 * (QUANTILES[0] + QUANTILES[1]))


def test_rule_leaves_the_point_forecast_outside_the_cheapest_window():
    later = np.roll(PRICE, -16)  # the horizon starts in the normal window: no night-charging decision now
    assert surplus.surplus_level(later, QUANTILES[2] - QUANTILES[0]) is None
    assert surplus.surplus_day_pv(POINT_PV, QUANTILES, surplus.LEVELS, later) is POINT_PV
    flat = np.full(STEPS, NORMAL)  # one price all day
    assert surplus.surplus_level(flat, QUANTILES[2] - QUANTILES[0]) is None
    no_band = np.zeros(STEPS)  # no PV spread known (no error history yet)
    assert surplus.surplus_level(PRICE, no_band) is None


def test_planned_pv_is_the_rule_only_in_the_cheapest_window_and_with_quantiles():
    asked: list[tuple[float, ...]] = []

    def quantiles(levels):
        asked.append(tuple(levels))
        return QUANTILES

    ruled = surplus.planned_pv("quantile", POINT_PV, PRICE, quantiles)
    assert np.array_equal(ruled, surplus.surplus_day_pv(POINT_PV, QUANTILES, surplus.LEVELS, PRICE))
    assert asked == [surplus.LEVELS]
    later = np.roll(PRICE, -20)  # the horizon starts in the normal window: no night-charging decision
    assert surplus.planned_pv("quantile", POINT_PV, later, quantiles) is POINT_PV and len(asked) == 1
    assert surplus.planned_pv("off", POINT_PV, PRICE, quantiles) is POINT_PV and len(asked) == 1
    assert surplus.planned_pv("quantile", POINT_PV, PRICE, lambda levels: None) is POINT_PV


# the same day from 06:00: normal until 17:30 (steps 0–45), peak until 22:30 (46–65), normal until midnight
# (66–71), off-peak to the end; the battery is full from the night
DAY_PRICE = np.concatenate([PRICE[16:], np.full(16, OFF_PEAK)])
DAY_POINT_PV = np.concatenate([POINT_PV[16:], np.zeros(16)])
DAY_QUANTILES = np.concatenate([QUANTILES[:, 16:], np.zeros((3, 16))], axis=1)


def plan_morning_discharge(pv: np.ndarray) -> float:
    """Energy the plan from 06:00 discharges before the evening peak (steps 0–45). [kWh]"""
    return float(day_plan("06:00", pv, DAY_PRICE, 950.0).discharge_kw[:46].sum() * 0.25)


def test_point_forecast_keeps_the_battery_full_the_room_rule_makes_room_for_the_surplus():
    """A daylight window before the evening peak: on the point forecast (no surplus) a kWh discharged in the
    morning would be bought back at the same price, so the plan keeps the battery full; on the PV quantile at
    the room level the afternoon surplus refills it for free, so the plan discharges in the morning."""
    end = surplus.room_window_end(DAY_PRICE, DAY_POINT_PV)
    assert end == 46  # the peak window's first step
    steps = surplus.room_steps(DAY_PRICE, end)
    # the rest of the window, and the normal-price quarter hours after the peak (22:30–24:00, dark) before off-peak
    assert np.array_equal(steps, np.concatenate([np.arange(1, 46), np.arange(66, 80)]))
    pv = surplus.room_day_pv(DAY_POINT_PV, DAY_QUANTILES, surplus.LEVELS, steps, 0.7)
    assert pv[0] == DAY_POINT_PV[0] and np.array_equal(pv[end:], DAY_POINT_PV[end:])  # first step, later windows
    w = (0.7 - 0.5) / 0.4
    np.testing.assert_allclose(pv[1:end], (1 - w) * DAY_QUANTILES[1, 1:end] + w * DAY_QUANTILES[2, 1:end])
    assert plan_morning_discharge(DAY_POINT_PV) == pytest.approx(0.0, abs=1e-6)
    # the whole net load before the surplus begins comes from the battery: that much room is made for it
    first_surplus = int(np.flatnonzero(pv > LOAD)[0])
    morning_net_load = float(((LOAD - pv)[:first_surplus]).sum() * 0.25)
    assert morning_net_load > 200.0
    assert plan_morning_discharge(pv) == pytest.approx(morning_net_load, rel=1e-6)


def test_room_rule_needs_a_dearer_window_next_and_daylight_in_this_one():
    assert surplus.room_window_end(np.roll(DAY_PRICE, -46), np.roll(DAY_POINT_PV, -46)) is None  # in the peak
    assert surplus.room_window_end(np.full(STEPS, NORMAL), DAY_POINT_PV) is None  # one price all day
    assert surplus.room_window_end(DAY_PRICE, np.zeros(STEPS)) is None  # no daylight before the peak
    assert surplus.room_window_end(DAY_PRICE[:1], DAY_POINT_PV[:1]) is None
    assert surplus.room_window_end(np.array([]), np.array([])) is None


def test_planned_pv_makes_room_only_with_a_room_level():
    asked: list[tuple[float, ...]] = []

    def quantiles(levels):
        asked.append(tuple(levels))
        return DAY_QUANTILES

    ruled = surplus.planned_pv("quantile", DAY_POINT_PV, DAY_PRICE, quantiles, room_level=0.7)
    assert np.array_equal(ruled, surplus.room_day_pv(DAY_POINT_PV, DAY_QUANTILES, surplus.LEVELS,
                                                     surplus.room_steps(DAY_PRICE, 46), 0.7))
    assert asked == [surplus.LEVELS]
    # no room level: no room rule; "off" turns both halves off
    assert surplus.planned_pv("quantile", DAY_POINT_PV, DAY_PRICE, quantiles, room_level=None) is DAY_POINT_PV
    assert surplus.planned_pv("off", DAY_POINT_PV, DAY_PRICE, quantiles, room_level=0.7) is DAY_POINT_PV
    assert len(asked) == 1
    assert surplus.planned_pv("quantile", DAY_POINT_PV, DAY_PRICE, lambda levels: None, 0.7) is DAY_POINT_PV


# A Saturday from 06:00 on one flat energy price under a demand charge (the Japanese preset's kind): the battery is
# kept full (optimizer.costs.terminal_value_per_kwh), 300 kW of load, the point forecast below it all day
FLAT_PRICE = np.full(STEPS, NORMAL)
FLAT_POINT_PV = np.concatenate([POINT_PV[16:], np.zeros(16)])
FLAT_QUANTILES = np.concatenate([QUANTILES[:, 16:], np.zeros((3, 16))], axis=1)
FLAT_LEVEL_PV = 3.3 * FLAT_POINT_PV  # the quantile at 0.7: halfway between P50 (3 ×) and P90 (3.6 ×)


def flat_day_plan(pv: np.ndarray):
    """The plan of the flat-price Saturday on ``pv``, the battery full (95 %), the month's peak 800 kW."""
    grid = regular_grid(pd.Timestamp("2026-06-06 06:00", tz="Asia/Ho_Chi_Minh"), STEPS, 15)
    inputs = PlanInputs(grid=grid, pv_kw=pv, load_kw=LOAD, import_price=FLAT_PRICE, export_price=np.zeros(STEPS),
                        soc0_kwh=950.0, demand_charge_per_kw=200_000.0, month_peak_kw=800.0,
                        billing_month=np.zeros(STEPS, dtype=int))
    return Planner(BATTERY, GRID, SETTINGS, STEPS).schedule(inputs)[0]


def test_on_a_flat_price_the_surplus_steps_are_planned_on_the_pv_quantile():
    """Known answer: the quantile at 0.7 (3.3 × the point) where it covers the 300 kW load — the point forecast's
    96–250 kW steps, 07:30 to 16:45 here — and the point forecast on every other step."""
    pv = surplus.flat_surplus_pv(FLAT_POINT_PV, FLAT_QUANTILES, surplus.LEVELS, LOAD, 0.7)
    covered = FLAT_LEVEL_PV >= LOAD
    assert np.flatnonzero(covered).tolist() == list(range(6, 43))
    np.testing.assert_allclose(pv[covered], FLAT_LEVEL_PV[covered])
    assert np.array_equal(pv[~covered], FLAT_POINT_PV[~covered])
    # never below the point forecast, where a quantile band would sit under it
    low = np.stack([0.5 * FLAT_POINT_PV, 0.8 * FLAT_POINT_PV, np.full(STEPS, 400.0)])
    kept = surplus.flat_surplus_pv(FLAT_POINT_PV, low, surplus.LEVELS, LOAD, 0.7)
    assert np.all(kept >= FLAT_POINT_PV)


def test_on_a_flat_price_the_battery_kept_full_makes_room_for_a_likely_surplus():
    """On the point forecast (no surplus) a kWh discharged would be bought back at the same price and the battery
    is kept full through the day; on the flat rule's PV the surplus refills it for free, so the plan discharges
    the whole net load before the surplus begins, and the surplus refills the battery: it ends the day as full."""
    on_point = flat_day_plan(FLAT_POINT_PV)
    assert float(on_point.discharge_kw.sum()) == pytest.approx(0.0, abs=1e-6)
    pv = surplus.flat_surplus_pv(FLAT_POINT_PV, FLAT_QUANTILES, surplus.LEVELS, LOAD, 0.7)
    ruled = flat_day_plan(pv)
    first_surplus = int(np.flatnonzero(pv > LOAD)[0])
    morning_net_load = float(((LOAD - pv)[:first_surplus]).sum() * 0.25)
    assert morning_net_load > 300.0
    assert float(ruled.discharge_kw[:first_surplus].sum() * 0.25) == pytest.approx(morning_net_load, rel=1e-6)
    assert float(ruled.import_kw[:first_surplus].max()) == pytest.approx(0.0, abs=1e-6)
    assert ruled.soc_kwh[-1] == pytest.approx(on_point.soc_kwh[-1], abs=1e-3)


def test_planned_pv_on_a_flat_price_needs_a_flat_level_and_the_load():
    asked: list[tuple[float, ...]] = []

    def quantiles(levels):
        asked.append(tuple(levels))
        return FLAT_QUANTILES

    assert surplus.is_flat(FLAT_PRICE) and not surplus.is_flat(DAY_PRICE) and not surplus.is_flat(np.array([]))
    ruled = surplus.planned_pv("quantile", FLAT_POINT_PV, FLAT_PRICE, quantiles, None, LOAD, 0.7)
    assert np.array_equal(ruled, surplus.flat_surplus_pv(FLAT_POINT_PV, FLAT_QUANTILES, surplus.LEVELS, LOAD, 0.7))
    assert asked == [surplus.LEVELS]
    assert surplus.planned_pv("quantile", FLAT_POINT_PV, FLAT_PRICE, quantiles, 0.7, LOAD, None) is FLAT_POINT_PV
    assert surplus.planned_pv("quantile", FLAT_POINT_PV, FLAT_PRICE, quantiles, 0.7, None, 0.7) is FLAT_POINT_PV
    assert surplus.planned_pv("off", FLAT_POINT_PV, FLAT_PRICE, quantiles, 0.7, LOAD, 0.7) is FLAT_POINT_PV
    assert len(asked) == 1
    assert surplus.planned_pv("quantile", FLAT_POINT_PV, FLAT_PRICE, lambda levels: None, None, LOAD,
                              0.7) is FLAT_POINT_PV
    # a price that is not flat keeps the other rules: the flat level changes nothing there
    assert np.array_equal(surplus.planned_pv("quantile", DAY_POINT_PV, DAY_PRICE, lambda levels: DAY_QUANTILES,
                                             None, LOAD, 0.7), DAY_POINT_PV)


def keeper_inputs(start: pd.Timestamp, point_pv: np.ndarray, quantiles: np.ndarray, preset: str):
    """The live PlanKeeper's PlanInputs at ``start`` from a forecast source with these PV forecasts."""
    from controller.planning import PlanKeeper
    from optimizer.service import SiteState
    from optimizer.site import TariffRef
    from optimizer.tariff import load_tariff

    starts_ns = regular_grid(start, STEPS, 15).starts_ns

    class Source:
        def forecast(self, grid):
            at = np.searchsorted(starts_ns, grid.starts_ns)
            return point_pv[at], LOAD[at]

        def peak_risk(self, grid, pv_kw, load_kw):
            return np.zeros(len(grid))

        def pv_quantiles(self, grid, levels):
            return quantiles[:, np.searchsorted(starts_ns, grid.starts_ns)]

        def measured(self):
            return None

    tariff = load_tariff(TariffRef(preset=preset), Path(".")).bind("Asia/Ho_Chi_Minh")
    keeper = PlanKeeper(Planner(BATTERY, GRID, SETTINGS, STEPS), SETTINGS, GRID, tariff, Source(), 10.0)
    return keeper.inputs(start.to_pydatetime(), SiteState(100.0, None, None, 0.0))


def test_the_live_plan_keeper_plans_on_the_same_surplus_day_pv():
    """The live PlanKeeper hands the planner what the offline MPC does: the rule's PV from its source's quantiles."""
    inputs = keeper_inputs(pd.Timestamp("2026-06-06 02:00", tz="Asia/Ho_Chi_Minh"), POINT_PV, QUANTILES,
                           "evn-manufacturing-22kv")
    assert inputs.import_price[0] == inputs.import_price.min()  # 02:00 is off-peak: the night-charging decision
    expected = surplus.surplus_day_pv(POINT_PV, QUANTILES, surplus.LEVELS, inputs.import_price)
    assert not np.array_equal(expected, POINT_PV)
    np.testing.assert_allclose(inputs.pv_kw, expected)


def test_the_live_plan_keeper_makes_room_under_a_demand_charge_only_where_the_pv_covers_the_load():
    """At 06:00 on a Saturday under the Decision 963 windows the keeper plans the day on the room level's PV (the
    settings' default, as the offline MPC); under the two-part pilot's demand charge only on the room steps where
    that PV covers the load forecast (07:30–16:45 here: not the early morning's steps)."""
    start = pd.Timestamp("2026-06-06 06:00", tz="Asia/Ho_Chi_Minh")
    inputs = keeper_inputs(start, DAY_POINT_PV, DAY_QUANTILES, "evn-manufacturing-22kv")
    end = surplus.room_window_end(inputs.import_price, DAY_POINT_PV)
    assert end == 46 and SETTINGS.surplus_room_level == 0.7
    steps = surplus.room_steps(inputs.import_price, end)
    np.testing.assert_allclose(inputs.pv_kw, surplus.room_day_pv(DAY_POINT_PV, DAY_QUANTILES, surplus.LEVELS, steps,
                                                                   SETTINGS.surplus_room_level))
    demand = keeper_inputs(start, DAY_POINT_PV, DAY_QUANTILES, "evn-two-part-22kv")
    assert demand.demand_charge_per_kw > 0
    demand_steps = surplus.room_steps(demand.import_price, surplus.room_window_end(demand.import_price, DAY_POINT_PV))
    covered = demand_steps[3.3 * DAY_POINT_PV[demand_steps] >= LOAD[demand_steps]]
    assert covered.tolist() == list(range(6, 43))
    np.testing.assert_allclose(demand.pv_kw, surplus.room_day_pv(DAY_POINT_PV, DAY_QUANTILES, surplus.LEVELS, covered,
                                                                   SETTINGS.surplus_room_level))


def test_under_a_demand_charge_the_room_rule_keeps_the_point_forecast_where_the_load_is_not_covered():
    """Known answer: a Saturday with a 900 kW hour at noon (steps 24–27) inside the room window: under a demand
    charge the quantile is planned on the covered steps only (07:30–16:45 but noon's hour), the point forecast on the
    rest; without a demand charge on every room step, as before; with no load forecast at all, nowhere."""
    load = LOAD.copy()
    load[24:28] = 900.0
    steps = surplus.room_steps(DAY_PRICE, 46)

    def quantiles(levels):
        return DAY_QUANTILES

    ruled = surplus.planned_pv("quantile", DAY_POINT_PV, DAY_PRICE, quantiles, 0.7, load, None, demand=True)
    covered = [s for s in range(6, 43) if not 24 <= s < 28]
    assert np.array_equal(ruled, surplus.room_day_pv(DAY_POINT_PV, DAY_QUANTILES, surplus.LEVELS, np.array(covered),
                                                     0.7))
    assert np.array_equal(ruled[24:28], DAY_POINT_PV[24:28]) and np.array_equal(ruled[:6], DAY_POINT_PV[:6])
    free = surplus.planned_pv("quantile", DAY_POINT_PV, DAY_PRICE, quantiles, 0.7, load, None, demand=False)
    assert np.array_equal(free, surplus.room_day_pv(DAY_POINT_PV, DAY_QUANTILES, surplus.LEVELS, steps, 0.7))
    assert surplus.planned_pv("quantile", DAY_POINT_PV, DAY_PRICE, quantiles, 0.7, None, None,
                              demand=True) is DAY_POINT_PV


@settings(max_examples=300, deadline=None)
@given(st.floats(-5000, 5000, allow_nan=False), st.lists(st.sampled_from([0.0, 1e-7, -1e-7, 2e-6, -2e-6, 0.5]),
                                                          min_size=1, max_size=12))
def test_a_flat_price_is_every_step_within_the_tolerance_of_the_first(first: float, offsets: list[float]):
    """``is_flat`` (from the horizon's highest and lowest price) is the definition: every step within
    ``PRICE_TOL`` of the first step's price, relative to it."""
    price = np.array([first] + [first + abs(first) * k for k in offsets])
    expected = bool((np.abs(price - price[0]) <= abs(price[0]) * surplus.PRICE_TOL).all())
    assert surplus.is_flat(price) == expected

def test_the_live_plan_keeper_makes_room_on_a_flat_price_under_a_demand_charge():
    """Under the Japanese preset (one energy price, a demand charge) the live keeper plans the Saturday on the flat
    rule's PV from its source's quantiles and load forecast, as the offline MPC does."""
    inputs = keeper_inputs(pd.Timestamp("2026-06-06 06:00", tz="Asia/Ho_Chi_Minh"), FLAT_POINT_PV, FLAT_QUANTILES,
                           "jp-high-voltage-illustrative")
    assert inputs.demand_charge_per_kw > 0 and surplus.is_flat(inputs.import_price)
    expected = surplus.flat_surplus_pv(FLAT_POINT_PV, FLAT_QUANTILES, surplus.LEVELS, LOAD,
                                       SETTINGS.surplus_flat_level)
    assert not np.array_equal(expected, FLAT_POINT_PV)
    np.testing.assert_allclose(inputs.pv_kw, expected)


# The legacy windows from 04:00 on a sunny Saturday: normal until 09:30 (steps 0–21), the morning peak until 11:30
# (22–29), normal until 17:00 (30–51), the evening peak until 20:00 (52–63), normal until 22:00 (64–71), off-peak
# after. Load 800 kW 07:00–12:00, 560 kW (the Saturday afternoon) until 19:00, 300 kW otherwise; the point forecast
# flat-topped at 540 kW, below the afternoon's load: no surplus on it. Its P90 is 2.5 × the point (at most 1000 kW).
LEGACY_PRICE = np.full(STEPS, NORMAL)
LEGACY_PRICE[22:30] = PEAK
LEGACY_PRICE[52:64] = PEAK
LEGACY_PRICE[72:] = OFF_PEAK
LEGACY_HOURS = 4 + np.arange(STEPS) / 4
LEGACY_LOAD = np.where((LEGACY_HOURS >= 7) & (LEGACY_HOURS < 12), 800.0,
                       np.where((LEGACY_HOURS >= 12) & (LEGACY_HOURS < 19), 560.0, 300.0))
LEGACY_POINT_PV = np.minimum(750.0 * np.clip(np.sin((LEGACY_HOURS - 6) / 12 * np.pi), 0, None), 540.0)
LEGACY_QUANTILES = np.stack([0.6 * LEGACY_POINT_PV, LEGACY_POINT_PV, np.minimum(2.5 * LEGACY_POINT_PV, 1000.0)])


def legacy_saturday_plan(pv: np.ndarray):
    grid = regular_grid(pd.Timestamp("2026-06-06 04:00", tz="Asia/Ho_Chi_Minh"), STEPS, 15)
    inputs = PlanInputs(grid=grid, pv_kw=pv, load_kw=LEGACY_LOAD, import_price=LEGACY_PRICE,
                        export_price=np.zeros(STEPS), soc0_kwh=950.0)
    return Planner(BATTERY, GRID, SETTINGS, STEPS).schedule(inputs)[0]


def test_the_room_rule_reaches_the_afternoon_after_the_morning_peak():
    """Under the legacy windows a Saturday's surplus comes after the morning peak, in a second normal-price window:
    a refill it does not bring is bought back there at the price the morning's energy was sold at, so the room rule
    plans those steps on the room level's PV too. Known answer: the plan sells in the early morning exactly what the
    afternoon's surplus refills beyond the morning peak's own discharge, and is full again for the evening peak; on
    the point forecast, or with the rule confined to the running window (where there is no surplus), it sells
    nothing before the peak."""
    end = surplus.room_window_end(LEGACY_PRICE, LEGACY_POINT_PV)
    assert end == 22
    steps = surplus.room_steps(LEGACY_PRICE, end)
    assert np.array_equal(steps, np.concatenate([np.arange(1, 22), np.arange(30, 52), np.arange(64, 72)]))
    pv = surplus.room_day_pv(LEGACY_POINT_PV, LEGACY_QUANTILES, surplus.LEVELS, steps, 0.7)
    running_window_only = surplus.room_day_pv(LEGACY_POINT_PV, LEGACY_QUANTILES, surplus.LEVELS, np.arange(1, end),
                                              0.7)
    for before in (LEGACY_POINT_PV, running_window_only):
        assert legacy_saturday_plan(before).discharge_kw[:22].sum() == pytest.approx(0.0, abs=1e-6)
    schedule = legacy_saturday_plan(pv)
    afternoon_surplus = float(np.maximum(pv - LEGACY_LOAD, 0.0)[30:52].sum() * 0.25)
    morning_peak = float(((LEGACY_LOAD - LEGACY_POINT_PV)[22:30]).sum() * 0.25)  # 520 kWh, all from the battery
    assert morning_peak == pytest.approx(520.0)
    assert float(schedule.discharge_kw[22:30].sum() * 0.25) == pytest.approx(morning_peak, rel=1e-6)
    assert float(schedule.charge_kw[30:52].sum() * 0.25) == pytest.approx(afternoon_surplus, rel=1e-6)  # all PV
    round_trip = BATTERY.charge_efficiency * BATTERY.discharge_efficiency
    sold_early = float(schedule.discharge_kw[:22].sum() * 0.25)
    assert sold_early > 200.0
    assert sold_early == pytest.approx(afternoon_surplus * round_trip - morning_peak, rel=1e-6)
    assert float(schedule.soc_kwh[51]) == pytest.approx(BATTERY.soc_max_kwh, abs=1e-3)


@given(st.lists(st.sampled_from([OFF_PEAK, NORMAL, PEAK]), min_size=2, max_size=60))
@settings(max_examples=300, deadline=None)
def test_room_steps_are_the_running_window_and_later_steps_at_its_price_before_a_cheaper_one(prices):
    """For any sequence of window prices: the room rule's steps are the running window's later steps, then only
    steps at the first step's price, none at or after the first cheaper step, each once and in order."""
    price = np.repeat(np.asarray(prices), 2)  # windows of two steps
    end = surplus.room_window_end(price, np.ones(len(price)))
    if end is None:
        other = np.flatnonzero(price != price[0])
        assert not len(other) or price[other[0]] < price[0]
        return
    steps = surplus.room_steps(price, end)
    assert np.array_equal(steps[:end - 1], np.arange(1, end))
    assert np.all(np.diff(steps) > 0)
    assert np.all(price[steps] == price[0])
    cheaper = np.flatnonzero(price < price[0])
    if len(cheaper):
        assert steps.max() < cheaper[0]
        expected = [j for j in range(end, cheaper[0]) if price[j] == price[0]]
    else:
        expected = [j for j in range(end, len(price)) if price[j] == price[0]]
    assert np.array_equal(steps[end - 1:], expected)
