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

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highspy
import numpy as np

from optimizer import costs
from optimizer.costs import Schedule
from optimizer.lp_model import (
    INF,
    TEMPLATE_STEPS,
    AffineLP,
    build_model,
    extract_affine_lp,
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
        Peak import already reached in the billing month(s): a scalar for the first month in the
        horizon (later months start at 0), or one value per billing month present. [kW]
    demand_charge_per_kw : float
        Demand charge per kW of monthly peak (0 = none). [currency/kW/month]
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
    """

    grid: TimeGrid
    pv_kw: np.ndarray
    load_kw: np.ndarray
    import_price: np.ndarray
    export_price: np.ndarray
    soc0_kwh: float
    month_peak_kw: float | Sequence[float] = 0.0
    demand_charge_per_kw: float = 0.0
    billing_month: np.ndarray | None = None
    max_charge_kw: float | np.ndarray | None = None
    max_discharge_kw: float | np.ndarray | None = None
    import_cap_kw: float | np.ndarray | None = None
    export_cap_kw: float | np.ndarray | None = None
    fixed_battery_kw: float | None = None
    period: Sequence[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.grid)
        for name in ("pv_kw", "load_kw", "import_price", "export_price"):
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.shape != (n,):
                raise ValueError(f"PlanInputs.{name} has shape {arr.shape}, the grid has {n} steps")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"PlanInputs.{name} has missing (NaN) or infinite values at steps "
                                 f"{np.flatnonzero(~np.isfinite(arr))[:10].tolist()}")
            setattr(self, name, arr)
        for name in ("pv_kw", "load_kw"):
            if np.any(getattr(self, name) < 0):
                raise ValueError(f"PlanInputs.{name} must not be negative")
        if self.soc0_kwh is None or not np.isfinite(self.soc0_kwh):
            raise ValueError("PlanInputs.soc0_kwh is missing: the planner needs a measured SOC")
        if self.demand_charge_per_kw < 0:
            raise ValueError("PlanInputs.demand_charge_per_kw must not be negative")
        if self.billing_month is not None:
            bm = np.asarray(self.billing_month)
            if bm.shape != (n,) or bm[0] != 0 or np.any(np.diff(bm) < 0) or np.any(np.diff(bm) > 1):
                raise ValueError("PlanInputs.billing_month must be 0, 0, …, 1, 1, … (one per step, steps of 1)")
            self.billing_month = bm.astype(int)
        for name in ("max_charge_kw", "max_discharge_kw", "import_cap_kw", "export_cap_kw"):
            value = getattr(self, name)
            if value is not None and np.any(np.asarray(value, dtype=float) < 0):
                raise ValueError(f"PlanInputs.{name} must not be negative")
        if self.period is not None and len(self.period) != n:
            raise ValueError(f"PlanInputs.period has {len(self.period)} names for {n} steps")


def lp_parameters(inputs: PlanInputs, battery: BatterySpec, grid: GridSpec,
                  settings: PlannerSettings) -> dict[str, np.ndarray | float]:
    """Values of the LP's mutable Params for ``inputs`` (names as in :mod:`optimizer.lp_model`)."""
    n = len(inputs.grid)
    max_price = max(1.0, float(np.max(np.abs(inputs.import_price))), float(np.max(np.abs(inputs.export_price))))
    pen = costs.slack_penalty_per_kwh(inputs, settings)
    months = inputs.billing_month if inputs.billing_month is not None else np.zeros(n, dtype=int)
    floors = costs.month_floors_kw(inputs)
    peak_reset = np.zeros(n)
    peak_reset[1:] = months[1:] != months[:-1]
    peak_cost = np.zeros(n)
    peak_cost[np.flatnonzero(np.append(months[1:] != months[:-1], True))] = inputs.demand_charge_per_kw

    def power(x: np.ndarray) -> np.ndarray:
        return np.minimum(np.round(x, ROUND_DECIMALS), INF)

    fixed = inputs.fixed_battery_kw
    return {
        "pv": power(inputs.pv_kw), "load_kw": power(inputs.load_kw),
        "c_imp": inputs.import_price, "c_exp": inputs.export_price,
        "ch_max": power(costs.charge_limit_kw(inputs, battery)),
        "dis_max": power(costs.discharge_limit_kw(inputs, battery)),
        "imp_cap": power(costs.import_cap_kw(inputs, grid)), "exp_cap": power(costs.export_cap_kw(inputs, grid)),
        "peak_floor": np.round(floors[months], ROUND_DECIMALS), "peak_cost": peak_cost, "peak_reset": peak_reset,
        "soc0": float(inputs.soc0_kwh), "tv": costs.terminal_value_per_kwh(inputs, battery, settings),
        "c_wear": battery.wear_cost_per_kwh + MIN_THROUGHPUT_COST * max_price,
        "pen": pen, "fix_pen": 0.0 if fixed is None else pen, "fix_kw": 0.0 if fixed is None else float(fixed),
    }


class _Solver:
    """One affine LP loaded into one persistent ``highspy.Highs``."""

    def __init__(self, lp: AffineLP, params: np.ndarray, time_limit_s: float):
        self.lp = lp
        self.highs = _quiet_highs()
        self.time_limit_s = float(time_limit_s)
        model = highspy.HighsLp()
        model.num_col_, model.num_row_ = lp.num_col, lp.num_row
        model.col_cost_ = lp.cost.evaluate(params)
        model.col_lower_, model.col_upper_ = _inf(lp.col_lower.evaluate(params)), _inf(lp.col_upper.evaluate(params))
        model.row_lower_, model.row_upper_ = _inf(lp.row_lower.evaluate(params)), _inf(lp.row_upper.evaluate(params))
        model.offset_ = float(lp.offset.evaluate(params)[0])
        model.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        model.a_matrix_.start_, model.a_matrix_.index_, model.a_matrix_.value_ = lp.a_start, lp.a_index, lp.a_value
        if self.highs.passModel(model) == highspy.HighsStatus.kError:
            raise SolverFailed("HiGHS rejected the model")
        self._cols_cost = np.flatnonzero(lp.cost.varying).astype(np.int32)
        self._cols_bound = np.flatnonzero(lp.col_lower.varying | lp.col_upper.varying).astype(np.int32)
        self._rows = np.flatnonzero(lp.row_lower.varying | lp.row_upper.varying).astype(np.int32)
        self._fresh = True

    def update(self, params: np.ndarray) -> None:
        """Hand the new costs and bounds to HiGHS (only entries that depend on the parameters)."""
        if self._fresh:
            self._fresh = False
            return
        lp, h = self.lp, self.highs
        c = lp.cost.evaluate(params)
        h.changeColsCost(len(self._cols_cost), self._cols_cost, c[self._cols_cost])
        cl, cu = _inf(lp.col_lower.evaluate(params)), _inf(lp.col_upper.evaluate(params))
        h.changeColsBounds(len(self._cols_bound), self._cols_bound, cl[self._cols_bound], cu[self._cols_bound])
        rl, ru = _inf(lp.row_lower.evaluate(params)), _inf(lp.row_upper.evaluate(params))
        h.changeRowsBounds(len(self._rows), self._rows, rl[self._rows], ru[self._rows])
        if len(lp.offset.target):
            h.changeObjectiveOffset(float(lp.offset.evaluate(params)[0]))

    def run(self) -> tuple[np.ndarray, float]:
        """Solve; return (column values, objective incl. constant). Raises on any non-optimal outcome."""
        h = self.highs
        # HiGHS compares time_limit with the run time accumulated over all runs of this instance
        h.setOptionValue("time_limit", h.getRunTime() + self.time_limit_s)
        status = h.run()
        model_status = h.getModelStatus()
        if status == highspy.HighsStatus.kError:
            h.clearSolver()
            raise SolverFailed(f"HiGHS run failed (model status {h.modelStatusToString(model_status)})")
        if model_status == highspy.HighsModelStatus.kTimeLimit:
            h.clearSolver()
            raise SolverTimeout("HiGHS hit the time limit")
        if model_status != highspy.HighsModelStatus.kOptimal:
            h.clearSolver()
            raise SolverFailed(f"HiGHS model status {h.modelStatusToString(model_status)}")
        return np.asarray(h.getSolution().col_value), h.getInfo().objective_function_value


def _quiet_highs() -> highspy.Highs:
    """A ``Highs`` with output off; the banner the first instance prints on C-level stdout is swallowed."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highs = highspy.Highs()
            highs.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return highs


def _inf(v: np.ndarray) -> np.ndarray:
    return np.where(v >= INF, np.inf, np.where(v <= -INF, -np.inf, v))


class Planner:
    """Plans ``steps`` steps for one battery and grid connection; reusable across calls.

    The LP is built on the first call for a given step-duration pattern and demand-charge use
    (uniform steps: the Pyomo model is built for a few steps and tiled, see
    :func:`optimizer.lp_model.tiled_affine_lp`; otherwise built and extracted at full size), then
    kept with its HiGHS instance; later calls only update numbers.
    """

    def __init__(self, battery: BatterySpec, grid: GridSpec, settings: PlannerSettings, steps: int):
        if steps < 1:
            raise ValueError("steps must be at least 1")
        self.battery, self.grid, self.settings, self.steps = battery, grid, settings, steps
        self._solvers: dict[tuple, _Solver] = {}
        #: The LP's own optimal objective at the last :meth:`plan` (includes the minimum throughput
        #: cost, excludes constants such as the month peak already paid). [currency]
        self.last_objective: float | None = None

    def affine_lp(self, duration_h: np.ndarray, demand: bool) -> AffineLP:
        """The affine LP for this planner's battery at the given step durations."""
        if len(duration_h) >= TEMPLATE_STEPS and np.all(duration_h == duration_h[0]):
            return tiled_affine_lp(float(duration_h[0]), len(duration_h), self.battery, demand)
        return extract_affine_lp(build_model(duration_h, self.battery, demand))

    def parameter_vector(self, lp: AffineLP, inputs: PlanInputs) -> np.ndarray:
        """The flat parameter vector of ``lp`` for ``inputs``."""
        p = np.zeros(lp.num_param)
        for name, value in lp_parameters(inputs, self.battery, self.grid, self.settings).items():
            p[lp.param_slices[name]] = value
        return p

    def plan(self, inputs: PlanInputs, created_at: datetime | None = None) -> Plan:
        """The optimal plan for ``inputs`` (see module docstring for errors)."""
        if len(inputs.grid) != self.steps:
            raise PlannerError(f"this planner plans {self.steps} steps, the inputs have {len(inputs.grid)}")
        t0 = time.perf_counter()
        dur = np.asarray(inputs.grid.duration_h, dtype=float)
        demand = inputs.demand_charge_per_kw > 0
        key = (demand, dur.tobytes())
        solver = self._solvers.get(key)
        build_ms = 0.0
        if solver is None:
            lp = self.affine_lp(dur, demand)
            solver = _Solver(lp, self.parameter_vector(lp, inputs), self.settings.time_limit_s)
            self._solvers = {key: solver}
            build_ms = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        solver.update(self.parameter_vector(solver.lp, inputs))
        t2 = time.perf_counter()
        x, self.last_objective = solver.run()
        note = None
        col = solver.lp.col_of
        both = np.minimum(x[col["ch"]], x[col["dis"]]) > SIMULTANEOUS_TOL
        if both.any():
            x, self.last_objective = self._one_direction(solver, x, both)
            note = "simultaneous charge and discharge removed by fixing the direction of some steps"
        t3 = time.perf_counter()
        schedule = Schedule(
            charge_kw=x[col["ch"]], discharge_kw=x[col["dis"]], import_kw=x[col["imp"]] + x[col["over"]],
            export_kw=x[col["exp"]] + x[col["dump"]], curtail_kw=x[col["curt"]],
            soc_kwh=x[col["soc_w"]] - x[col["s_lo"]] + x[col["s_hi"]])
        info = SolverInfo(status="optimal", build_ms=build_ms, update_ms=(t2 - t1) * 1e3,
                          solve_ms=(t3 - t2) * 1e3, note=note)
        return costs.make_plan(_clean(schedule), inputs, self.battery, self.grid, self.settings,
                               "optimizer", info, created_at)

    def _one_direction(self, solver: _Solver, x: np.ndarray, both: np.ndarray) -> tuple[np.ndarray, float]:
        """Re-solve with the smaller of charge/discharge forced to 0 where both were used.

        The LP burns energy through battery losses only when that pays: negative import prices,
        or a SOC above the window with nowhere to send the energy. A battery cannot do it, so the
        direction of each such step is fixed to its net direction and the LP solved again, until
        no step uses both (at most once per step). The next :meth:`plan` resets these bounds.
        """
        col = solver.lp.col_of
        objective = 0.0
        while both.any():
            steps = np.flatnonzero(both)
            charging = x[col["ch"]][steps] > x[col["dis"]][steps]
            zero_cols = np.where(charging, col["dis"][steps], col["ch"][steps]).astype(np.int32)
            zeros = np.zeros(len(zero_cols))
            solver.highs.changeColsBounds(len(zero_cols), zero_cols, zeros, zeros)
            x, objective = solver.run()
            both = np.minimum(x[col["ch"]], x[col["dis"]]) > SIMULTANEOUS_TOL
        solver._fresh = False
        return x, objective


def _clean(s: Schedule) -> Schedule:
    """Solver noise (|x| < 1e-9) on non-negative powers becomes 0."""
    def nn(a: np.ndarray) -> np.ndarray:
        return np.where(a < 1e-9, 0.0, a)
    return Schedule(nn(s.charge_kw), nn(s.discharge_kw), nn(s.import_kw), nn(s.export_kw), nn(s.curtail_kw),
                    s.soc_kwh.copy())
