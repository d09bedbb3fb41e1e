"""What the MPC's gap to perfect foresight under a demand charge is made of: the study's MPC with one part of what it
plans on replaced by the actual future (docs/performance.md, "What the two-part gap is made of").

Under the two-part pilot the MPC's month peaks, not its energy, make its gap to perfect foresight, and a month's
peak is set by the level the plan defends: the month's peak target (the hardest recent days,
:class:`optimizer.peak_target.PeakTarget`) and the recharge floor (the level the battery's energy now can hold on
the stress net load until the next cheap recharge, :func:`optimizer.service.recharge_floor_kw`). This measures how
much better those two levels could be at best, each year's MPC value as a share of perfect foresight's (counted
as the study counts it, :func:`simulations.runner.battery_savings`), for

- ``shipped``: the study's MPC as it is;
- ``oracle_floor``: the recharge floor on the *actual* net load of the rest of the day instead of the forecasts'
  stress net load (the lowest level the energy now could really hold until the next cheap recharge);
- ``oracle_month_target``: the month's peak target the highest level the battery could have held on any of the
  month's own days (:func:`optimizer.peak_target.day_holdable_kw` on the actual net load of each local day);
- ``oracle_both``: both;
- ``oracle_both_ceiling``: both, and the dispatcher's grid ceiling at that planned level (the plan's own higher
  peak, made on the forecasts, is not followed);
- ``true_load`` / ``true_pv``: one forecast replaced by the actual load / PV, the net-load risk the hedges are sized
  from (:meth:`simulations.strategies.Mpc.peak_risk`) then made of the other forecaster's errors only;
- ``best_load``: the load forecast the synthetic generator's own author would make: the same year without its load
  noise (``data.synthetic.load.noise_pct`` 0 on the same seed: the same calendar, Saturday afternoons and
  unannounced shutdowns, known in advance) times the last measured noise carried forward at the noise's own
  autocorrelation (:data:`simulations.synthetic.LOAD_NOISE_AR_PER_HOUR`), and the load's part of the risk the
  noise's own 90th percentile at that lead — the most any load forecaster could know of this year;
- ``perfect_forecasts``: the same MPC fed the actual PV and load as its forecasts (``mpc_perfect``).

Everything else (the LP on the forecasts, the demand reserve, the stress path, the dispatcher) is the shipped one.
The oracles are diagnostics, not policies: no site knows the rest of its day. One worker process per year, two at
a time; ~15 min for four years on two cores.

Run:  .venv/bin/python benchmarks/bench_two_part_oracles.py [--scenario nam-cau-kien-hard-two-part]
          [--seeds 7 11 23 42] [--days N]
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_seeds import P90_Z, pooled_shares, seeded_scenario, two_part_parser, two_part_years  # noqa: E402

from optimizer.costs import Schedule  # noqa: E402
from optimizer.peak_target import PeakTarget, day_holdable_kw  # noqa: E402
from optimizer.planner import PlanInputs  # noqa: E402
from optimizer.service import SiteState, TariffSteps, peak_risk_quantiles  # noqa: E402
from optimizer.site import BatterySpec  # noqa: E402
from optimizer.timegrid import TimeGrid  # noqa: E402
from simulations.runner import battery_savings, evaluate, load_data, make_strategy, run, simulate  # noqa: E402
from simulations.scenario import Scenario  # noqa: E402
from simulations.strategies import Inputs, Mpc, StepContext  # noqa: E402
from simulations.synthetic import LOAD_NOISE_AR_PER_HOUR  # noqa: E402

LEVEL_ORACLES = ("oracle_floor", "oracle_month_target", "oracle_both", "oracle_both_ceiling")
FORECAST_ORACLES = ("true_load", "true_pv", "best_load")
ORACLES = (*LEVEL_ORACLES, *FORECAST_ORACLES)
VARIANTS = ("shipped", *ORACLES, "perfect_forecasts")


class BestLoad:
    """The best load forecast of a synthetic year (``best_load`` in the module docstring).

    Parameters
    ----------
    quiet_kw : numpy.ndarray
        The year's load without its noise, per step of the MPC's inputs. [kW]
    actual_kw : numpy.ndarray
        The actual load, per the same steps. [kW]
    noise_sd : float
        The noise's standard deviation as a share of the load (``noise_pct`` / 100). [-]
    step_h : float
        The steps' length. [h]
    """

    def __init__(self, quiet_kw: np.ndarray, actual_kw: np.ndarray, noise_sd: float, step_h: float):
        self.quiet_kw, self.actual_kw, self.noise_sd = quiet_kw, actual_kw, noise_sd
        self.phi = LOAD_NOISE_AR_PER_HOUR ** step_h  # the noise's autocorrelation one step apart

    @classmethod
    def of(cls, scenario: Scenario, data: Inputs) -> BestLoad:
        """For a scenario on a synthetic year: its noise-free year on the same seed, padded with the actual load
        over the look-ahead steps beyond the year."""
        synthetic = scenario.data.synthetic
        if synthetic is None:
            raise ValueError("best_load needs a synthetic year")
        dump = scenario.model_dump()
        dump["data"]["synthetic"]["load"]["noise_pct"] = 0.0
        quiet_scenario = Scenario.model_validate(dump)
        quiet_scenario._base_dir = scenario.base_dir
        quiet = load_data(quiet_scenario).load_kw
        quiet = np.concatenate([quiet, data.load_kw[len(quiet):]])[:len(data.load_kw)]
        return cls(quiet, data.load_kw, synthetic.load.noise_pct / 100.0, float(data.duration_h[0]))

    def forecast(self, t: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The forecast of steps ``t`` … ``t + steps − 1`` made at the start of step ``t`` (the load measured up to
        step ``t − 1``), and the noise's 90th percentile above it per step. [kW]"""
        lead = np.arange(1, steps + 1)
        quiet = self.quiet_kw[t:t + steps]
        noise_now = self.actual_kw[t - 1] / self.quiet_kw[t - 1] - 1.0 if t > 0 and self.quiet_kw[t - 1] > 0 else 0.0
        carried = self.phi ** lead
        forecast = quiet * (1.0 + noise_now * carried)
        return forecast, P90_Z * self.noise_sd * quiet * np.sqrt(1.0 - carried ** 2)


