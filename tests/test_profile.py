"""Profile schema validation, register codec known answers and round trips, shipped-profile smoke tests."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.profile import (
    DataType,
    Decoded,
    Point,
    WordOrder,
    combine,
    decode,
    encode,
    encode_sentinel,
    load_profile,
    merge_bits,
    parse_profile,
    shipped_profiles,
    split,
)
from drivers.readings import Quality
from ems.yamlfile import ConfigError

MINIMAL = {"roles": ["meter"], "points": {"grid_kw": {"address": 0, "type": "s16", "unit": "kW"}}}


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad-profile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ validation

def test_minimal_profile_takes_name_from_file_and_defaults() -> None:
    profile = parse_profile(MINIMAL, "somewhere/acme-meter.yaml")
    assert profile.name == "acme-meter"
    assert profile.points["grid_kw"].word_order is WordOrder.BIG
    assert profile.points["grid_kw"].count == 1


@pytest.mark.parametrize(("yaml_text", "field", "words"), [
    ("roles: [meter]\npoints:\n  grid_kw: {address: 0, type: s16, unit: W}\n", "points.grid_kw.unit", "kW"),
    ("roles: [meter]\npoints:\n  grid_kw: {address: 0, type: s17, unit: kW}\n", "points.grid_kw.type", "u16"),
    ("roles: [meter]\npoints:\n  x: {type: u16}\n", "points.x", "exactly one of"),
    ("roles: [meter]\npoints:\n  x: {address: 1, type: string}\n", "points.x", "length"),
    ("roles: [meter]\npoints:\n  x: {address: 1, scale: 0}\n", "points.x", "scale"),
    ("roles: [meter]\npoints:\n  x: {address: 1, adress: 2}\n", "points.x.adress",
     "unknown field; did you mean address?"),
    ("roles: [meter]\npoints:\n  x: {address: 70000}\n", "points.x.address", "65535"),
    ("roles: [meter]\npoints:\n  soc_pct: {address: 1, unit: '%'}\n", "points.soc_pct", "battery"),
    ("roles: [battery]\npoints:\n  x: {address: 1, function: input, write: {max: 1}}\n", "points.x", "input"),
    ("roles: [meter]\npoints:\n  x: {address: 1}\nremote_control: {enter: [{point: y, value: 1}]}\n",
     "remote_control.enter[0].point", "writable"),
    ("roles: [grid]\npoints:\n  x: {address: 1}\n", "roles[0]", "meter"),
    ("roles: [meter]\npoints: {x: {address: 1}\nnope", "line", "expected"),
])
def test_bad_profile_names_file_and_field(tmp_path: Path, yaml_text: str, field: str, words: str) -> None:
    path = write_yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    err = info.value
    assert err.source == str(path)
    assert any(e.field.startswith(field) and words in e.message for e in err.errors), err


def test_unknown_shipped_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no-such-profile"):
        load_profile("no-such-profile")


# ------------------------------------------------------------------------------------ codec known answers

def pt(**kw: object) -> Point:
    return Point(address=0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("order", "current", "expected"), [
    (WordOrder.BIG, [0x0001, 0x2002], [0x0001, 0x2014]),     # bits 1 and 4 set, bit 13 and bit 16 kept
    (WordOrder.LITTLE, [0x2002, 0x0001], [0x2014, 0x0001]),  # the same with the low word first
    (WordOrder.BIG, [0xFFFF, 0xFFFF], [0x0000, 0x0014]),     # "not implemented" counts as 0
])
def test_a_masked_bit_field_sets_only_its_own_bits(order, current, expected):
    """Mask 0x0000_00FF over a register holding bits 1, 13 and 16: writing 0x14 (bits 2 and 4) clears bit 1 and
    sets 2 and 4; 13 and 16 are another point's. Decoding the result gives back 0x14."""
    point = pt(type="u32", mask=0xFF, word_order=order)
    merged = merge_bits(point, current, encode(point, 0x14))
    assert merged == expected
    assert decode(point, merged).value == 0x14


