"""Forecast accuracy by lead time from measured history: MAE, RMSE and skill against persistence.

The point forecaster is re-run at past issue times whose whole horizon is already measured (hindcasts: nothing
at or after an issue time reaches its forecast, as the forecasters ignore later history), and each forecast is
compared with what was then measured and with *same-time-yesterday persistence* (the value measured 24 h before
each step). Per lead-time bucket:

- ``mae_kw``, ``rmse_kw``: mean absolute and root-mean-square error of the forecast [kW];
- ``persistence_mae_kw``, ``persistence_rmse_kw``: the same for persistence [kW];
- ``skill``: ``1 − MAE / MAE_persistence`` (> 0: the forecast beats persistence; 0.05 = 5 % smaller error);
- ``n``: the number of steps compared (steps where the forecast, the measurement and the persistence value all
  exist; for PV only daylight steps, where a mask is given).

Used live (the controller's state message, key ``forecast_accuracy``) and per study (simulations/report.py).
Method and figures: docs/data.md ("Forecast accuracy").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from optimizer.timegrid import TimeGrid, regular_grid

NS_PER_H = 3_600_000_000_000

#: Upper edges of the lead-time buckets. [h]
LEAD_EDGES_H: tuple[float, ...] = (1.0, 6.0, 12.0, 24.0)


def _bucket_names(edges: Sequence[float]) -> list[str]:
    lows = [0.0, *edges[:-1]]
    return [f"{lo:g}-{hi:g} h" for lo, hi in zip(lows, edges, strict=True)]


def accuracy(point: Callable[[TimeGrid, object], np.ndarray], history: object, ns: np.ndarray, values: np.ndarray,
             until_ns: int, *, days: float = 14.0, issue_every_hours: float = 6.0, steps: int = 96,
             step_minutes: int = 15, lead_edges_h: Sequence[float] = LEAD_EDGES_H,
             mask: Callable[[TimeGrid], np.ndarray] | None = None) -> dict:
    """Accuracy of ``point`` by lead time over the forecasts whose horizon ended by ``until_ns``.

    Parameters
    ----------
    point : callable
        ``point(grid, history) -> ndarray`` [kW], e.g. ``PVForecaster.forecast``.
    history : object
        The history as ``point`` takes it.
    ns, values : numpy.ndarray
        The same history as arrays: interval starts [UTC epoch ns, increasing, regular steps] and values [kW]
        (NaN = missing).
    until_ns : int
        Only forecasts whose whole horizon lies before this instant are scored (e.g. now). [UTC epoch ns]
    days : float
        Issue times of the last ``days`` days before the last complete horizon are scored. [d]
    issue_every_hours : float
        Issue times on a UTC lattice of this period. [h]
    steps, step_minutes : int
        Horizon of each forecast: steps of ``step_minutes`` minutes.
    lead_edges_h : sequence of float
        Upper edges of the lead buckets; leads at or beyond the last are not scored. [h]
    mask : callable, optional
        ``mask(grid) -> bool ndarray``: the steps to score (e.g. daylight for PV). None: all.

    Returns
    -------
    dict
        ``{"window_days", "issues", "by_lead": [{"lead", "n", "mae_kw", "rmse_kw", "persistence_mae_kw",
        "persistence_rmse_kw", "skill"}, …]}``; a bucket without data has ``n`` 0 and None for the figures.
    """
    step_ns = step_minutes * 60 * 1_000_000_000
    every_ns = int(issue_every_hours * NS_PER_H)
    last = (until_ns - steps * step_ns) // every_ns * every_ns
    first = last - int(days * 24 * NS_PER_H) + every_ns
    edges_ns = np.asarray(lead_edges_h, dtype=float) * NS_PER_H
    ns = np.asarray(ns, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    if len(ns):
        first = max(first, -(-(int(ns[0]) + 24 * NS_PER_H) // every_ns) * every_ns)  # persistence needs a day
    leads = np.arange(steps, dtype=np.int64) * step_ns
    bucket = np.searchsorted(edges_ns, leads, side="right")  # == len(edges) beyond the last edge
    nb = len(edges_ns)
    sums = np.zeros((4, nb))  # |e|, e², |e_persistence|, e_persistence²
    counts = np.zeros(nb)
    issues = 0
    for s in range(first, last + 1, every_ns) if len(ns) and last >= first else ():
        grid = regular_grid(pd.Timestamp(s, unit="ns", tz="UTC"), steps, step_minutes)
        starts = grid.starts_ns
        measured = _at(ns, values, starts)
        before = _at(ns, values, starts - 24 * NS_PER_H)
        forecast = np.asarray(point(grid, history), dtype=float)
        ok = np.isfinite(measured) & np.isfinite(before) & np.isfinite(forecast) & (bucket < nb)
        if mask is not None:
            ok &= np.asarray(mask(grid), dtype=bool)
        if not ok.any():
            continue
        issues += 1
        e, p, b = forecast[ok] - measured[ok], before[ok] - measured[ok], bucket[ok]
        for row, x in enumerate((np.abs(e), e * e, np.abs(p), p * p)):
            sums[row] += np.bincount(b, weights=x, minlength=nb)
        counts += np.bincount(b, minlength=nb)
    by_lead = []
    for i, name in enumerate(_bucket_names(lead_edges_h)):
        n = int(counts[i])
        if n == 0:
            by_lead.append({"lead": name, "n": 0, "mae_kw": None, "rmse_kw": None, "persistence_mae_kw": None,
                            "persistence_rmse_kw": None, "skill": None})
            continue
        mae, rmse = sums[0, i] / n, float(np.sqrt(sums[1, i] / n))
        p_mae, p_rmse = sums[2, i] / n, float(np.sqrt(sums[3, i] / n))
        by_lead.append({"lead": name, "n": n, "mae_kw": round(float(mae), 3), "rmse_kw": round(rmse, 3),
                        "persistence_mae_kw": round(float(p_mae), 3), "persistence_rmse_kw": round(p_rmse, 3),
                        "skill": round(1.0 - mae / p_mae, 4) if p_mae > 0 else None})
    return {"window_days": days, "issues": issues, "by_lead": by_lead}


def _at(ns: np.ndarray, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Values at exactly ``starts`` (NaN where the history has no entry). [kW]"""
    if not len(ns):
        return np.full(len(starts), np.nan)
    at = np.clip(np.searchsorted(ns, starts), 0, len(ns) - 1)
    return np.where(ns[at] == starts, values[at], np.nan)
