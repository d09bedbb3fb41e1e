"""Forecast accuracy of a study: the MPC's own forecasters scored on the study's data by lead time.

The forecasters are those the ``mpc`` strategy runs (same site, PV, calendar and climatology); they are re-run
every 6 hours over the whole period on the data measured before each issue time and compared with the data and
with same-time-yesterday persistence (:func:`optimizer.forecast_accuracy.accuracy`; PV in daylight steps only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimizer.forecast import DAYLIGHT_SHARE, History
from optimizer.forecast_accuracy import accuracy

if TYPE_CHECKING:
    from optimizer.tariff import SiteTariff
    from simulations.scenario import Scenario
    from simulations.strategies import Inputs


def study_accuracy(scenario: Scenario, data: Inputs, tariff: SiteTariff) -> dict:
    """``{"pv": …, "load": …}``, each as :func:`~optimizer.forecast_accuracy.accuracy` returns it, over the
    period (forecasts issued every 6 h whose 24 h horizon lies inside it)."""
    from simulations.runner import make_strategy  # the runner imports this module

    mpc = make_strategy("mpc", scenario, data, tariff)
    n = data.steps
    ns = data.starts[:n].as_unit("ns").asi8.copy()
    step_minutes = round(float(data.duration_h[0]) * 60)
    days = n * step_minutes / 1440.0
    until = int(ns[-1]) + step_minutes * 60_000_000_000
    limit = DAYLIGHT_SHARE * scenario.pv.ac_limit_kw
    pv = mpc.pv_forecaster

    def daylight(grid):
        return pv.clear_sky_kw(grid) > limit

    common = {"until_ns": until, "days": days, "steps": scenario.planner.horizon_steps, "step_minutes": step_minutes}
    pv_history, load_history = History(ns, data.pv_kw[:n].copy()), History(ns, data.load_kw[:n].copy())
    return {"pv": accuracy(pv.forecast, pv_history, pv_history.ns, pv_history.values, mask=daylight, **common),
            "load": accuracy(mpc.load_forecaster.forecast, load_history, load_history.ns, load_history.values,
                             **common)}
