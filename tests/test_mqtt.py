"""MQTT sink against a real mosquitto: state/plan/alarms/status out, every command kind in (accepted
or rejected with its reason), bad input, retained commands, the ACL, broker restart, the will."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
from aiomqtt.exceptions import MqttCodeError

from controller.commands import Commands
from controller.modes import Mode, ModeMachine
from controller.telemetry.config import MqttSettings
from controller.telemetry.mqtt import MqttSink
from controller.telemetry.remote import CommandIntake, schema
from ems.clock import ManualClock
from tests.peers import (  # noqa: F401 (fixtures)
    BROKER_USERS,
    Mosquitto,
    make_tls_files,
    mosquitto,
    mosquitto_auth,
    sample_plan,
    sample_state,
)

SITE = "demo-factory"
T0 = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
WAIT_S = 15.0


class Controller:
    """The controller's real command side (modes + commands) on a manual clock."""

    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.modes = ModeMachine(Mode.SELF_CONSUMPTION, T0)
        self.replans: list[datetime] = []
        self.commands = Commands(self.modes, self.clock, (500.0, 500.0), (10.0, 95.0), self.replans.append)
        self.intake = CommandIntake(self.commands.apply, self.clock)


class Listener:
    """A subscriber to ``ems/<site>/#`` that files messages by topic."""

    def __init__(self, client: aiomqtt.Client):
        self.client = client
        self.queues: dict[str, asyncio.Queue[aiomqtt.Message]] = {}
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for msg in self.client.messages:
            self.queue(str(msg.topic)).put_nowait(msg)

    def queue(self, topic: str) -> asyncio.Queue[aiomqtt.Message]:
        return self.queues.setdefault(topic, asyncio.Queue())

    async def next(self, leaf: str) -> aiomqtt.Message:
        async with asyncio.timeout(WAIT_S):
            return await self.queue(f"ems/{SITE}/{leaf}").get()

    async def command(self, name: str, payload: bytes | str | dict[str, Any], retain: bool = False) -> dict[str, Any]:
        body = json.dumps(payload) if isinstance(payload, dict) else payload
        await self.client.publish(f"ems/{SITE}/cmd/{name}", body, qos=1, retain=retain)
        result = json.loads((await self.next(f"cmd/{name}/result")).payload)
        jsonschema.validate(result, schema("cmd_result"))
        return result


async def listener_for(broker: Mosquitto, username: str | None = None) -> tuple[aiomqtt.Client, Listener]:
    client = aiomqtt.Client(broker.host, broker.port, username=username,
                            password=BROKER_USERS.get(username or ""), identifier=f"test-{username}")
    await client.__aenter__()
    await client.subscribe(f"ems/{SITE}/#", qos=1)
    return client, Listener(client)


def settings_for(broker: Mosquitto, **kw: Any) -> MqttSettings:
    return MqttSettings(enabled=True, host=broker.host, port=broker.port, min_state_interval_s=0.05,
                        max_backoff_s=0.5, **kw)


@pytest.fixture
async def setup(mosquitto: Mosquitto) -> AsyncIterator[tuple[Controller, MqttSink, Listener]]:  # noqa: F811
    controller = Controller()
    client, listener = await listener_for(mosquitto)
    sink = MqttSink(settings_for(mosquitto), SITE, controller.intake)
    sink.start()
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    yield controller, sink, listener
    await sink.aclose()
    listener._task.cancel()
    await client.__aexit__(None, None, None)


async def test_state_plan_alarm_status(setup: tuple[Controller, MqttSink, Listener], mosquitto: Mosquitto) -> None:  # noqa: F811
    _, sink, listener = setup
    assert (await listener.next("status")).payload == b"online"
    s1 = sample_state(T0, 1)
    sink.offer("state", s1)
    got = await listener.next("state")
    assert json.loads(got.payload) == s1
    jsonschema.validate(json.loads(got.payload), schema("state"))
    # unchanged content (only the time and the cycle timing moved) is not republished; the next change is
    sink.offer("state", {**s1, "ts": (T0 + timedelta(seconds=1)).isoformat(), "cycle": {"cycle_ms": 99.0}})
    s2 = sample_state(T0 + timedelta(seconds=2), 2)
    sink.offer("state", s2)
    assert json.loads((await listener.next("state")).payload) == s2
    plan = sample_plan(T0)
    sink.offer("plan", plan)
    got_plan = json.loads((await listener.next("plan")).payload)
    assert got_plan == plan
    jsonschema.validate(got_plan, schema("plan"))
    alarm = {"ts": T0.isoformat(), "code": "data_missing", "active": True, "severity": "critical", "message": "x"}
    sink.offer("alarm", alarm)
    got_alarm = await listener.next("alarms")
    assert json.loads(got_alarm.payload) == alarm and not got_alarm.retain
    jsonschema.validate(alarm, schema("alarm"))
    # a late subscriber gets the retained state, plan and status
    late, late_listener = await listener_for(mosquitto)
    for leaf, expected in (("state", s2), ("plan", plan)):
        msg = await late_listener.next(leaf)
        assert msg.retain and json.loads(msg.payload) == expected
    assert (await late_listener.next("status")).payload == b"online"
    late_listener._task.cancel()
    await late.__aexit__(None, None, None)


