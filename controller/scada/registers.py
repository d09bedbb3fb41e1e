"""The SCADA register map: one declarative table, from which the served image and the docs table come.

All registers are holding registers (function 3; function 4 reads the same image), addresses
0-based as on the wire, big-endian words (float32 and uint32 high word first). The map describes
itself: block 0 (the header) holds a marker, the map version and a directory of every block
(id, first address, length), so a client can check what it reads. Missing values are never 0:
float32 NaN, uint16 0xFFFF, uint32 0xFFFFFFFF.

Writable registers are only in the command block; a write anywhere else is refused with Modbus
exception 2 (illegal data address), a value outside a register's range with exception 3 (illegal
data value). Print the table with ``python -m controller.scada.registers``; ``--update
docs/integration.md`` rewrites the page's generated section (a test checks it is current).
"""

from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, get_args

from controller.commands import ManualSetpoint, SetMode, SocReserve, field_range
from controller.modes import Mode, Reason

MAP_VERSION = 1
"""Bumped whenever an address, type or meaning changes."""
MARKER = 0x454D
"""Register 0: ASCII ``EM``, so a client knows it is talking to this map."""
MAX_DEVICES = 16
"""Device slots in the device-health block (site file order; unused slots read as absent)."""
DEVICE_NAME_CHARS = 16

NAN_F32 = struct.unpack(">HH", struct.pack(">f", math.nan))
MISSING_U16 = 0xFFFF
MISSING_U32 = 0xFFFFFFFF

MODE_CODES: tuple[Mode, ...] = (Mode.AUTO, Mode.SELF_CONSUMPTION, Mode.TOU_RULE, Mode.MANUAL, Mode.STANDBY,
                                Mode.SAFE, Mode.MONITOR_ONLY)
"""Mode code = index (register value) of the mode."""
REASON_CODES: tuple[Reason, ...] = (Reason.PLAN, Reason.NO_PLAN, Reason.PLAN_EXPIRED, Reason.PLANNER_FAILED,
                                    Reason.SOLVER_TIMEOUT, Reason.OPERATOR, Reason.DATA_MISSING, Reason.INITIAL_MODE)
"""Reason code = index of the reason."""
WRITABLE_MODES: tuple[Mode, ...] = tuple(Mode(m) for m in get_args(SetMode.model_fields["mode"].annotation))
"""Modes a SCADA may request by writing the mode register: those ``set_mode`` takes (manual: write the
setpoint instead)."""
ALARM_BITS: tuple[str, ...] = ("data_missing", "import_cap_unheld", "write_failed", "planner_failed",
                               "state_store_corrupt", "device_unreachable", "point_missing", "point_stale",
                               "point_implausible", "telemetry", "other", "demand_peak_rising")
"""Bit i of the alarm field is set while an alarm of family ``ALARM_BITS[i]`` is active (the family is the
code up to its first ``:`` or ``.``; ``other`` for any family not listed)."""


