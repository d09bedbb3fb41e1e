"""``ems simulate`` and ``ems sweep``: offline dispatch studies from a scenario file (docs/simulation.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ems.cli_args import local_date, number
from simulations.scenario import ALL_STRATEGIES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate`` and ``sweep`` to the ``ems`` command."""
    sim = subparsers.add_parser("simulate", help="run an offline dispatch study of a scenario",
                                description="Run every strategy of a scenario over its data; write summary.json, "
                                            "the per-step series and report.html.")
    sim.add_argument("scenario", type=Path, help="scenario YAML file")
    sim.add_argument("--out", type=Path, required=True,
                     help="output directory (created; must not hold a study already unless --force)")
    sim.add_argument("--force", action="store_true", help="overwrite a study already in --out")
    sim.add_argument("--csv", action="store_true", help="write the series as CSV instead of Parquet")
    _period_options(sim)
    sim.add_argument("--strategies", help=f"comma-separated subset of {', '.join(ALL_STRATEGIES)}")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)

    sw = subparsers.add_parser("sweep", help="sweep PV and battery sizes of a scenario",
                               description="Run a scenario over a grid of PV [kWp] and battery [kWh] sizes; write "
                                           "sweep.csv, payback and NPV heatmaps and sweep.html.")
    sw.add_argument("scenario", type=Path, help="scenario YAML file")
    sw.add_argument("--pv", required=True, help="PV sizes [kWp]: START:STOP:STEP, a list a,b,c or one value")
    sw.add_argument("--battery", required=True, help="battery sizes [kWh]: START:STOP:STEP, a list or one value")
    sw.add_argument("--strategy", default="perfect_foresight", choices=[s for s in ALL_STRATEGIES if s != "pv_only"],
                    help="battery dispatch in every cell (default: perfect_foresight, the upper bound)")
    sw.add_argument("--out", type=Path, required=True,
                    help="output directory (created; must not hold a sweep already unless --force)")
    sw.add_argument("--force", action="store_true", help="overwrite a sweep already in --out")
    where = sw.add_mutually_exclusive_group()
    where.add_argument("--workers", type=number(int, 1), default=1, help="local worker processes (default 1)")
    where.add_argument("--dask", metavar="ADDRESS", help="dask.distributed scheduler address, e.g. tcp://host:8786")
    _period_options(sw)
    sw.set_defaults(func=_sweep)

    pk = subparsers.add_parser("park", help="run every site of an industrial park (a park file) and total them",
                               description="Run each site's scenario (docs/fleet.md, park studies); write park.csv "
                                           "and park.md with per-site and park totals.")
    pk.add_argument("park", type=Path, help="park YAML file (sites, each with its scenario)")
    pk.add_argument("--out", type=Path, required=True,
                    help="output directory (created; must not hold a park study already unless --force)")
    pk.add_argument("--force", action="store_true", help="overwrite a park study already in --out")
    where = pk.add_mutually_exclusive_group()
    where.add_argument("--workers", type=number(int, 1), default=1, help="local worker processes (default 1)")
    where.add_argument("--dask", metavar="ADDRESS", help="dask.distributed scheduler address, e.g. tcp://host:8786")
    pk.set_defaults(func=_park)


def _period_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=local_date, help="override data.start (local date YYYY-MM-DD)")
    parser.add_argument("--days", type=int, help="override data.days")


def _load(args: argparse.Namespace):
    from ems.yamlfile import validate
    from simulations.scenario import Scenario, load_scenario

    scenario = load_scenario(args.scenario)
    if args.start is None and args.days is None:
        return scenario
    data = scenario.model_dump()
    if args.start is not None:
        data["data"]["start"] = args.start
    if args.days is not None:
        data["data"]["days"] = args.days
    out = validate(Scenario, data, f"{args.scenario} (with --start/--days)")
    out._base_dir = scenario.base_dir
    return out


STUDY_FILES = ("summary.json", "report.html", "timeseries.parquet", "timeseries.csv")
SWEEP_FILES = ("sweep.csv", "sweep.html")
PARK_FILES = ("park.csv", "park.md", "park-shared-battery.json")


