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
largest finished child of this process; the site process is still running then).

3. multi-asset: a 20-device plant (16 inverters of 100 kW, eight behind each of two logger ports with
   unit ids 1–8, 3 batteries of 500 kWh / 250 kW, a grid meter; :func:`multi_site_file`) served by a
   second site process and driven for the same number of 1 s cycles by the full controller in a fresh
   child process, so its peak RSS is its own: every cycle polls the 20 devices concurrently, aggregates
   the groups, runs the limits chain and splits the decision into a setpoint per battery and inverter
   (controller/groups.py), planning task included. Reported as ``multi_*`` beside the single-site figures.

The last line printed is one JSON object.

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

MULTI_SITE = REPO / "deploy" / "examples" / "multi-asset-site.yaml"
MULTI_INVERTERS, MULTI_BATTERIES = 16, 3
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


def multi_site_file(directory: Path) -> Path:
    """The multi-asset example grown to 16 inverters (two loggers), 3 batteries and a grid meter, on free ports."""
    data = yaml.safe_load(MULTI_SITE.read_text())
    data["telemetry"] = {"dashboard": {"enabled": False}}
    meter = next(d for d in data["devices"] if d.get("location") == "grid")
    inverter = next(d for d in data["devices"] if d["role"] == "pv_inverter")
    battery = next(d for d in data["devices"] if d["role"] == "battery")
    loggers = [free_port(), free_port()]
    devices = [{**meter, "endpoint": {"host": "127.0.0.1", "port": free_port()}}]
    devices += [{**inverter, "name": f"inv-{i + 1:02d}", "endpoint": {"host": "127.0.0.1", "port": loggers[i // 8]},
                 "unit_id": i % 8 + 1} for i in range(MULTI_INVERTERS)]
    devices += [{**battery, "name": f"bess-{i + 1}", "endpoint": {"host": "127.0.0.1", "port": free_port()}}
                for i in range(MULTI_BATTERIES)]
    data["devices"] = devices
    rating = sum(d["rating_kw"] for d in devices if d["role"] == "pv_inverter")
    data["pv"].update(kwp=1.1 * rating, ac_kw=rating)
    for key in ("capacity_kwh", "max_charge_kw", "max_discharge_kw"):
        data["battery"][key] = MULTI_BATTERIES * battery["battery"][key]
    data["simulation"]["units"] = {f"bess-{i + 1}": {"initial_soc_pct": 30 + 25 * i} for i in range(MULTI_BATTERIES)}
    path = directory / "multi-site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_site(path: Path) -> subprocess.Popen:
    """The simulated site of ``path`` in a child process, serving once this returns."""
    site = subprocess.Popen([sys.executable, "-c", SITE_PROCESS.format(repo=str(REPO), path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    assert site.stdout is not None and site.stdout.readline().strip() == "ready"
    return site


def multi_child(path: Path, cycles: int) -> None:
    """The multi-asset phase in this (fresh) process: the full controller driving the groups; prints one JSON
    line."""
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cycle_ms, cpu, state = asyncio.run(controller_run(path, Path(tmp) / "state", cycles))
    units = [d for d in state.get("devices", {}).values() if "in_group" in d]
    print(json.dumps({"cycles": len(cycle_ms), "cycle_ms_p50": pct(cycle_ms, 50), "cycle_ms_p99": pct(cycle_ms, 99),
                      "cpu_pct": round(cpu, 2), "units_in_group": sum(bool(d["in_group"]) for d in units),
                      "units": len(units), "mode": state.get("mode"),
                      "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def multi_run(directory: Path, cycles: int) -> dict:
    """Site process + child process for the multi-asset phase; the child's figures."""
    path = multi_site_file(directory)
    site = start_site(path)
    try:
        out = subprocess.run([sys.executable, __file__, "--multi-child", str(path), "--cycles", str(cycles)],
                             capture_output=True, text=True, check=True).stdout
    finally:
        site.terminate()
        site.wait(timeout=10)
    return json.loads(out.strip().splitlines()[-1])


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
    parser.add_argument("--multi-child", type=Path, help=argparse.SUPPRESS)  # the multi-asset phase's own process
    args = parser.parse_args()
    if args.multi_child is not None:
        multi_child(args.multi_child, args.cycles)
        return
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = site_file(Path(tmp))
        site = start_site(path)
        try:
            base_ms, base_cpu = asyncio.run(baseline(path, args.cycles))
            cycle_ms, cpu, state = asyncio.run(controller_run(path, Path(tmp) / "state", args.cycles))
            workers = resource.getrusage(resource.RUSAGE_CHILDREN)  # before the site process is reaped
        finally:
            site.terminate()
            site.wait(timeout=10)
        multi = multi_run(Path(tmp), args.cycles)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "cycles": len(cycle_ms), "cycle_ms_p50": pct(cycle_ms, 50), "cycle_ms_p99": pct(cycle_ms, 99),
        "cycle_ms_max": round(max(cycle_ms), 2), "cpu_pct": round(cpu, 2), "rss_mb": round(rss_mb, 1),
        "baseline_poll_ms_p50": pct(base_ms, 50), "baseline_poll_ms_p99": pct(base_ms, 99),
        "baseline_cpu_pct": round(base_cpu, 2), "plans_made": state.get("solver", {}).get("plans_made"),
        "mode": state.get("mode"), "worker_rss_mb": round(workers.ru_maxrss / 1024, 1),
        "worker_cpu_s": round(workers.ru_utime + workers.ru_stime, 2),
        "multi_devices": 1 + MULTI_INVERTERS + MULTI_BATTERIES, "multi_cycle_ms_p50": multi["cycle_ms_p50"],
        "multi_cycle_ms_p99": multi["cycle_ms_p99"], "multi_cpu_pct": multi["cpu_pct"], "multi_rss_mb": multi["rss_mb"],
        "multi_units_in_group": multi["units_in_group"], "multi_units": multi["units"], "multi_mode": multi["mode"],
    }
    print(f"controller cycle read→write: p50 {result['cycle_ms_p50']} ms, p99 {result['cycle_ms_p99']} ms "
          f"(bare polls: p50 {result['baseline_poll_ms_p50']} ms, p99 {result['baseline_poll_ms_p99']} ms)")
    print(f"CPU {result['cpu_pct']} % of one core (bare polls {result['baseline_cpu_pct']} %), "
          f"peak RSS {result['rss_mb']} MB, {result['plans_made']} plan(s), mode {result['mode']}")
    print(f"clear-sky worker process(es): peak RSS {result['worker_rss_mb']} MB, CPU {result['worker_cpu_s']} s "
          f"(not in the controller's figures; the worker exits after computing)")
    print(f"multi-asset, {result['multi_devices']} devices (full controller, groups split per unit): read→write "
          f"p50 {result['multi_cycle_ms_p50']} ms, p99 {result['multi_cycle_ms_p99']} ms, "
          f"CPU {result['multi_cpu_pct']} % of one core, peak RSS {result['multi_rss_mb']} MB, "
          f"{result['multi_units_in_group']} of {result['multi_units']} units in their groups")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
