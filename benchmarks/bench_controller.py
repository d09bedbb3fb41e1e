"""Benchmark the controller against the simulated site at its real 1 s cycle: latency, CPU, memory.

The simulated site (plant + three SunSpec Modbus TCP servers, from the example site file with free
ports) runs in a child process, so this process holds only the controller and its CPU share is the
controller's own. Two phases on the same site, in this order:

1. baseline: the bare device polls alone (three devices read concurrently into a snapshot, once a
   second), no dispatch, no writes, no planning;
2. controller: the full service (snapshot → limits chain → setpoint writes → bus state, planning task
   with forecasts and the LP) for the same number of cycles.

Reported: read→write latency per cycle (p50, p99) [ms], CPU share of one core over the phase [%],
peak RSS of this process [MB], and the same latency for the baseline. Targets: p99 ≤ 100 ms,
≤ 5 % of a core, ≤ 250 MB. The controller computes its clear-sky PV tables in short-lived worker
processes (optimizer.solar); their peak RSS [MB] and CPU time [s] are reported separately (the
largest finished child of this process; the site process is still running then). The last line
printed is one JSON object.

    .venv/bin/python benchmarks/bench_controller.py [--cycles 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.cli import EXAMPLE_SITE  # noqa: E402
from controller.config import load_config  # noqa: E402
from controller.service import Controller, build_devices  # noqa: E402
from controller.snapshot import read_snapshot  # noqa: E402
from drivers.transport import ConnectionPool  # noqa: E402
from ems.clock import AcceleratedClock  # noqa: E402
from tests.modbus_peers import free_port  # noqa: E402

SITE_PROCESS = """
import asyncio, sys
sys.path.insert(0, {repo!r})
from drivers.simulated.site import SimulatedSite
async def main():
    site = SimulatedSite.from_file({path!r}, speed=1.0)
    await site.start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def site_file(directory: Path) -> Path:
    data = yaml.safe_load(EXAMPLE_SITE.read_text())
    data["telemetry"] = {"dashboard": {"enabled": False}}
    for dev in data["devices"]:
        dev["endpoint"]["port"] = free_port()
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pct(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)), 2)


async def baseline(path: Path, cycles: int) -> tuple[list[float], float]:
    """Bare concurrent polls once a second: latencies [ms] and CPU share [%]."""
    config = load_config(path)
    clock = AcceleratedClock(1.0, config.simulation.start)
    pool = ConnectionPool()
    devices = list(build_devices(config, path, clock, pool).values())
    await read_snapshot(devices, clock)  # connect and discover first
    latencies = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(cycles):
        t0 = time.perf_counter()
        await read_snapshot(devices, clock)
        latencies.append((time.perf_counter() - t0) * 1e3)
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
    cpu = 100 * (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    pool.close()
    return latencies, cpu


async def controller_run(path: Path, state_dir: Path, cycles: int) -> tuple[list[float], float, dict]:
    """The full controller for ``cycles`` 1 s cycles: latencies [ms], CPU share [%] and the last state."""
    config = load_config(path)
    clock = AcceleratedClock(1.0, config.simulation.start)
    controller = Controller.from_config(config, path, clock, state_directory=state_dir)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await controller.run(duration_s=float(cycles))
    cpu = 100 * (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    last = controller.bus.latest("state")
    return list(controller.cycle_ms)[2:], cpu, last.payload if last else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=60, help="cycles per phase (1 s each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = site_file(Path(tmp))
        site = subprocess.Popen([sys.executable, "-c", SITE_PROCESS.format(repo=str(REPO), path=str(path))],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert site.stdout is not None and site.stdout.readline().strip() == "ready"
            base_ms, base_cpu = asyncio.run(baseline(path, args.cycles))
            cycle_ms, cpu, state = asyncio.run(controller_run(path, Path(tmp) / "state", args.cycles))
            workers = resource.getrusage(resource.RUSAGE_CHILDREN)  # before the site process is reaped
        finally:
            site.terminate()
            site.wait(timeout=10)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "cycles": len(cycle_ms), "cycle_ms_p50": pct(cycle_ms, 50), "cycle_ms_p99": pct(cycle_ms, 99),
        "cycle_ms_max": round(max(cycle_ms), 2), "cpu_pct": round(cpu, 2), "rss_mb": round(rss_mb, 1),
        "baseline_poll_ms_p50": pct(base_ms, 50), "baseline_poll_ms_p99": pct(base_ms, 99),
        "baseline_cpu_pct": round(base_cpu, 2), "plans_made": state.get("solver", {}).get("plans_made"),
        "mode": state.get("mode"), "worker_rss_mb": round(workers.ru_maxrss / 1024, 1),
        "worker_cpu_s": round(workers.ru_utime + workers.ru_stime, 2),
    }
    print(f"controller cycle read→write: p50 {result['cycle_ms_p50']} ms, p99 {result['cycle_ms_p99']} ms "
          f"(bare polls: p50 {result['baseline_poll_ms_p50']} ms, p99 {result['baseline_poll_ms_p99']} ms)")
    print(f"CPU {result['cpu_pct']} % of one core (bare polls {result['baseline_cpu_pct']} %), "
          f"peak RSS {result['rss_mb']} MB, {result['plans_made']} plan(s), mode {result['mode']}")
    print(f"clear-sky worker process(es): peak RSS {result['worker_rss_mb']} MB, CPU {result['worker_cpu_s']} s "
          f"(not in the controller's figures; the worker exits after computing)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
