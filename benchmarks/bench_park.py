"""Benchmark the park tier on loopback: N simulated sites through the bridge path into one park
mosquitto and one VictoriaMetrics.

Each site is the controller's real telemetry (``start_telemetry``: the MQTT sink and the InfluxDB
sink with its SQLite outbox, fed by a ``controller.bus.Bus``) publishing a recorded-shape state every
second (3 line-protocol points per state, the controller's ~3 points/s; MQTT state at the default
``min_state_interval_s`` of 5 s) and an alarm transition every ``--alarm-every`` seconds. All sites'
MQTT goes to one site-side mosquitto carrying one bridge per site, each rendered from the shipped
deploy/mosquitto/park-bridge.conf (TLS lines left out), into the park mosquitto with the shipped
park-acl and one password per site. InfluxDB points go straight to VictoriaMetrics.

Measured: points lost (states missing from VictoriaMetrics plus alarms missing at the park broker;
must be 0), end-to-end latency of alarms from the site's bus to the park subscriber (p50/p99), and
the CPU of everything involved (this process, both brokers, VictoriaMetrics) as a percentage of one
core over the run (in total as ``park_cpu_pct``, and per process: the publishers stand for the
sites' own edge PCs, the site broker for their brokers). The last line printed is one JSON object.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_park.py [--sites 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt
import psutil

from tests.park_peers import PARK, SitePublisher, bridge_conf, park_broker, start_site
from tests.peers import Mosquitto, VictoriaMetrics, sample_state

GLOBAL_OPTIONS = ("max_queued_messages", "max_queued_bytes")
"""Broker-wide lines of the bridge file: written once in the shared site broker."""


def shared_site_broker(workdir: Path, sites: list[str], park: Mosquitto) -> Mosquitto:
    """One site-side broker holding every site's bridge (one ``connection`` block each)."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir, persistence=True)
    blocks = []
    for k, site in enumerate(sites):
        lines = bridge_conf(site, park).splitlines()
        blocks += [line for line in lines if k == 0 or not line.startswith(GLOBAL_OPTIONS)]
    broker.conf.write_text(broker.conf.read_text() + "\n".join(blocks) + "\n")
    return broker


