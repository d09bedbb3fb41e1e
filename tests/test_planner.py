"""Planner known answers worked out by hand (each docstring shows the arithmetic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from optimizer.planner import PlanInputs, Planner, PlannerError, SolverTimeout
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import TimeGrid, regular_grid

START = pd.Timestamp("2026-05-04T00:00Z")
NO_TV = PlannerSettings(terminal_value="none")


def hourly(n: int) -> TimeGrid:
    return regular_grid(START, n, 60)


def battery(**kw) -> BatterySpec:
    base = dict(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5, charge_efficiency=0.9,
                discharge_efficiency=0.9, soc_min_pct=0, soc_max_pct=100, wear_cost_per_kwh=0.0)
    base.update(kw)
    return BatterySpec(**base)


def inputs(grid: TimeGrid, load, price, pv=None, export_price=None, **kw) -> PlanInputs:
    n = len(grid)
    return PlanInputs(grid=grid, pv_kw=np.zeros(n) if pv is None else np.asarray(pv, float),
                      load_kw=np.asarray(load, float), import_price=np.asarray(price, float),
                      export_price=np.zeros(n) if export_price is None else np.asarray(export_price, float), **kw)


def test_two_price_day_exact_profit():
    """Charge 5 kW × 2 h at 0.1 (9 kWh stored), deliver 9 × 0.9 = 8.1 kWh at 0.3: 5 kW then 3.1 kW.

    Cost: steps 0,1 import 15 kW each → 3.0; steps 2,3 import 5 and 6.9 → 11.9 × 0.3 = 3.57;
    wear 0.01 × (10 + 8.1) = 0.181. Total 6.751; without battery 8.0 (profit 1.249).
    """
    b = battery(wear_cost_per_kwh=0.01)
    plan = Planner(b, GridSpec(), NO_TV, 4).plan(inputs(hourly(4), [10] * 4, [0.1, 0.1, 0.3, 0.3], soc0_kwh=0.0))
    np.testing.assert_allclose(plan.charge_kw, [5, 5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(sorted(plan.discharge_kw), [0, 0, 3.1, 5], atol=1e-6)  # either order is optimal
    np.testing.assert_allclose(plan.grid_kw, 10 + plan.charge_kw - plan.discharge_kw, atol=1e-6)
    np.testing.assert_allclose(plan.soc_kwh[[0, 1, 3]], [4.5, 9.0, 0.0], atol=1e-6)
    assert plan.objective.total == pytest.approx(6.751, abs=1e-6)
    assert plan.objective.wear == pytest.approx(0.181, abs=1e-9)
    assert plan.slack == ()


def test_equal_prices_give_contiguous_blocks_not_pulses():
    """Six cheap hours then six dear ones; filling 10 kWh at η_c 0.9 takes 10/0.9 = 11.1 kWh AC and
    delivers 10 × 0.9 = 9 kWh AC. Many schedules cost the same; the tie-break makes each happen in one
    block: the charge at the horizon's cheapest price as late as that window allows (10/9, 5, 5 kW in hours 3–5:
    the window's first hours can still show that the day does not need it), the discharge as early as possible
    (5, 4 kW in hours 6–7)."""
    b = battery(wear_cost_per_kwh=0.01)
    price = [0.1] * 6 + [0.3] * 6
    plan = Planner(b, GridSpec(), NO_TV, 12).plan(inputs(hourly(12), [10] * 12, price, soc0_kwh=0.0))
    np.testing.assert_allclose(plan.charge_kw, [0] * 3 + [10 / 9, 5, 5] + [0] * 6, atol=1e-6)
    np.testing.assert_allclose(plan.discharge_kw, [0] * 6 + [5, 4] + [0] * 4, atol=1e-6)


def test_a_charge_at_a_price_above_the_cheapest_still_comes_early():
    """Three price levels: 0.1 (hours 0–1, room for 2 × 5 kW × 0.9 = 9 kWh), 0.2 (hours 2–5), 0.5 (hours 6–11).
    The 9 kWh bought at 0.1 leave 1 kWh to buy at 0.2 (1/0.9 kW AC); at that price — not the horizon's cheapest —
    the tie-break still charges as early as possible (hour 2), where the cheapest window's charge is at its end."""
    b = battery(wear_cost_per_kwh=0.01)
    price = [0.1] * 2 + [0.2] * 4 + [0.5] * 6
    plan = Planner(b, GridSpec(), NO_TV, 12).plan(inputs(hourly(12), [10] * 12, price, soc0_kwh=0.0))
    np.testing.assert_allclose(plan.charge_kw, [5, 5, 1 / 0.9] + [0] * 9, atol=1e-6)


