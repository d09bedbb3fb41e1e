"""The SCADA Modbus TCP server: serves :mod:`controller.scada.registers` from the latest published state.

It runs on the controller's event loop and reads only what the bus hands it (``offer``): the first read
after a new state message encodes the map once, later reads slice it, and the control cycle does no
Modbus work at all.
A write of the command block becomes a remote command on the shared intake
(:class:`controller.telemetry.remote.CommandIntake`, the same validated, expiring path as MQTT and the
dashboard, below the safety steps), from interface ``scada`` with the client's address as its identity.
Refusals are Modbus exceptions, never a silent clamp: 2 (illegal data address) for a register that is not writable or a
write that covers part of a field, 3 (illegal data value) for a value outside the register's range or a
command the controller rejects. A manual setpoint holds ``manual_timeout_s`` (the write timeout) and
then lapses: a SCADA that stops re-writing it loses control and the controller returns to its
configured mode.

Clients outside ``allowed_clients`` (when set) are disconnected as soon as they connect.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from controller.scada import registers as regmap
from controller.telemetry.config import ScadaSettings
from controller.telemetry.remote import CommandIntake

log = logging.getLogger(__name__)

REGISTER_CODES = (3, 4, 6, 16)
"""Read holding, read input, write single, write multiple (a write also reads back what it wrote)."""
_client: contextvars.ContextVar[str] = contextvars.ContextVar("scada_client", default="?")
"""The address of the client whose request is being served (set per request task)."""


class ScadaServer:
    """Serves the register map on ``settings.host:settings.port`` (port 0: see :attr:`port` after start).

    Parameters
    ----------
    settings : ScadaSettings
    intake : CommandIntake
        The controller's remote-command intake (shared with MQTT and the dashboard).
    """

    def __init__(self, settings: ScadaSettings, intake: CommandIntake):
        self.settings = settings
        self.intake = intake
        self.state: Mapping[str, Any] = {}
        self.manual_timeout_s = settings.write_timeout_s
        self.port = settings.port
        self._networks = [ipaddress.ip_network(c, strict=False) for c in settings.allowed_clients]
        self._server: ModbusTcpServer | None = None
        self._image: list[int] | None = None
        """The encoded registers of ``state`` (built on the first read after a change)."""

    def offer(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Take one bus message (only states matter)."""
        if kind == "state":
            self.state = payload
            self._image = None

    def allowed(self, host: str) -> bool:
        """Whether a client at ``host`` may connect (any, when no allow-list is set)."""
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def read(self, address: int, count: int) -> list[int] | ExcCodes:
        """``count`` registers from ``address`` of the current image (exception 2 outside the map)."""
        if address < 0 or address + count > regmap.SIZE or any(a not in regmap.OWNER
                                                               for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        if self._image is None:
            self._image = regmap.image({**self.state, "_scada": {"manual_timeout_s": self.manual_timeout_s}})
        return self._image[address:address + count]

    def write(self, address: int, values: Sequence[int], client: str) -> ExcCodes | None:
        """A client's write: every register must belong to a writable field, covered whole (else 2); every
        value must be in its range (else 3, nothing applied); then the fields apply in address order."""
        fields: list[tuple[regmap.Slot, float]] = []
        at = address
        while at < address + len(values):
            slot = regmap.BY_ADDRESS.get(at)
            if slot is None or slot.field.write is None or at + slot.field.kind.size > address + len(values):
                return ExcCodes.ILLEGAL_ADDRESS
            size = slot.field.kind.size
            fields.append((slot, regmap.decode(slot.field.kind, values[at - address:at - address + size])))
            at += size
        for slot, value in fields:
            assert slot.field.write is not None
            if not slot.field.write.accepts(value):
                log.warning("SCADA %s: %s = %g refused (outside its range)", client, slot.field.name, value)
                return ExcCodes.ILLEGAL_VALUE
        for slot, value in fields:
            if not self._apply(slot, value, client):
                return ExcCodes.ILLEGAL_VALUE
        return None

    def _apply(self, slot: regmap.Slot, value: float, client: str) -> bool:
        write = slot.field.write
        assert write is not None
        if write.command is None:   # the manual setpoint's expiry: kept here, applies to the next setpoint
            self.manual_timeout_s = int(value)
            self._image = None
            return True
        payload: dict[str, Any]
        if write.command == "set_mode":
            payload = {"mode": regmap.MODE_CODES[int(value)].value, "ttl_s": self.settings.command_ttl_s}
        elif write.command == "manual_setpoint":
            payload = {"battery_kw": value, "ttl_s": self.manual_timeout_s}
        elif write.command == "soc_reserve":
            payload = {"soc_pct": value, "ttl_s": self.settings.command_ttl_s}
        else:
            payload = {}
        result = self.intake.handle(write.command, payload, interface="scada", identity=client)
        return bool(result["accepted"])

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if function_code not in REGISTER_CODES:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            return self.write(address, [int(v) for v in set_values], _client.get())
        answer = self.read(address, count)
        if isinstance(answer, ExcCodes):
            return answer
        i = address - start_address
        registers[i:i + count] = answer
        return None

    async def start(self) -> None:
        """Start listening (returns once the port accepts connections; raises ``RuntimeError`` if it cannot)."""
        table = [SimData(0, values=[0] * regmap.SIZE, datatype=DataType.REGISTERS)]
        no_bits = [SimData(0, values=False, datatype=DataType.BITS)]
        device = SimDevice(id=self.settings.unit_id, simdata=(no_bits, list(no_bits), table, list(table)),
                           action=self._action)
        server = _GuardedServer(device, address=(self.settings.host, self.settings.port), guard=self.allowed)
        await server.serve_forever(background=True)
        self._server = server
        sockets = getattr(server.transport, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            async with asyncio.timeout(timeout_s):
                await server.shutdown()


class _GuardedServer(ModbusTcpServer):
    """pymodbus's TCP server whose connections refuse clients the guard rejects and tag each request with
    the client's address (for the command's ``by``)."""

    def __init__(self, device: SimDevice, *, address: tuple[str, int], guard: Callable[[str], bool]):
        super().__init__(device, address=address)
        self.guard = guard

    def callback_new_connection(self) -> ServerRequestHandler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _Handler(ServerRequestHandler):
    peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        if not self.server.guard(self.peer):
            log.warning("SCADA client %s refused: not in telemetry.scada.allowed_clients", self.peer)
            transport.abort()

    async def handle_request(self) -> None:
        if not self.server.guard(self.peer):
            return
        _client.set(self.peer)
        await super().handle_request()
