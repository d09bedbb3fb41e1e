"""When a factory's day shift runs: one rule for the synthetic year (``simulations.synthetic``), the simulated
site's load (``drivers.simulated.plant.ShiftLoad``) and ``ems plan``'s load shape.

The shift runs from ``start`` (inclusive) to ``end`` (exclusive), local time; an ``end`` before ``start`` is a
shift that runs past midnight (22:00–06:00), and ``end`` equal to ``start`` no shift at all.
"""

from __future__ import annotations

from datetime import time

import numpy as np


def minute_of_day(t: time) -> float:
    """``t`` as minutes after local midnight (seconds as a fraction). [min]"""
    return t.hour * 60 + t.minute + t.second / 60.0 + t.microsecond / 60e6


def on_shift(minutes: np.ndarray | float, start: time, end: time) -> np.ndarray:
    """Whether each local time, given as minutes after midnight (:func:`minute_of_day`), is within the shift."""
    m = np.asarray(minutes, dtype=float)
    lo, hi = minute_of_day(start), minute_of_day(end)
    return (m >= lo) & (m < hi) if lo <= hi else (m >= lo) | (m < hi)
