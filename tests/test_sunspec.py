"""SunSpec discovery, model layout and decoding, register images and profile resolution (drivers.sunspec).

Devices are pymodbus servers on loopback serving images built by ``sunspec.build_image``; model
lengths are checked against pysunspec2's JSON definitions read independently of the module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sunspec2
from pymodbus.client import AsyncModbusTcpClient

from drivers import sunspec
from drivers.config import DeviceConfig
from drivers.profile import DataType, load_profile
from drivers.transport import ConnectionPool
from tests.modbus_peers import modbus_peer, sim_device

MODELS = [1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 201, 202, 203, 204, 802, 803, 704]
JSON_DIR = Path(sunspec2.__file__).parent / "models" / "json"


def json_length(model_id: int, repeats: int = 1) -> int:
    """L of a model from its JSON file: fixed points after ID/L, plus ``repeats`` × a repeating group."""
    group = json.loads((JSON_DIR / f"model_{model_id}.json").read_text())["group"]
    size = sum(p["size"] for p in group["points"]) - 2
    for sub in group.get("groups", []):
        sub_size = sum(p["size"] for p in sub["points"])
        size += sub_size * (repeats if isinstance(sub.get("count"), str) else 1)
    return size


def image_dict(image: sunspec.SunSpecImage) -> dict[int, int]:
    return {image.base + i: r for i, r in enumerate(image.registers)}


def sample_values(model_id: int) -> tuple[dict[str, object], dict[str, object]]:
    """(raw register values, expected decoded values) for every point of a model: SF −1 everywhere."""
    mdef = sunspec.model_def(model_id)
    raw: dict[str, object] = {}
    expected: dict[str, object] = {}
    for i, (name, p) in enumerate(mdef.layout(mdef.length(1 if mdef.group_name else 0)).items()):
        if p.offset < 2 or p.type == "pad" or name == mdef.group_count:
            continue
        if p.type == "sunssf":
            raw[name] = expected[name] = -1
        elif p.type == "string":
            raw[name] = expected[name] = f"S{i}"
        elif p.type in ("float32", "float64"):
            raw[name] = expected[name] = 1.5 + i
        else:
            value = (i % 50) + 1 if p.type not in ("int16", "int32", "int64") else -((i % 50) + 1)
            raw[name] = value
            expected[name] = value * 0.1 if isinstance(p.sf, str) else value
    return raw, expected


def test_model_lengths_match_the_json_definitions() -> None:
    for model_id in MODELS:
        assert sunspec.model_def(model_id).length(1 if model_id == 803 else 0) == json_length(model_id)
    assert sunspec.model_def(1).length() == 66
    assert sunspec.model_def(103).length() == 50
    assert sunspec.model_def(203).length() == 105
    assert sunspec.model_def(802).length() == 62
    assert sunspec.model_def(803).length(2) == json_length(803, repeats=2)


def test_decoding_applies_scale_factors_and_reads_unimplemented_as_none() -> None:
    image = sunspec.build_image([1, 103, 113], {
        1: {"Mn": "Acme", "SN": "A-1"},
        103: {"W": sunspec.scaled(1234.5, -1), "W_SF": -1, "A": 100, "Hz": 5002, "Hz_SF": -2, "WH": 7,
              "WH_SF": 3, "St": 4, "PhVphA": 2301},     # V_SF left unimplemented: PhVphA is missing, not 2301
        113: {"W": 1500.5},       # float model: unset floats are NaN
    })
    regs = image.registers
    decoded = {}
    for m in image.models:
        i = m.address - image.base
        decoded[m.id] = sunspec.decode_model(m.id, regs[i:i + 2 + m.length])
    assert decoded[1]["Mn"] == "Acme" and decoded[1]["SN"] == "A-1" and decoded[1]["Md"] is None
    inv = decoded[103]
    assert inv["W"] == pytest.approx(1234.5)
    assert inv["Hz"] == pytest.approx(50.02)
    assert inv["WH"] == pytest.approx(7000.0)
    assert inv["St"] == 4
    assert inv["A"] is None                      # A_SF not implemented
    assert inv["PhVphA"] is None                 # V_SF not implemented
    assert inv["VA"] is None and inv["Evt1"] is None and inv["TmpCab"] is None
    assert decoded[113]["W"] == pytest.approx(1500.5)
    assert decoded[113]["A"] is None


def test_raw_sentinels_per_type() -> None:
    points = {p.type: p for p in sunspec.model_def(802).points.values()}
    points.update({p.type: p for p in sunspec.model_def(203).points.values() if p.type == "acc32"})
    assert sunspec.raw_value(points["int16"], [0x8000]) is None
    assert sunspec.raw_value(points["int16"], [0xFFFF]) == -1
    assert sunspec.raw_value(points["uint16"], [0xFFFF]) is None
    assert sunspec.raw_value(points["enum16"], [0xFFFF]) is None
    assert sunspec.raw_value(points["uint32"], [0xFFFF, 0xFFFF]) is None
    assert sunspec.raw_value(points["bitfield32"], [0xFFFF, 0xFFFF]) is None
    assert sunspec.raw_value(points["bitfield32"], [0, 5]) == 5
    assert sunspec.raw_value(points["sunssf"], [0x8000]) is None
    assert sunspec.raw_value(points["sunssf"], [0xFFFE]) == -2
    assert sunspec.raw_value(points["acc32"], [0, 0]) == 0           # a genuine counter reading
    assert sunspec.raw_value(points["acc32"], [1, 2]) == 65538
    f32 = sunspec.model_def(113).points["W"]
    assert sunspec.raw_value(f32, sunspec.encode_raw(f32, None)) is None
    assert math.isclose(sunspec.raw_value(f32, sunspec.encode_raw(f32, -2.25)), -2.25)


@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_discovery_at_each_base_address(base: int) -> None:
    image = sunspec.build_image([1, 103, 120, 123], {1: {"Mn": "Acme"}}, base=base)
    async with modbus_peer([sim_device(3, image_dict(image))]) as peer:
        client = AsyncModbusTcpClient("127.0.0.1", port=peer.port, timeout=1, retries=0)
        await client.connect()
        try:
            found = await sunspec.discover(client, 3)
        finally:
            client.close()
    assert found == image.models
    assert [(m.id, m.length) for m in found] == [(1, 66), (103, 50), (120, 26), (123, 24)]
    assert found[0].address == base + 2
    assert [m.name for m in found] == ["common", "inverter_three_phase", "nameplate", "controls"]


async def test_no_marker_is_a_sunspec_error() -> None:
    async with modbus_peer([sim_device(1, {40000: 1, 40001: 2})]) as peer:
        client = AsyncModbusTcpClient("127.0.0.1", port=peer.port, timeout=1, retries=0)
        await client.connect()
        try:
            with pytest.raises(sunspec.SunSpecError, match="no SunSpec marker"):
                await sunspec.discover(client, 1)
        finally:
            client.close()


async def test_a_device_that_refuses_every_read_is_said_to_refuse_not_to_lack_sunspec() -> None:
    """A meter in fault answers Modbus exception 4 to everything (``ems sim serve --fault grid-meter:exception=4``):
    the controller's alarm read "no SunSpec marker", sending the engineer to the register map."""
    async with modbus_peer([sim_device(1, {40000: 1, 40001: 2})]) as peer:
        client = AsyncModbusTcpClient("127.0.0.1", port=peer.port, timeout=1, retries=0)
        await client.connect()
        try:
            with pytest.raises(sunspec.SunSpecError) as refused:
                await sunspec.discover(client, 7)          # a unit id nobody answers for: every read refused
        finally:
            client.close()
    assert str(refused.value) == ("no SunSpec marker at 40000, 0, 50000 (unit 7): the device refused every read with "
                                  "a Modbus exception (a device fault, or another unit id behind a gateway)")