class Kind(Enum):
    """Register type: (registers, description)."""

    U16 = (1, "uint16")
    U32 = (2, "uint32")
    F32 = (2, "float32")
    NAME = (DEVICE_NAME_CHARS // 2, f"ASCII, {DEVICE_NAME_CHARS} chars, NUL padded")

    @property
    def size(self) -> int:
        return self.value[0]


Getter = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Write:
    """What writing a register does: the allowed range and the command it becomes.

    ``command`` is the remote-command name (``controller.commands``); ``None`` means the value is only
    kept by the server (e.g. the expiry applied to the next manual setpoint).
    """

    low: float
    high: float
    command: str | None
    allowed: tuple[int, ...] | None = None
    """Only these raw values (codes), when given."""

    def accepts(self, value: float) -> bool:
        if not math.isfinite(value) or not self.low <= value <= self.high:
            return False
        return self.allowed is None or int(value) in self.allowed


@dataclass(frozen=True)
class Field:
    """One value in the map (one or more registers)."""

    name: str
    kind: Kind
    unit: str
    description: str
    get: Getter
    write: Write | None = None


@dataclass(frozen=True)
class Block:
    """A run of fields at consecutive addresses from ``start``."""

    id: int
    name: str
    start: int
    fields: tuple[Field, ...]

    @property
    def length(self) -> int:
        return sum(f.kind.size for f in self.fields)


@dataclass(frozen=True)
class Slot:
    """A field placed at its address."""

    address: int
    block: Block
    field: Field


def path(*keys: str) -> Getter:
    """A getter for ``state[k1][k2]...`` (``None`` if any level is missing)."""
    def get(state: Mapping[str, Any]) -> Any:
        value: Any = state
        for key in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value
    return get


def measured(name: str) -> Getter:
    """A measurement's value when its quality is ok (``None`` otherwise)."""
    def get(state: Mapping[str, Any]) -> Any:
        reading = path("measurements", name)(state)
        if isinstance(reading, Mapping) and reading.get("quality", "ok") == "ok":
            return reading.get("value")
        return None
    return get


def code_of(options: Sequence[Enum], getter: Getter) -> Getter:
    """The index of the enum value ``getter`` returns (``None`` when it is none of them)."""
    values = [o.value for o in options]

    def get(state: Mapping[str, Any]) -> Any:
        value = getter(state)
        return values.index(value) if value in values else None
    return get


def _epoch(getter: Getter) -> Getter:
    """A getter for an ISO 8601 time as Unix seconds."""
    def get(state: Mapping[str, Any]) -> Any:
        text = getter(state)
        return int(datetime.fromisoformat(text).timestamp()) if isinstance(text, str) else None
    return get


def alarm_bits(state: Mapping[str, Any]) -> int | None:
    """The active alarms as a bit field (:data:`ALARM_BITS`)."""
    codes = state.get("alarms")
    if not isinstance(codes, list):
        return None
    bits = 0
    for code in codes:
        family = str(code).replace(".", ":").split(":", 1)[0]
        bits |= 1 << (ALARM_BITS.index(family) if family in ALARM_BITS else ALARM_BITS.index("other"))
    return bits


def _device(i: int, what: str) -> Getter:
    def get(state: Mapping[str, Any]) -> Any:
        devices = state.get("devices")
        if not isinstance(devices, Mapping) or i >= len(devices):
            return None
        name, health = list(devices.items())[i]
        if what == "name":
            return name
        return {True: 1, False: 0}.get(health.get("ok")) if isinstance(health, Mapping) else None
    return get


def _requested_mode(state: Mapping[str, Any]) -> Any:
    request = path("operator", "request")(state)
    return MODE_CODES.index(Mode(request)) if request in {m.value for m in MODE_CODES} else 0


def _none(state: Mapping[str, Any]) -> Any:
    return None


def _zero(state: Mapping[str, Any]) -> Any:
    return 0


def _f32(name: str, unit: str, description: str, get: Getter) -> Field:
    return Field(name, Kind.F32, unit, description, get)


def _blocks() -> tuple[Block, ...]:
    site = Block(1, "site", 100, (
        Field("state_time", Kind.U32, "s", "time of the state these registers show (Unix epoch, UTC)",
              _epoch(path("ts"))),
        _f32("pv_kw", "kW", "PV power", measured("pv_kw")),
        _f32("load_kw", "kW", "site load (derived)", path("load_kw")),
        _f32("grid_kw", "kW", "grid power, + import", measured("grid_kw")),
        _f32("battery_kw", "kW", "battery power, + discharge", measured("battery_kw")),
        _f32("soc_pct", "%", "battery state of charge", measured("soc_pct")),
        Field("mode", Kind.U16, "code", "effective mode (mode codes)", code_of(MODE_CODES, path("mode"))),
        Field("reason", Kind.U16, "code", "reason code of the mode (reason codes)",
              code_of(REASON_CODES, path("reason"))),
        Field("safe", Kind.U16, "0/1", "1 while the safe state holds the battery", path("setpoints", "safe")),
        _f32("battery_setpoint_kw", "kW", "battery setpoint sent this cycle, + discharge",
             path("setpoints", "battery_kw")),
        _f32("pv_limit_pct", "%", "PV limit sent this cycle", path("setpoints", "pv_limit_pct")),
        _f32("soh_pct", "%", "battery state of health planning uses (NaN: the battery reports none)",
             path("battery", "soh_pct")),
        _f32("battery_capacity_kwh", "kWh", "energy the battery holds at full SOC now: nameplate x state of health "
             "(what plans count on)", path("battery", "capacity_kwh")),
    ))
    plan = Block(2, "plan_step", 200, (
        Field("step_start", Kind.U32, "s", "start of the current plan step (Unix epoch, UTC)",
              _epoch(path("plan", "step_start"))),
        _f32("plan_battery_kw", "kW", "planned battery power, + discharge", path("plan", "battery_kw")),
        _f32("plan_grid_kw", "kW", "planned grid power, + import", path("plan", "grid_kw")),
        _f32("plan_soc_pct", "%", "planned SOC at the end of the step", path("plan", "soc_pct")),
        Field("plan_created", Kind.U32, "s", "when the plan was made (Unix epoch, UTC)",
              _epoch(path("plan", "created_at"))),
    ))
    today = [_f32(f"{key}", "kWh", f"today's {text} (site local day)", path("today", key)) for key, text in (
        ("import_kwh", "grid import"), ("export_kwh", "grid export"), ("pv_kwh", "PV energy"),
        ("load_kwh", "load energy"), ("charge_kwh", "battery charge"), ("discharge_kwh", "battery discharge"))]
    money = [_f32(key, "currency", text, path("today", key)) for key, text in (
        ("cost", "today's energy cost at the tariff"),
        ("cost_no_battery", "today's cost had there been no battery"),
        ("saved", "today's saving: cost_no_battery - cost"))]
    energy = Block(3, "energy", 300, (
        *today, *money,
        _f32("month_peak_kw", "kW", "month-to-date demand peak", path("demand", "month_peak_kw")),
        Field("month_peak_at", Kind.U32, "s", "when the month-to-date demand peak was set: start of its interval "
              "(Unix epoch, UTC)", _epoch(path("demand", "month_peak_at"))),
        _f32("hold_kw", "kW", "demand level held this month: the plan's planned peak or the level billed so far "
             "(billed_kw), the higher (NaN without a demand charge)", path("demand", "hold_kw")),
        _f32("window_projected_kw", "kW", "the running demand window's average if the last minute's import lasts",
             path("demand", "window_projected_kw")),
        _f32("shed_to_hold_kw", "kW", "load to shed until the running demand window ends to hold hold_kw "
             "(0: it holds; a plant's load shedding may act on it)", path("demand", "shed_to_hold_kw")),
        _f32("window_left_min", "min", "time left in the running demand window", path("demand", "window_left_min")),
        _f32("billed_kw", "kW", "demand the month is billed on so far: the month-to-date peak, under a 12-month "
             "basis the highest of it and the 11 months before (NaN without a demand charge)",
             path("demand", "billed_kw")),
        _f32("month_saved", "currency", "what the battery saved so far this billing month, energy and demand charge "
             "(state month.saved)", path("month", "saved")),
        _f32("month_demand_saved", "currency", "of it, the demand charge: the month's billed demand without the "
             "battery less with it, times the rate with VAT (state month.demand_saved)", path("month", "demand_saved")),
    ))
    alarms = Block(4, "alarms", 400, (
        Field("active_count", Kind.U16, "count", "alarms active", lambda s: len(s["alarms"])
              if isinstance(s.get("alarms"), list) else None),
        Field("bits", Kind.U16, "bit field", "active alarm families (alarm bits)", alarm_bits),
    ))
    devices = Block(5, "devices", 500, tuple(
        f for i in range(MAX_DEVICES) for f in (
            Field(f"device{i}_health", Kind.U16, "code",
                  f"device slot {i}: 1 answering, 0 not answering, 0xFFFF no such device", _device(i, "health")),
            Field(f"device{i}_name", Kind.NAME, "text", f"device slot {i}: name in the site file", _device(i, "name")),
        )))
    command = Block(6, "command", 1000, (
        Field("mode_request", Kind.U16, "code",
              "requested mode (mode codes 0, 1, 2, 4); read: the request in force (0 = none/auto)",
              _requested_mode, Write(0, 4, "set_mode", tuple(MODE_CODES.index(m) for m in WRITABLE_MODES))),
        Field("manual_timeout_s", Kind.U16, "s",
              "expiry of the next manual setpoint written (write timeout); read: the value in use",
              path("_scada", "manual_timeout_s"), Write(1, 3600, None)),
        Field("manual_setpoint_kw", Kind.F32, "kW",
              "manual battery setpoint, + discharge; holds for manual_timeout_s, re-write to keep it",
              path("operator", "manual_setpoint_kw"),
              Write(*field_range(ManualSetpoint, "battery_kw"), "manual_setpoint")),
        Field("soc_reserve_pct", Kind.F32, "%", "operator SOC reserve (0 clears); read: the reserve in force",
              path("operator", "soc_reserve_pct"), Write(*field_range(SocReserve, "soc_pct"), "soc_reserve")),
        Field("replan", Kind.U16, "1", "write 1 to plan again now; reads 0", _zero, Write(1, 1, "replan")),
    ))
    body = (site, plan, energy, alarms, devices, command)
    header_fields = [
        Field("marker", Kind.U16, "-", f"0x{MARKER:04X} (ASCII EM)", lambda s: MARKER),
        Field("map_version", Kind.U16, "-", "version of this map", lambda s: MAP_VERSION),
        Field("block_count", Kind.U16, "count", "blocks in the directory that follows", lambda s: len(body)),
    ]
    for b in body:
        header_fields += [
            Field(f"block{b.id}_id", Kind.U16, "-", f"directory: id of block {b.name}", lambda s, v=b.id: v),
            Field(f"block{b.id}_start", Kind.U16, "address", f"directory: first address of block {b.name}",
                  lambda s, v=b.start: v),
            Field(f"block{b.id}_length", Kind.U16, "registers", f"directory: length of block {b.name}",
                  lambda s, v=b.length: v),
        ]
    return (Block(0, "header", 0, tuple(header_fields)), *body)


BLOCKS: tuple[Block, ...] = _blocks()
SLOTS: tuple[Slot, ...] = tuple(
    Slot(b.start + sum(f.kind.size for f in b.fields[:i]), b, f) for b in BLOCKS for i, f in enumerate(b.fields))
if len({s.field.name for s in SLOTS}) != len(SLOTS):
    raise AssertionError("field names in the SCADA map must be unique")
BY_ADDRESS: dict[int, Slot] = {s.address: s for s in SLOTS}
"""Slot by its first register address."""
OWNER: dict[int, Slot] = {s.address + k: s for s in SLOTS for k in range(s.field.kind.size)}
"""Slot by any of its register addresses."""
SIZE = max(s.address + s.field.kind.size for s in SLOTS)
"""One past the highest mapped address."""


def encode(kind: Kind, value: Any) -> list[int]:
    """A field's registers for ``value`` (``None`` or an unusable value gives the missing pattern)."""
    if kind is Kind.NAME:
        raw = (value if isinstance(value, str) else "").encode("ascii", "replace")[:DEVICE_NAME_CHARS]
        raw = raw.ljust(DEVICE_NAME_CHARS, b"\0")
        return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, DEVICE_NAME_CHARS, 2)]
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else (
        int(value) if isinstance(value, bool) else None)
    if kind is Kind.F32:
        if number is None or not math.isfinite(number):
            return list(NAN_F32)
        return list(struct.unpack(">HH", struct.pack(">f", float(number))))
    if kind is Kind.U32:
        ok = number is not None and 0 <= number < MISSING_U32
        n = int(number) if ok else MISSING_U32  # type: ignore[arg-type]
        return [n >> 16, n & 0xFFFF]
    ok = number is not None and 0 <= number < MISSING_U16
    return [int(number) if ok else MISSING_U16]  # type: ignore[arg-type]