@pytest.mark.parametrize(("point", "registers", "value"), [
    (pt(type="u16"), [0x1234], 0x1234),
    (pt(type="s16"), [0xFFFE], -2),
    (pt(type="s16", scale=0.1, unit="V"), [2301], 230.1),
    (pt(type="u16", scale=0.01), [5002], 50.02),
    (pt(type="s16", scale=10), [12], 120),
    (pt(type="s32", scale=0.001, unit="kW"), [0xFFFF, 0xFC18], -1.0),                     # ABCD
    (pt(type="s32", scale=0.001, word_order="little"), [0xFC18, 0xFFFF], -1.0),           # CDAB
    (pt(type="u32", word_order="big"), [0x0001, 0x0002], 0x00010002),
    (pt(type="u32", word_order="little"), [0x0001, 0x0002], 0x00020001),
    (pt(type="u64"), [0x0123, 0x4567, 0x89AB, 0xCDEF], 0x0123456789ABCDEF),
    (pt(type="u64", word_order="little"), [0xCDEF, 0x89AB, 0x4567, 0x0123], 0x0123456789ABCDEF),
    (pt(type="s64"), [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    (pt(type="f32"), [0x4048, 0xF5C3], struct.unpack(">f", bytes.fromhex("4048F5C3"))[0]),
    (pt(type="f32", word_order="little"), [0xF5C3, 0x4048], struct.unpack(">f", bytes.fromhex("4048F5C3"))[0]),
    (pt(type="f64"), [0x3FF8, 0, 0, 0], 1.5),
    (pt(type="s16", invert=True, scale=0.001, unit="kW"), [1500], -1.5),
    (pt(type="u16", offset=-40), [65], 25),
    (pt(type="s16", scale=0.1, offset=-273.1), [2981], 25.0),
    (pt(type="string", length=3), [0x5348, 0x3130, 0x5254], "SH10RT"),
    (pt(type="string", length=4), [0x534D, 0x4100, 0x0000, 0x0000], "SMA"),
    (pt(type="string", length=2, word_order="little"), [0x5348, 0x3130], "SH10"),  # text ignores word order
])
def test_decode_known_answers(point: Point, registers: list[int], value: float | str) -> None:
    got = decode(point, registers)
    assert got.quality is Quality.OK
    assert got.value == (pytest.approx(value) if isinstance(value, float) else value)
    assert encode(point, got.value) == registers  # type: ignore[arg-type]


def test_mask_selects_bits_of_an_alarm_word() -> None:
    assert decode(pt(type="u16", mask=0x00F0), [0x1234]).value == 0x30


def test_integer_results_stay_exact_ints() -> None:
    got = decode(pt(type="u64"), [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE])
    assert got.value == 0xFFFFFFFFFFFFFFFE and isinstance(got.value, int)
    assert decode(pt(type="s16", scale=0.1), [3]).value == 0.3  # divided by 10, not multiplied by 0.1


@pytest.mark.parametrize(("point", "sf", "registers", "value"), [
    (pt(type="s16", scale_factor_register=9, scale=0.001, unit="kW"), 1, [-1234 & 0xFFFF], -12.34),
    (pt(type="u16", scale_factor_register=9, unit="V"), -1, [2301], 230.1),
    (pt(type="u32", scale_factor_register=9, unit="kWh", scale=0.001), 3, [0, 5], 5.0),
])
def test_scale_factor_register(point: Point, sf: int, registers: list[int], value: float) -> None:
    assert decode(point, registers, sf).value == pytest.approx(value)
    assert encode(point, value, sf) == registers


@pytest.mark.parametrize(("sf", "detail"), [(None, "scale factor"), (-0x8000, "scale factor"), (11, "out of range")])
def test_missing_or_bad_scale_factor_is_missing(sf: int | None, detail: str) -> None:
    got = decode(pt(type="s16", scale_factor_register=9), [100], sf)
    assert got.value is None and got.quality is Quality.MISSING and detail in got.detail


@pytest.mark.parametrize(("type_", "registers"), [
    ("u16", [0xFFFF]), ("s16", [0x8000]), ("u32", [0xFFFF, 0xFFFF]), ("s32", [0x8000, 0]),
    ("u64", [0xFFFF] * 4), ("s64", [0x8000, 0, 0, 0]), ("f32", [0x7FC0, 0]), ("f64", [0x7FF8, 0, 0, 0]),
    ("string", [0, 0]),
])
def test_default_sentinels_are_missing_never_zero(type_: str, registers: list[int]) -> None:
    point = pt(type=type_, length=2 if type_ == "string" else None)
    got = decode(point, registers)
    assert got.value is None and got.quality is Quality.MISSING and "not implemented" in got.detail
    assert decode(point, encode_sentinel(point)).quality is Quality.MISSING


def test_custom_sentinels_and_little_word_order_sentinel() -> None:
    point = pt(type="s16", sentinels=[0x7FFF, -1])
    assert decode(point, [0x7FFF]).quality is Quality.MISSING
    assert decode(point, [0xFFFF]).quality is Quality.MISSING
    assert decode(point, encode_sentinel(point)).quality is Quality.MISSING
    little = pt(type="s32", word_order="little")
    assert encode_sentinel(little) == [0, 0x8000]
    assert decode(little, [0, 0x8000]).quality is Quality.MISSING
    assert decode(pt(type="u16", default_sentinels=False), [0xFFFF]).value == 0xFFFF


def test_plausible_range_and_floor() -> None:
    point = pt(type="s32", scale=0.001, unit="kW", plausible={"min": -1, "max": 1000}, floor=0)
    assert decode(point, encode(point, 500.0)).value == 500.0
    assert decode(point, encode(point, -0.2)).value == 0  # small negative PV reading: raised to the floor
    got = decode(point, encode(point, 5000.0))
    assert got.value is None and got.quality is Quality.IMPLAUSIBLE and "5000" in got.detail
    assert decode(point, encode(point, -3.0)).quality is Quality.IMPLAUSIBLE


def test_encode_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(pt(type="u16"), -1)
    with pytest.raises(ValueError, match="does not fit"):
        encode(pt(type="s16", scale=0.001), 40.0)
    with pytest.raises(ValueError, match="longer"):
        encode(pt(type="string", length=1), "abc")


COMBINED = parse_profile({"roles": ["battery"], "points": {
    "battery_kw": {"address": 0, "unit": "kW", "scale": 0.001, "sign_from": {"point": "state", "negative_mask": 2,
                                                                            "positive_mask": 4}},
    "state": {"address": 1},
    "discharge_kw": {"address": 2, "unit": "kW", "scale": 0.001, "subtract": "charge_kw",
                     "plausible": {"min": -5, "max": 5}},
    "charge_kw": {"address": 3, "unit": "kW", "scale": 0.001},
}}, "combined.yaml")


@pytest.mark.parametrize(("name", "value"), [("battery_kw", -2.5), ("battery_kw", 2.5), ("battery_kw", 0.0),
                                             ("discharge_kw", -1.25), ("discharge_kw", 3.0)])
def test_combined_points_split_and_combine_back(name: str, value: float) -> None:
    point = COMBINED.points[name]
    parts = split(COMBINED, name, value)
    assert set(parts) == {name, point.depends_on}
    decoded = {n: decode(COMBINED.points[n], encode(COMBINED.points[n], v), final=False) for n, v in parts.items()}
    assert combine(point, decoded[name], decoded[point.depends_on]).value == pytest.approx(value)


def test_combined_point_is_missing_with_its_part_and_range_checked_after_combining() -> None:
    point = COMBINED.points["discharge_kw"]
    own = decode(point, [1000], final=False)
    assert combine(point, own, decode(COMBINED.points["charge_kw"], [0xFFFF], final=False)).quality is Quality.MISSING
    assert combine(point, decode(point, [9000], final=False), own).quality is Quality.IMPLAUSIBLE  # 9 − 1 = 8 kW
    bits_neither = combine(COMBINED.points["battery_kw"], own, Decoded(0, Quality.OK))
    assert bits_neither.value == 0  # neither charging nor discharging bit: idle


def test_combined_point_must_name_a_plain_point() -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile({"roles": ["battery"], "points": {"battery_kw": {"address": 0, "unit": "kW", "subtract": "x"}}},
                      "c.yaml")
    assert info.value.errors[0].field == "points.battery_kw.subtract"


# ------------------------------------------------------------------------------------ round trips

INT_RANGES = {
    DataType.U16: (0, 0xFFFE), DataType.S16: (-0x7FFF, 0x7FFF),
    DataType.U32: (0, 0xFFFFFFFE), DataType.S32: (-0x7FFFFFFF, 0x7FFFFFFF),
    DataType.U64: (0, 0xFFFFFFFFFFFFFFFE), DataType.S64: (-0x7FFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF),
}


@st.composite
def int_cases(draw: st.DrawFn) -> tuple[Point, list[int]]:
    type_ = draw(st.sampled_from(list(INT_RANGES)))
    lo, hi = INT_RANGES[type_]
    wide = type_ in (DataType.U64, DataType.S64)
    scale = 1.0 if wide else draw(st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0]))
    point = pt(type=type_, word_order=draw(st.sampled_from(list(WordOrder))), scale=scale,
               invert=draw(st.booleans()), offset=0.0 if wide else draw(st.sampled_from([0.0, -40.0])))
    raw = draw(st.integers(lo, hi))
    registers = encode(pt(type=type_, word_order=point.word_order), raw)
    return point, registers


