"""Device profiles (YAML data) and the register codec.

A profile describes one device family: which roles it serves, its points (function table, address,
type, word order, scaling, sentinels, plausible range, write limits), a watchdog heartbeat and the
write sequences that enter and leave remote control. The format is documented in docs/devices.md.

Public API (stable; the simulated servers in ``drivers.simulated`` build their register images
with :func:`encode`)::

    load_profile(name_or_path) -> Profile        # shipped name ("sunspec-meter") or a path; ConfigError on errors
    parse_profile(data, source) -> Profile       # same, from already-parsed YAML
    decode(point, registers, sf=None, *, final=True) -> Decoded  # (value, quality, detail); value None unless OK
    encode(point, value, sf=None) -> list[int]   # exact inverse of decode, for server images and writes
    encode_sentinel(point) -> list[int]          # the "not implemented" image of a point
    combine(point, own, other) -> Decoded        # points with add / subtract / sign_from (decoded final=False)
    split(profile, name, value) -> {point: value}  # inverse of combine: what each register-backed point holds
    Point.count                                  # registers the point occupies

Decoding order for numbers (``raw`` is the integer or float in the registers)::

    raw → sentinel check → (raw & mask) → raw · scale · 10**sf + offset → × −1 if invert
        → [combine: + or − another point (add, subtract), or sign from another point's bits (sign_from)]
        → plausible range check → raise to ``floor`` if below it

``sf`` is the signed exponent read from ``scale_factor_register`` (SunSpec style); points without a
scale-factor register ignore it. A point given as ``sunspec: {model, point}`` has no address until
``drivers.sunspec.resolve`` fills in ``address`` (and ``scale_factor_register``) from discovery.
Integer results with ``scale == 1``, no offset and no scale factor stay Python ints (exact for u64).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.readings import Quality
from drivers.roles import CANONICAL_POINTS, Role
from ems.yamlfile import ConfigError, FieldError, read_yaml, validate

PROFILE_DIR = Path(__file__).parent / "profiles"
MAX_REGISTERS_PER_READ = 125  # Modbus limit for function codes 3 and 4


class Function(StrEnum):
    """Modbus register table: holding (FC 3/6/16) or input (FC 4, read-only)."""

    HOLDING = "holding"
    INPUT = "input"


class DataType(StrEnum):
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    U64 = "u64"
    S64 = "s64"
    F32 = "f32"
    F64 = "f64"
    STRING = "string"


class WordOrder(StrEnum):
    """Order of 16-bit words in multi-register values; bytes inside a register are always big-endian."""

    BIG = "big"        # ABCD: most significant word first
    LITTLE = "little"  # CDAB: least significant word first


# registers per type and struct format (big-endian bytes, big word order)
_LAYOUT: dict[DataType, tuple[int, str]] = {
    DataType.U16: (1, ">H"), DataType.S16: (1, ">h"),
    DataType.U32: (2, ">I"), DataType.S32: (2, ">i"),
    DataType.U64: (4, ">Q"), DataType.S64: (4, ">q"),
    DataType.F32: (2, ">f"), DataType.F64: (4, ">d"),
}

#: Default "not implemented" values per type (SunSpec conventions; floats: NaN; strings: all zero).
#: Integer sentinels are register bit patterns (0x8000 is s16 -32768).
DEFAULT_SENTINELS: dict[DataType, int] = {
    DataType.U16: 0xFFFF, DataType.S16: 0x8000,
    DataType.U32: 0xFFFFFFFF, DataType.S32: 0x80000000,
    DataType.U64: 0xFFFFFFFFFFFFFFFF, DataType.S64: 0x8000000000000000,
}

_STRICT = ConfigDict(extra="forbid", frozen=True)


class SunSpecRef(BaseModel):
    """A point given by SunSpec model and point name instead of an address (resolved at connect time)."""

    model_config = _STRICT
    model: int = Field(ge=1, le=65534, description="SunSpec model id, e.g. 103")
    point: str = Field(min_length=1, description="point name in the model, e.g. W")
    instance: int = Field(0, ge=0, description="which instance when the device carries the model more than once")


class Plausible(BaseModel):
    """Plausible range after scaling; a value outside it is IMPLAUSIBLE."""

    model_config = _STRICT
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


class Direction(BaseModel):
    """Signed setpoints written as magnitude + direction command (e.g. Sungrow 0xAA charge / 0xBB discharge).

    The point's own register receives ``abs(value)``; ``point`` (another writable point) receives
    ``positive``, ``negative`` or ``zero`` according to the sign of the value.
    """

    model_config = _STRICT
    point: str
    positive: float
    negative: float
    zero: float


class SignFrom(BaseModel):
    """Sign taken from bits of another point (a magnitude register plus a state word, e.g. Sungrow 13000)."""

    model_config = _STRICT
    point: str
    negative_mask: int = Field(0, ge=0, description="bits that make the value negative")
    positive_mask: int = Field(0, ge=0, description="bits that keep it positive; neither set → 0")


class WriteSpec(BaseModel):
    """A point the EMS may write, with its limits after scaling (values outside are clamped)."""

    model_config = _STRICT
    min: float | None = None
    max: float | None = None
    verify: bool = Field(True, description="read the register back after writing and compare")
    tolerance: float | None = Field(None, ge=0, description="read-back tolerance after scaling; default half a step")
    rewrite_s: float | None = Field(None, gt=0, description="re-send an unchanged value after this period [s]")
    direction: Direction | None = None


class Point(BaseModel):
    """One register-backed value."""

    model_config = _STRICT
    function: Function = Function.HOLDING
    address: int | None = Field(None, ge=0, le=0xFFFF, description="0-based register address (PDU address)")
    sunspec: SunSpecRef | None = None
    type: DataType = DataType.U16
    length: int | None = Field(None, ge=1, le=MAX_REGISTERS_PER_READ, description="registers of a string")
    word_order: WordOrder | None = Field(None, description="default: the profile's word_order")
    scale: float = Field(1.0, description="factor applied to the raw value")
    scale_factor_register: int | None = Field(None, ge=0, le=0xFFFF,
                                              description="address of an s16 power-of-ten exponent (SunSpec SF)")
    offset: float = 0.0
    unit: str = ""
    invert: bool = Field(False, description="negate after scaling (device sign convention opposite to ours)")
    mask: int | None = Field(None, ge=1, description="bit mask applied to integer raw values (alarm words)")
    sentinels: list[float] = Field(default_factory=list, description="extra raw not-implemented values")
    default_sentinels: bool = Field(True, description="also treat the type's SunSpec not-implemented value as missing")
    plausible: Plausible | None = None
    floor: float | None = Field(None, description="plausible values below this are raised to it (PV power: 0)")
    add: str | None = Field(None, description="point whose value is added (DC input 1 + DC input 2)")
    subtract: str | None = Field(None, description="point whose value is subtracted (discharge − charge)")
    sign_from: SignFrom | None = None
    write: WriteSpec | None = None
    block: str | None = Field(None, description="only points with the same block label share a read request")
    states: dict[int, str] = Field(default_factory=dict,
                                   description="names of the values of an enumerated point (a state register)")
    bits: dict[int, str] = Field(default_factory=dict,
                                 description="names of the bits of a bit-field point (an alarm word), bit 0 lowest")
    note: str = Field("", description="source citation or remark")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.address is None) == (self.sunspec is None):
            raise ValueError("give exactly one of 'address' or 'sunspec'")
        if self.type is DataType.STRING:
            if self.length is None:
                raise ValueError("a string point needs 'length' (registers)")
            if self.write is not None or self.mask is not None:
                raise ValueError("a string point cannot have 'write' or 'mask'")
        elif self.length is not None:
            raise ValueError("'length' is only for strings")
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError("'scale' must be finite and non-zero")
        if self.mask is not None and self.type in (DataType.F32, DataType.F64):
            raise ValueError("'mask' is only for integer types")
        if self.write is not None and self.function is Function.INPUT:
            raise ValueError("input registers cannot be written; use function: holding")
        if sum(x is not None for x in (self.add, self.subtract, self.sign_from)) > 1:
            raise ValueError("give at most one of 'add', 'subtract', 'sign_from'")
        if self.write is not None and self.depends_on is not None:
            raise ValueError("a point combined from others ('add', 'subtract', 'sign_from') cannot be written")
        if (self.states or self.bits) and (self.type in (DataType.F32, DataType.F64, DataType.STRING)
                                           or self.scale != 1 or self.offset or self.invert):
            raise ValueError("'states' and 'bits' name raw integer values: an unscaled integer point only")
        if self.states and self.bits:
            raise ValueError("give 'states' (one value) or 'bits' (a bit field), not both")
        width = 16 * _LAYOUT[self.type][0] if self.type in _LAYOUT else 0
        if any(not 0 <= b < width for b in self.bits):
            raise ValueError(f"'bits' numbers a bit of the {width}-bit value: 0 … {width - 1}")
        return self

    def meaning(self, value: float | str | None) -> str:
        """What an integer ``value`` of this point says by its ``states`` or ``bits`` names: the state's name
        (``unknown state N`` if not named), the names of the bits set (``bit N`` if not named; ``none`` when no bit
        is set); '' for a point with neither, or a value that is not an integer."""
        if not (self.states or self.bits) or not isinstance(value, int | float) or value != int(value):
            return ""
        raw = int(value)
        if self.states:
            return self.states.get(raw, f"unknown state {raw} (0x{raw:04X})")
        raw &= (1 << 16 * _LAYOUT[self.type][0]) - 1   # a signed register holds the same bits
        set_bits = [b for b in range(raw.bit_length()) if raw >> b & 1]
        return ", ".join(self.bits.get(b, f"bit {b}") for b in set_bits) or "none"

    @property
    def depends_on(self) -> str | None:
        """The other point this point's value is combined with, if any."""
        return self.add or self.subtract or (self.sign_from.point if self.sign_from else None)

    @property
    def count(self) -> int:
        """Registers the point occupies."""
        if self.type is DataType.STRING:
            assert self.length is not None  # checked by the validator
            return self.length
        return _LAYOUT[self.type][0]


