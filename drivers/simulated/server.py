"""Simulated devices: register images built from device profiles, served on real Modbus TCP servers.

A :class:`DeviceImage` is one device's registers, laid out by its profile: a SunSpec profile gets a
full SunSpec image (marker at 40000, common model 1, every model the profile refers to, end marker),
so any SunSpec client discovers it; an address-based (vendor) profile gets one table per Modbus
function covering its points. Values go in and out through the profile codec (``drivers.profile``),
so a device is served exactly as the profile reads it. Scale-factor registers are chosen once from
the site's ratings (the finest exponent whose range still holds full scale).

Clients may write only the profile's writable points, its heartbeat register and, on a SunSpec image,
the points the model marks RW; any other write is refused with exception 2 (illegal address), as real
devices do. :class:`DeviceServer` serves one or more images (unit ids) on one TCP port with pymodbus
``SimDevice``; its ``action`` hook refreshes the served registers from the image on every request and
applies the device's faults (delay, exception responses, gateway "no response"). A unit id that no
device has is answered with exception 0x0B (gateway target failed to respond), as a TCP-to-RS485
gateway answers for a unit that is not on its bus.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers import sunspec
from drivers.profile import DataType as PointType
from drivers.profile import (
    Decoded,
    Function,
    Point,
    Profile,
    combine,
    decode,
    encode,
    encode_sentinel,
    merge_bits,
    split,
)
from drivers.roles import CANONICAL_POINTS, Role
from drivers.simulated.faults import Faults
from ems.clock import Clock

log = logging.getLogger(__name__)

_RAW_MAX = {PointType.S16: 2**15 - 1, PointType.U16: 2**16 - 1, PointType.S32: 2**31 - 1,
            PointType.U32: 2**32 - 1, PointType.S64: 2**63 - 1, PointType.U64: 2**64 - 1}

#: SunSpec enable registers that must hold a value for a setpoint to act: point → (model, point, value).
SUNSPEC_ENABLES: dict[str, tuple[tuple[int, str, int], ...]] = {
    "pv_limit_pct": ((123, "WMaxLim_Ena", 1),),
    "battery_setpoint_kw": ((704, "WSetEna", 1), (704, "WSetMod", 1)),
}
HEARTBEAT_TIMEOUT_PERIODS = 3.0
"""A PCS reverts to 0 kW when the heartbeat register has not been written for this many periods. [-]"""
WATCHDOG_MIN_REAL_S = 1.0
"""A watchdog also waits this long in real time: at 900× a 30 s timeout is 33 ms, shorter than the jitter of a
client whose event loop runs in real time. [s]"""


def full_scale(power_kw: float) -> dict[str, float]:
    """Largest magnitude of a point, by unit, for a site whose largest power is ``power_kw``. [point unit]"""
    return {"kW": 1.5 * power_kw, "kWh": 1e7, "%": 100.0, "V": 1000.0, "Hz": 100.0,
            "A": 1.5 * power_kw * 1000.0 / 400.0, "degC": 150.0}


def choose_sf(point: Point, magnitude: float) -> int:
    """The finest exponent in [-3, 10] at which ``magnitude`` (point unit) fits the point's register type."""
    raw_max = _RAW_MAX.get(point.type)
    if raw_max is None or magnitude <= 0:
        return 0
    needed = magnitude / (abs(point.scale) * raw_max)
    return min(10, max(-3, math.ceil(math.log10(needed) - 1e-9)))


@dataclass
class RegisterTable:
    """A contiguous run of 16-bit registers starting at address ``start`` (one Modbus table)."""

    start: int
    registers: list[int]

    def covers(self, address: int, count: int) -> bool:
        return self.start <= address and address + count <= self.start + len(self.registers)

    def get(self, address: int, count: int) -> list[int]:
        i = address - self.start
        return self.registers[i:i + count]

    def put(self, address: int, registers: Sequence[int]) -> None:
        i = address - self.start
        self.registers[i:i + len(registers)] = [r & 0xFFFF for r in registers]


def _span(spans: Sequence[tuple[int, int]]) -> RegisterTable:
    lo = min(a for a, _ in spans)
    hi = max(a + n for a, n in spans)
    return RegisterTable(lo, [0] * (hi - lo))


