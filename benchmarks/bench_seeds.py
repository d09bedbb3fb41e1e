"""The MPC's share of the perfect-foresight battery value over several synthetic years (docs/performance.md,
"Dispatch value over several synthetic years").

`bench_simulation.py` measures each share on one synthetic year (seed 7). Single days move a two-part year's
share by a percent, so a planner setting tuned on that year alone can fit its particular hard days: measured on
5 Dec 2026, the recharge floor's stress multiple 0.25 beat 0.5 on seed 7 (0.8434 against 0.8383) and lost three
points on each of three other seeds. This runs one scenario on the same synthetic generator with other seeds (the
weather, load and shutdown draws change; the site, tariff and generator settings do not), optionally with planner
settings changed, and reports each year's share and the pooled share (Σ MPC value / Σ perfect-foresight value),
each value counted as the study counts it (:func:`simulations.runner.battery_savings`).
Two worker processes, one year each.

Run:  .venv/bin/python benchmarks/bench_seeds.py nam-cau-kien-hard-two-part [--seeds 7 11 23 42]
          [--set demand_floor_stress_level=0.5 ...] [--days N] [--day-ahead PCT [--no-band | --band-width W]]
          [--tariff PRESET] [--battery wear_cost_per_kwh=1 ...]

``--tariff PRESET`` runs the years on another shipped tariff (e.g. ``jp-high-voltage-illustrative``: a 12-month
demand basis); the scenario's costs stay in its own currency, so give the battery's wear cost in the tariff's
with ``--battery wear_cost_per_kwh=…`` (the Nam Cau Kien scenarios' 150 VND/kWh ≈ 0.9 JPY/kWh). The factory keeps
its own calendar: where the scenario's load forecast follows the tariff's holidays (``site.holidays: tariff``), it
is given the synthetic load's holiday country instead (a Vietnamese factory on the Japanese price still works on
Japan's public holidays and stops on Viet Nam's; before 7 Dec 2026 it was forecast on Japan's).

``--day-ahead PCT`` gives the MPC a day-ahead PV forecast from outside of PCT % daily error (as
`bench_simulation.py`'s ``…_day_ahead`` figures; docs/simulation.md "Day-ahead forecast"), with its P10/P90 band
unless ``--no-band``; ``--band-width W`` sends that band W times as wide as the calibrated one (0.5: an
overconfident service; with ``--set external_band_recalibrate=false`` the planner uses it as sent).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.site import TARIFF_CALENDAR  # noqa: E402
from simulations.runner import battery_savings, run  # noqa: E402
from simulations.scenario import Scenario, load_scenario  # noqa: E402

SCENARIOS = ROOT / "simulations" / "scenarios"
DEFAULT_SEEDS = (7, 11, 23, 42)
T = TypeVar("T")
P90_Z = 1.2816
"""The standard normal's 90th percentile: a P90 error (the net-load risk the demand-charge hedges are sized from,
``optimizer.service.PEAK_RISK_LEVEL``) is this many standard deviations above the mean. [-]"""


def seeded_scenario(name: str, seed: int, planner: dict[str, object], days: int | None,
                    day_ahead: dict[str, object] | None = None, tariff: str | None = None,
                    battery: dict[str, object] | None = None) -> Scenario:
    """A shipped scenario with a synthetic year on ``seed``, ``planner`` settings changed, optionally cut to its
    first ``days`` days, with a day-ahead PV forecast (``data.pv_forecast``, e.g. ``{"daily_error_pct": 20,
    "band": True}``), on another shipped ``tariff`` preset and with ``battery`` fields changed. Raises ValueError
    for a scenario on measured (CSV) data."""
    base = load_scenario(SCENARIOS / f"{name}.yaml")
    data = base.model_dump()
    if data["data"].get("synthetic") is None:
        raise ValueError(f"{name} runs on measured data: it has no synthetic seed to vary")
    data["data"]["synthetic"]["seed"] = seed
    if days is not None:
        data["data"]["days"] = days
    if day_ahead is not None:
        data["data"]["pv_forecast"] = dict(day_ahead)
    data["planner"].update(planner)
    if tariff is not None:
        data["tariff"] = {**data["tariff"], "preset": tariff, "file": None}
        if data["site"].get("holidays") == TARIFF_CALENDAR:
            data["site"]["holidays"] = data["data"]["synthetic"]["load"]["holiday_country"]
    data["battery"].update(battery or {})
    out = Scenario.model_validate(data)
    out._base_dir = base.base_dir
    return out


def two_part_parser(description: str) -> argparse.ArgumentParser:
    """The command line of the two-part diagnostics: ``--scenario`` (a shipped scenario on a synthetic year with a
    demand charge; the harder two-part year by default), ``--seeds`` and ``--days``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scenario", default="nam-cau-kien-hard-two-part",
                        help="a shipped scenario on a synthetic year with a demand charge")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--days", type=int, default=None, help="simulate only the first N days of each year")
    return parser


