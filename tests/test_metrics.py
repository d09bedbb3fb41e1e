"""Prometheus metrics at the dashboard's ``/metrics``, scraped over HTTP from the running sinks."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.bus import STATE, Bus
from controller.commands import Commands
from controller.modes import Mode, ModeMachine
from controller.telemetry import TelemetryContext, start_telemetry
from controller.telemetry.config import DashboardSettings, InfluxSettings, TelemetrySettings
from ems.clock import ManualClock
from tests.peers import free_port

T0 = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)
TOKEN = "metrics-test-token"


def state(i: int, cycle_ms: float, meter_ok: bool) -> dict:
    ts = T0 + timedelta(seconds=i)
    return {"ts": ts.isoformat(), "site": "demo", "mode": "auto", "reason": "plan",
            "devices": {"meter": {"ok": meter_ok, "error": None if meter_ok else "no answer"},
                        "pcs": {"ok": True, "error": None}},
            "plan": {"created_at": (T0 - timedelta(seconds=900)).isoformat()},
            "solver": {"solve_ms": 12.5, "failures": 2},
            "cycle": {"cycle_ms": cycle_ms}}


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


async def test_metrics_endpoint_reports_cycle_errors_outbox_plan_solver_and_commands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMS_DASHBOARD_TOKEN", TOKEN)
    clock = ManualClock(T0)
    commands = Commands(ModeMachine(Mode.SELF_CONSUMPTION, T0), clock, (500.0, 500.0), (10.0, 95.0), lambda _: None)
    bus = Bus()
    dead_influx = f"http://127.0.0.1:{free_port()}"      # nothing listens: the outbox keeps every point
    settings = TelemetrySettings(dashboard=DashboardSettings(port=free_port()),
                                 influxdb=InfluxSettings(enabled=True, url=dead_influx, timeout_s=0.5))
    telemetry = await start_telemetry(settings, bus, TelemetryContext(
        site="demo", timezone="UTC", clock=clock, apply=commands.apply, state_dir=tmp_path))
    try:
        assert telemetry.dashboard is not None
        url = f"http://127.0.0.1:{telemetry.dashboard.port}"
        assert await asyncio.to_thread(post, url + "/api/cmd/set_mode", {"mode": "standby", "ttl_s": 60}) == 200
        assert await asyncio.to_thread(post, url + "/api/cmd/set_mode", {"mode": "warp"}) == 422
        for i, (cycle_ms, meter_ok) in enumerate([(20.0, True), (80.0, False), (300.0, False)]):
            bus.publish(STATE, state(i, cycle_ms, meter_ok))
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        m = await asyncio.to_thread(scrape, url + "/metrics")
    finally:
        await telemetry.aclose()
    assert m['ems_cycle_seconds_count{}'] == 3
    assert m['ems_cycle_seconds_sum{}'] == pytest.approx(0.4)
    assert m['ems_cycle_seconds_bucket{"le": "0.1"}'] == 2 and m['ems_cycle_seconds_bucket{"le": "0.25"}'] == 2
    assert m['ems_device_poll_errors_total{"device": "meter"}'] == 2
    assert 'ems_device_poll_errors_total{"device": "pcs"}' not in m
    assert m['ems_plan_age_seconds{}'] == 902.0            # last state at T0 + 2 s, plan made at T0 - 900 s
    assert m['ems_solver_seconds{}'] == 0.0125
    assert m['ems_planner_failures_total{}'] == 2
    assert m['ems_commands_total{"result": "accepted"}'] == 1 and m['ems_commands_total{"result": "rejected"}'] == 1
    assert m['ems_outbox_depth_points{}'] > 0


async def test_metrics_without_any_state_or_influx(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    commands = Commands(ModeMachine(Mode.SELF_CONSUMPTION, T0), clock, (500.0, 500.0), (10.0, 95.0), lambda _: None)
    telemetry = await start_telemetry(TelemetrySettings(dashboard=DashboardSettings(port=free_port())), Bus(),
                                      TelemetryContext(site="demo", timezone="UTC", clock=clock,
                                                       apply=commands.apply, state_dir=tmp_path))
    try:
        assert telemetry.dashboard is not None
        m = await asyncio.to_thread(scrape, f"http://127.0.0.1:{telemetry.dashboard.port}/metrics")
    finally:
        await telemetry.aclose()
    assert m['ems_cycle_seconds_count{}'] == 0
    assert not any(k.startswith(("ems_outbox", "ems_plan_age", "ems_solver")) for k in m)