@given(int_cases())
def test_integer_round_trip_registers_decode_encode(case: tuple[Point, list[int]]) -> None:
    point, registers = case
    got = decode(point, registers)
    assert got.quality is Quality.OK
    assert encode(point, got.value) == registers  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False), st.sampled_from(list(WordOrder)))
def test_f32_round_trip(value: float, order: WordOrder) -> None:
    point = pt(type="f32", word_order=order)
    registers = encode(point, value)
    got = decode(point, registers)
    if math.isinf(value):
        assert got.quality is Quality.MISSING
    else:
        assert got.value == value and encode(point, got.value) == registers


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=16))
def test_string_round_trip(text: str) -> None:
    point = pt(type="string", length=8)
    assert decode(point, encode(point, text)).value == text


# ------------------------------------------------------------------------------------ shipped profiles

@pytest.mark.parametrize("name", shipped_profiles())
def test_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert profile.roles
    for point in profile.points.values():
        assert point.count <= profile.max_registers_per_read
    # a point named with its unit says it (ems devices read showed setpoint_reversion_s with no unit)
    suffixes = {"_kw": "kW", "_kwh": "kWh", "_pct": "%", "_v": "V", "_a": "A", "_hz": "Hz", "_c": "degC", "_s": "s"}
    for point_name, point in profile.points.items():
        unit = next((u for suffix, u in suffixes.items() if point_name.endswith(suffix)), None)
        assert unit is None or point.unit == unit, f"{name}: {point_name} in {point.unit!r}, not {unit!r}"


