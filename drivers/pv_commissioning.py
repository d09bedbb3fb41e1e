"""Commissioning test of a PV inverter's power limit: does the inverter hold the limit the EMS writes?

    ems devices test --config FILE INVERTER [--hold-s 5] [--allow-s 10] [--tolerance-kw K]

With the sun up (the inverter producing at least :data:`MIN_SHARE` of its rating), the test enters the
profile's remote-control sequence and writes ``pv_limit_pct`` for half of what the inverter produces now
(``limit``); it passes when the measured ``pv_kw`` falls to at most the limit plus ``tolerance_kw`` within
``allow_s`` seconds and stays there ``hold_s`` seconds. Then it writes 100 % (``release``), which passes when the
power rises above the limit again within ``allow_s``. Whatever happens (failure, error, Ctrl-C) the profile's
remote-control leave sequence runs last (every shipped profile's leave writes 100 %), reported as ``left at 100 %``
with what the inverter then reads back. A rating is the site file's: the unit's ``rating_kw``, else ``pv.ac_kw``
of a site with one inverter.

Before the limit, the inverter's output is watched for ``hold_s`` seconds with nothing written (the full-output
hold); in it and in the limit hold the site's grid meters are read too, for the check of their sign
(:mod:`drivers.meter_check`: the import must rise by what the limit took off).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from drivers.commissioning import POLL_S, Refused, StepResult, check_value, measured_power, recorder, run_step
from drivers.config import load_devices
from drivers.device import ModbusDevice
from drivers.meter_check import HoldReadings
from drivers.roles import Role
from ems.clock import Clock
from ems.yamlfile import read_yaml

LIMIT = "pv_limit_pct"
MIN_SHARE = 0.1
"""The least the inverter must produce, as a share of its rating, for a limit at half of it to be seen. [-]"""
FULL_PCT = 100.0


def pv_rating(path: str | Path, device: str) -> float | None:
    """The inverter's AC rating from the site file: its own ``rating_kw``, else ``pv.ac_kw`` when it is the site's
    only PV inverter; ``None`` when neither says. [kW]"""
    configs = load_devices(path)
    config = next((c for c in configs if c.name == device), None)
    if config is not None and config.rating_kw is not None:
        return config.rating_kw
    pv = read_yaml(path).get("pv")
    if sum(c.role is Role.PV_INVERTER for c in configs) == 1 and isinstance(pv, dict) \
            and isinstance(pv.get("ac_kw"), int | float):
        return float(pv["ac_kw"])
    return None


def check_pv_test(device: ModbusDevice, rating_kw: float | None) -> float:
    """The inverter's rating; refused unless ``device`` is a PV inverter with a writable limit and a known
    rating. [kW]"""
    if device.config.role is not Role.PV_INVERTER:
        raise Refused(f"{device.name} is a {device.config.role.value}, not a PV inverter")
    check_value(device, LIMIT, FULL_PCT, None)
    if rating_kw is None or not math.isfinite(rating_kw) or rating_kw <= 0:
        raise Refused(f"{device.name}: its AC rating is not known: give the device rating_kw in the site file")
    return rating_kw


async def pv_limit_test(device: ModbusDevice, clock: Clock, rating_kw: float | None, *, hold_s: float,
                        allow_s: float, tolerance_kw: float,
                        on_step: Callable[[StepResult], None] = lambda _: None,
                        meters: Sequence[ModbusDevice] = (),
                        holds: dict[str, HoldReadings] | None = None) -> list[StepResult]:
    """Run the limit test (module docstring); each result goes to ``on_step`` as it comes. The last step is
    ``left at 100 %`` whatever happened (an error or a cancellation goes on up after it). ``holds``, when given, is
    filled with what the full-output hold (``full``) and the limit hold (``limit``) read: the inverter's output and
    the ``grid_kw`` of each of ``meters`` (for :func:`drivers.meter_check.judge`)."""
    rating = check_pv_test(device, rating_kw)
    await device.poll()
    if device.online is not True:
        raise ConnectionError(f"{device.name} unreachable: {device.last_error}")
    before, why = await measured_power(device, "pv_kw")
    if before is None or before < MIN_SHARE * rating:
        now = why if before is None else f"it produces {before:.1f} kW"
        result = StepResult("limit", 0.0, before, None, None, False,
                            f"{now}, below {100 * MIN_SHARE:g} % of its {rating:g} kW rating, too little "
                            "to see a limit; run the test when the sun is up", ran=False)
        on_step(result)
        return [result]
    limit_kw = before / 2
    limit_pct = round(100 * limit_kw / rating, 1)
    limit_kw = limit_pct / 100 * rating
    full, limited = HoldReadings(), HoldReadings()
    if holds is not None:
        holds.update(full=full, limit=limited)
    await watch_output(device, clock, hold_s, recorder(full, meters))
    results: list[StepResult] = []
    try:
        entered = await device.enter_remote_control()
        failed = [r for r in entered if not r.ok]
        if failed:
            results.append(StepResult("remote control", limit_kw, None, False, None, False,
                                      f"{failed[0].point}: {failed[0].detail}"))
            on_step(results[-1])
            return results
        results.append(await run_step(
            device, clock, "limit", (LIMIT, limit_pct), limit_kw, "pv_kw",
            lambda measured: measured <= limit_kw + tolerance_kw,
            lambda measured: f"no response within {allow_s:g} s: {measured:.1f} kW, above the limit of "
                             f"{limit_kw:.1f} kW ({limit_pct:g} %)",
            hold_s=hold_s, allow_s=allow_s, on_hold=recorder(limited, meters)))
        on_step(results[-1])
        if results[-1].passed:
            results.append(await run_step(
                device, clock, "release", (LIMIT, FULL_PCT), rating, "pv_kw",
                lambda measured: measured > limit_kw + tolerance_kw,
                lambda measured: f"still {measured:.1f} kW after {allow_s:g} s at 100 %: not above the "
                                 f"{limit_kw:.1f} kW limit (or the sun went in)",
                hold_s=0.0, allow_s=allow_s))
            on_step(results[-1])
    finally:
        results.append(await leave_full(device, rating))
        on_step(results[-1])
    return results


async def watch_output(device: ModbusDevice, clock: Clock, hold_s: float,
                       on_reading: Callable[[float], Awaitable[None]]) -> None:
    """Read the inverter's output for ``hold_s`` seconds, writing nothing; each reading goes to ``on_reading``. [kW]"""
    until = clock.monotonic() + hold_s
    while (left := until - clock.monotonic()) > 0:
        await clock.sleep(min(POLL_S, left))
        measured, _ = await measured_power(device, "pv_kw")
        if measured is not None:
            await on_reading(measured)


async def leave_full(device: ModbusDevice, rating_kw: float) -> StepResult:
    """Run the remote-control leave sequence; as a step ``left at 100 %`` (of ``rating_kw``) with the limit the
    inverter reads back."""
    try:
        left = await device.leave_remote_control()
        readings = await device.poll()
    except Exception as exc:  # reported as the step; the caller's own error goes on
        return StepResult("left at 100 %", rating_kw, None, None, None, False, f"release not confirmed: {exc}")
    failed = [r for r in left if not r.ok]
    limit = readings.get(LIMIT)
    why = f"remote control not released: {failed[0].point}: {failed[0].detail}" if failed else ""
    if not why and limit is not None and isinstance(limit.value, int | float) and limit.value < FULL_PCT:
        why = f"the inverter still reads {LIMIT} = {limit.value:g} %"
    power = readings.get("pv_kw")
    measured = float(power.value) if power is not None and isinstance(power.value, int | float) else None
    return StepResult("left at 100 %", rating_kw, measured, None, None, not why, why)
