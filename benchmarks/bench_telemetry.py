"""Benchmark the telemetry sinks on loopback: outbox drain rate and MQTT state latency.

1. **Outbox drain** to a local VictoriaMetrics (``/api/v2/write``, the InfluxDB v2 write API): an
   outbox is filled, then drained with :func:`controller.telemetry.influx.drain` (batches of 5000).
   The baseline, in the same run, writes the same pre-serialised lines with influxdb-client's
   SYNCHRONOUS API in the same batch size, without the outbox. Two point shapes: 2-field points
   (the shape of influxdb-client's documented write example, one ``Point`` with its fields; the headline figure)
   and the sink's real lines for recorded controller states (``ems_state``, ``ems_measurement``,
   ``ems_quality``: ~17 fields per point, so the server ingests ~8× more samples per point).
   Every sample is checked to be stored exactly once.
2. **MQTT state latency**: the :class:`~controller.telemetry.mqtt.MqttSink` publishes a state
   (QoS 1, retained) to a local mosquitto; a subscriber measures offer → receipt.

The last line printed is one JSON object.

    .venv/bin/python benchmarks/bench_telemetry.py [--points 200000] [--states 20000] [--mqtt 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from controller.telemetry.config import MqttSettings
from controller.telemetry.influx import InfluxWriter, drain, state_lines
from controller.telemetry.mqtt import MqttSink
from controller.telemetry.outbox import Batch, Outbox
from tests.peers import Mosquitto, VictoriaMetrics, sample_state

BATCH = 5000


def state_point_lines(states: int, start: datetime, site: str) -> list[str]:
    """Line protocol of ``states`` consecutive 1-s recorded states, as the sink writes them (about
    3 lines and 50 fields per state)."""
    lines: list[str] = []
    for i in range(states):
        lines += state_lines(site, sample_state(start + timedelta(seconds=i), i, site=site))
    return lines


def small_point_lines(points: int, start: datetime, site: str) -> list[str]:
    """``points`` lines of 2 fields each (the shape of the reference figures in libraries.md §5)."""
    t0 = round(start.timestamp() * 1000)
    return [f"ems_bench,site={site} grid_kw={i % 997}.5,soc_pct={i % 100}.25 {t0 + i}" for i in range(points)]


def drain_case(vm: VictoriaMetrics, workdir: Path, name: str, via_outbox: list[str], baseline: list[str],
               metric: str, per_series: int) -> dict[str, float]:
    """Drain ``via_outbox`` through an outbox; write ``baseline`` (same lines, other site tag) directly."""
    n = len(via_outbox)
    writer = InfluxWriter(vm.url, "ems", "ems", None, timeout_s=30)
    t0 = time.perf_counter()
    for k in range(0, n, BATCH):
        writer.write(Batch(tuple(range(k, k + BATCH)), tuple(baseline[k:k + BATCH])).payload())
    baseline_s = time.perf_counter() - t0
    stored = {f"{name}-baseline": len(vm.wait_for(metric, per_series, site=f"{name}-baseline"))}  # settle VM

    outbox = Outbox(workdir / f"{name}.sqlite", max_points=n + 1)
    t0 = time.perf_counter()
    for k in range(0, n, BATCH):
        outbox.append(via_outbox[k:k + BATCH])
    append_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sent = 0
    while outbox.stats().depth:
        result = drain(outbox, writer, BATCH, lambda: datetime.now(UTC), max_batches=1000)
        if result.error:
            raise RuntimeError(result.error)
        sent += result.sent
    drain_s = time.perf_counter() - t0
    outbox.close()
    writer.close()
    assert sent == n
    stored[f"{name}-outbox"] = len(vm.wait_for(metric, per_series, site=f"{name}-outbox"))
    assert set(stored.values()) == {per_series}, (stored, per_series)   # every sample stored, once
    fields = sum(line.split(" ")[1].count(",") + 1 for line in via_outbox) / n
    return {"points": n, "fields_per_point": round(fields, 1), "append_pts_per_s": n / append_s,
            "drain_pts_per_s": n / drain_s, "baseline_pts_per_s": n / baseline_s}


def bench_outbox(states: int, small_points: int, workdir: Path) -> dict[str, dict[str, float]]:
    vm = VictoriaMetrics(workdir / "vm")
    vm.start()
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        small = drain_case(vm, workdir, "small", small_point_lines(small_points, start, "small-outbox"),
                           small_point_lines(small_points, start, "small-baseline"), "ems_bench_grid_kw",
                           small_points)
        state = drain_case(vm, workdir, "state", state_point_lines(states, start, "state-outbox"),
                           state_point_lines(states, start, "state-baseline"), "ems_state_load_kw", states)
        return {"small": small, "state": state}
    finally:
        vm.stop()


async def bench_mqtt(count: int, workdir: Path) -> dict[str, float]:
    broker = Mosquitto(workdir)
    broker.start()
    try:
        sink = MqttSink(MqttSettings(enabled=True, host=broker.host, port=broker.port, min_state_interval_s=0),
                        "bench", intake=None)  # type: ignore[arg-type]  (no commands in this benchmark)
        sink.start()
        await sink.connected.wait()
        latencies: list[float] = []
        async with aiomqtt.Client(broker.host, broker.port, identifier="bench-sub") as sub:
            await sub.subscribe("ems/bench/state", qos=1)
            messages = sub.messages
            t_start = datetime(2026, 5, 4, tzinfo=UTC)
            for i in range(count + 1):
                state = sample_state(t_start + timedelta(seconds=i), i, site="bench")
                t0 = time.perf_counter()
                sink.offer("state", state)
                while True:
                    msg = await anext(messages)
                    if json.loads(msg.payload)["ts"] == state["ts"]:
                        break
                if i:  # the first one includes the subscription's retained delivery
                    latencies.append((time.perf_counter() - t0) * 1000)
        await sink.aclose()
        q = statistics.quantiles(latencies, n=100)
        return {"mqtt_messages": count, "mqtt_publish_ms_p50": statistics.median(latencies),
                "mqtt_publish_ms_p99": q[98], "mqtt_state_bytes": len(json.dumps(state))}
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000, help="2-field points for the drain rate")
    parser.add_argument("--states", type=int, default=20_000, help="recorded states (about 3 points each)")
    parser.add_argument("--mqtt", type=int, default=500, help="states published over MQTT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        work = Path(tmp)
        (work / "mqtt").mkdir()
        cases = bench_outbox(args.states, args.points, work)
        for name, c in cases.items():
            print(f"outbox, {name} points: {c['points']} points of {c['fields_per_point']} fields: append "
                  f"{c['append_pts_per_s']:,.0f} pts/s, drain to VictoriaMetrics {c['drain_pts_per_s']:,.0f} pts/s; "
                  f"baseline SYNCHRONOUS write without outbox {c['baseline_pts_per_s']:,.0f} pts/s")
        mqtt = asyncio.run(bench_mqtt(args.mqtt, work / "mqtt"))
        print(f"mqtt: {args.mqtt} states of {mqtt['mqtt_state_bytes']} bytes, offer → received "
              f"p50 {mqtt['mqtt_publish_ms_p50']:.2f} ms, p99 {mqtt['mqtt_publish_ms_p99']:.2f} ms")
    small, state = cases["small"], cases["state"]
    out = {"outbox_drain_pts_per_s": small["drain_pts_per_s"], "baseline_sync_write_pts_per_s":
           small["baseline_pts_per_s"], "outbox_append_pts_per_s": small["append_pts_per_s"],
           "drain_points": small["points"], "outbox_drain_state_pts_per_s": state["drain_pts_per_s"],
           "baseline_sync_write_state_pts_per_s": state["baseline_pts_per_s"],
           "state_fields_per_point": state["fields_per_point"], **mqtt}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
