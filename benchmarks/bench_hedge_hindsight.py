"""The recharge floor's multiple chosen month by month in hindsight, under the two-part pilot (docs/performance.md,
"The recharge floor's multiple chosen in hindsight").

The MPC's main hedge under a demand charge is the recharge floor (docs/planner.md "Demand charge", item 7): the
level the battery's energy now could hold on ``load − PV + κ × risk`` until the next cheap recharge. One fixed
multiple κ serves every day; the best fixed one differs between years and between months, so a policy that sized
its hedge from the state (the month, the weather, how the month has gone) could do better than any fixed κ. This
bounds every such policy that picks κ per billing month: it runs the study's MPC for each multiple of a menu on
the same synthetic year, takes each month's battery value (the PV-only bill less the strategy's bill, VAT
included), picks each month's best multiple *in hindsight* and runs that schedule of multiples as one MPC year
(:class:`ScheduledFloorMpc`), so the figure is exact rather than a sum of months run from different starting
states. No site knows which multiple a month will need; the figure is a bound, not a policy.

Run:  .venv/bin/python benchmarks/bench_hedge_hindsight.py [--seeds 7 11 23 42] [--multiples 0 0.25 0.5 0.75 1]
          [--scenario nam-cau-kien-hard-two-part] [--days N]            # ~15 min for four seeds on two cores

Shares are of the perfect-foresight battery value as the study counts it (:func:`simulations.runner.battery_savings`),
pooled over the years (Σ MPC value / Σ perfect-foresight value). Two worker processes, one year each. The last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_seeds import pooled_shares, scenario_or_exit, seeded_scenario, two_part_parser  # noqa: E402

from optimizer.service import SiteState, TariffSteps, recharge_floor_kw  # noqa: E402
from optimizer.site import PlannerSettings  # noqa: E402
from optimizer.timegrid import TimeGrid  # noqa: E402
from simulations.runner import RunResult, battery_savings, evaluate, make_strategy, run, simulate  # noqa: E402
from simulations.strategies import Mpc  # noqa: E402

DEFAULT_MULTIPLES = (0.0, 0.25, 0.5, 0.75, 1.0)


class ScheduledFloorMpc(Mpc):
    """The study's MPC whose recharge floor uses, at each re-plan, the multiple κ of the billing month the re-plan
    starts in (``multiples[month index of the run]``), everything else as shipped."""

    multiples: tuple[float, ...]
    _settings_by_multiple: dict[float, PlannerSettings]

    @classmethod
    def of(cls, mpc: Mpc, multiples: Sequence[float], name: str) -> ScheduledFloorMpc:
        """``mpc`` (as :func:`simulations.runner.make_strategy` makes it) with one floor multiple per billing month
        of the run (the run's first month first)."""
        out = cls.__new__(cls)
        out.__dict__.update(mpc.__dict__)
        out.name = name
        out.multiples = tuple(float(k) for k in multiples)
        out._settings_by_multiple = {k: mpc.settings.model_copy(update={"demand_floor_stress_level": k})
                                     for k in set(out.multiples)}
        return out

    def recharge_floor(self, t: int, grid: TimeGrid, tariff: TariffSteps, pv: np.ndarray, load: np.ndarray,
                       risk: np.ndarray | None, state: SiteState) -> float:
        month = int(self.data.month[t]) - int(self.data.month[0])
        multiple = self.multiples[min(month, len(self.multiples) - 1)]
        return recharge_floor_kw(self.peak_target, self._settings_by_multiple[multiple], grid, tariff, pv, load,
                                 risk, state)


def month_values(result: RunResult, name: str) -> list[float]:
    """Strategy ``name``'s battery value per billing month of ``result``: the PV-only month bill less its own, VAT
    included (the study's counted bills differ only by the VAT treatment; the SOC at the end is not credited).
    [currency]"""
    reference = result.results["pv_only"].bill.months
    own = result.results[name].bill.months
    return [a.total - b.total for a, b in zip(reference, own, strict=True)]


def hindsight_schedule(values: dict[float, Sequence[float]]) -> list[float]:
    """Each month's best multiple in hindsight: for month m, the multiple whose ``values[κ][m]`` is highest (the
    smallest such multiple on a tie). [-]"""
    multiples = sorted(values)
    months = len(values[multiples[0]])
    return [max(multiples, key=lambda k: (values[k][m], -k)) for m in range(months)]


def variant_name(multiple: float) -> str:
    """The result's name for the MPC at one fixed floor multiple."""
    return f"floor_{multiple:g}"


def seed_shares(name: str, seed: int, multiples: Sequence[float], days: int | None) -> dict[str, object]:
    """One seed's year: each fixed multiple's share, the month-by-month hindsight schedule and its share run
    exactly, and the values. [-]"""
    t0 = time.perf_counter()
    scenario = seeded_scenario(name, seed, {}, days)
    result = run(scenario, strategies=["pv_only", "perfect_foresight"])
    by_month: dict[float, list[float]] = {}
    for multiple in multiples:
        variant = variant_name(multiple)
        mpc = ScheduledFloorMpc.of(make_strategy("mpc", scenario, result.inputs, result.tariff),
                                   [multiple], variant)
        result.results[variant] = simulate(mpc, scenario, result.inputs, result.tariff, battery=True)
        by_month[multiple] = month_values(result, variant)
    schedule = hindsight_schedule(by_month)
    mpc = ScheduledFloorMpc.of(make_strategy("mpc", scenario, result.inputs, result.tariff), schedule, "hindsight")
    result.results["hindsight"] = simulate(mpc, scenario, result.inputs, result.tariff, battery=True)
    result.economics = evaluate(result)
    value = battery_savings(result)
    pf = value.pop("perfect_foresight")
    out: dict[str, object] = {"seed": seed, "value_pf": pf, "schedule": schedule,
                              "sum_of_best_months": sum(max(v[m] for v in by_month.values())
                                                        for m in range(len(schedule))),
                              "sum_of_pf_months": sum(month_values(result, "perfect_foresight")),
                              "wall_s": time.perf_counter() - t0}
    for variant, v in value.items():
        out[f"value_{variant}"] = v
        out[variant] = v / pf if pf else float("nan")
    return out


def main() -> int:
    parser = two_part_parser(__doc__.split("\n")[0])
    parser.add_argument("--multiples", type=float, nargs="+", default=list(DEFAULT_MULTIPLES),
                        help="the menu of recharge-floor multiples (planner.demand_floor_stress_level)")
    args = parser.parse_args()
    multiples = sorted(set(args.multiples))
    command = " ".join(["python benchmarks/bench_hedge_hindsight.py", "--scenario", args.scenario, "--seeds",
                        *map(str, args.seeds), "--multiples", *(f"{k:g}" for k in multiples)]
                       + ([f"--days {args.days}"] if args.days else []))
    print(f"reproduce: {command}", flush=True)
    scenario_or_exit("bench_hedge_hindsight", args.scenario, args.seeds[0], {}, args.days)
    with ProcessPoolExecutor(max_workers=2) as pool:
        years = list(pool.map(seed_shares, [args.scenario] * len(args.seeds), args.seeds,
                              [multiples] * len(args.seeds), [args.days] * len(args.seeds)))
    for year in years:
        print(f"seed {year['seed']}: hindsight schedule {' '.join(f'{k:g}' for k in year['schedule'])} "
              f"({year['wall_s']:.0f} s)", flush=True)
    variants = [variant_name(k) for k in multiples] + ["hindsight"]
    pooled = pooled_shares(years, variants)
    months_estimate = (sum(y["sum_of_best_months"] for y in years) / sum(y["sum_of_pf_months"] for y in years))
    print(f"{'best months summed':22s} pooled {months_estimate:.4f}  (month bills incl. VAT, no SOC credit)")
    print(json.dumps({"command": command, "scenario": args.scenario, "multiples": multiples, "pooled": pooled,
                      "pooled_sum_of_best_months": months_estimate, "years": years}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
