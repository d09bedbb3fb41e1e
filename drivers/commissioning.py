"""Commissioning tools: write one point of one device, and a short, bounded test of a battery unit.

    ems devices write --config FILE DEVICE POINT VALUE [--hold-s 60 | --keep]
    ems devices test  --config FILE DEVICE [--kw 5] [--hold-s 5] [--allow-s 10]

``write`` refuses (:class:`Refused`, exit 2) a point the device's profile does not mark writable and a
value outside the profile's ``write.min``/``write.max`` (for ``battery_setpoint_kw`` also outside the
unit's PCS limits from the site file); otherwise it writes, reads the point back and prints what the
device reports. A power setpoint (:data:`POWER_SETPOINTS`) expires, as every command of the EMS does: it
is held for ``hold_s`` seconds (re-sent as the profile asks) and then the value the point held before is
written back, also on an error or Ctrl-C (:func:`hold_then_restore`); only ``--keep`` leaves it.

``test`` enters the profile's remote-control sequence, then asks the battery for a small charge
(−kW), a small discharge (+kW) and 0 kW, each held ``hold_s`` seconds. A step passes when the write
reads back, the measured power reaches the setpoint within ``allow_s`` seconds (within ``tolerance_kw``,
with the right sign; read every 0.5 s) and stays there while held; after a failed step only the 0 kW
step runs. Whatever happens (failure, error, Ctrl-C) the unit is then written 0 kW and the profile's
remote-control leave sequence runs. While each step is held the site's grid meters are read too, for the check
of their sign (:mod:`drivers.meter_check`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from drivers.device import ModbusDevice, WriteResult
from drivers.meter_check import HoldReadings
from drivers.readings import Reading
from drivers.roles import Role
from ems.clock import Clock
from ems.yamlfile import ConfigError, FieldError, read_yaml

SETPOINT = "battery_setpoint_kw"
POLL_S = 0.5
"""Time between reads while a test step waits for, and holds, its setpoint. [s]"""

POWER_SETPOINTS = {"battery_setpoint_kw": ("battery_kw", 0.0), "pv_limit_pct": ("pv_kw", 100.0)}
"""Points that move a unit's power: the reading that shows it, and the value written back after a hold when the
value before could not be read (0 kW for a battery, no PV limit)."""
DEFAULT_HOLD_S = 60.0
"""How long ``ems devices write`` holds a power setpoint before writing back the value before. [s]"""
REPORT_EVERY_S = 10.0
"""Time between the lines that report the unit's power while a setpoint is held. [s]"""


class Refused(Exception):
    """A write or test the tool will not do; the message says why (exit 2)."""


class _PcsLimits(BaseModel):
    model_config = ConfigDict(extra="ignore")
    max_charge_kw: float
    max_discharge_kw: float


def pcs_limits(path: str | Path, device: str) -> tuple[float, float] | None:
    """The battery unit's (max charge, max discharge) from the site file: its own ``battery:`` or the top-level
    one (the single-battery form); ``None`` when neither gives them. [kW]"""
    data = read_yaml(path)
    entry = next((d for d in data.get("devices", []) if isinstance(d, dict) and d.get("name") == device), {})
    raw = entry.get("battery") or data.get("battery")
    if not isinstance(raw, dict):
        return None
    try:
        limits = _PcsLimits.model_validate(raw)
    except ValidationError as exc:
        where = f"devices.{device}.battery" if entry.get("battery") else "battery"
        raise ConfigError(str(path), [FieldError(where, str(exc.errors()[0]["msg"]))]) from None
    return limits.max_charge_kw, limits.max_discharge_kw


def write_range(device: ModbusDevice, point: str, pcs_kw: tuple[float, float] | None) -> tuple[float, float]:
    """The values ``point`` may be written: the profile's write limits, and for the battery setpoint the unit's PCS
    limits (−charge … +discharge). Refused if the profile does not mark the point writable. [point unit]"""
    p = device.profile.points.get(point)
    if p is None or p.write is None:
        writable = sorted(n for n, q in device.profile.points.items() if q.write is not None)
        raise Refused(f"{device.name}: {point!r} is not a writable point of profile {device.profile.name}; "
                      f"writable: {', '.join(writable) or 'none'}")
    lo = p.write.min if p.write.min is not None else -math.inf
    hi = p.write.max if p.write.max is not None else math.inf
    if point == SETPOINT and pcs_kw is not None:
        lo, hi = max(lo, -pcs_kw[0]), min(hi, pcs_kw[1])
    return lo, hi


