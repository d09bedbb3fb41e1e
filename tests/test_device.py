"""ModbusDevice against real pymodbus TCP servers on loopback: polling, faults, back-off, writes, heartbeat."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymodbus.simulator import SimAction, SimDevice

from drivers.config import DeviceConfig
from drivers.device import ModbusDevice, plan_blocks
from drivers.profile import Function, Profile, load_profile, parse_profile
from drivers.readings import Quality
from drivers.transport import ConnectionPool
from ems.clock import ManualClock
from tests.modbus_peers import free_port, modbus_peer, profile_image, sim_device

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)

HYBRID = parse_profile({
    "name": "test-hybrid",
    "roles": ["meter", "battery"],
    "word_order": "little",
    "max_gap": 2,
    "points": {
        "grid_kw": {"function": "input", "address": 100, "type": "s32", "scale": 0.001, "unit": "kW",
                    "invert": True, "plausible": {"min": -2000, "max": 2000}},
        "frequency_hz": {"function": "input", "address": 102, "type": "u16", "scale": 0.01, "unit": "Hz"},
        "voltage_l1_v": {"function": "input", "address": 105, "type": "u16", "scale_factor_register": 106,
                         "unit": "V"},
        "soc_pct": {"function": "input", "address": 200, "type": "u16", "scale": 0.1, "unit": "%",
                    "plausible": {"min": 0, "max": 100}},
        "battery_kw": {"function": "input", "address": 201, "type": "s16", "scale": 0.01, "unit": "kW"},
        "model_name": {"function": "input", "address": 300, "type": "string", "length": 4, "block": "info"},
        "ems_mode": {"address": 500, "type": "u16", "write": {"min": 0, "max": 3}},
        "battery_cmd": {"address": 501, "type": "u16", "write": {"min": 0, "max": 255}},
        "battery_setpoint_kw": {"address": 502, "type": "u16", "scale": 0.01, "unit": "kW",
                                "write": {"min": -5, "max": 5, "rewrite_s": 60,
                                          "direction": {"point": "battery_cmd", "positive": 0xBB,
                                                        "negative": 0xAA, "zero": 0xCC}}},
        "limit_pct": {"address": 503, "type": "u16", "unit": "%", "write": {"min": 0, "max": 100}},
    },
    "heartbeat": {"address": 510, "period_s": 10},
    "remote_control": {"enter": [{"point": "ems_mode", "value": 2}],
                       "leave": [{"point": "battery_setpoint_kw", "value": 0}, {"point": "ems_mode", "value": 0}]},
}, "test-hybrid.yaml")

VALUES = {"grid_kw": -12.345, "frequency_hz": 50.02, "voltage_l1_v": 231.4, "soc_pct": 55.5, "battery_kw": -3.2,
          "model_name": "HYB10", "ems_mode": 0, "battery_cmd": 0xCC, "battery_setpoint_kw": 0, "limit_pct": 100}


def config(port: int, name: str = "dev", unit_id: int = 1, role: str = "meter", **kw: object) -> DeviceConfig:
    return DeviceConfig.model_validate({
        "name": name, "role": role, "profile": "test-hybrid", "endpoint": {"host": "127.0.0.1", "port": port},
        "unit_id": unit_id, "timeout_s": 0.3, "retries": 0, **kw})


def hybrid_device(unit_id: int = 1, values: dict | None = None, action: SimAction | None = None) -> SimDevice:
    holding, inputs = profile_image(HYBRID, {**VALUES, **(values or {})}, sf={106: -1})
    return sim_device(unit_id, holding, inputs, action)


def make(pool: ConnectionPool, cfg: DeviceConfig, clock: ManualClock, profile: Profile = HYBRID) -> ModbusDevice:
    return ModbusDevice(cfg, profile, pool.connection(cfg), clock)


def test_blocks_merge_contiguous_points_and_respect_limits() -> None:
    items = [("a", Function.INPUT, 0, 2, None), ("b", Function.INPUT, 2, 1, None), ("c", Function.INPUT, 5, 1, None),
             ("d", Function.HOLDING, 3, 1, None), ("e", Function.INPUT, 6, 2, "x")]
    blocks = plan_blocks(items, max_registers=100, max_gap=0)
    assert [(b.function, b.address, b.count) for b in blocks] == [
        (Function.HOLDING, 3, 1), (Function.INPUT, 0, 3), (Function.INPUT, 5, 1), (Function.INPUT, 6, 2)]
    assert [(b.address, b.count) for b in plan_blocks(items[:3], 100, max_gap=2)] == [(0, 6)]
    assert [(b.address, b.count) for b in plan_blocks(items[:3], 3, max_gap=2)] == [(0, 3), (5, 1)]


async def test_poll_reads_scaled_signed_values_in_few_requests() -> None:
    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device()]) as peer:
        pool = ConnectionPool()
        meter = make(pool, config(peer.port), clock)
        readings = await meter.poll()
        pool.close()
    assert readings["grid_kw"].value == pytest.approx(-12.345)  # held inverted on the device, decoded back
    assert readings["frequency_hz"].value == pytest.approx(50.02)
    assert readings["voltage_l1_v"].value == pytest.approx(231.4)  # SF register -1
    assert readings["model_name"].value == "HYB10"
    assert "soc_pct" not in readings  # battery points belong to the battery role
    assert all(r.quality is Quality.OK and r.timestamp == T0 for r in readings.values())
    assert readings["grid_kw"].unit == "kW"
    # grid+frequency and voltage+SF were planned as one read (max_gap 2); this server refuses reads over
    # unused registers, so that read was split (1 refused + 2) and stays split; holding writables in one
    # read (gap filled by 502), the string apart
    assert len(meter.blocks) == 4 and pool.connection(config(peer.port)).requests == 5


async def test_sentinel_is_missing_and_out_of_range_is_implausible() -> None:
    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device(values={"soc_pct": None})]) as peer:
        pool = ConnectionPool()
        battery = make(pool, config(peer.port, role="battery"), clock)
        first = await battery.poll()
        await peer.set_point(HYBRID, "soc_pct", 120.0)
        second = await battery.poll()
        pool.close()
    assert first["soc_pct"].value is None and first["soc_pct"].quality is Quality.MISSING
    assert "not implemented" in first["soc_pct"].detail
    assert second["soc_pct"].value is None and second["soc_pct"].quality is Quality.IMPLAUSIBLE
    assert second["battery_kw"].value == pytest.approx(-3.2)


async def test_offline_is_missing_then_recovers_after_backoff(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(T0)
    port = free_port()
    pool = ConnectionPool()
    meter = make(pool, config(port, backoff_initial_s=2, backoff_max_s=8), clock)
    async with modbus_peer([hybrid_device()], port=port) as peer:
        assert (await meter.poll())["grid_kw"].ok
        await peer.stop()
        with caplog.at_level(logging.WARNING, logger="drivers.device"):
            down = await meter.poll()
            assert all(r.quality is Quality.MISSING and r.value is None for r in down.values())
            assert meter.online is False
            skipped = await meter.poll()  # inside the back-off: no request at all
            assert "next attempt" in skipped["grid_kw"].detail
            for _ in range(3):  # back-off doubles 2, 4, 8 and stays capped at 8
                clock.advance(8)
                await meter.poll()
            await peer.start()
            clock.advance(8)
            up = await meter.poll()
        assert up["grid_kw"].ok and meter.online is True
        latest = meter.latest()
        assert latest["grid_kw"].ok
        clock.advance(6)  # max_age_s is 5
        assert meter.latest()["grid_kw"].quality is Quality.STALE
    pool.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1  # logged on the transition only
    assert sum("recovered" in m for m in messages) == 1


async def test_backoff_delay_doubles_and_is_capped() -> None:
    clock = ManualClock(T0)
    pool = ConnectionPool()
    meter = make(pool, config(free_port(), backoff_initial_s=1, backoff_max_s=4), clock)
    waits = []
    for _ in range(5):
        await meter.poll()
        detail = (await meter.poll())["grid_kw"].detail
        waits.append(float(detail.split("next attempt in ")[1].split(" s")[0]))
        clock.advance(waits[-1])
    assert waits == [1, 2, 4, 4, 4]
    pool.close()


async def test_first_connect_fails_then_server_appears() -> None:
    clock = ManualClock(T0)
    port = free_port()
    pool = ConnectionPool()
    meter = make(pool, config(port), clock)
    assert (await meter.poll())["grid_kw"].quality is Quality.MISSING
    async with modbus_peer([hybrid_device()], port=port):
        clock.advance(60)
        assert (await meter.poll())["grid_kw"].value == pytest.approx(-12.345)
    pool.close()


async def test_slow_server_times_out_within_bound() -> None:
    async def slow(*_args: object) -> None:
        await asyncio.sleep(5)

    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device(action=slow)]) as peer:
        pool = ConnectionPool()
        cfg = config(peer.port, timeout_s=0.3, retries=1)
        meter = make(pool, cfg, clock)
        start = time.monotonic()
        readings = await meter.poll()
        elapsed = time.monotonic() - start
        pool.close()
    assert all(r.quality is Quality.MISSING for r in readings.values())
    assert elapsed < 3 * cfg.timeout_s * (cfg.retries + 1)


async def test_dead_device_does_not_delay_the_others() -> None:
    async def black_hole(*_args: object) -> None:
        await asyncio.sleep(30)

    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device()]) as live, modbus_peer([hybrid_device(action=black_hole)]) as dead:
        pool = ConnectionPool()
        good = make(pool, config(live.port, name="good"), clock)
        bad = make(pool, config(dead.port, name="bad", timeout_s=1.0), clock)
        tasks = {asyncio.create_task(good.poll()): "good", asyncio.create_task(bad.poll()): "bad"}
        order = []
        for next_done in asyncio.as_completed(list(tasks)):
            readings = await next_done
            order.append("good" if readings["grid_kw"].ok else "bad")
        pool.close()
    assert order == ["good", "bad"]
    assert bad.online is False and good.online is True


async def test_two_unit_ids_share_one_connection() -> None:
    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device(1), hybrid_device(2, values={"grid_kw": 7.5})]) as peer:
        pool = ConnectionPool()
        one = make(pool, config(peer.port, name="one", unit_id=1), clock)
        two = make(pool, config(peer.port, name="two", unit_id=2), clock)
        r1, r2 = await asyncio.gather(one.poll(), two.poll())
        assert len(pool) == 1 and one.connection is two.connection
        pool.close()
    assert r1["grid_kw"].value == pytest.approx(-12.345)
    assert r2["grid_kw"].value == pytest.approx(7.5)


async def test_write_clamps_verifies_and_skips_unchanged() -> None:
    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device()]) as peer:
        pool = ConnectionPool()
        battery = make(pool, config(peer.port, role="battery"), clock)
        conn = battery.connection
        result = await battery.write("limit_pct", 150)
        assert result.ok and result.sent and result.verified and result.clamped and result.value == 100
        assert "clamped" in result.detail
        assert await peer.get_registers(1, Function.HOLDING, 503, 1) == [100]
        before = conn.requests
        again = await battery.write("limit_pct", 130)  # clamps to the same value: nothing sent
        assert again.ok and not again.sent and conn.requests == before
        changed = await battery.write("limit_pct", 40)
        assert changed.sent and changed.verified and await peer.get_registers(1, Function.HOLDING, 503, 1) == [40]
        # signed setpoint written as direction command + magnitude; re-sent only after rewrite_s
        charge = await battery.write("battery_setpoint_kw", -2.5)
        assert charge.ok and charge.verified
        assert await peer.get_registers(1, Function.HOLDING, 501, 2) == [0xAA, 250]
        assert not (await battery.write("battery_setpoint_kw", -2.5)).sent
        clock.advance(61)
        assert (await battery.write("battery_setpoint_kw", -2.5)).sent
        assert (await battery.write("battery_setpoint_kw", 9)).value == 5
        assert await peer.get_registers(1, Function.HOLDING, 501, 2) == [0xBB, 500]
        with pytest.raises(KeyError):
            await battery.write("soc_pct", 50)
        pool.close()
    assert battery.write_failures == 0


async def test_deadband_resend_and_a_fresh_start_after_remote_control() -> None:
    """The one write-skip rule (drivers/writes.py) over real Modbus: a change inside the deadband is not sent and
    the device reports the value it holds; a change to 0 always is; an unchanged value is re-sent after
    ``resend_s``; entering remote control forgets what was written."""
    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device()]) as peer:
        pool = ConnectionPool()
        cfg = config(peer.port, role="battery")
        battery = ModbusDevice(cfg, HYBRID, pool.connection(cfg), clock, resend_s=10)
        assert (await battery.write("limit_pct", 40, deadband=2)).sent
        held = await battery.write("limit_pct", 41, deadband=2)
        assert not held.sent and held.value == 40 and battery.last_written("limit_pct") == 40
        assert await peer.get_registers(1, Function.HOLDING, 503, 1) == [40]
        assert (await battery.write("limit_pct", 0, deadband=50)).sent
        assert not (await battery.write("limit_pct", 0)).sent
        clock.advance(10)
        assert (await battery.write("limit_pct", 0)).sent  # re-sent at resend_s
        await battery.enter_remote_control()
        assert battery.last_written("limit_pct") is None
        assert (await battery.write("limit_pct", 0)).sent
        pool.close()


async def test_write_that_does_not_apply_is_reported_and_counted() -> None:
    async def ignore_writes(_fc: int, start: int, address: int, _count: int, registers: list[int],
                            set_values: list[int] | None) -> None:
        if set_values is not None:  # the device acknowledges but keeps its old value
            set_values[:] = [registers[address - start + i] for i in range(len(set_values))]

    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device(action=ignore_writes)]) as peer:
        pool = ConnectionPool()
        battery = make(pool, config(peer.port, role="battery"), clock)
        result = await battery.write("limit_pct", 40)
        retry = await battery.write("limit_pct", 40)  # not remembered as written: tried again
        pool.close()
    assert not result.ok and result.sent and result.verified is False and "read-back" in result.detail
    assert retry.sent and battery.write_failures == 2


async def test_write_to_unreachable_device_fails_cleanly() -> None:
    pool = ConnectionPool()
    battery = make(pool, config(free_port(), role="battery"), ManualClock(T0))
    result = await battery.write("limit_pct", 40)
    assert not result.ok and result.verified is None and "cannot connect" in result.detail
    assert battery.write_failures == 1
    pool.close()


async def test_write_to_a_sunspec_device_never_discovered_says_so() -> None:
    """A SunSpec point has no address until the device answers the model discovery; the write is refused with
    that reason (it said "'battery_setpoint_kw' is not a writable point of profile sunspec-battery", which reads
    as a profile fault; the controller's shutdown logged it for a battery that had never answered)."""
    pool = ConnectionPool()
    battery = make(pool, config(free_port(), role="battery"), ManualClock(T0), load_profile("sunspec-battery"))
    await battery.poll()
    assert battery.online is False
    with pytest.raises(KeyError, match="'battery_setpoint_kw' has no address yet: the device has not answered the "
                                       "SunSpec model discovery"):
        await battery.write("battery_setpoint_kw", 0.0, force=True)
    with pytest.raises(KeyError, match="'soc_pct' is not a writable point of profile sunspec-battery"):
        await battery.write("soc_pct", 50.0)
    pool.close()


async def test_remote_control_sequences_and_heartbeat_counter() -> None:
    clock = ManualClock(T0)
    async with modbus_peer([hybrid_device()]) as peer:
        pool = ConnectionPool()
        battery = make(pool, config(peer.port, role="battery"), clock)
        entered = await battery.enter_remote_control()
        assert [r.point for r in entered] == ["ems_mode"] and all(r.ok for r in entered)
        assert await peer.get_registers(1, Function.HOLDING, 500, 1) == [2]
        beats = []
        for _ in range(4):
            written = await battery.heartbeat()
            beats.append((written, (await peer.get_registers(1, Function.HOLDING, 510, 1))[0]))
            clock.advance(5)
        assert beats == [(True, 0), (False, 0), (True, 1), (False, 1)]
        await battery.write("battery_setpoint_kw", 3)
        left = await battery.leave_remote_control()
        assert [r.point for r in left] == ["battery_setpoint_kw", "ems_mode"] and all(r.sent for r in left)
        assert await peer.get_registers(1, Function.HOLDING, 500, 3) == [0, 0xCC, 0]
        pool.close()


async def test_registers_entering_remote_control_changed_are_restored_when_leaving() -> None:
    clock = ManualClock(T0)
    data = HYBRID.model_dump(mode="json", exclude_none=True)
    data["remote_control"]["enter"] = [{"point": "ems_mode", "value": 2}, {"point": "limit_pct", "value": 50}]
    profile = parse_profile(data, "enter-two.yaml")
    async with modbus_peer([hybrid_device(values={"ems_mode": 1, "limit_pct": 80})]) as peer:
        pool = ConnectionPool()
        battery = make(pool, config(peer.port, role="battery"), clock, profile)
        assert all(r.ok and r.verified for r in await battery.enter_remote_control())  # written and read back
        assert await peer.get_registers(1, Function.HOLDING, 500, 4) == [2, 0xCC, 0, 50]
        assert battery.originals == {"ems_mode": 1, "limit_pct": 80}
        await battery.enter_remote_control()  # again, after an outage: what the device had first is kept
        assert battery.originals == {"ems_mode": 1, "limit_pct": 80}
        left = await battery.leave_remote_control()
        assert [(r.point, r.value) for r in left] == [("battery_setpoint_kw", 0), ("ems_mode", 0), ("limit_pct", 80)]
        assert all(r.ok for r in left) and battery.originals == {}  # the leave sequence's own mode 0 wins
        assert await peer.get_registers(1, Function.HOLDING, 500, 4) == [0, 0xCC, 0, 80]
        pool.close()


def test_role_must_be_served_by_the_profile() -> None:
    with pytest.raises(ValueError, match="does not serve role pv_inverter"):
        make(ConnectionPool(), config(1, role="pv_inverter"), ManualClock(T0))


def test_devices_file_errors_name_file_and_field(tmp_path: Path) -> None:
    from drivers.config import load_devices
    from ems.yamlfile import ConfigError

    path = tmp_path / "site.yaml"
    path.write_text("devices:\n  - {name: a, role: meter, profile: p, endpoint: {host: h}, unit_id: 300}\n"
                    "  - {name: a, role: battery, profile: p, endpoint: {serial_port: /dev/x, parity: X}}\n")
    with pytest.raises(ConfigError) as info:
        load_devices(path)
    fields = {e.field for e in info.value.errors}
    assert info.value.source == str(path)
    assert "devices[0].unit_id" in fields and any(f.startswith("devices[1].endpoint") for f in fields)
    path.write_text("devices:\n  - {name: a, role: meter, profile: p, endpoint: {host: h}}\n"
                    "  - {name: a, role: battery, profile: p, endpoint: {host: h}}\n")
    with pytest.raises(ConfigError, match="'a' is already the name of devices\\[0\\]"):
        load_devices(path)


async def test_cli_read_prints_every_point_and_flags_unreachable(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.cli import _poll_and_print
    from drivers.config import load_devices

    profile_file = tmp_path / "hybrid.yaml"
    profile_file.write_text(json.dumps(HYBRID.model_dump(mode="json", exclude_none=True)))
    async with modbus_peer([hybrid_device()]) as peer:
        site = tmp_path / "site.yaml"
        live, dead = f"{{host: 127.0.0.1, port: {peer.port}}}", f"{{host: 127.0.0.1, port: {free_port()}}}"
        site.write_text("devices:\n"
                        f"  - {{name: meter, role: meter, profile: hybrid.yaml, endpoint: {live}}}\n"
                        f"  - {{name: gone, role: battery, profile: hybrid.yaml, endpoint: {dead}, timeout_s: 0.3}}\n")
        status = await _poll_and_print(load_devices(site), tmp_path)
    out = capsys.readouterr().out
    assert status == 1
    assert re.search(r"meter\s+grid_kw\s+-12\.345\s+kW\s+ok", out)
    assert re.search(r"gone\s+soc_pct\s+%\s+missing", out) and "unreachable: gone" in out


def test_an_unreachable_device_is_said_once_by_us_not_on_every_retry_by_pymodbus(tmp_path: Path) -> None:
    """pymodbus warns "Failed to connect" on each attempt of each unreachable device (three lines every retry for
    the example site while its devices were down); ``ems devices read`` says it once per device, with the address,
    in its own output, and not also as the controller's "retrying with back-off" warning (it does not retry). The
    driver's warning comes back from ``-v``, pymodbus from ``-vv``."""
    import subprocess
    import sys

    site = tmp_path / "site.yaml"
    site.write_text(f"devices:\n  - {{name: m, role: meter, profile: sunspec-meter, timeout_s: 0.3,"
                    f" endpoint: {{host: 127.0.0.1, port: {free_port()}}}}}\n")

    def run(*flags: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "ems.cli", *flags, "devices", "read", "--config", str(site)],
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 1, done.stderr
        return done

    quiet = run()
    assert "unreachable: m (cannot connect to tcp://127.0.0.1:" in quiet.stdout
    assert "retrying" not in quiet.stderr and "pymodbus" not in quiet.stderr, quiet.stderr
    told = run("-v").stderr
    assert "device m unreachable (cannot connect to tcp://127.0.0.1:" in told and "pymodbus" not in told
    assert "pymodbus" in run("-vv").stderr


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ems.cli import main

    assert main(["devices", "read", "--config", str(tmp_path / "missing.yaml")]) == 2
    site = tmp_path / "site.yaml"
    site.write_text(f"devices:\n  - {{name: m, role: meter, profile: sunspec-meter, timeout_s: 0.3,"
                    f" endpoint: {{host: 127.0.0.1, port: {free_port()}}}}}\n")
    assert main(["devices", "read", "--config", str(site)]) == 1
    capsys.readouterr()
    assert main(["devices", "read", "--config", str(site), "--device", "nope"]) == 2
    assert "no device named nope; devices: m" in capsys.readouterr().err


async def test_an_rs485_port_that_is_not_there_is_named_as_the_reason(tmp_path):
    """pymodbus only logs why a serial port did not open; the device's error (``ems devices read``, the controller's
    alarm) says it: the adapter unplugged or renamed at boot."""
    port = tmp_path / "ttyUSB9"
    rtu = DeviceConfig.model_validate({
        "name": "meter-rtu", "role": "meter", "profile": "test-hybrid", "unit_id": 1, "timeout_s": 0.3, "retries": 0,
        "endpoint": {"serial_port": str(port), "baudrate": 9600}})
    pool = ConnectionPool()
    device = ModbusDevice(rtu, HYBRID, pool.connection(rtu), ManualClock(T0))
    await device.poll()
    pool.close()
    assert device.online is False
    assert device.last_error == (f"cannot connect to rtu://{port}: {port} is not there; adapter unplugged, or "
                                 "renamed at boot (/dev/serial/by-id/ names do not change)")
    assert rtu.endpoint.port_problem() != "" and port.touch() is None and rtu.endpoint.port_problem() == ""
    url = DeviceConfig.model_validate({**rtu.model_dump(), "endpoint": {"serial_port": "socket://127.0.0.1:1"}})
    assert url.endpoint.port_problem() == ""    # a pyserial URL is not a file
