"""``ModbusDevice``: poll a profile into Readings, verified writes, heartbeat, remote-control sequences.

    pool = ConnectionPool()
    device = ModbusDevice(config, load_profile(config.profile), pool.connection(config), clock)
    readings = await device.poll()                     # {point name: Reading}, never a bare 0 for a failure
    result = await device.write("battery_setpoint_kw", -250.0)

Reads are grouped into blocks (same function table and ``block`` label, at most
``max_registers_per_read`` registers, gaps of at most the profile's ``max_gap``). A device that does
not answer is skipped (all readings MISSING "backing off") until its back-off expires: the wait
starts at ``backoff_initial_s`` and doubles up to ``backoff_max_s``, in site time (the injected clock).
Loss and recovery are logged once, on the transition.

Every poll, write (with its read-back), remote-control step and heartbeat must finish within the
device's deadline (``deadline_s``, physical seconds; ``DeviceConfig.deadline``). One that does not is
cancelled where it stands (the transport drops the connection, so a late reply cannot reach a later
request; time the event loop itself stood still is not counted, ``drivers.deadline``), the device
counts as unreachable and backs off, and a poll returns every point MISSING with
the detail "no answer within … s". Nothing of a late operation runs on into the next cycle, so
requests never pile up on a slow device. A device counts as recovered (and "recovered" is logged) only
after a whole poll answered within the deadline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from drivers.config import DeviceConfig
from drivers.deadline import within
from drivers.profile import (
    PROFILE_DIR,
    DataType,
    Decoded,
    Function,
    Point,
    Profile,
    combine,
    decode,
    encode,
    load_profile,
    profile_path,
)
from drivers.readings import Quality, Reading, missing
from drivers.roles import CANONICAL_POINTS
from drivers.sunspec import SunSpecError, discover, resolve
from drivers.transport import Connection, ConnectionPool, DeviceException, TransportError
from drivers.writes import WriteMemory, WriteResult
from ems.clock import Clock

log = logging.getLogger(__name__)

_SF = "\0sf"  # prefix of the internal names of scale-factor registers in a read plan


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers of ``function`` from ``address``, holding ``members``."""

    function: Function
    address: int
    count: int
    members: tuple[tuple[str, int, int], ...]  # (name, address, count)


def plan_blocks(items: Iterable[tuple[str, Function, int, int, str | None]], max_registers: int,
                max_gap: int) -> list[Block]:
    """Group ``(name, function, address, count, block label)`` into as few reads as the limits allow."""
    blocks: list[Block] = []
    keyed = sorted(items, key=lambda i: (i[1], i[4] or "", i[2], -i[3]))
    current: list[tuple[str, int, int]] = []
    key: tuple[Function, str | None] | None = None
    start = end = 0
    for name, function, address, count, label in keyed:
        fits = (key == (function, label) and address - end <= max_gap
                and max(end, address + count) - start <= max_registers)
        if not fits:
            if current and key is not None:
                blocks.append(Block(key[0], start, end - start, tuple(current)))
            current, key, start, end = [], (function, label), address, address
        current.append((name, address, count))
        end = max(end, address + count)
    if current and key is not None:
        blocks.append(Block(key[0], start, end - start, tuple(current)))
    return blocks


@dataclass
class _Health:
    failures: int = 0
    online: bool | None = None  # None until the first poll
    retry_at: float = -math.inf
    last_error: str = ""
    write_failures: int = 0