def check_value(device: ModbusDevice, point: str, value: float, pcs_kw: tuple[float, float] | None) -> None:
    """Refused unless ``value`` is finite and within :func:`write_range`."""
    lo, hi = write_range(device, point, pcs_kw)
    unit = f" {device.profile.points[point].unit}".rstrip()
    if not math.isfinite(value) or not lo <= value <= hi:
        raise Refused(f"{device.name}: {point} = {value:g}{unit} is outside its limits {lo:g} … {hi:g}{unit}")


@dataclass(frozen=True)
class WriteReport:
    """What :func:`write_point` did: the driver's result and what the device reports afterwards.

    Attributes
    ----------
    result : WriteResult
    reported : float | str | None
        The point as read back by a fresh poll (None: not read).
    detail : str
    before : float | None
        The point's value read just before the write (None: not read, or not a number). [point unit]
    """

    result: WriteResult
    reported: float | str | None
    detail: str
    before: float | None = None


def _number(reading) -> float | None:
    value = None if reading is None else reading.value
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


async def write_point(device: ModbusDevice, point: str, value: float,
                      pcs_kw: tuple[float, float] | None) -> WriteReport:
    """Check, write (always sent), then read the point back with a fresh poll."""
    check_value(device, point, value, pcs_kw)
    readings = await device.poll()   # resolves SunSpec addresses and reads the scale factors
    if device.online is not True:
        raise ConnectionError(f"{device.name} unreachable: {device.last_error}")
    before = _number(readings.get(point))
    result = await device.write(point, value, force=True)
    reading = (await device.poll()).get(point)
    if reading is None:
        return WriteReport(result, None, "not read by a poll", before)
    return WriteReport(result, reading.value, reading.detail, before)


def restore_value(point: str, before: float | None) -> float:
    """What a held power setpoint is written back to: its value before, else the safe value of
    :data:`POWER_SETPOINTS`. [point unit]"""
    return POWER_SETPOINTS[point][1] if before is None else before


async def hold_then_restore(device: ModbusDevice, clock: Clock, point: str, value: float, restore: float,
                            hold_s: float, on_power: Callable[[float, float | None], None] = lambda *_: None,
                            on_restored: Callable[[WriteResult], None] = lambda _: None) -> None:
    """Keep the power setpoint ``point`` at ``value`` for ``hold_s`` seconds (the heartbeat kept, the value re-sent
    when the profile's ``rewrite_s`` is due), calling ``on_power(elapsed s, unit power kW)`` every
    :data:`REPORT_EVERY_S`; then write ``restore`` (forced, verified) and hand that write's result to
    ``on_restored``. The restore is written whatever ends the hold (its end, an error, a cancellation; those go
    on up afterwards)."""
    power_point = POWER_SETPOINTS[point][0]
    start = clock.monotonic()
    reported_at = start
    try:
        while (elapsed := clock.monotonic() - start) < hold_s:
            await device.heartbeat()
            await device.write(point, value)
            await clock.sleep(min(POLL_S, hold_s - elapsed))
            if clock.monotonic() - reported_at >= REPORT_EVERY_S:
                reported_at = clock.monotonic()
                on_power(reported_at - start, _number((await device.poll()).get(power_point)))
    finally:
        on_restored(await device.write(point, restore, force=True))


@dataclass(frozen=True)
class StepResult:
    """One step of :func:`battery_test`.

    Attributes
    ----------
    step : str
        ``charge``, ``discharge`` or ``zero``.
    setpoint_kw, measured_kw : float | None
        What was asked, and the last measured battery power (+ discharge). [kW]
    read_back : bool | None
        Whether the setpoint register read back what was written (None: the profile does not verify).
    response_s : float | None
        Time until the measured power was within the tolerance; None if it never was. [s]
    passed : bool
    why : str
        Why it failed (empty when passed).
    ran : bool
        False when the step could not be tried (nothing written: the conditions did not allow it).
    """

    step: str
    setpoint_kw: float
    measured_kw: float | None
    read_back: bool | None
    response_s: float | None
    passed: bool
    why: str = ""
    ran: bool = True


def sequence(kw: float) -> list[tuple[str, float]]:
    """The sequence: small charge, small discharge, zero. [kW, + discharge]"""
    return [("charge", -kw), ("discharge", kw), ("zero", 0.0)]


def check_test(device: ModbusDevice, kw: float, pcs_kw: tuple[float, float] | None) -> None:
    """Refused unless ``device`` is a battery with a writable setpoint and ``kw`` fits its PCS limits."""
    if device.config.role is not Role.BATTERY:
        raise Refused(f"{device.name} is a {device.config.role.value}; ems devices test drives batteries and PV "
                      "inverters")
    if not kw > 0:
        raise Refused(f"--kw must be positive, got {kw:g}")
    check_value(device, SETPOINT, -kw, pcs_kw)
    check_value(device, SETPOINT, kw, pcs_kw)


