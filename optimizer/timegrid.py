"""The planner's time grid: UTC step starts with an explicit duration per step.

Timestamps label the start of an interval; every step carries its own duration in hours, so
nothing assumes a fixed number of steps per local day (see docs/conventions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

import numpy as np
import pandas as pd

NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
"""Nanoseconds per unit of a pandas datetime resolution."""


@dataclass(frozen=True)
class TimeGrid:
    """A sequence of planning steps.

    Attributes
    ----------
    starts : pandas.DatetimeIndex
        Step start times, timezone-aware UTC, strictly increasing.
    duration_h : numpy.ndarray
        Duration of each step. [h]
    """

    starts: pd.DatetimeIndex
    duration_h: np.ndarray

    def __post_init__(self) -> None:
        if self.starts.tz is None or str(self.starts.tz) != "UTC":
            raise ValueError("TimeGrid.starts must be timezone-aware UTC")
        if len(self.starts) != len(self.duration_h):
            raise ValueError("TimeGrid.starts and duration_h differ in length")
        ns, duration = self.starts_ns, np.asarray(self.duration_h)
        gaps = ns[1:] - ns[:-1]
        if len(ns) > 1 and gaps.min() <= 0:
            raise ValueError("TimeGrid.starts must increase")
        if len(duration) and duration.min() <= 0:
            raise ValueError("TimeGrid.duration_h must be positive")
        # the common step, found here where the gaps are at hand (every re-plan makes a grid)
        step = round(float(duration[0]) * 3.6e12) if len(duration) else 0
        uniform = step > 0 and duration.max() == duration.min() and (len(gaps) == 0 or (
            gaps.min() == step and gaps.max() == step))
        self.__dict__["_uniform_step_ns"] = step if uniform else None  # frozen: set past __setattr__

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def uniform_step_ns(self) -> int | None:
        """The common step length when every step lasts the same and each starts where the previous ends, else
        None (set by the checks on construction). [ns]"""
        return self.__dict__["_uniform_step_ns"]

    @cached_property
    def starts_ns(self) -> np.ndarray:
        """Step starts as UTC epoch nanoseconds (int64), converted once per grid."""
        return self.starts.asi8 * NS_PER_UNIT[self.starts.unit]

    @property
    def end(self) -> pd.Timestamp:
        """End of the last step (UTC)."""
        return self.starts[-1] + pd.Timedelta(hours=float(self.duration_h[-1]))

    def local_starts(self, timezone: str) -> pd.DatetimeIndex:
        """Step starts converted to the given IANA time zone (for tariffs and people)."""
        return self.starts.tz_convert(timezone)


def regular_grid(start: datetime | pd.Timestamp, steps: int, step_minutes: int) -> TimeGrid:
    """A grid of ``steps`` equal steps of ``step_minutes`` starting at ``start`` (aware, any zone)."""
    start_ts = pd.Timestamp(start)
    if start_ts.tzinfo is None:
        raise ValueError("regular_grid needs a timezone-aware start")
    starts = pd.date_range(start_ts.tz_convert("UTC"), periods=steps, freq=f"{step_minutes}min")
    return TimeGrid(starts=starts, duration_h=np.full(steps, step_minutes / 60.0))


def floor_to_step(moment: datetime, step_minutes: int) -> datetime:
    """The start of the step containing ``moment`` (aligned to whole steps since UTC midnight)."""
    if moment.tzinfo is None:
        raise ValueError("floor_to_step needs a timezone-aware datetime")
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = moment - midnight
    step = timedelta(minutes=step_minutes)
    return midnight + (elapsed // step) * step
