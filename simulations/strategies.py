"""Strategies of an offline study: what target each one hands the live :class:`~controller.dispatch.Dispatcher`.

Every strategy answers one question per step, :meth:`Strategy.target`, from what a live controller
would know at that moment (:class:`StepContext`: measured SOC, BMS limits, month-to-date peak, and the
measured history strictly before the step), through the live controller's own functions
(:mod:`controller.targets`). The runner then runs the same dispatcher and the same plant
for all of them, so strategies differ only in their targets:

- ``no_system`` / ``pv_only``: no target (the battery is absent).
- ``self_consumption``: the live self-consumption mode, a grid target of 0 kW.
- ``tou_rule``: the live TOU-rule mode on the step's measurements.
- ``mpc``: the live :class:`~optimizer.planner.Planner` re-planned every step over its horizon on the
  live forecasters (:class:`~optimizer.forecast.PVForecaster`, :class:`~optimizer.forecast.LoadForecaster`),
  fed only the measured past (in the cheapest price window, later daylight PV at the quantile of the
  surplus-day rule, :mod:`optimizer.surplus`); the first step is followed by the live follow rule.
- ``mpc_perfect``: the same planner fed the actual future as its forecast.
- ``perfect_foresight``: one LP over the whole period with the actual data, then followed step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from controller.dispatch import Target
from controller.modes import Mode
from controller.targets import DemandWindow, follow_plan, mode_target
from optimizer import costs, surplus
from optimizer.costs import Schedule
from optimizer.external_accuracy import ExternalAccuracy
from optimizer.external_forecast import ExternalForecasts
from optimizer.forecast import DAYLIGHT_SHARE, History, LoadForecaster, PVForecaster
from optimizer.peak_target import PeakTarget
from optimizer.plan import SolverInfo
from optimizer.planner import PlanInputs, Planner, PlannerError
from optimizer.service import (
    SiteState,
    TariffSteps,
    peak_risk_kw,
    peak_risk_quantiles,
    plan_inputs,
    recharge_floor_kw,
)
from optimizer.site import BatterySpec, GridSpec, PlannerSettings, PVSpec, SiteInfo
from optimizer.tariff_calendar import HolidayCalendar
from optimizer.timegrid import TimeGrid
from simulations.day_ahead import IssuedForecasts, day_ahead_payloads
from simulations.warmup import Warmup

if TYPE_CHECKING:
    from simulations.scenario import DayAheadForecast

HISTORY_BLOCK_STEPS = 672
"""Steps per block of the history views the MPC strategy hands its forecasters (a week of 15-minute steps)."""

OFFLINE_TIME_LIMIT_S = 600.0
"""Solver time limit of the whole-period LP of perfect foresight (the live limit is meant for one horizon). [s]"""


@dataclass(frozen=True)
class Inputs:
    """The data a study runs on, extended past the period by one planning horizon.

    The first ``steps`` entries are the simulated period; the rest only feed look-ahead (perfect
    forecasts, prices). All arrays are aligned with ``starts`` (UTC) / ``duration_h`` [h].

    Attributes
    ----------
    pv_kw, load_kw : numpy.ndarray  Actual available PV AC power and site load. [kW]
    tariff : TariffSteps  The tariff per step, as the live planner reads it (prices, periods, billing months,
        demand rates, demand windows).
    warmup : Warmup  Measured PV and load before the period (:mod:`simulations.warmup`); only histories read it.
    """

    starts: pd.DatetimeIndex
    duration_h: np.ndarray
    steps: int
    pv_kw: np.ndarray
    load_kw: np.ndarray
    tariff: TariffSteps
    warmup: Warmup = field(default_factory=Warmup)

    @property
    def import_price(self) -> np.ndarray:
        """Gross import price (incl. VAT), what the planner optimises. [currency/kWh]"""
        return self.tariff.import_price

    @property
    def export_price(self) -> np.ndarray:
        """[currency/kWh]"""
        return self.tariff.export_price

    @property
    def period(self) -> np.ndarray:
        """Tariff period name per step."""
        return self.tariff.period

    @property
    def month(self) -> np.ndarray:
        """Billing month per step as consecutive integers. [-]"""
        return self.tariff.month

    @property
    def demand_rate(self) -> np.ndarray:
        """Gross demand charge of the step's billing month. [currency/kW/month]"""
        return self.tariff.demand_rate

    def grid(self, first: int, count: int) -> TimeGrid:
        """The planning grid of ``count`` steps from step ``first`` (a window of :attr:`full_grid`)."""
        return self.full_grid.window(first, count)

    @cached_property
    def full_grid(self) -> TimeGrid:
        """All steps as one grid, validated once."""
        return TimeGrid(self.starts, self.duration_h)


