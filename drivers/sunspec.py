"""SunSpec: discovery, model decoding and register images, from the model definitions pysunspec2 ships.

A SunSpec device holds, in its holding registers, the marker ``SunS`` (0x5375 0x6E53) at a base
address (40000, 0 or 50000), then a chain of models, each ``(ID, L, L registers of points)``, ended
by ID 0xFFFF. The layout of every model comes from ``sunspec2/models/json/model_<id>.json``; nothing
is retyped here. Offsets in this module count from the model's ID register (ID is offset 0, L is
offset 1, the first point after the header is offset 2), as in the SunSpec specification.

Values: ``value × 10^sf`` with ``sf`` read from the model's ``*_SF`` point. A not-implemented value
(0x8000 for int16, 0xFFFF for uint16/enum16/bitfield16, 0x80000000 for int32, 0xFFFFFFFF for
uint32/enum32/bitfield32, NaN for float32, all-NUL strings, 0x8000 for sunssf) decodes to ``None``.
SunSpec also lists 0 as "not accumulated" for the acc types, but 0 is a genuine counter reading on a
new meter or an export counter of a zero-export site: acc points decode to their value, 0 included.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from sunspec2 import device as sunspec_device

from drivers.profile import Function, Point, Profile
from drivers.transport import DeviceException

MARKER = (0x5375, 0x6E53)           # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)  # where the marker may sit, in the order they are probed
END_MODEL_ID = 0xFFFF
MAX_READ = 125                      # registers per Modbus read request
MAX_MODELS = 64                     # a chain longer than this is taken as garbage

_REGISTERS = {"int16": 1, "uint16": 1, "count": 1, "acc16": 1, "enum16": 1, "bitfield16": 1, "pad": 1,
              "sunssf": 1, "int32": 2, "uint32": 2, "acc32": 2, "enum32": 2, "bitfield32": 2, "ipaddr": 2,
              "float32": 2, "int64": 4, "uint64": 4, "acc64": 4, "float64": 4, "eui48": 4, "ipv6addr": 8}
_SIGNED = {"int16", "sunssf", "int32", "int64"}
_UNIMPLEMENTED = {"int16": 0x8000, "sunssf": 0x8000, "uint16": 0xFFFF, "count": 0xFFFF, "enum16": 0xFFFF,
                  "bitfield16": 0xFFFF, "int32": 0x8000_0000, "uint32": 0xFFFF_FFFF, "enum32": 0xFFFF_FFFF,
                  "bitfield32": 0xFFFF_FFFF, "int64": 0x8000_0000_0000_0000,
                  "uint64": 0xFFFF_FFFF_FFFF_FFFF}


class SunSpecError(Exception):
    """No SunSpec marker, a broken model chain, or an unknown model."""


@dataclass(frozen=True)
class PointDef:
    """One point of a model, as laid out in registers.

    ``name`` is the point name for top-level points, ``group.Point`` for points of a non-repeating
    group and ``group[i].Point`` (i from 1) for repeating groups. ``offset`` counts from the model's
    ID register. ``sf`` is the name of the scale-factor point, a constant exponent, or None.
    """

    name: str
    type: str
    offset: int
    size: int
    sf: str | int | None
    units: str
    writable: bool
    mandatory: bool
    symbols: Mapping[str, int]


@dataclass(frozen=True)
class ModelDef:
    """A SunSpec model definition: its fixed points and, if any, one repeating group."""

    id: int
    name: str
    label: str
    fixed_length: int                   # L of the model without repeating-group instances [registers]
    points: Mapping[str, PointDef]      # top-level and non-repeating-group points
    group_name: str | None              # the repeating group, if the model has one
    group_count: str | None             # the point that counts its instances (e.g. 803 ``NStr``), if any
    group_length: int                   # registers per repeating-group instance
    group_points: tuple[PointDef, ...]  # offsets relative to the start of one instance

    def length(self, repeats: int = 0) -> int:
        """The model's L for ``repeats`` instances of its repeating group. [registers]"""
        return self.fixed_length + repeats * self.group_length

    def repeats(self, length: int) -> int:
        """How many repeating-group instances a model of length ``length`` holds."""
        extra = length - self.fixed_length
        if extra < 0 or (self.group_length == 0 and extra) or (self.group_length and extra % self.group_length):
            raise SunSpecError(f"model {self.id} ({self.name}): length {length} does not fit its definition "
                               f"(fixed {self.fixed_length}, group {self.group_length})")
        return extra // self.group_length if self.group_length else 0

    def layout(self, length: int | None = None) -> dict[str, PointDef]:
        """Every point of a model instance of ``length`` registers (default: no repeats), by name."""
        out = dict(self.points)
        n = self.repeats(length) if length is not None else 0
        for i in range(n):
            base = 2 + self.fixed_length + i * self.group_length
            for p in self.group_points:
                name = f"{self.group_name}[{i + 1}].{p.name}"
                out[name] = PointDef(name, p.type, base + p.offset, p.size, p.sf, p.units, p.writable,
                                     p.mandatory, p.symbols)
        return out


