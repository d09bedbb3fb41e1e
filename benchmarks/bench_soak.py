"""Fault soak for as long as a real-time budget allows: the controller against the simulated site with random
device faults, judged on the plant's true values (the harness is ``tests/soak.py``; ``tests/test_soak.py``
runs one week of it in the test suite).

Every fault class (offline, frozen mid-run, slow, implausible, sentinel, exception, flapping) on every
device, one at a time per device, a mean of 4 hours apart; reaction time 3 cycles. Reported: simulated
days, breach steps (export above the cap, import above the cap when it could be held, SOC outside its
window) beyond the reaction time, cycles with a setpoint outside the ratings, faults injected / alarmed /
cleared, controller crashes, cycles per real second. A simulated year at a 20 s cycle is 1.58 M cycles:
more than 10 minutes allow on a 2-core machine, so the run stops at ``--budget-s`` and reports the days
it reached. The last line printed is one JSON object.

    .venv/bin/python benchmarks/bench_soak.py [--days 365] [--budget-s 600] [--cycle-s 20] [--seed 11]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.soak import MEAN_GAP_S, run_soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=365.0, help="simulated days to run at most")
    parser.add_argument("--budget-s", type=float, default=600.0, help="real seconds to run at most")
    parser.add_argument("--cycle-s", type=float, default=20.0, help="control cycle [site s]")
    parser.add_argument("--seed", type=int, default=11, help="fault schedule seed")
    parser.add_argument("--mean-gap-h", type=float, default=MEAN_GAP_S / 3600, help="mean time between two "
                                                                                     "faults of a device [h]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the faults make the controller log a lot; the figures count
    command = (f".venv/bin/python benchmarks/bench_soak.py --days {args.days:g} --budget-s {args.budget_s:g} "
               f"--cycle-s {args.cycle_s:g} --seed {args.seed} --mean-gap-h {args.mean_gap_h:g}")

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        report = asyncio.run(run_soak(args.days, args.seed, Path(tmp), cycle_s=args.cycle_s,
                                      mean_gap_s=args.mean_gap_h * 3600, budget_real_s=args.budget_s,
                                      progress=progress))
    print(report.summary())
    print(f"wall time {time.perf_counter() - t0:.0f} s; reproduce: {command}")
    print(json.dumps({**report.as_json(), "cycle_s": args.cycle_s, "seed": args.seed}, sort_keys=True))


if __name__ == "__main__":
    main()