class Heartbeat(BaseModel):
    """Watchdog write: the device falls back to its own logic if this register is not written in time."""

    model_config = _STRICT
    address: int = Field(ge=0, le=0xFFFF, description="holding register")
    period_s: float = Field(gt=0, description="write at least this often [s]")
    value: int | None = Field(None, ge=0, le=0xFFFF, description="fixed value; omitted: a counter mod 65536")


class WriteStep(BaseModel):
    """Write ``value`` (after scaling) to the writable point ``point``."""

    model_config = _STRICT
    point: str
    value: float


class RemoteControl(BaseModel):
    """Write sequences that hand control to the EMS and give it back to the device."""

    model_config = _STRICT
    enter: list[WriteStep] = Field(default_factory=list)
    leave: list[WriteStep] = Field(default_factory=list)


class Profile(BaseModel):
    """A device profile: roles served, points by name, request limits, heartbeat and remote-control sequences."""

    model_config = _STRICT
    name: str
    description: str = ""
    manufacturer: str = ""
    models: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list, description="register documentation used, with versions")
    roles: list[Role] = Field(min_length=1)
    word_order: WordOrder = WordOrder.BIG
    max_registers_per_read: int = Field(100, ge=1, le=MAX_REGISTERS_PER_READ)
    max_gap: int = Field(0, ge=0, description="unused registers a read may span to merge two points")
    points: dict[str, Point] = Field(min_length=1)
    heartbeat: Heartbeat | None = None
    remote_control: RemoteControl | None = None

    @model_validator(mode="after")
    def _apply_defaults(self) -> Self:
        fixed = {n: p if p.word_order else p.model_copy(update={"word_order": self.word_order})
                 for n, p in self.points.items()}
        object.__setattr__(self, "points", fixed)
        return self

    def readable(self) -> dict[str, Point]:
        """Points with an address (every point once SunSpec references are resolved)."""
        return {n: p for n, p in self.points.items() if p.address is not None}