@dataclass(frozen=True)
class DiscoveredModel:
    """A model found on a device: its ID, name, address of its ID register, and its L. [registers]"""

    id: int
    name: str
    address: int
    length: int


def _points(gdef: Mapping[str, Any], start: int, prefix: str = "") -> tuple[list[PointDef], int]:
    out: list[PointDef] = []
    offset = start
    for p in gdef.get("points", []):
        ptype = p["type"]
        size = _REGISTERS.get(ptype) or int(p["size"])
        sf = p.get("sf")
        if isinstance(sf, str) and sf.lstrip("-").isdigit():
            sf = int(sf)
        out.append(PointDef(prefix + p["name"], ptype, offset, size, sf, (p.get("units") or "").strip(),
                            p.get("access") == "RW", p.get("mandatory") == "M",
                            {s["name"]: int(s["value"]) for s in p.get("symbols", [])}))
        offset += size
    return out, offset


@cache
def model_def(model_id: int) -> ModelDef:
    """The definition of SunSpec model ``model_id`` from pysunspec2's JSON files."""
    try:
        raw = sunspec_device.get_model_def(model_id, mapping=False)
    except Exception as exc:  # pysunspec2 raises its ModelDefinitionError, or OSError on a broken install
        raise SunSpecError(f"no definition for SunSpec model {model_id}: {exc}") from exc
    group = raw["group"]
    fixed, offset = _points(group, 0)
    repeating: dict[str, Any] | None = None
    for sub in group.get("groups", []):
        count = sub.get("count")
        if count is None or count == 1:
            pts, offset = _points(sub, offset, prefix=f"{sub['name']}.")
            fixed.extend(pts)
        elif repeating is None:
            repeating = sub
        else:
            raise SunSpecError(f"model {model_id}: more than one repeating group is not supported")
    group_points: tuple[PointDef, ...] = ()
    group_length = 0
    if repeating is not None:
        pts, group_length = _points(repeating, 0)
        group_points = tuple(pts)
    return ModelDef(id=model_id, name=group["name"], label=group.get("label", group["name"]),
                    fixed_length=offset - 2, points={p.name: p for p in fixed},
                    group_name=repeating["name"] if repeating else None,
                    group_count=repeating.get("count") if repeating and isinstance(repeating.get("count"), str)
                    else None,
                    group_length=group_length, group_points=group_points)