class MonthOracleTarget(PeakTarget):
    """The month's peak target known in advance: the highest :func:`day_holdable_kw` over the local days of the
    plan's local month, on the period's net load (load − PV) [kW]: the actual load, or ``load_kw`` per step of
    ``data`` (e.g. the noise-free year, :class:`BestLoad`'s ``quiet_kw``) [kW]."""

    def __init__(self, battery: BatterySpec, days: int, data: Inputs, timezone: str,
                 load_kw: np.ndarray | None = None):
        super().__init__(battery, days)
        n = data.steps
        local = data.starts[:n].tz_convert(timezone)
        net = (data.load_kw if load_kw is None else load_kw)[:n] - data.pv_kw[:n]
        step_h = float(data.duration_h[0])
        self._timezone = timezone
        self._net_by_day: dict[tuple[int, int], list[np.ndarray]] = {}
        dates = np.asarray(local.normalize().tz_localize(None).asi8)
        for day in np.unique(dates):
            rows = dates == day
            if round(rows.sum() * step_h) == 24:  # whole local days only
                stamp = local[np.argmax(rows)]
                self._net_by_day.setdefault((stamp.year, stamp.month), []).append(net[rows])
        self._by_month: dict[tuple[int, int, float], float] = {}

    def __call__(self, pv, load, start_ns: int, step_h: float, window_h: float) -> float:
        local = pd.Timestamp(start_ns, tz="UTC").tz_convert(self._timezone)
        key = (local.year, local.month, window_h)
        if key not in self._by_month:
            days = self._net_by_day.get(key[:2], [])
            self._by_month[key] = max((day_holdable_kw(net, step_h, window_h, self.energy_kwh, self.power_kw)
                                       for net in days), default=0.0)
        return self._by_month[key]