def check_bms(name: str, kw: float, readings: Mapping[str, Reading]) -> None:
    """Refused, before anything is written, when the unit's BMS allows less than ``kw`` in a direction now
    (``max_charge_kw`` / ``max_discharge_kw`` as read; a point the profile lacks or that does not read is no
    limit): the unit would rightly stop at its allowance and the step fail as "no response". [kW]"""
    allowed = {direction: r.value for direction in ("charge", "discharge")
               if (r := readings.get(f"max_{direction}_kw")) is not None and r.ok and isinstance(r.value, int | float)}
    short = {d: float(v) for d, v in allowed.items() if v < kw}
    if short:
        said = " and ".join(f"{v:g} kW {d}" for d, v in short.items())
        points = ", ".join(f"max_{d}_kw" for d in short)
        raise Refused(f"{name}: its BMS allows {said} now ({points}), less than --kw {kw:g}: the unit would stop "
                      f"there and the test fail; test with --kw {min(short.values()):g} or less, or when the BMS "
                      "allows more (SOC, temperature, a derating)")


async def measured_power(device: ModbusDevice, point: str = "battery_kw") -> tuple[float | None, str]:
    """A fresh poll's ``point`` (the unit's power) and, when it has no value, why. [kW]"""
    r = (await device.poll()).get(point)
    if r is None:
        return None, f"{point} not read"
    return (float(r.value), "") if isinstance(r.value, int | float) else (None, r.detail or f"{point} missing")


async def run_step(device: ModbusDevice, clock: Clock, name: str, write: tuple[str, float], asked_kw: float,
                   power_point: str, reached: Callable[[float], bool], unreached: Callable[[float], str], *,
                   hold_s: float, allow_s: float,
                   on_hold: Callable[[float], Awaitable[None]] | None = None) -> StepResult:
    """Write ``write = (point, value)`` (forced), wait up to ``allow_s`` until the measured ``power_point`` is
    ``reached``, then hold it ``hold_s`` (the heartbeat kept, the value re-sent when the profile's ``rewrite_s`` is
    due; the power must stay ``reached``; each reading while held goes to ``on_hold``, in kW). ``unreached(measured
    kW)`` says why it was not reached in time."""
    point, value = write
    written = await device.write(point, value, force=True)
    if not written.ok:
        return StepResult(name, asked_kw, None, written.verified, None, False, f"write failed: {written.detail}")
    start = clock.monotonic()
    measured, why = await measured_power(device, power_point)
    response_s = None
    while True:
        elapsed = clock.monotonic() - start
        if measured is not None and reached(measured):
            response_s = elapsed
            break
        if elapsed >= allow_s:
            break
        await device.heartbeat()
        await clock.sleep(POLL_S)
        measured, why = await measured_power(device, power_point)
    if response_s is None:
        return StepResult(name, asked_kw, measured, written.verified, None, False,
                          unreached(measured) if measured is not None else why or "no reading")
    held_until = clock.monotonic() + hold_s
    while clock.monotonic() < held_until:
        await device.heartbeat()
        await device.write(point, value)   # re-sent when the profile's rewrite_s is due
        await clock.sleep(min(POLL_S, max(0.0, held_until - clock.monotonic())))
        measured, why = await measured_power(device, power_point)
        if measured is None or not reached(measured):
            return StepResult(name, asked_kw, measured, written.verified, response_s, False,
                              f"did not hold: {why or f'measured {measured:+.1f} kW'}")
        if on_hold is not None:
            await on_hold(measured)
    if written.verified is False:
        return StepResult(name, asked_kw, measured, False, response_s, False, f"read-back: {written.detail}")
    return StepResult(name, asked_kw, measured, written.verified, response_s, True)


async def _step(device: ModbusDevice, clock: Clock, name: str, setpoint: float, tolerance_kw: float,
                hold_s: float, allow_s: float, on_hold: Callable[[float], Awaitable[None]]) -> StepResult:
    def unreached(measured: float) -> str:
        if setpoint and measured * setpoint < 0:
            return f"wrong sign: measured {measured:+.1f} kW for {setpoint:+.1f} kW"
        return f"no response within {allow_s:g} s: measured {measured:+.1f} kW for {setpoint:+.1f} kW"

    return await run_step(device, clock, name, (SETPOINT, setpoint), setpoint, "battery_kw",
                          lambda measured: abs(measured - setpoint) <= tolerance_kw, unreached,
                          hold_s=hold_s, allow_s=allow_s, on_hold=on_hold)