def reference_errors(profile: Profile) -> list[tuple[str, str]]:
    """``(point name, problem)`` for every profile point whose ``sunspec`` reference names a model pysunspec2 does
    not define, or a point that model does not have (checked before run time: ``ems config check``)."""
    problems = []
    for name, p in profile.points.items():
        ref = p.sunspec
        if ref is None:
            continue
        try:
            mdef = model_def(ref.model)
        except SunSpecError:
            problems.append((name, f"SunSpec model {ref.model} does not exist"))
            continue
        base = ref.point.split("].", 1)[1] if mdef.group_name and ref.point.startswith(f"{mdef.group_name}[") \
            else None
        if ref.point not in mdef.points and not (base and any(g.name == base for g in mdef.group_points)):
            problems.append((name, f"SunSpec model {ref.model} ({mdef.name}) has no point {ref.point!r}"))
    return problems


def model_name(model_id: int) -> str:
    """The model's short name (e.g. ``inverter_three_phase``), or ``model_<id>`` for an unknown model."""
    try:
        return model_def(model_id).name
    except SunSpecError:
        return f"model_{model_id}"


# --- register codec --------------------------------------------------------------------------------------------

def _to_int(regs: Sequence[int]) -> int:
    value = 0
    for r in regs:
        value = (value << 16) | (r & 0xFFFF)
    return value


