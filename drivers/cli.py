"""``ems devices read``: poll every configured device once and print what it says; ``ems devices write`` and
``ems devices test``: the commissioning tools (``drivers.commissioning``); ``ems devices scan``: a device's
SunSpec models.

``register`` also hands the ``ems`` subparsers to ``drivers.simulated.cli`` (``ems sim serve``) when that module
is present.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ems.cli_args import number

DEFAULT_PORT = 502
"""The Modbus TCP port a HOST without one means."""


def register(sub: Any) -> None:
    """Add ``ems devices read`` (and the simulated-device commands, if installed) to the ``ems`` subparsers."""
    devices = sub.add_parser("devices", help="talk to Modbus devices")
    actions = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    read = actions.add_parser("read", help="poll every device of a site file once and print a table")
    read.add_argument("--config", required=True, help="site file with a devices: list")
    read.add_argument("--device", action="append", default=[], metavar="NAME",
                      help="only this device (repeatable)")
    read.set_defaults(func=_read)
    write = actions.add_parser("write", help="write one point of one device (within the profile's limits), "
                                             "read it back and print what the device reports")
    write.add_argument("--config", required=True, help="site file with a devices: list")
    write.add_argument("device", metavar="DEVICE", help="device name in the site file")
    write.add_argument("point", metavar="POINT", help="writable point of the device's profile")
    write.add_argument("value", metavar="VALUE", type=number(), help="value in the point's unit")
    hold = write.add_mutually_exclusive_group()
    hold.add_argument("--hold-s", type=number(lo=0, lo_open=True), default=None,
                      help="a power setpoint (battery_setpoint_kw, pv_limit_pct) is held this long, then the value "
                           "before is written back; Ctrl-C ends it early [s] (default 60)")
    hold.add_argument("--keep", action="store_true",
                      help="leave a power setpoint as written: nothing expires it until it is written again")
    write.set_defaults(func=_write)
    test = actions.add_parser("test", help="commissioning test of a battery (small charge, small discharge, 0 kW; "
                                           "ends at 0 kW) or a PV inverter (a limit at half its output, then 100 %%; "
                                           "ends at 100 %%): sign, response, read-back")
    test.add_argument("--config", required=True, help="site file with a devices: list")
    test.add_argument("device", metavar="DEVICE", help="battery or PV inverter device name in the site file")
    test.add_argument("--kw", type=float, default=None, help="battery: test power [kW] (default 5)")
    test.add_argument("--hold-s", type=number(lo=0, lo_open=True), default=5.0,
                      help="how long each step is held [s] (default 5)")
    test.add_argument("--allow-s", type=number(lo=0, lo_open=True), default=10.0,
                      help="time the unit may take to reach each setpoint [s] (default 10)")
    test.add_argument("--tolerance-kw", type=number(lo=0), default=None,
                      help="largest difference of measured from asked power [kW] (default: battery 20 %% of --kw, "
                           "≥ 0.5; PV inverter 5 %% of its rating, ≥ 2, as the controller tolerates)")
    test.set_defaults(func=_test)
    scan = actions.add_parser("scan", help="list the SunSpec models and identity of a device (Modbus TCP, or a site "
                                           "file's device over TCP or RS485)")
    scan.add_argument("target", metavar="HOST[:PORT] | DEVICE",
                      help=f"Modbus TCP device (default port {DEFAULT_PORT}); with --config a device of the site file")
    scan.add_argument("--config", help="site file: TARGET names one of its devices, scanned over its own endpoint "
                                       "(TCP or RS485) and unit id")
    scan.add_argument("--unit", type=number(int, 0, 247), default=None,
                      help="Modbus unit id (default 1, or the device's)")
    scan.add_argument("--timeout", type=number(lo=0, lo_open=True), default=2.0, help="per request [s] (default 2)")
    scan.set_defaults(func=_scan)
    try:
        simulated = importlib.import_module("drivers.simulated.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "drivers.simulated.cli":
            raise
    else:
        simulated.register(sub)


def _read(args: argparse.Namespace) -> int:
    from drivers.config import load_devices
    from ems.yamlfile import ConfigError, FieldError

    configs = load_devices(args.config)
    if args.device:
        unknown = sorted(set(args.device) - {c.name for c in configs})
        if unknown:
            raise ConfigError(args.config, [FieldError("devices", f"no device named {', '.join(unknown)}; devices: "
                                                                  f"{', '.join(c.name for c in configs)}")])
        configs = [c for c in configs if c.name in args.device]
    return asyncio.run(_poll_and_print(configs, Path(args.config).parent))


def _one_device(path: str, name: str):
    """The ``DeviceConfig`` named ``name`` in the site file (ConfigError naming the devices if there is none)."""
    from drivers.config import load_devices
    from ems.yamlfile import ConfigError, FieldError

    configs = load_devices(path)
    config = next((c for c in configs if c.name == name), None)
    if config is None:
        raise ConfigError(path, [FieldError("devices", f"no device named {name}; devices: "
                                            f"{', '.join(c.name for c in configs)}")])
    return config


def _write(args: argparse.Namespace) -> int:
    from drivers import commissioning

    config = _one_device(args.config, args.device)
    limits = commissioning.pcs_limits(args.config, args.device)
    power = args.point in commissioning.POWER_SETPOINTS
    if not power and (args.hold_s is not None or args.keep):
        print(f"refused: --hold-s and --keep are for power setpoints ({', '.join(commissioning.POWER_SETPOINTS)}); "
              f"{args.point} is written to stay", file=sys.stderr)
        return 2
    hold_s = None if not power or args.keep else args.hold_s or commissioning.DEFAULT_HOLD_S
    return asyncio.run(_with_device(config, Path(args.config).parent, lambda device: _write_and_print(
        device, args.point, args.value, limits, hold_s)))


async def _write_and_print(device, point: str, value: float, limits, hold_s: float | None) -> int:
    """Write and report; a power setpoint with ``hold_s`` is then held and written back (``None``: left)."""
    from drivers import commissioning
    from ems.clock import WallClock

    report = await commissioning.write_point(device, point, value, limits)
    r = report.result
    unit = f" {device.profile.points[point].unit}".rstrip()
    back = "not verified" if r.verified is None else "verified" if r.verified else "MISMATCH"
    print(f"{device.name}: wrote {point} = {r.value:g}{unit} ({back}){': ' + r.detail if r.detail else ''}")
    shown = f"{report.reported:g}" if isinstance(report.reported, float) else str(report.reported)
    print(f"{device.name}: reports {point} = {shown}{unit}{' (' + report.detail + ')' if report.detail else ''}",
          flush=True)
    if point not in commissioning.POWER_SETPOINTS:
        return 0 if r.ok else 1
    if hold_s is None:
        print(f"{device.name}: {point} = {r.value:g}{unit} is kept: nothing expires it until it is written again "
              f"(or the device's own watchdog reverts it)")
        return 0 if r.ok else 1
    restore = commissioning.restore_value(point, report.before)
    was = "its value before" if report.before is not None else "the safe value (the value before was not read)"
    if not r.ok:
        hold_s = 0.0   # nothing to hold; what may have reached the device is written back at once
    else:
        print(f"{device.name}: holding {point} = {r.value:g}{unit} for {hold_s:g} s, then writing back "
              f"{restore:g}{unit}, {was}; Ctrl-C ends it early", flush=True)
    power_point = commissioning.POWER_SETPOINTS[point][0]

    def progress(elapsed_s: float, power_kw: float | None) -> None:
        shown = "not read" if power_kw is None else f"{power_kw:+.1f} kW"
        print(f"{device.name}: {elapsed_s:4.0f} s  {power_point} {shown}", flush=True)

    restored: list = []

    def written_back(result) -> None:
        restored.append(result)
        if result.ok:
            print(f"{device.name}: wrote back {point} = {restore:g}{unit}{' (verified)' if result.verified else ''}",
                  flush=True)
        else:
            print(f"{device.name}: {point} NOT written back to {restore:g}{unit}: {result.detail}", file=sys.stderr,
                  flush=True)

    await commissioning.hold_then_restore(device, WallClock(), point, r.value, restore, hold_s, progress, written_back)
    return 0 if r.ok and restored[0].ok else 1


def _test(args: argparse.Namespace) -> int:
    from drivers import commissioning, pv_commissioning
    from drivers.config import MeterLocation, load_devices
    from drivers.roles import Role

    config = _one_device(args.config, args.device)
    base = Path(args.config).parent
    grid_meters = [c for c in load_devices(args.config) if c.meter_location is MeterLocation.GRID]
    if config.role is Role.PV_INVERTER:
        if args.kw is not None:
            print("refused: --kw is the battery test's power; the PV test limits the inverter to half its output",
                  file=sys.stderr)
            return 2
        rating = pv_commissioning.pv_rating(args.config, args.device)
        tolerance = args.tolerance_kw if args.tolerance_kw is not None else max(2.0, 0.05 * (rating or 0.0))
        return asyncio.run(_with_devices([config, *grid_meters], base, lambda device, *grid: _pv_test_and_print(
            device, rating, args.hold_s, args.allow_s, tolerance, grid)))
    kw = args.kw if args.kw is not None else 5.0
    limits = commissioning.pcs_limits(args.config, args.device)
    tolerance = args.tolerance_kw if args.tolerance_kw is not None else max(0.5, 0.2 * kw)
    meters = grid_meters if config.role is Role.BATTERY else []
    return asyncio.run(_with_devices([config, *meters], base, lambda device, *grid: _test_and_print(
        device, kw, args.hold_s, args.allow_s, tolerance, limits, grid)))


async def _test_and_print(device, kw: float, hold_s: float, allow_s: float, tolerance_kw: float, limits,
                          meters: tuple = ()) -> int:
    """The battery test's table and verdict, then each grid meter's sign judged on its holds
    (:mod:`drivers.meter_check`): a meter that reads the battery the wrong way fails the test (exit 1)."""
    from drivers import commissioning
    from drivers.meter_check import judge
    from ems.clock import WallClock

    commissioning.check_test(device, kw, limits)
    meters = await _readable(meters)
    print(f"{device.name}: charge {kw:g} kW, discharge {kw:g} kW, 0 kW, each held {hold_s:g} s "
          f"(response within {allow_s:g} s, ±{tolerance_kw:g} kW){_watched(meters)}; Ctrl-C stops at 0 kW",
          flush=True)
    holds: dict = {}
    code = await _print_steps(device, commissioning.battery_test(
        device, WallClock(), kw, hold_s=hold_s, allow_s=allow_s, tolerance_kw=tolerance_kw, pcs_kw=limits,
        on_step=_print_step, meters=meters, holds=holds))
    if "charge" not in holds or "discharge" not in holds:
        return code
    return _judged(code, meters, lambda name: judge(name, holds["discharge"], holds["charge"]))


async def _pv_test_and_print(device, rating_kw: float | None, hold_s: float, allow_s: float,
                             tolerance_kw: float, meters: tuple = ()) -> int:
    """The PV limit test's table and verdict, then each grid meter's sign judged on the full-output and limit
    holds (:mod:`drivers.meter_check`): a meter that reads the inverter the wrong way fails the test (exit 1)."""
    from drivers import pv_commissioning
    from drivers.meter_check import judge
    from ems.clock import WallClock

    rating = pv_commissioning.check_pv_test(device, rating_kw)
    meters = await _readable(meters)
    print(f"{device.name}: its output watched {hold_s:g} s, then limited to half of it, held {hold_s:g} s, then "
          f"100 % (rating {rating:g} kW; response within {allow_s:g} s, +{tolerance_kw:g} kW){_watched(meters)}; "
          "Ctrl-C ends at 100 %", flush=True)
    holds: dict = {}
    code = await _print_steps(device, pv_commissioning.pv_limit_test(
        device, WallClock(), rating, hold_s=hold_s, allow_s=allow_s, tolerance_kw=tolerance_kw, on_step=_print_step,
        meters=meters, holds=holds))
    if not holds.get("limit") or not holds["limit"].unit_kw:
        return code
    return _judged(code, meters, lambda name: judge(
        name, holds["full"], holds["limit"], unit="inverter", high_name="full-output hold", low_name="limit hold",
        advice="test again while the load and the sun are steady"))


async def _readable(meters: tuple) -> tuple:
    """The grid meters that answer now; each that does not is said (its sign is not checked)."""
    for meter in meters:
        await meter.poll()
        if meter.online is not True:
            print(f"{meter.name}: not read ({meter.last_error}): its sign is not checked", flush=True)
    return tuple(m for m in meters if m.online is True)


def _watched(meters: tuple) -> str:
    """The intro line's note that the grid meters are read for their sign (empty without one)."""
    return f"; the grid meter {', '.join(m.name for m in meters)} is read to check its sign" if meters else ""


