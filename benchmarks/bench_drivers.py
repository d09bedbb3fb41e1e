"""Benchmark the device layer over loopback Modbus TCP: poll-cycle time and reads per second.

A meter, a PV inverter and a battery (the three roles of the shipped ``sungrow-sh`` profile, each on
its own pymodbus server) are polled concurrently, as the controller's cycle does. The baseline is a
bare pymodbus client reading exactly the same blocks, measured in the same run. The last line printed
is one JSON object (times in milliseconds).

    .venv/bin/python benchmarks/bench_drivers.py [--cycles 300]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymodbus.client import AsyncModbusTcpClient

from drivers.config import DeviceConfig
from drivers.device import ModbusDevice
from drivers.profile import Function, load_profile
from drivers.transport import ConnectionPool
from ems.clock import ManualClock
from tests.modbus_peers import ModbusPeer, profile_image, sim_device

ROLES = ("meter", "pv_inverter", "battery")
VALUES = {"grid_kw": -120.5, "voltage_l1_v": 231.0, "frequency_hz": 50.0, "pv_kw": 7.5, "soc_pct": 55.5,
          "battery_kw": -2.5, "battery_voltage_v": 350.0}


def fill_gaps(image: dict[int, int], max_gap: int) -> dict[int, int]:
    """Give reserved registers between points a value, as a real device answers them (0 here)."""
    addresses = sorted(image)
    filled = dict(image)
    for a, b in itertools.pairwise(addresses):
        if 1 < b - a <= max_gap + 1:
            filled.update({x: 0 for x in range(a + 1, b)})
    return filled


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bare_cycle(clients: list[AsyncModbusTcpClient], plans: list[list[tuple[Function, int, int]]]) -> None:
    async def one(client: AsyncModbusTcpClient, plan: list[tuple[Function, int, int]]) -> None:
        for function, address, count in plan:
            call = client.read_holding_registers if function is Function.HOLDING else client.read_input_registers
            response = await call(address, count=count, device_id=1)
            assert not response.isError()

    await asyncio.gather(*(one(c, p) for c, p in zip(clients, plans, strict=True)))


async def main(cycles: int) -> dict[str, float]:
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    profile = load_profile("sungrow-sh")
    holding, inputs = (fill_gaps(image, profile.max_gap) for image in profile_image(profile, VALUES))
    peers = [ModbusPeer([sim_device(1, holding, inputs)]) for _ in ROLES]
    for peer in peers:
        await peer.start()
    pool = ConnectionPool()
    clock = ManualClock(datetime(2026, 5, 4, tzinfo=UTC))
    devices = []
    for role, peer in zip(ROLES, peers, strict=True):
        cfg = DeviceConfig.model_validate({"name": role, "role": role, "profile": "sungrow-sh",
                                           "endpoint": {"host": "127.0.0.1", "port": peer.port}})
        devices.append(ModbusDevice(cfg, profile, pool.connection(cfg), clock))
    await asyncio.gather(*(d.poll() for d in devices))  # connect, settle the read plan
    plans = [[(b.function, b.address, b.count) for b in d.blocks] for d in devices]
    registers = sum(sum(count for _, _, count in plan) for plan in plans)

    clients = [AsyncModbusTcpClient("127.0.0.1", port=p.port, timeout=1, retries=0) for p in peers]
    for c in clients:
        await c.connect()
    cycle_ms: list[float] = []
    bare_ms: list[float] = []
    for _ in range(cycles):  # interleaved, so that load from other processes hits both alike
        start = time.perf_counter()
        results = await asyncio.gather(*(d.poll() for d in devices))
        cycle_ms.append((time.perf_counter() - start) * 1000)
        assert all(r.ok for readings in results for r in readings.values() if r.quality != "missing")
        start = time.perf_counter()
        await bare_cycle(clients, plans)
        bare_ms.append((time.perf_counter() - start) * 1000)

    conn = devices[2].connection
    block = devices[2].blocks[0]
    reads = 0
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:
        await conn.read(block.function, block.address, block.count, 1)
        reads += 1
    reads_per_s = reads / (time.perf_counter() - start)
    bare_reads = 0
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:
        client = clients[2]
        call = client.read_input_registers if block.function is Function.INPUT else client.read_holding_registers
        await call(block.address, count=block.count, device_id=1)
        bare_reads += 1
    bare_reads_per_s = bare_reads / (time.perf_counter() - start)

    for c in clients:
        c.close()
    pool.close()
    for peer in peers:
        await peer.stop()
    return {
        "devices": len(devices),
        "requests_per_cycle": sum(len(p) for p in plans),
        "registers_per_cycle": registers,
        "cycles": cycles,
        "poll_cycle_ms_median": round(statistics.median(cycle_ms), 3),
        "poll_cycle_ms_p99": round(percentile(cycle_ms, 0.99), 3),
        "baseline_cycle_ms_median": round(statistics.median(bare_ms), 3),
        "baseline_cycle_ms_p99": round(percentile(bare_ms, 0.99), 3),
        "reads_per_s_one_device": round(reads_per_s, 1),
        "baseline_reads_per_s_one_device": round(bare_reads_per_s, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    result = asyncio.run(main(parser.parse_args().cycles))
    print(f"poll cycle (3 devices, {result['requests_per_cycle']} requests, "
          f"{result['registers_per_cycle']} registers): median {result['poll_cycle_ms_median']} ms, "
          f"p99 {result['poll_cycle_ms_p99']} ms "
          f"(bare pymodbus {result['baseline_cycle_ms_median']} / {result['baseline_cycle_ms_p99']} ms)")
    print(f"reads/s against one device: {result['reads_per_s_one_device']} "
          f"(bare pymodbus {result['baseline_reads_per_s_one_device']})")
    print(json.dumps(result))