async def battery_test(device: ModbusDevice, clock: Clock, kw: float, *, hold_s: float, allow_s: float,
                       tolerance_kw: float, pcs_kw: tuple[float, float] | None,
                       on_step: Callable[[StepResult], None] = lambda _: None,
                       meters: Sequence[ModbusDevice] = (),
                       holds: dict[str, HoldReadings] | None = None) -> list[StepResult]:
    """Run :func:`sequence` on a battery; each result goes to ``on_step`` as it comes. Whatever happens the unit
    is then left at 0 kW and out of remote control, reported as a last step ``left at 0 kW`` (an error or a
    cancellation goes on up after that). ``holds``, when given, is filled per step with what its hold read: the
    battery's power and the ``grid_kw`` of each of ``meters`` (for :func:`drivers.meter_check.judge`)."""
    check_test(device, kw, pcs_kw)
    readings = await device.poll()
    if device.online is not True:
        raise ConnectionError(f"{device.name} unreachable: {device.last_error}")
    check_bms(device.name, kw, readings)
    results: list[StepResult] = []
    try:
        entered = await device.enter_remote_control()
        failed = [r for r in entered if not r.ok]
        if failed:
            results.append(StepResult("remote control", 0.0, None, False, None, False,
                                      f"{failed[0].point}: {failed[0].detail}"))
            on_step(results[-1])
            return results
        for name, setpoint in sequence(kw):
            if setpoint and not all(r.passed for r in results):
                results.append(StepResult(name, setpoint, None, None, None, False, "skipped after a failed step",
                                          ran=False))
            else:
                record = HoldReadings()
                if holds is not None:
                    holds[name] = record
                results.append(await _step(device, clock, name, setpoint, tolerance_kw, hold_s, allow_s,
                                           recorder(record, meters)))
            on_step(results[-1])
    finally:
        results.append(await leave_at_zero(device))
        on_step(results[-1])
    return results


def recorder(record: HoldReadings, meters: Sequence[ModbusDevice]) -> Callable[[float], Awaitable[None]]:
    """What a test step's hold does with each reading of the unit's power: keeps it in ``record`` with each meter's
    ``grid_kw`` read at the same time (a reading without a value is left out). [kW]"""
    async def on_hold(unit_kw: float) -> None:
        record.unit_kw.append(unit_kw)
        for meter in meters:
            grid_kw = _number((await meter.poll()).get("grid_kw"))
            if grid_kw is not None:
                record.grid_kw.setdefault(meter.name, []).append(grid_kw)
    return on_hold


async def leave_at_zero(device: ModbusDevice) -> StepResult:
    """Write 0 kW (forced, verified), then run the remote-control leave sequence; as a step ``left at 0 kW``."""
    try:
        zero = await device.write(SETPOINT, 0.0, force=True)
        left = await device.leave_remote_control()
    except Exception as exc:  # reported as the step; the caller's own error goes on
        return StepResult("left at 0 kW", 0.0, None, None, None, False, f"0 kW not confirmed: {exc}")
    failed = [r for r in left if not r.ok]
    why = "" if zero.ok else f"0 kW NOT written: {zero.detail}"
    if failed:
        why = "; ".join(x for x in (why, f"remote control not released: {failed[0].point}: {failed[0].detail}") if x)
    measured, _ = await measured_power(device)
    return StepResult("left at 0 kW", 0.0, measured, zero.verified, None, not why, why)


STEP_HEADER = ("step", "setpoint kW", "measured kW", "read-back", "response s", "result", "why")
_WIDTHS = (13, 11, 11, 9, 10, 7)


def row_text(cells: Sequence[str]) -> str:
    """One line of the step table (fixed widths, so rows can be printed as they come)."""
    return "  ".join([*(c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=False)), *cells[len(_WIDTHS):]]).rstrip()


def step_row(r: StepResult) -> list[str]:
    """A :class:`StepResult` as table cells."""
    back = "-" if r.read_back is None else "ok" if r.read_back else "MISMATCH"
    result = "not run" if not r.ran else "pass" if r.passed else "FAIL"   # a step never tried did not fail
    measured = "-" if r.measured_kw is None else f"{r.measured_kw:+.1f}"
    return [r.step, f"{r.setpoint_kw:+.1f}" if r.ran else "-", measured, back,
            "-" if r.response_s is None else f"{r.response_s:.1f}", result, r.why]
