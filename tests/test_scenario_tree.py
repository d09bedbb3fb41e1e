"""The scenario-tree diagnostic (benchmarks/bench_scenario_tree.py): its leaves' loads, that with no spread it plans
as the shipped LP, and that its leaves decide alike exactly where they cannot yet know which leaf they are."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from optimizer.planner import PlanInputs, Planner
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import regular_grid
from tests.bench_modules import benchmark

T0 = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)
BATTERY = BatterySpec(capacity_kwh=400, max_charge_kw=200, max_discharge_kw=200, soc_min_pct=0, soc_max_pct=100)
GRID = GridSpec(export_cap_kw=0)
STEPS = 32  # 8 h of 15-minute steps; the LP has 18: the first hour fine, then 30-minute blocks


def _inputs(risk_kw: float) -> PlanInputs:
    """A morning at 150 kW, an afternoon at 350 kW, a 250 kW month's peak so far, a 300 kWh battery, dear energy
    in the morning: the plan can sell in the morning or keep the energy for the afternoon's peak."""
    load = np.array([150.0] * 12 + [350.0] * 12 + [150.0] * 8)
    price = np.array([3.0] * 12 + [1.0] * 20)
    return PlanInputs(grid=regular_grid(T0, STEPS, 15), pv_kw=np.zeros(STEPS), load_kw=load, import_price=price,
                      export_price=np.zeros(STEPS), soc0_kwh=300.0, month_peak_kw=250.0, demand_charge_per_kw=2000.0,
                      billing_month=np.zeros(STEPS, dtype=int), demand_window_h=0.5,
                      demand_window=np.arange(STEPS) // 2, peak_risk_kw=np.full(STEPS, risk_kw))


def test_the_leaves_loads_are_the_forecast_plus_the_errors_revealed_so_far() -> None:
    """Risk 128.16 kW (the P90 of a 100 kW standard deviation), spread 1, branchings after 1 h and 2 h on
    15-minute steps: the top leaf is 100 · √3 / √2 = 122.47 kW above the forecast from step 4 and 244.95 kW from
    step 8; the bottom leaf the same below, at no less than 0 kW; the middle leaf is the forecast."""
    bench = benchmark("bench_scenario_tree")
    load = np.full(12, 200.0)
    loads, b1, b2 = bench.leaf_loads(load, np.full(12, 128.16), np.full(12, 0.25), 1.0, 1.0, 2.0)
    assert (b1, b2) == (4, 8)
    assert loads.shape == (9, 12)
    assert np.allclose(loads[bench.MIDDLE], 200.0)
    assert np.allclose(loads[8, :4], 200.0)
    assert loads[8, 4:8] == pytest.approx(np.full(4, 200.0 + 100.0 * np.sqrt(1.5)), abs=1e-6)
    assert loads[8, 8:] == pytest.approx(np.full(4, 200.0 + 200.0 * np.sqrt(1.5)), abs=1e-6)
    assert np.allclose(loads[0, 8:], 0.0)  # 200 − 244.95 kW: clipped
    assert np.allclose(loads[5, 4:8], 200.0) and loads[5, 8] == pytest.approx(200.0 + 100.0 * np.sqrt(1.5))


def test_with_no_spread_the_tree_plans_as_the_shipped_lp() -> None:
    """Nine copies of the same leaf weighted 1/36 … 4/9: the same plan as the planner's own LP."""
    bench = benchmark("bench_scenario_tree")
    planner = Planner(BATTERY, GRID, PlannerSettings(), STEPS)
    inputs = _inputs(60.0)
    shipped, _ = planner.schedule(inputs)
    tree, _ = bench.TreePlanner(planner, 1e-9, (1.0, 2.0)).schedule(inputs)
    net = shipped.discharge_kw - shipped.charge_kw
    assert tree.discharge_kw - tree.charge_kw == pytest.approx(net, abs=1e-4)
    assert tree.import_kw == pytest.approx(shipped.import_kw, abs=1e-4)


def test_leaves_decide_alike_until_they_can_tell_each_other_apart() -> None:
    """With a wide spread the leaves' charge and discharge are equal before the first branching (every leaf),
    equal within a first branch before the second, and differ somewhere after it (each leaf then plans on its own
    load: if every step were tied, the tree would be one plan on nine loads)."""
    bench = benchmark("bench_scenario_tree")
    planner = Planner(BATTERY, GRID, PlannerSettings(), STEPS)
    tree = bench.TreePlanner(planner, 2.0, (1.0, 2.0))
    tree.schedule(_inputs(80.0))
    (solver,) = tree._solvers.values()
    x = np.asarray(solver.highs.getSolution().col_value)
    nc = solver.lp.num_col // 9
    middle = {name: cols - bench.MIDDLE * nc for name, cols in solver.lp.col_of.items()}

    def power(leaf: int) -> np.ndarray:
        return x[middle["dis"] + leaf * nc] - x[middle["ch"] + leaf * nc]

    b1, b2 = 4, 6  # LP steps: four quarter hours, then 30-minute blocks
    for leaf in range(9):
        assert power(leaf)[:b1] == pytest.approx(power(bench.MIDDLE)[:b1], abs=1e-6)
        assert power(leaf)[b1:b2] == pytest.approx(power(3 * (leaf // 3) + 1)[b1:b2], abs=1e-6)
    assert max(np.abs(power(leaf)[b2:] - power(bench.MIDDLE)[b2:]).max() for leaf in range(9)) > 1.0
