"""The planning side of the controller: measured history, forecasts, solving off the loop, plan keeping.

- :class:`MeasuredHistory` bins the cycle's measured PV and load into planning steps and hands them to the
  forecasters as :class:`optimizer.forecast.History` (the one history type, which the offline runner fills too);
  the state file keeps it across restarts (:class:`StoredHistory`).
- :class:`MeasuredForecasts` feeds that history to ``optimizer.forecast``; :class:`PerfectForecasts`
  samples known series (the simulated site's own PV and load) for tests and demos.
- :class:`PlanKeeper` owns the current plan: builds :class:`~optimizer.planner.PlanInputs` (tariff
  prices, month-to-date peak, BMS limits now, the current step's battery power fixed), solves in a
  worker thread with a time limit, keeps the last valid plan until it expires, and says why not
  when there is none (a :class:`~controller.modes.Reason` for the mode machine).
- :class:`Replanner` decides when to re-plan (start, interval, command, no valid plan, the site drifting
  from the plan) and runs the planning task of the service (``controller.service``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from controller.dispatch import Target
from controller.modes import Reason
from controller.state_store import StoredValue
from controller.targets import DemandWindow, follow_plan, planned_peak_kw
from optimizer import surplus
from optimizer.forecast import History, LoadForecaster, PVForecaster
from optimizer.peak_target import PeakTarget
from optimizer.plan import Plan, PlanStep
from optimizer.planner import PlanInputs, Planner, PlannerError, SolverTimeout
from optimizer.service import (
    SiteState,
    TariffSteps,
    peak_risk_kw,
    peak_risk_quantiles,
    plan_inputs,
    recharge_floor_kw,
)
from optimizer.site import GridSpec, PlannerSettings, planning_soh_pct
from optimizer.tariff import SiteTariff
from optimizer.timegrid import TimeGrid, floor_to_step, regular_grid

if TYPE_CHECKING:
    from controller.battery_health import BatteryHealth
    from controller.config import ControlSettings
    from controller.snapshot import Snapshot
    from ems.clock import Clock

log = logging.getLogger(__name__)

_Kw = Annotated[float, Field(allow_inf_nan=False, ge=-1e7, le=1e7)] | None


class StoredHistory(StoredValue):
    """The ``history`` value: :meth:`MeasuredHistory.stored`: the closed planning steps, each
    ``[UTC epoch s of the step start, PV kW, load kW]`` (null = missing), strictly increasing, on the step."""

    step_minutes: int = Field(ge=1, le=1440)
    rows: list[tuple[int, _Kw, _Kw]]

    @model_validator(mode="after")
    def _ordered_on_the_step(self) -> StoredHistory:
        step_s = self.step_minutes * 60
        starts = [r[0] for r in self.rows]
        if any(b <= a for a, b in pairwise(starts)):
            raise ValueError("rows: step starts must be strictly increasing")
        off = next((s for s in starts if s % 86_400 % step_s), None)
        if off is not None:
            raise ValueError(f"rows: step start {off} is not on the {self.step_minutes}-minute step")
        return self


ALIGNED_FRACTION = 0.02
"""A plan made within this fraction of a step after its start plans that step whole. [-]"""


class MeasuredHistory:
    """Step averages of measured PV and load (NaN where a step was not covered well enough), fed every cycle.

    A step in which PV was held at its limit (curtailed: the limit, not the weather, set it) has no PV value: the
    forecasters would read a sunny day under a zero-export limit as a dull one. The offline studies leave their
    curtailed steps out the same way (``simulations.runner``).

    Parameters
    ----------
    step_minutes : int
        Planning step. [min]
    keep_days : float
        How much history to keep. [d]
    min_coverage : float
        Fraction of a step that must be measured for its average to count. [-]
    """

    def __init__(self, step_minutes: int, keep_days: float, min_coverage: float = 0.5):
        self.step_minutes = step_minutes
        self.keep = timedelta(days=keep_days)
        self.min_coverage = min_coverage
        self._step: datetime | None = None
        self._sums = np.zeros(2)
        self._covered_h = 0.0
        self._pv_curtailed = False
        self._rows: list[tuple[pd.Timestamp, float, float]] = []  # (step start, PV, load), one list: a copy is atomic
        self.last_load_kw: float | None = None
        """The latest measured load (the load forecast's fallback before any step is complete). [kW]"""
        self.closed = 0
        """Steps closed since the start: changes exactly when :meth:`stored` does (the controller saves then)."""

    KEY = "history"
    """Its key in the state file."""

    def stored(self) -> dict[str, Any]:
        """The closed steps as the state file keeps them (:class:`StoredHistory`; kW to the watt)."""

        def kw(v: float) -> float | None:
            return None if np.isnan(v) else round(v, 3)

        return {"step_minutes": self.step_minutes,
                "rows": [[int(ts.value // 10**9), kw(pv), kw(load)] for ts, pv, load in self._rows]}

    def restore(self, stored: StoredHistory | None, now: datetime) -> str | None:
        """Resume from the state file after a restart: the stored steps within ``keep_days`` before the current
        step (``now``, UTC) are the history again; those at or after it (a clock set back) are dropped. Returns
        why nothing was restored when the stored steps are of another length (the planning step was changed),
        else None."""
        if stored is None:
            return None
        if stored.step_minutes != self.step_minutes:
            return (f"measured history of {stored.step_minutes}-minute steps not restored: the planning step is "
                    f"{self.step_minutes} minutes now")
        current = pd.Timestamp(floor_to_step(now, self.step_minutes))
        cutoff = current - self.keep
        nan = float("nan")
        rows = [(pd.Timestamp(s, unit="s", tz="UTC"), nan if pv is None else pv, nan if load is None else load)
                for s, pv, load in stored.rows]
        self._rows = [r for r in rows if cutoff <= r[0] < current]
        return None

    def add(self, t: datetime, pv_kw: float | None, load_kw: float | None, dt_h: float,
            pv_curtailed: bool = False) -> None:
        """Add one cycle's measurement (missing values only advance time). ``t`` is the cycle time (UTC);
        ``pv_curtailed``: PV was held at its limit this cycle, so the step's PV is unknown.

        The system clock set back to an earlier step (an NTP step, an operator) drops the steps from that one on,
        as :meth:`restore` does, and measures that step again: the forecasters need strictly increasing steps
        (two rows for one step made every forecast fail until the history aged out)."""
        step = floor_to_step(t, self.step_minutes)
        if self._step is not None and step < self._step:
            kept = [r for r in self._rows if r[0] < pd.Timestamp(step)]
            if len(kept) != len(self._rows):
                self._rows = kept
                self.closed += 1  # the stored history changed
            self._sums[:] = 0.0
            self._covered_h = 0.0
            self._pv_curtailed = False
        elif self._step is not None and step != self._step:
            self._close()
        self._step = step
        if pv_kw is not None and load_kw is not None:
            self.last_load_kw = load_kw
            self._sums += (pv_kw * dt_h, load_kw * dt_h)
            self._covered_h += dt_h
            self._pv_curtailed |= pv_curtailed

    def _close(self) -> None:
        assert self._step is not None
        if self._covered_h >= self.min_coverage * self.step_minutes / 60:
            pv, load = self._sums / self._covered_h
            if self._pv_curtailed:
                pv = float("nan")
        else:
            pv = load = float("nan")
        cutoff = pd.Timestamp(self._step - self.keep)
        self._rows = [r for r in self._rows if r[0] >= cutoff] + [(pd.Timestamp(self._step), float(pv), float(load))]
        self.closed += 1
        self._sums[:] = 0.0
        self._covered_h = 0.0
        self._pv_curtailed = False

    def histories(self) -> tuple[History, History]:
        """(PV, load) step averages [kW] at their UTC step starts, as the forecasters read them (new arrays on
        every call: safe from a worker thread)."""
        rows = self._rows
        ns = np.array([r[0].value for r in rows], dtype=np.int64)
        values = np.array([r[1:] for r in rows], dtype=float).reshape(-1, 2)
        return History(ns, values[:, 0].copy()), History(ns.copy(), values[:, 1].copy())


class ForecastSource(Protocol):
    """PV and load on a grid, and how far above its forecast the net load may come. [kW]"""

    def forecast(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]: ...

    def peak_risk(self, grid: TimeGrid, pv_kw: np.ndarray, load_kw: np.ndarray) -> np.ndarray: ...

    def peak_risk_quantiles(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
        """PV's P10 and the load's P90 per step behind :meth:`peak_risk`, for an external forecast's band to be laid
        over where it covers the grid (``optimizer.external_forecast.WithExternal``). [kW]"""
        ...

    def pv_quantiles(self, grid: TimeGrid, levels: Sequence[float]) -> np.ndarray | None:
        """PV quantile forecasts, shape ``(len(levels), len(grid))``, or None without any (surplus-day rule)."""
        ...

    def measured(self) -> tuple[History, History] | None:
        """The measured PV and load per step (the month's peak target), or None without a measured history."""
        ...


class MeasuredForecasts:
    """``optimizer.forecast`` fed the :class:`MeasuredHistory`; until a step of history is complete the
    load forecast is the latest measured load (persistence)."""

    def __init__(self, pv: PVForecaster, load: LoadForecaster, history: MeasuredHistory):
        self.pv, self.load, self.history = pv, load, history

    def forecast(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
        pv_hist, load_hist = self.history.histories()
        self.load.fallback_kw = self.history.last_load_kw
        return self.pv.forecast(grid, pv_hist), self.load.forecast(grid, load_hist)

    def peak_risk(self, grid: TimeGrid, pv_kw: np.ndarray, load_kw: np.ndarray) -> np.ndarray:
        """:func:`optimizer.service.peak_risk_kw` from the forecasters' own recent errors on the history. [kW]"""
        pv_hist, load_hist = self.history.histories()
        return peak_risk_kw(self.pv, self.load, grid, pv_hist, load_hist, pv_kw, load_kw)

    def peak_risk_quantiles(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
        """PV's P10 and the load's P90 behind :meth:`peak_risk` (:func:`optimizer.service.peak_risk_quantiles`),
        for an external forecast's band to be laid over. [kW]"""
        return peak_risk_quantiles(self.pv, self.load, grid, *self.history.histories())

    def pv_quantiles(self, grid: TimeGrid, levels: Sequence[float]) -> np.ndarray:
        """The PV forecaster's quantiles on the measured history (:meth:`PVForecaster.quantiles`). [kW]"""
        return self.pv.quantiles(grid, self.history.histories()[0], levels=levels)

    def measured(self) -> tuple[History, History]:
        """The measured PV and load per step (:meth:`MeasuredHistory.histories`). [kW]"""
        return self.history.histories()


class PerfectForecasts:
    """Known PV and load (callables UTC time → kW, e.g. the simulated plant's sources), averaged per step.

    Parameters
    ----------
    pv_kw, load_kw : Callable[[datetime], float]
    samples_per_step : int
        Points averaged per step (evenly spaced, mid-point rule).
    """

    def __init__(self, pv_kw: Callable[[datetime], float], load_kw: Callable[[datetime], float],
                 samples_per_step: int = 15):
        self.pv_kw, self.load_kw, self.samples = pv_kw, load_kw, samples_per_step

    def forecast(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
        k = self.samples
        offsets = [timedelta(hours=float(h) * (j + 0.5) / k) for h in grid.duration_h for j in range(k)]
        times = [s for s in grid.starts.to_pydatetime() for _ in range(k)]
        times = [t + o for t, o in zip(times, offsets, strict=True)]
        pv = np.array([self.pv_kw(t) for t in times]).reshape(-1, k).mean(axis=1)
        load = np.array([self.load_kw(t) for t in times]).reshape(-1, k).mean(axis=1)
        return np.maximum(pv, 0.0), np.maximum(load, 0.0)

    def peak_risk(self, grid: TimeGrid, pv_kw: np.ndarray, load_kw: np.ndarray) -> np.ndarray:
        """Known PV and load have no error: 0. [kW]"""
        return np.zeros(len(grid))

    def peak_risk_quantiles(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
        """Known PV and load have no spread: their P10 and P90 are the values themselves. [kW]"""
        return self.forecast(grid)

    def pv_quantiles(self, grid: TimeGrid, levels: Sequence[float]) -> None:
        """Known PV has no spread: the surplus-day rule does not apply."""
        return None

    def measured(self) -> None:
        """Known sources keep no measured history: no month peak target."""
        return None


@dataclass(frozen=True)
class PlanOutcome:
    """One planning attempt: the plan, or why there is none; solve time in real milliseconds."""

    plan: Plan | None
    error: Reason | None
    detail: str
    elapsed_ms: float


class PlanKeeper:
    """Makes plans and keeps the last valid one.

    Parameters
    ----------
    planner : Planner
        The planner of the battery's nameplate energy (``battery.capacity_kwh``).
    settings : PlannerSettings
    grid_spec : GridSpec
    tariff : SiteTariff
    forecasts : ForecastSource
    follow_tol_kw : float
        Tolerance of the follow rule (``controller.dispatch.plan_target``). [kW]
    """

    def __init__(self, planner: Planner, settings: PlannerSettings, grid_spec: GridSpec, tariff: SiteTariff,
                 forecasts: ForecastSource, follow_tol_kw: float = 1.0):
        self.planner = planner
        """The planner of the battery as it is now (:meth:`at_health`)."""
        self._nameplate = planner
        self._planned_for: tuple[float | None, float] = (None, 1.0)
        self.settings = settings
        self.grid_spec = grid_spec
        self.tariff = tariff
        self.forecasts = forecasts
        self.follow_tol_kw = follow_tol_kw
        self.plan: Plan | None = None
        self._previous: Plan | None = None
        self.last_error: Reason | None = Reason.NO_PLAN
        self.last_detail = "no plan yet"
        self.last_outcome: PlanOutcome | None = None
        self.plans_made = 0
        self.failures = 0
        self._solving: asyncio.Future | None = None
        self._windows: tuple[Plan, np.ndarray] | None = None  # the demand window of each step of a plan
        self._months: tuple[Plan, str, np.ndarray] | None = None  # a plan's steps in one billing month (every cycle)
        self.peak_target = PeakTarget(planner.battery, settings.demand_target_days)

    # ---------------------------------------------------------------------------------- the current plan

    def current(self, now: datetime) -> tuple[Plan, PlanStep] | None:
        """The valid plan covering ``now`` and its step, or None.

        A plan made mid-step starts at its planning time: a cycle that read the site a moment before that,
        in the same step, gets the plan's first step. A cycle that read the site before the new plan's start
        otherwise (just before a step boundary) still gets the plan before it.
        """
        for plan in (self.plan, self._previous):
            if plan is None or plan.is_expired(now, self.settings.plan_valid_hours):
                continue
            first = plan.starts[0].to_pydatetime()
            moment = first if floor_to_step(first, self.settings.step_minutes) <= now < first else now
            step = plan.step_at(moment)
            if step is not None:
                return plan, step
        return None

    def status(self, now: datetime) -> Reason | None:
        """None when a valid plan covers ``now``; otherwise the reason there is none."""
        if self.current(now) is not None:
            return None
        if self.plan is not None:
            return self.last_error if self.last_error in (Reason.PLANNER_FAILED, Reason.SOLVER_TIMEOUT) \
                else Reason.PLAN_EXPIRED
        return self.last_error or Reason.NO_PLAN

    def _demand_month(self, now: datetime) -> str | None:
        """The billing month of ``now`` when it is billed on a demand charge of a positive rate, else None
        (:meth:`~optimizer.tariff.SiteTariff.billed_demand_charge`: as a study plans)."""
        month = self.tariff.billing_month(now)
        charge = self.tariff.billed_demand_charge(month)
        return None if charge is None or charge.rate_per_kw_month <= 0 else month

    def same_month(self, plan: Plan, now: datetime) -> np.ndarray | None:
        """Per step of ``plan``: in the billing month of ``now``; None when that month is billed on no demand
        charge or one of rate 0."""
        month = self._demand_month(now)
        if month is None:
            return None
        if self._months is None or self._months[0] is not plan or self._months[1] != month:
            self._months = (plan, month, self.tariff.billing_months(plan.starts) == month)
        return self._months[2]

    def target(self, now: datetime, month_peak_kw: float, window: DemandWindow | None = None,
               max_discharge_kw: float | None = None) -> Target | None:
        """The plan step at ``now`` as a dispatch target (:func:`controller.targets.follow_plan`; ``window``: the
        demand window running now; ``max_discharge_kw``: what the battery may discharge now [kW]), or None without a
        valid plan."""
        found = self.current(now)
        if found is None:
            return None
        plan, step = found
        expires = min(plan.expires_at(self.settings.plan_valid_hours),
                      (step.start + pd.Timedelta(hours=step.duration_h)).to_pydatetime(warn=False))
        if self._windows is None or self._windows[0] is not plan:
            self._windows = (plan, TariffSteps.of(self.tariff, plan.starts).window)
        left_h = (step.start.to_pydatetime() - now).total_seconds() / 3600.0 + step.duration_h
        return follow_plan(plan, step.index, self.grid_spec, same_month=self.same_month(plan, now),
                           month_peak_kw=month_peak_kw, tol_kw=self.follow_tol_kw, expires_at=expires,
                           demand_kw=plan.demand_kw, window=window, windows=self._windows[1],
                           duration_h=plan.duration_h, step_left_h=max(left_h, 0.0),
                           max_discharge_kw=max_discharge_kw)

    def held_peak_kw(self, now: datetime, month_peak_kw: float) -> float | None:
        """The month's demand level the dispatcher holds at ``now``: the plan's planned peak for the billing month
        (:func:`controller.targets.planned_peak_kw`, as :meth:`target` defends it) or, without a valid plan,
        ``month_peak_kw`` (the level billed so far, ``Accounting.billed_demand_kw``); None when the month is billed on
        no demand charge. [kW]"""
        if self._demand_month(now) is None:
            return None
        found = self.current(now)
        if found is None:
            return month_peak_kw
        plan = found[0]
        same_month = self.same_month(plan, now)
        assert same_month is not None
        return planned_peak_kw(plan.import_kw if plan.demand_kw is None else plan.demand_kw, same_month,
                               month_peak_kw)

    def planned_net_load_kw(self, now: datetime) -> float | None:
        """The plan's load − PV at ``now`` (for the deviation trigger). [kW]"""
        found = self.current(now)
        if found is None:
            return None
        plan, step = found
        return float(plan.load_kw[step.index] - plan.pv_kw[step.index])

    # ---------------------------------------------------------------------------------- making plans

    def grid_from(self, now: datetime) -> TimeGrid:
        """The planning grid from ``now``: a first step shortened to the rest of the running step (unless that
        step has only just begun), then whole steps; always ``horizon_steps`` steps."""
        s = self.settings
        step = timedelta(minutes=s.step_minutes)
        start = floor_to_step(now, s.step_minutes)
        if now - start <= ALIGNED_FRACTION * step:
            return regular_grid(start, s.horizon_steps, s.step_minutes)
        starts = pd.DatetimeIndex([now] + [start + k * step for k in range(1, s.horizon_steps)]).tz_convert("UTC")
        duration_h = np.full(s.horizon_steps, s.step_minutes / 60.0)
        duration_h[0] = (start + step - now).total_seconds() / 3600.0
        return TimeGrid(starts, duration_h)

    def at_health(self, soh_pct: float | None, in_use_share: float = 1.0) -> Planner:
        """The planner of the battery at the state of health ``soh_pct`` [%] (:meth:`BatteryUnit.at_health
        <optimizer.site.BatteryUnit.at_health>`: the nameplate's when None) and of ``in_use_share`` of that energy
        (units of an asset group out of it: :attr:`SiteState.in_use_share <optimizer.service.SiteState>`, to three
        places), made when either changes, with the month's peak target of its energy; it becomes
        :attr:`planner`."""
        key = (planning_soh_pct(soh_pct), round(min(max(in_use_share, 0.0), 1.0), 3))
        if key != self._planned_for:
            base = self._nameplate
            battery = base.battery.at_health(key[0])
            if key[1] < 1.0:
                battery = battery.model_copy(update={"capacity_kwh": battery.capacity_kwh * key[1]})
            self.planner = base if battery is base.battery else Planner(battery, base.grid, base.settings, base.steps)
            self.peak_target = PeakTarget(self.planner.battery, self.settings.demand_target_days)
            self._planned_for = key
        return self.planner

    def inputs(self, now: datetime, site: SiteState) -> PlanInputs:
        """PlanInputs for a plan starting at ``now`` (:func:`optimizer.service.plan_inputs`; runs in the worker
        thread), for the battery at ``site.soh_pct`` (:meth:`at_health`). A plan made within a running step keeps
        the battery power of the step followed now for the rest of it; one made at a step's start (as every interval
        re-plan, and every offline re-plan) is free there."""
        self.at_health(site.soh_pct, site.in_use_share)
        grid = self.grid_from(now)
        pv_kw, load_kw = self.forecasts.forecast(grid)
        tariff = TariffSteps.of(self.tariff, grid.starts)
        demand = tariff.demand_rate[0] > 0
        pv_kw = surplus.planned_pv(self.settings.surplus_rule, pv_kw, tariff.import_price,
                                   lambda levels: self.forecasts.pv_quantiles(grid, levels),
                                   self.settings.surplus_room_level, load_kw, self.settings.surplus_flat_level,
                                   demand)
        found = self.current(grid.starts[0].to_pydatetime())
        mid_step = float(grid.duration_h[0]) < self.settings.step_minutes / 60.0
        fixed = found[1].battery_kw if found is not None and mid_step else None
        risk = None
        if demand and self.settings.uses_peak_risk:
            risk = self.forecasts.peak_risk(grid, pv_kw, load_kw)
        target = 0.0
        measured = self.forecasts.measured()
        if demand and self.settings.demand_target_days > 0 and measured is not None:
            target = self.peak_target(*measured, int(grid.starts[0].value), self.settings.step_minutes / 60.0,
                                      tariff.window_h)
        target = max(target, recharge_floor_kw(self.peak_target, self.settings, grid, tariff, pv_kw, load_kw, risk,
                                               site))
        return plan_inputs(grid, tariff, pv_kw, load_kw, replace(site, fixed_battery_kw=fixed), risk,
                           self.settings.risk_margin(tariff.peak_billed_months), target)

    def _solve(self, now: datetime, site: SiteState) -> Plan:
        inputs = self.inputs(now, site)  # first: it picks the planner of the battery's health
        return self.planner.plan(inputs, created_at=now)

    async def replan(self, now: datetime, site: SiteState, timeout_s: float) -> PlanOutcome:
        """Plan in a worker thread; keep the last valid plan on any failure.

        ``timeout_s`` is real time. A solve still running from an earlier time-out is not started again.
        """
        t0 = time.perf_counter()
        if self._solving is not None and not self._solving.done():
            return self._failed(Reason.SOLVER_TIMEOUT, "previous solve still running", t0)
        self._solving = asyncio.ensure_future(asyncio.to_thread(self._solve, now, site))
        try:
            plan = await asyncio.wait_for(asyncio.shield(self._solving), timeout_s)
        except TimeoutError:
            return self._failed(Reason.SOLVER_TIMEOUT, f"no answer within {timeout_s:g} s", t0)
        except SolverTimeout as exc:
            return self._failed(Reason.SOLVER_TIMEOUT, str(exc), t0)
        except (PlannerError, ValueError) as exc:
            return self._failed(Reason.PLANNER_FAILED, f"{type(exc).__name__}: {exc}", t0)
        self._previous, self.plan = self.plan, plan
        self.last_error, self.last_detail = None, ""
        self.plans_made += 1
        self.last_outcome = PlanOutcome(plan, None, "", (time.perf_counter() - t0) * 1e3)
        return self.last_outcome

    def _failed(self, reason: Reason, detail: str, t0: float) -> PlanOutcome:
        self.failures += 1
        if (reason, detail) != (self.last_error, self.last_detail):
            log.error("planning failed (%s): %s; keeping the last valid plan until it expires", reason.value, detail)
        self.last_error, self.last_detail = reason, detail
        self.last_outcome = PlanOutcome(None, reason, detail, (time.perf_counter() - t0) * 1e3)
        return self.last_outcome


class Replanner:
    """When to re-plan, and the planning task: one attempt at a time, off the control cycle.

    A plan is due at start, at every ``replan_minutes`` boundary of site time, on a ``replan`` command (until its
    expiry), when there is no valid plan, and when the measured net load has stayed more than
    ``control.replan_deviation_kw`` from the plan's for ``control.replan_deviation_s``; never more often than
    ``control.min_replan_gap_s`` (an interval boundary waits at most half an interval). An interval re-plan also
    waits for the first control cycle after the boundary (:meth:`observe`): that cycle closes the step just ended in
    the forecasters' history and the demand window in the month's peak (a cycle's energy belongs to the interval it
    ends in, so a cycle exactly on the boundary still closes the old one), as the offline runner does before it
    plans the next step; planning earlier would plan on one step less and, after a new peak, on the old one.

    Parameters
    ----------
    keeper : PlanKeeper
    clock : Clock
        Site time.
    control : ControlSettings
        The ``control:`` section (re-plan gap, deviation trigger, cycle).
    replan_minutes : int
        The re-planning interval. [min]
    health : BatteryHealth
        The battery's state of health and the energy it holds (SOC % → kWh).
    timeout_s : float
        Real seconds one attempt (forecasts, build, solve) may take.
    on_outcome : callable
        ``on_outcome(outcome, why, now)`` after every attempt that ran (alarms, persistence, publication).
    in_use_energy : callable
        ``in_use_energy()``: while some battery unit is out of its asset group, (the energy the units in it hold at
        full SOC, what they hold now) [kWh], else None (:meth:`controller.groups.BatteryGroup.in_use_energy`): plans
        are then made for those units only.
    """

    def __init__(self, keeper: PlanKeeper, clock: Clock, control: ControlSettings, replan_minutes: int,
                 health: BatteryHealth, timeout_s: float,
                 on_outcome: Callable[[PlanOutcome, str, datetime], None],
                 in_use_energy: Callable[[], tuple[float, float] | None] = lambda: None):
        self.keeper, self.clock, self.control = keeper, clock, control
        self.replan_minutes, self.health, self.timeout_s = replan_minutes, health, timeout_s
        self.on_outcome = on_outcome
        self.in_use_energy = in_use_energy
        """The battery units in use while some are out of their group (``BatteryGroup.in_use_energy``). [kWh]"""
        self.replan_until: datetime | None = None
        self.last_try: float | None = None
        """Site monotonic time of the last attempt. [s]"""
        self.deviation_since: float | None = None
        """Site monotonic time since which the site has drifted from the plan. [s]"""
        self.observed_at: datetime | None = None
        """Site time of the last control cycle seen by :meth:`observe` (UTC)."""

    def request(self, until: datetime) -> None:
        """A ``replan`` command: plan at the next chance before ``until`` (UTC)."""
        self.replan_until = until

    def observe(self, snap: Snapshot, now: datetime) -> None:
        """Track the deviation of the measured net load from the plan's, and the time of the cycle (once per cycle,
        after the cycle's accounting)."""
        self.observed_at = now
        planned = self.keeper.planned_net_load_kw(now)
        load, pv = snap.load_kw, snap.value("pv_kw")
        if planned is None or load is None or pv is None \
                or abs(load - pv - planned) <= self.control.replan_deviation_kw:
            self.deviation_since = None
        elif self.deviation_since is None:
            self.deviation_since = self.clock.monotonic()

    def due(self, now: datetime) -> str | None:
        """Why a plan is due at ``now`` (``start``, ``requested``, ``interval``, ``no_valid_plan``,
        ``deviation``), or None."""
        ctl = self.control
        mono = self.clock.monotonic()
        if self.last_try is None:
            return "start"
        since = mono - self.last_try
        if self.replan_until is not None:
            if now <= self.replan_until:
                return "requested"
            self.replan_until = None
        step_s = self.replan_minutes * 60.0
        last_wall = now - timedelta(seconds=since)
        boundary = floor_to_step(now, self.replan_minutes)
        if boundary > floor_to_step(last_wall, self.replan_minutes) and since >= min(ctl.min_replan_gap_s, step_s / 2) \
                and self.observed_at is not None and self.observed_at > boundary:  # the step closed: see above
            return "interval"
        if since < ctl.min_replan_gap_s:
            return None
        if self.keeper.status(now) is not None:
            return "no_valid_plan"
        if self.deviation_since is not None and mono - self.deviation_since >= ctl.replan_deviation_s:
            return "deviation"
        return None

    def site_now(self, snap: Snapshot | None, month_peak_kw: float, window_import_kwh: float) -> SiteState | None:
        """What the planner needs of the site from ``snap``, the battery's health (its SOC a share of the energy it
        holds now) and the demand tracker (the level the month is billed on so far, ``Accounting.billed_demand_kw``
        [kW]; import so far in the running demand window [kWh]); None without a valid SOC."""
        soc = snap.value("soc_pct") if snap is not None else None
        if snap is None or soc is None:
            return None
        soc_kwh, share = soc / 100.0 * self.health.capacity_kwh, 1.0
        in_use = self.in_use_energy()
        if in_use is not None and self.health.capacity_kwh > 0:   # units out of the group: plan those in it
            share, soc_kwh = in_use[0] / self.health.capacity_kwh, in_use[1]
        return SiteState(soc_kwh=soc_kwh, bms_max_charge_kw=snap.value("max_charge_kw"),
                         bms_max_discharge_kw=snap.value("max_discharge_kw"), month_peak_kw=month_peak_kw,
                         window_import_kwh=window_import_kwh, soh_pct=self.health.soh_pct, in_use_share=share)

    async def attempt(self, why: str, snap: Snapshot | None, month_peak_kw: float,
                      window_import_kwh: float = 0.0) -> PlanOutcome | None:
        """One planning attempt now on the latest snapshot (``month_peak_kw``, ``window_import_kwh``: as
        :meth:`site_now`); None when it could not start (no SOC yet)."""
        now = self.clock.now()
        site = self.site_now(snap, month_peak_kw, window_import_kwh)
        if site is None:
            if snap is not None:
                self.last_try = self.clock.monotonic()
                log.warning("planning skipped (%s): no valid SOC measurement", why)
            return None
        self.last_try = self.clock.monotonic()
        self.replan_until = None
        self.deviation_since = None
        outcome = await self.keeper.replan(now, site, self.timeout_s)
        self.on_outcome(outcome, why, now)
        return outcome

    async def run(self, stop: asyncio.Event, attempt: Callable[[str], Awaitable[None]]) -> None:
        """The planning task: every cycle, ``await attempt(why)`` when a plan is due, until ``stop``."""
        while not stop.is_set():
            why = self.due(self.clock.now())
            if why is not None:
                try:
                    await attempt(why)
                except Exception:  # planning must never take the controller down
                    log.exception("planning task error")
                    self.keeper.last_error, self.keeper.last_detail = Reason.PLANNER_FAILED, "internal error"
            await self.clock.sleep(self.control.cycle_s)
