"""The hindsight bound on the recharge floor's multiple (benchmarks/bench_hedge_hindsight.py): the month-by-month
choice by hand, the scheduled MPC at the shipped multiple being the shipped MPC, and each re-plan's floor taken at
its own month's multiple."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from optimizer.service import SiteState, recharge_floor_kw
from simulations.runner import make_strategy, run, simulate
from tests.bench_modules import benchmark

SCENARIO = "nam-cau-kien-hard-two-part"


def test_each_month_takes_its_best_multiple_and_the_smaller_one_on_a_tie() -> None:
    """Values per month (M VND): κ 0 → 10 / 5 / 7, κ 0.5 → 8 / 9 / 7, κ 1 → 9 / 9 / 3. January is κ 0's (10),
    February a tie of 0.5 and 1 (9), March a tie of 0 and 0.5 (7): the smaller multiple wins a tie."""
    bench = benchmark("bench_hedge_hindsight")
    values = {0.0: [10.0, 5.0, 7.0], 0.5: [8.0, 9.0, 7.0], 1.0: [9.0, 9.0, 3.0]}
    assert bench.hindsight_schedule(values) == [0.0, 0.5, 0.0]


def test_the_scheduled_mpc_at_the_shipped_multiple_is_the_shipped_mpc() -> None:
    """Two days of the harder two-part year: the scheduled MPC at 0.75 (the shipped default) dispatches exactly as
    the study's MPC; at 0 it dispatches differently (the floor is what the multiple moves), and the month values
    are the PV-only month bill less the strategy's."""
    bench = benchmark("bench_hedge_hindsight")
    scenario = bench.seeded_scenario(SCENARIO, 7, {}, 2)
    assert scenario.planner.demand_floor_stress_level == 0.75
    result = run(scenario, strategies=["pv_only", "mpc"])
    for multiple in (0.75, 0.0):
        mpc = bench.ScheduledFloorMpc.of(make_strategy("mpc", scenario, result.inputs, result.tariff), [multiple],
                                         bench.variant_name(multiple))
        result.results[mpc.name] = simulate(mpc, scenario, result.inputs, result.tariff, battery=True)
    shipped, same, other = (result.results[n].frame for n in ("mpc", "floor_0.75", "floor_0"))
    assert np.array_equal(shipped["battery_kw"].to_numpy(), same["battery_kw"].to_numpy())
    assert not np.allclose(shipped["battery_kw"].to_numpy(), other["battery_kw"].to_numpy())
    pv_only, mpc_bill = result.results["pv_only"].bill.total, result.results["mpc"].bill.total
    assert sum(bench.month_values(result, "mpc")) == pytest.approx(pv_only - mpc_bill)


def test_each_replan_uses_the_multiple_of_its_own_billing_month() -> None:
    """Schedule κ 0 for January and κ 1 for February: a re-plan at 08:00 local on 20 January computes the floor at
    κ 0 and one at 08:00 on 3 February at κ 1 — each equal to the shipped floor function at that multiple, for the
    same forecasts (a flat 600 kW load, no PV, 100 kW of risk) and 500 kWh stored."""
    bench = benchmark("bench_hedge_hindsight")
    scenario = bench.seeded_scenario(SCENARIO, 7, {}, 35)
    result = run(scenario, strategies=["pv_only"])
    mpc = bench.ScheduledFloorMpc.of(make_strategy("mpc", scenario, result.inputs, result.tariff), [0.0, 1.0], "x")
    d = mpc.data
    local = pd.DatetimeIndex(d.starts).tz_convert(scenario.site.timezone)
    state = SiteState(soc_kwh=500.0)
    floors = []
    for day, multiple in (("01-20", 0.0), ("02-03", 1.0)):
        t = int(np.flatnonzero(local.strftime("%m-%d %H:%M") == f"{day} 08:00")[0])
        h = mpc.horizon
        grid, tariff = d.grid(t, h), d.tariff.steps(t, h)
        pv, load, risk = np.zeros(h), np.full(h, 600.0), np.full(h, 100.0)
        floor = mpc.recharge_floor(t, grid, tariff, pv, load, risk, state)
        settings = scenario.planner.model_copy(update={"demand_floor_stress_level": multiple})
        assert floor == pytest.approx(recharge_floor_kw(mpc.peak_target, settings, grid, tariff, pv, load, risk,
                                                        state))
        floors.append(floor)
    assert floors[1] > floors[0] + 50.0  # κ 1 adds the whole 100 kW of risk to what the energy must hold
