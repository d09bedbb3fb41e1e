"""Where in the day the two-part gap is made: the MPC's month peaks against perfect foresight's, hour by hour
(docs/performance.md, "Where in the day the two-part gap is made").

For each synthetic year (`bench_seeds.py`'s seeds) this runs PV only, MPC with forecasts and perfect foresight and
reports, from the bills and the demand measure itself (``optimizer.billing.window_average_kw``, the tariff's
locally aligned windows):

- the gap between the MPC's and perfect foresight's bills (energy + demand − export credit, excluding VAT) and the
  share of it that is demand charge;
- by how much the MPC's billed demand ends above perfect foresight's each month;
- when that excess was set: each rise of the MPC's running month peak above perfect foresight's month level is
  counted, in kW, in the local hour class of its window (:data:`HOUR_CLASSES`: the night's charge, the factory
  starting, the PV's hours, the afternoon and evening);
- on each day with such a rise at 09:00–22:00: how close to its SOC floor the battery came before 23:30, and how
  much of what it discharged after the day's last rise went out while the window's import was at least
  :data:`UNDER_PEAK_KW` under the month's running peak — energy sold at the evening's price rather than spent
  holding the level (:func:`rise_days`).

Run:  .venv/bin/python benchmarks/bench_two_part_months.py [--scenario nam-cau-kien-hard-two-part]
          [--seeds 7 11 23 42] [--days N]                                     # ~2 min a year, two at a time
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_seeds import seeded_scenario, two_part_parser, two_part_years

from optimizer.billing import PEAK_AT_TOLERANCE_KW, window_average_kw
from simulations.runner import RunResult, run

HOUR_CLASSES = (("night", 22, 7), ("07-09", 7, 9), ("09-14", 9, 14), ("14-22", 14, 22))
"""(name, first local hour, end hour) of each class of window start; the night wraps midnight."""
UNDER_PEAK_KW = 30.0
"""A window's import this far under the month's running peak is not holding the peak. [kW]"""
DAY_END_H = 23.5
"""A rise day's battery is followed until this local hour (after the evening's peak windows, before the night's
charge). [h]"""


def hour_class(hour: int) -> str:
    """The :data:`HOUR_CLASSES` name of a local hour."""
    for name, first, end in HOUR_CLASSES:
        if (first <= hour < end) if first < end else (hour >= first or hour < end):
            return name
    raise ValueError(f"hour {hour} is in no class")


def excess_by_hour(mpc: pd.Series, level_kw: float) -> dict[str, float]:
    """How far a month's running peak rose above ``level_kw`` [kW], split by the local hour class of the window of
    each rise: ``mpc`` is the month's window averages in time order, indexed by local window start. [kW]"""
    out = dict.fromkeys((name for name, _, _ in HOUR_CLASSES), 0.0)
    running = max(level_kw, 0.0)
    for start, value in mpc.items():
        if value > running:
            out[hour_class(start.hour)] += value - running
            running = value
    return out


def rise_days(frame: pd.DataFrame, windows: pd.Series, width: pd.Timedelta, level_kw: float, soc_floor_kwh: float,
              timezone: str) -> list[dict[str, Any]]:
    """The days of one month on which the MPC's running peak rose above ``level_kw`` [kW] in a window starting at
    09:00–22:00 (local), by more than the bills' ``PEAK_AT_TOLERANCE_KW`` (a ride at the peak is no rise): per day
    the kW added, the lowest SOC above ``soc_floor_kwh`` from the last rise until :data:`DAY_END_H` [kWh], what the
    battery discharged in that span and the part of it while the window's import was at least
    :data:`UNDER_PEAK_KW` under the month's running peak [kWh]. ``frame``: the MPC's steps (UTC index, ``soc_kwh``,
    ``battery_kw`` + discharge, ``duration_h``); ``windows``: the month's window averages, indexed by local window
    start, each ``width`` long."""
    running = windows.cummax()
    added = (running - np.maximum(running.shift(1, fill_value=0.0), level_kw)).clip(lower=0.0)
    added = added[(added > PEAK_AT_TOLERANCE_KW) & (added.index.hour >= 9) & (added.index.hour < 22)]
    steps = frame.tz_convert(timezone)
    window_of_step = steps.index.floor(width)  # the windows are aligned to the local clock
    out = []
    for day, rises in added.groupby(added.index.date):
        last = rises.index[-1]
        end = pd.Timestamp(day, tz=timezone) + pd.Timedelta(hours=DAY_END_H)
        after = (steps.index >= last + width) & (steps.index < end)
        discharged = (steps["battery_kw"].clip(lower=0.0) * steps["duration_h"])[after]
        window_kw = windows.reindex(window_of_step[after]).to_numpy()
        peak_then = running.reindex(window_of_step[after]).to_numpy()
        out.append({"day": str(day), "kw_added": float(rises.sum()),
                    "lowest_soc_above_floor_kwh": float(steps["soc_kwh"][(steps.index >= last) & (steps.index < end)]
                                                        .min() - soc_floor_kwh),
                    "discharged_kwh": float(discharged.sum()),
                    "discharged_under_peak_kwh": float(discharged[window_kw <= peak_then - UNDER_PEAK_KW].sum())})
    return out