def check_profile(profile: Profile) -> list[FieldError]:
    """Cross-field checks pydantic cannot express; each error names its field path."""
    errors: list[FieldError] = []
    roles = set(profile.roles)
    for name, p in profile.points.items():
        where = f"points.{name}"
        canon = CANONICAL_POINTS.get(name)
        if canon is not None:
            if p.unit != canon.unit:
                errors.append(FieldError(f"{where}.unit",
                                         f"canonical point {name} is in {canon.unit!r}, not {p.unit!r}"))
            if canon.role not in roles:
                errors.append(FieldError(where, f"{name} belongs to role {canon.role}, not declared in 'roles'"))
        if p.write is not None and p.write.direction is not None:
            target = profile.points.get(p.write.direction.point)
            if target is None or target.write is None:
                errors.append(FieldError(f"{where}.write.direction.point",
                                         f"{p.write.direction.point!r} is not a writable point of this profile"))
        if p.depends_on is not None:
            other = profile.points.get(p.depends_on)
            field = "add" if p.add else "subtract" if p.subtract else "sign_from.point"
            if other is None or other.type is DataType.STRING or other.depends_on is not None:
                errors.append(FieldError(f"{where}.{field}",
                                         f"{p.depends_on!r} is not a plain numeric point of this profile"))
        if p.write is not None and None not in (p.write.min, p.write.max) and p.write.min > p.write.max:
            errors.append(FieldError(f"{where}.write", "min is above max"))
    if profile.remote_control is not None:
        for which in ("enter", "leave"):
            for i, step in enumerate(getattr(profile.remote_control, which)):
                target = profile.points.get(step.point)
                if target is None or target.write is None:
                    errors.append(FieldError(f"remote_control.{which}[{i}].point",
                                             f"{step.point!r} is not a writable point of this profile"))
    return errors