@dataclass
class StepContext:
    """What the controller knows at the start of step ``t`` (updated by the runner, read by strategies).

    Attributes
    ----------
    soc_kwh : float  Measured stored energy. [kWh]
    max_charge_kw, max_discharge_kw : float
        What the BMS allows now, as it reports it (what the live controller reads and plans with). [kW]
    step_charge_kw, step_discharge_kw : float or None
        The same narrowed to what keeps the SOC inside its window over the whole step (the dispatcher's limits at
        the study's resolution), set by the runner's ``_StepWindow.update``; strategies do not read them. [kW]
    month_peak_kw : float  The demand the billing month is billed on so far: its highest window-average import,
        and under a 12-month basis the 11 months' before it (``optimizer.billing.billed_demand_kw``). [kW]
    window_kwh, window_elapsed_h : float  Import so far [kWh] and time passed [h] in the running demand window.
    history_offset : int  Index of the period's first step in the histories (the warm-up's steps).
    pv_history, load_history : History
        Measured PV output (NaN while PV was limited: not a measure of what was available) and
        load at the step starts: ``history_offset`` entries of warm-up (measured before the period), then one per
        step of the period; entries at and after step ``t`` are NaN. Forecasters get views of them (see
        ``Mpc._history_views``) and ignore every entry at or after the first step they forecast, so nothing from
        step ``t`` on reaches them. [kW]
    """

    soc_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    month_peak_kw: float
    pv_history: History
    load_history: History
    window_kwh: float = 0.0
    window_elapsed_h: float = 0.0
    history_offset: int = 0
    step_charge_kw: float | None = None
    step_discharge_kw: float | None = None

    def state(self) -> SiteState:
        """What the planner is told about the site (as live: :class:`optimizer.service.SiteState`)."""
        return SiteState(self.soc_kwh, self.max_charge_kw, self.max_discharge_kw, self.month_peak_kw,
                         self.window_kwh)


class Strategy(Protocol):
    """One way of choosing the dispatcher's target."""

    name: str
    solve_s: float
    replans: int

    def target(self, t: int, now: datetime, ctx: StepContext) -> Target | None:
        """The target for step ``t`` starting at ``now`` (UTC); None = no target (battery idle)."""


class NoBattery:
    """No battery: no target."""

    def __init__(self, name: str):
        self.name, self.solve_s, self.replans = name, 0.0, 0

    def target(self, t: int, now: datetime, ctx: StepContext) -> Target | None:
        return None


class SelfConsumption:
    """The live self-consumption mode: hold the grid at 0 kW with the battery."""

    name = "self_consumption"

    def __init__(self) -> None:
        self.solve_s, self.replans = 0.0, 0
        self._target = mode_target(Mode.SELF_CONSUMPTION, "self_consumption")

    def target(self, t: int, now: datetime, ctx: StepContext) -> Target | None:
        return self._target


class TouRule:
    """The live TOU-rule mode (:func:`controller.targets.tou_target`) on the step's PV and load."""

    name = "tou_rule"

    def __init__(self, data: Inputs, battery: BatterySpec):
        self.data, self.battery = data, battery
        self.solve_s, self.replans = 0.0, 0

    def target(self, t: int, now: datetime, ctx: StepContext) -> Target | None:
        d = self.data
        return mode_target(Mode.TOU_RULE, "tou_rule", period=str(d.period[t]), load_kw=float(d.load_kw[t]),
                           pv_kw=float(d.pv_kw[t]), max_charge_kw=self.battery.max_charge_kw)