class ParkSubscriber:
    """The park operations centre: counts alarms per site and their end-to-end latency."""

    def __init__(self, park: Mosquitto):
        self.client = aiomqtt.Client(park.host, park.port, username="park-operator", password="op-secret",
                                     identifier="park-bench")
        self.alarms: dict[str, set[str]] = {}
        self.latency_ms: list[float] = []
        self.states = 0

    async def run(self) -> None:
        async with self.client:
            await self.client.subscribe(f"park/{PARK}/+/alarms", qos=1)
            await self.client.subscribe(f"park/{PARK}/+/state", qos=1)
            async for message in self.client.messages:
                site, leaf = str(message.topic).split("/")[2:4]
                body = json.loads(message.payload)
                if leaf == "alarms":
                    self.alarms.setdefault(site, set()).add(body["code"])
                    sent = datetime.fromisoformat(body["ts"])
                    self.latency_ms.append((datetime.now(UTC) - sent).total_seconds() * 1000)
                else:
                    self.states += 1


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU time of each process so far. [s]"""
    return {name: p.cpu_times().user + p.cpu_times().system for name, p in processes.items()}


def vm_self_metrics(vm: VictoriaMetrics) -> dict[str, float]:
    """Samples stored and bytes on disk, from VictoriaMetrics' own ``/metrics`` (fresh, not yet merged
    parts: an upper bound of what the data costs after background merges)."""
    samples = size = 0.0
    for line in vm._get("/metrics").decode().splitlines():
        if line.startswith("vm_rows{") and "indexdb" not in line:
            samples += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vm_data_size_bytes{") and "indexdb" not in line:
            size += float(line.rsplit(" ", 1)[1])
    return {"samples": samples, "bytes": size}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    sites = [f"site-{k:04d}" for k in range(args.sites)]
    park = park_broker(workdir / "park", sites)
    park.start()
    site_mqtt = shared_site_broker(workdir / "site-broker", sites, park)
    site_mqtt.start()
    vm = VictoriaMetrics(workdir / "vm")
    vm.start()
    subscriber = ParkSubscriber(park)
    sub_task = asyncio.create_task(subscriber.run())
    t0 = datetime.now(UTC)
    publishers: list[SitePublisher] = []
    for site in sites:
        publishers.append(await start_site(site, site_mqtt, vm.url, workdir / "state" / site, t0,
                                           min_state_interval_s=5.0, batch_size=5000))
    async with asyncio.timeout(60):
        for p in publishers:
            await p.telemetry.mqtt.connected.wait()
    await asyncio.sleep(5.0)  # bridges up and subscribed
    processes = {"publishers": psutil.Process(os.getpid()), "park_broker": psutil.Process(park.proc.pid),
                 "site_broker": psutil.Process(site_mqtt.proc.pid), "victoria_metrics": psutil.Process(vm.proc.pid)}
    cpu0, wall0 = cpu_seconds(processes), time.monotonic()
    sent_states = {site: 0 for site in sites}
    sent_alarms = {site: 0 for site in sites}
    load = os.getloadavg()
    for second in range(args.seconds):
        tick = time.monotonic()
        for k, p in enumerate(publishers):
            now = datetime.now(UTC)
            p.bus.publish("state", sample_state(now, second, site=p.site))
            sent_states[p.site] += 1
            if (second + k) % args.alarm_every == 0:
                p.bus.publish("alarm", {"ts": now.isoformat(), "code": f"bench_{second}", "active": True,
                                        "severity": "warning", "message": "bench"})
                sent_alarms[p.site] += 1
            if k % 20 == 19:
                await asyncio.sleep(0)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    publish_wall = time.monotonic() - wall0
    deadline = time.monotonic() + args.drain_s
    while time.monotonic() < deadline:
        drained = all(p.telemetry.influx.backlog == 0 for p in publishers)
        alarms_in = sum(len(v) for v in subscriber.alarms.values())
        if drained and alarms_in >= sum(sent_alarms.values()):
            break
        await asyncio.sleep(0.5)
    cpu1 = cpu_seconds(processes)
    wall = time.monotonic() - wall0
    for p in publishers:
        await p.telemetry.aclose()
    sub_task.cancel()
    stored = {site: 0 for site in sites}
    vm._get("/internal/force_flush")
    await asyncio.sleep(2.0)
    for site in sites:
        stored[site] = len(vm.export("ems_state_load_kw", site=site))
    states_lost = sum(max(0, sent_states[s] - stored[s]) for s in sites)
    states_twice = sum(max(0, stored[s] - sent_states[s]) for s in sites)
    alarms_lost = sum(sent_alarms[s] - len(subscriber.alarms.get(s, ())) for s in sites)
    vm_metrics = vm_self_metrics(vm)
    vm.stop()
    site_mqtt.stop()
    park.stop()
    latency = sorted(subscriber.latency_ms)
    points = sum(sent_states.values()) * 3
    return {
        "park_sites": args.sites,
        "park_seconds": args.seconds,
        "park_points_sent": points,
        "park_points_per_s": round(points / publish_wall, 1),
        "park_states_lost": states_lost,
        "park_states_twice": states_twice,
        "park_alarms_sent": sum(sent_alarms.values()),
        "park_alarms_lost": alarms_lost,
        "park_mqtt_states_at_park": subscriber.states,
        "park_points_lost": states_lost * 3 + alarms_lost,
        "park_latency_p50_ms": round(statistics.median(latency), 1) if latency else None,
        "park_latency_p99_ms": round(latency[int(0.99 * (len(latency) - 1))], 1) if latency else None,
        "park_cpu_pct": round(100 * sum(cpu1[n] - cpu0[n] for n in cpu1) / wall, 1),
        **{f"cpu_pct_{n}": round(100 * (cpu1[n] - cpu0[n]) / wall, 1) for n in cpu1},
        "park_wall_s": round(wall, 1),
        "vm_samples_stored": vm_metrics["samples"],
        "vm_bytes_per_sample": round(vm_metrics["bytes"] / vm_metrics["samples"], 2) if vm_metrics["samples"] else None,
        "machine_cores": os.cpu_count(),
        "machine_load_1m_at_start": round(load[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=60, help="publishing time [s]")
    parser.add_argument("--alarm-every", type=int, default=10, help="one alarm per site every N s")
    parser.add_argument("--drain-s", type=float, default=60.0, help="bound on waiting for delivery [s]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-park-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