# ------------------------------------------------------------------------------------ vendor profiles on a server

SAMPLE: dict[str, float] = {
    "grid_kw": -3.25, "grid_l1_kw": -1.5, "grid_l2_kw": -1.0, "grid_l3_kw": -0.75,
    "voltage_l1_v": 231.4, "voltage_l2_v": 229.9, "voltage_l3_v": 230.2, "frequency_hz": 50.1,
    "import_kwh": 12345.6, "export_kwh": 2345.6,
    "pv_kw": 7.25, "pv_energy_kwh": 34567.8, "pv_state": 307, "pv_rated_kw": 10.0,
    "soc_pct": 55.5, "soh_pct": 98.5, "battery_kw": -2.4, "battery_voltage_v": 350.5, "battery_current_a": -6.8,
    "battery_temperature_c": 24.5, "max_charge_kw": 5.0, "max_discharge_kw": 4.5, "battery_alarm": 0,
}

VENDOR_PROFILES = [n for n in shipped_profiles() if not n.startswith("sunspec-")]


def test_there_are_at_least_two_vendor_profiles() -> None:
    assert len(VENDOR_PROFILES) >= 2


@pytest.mark.parametrize("name", VENDOR_PROFILES)
async def test_vendor_profile_polls_and_controls_a_server_built_from_it(name: str) -> None:
    """Serve the profile's own register image (built with encode) and read it back through every role."""
    from drivers.config import DeviceConfig
    from drivers.device import ModbusDevice
    from drivers.roles import CANONICAL_POINTS
    from drivers.transport import ConnectionPool
    from ems.clock import ManualClock
    from tests.modbus_peers import modbus_peer, profile_image, sim_device

    profile = load_profile(name)
    values = {n: v for n, v in SAMPLE.items() if n in profile.points}
    holding, inputs = profile_image(profile, values)
    clock = ManualClock(datetime(2026, 5, 4, tzinfo=UTC))
    async with modbus_peer([sim_device(3, holding, inputs)]) as peer:
        pool = ConnectionPool()
        for role in profile.roles:
            cfg = DeviceConfig.model_validate({"name": f"{name}-{role}", "role": role, "profile": name, "unit_id": 3,
                                               "timeout_s": 0.5, "endpoint": {"host": "127.0.0.1", "port": peer.port}})
            device = ModbusDevice(cfg, profile, pool.connection(cfg), clock)
            readings = await device.poll()
            for point_name, expected in values.items():
                if CANONICAL_POINTS[point_name].role is not role:
                    continue
                reading = readings[point_name]
                step = abs(profile.points[point_name].scale)
                assert reading.ok, (point_name, reading)
                assert reading.value == pytest.approx(expected, abs=step / 2 + 1e-9), point_name
                assert reading.unit == CANONICAL_POINTS[point_name].unit
            if role == "battery" and "battery_setpoint_kw" in profile.points:
                entered = await device.enter_remote_control()
                assert entered and all(r.ok for r in entered)
                for setpoint in (-3.0, 2.5, 0.0):
                    result = await device.write("battery_setpoint_kw", setpoint)
                    assert result.ok and result.sent, result
                left = await device.leave_remote_control()
                assert left and all(r.ok for r in left)
        assert len(pool) == 1  # every role of the hybrid shares one connection
        pool.close()
