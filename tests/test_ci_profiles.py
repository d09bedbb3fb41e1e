"""C&I device profiles (Huawei SUN2000 and SmartLogger, Sungrow SG…CX, Schneider PM5000, SMA Sunny Island).

Known answers worked out by hand from the vendor register layouts (word order, sign, gain, sentinels),
the citation rules every C&I profile keeps, and each profile served on a real Modbus TCP server built
from it: polled back, remote control entered, the writable setpoint written and read back from the
server's registers, remote control left.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from drivers.config import DeviceConfig
from drivers.device import ModbusDevice
from drivers.profile import PROFILE_DIR, decode, load_profile
from drivers.readings import Quality
from drivers.roles import CANONICAL_POINTS
from drivers.transport import ConnectionPool
from ems.clock import ManualClock
from tests.modbus_peers import ModbusPeer, modbus_peer, profile_image, sim_device

CI_PROFILES = ["huawei-sun2000", "huawei-smartlogger3000", "sungrow-sg-cx", "schneider-pm5000", "sma-sunny-island"]
UNIT_ID = 7


# ------------------------------------------------------------------------------------ known answers

@pytest.mark.parametrize(("profile", "point", "registers", "value"), [
    # Huawei: big-endian words, I32 W, gain 100 energy, I16 gain 10 derating
    ("huawei-sun2000", "pv_kw", [0x0001, 0x86A0], 100.0),                  # 100 000 W
    ("huawei-sun2000", "pv_kw", [0xFFFF, 0xFE0C], 0.0),                    # −500 W at night: raised to the floor
    ("huawei-sun2000", "pv_rated_kw", [0x0001, 0x86A0], 100.0),
    ("huawei-sun2000", "pv_energy_kwh", [0x0000, 0x3039], 123.45),          # 12 345 / 100
    ("huawei-sun2000", "pv_limit_pct", [0x01F4], 50.0),                    # 500 / 10
    ("huawei-sun2000", "grid_frequency_hz", [0x1389], 50.01),              # 5001 / 100
    ("huawei-smartlogger3000", "pv_kw", [0x000F, 0x4240], 1000.0),          # 1 000 000 W
    ("huawei-smartlogger3000", "pv_energy_kwh", [0, 0, 0x0001, 0x86A0], 1000.0),   # 100 000 / 100
    ("huawei-smartlogger3000", "pv_limit_pct", [0x03E8], 100.0),
    # Sungrow: 32-bit values word-swapped (low word first), 0.1 kW / 0.1 % / 0.1 Hz
    ("sungrow-sg-cx", "pv_kw", [0x86A0, 0x0001], 100.0),
    ("sungrow-sg-cx", "pv_energy_kwh", [0xE240, 0x0001], 123456),
    ("sungrow-sg-cx", "pv_rated_kw", [0x044C], 110.0),
    ("sungrow-sg-cx", "pv_limit_pct", [0x0320], 80.0),
    ("sungrow-sg-cx", "grid_frequency_hz", [0x01F4], 50.0),
    # Schneider: Float32 kW / V / Hz big-endian, INT64 Wh counters, + delivered = import
    ("schneider-pm5000", "grid_kw", [0x42C8, 0x0000], 100.0),
    ("schneider-pm5000", "grid_kw", [0xC2C8, 0x0000], -100.0),              # received: export
    ("schneider-pm5000", "voltage_l1_v", [0x4366, 0x0000], 230.0),
    ("schneider-pm5000", "import_kwh", [0, 0, 0x0098, 0x9680], 10000.0),    # 10 000 000 Wh
    # SMA: big-endian S32 W, + discharge
    ("sma-sunny-island", "battery_kw", [0xFFFF, 0xF830], -2.0),             # −2000 W: charging
    ("sma-sunny-island", "battery_kw", [0x0000, 0x0BB8], 3.0),
    ("sma-sunny-island", "soc_pct", [0x0000, 0x0037], 55),
    ("sma-sunny-island", "max_charge_kw", [0x0000, 0x1770], 6.0),           # 6000 W allowed
    ("sma-sunny-island", "battery_temperature_c", [0x0000, 0x0113], 27.5),  # 275 / 10
    ("sma-sunny-island", "battery_setpoint_kw", [0xFFFF, 0xF448], -3.0),    # −3000 W: charge
])
def test_decode_known_answers(profile: str, point: str, registers: list[int], value: float) -> None:
    got = decode(load_profile(profile).points[point], registers)
    assert got.quality is Quality.OK, got
    assert got.value == pytest.approx(value)


@pytest.mark.parametrize(("profile", "point", "registers", "quality"), [
    ("huawei-sun2000", "pv_kw", [0x7FFF, 0xFFFF], Quality.MISSING),          # Huawei I32 "invalid"
    ("huawei-sun2000", "pv_limit_pct", [0x7FFF], Quality.MISSING),           # Huawei I16 "invalid"
    ("huawei-sun2000", "pv_kw", [0x0007, 0xA120], Quality.IMPLAUSIBLE),      # 500 000 W from one inverter
    # Huawei I64 "invalid" (2^63 − 1): caught by the plausible range, a float sentinel cannot hold it exactly
    ("huawei-smartlogger3000", "pv_energy_kwh", [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF], Quality.IMPLAUSIBLE),
    ("sungrow-sg-cx", "grid_frequency_hz", [0x1388], Quality.IMPLAUSIBLE),   # 0.01 Hz firmware: 500 Hz
    ("sungrow-sg-cx", "pv_kw", [0xFE0C, 0xFFFF], Quality.IMPLAUSIBLE),       # a negative value in a U32
    ("schneider-pm5000", "grid_kw", [0xFFC0, 0x0000], Quality.MISSING),      # Float32 NaN
    ("schneider-pm5000", "import_kwh", [0x8000, 0, 0, 0], Quality.MISSING),  # INT64 not available
    ("sma-sunny-island", "battery_kw", [0x8000, 0x0000], Quality.MISSING),   # SMA NaN
    ("sma-sunny-island", "soc_pct", [0x0000, 0x0065], Quality.IMPLAUSIBLE),  # 101 %
])
def test_sentinels_and_ranges_are_never_a_number(profile: str, point: str, registers: list[int],
                                                 quality: Quality) -> None:
    got = decode(load_profile(profile).points[point], registers)
    assert got.quality is quality, got
    assert (got.value is None) == (quality is not Quality.OK)


# ------------------------------------------------------------------------------------ citation rules

@pytest.mark.parametrize("name", CI_PROFILES)
def test_every_point_cites_a_source_defined_in_the_header(name: str) -> None:
    """Each note names source tags ([H2], [G3] …) that the file's header defines, and the header says
    whether the profile was checked on hardware; single-source points say so."""
    text = (PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    defined = set(re.findall(r"^#\s+(\[[A-Z]\d\])", header, flags=re.MULTILINE))
    assert defined, "header defines no sources"
    prose = " ".join(line.lstrip("#").strip() for line in header.splitlines())
    assert "Not verified against a device by this project" in prose
    profile = load_profile(name)
    assert profile.sources and profile.models
    for point_name, point in profile.points.items():
        cited = set(re.findall(r"\[[A-Z]\d\]", point.note))
        assert cited, f"{point_name} cites no source"
        assert cited <= defined, f"{point_name} cites {cited - defined}, not defined in the header"
        if len(cited) == 1:
            assert "single source" in point.note, f"{point_name} has one source but does not say so"


@pytest.mark.parametrize("name", CI_PROFILES)
def test_measured_power_points_have_a_plausible_range(name: str) -> None:
    profile = load_profile(name)
    for point_name, point in profile.points.items():
        if point.unit == "kW" and point.write is None:
            assert point.plausible is not None and None not in (point.plausible.min, point.plausible.max), point_name


# ------------------------------------------------------------------------------------ over real Modbus TCP

SAMPLE: dict[str, float] = {
    "grid_kw": -312.5, "grid_l1_kw": -104.0, "grid_l2_kw": -104.25, "grid_l3_kw": -104.25,
    "voltage_l1_v": 231.5, "voltage_l2_v": 229.75, "voltage_l3_v": 230.25, "frequency_hz": 50.0,
    "import_kwh": 1234567.891, "export_kwh": 23456.789,
    "pv_kw": 87.25, "pv_energy_kwh": 345678.0, "pv_state": 0x0200, "pv_rated_kw": 110.0,
    "soc_pct": 64, "battery_kw": -4.5, "battery_voltage_v": 52.31, "battery_temperature_c": 27.5,
    "max_charge_kw": 5.0, "max_discharge_kw": 4.6,
}
SETPOINTS = {"pv_limit_pct": 40.0, "battery_setpoint_kw": -3.0}
# what the vendor documents say the registers must hold under EMS control and after handing it back
UNDER_CONTROL = {"sungrow-sg-cx": {"power_limit_enable": 0xAA}, "sma-sunny-island": {"communication_control": 802}}
HANDED_BACK = {
    "huawei-sun2000": {"pv_limit_pct": 100.0},
    "huawei-smartlogger3000": {"pv_limit_pct": 100.0},
    "sungrow-sg-cx": {"pv_limit_pct": 100.0, "power_limit_enable": 0x55},
    "sma-sunny-island": {"battery_setpoint_kw": 0.0, "communication_control": 803},
}


async def registers_value(peer: ModbusPeer, profile_name: str, point_name: str) -> float | int | str | None:
    """What the server's registers hold for ``point_name``, decoded with the profile."""
    point = load_profile(profile_name).points[point_name]
    assert point.address is not None
    registers = await peer.get_registers(UNIT_ID, point.function, point.address, point.count)
    return decode(point, registers).value