class Mpc:
    """The live planner re-planned every step; forecasts from the past only, or the actual future.

    Each re-plan asks the planner for the schedule only (:meth:`~optimizer.planner.Planner.schedule`): the follow
    rule reads the first step's battery and grid power from it, so the priced :class:`~optimizer.plan.Plan` is
    built (:func:`optimizer.costs.make_plan`, identical to what :meth:`~optimizer.planner.Planner.plan` returns)
    only when a solver failure makes the last plan the one followed.

    Parameters
    ----------
    perfect : bool
        Feed the actual PV and load of the horizon instead of the forecasts.
    nominal_load_kw : float | None
        The load forecast before any load has been measured (the first step of the period), e.g. from the
        scenario's load shape; None = 0 kW. Never taken from the data, which would look ahead. [kW]
    site, holidays
        Make the load forecaster as live control does (:meth:`~optimizer.forecast.LoadForecaster.for_site`): the
        site's planned shutdowns and public holidays (``site.holidays`` over ``holidays``, the site tariff's
        calendar: :attr:`optimizer.tariff.SiteTariff.calendar`).
    pv
        The PV as the forecaster knows it (``PVForecaster(site, pv)``, as live), its climatology included
        (``pv.monthly_yield_kwh_per_kwp``; :func:`simulations.runner.forecast_pv`).
    day_ahead : DayAheadForecast | None
        A day-ahead PV forecast from outside (:mod:`simulations.day_ahead`), handed to an
        :class:`~optimizer.external_forecast.ExternalForecasts` as its issue times pass and laid over the built-in
        PV forecast as live (the surplus-day rule stands aside while it is used).
    fallback : Strategy | None
        What is followed after a solver failure once the last plan has expired, as live control's
        ``control.fallback_mode``: :class:`SelfConsumption` (None, the default) or :class:`TouRule`.
    """

    def __init__(self, data: Inputs, site: SiteInfo, pv: PVSpec, battery: BatterySpec, grid: GridSpec,
                 settings: PlannerSettings, tol_kw: float, perfect: bool, holidays: HolidayCalendar,
                 nominal_load_kw: float | None = None, day_ahead: DayAheadForecast | None = None,
                 fallback: Strategy | None = None):
        self.name = "mpc_perfect" if perfect else "mpc"
        self.fallback = SelfConsumption() if fallback is None else fallback
        self.data, self.battery, self.grid_spec, self.settings = data, battery, grid, settings
        self.tol_kw, self.perfect = tol_kw, perfect
        self.horizon = settings.horizon_steps
        self.planner = Planner(battery, grid, settings, self.horizon)
        self.pv_forecaster = PVForecaster(site, pv)
        self.load_forecaster = LoadForecaster.for_site(
            site, holidays, fallback_kw=nominal_load_kw if nominal_load_kw is not None else 0.0)
        step_ns = round(float(data.duration_h[0]) * 3.6e12)
        look_back_ns = max(self.load_forecaster.look_back_ns, self.pv_forecaster.look_back_ns)
        #: Steps of history every forecast may read, counted back from the step it starts at.
        self.look_back_steps = -(-look_back_ns // step_ns)
        self._history: tuple[int, History, History] | None = None  # (block, PV view, load view)
        self.peak_target = PeakTarget(battery, settings.demand_target_days)
        self.external: ExternalForecasts | None = None
        #: The received forecasts' scores, as live (a PV forecaster of its own: the planner's caches stay its own).
        self.scores: ExternalAccuracy | None = None
        self.issued = IssuedForecasts(())
        if day_ahead is not None and not perfect:
            own = PVForecaster(site, pv)
            limit = DAYLIGHT_SHARE * pv.ac_limit_kw
            self.scores = ExternalAccuracy({"pv_kw": own.forecast}, {"pv_kw": lambda g: own.clear_sky_kw(g) > limit},
                                           step_minutes=round(float(data.duration_h[0]) * 60))
            self.external = ExternalForecasts(
                pv_limit_kw=pv.ac_limit_kw, on_accept=self.scores.record,
                band_scale=self.scores.band_scale if settings.external_band_recalibrate else None)
            self.issued = IssuedForecasts(day_ahead_payloads(
                data.starts, data.pv_kw, self.pv_forecaster.clear_sky_kw(data.full_grid), site.timezone,
                issue_hour=day_ahead.issue_hour, daily_error_pct=day_ahead.daily_error_pct, seed=day_ahead.seed,
                ac_limit_kw=pv.ac_limit_kw, step_minutes=round(float(data.duration_h[0]) * 60), band=day_ahead.band,
                band_width=day_ahead.band_width))
        self.valid_hours = settings.plan_valid_hours
        self.solve_s, self.replans = 0.0, 0
        self.failures: list[tuple[str, str]] = []
        #: The built-in forecasters' own point forecasts of the last re-plan: (its step, PV, load) [kW], which the
        #: net-load risk's quantiles are taken around (not computed twice).
        self._points: tuple[int, np.ndarray, np.ndarray] | None = None
        #: The last successful re-plan: (its step, its start (UTC), schedule, inputs, solver info).
        self._last: tuple[int, datetime, Schedule, PlanInputs, SolverInfo] | None = None

    def forecasts(self, t: int, grid: TimeGrid, ctx: StepContext, demand: bool) -> tuple[np.ndarray, np.ndarray]:
        """PV and load over the horizon starting at step ``t`` (``demand``: a demand charge applies now, as for
        :func:`optimizer.surplus.planned_pv`). [kW]"""
        d = self.data
        if self.perfect:
            return d.pv_kw[t:t + self.horizon], d.load_kw[t:t + self.horizon]
        pv_history, load_history = self._history_views(t, ctx)
        builtin = self.pv_forecaster.forecast(grid, pv_history)
        point, origin = builtin, "builtin"
        if self.external is not None:
            point, origin = self._external_pv(grid, builtin, ctx)

        def quantiles(levels: Sequence[float]) -> np.ndarray | None:
            """As live (``WithExternal.pv_quantiles``): the built-in quantiles, or while the external PV is used
            its band's (None without a band: the surplus-day rule stands aside)."""
            def own() -> np.ndarray:
                return self.pv_forecaster.quantiles(grid, pv_history, levels, builtin)
            if origin == "builtin":
                return own()
            return self.external.quantiles("pv_kw", grid, levels, own, _grid_now(grid))

        load = self.load_forecaster.forecast(grid, load_history)
        pv = surplus.planned_pv(self.settings.surplus_rule, point, d.import_price[t:t + self.horizon], quantiles,
                                self.settings.surplus_room_level, load, self.settings.surplus_flat_level, demand)
        self._points = (t, builtin, load)
        return pv, load

    def peak_risk(self, t: int, grid: TimeGrid, ctx: StepContext, pv: np.ndarray, load: np.ndarray) -> np.ndarray:
        """As live (``WithExternal.peak_risk``): the net-load risk at step ``t`` for the forecasts ``pv``/``load``
        [kW], from the external forecasts' bands where they have one, otherwise from the built-in forecasters' own
        errors; a method so that a diagnostic can size it for forecasts it replaces
        (benchmarks/bench_two_part_oracles.py). [kW]"""
        history = self._history_views(t, ctx)
        points = self._points[1:] if self._points is not None and self._points[0] == t else None
        risk = None if self.external is None else self.external.peak_risk_kw(
            grid, pv, load, _grid_now(grid),
            lambda: peak_risk_quantiles(self.pv_forecaster, self.load_forecaster, grid, *history,
                                        *(points or (None, None))))
        return peak_risk_kw(self.pv_forecaster, self.load_forecaster, grid, *history, pv, load, points) \
            if risk is None else risk

    def _external_pv(self, grid: TimeGrid, builtin: np.ndarray, ctx: StepContext) -> tuple[np.ndarray, str]:
        """The PV forecast with the day-ahead forecasts issued so far laid over it, and its origin
        (:meth:`~optimizer.external_forecast.ExternalForecasts.blend`); as live, the forecasts received are scored
        on the PV measured so far (their band recalibrated on that record). [kW]"""
        assert self.external is not None and self.scores is not None
        now_ns = int(grid.starts_ns[0])
        now = _grid_now(grid)
        for payload in self.issued.due(now_ns):
            result = self.external.submit(payload, now)
            if not result.accepted:
                raise ValueError(f"day-ahead forecast issued {payload['issued_at']} refused: {result.error}")
        if self.scores.due(now_ns):
            self.scores.update(now_ns, {"pv_kw": (ctx.pv_history.ns, ctx.pv_history.values)})
        return self.external.blend("pv_kw", grid, builtin, now)

    def _history_views(self, t: int, ctx: StepContext) -> tuple[History, History]:
        """PV and load history for step ``t``: views (no copy) of the context's arrays over the block of
        :data:`HISTORY_BLOCK_STEPS` steps holding ``t`` plus :attr:`look_back_steps` before it.

        The forecasters ignore entries at or after the grid start and re-read the values on every call, so a view
        made at the block's first step still shows every later measurement and never a future one. The views
        keep what the forecasters scan bounded (the whole period would make every read scan the period so far).
        """
        block = t // HISTORY_BLOCK_STEPS
        if self._history is None or self._history[0] != block:
            w = ctx.history_offset  # the histories start with the warm-up
            lo = max(0, w + block * HISTORY_BLOCK_STEPS - self.look_back_steps)
            hi = w + (block + 1) * HISTORY_BLOCK_STEPS
            self._history = (block, *(History(h.ns[lo:hi], h.values[lo:hi])
                                      for h in (ctx.pv_history, ctx.load_history)))
        return self._history[1], self._history[2]

    def target(self, t: int, now: datetime, ctx: StepContext) -> Target | None:
        d, h = self.data, self.horizon
        grid = d.grid(t, h)
        tariff = d.tariff.steps(t, h)
        demand = tariff.demand_rate[0] > 0
        pv, load = self.forecasts(t, grid, ctx, demand)
        risk = None
        if demand and self.settings.uses_peak_risk:
            risk = np.zeros(h) if self.perfect else self.peak_risk(t, grid, ctx, pv, load)
        target, state = 0.0, ctx.state()
        if demand and self.settings.demand_target_days > 0:
            target = self.peak_target(*self._history_views(t, ctx), int(grid.starts_ns[0]),
                                      float(grid.duration_h[0]), tariff.window_h)
        target = max(target, self.recharge_floor(t, grid, tariff, pv, load, risk, state))
        inputs = plan_inputs(grid, tariff, pv, load, state, risk, self.settings.risk_margin(tariff.peak_billed_months),
                             target)
        try:
            schedule, info = self.planner.schedule(inputs)
        except PlannerError as exc:
            return self._fallback(t, now, ctx, exc)
        self.solve_s += info.solve_ms / 1e3
        self.replans += 1
        self._last = (t, now, schedule, inputs, info)
        return follow_plan(schedule, 0, self.grid_spec, same_month=tariff.month == 0 if demand else None,
                           month_peak_kw=ctx.month_peak_kw, tol_kw=self.tol_kw,
                           demand_kw=self.planned_demand(schedule, inputs) if demand else None,
                           window=_window(d, ctx) if demand else None, windows=tariff.window,
                           duration_h=grid.duration_h, max_discharge_kw=ctx.max_discharge_kw)

    def recharge_floor(self, t: int, grid: TimeGrid, tariff: TariffSteps, pv: np.ndarray, load: np.ndarray,
                       risk: np.ndarray | None, state: SiteState) -> float:
        """The re-plan's recharge floor at step ``t`` (:func:`optimizer.service.recharge_floor_kw`, as live), from
        the forecasts ``pv``/``load`` [kW] and the net-load risk ``risk`` [kW]; a method so that a diagnostic can
        put the actual rest of the day in its place (benchmarks/bench_two_part_oracles.py). [kW]"""
        return recharge_floor_kw(self.peak_target, self.settings, grid, tariff, pv, load, risk, state)

    def planned_demand(self, schedule: Schedule, inputs: PlanInputs) -> np.ndarray:
        """The plan's demand measure per step, whose highest value in the month the follow rule's grid ceiling
        defends (:func:`optimizer.costs.window_average_import_kw`, as live). [kW]"""
        return costs.window_average_import_kw(schedule.import_kw, inputs)

    def _fallback(self, t: int, now: datetime, ctx: StepContext, exc: PlannerError) -> Target:
        """As live: keep following the last valid plan until it expires, then the fallback mode's target."""
        self.failures.append((now.isoformat(), f"{type(exc).__name__}: {exc}"))
        if self._last is not None:
            first, created, schedule, inputs, info = self._last
            plan = costs.make_plan(schedule, inputs, self.battery, self.grid_spec, self.settings, "optimizer", info,
                                   created)
            i = t - first
            if i < len(plan) and not plan.is_expired(now, self.valid_hours):
                demand = self.data.demand_rate[t] > 0
                months = self.data.month[first:first + len(plan)] == self.data.month[t]
                return follow_plan(plan, i, self.grid_spec, same_month=months if demand else None,
                                   month_peak_kw=ctx.month_peak_kw, tol_kw=self.tol_kw, demand_kw=plan.demand_kw,
                                   window=_window(self.data, ctx) if demand else None,
                                   windows=self.data.tariff.window[first:first + len(plan)],
                                   duration_h=plan.duration_h, max_discharge_kw=ctx.max_discharge_kw)
        return self.fallback.target(t, now, ctx)


class PerfectForesight:
    """One LP over the whole period on the actual data (a year in one LP), followed step by step."""

    name = "perfect_foresight"

    def __init__(self, data: Inputs, battery: BatterySpec, grid: GridSpec, settings: PlannerSettings,
                 tol_kw: float, soc0_kwh: float):
        self.data, self.grid_spec, self.tol_kw = data, grid, tol_kw
        n = data.steps
        tariff = data.tariff.steps(0, n)
        months = tariff.month
        self.demand = data.demand_rate[:n] > 0
        inputs = plan_inputs(data.grid(0, n), tariff, data.pv_kw[:n], data.load_kw[:n], SiteState(soc0_kwh),
                             bill_after_horizon=False)  # the study's bill ends with the period
        if np.any(data.demand_rate[:n] != data.demand_rate[0]):
            raise ValueError("perfect foresight needs one demand-charge rate over the period")
        offline = settings.model_copy(update={"time_limit_s": OFFLINE_TIME_LIMIT_S, "block_minutes": 0})
        self.plan = Planner(battery, grid, offline, n).plan(inputs)
        self.solve_s, self.replans = self.plan.solver.solve_ms / 1e3, 1
        edges = np.flatnonzero(np.diff(months)) + 1
        #: The steps of each billing month, as slices (the follow rule reads the plan's peak over them).
        self.months = [slice(int(a), int(b)) for a, b in zip(np.r_[0, edges], np.r_[edges, n], strict=True)]
        self.month = months

    def target(self, t: int, now: datetime, ctx: StepContext) -> Target | None:
        same = self.months[self.month[t]] if self.demand[t] else None
        return follow_plan(self.plan, t, self.grid_spec, same_month=same, month_peak_kw=ctx.month_peak_kw,
                           tol_kw=self.tol_kw, demand_kw=self.plan.demand_kw,
                           window=_window(self.data, ctx) if self.demand[t] else None,
                           windows=self.data.tariff.window, duration_h=self.data.duration_h)


def _window(data: Inputs, ctx: StepContext) -> DemandWindow:
    """The demand window running at the step's start, as the live demand tracker reports it."""
    return DemandWindow(data.tariff.window_h, ctx.window_elapsed_h, ctx.window_kwh)


def _grid_now(grid: TimeGrid) -> datetime:
    """The start of ``grid``'s first step (UTC, aware): the study's clock when a plan on ``grid`` is made."""
    return datetime.fromtimestamp(int(grid.starts_ns[0]) / 1e9, UTC)
