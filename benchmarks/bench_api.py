"""Benchmark the REST API and the SCADA Modbus server while the controller runs its 1 s cycle.

The simulated site (from the example site file, free ports) runs in a child process; this process holds
the controller with its dashboard (and so the REST API, ``/api/v1``) and the SCADA Modbus server enabled,
on loopback. Two phases of the same length, each a fresh controller on the same site:

1. baseline: the controller alone (dashboard and SCADA server listening, nobody asking);
2. under load: a load process (a third process, so its own CPU is not counted in the controller's loop)
   sends ``--rate`` REST ``GET /api/v1/state`` per second (viewer token, one keep-alive connection) and
   ``--rate`` Modbus reads per second, block by block through the register map (8 reads of at most 125
   holding registers cover it), on one connection; each paced open-loop (a late answer does not lower
   the rate).

In each phase the controller re-plans once, half-way (a ``replan`` command: forecasts and the LP in
the planning task's thread, competing with the loop for the interpreter).

Reported: REST reads/s achieved and latency p50/p99 [ms], Modbus reads/s and p50/p99 [ms], the
controller's read→write cycle time p50/p99 [ms] in each phase, from the first plan on (start-up planning
is the same in both and not API work; under load: the cycles that ended while the load ran). Target: the
cycle p99 under load stays ≤ 100 ms. The last line printed is one JSON object.

    .venv/bin/python benchmarks/bench_api.py [--cycles 60] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_controller import SITE_PROCESS, pct  # noqa: E402
from controller.api.roles import TOKENS_ENV, digest  # noqa: E402
from controller.bus import PLAN, STATE  # noqa: E402
from controller.cli import EXAMPLE_SITE  # noqa: E402
from controller.config import load_config  # noqa: E402
from controller.service import Controller  # noqa: E402
from ems.clock import AcceleratedClock  # noqa: E402
from tests.modbus_peers import free_port  # noqa: E402

TOKEN = "bench-api-viewer-token"
CHUNK = 125
"""Most registers one Modbus read may ask for."""


def map_reads() -> list[tuple[int, int]]:
    """``(address, count)`` reads covering the register map's blocks, each at most :data:`CHUNK` registers."""
    from controller.scada.registers import OWNER

    reads: list[tuple[int, int]] = []
    for address in sorted(OWNER):
        if reads and reads[-1][0] + reads[-1][1] == address and reads[-1][1] < CHUNK:
            reads[-1] = (reads[-1][0], reads[-1][1] + 1)
        else:
            reads.append((address, 1))
    return reads


def site_file(directory: Path, http_port: int, modbus_port: int) -> Path:
    """The example site with free device ports, the dashboard and the SCADA server on loopback."""
    data = yaml.safe_load(EXAMPLE_SITE.read_text())
    data["telemetry"] = {"dashboard": {"enabled": True, "port": http_port},
                         "scada": {"enabled": True, "port": modbus_port}}
    for dev in data["devices"]:
        dev["endpoint"]["port"] = free_port()
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def run_controller(path: Path, state_dir: Path, cycles: int,
                         load: list[str] | None) -> tuple[list[tuple[float, float]], str]:
    """The controller for ``cycles`` 1 s cycles after its first plan, or with ``load`` until the load process has
    finished (it starts once the first plan is served); returns each cycle's (wall time [s], read→write time
    [ms]) from the first plan on, and the load process's output."""
    config = load_config(path)
    clock = AcceleratedClock(1.0, config.simulation.start)
    controller = Controller.from_config(config, path, clock, state_directory=state_dir)
    await controller.start_telemetry()
    timings: list[tuple[float, float]] = []
    subscription = controller.bus.subscribe((STATE, PLAN))
    planned = False

    async def collect() -> None:
        nonlocal planned
        while True:
            message = await subscription.get()
            planned = planned or message.kind == PLAN
            if message.kind == STATE and planned:   # the first plan (pvlib, the LP) is start-up work
                timings.append((time.time(), message.payload["cycle"]["cycle_ms"]))
                if len(timings) == cycles // 2:      # one re-plan (forecasts, the LP in a thread) in each phase
                    controller.apply({"command": "replan", "ttl_s": 30})

    collector = asyncio.create_task(collect())
    out = ""
    if load is None:
        running = asyncio.create_task(controller.run())
        while len(timings) < cycles:
            await asyncio.sleep(0.2)
        controller.stop()
        await running
    else:
        loader = await asyncio.create_subprocess_exec(*load, stdout=asyncio.subprocess.PIPE)
        running = asyncio.create_task(controller.run())
        out = (await loader.communicate())[0].decode()
        controller.stop()
        await running
    collector.cancel()
    subscription.close()
    return timings, out


def paced(rate: float, duration_s: float, call: Callable[[int], None]) -> tuple[list[float], int, float]:
    """Call ``call`` ``rate`` times a second for ``duration_s``; latencies [ms], errors, elapsed [s]."""
    latencies, errors = [], 0
    start = time.perf_counter()
    n = int(rate * duration_s)
    for i in range(n):
        due = start + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        try:
            call(i)
            latencies.append((time.perf_counter() - t0) * 1e3)
        except Exception:  # counted, not fatal: the figure says how many failed
            errors += 1
    return latencies, errors, time.perf_counter() - start