def _from_int(value: int, size: int) -> list[int]:
    value &= (1 << (16 * size)) - 1
    return [(value >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


def raw_value(point: PointDef, regs: Sequence[int]) -> int | float | str | None:
    """The unscaled value of ``point`` from its registers; ``None`` when not implemented (or a pad)."""
    if len(regs) != point.size:
        raise ValueError(f"{point.name}: {len(regs)} registers given, {point.size} expected")
    t = point.type
    if t == "pad":
        return None
    if t == "string":
        text = b"".join(struct.pack(">H", r & 0xFFFF) for r in regs).split(b"\0", 1)[0]
        return text.decode("utf-8", errors="replace").strip() or None
    if t in ("float32", "float64"):
        fmt = ">f" if t == "float32" else ">d"
        value = struct.unpack(fmt, _to_int(regs).to_bytes(2 * point.size, "big"))[0]
        return None if math.isnan(value) else value
    value = _to_int(regs)
    if _UNIMPLEMENTED.get(t) == value:
        return None
    if t in _SIGNED and value >= 1 << (16 * point.size - 1):
        value -= 1 << (16 * point.size)
    return value


def encode_raw(point: PointDef, value: int | float | str | None) -> list[int]:
    """The registers for an unscaled ``value`` of ``point``; ``None`` gives the not-implemented pattern."""
    t = point.type
    if t == "string":
        data = (value or "").encode("utf-8")[: 2 * point.size].ljust(2 * point.size, b"\0")
        return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    if t in ("float32", "float64"):
        fmt = ">f" if t == "float32" else ">d"
        number = math.nan if value is None else float(value)
        return _from_int(int.from_bytes(struct.pack(fmt, number), "big"), point.size)
    if value is None:
        return _from_int(_UNIMPLEMENTED.get(t, 0), point.size)
    return _from_int(round(float(value)), point.size)


def scaled(value: float, sf: int) -> int:
    """The integer register value that stands for ``value`` at scale factor ``sf`` (value = raw × 10^sf)."""
    return round(value / 10.0 ** sf)


def decode_model(model_id: int, regs: Sequence[int]) -> dict[str, int | float | str | None]:
    """Decode one model's registers (from its ID register, ``2 + L`` of them) into scaled point values.

    Numbers carrying a scale factor are ``raw × 10^sf`` (float); enums, bitfields and counts stay
    ints; strings are str; a not-implemented point, or one whose scale factor is not implemented,
    is ``None``. Scale-factor points appear under their own names with their exponent.
    """
    mdef = model_def(model_id)
    if len(regs) < 2 or regs[0] != model_id:
        raise SunSpecError(f"registers do not start with model ID {model_id}")
    layout = mdef.layout(regs[1])
    if len(regs) < 2 + regs[1]:
        raise SunSpecError(f"model {model_id}: {len(regs)} registers given, {2 + regs[1]} needed")
    raw = {name: raw_value(p, regs[p.offset:p.offset + p.size]) for name, p in layout.items()}
    out: dict[str, int | float | str | None] = {}
    for name, p in layout.items():
        value = raw[name]
        if p.type == "pad":
            continue
        if value is not None and p.sf is not None and p.type != "sunssf":
            sf = p.sf if isinstance(p.sf, int) else raw.get(_sf_name(name, p.sf, raw))
            value = None if sf is None else float(value) * 10.0 ** int(sf)
        out[name] = value
    return out


def _sf_name(point_name: str, sf: str, names: Mapping[str, object]) -> str:
    """The scale-factor point of ``point_name``: in its own group instance if it has one there, else top level."""
    prefix = point_name.rpartition(".")[0]
    return f"{prefix}.{sf}" if prefix and f"{prefix}.{sf}" in names else sf


# --- register images -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SunSpecImage:
    """A SunSpec register image: ``registers[0]`` sits at holding register ``base``."""

    base: int
    registers: list[int]
    models: list[DiscoveredModel]

    def point_address(self, model_id: int, point: str) -> int:
        """Absolute register address of ``point`` in the first model ``model_id`` of the image."""
        model = next((m for m in self.models if m.id == model_id), None)
        if model is None:
            raise SunSpecError(f"model {model_id} is not in the image")
        layout = model_def(model_id).layout(model.length)
        if point not in layout:
            raise SunSpecError(f"model {model_id} has no point {point!r}")
        return model.address + layout[point].offset


def build_image(models: Iterable[int], values: Mapping[int, Mapping[str, int | float | str | None]] | None = None,
                base: int = 40000, repeats: Mapping[int, int] | None = None) -> SunSpecImage:
    """Lay out a SunSpec register image: marker, each model with its defined length, end marker.

    Parameters
    ----------
    models : model IDs in chain order (common model 1 first, by SunSpec rule).
    values : per model ID, unscaled register values by point name (``scaled`` converts engineering
        values); points not given are not implemented (their sentinel), pads are 0.
    base : holding-register address of the marker (40000, 0 or 50000).
    repeats : per model ID, instances of its repeating group (default 1 when the model has one); the
        group's count point (e.g. 803 ``NStr``) is set to match unless ``values`` sets it.
    """
    values = values or {}
    repeats = repeats or {}
    regs: list[int] = list(MARKER)
    found: list[DiscoveredModel] = []
    for model_id in models:
        mdef = model_def(model_id)
        n = repeats.get(model_id, 1 if mdef.group_name else 0)
        length = mdef.length(n)
        block = [0] * (2 + length)
        given = dict(values.get(model_id, {}))
        for name, p in mdef.layout(length).items():
            if p.offset < 2:
                continue
            value = given.pop(name, None)
            if p.type == "pad":
                value = 0
            elif value is None and name == mdef.group_count:
                value = n
            block[p.offset:p.offset + p.size] = encode_raw(p, value)
        if given:
            raise SunSpecError(f"model {model_id} has no point(s) {sorted(given)}")
        block[0], block[1] = model_id, length
        found.append(DiscoveredModel(model_id, mdef.name, base + len(regs), length))
        regs.extend(block)
    regs.extend([END_MODEL_ID, 0])
    return SunSpecImage(base, regs, found)


# --- discovery over Modbus -------------------------------------------------------------------------------------

class PymodbusClient(Protocol):
    """A pymodbus async client (``AsyncModbusTcpClient`` and friends)."""

    async def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Any: ...


class ProfileConnection(Protocol):
    """A ``drivers.transport.Connection``: raises ``DeviceException`` on a Modbus exception response."""

    async def read(self, function: Function, address: int, count: int, unit_id: int) -> list[int]: ...


Reader = PymodbusClient | ProfileConnection


async def _read_chunk(client: Reader, unit_id: int, address: int, count: int) -> list[int] | None:
    if hasattr(client, "read_holding_registers"):
        rr = await client.read_holding_registers(address, count=count, device_id=unit_id)
        return None if rr.isError() else list(rr.registers[:count])
    try:
        return await client.read(Function.HOLDING, address, count, unit_id)
    except DeviceException:
        return None


async def read_registers(client: Reader, unit_id: int, address: int, count: int) -> list[int] | None:
    """Read ``count`` holding registers in requests of at most 125; ``None`` on an exception response.

    ``client`` is a pymodbus async client or a ``drivers.transport.Connection``; a device that does
    not answer raises what the client raises (``ModbusException`` or ``TransportError``).
    """
    out: list[int] = []
    while count > 0:
        n = min(count, MAX_READ)
        regs = await _read_chunk(client, unit_id, address, n)
        if regs is None:
            return None
        out.extend(regs)
        address += n
        count -= n
    return out


async def find_base(client: Reader, unit_id: int) -> int:
    """The address of the ``SunS`` marker, probing 40000, 0 and 50000; :class:`SunSpecError` if none, saying when
    every probe was refused with a Modbus exception (a device in fault, or another unit behind a gateway: not a
    device without SunSpec)."""
    refused = 0
    for base in BASE_ADDRESSES:
        regs = await read_registers(client, unit_id, base, 2)
        if regs is not None and tuple(regs) == MARKER:
            return base
        refused += regs is None
    where = f"no SunSpec marker at {', '.join(map(str, BASE_ADDRESSES))} (unit {unit_id})"
    if refused == len(BASE_ADDRESSES):
        raise SunSpecError(f"{where}: the device refused every read with a Modbus exception (a device fault, or "
                           "another unit id behind a gateway)")
    raise SunSpecError(where)


async def discover(client: Reader, unit_id: int) -> list[DiscoveredModel]:
    """Find the SunSpec marker and walk the model chain to the end marker.

    Connection errors from the client (pymodbus ``ModbusException``) propagate; a missing marker or
    a chain that cannot be read raises :class:`SunSpecError`.
    """
    base = await find_base(client, unit_id)
    address = base + 2
    found: list[DiscoveredModel] = []
    for _ in range(MAX_MODELS):
        header = await read_registers(client, unit_id, address, 2)
        if header is None:
            raise SunSpecError(f"model chain broken at register {address} (unit {unit_id})")
        model_id, length = header
        if model_id == END_MODEL_ID:
            return found
        found.append(DiscoveredModel(model_id, model_name(model_id), address, length))
        address += 2 + length
    raise SunSpecError(f"more than {MAX_MODELS} models: no end marker (unit {unit_id})")


async def read_model(client: Reader, unit_id: int,
                     model: DiscoveredModel) -> dict[str, int | float | str | None]:
    """Read and decode one discovered model (see :func:`decode_model`)."""
    regs = await read_registers(client, unit_id, model.address, 2 + model.length)
    if regs is None:
        raise SunSpecError(f"model {model.id} at {model.address} could not be read (unit {unit_id})")
    return decode_model(model.id, regs)


async def model_table(client: Reader, unit_id: int, where: str) -> str:
    """The SunSpec models of the device at ``where`` (id, name, address, length) and its common model's identity
    (manufacturer, model, serial, version), as text; errors as :func:`discover` raises them."""
    models = await discover(client, unit_id)
    common = next((m for m in models if m.id == 1), None)
    identity = await read_model(client, unit_id, common) if common is not None else {}
    lines = [f"{where} unit {unit_id}: {len(models)} SunSpec model(s)"]
    for key, label in (("Mn", "manufacturer"), ("Md", "model"), ("SN", "serial"), ("Vr", "version")):
        lines.append(f"  {label:<12} {identity.get(key) or '-'}")
    lines.append(f"  {'id':>5}  {'name':<28} {'address':>7} {'length':>6}")
    lines += [f"  {m.id:>5}  {m.name:<28} {m.address:>7} {m.length:>6}" for m in models]
    return "\n".join(lines)


# --- profiles ---------------------------------------------------------------------------------------------------

_PROFILE_TYPES = {"int16": "s16", "sunssf": "s16", "uint16": "u16", "enum16": "u16", "bitfield16": "u16",
                  "count": "u16", "acc16": "u16", "int32": "s32", "uint32": "u32", "acc32": "u32",
                  "enum32": "u32", "bitfield32": "u32", "float32": "f32", "int64": "s64", "uint64": "u64",
                  "acc64": "u64", "float64": "f64", "string": "string"}


def profile_type(point: PointDef) -> str:
    """The profile data type (``drivers.profile.DataType`` value) that holds a SunSpec point."""
    try:
        return _PROFILE_TYPES[point.type]
    except KeyError:
        raise SunSpecError(f"SunSpec type {point.type} of {point.name} has no profile data type") from None


def referenced_models(profile: Profile) -> list[int]:
    """SunSpec model IDs a profile's points refer to, ascending (the common model 1 is not implied)."""
    return sorted({p.sunspec.model for p in profile.points.values() if p.sunspec is not None})


def resolve(profile: Profile, discovered: Sequence[DiscoveredModel]) -> Profile:
    """Turn a profile's ``sunspec: {model, point}`` references into absolute addresses on one device.

    Each such point gets ``address`` (and, for points scaled by a ``*_SF`` point,
    ``scale_factor_register``; a constant SunSpec exponent is folded into ``scale``); its reference
    is dropped, so the result is an ordinary address-based profile. Points whose model the device
    does not carry are left out (the device simply does not have them: their readings are
    missing). Raises :class:`SunSpecError` when the profile names a point its model does not define,
    states a type that differs from the definition, or when a write sequence needs a point that was
    left out.
    """
    by_model: dict[int, list[DiscoveredModel]] = {}
    for m in discovered:
        by_model.setdefault(m.id, []).append(m)
    points: dict[str, Point] = {}
    errors: list[str] = []
    for name, p in profile.points.items():
        ref = p.sunspec
        if ref is None:
            points[name] = p
            continue
        layout = model_def(ref.model).layout()
        spec = layout.get(ref.point)
        if spec is None:
            errors.append(f"{name}: model {ref.model} has no point {ref.point!r}")
            continue
        if str(p.type) != profile_type(spec) or (p.length is not None and p.length != spec.size):
            errors.append(f"{name}: {ref.model}.{ref.point} is {spec.type} ({profile_type(spec)}, {spec.size} "
                          f"registers), the profile says {p.type}")
            continue
        instances = by_model.get(ref.model, [])
        if ref.instance >= len(instances):
            continue
        model = instances[ref.instance]
        update: dict[str, Any] = {"address": model.address + spec.offset, "sunspec": None}
        if spec.symbols and not (p.states or p.bits):   # the model's own names, unless the profile gives its own
            named = {value: name for name, value in spec.symbols.items()}
            update["bits" if spec.type.startswith("bitfield") else "states"] = named
        if isinstance(spec.sf, str):
            update["scale_factor_register"] = model.address + layout[spec.sf].offset
        elif isinstance(spec.sf, int):
            update["scale"] = p.scale * 10.0 ** spec.sf
        points[name] = p.model_copy(update=update)
    needed = [s.point for seq in (profile.remote_control.enter, profile.remote_control.leave) for s in seq] \
        if profile.remote_control else []
    needed += [p.write.direction.point for p in points.values() if p.write and p.write.direction]
    errors += [f"write sequences need {n!r}, which this device does not carry" for n in needed if n not in points]
    if errors:
        raise SunSpecError(f"profile {profile.name}: " + "; ".join(errors))
    if not points:
        raise SunSpecError(f"profile {profile.name}: the device carries none of its SunSpec models")
    return profile.model_copy(update={"points": points})
