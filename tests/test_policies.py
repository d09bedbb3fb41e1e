"""Fallback/baseline policies: hand-checked schedules, priced like the LP by optimizer.costs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from optimizer import policies
from optimizer.costs import Schedule, evaluate
from optimizer.planner import PlanInputs
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import regular_grid

BATTERY = BatterySpec(capacity_kwh=10, max_charge_kw=4, max_discharge_kw=4, charge_efficiency=1.0,
                      discharge_efficiency=1.0, soc_min_pct=10, soc_max_pct=90, wear_cost_per_kwh=0.01)
SETTINGS = PlannerSettings(terminal_value="none")


def make(pv, load, soc0=5.0, period=None, **kw) -> PlanInputs:
    n = len(pv)
    return PlanInputs(grid=regular_grid(pd.Timestamp("2026-05-04T00:00Z"), n, 60), pv_kw=np.array(pv, float),
                      load_kw=np.array(load, float), import_price=np.full(n, 0.2), export_price=np.full(n, 0.05),
                      soc0_kwh=soc0, period=period, **kw)


def test_no_battery_is_idle_and_curtails_above_the_export_cap():
    """PV 10, load 4, export cap 2: export 2, curtail 4; battery idle."""
    plan = policies.no_battery(make([10, 0], [4, 3]), BATTERY, GridSpec(export_cap_kw=2), SETTINGS)
    np.testing.assert_allclose(plan.battery_kw, 0)
    np.testing.assert_allclose(plan.grid_kw, [-2, 3])
    np.testing.assert_allclose(plan.curtail_kw, [4, 0])
    np.testing.assert_allclose(plan.soc_kwh, [5, 5])
    assert plan.source == "policy:no_battery"
    assert plan.objective.total == pytest.approx(3 * 0.2 - 2 * 0.05)


def test_self_consumption_charges_surplus_and_covers_load_within_limits():
    """Surplus 6 → charge 4 (power limit), export 2; next hour deficit 3 → discharge 3; then the
    window floor (1 kWh) stops discharge: SOC 5 → 9 → 6 → 2 → 1 (only 1 kWh left above the floor)."""
    plan = policies.self_consumption(make([10, 0, 0, 0], [4, 3, 4, 4]), BATTERY, GridSpec(export_cap_kw=5), SETTINGS)
    np.testing.assert_allclose(plan.battery_kw, [-4, 3, 4, 1])
    np.testing.assert_allclose(plan.soc_kwh, [9, 6, 2, 1])
    np.testing.assert_allclose(plan.grid_kw, [-2, 0, 0, 3])


def test_tou_charges_off_peak_discharges_peak_and_holds_otherwise():
    plan = policies.tou(make([0, 0, 0], [2, 2, 2], soc0=1.0, period=["off_peak", "normal", "peak"]),
                        BATTERY, GridSpec(import_cap_kw=5), SETTINGS)
    # off-peak: charge min(4 kW, cap 5 − load 2 = 3) = 3; normal: hold; peak: cover the 2 kW load
    np.testing.assert_allclose(plan.battery_kw, [-3, 0, 2])
    np.testing.assert_allclose(plan.soc_kwh, [4, 4, 2])
    with pytest.raises(ValueError, match="period"):
        policies.tou(make([0], [1]), BATTERY, GridSpec(), SETTINGS)


def test_policies_follow_a_fixed_first_step():
    plan = policies.self_consumption(make([0, 0], [1, 1], fixed_battery_kw=-2.0), BATTERY, GridSpec(), SETTINGS)
    assert plan.battery_kw[0] == pytest.approx(-2.0)


def test_costs_report_slack_of_a_schedule_outside_the_window():
    """SOC 0.5 kWh under a 1 kWh floor for 2 one-hour steps → 2 × P × 1 h × 0.5; import 6 over a 5 cap."""
    inputs = make([0, 0], [6, 6])
    s = Schedule(charge_kw=np.zeros(2), discharge_kw=np.zeros(2), import_kw=np.array([6.0, 6.0]),
                 export_kw=np.zeros(2), curtail_kw=np.zeros(2), soc_kwh=np.array([0.5, 0.5]))
    objective, slack = evaluate(s, inputs, BATTERY, GridSpec(import_cap_kw=5), SETTINGS)
    pen = SETTINGS.soc_slack_penalty_per_kwh
    assert objective.slack_penalty == pytest.approx(pen * (2 * 0.5 + 2 * 1.0))
    assert {x.constraint: x.steps for x in slack} == {"soc_min": (0, 1), "import_cap": (0, 1)}
