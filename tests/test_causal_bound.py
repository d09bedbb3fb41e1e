"""The causal-bound diagnostic (benchmarks/bench_causal_bound.py): the noise's transition and window means, the
months on their windows, perfect foresight's LP and the DP against known answers, and the DP's policy never beating
perfect foresight on the path it follows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.site import BatterySpec
from simulations.runner import run, simulate
from tests.bench_modules import benchmark

# 100 kWh, 100 kW, lossless, no wear: the arithmetic of the known answers stays by hand
BATTERY = BatterySpec(capacity_kwh=100, max_charge_kw=100, max_discharge_kw=100, charge_efficiency=1.0,
                      discharge_efficiency=1.0, soc_min_pct=0, soc_max_pct=100, wear_cost_per_kwh=0.0)


def _month(net_kw: list[float], noise_end: list[float] | None = None, price: float = 1.0, rate: float = 10.0):
    bench = benchmark("bench_causal_bound")
    net = np.asarray(net_kw, dtype=float)
    return bench.Month(quiet_kw=net, pv_kw=np.zeros(len(net)), load_kw=net, price=np.full(len(net), price),
                       noise_end=np.zeros(len(net)) if noise_end is None else np.asarray(noise_end), rate=rate,
                       window_h=0.5, steps=2)


def test_the_noise_transition_rows_are_probabilities_centred_where_the_ar1_goes() -> None:
    """Seven points, 15-minute coefficient 0.5 ** 0.25, two steps a window: each row sums to 1, and its mean is
    the AR(1)'s two-step coefficient × z (up to the grid's truncation at ±3)."""
    bench = benchmark("bench_causal_bound")
    phi = 0.5 ** 0.25
    z, prob, _ = bench.noise_transition(7, phi, 2)
    assert z.tolist() == pytest.approx([-3, -2, -1, 0, 1, 2, 3])
    assert prob.sum(axis=1) == pytest.approx(np.ones(7))
    assert prob @ z == pytest.approx(phi ** 2 * z, abs=0.03)
    assert prob[3] == pytest.approx(prob[3][::-1])  # from z = 0, symmetric


def test_the_window_mean_noise_is_the_gaussian_conditional_mean() -> None:
    """Two steps a window: E[e1 | z, e2] = φ z + φ / (1 + φ²) · (e2 − φ² z), the window's mean (E[e1|·] + e2) / 2;
    one step a window: the window's mean is its end."""
    bench = benchmark("bench_causal_bound")
    phi = 0.8
    z, _, mean = bench.noise_transition(5, phi, 2)
    for i, start in enumerate(z):
        for j, end in enumerate(z):
            first = phi * start + phi / (1 + phi ** 2) * (end - phi ** 2 * start)
            assert mean[i, j] == pytest.approx((first + end) / 2)
    _, _, mean_one = bench.noise_transition(5, phi, 1)
    assert mean_one == pytest.approx(np.broadcast_to(z, (5, 5)))


def test_months_are_cut_on_their_demand_windows() -> None:
    """Two months of two 30-minute windows on 15-minute steps: the windows' means, the noise at each window's last
    step in standard deviations ((load − quiet) / (quiet × sd)), each month's rate; a month ending mid-window is
    refused."""
    bench = benchmark("bench_causal_bound")
    quiet = np.full(8, 100.0)
    load = np.array([100, 110, 90, 95, 100, 100, 120, 105], dtype=float)
    month = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    window = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    months = bench.months_of(load, quiet, np.full(8, 10.0), np.arange(8.0), month, window,
                             np.array([5.0] * 4 + [6.0] * 4), 0.5, 0.05)
    assert len(months) == 2
    assert months[0].load_kw.tolist() == [105.0, 92.5]
    assert months[0].pv_kw.tolist() == [10.0, 10.0]
    assert months[0].price.tolist() == [0.5, 2.5]
    assert months[0].noise_end.tolist() == pytest.approx([2.0, -1.0])
    assert months[1].noise_end.tolist() == pytest.approx([0.0, 1.0])
    assert (months[0].rate, months[1].rate, months[1].steps) == (5.0, 6.0, 2)
    with pytest.raises(ValueError, match="unequal"):
        bench.months_of(load[:7], quiet[:7], np.zeros(7), np.zeros(7), month[:7], window[:7], np.zeros(7), 0.5, 0.05)


