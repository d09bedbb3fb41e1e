"""Demand-charge planning: the tariff's window measure in the LP, and the reserve that holds the month's peak.

Known answers: a 15-minute spike of X kW costs X/2 of demand on a 30-minute window (X per step without the
window); a load spike above the forecast that the planned reserve absorbs leaves the month's peak where the
plan put it, while a plan without the reserve sets a new peak.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.dispatch import Dispatcher, DispatchInputs, DispatchSettings
from controller.targets import DemandWindow, follow_plan
from optimizer import costs
from optimizer.forecast import History
from optimizer.lp_model import _assert_same_lp, build_model, extract_affine_lp, tiled_affine_lp
from optimizer.peak_target import PeakTarget, day_holdable_kw
from optimizer.planner import PlanInputs, Planner
from optimizer.service import SiteState, TariffSteps, plan_inputs, recharge_floor_kw
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import regular_grid

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
RATE = 1000.0  # [currency/kW-month]
GRID = GridSpec(export_cap_kw=0)


def inputs(load: list[float], *, window: bool, soc0: float = 0.0, risk: list[float] | None = None,
           prior_kwh: float = 0.0) -> PlanInputs:
    n = len(load)
    return PlanInputs(
        grid=regular_grid(T0, n, 15), pv_kw=np.zeros(n), load_kw=np.asarray(load, dtype=float),
        import_price=np.full(n, 1.0), export_price=np.zeros(n), soc0_kwh=soc0, demand_charge_per_kw=RATE,
        billing_month=np.zeros(n, dtype=int), demand_window_h=0.5 if window else 0.0,
        demand_window=np.arange(n) // 2 if window else None, window_import_kwh=prior_kwh,
        peak_risk_kw=None if risk is None else np.asarray(risk, dtype=float))


EMPTY = BatterySpec(capacity_kwh=100, max_charge_kw=0.001, max_discharge_kw=0.001, soc_min_pct=0, soc_max_pct=100)


@pytest.mark.parametrize(("window", "billed"), [(True, 40.0), (False, 80.0)])
def test_a_15_minute_spike_costs_half_on_a_30_minute_window(window: bool, billed: float) -> None:
    """80 kW for one quarter hour, nothing else: the 30-minute average is 40 kW (per step: 80 kW)."""
    plan = Planner(EMPTY, GRID, PlannerSettings(), 8).plan(inputs([0, 0, 0, 80, 0, 0, 0, 0], window=window))
    assert plan.objective.demand == pytest.approx(RATE * billed, abs=RATE * 0.002)  # the 0.001 kW battery


def test_import_measured_before_the_plan_counts_in_its_first_window() -> None:
    """The plan starts in a window's second quarter hour after 10 kWh were imported in its first: 20 kW of
    average already, plus 30 kW × 0.25 h / 0.5 h = 15 kW of the plan's first step."""
    plan = Planner(EMPTY, GRID, PlannerSettings(), 6).plan(
        PlanInputs(grid=regular_grid(T0, 6, 15), pv_kw=np.zeros(6), load_kw=np.array([30.0, 0, 0, 0, 0, 0]),
                   import_price=np.ones(6), export_price=np.zeros(6), soc0_kwh=0.0, demand_charge_per_kw=RATE,
                   demand_window_h=0.5, demand_window=np.array([0, 1, 1, 2, 2, 3]), window_import_kwh=10.0))
    assert plan.objective.demand == pytest.approx(RATE * 35.0, abs=RATE * 0.002)


@pytest.mark.parametrize("reserve_h", [0.0, 1.0])
def test_tiled_lp_with_windows_and_reserve_equals_direct_extraction(reserve_h: float) -> None:
    battery = BatterySpec(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=4, discharge_efficiency=0.95)
    direct = extract_affine_lp(build_model(np.full(12, 0.25), battery, True, 0.5, reserve_h))
    _assert_same_lp(tiled_affine_lp(0.25, 12, battery, True, window_h=0.5, reserve_h=reserve_h), direct)


BATTERY = BatterySpec(capacity_kwh=240, max_charge_kw=200, max_discharge_kw=200, charge_efficiency=1.0,
                      discharge_efficiency=1.0, soc_min_pct=0, soc_max_pct=100)
