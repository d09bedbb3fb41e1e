"""``ems sim serve``: run the simulated site (``drivers.cli`` calls :func:`register` with the subparsers of ``ems``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ems.cli_args import number, start_or_now
from ems.clock import MAX_SPEED

if TYPE_CHECKING:
    from drivers.simulated.site import SimulatedSite

WALL_CLOCK_TOLERANCE_S = 60.0
"""Site time this far from the wall clock at 1x is worth a note (a client in another process runs on the wall
clock). [s]"""


def register(sub: Any) -> None:
    """Add ``ems sim serve`` to the ``ems`` subparsers."""
    sim = sub.add_parser("sim", help="simulated site on local Modbus TCP servers")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")
    serve = sim_sub.add_parser("serve", help="serve a site file's devices with simulated plant physics (Ctrl-C stops)")
    serve.add_argument("--config", required=True, help="site file with devices: and simulation: sections")
    serve.add_argument("--speed", type=number(lo=0, lo_open=True, hi=MAX_SPEED), default=None,
                       help="site seconds per real second (default: the file's)")
    serve.add_argument("--start", type=start_or_now, metavar="TIME",
                       help="site time at start: now (the wall clock, which a controller in another process runs on) "
                            "or an ISO 8601 time with offset, e.g. 2026-05-04T11:00:00+07:00 (default: the file's "
                            "simulation.start)")
    serve.add_argument("--fault", action="append", default=[], metavar="DEVICE:KIND[=ARG]",
                       help="inject a fault from the start, e.g. battery:offline, grid-meter:exception=4, "
                            "pv-inverter:slow=3 (s), battery:sentinel=soc_pct, battery:out_of_range=soc_pct=250, "
                            "grid-meter:frozen, battery:ignore_setpoint, battery:bms_charge=40 (%% of the PCS "
                            "limit), battery:bms_discharge=0 (repeatable; docs/devices.md)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from drivers.simulated.site import SimulatedSite

    site = SimulatedSite.from_file(args.config, speed=args.speed, start=args.start)
    for text in args.fault:
        try:
            site.faults.apply(text)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(_serve_until_stopped(site))


async def _serve_until_stopped(site: SimulatedSite) -> int:
    try:
        endpoints = await site.start()
    except OSError as exc:  # a port in use or not ours: one line, not a traceback
        await site.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"simulated site {site.config.site.name}: speed {site.clock.speed:g}x, {site.site_time_text()}")
    for name, ep in endpoints.items():
        image = site.images[name]
        print(f"  {name:<16} {image.role:<12} {image.profile.name:<20} {ep}")
    if site.clock.speed != 1:
        print(f"  at {site.clock.speed:g}x a client in another process (ems devices, ems run) runs on the wall clock "
              f"and sees the plant move {site.clock.speed:g}x too fast; to control it on its own clock use ems run "
              f"--simulate (docs/devices.md, Simulated site)")
    else:
        wall = datetime.now(UTC)
        if abs((site.clock.now() - wall).total_seconds()) > WALL_CLOCK_TOLERANCE_S:
            local_wall = wall.astimezone(ZoneInfo(site.config.site.timezone))
            print(f"  the site's clock is not the wall clock ({local_wall:%Y-%m-%d %H:%M} here): "
                  "a controller in another process (ems run) plans on the wall clock's tariff period, sun and load "
                  "while the plant follows its own; --start now serves the wall clock, ems run --simulate shares "
                  "the site's (docs/devices.md, Simulated site)")
    print("Ctrl-C stops.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await site.stop()
    return 0
