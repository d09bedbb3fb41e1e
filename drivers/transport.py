"""One shared, serialised, paced pymodbus connection per endpoint (Modbus TCP or RTU).

Many TCP-to-RS485 gateways and inverter dongles accept a single TCP connection, and an RS485 line
carries one request at a time, so every unit id behind an endpoint shares one :class:`Connection`
(from a :class:`ConnectionPool`). Requests hold the connection's ``asyncio.Lock`` only while on the
wire (connect, request, retries) and keep ``min_request_gap_s`` between requests.

pymodbus does not retry a first connect that fails and its own reconnect loop runs in the
background on a schedule of its own; here its reconnect is switched off and the connection simply
connects again, under the lock, when the next request finds it down. Waiting between attempts on a
dead device is the *device's* back-off (``drivers.device``), never a sleep under this lock.

A late reply is never taken for a newer request. pymodbus 3.16 matches a TCP reply to the one request
in flight by transaction id (``FramerBase.handleFrame`` skips other ids), but that only helps if the
peer labels its replies honestly: pymodbus's own server (``ServerRequestHandler.handle_request``) stamps
a reply with the id of the *latest* request received on the connection, so a reply to a request the
client gave up on arrives carrying the id of the next one; RTU has no transaction id at all. So an
attempt that gets no answer in time (or is cancelled by the caller's deadline while on the wire) drops
the connection, and the next attempt or request goes out on a fresh one where no late reply can
arrive; and every reply is checked against its request (function code, register count, echoed
address) before it is used: a reply that does not match drops the connection too.

Bus pacing and timeouts are physical time (the event loop's clock), not site time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.config import DeviceConfig, RtuEndpoint, TcpEndpoint
from drivers.profile import Function

log = logging.getLogger(__name__)


class TransportError(Exception):
    """The device did not answer: connect failed, timeout, connection lost. The device counts as unreachable."""


class DeviceException(Exception):
    """The device answered with a Modbus exception (it is reachable; the request was refused)."""

    def __init__(self, code: int, what: str):
        self.code = code
        super().__init__(f"{what}: Modbus exception code {code}")


@dataclass(frozen=True)
class Expected:
    """What the reply to a request must look like: its function code, and what a read returns or a write echoes.

    ``count`` is the number of registers a read returns (function 3/4) or a multiple write echoes (16);
    ``address`` is echoed by writes (6, 16). The value a single write echoes is not compared: devices that
    clamp a value echo the clamped one, and the write's read-back judges the value.
    """

    function_code: int
    count: int | None = None
    address: int | None = None

    def mismatch(self, response: ModbusPDU) -> str:
        """Why ``response`` cannot be the reply to this request ('' if it can)."""
        code = response.function_code & 0x7F
        if code != self.function_code:
            return f"function {code}, expected {self.function_code}"
        if response.isError():
            return ""
        if self.function_code in (3, 4):
            got = len(response.registers)
            return "" if got == self.count else f"{got} registers, expected {self.count}"
        if response.address != self.address:
            return f"address {response.address}, expected {self.address}"
        if self.function_code == 16 and response.count != self.count:
            return f"count {response.count}, expected {self.count}"
        return ""


class Connection:
    """A pymodbus client for one endpoint, shared by every unit id behind it."""

    def __init__(self, endpoint: TcpEndpoint | RtuEndpoint, timeout_s: float, retries: int, min_request_gap_s: float):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.min_request_gap_s = min_request_gap_s
        self.requests = 0  # requests sent (each attempt counts)
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._last_done = 0.0

    @property
    def key(self) -> str:
        return self.endpoint.key

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def adopt(self, config: DeviceConfig) -> None:
        """Widen the timing to suit another device on this endpoint (applies from the next connect)."""
        self.timeout_s = max(self.timeout_s, config.timeout_s)
        self.retries = max(self.retries, config.retries)
        self.min_request_gap_s = max(self.min_request_gap_s, config.min_request_gap_s)

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        common: dict[str, Any] = {"timeout": self.timeout_s, "retries": 0, "reconnect_delay": 0}
        ep = self.endpoint
        if isinstance(ep, TcpEndpoint):
            return AsyncModbusTcpClient(ep.host, port=ep.port, **common)
        return AsyncModbusSerialClient(ep.serial_port, baudrate=ep.baudrate, parity=ep.parity,
                                       stopbits=ep.stopbits, bytesize=ep.bytesize, **common)

    async def _ensure_connected(self) -> None:
        if self.connected:
            return
        self._drop()
        self._client = self._new_client()
        try:
            ok = await asyncio.wait_for(self._client.connect(), timeout=self.timeout_s * 2)
        except (TimeoutError, OSError, ModbusException) as exc:
            ok = False
            log.debug("connect to %s failed: %r", self.key, exc)
        except BaseException:  # cancelled by the caller's deadline: leave no half-open client behind
            self._drop()
            raise
        if not ok:
            self._drop()
            why = self.endpoint.port_problem() if isinstance(self.endpoint, RtuEndpoint) else ""
            raise TransportError(f"cannot connect to {self.key}{': ' + why if why else ''}")

    def _drop(self) -> None:
        """Close the link (if any); the next request connects afresh, so no late reply can reach it."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_done + self.min_request_gap_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _call(self, what: str, expected: Expected, send: Callable[[Any], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Send one request with retries under the lock; TransportError if no (matching) answer, DeviceException
        if refused. An attempt without an answer, or with one that is not the reply to it, drops the connection."""
        async with self._lock:
            last = ""
            for _ in range(self.retries + 1):
                await self._ensure_connected()
                await self._pace()
                self.requests += 1
                try:
                    response = await send(self._client)
                except ModbusException as exc:
                    last = str(exc)
                    self._drop()
                    continue
                except BaseException:  # cancelled by the caller's deadline while the request is on the wire
                    self._drop()
                    raise
                finally:
                    self._last_done = asyncio.get_running_loop().time()
                mismatch = expected.mismatch(response)
                if mismatch:
                    last = f"reply does not match the request ({mismatch}); connection dropped"
                    log.warning("%s on %s: %s", what, self.key, last)
                    self._drop()
                    continue
                if response.isError():
                    raise DeviceException(getattr(response, "exception_code", 0), what)
                return response
            raise TransportError(f"{what} on {self.key}: {last}")

    async def read(self, function: Function, address: int, count: int, unit_id: int) -> list[int]:
        """Read ``count`` registers from ``address`` of table ``function`` of device ``unit_id``."""
        what = f"read {function} {address}+{count} unit {unit_id}"
        if function is Function.HOLDING:
            response = await self._call(what, Expected(3, count=count),
                                        lambda c: c.read_holding_registers(address, count=count, device_id=unit_id))
        else:
            response = await self._call(what, Expected(4, count=count),
                                        lambda c: c.read_input_registers(address, count=count, device_id=unit_id))
        return list(response.registers)

    async def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> ModbusPDU:
        """pymodbus-style read (an exception response is returned, not raised), for ``drivers.sunspec.discover``."""
        try:
            return await self._call(f"read holding {address}+{count} unit {device_id}", Expected(3, count=count),
                                    lambda c: c.read_holding_registers(address, count=count, device_id=device_id))
        except DeviceException as exc:
            return ExceptionResponse(3, exc.code, device_id=device_id)

    async def write(self, address: int, registers: list[int], unit_id: int) -> None:
        """Write holding registers: one register with function 6, several with function 16."""
        what = f"write {address}+{len(registers)} unit {unit_id}"
        if len(registers) == 1:
            await self._call(what, Expected(6, address=address),
                             lambda c: c.write_register(address, registers[0], device_id=unit_id))
        else:
            await self._call(what, Expected(16, address=address, count=len(registers)),
                             lambda c: c.write_registers(address, registers, device_id=unit_id))

    def close(self) -> None:
        self._drop()


class ConnectionPool:
    """One :class:`Connection` per endpoint key."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}

    def connection(self, config: DeviceConfig) -> Connection:
        """The shared connection for ``config.endpoint`` (created on first use, widened for each device)."""
        conn = self._connections.get(config.endpoint.key)
        if conn is None:
            conn = Connection(config.endpoint, config.timeout_s, config.retries, config.min_request_gap_s)
            self._connections[config.endpoint.key] = conn
        else:
            conn.adopt(config)
        return conn

    def __len__(self) -> int:
        return len(self._connections)

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
