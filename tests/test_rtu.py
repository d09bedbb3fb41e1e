"""Modbus RTU over a real serial link: two pseudo-terminals joined by socat, a pymodbus serial server on one end."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from pymodbus.server import ModbusSerialServer

from drivers import sunspec
from drivers.config import DeviceConfig
from drivers.device import ModbusDevice
from drivers.profile import Function, parse_profile
from drivers.readings import Quality
from drivers.transport import ConnectionPool
from ems.cli import main
from ems.clock import ManualClock
from tests.modbus_peers import profile_image, sim_device

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed (apt install socat)")

BAUD = 38400
METER = parse_profile({
    "name": "rtu-meter",
    "roles": ["meter"],
    "points": {
        "grid_kw": {"function": "input", "address": 0, "type": "f32", "unit": "kW"},
        "frequency_hz": {"function": "input", "address": 2, "type": "u16", "scale": 0.01, "unit": "Hz"},
        "import_kwh": {"function": "input", "address": 3, "type": "u32", "scale": 0.1, "unit": "kWh",
                       "word_order": "little"},
        "export_limit_kw": {"address": 10, "type": "s16", "scale": 0.1, "unit": "kW", "write": {"min": 0, "max": 50}},
    },
}, "rtu-meter.yaml")


@pytest_asyncio.fixture
async def serial_pair() -> AsyncIterator[tuple[str, str]]:
    """Two linked pseudo-terminals (server end, client end) made by socat."""
    proc = await asyncio.create_subprocess_exec(
        "socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    ptys: list[str] = []
    while len(ptys) < 2:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout=10)).decode()
        found = re.search(r"PTY is (\S+)", line)
        if found:
            ptys.append(found.group(1))
    try:
        yield ptys[0], ptys[1]
    finally:
        proc.terminate()
        await proc.wait()


def rtu_config(port: str, unit_id: int, name: str) -> DeviceConfig:
    return DeviceConfig.model_validate({
        "name": name, "role": "meter", "profile": "rtu-meter", "unit_id": unit_id, "timeout_s": 0.5, "retries": 1,
        "min_request_gap_s": 0.005, "endpoint": {"serial_port": port, "baudrate": BAUD}})


async def test_two_meters_on_one_rs485_line(serial_pair: tuple[str, str]) -> None:
    server_end, client_end = serial_pair
    devices = []
    for unit_id, grid_kw in ((1, -12.5), (2, 40.25)):
        holding, inputs = profile_image(METER, {"grid_kw": grid_kw, "frequency_hz": 49.98, "import_kwh": 1234.5,
                                                "export_limit_kw": 0})
        devices.append(sim_device(unit_id, holding, inputs))
    server = ModbusSerialServer(devices, port=server_end, baudrate=BAUD)
    await server.serve_forever(background=True)
    try:
        clock = ManualClock(datetime(2026, 5, 4, tzinfo=UTC))
        pool = ConnectionPool()
        one = ModbusDevice(rtu_config(client_end, 1, "one"), METER, pool.connection(rtu_config(client_end, 1, "one")),
                           clock)
        two = ModbusDevice(rtu_config(client_end, 2, "two"), METER, pool.connection(rtu_config(client_end, 2, "two")),
                           clock)
        r1, r2 = await asyncio.gather(one.poll(), two.poll())  # serialised on the one line
        assert len(pool) == 1
        assert r1["grid_kw"].value == pytest.approx(-12.5) and r2["grid_kw"].value == pytest.approx(40.25)
        assert r1["frequency_hz"].value == pytest.approx(49.98)
        assert r1["import_kwh"].value == pytest.approx(1234.5)
        result = await two.write("export_limit_kw", 75)
        assert result.ok and result.clamped and result.verified and result.value == 50
        assert await server.async_getValues(2, 3, 10, 1) == [500]
        assert await server.async_getValues(1, 3, 10, 1) == [0]
        # a unit id nobody answers on the line: timeout, MISSING, and the others carry on
        ghost_cfg = rtu_config(client_end, 9, "ghost")
        ghost = ModbusDevice(ghost_cfg, METER, pool.connection(ghost_cfg), clock)
        r9, r1 = await asyncio.gather(ghost.poll(), one.poll())
        assert r9["grid_kw"].quality is Quality.MISSING and r1["grid_kw"].ok
        pool.close()
    finally:
        await server.shutdown()


def test_function_tables_are_separate_on_the_image() -> None:
    holding, inputs = profile_image(METER, {"grid_kw": 1.0, "export_limit_kw": 2.0})
    assert set(inputs) == {0, 1, 2, 3, 4} and set(holding) == {10}
    assert METER.points["export_limit_kw"].function is Function.HOLDING


async def test_scan_a_sunspec_meter_of_a_site_file_over_rs485(serial_pair: tuple[str, str], tmp_path, capsys) -> None:
    """``ems devices scan --config FILE DEVICE`` goes over the device's own endpoint, here an RS485 line (scan spoke
    Modbus TCP only), at the device's unit id."""
    server_end, client_end = serial_pair
    image = sunspec.build_image([1, 203], {1: {"Mn": "Acme", "Md": "M-203", "SN": "42"}})
    server = ModbusSerialServer([sim_device(3, dict(enumerate(image.registers, start=image.base)))],
                                port=server_end, baudrate=BAUD)
    await server.serve_forever(background=True)
    site = tmp_path / "site.yaml"
    site.write_text(f"devices:\n  - {{name: meter-rs485, role: meter, profile: sunspec-meter, unit_id: 3,\n"
                    f"     endpoint: {{serial_port: {client_end}, baudrate: {BAUD}}}}}\n")
    try:
        code = await asyncio.to_thread(main, ["devices", "scan", "--config", str(site), "meter-rs485"])
    finally:
        await server.shutdown()
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[0] == f"rtu://{client_end} unit 3: 2 SunSpec model(s)"
    assert "Acme" in out and "M-203" in out
    assert [line.split()[:2] for line in out.splitlines()[-2:]] == [["1", "common"], ["203", "ac_meter_abcn"]]