def two_part_years(program: str, args: argparse.Namespace,
                   per_seed: Callable[[str, int, int | None], T]) -> tuple[str, list[T]]:
    """What each two-part diagnostic's ``main`` does first: the command that reproduces the run (the arguments of
    :func:`two_part_parser`), printed; the first year's scenario checked (:func:`scenario_or_exit`); then
    ``per_seed(scenario, seed, days)`` for every seed, two years at a time. Returns the command and the years in
    seed order."""
    command = " ".join([f"python benchmarks/{program}.py", "--scenario", args.scenario, "--seeds",
                        *map(str, args.seeds)] + ([f"--days {args.days}"] if args.days else []))
    print(f"reproduce: {command}", flush=True)
    scenario_or_exit(program, args.scenario, args.seeds[0], {}, args.days)
    with ProcessPoolExecutor(max_workers=2) as pool:
        years = list(pool.map(per_seed, [args.scenario] * len(args.seeds), args.seeds, [args.days] * len(args.seeds)))
    return command, years


def scenario_or_exit(program: str, name: str, seed: int, planner: dict[str, object], days: int | None,
                     day_ahead: dict[str, object] | None = None, tariff: str | None = None,
                     battery: dict[str, object] | None = None) -> None:
    """Make the first year's scenario at once (:func:`seeded_scenario`), so that a bad scenario or setting stops
    ``program`` here with its error, not in a worker process."""
    try:
        seeded_scenario(name, seed, planner, days, day_ahead, tariff, battery)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{program}: {name}{f' with {planner}' if planner else ''}: {exc}") from None


def pooled_shares(years: list[dict[str, float]], variants: list[str] | tuple[str, ...],
                  width: int = 22) -> dict[str, float | None]:
    """Each variant's battery value pooled over the years as a share of perfect foresight's (Σ ``value_<variant>``
    / Σ ``value_pf``; None without any), printed with each year's own share (``year[variant]``). [-]"""
    total_pf = sum(year["value_pf"] for year in years)
    pooled = {v: sum(year[f"value_{v}"] for year in years) / total_pf if total_pf else None for v in variants}
    for variant in variants:
        per_seed = " / ".join(f"{year[variant]:.4f}" for year in years)
        share = "n/a" if pooled[variant] is None else f"{pooled[variant]:.4f}"
        print(f"{variant:{width}s} pooled {share}  (seeds {per_seed})", flush=True)
    return pooled


def seed_year(name: str, seed: int, planner: dict[str, object], days: int | None,
              day_ahead: dict[str, object] | None = None, tariff: str | None = None,
              battery: dict[str, object] | None = None) -> dict[str, float]:
    """Battery value of MPC and of perfect foresight on one seed's year: the saving against PV only as the study
    counts it (:func:`simulations.runner.battery_savings`) [currency/yr]; and each strategy's billed demand per
    month [kW]."""
    t0 = time.perf_counter()
    result = run(seeded_scenario(name, seed, planner, days, day_ahead, tariff, battery),
                 strategies=["pv_only", "mpc", "perfect_foresight"])
    value = battery_savings(result)
    demand = {f"billed_kw_{name}": [round(m.demand_kw, 1) if m.demand_kw is not None else None
                                    for m in result.results[name].bill.months]
              for name in ("pv_only", "mpc", "perfect_foresight")}
    return {"seed": seed, "value_mpc": value["mpc"], "value_pf": value["perfect_foresight"],
            "wall_s": time.perf_counter() - t0, **demand}