@pytest.mark.parametrize("name", CI_PROFILES)
async def test_served_profile_polls_and_takes_its_setpoint_over_modbus_tcp(name: str) -> None:
    profile = load_profile(name)
    values = {n: v for n, v in SAMPLE.items() if n in profile.points}
    holding, inputs = profile_image(profile, values)
    clock = ManualClock(datetime(2026, 5, 4, 5, 0, tzinfo=UTC))
    async with modbus_peer([sim_device(UNIT_ID, holding, inputs)]) as peer:
        pool = ConnectionPool()
        try:
            (role,) = profile.roles
            config = DeviceConfig.model_validate({"name": name, "role": role, "profile": name, "unit_id": UNIT_ID,
                                                  "timeout_s": 0.5, "endpoint": {"host": "127.0.0.1",
                                                                                 "port": peer.port}})
            device = ModbusDevice(config, profile, pool.connection(config), clock)
            readings = await device.poll()
            for point_name, expected in values.items():
                step = abs(profile.points[point_name].scale)
                assert readings[point_name].ok, (point_name, readings[point_name])
                assert readings[point_name].value == pytest.approx(expected, abs=step / 2 + 1e-6), point_name
                assert readings[point_name].unit == CANONICAL_POINTS[point_name].unit

            if role == "meter":
                assert not any(p.write for p in profile.points.values())
                return
            assert profile.remote_control is not None
            for result in await device.enter_remote_control():
                assert result.ok, result
            for point_name, expected in UNDER_CONTROL.get(name, {}).items():
                assert await registers_value(peer, name, point_name) == pytest.approx(expected), point_name
            (setpoint,) = [p for p in SETPOINTS if p in profile.points]
            result = await device.write(setpoint, SETPOINTS[setpoint])
            assert result.ok and result.sent, result
            assert await registers_value(peer, name, setpoint) == pytest.approx(SETPOINTS[setpoint])
            for result in await device.leave_remote_control():
                assert result.ok, result
            for point_name, expected in HANDED_BACK[name].items():
                assert await registers_value(peer, name, point_name) == pytest.approx(expected), point_name
        finally:
            pool.close()


