"""The LP's affine standard form: tiling equals direct extraction; non-affine models are refused."""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
import pytest

from optimizer.lp_model import _assert_same_lp, build_model, extract_affine_lp, tiled_affine_lp
from optimizer.site import BatterySpec

BATTERY = BatterySpec(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=4, standby_loss_kw=0.1,
                      charge_efficiency=0.9, discharge_efficiency=0.95)


@pytest.mark.parametrize("steps", [12, 40])
@pytest.mark.parametrize("demand", [True, False])
def test_tiled_lp_equals_direct_extraction(steps, demand):
    direct = extract_affine_lp(build_model(np.full(steps, 0.25), BATTERY, demand))
    _assert_same_lp(tiled_affine_lp(0.25, steps, BATTERY, demand), direct)


def test_affine_maps_evaluate_like_pyomo():
    """Costs and bounds from the affine maps equal Pyomo's own values at random Param values."""
    m = build_model(np.array([0.25, 0.5, 1.0]), BATTERY)
    lp = extract_affine_lp(m)
    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 2.0, lp.num_param)
    for name, sl in lp.param_slices.items():
        comp = getattr(m, name)
        for k, index in enumerate(comp):
            comp[index] = float(p[sl][k])
    upper = lp.col_upper.evaluate(p)
    for t in range(3):
        assert upper[lp.col_of["curt"][t]] == pytest.approx(pyo.value(m.curt[t].ub))
        assert upper[lp.col_of["ch"][t]] == pytest.approx(pyo.value(m.ch[t].ub))
    rows = lp.row_of["balance"][1]
    np.testing.assert_allclose(lp.row_lower.evaluate(p)[rows], [pyo.value(m.load_kw[t] - m.pv[t]) for t in range(3)])
    cost = lp.cost.evaluate(p)
    assert cost[lp.col_of["imp"][2]] == pytest.approx(1.0 * pyo.value(m.c_imp[2]))
    assert cost[lp.col_of["soc_w"][2]] == pytest.approx(-pyo.value(m.tv))
    assert cost[lp.col_of["s_lo"][2]] == pytest.approx(1.0 * pyo.value(m.pen) + pyo.value(m.tv))


def test_a_param_in_a_matrix_coefficient_is_refused():
    m = build_model(np.full(3, 0.25), BATTERY)
    m.bad = pyo.Constraint(expr=m.c_imp[0] * m.ch[0] <= 1)
    with pytest.raises(ValueError, match="matrix coefficient"):
        extract_affine_lp(m)


def test_a_product_of_params_is_refused():
    m = build_model(np.full(3, 0.25), BATTERY)
    m.bad = pyo.Constraint(expr=m.ch[0] <= m.pv[0] * m.load_kw[0])
    with pytest.raises(ValueError, match="not affine"):
        extract_affine_lp(m)


def _receding_inputs(n: int, replans: int, seed: int):
    """Inputs of a receding-horizon run: the window moves one quarter hour per plan, prices include negatives."""
    import pandas as pd

    from optimizer.planner import PlanInputs
    from optimizer.timegrid import regular_grid

    rng = np.random.default_rng(seed)
    total = n + replans
    hour = (np.arange(total) % 96) / 4
    pv = np.clip(8 * np.sin((hour - 6) / 12 * np.pi), 0, None) * rng.uniform(0.5, 1, total)
    load = rng.uniform(1, 6, total)
    price = np.where((hour >= 17) & (hour < 20), 0.3, 0.12) + rng.choice([0, 0, 0, -0.2], total)
    start = pd.Timestamp("2026-05-04T00:00Z")
    for k in range(replans):
        sl = slice(k, k + n)
        yield PlanInputs(grid=regular_grid(start + pd.Timedelta(minutes=15 * k), n, 15), pv_kw=pv[sl],
                         load_kw=load[sl], import_price=price[sl], export_price=np.full(n, 0.05),
                         soc0_kwh=float(rng.uniform(0, 10)), demand_charge_per_kw=2.0, month_peak_kw=3.0,
                         export_cap_kw=2.0)


def test_hot_re_plans_equal_cold_plans():
    """A long-lived planner (hot starts, only changed costs/bounds handed to HiGHS, no cost perturbation)
    gives the objective and schedule of a fresh planner on every plan of a receding-horizon run."""
    from optimizer.planner import Planner
    from optimizer.site import GridSpec, PlannerSettings

    hot = Planner(BATTERY, GridSpec(), PlannerSettings(), 24)
    for inputs in _receding_inputs(24, 40, seed=5):
        plan = hot.plan(inputs)
        cold_planner = Planner(BATTERY, GridSpec(), PlannerSettings(), 24)
        cold = cold_planner.plan(inputs)
        assert hot.last_objective == pytest.approx(cold_planner.last_objective, rel=1e-9, abs=1e-7)
        assert plan.objective.total == pytest.approx(cold.objective.total, rel=1e-7, abs=1e-6)


