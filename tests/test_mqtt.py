"""MQTT sink against a real mosquitto: state/plan/alarms/status out, every command kind in (accepted
or rejected with its reason), bad input, retained commands, the ACL, broker restart, the will."""

from __future__ import annotations

import asyncio
import contextlib
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
    ("soc_reserve", {"soc_pct": 40, "extra": 1}, "extra: unknown field; known here: id, soc_pct, ts, ttl_s"),
    ("soc_reserve", {"soc": 40, "ttl_s": 60}, "soc: unknown field; did you mean soc_pct?"),
    ("replan", {"now": True}, "now: unknown field; known here: id, ts, ttl_s"),
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
    late = MqttSink(settings_for(mosquitto, client_id="ems-late", claim_site=False), SITE, other.intake)
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
    """What the shipped JSON Schema (generated from the model) accepts, the controller's pydantic model
    accepts, and vice versa."""
    from controller.commands import parse_command
    from controller.telemetry.remote import schema_errors

    schema_ok = not schema_errors(name, payload)
    try:
        parse_command({**payload, "command": name})
        model_ok = True
    except ValueError:
        model_ok = False
    if name == "manual_setpoint" and payload["battery_kw"] is True:
        model_ok = False          # pydantic coerces a JSON boolean to 1.0; the schema refuses it first
    assert schema_ok == model_ok, (name, payload)


# ----------------------------------------------------------------------------------------------
# hostile messages, bursts, restarts (issue 11)

HOSTILE = [
    (b"[" * 1024 + b"]" * 1024, "JSON nested deeper than 4 levels"),         # ended the MQTT task before the fix
    (b'{"mode": "standby", "ttl_s": 600, "id": "\\ud800"}', "lone surrogate"),  # applied, then ended the task
    (b'\xef\xbb\xbf{"mode": "standby", "ttl_s": 600}', "UTF-8 byte-order mark"),  # accepted before the fix
    ('{"mode": "standby", "ttl_s": 600}'.encode("utf-16"), "UTF-16 byte-order mark"),  # accepted before the fix
    (b'{"mode": "standby", "ttl_s": NaN}', "ttl_s: NaN is not a finite number"),
    (b'{"mode": "standby", "ttl_s": 1e999}', "ttl_s: 1e999 is not a finite number"),
    (b'{"mode": "standby", "id": "' + b"x" * 5000 + b'"}', "exceeds 4096"),
    (bytes(range(256)), "NUL byte at offset 0"),
]


@pytest.mark.parametrize(("payload", "reason"), HOSTILE)
async def test_hostile_message_is_answered_and_the_sink_goes_on(setup: tuple[Controller, MqttSink, Listener],
                                                                payload: bytes, reason: str) -> None:
    controller, sink, listener = setup
    r = await listener.command("set_mode", payload)
    assert not r["accepted"] and reason in r["reason"], r["reason"]
    assert controller.modes.request is None                            # nothing hostile is applied
    r = await listener.command("set_mode", {"mode": "tou_rule", "ttl_s": 60, "id": "after"})
    assert r["accepted"] and r["id"] == "after" and not sink._task.done()
    assert sink.connects == 1                                          # same connection, no restart


async def test_schema_rejection_echoes_the_id_over_mqtt(setup: tuple[Controller, MqttSink, Listener]) -> None:
    _, _, listener = setup
    r = await listener.command("set_mode", {"mode": "turbo", "id": "op-7"})
    assert not r["accepted"] and r["id"] == "op-7"                     # was null before the fix


def _mqtt_packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 control packet: fixed header with the variable-length remaining length."""
    size, length = len(body), bytearray()
    while True:
        size, digit = size // 128, size % 128
        length.append(digit | (0x80 if size else 0))
        if not size:
            return bytes([first_byte]) + bytes(length) + body


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def burst_of_publishes(topic: str, payloads: list[bytes]) -> bytes:
    """CONNECT followed by one QoS 0 PUBLISH per payload, as one byte string: written with a single
    ``sendall``, the burst reaches the broker at once, whatever this test's event loop is doing."""
    connect = _mqtt_packet(0x10, _mqtt_string("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big")
                           + _mqtt_string("test-burst"))
    return connect + b"".join(_mqtt_packet(0x30, _mqtt_string(topic) + p) for p in payloads)


