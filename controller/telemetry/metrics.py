"""Prometheus metrics of the running controller, served by the dashboard's web app at ``/metrics``.

Fed from the bus like every sink (``offer``): each state message adds its cycle time to a histogram
and counts the devices whose poll failed; plan age, solver time and the remote-command counters are
read from the latest state when Prometheus scrapes, the outbox depth from the InfluxDB sink (off the
event loop: it asks the outbox's SQLite file). Names follow Prometheus conventions (base units:
seconds; ``_total`` for counters); the list is in docs/integration.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CYCLE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Histogram buckets of the cycle time (the cycle is 1 s; 100 ms is the p99 budget). [s]"""


class ControllerMetrics:
    """The metrics registry and what feeds it.

    Parameters
    ----------
    outbox_depth : Callable[[], int], optional
        Points waiting for InfluxDB (``InfluxSink.backlog``); may block briefly (called in a thread).
    """

    def __init__(self, outbox_depth: Callable[[], int] | None = None):
        self.outbox_depth = outbox_depth
        self.registry = CollectorRegistry(auto_describe=True)
        self.state: Mapping[str, Any] | None = None
        self.cycle_seconds = Histogram("ems_cycle_seconds", "Control cycle time (read, decide, write)",
                                       buckets=CYCLE_BUCKETS_S, registry=self.registry)
        self.poll_errors = Counter("ems_device_poll_errors", "Cycles in which a device's poll failed",
                                   ["device"], registry=self.registry)
        self._depth: int | None = None
        self.registry.register(_FromState(self))

    def offer(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Take one bus message (only states matter)."""
        if kind != "state":
            return
        self.state = payload
        cycle_ms = (payload.get("cycle") or {}).get("cycle_ms")
        if isinstance(cycle_ms, int | float):
            self.cycle_seconds.observe(cycle_ms / 1000.0)
        for device, health in (payload.get("devices") or {}).items():
            if isinstance(health, Mapping) and health.get("ok") is False:
                self.poll_errors.labels(device=device).inc()

    def refresh_outbox_depth(self) -> None:
        """Ask the outbox for its depth (blocking; run it in a thread before :meth:`render`)."""
        self._depth = self.outbox_depth() if self.outbox_depth is not None else None

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class _FromState(Collector):
    """Gauges and counters read from the latest state when scraped."""

    def __init__(self, metrics: ControllerMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self.metrics.state or {}
        if self.metrics.outbox_depth is not None and self.metrics._depth is not None:
            yield GaugeMetricFamily("ems_outbox_depth_points", "Telemetry points waiting for InfluxDB",
                                    value=self.metrics._depth)
        age = plan_age_s(state)
        if age is not None:
            yield GaugeMetricFamily("ems_plan_age_seconds", "Age of the plan in force (site time)", value=age)
        solver = state.get("solver") or {}
        if isinstance(solver.get("solve_ms"), int | float):
            yield GaugeMetricFamily("ems_solver_seconds", "Solver time of the latest plan",
                                    value=solver["solve_ms"] / 1000.0)
        if isinstance(solver.get("failures"), int):
            yield CounterMetricFamily("ems_planner_failures", "Planning attempts that failed",
                                      value=solver["failures"])
        commands = state.get("commands") or {}
        family = CounterMetricFamily("ems_commands", "Remote commands (MQTT, dashboard, SCADA) by result",
                                     labels=["result"])
        for result in ("accepted", "rejected"):
            if isinstance(commands.get(result), int):
                family.add_metric([result], commands[result])
        yield family


def plan_age_s(state: Mapping[str, Any]) -> float | None:
    """Seconds from the plan's creation to the state's time (``None`` without a plan). [s of site time]"""
    plan = state.get("plan") or {}
    try:
        return (datetime.fromisoformat(state["ts"]) - datetime.fromisoformat(plan["created_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None
