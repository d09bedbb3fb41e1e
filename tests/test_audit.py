"""The audit log (controller/audit.py): commands from MQTT (real mosquitto with the shipped ACL), the
dashboard, SCADA Modbus and direct ``Controller.apply`` land in the state file with interface, identity,
payload, result and reason; the log is bounded, survives a restart, and a locked file loses nothing
silently."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pymodbus.client import AsyncModbusTcpClient

from controller.audit import AuditLog, AuditSettings, payload_value
from controller.cli import EXAMPLE_SITE
from controller.config import load_config
from controller.scada import registers as regmap
from controller.service import STATE_FILE, Controller
from controller.telemetry.config import DashboardSettings, MqttSettings, ScadaSettings, TelemetrySettings
from ems.clock import ManualClock
from tests.peers import BROKER_USERS, free_port, mosquitto_auth  # noqa: F401

T0 = datetime(2026, 5, 4, 4, 0, tzinfo=UTC)
TOKEN = "audit-test-token"


def entry(log: AuditLog, ts: datetime, i: int = 0, **kw: Any) -> None:
    log.record(**{"ts": ts, "interface": "internal", "identity": None, "command": "replan",
                  "payload": {"n": i}, "accepted": True, "reason": "replan requested", **kw})


def test_entries_round_trip_newest_first_with_pagination(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / STATE_FILE)
    for i in range(5):
        entry(log, T0 + timedelta(minutes=i), i, identity=f"op{i}", interface="rest" if i % 2 else "mqtt")
    got = log.entries()
    assert [e["payload"]["n"] for e in got] == [4, 3, 2, 1, 0]
    assert got[0] == {"id": 5, "ts": "2026-05-04T04:04:00.000+00:00", "interface": "mqtt", "identity": "op4",
                      "command": "replan", "payload": {"n": 4}, "accepted": True, "reason": "replan requested"}
    assert [e["payload"]["n"] for e in log.entries(limit=2, offset=1)] == [3, 2]
    assert [e["payload"]["n"] for e in log.entries(since=T0 + timedelta(minutes=1),
                                                   until=T0 + timedelta(minutes=3))] == [2, 1]
    assert [e["payload"]["n"] for e in log.entries(interface="rest")] == [3, 1]
    entry(log, T0 + timedelta(minutes=9), identity="\ud800", payload={"id": "\ud800"})   # lone surrogates
    assert log.entries(limit=1)[0]["identity"] == "\\ud800" and log.entries(limit=1)[0]["payload"] == {"id": "\\ud800"}
    with pytest.raises(ValueError, match="limit"):
        log.entries(limit=0)
    with pytest.raises(ValueError, match="offset"):
        log.entries(offset=-1)
    log.close()


def test_payloads_of_any_shape_are_stored_as_json() -> None:
    assert payload_value(b'{"mode": "auto"}') == {"mode": "auto"}
    assert payload_value(b"") == {}
    assert payload_value(b"{oops") == "{oops"
    assert payload_value(b"\xff\xfe") == "\\xff\\xfe"
    assert payload_value({"battery_kw": float("nan")}) == "{'battery_kw': nan}"
    assert payload_value("x" * 5000).endswith("…") and len(payload_value("x" * 5000)) == 4097


def test_rotation_keeps_the_newest_entries_and_days(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / STATE_FILE, AuditSettings(keep_entries=100, keep_days=2))
    for i in range(150):
        entry(log, T0 + timedelta(seconds=i), i)
    kept = log.entries(limit=1000)
    assert len(kept) == 100 and kept[-1]["payload"]["n"] == 50 and kept[0]["payload"]["n"] == 149
    entry(log, T0 + timedelta(days=2, seconds=60), 999)      # entries older than two days before it: gone
    assert [e["payload"]["n"] for e in log.entries(limit=1000)] == [999, *range(149, 59, -1)]
    log.close()


def test_a_locked_file_keeps_entries_in_memory_and_records_the_gap(tmp_path: Path) -> None:
    now = [0.0]
    log = AuditLog(tmp_path / STATE_FILE, AuditSettings(max_pending=10), monotonic=lambda: now[0])
    other = sqlite3.connect(tmp_path / STATE_FILE, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        for i in range(12):
            entry(log, T0 + timedelta(seconds=i), i)
        assert log.write_error is not None and "locked" in log.write_error
        assert log.pending == 10 and log.lost == 2
        assert [e["payload"]["n"] for e in log.entries(limit=3)] == [11, 10, 9]      # readers see them
        assert all(e["id"] is None for e in log.entries(limit=3))
        other.execute("ROLLBACK")
        now[0] += 2.0
        entry(log, T0 + timedelta(seconds=20), 20)
        assert log.write_error is None and log.pending == 0 and log.lost == 0
        rows = other.execute("SELECT command, payload, reason FROM audit ORDER BY id").fetchall()
        assert rows[0][0] == "gap" and json.loads(rows[0][1]) == {"lost": 2} and "2 audit entries lost" in rows[0][2]
        assert [json.loads(r[1])["n"] for r in rows[1:]] == [*range(2, 12), 20]
    finally:
        other.close()
        log.close()


def test_a_shutdown_on_a_locked_file_logs_the_entries_it_cannot_write(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(tmp_path / STATE_FILE)
    other = sqlite3.connect(tmp_path / STATE_FILE, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        entry(log, T0, 7, identity="op")
        log.close()
    finally:
        other.close()
    lines = [r.getMessage() for r in caplog.records if "audit entry not written" in r.getMessage()]
    assert len(lines) == 1 and '"identity": "op"' in lines[0] and '"payload": {"n": 7}' in lines[0]


def test_controller_apply_records_and_alarms_while_locked(tmp_path: Path) -> None:
    controller = Controller.from_config(load_config(EXAMPLE_SITE), EXAMPLE_SITE, ManualClock(T0),
                                        state_directory=tmp_path)
    other = sqlite3.connect(tmp_path / STATE_FILE, isolation_level=None)
    try:
        assert controller.apply({"command": "soc_reserve", "soc_pct": 40, "ttl_s": 3600}).accepted
        assert not controller.apply({"command": "soc_reserve", "soc_pct": 99}, interface="rest",
                                    identity="token:ops").accepted
        first, second = reversed(controller.audit.entries())
        assert (first["interface"], first["identity"], first["accepted"]) == ("internal", None, True)
        assert first["payload"] == {"command": "soc_reserve", "soc_pct": 40, "ttl_s": 3600}
        assert (second["interface"], second["identity"], second["command"], second["accepted"]) == \
               ("rest", "token:ops", "soc_reserve", False) and "outside the SOC window" in second["reason"]
        other.execute("BEGIN EXCLUSIVE")
        controller.apply({"command": "replan"}, interface="rest", identity="token:ops")
        assert "audit_log_unwritable" in controller.alarms and controller.audit.pending == 1
        other.execute("ROLLBACK")
        controller.persist(T0)
        assert "audit_log_unwritable" not in controller.alarms and controller.audit.pending == 0
    finally:
        other.close()
        controller.store.close()
        controller.audit.close()


async def publish(port: int, topic: str, payload: bytes, user: str) -> None:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = ("user", user)
    async with aiomqtt.Client("127.0.0.1", port, username=user, password=BROKER_USERS[user],
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic, payload, qos=1, properties=properties)


async def entries_reach(log: AuditLog, count: int) -> None:
    async with asyncio.timeout(10):
        while len(log.entries()) < count:
            await asyncio.sleep(0.02)


def post(port: int, name: str, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/cmd/{name}", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def controller_factory(tmp_path: Path, mosquitto_auth: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                       ) -> Iterator[Any]:
    monkeypatch.setenv("EMS_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("EMS_MQTT_PASSWORD", BROKER_USERS["ems-controller"])
    telemetry = TelemetrySettings(
        mqtt=MqttSettings(enabled=True, port=mosquitto_auth.port, username="ems-controller",
                          password_env="EMS_MQTT_PASSWORD", min_state_interval_s=0),
        dashboard=DashboardSettings(port=free_port()), scada=ScadaSettings(enabled=True, port=0))
    config = load_config(EXAMPLE_SITE).model_copy(update={"telemetry": telemetry})

    def make() -> Controller:
        return Controller.from_config(config, EXAMPLE_SITE, ManualClock(T0), state_directory=tmp_path / "state")

    yield make


async def test_commands_from_every_interface_are_recorded_and_survive_a_restart(controller_factory: Any,
                                                                                 mosquitto_auth: Any) -> None:  # noqa: F811
    controller = controller_factory()
    telemetry = await controller.start_telemetry()
    try:
        assert telemetry.mqtt is not None and telemetry.dashboard is not None and telemetry.scada is not None
        await asyncio.wait_for(telemetry.mqtt.connected.wait(), 10)
        site = controller.config.site.name
        await publish(mosquitto_auth.port, f"ems/{site}/cmd/set_mode", b'{"mode": "standby", "ttl_s": 60}',
                      "operator")
        await publish(mosquitto_auth.port, f"ems/{site}/cmd/set_mode", b'{"mode": "launch"}', "operator")
        await entries_reach(controller.audit, 2)                      # the MQTT sink handles them on its task
        assert await asyncio.to_thread(post, telemetry.dashboard.port, "soc_reserve",
                                       b'{"soc_pct": 40, "ttl_s": 600}') == 200
        assert await asyncio.to_thread(post, telemetry.dashboard.port, "replan", b"{oops") == 422
        async with AsyncModbusTcpClient("127.0.0.1", port=telemetry.scada.port, timeout=2, retries=0) as client:
            mode_request = next(s.address for s in regmap.SLOTS if s.field.name == "mode_request")
            assert not (await client.write_register(mode_request, 2)).isError()
        controller.apply({"command": "replan"})
        url = f"http://127.0.0.1:{telemetry.dashboard.port}/api/snapshot"
        shown = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read()))
        assert [(c["interface"], c["command"]) for c in shown["commands"]] == [
            ("mqtt", "set_mode"), ("mqtt", "set_mode"), ("dashboard", "soc_reserve"), ("dashboard", "replan"),
            ("scada", "set_mode"), ("internal", "replan")]                  # the dashboard's recent commands
    finally:
        await telemetry.aclose()
        controller.store.close()
        controller.audit.close()
    restarted = controller_factory()
    try:
        entries = list(reversed(restarted.audit.entries()))
    finally:
        restarted.store.close()
        restarted.audit.close()
    got = [(e["interface"], e["identity"], e["command"], e["accepted"]) for e in entries]
    assert got == [("mqtt", "operator", "set_mode", True), ("mqtt", "operator", "set_mode", False),
                   ("dashboard", "dashboard", "soc_reserve", True), ("dashboard", "dashboard", "replan", False),
                   ("scada", "127.0.0.1", "set_mode", True), ("internal", None, "replan", True)]
    assert entries[0]["payload"] == {"command": "set_mode", "mode": "standby", "ttl_s": 60}
    assert entries[1]["payload"] == {"mode": "launch"} and "launch" in entries[1]["reason"]
    assert entries[3]["payload"] == "{oops" and entries[3]["reason"].startswith("malformed JSON")
    assert entries[4]["payload"]["mode"] == "tou_rule"
    assert all(e["ts"] == "2026-05-04T04:00:00.000+00:00" for e in entries)


def test_the_intake_records_what_it_refuses_before_apply_and_apply_records_the_rest(tmp_path: Path) -> None:
    """Exactly one entry per command: refused by the intake (schema, park off, busy) or decided by apply."""
    from controller.commands import CommandResult
    from controller.telemetry.remote import CommandIntake

    log = AuditLog(tmp_path / STATE_FILE)
    clock = ManualClock(T0)

    def apply(command: dict[str, Any], *, interface: str, identity: str | None) -> CommandResult:
        log.record(ts=clock.now(), interface=interface, identity=identity, command=command["command"],
                   payload=command, accepted=True, reason="applied")   # what Controller.apply does
        return CommandResult(True, "applied")

    intake = CommandIntake(apply, clock, audit=log.record)
    intake.handle("set_mode", b'{"mode": "turbo", "id": "a"}', interface="mqtt", identity="op")
    intake.handle("replan", b'{"id": "b"}', interface="rest", identity="token:ops")
    intake.refuse("replan", b'{"id": "c"}', "park commands are off", interface="park")
    intake.busy("soc_reserve", b'{"soc_pct": 40}', waiting=32, interface="mqtt")
    got = [(e["interface"], e["identity"], e["command"], e["accepted"], e["payload"]) for e in reversed(log.entries())]
    assert got == [("mqtt", "op", "set_mode", False, {"mode": "turbo", "id": "a"}),
                   ("rest", "token:ops", "replan", True, {"command": "replan"}),
                   ("park", None, "replan", False, {"id": "c"}),
                   ("mqtt", None, "soc_reserve", False, {"soc_pct": 40})]
    assert log.entries(limit=1)[0]["reason"].startswith("busy: 32 commands waiting")
    log.close()


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                       max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=200) | st.text(max_size=200) | JSONISH)
def test_any_payload_is_stored_as_strict_utf8_json(payload: Any) -> None:
    """Whatever arrives (bytes, lone surrogates, NaN, deep objects), the stored value is strict JSON that
    encodes as UTF-8, so the REST API and the dashboard can always serve it."""
    value = payload_value(payload)
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
