"""A Plan for a site at a time: tariff prices + PV/load forecasts + the planner.

Used by ``ems plan`` and by the controller's planning task. The horizon starts at the step
containing ``start`` (``planner.step_minutes``) and runs ``planner.horizon_hours``.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from optimizer.forecast import LoadForecaster, PVForecaster
from optimizer.plan import Plan
from optimizer.planner import PlanInputs, Planner
from optimizer.site import PlanningSite
from optimizer.tariff import SiteTariff, Tariff
from optimizer.timegrid import TimeGrid, floor_to_step, regular_grid


def site_grid(site: PlanningSite, start: datetime) -> TimeGrid:
    """The planning grid of ``site`` starting at the step that contains ``start`` (aware)."""
    settings = site.planner
    return regular_grid(floor_to_step(start, settings.step_minutes), settings.horizon_steps, settings.step_minutes)


def site_inputs(site: PlanningSite, tariff: Tariff | SiteTariff, grid: TimeGrid, soc0_kwh: float,
                pv_kw: np.ndarray, load_kw: np.ndarray, month_peak_kw: float = 0.0,
                import_price: np.ndarray | None = None, export_price: np.ndarray | None = None,
                **limits) -> PlanInputs:
    """PlanInputs for ``site`` on ``grid``: prices, periods, billing months and demand charge from the tariff.

    ``import_price``/``export_price`` override the tariff's (gross) prices; ``limits`` pass through
    to :class:`PlanInputs` (``max_charge_kw``, ``max_discharge_kw``, ``import_cap_kw``,
    ``export_cap_kw``, ``fixed_battery_kw``). The demand charge in force at the first step, with VAT
    like the gross import price, applies to every billing month in the horizon, on per-step average
    import (conservative against the tariff's 30-minute window: a 30-min average never exceeds the
    larger of its two quarter hours). ``month_peak_kw`` is the peak already billed for the first
    month (for a ``rolling_12_month_max`` basis: the rolling maximum).
    """
    bound = tariff if isinstance(tariff, SiteTariff) else tariff.bind(site.site.timezone, site.tariff.extra_holidays)
    prices = bound.prices(grid.starts)
    first = grid.starts[0].to_pydatetime()
    charge = bound.demand_charge(first)
    months = pd.factorize(bound.billing_months(grid.starts))[0]
    return PlanInputs(
        grid=grid, pv_kw=np.asarray(pv_kw, dtype=float), load_kw=np.asarray(load_kw, dtype=float),
        import_price=prices.import_price_gross if import_price is None else np.asarray(import_price, dtype=float),
        export_price=prices.export_price if export_price is None else np.asarray(export_price, dtype=float),
        soc0_kwh=soc0_kwh, month_peak_kw=month_peak_kw,
        demand_charge_per_kw=0.0 if charge is None else charge.rate_per_kw_month * (1.0 + bound.vat_rate(first)),
        billing_month=months, period=[str(p) for p in prices.period], **limits)


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
    if load_kw is None:
        forecaster = load_forecaster or LoadForecaster(site.site.timezone, extra_holidays=site.tariff.extra_holidays)
        load_kw = forecaster.forecast(grid, load_history)
    inputs = site_inputs(site, tariff, grid, soc0_kwh, pv_kw, load_kw, month_peak_kw, import_price, export_price,
                         **limits)
    planner = planner or Planner(site.battery, site.grid, site.planner, len(grid))
    return planner.plan(inputs, created_at=created_at)
