"""Real Modbus TCP peers for tests: pymodbus SimDevice servers on free loopback ports.

    holding, inputs = profile_image(profile, {"grid_kw": 12.5}, sf={40087: -1})
    async with modbus_peer([sim_device(1, holding, inputs)]) as peer:
        ... AsyncModbusTcpClient("127.0.0.1", port=peer.port) ...
        await peer.set_point(profile, "grid_kw", 20.0)     # live update
        await peer.stop(); await peer.start()              # outage on the same port

Registers not in the image are invalid on the server (exception code 2, as on many real devices).
Images are plain ``{address: register}`` dicts per table; ``profile_image`` fills them with the codec of
``drivers.profile`` so a profile is served exactly as a device would hold it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from drivers.profile import Function, Point, Profile, encode, encode_sentinel, split
from tests.peers import free_port

Image = dict[int, int]


def _runs(image: Mapping[int, int]) -> list[SimData]:
    """Contiguous address runs of ``image`` as SimData blocks (gaps stay invalid)."""
    blocks: list[SimData] = []
    addresses = sorted(image)
    start = 0
    for i, a in enumerate(addresses):
        if i + 1 == len(addresses) or addresses[i + 1] != a + 1:
            run = addresses[start:i + 1]
            blocks.append(SimData(run[0], values=[image[x] for x in run], datatype=DataType.REGISTERS))
            start = i + 1
    return blocks


def sim_device(unit_id: int, holding: Mapping[int, int], inputs: Mapping[int, int] | None = None,
               action: SimAction | None = None) -> SimDevice:
    """A SimDevice with separate holding and input tables (coils/discrete inputs are one dummy bit each)."""
    bit = [SimData(0, values=False, datatype=DataType.BITS)]
    hr = _runs(holding) or [SimData(0, values=0, datatype=DataType.UINT16)]
    ir = _runs(inputs or {}) or [SimData(0, values=0, datatype=DataType.UINT16)]
    return SimDevice(id=unit_id, simdata=(bit, list(bit), hr, ir), action=action)


def put(image: Image, address: int, registers: list[int]) -> None:
    """Write ``registers`` into ``image`` from ``address`` on."""
    for i, r in enumerate(registers):
        image[address + i] = r


def profile_image(profile: Profile, values: Mapping[str, float | str | None],
                  sf: Mapping[int, int] | None = None) -> tuple[Image, Image]:
    """(holding, input) images of ``profile`` holding ``values``; points without a value hold their sentinel.

    ``sf`` gives scale-factor registers by address (raw s16 exponents; default 0).
    """
    tables: dict[Function, Image] = {Function.HOLDING: {}, Function.INPUT: {}}
    sf = dict(sf or {})
    held: dict[str, float | str | None] = {}
    for name, value in values.items():
        held.update(split(profile, name, value) if value is not None else {name: None})
    for name, point in profile.readable().items():
        table = tables[point.function]
        exponent = None
        if point.scale_factor_register is not None:
            exponent = sf.setdefault(point.scale_factor_register, 0)
            table[point.scale_factor_register] = exponent & 0xFFFF
        value = held.get(name)
        put(table, point.address, encode_sentinel(point) if value is None else encode(point, value, exponent))
    if profile.heartbeat is not None:
        tables[Function.HOLDING].setdefault(profile.heartbeat.address, 0)
    return tables[Function.HOLDING], tables[Function.INPUT]


class ModbusPeer:
    """A pymodbus TCP server on 127.0.0.1 that can be stopped and started again on the same port."""

    def __init__(self, devices: list[SimDevice], port: int | None = None):
        self.devices = devices
        self.port = port or free_port()
        self.server: ModbusTcpServer | None = None

    async def start(self) -> None:
        self.server = ModbusTcpServer(self.devices, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def set_registers(self, unit_id: int, function: Function, address: int, registers: list[int]) -> None:
        assert self.server is not None
        await self.server.async_setValues(unit_id, 16 if function is Function.HOLDING else 4, address, registers)

    async def get_registers(self, unit_id: int, function: Function, address: int, count: int) -> list[int]:
        assert self.server is not None
        code = 3 if function is Function.HOLDING else 4
        return list(await self.server.async_getValues(unit_id, code, address, count))

    async def set_point(self, profile: Profile, name: str, value: float | str | None, unit_id: int = 1,
                        sf: int | None = None) -> None:
        """Update one point of a running device (``None``: its not-implemented sentinel)."""
        for part, part_value in (split(profile, name, value) if value is not None else {name: None}).items():
            point: Point = profile.points[part]
            assert point.address is not None
            regs = encode_sentinel(point) if part_value is None else encode(point, part_value, sf)
            await self.set_registers(unit_id, point.function, point.address, regs)


@asynccontextmanager
async def modbus_peer(devices: list[SimDevice], port: int | None = None) -> AsyncIterator[ModbusPeer]:
    """A running :class:`ModbusPeer`, stopped on exit."""
    peer = ModbusPeer(devices, port)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()