class ModbusDevice:
    """A device described by a profile, reached over a shared :class:`Connection`."""

    def __init__(self, config: DeviceConfig, profile: Profile, connection: Connection, clock: Clock,
                 deadline_s: float | None = None, resend_s: float | None = None):
        if config.role not in profile.roles:
            raise ValueError(f"{config.name}: profile {profile.name} does not serve role {config.role}")
        self.config = config
        self.deadline_s = deadline_s if deadline_s is not None else config.deadline()
        """Time one poll or one write may take (default: ``config.deadline()`` without a cycle). [s, physical]"""
        self.profile = profile
        self.connection = connection
        self.clock = clock
        self._health = _Health()
        self._writes = WriteMemory(resend_s)
        self._sf: dict[tuple[Function, int], int] = {}
        self._latest: dict[str, Reading] = {}
        self._originals: dict[str, float] = {}
        self._heartbeat_at = -math.inf
        self._heartbeat_count = 0
        self._blocks = self._plan()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def online(self) -> bool | None:
        """True after a poll that got answers, False after one that did not, None before the first poll."""
        return self._health.online

    @property
    def has_remote_control(self) -> bool:
        """Whether the profile has a ``remote_control`` section (sequences to enter and leave)."""
        return self.profile.remote_control is not None

    @property
    def reversion_s(self) -> float | None:
        """The device's own fallback timer as the profile's ``remote_control.enter`` sets it [s]; ``None`` if it
        sets none (see :func:`reversion_s`)."""
        return reversion_s(self.profile)

    def close(self) -> None:
        """Close this device's connection (shared with the other unit ids on its endpoint)."""
        self.connection.close()

    @property
    def write_failures(self) -> int:
        """Writes that failed or did not verify since start."""
        return self._health.write_failures

    @property
    def last_error(self) -> str:
        return self._health.last_error

    def polled_points(self) -> dict[str, Point]:
        """Points read by :meth:`poll`: the canonical points of this device's role and the vendor's own points."""
        role = self.config.role
        readable = self.profile.readable()
        chosen = {n: p for n, p in readable.items() if n not in CANONICAL_POINTS or CANONICAL_POINTS[n].role is role}
        needed = {p.depends_on for p in chosen.values() if p.depends_on in readable}
        return {n: p for n, p in readable.items() if n in chosen or n in needed}

    def _plan(self) -> list[Block]:
        items: dict[str, tuple[str, Function, int, int, str | None]] = {}
        for name, p in self.polled_points().items():
            assert p.address is not None
            items[name] = (name, p.function, p.address, p.count, p.block)
            if p.scale_factor_register is not None:
                sf_name = f"{_SF}{p.function}:{p.scale_factor_register}"
                items[sf_name] = (sf_name, p.function, p.scale_factor_register, 1, p.block)
        limit = min(self.profile.max_registers_per_read,
                    self.config.max_registers_per_read or self.profile.max_registers_per_read)
        return plan_blocks(items.values(), limit, self.profile.max_gap)

    @property
    def blocks(self) -> list[Block]:
        """The read requests of one poll."""
        return list(self._blocks)

    # ------------------------------------------------------------------------------------------ reads

    def _lost(self, error: str) -> None:
        """No answer: back off, and forget what was written (the device may have reverted meanwhile)."""
        h = self._health
        self._writes.forget()
        h.failures += 1
        h.last_error = error
        delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (h.failures - 1))
        h.retry_at = self.clock.monotonic() + delay
        if h.online is not False:
            log.warning("device %s unreachable (%s); retrying with back-off up to %g s",
                        self.name, error, self.config.backoff_max_s)
        h.online = False

    def _answered(self) -> None:
        h = self._health
        if h.online is False:
            log.warning("device %s recovered after %d failed attempt(s)", self.name, h.failures)
        h.failures, h.online, h.retry_at, h.last_error = 0, True, -math.inf, ""

    @property
    def _late(self) -> str:
        return f"no answer within {self.deadline_s:g} s"

    async def poll(self) -> dict[str, Reading]:
        """Read every polled point once, within the deadline; failures are MISSING, out-of-range values
        IMPLAUSIBLE, never 0."""
        points = self.polled_points()
        now_mono = self.clock.monotonic()
        if now_mono < self._health.retry_at:
            detail = (f"unreachable ({self._health.last_error}); "
                      f"next attempt in {self._health.retry_at - now_mono:.1f} s")
            return self._remember({n: missing(p.unit, self.clock.now(), detail) for n, p in points.items()})
        try:
            return await within(self._poll(points), self.deadline_s)
        except TimeoutError:
            self._lost(self._late)
            now = self.clock.now()
            return self._remember({n: missing(p.unit, now, self._late) for n, p in self.polled_points().items()})

    async def _poll(self, points: dict[str, Point]) -> dict[str, Reading]:
        if self._unresolved():
            try:
                await self._resolve()
            except (TransportError, SunSpecError) as exc:
                self._lost(str(exc))
                return self._remember({n: missing(p.unit, self.clock.now(), f"unreachable ({exc})")
                                       for n, p in points.items()})
            points = self.polled_points()
        raw: dict[str, list[int]] = {}
        refused: dict[str, str] = {}
        stamps: dict[str, datetime] = {}
        answered = lost = False
        pending = list(self._blocks)
        while pending:
            block = pending.pop(0)
            try:
                regs = await self.connection.read(block.function, block.address, block.count, self.config.unit_id)
            except DeviceException as exc:
                answered = True
                parts = self._split(block)
                if len(parts) > 1:  # a read across unused registers was refused: read the runs apart from now on
                    pending[:0] = parts
                    continue
                for name, _, _ in block.members:
                    refused[name] = str(exc)
                continue
            except TransportError as exc:
                self._lost(str(exc))
                lost = True
                break
            answered = True
            stamp = self.clock.now()
            for name, address, count in block.members:
                raw[name] = regs[address - block.address:address - block.address + count]
                stamps[name] = stamp
        if answered and not lost:
            self._answered()
        for name, regs in raw.items():
            if name.startswith(_SF):
                function, address = name[len(_SF):].split(":")
                self._sf[(Function(function), int(address))] = _s16(regs[0])
        now = self.clock.now()
        partial = {n: self._decode(p, raw[n], final=False) for n, p in points.items() if n in raw}
        readings: dict[str, Reading] = {}
        for name, p in points.items():
            if name in raw and p.depends_on is not None:
                other = partial.get(p.depends_on) or Decoded(None, Quality.MISSING, "not read")
                readings[name] = _reading(p, combine(p, partial[name], other), stamps[name])
            elif name in raw:
                readings[name] = _reading(p, self._decode(p, raw[name]), stamps[name])
            else:
                detail = refused.get(name) or f"unreachable ({self._health.last_error})"
                readings[name] = missing(p.unit, now, detail)
        return self._remember(readings)

    def _split(self, block: Block) -> list[Block]:
        """``block`` as gap-free reads; the plan keeps the split for later polls."""
        parts = plan_blocks(((n, block.function, a, c, None) for n, a, c in block.members), block.count, 0)
        if len(parts) > 1:
            i = self._blocks.index(block)
            self._blocks[i:i + 1] = parts
            log.info("device %s: read %s %d+%d refused, reading its %d runs separately",
                     self.name, block.function, block.address, block.count, len(parts))
        return parts

    def _unresolved(self) -> bool:
        return any(p.sunspec is not None for p in self.profile.points.values())

    async def _resolve(self) -> None:
        """Give SunSpec-referenced points their addresses on this device (discovery over the shared connection)."""
        models = await discover(self.connection, self.config.unit_id)
        self.profile = resolve(self.profile, models)
        self._blocks = self._plan()
        log.info("device %s: SunSpec models %s", self.name, ", ".join(str(m.id) for m in models))

    def _decode(self, p: Point, registers: list[int], final: bool = True) -> Decoded:
        sf = None
        if p.scale_factor_register is not None:
            sf = self._sf.get((p.function, p.scale_factor_register))
        return decode(p, registers, sf, final=final)

    def _remember(self, readings: dict[str, Reading]) -> dict[str, Reading]:
        for name, r in readings.items():
            if r.ok or name not in self._latest:
                self._latest[name] = r
        return readings

    def latest(self) -> dict[str, Reading]:
        """The last good reading of each point (or the last failure if it never read), aged by ``max_age_s``."""
        now = self.clock.now()
        return {n: r.aged(now, self.config.max_age_s) for n, r in self._latest.items()}

    # ------------------------------------------------------------------------------------------ writes

    def _step(self, p: Point) -> float:
        sf = self._sf.get((p.function, p.scale_factor_register), 0) if p.scale_factor_register is not None else 0
        return abs(p.scale) * 10.0 ** sf

    async def _scale_factor(self, p: Point) -> int | None:
        """The point's SF exponent, read once if no poll has read it yet (None for points without one)."""
        if p.scale_factor_register is None:
            return None
        key = (p.function, p.scale_factor_register)
        if key not in self._sf:
            (raw,) = await self.connection.read(p.function, p.scale_factor_register, 1, self.config.unit_id)
            self._sf[key] = _s16(raw)
        return self._sf[key]

    async def _write_raw(self, name: str, p: Point, value: float) -> tuple[bool | None, str]:
        """Write one point; returns (verified, detail): verified None when no read-back is configured."""
        assert p.address is not None and p.write is not None
        sf = await self._scale_factor(p)
        await self.connection.write(p.address, encode(p, value, sf), self.config.unit_id)
        if not p.write.verify:
            return None, ""
        back = decode(p, await self.connection.read(p.function, p.address, p.count, self.config.unit_id), sf)
        tolerance = p.write.tolerance if p.write.tolerance is not None else self._step(p) / 2 + 1e-9
        if back.value is None:
            return False, f"read-back of {name}: {back.detail}"
        if abs(float(back.value) - value) > tolerance:
            return False, f"read-back of {name} is {back.value:g}, wrote {value:g}"
        return True, ""

    async def write(self, point_name: str, value: float, *, force: bool = False,
                    deadband: float = 0.0) -> WriteResult:
        """Write a writable point: clamp to its limits, skip if not due, verify by reading back.

        The value is sent when it is due (``drivers.writes.WriteMemory.due``): it differs from the last
        successful write by at least ``deadband`` [point unit] (any change when 0; a change to 0 always),
        ``write.rewrite_s`` or the device's ``resend_s`` has passed since then, or ``force`` is set.
        A skipped write reports the value the device holds (``sent`` False). A point with
        ``write.direction`` is written as its magnitude plus a direction command (see
        ``drivers.profile.Direction``).
        """
        p = self.profile.points.get(point_name)
        if p is not None and p.write is not None and p.address is None:
            raise KeyError(f"{self.name}: {point_name!r} has no address yet: the device has not answered the SunSpec "
                           "model discovery since the controller started")
        if p is None or p.write is None:
            raise KeyError(f"{self.name}: {point_name!r} is not a writable point of profile {self.profile.name}")
        spec = p.write
        target = float(value)
        if spec.min is not None and target < spec.min:
            target = spec.min
        if spec.max is not None and target > spec.max:
            target = spec.max
        clamped = target != float(value)
        detail = f"clamped {value:g} to {target:g} {p.unit}".rstrip() if clamped else ""
        now = self.clock.monotonic()
        if not self._writes.due(point_name, target, now, deadband=deadband, force=force, period_s=spec.rewrite_s):
            held = self._writes.last(point_name)
            assert held is not None
            return WriteResult(point_name, float(value), held.value, clamped, False, None, True,
                               (detail + "; " if detail else "") + "unchanged, not re-sent")
        try:
            verified, why = await within(self._write_point(point_name, p, target), self.deadline_s)
        except (TransportError, TimeoutError, DeviceException, ValueError) as exc:
            error = self._late if isinstance(exc, TimeoutError) else str(exc)
            if isinstance(exc, TransportError | TimeoutError):  # no answer: unreachable until a poll answers in time
                self._lost(error)
            self._health.write_failures += 1
            self._writes.forget(point_name)
            return WriteResult(point_name, float(value), target, clamped, True, None, False,
                               "; ".join(x for x in (detail, error) if x))
        ok = verified is not False
        if ok:
            self._writes.record(point_name, target, now)
        else:
            self._health.write_failures += 1
            self._writes.forget(point_name)
            log.warning("device %s: write %s=%g did not apply: %s", self.name, point_name, target, why)
        return WriteResult(point_name, float(value), target, clamped, True, verified, ok,
                           "; ".join(x for x in (detail, why) if x))

    def last_written(self, point_name: str) -> float | None:
        """The value the device holds from our last successful write of ``point_name``, ``None`` if none (never
        written, the write failed, or the device was lost or entered remote control since). [point unit]"""
        held = self._writes.last(point_name)
        return held.value if held is not None else None

    async def _write_point(self, name: str, p: Point, target: float) -> tuple[bool | None, str]:
        """Write ``target`` to point ``name`` (as direction command + magnitude if it has one); (verified, detail)."""
        assert p.write is not None
        if p.write.direction is None:
            return await self._write_raw(name, p, target)
        d = p.write.direction
        command = d.positive if target > 0 else d.negative if target < 0 else d.zero
        verified_cmd, why = await self._write_raw(d.point, self.profile.points[d.point], command)
        verified, why2 = await self._write_raw(name, p, abs(target))
        verified = None if verified is None and verified_cmd is None else bool(
            verified_cmd is not False and verified is not False)
        return verified, "; ".join(x for x in (why, why2) if x)

    async def enter_remote_control(self) -> list[WriteResult]:
        """Write the profile's ``remote_control.enter`` sequence (always sent, in order; stops at a failure).

        Before the first entry the values the sequence is about to change are read and kept
        (:attr:`originals`), for :meth:`leave_remote_control` to restore; each step's write is verified by
        reading it back. Each step is one write with its own deadline, so the sequence stops at the first
        step a slow device does not answer in time (the device then counts as unreachable and the sequence
        is due again when it is back)."""
        if self.profile.remote_control is not None:
            for step in self.profile.remote_control.enter:
                if step.point not in self._originals:
                    value = await self._read_point(step.point)
                    if value is not None:
                        self._originals[step.point] = value
        return await self._sequence("enter")

    async def leave_remote_control(self) -> list[WriteResult]:
        """Write the profile's ``remote_control.leave`` sequence, handing control back to the device, then
        restore the values entering changed that the leave sequence does not set itself (mode registers,
        reversion timers: what the device had before the EMS took over). A point the leave sequence writes
        keeps the sequence's value: what the device had at start may be what a crashed EMS left there."""
        results = await self._sequence("leave")
        if any(not r.ok for r in results) or self.profile.remote_control is None:
            return results
        left = {step.point for step in self.profile.remote_control.leave}
        for point, value in list(self._originals.items()):
            if point in left:  # the leave sequence's own value wins (what the device had may be a crashed EMS's)
                del self._originals[point]
                continue
            result = await self.write(point, value, force=True)
            results.append(result)
            if not result.ok:
                break
            del self._originals[point]
        return results

    @property
    def originals(self) -> dict[str, float]:
        """Values the remote-control sequence changed, as read before the EMS first entered it. [point unit]"""
        return dict(self._originals)

    async def _read_point(self, name: str) -> float | None:
        """One point's current value, read now within the deadline; ``None`` if it does not read (logged)."""
        p = self.profile.points.get(name)
        if p is None or p.address is None or p.type is DataType.STRING:
            return None
        try:
            sf = await within(self._scale_factor(p), self.deadline_s)
            raw = await within(self.connection.read(p.function, p.address, p.count, self.config.unit_id),
                               self.deadline_s)
        except (TransportError, TimeoutError, DeviceException) as exc:
            log.warning("device %s: %s not read before entering remote control, not restored: %s",
                        self.name, name, exc)
            return None
        decoded = decode(p, raw, sf)
        return None if decoded.value is None or isinstance(decoded.value, str) else float(decoded.value)

    async def _sequence(self, which: str) -> list[WriteResult]:
        results: list[WriteResult] = []
        if which == "enter":  # the device starts remote control from its own values: send every setpoint again
            self._writes.forget()
        if self.profile.remote_control is None:
            return results
        for step in getattr(self.profile.remote_control, which):
            result = await self.write(step.point, step.value, force=True)
            results.append(result)
            if not result.ok:
                break
        return results

    async def heartbeat(self) -> bool:
        """Write the watchdog register if its period has passed; True if written. Call it every cycle."""
        hb = self.profile.heartbeat
        now = self.clock.monotonic()
        if hb is None or now - self._heartbeat_at < hb.period_s:
            return False
        value = hb.value if hb.value is not None else self._heartbeat_count % 0x10000
        try:
            await within(self.connection.write(hb.address, [value], self.config.unit_id), self.deadline_s)
        except (TransportError, TimeoutError, DeviceException) as exc:
            error = self._late if isinstance(exc, TimeoutError) else str(exc)
            if isinstance(exc, TransportError | TimeoutError):
                self._lost(error)
            self._health.write_failures += 1
            log.debug("device %s: heartbeat failed: %s", self.name, error)
            return False
        self._heartbeat_count += 1
        self._heartbeat_at = now
        return True


