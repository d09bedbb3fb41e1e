"""The command intake against hostile payloads, without a transport: known answers per kind of bad
input (the reason says what and where, the ``id`` is echoed when it can be read, nothing bad is
applied) and hypothesis fuzzing (any bytes, any JSON-like text → one publishable result, never an
exception). The same intake serves MQTT (tests/test_mqtt.py) and the dashboard (tests/test_dashboard.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.commands import CommandResult, Commands
from controller.modes import Mode, ModeMachine
from controller.telemetry.remote import COMMAND_NAMES, CommandIntake, schema
from ems.clock import ManualClock

T0 = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
NESTED_2KB = b"[" * 1024 + b"]" * 1024
NESTED_OBJECTS = b'{"mode":' * 300 + b'"auto"' + b"}" * 300


class Recorder:
    """The real ``Commands.apply`` on a manual clock, recording what reached it."""

    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.commands = Commands(ModeMachine(Mode.SELF_CONSUMPTION, T0), self.clock, (500.0, 500.0), (10.0, 95.0),
                                 lambda _: None)
        self.applied: list[dict[str, Any]] = []
        self.intake = CommandIntake(self.apply, self.clock)

    def apply(self, command: dict[str, Any], *, interface: str = "internal",
              identity: str | None = None) -> CommandResult:
        self.applied.append(command)
        return self.commands.apply(command, interface=interface, identity=identity)


def publishable(result: dict[str, Any]) -> dict[str, Any]:
    """The result as a subscriber would read it: strict UTF-8 JSON, valid against cmd_result.json."""
    wire = json.dumps(result, ensure_ascii=False).encode("utf-8")     # raises on a lone surrogate
    back = json.loads(wire.decode("utf-8"))
    jsonschema.validate(back, schema("cmd_result"))
    return back


@pytest.mark.parametrize(("name", "payload", "reason"), [
    # deep nesting: RecursionError in json.loads before the fix (the MQTT task died, HTTP 500)
    ("set_mode", NESTED_2KB, "JSON nested deeper than 4 levels"),
    ("set_mode", NESTED_OBJECTS, "JSON nested deeper than 4 levels"),
    # byte-order marks and UTF-16 (accepted before the fix: json.loads detects UTF-16 and a UTF-8 BOM)
    ("set_mode", b'\xef\xbb\xbf{"mode": "standby", "ttl_s": 60}', "UTF-8 byte-order mark"),
    ("set_mode", '{"mode": "standby", "ttl_s": 60}'.encode("utf-16"), "UTF-16 byte-order mark"),
    ("set_mode", '{"mode": "standby", "ttl_s": 60}'.encode("utf-16-le"), "NUL byte at offset 1"),
    ("set_mode", '{"mode": "standby", "ttl_s": 60}'.encode("utf-16-be"), "NUL byte at offset 0"),
    # not finite (NaN was applied by the schema and refused by pydantic with a misleading reason)
    ("manual_setpoint", b'{"battery_kw": NaN, "ttl_s": 60}', "battery_kw: NaN is not a finite number"),
    ("manual_setpoint", b'{"battery_kw": -Infinity, "ttl_s": 60}', "battery_kw: -Infinity is not a finite number"),
    ("set_mode", b'{"mode": "standby", "ttl_s": 1e999}', "ttl_s: 1e999 is not a finite number"),
    # encoding and size
    ("set_mode", b'{"mode": "standby", "ttl_s": 60, "id": "\xed\xa0\x80"}', "not UTF-8: byte 0xed at offset 40"),
    ("set_mode", b'{"mode": "standby", "id": "' + b"x" * 5000 + b'"}', "payload of 5029 bytes exceeds 4096"),
    ("set_mode", b'{"mode": "standby", "mode": "auto"}', "duplicate key 'mode'"),
    ("set_mode", b"\x00\x01\x02", "NUL byte at offset 0"),
    ("set_mode", b"   ", "empty payload"),
])
def test_hostile_payload_rejected_with_reason(name: str, payload: bytes, reason: str) -> None:
    rec = Recorder()
    result = publishable(rec.intake.handle(name, payload, interface="mqtt"))
    assert not result["accepted"] and reason in result["reason"], result["reason"]
    assert rec.applied == [] and rec.commands.modes.request is None
    assert rec.intake.counters()["rejected"] == 1


@pytest.mark.parametrize("payload", [
    b'{"mode": "standby", "ttl_s": 600, "id": "\\ud800"}',          # the case: applied before the fix
    b'{"mode": "standby", "ttl_s": 600, "id": "ok\\udfff"}',
    b'{"mode": "standby", "ttl_s": 600, "id": "a", "ts": "\\udc00"}',
    b'{"mode": "standby", "ttl_s": 600, "\\ud800": 1}',
])
def test_lone_surrogate_command_is_never_applied(payload: bytes) -> None:
    rec = Recorder()
    result = publishable(rec.intake.handle("set_mode", payload, interface="mqtt"))
    assert not result["accepted"] and "lone surrogate" in result["reason"], result["reason"]
    assert rec.applied == [] and rec.commands.modes.request is None


def test_schema_rejection_echoes_the_id() -> None:
    """Before the fix the id was read only after validation: a rejected command's result had id null."""
    rec = Recorder()
    for name, payload in (("set_mode", {"mode": "turbo", "id": "op-7"}),
                          ("manual_setpoint", {"battery_kw": "lots", "ttl_s": 60, "id": "op-8"}),
                          ("replan", {"now": True, "id": "op-9"})):
        result = publishable(rec.intake.handle(name, json.dumps(payload).encode(), interface="mqtt"))
        assert not result["accepted"] and result["id"] == payload["id"], result
    result = publishable(rec.intake.handle("set_mode", b'{"mode": NaN, "id": "op-10"}', interface="mqtt"))
    assert result["id"] is None and "mode: NaN is not a finite number" in result["reason"]   # unparsed: no id
    assert rec.applied == []


