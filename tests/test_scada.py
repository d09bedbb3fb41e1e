"""The SCADA Modbus TCP server, read and written by a real pymodbus client over loopback.

Commands go through the real intake (``CommandIntake``) into the controller's real ``Commands`` and
``ModeMachine`` on a manual clock, so "applied" means what the controller's cycle would act on.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymodbus import ModbusException
from pymodbus.client import AsyncModbusTcpClient

from controller.bus import STATE, Bus
from controller.commands import Commands
from controller.modes import Mode, ModeMachine, Reason
from controller.scada import registers as regmap
from controller.scada.server import ScadaServer
from controller.telemetry import TelemetryContext, start_telemetry
from controller.telemetry.config import DashboardSettings, ScadaSettings, TelemetrySettings
from controller.telemetry.remote import CommandIntake
from ems.clock import ManualClock

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integration.md"
START = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
CMD = regmap.BLOCKS[-1].start
ADDR = {s.field.name: s.address for s in regmap.SLOTS}

STATE_MSG: dict[str, Any] = {
    "ts": "2026-05-04T03:00:00+00:00", "site": "test", "mode": "manual", "reason": "operator",
    "measurements": {"pv_kw": {"value": 812.5, "unit": "kW", "quality": "ok"},
                     "grid_kw": {"value": None, "unit": "kW", "quality": "stale"},
                     "battery_kw": {"value": -150.0, "unit": "kW", "quality": "ok"},
                     "soc_pct": {"value": 55.0, "unit": "%", "quality": "ok"}},
    "load_kw": None,
    "devices": {"meter": {"ok": False, "error": "no answer"}, "pcs": {"ok": True, "error": None}},
    "setpoints": {"battery_kw": -150.0, "pv_limit_pct": 100.0, "safe": False},
    "operator": {"request": "manual", "manual_setpoint_kw": -150.0, "soc_reserve_pct": None},
    "plan": {"step_start": "2026-05-04T03:00:00+00:00", "battery_kw": -100.0, "grid_kw": 20.0, "soc_pct": 60.0,
             "created_at": "2026-05-04T02:55:00+00:00"},
    "today": {"import_kwh": 100.0, "export_kwh": 0.0, "pv_kwh": 2000.0, "load_kwh": 2100.0, "charge_kwh": 300.0,
              "discharge_kwh": 250.0, "cost": 250000.0, "cost_no_battery": 300000.0, "saved": 50000.0},
    "demand": {"month_peak_kw": 420.0, "month_peak_at": "2026-05-04T01:30:00+00:00", "hold_kw": 450.0,
               "window_projected_kw": 480.0, "shed_to_hold_kw": 90.0, "window_left_min": 10.0, "billed_kw": 440.0},
    "month": {"month": "2026-05", "saved": 4.9e7, "demand_saved": 5.0e7},
    "battery": {"soh_pct": None, "capacity_kwh": 1000.0, "nameplate_kwh": 1000.0},
    "alarms": ["point_stale:meter:grid_kw", "device_unreachable:meter", "telemetry.influx_unreachable", "weird",
               "demand_peak_rising"],
}


class Plant:
    """The controller's command path: intake → Commands → ModeMachine, on a manual clock."""

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.modes = ModeMachine(Mode.SELF_CONSUMPTION, START)
        self.replans: list[datetime] = []
        self.commands = Commands(self.modes, self.clock, (500.0, 500.0), (10.0, 95.0), self.replans.append)
        self.intake = CommandIntake(self.commands.apply, self.clock)

    def mode(self) -> Mode:
        return self.modes.evaluate(self.clock.now(), safe=False, plan_reason=Reason.NO_PLAN).mode


@pytest.fixture
def plant() -> Plant:
    return Plant()


async def serve(plant: Plant, **settings: Any) -> ScadaServer:
    server = ScadaServer(ScadaSettings(enabled=True, port=0, **settings), plant.intake)
    await server.start()
    return server


@pytest.fixture
async def scada(plant: Plant) -> AsyncIterator[tuple[ScadaServer, AsyncModbusTcpClient]]:
    server = await serve(plant)
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=0)
    assert await client.connect()
    yield server, client
    client.close()
    await server.aclose()