def parse_profile(data: Any, source: str) -> Profile:
    """Validate parsed YAML as a profile; :class:`ConfigError` names ``source`` and every bad field."""
    if isinstance(data, dict) and "name" not in data:
        data = {"name": Path(source).stem, **data}
    profile = validate(Profile, data, source)
    errors = check_profile(profile)
    if errors:
        raise ConfigError(source, errors)
    return profile


def profile_path(name_or_path: str | Path) -> Path:
    """A shipped profile name (``sunspec-meter``) → its file; anything with a suffix or separator is a path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        return Path(text)
    return PROFILE_DIR / f"{text}.yaml"


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in ``drivers/profiles``."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile by shipped name or path."""
    path = profile_path(name_or_path)
    if path.parent == PROFILE_DIR and not path.exists():
        raise ConfigError(str(name_or_path), [FieldError(
            "profile", f"no shipped profile {path.stem!r}; shipped: {', '.join(shipped_profiles())}")])
    return parse_profile(read_yaml(path), str(path))


# ---------------------------------------------------------------------------------------------- codec

class Decoded(NamedTuple):
    """Result of decoding one point: ``value`` is None unless ``quality`` is OK; ``detail`` says why."""

    value: float | int | str | None
    quality: Quality
    detail: str = ""


def _to_bytes(registers: Sequence[int], order: WordOrder) -> bytes:
    words = registers if order is WordOrder.BIG else registers[::-1]
    return struct.pack(f">{len(words)}H", *words)


def _from_bytes(data: bytes, order: WordOrder) -> list[int]:
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    return words if order is WordOrder.BIG else words[::-1]


def _is_sentinel(point: Point, raw: int | float | str, data: bytes) -> bool:
    """``data``: the point's bytes in big word order (the bit pattern sentinels are compared with)."""
    if point.type is DataType.STRING:
        return point.default_sentinels and not any(data)
    if isinstance(raw, float):
        return (point.default_sentinels and math.isnan(raw)) or any(raw == s for s in point.sentinels)
    pattern = int.from_bytes(data, "big")
    return ((point.default_sentinels and pattern == DEFAULT_SENTINELS[point.type])
            or raw in point.sentinels or pattern in point.sentinels)