@dataclass
class DeviceImage:
    """The registers of one simulated device and what its profile says about them."""

    name: str
    role: Role
    unit_id: int
    profile: Profile                          # resolved: every point has an address
    tables: dict[Function, RegisterTable]
    clock: Clock
    sunspec_image: sunspec.SunSpecImage | None = None
    writable: dict[int, str] = field(default_factory=dict)      # holding address → point name it belongs to
    last_write: dict[str, float] = field(default_factory=dict)  # point name → site monotonic time [s]

    @classmethod
    def build(cls, name: str, role: Role | str, unit_id: int, profile: Profile, clock: Clock,
              magnitudes: Mapping[str, float], identity: Mapping[str, str] | None = None) -> DeviceImage:
        """Lay out ``profile`` for a device; ``magnitudes`` (unit → full scale) sets the scale factors.

        ``identity`` fills the SunSpec common model (``Mn``, ``Md``, ``SN``, ``Vr``, ``Opt``).
        """
        role = Role(role)
        image: sunspec.SunSpecImage | None = None
        tables: dict[Function, RegisterTable] = {}
        writable: dict[int, str] = {}
        if sunspec.referenced_models(profile):
            common = {k: v for k, v in (identity or {}).items() if v}
            image = sunspec.build_image([1, *sunspec.referenced_models(profile)], {1: {**common, "DA": unit_id}})
            profile = sunspec.resolve(profile, image.models)
            tables[Function.HOLDING] = RegisterTable(image.base, list(image.registers))
            for model in image.models:
                for spec in sunspec.model_def(model.id).layout(model.length).values():
                    if spec.writable:
                        writable.update({model.address + spec.offset + i: spec.name for i in range(spec.size)})
        else:
            spans: dict[Function, list[tuple[int, int]]] = {}
            for p in profile.readable().values():
                spans.setdefault(p.function, []).append((p.address, p.count))
                if p.scale_factor_register is not None:
                    spans[p.function].append((p.scale_factor_register, 1))
            if profile.heartbeat is not None:
                spans.setdefault(Function.HOLDING, []).append((profile.heartbeat.address, 1))
            tables = {f: _span(s) for f, s in spans.items()}
        for pname, p in profile.readable().items():
            if p.write is not None:
                writable.update({p.address + i: pname for i in range(p.count)})
        if profile.heartbeat is not None:
            writable[profile.heartbeat.address] = "heartbeat"
        self = cls(name, role, unit_id, profile, tables, clock, image, writable)
        self._set_scale_factors(magnitudes)
        for pname, p in profile.readable().items():
            if p.write is not None:
                self.put(pname, 100.0 if pname == "pv_limit_pct" else 0.0)
        return self

    def _set_scale_factors(self, magnitudes: Mapping[str, float]) -> None:
        chosen: dict[tuple[Function, int], int] = {}
        for p in self.profile.readable().values():
            if p.scale_factor_register is not None:
                key = (p.function, p.scale_factor_register)
                chosen[key] = max(chosen.get(key, -3), choose_sf(p, magnitudes.get(p.unit, 0.0)))
        for (function, address), sf in chosen.items():
            self.tables[function].put(address, [sf & 0xFFFF])

    # --- values ------------------------------------------------------------------------------------------

    def _sf(self, p: Point) -> int | None:
        if p.scale_factor_register is None:
            return None
        raw = self.tables[p.function].get(p.scale_factor_register, 1)[0]
        return raw - 0x10000 if raw & 0x8000 else raw

    def measured_points(self) -> list[str]:
        """Canonical, read-only points of this device's role: what the site writes every step."""
        return [n for n, p in self.profile.readable().items()
                if p.write is None and n in CANONICAL_POINTS and CANONICAL_POINTS[n].role is self.role]

    def put(self, name: str, value: float | str | None) -> None:
        """Store ``value`` (point unit) for point ``name``; ``None`` stores its not-implemented pattern.

        A point combined from others (``sign_from``, ``subtract``, ``add``) is stored as its parts
        (``drivers.profile.split``). A point with a ``mask`` (a bit field sharing its register with others, e.g. a
        BMS's alarms and warnings) sets only its own bits: the register's other bits stay. A value the register
        cannot hold is stored as not implemented (and logged): the device saturates.
        """
        parts = {name: None} if value is None else split(self.profile, name, value)
        for part, part_value in parts.items():
            p = self.profile.points[part]
            if part_value is None:
                regs = encode_sentinel(p)
            else:
                try:
                    regs = encode(p, part_value, self._sf(p))
                    if p.mask is not None:
                        regs = merge_bits(p, self.tables[p.function].get(p.address, p.count), regs)
                except ValueError as exc:
                    log.warning("%s: %s = %r does not fit its register (%s); served as not implemented",
                                self.name, part, part_value, exc)
                    regs = encode_sentinel(p)
            self.tables[p.function].put(p.address, regs)

    def _decoded(self, name: str, final: bool = True) -> Decoded:
        p = self.profile.points[name]
        return decode(p, self.tables[p.function].get(p.address, p.count), self._sf(p), final=final)

    def value(self, name: str) -> float | int | str | None:
        """The value of point ``name`` as the profile decodes it, ``None`` when not implemented or implausible."""
        other = self.profile.points[name].depends_on
        if other is None:
            return self._decoded(name).value
        return combine(self.profile.points[name], self._decoded(name, False), self._decoded(other, False)).value

    def _sunspec_raw(self, model: int, point: str) -> int | float | str | None:
        """The unscaled value of a SunSpec point of this image (None: not implemented or model absent)."""
        image = self.sunspec_image
        if image is None or all(m.id != model for m in image.models):
            return None
        spec = sunspec.model_def(model).points[point]
        regs = self.tables[Function.HOLDING].get(image.point_address(model, point), spec.size)
        return sunspec.raw_value(spec, regs)

    def setpoint(self, name: str) -> float | None:
        """The setpoint the device acts on: the written value, signed by a direction point if the profile
        has one; ``None`` (no setpoint) while a SunSpec enable register does not enable it."""
        if name not in self.profile.points:
            return None
        for model, point, required in SUNSPEC_ENABLES.get(name, ()):
            if self.sunspec_image is not None and any(m.id == model for m in self.sunspec_image.models) \
                    and self._sunspec_raw(model, point) != required:
                return None
        value = self.value(name)
        if value is None or isinstance(value, str):
            return None
        direction = self.profile.points[name].write.direction if self.profile.points[name].write else None
        if direction is not None:
            code = self.value(direction.point)
            sign = {direction.positive: 1.0, direction.negative: -1.0}.get(code, 0.0)
            return sign * abs(float(value))
        return float(value)

    # --- client access -----------------------------------------------------------------------------------

    def client_write(self, address: int, registers: Sequence[int]) -> ExcCodes | None:
        """A client's write of holding registers: stored if every register is writable, else exception 2."""
        names = [self.writable.get(address + i) for i in range(len(registers))]
        table = self.tables.get(Function.HOLDING)
        if table is None or None in names or not table.covers(address, len(registers)):
            return ExcCodes.ILLEGAL_ADDRESS
        table.put(address, registers)
        now = self.clock.monotonic()
        for n in set(names):
            self.last_write[n] = now
        return None

    def watchdog(self) -> bool:
        """Revert the battery setpoint to its fallback if the client went quiet; True if it reverted now.

        Two watchdogs, whichever the device has: the profile's heartbeat register (armed by the first
        heartbeat; expires after ``HEARTBEAT_TIMEOUT_PERIODS`` periods without one) and, on SunSpec
        images, model 704's reversion timer ``WSetRvrtTms`` (expires that many seconds after the last
        write of ``WSet``; the setpoint becomes ``WSetRvrt``). Either also waits WATCHDOG_MIN_REAL_S real seconds.
        """
        name = "battery_setpoint_kw"
        if name not in self.profile.points:
            return False
        hb = self.profile.heartbeat
        if hb is not None and self._expired("heartbeat", HEARTBEAT_TIMEOUT_PERIODS * hb.period_s):
            del self.last_write["heartbeat"]
            return self._revert(name, 0.0, "heartbeat lost")
        timeout = self._sunspec_raw(704, "WSetRvrtTms")
        if timeout and self._expired(name, float(timeout)):
            del self.last_write[name]
            image = self.sunspec_image
            assert image is not None
            spec = sunspec.model_def(704).points["WSetRvrt"]
            fallback = self.tables[Function.HOLDING].get(image.point_address(704, "WSetRvrt"), spec.size)
            self.tables[Function.HOLDING].put(image.point_address(704, "WSet"), fallback)
            log.warning("%s: no setpoint for %s s: reverted to WSetRvrt", self.name, timeout)
            return True
        return False

    def _expired(self, written: str, timeout_s: float) -> bool:
        """Whether ``written`` was last written more than ``timeout_s`` site seconds (and WATCHDOG_MIN_REAL_S
        real seconds) ago; never written: not armed."""
        if written not in self.last_write:
            return False
        elapsed = self.clock.monotonic() - self.last_write[written]
        return elapsed > timeout_s and elapsed / self.clock.speed >= WATCHDOG_MIN_REAL_S

    def _revert(self, name: str, value: float, why: str) -> bool:
        log.warning("%s: %s: %s reverted to %g", self.name, why, name, value)
        self.put(name, value)
        return True


