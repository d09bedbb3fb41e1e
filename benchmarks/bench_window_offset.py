"""A demand charge billed on a meter whose windows start off the controller's clock (docs/performance.md, "Flat
import inside a demand window").

The two-part pilot bills each month's highest 30-minute average import, in windows aligned to the local clock. A
utility meter's clock may be some minutes off the controller's: its windows then straddle the plan's. This runs the
MPC on forecasts for a scenario's period and reports each month's billed demand from its 15-minute imports in the
aligned windows (the bill) and in windows one step (15 minutes) later, their sums over the months, and each month's
highest 15-minute import (the contracted capacity bounds it).

Run:  .venv/bin/python benchmarks/bench_window_offset.py [nam-cau-kien-hard-two-part] [--days N]
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from simulations.runner import run
from simulations.scenario import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def monthly_window_peaks(import_kw: np.ndarray, months: np.ndarray, offset_steps: int) -> list[float]:
    """Each month's highest average of two consecutive steps, pairs starting ``offset_steps`` after the series'
    first step (0: the aligned 30-minute windows of a 15-minute series), in the order the months come. [kW]"""
    n = (len(import_kw) - offset_steps) // 2 * 2
    pairs = import_kw[offset_steps:offset_steps + n].reshape(-1, 2).mean(axis=1)
    pair_months = months[offset_steps:offset_steps + n:2]
    return [float(pairs[pair_months == m].max()) for m in pd.unique(pair_months)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", nargs="?", default="nam-cau-kien-hard-two-part")
    parser.add_argument("--days", type=int, default=None, help="simulate only the first N days (default: the data's)")
    args = parser.parse_args()
    days = f" --days {args.days}" if args.days else ""
    command = f"python benchmarks/bench_window_offset.py {args.scenario}{days}"
    print(f"reproduce: {command}")
    scenario = load_scenario(SCENARIOS / f"{args.scenario}.yaml")
    if args.days:
        data = scenario.model_dump()
        data["data"]["days"] = args.days
        base = scenario.base_dir
        scenario = Scenario.model_validate(data)
        scenario._base_dir = base
    if scenario.planner.step_minutes != 15:
        raise SystemExit("this measure pairs 15-minute steps into 30-minute windows: a 15-minute scenario only")
    t0 = time.perf_counter()
    frame = run(scenario, strategies=["mpc"]).results["mpc"].frame
    starts = pd.DatetimeIndex(frame.index).tz_convert(scenario.site.timezone)
    import_kw = frame["import_kw"].to_numpy(dtype=float)
    months = (starts.year * 100 + starts.month).to_numpy()
    aligned, offset = monthly_window_peaks(import_kw, months, 0), monthly_window_peaks(import_kw, months, 1)
    highest = [float(import_kw[months == m].max()) for m in pd.unique(months)]
    out = {"command": command, "scenario": args.scenario, "wall_s": time.perf_counter() - t0,
           "billed_kw_aligned": [round(x, 1) for x in aligned], "billed_kw_offset_15min": [round(x, 1) for x in offset],
           "sum_aligned_kw_months": round(sum(aligned), 1), "sum_offset_kw_months": round(sum(offset), 1),
           "highest_step_import_kw": [round(x, 1) for x in highest]}
    print(f"billed demand summed over the months: aligned windows {out['sum_aligned_kw_months']:,.1f} kW-months, "
          f"windows 15 min off {out['sum_offset_kw_months']:,.1f} kW-months; highest 15-minute import per month "
          f"{min(highest):,.0f}–{max(highest):,.0f} kW")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