# 200 kW is already this month's peak; forecast: 100 kW all morning, 300 kW for the two hours the battery is
# planned to shave to 200 kW (200 kWh), then 100 kW; energy is dear in the morning, so a plan without the
# reserve spends the 40 kWh the shave does not need there
FORECAST = [100.0] * 8 + [300.0] * 8 + [100.0] * 8
PRICE = np.array([50.0] * 8 + [1.0] * 16)
PEAK = 200.0


def _plan(risk: list[float] | None):
    n = len(FORECAST)
    p = PlanInputs(grid=regular_grid(T0, n, 15), pv_kw=np.zeros(n), load_kw=np.asarray(FORECAST),
                   import_price=PRICE, export_price=np.zeros(n), soc0_kwh=240.0, demand_charge_per_kw=RATE,
                   month_peak_kw=PEAK, billing_month=np.zeros(n, dtype=int), demand_window_h=0.5,
                   demand_window=np.arange(n) // 2,
                   peak_risk_kw=None if risk is None else np.asarray(risk, dtype=float))
    return Planner(BATTERY, GRID, PlannerSettings(demand_reserve_hours=0.5, demand_stress_level=0), n).plan(p)


def _month_peak(plan, actual_load: np.ndarray) -> float:
    """Run the live follow rule and dispatcher over ``actual_load``; the highest 30-minute average import."""
    # as the offline runner: steps minutes apart, no one-cycle load swing to learn
    dispatcher = Dispatcher(BATTERY, GRID, DispatchSettings(load_swing_window_s=0.0), pv_rated_kw=0.0)
    soc, grid_kw, battery_kw = 240.0, [], 0.0
    same = np.ones(len(plan.import_kw), dtype=bool)
    for t, load in enumerate(actual_load):
        window = DemandWindow(0.5, 0.25 * (t % 2), 0.25 * grid_kw[-1] if t % 2 else 0.0)
        target = follow_plan(plan, t, GRID, same_month=same, month_peak_kw=PEAK, tol_kw=1.0,
                             demand_kw=plan.demand_kw, window=window, windows=np.arange(len(plan)) // 2,
                             duration_h=plan.duration_h)
        measured = DispatchInputs(grid_kw=load - battery_kw, pv_kw=0.0, battery_kw=battery_kw,
                                  soc_pct=100.0 * soc / 240.0, bms_max_charge_kw=min(200.0, (240 - soc) / 0.25),
                                  bms_max_discharge_kw=min(200.0, soc / 0.25))
        battery_kw = dispatcher.step(measured, target, plan.starts[t].to_pydatetime()).battery_setpoint_kw
        soc -= battery_kw * 0.25
        grid_kw.append(load - battery_kw)
    return float(np.max(np.asarray(grid_kw).reshape(-1, 2).mean(axis=1)))


def test_a_spike_the_reserve_absorbs_holds_the_planned_peak() -> None:
    """The load comes in 80 kW above the forecast for the last half hour of the shave. With the reserve (risk
    80 kW for 0.5 h: 40 kWh) the plan keeps 40 kWh through the shave, the dispatcher's grid ceiling spends it on
    the spike and the month's peak stays at 200 kW; the plan without the reserve spent those 40 kWh in the dear
    morning, the battery runs empty during the spike and it sets a new peak."""
    actual = np.asarray(FORECAST)
    actual[14:16] += 80.0
    held, bare = _plan([80.0] * len(FORECAST)), _plan(None)
    for plan in (held, bare):
        assert plan.demand_kw is not None and float(np.max(plan.demand_kw)) <= PEAK + 1e-6
        assert plan.objective.demand == pytest.approx(0.0, abs=1e-3)
    assert held.soc_kwh[15] == pytest.approx(40.0, abs=0.5) and bare.soc_kwh[15] == pytest.approx(0.0, abs=0.5)
    assert _month_peak(held, actual) == pytest.approx(PEAK, abs=0.5)
    assert _month_peak(bare, actual) > PEAK + 30.0


# A dark-afternoon day: 200 kW is the month's peak; the dear morning (load 100 kW) tempts the plan to empty the
# full battery (240 kWh), counting on recharging in the afternoon under the peak, where the point forecast has
# 300 kW of load and 150 kW of PV (50 kW of headroom for 4 h: 200 kWh); the PV may come 100 kW lower (risk).
DARK_LOAD = np.array([100.0] * 8 + [300.0] * 16)
DARK_PV = np.array([0.0] * 8 + [150.0] * 16)
DARK_RISK = np.array([0.0] * 8 + [100.0] * 16)


