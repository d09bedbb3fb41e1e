"""``ems devices read``: poll every configured device once and print what it says.

``register`` also hands the ``ems`` subparsers to ``drivers.simulated.cli`` (``ems sim serve``,
``ems devices scan``) when that module is present.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``ems devices read`` (and the simulated-device commands, if installed) to the ``ems`` subparsers."""
    devices = sub.add_parser("devices", help="talk to Modbus devices")
    actions = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    read = actions.add_parser("read", help="poll every device of a site file once and print a table")
    read.add_argument("--config", required=True, help="site file with a devices: list")
    read.add_argument("--device", action="append", default=[], metavar="NAME",
                      help="only this device (repeatable)")
    read.set_defaults(func=_read)
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
            raise ConfigError(args.config, [FieldError("devices", f"no device named {', '.join(unknown)}")])
        configs = [c for c in configs if c.name in args.device]
    return asyncio.run(_poll_and_print(configs, Path(args.config).parent))


async def _poll_and_print(configs: list, base_dir: Path) -> int:
    from drivers.device import open_devices
    from drivers.transport import ConnectionPool
    from ems.clock import WallClock

    pool = ConnectionPool()
    try:
        devices = open_devices(configs, WallClock(), pool, base_dir)
        results = await asyncio.gather(*(d.poll() for d in devices))
    finally:
        pool.close()
    rows = [("device", "point", "value", "unit", "quality", "detail")]
    for device, readings in zip(devices, results, strict=True):
        for name, r in readings.items():
            value = "" if r.value is None else (f"{r.value:.6g}" if isinstance(r.value, float) else str(r.value))
            rows.append((device.name, name, value, r.unit, str(r.quality), r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)), row[5])
    down = [d.name for d in devices if not d.online]
    for name in down:
        device = next(d for d in devices if d.name == name)
        print(f"unreachable: {name} ({device.last_error})")
    return 1 if down else 0