@cache
def _scaling(scale: float, sf: int) -> tuple[float | int, float | int]:
    """Scaling as ``(multiplier, divisor)``: 3 / 10 gives 0.3 where 3 * 0.1 gives 0.30000000000000004."""
    mul: float | int = 1
    div: float | int = 1
    if scale != 1:
        inverse = 1 / scale
        if abs(scale) < 1 and abs(inverse - round(inverse)) < 1e-9:
            div = round(inverse)
        else:
            mul = scale
    if sf > 0:
        mul = mul * 10 ** sf
    elif sf < 0:
        div = div * 10 ** -sf
    return mul, div


def _ratio(point: Point, sf: int | None) -> tuple[float | int, float | int]:
    return _scaling(point.scale, sf if point.scale_factor_register is not None and sf else 0)


def decode(point: Point, registers: Sequence[int], sf: int | None = None, *, final: bool = True) -> Decoded:
    """Registers → value in the point's unit, or why not (sentinel, bad scale factor, implausible).

    ``registers`` are exactly ``point.count`` 16-bit words; ``sf`` is the raw s16 exponent read from
    ``point.scale_factor_register`` (required when the point has one). With ``final=False`` the
    plausible range and floor are not applied yet (the point is still to be :func:`combine`-d).
    """
    if len(registers) != point.count:
        raise ValueError(f"expected {point.count} registers, got {len(registers)}")
    raw: int | float | str
    if point.type is DataType.STRING:  # text is in register order whatever the word order of numbers
        data = _to_bytes(registers, WordOrder.BIG)
        raw = data.split(b"\0", 1)[0].decode("latin-1").rstrip()
    else:
        data = _to_bytes(registers, point.word_order or WordOrder.BIG)
        raw = struct.unpack(_LAYOUT[point.type][1], data)[0]
    if _is_sentinel(point, raw, data):
        shown = "NaN" if isinstance(raw, float) else f"0x{int.from_bytes(data, 'big'):X}"
        return Decoded(None, Quality.MISSING, f"not implemented ({shown})")
    if isinstance(raw, str):
        return Decoded(raw, Quality.OK)
    if point.scale_factor_register is not None:
        if sf is None or sf == -0x8000:
            return Decoded(None, Quality.MISSING, "scale factor not available")
        if not -10 <= sf <= 10:
            return Decoded(None, Quality.MISSING, f"scale factor {sf} out of range")
    if isinstance(raw, float) and not math.isfinite(raw):
        return Decoded(None, Quality.MISSING, f"non-finite value {raw}")
    if point.mask is not None:
        raw = int(raw) & point.mask
    mul, div = _ratio(point, sf)
    value = raw * mul if mul != 1 else raw
    value = value / div if div != 1 else value
    value = value + point.offset if point.offset else value
    if point.invert:
        value = -value
    return _in_range(point, value) if final else Decoded(value, Quality.OK)


def _in_range(point: Point, value: float | int) -> Decoded:
    if point.plausible is not None:
        lo, hi = point.plausible.min, point.plausible.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return Decoded(None, Quality.IMPLAUSIBLE, f"{value:g} {point.unit} outside [{lo}, {hi}]".rstrip())
    if point.floor is not None and value < point.floor:
        value = point.floor
    return Decoded(value, Quality.OK)


def combine(point: Point, own: Decoded, other: Decoded) -> Decoded:
    """Finish a point that has ``add``, ``subtract`` or ``sign_from``; both parts decoded with ``final=False``."""
    if own.value is None:
        return own
    if other.value is None:
        return Decoded(None, other.quality, f"{point.depends_on}: {other.detail}")
    if isinstance(own.value, str) or isinstance(other.value, str):
        return Decoded(None, Quality.MISSING, "text cannot be combined")
    value = float(own.value)
    if point.add is not None:
        value += other.value
    elif point.subtract is not None:
        value -= other.value
    elif point.sign_from is not None:
        bits = int(other.value)
        if bits & point.sign_from.negative_mask:
            value = -value
        elif not bits & point.sign_from.positive_mask:
            value = 0.0
    return _in_range(point, value)


