"""Shared, serialised, paced connections against real pymodbus TCP servers on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.config import DeviceConfig
from drivers.profile import Function
from drivers.transport import Connection, ConnectionPool, DeviceException, TransportError
from tests.modbus_peers import free_port, modbus_peer, sim_device

REGS = {i: 100 + i for i in range(20)}


def cfg(port: int, unit_id: int = 1, **kw: object) -> DeviceConfig:
    return DeviceConfig.model_validate({"name": f"d{unit_id}", "role": "meter", "profile": "x", "unit_id": unit_id,
                                        "endpoint": {"host": "127.0.0.1", "port": port}, "timeout_s": 0.3,
                                        "retries": 0, **kw})


def test_pool_shares_one_connection_per_endpoint_and_widens_timing() -> None:
    pool = ConnectionPool()
    a = pool.connection(cfg(1502, 1, timeout_s=0.5, min_request_gap_s=0.01))
    b = pool.connection(cfg(1502, 2, timeout_s=2.0, retries=2))
    c = pool.connection(cfg(1503, 1))
    assert a is b and a is not c and len(pool) == 2
    assert (a.timeout_s, a.retries, a.min_request_gap_s) == (2.0, 2, 0.01)


async def test_read_write_and_exception_response() -> None:
    async with modbus_peer([sim_device(1, REGS, {0: 7, 1: 8})]) as peer:
        conn = ConnectionPool().connection(cfg(peer.port))
        assert await conn.read(Function.HOLDING, 3, 4, 1) == [103, 104, 105, 106]
        assert await conn.read(Function.INPUT, 0, 2, 1) == [7, 8]
        await conn.write(5, [1], 1)
        await conn.write(6, [2, 3], 1)
        assert await conn.read(Function.HOLDING, 5, 3, 1) == [1, 2, 3]
        with pytest.raises(DeviceException) as info:
            await conn.read(Function.HOLDING, 500, 2, 1)
        assert info.value.code == 2
        response = await conn.read_holding_registers(500, count=2, device_id=1)  # SunSpec discovery's view
        assert response.isError()
        assert conn.connected  # an exception response does not drop the link
        conn.close()


async def test_requests_are_serialised_on_the_connection() -> None:
    in_flight = 0
    most = 0

    async def track(*_args: object) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1

    async with modbus_peer([sim_device(1, REGS, action=track), sim_device(2, REGS, action=track)]) as peer:
        conn = ConnectionPool().connection(cfg(peer.port))
        results = await asyncio.gather(*(conn.read(Function.HOLDING, i, 1, 1 + i % 2) for i in range(12)))
        conn.close()
    assert results == [[100 + i] for i in range(12)]
    assert most == 1


async def test_min_request_gap_paces_requests() -> None:
    gap = 0.05
    async with modbus_peer([sim_device(1, REGS)]) as peer:
        conn = ConnectionPool().connection(cfg(peer.port, min_request_gap_s=gap))
        await conn.read(Function.HOLDING, 0, 1, 1)
        start = time.monotonic()
        for _ in range(4):
            await conn.read(Function.HOLDING, 0, 1, 1)
        elapsed = time.monotonic() - start
        conn.close()
    assert elapsed >= 4 * gap * 0.95  # a lower bound: pacing can only make it slower


async def test_first_connect_fails_then_server_appears() -> None:
    port = free_port()
    conn = ConnectionPool().connection(cfg(port))
    with pytest.raises(TransportError, match="cannot connect"):
        await conn.read(Function.HOLDING, 0, 1, 1)
    async with modbus_peer([sim_device(1, REGS)], port=port):
        assert await conn.read(Function.HOLDING, 0, 1, 1) == [100]
    conn.close()


async def test_reconnects_after_server_restart() -> None:
    async with modbus_peer([sim_device(1, REGS)]) as peer:
        conn = ConnectionPool().connection(cfg(peer.port))
        assert await conn.read(Function.HOLDING, 0, 1, 1) == [100]
        await peer.stop()
        with pytest.raises(TransportError):
            await conn.read(Function.HOLDING, 0, 1, 1)
        await peer.start()
        assert await conn.read(Function.HOLDING, 1, 1, 1) == [101]
        conn.close()


async def test_silent_server_fails_within_its_timeout_bound() -> None:
    async def silent(*_args: object) -> None:
        await asyncio.sleep(10)

    async with modbus_peer([sim_device(1, REGS, action=silent)]) as peer:
        config = cfg(peer.port, timeout_s=0.2, retries=2)
        conn: Connection = ConnectionPool().connection(config)
        start = time.monotonic()
        with pytest.raises(TransportError, match="No response"):
            await conn.read(Function.HOLDING, 0, 1, 1)
        elapsed = time.monotonic() - start
        conn.close()
    assert conn.requests == config.retries + 1
    assert elapsed < 3 * config.timeout_s * (config.retries + 1)