def test_perfect_foresight_shaves_the_one_spike_as_far_as_the_power_allows() -> None:
    """Net load 100 / 100 / 300 / 100 kW on 30-minute windows, price 1 a kWh, demand rate 10 a kW, a full 100 kWh /
    100 kW lossless battery, stored energy credited at 1: the spike can be shaved only to 200 kW (power limit),
    using 50 kWh. Imports 100 + 100 + 200 + 100 kW × 0.5 h = 250, demand 10 × 200 = 2,000, credit −50 (recharging
    under the peak is worth nothing at equal prices): 2,200. Without a battery: 300 + 3,000 = 3,300."""
    bench = benchmark("bench_causal_bound")
    month = _month([100, 100, 300, 100])
    cost, peak = bench.perfect_foresight(BATTERY, month, 100.0, 1.0)
    assert cost == pytest.approx(2200.0)
    assert peak == pytest.approx(200.0)
    assert bench.no_battery_cost(month) == pytest.approx(3300.0)


def test_without_noise_the_dp_finds_perfect_foresights_cost_when_its_grids_hold_it() -> None:
    """The same month, no noise, peak grid 150 … 350 kW by 10 kW (it holds 200 kW), energy by 12.5 kWh: the DP's
    policy followed on the month costs what perfect foresight costs, 2,200, peaking at 200 kW."""
    bench = benchmark("bench_causal_bound")
    month = _month([100, 100, 300, 100])
    dp = bench.CausalDP(BATTERY, month, 0.0, np.arange(150.0, 351.0, 10.0), 12.5, 1.0)
    dp.solve()
    cost, peak = dp.follow(100.0)
    assert cost == pytest.approx(2200.0)
    assert peak == pytest.approx(200.0)


def test_under_noise_the_dp_value_is_what_its_policy_costs_on_average() -> None:
    """Six windows of 150–200 kW quiet load with 20 % AR(1) noise (the generator's 0.5 an hour on 15-minute steps),
    a 50 kWh start, the peak grid from 100 kW: the DP's expected cost from the start (its value, plus the grid's
    lowest peak charged at once) is what its policy costs on average over 400 noise paths drawn from the AR(1)
    itself, within three standard errors and 1 % for the model's discretisation (Tauchen's seven points, the
    window's mean noise from its two ends). A DP that ignored the noise, or mis-stated its transition, expects the
    cost of the noise-free month instead (~10 % less here)."""
    bench = benchmark("bench_causal_bound")
    rng = np.random.default_rng(1)
    phi, sd, windows = 0.5 ** 0.25, 0.2, 6
    quiet = np.array([150.0, 150.0, 180.0, 150.0, 200.0, 150.0])

    def month(load: np.ndarray, noise_end: np.ndarray):
        return bench.Month(quiet_kw=quiet, pv_kw=np.zeros(windows), load_kw=load, price=np.full(windows, 1.0),
                           noise_end=noise_end, rate=10.0, window_h=0.5, steps=2)

    grid = np.arange(100.0, 331.0, 5.0)
    dp = bench.CausalDP(BATTERY, month(quiet, np.zeros(windows)), sd, grid, 12.5, 1.0)
    value = dp.solve()
    expected = float(value[0, 3, dp.energy.tolist().index(50.0), 0]) + 10.0 * grid[0]  # z = 0, 50 kWh, 100 kW
    costs = []
    for _ in range(400):
        noise = np.empty(2 * windows)
        previous = 0.0
        for i in range(2 * windows):
            previous = phi * previous + np.sqrt(1 - phi * phi) * rng.standard_normal()
            noise[i] = previous
        dp.month = month(quiet * (1 + sd * noise.reshape(windows, 2).mean(axis=1)), noise[1::2])
        costs.append(dp.follow(50.0)[0])
    mean, error = float(np.mean(costs)), float(np.std(costs)) / np.sqrt(len(costs))
    assert abs(mean - expected) < 3 * error + 0.01 * expected
    noise_free = bench.CausalDP(BATTERY, month(quiet, np.zeros(windows)), 0.0, grid, 12.5, 1.0)
    assert noise_free.solve()[0, 0, dp.energy.tolist().index(50.0), 0] + 10.0 * grid[0] < 0.95 * expected


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(50.0, 250.0), min_size=3, max_size=6),
       st.lists(st.floats(-2.5, 2.5), min_size=6, max_size=6), st.floats(0.0, 100.0))
