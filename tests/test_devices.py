"""The capability protocols (controller/devices.py), the one write-skip rule (drivers/writes.py) and the fakes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.devices import Device, Readable, RemoteControlled, SetpointWriter, Watchdog
from drivers.device import ModbusDevice
from drivers.profile import load_profile
from drivers.readings import Quality
from drivers.roles import Role
from drivers.transport import ConnectionPool
from drivers.writes import WriteMemory
from ems.clock import ManualClock
from tests.fakes import FakeDevice, FakeSite, device_config

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)


def test_the_modbus_device_and_the_fake_satisfy_every_capability() -> None:
    pool = ConnectionPool()
    cfg = device_config(Role.BATTERY)
    modbus = ModbusDevice(cfg, load_profile("sunspec-battery"), pool.connection(cfg), ManualClock(T0))
    fake = FakeDevice(cfg, ManualClock(T0))
    for device in (modbus, fake):
        for capability in (Readable, SetpointWriter, Watchdog, RemoteControlled, Device):
            assert isinstance(device, capability), (type(device).__name__, capability.__name__)
    assert modbus.reversion_s == 30  # sunspec-battery's remote_control.enter sets setpoint_reversion_s 30
    pool.close()


# Known answers of the rule: last write 100 at t=0, deadband 1, re-send every 10 s.
@pytest.mark.parametrize(("value", "now", "force", "due"), [
    (100.0, 5.0, False, False),   # unchanged, before the re-send period
    (100.5, 5.0, False, False),   # within the deadband
    (101.0, 5.0, False, True),    # a change of exactly the deadband
    (100.0, 10.0, False, True),   # the re-send period has passed
    (100.0, 5.0, True, True),     # forced
    (0.0, 5.0, False, True),      # back to 0: always
])
def test_write_memory_sends_what_is_due(value: float, now: float, force: bool, due: bool) -> None:
    memory = WriteMemory(resend_s=10.0)
    assert memory.due("p", 100.0, 0.0)  # nothing held yet
    memory.record("p", 100.0, 0.0)
    assert memory.due("p", value, now, deadband=1.0, force=force) is due


def test_write_memory_takes_the_shorter_of_its_own_and_the_points_period() -> None:
    memory = WriteMemory(resend_s=10.0)
    memory.record("p", 1.0, 0.0)
    assert not memory.due("p", 1.0, 4.0, period_s=5.0) and memory.due("p", 1.0, 5.0, period_s=5.0)
    forgetful = WriteMemory()
    forgetful.record("p", 0.2, 0.0)
    assert not forgetful.due("p", 0.2, 1e9)  # no period at all: never re-sent unchanged
    forgetful.forget()
    assert forgetful.due("p", 0.2, 1e9) and forgetful.last("p") is None


async def test_fake_records_sends_goes_offline_and_stale() -> None:
    clock = ManualClock(T0)
    site = FakeSite(clock, resend_s=10.0, max_age_s=5.0)
    battery = site.battery
    assert (await battery.write("battery_setpoint_kw", -100.0, deadband=1.0)).sent
    skipped = await battery.write("battery_setpoint_kw", -100.4, deadband=1.0)
    assert not skipped.sent and skipped.value == -100.0 and battery.last_written("battery_setpoint_kw") == -100.0
    clock.advance(10)
    assert (await battery.write("battery_setpoint_kw", -100.4, deadband=1.0)).sent  # re-sent at the heartbeat
    assert battery.sent("battery_setpoint_kw") == [-100.0, -100.4]
    with pytest.raises(KeyError):
        await battery.write("pv_limit_pct", 50.0)
    battery.go_offline()
    readings = await battery.poll()
    assert battery.online is False and readings["soc_pct"].quality is Quality.MISSING
    assert battery.last_written("battery_setpoint_kw") is None  # a lost device holds nothing of ours
    battery.come_back()
    site.meter.freeze()
    clock.advance(6)
    assert (await site.meter.poll())["grid_kw"].aged(clock.now(), 5.0).quality is Quality.STALE


async def test_a_following_battery_stays_within_its_bms_limits_unless_it_ignores_setpoints() -> None:
    clock = ManualClock(T0)
    battery = FakeDevice.for_role(Role.BATTERY, clock, battery_kw=0.0, max_charge_kw=200.0,
                                  max_discharge_kw=500.0, follow=True)
    await battery.write("battery_setpoint_kw", -300.0)
    assert (await battery.poll())["battery_kw"].value == -200.0  # the BMS allows 200 kW of charge
    battery.ignore_setpoints = True
    await battery.write("battery_setpoint_kw", 100.0)
    assert (await battery.poll())["battery_kw"].value == -200.0
    pv = FakeDevice.for_role(Role.PV_INVERTER, clock, pv_kw=0.0, follow=True, available_kw=600.0, rated_kw=900.0)
    await pv.write("pv_limit_pct", 50.0)
    assert (await pv.poll())["pv_kw"].value == 450.0  # min(600, 50 % × 900)
