"""Benchmark of the offline studies (docs/simulation.md § Benchmark).

Measures, in one run:

1. baseline: a bare loop handing each re-plan's new costs and bounds to one persistent ``highspy.Highs``
   holding the planner's own LP, configured as the planner's (one thread, hot options after the first
   solve): a year of 15-minute steps, 24 h horizon, perfect forecasts, on the harder year's data;
2. the runner's year of 15-minute MPC with forecasts fed only the past (planner + forecasters + surplus-day
   rule + dispatcher + plant) under the legacy windows on the harder year (``mpc_year_s``, target ≤ 20 s) and
   on today's default year (``mpc_year_s_base``), with the share of its time spent inside HiGHS;
3. the perfect-foresight year (one LP over 35,040 steps, built and solved);
4. a sizing sweep (4 × 4 cells of 45 days, three rounds in alternating order) with 1 and with 2 worker processes;
5. the share of the perfect-foresight battery value (the saving against PV only as the study counts it:
   counted bills, and the battery's energy at the end over its start credited at the terminal price,
   :func:`simulations.runner.battery_savings`) that MPC with forecasts captures (:func:`value_ratios`), under
   the legacy and the Decision 963 windows, on the harder synthetic year (``mpc_value_ratio_legacy`` target
   ≥ 0.985, ``mpc_value_ratio_963`` ≥ 0.975) and on today's default year beside it (``…_base``).
6. the same share under the two-part pilot tariff (capacity charge on the month's highest 30-minute import), on
   the harder synthetic year (``mpc_value_ratio_two_part``, target ≥ 0.90) and on today's (:func:`two_part_value`);
7. the same three shares on the harder year when the MPC also has a day-ahead PV forecast from outside with a
   daily error of :data:`DAY_AHEAD_ERROR_PCT` (``…_day_ahead``, :func:`day_ahead_values`; docs/simulation.md
   "Day-ahead forecast"): what a weather service's forecast adds to the built-in forecasts.

Run:  .venv/bin/python benchmarks/bench_simulation.py [--days N] [--sweep-days N]
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.planner import HOT_OPTIONS, PlanInputs, Planner, quiet_highs  # noqa: E402
from simulations.runner import battery_savings, load_data, make_strategy, price_inputs, run  # noqa: E402
from simulations.scenario import Scenario, load_scenario  # noqa: E402
from simulations.sweep import sweep  # noqa: E402

SCENARIOS = ROOT / "simulations" / "scenarios"


def scenario_for(name: str, days: int | None) -> Scenario:
    """A shipped scenario, optionally cut to its first ``days`` days; its battery's ageing counted proportionally
    (``battery.ageing_value``: the figures here are the first year's dispatch value, which the end-of-life re-run of
    a two-part study would only make the benchmark slower to reach)."""
    base = load_scenario(SCENARIOS / f"{name}.yaml")
    data = base.model_dump()
    data["battery"]["ageing_value"] = "proportional"
    if days is not None:
        data["data"]["days"] = days
    out = Scenario.model_validate(data)
    out._base_dir = base.base_dir
    return out


def bare_highspy_loop(scenario: Scenario) -> dict[str, float]:
    """Baseline: the planner's LP in one persistent Highs; per step only numpy updates + changeCols/Rows + run."""
    from optimizer.tariff import load_tariff

    series = load_data(scenario)
    tariff = load_tariff(scenario.tariff.ref(), scenario.base_dir).bind(scenario.site.timezone)
    data = price_inputs(series, tariff, scenario.planner.horizon_steps)
    h_steps = scenario.planner.horizon_steps
    battery = scenario.battery.spec()
    planner = Planner(battery, scenario.grid, scenario.planner, h_steps)
    lp = planner.affine_lp(data.duration_h[:h_steps], demand=False)

    def inputs(t: int, soc: float) -> PlanInputs:
        return PlanInputs(grid=data.grid(t, h_steps), pv_kw=data.pv_kw[t:t + h_steps],
                          load_kw=data.load_kw[t:t + h_steps], import_price=data.import_price[t:t + h_steps],
                          export_price=data.export_price[t:t + h_steps], soc0_kwh=soc)

    p = planner.parameter_vector(lp, inputs(0, battery.capacity_kwh / 2))
    highs = quiet_highs()  # configured as the planner's: one thread, output off, hot options after the first solve
    highs.passModel(lp.highs_lp(p))
    cols_cost = lp.cost.varying
    cols_bound = np.union1d(lp.col_lower.varying, lp.col_upper.varying).astype(np.int32)
    rows = np.union1d(lp.row_lower.varying, lp.row_upper.varying).astype(np.int32)
    sl = lp.param_slices
    ch_col, dis_col = lp.col_of["ch"][0], lp.col_of["dis"][0]
    dt = float(data.duration_h[0])
    soc = battery.capacity_kwh / 2
    run_s = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(data.steps):
        p[sl["pv"]] = np.round(data.pv_kw[t:t + h_steps], 6)
        p[sl["load_kw"]] = np.round(data.load_kw[t:t + h_steps], 6)
        p[sl["c_imp"]] = data.import_price[t:t + h_steps]
        p[sl["soc0"]] = soc
        c, lo, hi, rl, ru = lp.vectors(p)
        highs.changeColsCost(len(cols_cost), cols_cost, c[cols_cost])
        highs.changeColsBounds(len(cols_bound), cols_bound, lo[cols_bound], hi[cols_bound])
        highs.changeRowsBounds(len(rows), rows, rl[rows], ru[rows])
        r0 = time.perf_counter()
        highs.run()
        run_s += time.perf_counter() - r0
        if t == 0:
            for name, value in HOT_OPTIONS.items():
                highs.setOptionValue(name, value)
        x = highs.getSolution().col_value
        soc += dt * (battery.charge_efficiency * x[ch_col] - x[dis_col] / battery.discharge_efficiency)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"steps": data.steps, "total_s": total, "cpu_s": cpu, "highs_s": run_s}