def decode(kind: Kind, registers: Sequence[int]) -> float:
    """A written field's value (float32 or unsigned integer)."""
    if kind is Kind.F32:
        return struct.unpack(">f", struct.pack(">HH", *registers))[0]
    if kind is Kind.U32:
        return float((registers[0] << 16) | registers[1])
    return float(registers[0])


def image(state: Mapping[str, Any]) -> list[int]:
    """Every register of the map (``SIZE`` of them; unmapped addresses 0) for one state message."""
    registers = [0] * SIZE
    for slot in SLOTS:
        try:
            value = slot.field.get(state)
        except (KeyError, TypeError, ValueError):  # a malformed state shows as missing, never as 0
            value = None
        registers[slot.address:slot.address + slot.field.kind.size] = encode(slot.field.kind, value)
    return registers


def markdown() -> str:
    """The register map as a Markdown table (the generated section of docs/integration.md)."""
    lines = ["| address | regs | block | name | type | unit | access | range | description |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in SLOTS:
        w = s.field.write
        access = "RW" if w else "R"
        span = "" if w is None else (", ".join(map(str, w.allowed)) if w.allowed else f"{w.low:g} … {w.high:g}")
        lines.append(f"| {s.address} | {s.field.kind.size} | {s.block.name} | {s.field.name} | "
                     f"{s.field.kind.value[1]} | {s.field.unit} | {access} | {span} | {s.field.description} |")
    codes = [
        "", "Mode codes: " + ", ".join(f"{i} {m.value}" for i, m in enumerate(MODE_CODES)) + ".",
        "Reason codes: " + ", ".join(f"{i} {r.value}" for i, r in enumerate(REASON_CODES)) + ".",
        "Alarm bits: " + ", ".join(f"bit {i} {name}" for i, name in enumerate(ALARM_BITS)) + ".",
    ]
    return "\n".join(lines + codes) + "\n"


SECTION = re.compile(r"(<!-- scada-map:start -->\n)(.*?)(<!-- scada-map:end -->)", re.S)
"""The generated section of a Markdown page."""


def update_docs(page: Path) -> bool:
    """Rewrite the generated section of ``page`` with :func:`markdown`; True if it changed."""
    text = page.read_text("utf-8")
    if SECTION.search(text) is None:
        raise ValueError(f"{page}: no '<!-- scada-map:start -->' ... '<!-- scada-map:end -->' section")
    new = SECTION.sub(lambda m: m.group(1) + markdown() + m.group(3), text)
    page.write_text(new, "utf-8")
    return new != text


def main(argv: Sequence[str] | None = None) -> None:
    """Print the register map (Markdown), or with ``--update PAGE`` rewrite the page's generated section."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--update"] and len(args) == 2:
        print(f"{args[1]}: {'updated' if update_docs(Path(args[1])) else 'already up to date'}")
    elif args:
        sys.exit("usage: python -m controller.scada.registers [--update docs/integration.md]")
    else:
        sys.stdout.write(markdown())


if __name__ == "__main__":
    main()