def test_spread_too_small_for_losses_and_wear_no_cycling():
    """η = 0.95² = 0.9025: buying at 0.1 and selling at 0.125 gains 0.9025 × 0.125 − 0.1 = 0.0128 per kWh
    charged, but wear costs 0.01 × (1 + 0.9025) = 0.019: the battery must stay idle."""
    b = battery(charge_efficiency=0.95, discharge_efficiency=0.95, wear_cost_per_kwh=0.01)
    plan = Planner(b, GridSpec(), NO_TV, 4).plan(
        inputs(hourly(4), [10] * 4, [0.1, 0.1, 0.125, 0.125], soc0_kwh=0.0))
    assert np.all(plan.charge_kw < 1e-7) and np.all(plan.discharge_kw < 1e-7)
    assert plan.objective.total == pytest.approx(20 * 0.1 + 20 * 0.125, abs=1e-6)


def test_zero_export_full_battery_curtails_the_surplus():
    """PV 50 kW, load 20 kW, export cap 0, battery at soc_max: curtailment = 30 kW every step, grid 0."""
    b = battery(soc_max_pct=90, wear_cost_per_kwh=0.01)
    plan = Planner(b, GridSpec(export_cap_kw=0.0), PlannerSettings(), 4).plan(
        inputs(hourly(4), [20] * 4, [0.1] * 4, pv=[50] * 4, soc0_kwh=9.0))
    np.testing.assert_allclose(plan.curtail_kw, [30] * 4, atol=1e-6)
    np.testing.assert_allclose(plan.grid_kw, 0.0, atol=1e-6)
    np.testing.assert_allclose(plan.soc_kwh, 9.0, atol=1e-6)
    assert plan.slack == ()


def test_demand_charge_shaves_the_peak_to_what_the_energy_allows():
    """Load 20, 20, 10, 10 kW; 4 kWh stored, η_d 0.8 → 3.2 kWh AC for the two 20-kW hours: 1.6 kW each,
    peak 18.4 kW. Charging before the spike is impossible (it is at the start); afterwards, stored
    energy is worth η_d × price (auto terminal value), less than it costs (price / η_c), so no recharge."""
    b = battery(discharge_efficiency=0.8, wear_cost_per_kwh=0.001)
    plan = Planner(b, GridSpec(), PlannerSettings(), 4).plan(
        inputs(hourly(4), [20, 20, 10, 10], [0.1] * 4, soc0_kwh=4.0, demand_charge_per_kw=10.0))
    assert plan.grid_kw.max() == pytest.approx(18.4, abs=1e-6)
    np.testing.assert_allclose(plan.discharge_kw[:2], [1.6, 1.6], atol=1e-6)
    assert plan.objective.demand == pytest.approx(184.0, abs=1e-5)


def test_demand_charge_respects_the_month_peak_already_paid():
    """Month peak already 19 kW: only 1 kW per spike hour needs shaving; demand term 0."""
    b = battery(discharge_efficiency=0.8, wear_cost_per_kwh=0.001)
    plan = Planner(b, GridSpec(), PlannerSettings(), 4).plan(
        inputs(hourly(4), [20, 20, 10, 10], [0.1] * 4, soc0_kwh=4.0, demand_charge_per_kw=10.0,
               month_peak_kw=19.0))
    assert plan.grid_kw.max() == pytest.approx(19.0, abs=1e-6)
    assert plan.objective.demand == pytest.approx(0.0, abs=1e-6)


