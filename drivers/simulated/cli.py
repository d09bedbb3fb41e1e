"""``ems sim serve`` (run the simulated site) and ``ems devices scan`` (list a device's SunSpec models).

``drivers.cli`` calls :func:`register` with the subparsers of ``ems``; ``sim`` is a new top-level
command and ``scan`` joins the ``devices`` command (created here if ``drivers.cli`` has not made it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from ems.cli_args import number
from ems.clock import MAX_SPEED

if TYPE_CHECKING:
    from drivers.simulated.site import SimulatedSite

DEFAULT_PORT = 502


def _devices_parser(sub: Any) -> Any:
    """The subparsers of ``ems devices`` (created if absent)."""
    devices = sub.choices.get("devices")
    if devices is None:
        devices = sub.add_parser("devices", help="talk to Modbus devices")
        devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    action = next(a for a in devices._actions if isinstance(a, argparse._SubParsersAction))
    return action


def register(sub: Any) -> None:
    """Add ``ems sim serve`` and ``ems devices scan`` to the ``ems`` subparsers."""
    sim = sub.add_parser("sim", help="simulated site on local Modbus TCP servers")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")
    serve = sim_sub.add_parser("serve", help="serve a site file's devices with simulated plant physics (Ctrl-C stops)")
    serve.add_argument("--config", required=True, help="site file with devices: and simulation: sections")
    serve.add_argument("--speed", type=number(lo=0, lo_open=True, hi=MAX_SPEED), default=None,
                       help="site seconds per real second (default: the file's)")
    serve.add_argument("--fault", action="append", default=[], metavar="DEVICE:KIND[=ARG]",
                       help="inject a fault from the start, e.g. battery:offline, grid-meter:exception=4, "
                            "pv-inverter:slow=3, battery:sentinel=soc_pct, battery:out_of_range=soc_pct=250, "
                            "grid-meter:frozen, battery:ignore_setpoint, battery:bms_charge=40, "
                            "battery:bms_discharge=0 (repeatable)")
    serve.set_defaults(func=_serve)

    scan = _devices_parser(sub).add_parser("scan", help="list the SunSpec models of a device")
    scan.add_argument("target", metavar="HOST[:PORT]", help=f"Modbus TCP device (default port {DEFAULT_PORT})")
    scan.add_argument("--unit", type=number(int, 0, 247), default=1, help="Modbus unit id (default 1)")
    scan.add_argument("--timeout", type=number(lo=0, lo_open=True), default=2.0, help="per request [s]")
    scan.set_defaults(func=_scan)


def _serve(args: argparse.Namespace) -> int:
    from drivers.simulated.site import SimulatedSite

    site = SimulatedSite.from_file(args.config, speed=args.speed)
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
    print(f"simulated site {site.config.site.name}: speed {site.clock.speed:g}x, "
          f"site time {site.clock.now():%Y-%m-%d %H:%M:%S} UTC")
    for name, ep in endpoints.items():
        image = site.images[name]
        print(f"  {name:<16} {image.role:<12} {image.profile.name:<20} {ep}")
    if site.clock.speed != 1:
        print(f"  at {site.clock.speed:g}x a client in another process (ems devices, ems run) runs on the wall clock "
              f"and sees the plant move {site.clock.speed:g}x too fast; to control it on its own clock use ems run "
              f"--simulate (docs/devices.md, Simulated site)")
    print("Ctrl-C stops.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await site.stop()
    return 0


def _scan(args: argparse.Namespace) -> int:
    host, _, port = args.target.rpartition(":") if ":" in args.target else (args.target, "", str(DEFAULT_PORT))
    try:
        print(asyncio.run(scan(host, int(port), args.unit, args.timeout)))
    except Exception as exc:  # any failure is reported to the user, not as a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def scan(host: str, port: int, unit_id: int = 1, timeout_s: float = 2.0) -> str:
    """The SunSpec models of a device (id, name, address, length) and its common model's identity, as text."""
    from pymodbus.client import AsyncModbusTcpClient

    from drivers import sunspec

    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=1)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to {host}:{port}")
    try:
        models = await sunspec.discover(client, unit_id)
        common = next((m for m in models if m.id == 1), None)
        identity = await sunspec.read_model(client, unit_id, common) if common is not None else {}
    finally:
        client.close()
    lines = [f"{host}:{port} unit {unit_id}: {len(models)} SunSpec model(s)"]
    for key, label in (("Mn", "manufacturer"), ("Md", "model"), ("SN", "serial"), ("Vr", "version")):
        lines.append(f"  {label:<12} {identity.get(key) or '-'}")
    lines.append(f"  {'id':>5}  {'name':<28} {'address':>7} {'length':>6}")
    lines += [f"  {m.id:>5}  {m.name:<28} {m.address:>7} {m.length:>6}" for m in models]
    return "\n".join(lines)