class OracleMpc(Mpc):
    """The study's MPC with the recharge floor, the month's peak target and/or the grid ceiling's planned level
    taken from the actual future (module docstring)."""

    oracle_floor: bool
    ceiling_at_level: bool
    forecast_oracle: str | None
    best_load: BestLoad | None
    _builtin: tuple[np.ndarray, np.ndarray]  # the last built-in PV and load forecasts [kW]
    _best_load_risk: np.ndarray  # with best_load: the noise's P90 above the last load forecast [kW]

    @classmethod
    def of(cls, mpc: Mpc, variant: str, timezone: str, best_load: BestLoad | None = None) -> OracleMpc:
        """``mpc`` (the study's MPC, as :func:`simulations.runner.make_strategy` makes it) with the parts of
        ``variant`` taken from the actual future (``best_load`` for the variant of that name)."""
        out = cls.__new__(cls)
        out.__dict__.update(mpc.__dict__)
        out.name = variant
        out.oracle_floor = variant in ("oracle_floor", "oracle_both", "oracle_both_ceiling")
        out.ceiling_at_level = variant == "oracle_both_ceiling"
        out.forecast_oracle = variant if variant in FORECAST_ORACLES else None
        out.best_load = best_load
        if variant == "best_load" and best_load is None:
            raise ValueError("best_load needs its BestLoad")
        if variant in ("oracle_month_target", "oracle_both", "oracle_both_ceiling"):
            out.peak_target = MonthOracleTarget(mpc.battery, mpc.settings.demand_target_days, mpc.data, timezone)
        return out

    def forecasts(self, t: int, grid: TimeGrid, ctx: StepContext, demand: bool) -> tuple[np.ndarray, np.ndarray]:
        pv, load = super().forecasts(t, grid, ctx, demand)
        self._builtin = (pv, load)
        h = len(grid)
        if self.forecast_oracle == "true_load":
            return pv, self.data.load_kw[t:t + h]
        if self.forecast_oracle == "true_pv":
            return self.data.pv_kw[t:t + h], load
        if self.forecast_oracle == "best_load":
            assert self.best_load is not None
            load, self._best_load_risk = self.best_load.forecast(t, h)
        return pv, load

    def peak_risk(self, t: int, grid: TimeGrid, ctx: StepContext, pv: np.ndarray, load: np.ndarray) -> np.ndarray:
        if self.forecast_oracle is None:
            return super().peak_risk(t, grid, ctx, pv, load)
        pv_builtin, load_builtin = self._builtin  # the errors are the built-in forecasters', about their forecasts
        pv_p10, load_p90 = peak_risk_quantiles(self.pv_forecaster, self.load_forecaster, grid,
                                               *self._history_views(t, ctx))
        pv_part = np.maximum(pv_builtin - pv_p10, 0.0)
        if self.forecast_oracle == "true_load":
            return pv_part
        load_part = np.maximum(load_p90 - load_builtin, 0.0)
        if self.forecast_oracle == "true_pv":
            return load_part
        return np.hypot(self._best_load_risk, pv_part)

    def recharge_floor(self, t: int, grid: TimeGrid, tariff: TariffSteps, pv: np.ndarray, load: np.ndarray,
                       risk: np.ndarray | None, state: SiteState) -> float:
        if not self.oracle_floor:
            return super().recharge_floor(t, grid, tariff, pv, load, risk, state)
        h = len(grid)
        return super().recharge_floor(t, grid, tariff, self.data.pv_kw[t:t + h], self.data.load_kw[t:t + h], None,
                                      state)

    def planned_demand(self, schedule: Schedule, inputs: PlanInputs) -> np.ndarray:
        demand = super().planned_demand(schedule, inputs)
        level = float(np.max(inputs.month_peak_kw))
        return np.minimum(demand, level) if self.ceiling_at_level and level > 0 else demand


def seed_shares(name: str, seed: int, days: int | None) -> dict[str, float]:
    """Each variant's battery value as a share of perfect foresight's on one seed's year, and the values. [-]"""
    t0 = time.perf_counter()
    scenario = seeded_scenario(name, seed, {}, days)
    result = run(scenario, strategies=["mpc", "mpc_perfect", "perfect_foresight"])
    best_load = BestLoad.of(scenario, result.inputs)
    for variant in ORACLES:
        strategy = OracleMpc.of(make_strategy("mpc", scenario, result.inputs, result.tariff), variant,
                                scenario.site.timezone, best_load)
        result.results[variant] = simulate(strategy, scenario, result.inputs, result.tariff, battery=True)
    result.economics = evaluate(result)
    value = battery_savings(result)
    value["shipped"], value["perfect_forecasts"] = value.pop("mpc"), value.pop("mpc_perfect")
    pf = value.pop("perfect_foresight")
    out: dict[str, float] = {"seed": seed, "value_pf": pf, "wall_s": time.perf_counter() - t0}
    for variant in VARIANTS:
        out[f"value_{variant}"] = value[variant]
        out[variant] = value[variant] / pf if pf else float("nan")
    return out


def main() -> int:
    args = two_part_parser(__doc__.split("\n")[0]).parse_args()
    command, years = two_part_years("bench_two_part_oracles", args, seed_shares)
    pooled = pooled_shares(years, VARIANTS)
    print(json.dumps({"command": command, "scenario": args.scenario, "pooled": pooled, "years": years}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
