"""The coarse far horizon (optimizer/coarse_horizon.py): the block layout, the inputs on the blocks, and the plan
back on the native steps.

- known layouts: a re-plan at :00 and at :15, a demand window shorter than the blocks, a per-step demand measure,
  a billing month starting inside a block;
- known means, limits and firsts of the inputs on the blocks;
- physics of every coarse plan on the native steps (hypothesis): power balance, SOC dynamics, one direction, SOC
  window unless slack is reported;
- on inputs constant over each block the coarse plan costs what the native-step plan costs (hypothesis): merging
  steps loses nothing when nothing varies within a block;
- a re-plan every 15 minutes alternates between two LPs, each built once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.coarse_horizon import blocks, coarsen
from optimizer.planner import TIE_BREAK_COST, PlanInputs, Planner
from optimizer.site import PlannerSettings
from optimizer.timegrid import TimeGrid, regular_grid
from tests.test_planner_properties import BATTERIES, GRIDS, PERIODS, _check_physics

COARSE = PlannerSettings()  # the defaults: the first hour in 15-minute steps, then 30-minute blocks
NATIVE = PlannerSettings(block_minutes=0)
PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HALF_HOURS = 48


def day_grid(start: str, steps: int = 96):
    return regular_grid(pd.Timestamp(start), steps, 15)


def test_a_replan_on_the_half_hour_has_one_fine_hour_then_half_hour_blocks():
    b = blocks(day_grid("2026-03-02T00:00Z"), COARSE)
    assert b.first.tolist() == [0, 1, 2, 3, *range(4, 96, 2)]
    np.testing.assert_allclose(b.duration_h, [0.25] * 4 + [0.5] * 46)
    assert b.single.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(b.fraction[4:8], [0.5, 1.0, 0.5, 1.0])


def test_a_replan_at_a_quarter_past_runs_fine_to_the_next_half_hour():
    b = blocks(day_grid("2026-03-02T00:15Z"), COARSE)
    # 01:15 starts no block: 15-minute steps to 01:30, 45 blocks, the last quarter hour on its own
    assert b.first.tolist() == [0, 1, 2, 3, 4, *range(5, 96, 2)]
    np.testing.assert_allclose(b.duration_h, [0.25] * 5 + [0.5] * 45 + [0.25])
    assert b.single.tolist() == [0, 1, 2, 3, 4, 95]


def test_demand_measures_bound_the_blocks():
    grid = day_grid("2026-03-02T00:00Z")
    hourly = PlannerSettings(block_minutes=60)
    assert len(blocks(grid, hourly).first) == 4 + 23  # energy only: hour blocks after the first hour
    # under a 30-minute demand window the blocks are the windows
    assert blocks(grid, hourly, None, demand_window_h=0.5).first.tolist() == [0, 1, 2, 3, *range(4, 96, 2)]
    # a per-step (or 15-minute) measure is not coarsened
    assert blocks(grid, COARSE, None, demand_window_h=0.0) is None
    assert blocks(grid, COARSE, None, demand_window_h=0.25) is None
    assert blocks(grid, NATIVE) is None


def test_a_billing_month_starting_inside_a_block_starts_a_block_under_a_demand_charge():
    grid = day_grid("2026-03-02T00:00Z")
    month = (np.arange(96) >= 41).astype(int)
    assert blocks(grid, COARSE, month, demand_window_h=0.5).first.tolist() == [
        0, 1, 2, 3, *range(4, 41, 2), 41, *range(42, 96, 2)]
    assert blocks(grid, COARSE, month).first.tolist() == [0, 1, 2, 3, *range(4, 96, 2)]  # energy only: no matter


def test_inputs_on_the_blocks():
    grid = day_grid("2026-03-02T00:00Z", 8)  # 4 fine steps, then 2 blocks
    cap = np.array([9.0, 9, 9, 9, 7, 5, 9, 8])
    inputs = PlanInputs(grid=grid, pv_kw=np.arange(8.0), load_kw=np.full(8, 3.0),
                        import_price=np.array([1.0, 1, 1, 1, 1, 3, 2, 2]), export_price=np.zeros(8), soc0_kwh=5.0,
                        demand_charge_per_kw=1.0, demand_window_h=0.5, demand_window=np.array([0, 0, 1, 1, 2, 2, 3, 3]),
                        billing_month=np.zeros(8, dtype=int), import_cap_kw=cap, max_charge_kw=4.0,
                        peak_risk_kw=np.array([0.0, 0, 0, 0, 2, 4, 1, 1]), period=["p"] * 8)
    c = coarsen(inputs, blocks(grid, COARSE, inputs.billing_month, 0.5))
    np.testing.assert_allclose(c.grid.duration_h, [0.25, 0.25, 0.25, 0.25, 0.5, 0.5])
    assert c.grid.starts_ns.tolist() == grid.starts_ns[[0, 1, 2, 3, 4, 6]].tolist()
    np.testing.assert_allclose(c.pv_kw, [0, 1, 2, 3, 4.5, 6.5])
    np.testing.assert_allclose(c.import_price, [1, 1, 1, 1, 2, 2])
    np.testing.assert_allclose(c.import_cap_kw, [9, 9, 9, 9, 5, 8])
    np.testing.assert_allclose(c.peak_risk_kw, [0, 0, 0, 0, 3, 1])
    assert c.demand_window.tolist() == [0, 0, 1, 1, 2, 3]
    assert c.max_charge_kw == 4.0 and c.period is None and c.soc0_kwh == 5.0


@st.composite
def day_instances(draw, block_constant: bool = False):
    """(battery index, grid index, PlanInputs over a day of 15-minute steps from a random quarter hour)."""
    b, g = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    quarter = 0 if block_constant else draw(st.integers(0, 3))
    start = pd.Timestamp("2026-05-31T00:00Z") + pd.Timedelta(minutes=15 * quarter)

    def series(lo: float, hi: float) -> np.ndarray:
        if block_constant:
            return np.repeat(draw(st.lists(st.floats(lo, hi), min_size=HALF_HOURS, max_size=HALF_HOURS)), 2)
        return np.array(draw(st.lists(st.floats(lo, hi), min_size=96, max_size=96)))

    period = (draw(st.lists(st.integers(0, 2), min_size=HALF_HOURS, max_size=HALF_HOURS)))
    import_price = np.repeat(np.array([0.08, 0.15, 0.3])[period], 2)[quarter:quarter + 96]
    if len(import_price) < 96:
        import_price = np.append(import_price, import_price[-1:].repeat(96 - len(import_price)))
    battery = BATTERIES[b]
    demand = draw(st.sampled_from([0.0, 0.5, 3.0]))
    boundary = draw(st.sampled_from([96, 40, 41])) if not block_constant else draw(st.sampled_from([96, 40]))
    window = (np.arange(96) + quarter) // 2  # 30-minute windows aligned to the clock
    inputs = PlanInputs(
        grid=regular_grid(start, 96, 15), pv_kw=series(0, 15), load_kw=series(0, 15), import_price=import_price,
        export_price=series(0.0, 0.1), soc0_kwh=draw(st.floats(battery.soc_min_kwh, battery.soc_max_kwh)),
        demand_charge_per_kw=demand, month_peak_kw=draw(st.floats(0, 12)),
        billing_month=(np.arange(96) >= boundary).astype(int) if boundary < 96 else None,
        demand_window_h=0.5, demand_window=window,
        period=[PERIODS[i] for i in np.repeat(period, 2)[quarter:quarter + 96]] + [PERIODS[period[-1]]] * quarter)
    return b, g, inputs


@PROPS
@given(day_instances())
def test_every_coarse_plan_keeps_the_physics_on_the_native_steps(case):
    b, g, inputs = case
    plan = Planner(BATTERIES[b], GRIDS[g], COARSE, 96).plan(inputs)
    assert len(plan.soc_kwh) == 96
    _check_physics(plan, inputs, BATTERIES[b])


@PROPS
@given(day_instances(block_constant=True))
def test_on_inputs_constant_over_each_block_the_coarse_plan_costs_what_the_native_plan_costs(case):
    b, g, inputs = case
    coarse = Planner(BATTERIES[b], GRIDS[g], COARSE, 96).plan(inputs)
    native = Planner(BATTERIES[b], GRIDS[g], NATIVE, 96).plan(inputs)
    # both LPs carry a tie-break on throughput left out of the reported cost
    max_price = max(1.0, float(np.max(inputs.import_price)), float(np.max(inputs.export_price)))
    throughput = sum(float(np.sum(p.duration_h * (p.charge_kw + p.discharge_kw))) for p in (coarse, native))
    assert coarse.objective.total == pytest.approx(native.objective.total,
                                                   abs=TIE_BREAK_COST * max_price * throughput + 1e-6)


def test_a_replan_every_quarter_hour_alternates_between_two_lps_built_once():
    battery = BATTERIES[1]
    planner = Planner(battery, GRIDS[1], COARSE, 96)
    rng = np.random.default_rng(7)
    built = []
    for k in range(6):
        grid = regular_grid(pd.Timestamp("2026-05-31T00:00Z") + pd.Timedelta(minutes=15 * k), 96, 15)
        inputs = PlanInputs(grid=grid, pv_kw=rng.uniform(0, 15, 96), load_kw=rng.uniform(0, 15, 96),
                            import_price=rng.choice([0.08, 0.15, 0.3], 96), export_price=np.zeros(96),
                            soc0_kwh=10.0)
        built.append(planner.schedule(inputs)[1].build_ms > 0)
    assert built == [True, True, False, False, False, False]


def test_blocks_must_be_whole_steps():
    with pytest.raises(ValueError, match=r"block_minutes \(20\) must be a multiple of planner\.step_minutes \(15\)"):
        PlannerSettings(block_minutes=20)
    hourly_steps = PlannerSettings(step_minutes=60)  # the default 30-minute blocks are within one step: none
    assert blocks(regular_grid(pd.Timestamp("2026-03-02T00:00Z"), 24, 60), hourly_steps) is None


def test_a_live_plan_made_inside_a_step_keeps_its_short_first_step_and_blocks_after_the_first_hour():
    """A re-plan at 00:07 (a deviation trigger): the first step runs to 00:15, then quarter hours; the blocks start
    at the first half hour at least an hour away (01:30: 01:07 is inside the fine part's last step)."""
    start = pd.Timestamp("2026-05-31T00:15Z")
    starts = pd.DatetimeIndex([pd.Timestamp("2026-05-31T00:07Z")]).append(
        pd.date_range(start, periods=95, freq="15min")).tz_convert("UTC")
    duration = np.full(96, 0.25)
    duration[0] = 8 / 60
    grid = TimeGrid(starts, duration)
    b = blocks(grid, COARSE)
    assert b.first.tolist() == [0, 1, 2, 3, 4, 5, *range(6, 96, 2)]  # 00:07 … 01:15 fine, 01:30 the first block
    np.testing.assert_allclose(b.duration_h[:6], duration[:6])
    battery = BATTERIES[1]
    rng = np.random.default_rng(3)
    inputs = PlanInputs(grid=grid, pv_kw=rng.uniform(0, 15, 96), load_kw=rng.uniform(0, 15, 96),
                        import_price=rng.choice([0.08, 0.15, 0.3], 96), export_price=np.zeros(96), soc0_kwh=10.0,
                        fixed_battery_kw=2.0)
    plan = Planner(battery, GRIDS[1], COARSE, 96).plan(inputs)
    _check_physics(plan, inputs, battery)
    assert plan.battery_kw[0] == pytest.approx(2.0)  # the step followed now keeps its committed power