def parse_settings(pairs: list[str], option: str = "--set") -> dict[str, object]:
    """``key=value`` settings given with ``option``, each value read as JSON (numbers, true/false, null)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{option} {key}: {value!r} is not a number, true, false or null") from exc
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", help="a shipped scenario on a synthetic year, e.g. nam-cau-kien-hard-two-part")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a planner setting for every year (repeatable)")
    parser.add_argument("--days", type=int, default=None, help="simulate only the first N days of each year")
    parser.add_argument("--day-ahead", type=float, default=None, metavar="PCT",
                        help="give the MPC a day-ahead PV forecast of PCT %% daily error")
    parser.add_argument("--no-band", action="store_true", help="the day-ahead forecast without its P10/P90 band")
    parser.add_argument("--band-width", type=float, default=1.0, metavar="W",
                        help="the day-ahead band W times as wide as the calibrated one")
    parser.add_argument("--tariff", default=None, metavar="PRESET", help="run the years on this shipped tariff")
    parser.add_argument("--battery", dest="battery", action="append", default=[], metavar="KEY=VALUE",
                        help="a battery field for every year (repeatable), e.g. wear_cost_per_kwh=1")
    args = parser.parse_args()
    planner = parse_settings(args.settings)
    battery = parse_settings(args.battery, "--battery")
    day_ahead = None if args.day_ahead is None else {"daily_error_pct": args.day_ahead, "band": not args.no_band,
                                                     "band_width": args.band_width}
    command = " ".join(["python benchmarks/bench_seeds.py", args.scenario, "--seeds", *map(str, args.seeds)]
                       + [f"--set {pair}" for pair in args.settings] + ([f"--days {args.days}"] if args.days else [])
                       + ([f"--day-ahead {args.day_ahead:g}"] if args.day_ahead is not None else [])
                       + (["--no-band"] if args.no_band else [])
                       + ([f"--band-width {args.band_width:g}"] if args.band_width != 1.0 else [])
                       + ([f"--tariff {args.tariff}"] if args.tariff else [])
                       + [f"--battery {pair}" for pair in args.battery])
    print(f"reproduce: {command}", flush=True)
    scenario_or_exit("bench_seeds", args.scenario, args.seeds[0], planner, args.days, day_ahead, args.tariff,
                     battery)
    n = len(args.seeds)
    with ProcessPoolExecutor(max_workers=2) as pool:
        years = list(pool.map(seed_year, [args.scenario] * n, args.seeds, [planner] * n, [args.days] * n,
                              [day_ahead] * n, [args.tariff] * n, [battery] * n))
    for year in years:
        ratio = year["value_mpc"] / year["value_pf"] if year["value_pf"] else float("nan")
        year["ratio"] = ratio
        print(f"seed {year['seed']}: MPC {year['value_mpc']:,.0f}, perfect foresight {year['value_pf']:,.0f} "
              f"→ ratio {ratio:.4f} ({year['wall_s']:.0f} s)", flush=True)
    total_pf = sum(year["value_pf"] for year in years)
    pooled = sum(year["value_mpc"] for year in years) / total_pf if total_pf else None
    print(f"pooled over {len(years)} years: {pooled:.4f}" if pooled is not None else "pooled: no battery value")
    print(json.dumps({"command": command, "scenario": args.scenario, "tariff": args.tariff, "battery": battery,
                      "planner": planner,
                      "day_ahead_error_pct": args.day_ahead, "day_ahead_band": not args.no_band,
                      "day_ahead_band_width": args.band_width,
                      "pooled_ratio": pooled,
                      "years": years}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