def _judged(code: int, meters: tuple, verdict_of: Callable[[str], Any]) -> int:
    """Print each meter's verdict (``verdict_of(name)``, a :class:`drivers.meter_check.MeterVerdict`); the exit code
    ``code``, or 1 when a meter failed."""
    for meter in meters:
        verdict = verdict_of(meter.name)
        print(f"{meter.name}: {'' if verdict.passed else 'FAIL: '}{verdict.why}")
        code = code if verdict.passed else 1
    return code


def _print_step(result) -> None:
    from drivers import commissioning

    print(commissioning.row_text(commissioning.step_row(result)), flush=True)


async def _print_steps(device, test) -> int:
    """Print the step table's header, run ``test`` (its steps print as they come), then PASS or FAIL."""
    from drivers import commissioning

    print(commissioning.row_text(commissioning.STEP_HEADER), flush=True)
    try:
        results = await test
    except asyncio.CancelledError:
        print("interrupted", file=sys.stderr)
        raise
    passed = all(r.passed for r in results)
    verdict = "PASS" if passed else "FAIL" if any(r.ran for r in results) else "NOT RUN (nothing was written)"
    print(f"{device.name}: {verdict}")
    return 0 if passed else 1


def _scan(args: argparse.Namespace) -> int:
    from drivers.config import DeviceConfig

    if args.config:
        config = _one_device(args.config, args.target)
    else:
        host, _, port = args.target.rpartition(":") if ":" in args.target else (args.target, "", str(DEFAULT_PORT))
        try:
            config = DeviceConfig.model_validate({"name": "scan", "role": "meter", "profile": "sunspec-meter",
                                                  "endpoint": {"host": host, "port": int(port)}, "retries": 1})
        except ValueError:
            print(f"error: {args.target!r} is not HOST or HOST:PORT (port 1 … 65535)", file=sys.stderr)
            return 2
    config = config.model_copy(update={"timeout_s": args.timeout,
                                       "unit_id": args.unit if args.unit is not None else config.unit_id})
    try:
        print(asyncio.run(_scan_text(config)))
    except Exception as exc:  # any failure is reported to the user, not as a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _scan_text(config) -> str:
    from drivers import sunspec
    from drivers.transport import ConnectionPool

    pool = ConnectionPool()
    try:
        return await sunspec.model_table(pool.connection(config), config.unit_id, config.endpoint.key)
    finally:
        pool.close()