def strategy_year(name: str, days: int | None) -> dict[str, float]:
    """MPC (forecasts) and perfect foresight on one scenario: timings and the battery value ratio."""
    scenario = scenario_for(name, days)
    t0 = time.perf_counter()
    result = run(scenario, strategies=["pv_only", "mpc", "perfect_foresight"])
    wall = time.perf_counter() - t0
    mpc = result.results["mpc"]
    value = battery_savings(result)
    value_pf, value_mpc = value["perfect_foresight"], value["mpc"]
    tariff = result.tariff
    t1 = time.perf_counter()
    make_strategy("perfect_foresight", scenario, result.inputs, tariff)
    pf_s = time.perf_counter() - t1
    return {"steps": result.inputs.steps, "run_all_s": wall, "mpc_s": mpc.wall_s, "mpc_cpu_s": mpc.cpu_s,
            "mpc_highs_s": mpc.solve_s,
            "mpc_replans": mpc.replans, "mpc_failures": len(mpc.planner_failures), "perfect_s": pf_s,
            "value_pf": value_pf, "value_mpc": value_mpc, "value_ratio": value_mpc / value_pf if value_pf else None}


def two_part_value(days: int | None) -> dict[str, float | None]:
    """The MPC's share of the perfect-foresight battery value under the two-part pilot tariff, on the harder
    year (``mpc_value_ratio_two_part``) and on today's synthetic year (``…_standard``), with the MPC's time."""
    out: dict[str, float | None] = {}
    for name, key in (("nam-cau-kien-hard-two-part", "mpc_value_ratio_two_part"),
                      ("nam-cau-kien-two-part", "mpc_value_ratio_two_part_standard")):
        result = run(scenario_for(name, days), strategies=["pv_only", "mpc", "perfect_foresight"])
        value = battery_savings(result)
        value_pf, value_mpc = value["perfect_foresight"], value["mpc"]
        out[key] = value_mpc / value_pf if value_pf else None
        out[key.replace("ratio", "mpc_s").replace("mpc_value_", "")] = result.results["mpc"].wall_s
        out[key.replace("ratio", "pf").replace("mpc_value_", "value_")] = value_pf
        out[key.replace("ratio", "mpc").replace("mpc_value_", "value_")] = value_mpc
    return out


DAY_AHEAD_ERROR_PCT = 20.0
"""Daily error of the day-ahead PV forecast of :func:`day_ahead_values` (``data.pv_forecast.daily_error_pct``). [%]"""