def _dark_day_plan(stress_level: float):
    n = len(DARK_LOAD)
    p = PlanInputs(grid=regular_grid(T0, n, 15), pv_kw=DARK_PV, load_kw=DARK_LOAD, import_price=PRICE,
                   export_price=np.zeros(n), soc0_kwh=240.0, demand_charge_per_kw=RATE, month_peak_kw=PEAK,
                   billing_month=np.zeros(n, dtype=int), demand_window_h=0.5, demand_window=np.arange(n) // 2,
                   peak_risk_kw=DARK_RISK)
    settings = PlannerSettings(demand_reserve_hours=0, demand_stress_level=stress_level, demand_stress_weight=1.0)
    return Planner(BATTERY, GRID, settings, n).plan(p)


def test_the_stress_day_keeps_the_energy_a_dark_afternoon_needs() -> None:
    """Known answer: on the stress day (κ = 1) the afternoon's net load is 300 − 150 + 100 = 250 kW, 50 kW above the
    peak for 4 h: 200 kWh must be stored when the afternoon starts, so the dear morning may use only 40 kWh. The
    plan without it discharges all the morning's 100 kW load takes (200 kWh), leaving 40 kWh. When the afternoon is
    dark (net 250 kW), the first holds the month's peak at 200 kW and the second sets a new one at 250 kW."""
    stressed, bare = _dark_day_plan(1.0), _dark_day_plan(0.0)
    assert stressed.soc_kwh[7] == pytest.approx(200.0, abs=0.5)
    assert bare.soc_kwh[7] == pytest.approx(40.0, abs=0.5)
    assert float(np.max(stressed.demand_kw)) <= PEAK + 1e-6 and float(np.max(bare.demand_kw)) <= PEAK + 1e-6
    dark = DARK_LOAD - DARK_PV + DARK_RISK  # what the meter sees: the PV came 100 kW under the forecast
    assert _month_peak(stressed, dark) == pytest.approx(PEAK, abs=0.5)
    assert _month_peak(bare, dark) == pytest.approx(250.0, abs=0.5)


def test_a_stress_day_the_battery_cannot_carry_costs_its_chance_not_a_new_peak() -> None:
    """κ = 3: 400 kW of stress net load would need 800 kWh; the plan keeps what it can (the whole battery) and
    accepts the stress path's rise above the peak at the stress weight, without planning any import above 200 kW."""
    plan = _dark_day_plan(3.0)
    assert float(np.max(plan.import_kw)) <= PEAK + 1e-6
    assert plan.soc_kwh[7] == pytest.approx(240.0, abs=0.5)


@pytest.mark.parametrize("stress_level", [0.0, 2.0])
def test_tiled_lp_with_the_stress_day_equals_direct_extraction(stress_level: float) -> None:
    battery = BatterySpec(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=4, discharge_efficiency=0.95)
    direct = extract_affine_lp(build_model(np.full(12, 0.25), battery, True, 0.5, 1.0, stress_level=stress_level))
    _assert_same_lp(tiled_affine_lp(0.25, 12, battery, True, window_h=0.5, reserve_h=1.0,
                                    stress_level=stress_level), direct)


def test_the_window_ceiling_keeps_the_window_average_at_the_peak() -> None:
    """After a quarter hour at 100 kW in a 30-minute window planned at 200 kW, the rest may import 300 kW;
    after one at 300 kW only 100 kW; past the window's end, the peak itself."""
    assert DemandWindow(0.5, 0.25, 25.0).ceiling_kw(200.0) == pytest.approx(300.0)
    assert DemandWindow(0.5, 0.25, 75.0).ceiling_kw(200.0) == pytest.approx(100.0)
    assert DemandWindow(0.5, 0.25, 150.0).ceiling_kw(200.0) == 0.0
    assert DemandWindow(0.5, 0.5, 75.0).ceiling_kw(200.0) == 200.0