async def read_map(client: AsyncModbusTcpClient) -> dict[int, int]:
    """Every block the header's directory names, read in chunks of at most 100 registers."""
    head = await client.read_holding_registers(0, count=3)
    assert not head.isError()
    marker, version, blocks = head.registers
    assert (marker, version) == (regmap.MARKER, regmap.MAP_VERSION)
    directory = await client.read_holding_registers(3, count=3 * blocks)
    registers = dict(enumerate([*head.registers, *directory.registers]))
    for i in range(blocks):
        _, start, length = directory.registers[3 * i:3 * i + 3]
        for at in range(start, start + length, 100):
            rr = await client.read_holding_registers(at, count=min(100, start + length - at))
            assert not rr.isError(), (at, rr)
            registers.update(enumerate(rr.registers, at))
    return registers


def f32(registers: dict[int, int], name: str) -> float:
    a = ADDR[name]
    return regmap.decode(regmap.Kind.F32, [registers[a], registers[a + 1]])


async def write_f32(client: AsyncModbusTcpClient, name: str, value: float) -> Any:
    return await client.write_registers(ADDR[name], client.convert_to_registers(value, client.DATATYPE.FLOAT32))


async def test_whole_map_reads_back_through_the_directory(scada) -> None:
    server, client = scada
    server.offer(STATE, STATE_MSG)
    r = await read_map(client)
    directory = {b.id: (b.start, b.length) for b in regmap.BLOCKS[1:]}
    assert r[2] == len(directory)
    assert {r[3 + 3 * i]: (r[4 + 3 * i], r[5 + 3 * i]) for i in range(len(directory))} == directory
    assert f32(r, "pv_kw") == 812.5
    assert math.isnan(f32(r, "grid_kw"))            # stale: missing, never 0
    assert math.isnan(f32(r, "load_kw"))
    assert f32(r, "battery_kw") == -150.0
    assert r[ADDR["mode"]] == 3 and r[ADDR["reason"]] == 5   # manual, operator
    assert (r[ADDR["state_time"]] << 16 | r[ADDR["state_time"] + 1]) == int(START.timestamp())
    assert f32(r, "saved") == 50000.0 and f32(r, "month_peak_kw") == 420.0
    peak_at = datetime(2026, 5, 4, 1, 30, tzinfo=UTC)
    assert (r[ADDR["month_peak_at"]] << 16 | r[ADDR["month_peak_at"] + 1]) == int(peak_at.timestamp())
    # the demand watch: what a plant's load shedding can act on
    assert (f32(r, "hold_kw"), f32(r, "window_projected_kw"), f32(r, "shed_to_hold_kw"), f32(r, "window_left_min")) \
        == (450.0, 480.0, 90.0, 10.0)
    assert f32(r, "billed_kw") == 440.0   # a 12-month basis: an earlier month's peak
    assert (f32(r, "month_saved"), f32(r, "month_demand_saved")) == (4.9e7, 5.0e7)
    assert math.isnan(f32(r, "soh_pct")) and f32(r, "battery_capacity_kwh") == 1000.0   # no SOH reported: nameplate
    server.offer(STATE, {**STATE_MSG, "battery": {"soh_pct": 85.0, "capacity_kwh": 850.0, "nameplate_kwh": 1000.0}})
    aged = await read_map(client)
    assert (f32(aged, "soh_pct"), f32(aged, "battery_capacity_kwh")) == (85.0, 850.0)
    # point_stale bit 7, device_unreachable bit 5, telemetry bit 9, other bit 10, demand_peak_rising bit 11
    assert r[ADDR["active_count"]] == 5
    assert r[ADDR["bits"]] == (1 << 7) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 11)
    assert (r[ADDR["device0_health"]], r[ADDR["device1_health"]], r[ADDR["device2_health"]]) == (0, 1, 0xFFFF)
    name = b"".join(r[ADDR["device1_name"] + k].to_bytes(2, "big") for k in range(8))
    assert name.rstrip(b"\0") == b"pcs"
    assert r[ADDR["mode_request"]] == 3 and f32(r, "manual_setpoint_kw") == -150.0
    assert math.isnan(f32(r, "soc_reserve_pct"))
    assert r[ADDR["manual_timeout_s"]] == 60


async def test_before_any_state_everything_reads_missing(scada) -> None:
    _, client = scada
    r = await read_map(client)
    assert math.isnan(f32(r, "pv_kw")) and r[ADDR["mode"]] == 0xFFFF and r[ADDR["bits"]] == 0xFFFF


async def test_unmapped_address_read_is_exception_2(scada) -> None:
    _, client = scada
    rr = await client.read_holding_registers(regmap.BLOCKS[1].start - 1, count=2)
    assert rr.isError() and rr.exception_code == 2