def test_demand_charge_across_a_billing_month_boundary_counts_each_month():
    """Spikes of 20 kW in two billing months, 5 kW discharge limit and enough energy: each month's
    peak is 15 kW, so the demand term is 2 × 10 × 15 = 300 (one merged month would give 150)."""
    b = battery(wear_cost_per_kwh=0.001)
    plan = Planner(b, GridSpec(), NO_TV, 4).plan(
        inputs(hourly(4), [20, 10, 20, 10], [0.1] * 4, soc0_kwh=10.0, demand_charge_per_kw=10.0,
               billing_month=np.array([0, 0, 1, 1])))
    assert plan.grid_kw[0] == pytest.approx(15.0, abs=1e-6) and plan.grid_kw[2] == pytest.approx(15.0, abs=1e-6)
    assert plan.objective.demand == pytest.approx(300.0, abs=1e-5)


def test_start_below_soc_min_recovers_and_reports_slack():
    """soc_min 1 kWh, soc0 0, charge 2 kW × 0.25 h × 0.9 = 0.45 kWh per step: SOC 0.45, 0.9 (below the
    window, slack 0.55 and 0.1 kWh), then ≥ 1. The plan charges at full power until it is back."""
    b = battery(soc_min_pct=10, max_charge_kw=2, wear_cost_per_kwh=0.01)
    grid = regular_grid(START, 8, 15)
    plan = Planner(b, GridSpec(), PlannerSettings(), 8).plan(inputs(grid, [5] * 8, [0.1] * 8, soc0_kwh=0.0))
    np.testing.assert_allclose(plan.charge_kw[:2], [2, 2], atol=1e-6)
    assert plan.soc_kwh[2] >= 1.0 - 1e-6
    (slack,) = plan.slack
    assert slack.constraint == "soc_min" and slack.steps == (0, 1)
    assert slack.max_violation == pytest.approx(0.55, abs=1e-6)


def test_import_cap_broken_by_load_alone_is_slack_not_infeasible():
    """Load 30 kW, cap 25 kW, empty battery: import 30, slack 5 kW on import_cap at every step."""
    b = battery(soc_min_pct=10)
    plan = Planner(b, GridSpec(import_cap_kw=25), PlannerSettings(), 3).plan(
        inputs(hourly(3), [30] * 3, [0.1] * 3, soc0_kwh=1.0))
    np.testing.assert_allclose(plan.grid_kw, 30, atol=1e-6)
    (slack,) = plan.slack
    assert slack.constraint == "import_cap" and slack.steps == (0, 1, 2)
    assert slack.max_violation == pytest.approx(5.0, abs=1e-6)


def test_fixed_first_step_and_bms_limit():
    """The controller fixed 3 kW discharge now; the BMS allows only 1 kW of charge in step 0."""
    b = battery()
    planner = Planner(b, GridSpec(), NO_TV, 3)
    plan = planner.plan(inputs(hourly(3), [10] * 3, [0.3, 0.1, 0.3], soc0_kwh=5.0, fixed_battery_kw=3.0))
    assert plan.battery_kw[0] == pytest.approx(3.0, abs=1e-6)
    plan = planner.plan(inputs(hourly(3), [10] * 3, [0.1, 0.3, 0.3], soc0_kwh=0.0, max_charge_kw=1.0))
    assert plan.charge_kw[0] == pytest.approx(1.0, abs=1e-6)


def test_fixed_power_beyond_the_bms_limit_is_reported():
    """A fixed 8 kW discharge while the PCS allows 5 (full battery): the plan does 5, reports 3 kW of slack."""
    plan = Planner(battery(), GridSpec(), NO_TV, 2).plan(
        inputs(hourly(2), [10] * 2, [0.1] * 2, soc0_kwh=10.0, fixed_battery_kw=8.0))
    assert plan.battery_kw[0] == pytest.approx(5.0, abs=1e-6)
    (slack,) = plan.slack
    assert slack.constraint == "fixed_battery" and slack.max_violation == pytest.approx(3.0, abs=1e-6)


def test_negative_import_price_never_charges_and_discharges_at_once():
    """At −0.5 per kWh, burning energy through battery losses earns money in the LP; the plan must
    still use one direction per step (the planner fixes the direction and re-solves)."""
    b = battery(charge_efficiency=0.5, discharge_efficiency=0.5)
    plan = Planner(b, GridSpec(), NO_TV, 4).plan(inputs(hourly(4), [1] * 4, [-0.5] * 4, soc0_kwh=5.0))
    assert np.all(np.minimum(plan.charge_kw, plan.discharge_kw) <= 1e-9)