def test_a_load_above_the_plan_is_held_evenly_over_the_rest_of_the_window() -> None:
    """A 30-minute window of two 15-minute steps held at 200 kW; the plan: 300 kW import now with the battery idle
    and 100 kW in the second quarter hour with it discharging 400 of its 500 kW. With the load as planned the first
    quarter hour may import its planned 300 kW (the plan lowers the second). With the net load 50 kW above the plan,
    the first quarter hour may import no more than the 200 kW that, held to the window's end, averages 200 kW — the
    second's battery could take the excess off too, but defending evenly keeps its headroom. With its headroom
    there only 20 kW, 150 kW above the plan imports 130 kW more there, so 130 kW less now: below even."""
    plan = SimpleNamespace(charge_kw=np.zeros(2), discharge_kw=np.array([0.0, 400.0]),
                           import_kw=np.array([300.0, 100.0]), export_kw=np.zeros(2))
    target = follow_plan(plan, 0, GRID, same_month=slice(0, 2), month_peak_kw=200.0, tol_kw=1.0,
                                 demand_kw=np.array([200.0, 200.0]), window=DemandWindow(0.5, 0.0, 0.0),
                                 windows=np.array([0, 0]), duration_h=np.array([0.25, 0.25]), max_discharge_kw=500.0)
    later = target.later_steps
    assert target.grid_ceiling_kw == pytest.approx(300.0) and later is not None
    assert (later.planned_net_kw, later.flat_kw, later.later) == (300.0, pytest.approx(200.0), ((0.25, 100.0),))
    assert later.ceiling_kw(300.0, 300.0) == 300.0                       # the load as planned: the plan's ceiling
    assert later.ceiling_kw(300.0, 350.0) == pytest.approx(200.0)        # 50 kW above: even
    assert later.ceiling_kw(300.0, 450.0) == pytest.approx(200.0)        # (300 − 50 = 250 is looser than even)
    tight = follow_plan(plan, 0, GRID, same_month=slice(0, 2), month_peak_kw=200.0, tol_kw=1.0,
                        demand_kw=np.array([200.0, 200.0]), window=DemandWindow(0.5, 0.0, 0.0),
                        windows=np.array([0, 0]), duration_h=np.array([0.25, 0.25]), max_discharge_kw=420.0)
    # 20 kW of headroom left in the second quarter hour: 150 kW above the plan leaves 130 kW to import there,
    # 130 kWh·4 less now: 300 − 130 = 170 kW, below the even 200
    assert tight.later_steps.ceiling_kw(300.0, 450.0) == pytest.approx(170.0)
    # without the battery's limit (an old caller) nothing changes
    assert follow_plan(plan, 0, GRID, same_month=slice(0, 2), month_peak_kw=200.0, tol_kw=1.0,
                       demand_kw=np.array([200.0, 200.0]), window=DemandWindow(0.5, 0.0, 0.0),
                       windows=np.array([0, 0]), duration_h=np.array([0.25, 0.25])).later_steps is None


def test_the_holdable_peak_of_a_day_is_where_the_battery_energy_or_power_runs_out() -> None:
    # 500 kW all day, 800 kW for 2 h: 200 kWh shave it to 700 kW; 50 kW of power only to 750 kW
    net = np.full(96, 500.0)
    net[40:48] = 800.0
    assert day_holdable_kw(net, 0.25, 0.5, energy_kwh=200.0, power_kw=300.0) == pytest.approx(700.0, abs=1e-3)
    assert day_holdable_kw(net, 0.25, 0.5, energy_kwh=200.0, power_kw=50.0) == pytest.approx(750.0, abs=1e-3)
    # a 15-minute spike of +200 kW is +100 kW on the 30-minute measure: 10 kWh hold it at 580 kW
    spike = np.full(96, 500.0)
    spike[41] = 700.0
    assert day_holdable_kw(spike, 0.25, 0.5, energy_kwh=10.0, power_kw=300.0) == pytest.approx(580.0, abs=1e-3)
    # two runs apart: the battery is full again for the second
    twice = np.full(96, 500.0)
    twice[40:48] = twice[70:78] = 800.0
    assert day_holdable_kw(twice, 0.25, 0.5, energy_kwh=200.0, power_kw=300.0) == pytest.approx(700.0, abs=1e-3)