async def test_each_command_write_is_applied(scada, plant: Plant) -> None:
    _, client = scada
    rr = await client.write_register(ADDR["mode_request"], regmap.MODE_CODES.index(Mode.STANDBY))
    assert not rr.isError()
    assert plant.mode() is Mode.STANDBY and plant.modes.request.by == "scada:127.0.0.1"
    assert not (await write_f32(client, "manual_setpoint_kw", -200.0)).isError()
    assert plant.mode() is Mode.MANUAL and plant.modes.request.setpoint_kw == -200.0
    assert not (await write_f32(client, "soc_reserve_pct", 40.0)).isError()
    assert plant.commands.reserve_pct(plant.clock.now()) == 40.0
    assert not (await client.write_register(ADDR["replan"], 1)).isError()
    assert len(plant.replans) == 1
    assert not (await client.write_register(ADDR["mode_request"], 0)).isError()   # auto ends the request
    assert plant.mode() is Mode.SELF_CONSUMPTION and plant.modes.request is None
    assert plant.intake.counters()["accepted"] == 5


@pytest.mark.parametrize(("name", "value"), [
    ("mode_request", 3),            # manual: by writing the setpoint only
    ("mode_request", 9),
    ("replan", 0),
    ("manual_timeout_s", 0),
    ("manual_timeout_s", 3601),
])
async def test_a_u16_out_of_range_is_exception_3_and_nothing_applied(scada, plant: Plant, name: str,
                                                                     value: int) -> None:
    _, client = scada
    rr = await client.write_register(ADDR[name], value)
    assert rr.isError() and rr.exception_code == 3
    assert plant.modes.request is None and plant.replans == [] and plant.intake.counters()["accepted"] == 0


@pytest.mark.parametrize(("name", "value"), [
    ("manual_setpoint_kw", math.nan), ("manual_setpoint_kw", math.inf), ("manual_setpoint_kw", 200_000.0),
    ("manual_setpoint_kw", 600.0),     # inside the register's range, outside this PCS's: the controller refuses
    ("soc_reserve_pct", 101.0), ("soc_reserve_pct", 5.0),     # below the SOC window [10, 95]
])
async def test_a_float_out_of_range_is_exception_3_never_clamped(scada, plant: Plant, name: str,
                                                                 value: float) -> None:
    _, client = scada
    rr = await write_f32(client, name, value)
    assert rr.isError() and rr.exception_code == 3
    assert plant.modes.request is None and plant.commands.reserve is None


@pytest.mark.parametrize(("address", "count"), [
    (ADDR["pv_kw"], 2),                      # a measurement
    (0, 1),                                  # the header
    (ADDR["manual_setpoint_kw"], 1),         # half a float
    (ADDR["manual_setpoint_kw"] + 1, 1),
    (ADDR["replan"] + 1, 1),                 # past the command block
])
async def test_write_to_a_read_only_or_partial_register_is_exception_2(scada, plant: Plant, address: int,
                                                                       count: int) -> None:
    _, client = scada
    rr = await client.write_registers(address, [1] * count)
    assert rr.isError() and rr.exception_code == 2
    assert plant.modes.request is None


async def test_write_timeout_returns_control_to_the_configured_mode(scada, plant: Plant) -> None:
    _, client = scada
    assert not (await client.write_register(ADDR["manual_timeout_s"], 30)).isError()
    assert not (await write_f32(client, "manual_setpoint_kw", 100.0)).isError()
    plant.clock.advance(20)
    assert not (await write_f32(client, "manual_setpoint_kw", 120.0)).isError()   # re-written: 30 s more
    plant.clock.advance(29)
    assert plant.mode() is Mode.MANUAL and plant.modes.request.setpoint_kw == 120.0
    plant.clock.advance(2)                                                       # SCADA went quiet
    assert plant.mode() is Mode.SELF_CONSUMPTION and plant.modes.request is None


async def test_one_write_of_timeout_and_setpoint_together(scada, plant: Plant) -> None:
    _, client = scada
    values = [10, *client.convert_to_registers(-50.0, client.DATATYPE.FLOAT32)]
    assert not (await client.write_registers(ADDR["manual_timeout_s"], values)).isError()
    plant.clock.advance(9)
    assert plant.mode() is Mode.MANUAL
    plant.clock.advance(2)
    assert plant.mode() is Mode.SELF_CONSUMPTION