def split(profile: Profile, name: str, value: float | str) -> dict[str, float | str]:
    """The values of the registers-backed points that make up ``name`` = ``value`` (inverse of :func:`combine`).

    For a plain point that is ``{name: value}``; simulated devices use it to hold combined points.
    """
    point = profile.points[name]
    if isinstance(value, str) or point.depends_on is None:
        return {name: value}
    if point.add is not None:
        return {name: value, point.add: 0.0}
    if point.subtract is not None:
        return {name: max(value, 0.0), point.subtract: max(-value, 0.0)}
    assert point.sign_from is not None
    bits = point.sign_from.positive_mask if value > 0 else point.sign_from.negative_mask if value < 0 else 0
    return {name: abs(value), point.sign_from.point: bits}


def encode(point: Point, value: float | int | str, sf: int | None = None) -> list[int]:
    """Value in the point's unit → registers (inverse of :func:`decode`; integers are rounded to nearest).

    Raises ``ValueError`` when the value does not fit the register type.
    """
    if point.type is DataType.STRING:
        data = str(value).encode("latin-1")
        size = 2 * point.count
        if len(data) > size:
            raise ValueError(f"string longer than {size} bytes")
        return _from_bytes(data.ljust(size, b"\0"), WordOrder.BIG)
    number = -value if point.invert else value
    number = number - point.offset if point.offset else number
    mul, div = _ratio(point, sf)
    raw: int | float = number * div if div != 1 else number
    raw = raw / mul if mul != 1 else raw
    fmt = _LAYOUT[point.type][1]
    if point.type in (DataType.F32, DataType.F64):
        raw = float(raw)
    else:
        raw = round(raw)
        bits = 16 * point.count
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt[1].islower() else (0, (1 << bits) - 1)
        if not lo <= raw <= hi:
            raise ValueError(f"{value} does not fit {point.type} (raw {raw})")
    return _from_bytes(struct.pack(fmt, raw), point.word_order or WordOrder.BIG)


def merge_bits(point: Point, current: Sequence[int], new: Sequence[int]) -> list[int]:
    """The registers of a masked integer point (a bit field sharing its register with other points) holding the
    bits of ``new`` under the point's ``mask`` and the bits of ``current`` elsewhere; a ``current`` that reads as
    not implemented counts as 0 (inverse of the mask in :func:`decode`)."""
    assert point.mask is not None and point.type not in (DataType.F32, DataType.F64, DataType.STRING)
    order = point.word_order or WordOrder.BIG
    if list(current) == encode_sentinel(point):
        current = [0] * point.count
    width = 16 * point.count
    old = int.from_bytes(_to_bytes(current, order), "big")
    bits = int.from_bytes(_to_bytes(new, order), "big")
    merged = (old & ~point.mask | bits & point.mask) & ((1 << width) - 1)
    return _from_bytes(merged.to_bytes(width // 8, "big"), order)


def encode_sentinel(point: Point) -> list[int]:
    """Registers that read as "not implemented" for ``point`` (its type's default sentinel, or its first custom one)."""
    if point.type is DataType.STRING:
        return [0] * point.count
    order = point.word_order or WordOrder.BIG
    if point.type in (DataType.F32, DataType.F64):
        raw = point.sentinels[0] if point.sentinels else math.nan
        return _from_bytes(struct.pack(_LAYOUT[point.type][1], raw), order)
    pattern = int(point.sentinels[0]) if point.sentinels else DEFAULT_SENTINELS[point.type]
    pattern &= (1 << (16 * point.count)) - 1  # a negative custom sentinel as its two's complement
    return _from_bytes(pattern.to_bytes(2 * point.count, "big"), order)