def test_the_month_peak_target_is_the_hardest_recent_day_and_skips_incomplete_days() -> None:
    battery = BatterySpec(capacity_kwh=200, max_charge_kw=300, max_discharge_kw=300, soc_min_pct=0,
                          soc_max_pct=100, charge_efficiency=1.0, discharge_efficiency=1.0)
    start = datetime(2026, 5, 4, tzinfo=UTC)
    starts = regular_grid(datetime(2026, 5, 1, tzinfo=UTC), 3 * 96, 15).starts
    ns = np.asarray(starts.as_unit("ns").asi8, dtype=np.int64)
    load = np.full(3 * 96, 500.0)
    load[40:48] = 900.0  # 1 May: held at 800 kW
    load[96 + 40:96 + 48] = 800.0  # 2 May: held at 700 kW
    load[2 * 96 + 40:2 * 96 + 48] = 1000.0  # 3 May, but a step is missing
    load[2 * 96 + 5] = np.nan
    pv, hist = History(ns, np.zeros_like(load)), History(ns, load)
    assert PeakTarget(battery, 2)(pv, hist, int(start.timestamp() * 1e9), 0.25, 0.5) == pytest.approx(700.0, abs=1e-3)
    assert PeakTarget(battery, 3)(pv, hist, int(start.timestamp() * 1e9), 0.25, 0.5) == pytest.approx(800.0, abs=1e-3)
    # live: the day before is not whole until its last step is measured, and is looked at again on the next plan
    target = PeakTarget(battery, 1)
    short = History(ns[96:-1], load[96:-1])
    assert target(History(ns[96:-1], np.zeros(2 * 96 - 1)), short, int(start.timestamp() * 1e9), 0.25, 0.5) == 0.0
    load[2 * 96 + 5] = 500.0
    whole = History(ns[96:], load[96:])
    assert target(History(ns[96:], np.zeros(2 * 96)), whole, int(start.timestamp() * 1e9), 0.25, 0.5) == pytest.approx(
        900.0, abs=1e-3)


def test_the_peak_target_floors_each_month_of_the_plan_only_under_a_demand_charge() -> None:
    n = 8
    grid = regular_grid(T0, n, 15)
    steps = TariffSteps(import_price=np.ones(n), export_price=np.zeros(n), period=np.array(["normal"] * n),
                        month=np.array([0] * 4 + [1] * 4), demand_rate=np.full(n, RATE), window=np.arange(n) // 2,
                        window_h=0.5)
    made = plan_inputs(grid, steps, np.zeros(n), np.full(n, 100.0), SiteState(0.0, month_peak_kw=300.0),
                       peak_target_kw=250.0)
    assert costs.month_floors_kw(made).tolist() == [300.0, 250.0]
    energy_only = replace(steps, demand_rate=np.zeros(n))
    made = plan_inputs(grid, energy_only, np.zeros(n), np.full(n, 100.0), SiteState(0.0), peak_target_kw=250.0)
    assert costs.month_floors_kw(made).tolist() == [0.0]


@pytest.mark.parametrize(("rate", "discharging_steps"), [(0.0, [0, 1]), (RATE, [4, 5])])
def test_under_a_demand_charge_energy_stays_in_the_battery_until_the_end_of_a_flat_price_window(
        rate: float, discharging_steps: list[int]) -> None:
    """Six quarter hours at one price, 40 kW of load under a month peak of 100 kW, 20 kWh to sell (no terminal
    value): any order costs the same. Energy only, the plan sells it at once (steps 0 and 1 at 40 kW); under a
    demand charge it keeps it to the last two steps, where it still covers a load above the forecast until then."""
    battery = BatterySpec(capacity_kwh=100, max_charge_kw=40, max_discharge_kw=40, charge_efficiency=1.0,
                          discharge_efficiency=1.0, soc_min_pct=0, soc_max_pct=100)
    n = 6
    plan = Planner(battery, GRID, PlannerSettings(terminal_value="none"), n).plan(PlanInputs(
        grid=regular_grid(T0, n, 15), pv_kw=np.zeros(n), load_kw=np.full(n, 40.0), import_price=np.full(n, 2.0),
        export_price=np.zeros(n), soc0_kwh=20.0, demand_charge_per_kw=rate, month_peak_kw=100.0,
        billing_month=np.zeros(n, dtype=int)))
    assert np.flatnonzero(plan.discharge_kw > 1e-6).tolist() == discharging_steps
    np.testing.assert_allclose(plan.discharge_kw[discharging_steps], 40.0, atol=1e-6)


KEEP_BATTERY = BatterySpec(capacity_kwh=100, max_charge_kw=40, max_discharge_kw=40, charge_efficiency=0.9,
                           discharge_efficiency=0.9, soc_min_pct=0, soc_max_pct=100, wear_cost_per_kwh=0.1)