def test_planner_is_reusable_and_checks_its_step_count():
    planner = Planner(battery(), GridSpec(), NO_TV, 4)
    first = planner.plan(inputs(hourly(4), [10] * 4, [0.1, 0.1, 0.3, 0.3], soc0_kwh=0.0))
    planner.plan(inputs(hourly(4), [10] * 4, [0.3, 0.3, 0.1, 0.1], soc0_kwh=5.0))
    again = planner.plan(inputs(hourly(4), [10] * 4, [0.1, 0.1, 0.3, 0.3], soc0_kwh=0.0))
    assert again.objective.total == pytest.approx(first.objective.total, abs=1e-9)
    assert again.solver.build_ms == 0.0 and first.solver.build_ms > 0.0
    with pytest.raises(PlannerError, match="plans 4 steps"):
        planner.plan(inputs(hourly(3), [10] * 3, [0.1] * 3, soc0_kwh=0.0))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="missing"):
        inputs(hourly(2), [10, np.nan], [0.1, 0.1], soc0_kwh=0.0)
    with pytest.raises(ValueError, match="soc0_kwh"):
        inputs(hourly(2), [10, 10], [0.1, 0.1], soc0_kwh=None)
    with pytest.raises(ValueError, match="billing_month"):
        inputs(hourly(2), [10, 10], [0.1, 0.1], soc0_kwh=0.0, billing_month=np.array([1, 0]))


def test_a_large_demand_charge_never_buys_a_soc_window_violation():
    """VND-sized demand charge (235,414 per kW-month) vs the default 10⁶ penalty: the planner raises the
    penalty, so the battery shaves only with the 2 kWh above its floor: 2 × 0.9 = 1.8 kWh AC over two
    quarter hours = 3.6 kW each, peak 96.4 kW, no slack."""
    b = battery(capacity_kwh=100, max_discharge_kw=50, soc_min_pct=10)
    plan = Planner(b, GridSpec(), PlannerSettings(), 4).plan(
        inputs(regular_grid(START, 4, 15), [100, 100, 50, 50], [3000.0] * 4, soc0_kwh=12.0,
               demand_charge_per_kw=235_414.0))
    assert plan.slack == ()
    assert plan.grid_kw.max() == pytest.approx(96.4, abs=1e-6)


def _day_inputs(rng: np.random.Generator, n: int = 96) -> PlanInputs:
    return inputs(regular_grid(START, n, 15), rng.uniform(0, 10, n), rng.uniform(0.1, 0.3, n),
                  pv=rng.uniform(0, 10, n), soc0_kwh=float(rng.uniform(0, 10)))


def test_time_limit_applies_per_plan_not_per_planner_life():
    """HiGHS accumulates run time over an instance's life; a long-lived planner must not time out
    once its total solve time passes the limit (the simulator re-plans 35,040 times)."""
    limit_s = 0.1
    planner = Planner(battery(wear_cost_per_kwh=0.01), GridSpec(), PlannerSettings(time_limit_s=limit_s), 96)
    rng = np.random.default_rng(3)
    planner.plan(_day_inputs(rng))
    highs = next(iter(planner._solvers.values())).highs
    solved = 0
    while highs.getRunTime() < 0.25:
        before_s = highs.getRunTime()
        try:
            planner.plan(_day_inputs(rng))
            solved += 1
        except SolverTimeout:
            # HiGHS measures wall time: on a busy machine one plan may really take longer than the limit,
            # which is a fair time-out; a time-out of a plan that ran for less than the limit is the defect
            ran_s = highs.getRunTime() - before_s
            assert ran_s >= 0.95 * limit_s, f"timed out after {ran_s:.3f} s of a {limit_s} s limit"
    assert solved > 0


def test_time_out_raises_solver_timeout():
    planner = Planner(battery(wear_cost_per_kwh=0.01), GridSpec(), PlannerSettings(time_limit_s=1e-7), 96)
    with pytest.raises(SolverTimeout):
        planner.plan(_day_inputs(np.random.default_rng(4)))
