"""``ems run`` (the controller, live or against the simulated site), ``ems config check``, ``ems forecast check``
and ``ems tokens``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ems.cli_args import aware_time, number, start_or_now
from ems.clock import MAX_SPEED

if TYPE_CHECKING:
    from controller.config import SiteConfig

log = logging.getLogger(__name__)

EXAMPLE_SITE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "simulated-site.yaml"
"""The example site file ``ems run --simulate`` uses without ``--config`` (a source checkout and an installed package
both have it: ``deploy/examples`` is package data, tests/test_packaging.py)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the controller (live, or against the simulated site)",
                                description="Run the controller. Stops cleanly on SIGTERM/SIGINT: battery to 0 kW, "
                                            "remote control released.")
    run.add_argument("--config", type=Path, help="site file (with --simulate default: the shipped example)")
    run.add_argument("--simulate", action="store_true",
                     help="start the simulated site in-process on the same accelerated clock and control it over "
                          "real Modbus")
    run.add_argument("--speed", type=number(lo=0, lo_open=True, hi=MAX_SPEED),
                     help="--simulate: site seconds per real second (default simulation.speed)")
    run.add_argument("--start", type=start_or_now, metavar="TIME",
                     help="--simulate: site time at start, now or an ISO 8601 time with offset, e.g. "
                          "2026-05-04T16:30:00+07:00 for the evening peak (default simulation.start)")
    run.add_argument("--perfect-forecast", action="store_true",
                     help="--simulate: plan with the simulated site's own PV and load instead of forecasts")
    run.add_argument("--state-dir", type=Path,
                     help="state directory (default: control.state_dir; with --simulate a fresh temporary one)")
    run.add_argument("--duration", type=number(lo=0, lo_open=True), help="stop after this many seconds of site time")
    run.set_defaults(func=_run)

    config = subparsers.add_parser("config", help="site file tools")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a site file; every error with its field path and line")
    check.add_argument("file", type=Path)
    check.add_argument("--env-file", type=Path,
                       help="the service's environment file (e.g. /etc/pv-battery-ems/env): its secrets count as set")
    check.set_defaults(func=_check)

    forecast = subparsers.add_parser("forecast", help="forecast files from outside (weather service, plant)")
    actions = forecast.add_subparsers(dest="forecast_command", required=True, metavar="ACTION")
    fcheck = actions.add_parser(
        "check", help="would the controller take this forecast file (JSON or CSV)? what does it say?",
        description="Validate a forecast file through the controller's own intake (the site's PV AC limit) and "
                    "summarise it in the site's local time; exit status 1 when it would be refused.")
    fcheck.add_argument("file", type=Path, help="forecast as JSON (.json) or CSV (docs/data.md, External forecasts)")
    fcheck.add_argument("--config", type=Path, required=True, help="site file")
    fcheck.add_argument("--source", help="name the forecast is used under (CSV default: csv)")
    fcheck.add_argument("--issued-at", type=aware_time,
                        help="issue time, ISO 8601 with offset (CSV default: the file's modification time)")
    fcheck.add_argument("--valid-hours", type=float, help="validity from the issue time [h] (CSV default: 6)")
    fcheck.add_argument("--at", type=aware_time,
                        help="judge as the controller would at this time, ISO 8601 with offset (default: now)")
    fcheck.set_defaults(func=_forecast_check)

    history = subparsers.add_parser("history", help="the controller's measured history (what its forecasts learn from)")
    actions = history.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    himport = actions.add_parser(
        "import", help="seed the history from the factory's meter export (a new site's first plans know its day)",
        description="Write the steps of the control.history_days before now from a meter export (CSV: timestamp, "
                    "load or the grid meter, optionally PV; docs/data.md, Format) into the state file as the "
                    "controller's measured history; steps it measured itself are kept. Stop the service first.")
    himport.add_argument("file", type=Path, help="meter export as CSV (docs/data.md)")
    himport.add_argument("--config", type=Path, required=True, help="site file")
    himport.add_argument("--timestamps-at", choices=("start", "end"), default="start",
                         help="what each timestamp labels: its interval's start (default) or end, as many meter "
                              "portals write (00:15 for 00:00–00:15)")
    himport.add_argument("--state-dir", type=Path, help="state directory (default: the site file's, as ems run)")
    himport.add_argument("--at", type=aware_time, help="import as of this time, ISO 8601 with offset (default: now)")
    himport.set_defaults(func=_history_import)

    from controller.api.cli import register as register_tokens

    register_tokens(subparsers)