@pytest.mark.parametrize(("rate", "prices", "level_kw", "end_kwh"), [
    (RATE, [2.0] * 8, 100.0, 20.0 + 8 * 40 * 0.25 * 0.9),  # flat price, demand charge: refilled at full power
    (RATE, [2.0] * 8, 60.0, 20.0 + 8 * 20 * 0.25 * 0.9),  # only in the 20 kW of headroom under the level
    (0.0, [2.0] * 8, 100.0, 20.0),  # no demand charge: nothing to keep energy for
    (RATE, [2.0] * 6 + [1.0] * 2, 100.0, 0.0),  # a cheaper window ahead: valued as before, sold at the higher price
])
def test_under_a_demand_charge_on_a_flat_price_the_battery_is_kept_full(
        rate: float, prices: list[float], level_kw: float, end_kwh: float) -> None:
    """Two hours of 40 kW load under a month peak of ``level_kw``, the battery at 20 of 100 kWh. On a flat energy
    price with a demand charge a kWh stored is worth 1 % more than it costs ((2.0 + 0.1 wear) / 0.9), so the plan
    refills the battery, never above the level; without a demand charge, or with a cheaper window ahead, the stored
    kWh is worth η_d × the cheapest price as before, below its cost: nothing is charged, and where a higher price
    comes first the battery is sold there."""
    n = len(prices)
    inputs = PlanInputs(
        grid=regular_grid(T0, n, 15), pv_kw=np.zeros(n), load_kw=np.full(n, 40.0), import_price=np.array(prices),
        export_price=np.zeros(n), soc0_kwh=20.0, demand_charge_per_kw=rate, month_peak_kw=level_kw,
        billing_month=np.zeros(n, dtype=int))
    flat = rate > 0 and min(prices) == max(prices)
    expected_tv = 1.01 * (2.0 + 0.1) / 0.9 if flat else 0.9 * min(prices)
    assert costs.terminal_value_per_kwh(inputs, KEEP_BATTERY, PlannerSettings()) == pytest.approx(expected_tv)
    plan = Planner(KEEP_BATTERY, GRID, PlannerSettings(block_minutes=0), n).plan(inputs)
    assert plan.soc_kwh[-1] == pytest.approx(end_kwh, abs=1e-6)
    assert plan.import_kw.max() <= level_kw + 1e-6


@pytest.mark.parametrize(("prices", "expected"), [
    ([-1.0] * 4 + [-5.0] * 4, 0.0),  # negative, not flat: η_d × the cheapest price floored at 0
    ([0.0] * 8, 1.01 * 0.1 / 0.9),  # flat at 0: what a stored kWh costs is its wear
    ([-2.0] * 8, 1.01 * 0.1 / 0.9),  # flat below 0: the price floored at 0, as everywhere in the rule
])
def test_the_kept_full_value_knows_a_flat_price_from_prices_below_zero(prices: list[float], expected: float) -> None:
    n = len(prices)
    inputs = PlanInputs(
        grid=regular_grid(T0, n, 15), pv_kw=np.zeros(n), load_kw=np.full(n, 40.0), import_price=np.array(prices),
        export_price=np.zeros(n), soc0_kwh=20.0, demand_charge_per_kw=RATE, month_peak_kw=100.0,
        billing_month=np.zeros(n, dtype=int))
    assert costs.terminal_value_per_kwh(inputs, KEEP_BATTERY, PlannerSettings()) == pytest.approx(expected)


# Six hours of normal price, then the cheap window where the battery is recharged: the stress net load is
# 300 − 50 + 0.5 × 100 = 300 kW; 240 kWh hold it at 300 − 240 / 6 = 260 kW until the cheap window
SIX_H = 24
RECHARGE_PRICE = np.array([1.0] * SIX_H + [0.5] * 8)
RECHARGE_LOAD = np.array([300.0] * SIX_H + [100.0] * 8)
RECHARGE_PV = np.array([50.0] * SIX_H + [0.0] * 8)
RECHARGE_RISK = np.array([100.0] * SIX_H + [0.0] * 8)


def _recharge_steps(rate: float = RATE) -> TariffSteps:
    n = len(RECHARGE_PRICE)
    return TariffSteps(import_price=RECHARGE_PRICE, export_price=np.zeros(n), period=np.array(["normal"] * n),
                       month=np.zeros(n, dtype=int), demand_rate=np.full(n, rate), window=np.arange(n) // 2,
                       window_h=0.5)


