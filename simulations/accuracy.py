"""Forecast accuracy of a study: the MPC's own forecasters scored on the study's data by lead time.

The forecasters are those the ``mpc`` strategy runs (same site, PV, calendar and climatology); they are re-run
every 6 hours over the whole period on the data measured before each issue time and compared with the data and
with same-time-yesterday persistence (:func:`optimizer.forecast_accuracy.accuracy`; PV in daylight steps only).
A study with a day-ahead PV forecast from outside also scores the forecasts its MPC received, as the live controller
scores those it receives (:mod:`optimizer.external_accuracy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from optimizer.external_accuracy import ExternalAccuracy
from optimizer.external_forecast import ExternalForecasts
from optimizer.forecast import DAYLIGHT_SHARE, History
from optimizer.forecast_accuracy import accuracy

if TYPE_CHECKING:
    from optimizer.tariff import SiteTariff
    from simulations.scenario import Scenario
    from simulations.strategies import Inputs


def study_accuracy(scenario: Scenario, data: Inputs, tariff: SiteTariff) -> dict:
    """``{"pv": …, "load": …}``, each as :func:`~optimizer.forecast_accuracy.accuracy` returns it, over the
    period (forecasts issued every 6 h whose 24 h horizon lies inside it); with a day-ahead PV forecast
    (``data.pv_forecast``) also ``"external"``, its scores as :meth:`~optimizer.external_accuracy.ExternalAccuracy.
    figures` gives them."""
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
    out = {"pv": accuracy(pv.forecast, pv_history, pv_history.ns, pv_history.values, mask=daylight, **common),
           "load": accuracy(mpc.load_forecaster.forecast, load_history, load_history.ns, load_history.values,
                            **common)}
    if mpc.issued.payloads:
        out["external"] = external_accuracy(mpc.issued.payloads, pv.forecast, daylight, scenario.pv.ac_limit_kw,
                                            (pv_history.ns, pv_history.values), until, days=days,
                                            step_minutes=step_minutes)
    return out


def external_accuracy(payloads: Sequence[dict], builtin_pv: Callable, daylight: Callable, pv_limit_kw: float,
                      pv_measured: tuple[np.ndarray, np.ndarray], until_ns: int, *, days: float,
                      step_minutes: int) -> dict:
    """The day-ahead PV forecasts a study's MPC received, scored as live (:class:`~optimizer.external_accuracy.
    ExternalAccuracy`): each payload goes through the same intake at its issue time and is compared with the
    study's PV and with the built-in PV forecaster's forecast made at the same instant."""
    scores = ExternalAccuracy({"pv_kw": builtin_pv}, {"pv_kw": daylight}, days=days, step_minutes=step_minutes)
    intake = ExternalForecasts(pv_limit_kw=pv_limit_kw, on_accept=scores.record)
    for payload in payloads:
        result = intake.submit(payload, pd.Timestamp(payload["issued_at"]).to_pydatetime())
        if not result.accepted:
            raise ValueError(f"day-ahead forecast issued {payload['issued_at']} refused: {result.error}")
    return scores.update(until_ns, {"pv_kw": pv_measured}, limit=None, final=True)
