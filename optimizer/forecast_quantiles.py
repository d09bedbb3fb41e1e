"""Quantile forecasts (e.g. P10/P50/P90) from a point forecaster's own recent errors, by lead time.

The point forecaster is re-run at past issue times (hindcasts) whose whole horizon is already measured; the
errors (measured − forecast, optionally divided by a scale such as the clear-sky power) are pooled per lead-time
bucket over the last ``days`` days, and quantile *q* of the forecast at lead *L* is

    point(L) + Q_q(errors in the bucket of L) · scale(L)

bounded to ``[0, upper]``. Nothing here runs unless quantiles are asked for; the hindcasts and the quantile table
are kept, so a forecaster moving forward in time adds one hindcast per ``issue_every_hours``. As for
:class:`optimizer.forecast.History`, a measurement is final: history before a forecast's start is never rewritten.
The point forecast itself is never changed. Method and measured calibration: docs/data.md ("Quantile forecasts").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from optimizer.timegrid import TimeGrid, regular_grid_ns

NS_PER_H = 3_600_000_000_000

DEFAULT_LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9)
"""P10, P50, P90. [-]"""


class ErrorQuantiles:
    """Empirical quantiles of a point forecaster's recent errors per lead-time bucket.

    Parameters
    ----------
    point : callable
        ``point(grid, history) -> ndarray``: the point forecast [kW] (e.g. ``PVForecaster.forecast``).
    scale : callable, optional
        ``scale(grid) -> ndarray``: the unit of the errors per grid step [kW] (e.g. clear-sky PV power, so that
        a cloudy hour's error scales with the sun). Errors are recorded where the scale exceeds
        ``min_scale`` only. None: errors in kW.
    upper : float, optional
        Upper bound of every quantile (the PV AC limit). [kW]
    days : float
        The errors of the last ``days`` days' worth of hindcasts (the latest being the last issue time whose
        horizon has ended) are pooled. [d]
    issue_every_hours : float
        Hindcasts are issued on a UTC lattice of this period. [h]
    bucket_edges_hours : sequence of float
        Upper edges of the lead-time buckets; leads beyond the last edge share the last bucket. [h]
    min_errors : int
        A bucket with fewer errors uses all buckets' errors; with fewer in all, every quantile is the point
        forecast (no spread known yet).
    min_scale : float
        See ``scale``. [kW]
    widen : float
        Each quantile's distance from the median error is multiplied by this (≥ 1 widens): recent errors
        understate the spread of the coming ones when the weather regime changes. Calibrated, see docs/data.md. [-]
    """

    def __init__(self, point: Callable[[TimeGrid, object], np.ndarray],
                 scale: Callable[[TimeGrid], np.ndarray] | None = None,
                 upper: float | None = None, days: float = 14.0, issue_every_hours: float = 3.0,
                 bucket_edges_hours: Sequence[float] = (1.0, 3.0, 6.0, 12.0, 24.0), min_errors: int = 30,
                 min_scale: float = 0.0, widen: float = 1.0):
        if days <= 0 or issue_every_hours <= 0:
            raise ValueError("days and issue_every_hours must be positive")
        if list(bucket_edges_hours) != sorted(bucket_edges_hours) or not bucket_edges_hours:
            raise ValueError("bucket_edges_hours must be increasing and not empty")
        self.point = point
        self.scale = scale
        self.upper = upper
        self.window_ns = int(days * 24 * NS_PER_H)
        self.every_ns = int(issue_every_hours * NS_PER_H)
        self.edges_ns = np.asarray(bucket_edges_hours, dtype=float) * NS_PER_H
        self.min_errors = min_errors
        self.min_scale = min_scale
        self.widen = widen
        #: issue time [ns] → errors per step of a hindcast, for one (steps, step) shape
        self._errors: dict[int, np.ndarray] = {}
        self._shape: tuple[int, int] | None = None
        #: levels → (last and first issue, quantile per (level, bucket)); one table per set of levels, so callers
        #: asking for different levels in turn (the surplus rule, the demand reserve) do not evict each other's
        self._tables: dict[tuple[float, ...], tuple[tuple[int, int], np.ndarray]] = {}
        self._levels: dict[tuple[float, ...], np.ndarray] = {}  # checked sets of levels
        self._uniform_buckets: dict[tuple[int, int], np.ndarray] = {}  # (step [ns], steps) → bucket per step
        #: the finite errors of the kept hindcasts per lead-time bucket, sorted; kept up to date as hindcasts come
        #: and go (one in, one out per issue period), so a new table needs no sort of the whole sample
        self._pools: list[np.ndarray] = []
        self._bounds = np.zeros(0, dtype=np.intp)  # bucket b is the lead columns bounds[b]:bounds[b + 1]

    def _checked_levels(self, levels: Sequence[float]) -> np.ndarray:
        """``levels`` as an array, checked once per distinct set: increasing probabilities in (0, 1)."""
        key = tuple(levels)
        checked = self._levels.get(key)
        if checked is None:
            checked = np.asarray(levels, dtype=float)
            if checked.ndim != 1 or not len(checked) or np.any(np.diff(checked) <= 0) \
                    or checked[0] <= 0 or checked[-1] >= 1:
                raise ValueError(f"levels must be increasing probabilities in (0, 1), got {list(levels)}")
            self._levels[key] = checked
        return checked

    def buckets(self, lead_ns: np.ndarray) -> np.ndarray:
        """Bucket number per lead time [ns] (0 = shortest)."""
        return np.minimum(np.searchsorted(self.edges_ns, lead_ns, side="right"), len(self.edges_ns) - 1)

    def quantiles(self, grid: TimeGrid, history: object, ns: np.ndarray, values: np.ndarray, point: np.ndarray,
                  levels: Sequence[float] = DEFAULT_LEVELS) -> np.ndarray:
        """Quantile forecasts per level and grid step.

        Parameters
        ----------
        grid : TimeGrid
            The planning steps (a shortened first step is allowed).
        history : object
            The history as the point forecaster takes it (passed on to the hindcasts unchanged).
        ns, values : numpy.ndarray
            The same history as arrays: interval starts [UTC epoch ns, increasing] and measured values [kW].
        point : numpy.ndarray
            The point forecast on ``grid``. [kW]
        levels : sequence of float
            Increasing probabilities in (0, 1), e.g. (0.1, 0.5, 0.9).

        Returns
        -------
        numpy.ndarray
            Shape ``(len(levels), len(grid))``, non-decreasing along the levels, in ``[0, upper]``. [kW]
        """
        levels_arr = self._checked_levels(levels)
        starts = grid.starts_ns
        t0 = int(starts[0])
        step_minutes = max(1, round(float(grid.duration_h[-1]) * 60))
        table = self._quantile_table(history, ns, values, t0, len(grid), step_minutes, levels_arr)
        step = grid.uniform_step_ns
        if step is None:
            bucket = self.buckets(starts - t0)
        else:  # every uniform grid of one step and length has the same leads
            bucket = self._uniform_buckets.get((step, len(grid)))
            if bucket is None:
                bucket = self._uniform_buckets[(step, len(grid))] = self.buckets(starts - t0)
        unit = np.ones(len(grid)) if self.scale is None else self.scale(grid)
        out = point[None, :] + table[:, bucket] * unit[None, :]
        out = np.maximum(out, 0.0) if self.upper is None else np.clip(out, 0.0, self.upper)
        return np.maximum.accumulate(out, axis=0)

    def _quantile_table(self, history: object, ns: np.ndarray, values: np.ndarray, t0: int, steps: int,
                        step_minutes: int, levels: np.ndarray) -> np.ndarray:
        """Error quantile per (level, bucket) from the hindcasts complete before ``t0``. [scale units]"""
        step_ns = step_minutes * 60_000_000_000
        if self._shape != (steps, step_ns):
            self._errors, self._shape, self._tables = {}, (steps, step_ns), {}
            # leads grow along the columns, so each bucket is a run of columns
            lead_bucket = self.buckets(np.arange(steps, dtype=np.int64) * step_ns)
            self._bounds = np.searchsorted(lead_bucket, np.arange(len(self.edges_ns) + 1))
            self._pools = [np.zeros(0) for _ in self.edges_ns]
        last = (t0 - steps * step_ns) // self.every_ns * self.every_ns  # the last issue whose horizon has ended
        first = last - (self.window_ns // self.every_ns - 1) * self.every_ns
        if len(ns):  # a hindcast needs a measurement before its issue time
            first = max(first, -(-(int(ns[0]) + step_ns) // self.every_ns) * self.every_ns)
        issued, level_key = (last, first), tuple(levels.tolist())  # the issues change once per issue period
        cached = self._tables.get(level_key)
        if cached is not None and cached[0] == issued:
            return cached[1]
        issues = range(last, first - 1, -self.every_ns) if last >= first and len(ns) else range(0)
        for old in [s for s in self._errors if s < first or s > last]:
            self._pool(self._errors.pop(old), remove=True)
        for s in issues:
            if s not in self._errors:
                self._errors[s] = errors = self._hindcast_errors(history, ns, values, s, steps, step_minutes)
                self._pool(errors, remove=False)
        table = np.zeros((len(levels), len(self.edges_ns)))
        if self._errors:
            with_median = np.concatenate([levels, [0.5]])
            pooled = None
            for b, sample in enumerate(self._pools):
                if len(sample) < self.min_errors:
                    if pooled is None:
                        pooled = np.sort(np.concatenate(self._pools))
                    sample = pooled
                if len(sample) >= self.min_errors:
                    q = sorted_quantiles(sample, with_median)
                    table[:, b] = q[-1] + self.widen * (q[:-1] - q[-1])
        self._tables[level_key] = (issued, table)
        return table

    def _pool(self, errors: np.ndarray, remove: bool) -> None:
        """Add one hindcast's ``errors`` (per lead step) to the sorted pools of their buckets, or take them out."""
        bounds = self._bounds
        for b, pool in enumerate(self._pools):
            part = errors[bounds[b]:bounds[b + 1]]
            part = np.sort(part[np.isfinite(part)])
            if not len(part):
                continue
            if remove:  # the i-th of equal values is taken out at the i-th place of its run in the pool
                at = np.searchsorted(pool, part) + (np.arange(len(part)) - np.searchsorted(part, part))
                self._pools[b] = np.delete(pool, at)
            else:
                self._pools[b] = np.insert(pool, np.searchsorted(pool, part), part)

    def _hindcast_errors(self, history: object, ns: np.ndarray, values: np.ndarray, issue_ns: int, steps: int,
                         step_minutes: int) -> np.ndarray:
        """(measured − forecast) / scale per step of the forecast issued at ``issue_ns``; NaN where a value is
        missing or the scale is below ``min_scale``."""
        grid = regular_grid_ns(issue_ns, steps, step_minutes)
        starts = grid.starts_ns
        at = np.minimum(np.searchsorted(ns, starts), len(ns) - 1)  # ns is not empty: see _quantile_table
        measured = np.where(ns[at] == starts, values[at], np.nan)
        if np.isnan(measured).all():
            return measured
        errors = measured - self.point(grid, history)
        if self.scale is None:
            return errors
        unit = self.scale(grid)
        return np.where(unit > self.min_scale, errors / np.maximum(unit, 1e-12), np.nan)


def sorted_quantiles(ordered: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """``numpy.quantile(x, probabilities)`` (its default 'linear' method) of values ``ordered`` already sorted
    ascending, finite and not empty, equal to it to the last bit (numpy's own index and interpolation arithmetic),
    without the partial sort numpy makes on every call. ``probabilities`` in [0, 1]."""
    n = len(ordered)
    virtual = (n - 1) * probabilities
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    gamma = virtual - below
    a, b = ordered[below], ordered[above]
    diff = b - a
    out = a + diff * gamma
    upper = gamma >= 0.5
    out[upper] = (b - diff * (1 - gamma))[upper]
    return out
