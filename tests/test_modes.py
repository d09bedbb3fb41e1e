"""Modes and commands: precedence, expiry, fallbacks with reason codes, transitions logged once."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from controller.commands import Commands, ManualSetpoint, SetMode, parse_command
from controller.modes import Mode, ModeMachine, Reason, Request
from ems.clock import ManualClock

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)


def machine() -> ModeMachine:
    return ModeMachine(Mode.SELF_CONSUMPTION, T0)


def test_auto_follows_the_plan_and_falls_back_with_the_reason():
    m = machine()
    assert m.evaluate(T0, safe=False, plan_reason=Reason.NO_PLAN).mode is Mode.SELF_CONSUMPTION
    s = m.evaluate(T0, safe=False, plan_reason=None)
    assert (s.mode, s.reason) == (Mode.AUTO, Reason.PLAN)
    s = m.evaluate(T0, safe=False, plan_reason=Reason.PLAN_EXPIRED)
    assert (s.mode, s.reason) == (Mode.SELF_CONSUMPTION, Reason.PLAN_EXPIRED)
    tou = ModeMachine(Mode.TOU_RULE, T0)
    assert tou.evaluate(T0, safe=False, plan_reason=Reason.SOLVER_TIMEOUT).mode is Mode.TOU_RULE


def test_safe_beats_an_operator_request_and_requests_expire():
    m = machine()
    m.request_mode(Request(Mode.MANUAL, T0 + timedelta(minutes=5), setpoint_kw=100))
    assert m.evaluate(T0, safe=True, plan_reason=None).mode is Mode.SAFE
    s = m.evaluate(T0 + timedelta(minutes=1), safe=False, plan_reason=None)
    assert (s.mode, s.reason) == (Mode.MANUAL, Reason.OPERATOR) and s.request.setpoint_kw == 100
    s = m.evaluate(T0 + timedelta(minutes=5), safe=False, plan_reason=None)
    assert (s.mode, s.reason) == (Mode.AUTO, Reason.PLAN) and s.request is None


def test_transitions_are_logged_once(caplog):
    m = machine()
    with caplog.at_level(logging.WARNING, logger="controller.modes"):
        for i in range(50):
            m.evaluate(T0 + timedelta(seconds=i), safe=i >= 20, plan_reason=None)
    transitions = [r for r in caplog.records if "→" in r.getMessage()]
    assert len(transitions) == 2 and m.transitions == 2
    assert m.state.since == T0 + timedelta(seconds=20)


def test_manual_request_needs_a_setpoint_and_safe_cannot_be_requested():
    with pytest.raises(ValueError):
        machine().request_mode(Request(Mode.MANUAL, T0))
    with pytest.raises(ValueError):
        machine().request_mode(Request(Mode.SAFE, T0))


def commands(clock: ManualClock, m: ModeMachine, replans: list) -> Commands:
    return Commands(m, clock, battery_limits_kw=(500, 400), soc_window_pct=(10, 95), on_replan=replans.append)


def test_commands_validate_and_expire():
    clock, m, replans = ManualClock(T0), machine(), []
    c = commands(clock, m, replans)
    r = c.apply({"command": "manual_setpoint", "battery_kw": -200, "ttl_s": 600}, interface="mqtt", identity="op")
    assert r.accepted and m.request is not None and m.request.by == "mqtt:op"
    assert m.evaluate(clock.now(), safe=False, plan_reason=None).mode is Mode.MANUAL
    clock.advance(600)
    assert m.evaluate(clock.now(), safe=False, plan_reason=None).mode is Mode.AUTO
    assert c.apply(SetMode(mode="standby", ttl_s=60)).accepted
    assert m.evaluate(clock.now(), safe=False, plan_reason=None).mode is Mode.STANDBY
    assert c.apply({"command": "set_mode", "mode": "auto"}).accepted
    assert m.evaluate(clock.now(), safe=False, plan_reason=None).mode is Mode.AUTO


def test_bad_commands_are_refused_with_every_reason():
    clock, m, replans = ManualClock(T0), machine(), []
    c = commands(clock, m, replans)
    r = c.apply({"command": "manual_setpoint", "battery_kw": "x", "ttl_s": -1})
    assert not r.accepted and "battery_kw" in r.reason and "ttl_s" in r.reason
    assert not c.apply({"command": "set_mode", "mode": "safe"}).accepted
    assert not c.apply({"command": "launch"}).accepted
    r = c.apply(ManualSetpoint(battery_kw=450, ttl_s=60))
    assert not r.accepted and "PCS" in r.reason
    assert not c.apply({"command": "soc_reserve", "soc_pct": 99}).accepted
    assert not c.apply({"command": "set_mode", "mode": "auto", "ttl_s": 10 * 86400}).accepted
    assert m.request is None


def test_reserve_and_replan():
    clock, m, replans = ManualClock(T0), machine(), []
    c = commands(clock, m, replans)
    assert c.apply({"command": "soc_reserve", "soc_pct": 40, "ttl_s": 100}).accepted
    assert c.reserve_pct(clock.now()) == 40
    clock.advance(100)
    assert c.reserve_pct(clock.now()) is None
    assert c.apply({"command": "replan"}).accepted
    assert replans == [T0 + timedelta(seconds=160)]


def test_parse_command_round_trips_json():
    cmd = parse_command({"command": "soc_reserve", "soc_pct": 30, "ttl_s": 5})
    assert parse_command(cmd.model_dump()) == cmd


# --- the bus and systemd notification (the controller's plumbing) ---------------------------------

async def test_bus_fans_out_by_kind_and_drops_oldest_when_full():
    from controller.bus import ALARM, PLAN, STATE, Bus

    bus = Bus(maxsize=3)
    states, everything = bus.subscribe([STATE]), bus.subscribe()
    for i in range(5):
        bus.publish(STATE, {"n": i})
    bus.publish(ALARM, {"code": "x"})
    assert [states.get_nowait().payload["n"] for _ in range(3)] == [2, 3, 4]
    assert states.get_nowait() is None and states.dropped == 2
    assert [m.kind for m in (everything.get_nowait() for _ in range(3))] == [STATE, STATE, ALARM]
    assert everything.dropped == 3 and bus.dropped == 5
    assert bus.latest(STATE).payload == {"n": 4} and bus.latest(PLAN) is None
    everything.close()
    bus.publish(PLAN, {})
    assert everything.pending() == 0
    assert states.pending() == 0  # not a subscriber of plans
    bus.publish(STATE, {"n": 5})
    assert (await states.get()).payload == {"n": 5}


def test_sdnotify_sends_ready_and_watchdog(tmp_path):
    import socket

    from controller.sdnotify import SdNotify

    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    try:
        notify = SdNotify(path)
        assert notify.ready("up") and notify.watchdog() and notify.stopping()
        received = [server.recv(256).decode() for _ in range(3)]
        notify.close()
    finally:
        server.close()
    assert received == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1"]
    assert not SdNotify("").enabled and not SdNotify("").watchdog()
