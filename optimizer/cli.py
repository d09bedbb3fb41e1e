"""``ems plan``: plan a horizon for a site file and print it as a table (or the Plan JSON).

PV: ``--series`` if given, else the clear-sky forecast scaled by the month's climatological
clearness (no history here). Load: ``--series``, else the site file's ``simulation.load`` shift
shape (``day_kw`` between ``day_start`` and ``day_end`` local time, ``night_kw`` otherwise,
× ``sunday_factor`` on Sundays; noise ignored), else an error asking for ``--series``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ems.cli_args import TIME_EXAMPLE, aware_time, number
from ems.clock import WallClock
from ems.series_csv import read_series_csv
from ems.yamlfile import load_model, read_yaml
from optimizer.shift import on_shift
from optimizer.site import SOH_FLOOR_PCT

if TYPE_CHECKING:
    from optimizer.site import PlanningSite

PRICE_COLUMNS = ("import_price", "export_price")
"""Optional ``--series`` columns: the step's prices in place of the tariff's. [currency/kWh]"""


def register(subparsers: Any) -> None:
    """Add ``ems plan`` to the ``ems`` command."""
    p = subparsers.add_parser("plan", help="plan a horizon for a site and print it",
                              description="Plan a horizon for a site file and print it as a table (or the Plan "
                                          "JSON).")
    p.add_argument("--config", required=True, type=Path, help="site YAML file")
    p.add_argument("--start", type=aware_time,
                   help="horizon start, ISO 8601 with offset (default: simulation.start, else now)")
    p.add_argument("--soc", type=float, help="SOC at the start [%% of usable capacity] (default: "
                                             "simulation.initial_soc_pct)")
    p.add_argument("--soh", type=number(lo=SOH_FLOOR_PCT, hi=100), default=None,
                   help="the battery's state of health [%%]: plan on the energy it holds, battery.capacity_kwh x SOH "
                        "(default: the nameplate, as live control without a SOH reading)")
    p.add_argument("--month-peak", type=number(lo=0), default=0.0, help="peak import already reached this month [kW]")
    p.add_argument("--series", type=Path, help="CSV timestamp,pv_kw,load_kw[,import_price,export_price] (or _kwh "
                   "columns, or the grid meter's grid_kw for the load: docs/data.md)")
    p.add_argument("--json", action="store_true", help="print the Plan JSON instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optimizer.forecast import ForecastError
    from optimizer.planner import PlannerError

    try:
        plan, currency, timezone, prices = _make_plan(args)
    except (ForecastError, PlannerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(plan.to_json(indent=2) if args.json else render(plan, currency, timezone, prices))
    return 0


def _make_plan(args: argparse.Namespace):
    from optimizer.service import plan_for_site, site_grid
    from optimizer.site import PlanningSiteView
    from optimizer.tariff import load_tariff

    site = load_model(PlanningSiteView, args.config)
    site = site.model_copy(update={"battery": site.battery.at_health(args.soh)})
    simulation = (read_yaml(args.config) or {}).get("simulation") or {}
    start = args.start or (_simulation_start(str(simulation["start"])) if "start" in simulation else WallClock().now())
    soc_pct = args.soc if args.soc is not None else simulation.get("initial_soc_pct")
    if soc_pct is None:
        raise ValueError("the start SOC is unknown: pass --soc PCT")
    if not 0 <= soc_pct <= 100:
        raise ValueError(f"--soc must be within 0..100 %, got {soc_pct}")
    tariff = load_tariff(site.tariff, args.config.parent)
    grid = site_grid(site, start)
    overrides: dict[str, np.ndarray] = {}
    if args.series:
        overrides = read_series(args.series, grid.starts, site)
    elif simulation.get("load"):
        if simulation["load"].get("model", "shift") != "shift":
            raise ValueError("simulation.load is a series, not a shift shape: pass the load as --series FILE.csv "
                             "(timestamp,pv_kw,load_kw)")
        overrides["load_kw"] = shift_load(simulation["load"], grid.starts, site.site.timezone)
    else:
        raise ValueError("no load forecast without history: pass --series FILE.csv (timestamp,pv_kw,load_kw) "
                         "or add a simulation.load shape to the site file")
    plan = plan_for_site(site, tariff, start, site.battery.capacity_kwh * soc_pct / 100.0,
                         month_peak_kw=args.month_peak, **overrides)
    prices = (f"import prices as {args.series.name} gives them" if "import_price" in overrides
              else "import prices incl. VAT")
    return plan, tariff.currency, site.site.timezone, prices


def _simulation_start(text: str) -> datetime:
    """The site file's ``simulation.start`` (aware)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"simulation.start {text!r} needs a UTC offset, e.g. {TIME_EXAMPLE}")
    return moment