def test_the_dp_never_beats_perfect_foresight_on_the_path_it_follows(quiet_kw, noise, start_kwh) -> None:
    """Any month, noise path and start: the DP's policy is one feasible dispatch of the actual month, so it costs no
    less than perfect foresight's LP on that month (the lower bound the share is measured against)."""
    bench = benchmark("bench_causal_bound")
    quiet = np.asarray(quiet_kw)
    z = np.asarray(noise[:len(quiet)])
    month = bench.Month(quiet_kw=quiet, pv_kw=np.zeros(len(quiet)), load_kw=quiet * (1 + 0.1 * z), price=np.full(
        len(quiet), 1.0), noise_end=z, rate=10.0, window_h=0.5, steps=2)
    pf_cost, _ = bench.perfect_foresight(BATTERY, month, start_kwh, 1.0)
    dp = bench.CausalDP(BATTERY, month, 0.1, np.arange(0.0, 360.0, 20.0), 25.0, 1.0)
    dp.solve()
    cost, _ = dp.follow(start_kwh)
    assert cost >= pf_cost - 1e-6


def test_a_study_policy_is_counted_on_the_models_terms() -> None:
    """Four 15-minute steps (two 30-minute windows) importing 100 / 300 / 200 / 200 kW at price 1, 2, 2, 2, the
    battery at −40 / 0 / 20 / 20 kW, from 50 to 60 kWh: energy (100 + 600 + 400 + 400) × 0.25 = 375, demand 10 ×
    the highest window mean 200 = 2,000, wear 2 × 80 × 0.25 = 40, the 10 kWh stored credited at the month's cheapest
    window price over the charge efficiency, −(1.5 / 0.8) × 10 = −18.75: 2,396.25."""
    bench = benchmark("bench_causal_bound")
    battery = BatterySpec(capacity_kwh=100, max_charge_kw=100, max_discharge_kw=100, charge_efficiency=0.8,
                          discharge_efficiency=1.0, soc_min_pct=0, soc_max_pct=100, wear_cost_per_kwh=2.0)
    month = bench.Month(quiet_kw=np.zeros(2), pv_kw=np.zeros(2), load_kw=np.zeros(2), price=np.array([1.5, 2.0]),
                        noise_end=np.zeros(2), rate=10.0, window_h=0.5, steps=2)
    imports, powers = np.array([100.0, 300.0, 200.0, 200.0]), np.array([-40.0, 0.0, 20.0, 20.0])
    cost = bench.study_month_cost(battery, month, np.array([1.0, 2.0, 2.0, 2.0]), 0.25, imports, powers, 50.0, 60.0)
    assert cost == pytest.approx(375.0 + 2000.0 + 40.0 - 18.75)


