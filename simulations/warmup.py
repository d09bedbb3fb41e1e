"""The measured history a study's MPC starts with: the days before the first simulated day.

A site in service has weeks of measured PV and load when a billing month starts; a study that starts on the first
day of its data has none, and its MPC would plan the first days on a forecast of nothing (the load forecaster's
nominal, no error distribution, no recent hard days for the month's peak target). ``data.warmup_days`` fills that
history as a site in service would have it (docs/simulation.md, "Warm-up history"):

- each warm-up step takes the data's own value at that time when the data has it (a study that starts after the
  data's first day);
- otherwise the value one whole number of weeks (52 weeks, 364 days) later, the same weekday and time of day in the
  same season: a study of a data year starting 1 January reads the last weeks of December of that year as the weeks
  before it (the usual wrap-around of a typical-year simulation);
- otherwise it is missing (NaN), as an outage in the history would be.

Only the forecasters and the month's peak target read it; the plant, the battery, the bill and perfect foresight
never see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

WRAP = pd.Timedelta(days=364)
"""Shift of a wrapped warm-up value: 52 weeks, so the weekday and the time of day are kept."""


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True)
class Warmup:
    """Measured PV and load before the period, one entry per step (UTC epoch ns of the step starts). [kW]

    Entries are NaN where nothing is known. Empty when the scenario asks for no warm-up. ``wrapped_steps``: how
    many of the steps were read 52 weeks later (the rest of the known ones are the data's own).
    """

    starts_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pv_kw: np.ndarray = field(default_factory=_empty)
    load_kw: np.ndarray = field(default_factory=_empty)
    wrapped_steps: int = 0

    @property
    def steps(self) -> int:
        """Number of warm-up steps. [-]"""
        return len(self.starts_ns)

    def coverage(self, step_h: float) -> dict[str, float]:
        """Days of warm-up asked for, taken from the data before the period, wrapped from 52 weeks later, and
        missing (no load known). [d]"""
        known = int(np.count_nonzero(np.isfinite(self.load_kw)))
        day = 24.0 / step_h
        return {"days": self.steps / day, "own_days": (known - self.wrapped_steps) / day,
                "wrapped_days": self.wrapped_steps / day, "missing_days": (self.steps - known) / day}


def warmup_from(index: pd.DatetimeIndex, pv_kw: np.ndarray, load_kw: np.ndarray, first_start: pd.Timestamp,
                days: int, step_minutes: int) -> Warmup:
    """The ``days`` days of steps before ``first_start`` (UTC), each from ``pv_kw``/``load_kw`` on ``index`` (the
    whole data, UTC step starts) as the module docstring says. [kW]"""
    if days <= 0:
        return Warmup()
    step = pd.Timedelta(minutes=step_minutes)
    first = pd.Timestamp(first_start).tz_convert("UTC")
    starts = pd.date_range(first - pd.Timedelta(days=days), first, freq=step, inclusive="left")
    series = pd.DataFrame({"pv": np.asarray(pv_kw, dtype=float), "load": np.asarray(load_kw, dtype=float)},
                          index=pd.DatetimeIndex(index).tz_convert("UTC"))
    series = series[~series.index.duplicated()]
    own = series.reindex(starts)
    wrapped = series.reindex(starts + WRAP)
    wrapped.index = starts
    # a whole step taken from one source: PV and load of the same moment
    use_own = own.notna().any(axis=1).to_numpy()
    values = np.where(use_own[:, None], own.to_numpy(), wrapped.to_numpy())
    wrapped_known = ~use_own & np.isfinite(values[:, 1])
    return Warmup(starts_ns=starts.as_unit("ns").asi8, pv_kw=values[:, 0].copy(), load_kw=values[:, 1].copy(),
                  wrapped_steps=int(np.count_nonzero(wrapped_known)))