def reversion_s(profile: Profile) -> float | None:
    """The battery's own fallback timer as the profile's ``remote_control.enter`` sets it (``setpoint_reversion_s``,
    SunSpec 704 ``WSetRvrtTms``; 0 disables it there) [s]; ``None`` if it sets none."""
    steps = profile.remote_control.enter if profile.remote_control is not None else []
    return next((step.value or None for step in steps if step.point == "setpoint_reversion_s"), None)


def _s16(register: int) -> int:
    return register - 0x10000 if register & 0x8000 else register


def _reading(p: Point, d: Decoded, stamp: datetime) -> Reading:
    meaning = p.meaning(d.value) if p.states or p.bits else ""
    return Reading(value=d.value, unit=p.unit, timestamp=stamp, quality=d.quality, detail=d.detail, meaning=meaning)


def open_devices(configs: Sequence[DeviceConfig], clock: Clock, pool: ConnectionPool,
                 base_dir: Path | None = None) -> list[ModbusDevice]:
    """A :class:`ModbusDevice` per config, sharing ``pool``'s connections; profile paths are relative to ``base_dir``.

    Profiles are loaded and validated here (:class:`ems.yamlfile.ConfigError` on a bad one); nothing is
    connected until the first poll.
    """
    devices = []
    for config in configs:
        source: str | Path = config.profile
        is_path = profile_path(source).parent != PROFILE_DIR
        if base_dir is not None and is_path and not Path(source).is_absolute():
            source = base_dir / source
        profile = load_profile(source)
        devices.append(ModbusDevice(config, profile, pool.connection(config), clock))
    return devices