def year_figures(result: RunResult) -> dict[str, Any]:
    """:mod:`bench_two_part_months`'s figures of one year run with ``pv_only``, ``mpc`` and ``perfect_foresight``."""
    sc, tariff = result.scenario, result.tariff
    tz = sc.site.timezone
    soc_floor = sc.battery.spec().soc_min_kwh
    bills = {name: {m.month: m for m in result.results[name].bill.months} for name in ("mpc", "perfect_foresight")}
    charge = tariff.billed_demand_charge(next(iter(bills["mpc"])))
    width = pd.Timedelta(minutes=charge.window_minutes if charge else 30)
    windows = {}
    for name in ("mpc", "perfect_foresight"):
        frame = result.results[name].frame
        windows[name] = window_average_kw(tariff, frame.index, frame["duration_h"].to_numpy(),
                                          frame["import_kw"].to_numpy(), round(width.total_seconds() / 60)
                                          ).tz_convert(tz)
    by_month = {name: dict(tuple(w.groupby(w.index.strftime("%Y-%m")))) for name, w in windows.items()}
    gap = demand_gap = 0.0
    months, excess, days = [], dict.fromkeys((n for n, _, _ in HOUR_CLASSES), 0.0), []
    for label, mpc_bill in bills["mpc"].items():
        pf_bill = bills["perfect_foresight"][label]
        gap += (mpc_bill.subtotal - mpc_bill.export_credit) - (pf_bill.subtotal - pf_bill.export_credit)
        demand_gap += mpc_bill.demand_amount - pf_bill.demand_amount
        mine, level = by_month["mpc"][label], float(by_month["perfect_foresight"][label].max())
        for name, kw in excess_by_hour(mine, level).items():
            excess[name] += kw
        months.append({"month": label, "mpc_kw": mpc_bill.demand_kw, "pf_kw": pf_bill.demand_kw,
                       "excess_kw": (mpc_bill.demand_kw or 0.0) - (pf_bill.demand_kw or 0.0),
                       "mpc_peak_at": mpc_bill.peak_at, "mpc_peak_period": mpc_bill.peak_period})
        days += rise_days(result.results["mpc"].frame, mine, width, level, soc_floor, tz)
    return {"gap_excl_vat": gap, "demand_gap": demand_gap, "demand_share": demand_gap / gap if gap else None,
            "months": months, "excess_kw_months_by_hour": excess, "rise_days": days}


def seed_figures(name: str, seed: int, days: int | None) -> dict[str, Any]:
    """One year's :func:`year_figures`, with its seed and wall time."""
    t0 = time.perf_counter()
    result = run(seeded_scenario(name, seed, {}, days), strategies=["pv_only", "mpc", "perfect_foresight"])
    return {"seed": seed, **year_figures(result), "wall_s": time.perf_counter() - t0}


def main() -> int:
    args = two_part_parser(__doc__.split("\n")[0]).parse_args()
    command, years = two_part_years("bench_two_part_months", args, seed_figures)
    for y in years:
        excess = [m["excess_kw"] for m in y["months"]]
        print(f"seed {y['seed']}: gap {y['gap_excl_vat'] / 1e6:,.1f} M excl. VAT, {100 * y['demand_share']:.0f} % "
              f"demand charge; billed demand above perfect foresight {min(excess):.1f}–{max(excess):.1f} kW, mean "
              f"{sum(excess) / len(excess):.1f} ({y['wall_s']:.0f} s)", flush=True)
    pooled = {n: sum(y["excess_kw_months_by_hour"][n] for y in years) for n, _, _ in HOUR_CLASSES}
    total = sum(pooled.values())
    print("excess kW-months by local hour of the rise: " + ", ".join(
        f"{n} {v:,.0f} ({100 * v / total:.0f} %)" for n, v in pooled.items()))
    days = [d for y in years for d in y["rise_days"]]
    discharged = sum(d["discharged_kwh"] for d in days)
    under = sum(d["discharged_under_peak_kwh"] for d in days)
    print(f"{len(days)} days with a rise at 09-22 h: lowest SOC above its floor by {DAY_END_H:g} h at most "
          f"{max(d['lowest_soc_above_floor_kwh'] for d in days):.0f} kWh; after the day's last rise "
          f"{discharged / 1e3:,.1f} MWh discharged, {under / 1e3:,.1f} MWh ({100 * under / discharged:.0f} %) "
          f"with the import at least {UNDER_PEAK_KW:g} kW under the month's peak")
    print(json.dumps({"command": command, "scenario": args.scenario, "excess_kw_months_by_hour": pooled,
                      "rise_days": len(days), "discharged_after_rise_kwh": discharged,
                      "discharged_under_peak_kwh": under, "years": years}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
