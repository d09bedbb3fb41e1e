"""State registers and alarm words by name: a profile's ``states``/``bits`` (SunSpec points: the model's own
symbols), what ``ems devices read`` prints, and the battery's ``unit_out`` reason; over real Modbus on loopback."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from pydantic import ValidationError

from controller.groups import BatteryGroup
from drivers.config import load_devices
from drivers.device import open_devices
from drivers.profile import Point
from drivers.simulated.site import SimulatedSite
from drivers.transport import ConnectionPool
from ems.cli import main
from optimizer.site import BatteryUnit
from tests.sim_peers import EXAMPLE_SITE, free_port

STATE = Point(address=0, states={0x0200: "on-grid", 0x0201: "power-limited"})
ALARM = Point(address=0, type="s16", bits={0: "COMM", 3: "OVER_TEMP"})


@pytest.mark.parametrize(("point", "value", "meaning"), [
    (STATE, 0x0201, "power-limited"),
    (STATE, 513.0, "power-limited"),                 # a decoded value is a float
    (STATE, 9, "unknown state 9 (0x0009)"),
    (STATE, 0.5, ""),                                # not an integer: no name
    (ALARM, 0, "none"),
    (ALARM, 0b1001, "COMM, OVER_TEMP"),
    (ALARM, 0b100, "bit 2"),                          # a bit the profile does not name
    (ALARM, -32768, "bit 15"),                        # an s16 register with its top bit set
    (Point(address=0), 4, ""),                        # a point with no names
])
def test_a_value_is_named_by_its_states_or_bits(point, value, meaning):
    assert point.meaning(value) == meaning


@pytest.mark.parametrize(("fields", "says"), [
    ({"type": "f32", "states": {1: "x"}}, "an unscaled integer point only"),
    ({"scale": 0.1, "bits": {0: "x"}}, "an unscaled integer point only"),
    ({"states": {1: "x"}, "bits": {0: "y"}}, "not both"),
    ({"bits": {16: "x"}}, "0 … 15"),
])
def test_names_that_cannot_apply_are_refused(fields, says):
    with pytest.raises(ValidationError, match=says):
        Point(address=0, **fields)


async def served(device, condition, point="battery_alarm"):
    """The device's readings once ``condition(point)`` holds (the fault applies at the next plant step)."""
    async with asyncio.timeout(5):
        while not condition((readings := await device.poll())[point].value):
            await asyncio.sleep(0.05)
    return readings


async def test_sunspec_states_and_alarm_bits_come_from_the_model_and_name_a_faulted_unit(tmp_path, capsys):
    """The simulated SunSpec inverter answers St = 4 (MPPT) at noon; the battery's one Evt1 register serves
    OVER_TEMP_ALARM (bit 1) with OVER_TEMP_WARNING (bit 2), read as the two points battery_alarm and battery_warning
    (their masks), then UNDER_SOC_MIN_ALARM (bit 13, set in the register by hand: in neither mask, and kept as the
    two points are served) with UNDER_TEMP_WARNING (bit 4): no alarm, a warning that leaves the unit in."""
    data = yaml.safe_load(EXAMPLE_SITE.read_text())
    for device in data["devices"]:
        device["endpoint"]["port"] = free_port()
    data["simulation"]["start"] = "2026-05-04T12:00:00+07:00"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    site = SimulatedSite.from_file(path, speed=1)
    await site.start()
    pool = ConnectionPool()
    try:
        configs = [d for d in load_devices(path) if d.name in ("pv-inverter", "battery")]
        inverter, battery = open_devices(configs, site.clock, pool, path.parent)
        state = (await inverter.poll())["pv_state"]
        site.faults.out_of_range("battery", "battery_alarm", 1 << 1)
        site.faults.out_of_range("battery", "battery_warning", 1 << 2)
        faulted = await served(battery, lambda alarm: alarm != 0)
        image = site.images["battery"]
        evt1 = image.profile.points["battery_alarm"]
        site.faults.out_of_range("battery", "battery_alarm", None)
        site.faults.out_of_range("battery", "battery_warning", 1 << 4)
        image.tables[evt1.function].put(evt1.address, [0, 1 << 13])
        normal = await served(battery, lambda warning: warning == 1 << 4, "battery_warning")
        raw = image.tables[evt1.function].get(evt1.address, 2)
        assert await asyncio.to_thread(main, ["devices", "read", "--config", str(path), "--device", "pv-inverter"]) == 0
    finally:
        pool.close()
        await site.stop()
    assert (state.value, state.meaning) == (4, "MPPT")
    row = next(line for line in capsys.readouterr().out.splitlines() if " pv_state " in line)
    assert row.split()[2:] == ["4", "ok", "MPPT"]                 # ems devices read names the state
    assert (faulted["battery_alarm"].value, faulted["battery_alarm"].meaning) == (2, "OVER_TEMP_ALARM")
    assert (faulted["battery_warning"].value, faulted["battery_warning"].meaning) == (4, "OVER_TEMP_WARNING")
    assert (normal["battery_alarm"].value, normal["battery_alarm"].meaning) == (0, "none")
    assert (normal["battery_warning"].value, normal["battery_warning"].meaning) == (16, "UNDER_TEMP_WARNING")
    assert raw == [0, (1 << 13) | (1 << 4)]   # each point set its own bits only
    group = BatteryGroup({"battery": BatteryUnit(capacity_kwh=1000, max_charge_kw=500, max_discharge_kw=500)})
    group.observe({"battery": faulted}, 0.0)
    assert "faulted (alarm word 2: OVER_TEMP_ALARM)" in group.alarms()["unit_out:battery"]
    assert group.alarms()["unit_warning:battery"] == \
        "battery's BMS warns (warning word 4: OVER_TEMP_WARNING); it stays in the group"
    group.observe({"battery": normal}, 1.0)
    # an empty battery's SOC alarm leaves it in; its warning is shown
    assert set(group.alarms()) == {"unit_warning:battery"} and group.healthy