async def test_burst_of_300_commands_each_gets_a_result(mosquitto: Mosquitto) -> None:  # noqa: F811
    """300 commands arriving at once to a sink with a queue of 4: every one is answered, accepted or
    'busy' (before the fix aiomqtt discarded 198 of them with no result and no alarm), and the queue
    alarm is raised, then cleared once the queue has drained."""
    controller = Controller()
    alarms: list[tuple[str, bool, str]] = []
    client, listener = await listener_for(mosquitto)
    sink = MqttSink(settings_for(mosquitto, command_queue=4), SITE, controller.intake,
                    on_alarm=lambda *a: alarms.append(a))
    sink.start()
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    ids = [f"burst-{i}" for i in range(300)]
    burst = burst_of_publishes(f"ems/{SITE}/cmd/replan", [json.dumps({"id": i}).encode() for i in ids])
    _, writer = await asyncio.open_connection(mosquitto.host, mosquitto.port)
    writer.write(burst)
    await writer.drain()
    results: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(TimeoutError):
        while len(results) < len(ids):
            r = json.loads((await listener.next("cmd/replan/result")).payload)
            results[r["id"]] = r
    writer.close()
    assert sorted(results) == sorted(ids), f"{len(ids) - len(results)} commands got no result"
    busy = [r for r in results.values() if not r["accepted"]]
    assert all(r["reason"].startswith("busy: ") for r in busy), busy[:3]
    assert len(controller.replans) == 300 - len(busy) == controller.intake.accepted
    assert busy, "the queue of 4 never filled: the burst did not test the bound"
    assert [(code, active) for code, active, _ in alarms][:1] == [("telemetry.command_queue_full", True)]
    async with asyncio.timeout(WAIT_S):          # cleared once the worker's last result has gone out
        while alarms[-1][1]:
            await asyncio.sleep(0.01)
    assert {code for code, _, _ in alarms} == {"telemetry.command_queue_full"}
    assert controller.intake.counters()["busy"] == len(busy)
    await sink.aclose()
    listener._task.cancel()
    await client.__aexit__(None, None, None)


class FailsOnFirstConnect(MqttSink):
    """A sink with a bug that strikes once, after ``online`` went out (stands for any error that is
    not the broker's: before the fix such an error ended the task for good and left ``online``)."""

    failed = False

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        await super()._on_connect(client)
        if not self.failed:
            self.failed = True
            raise RuntimeError("bug in the sink")


async def test_sink_restarts_after_any_error_and_says_offline_meanwhile(mosquitto: Mosquitto) -> None:  # noqa: F811
    controller = Controller()
    client, listener = await listener_for(mosquitto)
    sink = FailsOnFirstConnect(settings_for(mosquitto), SITE, controller.intake)
    sink.start()
    assert [(await listener.next("status")).payload for _ in range(3)] == [b"online", b"offline", b"online"]
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    assert sink.restarts == 1 and sink.connects == 2
    r = await listener.command("replan", {"id": "after-restart"})
    assert r["accepted"] and controller.replans
    await sink.aclose()
    listener._task.cancel()
    await client.__aexit__(None, None, None)


async def test_stop_leaves_status_offline_retained(setup: tuple[Controller, MqttSink, Listener],
                                                   mosquitto: Mosquitto) -> None:  # noqa: F811
    """After a hostile message and a clean stop (no will), the retained status says offline."""
    _, sink, listener = setup
    await listener.client.publish(f"ems/{SITE}/cmd/set_mode", b"[" * 2048, qos=1)
    await listener.next("cmd/set_mode/result")
    await sink.aclose()
    late, late_listener = await listener_for(mosquitto)
    status = await late_listener.next("status")
    assert status.retain and status.payload == b"offline"
    late_listener._task.cancel()
    await late.__aexit__(None, None, None)