def test_retained_and_unknown_commands_echo_the_id_too() -> None:
    rec = Recorder()
    result = publishable(rec.intake.handle("set_mode", b'{"mode": "standby", "id": "r1"}', interface="mqtt",
                                           retained=True))
    assert result["id"] == "r1" and result["reason"].startswith("retained command ignored")
    result = publishable(rec.intake.handle("self_destruct", b'{"id": "u1"}', interface="mqtt"))
    assert result["id"] == "u1" and result["reason"].startswith("unknown command 'self_destruct'")
    result = publishable(rec.intake.handle("nope", b"[[[[[[", interface="mqtt", retained=True))
    assert result["id"] is None and result["reason"].startswith("retained command ignored")
    assert rec.applied == []


def test_busy_answer_echoes_the_id_and_counts() -> None:
    rec = Recorder()
    result = publishable(rec.intake.busy("set_mode", b'{"mode": "auto", "id": "b1"}', waiting=32, interface="mqtt"))
    assert result == {**result, "command": "set_mode", "id": "b1", "accepted": False}
    assert result["reason"].startswith("busy: 32 commands waiting")
    assert publishable(rec.intake.busy("set_mode", NESTED_2KB, waiting=32, interface="mqtt"))["id"] is None
    assert rec.intake.counters() == {"accepted": 0, "rejected": 2, "busy": 2, "errors": 0, "dropped": 0}


def test_an_apply_that_raises_costs_one_command() -> None:
    def broken(command: dict[str, Any], **_who: Any) -> CommandResult:
        raise RuntimeError("boom")

    intake = CommandIntake(broken, ManualClock(T0))
    result = publishable(intake.handle("replan", b'{"id": "r1"}', interface="mqtt"))
    assert not result["accepted"] and result["id"] == "r1" and "internal error: RuntimeError" in result["reason"]
    assert intake.counters()["errors"] == 1


def test_in_process_dict_follows_the_same_rules() -> None:
    rec = Recorder()
    assert "not a finite number" in rec.intake.handle("manual_setpoint", {"battery_kw": float("nan"), "ttl_s": 60},
                                                      interface="mqtt")["reason"]
    assert "lone surrogate" in rec.intake.handle("set_mode", {"mode": "auto", "id": "\ud800"},
                                                 interface="mqtt")["reason"]
    assert rec.intake.handle("set_mode", {"mode": "standby", "ttl_s": 60}, interface="mqtt")["accepted"]
    assert len(rec.applied) == 1


# ----------------------------------------------------------------------------------------------
# fuzzing: any input gives one publishable result, never an exception, and only valid commands apply

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["mode", "ttl_s", "battery_kw", "soc_pct", "id",
                                                                  "ts", "x"]) | st.text(max_size=8), inner,
                                                 max_size=5)), max_leaves=20)
escapes = st.sampled_from(["\\ud800", "\\udfff", "\\u0000", "NaN", "Infinity", "1e999", "[[[[[[", "\ufeff", "\\"])


@FUZZ
@given(name=st.sampled_from([*COMMAND_NAMES, "nope", ""]), payload=st.binary(max_size=600))
def test_fuzz_any_bytes(name: str, payload: bytes) -> None:
    rec = Recorder()
    result = publishable(rec.intake.handle(name, payload, interface="mqtt"))
    assert len(rec.applied) == int(result["accepted"])
    publishable(rec.intake.busy(name, payload, waiting=1, interface="mqtt"))


@FUZZ
@given(name=st.sampled_from(COMMAND_NAMES), value=json_values, cut=st.integers(0, 400), splice=escapes)
def test_fuzz_json_like_text(name: str, value: Any, cut: int, splice: str) -> None:
    """Valid JSON with a hostile fragment spliced in somewhere: parsed or refused, never raised; a
    result that accepts came from a command that passed the schema and the controller's model."""
    text = json.dumps(value, allow_nan=True)
    rec = Recorder()
    for payload in (text.encode(), (text[:cut] + splice + text[cut:]).encode("utf-8", errors="surrogatepass")):
        result = publishable(rec.intake.handle(name, payload, interface="mqtt"))
        if result["accepted"]:
            assert rec.applied and rec.applied[-1]["command"] == name
            json.dumps(rec.applied[-1], allow_nan=False).encode("utf-8")   # finite, valid Unicode