def day_ahead_values(days: int | None, value_pf: dict[str, float]) -> dict[str, float]:
    """``mpc_value_ratio_<key>_day_ahead``: the MPC's share of the perfect-foresight battery value (``value_pf`` by
    key, measured in the same run: perfect foresight does not read forecasts) on the harder year with a day-ahead PV
    forecast of :data:`DAY_AHEAD_ERROR_PCT`."""
    out: dict[str, float] = {"day_ahead_error_pct": DAY_AHEAD_ERROR_PCT}
    for key, name in (("legacy", "nam-cau-kien-hard-legacy"), ("963", "nam-cau-kien-hard-qd963"),
                      ("two_part", "nam-cau-kien-hard-two-part")):
        base = scenario_for(name, days)
        data = base.model_dump()
        data["data"]["pv_forecast"] = {"daily_error_pct": DAY_AHEAD_ERROR_PCT}
        scenario = Scenario.model_validate(data)
        scenario._base_dir = base.base_dir
        result = run(scenario, strategies=["pv_only", "mpc"])
        value = battery_savings(result)["mpc"]
        out[f"mpc_value_ratio_{key}_day_ahead"] = value / value_pf[key] if value_pf[key] else None
        print(f"with a day-ahead PV forecast ({DAY_AHEAD_ERROR_PCT:g} % daily error), {name}: MPC {value:,.0f} "
              f"→ ratio {out[f'mpc_value_ratio_{key}_day_ahead']:.4f}", flush=True)
    return out


def sweep_speedup(days: int, rounds: int = 3) -> dict[str, float]:
    """A 4 × 4 sizing sweep (perfect foresight per cell) with 1 and with 2 worker processes, ``rounds`` times in
    alternating order (1, 2 / 2, 1 / 1, 2 …); the speed-up is the ratio of the summed times, so a slow spell of the
    shared machine falls on both sides rather than on one.

    Sixteen cells, so that the two workers get equal shares and the last cell (which one worker runs while the
    other has finished) weighs little, as in a real sweep (the CLI's example is 9 × 9).
    """
    scenario = scenario_for("nam-cau-kien-qd963", days)
    pv, battery = [500.0, 1000.0, 1500.0, 2000.0], [250.0, 500.0, 750.0, 1000.0]
    seconds = {1: 0.0, 2: 0.0}
    tables = {}
    for round_number in range(rounds):
        for workers in ((1, 2) if round_number % 2 == 0 else (2, 1)):
            t0 = time.perf_counter()
            tables[workers] = sweep(scenario, pv, battery, "perfect_foresight", workers=workers)
            seconds[workers] += time.perf_counter() - t0
        assert tables[1].equals(tables[2])
    return {"cells": len(tables[1]), "rounds": rounds, "one_worker_s": seconds[1], "two_workers_s": seconds[2],
            "speedup": seconds[1] / seconds[2]}


VALUE_SCENARIOS = {"legacy": "nam-cau-kien-hard-legacy", "963": "nam-cau-kien-hard-qd963",
                   "legacy_base": "nam-cau-kien-legacy", "963_base": "nam-cau-kien-qd963"}
"""Scenario of each ``mpc_value_ratio_<key>``: the harder synthetic year, and today's default year (``_base``)."""


def value_ratios(days: int | None) -> dict[str, dict[str, float]]:
    """:func:`strategy_year` on every scenario of :data:`VALUE_SCENARIOS`, by key."""
    out = {}
    for key, name in VALUE_SCENARIOS.items():
        year = strategy_year(name, days)
        out[key] = year
        print(f"battery value, {name}: MPC {year['value_mpc']:,.0f}, perfect foresight {year['value_pf']:,.0f} "
              f"→ ratio {year['value_ratio']:.4f}; MPC {year['mpc_replans']} re-plans in {year['mpc_s']:.1f} s "
              f"(CPU {year['mpc_cpu_s']:.1f} s, {year['mpc_highs_s'] / year['mpc_s']:.0%} inside HiGHS), "
              f"{year['mpc_failures']} planner failures", flush=True)
    return out