async def test_every_command_kind_accepted(setup: tuple[Controller, MqttSink, Listener]) -> None:
    controller, _, listener = setup
    r = await listener.command("set_mode", {"mode": "standby", "ttl_s": 600, "id": "a1"})
    assert r["accepted"] and r["id"] == "a1" and "standby" in r["reason"]
    assert controller.modes.request is not None and controller.modes.request.mode is Mode.STANDBY
    r = await listener.command("manual_setpoint", {"battery_kw": -200, "ttl_s": 900})
    assert r["accepted"], r
    assert controller.modes.request.setpoint_kw == -200 and controller.modes.request.by == "mqtt"
    r = await listener.command("soc_reserve", {"soc_pct": 40, "ttl_s": 3600})
    assert r["accepted"] and controller.commands.reserve_pct(T0) == 40
    r = await listener.command("replan", {})
    assert r["accepted"] and len(controller.replans) == 1
    # a command with its issue time keeps only the rest of its TTL
    issued = T0 - timedelta(seconds=100)
    r = await listener.command("manual_setpoint", {"battery_kw": 100, "ttl_s": 160, "ts": issued.isoformat()})
    assert r["accepted"] and controller.modes.request.until == T0 + timedelta(seconds=60)


@pytest.mark.parametrize(("name", "payload", "reason"), [
    ("set_mode", {"mode": "turbo"}, "mode: 'turbo' is not one of"),
    ("set_mode", b"{not json", "malformed JSON"),
    ("set_mode", b"\xff\xfe", "UTF-16 byte-order mark"),
    ("set_mode", b'{"mode": "auto", "ttl_s": 60\x80}', "not UTF-8: byte 0x80 at offset 28"),
    ("set_mode", b"[1, 2]", "is not of type 'object'"),
    ("manual_setpoint", {"battery_kw": "lots", "ttl_s": 60}, "battery_kw: 'lots' is not of type 'number'"),
    ("manual_setpoint", {"battery_kw": 900, "ttl_s": 60}, "outside the PCS range"),
    ("manual_setpoint", {"battery_kw": 1e9, "ttl_s": 60}, "battery_kw: 1000000000.0 is greater than the maximum"),
    ("manual_setpoint", {"battery_kw": 100}, "'ttl_s' is a required property"),
    ("manual_setpoint", {"battery_kw": 100, "ttl_s": -5}, "ttl_s: -5 is less than or equal to the minimum"),
    ("manual_setpoint", {"battery_kw": 100, "ttl_s": 60, "ts": (T0 - timedelta(minutes=5)).isoformat()}, "expired"),
    ("manual_setpoint", {"battery_kw": 100, "ttl_s": 60, "ts": "2026-05-04T10:00:00"}, "needs a UTC offset"),
    ("soc_reserve", {"soc_pct": 5, "ttl_s": 60}, "outside the SOC window"),
    ("soc_reserve", {"soc_pct": 40, "extra": 1}, "Additional properties are not allowed"),
    ("replan", {"now": True}, "Additional properties are not allowed"),
    ("self_destruct", {}, "unknown command"),
])
async def test_bad_commands_rejected_with_reason(setup: tuple[Controller, MqttSink, Listener], name: str,
                                                 payload: Any, reason: str) -> None:
    controller, _, listener = setup
    r = await listener.command(name, payload)
    assert not r["accepted"] and reason in r["reason"], r["reason"]
    assert controller.modes.request is None and controller.commands.reserve is None and not controller.replans
    r = await listener.command("replan", {})                  # the sink keeps running
    assert r["accepted"]


