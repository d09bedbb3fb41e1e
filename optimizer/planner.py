"""The planner: PlanInputs in, an optimal Plan out, re-solved fast every interval.

The LP is written once in Pyomo (:mod:`optimizer.lp_model`) and turned, once per horizon shape,
into an affine standard form: fixed matrix, costs and bounds affine in the parameter vector. A
re-plan evaluates the new cost/bound vectors with numpy, hands only the changed entries to one
persistent ``highspy.Highs`` and re-runs it from the previous basis (docs/planner.md).

The LP is never infeasible (soft constraints with penalised slack, reported in the Plan). A solver
failure raises :class:`SolverFailed`, a time-out :class:`SolverTimeout`; callers fall back to a
policy (:mod:`optimizer.policies`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highspy
import numpy as np

from optimizer import coarse_horizon, costs
from optimizer.costs import Schedule
from optimizer.lp_model import (
    INF,
    POWER_PARAMS,
    SCALAR_PARAMS,
    STEP_PARAMS,
    TEMPLATE_STEPS,
    AffineLP,
    build_model,
    extract_affine_lp,
    make_highs_lp,
    tiled_affine_lp,
)
from optimizer.plan import Plan, SolverInfo
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import TimeGrid

#: Inputs are rounded to this many decimals before they become bounds (HiGHS warns on tiny bounds). [kW]
ROUND_DECIMALS = 6
#: Charge and discharge both above this in one step count as simultaneous. [kW]
SIMULTANEOUS_TOL = 1e-6
#: Minimum throughput cost, relative to the largest |price| (breaks ties against needless cycling).
MIN_THROUGHPUT_COST = 1e-6
#: Tie-break on throughput, relative to the largest |price|, rising linearly from 0 at the first step to this
#: at the last [currency/kWh per currency/kWh]. Where prices are equal over several steps (a whole peak or
#: off-peak window) many schedules cost the same and the LP would pick any, e.g. 500 kW, idle, 500 kW; the
#: tilt makes it charge and discharge as early as the economics allow, in contiguous blocks, and the choice
#: survives a receding-horizon shift. Under a demand charge the discharge tilt falls instead (discharge as late as
#: the economics allow): energy kept in the battery until it is needed is a reserve the dispatcher can use against
#: a load above the forecast, where energy sold at the start of a peak-price window is gone (docs/planner.md,
#: "Demand charge"). Without a demand charge the charge tilt falls on the dark steps (no PV forecast) at the
#: horizon's cheapest price (charge as late as that window allows: the night's first hours show an unannounced stop
#: before the battery is filled for a day that does not need it; docs/planner.md, "Tie-break"). It is left out of the
#: reported cost, so it can make a plan dearer by
#: at most TIE_BREAK_COST × max |price| per kWh of throughput (1e-4 of the price).
TIE_BREAK_COST = 1e-4


class PlannerError(Exception):
    """The planner could not produce a plan (bad input or solver trouble)."""


class SolverFailed(PlannerError):
    """HiGHS returned an error or a non-optimal status."""


class SolverTimeout(SolverFailed):
    """HiGHS hit the time limit (``PlannerSettings.time_limit_s``)."""


@dataclass
class PlanInputs:
    """Everything that changes between two plans.

    Attributes
    ----------
    grid : TimeGrid
        The steps (UTC starts, durations).
    pv_kw, load_kw : numpy.ndarray
        Available PV and site load per step (≥ 0, finite). [kW]
    import_price, export_price : numpy.ndarray
        Gross import price and export price per step. [currency/kWh]
    soc0_kwh : float
        Measured SOC at the start of the first step (may lie outside the window). [kWh]
    month_peak_kw : float or sequence of float
        Demand already billed in the billing month(s) — the peak already reached, and under a 12-month basis the
        11 months before too: a scalar for the first month in the horizon (later months start at 0), or one value
        per billing month present. [kW]
    demand_charge_per_kw : float
        Demand charge per kW of monthly peak (0 = none). [currency/kW/month]
    peak_billed_months : int
        How many billing months a month's peak is billed in (the tariff's
        :attr:`~optimizer.tariff.DemandCharge.months_billed`): 1 under ``month_max``; 12 under
        ``rolling_12_month_max``, where the running peak carries on across the horizon's billing months and
        ``month_peak_kw`` is the level already billed (the 11 months before included).
    bill_after_horizon : bool
        Charge the billing months after the horizon that a peak planned in it is still billed in
        (``peak_billed_months`` − the horizon's billing months, at its last step): a site that goes on. False for a
        plan whose horizon is the whole bill (a study's perfect-foresight year).
    billing_month : numpy.ndarray of int or None
        Billing month per step as 0, 1, 2… (non-decreasing, starting at 0); None = one month.
    max_charge_kw, max_discharge_kw : float, numpy.ndarray or None
        BMS limits: a scalar applies to the first step (what the BMS allows now), an array per step,
        None = PCS limits only. [kW]
    import_cap_kw, export_cap_kw : float, numpy.ndarray or None
        Overrides of the site's import cap and export cap (scalar or per step). [kW]
    fixed_battery_kw : float or None
        First-step battery power the controller has already committed to (+ discharge). [kW]
    period : sequence of str or None
        Tariff period name per step (for the TOU policy and for display).
    demand_window_h : float
        The demand measure's averaging window (the tariff's ``window_minutes`` / 60); 0 = per-step import. [h]
    demand_window : numpy.ndarray of int or None
        Demand window per step as non-decreasing integers (a new value where a window starts, aligned to local
        time as the tariff bills); None = every step its own window.
    window_import_kwh : float
        Import already measured in the window the first step belongs to, before the first step. [kWh]
    peak_risk_kw : numpy.ndarray or None
        Under a demand charge: per step, how far above the forecast the net load (load − PV) may come (an upper
        forecast-error quantile); the plan keeps battery power and energy to absorb it, or counts it into the
        month's peak (docs/planner.md, "Demand charge"). None = 0. [kW]
    """

    grid: TimeGrid
    pv_kw: np.ndarray
    load_kw: np.ndarray
    import_price: np.ndarray
    export_price: np.ndarray
    soc0_kwh: float
    month_peak_kw: float | Sequence[float] = 0.0
    demand_charge_per_kw: float = 0.0
    peak_billed_months: int = 1
    bill_after_horizon: bool = True
    billing_month: np.ndarray | None = None
    max_charge_kw: float | np.ndarray | None = None
    max_discharge_kw: float | np.ndarray | None = None
    import_cap_kw: float | np.ndarray | None = None
    export_cap_kw: float | np.ndarray | None = None
    fixed_battery_kw: float | None = None
    period: Sequence[str] | None = None
    demand_window_h: float = 0.0
    demand_window: np.ndarray | None = None
    window_import_kwh: float = 0.0
    peak_risk_kw: np.ndarray | None = None

    def __post_init__(self) -> None:
        # checked on every re-plan (35,040 times a simulated year): the passing path is a few whole-array reductions
        n = len(self.grid)
        series = []
        for name in _SERIES:
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.shape != (n,):
                raise ValueError(f"PlanInputs.{name} has shape {arr.shape}, the grid has {n} steps")
            series.append(arr)
        self.pv_kw, self.load_kw, self.import_price, self.export_price = series
        if not math.isfinite(sum(float(arr.sum()) for arr in series)):  # NaN/inf propagate; an overflow only
            for name, arr in zip(_SERIES, series, strict=True):      # sends a valid input down this search
                bad = np.flatnonzero(~np.isfinite(arr))
                if len(bad):
                    raise ValueError(f"PlanInputs.{name} has missing (NaN) or infinite values at steps "
                                     f"{bad[:10].tolist()}")
        for name, arr in (("pv_kw", self.pv_kw), ("load_kw", self.load_kw)):
            if n and arr.min() < 0:
                raise ValueError(f"PlanInputs.{name} must not be negative")
        if self.soc0_kwh is None or not math.isfinite(self.soc0_kwh):
            raise ValueError("PlanInputs.soc0_kwh is missing: the planner needs a measured SOC")
        if self.demand_charge_per_kw < 0:
            raise ValueError("PlanInputs.demand_charge_per_kw must not be negative")
        if self.peak_billed_months < 1:
            raise ValueError("PlanInputs.peak_billed_months must be at least 1")
        if self.billing_month is not None:
            bm = np.asarray(self.billing_month)
            step = np.diff(bm)
            if bm.shape != (n,) or bm[0] != 0 or (len(step) and (step.min() < 0 or step.max() > 1)):
                raise ValueError("PlanInputs.billing_month must be 0, 0, …, 1, 1, … (one per step, steps of 1)")
            self.billing_month = bm.astype(int)
        for name in ("max_charge_kw", "max_discharge_kw", "import_cap_kw", "export_cap_kw"):
            value = getattr(self, name)
            if value is not None and (value < 0 if isinstance(value, float | int)
                                      else (np.asarray(value, dtype=float) < 0).any()):
                raise ValueError(f"PlanInputs.{name} must not be negative")
        if self.period is not None and len(self.period) != n:
            raise ValueError(f"PlanInputs.period has {len(self.period)} names for {n} steps")
        if self.demand_window is not None:
            win = np.asarray(self.demand_window)
            if win.shape != (n,) or (n > 1 and np.diff(win).min() < 0):
                raise ValueError("PlanInputs.demand_window must be one non-decreasing integer per step")
        if self.demand_window_h < 0 or self.window_import_kwh < 0:
            raise ValueError("PlanInputs.demand_window_h and window_import_kwh must not be negative")
        if self.peak_risk_kw is not None:
            risk = np.asarray(self.peak_risk_kw, dtype=float)
            if risk.shape != (n,) or not np.isfinite(risk).all() or (n and risk.min() < 0):
                raise ValueError(f"PlanInputs.peak_risk_kw must be {n} finite values ≥ 0")
            self.peak_risk_kw = risk


#: The per-step input series of PlanInputs, checked for shape and finiteness.
_SERIES = ("pv_kw", "load_kw", "import_price", "export_price")


def lp_parameters(inputs: PlanInputs, battery: BatterySpec, grid: GridSpec,
                  settings: PlannerSettings, demand: bool = True) -> dict[str, np.ndarray | float]:
    """Values of the LP's mutable Params for ``inputs``, by name (as in :mod:`optimizer.lp_model`).

    ``demand=False``: for an LP built without the demand-charge variables, where ``peak_floor``,
    ``peak_cost`` and ``peak_reset`` appear nowhere; they are left at 0.
    """
    n = len(inputs.grid)
    p = parameter_values(inputs, battery, grid, settings, demand)
    values: dict[str, np.ndarray | float] = {name: p[i * n:(i + 1) * n] for i, name in enumerate(STEP_PARAMS)}
    values.update({name: float(p[len(STEP_PARAMS) * n + i]) for i, name in enumerate(SCALAR_PARAMS)})
    return values


#: Row of each per-step Param in the parameter vector viewed as a (len(STEP_PARAMS), steps) block.
_ROW = {name: i for i, name in enumerate(STEP_PARAMS)}


def parameter_values(inputs: PlanInputs, battery: BatterySpec, grid: GridSpec, settings: PlannerSettings,
                     demand: bool = True) -> np.ndarray:
    """The LP's parameter vector for ``inputs``: each of ``STEP_PARAMS`` for every step, then ``SCALAR_PARAMS``
    (the layout of :func:`~optimizer.lp_model.extract_affine_lp`; :func:`lp_parameters` names the parts).

    Written straight into one array, because it is made on every re-plan (35,040 times a simulated year).
    """
    n = len(inputs.grid)
    imp, exp = inputs.import_price, inputs.export_price
    price = max(float(np.abs(imp).max()), float(np.abs(exp).max())) if n else 0.0
    max_price = max(1.0, price)
    pen = costs.slack_penalty_per_kwh(inputs, settings, max_abs_price=price)
    p = np.zeros(len(STEP_PARAMS) * n + len(SCALAR_PARAMS))
    rows = p[:len(STEP_PARAMS) * n].reshape(len(STEP_PARAMS), n)
    if demand:
        months = inputs.billing_month if inputs.billing_month is not None else np.zeros(n, dtype=int)
        rows[_ROW["peak_floor"]] = np.round(costs.month_floors_kw(inputs)[months], ROUND_DECIMALS)
        month_start = months[1:] != months[:-1]  # a billing month starts at step t + 1
        if inputs.peak_billed_months == 1:
            rows[_ROW["peak_reset"], 1:] = month_start
        rows[_ROW["peak_cost"]] = costs.peak_charge_per_kw(inputs, months)
        win_reset = rows[_ROW["win_reset"]]
        if inputs.demand_window is None or inputs.demand_window_h <= 0:
            win_reset[:] = 1.0
        else:
            win_reset[1:] = np.diff(inputs.demand_window) != 0
            rows[_ROW["win_prior"], 0] = inputs.window_import_kwh / inputs.demand_window_h
        win_reset[1:] = np.maximum(win_reset[1:], month_start)  # a billing month starts a window
        if inputs.peak_risk_kw is not None:
            rows[_ROW["risk"]] = np.round(inputs.peak_risk_kw, ROUND_DECIMALS)
    rows[_ROW["pv"]], rows[_ROW["load_kw"]] = inputs.pv_kw, inputs.load_kw
    rows[_ROW["c_imp"]], rows[_ROW["c_exp"]] = imp, exp
    costs.charge_limit_kw(inputs, battery, out=rows[_ROW["ch_max"]])
    costs.discharge_limit_kw(inputs, battery, out=rows[_ROW["dis_max"]])
    costs.import_cap_kw(inputs, grid, out=rows[_ROW["imp_cap"]])
    costs.export_cap_kw(inputs, grid, out=rows[_ROW["exp_cap"]])
    tie = rows[_ROW["c_tie"]]
    np.multiply(TIE_BREAK_COST * max_price, _step_numbers(n), out=tie)
    tie /= max(n - 1, 1)
    # under a demand charge a kWh kept is a reserve against a load above the forecast: discharge as late as the
    # economics allow (the discharge tilt falls with time), charge as early
    if demand and inputs.demand_charge_per_kw > 0:
        rows[_ROW["c_tie_dis"]] = tie[::-1]
    else:
        # without one, a charge at the horizon's cheapest price in the dark waits for the end of that window: the
        # night's first hours show whether the day needs it (an unannounced stop), and the battery sits full for
        # less time (in daylight a late charge could not make up a PV shortfall the forecast did not see)
        rows[_ROW["c_tie_dis"]] = tie
        dark_and_cheapest = (imp <= imp.min() * (1 + 1e-9)) & (inputs.pv_kw <= 0.0)
        tie[dark_and_cheapest] = tie[::-1][dark_and_cheapest]
    powers = rows[:len(POWER_PARAMS)]  # the first rows: rounded and capped at INF in place
    np.round(powers, ROUND_DECIMALS, out=powers)
    np.minimum(powers, INF, out=powers)
    fixed = inputs.fixed_battery_kw
    p[len(STEP_PARAMS) * n:] = (
        float(inputs.soc0_kwh), costs.terminal_value_per_kwh(inputs, battery, settings),
        battery.wear_cost_per_kwh + MIN_THROUGHPUT_COST * max_price, pen,
        0.0 if fixed is None else pen, 0.0 if fixed is None else float(fixed), TIE_BREAK_COST * max_price)
    return p


@functools.cache
def _step_numbers(n: int) -> np.ndarray:
    """0, 1, …, n − 1 (read-only, made once per horizon length)."""
    numbers = np.arange(n)
    numbers.flags.writeable = False
    return numbers


@functools.cache
def _canonical_slices(n: int) -> dict[str, slice]:
    """The parameter layout of an LP of ``n`` steps as :func:`~optimizer.lp_model.extract_affine_lp` writes it."""
    layout = {name: slice(i * n, (i + 1) * n) for i, name in enumerate(STEP_PARAMS)}
    base = len(STEP_PARAMS) * n
    layout.update({name: slice(base + i, base + i + 1) for i, name in enumerate(SCALAR_PARAMS)})
    return layout


#: HiGHS options for hot re-solves (a basis from the previous solve exists), and the defaults restored for cold
#: solves. Cost perturbation makes the dual simplex perturb every cost afresh on each run, which turns the previous
#: optimal basis dual infeasible: a 96-step receding-horizon re-solve needed ~65 iterations with it, ~25 without.
#: Refactorising at each rebuild keeps the factor from accumulating updates across hot runs (~10 % faster each).
HOT_OPTIONS: dict[str, float | bool] = {"dual_simplex_cost_perturbation_multiplier": 0.0,
                                        "no_unnecessary_rebuild_refactor": False}
COLD_OPTIONS: dict[str, float | bool] = {"dual_simplex_cost_perturbation_multiplier": 1.0,
                                         "no_unnecessary_rebuild_refactor": True}


#: Per-step LP variables a schedule is read from, in the row order of ``_Solver.schedule_index``.
SCHEDULE_COLUMNS = ("ch", "dis", "imp", "over", "exp", "dump", "curt", "soc_w", "s_lo", "s_hi")


class _Solver:
    """One affine LP loaded into one persistent ``highspy.Highs``.

    The cost and bound vectors last handed to HiGHS are kept, so that a re-plan hands over only the entries that
    changed. Hot re-solves run without cost perturbation (:data:`HOT_OPTIONS`) and with an iteration limit of
    ``num_col + num_row`` (more than a cold solve needs): a hot re-solve that hits it (a stall without
    perturbation) is repeated from scratch with the default options.
    """

    def __init__(self, lp: AffineLP, params: np.ndarray, time_limit_s: float):
        self.lp = lp
        self.highs = quiet_highs()
        self.time_limit_s = float(time_limit_s)
        # all five affine vectors stacked into one: [cost | col lower | col upper | row lower | row upper]
        nc, nr = lp.num_col, lp.num_row
        parts = (lp.cost, lp.col_lower, lp.col_upper, lp.row_lower, lp.row_upper)
        starts = np.cumsum([0, nc, nc, nc, nr])
        self._base = np.concatenate([v.base for v in parts])
        self._target = np.concatenate([v.target + s for v, s in zip(parts, starts, strict=True)])
        self._param = np.concatenate([v.param for v in parts])
        self._coef = np.concatenate([v.coef for v in parts])
        self._size = len(self._base)
        self._pushed = self.evaluate(params)
        model = make_highs_lp(lp.a_start, lp.a_index, lp.a_value, *self._split(self._pushed),
                              offset=float(lp.offset.evaluate(params)[0]))
        if self.highs.passModel(model) == highspy.HighsStatus.kError:
            raise SolverFailed("HiGHS rejected the model")
        self._hot_iteration_limit = nc + nr
        self._hot = False  # a basis from a previous successful solve exists, HOT_OPTIONS are set
        #: Column numbers of the per-step variables in ``SCHEDULE_COLUMNS``, one row each (read in one gather).
        self.schedule_index = np.stack([lp.col_of[name] for name in SCHEDULE_COLUMNS])

    def evaluate(self, params: np.ndarray) -> np.ndarray:
        """The stacked cost and bound vector at ``params``.

        Bounds at or beyond ±INF are left as they are: HiGHS treats them as infinite (its ``infinite_bound``
        option is INF), which saves mapping them to ±inf on every re-plan.
        """
        return self._base + np.bincount(self._target, weights=self._coef * params[self._param], minlength=self._size)

    def _split(self, v: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cost, column lower, column upper, row lower, row upper parts of a stacked vector (views)."""
        nc, nr = self.lp.num_col, self.lp.num_row
        return v[:nc], v[nc:2 * nc], v[2 * nc:3 * nc], v[3 * nc:3 * nc + nr], v[3 * nc + nr:]

    def update(self, params: np.ndarray) -> None:
        """Hand HiGHS the costs and bounds at ``params`` that differ from those it has (one call per kind)."""
        h, v = self.highs, self.evaluate(params)
        c, cl, cu, rl, ru = self._split(v)
        changed = v != self._pushed
        nc, nr = self.lp.num_col, self.lp.num_row
        idx = np.flatnonzero(changed[:nc]).astype(np.int32)
        if len(idx):
            h.changeColsCost(len(idx), idx, c[idx])
        idx = np.flatnonzero(changed[nc:2 * nc] | changed[2 * nc:3 * nc]).astype(np.int32)
        if len(idx):
            h.changeColsBounds(len(idx), idx, cl[idx], cu[idx])
        idx = np.flatnonzero(changed[3 * nc:3 * nc + nr] | changed[3 * nc + nr:]).astype(np.int32)
        if len(idx):
            h.changeRowsBounds(len(idx), idx, rl[idx], ru[idx])
        self._pushed = v
        if len(self.lp.offset.target):
            h.changeObjectiveOffset(float(self.lp.offset.evaluate(params)[0]))

    def fix_columns(self, cols: np.ndarray, value: float) -> None:
        """Fix ``cols`` at ``value`` (both bounds) until the next :meth:`update` restores them."""
        cols = np.asarray(cols, dtype=np.int32)
        values = np.full(len(cols), float(value))
        self.highs.changeColsBounds(len(cols), cols, values, values)
        _, cl, cu, _, _ = self._split(self._pushed)
        cl[cols] = cu[cols] = value

    def run(self) -> tuple[np.ndarray, float]:
        """Solve; return (column values, objective incl. constant). Raises on any non-optimal outcome."""
        h = self.highs
        if self._hot:
            model_status = self._run_once()
            if model_status == highspy.HighsModelStatus.kIterationLimit:  # stalled: start again, cold
                self._set_cold()
                model_status = self._run_once()
        else:
            model_status = self._run_once()
        if model_status == highspy.HighsModelStatus.kTimeLimit:
            self._set_cold()
            raise SolverTimeout("HiGHS hit the time limit")
        if model_status != highspy.HighsModelStatus.kOptimal:
            self._set_cold()
            raise SolverFailed(f"HiGHS model status {h.modelStatusToString(model_status)}")
        if not self._hot:
            self._set_options(HOT_OPTIONS)
            h.setOptionValue("simplex_iteration_limit", self._hot_iteration_limit)
            self._hot = True
        return np.fromiter(h.getSolution().col_value, np.float64, self.lp.num_col), h.getObjectiveValue()

    def _run_once(self) -> highspy.HighsModelStatus:
        """One ``run()`` within the time limit; its model status (raises ``SolverFailed`` on a HiGHS error)."""
        h = self.highs
        # HiGHS compares time_limit with the run time accumulated over all runs of this instance
        h.setOptionValue("time_limit", h.getRunTime() + self.time_limit_s)
        status = h.run()
        if status == highspy.HighsStatus.kError and h.getOptionValue("threads")[1] != 0:
            # this thread's HiGHS scheduler was started with another size (see HIGHS_THREADS): use its size
            h.setOptionValue("threads", 0)
            status = h.run()
        model_status = h.getModelStatus()
        if status == highspy.HighsStatus.kError:
            self._set_cold()
            raise SolverFailed(f"HiGHS run failed (model status {h.modelStatusToString(model_status)})")
        return model_status

    def _set_cold(self) -> None:
        """Drop the basis and restore the default options: the next run starts from scratch."""
        h = self.highs
        h.clearSolver()
        if self._hot:
            self._set_options(COLD_OPTIONS)
            h.setOptionValue("simplex_iteration_limit", highspy.kHighsIInf)
            self._hot = False

    def _set_options(self, options: dict[str, float | bool]) -> None:
        """Set HiGHS options by name."""
        for name, value in options.items():
            self.highs.setOptionValue(name, value)


#: LPs (with their HiGHS instance and basis) a planner keeps, one per step pattern: a coarse far horizon
#: (:mod:`optimizer.coarse_horizon`) alternates between two patterns as the plan start moves by one step, and a
#: billing month's start inside the horizon adds one for a while.
MAX_SOLVERS = 4


#: HiGHS threads of every planner instance. HiGHS starts one task scheduler per OS thread at its first solve, sized
#: by the first instance that solves there, and counts the machine's cores (reading /sys) twice per ``run()`` when
#: ``threads`` is 0 but once when it is set: ~0.03 ms of a ~0.4 ms hot re-solve. The planner's dual simplex is
#: serial either way. A run that meets a scheduler another library started with a different size returns an error;
#: :class:`_Solver` then falls back to HiGHS's default (0) for that instance.
HIGHS_THREADS = 1


def quiet_highs() -> highspy.Highs:
    """A ``Highs`` with output off and :data:`HIGHS_THREADS` threads, as the planner uses it; the banner the first
    instance prints on C-level stdout is swallowed."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highs = highspy.Highs()
            highs.setOptionValue("output_flag", False)
            highs.setOptionValue("threads", HIGHS_THREADS)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return highs


class Planner:
    """Plans ``steps`` steps for one battery and grid connection; reusable across calls.

    The LP is built on the first call for a given step-duration pattern and demand-charge use
    (uniform steps: the Pyomo model is built for a few steps and tiled, see
    :func:`optimizer.lp_model.tiled_affine_lp`; otherwise built and extracted at full size), then
    kept with its HiGHS instance (up to :data:`MAX_SOLVERS` patterns); later calls only update numbers. With
    ``settings.block_minutes`` the LP plans the far horizon in blocks and the schedule comes back per step of the
    inputs (:mod:`optimizer.coarse_horizon`).
    """

    def __init__(self, battery: BatterySpec, grid: GridSpec, settings: PlannerSettings, steps: int):
        if steps < 1:
            raise ValueError("steps must be at least 1")
        self.battery, self.grid, self.settings, self.steps = battery, grid, settings, steps
        self._solvers: dict[tuple, _Solver] = {}
        #: The LP's own optimal objective at the last :meth:`plan` (includes the minimum throughput
        #: cost, excludes constants such as the month peak already paid). [currency]
        self.last_objective: float | None = None

    def affine_lp(self, duration_h: np.ndarray, demand: bool, window_h: float = 0.0,
                  reserve: bool = False) -> AffineLP:
        """The affine LP for this planner's battery at the given step durations (``window_h``: the demand
        measure's window [h], 0 = per step; ``reserve``: with the demand reserve of
        ``settings.demand_reserve_hours`` and the stress day of ``settings.demand_stress_level``)."""
        reserve_h = self.settings.demand_reserve_hours if demand and reserve else 0.0
        stress = self.settings.demand_stress_level if demand and reserve else 0.0
        weights = {"reserve_weight": self.settings.demand_reserve_weight,
                   "stress_weight": self.settings.demand_stress_weight}
        if len(duration_h) >= TEMPLATE_STEPS and np.all(duration_h == duration_h[0]):
            return tiled_affine_lp(float(duration_h[0]), len(duration_h), self.battery, demand, window_h=window_h,
                                   reserve_h=reserve_h, stress_level=stress, **weights)
        return extract_affine_lp(build_model(duration_h, self.battery, demand, window_h, reserve_h,
                                             stress_level=stress, **weights))

    def parameter_vector(self, lp: AffineLP, inputs: PlanInputs) -> np.ndarray:
        """The flat parameter vector of ``lp`` for ``inputs``."""
        if lp.param_slices != _canonical_slices(len(inputs.grid)):
            raise PlannerError("the LP's parameter layout is not the planner's (STEP_PARAMS, then SCALAR_PARAMS)")
        return parameter_values(inputs, self.battery, self.grid, self.settings, "pk" in lp.col_of)

    def plan(self, inputs: PlanInputs, created_at: datetime | None = None) -> Plan:
        """The optimal plan for ``inputs`` (see module docstring for errors)."""
        schedule, info = self.schedule(inputs)
        return costs.make_plan(schedule, inputs, self.battery, self.grid, self.settings, "optimizer", info,
                               created_at)

    def schedule(self, inputs: PlanInputs) -> tuple[Schedule, SolverInfo]:
        """The optimal schedule for ``inputs`` and how it was solved, without the :class:`Plan` around it.

        The same LP and answer as :meth:`plan`, minus the pricing and assembly of the Plan (about a fifth of a
        96-step re-plan): for callers that re-plan many times and need only the arrays, such as the offline
        simulator. ``costs.make_plan(schedule, inputs, battery, grid, settings, "optimizer", info)`` turns
        the result into the Plan :meth:`plan` returns. Errors as :meth:`plan`.
        """
        if len(inputs.grid) != self.steps:
            raise PlannerError(f"this planner plans {self.steps} steps, the inputs have {len(inputs.grid)}")
        t0 = time.perf_counter()
        demand = inputs.demand_charge_per_kw > 0
        window_h = inputs.demand_window_h if demand and inputs.demand_window is not None else 0.0
        blocks = coarse_horizon.blocks(inputs.grid, self.settings, inputs.billing_month, window_h if demand else None)
        lp_inputs = inputs if blocks is None else coarse_horizon.coarsen(inputs, blocks)
        dur = np.asarray(lp_inputs.grid.duration_h, dtype=float)
        reserve = demand and inputs.peak_risk_kw is not None
        key = (demand, window_h, reserve, dur.tobytes())
        solver = self._solvers.pop(key, None)
        build_ms = 0.0
        if solver is None:
            lp = self.affine_lp(dur, demand, window_h, reserve)
            solver = _Solver(lp, self.parameter_vector(lp, lp_inputs), self.settings.time_limit_s)
            while len(self._solvers) >= MAX_SOLVERS:
                self._solvers.pop(next(iter(self._solvers)))
            build_ms = (time.perf_counter() - t0) * 1e3
        self._solvers[key] = solver  # most recently used last
        t1 = time.perf_counter()
        solver.update(self.parameter_vector(solver.lp, lp_inputs))
        t2 = time.perf_counter()
        x, self.last_objective = solver.run()
        note = None
        v = x[solver.schedule_index]  # rows as SCHEDULE_COLUMNS
        if (np.minimum(v[0], v[1]) > SIMULTANEOUS_TOL).any():
            x, self.last_objective = self._one_direction(solver, x)
            v = x[solver.schedule_index]
            note = "simultaneous charge and discharge removed by fixing the direction of some steps"
        t3 = time.perf_counter()
        info = SolverInfo(status="optimal", build_ms=build_ms, update_ms=(t2 - t1) * 1e3,
                          solve_ms=(t3 - t2) * 1e3, note=note)
        if blocks is None:
            return _schedule(v), info
        return coarse_horizon.expand(_schedule(v), blocks, inputs, costs.export_cap_kw(inputs, self.grid)), info

    def _one_direction(self, solver: _Solver, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Re-solve with the smaller of charge/discharge forced to 0 where both were used.

        The LP burns energy through battery losses only when that pays: negative import prices,
        or a SOC above the window with nowhere to send the energy. A battery cannot do it, so the
        direction of each such step is fixed to its net direction and the LP solved again, until
        no step uses both (at most once per step). The next :meth:`plan` resets these bounds.
        """
        col = solver.lp.col_of
        objective = 0.0
        both = np.minimum(x[col["ch"]], x[col["dis"]]) > SIMULTANEOUS_TOL
        while both.any():
            steps = np.flatnonzero(both)
            charging = x[col["ch"]][steps] > x[col["dis"]][steps]
            solver.fix_columns(np.where(charging, col["dis"][steps], col["ch"][steps]), 0.0)
            x, objective = solver.run()
            both = np.minimum(x[col["ch"]], x[col["dis"]]) > SIMULTANEOUS_TOL
        return x, objective


def _schedule(v: np.ndarray) -> Schedule:
    """The schedule from the LP's per-step values ``v`` (rows as ``SCHEDULE_COLUMNS``).

    Solver noise (|x| < 1e-9) on the non-negative powers becomes 0.
    """
    powers = np.stack([v[0], v[1], v[2] + v[3], v[4] + v[5], v[6]])
    powers[powers < 1e-9] = 0.0
    return Schedule(charge_kw=powers[0], discharge_kw=powers[1], import_kw=powers[2], export_kw=powers[3],
                    curtail_kw=powers[4], soc_kwh=v[7] - v[8] + v[9])