def read_series(path: Path, starts: pd.DatetimeIndex, site: PlanningSite) -> dict[str, np.ndarray]:
    """PV, load [kW] and optional prices (``import_price``, ``export_price`` [currency/kWh]) of a CSV, one value per
    grid step start, read and checked as every measured series is (``ems.series_csv.read_series_csv``, docs/data.md:
    each bad cell named by row and column; timestamps without an offset are in the site's time zone; PV above 1.5 ×
    the plant's AC rating is refused). Rows outside the horizon are not needed; a horizon step without a value is
    an error."""
    frame = read_series_csv(path, timezone=site.site.timezone, step_minutes=site.planner.step_minutes,
                            columns=("pv", "load"), unit="kW", rated_kw={"pv": site.pv.ac_kw}, allow_gaps=True,
                            optional_plain=PRICE_COLUMNS)
    aligned = frame.reindex(starts)
    bad = aligned.isna().any(axis=1)
    if bad.any():
        raise ValueError(f"{path}: no value for {int(bad.sum())} planning step(s), first at {starts[bad.argmax()]}")
    return {c: aligned[c].to_numpy(dtype=float) for c in aligned.columns}


def shift_load(shape: dict[str, Any], starts: pd.DatetimeIndex, timezone: str) -> np.ndarray:
    """The simulated site's day/night load shape (``simulation.load``) at ``starts``. [kW]"""
    local = starts.tz_convert(timezone)
    day_start = time.fromisoformat(str(shape.get("day_start", "07:00")))
    day_end = time.fromisoformat(str(shape.get("day_end", "19:00")))
    on = on_shift(np.asarray(local.hour * 60 + local.minute), day_start, day_end)
    load = np.where(on, float(shape.get("day_kw", 0.0)), float(shape.get("night_kw", 0.0)))
    return load * np.where(local.day_of_week == 6, float(shape.get("sunday_factor", 1.0)), 1.0)


def render(plan, currency: str, timezone: str, prices: str = "") -> str:
    """A readable table of ``plan`` in local time, with totals: prices in ``currency`` per kWh (``prices`` says what
    they are, e.g. incl. VAT), the tariff period of each step by its name (``off-peak``)."""
    local = plan.starts.tz_convert(timezone)
    cap = plan.capacity_kwh
    price = f"{currency}/kWh"
    width = max(8, len(price) + 4)
    head = (f"{'local time':<16} {'period':<8} {'imp ' + price:>{width}} {'exp ' + price:>{width}} {'PV kW':>8} "
            f"{'load kW':>8} {'batt kW':>8} {'grid kW':>8} {'SOC %':>6} {'curt kW':>8}")
    lines = [f"plan from {local[0]:%Y-%m-%d %H:%M} to {plan.end.tz_convert(timezone):%Y-%m-%d %H:%M} ({timezone}), "
             f"source {plan.source}; battery + discharge, grid + import; SOC % of {cap:,.0f} kWh"
             f"{f'; {prices}' if prices else ''}", head,
             "-" * len(head)]
    period = plan.period or ("",) * len(plan)
    for i in range(len(plan)):
        soc = 100 * plan.soc_kwh[i] / cap if cap > 0 else float("nan")
        lines.append(f"{local[i]:%m-%d %H:%M}      {period[i].replace('_', '-'):<8} {plan.import_price[i]:{width}.1f} "
                     f"{plan.export_price[i]:{width}.1f} {plan.pv_kw[i]:8.1f} {plan.load_kw[i]:8.1f} "
                     f"{plan.battery_kw[i]:8.1f} {plan.grid_kw[i]:8.1f} {soc:6.1f} {plan.curtail_kw[i]:8.1f}")
    dt = plan.duration_h
    o = plan.objective
    lines += ["-" * len(head),
              f"energy [kWh]: import {np.sum(dt * plan.import_kw):.1f}, export {np.sum(dt * plan.export_kw):.1f}, "
              f"charge {np.sum(dt * plan.charge_kw):.1f}, discharge {np.sum(dt * plan.discharge_kw):.1f}, "
              f"PV {np.sum(dt * plan.pv_kw):.1f} (curtailed {np.sum(dt * plan.curtail_kw):.1f}), "
              f"load {np.sum(dt * plan.load_kw):.1f}; peak import {plan.import_kw.max():.1f} kW{_demand_said(plan)}",
              f"cost [{currency}]: energy {o.energy_cost:,.0f} − export {o.export_revenue:,.0f} + wear {o.wear:,.0f} "
              f"+ demand {o.demand:,.0f} − terminal value {o.terminal_value:,.0f} + slack {o.slack_penalty:,.0f} "
              f"= {o.total:,.0f}",
              f"SOC {100 * plan.soc0_kwh / cap if cap > 0 else float('nan'):.1f} % → "
              f"{100 * plan.soc_kwh[-1] / cap if cap > 0 else float('nan'):.1f} %; solver {plan.solver.status} "
              f"(build {plan.solver.build_ms:.0f} ms, update {plan.solver.update_ms:.1f} ms, "
              f"solve {plan.solver.solve_ms:.1f} ms)"]
    lines += [f"SLACK {s.constraint}: up to {s.max_violation:.3f} {s.unit} at {len(s.steps)} step(s)"
              for s in plan.slack]
    return "\n".join(lines)


def _demand_said(plan) -> str:
    """Under a demand charge, the plan's peak as the tariff measures it (its window average, which a step's import
    may exceed within the window); empty without one."""
    if plan.demand_kw is None or not len(plan.demand_kw):
        return ""
    return f" in a step, {float(np.max(plan.demand_kw)):.1f} kW as the demand charge measures it (window average)"