async def test_retained_command_is_never_acted_on(setup: tuple[Controller, MqttSink, Listener],
                                                  mosquitto: Mosquitto) -> None:  # noqa: F811
    controller, _, listener = setup
    r = await listener.command("set_mode", {"mode": "standby", "ttl_s": 600}, retain=True)
    assert not r["accepted"] and "retained" in r["reason"]
    assert controller.modes.request is None
    # a sink that connects later sees the stored retained command and still refuses it
    other = Controller()
    late = MqttSink(settings_for(mosquitto, client_id="ems-late"), SITE, other.intake)
    late.start()
    r = json.loads((await listener.next("cmd/set_mode/result")).payload)
    assert not r["accepted"] and "retained" in r["reason"] and other.modes.request is None
    await late.aclose()
    await listener.client.publish(f"ems/{SITE}/cmd/set_mode", b"", retain=True)   # clear it


async def test_acl_and_passwords(mosquitto_auth: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    controller = Controller()
    monkeypatch.setenv("TEST_EMS_MQTT_PASSWORD", BROKER_USERS["ems-controller"])
    sink = MqttSink(settings_for(mosquitto_auth, username="ems-controller", password_env="TEST_EMS_MQTT_PASSWORD"),
                    SITE, controller.intake)
    sink.start()
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    operator, op_listener = await listener_for(mosquitto_auth, "operator")
    viewer, viewer_listener = await listener_for(mosquitto_auth, "grafana")
    sink.offer("state", sample_state(T0))
    assert json.loads((await viewer_listener.next("state")).payload)["site"] == SITE   # dashboards may read
    # a dashboard user cannot command: the broker drops its publish, the controller never sees it
    await viewer.publish(f"ems/{SITE}/cmd/set_mode", json.dumps({"mode": "standby", "id": "viewer"}), qos=1)
    r = await op_listener.command("set_mode", {"mode": "tou_rule", "id": "op", "ttl_s": 60})
    assert r["accepted"] and r["id"] == "op"
    assert controller.modes.request.mode is Mode.TOU_RULE and controller.intake.accepted == 1
    assert op_listener.queue(f"ems/{SITE}/cmd/set_mode/result").empty()
    # wrong password or no password: refused by the broker
    for password in ("wrong", None):
        with pytest.raises(MqttCodeError, match=r"135|134|5"):
            async with aiomqtt.Client(mosquitto_auth.host, mosquitto_auth.port, username="operator",
                                      password=password):
                pass
    # a controller with a bad password keeps retrying without crashing
    bad = MqttSink(settings_for(mosquitto_auth, username="ems-controller", client_id="ems-bad"), SITE,
                   Controller().intake)
    bad.start()
    async with asyncio.timeout(WAIT_S):
        while bad.last_error is None:
            await asyncio.sleep(0.05)
    assert "authori" in bad.last_error.lower() and not bad._task.done()
    await bad.aclose()
    await sink.aclose()
    for client, lst in ((operator, op_listener), (viewer, viewer_listener)):
        lst._task.cancel()
        await client.__aexit__(None, None, None)


async def test_broker_restart_reconnects_and_resubscribes(tmp_path: Path) -> None:
    """The broker restarts; the sink reconnects, resubscribes, republishes its latest state and
    sends the alarm raised while it was away. (The broker keeps sessions on disk here so that a
    test subscriber with a persistent session sees that alarm, which is not retained.)"""
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    controller = Controller()
    sink = MqttSink(settings_for(broker), SITE, controller.intake)
    sink.start()
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()

    def persistent_client() -> aiomqtt.Client:
        return aiomqtt.Client(broker.host, broker.port, identifier="test-persistent", clean_session=False)

    client = persistent_client()
    await client.__aenter__()
    await client.subscribe(f"ems/{SITE}/#", qos=1)
    listener = Listener(client)
    sink.offer("state", sample_state(T0, 1))
    await listener.next("state")
    listener._task.cancel()
    broker.stop()
    async with asyncio.timeout(WAIT_S):
        while sink.connected.is_set():
            await asyncio.sleep(0.05)
    alarm = {"ts": T0.isoformat(), "code": "import_cap_unheld", "active": True}
    sink.offer("alarm", alarm)                       # raised while the broker is away: queued
    s3 = sample_state(T0 + timedelta(seconds=3), 3)
    sink.offer("state", s3)
    broker.start()
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    assert sink.connects == 2
    client = persistent_client()
    await client.__aenter__()
    listener = Listener(client)
    assert json.loads((await listener.next("alarms")).payload) == alarm
    while json.loads((await listener.next("state")).payload) != s3:   # republished after reconnect
        pass
    r = await listener.command("replan", {"id": "after-restart"})  # resubscribed to commands
    assert r["accepted"] and controller.replans
    listener._task.cancel()
    await client.__aexit__(None, None, None)
    await sink.aclose()
    broker.stop()


async def test_tls_with_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS-only listener with a private CA, plus a password: the sink verifies the broker and logs in."""
    ca, crt, key = make_tls_files(tmp_path)
    broker = Mosquitto(tmp_path, users={"ems-controller": "ctl-secret"}, tls=(ca, crt, key))
    broker.start()
    monkeypatch.setenv("TEST_EMS_MQTT_PASSWORD", "ctl-secret")
    controller = Controller()
    sink = MqttSink(settings_for(broker, username="ems-controller", password_env="TEST_EMS_MQTT_PASSWORD",
                                 tls={"ca_file": ca}), SITE, controller.intake)
    sink.start()
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    tls = aiomqtt.TLSParameters(ca_certs=str(ca))
    async with aiomqtt.Client(broker.host, broker.port, username="ems-controller", password="ctl-secret",
                              tls_params=tls, identifier="test-tls") as client:
        await client.subscribe(f"ems/{SITE}/state", qos=1)
        sink.offer("state", sample_state(T0, 4))
        async with asyncio.timeout(WAIT_S):
            message = await anext(client.messages)
        assert json.loads(message.payload)["ts"] == T0.isoformat()
    await sink.aclose()
    broker.stop()


WILL_SCRIPT = """
import asyncio, os, sys
from controller.telemetry.config import MqttSettings
from controller.telemetry.mqtt import MqttSink
async def main():
    sink = MqttSink(MqttSettings(enabled=True, host="127.0.0.1", port=int(sys.argv[1])), "demo-factory", None)
    sink.start()
    await sink.connected.wait()
    print("up", flush=True)
    await asyncio.sleep(0.2)
    os._exit(1)
asyncio.run(main())
"""


async def test_will_marks_a_vanished_controller_offline(mosquitto: Mosquitto) -> None:  # noqa: F811
    client, listener = await listener_for(mosquitto)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WILL_SCRIPT, str(mosquitto.port),
                                                cwd=Path(__file__).resolve().parents[1],
                                                stdout=subprocess.PIPE)
    assert (await listener.next("status")).payload == b"online"
    await proc.wait()
    assert (await listener.next("status")).payload == b"offline"
    listener._task.cancel()
    await client.__aexit__(None, None, None)


@pytest.mark.parametrize(("name", "payload"), [
    ("set_mode", {"mode": "auto"}), ("set_mode", {"mode": "manual"}), ("set_mode", {"mode": "safe"}),
    ("set_mode", {"mode": "standby", "ttl_s": 604800}), ("set_mode", {"mode": "standby", "ttl_s": 604801}),
    ("set_mode", {"mode": "standby", "ttl_s": 0}), ("manual_setpoint", {"battery_kw": -100000, "ttl_s": 1}),
    ("manual_setpoint", {"battery_kw": 100000.5, "ttl_s": 1}), ("manual_setpoint", {"battery_kw": True, "ttl_s": 1}),
    ("soc_reserve", {"soc_pct": 0}), ("soc_reserve", {"soc_pct": 100}), ("soc_reserve", {"soc_pct": -0.1}),
    ("soc_reserve", {"soc_pct": 100.1}), ("replan", {}), ("replan", {"ttl_s": 30}), ("replan", {"by": "x"}),
])
def test_schemas_agree_with_the_controller_models(name: str, payload: dict[str, Any]) -> None:
    """What the shipped JSON Schema accepts, the controller's pydantic model accepts, and vice versa
    (``by`` is set by the intake, not by senders)."""
    from controller.commands import parse_command
    from controller.telemetry.remote import schema_errors

    schema_ok = not schema_errors(name, payload)
    try:
        parse_command({**payload, "command": name})
        model_ok = "by" not in payload
    except ValueError:
        model_ok = False
    if name == "manual_setpoint" and payload["battery_kw"] is True:
        model_ok = False          # pydantic coerces a JSON boolean to 1.0; the schema refuses it first
    assert schema_ok == model_ok, (name, payload)