ROLE_NAMES = {"meter": ("meter", "meters"), "pv_inverter": ("PV inverter", "PV inverters"),
              "battery": ("battery", "batteries")}


def site_summary(config: SiteConfig) -> str:
    """What ``ems config check`` read, for the engineer to compare with the plant: the site, its sizes, its devices
    by role (``10 PV inverters (inv-01 … inv-10)``) and its tariff."""
    groups: dict[str, list[str]] = {}
    for d in config.devices:
        groups.setdefault(d.role.value, []).append(d.name)
    roles = ", ".join(f"{len(names)} {ROLE_NAMES[role][len(names) > 1]} "
                      f"({', '.join(names) if len(names) <= 3 else f'{names[0]} … {names[-1]}'})"
                      for role, names in groups.items())
    pv, bat = config.pv, config.battery
    return (f"site {config.site.name} ({config.site.timezone}); PV {pv.kwp:,g} kWp / {pv.ac_limit_kw:,g} kW AC; "
            f"battery {bat.capacity_kwh:,g} kWh / {bat.max_charge_kw:,g} kW charge / {bat.max_discharge_kw:,g} kW "
            f"discharge; {len(config.devices)} devices: {roles}; tariff {config.tariff.preset or config.tariff.file}")


def _check(args: argparse.Namespace) -> int:
    from controller.config import load_config, state_dir
    from controller.telemetry import read_tokens_file, tokens_file_path
    from controller.telemetry.secret_check import read_env_file, secret_warnings
    from drivers.config import RtuEndpoint

    config = load_config(args.file)
    print(f"{args.file}: OK — {site_summary(config)}; state in {state_dir(config, args.file)}")
    environ = dict(os.environ)
    if args.env_file is not None:
        try:
            environ.update(read_env_file(args.env_file))
        except OSError as exc:
            print(f"warning: --env-file {args.env_file}: {exc.strerror or exc}", file=sys.stderr)
    forecast_csv = config.control.external_forecast_csv
    tokens_file = tokens_file_path(config.telemetry.dashboard, state_dir(config, args.file), environ)
    tokens_problem = None if tokens_file is None else read_tokens_file(tokens_file)[1]
    serial = [f"devices.{d.name}.endpoint.serial_port: {problem}" for d in config.devices
              if isinstance(d.endpoint, RtuEndpoint) and (problem := d.endpoint.port_problem())]
    for note in _health_notes(config, Path(args.file).resolve().parent):
        print(f"note: {note}")
    for warning in [*secret_warnings(config.telemetry, environ), *serial, config.site.solar_noon_warning(),
                    forecast_csv and forecast_csv.missing_warning(Path(args.file).resolve().parent),
                    tokens_problem and f"telemetry.dashboard.tokens_file: {tokens_problem}: no token from it is "
                                       "accepted (the controller raises telemetry.tokens_invalid)"]:
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def _health_notes(config: SiteConfig, base_dir: Path) -> list[str]:
    """One line per battery whose profile reads no state of health: the controller plans it on its nameplate for
    life (docs/controller.md "State of health")."""
    from controller.config import resolve_profile
    from drivers.profile import load_profile
    from drivers.roles import Role

    return [f"devices.{d.name}: profile {d.profile} reads no soh_pct: plans count the battery's nameplate energy "
            "for its whole life; as it ages, set battery.capacity_kwh (a unit's own: devices[].battery) to what a "
            "capacity test measures"
            for d in config.devices if d.role is Role.BATTERY
            and "soh_pct" not in load_profile(resolve_profile(d.profile, base_dir)).points]


