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

from optimizer.forecast import History
from optimizer.timegrid import TimeGrid, regular_grid_ns

NS_PER_H = 3_600_000_000_000

#: Upper edges of the lead-time buckets. [h]
LEAD_EDGES_H: tuple[float, ...] = (1.0, 6.0, 12.0, 24.0)


def bucket_names(edges: Sequence[float]) -> list[str]:
    """Names of the lead buckets with upper ``edges`` [h], e.g. ``"0-1 h"``, ``"1-6 h"``."""
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
        The same history as arrays: interval starts [UTC epoch ns, increasing] and values [kW] (NaN = missing).
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
    scorer = _Scorer(point, issue_every_hours, steps, step_minutes, lead_edges_h, mask)
    ns = np.asarray(ns, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    total = np.zeros((5, len(scorer.edges_ns)))
    issues = 0
    for s in scorer.issues(ns, until_ns, days):
        scored = scorer.score(history, ns, values, s)
        if scored is not None:
            total += scored
            issues += 1
    return {"window_days": days, "issues": issues, "by_lead": summarise(total, lead_edges_h)}


class _Scorer:
    """Scores one hindcast: sums of |e|, e², |e_persistence|, e_persistence² and counts per lead bucket."""

    def __init__(self, point: Callable[[TimeGrid, object], np.ndarray], issue_every_hours: float, steps: int,
                 step_minutes: int, lead_edges_h: Sequence[float], mask: Callable[[TimeGrid], np.ndarray] | None):
        self.point, self.mask, self.steps, self.step_minutes = point, mask, steps, step_minutes
        self.step_ns = step_minutes * 60 * 1_000_000_000
        self.every_ns = int(issue_every_hours * NS_PER_H)
        self.edges_ns = np.asarray(lead_edges_h, dtype=float) * NS_PER_H
        leads = np.arange(steps, dtype=np.int64) * self.step_ns
        self.bucket = np.searchsorted(self.edges_ns, leads, side="right")  # == len(edges) beyond the last edge

    def issues(self, ns: np.ndarray, until_ns: int, days: float) -> range:
        """Issue times [UTC epoch ns] of the last ``days`` days whose horizon ended by ``until_ns`` and that have
        a day of history before them (for persistence)."""
        last = (until_ns - self.steps * self.step_ns) // self.every_ns * self.every_ns
        first = last - int(days * 24 * NS_PER_H) + self.every_ns
        if not len(ns):
            return range(0)
        first = max(first, -(-(int(ns[0]) + 24 * NS_PER_H) // self.every_ns) * self.every_ns)
        return range(first, last + 1, self.every_ns) if last >= first else range(0)

    def score(self, history: object, ns: np.ndarray, values: np.ndarray, issue_ns: int) -> np.ndarray | None:
        """Rows |e|, e², |e_p|, e_p², count per bucket of the forecast issued at ``issue_ns``; None if no step
        could be compared."""
        grid = regular_grid_ns(issue_ns, self.steps, self.step_minutes)
        starts = grid.starts_ns
        measured = values_at(ns, values, starts)
        before = values_at(ns, values, starts - 24 * NS_PER_H)
        ok = np.isfinite(measured) & np.isfinite(before) & (self.bucket < len(self.edges_ns))
        if self.mask is not None:
            ok &= np.asarray(self.mask(grid), dtype=bool)
        if not ok.any():
            return None
        forecast = np.asarray(self.point(grid, history), dtype=float)
        ok &= np.isfinite(forecast)
        e, p, b = forecast[ok] - measured[ok], before[ok] - measured[ok], self.bucket[ok]
        nb = len(self.edges_ns)
        return np.stack([np.bincount(b, weights=x, minlength=nb) for x in (np.abs(e), e * e, np.abs(p), p * p)]
                        + [np.bincount(b, minlength=nb).astype(float)])


def summarise(total: np.ndarray, lead_edges_h: Sequence[float]) -> list[dict]:
    """The per-bucket figures of the module docstring from summed :class:`_Scorer` rows."""
    by_lead = []
    for i, name in enumerate(bucket_names(lead_edges_h)):
        n = int(total[4, i])
        if n == 0:
            by_lead.append({"lead": name, "n": 0, "mae_kw": None, "rmse_kw": None, "persistence_mae_kw": None,
                            "persistence_rmse_kw": None, "skill": None})
            continue
        mae, rmse = total[0, i] / n, float(np.sqrt(total[1, i] / n))
        p_mae, p_rmse = total[2, i] / n, float(np.sqrt(total[3, i] / n))
        by_lead.append({"lead": name, "n": n, "mae_kw": round(float(mae), 3), "rmse_kw": round(rmse, 3),
                        "persistence_mae_kw": round(float(p_mae), 3), "persistence_rmse_kw": round(p_rmse, 3),
                        "skill": round(float(1.0 - mae / p_mae), 4) if p_mae > 0 else None})
    return by_lead


class LiveAccuracy:
    """Accuracy of the live forecasters over the last ``days`` days, kept up to date at almost no cost per call.

    Each :meth:`update` scores at most one new hindcast per quantity (two forecasts, a few milliseconds), so a
    controller can call it every cycle: after a start the window fills one issue time per call, then one issue is
    added (and the oldest dropped) every ``issue_every_hours``. The result is what the state message publishes
    under ``forecast_accuracy``.

    Parameters
    ----------
    pv, load : callable
        ``point(grid, history) -> ndarray``: the live PV and load forecasters' ``forecast``. [kW]
    pv_mask : callable, optional
        ``mask(grid)``: the PV steps to score (daylight).
    """

    def __init__(self, pv: Callable[[TimeGrid, object], np.ndarray], load: Callable[[TimeGrid, object], np.ndarray],
                 pv_mask: Callable[[TimeGrid], np.ndarray] | None = None, *, days: float = 14.0,
                 issue_every_hours: float = 6.0, steps: int = 96, step_minutes: int = 15,
                 lead_edges_h: Sequence[float] = LEAD_EDGES_H):
        self.days, self.lead_edges_h = days, tuple(lead_edges_h)
        self._scorers = {"pv": _Scorer(pv, issue_every_hours, steps, step_minutes, lead_edges_h, pv_mask),
                         "load": _Scorer(load, issue_every_hours, steps, step_minutes, lead_edges_h, None)}
        self._scored: dict[str, dict[int, np.ndarray | None]] = {"pv": {}, "load": {}}
        #: The figures of the last :meth:`update`, None before the first.
        self.result: dict | None = None
        self._backlog = False
        self._latest: int | None = None  # the latest complete issue time at the last update [UTC epoch ns]

    def _latest_issue(self, now_ns: int) -> int:
        scorer = self._scorers["pv"]
        return (now_ns - scorer.steps * scorer.step_ns) // scorer.every_ns * scorer.every_ns

    def due(self, now_ns: int) -> bool:
        """True when :meth:`update` has something to do: never run, issue times left unscored, or a new issue
        time's horizon has ended since."""
        return self.result is None or self._backlog or self._latest_issue(now_ns) != self._latest

    def update(self, now_ns: int, pv: tuple[np.ndarray, np.ndarray], load: tuple[np.ndarray, np.ndarray]) -> dict:
        """Score at most one new issue time per quantity and return the current figures.

        ``pv``, ``load``: the measured history as (interval starts [UTC epoch ns], values [kW]).
        """
        out: dict = {"window_days": self.days}
        self._backlog = False
        for name, (ns, values) in (("pv", pv), ("load", load)):
            scorer, scored = self._scorers[name], self._scored[name]
            ns, values = np.asarray(ns, dtype=np.int64), np.asarray(values, dtype=float)
            wanted = scorer.issues(ns, now_ns, self.days)
            for old in [s for s in scored if s not in wanted]:
                del scored[old]
            todo = [s for s in reversed(wanted) if s not in scored]  # newest first
            if todo:
                scored[todo[0]] = scorer.score(History(ns, values), ns, values, todo[0])
                self._backlog |= len(todo) > 1
            kept = [v for v in scored.values() if v is not None]
            total = np.sum(kept, axis=0) if kept else np.zeros((5, len(scorer.edges_ns)))
            out[name] = {"issues": len(kept), "by_lead": summarise(total, self.lead_edges_h)}
        self.result, self._latest = out, self._latest_issue(now_ns)
        return out


def values_at(ns: np.ndarray, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Values at exactly ``starts`` (NaN where the history has no entry). [kW]"""
    if not len(ns):
        return np.full(len(starts), np.nan)
    at = np.clip(np.searchsorted(ns, starts), 0, len(ns) - 1)
    return np.where(ns[at] == starts, values[at], np.nan)