@contextlib.contextmanager
def _reported_by_the_command() -> Iterator[None]:
    """One-shot commands print each device they could not reach themselves, and do not retry: the driver's
    "unreachable …; retrying with back-off" warning, written for the controller, is left out unless ``-v``."""
    device_log = logging.getLogger("drivers.device")
    level = device_log.level
    if not logging.getLogger().isEnabledFor(logging.INFO):
        device_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        device_log.setLevel(level)


async def _with_device(config, base_dir: Path, run) -> int:
    """Open one device, run ``run(device)``; a refusal or an unreachable device is one line on stderr."""
    return await _with_devices([config], base_dir, run)


async def _with_devices(configs: list, base_dir: Path, run) -> int:
    """Open the devices, run ``run(*devices)``; a refusal or an unreachable device is one line on stderr."""
    from drivers.commissioning import Refused
    from drivers.device import open_devices
    from drivers.transport import ConnectionPool
    from ems.clock import WallClock

    pool = ConnectionPool()
    try:
        devices = open_devices(configs, WallClock(), pool, base_dir)
        with _reported_by_the_command():
            return await run(*devices)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        pool.close()


async def _poll_and_print(configs: list, base_dir: Path) -> int:
    from drivers.device import open_devices
    from drivers.transport import ConnectionPool
    from ems.clock import WallClock

    pool = ConnectionPool()
    try:
        devices = open_devices(configs, WallClock(), pool, base_dir)
        with _reported_by_the_command():
            results = await asyncio.gather(*(d.poll() for d in devices))
    finally:
        pool.close()
    rows = [("device", "point", "value", "unit", "quality", "detail")]
    for device, readings in zip(devices, results, strict=True):
        for name, r in readings.items():
            value = "" if r.value is None else (f"{r.value:.6g}" if isinstance(r.value, float) else str(r.value))
            rows.append((device.name, name, value, r.unit, str(r.quality), r.meaning or r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows if len(rows) > 1 else ():   # no table of headings alone
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)), row[5])
    down = [d.name for d in devices if not d.online]
    for name in down:
        device = next(d for d in devices if d.name == name)
        print(f"unreachable: {name} ({device.last_error})")
    return 1 if down else 0