def out_problem(out: Path, force: bool, outputs: Sequence[str]) -> str | None:
    """What is wrong with ``--out`` before a run starts, as one line; None when the run may write there.

    The folder must be (or become) a writable directory, and must not already hold ``outputs`` unless
    ``force``. The directory is created here, so a run never ends in a write error after minutes of work.
    """
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    present = [name for name in outputs if (out / name).exists()]
    if present and not force:
        return (f"--out {out} already holds a study ({', '.join(present)}); choose another folder or add --force "
                "to overwrite it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        return f"--out {out} is not writable: {exc.strerror or exc}"
    return None


def _refuse(problem: str) -> int:
    print(f"error: {problem}", file=sys.stderr)
    return 2


def _command() -> str:
    return "ems " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "ems"


def _simulate(args: argparse.Namespace) -> int:
    from simulations.report import STRATEGY_LABELS, write_outputs
    from simulations.runner import run

    scenario = _load(args)
    if (warning := scenario.site.solar_noon_warning()) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    problem = out_problem(args.out, args.force, STUDY_FILES)
    if problem is not None:
        return _refuse(problem)
    strategies = None
    if args.strategies:
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        unknown = [s for s in strategies if s not in ALL_STRATEGIES]
        if unknown:
            print(f"error: unknown strategies {', '.join(unknown)}; choose from {', '.join(ALL_STRATEGIES)}",
                  file=sys.stderr)
            return 2
    result = run(scenario, strategies=strategies, progress=not args.no_progress)
    paths = write_outputs(result, args.out, _command(), csv=args.csv)
    summary = result.summary()
    cur = result.currency
    print(f"{scenario.name}: {summary['period']['days']:.0f} days, tariff {summary['tariff']}")
    if summary["period"]["warning"]:
        print(f"warning: {summary['period']['warning']}", file=sys.stderr)
    for warning in summary["data_warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    _say_filled(summary["data_filled"])
    life = summary["assumptions"]["lifetime_years"]
    print(f"{'strategy':31s} {'bill/yr':>16s} {'saving/yr':>16s} {'payback PV+bat':>15s} {'payback battery':>16s}")
    for name, s in summary["strategies"].items():
        e = result.economics.get(name)
        saving = f"{e['savings_vs_no_system']:16,.0f}" if e else f"{'':16s}"
        pb = _yr(e["finance"]["system"] if e else None, life)
        pbb = _yr(e["finance"].get("battery") if e else None, life)
        print(f"{STRATEGY_LABELS.get(name, name):31s} {s['annual_bill']:16,.0f} {saving} {pb:>15s} {pbb:>16s}")
    print(f"({cur} per year; simple paybacks in years, > {life} = not within the {life}-year study life, "
          f"— = does not apply)")
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def _ratio_years(value: float | None) -> str:
    """Investment ÷ yearly saving for the console [yr]: "—" where there is none (no saving)."""
    return "—" if value is None or value != value else f"{value:.1f}"


def _yr(fin: dict | None, life: int) -> str:
    """A simple payback for the console [yr]: "> life" when it is not reached within the study life, "—" where
    nothing was invested (no battery; the reasons are in summary.json and the report)."""
    if fin is None:
        return "—"
    if fin["simple_payback_years"] is not None:
        return f"{fin['simple_payback_years']:.1f}"
    from simulations.economics import not_paid_back  # here: `ems --help` stays free of numpy and pandas

    return f"> {life}" if not_paid_back(fin, "payback_note") else "—"


def _say_filled(filled: dict[str, dict[str, float]]) -> None:
    """The gaps of measured data a study filled (``SeriesData.filled``), on stderr; nothing when none were."""
    if filled:
        from simulations.report import filled_text

        print(f"note: {filled_text(filled).removeprefix('; ')} (data.csv.fill_gaps_hours)", file=sys.stderr)


def _sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from simulations.sweep import failed_cells, parse_range, period_warning, sweep, write_sweep

    scenario = _load(args)
    axes = {}
    for option, text in (("--pv", args.pv), ("--battery", args.battery)):
        try:
            axes[option] = parse_range(text)
        except ValueError as exc:
            print(f"error: {option}: {exc}", file=sys.stderr)
            return 2
    pv, battery = axes["--pv"], axes["--battery"]
    problem = out_problem(args.out, args.force, SWEEP_FILES)
    if problem is not None:
        return _refuse(problem)
    from simulations.runner import load_data

    measured = load_data(scenario) if scenario.data.csv is not None else None
    data_warnings = measured.warnings if measured is not None else []
    _say_filled(measured.filled if measured is not None else {})
    bar = tqdm(total=len(pv) * len(battery), unit="cell", desc=f"sweep {scenario.name}")
    table = sweep(scenario, pv, battery, args.strategy, workers=args.workers, dask_address=args.dask,
                  progress=lambda done, total: bar.update(1))
    bar.close()
    from optimizer.tariff import load_tariff

    currency = load_tariff(scenario.tariff.ref(), scenario.base_dir).currency
    paths = write_sweep(table, args.out, scenario, _command(), currency, data_warnings)
    for warning in [period_warning(table), *data_warnings]:
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    for key, path in paths.items():
        print(f"{key}: {path}")
    failures = failed_cells(table)
    for row in failures.itertuples():
        print(f"error: cell PV {row.pv_kwp:g} kWp, battery {row.battery_kwh:g} kWh failed: {row.failed}",
              file=sys.stderr)
    if len(failures):
        print(f"error: {len(failures)} of {len(table)} cells failed (marked in sweep.csv and sweep.html); the others "
              "are written", file=sys.stderr)
        return 1
    return 0


def _park(args: argparse.Namespace) -> int:
    from optimizer.tariff import load_tariff
    from simulations.park import (
        TOTAL,
        load_park,
        payback_text,
        run_park,
        run_shared_battery,
        site_data_warnings,
        write_park,
    )
    from simulations.report import BOUNDS

    park, scenarios = load_park(args.park)
    currencies = {load_tariff(s.tariff.ref(), s.base_dir).currency for s in scenarios}
    if len(currencies) != 1:
        return _refuse(f"{args.park}: the sites' tariffs use several currencies ({', '.join(sorted(currencies))}); "
                       "a park total needs one")
    problem = out_problem(args.out, args.force, PARK_FILES)
    if problem is not None:
        return _refuse(problem)
    data_warnings = site_data_warnings(park, scenarios)
    table = run_park(park, scenarios, workers=args.workers, dask_address=args.dask,
                     progress=lambda done, total: print(f"site {done}/{total} done", file=sys.stderr))
    shared = None
    if park.shared_battery is not None:
        print("shared park battery: running the park behind one connection", file=sys.stderr)
        shared = run_shared_battery(park, scenarios, table, dask_address=args.dask)
    paths = write_park(table, args.out, park, _command(), currencies.pop(), shared, data_warnings)
    for site, warnings in data_warnings.items():
        for warning in warnings:
            print(f"warning: site {site}: {warning}", file=sys.stderr)
    total = table[table["site"] == TOTAL].iloc[0]
    bound = f" (an upper bound: battery dispatch by {park.strategy})" if park.strategy in BOUNDS else ""
    print(f"{park.name}: {len(park.sites)} sites, investment {total['capex']:,.0f}, saving "
          f"{total['savings_vs_no_system']:,.0f}/yr{bound}, investment ÷ saving "
          f"{_ratio_years(total['investment_over_saving_years'])} yr, payback (cash flow) "
          f"{payback_text(total['simple_payback_years'], total['capex'] > 0, ' yr')}, "
          f"CO2 avoided {total['co2_avoided_t']:,.1f} t/yr (JCM-style {total['co2_jcm_t']:,.1f} t/yr)")
    if shared is not None:
        change = shared["change"]
        print(f"shared battery {shared['capacity_kwh']:,.0f} kWh / {shared['power_kw']:,.0f} kW instead of the "
              "sites' own: "
              f"bill {change['annual_bill']:+,.0f}/yr, battery investment {change['battery_capex']:+,.0f}, "
              f"CO2 avoided {change['co2_avoided_t']:+,.1f} t/yr")
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0