def machine() -> str:
    """The CPU model and count the figures were measured on (they differ between the project's machines)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=None, help="simulate only the first N days (default: the year)")
    parser.add_argument("--sweep-days", type=int, default=45, help="period of each sweep cell [days]")
    args = parser.parse_args()
    command = "python benchmarks/bench_simulation.py" + (f" --days {args.days}" if args.days else "") + (
        f" --sweep-days {args.sweep_days}" if args.sweep_days != 45 else "")
    print(f"reproduce: {command}")
    print(f"machine: {machine()}")
    base = bare_highspy_loop(scenario_for(VALUE_SCENARIOS["legacy"], args.days))
    print(f"baseline bare persistent-highspy loop: {base['steps']} re-plans in {base['total_s']:.1f} s "
          f"(CPU {base['cpu_s']:.1f} s; {base['highs_s'] / base['total_s']:.0%} inside HiGHS.run)", flush=True)
    ratios = value_ratios(args.days)
    hard, legacy = ratios["legacy"], ratios["legacy_base"]
    print(f"MPC with forecasts, harder year, legacy windows: {hard['mpc_replans']} re-plans in {hard['mpc_s']:.1f} s "
          f"(target ≤ 20 s {'reached' if hard['mpc_s'] <= 20 else 'NOT reached'}; CPU {hard['mpc_cpu_s']:.1f} s), "
          f"{hard['mpc_s'] / base['total_s']:.2f}× the baseline's "
          f"wall time, {hard['mpc_cpu_s'] / base['cpu_s']:.2f}× its CPU time")
    print(f"perfect-foresight LP over {hard['steps']} steps: {hard['perfect_s']:.1f} s (target ≤ 15 s)")
    targets = {"legacy": 0.985, "963": 0.975}
    for key, target in targets.items():
        ratio = ratios[key]["value_ratio"]
        print(f"mpc_value_ratio_{key} (harder year) {ratio:.4f}: target ≥ {target} "
              f"{'reached' if ratio >= target else 'NOT reached'}")
    two = two_part_value(args.days)
    print(f"battery value, two-part pilot, harder year: MPC {two['value_mpc_two_part']:,.0f}, perfect foresight "
          f"{two['value_pf_two_part']:,.0f} → ratio {two['mpc_value_ratio_two_part']:.3f} (target ≥ 0.90); "
          f"today's year: ratio {two['mpc_value_ratio_two_part_standard']:.3f}")
    ahead = day_ahead_values(args.days, {"legacy": ratios["legacy"]["value_pf"], "963": ratios["963"]["value_pf"],
                                         "two_part": two["value_pf_two_part"]})
    sw = sweep_speedup(args.sweep_days)
    print(f"sweep of {sw['cells']} cells × {args.sweep_days} days, {sw['rounds']} rounds: "
          f"1 worker {sw['one_worker_s']:.1f} s, 2 workers {sw['two_workers_s']:.1f} s → {sw['speedup']:.2f}× "
          "(target ≥ 1.7×)")
    print(json.dumps({
        "command": command, "machine": machine(), "steps": hard["steps"],
        "baseline_bare_highspy_s": base["total_s"], "baseline_bare_highspy_cpu_s": base["cpu_s"],
        "baseline_highs_share": base["highs_s"] / base["total_s"],
        "mpc_year_s": hard["mpc_s"], "mpc_year_cpu_s": hard["mpc_cpu_s"],
        "mpc_year_highs_share": hard["mpc_highs_s"] / hard["mpc_s"],
        "mpc_vs_baseline": hard["mpc_s"] / base["total_s"], "mpc_vs_baseline_cpu": hard["mpc_cpu_s"] / base["cpu_s"],
        "mpc_planner_failures": hard["mpc_failures"],
        "mpc_year_s_base": legacy["mpc_s"], "mpc_963_s": ratios["963"]["mpc_s"],
        "perfect_year_s": hard["perfect_s"], "sweep_1w_s": sw["one_worker_s"], "sweep_2w_s": sw["two_workers_s"],
        "sweep_speedup_2w": sw["speedup"],
        **{f"mpc_value_ratio_{key}": year["value_ratio"] for key, year in ratios.items()}, **two, **ahead,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
