"""A day-ahead PV forecast from outside, for studies: what a weather service's forecast of a given skill is worth.

Live, a forecast from outside (a weather service, the plant's own) arrives over REST, MQTT or a CSV file and is laid
over the built-in forecast for the steps it covers until it expires (:mod:`optimizer.external_forecast`). A study
with ``data.pv_forecast`` feeds its MPC the same way, through the same :class:`~optimizer.external_forecast.
ExternalForecasts` (validation, expiry, :meth:`~optimizer.external_forecast.ExternalForecasts.blend`), with
forecasts made here from the study's own PV (docs/simulation.md, "Day-ahead forecast"):

- one forecast is issued every day at ``issue_hour`` local time; it covers the rest of that day and the whole next
  local day, and is valid for :data:`VALID_HOURS` (the next day's issue replaces it);
- per local day it forecasts clear-sky power × the day's clearness (its actual PV energy / clear-sky energy) ×
  a lognormal error of spread ``daily_error_pct`` (``daily_error_pct / 2`` for the rest of the issue day), drawn
  independently per issue and day from ``seed``; it keeps the day's level, not its hours (a flat clearness over
  the day, capped at the AC limit);
- ``daily_error_pct: 0`` is a forecast that knows each day's PV energy exactly; the spread of a real service is an
  assumption to set for the forecast being evaluated;
- with ``band`` (the default) each forecast carries its P10/P90 band per step (``pv_kw_p10``/``pv_kw_p90``), as
  weather services give one, calibrated per step as a service calibrates its own: the forecast × the 10 % and 90 %
  quantiles of actual / forecast, which is the day's lognormal level error times the step's own deviation from its
  day's level (the study's daylight steps pooled: a climatological spread, the same for every day;
  :func:`band_multipliers`), capped at the AC limit. About 8 daylight steps in 10 fall inside it.

The built-in forecast is kept where the external one does not reach. The planner takes its PV quantiles (the
surplus-day rule, the demand reserve's risk) from the band while the external PV is used; without a band
(``band: false``) the surplus-day rule stands aside, as live.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

VALID_HOURS = 48.0
"""Validity of an issued forecast: long enough to span to the end of the next day from any issue hour. [h]"""


def daily_clearness(day: np.ndarray, pv_kw: np.ndarray, clear_kw: np.ndarray) -> dict[int, float]:
    """Per local day number: actual PV energy / clear-sky energy (days without clear-sky energy left out). [-]"""
    clear = np.bincount(day, weights=clear_kw)
    pv = np.bincount(day, weights=pv_kw, minlength=len(clear))
    return {int(d): float(pv[d] / clear[d]) for d in np.flatnonzero(clear > 0)}


#: Daylight steps whose deviation from their day's level calibrates the band: clear-sky power at least this share of
#: the AC limit (dawn and dusk ratios are noise). [-]
BAND_MIN_CLEAR_SHARE = 0.1


def band_multipliers(ratios: np.ndarray, sigma: float, seed: int) -> tuple[float, float]:
    """The band's P10 and P90 as multiples of the forecast: the 10 % and 90 % quantiles of actual / forecast when
    the day's level is off by the lognormal error of spread ``sigma`` (mean-preserving, as the forecast's) and each
    step deviates from its day's level as one of ``ratios`` (step clearness / day clearness). Monte Carlo on a
    stream of its own from ``seed`` (the forecasts' draws are unchanged); never narrower than the forecast
    itself (P10 ≤ 1 ≤ P90). [-]"""
    ratios = np.asarray(ratios, dtype=float)
    if len(ratios) == 0:
        ratios = np.ones(1)
    draws = np.random.default_rng([seed, 1]).standard_normal(max(len(ratios), 10_000))
    level = np.exp(sigma * draws - sigma * sigma / 2)  # actual level / forecast level: the error's inverse
    total = np.resize(ratios, len(level)) / level
    p10, p90 = np.quantile(total, [0.1, 0.9])
    return min(float(p10), 1.0), max(float(p90), 1.0)


def step_ratios(day: np.ndarray, pv_kw: np.ndarray, clear_kw: np.ndarray, k_day: dict[int, float],
                ac_limit_kw: float) -> np.ndarray:
    """Each daylight step's clearness over its day's (``pv / clear / k_day``) for steps with clear-sky power of at
    least :data:`BAND_MIN_CLEAR_SHARE` of the AC limit on days with PV. [-]"""
    k = np.array([k_day.get(int(d), 0.0) for d in range(int(day.max()) + 1)])[day]
    use = (clear_kw >= BAND_MIN_CLEAR_SHARE * ac_limit_kw) & (k > 0)
    return pv_kw[use] / clear_kw[use] / k[use]


def day_ahead_payloads(starts: pd.DatetimeIndex, pv_kw: np.ndarray, clear_kw: np.ndarray, timezone: str, *,
                       issue_hour: int, daily_error_pct: float, seed: int, ac_limit_kw: float, step_minutes: int,
                       source: str = "day-ahead", band: bool = True, band_width: float = 1.0) -> list[dict]:
    """The forecasts issued over ``starts`` (UTC step starts of the data, ``step_minutes`` apart), as external
    forecast payloads (docs/data.md, "External forecasts"), in order of issue (module docstring).

    Parameters
    ----------
    pv_kw, clear_kw : numpy.ndarray
        Actual PV and clear-sky AC power per step. [kW]
    band_width : float
        The band's width as a multiple of the calibrated one (its distances from the forecast scaled; the
        forecast itself is unchanged). [-]
    """
    naive = starts.tz_convert(timezone).tz_localize(None).normalize()  # local calendar days
    day = np.asarray((naive - naive[0]) // pd.Timedelta(days=1), dtype=int)
    k_day = daily_clearness(day, np.asarray(pv_kw, dtype=float), np.asarray(clear_kw, dtype=float))
    rng = np.random.default_rng(seed)
    sigma = daily_error_pct / 100.0
    multipliers: dict[float, tuple[float, float]] = {}
    if band:
        ratios = step_ratios(day, np.asarray(pv_kw, dtype=float), np.asarray(clear_kw, dtype=float), k_day,
                             ac_limit_kw)
        multipliers = {s: (max(0.0, 1.0 - band_width * (1.0 - lo)), 1.0 + band_width * (hi - 1.0))
                       for s in (sigma / 2, sigma) for lo, hi in [band_multipliers(ratios, s, seed)]}
    starts_ns = starts.as_unit("ns").asi8
    payloads: list[dict] = []
    for d in range(-1, int(day.max()) + 1):  # issued on day d for the rest of d and all of d + 1
        issued_local = (naive[0] + pd.Timedelta(days=d, hours=issue_hour)).tz_localize(
            timezone, nonexistent="shift_forward", ambiguous=False)
        lo = int(np.searchsorted(starts_ns, issued_local.tz_convert("UTC").as_unit("ns").value))
        hi = int(np.searchsorted(day, d + 2, side="left"))
        if hi <= lo:
            continue
        values = np.zeros((3, hi - lo))  # forecast, P10, P90
        for dd, s in ((d, sigma / 2), (d + 1, sigma)):
            mask = day[lo:hi] == dd
            if not mask.any() or dd not in k_day:
                continue
            k = k_day[dd] * float(np.exp(s * rng.standard_normal() - s * s / 2))
            values[0, mask] = np.minimum(clear_kw[lo:hi][mask] * k, ac_limit_kw)
            if band:
                for row, m in ((1, multipliers[s][0]), (2, multipliers[s][1])):
                    values[row, mask] = np.minimum(clear_kw[lo:hi][mask] * k * m, ac_limit_kw)
        payload = {"source": source, "issued_at": _iso(issued_local), "valid_hours": VALID_HOURS,
                   "start": _iso(starts[lo]), "step_minutes": step_minutes,
                   "pv_kw": [round(float(v), 3) for v in values[0]]}
        if band:
            payload["pv_kw_p10"] = [round(float(v), 3) for v in values[1]]
            payload["pv_kw_p90"] = [round(float(v), 3) for v in values[2]]
        payloads.append(payload)
    return payloads


def _iso(t: pd.Timestamp | datetime) -> str:
    return pd.Timestamp(t).isoformat()


class IssuedForecasts:
    """Payloads handed to an :class:`~optimizer.external_forecast.ExternalForecasts` as the study's clock passes
    their issue times (the study's stand-in for a weather service posting to the REST API)."""

    def __init__(self, payloads: Sequence[dict]):
        self._payloads = sorted(payloads, key=lambda p: pd.Timestamp(p["issued_at"]))
        self._issued_ns = [pd.Timestamp(p["issued_at"]).value for p in self._payloads]
        self._next = 0

    @property
    def payloads(self) -> tuple[dict, ...]:
        """Every payload, in order of issue."""
        return tuple(self._payloads)

    def due(self, now_ns: int) -> list[dict]:
        """The payloads issued at or before ``now_ns`` (UTC epoch ns) not handed out yet."""
        out = []
        while self._next < len(self._payloads) and self._issued_ns[self._next] <= now_ns:
            out.append(self._payloads[self._next])
            self._next += 1
        return out
