"""A Plan for a site at a time: tariff prices + PV/load forecasts + the planner.

:func:`plan_inputs` is the one way from (tariff, forecasts, site state) to :class:`PlanInputs`: ``ems plan``
(:func:`plan_for_site`), the controller's planning task (``controller.planning.PlanKeeper``) and the offline
strategies (``simulations.strategies``) all call it, on the tariff's values per step (:class:`TariffSteps`).
For ``ems plan`` the horizon starts at the step containing ``start`` (``planner.step_minutes``) and runs
``planner.horizon_hours``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from optimizer.forecast import LoadForecaster, PVForecaster
from optimizer.peak_target import PeakTarget
from optimizer.plan import Plan
from optimizer.planner import PlanInputs, Planner
from optimizer.site import PlannerSettings, PlanningSite
from optimizer.tariff import SiteTariff, Tariff
from optimizer.tariff_calendar import window_starts
from optimizer.timegrid import TimeGrid, floor_to_step, regular_grid


@dataclass(frozen=True)
class TariffSteps:
    """What the planner needs of the tariff, per step (all arrays one entry per step).

    Attributes
    ----------
    import_price, export_price : numpy.ndarray
        Gross import price (incl. VAT) and export price. [currency/kWh]
    period : numpy.ndarray
        Tariff period name.
    month : numpy.ndarray of int
        Billing month as consecutive integers (0 at the first step). [-]
    demand_rate : numpy.ndarray
        Demand charge of the step's billing month, in force at its first instant, with VAT (0 = none).
        [currency/kW/month]
    window : numpy.ndarray of int
        The demand window each step starts in, as consecutive integers (0 at the first step). [-]
    window_h : float
        The demand measure's window (0 without a demand charge). [h]
    peak_billed_months : int
        How many billing months a month's peak is billed in under the demand charge
        (:attr:`~optimizer.tariff.DemandCharge.months_billed`; 1 without one). [-]
    """

    import_price: np.ndarray
    export_price: np.ndarray
    period: np.ndarray
    month: np.ndarray
    demand_rate: np.ndarray
    window: np.ndarray
    window_h: float
    peak_billed_months: int = 1

    @classmethod
    def of(cls, tariff: SiteTariff, starts: pd.DatetimeIndex) -> TariffSteps:
        """The tariff's values at the steps starting at ``starts`` (UTC)."""
        loc = tariff.local(starts)
        prices = tariff.prices_local(loc)
        months, month = np.unique(loc.month, return_inverse=True)
        rates, window_minutes, billed_months = np.zeros(len(months)), 0, 0
        for i, m in enumerate(months):
            label = str(np.datetime_as_string(m, unit="M"))
            charge = tariff.billed_demand_charge(label)
            if charge is not None:
                rates[i] = tariff.demand_rate_gross(label)
                window_minutes = window_minutes or charge.window_minutes
                billed_months = billed_months or charge.months_billed
        window = window_starts(loc, window_minutes) if window_minutes else np.arange(len(starts))
        return cls(import_price=prices.import_price_gross, export_price=prices.export_price,
                   period=np.asarray(prices.period), month=month.astype(int), demand_rate=rates[month],
                   window=pd.factorize(window)[0], window_h=window_minutes / 60.0,
                   peak_billed_months=billed_months or 1)

    def steps(self, first: int, count: int) -> TariffSteps:
        """Steps ``first … first + count − 1`` (views), months and windows counted from the first of them."""
        sl = slice(first, first + count)
        return TariffSteps(self.import_price[sl], self.export_price[sl], self.period[sl],
                           self.month[sl] - self.month[first], self.demand_rate[sl],
                           self.window[sl] - self.window[first], self.window_h, self.peak_billed_months)


@dataclass(frozen=True)
class SiteState:
    """What the planner needs to know about the site at planning time.

    Attributes
    ----------
    soc_kwh : float
        Measured stored energy. [kWh]
    bms_max_charge_kw, bms_max_discharge_kw : float | None
        What the BMS allows now (None = PCS limits). [kW]
    month_peak_kw : float
        The demand the billing month is billed on so far: its highest window-average import so far, and under
        a 12-month basis the highest of that and the 11 months before it
        (:func:`optimizer.billing.billed_demand_kw`). [kW]
    window_import_kwh : float
        Import measured so far in the demand window running at the plan's start. [kWh]
    fixed_battery_kw : float | None
        First-step battery power already committed (+ discharge). [kW]
    soh_pct : float | None
        The battery's measured state of health (None = plan on the nameplate): the live planner plans the energy
        it leaves (:meth:`optimizer.site.BatteryUnit.at_health`), and ``soc_kwh`` is a share of that energy. [%]
    in_use_share : float
        The share of that energy in battery units that take setpoints: below 1 while a unit of an asset group is out
        of it (its energy cannot be dispatched); the live planner plans that much of the battery, and ``soc_kwh`` is
        what those units hold (:meth:`controller.groups.BatteryGroup.in_use_energy`). [-]
    """

    soc_kwh: float
    bms_max_charge_kw: float | None = None
    bms_max_discharge_kw: float | None = None
    month_peak_kw: float = 0.0
    window_import_kwh: float = 0.0
    fixed_battery_kw: float | None = None
    soh_pct: float | None = None
    in_use_share: float = 1.0