def test_the_level_the_battery_holds_until_it_is_recharged() -> None:
    target = PeakTarget(BATTERY, 7)
    net = np.array([300.0] * SIX_H + [2000.0] * 8)  # after the cheap window begins: not looked at
    quarter = np.full(len(net), 0.25)
    window = np.arange(len(net)) // 2

    def level(soc: float, power: float = 200.0, net_kw: np.ndarray = net, windows: np.ndarray = window,
              price: np.ndarray = RECHARGE_PRICE) -> float:
        return target.until_recharge_kw(net_kw, quarter, price, windows, soc, power)

    assert level(240.0) == pytest.approx(260.0, abs=1e-3)  # 6 h × 40 kW = 240 kWh
    assert level(120.0) == pytest.approx(280.0, abs=1e-3)  # half the energy: 20 kW for 6 h
    assert level(240.0, power=30.0) == pytest.approx(270.0, abs=1e-3)  # the power runs out first
    # a plan starting a quarter hour into a window: that window's average is over its last quarter hour only
    # (0.25 h × (400 − L) + 5.75 h × (300 − L) = 240 kWh)
    late = np.concatenate([[400.0], net[1:]])
    assert level(240.0, net_kw=late, windows=(np.arange(len(net)) + 1) // 2) == pytest.approx(
        (0.25 * 400 + 5.75 * 300 - 240) / 6, abs=1e-3)
    # a plan starting in the cheapest window: the night's charge is still to come, no level
    assert level(0.0, price=np.roll(RECHARGE_PRICE, 8)) == 0.0
    # two runs of 300 kW with a 220 kW dip between: half the energy (120 kWh) holds the first at L ≥ 240 kW, the
    # dip recharges 2 h × (L − 220) from the headroom under L, the second run then needs 2 h × (300 − L):
    # (2L − 480) + 2(L − 220) ≥ 2(300 − L) → L = 1520 / 6
    dip = np.array([300.0] * 8 + [220.0] * 8 + [300.0] * 8 + [2000.0] * 8)
    assert level(120.0, net_kw=dip) == pytest.approx(1520.0 / 6.0, abs=1e-3)
    assert level(120.0, net_kw=np.full(len(net), 300.0)) == pytest.approx(280.0, abs=1e-3)  # no dip: 6 h


def test_the_recharge_floor_is_the_stress_day_level_under_a_demand_charge_only() -> None:
    n = len(RECHARGE_PRICE)
    grid = regular_grid(T0, n, 15)
    state = SiteState(240.0, month_peak_kw=PEAK)

    def floor(settings: PlannerSettings, rate: float = RATE) -> float:
        return recharge_floor_kw(PeakTarget(BATTERY, 7), settings, grid, _recharge_steps(rate), RECHARGE_PV,
                                 RECHARGE_LOAD, RECHARGE_RISK, state)

    # 240 kWh hold 300 kW for six hours at 260 kW: the floor is 210 kW + κ × 100 kW of risk, κ the floor's own
    # multiple (demand_floor_stress_level, default 0.75), not the stress path's (demand_stress_level)
    assert floor(PlannerSettings()) == pytest.approx(285.0, abs=1e-3)
    assert floor(PlannerSettings(demand_floor_stress_level=0.5)) == pytest.approx(260.0, abs=1e-3)
    assert floor(PlannerSettings(demand_floor_stress_level=0.0)) == pytest.approx(210.0, abs=1e-3)  # point forecast
    assert floor(PlannerSettings(demand_stress_level=2.0)) == pytest.approx(285.0, abs=1e-3)
    assert floor(PlannerSettings(demand_floor_until_recharge=False)) == 0.0
    assert floor(PlannerSettings(), rate=0.0) == 0.0  # energy only


