"""Fill the gaps of measured PV and load series for a study (scenario ``data.csv.fill_gaps_hours``).

Real meter years have gaps: a logger restarted, a day of lost readings. A study refuses them unless the scenario
allows filling gaps up to a length; then each gap of each series (a run of steps with no value) is filled:

- up to :data:`LINEAR_MAX_H`, with both neighbours measured: a straight line between them;
- otherwise from a like day: the same local times on the first of :data:`LIKE_DAYS` (load: a week before, a week
  after, two weeks before, two weeks after — the same weekday; PV: the day before, the day after, two days before,
  two days after) that has a measured value at every step of the gap.

A gap longer than the limit, or one no like day covers, is an error naming the series and the gap's local times.
What was filled is counted per series (:class:`FilledGaps`) for the report. Rule and limits: docs/data.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ems.yamlfile import FieldError

LINEAR_MAX_H = 1.0
"""Gaps up to this long between two measured values are filled by a straight line. [h]"""
LIKE_DAYS = {"load": (-7, 7, -14, 14), "pv": (-1, 1, -2, 2)}
"""Days looked at, in order, for the values of a longer gap: the same weekday for load, the nearest days for PV. [d]"""
FIELD = "data.csv.fill_gaps_hours"


@dataclass(frozen=True)
class FilledGaps:
    """What was filled: per series (``pv``, ``load``) a mask over the frame's steps, True where filled."""

    mask: dict[str, np.ndarray]
    step_h: float

    def summary(self, keep: np.ndarray | None = None) -> dict[str, dict[str, float]]:
        """Per series with a filled step in ``keep`` (default: all steps): ``steps`` filled, their ``share_pct`` of
        the steps kept, the number of ``gaps`` and the ``longest_h`` of them. [-, %, -, h]"""
        out = {}
        for name, mask in self.mask.items():
            kept = mask if keep is None else mask & keep
            steps = len(mask) if keep is None else int(np.sum(keep))
            if runs := _runs(kept):
                out[name] = {"steps": int(kept.sum()), "share_pct": 100.0 * kept.sum() / max(steps, 1),
                             "gaps": len(runs), "longest_h": max(b - a for a, b in runs) * self.step_h}
        return out


def _runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """(first, past-last) index of each run of True."""
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _hours(h: float) -> str:
    whole, minutes = divmod(round(h * 60), 60)
    return f"{whole} h {minutes:02d} min" if minutes else f"{whole} h"


def fill_gaps(frame: pd.DataFrame, timezone: str, max_hours: float) -> tuple[pd.DataFrame, FilledGaps,
                                                                               list[FieldError]]:
    """Fill the NaN runs of ``frame``'s ``pv_kw`` and ``load_kw`` columns (UTC interval starts on a regular step).

    Returns the filled frame (a copy), what was filled, and one error per gap left (longer than ``max_hours`` [h],
    or with no like day measured); the caller raises them with its file's name.
    """
    index = pd.DatetimeIndex(frame.index)
    step_h = (index[1] - index[0]).total_seconds() / 3600 if len(index) > 1 else 0.25
    local = index.tz_convert(timezone)
    out = frame.copy()
    masks: dict[str, np.ndarray] = {}
    errors: list[FieldError] = []
    for name in ("pv", "load"):
        column = f"{name}_kw"
        if column not in frame:
            continue
        measured = frame[column].to_numpy(dtype=float)
        values = measured.copy()
        mask = np.zeros(len(values), dtype=bool)
        for first, end in _runs(~np.isfinite(measured)):
            length_h = (end - first) * step_h
            where = (f"{name}: a gap of {_hours(length_h)} from {local[first]:%Y-%m-%d %H:%M} to "
                     f"{local[end - 1] + pd.Timedelta(hours=step_h):%Y-%m-%d %H:%M} ({timezone})")
            if length_h > max_hours:
                errors.append(FieldError(FIELD, f"{where} is longer than {max_hours:g} h: not filled"))
                continue
            if length_h <= LINEAR_MAX_H and first > 0 and end < len(values):
                before, after = measured[first - 1], measured[end]
                fraction = np.arange(1, end - first + 1) / (end - first + 1)
                values[first:end] = before + (after - before) * fraction
                mask[first:end] = True
                continue
            source = _like_day(measured, index, local[first:end], timezone, LIKE_DAYS[name])
            if source is None:
                days = ", ".join(f"{d:+d}" for d in LIKE_DAYS[name])
                errors.append(FieldError(FIELD, f"{where}: no like day ({days} days) was measured at those times; "
                                                "not filled"))
                continue
            values[first:end] = source
            mask[first:end] = True
        out[column] = values
        masks[name] = mask
    return out, FilledGaps(masks, step_h), errors


def _like_day(measured: np.ndarray, index: pd.DatetimeIndex, gap_local: pd.DatetimeIndex, timezone: str,
              offsets: tuple[int, ...]) -> np.ndarray | None:
    """The measured values at the gap's local times on the first day of ``offsets`` measured at all of them."""
    wall = gap_local.tz_localize(None)
    for days in offsets:
        moved = (wall + pd.Timedelta(days=days)).tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        if moved.isna().any():
            continue
        position = index.get_indexer(moved.tz_convert("UTC"))
        if (position >= 0).all() and np.isfinite(measured[position]).all():
            return measured[position]
    return None
