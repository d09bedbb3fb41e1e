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