def test_a_plan_at_the_recharge_floor_keeps_the_energy_the_stress_day_needs() -> None:
    """The forecast's net load (250 kW) is below the floor (260 kW at a floor multiple of 0.5): the plan imports it
    and keeps the full battery through the first four hours for the stress path; planned on the month's peak reached
    (200 kW), it shaves the forecast's net load to ~213 kW (the 30-minute measure) from the first window on and has
    < 140 kWh left after three hours."""
    n = len(RECHARGE_PRICE)
    grid = regular_grid(T0, n, 15)
    state = SiteState(240.0, month_peak_kw=PEAK)
    settings = PlannerSettings(demand_floor_stress_level=0.5)
    plans = {}
    for on in (True, False):
        chosen = settings.model_copy(update={"demand_floor_until_recharge": on})
        floor = recharge_floor_kw(PeakTarget(BATTERY, 7), chosen, grid, _recharge_steps(), RECHARGE_PV,
                                  RECHARGE_LOAD, RECHARGE_RISK, state)
        made = plan_inputs(grid, _recharge_steps(), RECHARGE_PV, RECHARGE_LOAD, state, RECHARGE_RISK, 0.0, floor)
        plans[on] = Planner(BATTERY, GRID, chosen, n).plan(made)
    assert plans[True].soc_kwh[15] == pytest.approx(240.0, abs=0.5)
    np.testing.assert_allclose(plans[True].import_kw[:16], 250.0, atol=0.5)
    assert plans[False].soc_kwh[11] < 140.0
    assert float(np.max(plans[False].demand_kw[:SIX_H])) < 215.0  # the 30-minute measure
    assert float(np.max(plans[True].demand_kw[:SIX_H])) == pytest.approx(250.0, abs=0.5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=st.lists(st.floats(0.0, 400.0), min_size=12, max_size=12), soc=st.floats(0.0, 240.0))
def test_no_schedule_holds_the_span_below_the_recharge_floor(net: list[float], soc: float) -> None:
    """With exact forecasts (no risk) the floor is a lower bound: the LP, minimising the month's peak at any energy
    cost, never plans the span before the cheap window below it, so the floor cannot lead a plan away from what it
    would do knowing the future."""
    n = 16
    load = np.array(net + [100.0] * 4)
    price = np.array([1.0] * 12 + [0.5] * 4)
    steps = TariffSteps(import_price=price, export_price=np.zeros(n), period=np.array(["normal"] * n),
                        month=np.zeros(n, dtype=int), demand_rate=np.full(n, 1e6), window=np.arange(n) // 2,
                        window_h=0.5)
    grid = regular_grid(T0, n, 15)
    state = SiteState(soc)
    settings_ = PlannerSettings(demand_reserve_hours=0, demand_stress_level=0)
    floor = recharge_floor_kw(PeakTarget(BATTERY, 7), settings_, grid, steps, np.zeros(n), load, None, state)
    plan = Planner(BATTERY, GRID, settings_, n).plan(plan_inputs(grid, steps, np.zeros(n), load, state))
    assert plan.demand_kw is not None
    assert float(np.max(plan.demand_kw[:12])) >= floor - 1e-3


def test_a_window_billed_at_the_month_peak_is_imported_flat_not_as_a_saw_tooth() -> None:
    """The month's peak is 700 kW; a cheap first hour (load 300 kW) and a dear second one (400 kW, 400 kWh): the
    battery charges as much as the peak allows, 400 kW on average in each 30-minute window. The bill sees only the
    window average, so 800 then 600 kW costs the same as 700 and 700 (the LP chose the saw-tooth before, as
    `ems plan` showed on a two-part site); the tie-break imports flat at the peak: no step above it, the same cost."""
    n = 8
    battery = BatterySpec(capacity_kwh=400, max_charge_kw=500, max_discharge_kw=500, soc_min_pct=0,
                          soc_max_pct=100, charge_efficiency=1.0, discharge_efficiency=1.0)
    plan = Planner(battery, GRID, PlannerSettings(), n).plan(PlanInputs(
        grid=regular_grid(T0, n, 15), pv_kw=np.zeros(n), load_kw=np.array([300.0] * 4 + [400.0] * 4),
        import_price=np.array([1.0] * 4 + [5.0] * 4), export_price=np.zeros(n), soc0_kwh=0.0,
        demand_charge_per_kw=RATE, month_peak_kw=700.0, billing_month=np.zeros(n, dtype=int),
        demand_window_h=0.5, demand_window=np.arange(n) // 2))
    imported = np.asarray(plan.import_kw)
    assert imported[:4] == pytest.approx([700.0] * 4, abs=1e-6)              # flat at the month's peak
    assert imported.max() <= 700.0 + 1e-6
    assert plan.objective.demand == pytest.approx(0.0, abs=1e-6)              # the 700 kW peak is not raised