def load_main(http_port: int, modbus_port: int, rate: float, duration_s: float) -> None:
    """The load process: REST and Modbus reads in two threads; prints one JSON line."""
    import httpx
    from pymodbus.client import ModbusTcpClient

    results: dict[str, dict] = {}
    rest = httpx.Client(base_url=f"http://127.0.0.1:{http_port}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=5)
    modbus = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5, retries=0)
    deadline = time.perf_counter() + 60
    while rest.get("/plan").status_code != 200 and time.perf_counter() < deadline:   # start-up done
        time.sleep(0.1)
    modbus.connect()

    def get_state(_: int) -> None:
        response = rest.get("/state")
        if response.status_code != 200:
            raise RuntimeError(response.status_code)

    reads = map_reads()

    def read_map(i: int) -> None:
        address, count = reads[i % len(reads)]
        answer = modbus.read_holding_registers(address, count=count)
        if answer.isError():
            raise RuntimeError(answer)

    started = time.time()

    def run(name: str, call: Callable[[int], None]) -> None:
        latencies, errors, elapsed = paced(rate, duration_s, call)
        results[name] = {"n": len(latencies), "errors": errors, "per_s": round(len(latencies) / elapsed, 1),
                         "p50_ms": pct(latencies, 50) if latencies else None,
                         "p99_ms": pct(latencies, 99) if latencies else None}

    threads = [threading.Thread(target=run, args=("rest", get_state)),
               threading.Thread(target=run, args=("modbus", read_map))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rest.close()
    modbus.close()
    print(json.dumps({**results, "start": started, "end": time.time()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=60, help="cycles per phase (1 s each); the load runs as long")
    parser.add_argument("--rate", type=float, default=50.0, help="REST reads/s and, besides, Modbus reads/s")
    parser.add_argument("--load", nargs=4, metavar=("HTTP_PORT", "MODBUS_PORT", "RATE", "SECONDS"),
                        help=argparse.SUPPRESS)  # the load process
    args = parser.parse_args()
    if args.load:
        load_main(int(args.load[0]), int(args.load[1]), float(args.load[2]), float(args.load[3]))
        return
    logging.basicConfig(level=logging.ERROR)
    os.environ[TOKENS_ENV] = f"bench:viewer:sha256:{digest(TOKEN).hex()}"
    with tempfile.TemporaryDirectory() as tmp:
        http_port, modbus_port = free_port(), free_port()
        path = site_file(Path(tmp), http_port, modbus_port)
        site = subprocess.Popen([sys.executable, "-c", SITE_PROCESS.format(repo=str(REPO), path=str(path))],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert site.stdout is not None and site.stdout.readline().strip() == "ready"
            baseline, _ = asyncio.run(run_controller(path, Path(tmp) / "state-0", args.cycles, None))
            load = [sys.executable, __file__, "--load", str(http_port), str(modbus_port), str(args.rate),
                    str(args.cycles)]
            loaded_run, out = asyncio.run(run_controller(path, Path(tmp) / "state-1", args.cycles, load))
        finally:
            site.terminate()
            site.wait(timeout=10)
    loaded = json.loads(out.strip().splitlines()[-1])
    rest, modbus = loaded["rest"], loaded["modbus"]
    base_ms = [ms for _, ms in baseline]
    cycle_ms = [ms for when, ms in loaded_run if loaded["start"] <= when <= loaded["end"]]   # while loaded
    result = {
        "rate_per_s": args.rate, "cycles": len(cycle_ms),
        "rest_reads_per_s": rest["per_s"], "rest_p50_ms": rest["p50_ms"], "rest_p99_ms": rest["p99_ms"],
        "rest_errors": rest["errors"],
        "modbus_reads_per_s": modbus["per_s"], "modbus_api_p50_ms": modbus["p50_ms"],
        "modbus_api_p99_ms": modbus["p99_ms"], "modbus_errors": modbus["errors"],
        "cycle_p50_ms_under_api_load": pct(cycle_ms, 50), "cycle_p99_ms_under_api_load": pct(cycle_ms, 99),
        "cycle_p50_ms_baseline": pct(base_ms, 50), "cycle_p99_ms_baseline": pct(base_ms, 99),
        "cycle_max_ms_under_api_load": round(float(np.max(cycle_ms)), 2),
    }
    print(f"REST GET /api/v1/state: {rest['per_s']}/s, p50 {rest['p50_ms']} ms, p99 {rest['p99_ms']} ms, "
          f"{rest['errors']} errors")
    print(f"SCADA Modbus map reads (blocks of ≤ {CHUNK} registers): {modbus['per_s']}/s, p50 {modbus['p50_ms']} ms, "
          f"p99 {modbus['p99_ms']} ms, {modbus['errors']} errors")
    print(f"controller cycle read→write: p99 {result['cycle_p99_ms_under_api_load']} ms under this load, "
          f"{result['cycle_p99_ms_baseline']} ms without (p50 {result['cycle_p50_ms_under_api_load']} / "
          f"{result['cycle_p50_ms_baseline']} ms)")
    print(f"reproduce: .venv/bin/python benchmarks/bench_api.py --cycles {args.cycles} --rate {args.rate:g}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