async def test_round_trip_every_model_over_tcp() -> None:
    """build_image → serve → discover → read_model → the values put in, scaled, for every listed model."""
    samples = {m: sample_values(m) for m in MODELS}
    image = sunspec.build_image(MODELS, {m: raw for m, (raw, _) in samples.items()})
    async with modbus_peer([sim_device(1, image_dict(image))]) as peer:
        client = AsyncModbusTcpClient("127.0.0.1", port=peer.port, timeout=1, retries=0)
        await client.connect()
        try:
            found = await sunspec.discover(client, 1)
            decoded = {m.id: await sunspec.read_model(client, 1, m) for m in found}
        finally:
            client.close()
    assert [m.id for m in found] == MODELS
    assert [m.length for m in found] == [json_length(m) for m in MODELS]
    for model_id, (_, expected) in samples.items():
        for name, value in expected.items():
            got = decoded[model_id][name]
            if isinstance(value, float):
                assert got == pytest.approx(value), (model_id, name)
            else:
                assert got == value, (model_id, name)


async def test_discovery_through_the_profile_connection() -> None:
    """``discover`` also takes drivers.transport.Connection (exception responses while probing are skipped)."""
    image = sunspec.build_image([1, 203], base=50000)
    async with modbus_peer([sim_device(1, image_dict(image))]) as peer:
        config = DeviceConfig(name="m", role="meter", profile="sunspec-meter",
                              endpoint={"host": "127.0.0.1", "port": peer.port}, unit_id=1)
        pool = ConnectionPool()
        try:
            found = await sunspec.discover(pool.connection(config), 1)
        finally:
            pool.close()
    assert [(m.id, m.address) for m in found] == [(1, 50002), (203, 50070)]


def test_resolve_gives_addresses_and_scale_factor_registers() -> None:
    profile = load_profile("sunspec-meter")
    image = sunspec.build_image([1, 203], base=0)
    resolved = sunspec.resolve(profile, image.models)
    w = resolved.points["grid_kw"]
    assert w.sunspec is None
    assert w.address == image.point_address(203, "W")
    assert w.scale_factor_register == image.point_address(203, "W_SF")
    assert resolved.points["import_kwh"].scale_factor_register == image.point_address(203, "TotWh_SF")
    assert set(resolved.readable()) == set(profile.points)


def test_resolve_drops_points_of_absent_models_and_rejects_profile_errors() -> None:
    battery = load_profile("sunspec-battery")
    without_803 = sunspec.build_image([1, 704, 802]).models
    resolved = sunspec.resolve(battery, without_803)
    assert "battery_temperature_c" not in resolved.points and "soc_pct" in resolved.points
    with pytest.raises(sunspec.SunSpecError, match="write sequences need"):
        sunspec.resolve(battery, sunspec.build_image([1, 802, 803]).models)
    bad = load_profile("sunspec-meter")
    bad_points = dict(bad.points)
    bad_points["grid_kw"] = bad_points["grid_kw"].model_copy(
        update={"sunspec": bad_points["grid_kw"].sunspec.model_copy(update={"point": "Watts"})})
    with pytest.raises(sunspec.SunSpecError, match="no point 'Watts'"):
        sunspec.resolve(bad.model_copy(update={"points": bad_points}), sunspec.build_image([1, 203]).models)
    bad_points["grid_kw"] = bad.points["grid_kw"].model_copy(update={"type": DataType.U16})
    with pytest.raises(sunspec.SunSpecError, match="int16"):
        sunspec.resolve(bad.model_copy(update={"points": bad_points}), sunspec.build_image([1, 203]).models)