PEAK_RISK_LEVEL = 0.9
"""Upper quantile of the net load the demand reserve is sized for: load P90 above its forecast, PV P10 below. [-]"""


def peak_risk_quantiles(pv_forecaster: PVForecaster, load_forecaster: LoadForecaster, grid: TimeGrid,
                        pv_history: object, load_history: object, pv_point: np.ndarray | None = None,
                        load_point: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PV's P10 and the load's P90 per step (:data:`PEAK_RISK_LEVEL`) from each forecaster's own recent errors
    (``quantiles()``). ``pv_point``/``load_point``: the forecasters' own point forecasts of the same grid and
    histories when the caller has them already (not computed again). [kW]"""
    pv_lo = pv_forecaster.quantiles(grid, pv_history, levels=(1.0 - PEAK_RISK_LEVEL,), point=pv_point)[0]
    load_hi = load_forecaster.quantiles(grid, load_history, levels=(PEAK_RISK_LEVEL,), point=load_point)[0]
    return pv_lo, load_hi


def net_load_risk_kw(pv_kw: np.ndarray, pv_p10: np.ndarray, load_kw: np.ndarray, load_p90: np.ndarray) -> np.ndarray:
    """How far above the forecast the net load (load − PV) may come per step: the load's P90 above its forecast
    and PV's P10 below it, combined as independent errors (root of the sum of squares). [kW]"""
    return np.hypot(np.maximum(load_p90 - load_kw, 0.0), np.maximum(pv_kw - pv_p10, 0.0))


def peak_risk_kw(pv_forecaster: PVForecaster, load_forecaster: LoadForecaster, grid: TimeGrid,
                 pv_history: object, load_history: object, pv_kw: np.ndarray, load_kw: np.ndarray,
                 points: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """How far above the forecast the net load (load − PV) may come per step [kW]: :func:`net_load_risk_kw` of
    :func:`peak_risk_quantiles`, from the forecasters' own recent errors. 0 until the forecasters have errors to
    learn from. ``points``: the forecasters' own (PV, load) point forecasts when the caller has them already."""
    pv_lo, load_hi = peak_risk_quantiles(pv_forecaster, load_forecaster, grid, pv_history, load_history,
                                         *(points or (None, None)))
    return net_load_risk_kw(pv_kw, pv_lo, load_kw, load_hi)


def recharge_floor_kw(target: PeakTarget, settings: PlannerSettings, grid: TimeGrid, tariff: TariffSteps,
                      pv_kw: np.ndarray, load_kw: np.ndarray, risk_kw: np.ndarray | None, state: SiteState) -> float:
    """Under a demand charge (``planner.demand_floor_until_recharge``), the lowest level the battery's energy now
    could hold on the stress net load — ``load − PV + demand_floor_stress_level × risk`` — until the horizon's next
    cheapest-price step (:meth:`PeakTarget.until_recharge_kw`); the live plan keeper and the offline MPC plan each
    month's peak at no less than it (docs/planner.md "Demand charge"). 0 otherwise. [kW]"""
    if tariff.demand_rate[0] <= 0 or not settings.demand_floor_until_recharge:
        return 0.0
    net = load_kw - pv_kw
    if risk_kw is not None:
        net = net + settings.demand_floor_stress_level * risk_kw
    power = target.power_kw if state.bms_max_discharge_kw is None else state.bms_max_discharge_kw
    return target.until_recharge_kw(net, grid.duration_h, tariff.import_price, tariff.window, state.soc_kwh, power)


def plan_inputs(grid: TimeGrid, tariff: TariffSteps, pv_kw: np.ndarray, load_kw: np.ndarray, state: SiteState,
                peak_risk_kw: np.ndarray | None = None, risk_margin: float = 0.0, peak_target_kw: float = 0.0,
                bill_after_horizon: bool = True, **limits) -> PlanInputs:
    """PlanInputs on ``grid`` from the tariff's values on its steps, the PV and load forecasts [kW] and the site's
    state; the demand charge in force at the first step applies to every billing month in the horizon, billed on
    the tariff's window measure (:attr:`TariffSteps.window_h`). ``peak_risk_kw``: see
    :class:`~optimizer.planner.PlanInputs` (used only under a demand charge); ``risk_margin`` of it is added to the
    load forecast there (``planner.demand_risk_margin``). ``peak_target_kw``: under a demand charge, the peak each
    billing month in the horizon is planned to reach anyway (:class:`optimizer.peak_target.PeakTarget`; the
    month-to-date peak where that is higher); 0 = the month-to-date peak only. Under a 12-month demand basis the
    peak carries across the horizon's billing months and is also charged for the months after the horizon it is
    billed in, unless ``bill_after_horizon`` is False (:class:`PlanInputs`). ``limits`` pass through to
    :class:`PlanInputs` (``import_cap_kw``, ``export_cap_kw``)."""
    rate = float(tariff.demand_rate[0])
    demand = rate > 0
    if demand and peak_risk_kw is not None and risk_margin > 0:
        load_kw = load_kw + risk_margin * peak_risk_kw
    month_peak: float | np.ndarray = state.month_peak_kw
    if demand and peak_target_kw > 0:
        month_peak = np.full(int(tariff.month[-1]) + 1, float(peak_target_kw))
        month_peak[0] = max(month_peak[0], state.month_peak_kw)
    return PlanInputs(
        grid=grid, pv_kw=pv_kw, load_kw=load_kw, import_price=tariff.import_price, export_price=tariff.export_price,
        soc0_kwh=state.soc_kwh, month_peak_kw=month_peak, demand_charge_per_kw=rate,
        peak_billed_months=tariff.peak_billed_months if demand else 1, bill_after_horizon=bill_after_horizon,
        billing_month=tariff.month if demand else None, max_charge_kw=state.bms_max_charge_kw,
        max_discharge_kw=state.bms_max_discharge_kw, fixed_battery_kw=state.fixed_battery_kw, period=tariff.period,
        demand_window_h=tariff.window_h if demand else 0.0, demand_window=tariff.window if demand else None,
        window_import_kwh=state.window_import_kwh if demand else 0.0,
        peak_risk_kw=peak_risk_kw if demand else None, **limits)


def site_grid(site: PlanningSite, start: datetime) -> TimeGrid:
    """The planning grid of ``site`` starting at the step that contains ``start`` (aware)."""
    settings = site.planner
    return regular_grid(floor_to_step(start, settings.step_minutes), settings.horizon_steps, settings.step_minutes)


def plan_for_site(site: PlanningSite, tariff: Tariff | SiteTariff, start: datetime, soc0_kwh: float,
                  pv_history: pd.Series | None = None, load_history: pd.Series | None = None, *,
                  pv_kw: np.ndarray | None = None, load_kw: np.ndarray | None = None,
                  import_price: np.ndarray | None = None, export_price: np.ndarray | None = None,
                  month_peak_kw: float = 0.0, planner: Planner | None = None,
                  pv_forecaster: PVForecaster | None = None, load_forecaster: LoadForecaster | None = None,
                  created_at: datetime | None = None, **limits) -> Plan:
    """Plan ``site`` from ``start`` (aware).

    PV and load are the given arrays (one per step), else forecasts from the histories
    (:class:`PVForecaster`, :class:`LoadForecaster`; a load forecast without history raises
    :class:`optimizer.forecast.ForecastError`). Pass a long-lived ``planner`` (and forecasters) when
    planning repeatedly: the planner's LP is built once. Errors: :class:`optimizer.planner.PlannerError`.
    """
    grid = site_grid(site, start)
    if pv_kw is None:
        pv_kw = (pv_forecaster or PVForecaster(site.site, site.pv)).forecast(grid, pv_history)
    bound = tariff if isinstance(tariff, SiteTariff) else tariff.bind(site.site.timezone, site.tariff.extra_holidays)
    if load_kw is None:
        forecaster = load_forecaster or LoadForecaster.for_site(site.site, bound.calendar)
        load_kw = forecaster.forecast(grid, load_history)
    steps = TariffSteps.of(bound, grid.starts)
    if import_price is not None or export_price is not None:
        steps = TariffSteps(
            import_price=steps.import_price if import_price is None else np.asarray(import_price, dtype=float),
            export_price=steps.export_price if export_price is None else np.asarray(export_price, dtype=float),
            period=steps.period, month=steps.month, demand_rate=steps.demand_rate, window=steps.window,
            window_h=steps.window_h, peak_billed_months=steps.peak_billed_months)
    state = SiteState(soc0_kwh, limits.pop("max_charge_kw", None), limits.pop("max_discharge_kw", None),
                      month_peak_kw, fixed_battery_kw=limits.pop("fixed_battery_kw", None))
    inputs = plan_inputs(grid, steps, np.asarray(pv_kw, dtype=float), np.asarray(load_kw, dtype=float), state,
                         **limits)
    planner = planner or Planner(site.battery, site.grid, site.planner, len(grid))
    return planner.plan(inputs, created_at=created_at)