def test_the_month_target_can_be_judged_on_a_given_load() -> None:
    """Two local days of flat 100 kW net load, the actual load with a one-hour 500 kW spike on the second; a 100 kWh
    lossless battery of 1,000 kW. On the flat days the lowest level it holds is where one 24-hour run above it needs
    all its energy: 100 − 100 / 24 = 95.83 kW. With the spike it holds no lower than 400 kW (the spike's excess
    above 400 kW for one hour is the 100 kWh). The month's target is the hardest day's: 400 kW on the actual load,
    95.83 kW on the noise-free one."""
    bench = benchmark("bench_two_part_oracles")
    battery = BatterySpec(capacity_kwh=100, max_charge_kw=1000, max_discharge_kw=1000, charge_efficiency=1.0,
                          discharge_efficiency=1.0, soc_min_pct=0, soc_max_pct=100, wear_cost_per_kwh=0.0)
    starts = pd.date_range("2026-03-01", periods=2 * 96, freq="15min", tz="Asia/Ho_Chi_Minh").tz_convert("UTC")
    quiet = np.full(len(starts), 100.0)
    actual = quiet.copy()
    actual[96 + 40:96 + 44] = 500.0  # 10:00–11:00 on the second day

    class Inputs:  # what MonthOracleTarget reads of the MPC's inputs
        steps = len(starts)
        load_kw, pv_kw, duration_h = actual, np.zeros(len(starts)), np.full(len(starts), 0.25)

    Inputs.starts = starts
    start_ns = int(starts[-1].value)
    on_actual = bench.MonthOracleTarget(battery, 5, Inputs, "Asia/Ho_Chi_Minh")
    on_quiet = bench.MonthOracleTarget(battery, 5, Inputs, "Asia/Ho_Chi_Minh", load_kw=quiet)
    assert on_actual(None, None, start_ns, 0.25, 0.5) == pytest.approx(400.0, abs=1e-3)
    assert on_quiet(None, None, start_ns, 0.25, 0.5) == pytest.approx(100.0 - 100.0 / 24.0, abs=1e-3)


def test_the_informed_mpc_plans_on_the_actual_pv_and_the_noise_free_load() -> None:
    """Two days of the harder two-part year: every re-plan of the informed MPC is made on the actual PV, the
    best-load forecast (the noise-free load with the last noise carried forward) and that forecast's noise P90 as
    the net-load risk, with the recharge floor at INFORMED_FLOOR_MULTIPLE; and it dispatches otherwise than the
    study's own MPC."""
    bench = benchmark("bench_causal_bound")
    scenario = bench.seeded_scenario("nam-cau-kien-hard-two-part", 7, {}, 2)
    result = run(scenario, strategies=["mpc"])
    inputs, tariff = result.inputs, result.tariff
    best_load = bench.BestLoad.of(scenario, inputs)
    informed, own = bench.InformedMpc.informed(scenario, inputs, tariff, best_load)
    assert own.planner.demand_floor_stress_level == bench.INFORMED_FLOOR_MULTIPLE
    assert scenario.planner.demand_floor_stress_level != bench.INFORMED_FLOOR_MULTIPLE
    seen: list[int] = []  # the step of each re-plan checked
    plan, target = informed.planner.schedule, informed.target

    def target_at(t, now, ctx):
        seen.append(t)
        return target(t, now, ctx)

    def checked(plan_inputs):
        t, h = seen[-1], len(plan_inputs.pv_kw)
        load, risk = best_load.forecast(t, h)
        assert np.array_equal(plan_inputs.pv_kw, inputs.pv_kw[t:t + h])
        assert np.allclose(plan_inputs.load_kw, load)
        assert np.allclose(plan_inputs.peak_risk_kw, risk)
        return plan(plan_inputs)

    informed.planner.schedule, informed.target = checked, target_at
    year = simulate(informed, own, inputs, tariff, battery=True)
    assert len(seen) == inputs.steps and not informed.failures
    mpc = result.results["mpc"].frame
    assert not np.allclose(year.frame["battery_kw"].to_numpy(), mpc["battery_kw"].to_numpy())