def test_a_stalled_hot_re_solve_is_repeated_cold():
    """A hot re-solve that hits its iteration limit is solved again from scratch with the default options."""
    from optimizer.planner import COLD_OPTIONS, Planner
    from optimizer.site import GridSpec, PlannerSettings

    planner = Planner(BATTERY, GridSpec(), PlannerSettings(), 24)
    runs = iter(_receding_inputs(24, 6, seed=7))
    planner.plan(next(runs))
    solver = next(iter(planner._solvers.values()))
    restarts = []
    set_cold = solver._set_cold

    def counting_set_cold() -> None:
        restarts.append(solver.highs.getOptionValue("dual_simplex_cost_perturbation_multiplier")[1])
        set_cold()
        assert all(solver.highs.getOptionValue(k)[1] == v for k, v in COLD_OPTIONS.items())

    solver._set_cold = counting_set_cold
    for inputs in runs:
        solver.highs.setOptionValue("simplex_iteration_limit", 0)  # every hot re-solve "stalls"
        planner.plan(inputs)
        fresh = Planner(BATTERY, GridSpec(), PlannerSettings(), 24)
        fresh.plan(inputs)
        assert planner.last_objective == pytest.approx(fresh.last_objective, rel=1e-9, abs=1e-7)
    assert restarts == [0.0] * 5  # each re-plan went hot → stalled → cold


def test_schedule_is_the_plan_without_pricing():
    from optimizer import costs
    from optimizer.planner import Planner
    from optimizer.site import GridSpec, PlannerSettings

    inputs = next(_receding_inputs(24, 1, seed=9))
    a, b = (Planner(BATTERY, GridSpec(), PlannerSettings(), 24) for _ in range(2))
    plan = a.plan(inputs)
    schedule, info = b.schedule(inputs)
    again = costs.make_plan(schedule, inputs, BATTERY, GridSpec(), PlannerSettings(), "optimizer", info)
    for name in ("charge_kw", "discharge_kw", "import_kw", "export_kw", "curtail_kw", "soc_kwh"):
        np.testing.assert_allclose(getattr(schedule, name), getattr(plan, name), atol=1e-9)
    assert again.objective.total == pytest.approx(plan.objective.total, rel=1e-12)


@pytest.mark.parametrize("demand", [False, True])
def test_parameter_vector_layout_is_the_extracted_lps(demand):
    """The planner writes its parameter vector in one fixed layout; extracted and tiled LPs both use it, and the
    named view (lp_parameters) reads the same numbers."""
    from optimizer.planner import Planner, _canonical_slices, lp_parameters
    from optimizer.site import GridSpec, PlannerSettings

    inputs = next(_receding_inputs(24, 1, seed=3))
    planner = Planner(BATTERY, GridSpec(import_cap_kw=7.0), PlannerSettings(), 24)
    for lp in (extract_affine_lp(build_model(np.full(24, 0.25), BATTERY, demand)),
               tiled_affine_lp(0.25, 24, BATTERY, demand)):
        assert lp.param_slices == _canonical_slices(24)
        p = planner.parameter_vector(lp, inputs)
        for name, value in lp_parameters(inputs, BATTERY, planner.grid, planner.settings, demand).items():
            np.testing.assert_array_equal(p[lp.param_slices[name]], value)
    named = lp_parameters(inputs, BATTERY, planner.grid, planner.settings, demand)
    np.testing.assert_array_equal(named["imp_cap"], 7.0)
    np.testing.assert_array_equal(named["pv"], np.round(inputs.pv_kw, 6))
    assert named["soc0"] == inputs.soc0_kwh


def test_a_highs_scheduler_of_another_size_in_the_thread_does_not_stop_the_planner():
    """HiGHS sizes one task scheduler per OS thread at the first solve there. When another library solved first in
    this thread with another thread count, the planner's pinned instance falls back to HiGHS's default and plans."""
    import threading

    import highspy

    from optimizer.planner import HIGHS_THREADS, Planner
    from optimizer.site import GridSpec, PlannerSettings

    inputs = next(_receding_inputs(24, 1, seed=11))
    expected = Planner(BATTERY, GridSpec(), PlannerSettings(), 24).plan(inputs).objective.total
    seen: dict[str, object] = {}

    def in_fresh_thread() -> None:
        other = highspy.Highs()
        other.setOptionValue("output_flag", False)
        other.setOptionValue("threads", HIGHS_THREADS + 1)
        other.addVars(1, np.zeros(1), np.ones(1))
        seen["other"] = other.run()
        planner = Planner(BATTERY, GridSpec(), PlannerSettings(), 24)
        seen["total"] = planner.plan(inputs).objective.total
        seen["threads"] = next(iter(planner._solvers.values())).highs.getOptionValue("threads")[1]

    worker = threading.Thread(target=in_fresh_thread)
    worker.start()
    worker.join()
    assert seen["other"] == highspy.HighsStatus.kOk
    assert seen["threads"] == 0  # fell back to the scheduler's size
    assert seen["total"] == pytest.approx(expected, rel=1e-9)
