"""``ems park-summary``: the park's summary page (every site's power, SOC, mode, alarms, savings, CO2
and month-to-date peak against the contracted capacity) from the central database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ems.cli_args import number


def register(subparsers: argparse._SubParsersAction) -> None:
    summary = subparsers.add_parser(
        "park-summary", help="serve the park summary page (vi/en/ja) from the central time-series database",
        description="Serve every site's latest telemetry and the park's totals from the central database's "
                    "Prometheus query API (VictoriaMetrics); docs/fleet.md.")
    summary.add_argument("--config", type=Path, required=True, help="park summary file (docs/fleet.md)")
    summary.add_argument("--port", type=number(int, 0, 65535), help="listen on this port (default serve.port)")
    summary.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from controller.telemetry.config import secret_from_env
    from park.app import SummaryServer, create_app
    from park.config import load_summary_settings
    from park.tsdb import PromQuery

    settings = load_summary_settings(args.config)
    client = PromQuery(settings.tsdb.url, secret_from_env(settings.tsdb.token_env), settings.tsdb.timeout_s)
    port = args.port if args.port is not None else settings.serve.port

    async def run() -> int:
        server = SummaryServer(create_app(settings, client), settings.serve.host, port)
        try:
            await server.start()
        except RuntimeError as exc:
            print(f"ems park-summary: {exc}", file=sys.stderr)
            return 2
        print(f"park summary of {settings.park}: http://{settings.serve.host}:{server.port}/ "
              f"(database {settings.tsdb.url})", flush=True)
        await server.wait()
        return 0

    return asyncio.run(run())