def _forecast_check(args: argparse.Namespace) -> int:
    from controller.config import load_config
    from controller.forecast_check import check_forecast_file

    config = load_config(args.config)
    ok, lines = check_forecast_file(args.file, config.site, config.pv, source=args.source,
                                    issued_at=args.issued_at, valid_hours=args.valid_hours, now=args.at)
    print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _history_import(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from controller.config import load_config, state_dir
    from controller.history_import import ImportRefused, import_history
    from controller.service import STATE_FILE

    config = load_config(args.config)
    now = args.at.astimezone(UTC) if args.at is not None else datetime.now(UTC)
    path = (args.state_dir or state_dir(config, args.config)) / STATE_FILE
    try:
        done = import_history(args.file, config, path, now, args.timestamps_at)
    except ImportRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    zone = config.site.timezone
    if done.first is None or done.last is None:
        print(f"nothing imported: every step of {args.file} in the period was measured by the controller itself "
              f"({done.kept} kept)")
        return 0
    what = "PV and load" if done.pv else "load (no PV column: the PV forecast learns from the controller's own days)"
    print(f"imported {done.steps:,} steps of {config.planner.step_minutes} min, {what}, "
          f"{done.first.tz_convert(zone):%Y-%m-%d %H:%M} – {done.last.tz_convert(zone):%Y-%m-%d %H:%M} ({zone}), "
          f"into {path}" + (f"; {done.kept:,} steps the controller measured itself kept" if done.kept else "")
          + "; the controller reads them at its next start")
    return 0


def _run(args: argparse.Namespace) -> int:
    from controller.config import load_config

    path = args.config or (EXAMPLE_SITE if args.simulate else None)
    if path is None:
        raise SystemExit("ems run: --config FILE is required (or --simulate)")
    if not args.simulate and (args.speed is not None or args.perfect_forecast or args.start is not None):
        raise SystemExit("ems run: --speed, --start and --perfect-forecast need --simulate")
    config = load_config(path)  # every problem reported before anything starts
    if args.simulate and config.simulation is None:
        raise SystemExit(f"ems run --simulate: {path} has no simulation: section")
    if (warning := config.site.solar_noon_warning()) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    if args.state_dir is not None or not args.simulate:
        from controller.config import state_dir
        from controller.state_store import state_dir_problem

        problem = state_dir_problem(args.state_dir or state_dir(config, path))
        if problem is not None:
            print(f"ems run: {problem}", file=sys.stderr)
            return 2
    return asyncio.run(_serve(args, config, Path(path)))


async def _serve(args: argparse.Namespace, config, path: Path) -> int:
    from controller.config import at_device_pace
    from controller.planning import PerfectForecasts
    from controller.service import Controller
    from drivers.roles import Role
    from ems.clock import WallClock

    site = None
    forecasts = None
    state_directory = args.state_dir
    if args.simulate:
        from drivers.simulated.site import SimulatedSite

        site = SimulatedSite.from_file(path, speed=args.speed, start=args.start)
        try:
            endpoints = await site.start()
        except OSError as exc:  # a busy port: one line, like `ems sim serve`
            print(f"ems run --simulate: {exc}", file=sys.stderr)
            return 2
        clock = site.clock
        print(f"simulated site at {clock.speed:g}x, {site.site_time_text()}: "
              + ", ".join(f"{n} {e}" for n, e in endpoints.items()), flush=True)
        paced = at_device_pace(config, site.step_period_s, clock.speed)
        if paced is not config:
            print(f"the simulated devices change every {site.step_period_s:g} s of site time at {clock.speed:g}x: "
                  f"control cycle {paced.control.cycle_s:g} s, readings stale after "
                  f"{min(d.max_age_s for d in paced.devices):g} s, a unit answers within "
                  f"{paced.control.groups.response_s:g} s (docs/devices.md, Simulated site)", flush=True)
            config = paced
        if args.perfect_forecast:
            forecasts = PerfectForecasts(site.pv_source, site.load_source)
        if state_directory is None:
            state_directory = Path(tempfile.mkdtemp(prefix="ems-sim-state-"))
    else:
        clock = WallClock()
    controller = Controller.from_config(config, path, clock, state_directory=state_directory, forecasts=forecasts)
    print(f"controller for {config.site.name}: state in {controller.store.path}", flush=True)
    if site is not None:  # the simulated plant ran off a series file's data: the run ends with it
        site.on_data_end = lambda _why: controller.stop()
    telemetry = await controller.start_telemetry()
    if telemetry.dashboard is not None:
        dash = config.telemetry.dashboard
        print(f"dashboard: http://{dash.host}:{telemetry.dashboard.port}/", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop)
    try:
        await controller.run(duration_s=args.duration)
    finally:
        if site is not None:
            batteries = [i for i in site.images.values() if i.role is Role.BATTERY]
            for battery in batteries:  # one line per battery unit, named when there are several
                acting = battery.setpoint("battery_setpoint_kw")  # None: the setpoint is not enabled
                print(f"simulated battery setpoint at exit: {battery.value('battery_setpoint_kw')} kW ("
                      + ("remote control released" if acting is None else f"in force: {acting:g} kW") + ")"
                      + (f" [{battery.name}]" if len(batteries) > 1 else ""), flush=True)
            await site.stop()
    return 0
