"""Planner benchmark: receding-horizon re-plan time and the full-year perfect-foresight LP.

Reproduce with::

    .venv/bin/python benchmarks/bench_planner.py            # everything (~2 min)
    .venv/bin/python benchmarks/bench_planner.py --quick    # skip the year LP

Re-plans: a factory-sized site (1 MWh / 500 kW battery, 900 kW PV, EVN-like TOU prices in VND,
demand charge) planned every 15 min over a rolling window of N = 96, 192, 288 steps, the SOC
carried from the previous plan. Timed per re-plan: ``Planner.plan`` all-in (parameter vector,
HiGHS update, solve, Plan assembly and pricing) and its update+solve part. Baseline, in the same
run: the identical LP sequence passed straight to a persistent ``highspy.Highs`` (vectors
precomputed; only the highspy change calls and ``run`` timed). Ratio = planner / raw highspy.

Year of MPC re-plans: what the offline simulator does, 35,040 re-plans of a moving 96-step window with the SOC
carried forward, on synthetic prices/PV/load. ``--mpc-replans`` of them (default 5,000; the whole year takes about
two minutes for the three variants, too long for a routine run) are timed and the totals extrapolated to 35,040
(keys ending ``_est``; ``--mpc-replans 35040`` times the whole year). Three variants, interleaved step by step
(rotating which goes first) so that they share the machine's load: ``Planner.plan`` (all-in, Plan assembled and
priced), ``Planner.schedule`` (the arrays the simulator needs) and bare highspy (the identical LP handed in full to
a persistent ``highspy.Highs`` configured as the planner's (one thread, hot options), vectors precomputed, only the
highspy calls timed). Input construction is not timed.

Year: 35,040 quarter hours with one demand-charge peak per billing month (12 months, local time),
planned in one LP in a subprocess (time and peak RSS); baseline: the identical LP handed from
scratch to highspy in another subprocess. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import highspy
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.lp_model import make_highs_lp
from optimizer.planner import HOT_OPTIONS, PlanInputs, Planner, quiet_highs
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import regular_grid

BATTERY = BatterySpec(capacity_kwh=1000, max_charge_kw=500, max_discharge_kw=500, wear_cost_per_kwh=150)
GRID = GridSpec(import_cap_kw=1000, export_cap_kw=0)
SETTINGS = PlannerSettings()
DEMAND_VND_PER_KW = 235_414.0
START = pd.Timestamp("2026-01-01T00:00+07:00").tz_convert("UTC")


def synthetic(steps: int, seed: int = 1) -> dict[str, np.ndarray | pd.DatetimeIndex]:
    """PV, load, prices and billing months for ``steps`` quarter hours from START."""
    rng = np.random.default_rng(seed)
    starts = pd.date_range(START, periods=steps, freq="15min")
    local = starts.tz_convert("Asia/Ho_Chi_Minh")
    hour = local.hour + local.minute / 60
    cloud = np.repeat(rng.uniform(0.4, 1.0, steps // 96 + 1), 96)[:steps]
    pv = np.clip(900 * np.sin((hour - 6) / 12 * np.pi), 0, None) * cloud
    day = (hour >= 7) & (hour < 19) & (local.day_of_week < 6)
    load = np.where(day, 800, 300) * (1 + 0.05 * rng.standard_normal(steps))
    peak = ((hour >= 9.5) & (hour < 11.5)) | ((hour >= 17) & (hour < 20))
    price = np.where((hour < 4) | (hour >= 22), 1190, np.where(peak, 3398, 1833)) * 1.08  # VND/kWh incl. 8 % VAT
    month = local.year * 12 + local.month
    return {"starts": starts, "pv": pv, "load": np.clip(load, 0, None), "price": price.astype(float),
            "month": np.asarray(month - month[0])}


def inputs_at(data: dict, first: int, steps: int, soc0: float, demand: bool) -> PlanInputs:
    sl = slice(first, first + steps)
    months = data["month"][sl] - data["month"][first]
    return PlanInputs(grid=regular_grid(data["starts"][first], steps, 15), pv_kw=data["pv"][sl],
                      load_kw=data["load"][sl], import_price=data["price"][sl], export_price=np.zeros(steps),
                      soc0_kwh=soc0, demand_charge_per_kw=DEMAND_VND_PER_KW if demand else 0.0,
                      month_peak_kw=600.0, billing_month=months)


def bench_replan(steps: int, replans: int) -> dict[str, float]:
    """Median / p95 re-plan times [ms] for the planner and for raw highspy on the identical LPs."""
    data = synthetic(steps + replans + 1)
    planner = Planner(BATTERY, GRID, SETTINGS, steps)
    soc = 500.0
    planner.plan(inputs_at(data, 0, steps, soc, True))  # build
    all_in, all_in_cpu, upd_solve, param_vectors, objectives = [], [], [], [], []
    for k in range(1, replans + 1):
        inputs = inputs_at(data, k, steps, soc, True)
        t0, c0 = time.perf_counter(), time.process_time()
        plan = planner.plan(inputs)
        all_in.append(time.perf_counter() - t0)
        all_in_cpu.append(time.process_time() - c0)
        upd_solve.append((plan.solver.update_ms + plan.solver.solve_ms) / 1e3)
        objectives.append(planner.last_objective)
        solver = next(iter(planner._solvers.values()))
        param_vectors.append(planner.parameter_vector(solver.lp, inputs))
        soc = float(plan.soc_kwh[0])
    lp = solver.lp

    # raw highspy on the identical LP sequence: vectors precomputed, only highspy calls timed
    vecs = [lp.vectors(p) for p in param_vectors]
    h = quiet_highs()  # configured as the planner's: one thread, output off, hot options after the first solve
    h.passModel(lp.highs_lp(planner.parameter_vector(lp, inputs_at(data, 0, steps, 500.0, True))))
    h.run()
    for name, value in HOT_OPTIONS.items():
        h.setOptionValue(name, value)
    cols = np.arange(lp.num_col, dtype=np.int32)
    rows = np.arange(lp.num_row, dtype=np.int32)
    raw, raw_cpu = [], []
    for (c, cl, cu, rl, ru), expected in zip(vecs, objectives, strict=True):
        t0, c0 = time.perf_counter(), time.process_time()
        h.changeColsCost(len(cols), cols, c)
        h.changeColsBounds(len(cols), cols, cl, cu)
        h.changeRowsBounds(len(rows), rows, rl, ru)
        h.run()
        raw.append(time.perf_counter() - t0)
        raw_cpu.append(time.process_time() - c0)
        got = h.getInfo().objective_function_value
        assert abs(got - expected) <= 1e-6 * (1 + abs(expected)), (got, expected)
    ms = lambda xs, q: float(np.percentile(np.asarray(xs) * 1e3, q))  # noqa: E731
    return {"median": ms(all_in, 50), "p95": ms(all_in, 95), "update_solve_median": ms(upd_solve, 50),
            "raw_median": ms(raw, 50), "raw_p95": ms(raw, 95), "ratio": ms(all_in, 50) / ms(raw, 50),
            "cpu_median": ms(all_in_cpu, 50), "raw_cpu_median": ms(raw_cpu, 50),
            "cpu_ratio": ms(all_in_cpu, 50) / ms(raw_cpu, 50),
            "cols": lp.num_col, "rows": lp.num_row}


#: The variants of :func:`bench_mpc_year`, timed in rotating order.
ORDER = ("plan", "schedule", "raw")


def bench_mpc_year(replans: int, steps: int = 96) -> dict[str, float]:
    """A simulated year of MPC re-plans, ``replans`` of them timed and extrapolated to 35,040 (see module doc)."""
    year = 35_040
    data = synthetic(steps + replans + 1, seed=2)
    full, arrays = Planner(BATTERY, GRID, SETTINGS, steps), Planner(BATTERY, GRID, SETTINGS, steps)
    first = inputs_at(data, 0, steps, 500.0, True)
    full.plan(first)
    arrays.schedule(first)
    lp = next(iter(arrays._solvers.values())).lp
    h = quiet_highs()
    h.passModel(lp.highs_lp(arrays.parameter_vector(lp, first)))
    h.run()
    for name, value in HOT_OPTIONS.items():
        h.setOptionValue(name, value)
    cols, rows = np.arange(lp.num_col, dtype=np.int32), np.arange(lp.num_row, dtype=np.int32)
    wall: dict[str, list[float]] = {name: [] for name in ORDER}
    cpu: dict[str, list[float]] = {name: [] for name in ORDER}
    soc = 500.0
    for k in range(1, replans + 1):
        inputs = inputs_at(data, k, steps, soc, True)
        p = arrays.parameter_vector(lp, inputs)
        c, cl, cu, rl, ru = lp.vectors(p)
        out: dict[str, object] = {}
        for name in ORDER[k % 3:] + ORDER[:k % 3]:  # rotate the order: no variant always runs first
            t0, c0 = time.perf_counter(), time.thread_time()
            if name == "plan":
                out[name] = full.plan(inputs)
            elif name == "schedule":
                out[name] = arrays.schedule(inputs)[0]
            else:
                h.changeColsCost(len(cols), cols, c)
                h.changeColsBounds(len(cols), cols, cl, cu)
                h.changeRowsBounds(len(rows), rows, rl, ru)
                h.run()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
        expected = arrays.last_objective
        got = h.getInfo().objective_function_value
        assert abs(got - expected) <= 1e-6 * (1 + abs(expected)), (k, got, expected)
        assert abs(full.last_objective - expected) <= 1e-6 * (1 + abs(expected)), (k, full.last_objective, expected)
        plan, schedule = out["plan"], out["schedule"]
        assert abs(schedule.soc_kwh[0] - plan.soc_kwh[0]) <= 1e-6
        soc = float(plan.soc_kwh[0])
    result: dict[str, float] = {"replans": replans}
    for name in wall:
        result[f"{name}_s_est"] = float(np.sum(wall[name])) * year / replans
        result[f"{name}_cpu_s_est"] = float(np.sum(cpu[name])) * year / replans
        result[f"{name}_ms_median"] = float(np.median(wall[name])) * 1e3
        result[f"{name}_cpu_ms_median"] = float(np.median(cpu[name])) * 1e3
    return result


def year_child(out_dir: Path) -> None:
    """Subprocess: plan the year in one LP; save the LP it solved for the raw baseline; print JSON."""
    steps = 35_040
    data = synthetic(steps)
    inputs = inputs_at(data, 0, steps, 500.0, True)
    inputs.month_peak_kw = 0.0
    planner = Planner(BATTERY, GRID, PlannerSettings(time_limit_s=300), steps)
    t0, c0 = time.perf_counter(), time.process_time()
    plan = planner.plan(inputs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    solver = next(iter(planner._solvers.values()))
    lp, p = solver.lp, planner.parameter_vector(solver.lp, inputs)
    np.savez(out_dir / "year.npz", a_start=lp.a_start, a_index=lp.a_index, a_value=lp.a_value,
             **dict(zip(("cost", "cl", "cu", "rl", "ru"), lp.vectors(p), strict=True)))
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "build_ms": plan.solver.build_ms,
                      "solve_ms": plan.solver.solve_ms, "objective": planner.last_objective, "cols": lp.num_col,
                      "rows": lp.num_row, "months": int(inputs.billing_month[-1]) + 1,
                      "slack": [s.constraint for s in plan.slack],
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def raw_child(out_dir: Path) -> None:
    """Subprocess: the saved year LP passed from scratch to highspy (simplex); print JSON."""
    d = np.load(out_dir / "year.npz")
    t0, c0 = time.perf_counter(), time.process_time()
    h = quiet_highs()
    h.passModel(make_highs_lp(d["a_start"], d["a_index"], d["a_value"], d["cost"], d["cl"], d["cu"], d["rl"], d["ru"]))
    h.run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "objective": h.getInfo().objective_function_value,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(kind: str, out_dir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, f"--{kind}-child", str(out_dir)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the year LP")
    parser.add_argument("--replans", type=int, default=300)
    parser.add_argument("--mpc-replans", type=int, default=5000,
                        help="re-plans timed for the year-of-MPC figure (extrapolated to 35,040; 0 = skip)")
    parser.add_argument("--year-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--raw-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.year_child:
        return year_child(args.year_child)
    if args.raw_child:
        return raw_child(args.raw_child)

    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    result: dict[str, float] = {}
    for steps in (96, 192, 288):
        r = bench_replan(steps, args.replans)
        print(f"re-plan N={steps:3d} ({r['cols']} cols, {r['rows']} rows): planner median {r['median']:.2f} ms, "
              f"p95 {r['p95']:.2f} ms (update+solve {r['update_solve_median']:.2f}); raw highspy median "
              f"{r['raw_median']:.2f} ms, p95 {r['raw_p95']:.2f} ms; ratio {r['ratio']:.2f}; CPU medians "
              f"{r['cpu_median']:.2f} / {r['raw_cpu_median']:.2f} ms, ratio {r['cpu_ratio']:.2f}")
        names = {"median": "replan_ms_median", "p95": "replan_ms_p95", "raw_median": "raw_ms_median",
                 "ratio": "replan_ratio", "cpu_median": "replan_cpu_ms_median", "cpu_ratio": "replan_cpu_ratio"}
        for key, name in names.items():
            result[f"{name}_{steps}"] = round(r[key], 3)
    if args.mpc_replans:
        m = bench_mpc_year(args.mpc_replans)
        label = "measured" if args.mpc_replans >= 35_040 else f"{args.mpc_replans} timed, extrapolated"
        print(f"year of MPC re-plans (35,040 × 96 steps, {label}): Planner.plan {m['plan_s_est']:.1f} s wall / "
              f"{m['plan_cpu_s_est']:.1f} s CPU (median {m['plan_ms_median']:.2f} ms); Planner.schedule "
              f"{m['schedule_s_est']:.1f} s / {m['schedule_cpu_s_est']:.1f} s CPU (median "
              f"{m['schedule_ms_median']:.2f} ms); bare highspy {m['raw_s_est']:.1f} s / {m['raw_cpu_s_est']:.1f} s "
              f"CPU (median {m['raw_ms_median']:.2f} ms)")
        result.update(mpc_year_replans_s_est=round(m["plan_s_est"], 2),
                      mpc_year_replans_cpu_s_est=round(m["plan_cpu_s_est"], 2),
                      mpc_year_schedule_s_est=round(m["schedule_s_est"], 2),
                      mpc_year_schedule_cpu_s_est=round(m["schedule_cpu_s_est"], 2),
                      mpc_year_raw_s_est=round(m["raw_s_est"], 2), mpc_year_raw_cpu_s_est=round(m["raw_cpu_s_est"], 2),
                      mpc_replans_timed=args.mpc_replans)
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            year = run_child("year", Path(tmp))
            raw = run_child("raw", Path(tmp))
        assert abs(year["objective"] - raw["objective"]) <= 1e-6 * abs(raw["objective"]), (year, raw)
        ratio = year["seconds"] / raw["seconds"]
        print(f"year LP ({year['cols']} cols, {year['rows']} rows, {year['months']} billing months): planner "
              f"{year['seconds']:.2f} s wall, {year['cpu_s']:.2f} s CPU (build {year['build_ms'] / 1e3:.2f} s, "
              f"solve {year['solve_ms'] / 1e3:.2f} s), peak RSS {year['peak_mb']:.0f} MB; raw highspy "
              f"{raw['seconds']:.2f} s wall, {raw['cpu_s']:.2f} s CPU, peak RSS {raw['peak_mb']:.0f} MB; "
              f"ratio {ratio:.2f}")
        result.update(year_lp_s=round(year["seconds"], 3), year_lp_cpu_s=round(year["cpu_s"], 3),
                      year_lp_peak_mb=round(year["peak_mb"], 1), year_lp_raw_s=round(raw["seconds"], 3),
                      year_lp_raw_cpu_s=round(raw["cpu_s"], 3), year_lp_ratio=round(ratio, 3),
                      year_lp_cpu_ratio=round(year["cpu_s"] / raw["cpu_s"], 3))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
