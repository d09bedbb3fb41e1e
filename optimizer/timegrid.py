"""The planner's time grid: UTC step starts with an explicit duration per step.

Timestamps label the start of an interval; every step carries its own duration in hours, so
nothing assumes a fixed number of steps per local day (see docs/conventions.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
"""Nanoseconds per unit of a pandas datetime resolution."""


class TimeGrid:
    """A sequence of planning steps.

    Attributes
    ----------
    starts : pandas.DatetimeIndex
        Step start times, timezone-aware UTC, strictly increasing.
    duration_h : numpy.ndarray
        Duration of each step. [h]

    A grid is immutable. :meth:`window` cuts a validated grid without checking it again and without building a
    pandas index: the offline runner makes one grid per re-plan (35,040 a simulated year) and reads only
    :attr:`starts_ns`, so :attr:`starts` is built from the nanoseconds on first use.
    """

    __slots__ = ("_starts", "_starts_ns", "_uniform_step_ns", "duration_h")

    def __init__(self, starts: pd.DatetimeIndex, duration_h: np.ndarray):
        if starts.tz is None or str(starts.tz) != "UTC":
            raise ValueError("TimeGrid.starts must be timezone-aware UTC")
        if len(starts) != len(duration_h):
            raise ValueError("TimeGrid.starts and duration_h differ in length")
        ns, duration = starts.asi8 * NS_PER_UNIT[starts.unit], np.asarray(duration_h)
        gaps = ns[1:] - ns[:-1]
        if len(ns) > 1 and gaps.min() <= 0:
            raise ValueError("TimeGrid.starts must increase")
        if len(duration) and duration.min() <= 0:
            raise ValueError("TimeGrid.duration_h must be positive")
        # the common step, found here where the gaps are at hand
        step = round(float(duration[0]) * 3.6e12) if len(duration) else 0
        uniform = step > 0 and duration.max() == duration.min() and (len(gaps) == 0 or (
            gaps.min() == step and gaps.max() == step))
        self._set(starts, ns, duration_h, step if uniform else None)

    def _set(self, starts: pd.DatetimeIndex | None, starts_ns: np.ndarray, duration_h: np.ndarray,
             uniform_step_ns: int | None) -> None:
        for name, value in (("_starts", starts), ("_starts_ns", starts_ns), ("duration_h", duration_h),
                            ("_uniform_step_ns", uniform_step_ns)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("TimeGrid is immutable")

    def __reduce__(self) -> tuple:
        return _grid_from_ns, (self._starts_ns, self.duration_h, self._uniform_step_ns)

    def __repr__(self) -> str:
        return f"TimeGrid({len(self)} steps from {self.starts[0] if len(self) else None})"

    def __len__(self) -> int:
        return len(self.duration_h)

    def window(self, first: int, count: int) -> TimeGrid:
        """Steps ``first`` … ``first + count − 1`` of this grid (fewer at its end), without re-validation."""
        sub_ns = self._starts_ns[first:first + count]
        return _grid_from_ns(sub_ns, self.duration_h[first:first + count],
                             self._uniform_step_ns if len(sub_ns) else None)

    def merged(self, first: np.ndarray, duration_h: np.ndarray) -> TimeGrid:
        """Consecutive steps merged into one from each index of ``first`` (ascending, from 0) up to the next, whose
        durations ``duration_h`` [h] the caller has summed; without re-validation."""
        return _grid_from_ns(self._starts_ns[first], duration_h, None)

    @property
    def starts(self) -> pd.DatetimeIndex:
        """Step starts (UTC), built from :attr:`starts_ns` on first use for a :meth:`window`."""
        if self._starts is None:
            object.__setattr__(self, "_starts", pd.DatetimeIndex(self._starts_ns.astype("datetime64[ns]"), tz="UTC"))
        return self._starts

    @property
    def starts_ns(self) -> np.ndarray:
        """Step starts as UTC epoch nanoseconds (int64)."""
        return self._starts_ns

    @property
    def uniform_step_ns(self) -> int | None:
        """The common step length when every step lasts the same and each starts where the previous ends, else
        None. [ns]"""
        return self._uniform_step_ns

    @property
    def end(self) -> pd.Timestamp:
        """End of the last step (UTC)."""
        return self.starts[-1] + pd.Timedelta(hours=float(self.duration_h[-1]))

    def local_starts(self, timezone: str) -> pd.DatetimeIndex:
        """Step starts converted to the given IANA time zone (for tariffs and people)."""
        return self.starts.tz_convert(timezone)


def _grid_from_ns(starts_ns: np.ndarray, duration_h: np.ndarray, uniform_step_ns: int | None) -> TimeGrid:
    """A grid from parts known to be valid (a window of a grid, or an unpickled grid)."""
    grid = object.__new__(TimeGrid)
    grid._set(None, starts_ns, duration_h, uniform_step_ns)
    return grid


def regular_grid(start: datetime | pd.Timestamp, steps: int, step_minutes: int) -> TimeGrid:
    """A grid of ``steps`` equal steps of ``step_minutes`` starting at ``start`` (aware, any zone)."""
    start_ts = pd.Timestamp(start)
    if start_ts.tzinfo is None:
        raise ValueError("regular_grid needs a timezone-aware start")
    starts = pd.date_range(start_ts.tz_convert("UTC"), periods=steps, freq=f"{step_minutes}min")
    return TimeGrid(starts=starts, duration_h=np.full(steps, step_minutes / 60.0))


def regular_grid_ns(start_ns: int, steps: int, step_minutes: int) -> TimeGrid:
    """:func:`regular_grid` from a UTC epoch start [ns], without building a pandas index (the hindcasts of the
    quantile and accuracy trackers make one per issue time)."""
    step_ns = step_minutes * 60_000_000_000
    starts_ns = int(start_ns) + step_ns * np.arange(steps, dtype=np.int64)
    return _grid_from_ns(starts_ns, np.full(steps, step_minutes / 60.0), step_ns if steps else None)


def floor_to_step(moment: datetime, step_minutes: int) -> datetime:
    """The start of the step containing ``moment`` (aligned to whole steps since UTC midnight)."""
    if moment.tzinfo is None:
        raise ValueError("floor_to_step needs a timezone-aware datetime")
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = moment - midnight
    step = timedelta(minutes=step_minutes)
    return midnight + (elapsed // step) * step