def test_meter_and_pv_profiles_need_no_remote_control_to_read() -> None:
    """A meter has nothing to write; PV profiles give control back by writing 100 %."""
    assert load_profile("schneider-pm5000").remote_control is None
    for name in ("huawei-sun2000", "huawei-smartlogger3000", "sungrow-sg-cx"):
        leave = load_profile(name).remote_control.leave  # type: ignore[union-attr]
        assert {"point": "pv_limit_pct", "value": 100.0} in [s.model_dump() for s in leave]


async def test_smartlogger_on_unit_0_and_its_inverters_share_one_endpoint() -> None:
    """A SmartLogger answers for the plant on unit id 0 and forwards requests to its inverters by their
    RS485 addresses: one TCP connection serves all three, and the plant limit is written at the logger."""
    logger, inverter = load_profile("huawei-smartlogger3000"), load_profile("huawei-sun2000")
    images = [profile_image(logger, {"pv_kw": 170.5, "pv_energy_kwh": 98765.43, "input_power_kw": 174.0,
                                     "pv_limit_pct": 100.0})]
    images += [profile_image(inverter, {"pv_kw": kw, "pv_rated_kw": 100.0, "pv_limit_pct": 100.0})
               for kw in (85.25, 85.25)]
    clock = ManualClock(datetime(2026, 5, 4, 5, 0, tzinfo=UTC))
    async with modbus_peer([sim_device(unit, *image) for unit, image in enumerate(images)]) as peer:
        pool = ConnectionPool()
        try:
            devices = []
            for unit, profile in enumerate((logger, inverter, inverter)):
                config = DeviceConfig.model_validate({
                    "name": f"pv-{unit}", "role": "pv_inverter", "profile": profile.name, "unit_id": unit,
                    "timeout_s": 0.5, "endpoint": {"host": "127.0.0.1", "port": peer.port}})
                devices.append(ModbusDevice(config, profile, pool.connection(config), clock))
            readings = [await d.poll() for d in devices]
            assert len(pool) == 1
            assert readings[0]["pv_kw"].value == pytest.approx(170.5)
            assert readings[0]["pv_energy_kwh"].value == pytest.approx(98765.43)
            assert [r["pv_kw"].value for r in readings[1:]] == [pytest.approx(85.25)] * 2
            assert (await devices[0].write("pv_limit_pct", 60.0)).ok
            plant = await peer.get_registers(0, logger.points["pv_limit_pct"].function, 40428, 1)
            own = await peer.get_registers(1, inverter.points["pv_limit_pct"].function, 40125, 1)
            assert (plant, own) == ([600], [1000])   # 60.0 % at the logger; the inverter's own derating untouched
        finally:
            pool.close()