async def test_allow_list_refuses_other_addresses(plant: Plant) -> None:
    refused = await serve(plant, allowed_clients=("10.9.9.9",))
    admitted = await serve(plant, allowed_clients=("10.0.0.0/8", "127.0.0.0/8"))
    try:
        client = AsyncModbusTcpClient("127.0.0.1", port=refused.port, timeout=1, retries=0, reconnect_delay=0)
        await client.connect()
        with pytest.raises(ModbusException):
            rr = await client.write_register(ADDR["replan"], 1)
            if rr.isError():  # pragma: no cover - a refused client gets no answer at all
                raise ModbusException("error answer")
        client.close()
        assert plant.replans == []
        async with AsyncModbusTcpClient("127.0.0.1", port=admitted.port, timeout=2, retries=0) as ok:
            assert not (await ok.write_register(ADDR["replan"], 1)).isError()
        assert len(plant.replans) == 1
    finally:
        await refused.aclose()
        await admitted.aclose()


def test_allow_list_entries_are_checked() -> None:
    with pytest.raises(ValueError, match="not-an-address"):
        ScadaSettings(allowed_clients=("not-an-address",))


async def test_start_telemetry_serves_the_bus_state(plant: Plant, tmp_path: Path) -> None:
    bus = Bus()
    settings = TelemetrySettings(dashboard=DashboardSettings(enabled=False), scada=ScadaSettings(enabled=True, port=0))
    telemetry = await start_telemetry(settings, bus, TelemetryContext(
        site="test", timezone="UTC", clock=plant.clock, apply=plant.commands.apply, state_dir=tmp_path))
    try:
        assert telemetry.scada is not None
        bus.publish(STATE, STATE_MSG)
        async with AsyncModbusTcpClient("127.0.0.1", port=telemetry.scada.port, timeout=2, retries=0) as client:
            for _ in range(50):
                r = await read_map(client)
                if not math.isnan(f32(r, "pv_kw")):
                    break
            assert f32(r, "pv_kw") == 812.5
            assert not (await client.write_register(ADDR["replan"], 1)).isError()
        assert len(plant.replans) == 1 and telemetry.intake.counters()["accepted"] == 1
    finally:
        await telemetry.aclose()


def test_docs_hold_the_generated_map() -> None:
    text = DOCS.read_text("utf-8")
    section = regmap.SECTION.search(text)
    assert section is not None, "docs/integration.md lacks the generated register map section"
    assert section.group(2) == regmap.markdown(), \
        "regenerate: python -m controller.scada.registers --update docs/integration.md"


def test_every_mode_and_reason_has_a_code() -> None:
    assert set(regmap.MODE_CODES) == set(Mode) and set(regmap.REASON_CODES) == set(Reason)


async def test_controller_end_to_end_scada_takes_and_loses_control(tmp_path: Path) -> None:
    """The real controller on the simulated site: the SCADA's manual setpoint reaches the battery's
    setpoint, and when the SCADA stops re-writing it the controller returns to its own mode."""
    from tests.peers import free_port
    from tests.test_controller_e2e import running, site_file, until

    port = free_port()
    path = site_file(tmp_path, telemetry={"dashboard": {"enabled": False},
                                          "scada": {"enabled": True, "port": port, "write_timeout_s": 30}})
    async with running(path, 10, tmp_path / "state") as (site, controller, states):
        assert await until(site, lambda: len(states) >= 3, 60)
        async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0) as client:
            r = await read_map(client)
            assert r[ADDR["mode"]] in range(len(regmap.MODE_CODES))
            written = site.clock.monotonic()
            assert not (await write_f32(client, "manual_setpoint_kw", -100.0)).isError()
            n = len(states)
            assert await until(site, lambda: len(states) > n + 2, 30)
            manual = states[-1]
            assert manual["mode"] == "manual" and manual["setpoints"]["battery_kw"] == -100.0, manual["setpoints"]
            r = await read_map(client)
            assert r[ADDR["mode"]] == regmap.MODE_CODES.index(Mode.MANUAL)
            assert f32(r, "manual_setpoint_kw") == -100.0
        # the SCADA goes quiet: after 30 site seconds the request lapses
        assert await until(site, lambda: states[-1]["mode"] != "manual", 60)
        assert site.clock.monotonic() - written >= 29.0     # held for the write timeout (site time), not less
        assert states[-1]["reason"] != "operator" and controller.modes.request is None