class DeviceServer:
    """One Modbus TCP server on ``host:port`` serving one or more device images (one unit id each)."""

    def __init__(self, host: str, port: int, images: Sequence[DeviceImage], faults: Faults):
        self.host = host
        self.port = port
        self.images = list(images)
        self.faults = faults
        self._server: ModbusTcpServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def _sim_device(self, image: DeviceImage) -> SimDevice:
        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
            f = self.faults.of(image.name)
            if f.delay_s:
                await asyncio.sleep(f.delay_s)
            if f.offline:
                return ExcCodes.GATEWAY_NO_RESPONSE
            if f.exception_code is not None:
                return ExcCodes(f.exception_code)
            if set_values is not None:
                return image.client_write(address, [int(v) for v in set_values])
            table = image.tables[Function.INPUT if function_code == 4 else Function.HOLDING]
            i = address - start_address
            registers[i:i + count] = table.get(address, count)
            return None

        dummy_bits = [SimData(0, values=False, datatype=DataType.BITS)]
        blocks = []
        for function in (Function.HOLDING, Function.INPUT):
            table = image.tables.get(function)
            blocks.append([SimData(table.start, values=list(table.registers), datatype=DataType.REGISTERS)]
                          if table is not None else [SimData(0, values=0, datatype=DataType.UINT16)])
        return SimDevice(id=image.unit_id, simdata=(dummy_bits, list(dummy_bits), blocks[0], blocks[1]),
                         action=action)

    @staticmethod
    def _absent_units() -> SimDevice:
        """Unit id 0, which pymodbus asks for every unit id it has no device for: every address, every request
        answered with exception 0x0B (without it pymodbus answers exception 4, device failure, and logs a
        traceback)."""
        async def no_response(*_args: object) -> ExcCodes:
            return ExcCodes.GATEWAY_NO_RESPONSE

        return SimDevice(id=0, simdata=[SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)],
                         action=no_response)

    async def start(self) -> None:
        """Start listening (returns once the port accepts connections); OSError naming the devices, host and port
        if the port cannot be had (in use, not an address of this machine)."""
        if self._server is not None:
            return
        await self._check_port()
        devices = [self._sim_device(i) for i in self.images]
        if all(i.unit_id != 0 for i in self.images):
            devices.append(self._absent_units())
        server = ModbusTcpServer(devices, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen" (the port was taken since the check)
            raise OSError(f"{self._names()}: cannot listen on {self.host}:{self.port}: {exc}") from None
        self._server = server

    def _names(self) -> str:
        return ", ".join(i.name for i in self.images)

    async def _check_port(self) -> None:
        """Bind the port once as the server will (pymodbus only logs why it could not)."""
        try:
            probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, self.host, self.port)
        except OSError as exc:
            why = (exc.strerror or str(exc)).rsplit(": ", 1)[-1]  # asyncio's text repeats the address
            if exc.errno == errno.EADDRINUSE:
                why += " (another program listens on that port)"
            raise OSError(f"{self._names()}: cannot listen on {self.host}:{self.port}: {why}") from None
        probe.close()
        await probe.wait_closed()

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    async def reconcile(self) -> None:
        """Stop while every device here is offline, run otherwise."""
        if all(self.faults.of(i.name).offline for i in self.images):
            await self.stop()
        else:
            await self.start()
