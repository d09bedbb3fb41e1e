"""PV and load forecasts on the planner's time grid, from measured history that holds only the past.

Both forecasters are called once per planning step (≈35,040 times per simulated year), so the heavy,
time-only work — clear-sky power, local slot of day and day type — is computed once per block of a
regular UTC lattice and cached; a call is a few numpy lookups and bincounts (≈0.1 ms).

History convention: a ``pandas.Series`` of kW values indexed by timezone-aware interval starts, or the
same as plain arrays (:class:`History`, no timestamp conversion per call), at the grid's step (other
steps still work, but slower and coarser). NaN marks a missing value. Only entries that start before
the first grid step are used, so changing history at or after that moment never changes the forecast
(no look-ahead). Methods and degradation without history: docs/data.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from optimizer.forecast_quantiles import DEFAULT_LEVELS, ErrorQuantiles
from optimizer.site import PVSpec, SiteInfo
from optimizer.solar import ClearSkyCache, clear_sky_pv_kw, clear_sky_pv_kw_isolated
from optimizer.tariff_calendar import HolidayCalendar, forecast_calendar
from optimizer.timegrid import TimeGrid

NS_PER_H = 3_600_000_000_000
NS_PER_DAY = 24 * NS_PER_H

DEFAULT_CLEARNESS = 0.62
"""Climatological clearness used without history and without a monthly yield table: Hai Phong's
1,100 kWh/kWp per year over its ≈1,780 kWh/kWp clear-sky yield (docs/data.md). [-]"""

DAYLIGHT_SHARE = 0.05
"""PV clearness counts the intervals whose clear-sky power exceeds this share of the AC limit (daylight). [-]"""
MIN_WINDOW_H = 0.25
"""A clearness window needs at least this much daylight clear-sky energy, in hours at the AC limit. [h]"""

PV_QUANTILE_WIDEN = 1.2
"""Widening of the PV error quantiles about their median (:class:`~optimizer.forecast_quantiles.ErrorQuantiles`),
calibrated for P10..P90 coverage of 80 % on days 30–150 of the Nam Cau Kien synthetic year (docs/data.md). [-]"""

WEEKDAY, SATURDAY, SUNDAY_HOLIDAY, SHUTDOWN = 0, 1, 2, 3
DAY_TYPES = 4
"""Day types of the load profile: Monday–Friday, Saturday, Sunday or public holiday, shutdown (planned, or a
measured day that looked like one)."""

LOW_DAY_RATIO = 0.6
"""A measured day whose mean load is below this share of the median of its day type's days in the profile window
is profiled as the next lower type: a working day as a holiday (an unannounced stop), a holiday as a shutdown. [-]"""
LOWER_DAY_TYPE = {WEEKDAY: SUNDAY_HOLIDAY, SATURDAY: SUNDAY_HOLIDAY, SUNDAY_HOLIDAY: SHUTDOWN}
"""The day type a low day is profiled as (:data:`LOW_DAY_RATIO`; a shutdown has none below it)."""
MIN_DAY_COVERAGE = 0.8
"""A day is judged by its mean load only when at least this share of its slots is measured. [-]"""
LOAD_TODAY_RETYPE_H = 1.0
"""Measured hours of today after which the rest of today's load may be forecast as the next lower day type: when
today's measured load so far is below :data:`LOW_DAY_RATIO` of its day type's profile at the same times of day and
nearer the lower type's (an unannounced stop shows from its first night hours: a working day's night load is the
factory's base load plus its night shift, a stopped day's only the base). 0 = off. [h]"""
BASE_LOAD_QUANTILE = 0.05
"""A shutdown day with no shutdown in the profile window is forecast at this quantile of the window's load (the
site's base load). [-]"""


PV_DAY_WEIGHT = 0.4
"""Weight of the recent days' clearness against the month's climatological clearness in the PV forecast beyond the
recent hours (``k = k_clim + w · (k_days − k_clim)``): day-to-day clearness is only partly persistent (lag-one
correlation of daily PV energy 0.24–0.52 in measured years, 0.38 in the hard synthetic year, 0.83 in the default
one), and 0.4 is about the middle of the measured range. Used only with a monthly climatology
(``pv.monthly_yield_kwh_per_kwp``). Chosen by money on four synthetic years of each shipped tariff (docs/data.md,
"PV forecast: recent days and climatology"; docs/performance.md, "The PV forecast's day weight, again"): with
today's own clearness read for the rest of today (:data:`PV_TODAY_PRIOR_H`), 0.4 keeps more of the
perfect-foresight battery value than 0.6 under every tariff on both years. [-]"""


PV_TODAY_PRIOR_H = 1.0
"""How much the recent days' clearness says about the rest of today, in hours of clear-sky energy at the AC limit
(``PVForecaster(today_prior_hours=…)``): the rest of today is forecast from ``k_days + w · (k_today − k_days)``,
``k_today`` today's measured daylight clearness so far, ``w = C / (C + this × AC limit)``, ``C`` today's measured
daylight clear-sky energy; 0 = off. A dark morning is read as a dark day in proportion to how much of the day has
been seen. Chosen on the money of the two-part years (docs/data.md, "PV forecast: what today has shown"). [h]"""


class ForecastError(ValueError):
    """A forecast cannot be made (e.g. no load history and no fallback)."""


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    """UTC epoch nanoseconds of an aware index."""
    if index.tz is None:
        raise ValueError("forecast history and grids need timezone-aware timestamps")
    return index.as_unit("ns").asi8


@dataclass(frozen=True)
class History:
    """Measured values as arrays: interval starts ``ns`` [UTC epoch ns, int64, strictly increasing] and
    ``values`` [kW], NaN = missing.

    The forecasters read it without any conversion, so it suits callers that forecast very often (the offline
    runner: 35,040 times a simulated year). Views of arrays the caller keeps filling show the new
    measurements on the next call; entries at or after a forecast's first step are ignored as for a Series.
    Contract: the arrays are append-only, i.e. an entry before a forecast's first step is never rewritten
    afterwards (a measurement is a measurement), so the forecasters may reuse what they derived from it.
    """

    ns: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.ns.shape != self.values.shape or self.ns.ndim != 1:
            raise ValueError(f"History.ns {self.ns.shape} and values {self.values.shape} must be equal 1-D shapes")
        if self.ns.dtype != np.int64:
            raise ValueError("History.ns must be int64 epoch nanoseconds")
        if len(self.ns) > 1 and not np.all(self.ns[1:] > self.ns[:-1]):
            raise ValueError("History.ns must be strictly increasing")

    @classmethod
    def from_series(cls, series: pd.Series) -> History:
        """The arrays of a Series indexed by aware interval starts (sorted; a copy)."""
        if not isinstance(series.index, pd.DatetimeIndex):
            raise ValueError("forecast history needs a DatetimeIndex")
        series = series.sort_index()
        return cls(_ns(series.index).copy(), series.to_numpy(dtype=float, na_value=np.nan).copy())


class _HistoryReader:
    """Turns a history into sorted numpy arrays, remembering the last index's conversion.

    Pandas indexes are immutable, so a caller that passes the same (growing or whole-period) Series on every
    call pays the timestamp conversion once; the values are re-read on every call. The timestamps come back as
    the same array object for as long as the history's timestamps stay the same (:class:`_PerTimestamps`
    relies on it).
    """

    def __init__(self) -> None:
        self._index: pd.Index | None = None
        self._ns = _NO_NS
        self._order: np.ndarray | None = None

    def read(self, history: pd.Series | History | None) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps [ns], increasing, and values [kW] (NaN = missing) of every entry."""
        if history is None or len(history.values) == 0:
            return _NO_NS, _NO_VALUES
        if isinstance(history, History):
            return history.ns, history.values
        index = history.index
        if index is not self._index:
            if not isinstance(index, pd.DatetimeIndex):
                raise ValueError("forecast history needs a DatetimeIndex")
            ns = _ns(index)
            self._order = None if index.is_monotonic_increasing else np.argsort(ns, kind="stable")
            self._ns = ns if self._order is None else ns[self._order]
            self._index = index
        values = np.asarray(history.to_numpy(dtype=float, na_value=np.nan))
        if self._order is not None:
            values = values[self._order]
        return self._ns, values


_NO_NS = np.zeros(0, dtype=np.int64)
_NO_VALUES = np.zeros(0)


class _PerTimestamps:
    """A function of the history's timestamps alone (clear-sky power, calendar keys) on one lattice step,
    computed once per timestamp array and step and reused while the same array comes back (a History's, or
    the reader's for one index)."""

    def __init__(self) -> None:
        self._ns: np.ndarray | None = None  # kept alive, so its identity cannot be reused by another array
        self._step_minutes = 0
        self._value = _NO_VALUES

    def get(self, ns: np.ndarray, step_minutes: int, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if ns is not self._ns or step_minutes != self._step_minutes:
            self._value = compute(ns)
            self._ns, self._step_minutes = ns, step_minutes
        return self._value


_MAX_WEIGHT_DOUBLINGS = 500
"""Longest History (in half-lives) summed with running weights ``2 ** (age / half_life)`` (2^500 ≈ 3e150 stays
well inside float64); a longer one is read window by window."""


class _DaylightSums:
    """Running sums over an append-only :class:`History` for the PV clearness windows: per entry that is measured
    (not NaN) and in daylight, the measured power and the clear-sky power, each plain and weighted by
    ``2 ** ((ns − ns[0]) / half_life)``. A window's sums are differences of two running sums, so a forecast costs
    a few lookups instead of a pass over the window; the entries before a forecast's start are final (the History
    contract), so the sums are extended, never recomputed, while the same arrays come back. Plain Python floats:
    a re-plan adds one entry, where numpy's per-call overhead would dominate."""

    def __init__(self) -> None:
        self._key: tuple | None = None  # (timestamps, values, step minutes); kept alive, see _PerTimestamps
        #: measured·w, clear·w, measured, clear; entry i = the sum over the entries before i
        self._sums: tuple[list[float], ...] = ([0.0], [0.0], [0.0], [0.0])
        self._weight = _NO_VALUES

    def windows(self, ns: np.ndarray, values: np.ndarray, clear: np.ndarray, daylight_kw: float,
                half_life_ns: float, step_minutes: int, starts: tuple[int, ...], end: int) -> list[list[float]]:
        """Sums over the entries ``start:end`` for each of ``starts`` (``end`` ≤ the first entry at or after the
        forecast start): per start, weighted measured, weighted clear sky, measured, clear sky. [kW]"""
        if self._key is None or self._key[0] is not ns or self._key[1] is not values or self._key[2] != step_minutes:
            self._key = (ns, values, step_minutes)
            self._sums = ([0.0], [0.0], [0.0], [0.0])
            self._weight = np.exp2((ns - ns[0]) / half_life_ns) if len(ns) else _NO_VALUES
        measured_w, clear_w, measured, clear_sky = self._sums
        done = len(measured) - 1
        if end > done:
            a, b, x, y = measured_w[-1], clear_w[-1], measured[-1], clear_sky[-1]
            for v, c, w in zip(values[done:end].tolist(), clear[done:end].tolist(), self._weight[done:end].tolist(),
                               strict=True):
                if c > daylight_kw and not math.isnan(v):
                    a, b, x, y = a + v * w, b + c * w, x + v, y + c
                measured_w.append(a)
                clear_w.append(b)
                measured.append(x)
                clear_sky.append(y)
        return [[column[end] - column[start] for column in self._sums] for start in starts]


def _past(ns: np.ndarray, values: np.ndarray, derived: np.ndarray, before_ns: int,
          since_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The measured entries starting in [``since_ns``, ``before_ns``): timestamps, values and the matching
    entries of ``derived``."""
    cut = int(np.searchsorted(ns, before_ns, side="left"))
    lo = int(np.searchsorted(ns[:cut], since_ns, side="left"))
    return _measured(ns[lo:cut], values[lo:cut], derived[lo:cut])


def _measured(ns: np.ndarray, values: np.ndarray, derived: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ns``, ``values`` and ``derived`` without the entries whose value is missing (NaN)."""
    keep = ~np.isnan(values)
    if keep.all():
        return ns, values, derived
    return ns[keep], values[keep], derived[keep]


def _lattice_start(grid: TimeGrid, step_ns: int) -> int | None:
    """The lattice step number of the grid's first step when the grid is consecutive steps of a lattice of
    ``step_ns`` (its values are then one slice of a cached lattice), else None."""
    t0 = int(grid.starts_ns[0])
    return t0 // step_ns if grid.uniform_step_ns == step_ns and t0 % step_ns == 0 else None


def _decay(grid: TimeGrid, since_ns: int, decay_hours: float) -> np.ndarray:
    """``exp(−L / decay_hours)`` at each grid step's lead time ``L`` after ``since_ns``; the same array for every
    uniform grid with the same step count, step and lead of its first step (read-only, do not modify). [-]"""
    step = grid.uniform_step_ns
    if step is None:
        return np.exp(-((grid.starts_ns - since_ns) / NS_PER_H) / decay_hours)
    return _uniform_decay(int(grid.starts_ns[0]) - since_ns, step, len(grid), decay_hours)


@functools.lru_cache(maxsize=64)
def _uniform_decay(first_lead_ns: int, step_ns: int, steps: int, decay_hours: float) -> np.ndarray:
    """:func:`_decay` of a uniform grid (read-only)."""
    lead_h = (first_lead_ns + np.arange(steps, dtype=np.int64) * step_ns) / NS_PER_H
    decay = np.exp(-lead_h / decay_hours)
    decay.flags.writeable = False
    return decay


def _grid_step_minutes(grid: TimeGrid) -> int:
    """The lattice step for a grid: its last step's length, in whole minutes (at least 1). The last, because the
    controller's grids may start with a shortened step (a plan made part-way through a step)."""
    return max(1, round(float(grid.duration_h[-1]) * 60))


class PVForecaster:
    """Clear-sky PV power scaled by the clearness seen in recent measurements.

    Clearness ``k`` = measured energy / clear-sky energy over daylight intervals (clear sky > 5 % of the AC
    limit) of a window. Two windows: the last ``recent_hours`` (the current weather) and the last ``days``
    days (the weather regime). With a climatology (the site's ``pv.monthly_yield_kwh_per_kwp``) the days' clearness
    is blended with the month's climatological clearness ``k_clim``:
    ``k_base = k_clim + day_weight · (k_days − k_clim)`` (:data:`PV_DAY_WEIGHT`; 1 = no blending); without one
    ``k_base = k_days``. For the steps of the forecast start's local day, ``k_base`` moves towards today's measured
    daylight clearness so far ``k_today``: ``k_base + w · (k_today − k_base)``, ``w = C / (C + today_prior_hours ×
    AC limit)`` with ``C`` today's measured daylight clear-sky energy [kWh] (:data:`PV_TODAY_PRIOR_H`; 0 = off), so a
    dark morning is read as a dark day as far as the day seen so far supports it. At lead time
    ``L`` after the forecast start the clearness is ``k_base + (k_recent − k_base) · exp(−L / decay_hours)``,
    bounded to [0, ``max_clearness``]. A window with less than 15 minutes' worth of clear-sky energy at the AC
    limit counts as empty: without ``k_recent`` the forecast uses ``k_base``; without ``k_days`` the climatological
    clearness (of the month, from ``pv.monthly_yield_kwh_per_kwp`` if given, else :data:`DEFAULT_CLEARNESS`). The live
    controller, ``ems plan`` and the offline MPC all make it as ``PVForecaster(site, pv)``, so they forecast alike.

    ``isolated=True`` computes the clear-sky tables in short-lived worker processes
    (``ClearSkyCache(isolated=True)``) so that pvlib is never imported into this process: the live controller's
    choice, for memory. Offline use (simulations, tests) keeps the default, in-process computation.
    """

    def __init__(self, site: SiteInfo, pv: PVSpec, recent_hours: float = 3.0, days: float = 3.0,
                 half_life_days: float = 1.0, decay_hours: float = 3.0, max_clearness: float = 1.2,
                 isolated: bool = False, day_weight: float = PV_DAY_WEIGHT,
                 today_prior_hours: float = PV_TODAY_PRIOR_H):
        self.site = site
        self.pv = pv
        self.recent_ns = int(recent_hours * NS_PER_H)
        self.days_ns = int(days * NS_PER_DAY)
        self.half_life_ns = half_life_days * NS_PER_DAY
        self.decay_hours = decay_hours
        self.max_clearness = max_clearness
        self.isolated = isolated
        if not 0.0 <= day_weight <= 1.0:
            raise ValueError("day_weight must lie in [0, 1]")
        self.day_weight = day_weight
        if today_prior_hours < 0.0:
            raise ValueError("today_prior_hours must not be negative")
        self.today_prior_hours = today_prior_hours
        monthly = pv.monthly_yield_kwh_per_kwp
        self._monthly_yield = None if monthly is None else list(monthly)
        self._monthly_clearness: np.ndarray | None = None
        self._caches: dict[int, ClearSkyCache] = {}
        self._reader = _HistoryReader()
        self._history_clear = _PerTimestamps()  # clear-sky power at the history's timestamps [kW]
        self._sums = _DaylightSums()
        self._quantiles: ErrorQuantiles | None = None  # made on the first call of quantiles()
        self._month_span: tuple[int, int, int] | None = None  # (first, end) [UTC ns] and number of a local month
        self._day_span: tuple[int, int] | None = None  # (first, end) [UTC ns] of a local day
        self._midnights = np.empty(0, dtype=np.int64)  # local midnights [UTC ns], see _local_day

    @property
    def look_back_ns(self) -> int:
        """How far before a forecast's start the history it reads reaches. [ns]"""
        return max(self.days_ns, self.recent_ns)

    def _cache(self, step_minutes: int) -> ClearSkyCache:
        cache = self._caches.get(step_minutes)
        if cache is None:
            cache = ClearSkyCache(self.site, self.pv, step_minutes, isolated=self.isolated)
            self._caches[step_minutes] = cache
        return cache

    def _local_month(self, t_ns: int) -> int:
        """The site-local month (1..12) of UTC instant ``t_ns``; the month's UTC span is kept, so consecutive
        forecasts in one month convert no timestamp."""
        span = self._month_span
        if span is None or not span[0] <= t_ns < span[1]:
            local = pd.Timestamp(t_ns, unit="ns", tz="UTC").tz_convert(self.site.timezone)
            first = pd.Timestamp(local.year, local.month, 1)
            # a month whose first midnight does not exist (a DST change at 00:00) starts at the first local instant
            bounds = pd.DatetimeIndex([first, first + pd.DateOffset(months=1)]).tz_localize(
                self.site.timezone, ambiguous=True, nonexistent="shift_forward")
            span = self._month_span = (bounds[0].value, bounds[1].value, local.month)
        return span[2]

    def _local_day(self, t_ns: int) -> tuple[int, int]:
        """The UTC span [first, end) [ns] of the site-local day holding UTC instant ``t_ns``: the last span is kept,
        others are looked up in the site's local midnights (three calendar years at a time)."""
        span = self._day_span
        if span is None or not span[0] <= t_ns < span[1]:
            m = self._midnights
            i = int(np.searchsorted(m, t_ns, side="right")) - 1
            if i < 0 or i + 1 >= len(m):
                year = pd.Timestamp(t_ns, unit="ns", tz="UTC").tz_convert(self.site.timezone).year
                naive = pd.date_range(f"{year - 1}-01-01", f"{year + 2}-01-01", freq="D")
                local = naive.tz_localize(self.site.timezone, ambiguous=True, nonexistent="shift_forward")
                m = self._midnights = local.tz_convert("UTC").as_unit("ns").asi8
                i = int(np.searchsorted(m, t_ns, side="right")) - 1
            span = self._day_span = (int(m[i]), int(m[i + 1]))
        return span

    def climatological_clearness(self, month: int) -> float:
        """Clearness assumed without history for a month (1..12). [-]"""
        if self._monthly_yield is None:
            return DEFAULT_CLEARNESS
        if self._monthly_clearness is None:
            starts = pd.date_range("2025-01-01", "2026-01-01", freq="1h", inclusive="left", tz=self.site.timezone)
            compute = clear_sky_pv_kw_isolated if self.isolated else clear_sky_pv_kw
            kwh = pd.Series(compute(starts.tz_convert("UTC"), 1.0, self.site, self.pv), index=starts)
            per_kwp = kwh.groupby(starts.month).sum().to_numpy() / max(self.pv.kwp, 1e-9)
            # a plant of 0 kWp has no clear-sky yield to compare with (its forecast is 0 kW whatever the clearness)
            clearness = np.divide(np.asarray(self._monthly_yield, dtype=float), per_kwp,
                                  out=np.full(12, DEFAULT_CLEARNESS), where=per_kwp > 0)
            self._monthly_clearness = np.clip(clearness, 0.0, self.max_clearness)
        return float(self._monthly_clearness[month - 1])

    def _clearness(self, clear: np.ndarray, ns: np.ndarray, values: np.ndarray, step_h: float, t0: int,
                   half_life_ns: float | None) -> float | None:
        """Measured ``values`` over ``clear`` (clear-sky power at ``ns``) in daylight, each entry weighted by
        ``0.5 ** (age / half_life)`` (unweighted without a half-life); None when the window is too dark."""
        daylight = clear > DAYLIGHT_SHARE * self.pv.ac_limit_kw
        clear, measured = clear[daylight], values[daylight]
        clear_kwh = float(clear.sum()) * step_h
        if half_life_ns is not None:
            weight = np.exp2((ns[daylight] - t0) / half_life_ns)
            clear, measured = clear * weight, measured * weight
        return self._ratio(float(measured.sum()), float(clear.sum()), clear_kwh)

    def _ratio(self, measured: float, clear: float, clear_kwh: float) -> float | None:
        """Clearness ``measured / clear`` bounded to [0, ``max_clearness``]; None when the window's daylight clear-sky
        energy ``clear_kwh`` is less than :data:`MIN_WINDOW_H` at the AC limit (the window is too dark)."""
        if clear_kwh <= MIN_WINDOW_H * self.pv.ac_limit_kw:
            return None
        return min(max(measured / clear, 0.0), self.max_clearness)

    def forecast(self, grid: TimeGrid, history: pd.Series | History | None) -> np.ndarray:
        """Forecast PV AC power per grid step.

        Parameters
        ----------
        grid : TimeGrid
            The planning steps.
        history : pandas.Series | History | None
            Measured PV AC power at interval starts (UTC), NaN = missing; entries at or after the first grid
            step are ignored. [kW]

        Returns
        -------
        numpy.ndarray
            Forecast PV AC power per step, in [0, AC limit]. [kW]
        """
        if self.pv.ac_limit_kw <= 0:
            return np.zeros(len(grid))
        step_minutes = _grid_step_minutes(grid)
        cache = self._cache(step_minutes)
        starts = grid.starts_ns
        t0 = int(starts[0])
        first = _lattice_start(grid, cache.step_ns)
        clear = cache.at(starts, grid.duration_h) if first is None else cache.span(first, len(starts))
        step_h = step_minutes / 60.0
        ns, values = self._reader.read(history)
        clear_all = self._history_clear.get(ns, step_minutes, lambda ns_: cache.at(ns_, step_h))
        day_start, day_end = self._local_day(t0)
        if isinstance(history, History) and len(ns) and (ns[-1] - ns[0]) < _MAX_WEIGHT_DOUBLINGS * self.half_life_ns:
            k_days, k_recent, today = self._clearness_appending(ns, values, clear_all, step_minutes, t0, day_start)
        else:
            k_days, k_recent, today = self._clearness_direct(ns, values, clear_all, step_h, t0, day_start)
        if k_days is None or (self._monthly_yield is not None and self.day_weight < 1.0):
            climate = self.climatological_clearness(self._local_month(t0))
            k_days = climate if k_days is None else climate + self.day_weight * (k_days - climate)
        k_base: float | np.ndarray = k_days
        measured_today, clear_today_kwh = today
        if clear_today_kwh > 0.0 and self.today_prior_hours > 0.0:
            k_today = min(max(measured_today * step_h / clear_today_kwh, 0.0), self.max_clearness)
            w = clear_today_kwh / (clear_today_kwh + self.today_prior_hours * self.pv.ac_limit_kw)
            k_base = np.full(len(starts), k_days)
            k_base[:int(np.searchsorted(starts, day_end))] = k_days + w * (k_today - k_days)
        k = k_base if k_recent is None else k_base + (k_recent - k_base) * _decay(grid, t0, self.decay_hours)
        return np.minimum(clear * k, self.pv.ac_limit_kw)

    def quantiles(self, grid: TimeGrid, history: pd.Series | History | None,
                  levels: Sequence[float] = DEFAULT_LEVELS, point: np.ndarray | None = None) -> np.ndarray:
        """Quantile forecasts of PV AC power per grid step (P10/P50/P90 by default).

        The point forecast plus the empirical quantiles of this forecaster's own errors over the last 14 days,
        measured in clear-sky units (error / clear-sky power, daylight only), pooled by lead time and widened by
        :data:`PV_QUANTILE_WIDEN` (:class:`~optimizer.forecast_quantiles.ErrorQuantiles`); so at night every
        quantile is 0 and around a clear noon the band is widest. The point forecast (:meth:`forecast`) is
        unchanged; nothing of this runs unless called. Shape ``(len(levels), len(grid))``, each in [0, AC limit],
        non-decreasing along the levels. ``point``: :meth:`forecast` of the same grid and history when the caller
        has it already (it is not computed again). [kW]
        """
        if self._quantiles is None:
            self._quantiles = ErrorQuantiles(self.forecast, scale=self.clear_sky_kw, upper=self.pv.ac_limit_kw,
                                             min_scale=DAYLIGHT_SHARE * self.pv.ac_limit_kw, widen=PV_QUANTILE_WIDEN)
        if point is None:
            point = self.forecast(grid, history)
        if self.pv.ac_limit_kw <= 0:
            return np.zeros((len(levels), len(grid)))
        ns, values = self._reader.read(history)
        return self._quantiles.quantiles(grid, history, ns, values, point, levels)

    def clear_sky_kw(self, grid: TimeGrid) -> np.ndarray:
        """Clear-sky AC power per grid step, from the lattice cache the forecasts use. [kW]"""
        cache = self._cache(_grid_step_minutes(grid))
        first = _lattice_start(grid, cache.step_ns)
        return cache.at(grid.starts_ns, grid.duration_h) if first is None else cache.span(first, len(grid))

    def _clearness_direct(self, ns: np.ndarray, values: np.ndarray, clear_all: np.ndarray, step_h: float,
                          t0: int, day_start: int) -> tuple[float | None, float | None, tuple[float, float]]:
        """(k_days, k_recent, (today's measured daylight power sum [kW], today's daylight clear-sky energy [kWh]))
        from a pass over each window."""
        # the windows are tails of the longest one
        ns, values, clear_hist = _past(ns, values, clear_all, t0,
                                       min(t0 - max(self.days_ns, self.recent_ns), day_start))
        d = int(np.searchsorted(ns, t0 - self.days_ns, side="left"))
        k_days = self._clearness(clear_hist[d:], ns[d:], values[d:], step_h, t0, self.half_life_ns)
        r = int(np.searchsorted(ns, t0 - self.recent_ns, side="left"))
        k_recent = self._clearness(clear_hist[r:], ns[r:], values[r:], step_h, t0, None)
        s = int(np.searchsorted(ns, day_start, side="left"))
        daylight = clear_hist[s:] > DAYLIGHT_SHARE * self.pv.ac_limit_kw
        return k_days, k_recent, (float(values[s:][daylight].sum()), float(clear_hist[s:][daylight].sum()) * step_h)

    def _clearness_appending(self, ns: np.ndarray, values: np.ndarray, clear_all: np.ndarray, step_minutes: int,
                             t0: int, day_start: int) -> tuple[float | None, float | None, tuple[float, float]]:
        """As :meth:`_clearness_direct`, from the running sums of an append-only History."""
        cut = int(np.searchsorted(ns, t0, side="left"))
        d = int(np.searchsorted(ns[:cut], t0 - self.days_ns, side="left"))
        r = int(np.searchsorted(ns[d:cut], t0 - self.recent_ns, side="left")) + d  # the recent window is inside
        s = int(np.searchsorted(ns[:cut], day_start, side="left"))
        (measured_w, clear_w, _, clear_days), (_, _, measured, clear_recent), (_, _, today, clear_today) = \
            self._sums.windows(ns, values, clear_all, DAYLIGHT_SHARE * self.pv.ac_limit_kw, self.half_life_ns,
                               step_minutes, (d, r, s), cut)
        step_h = step_minutes / 60.0
        return (self._ratio(measured_w, clear_w, clear_days * step_h),
                self._ratio(measured, clear_recent, clear_recent * step_h), (today, clear_today * step_h))


class _Calendar:
    """Local slot of day, day type (weekday, Saturday, Sunday/holiday, shutdown) and local day number on a UTC
    lattice, cached in blocks."""

    BLOCK_STEPS = 8192

    def __init__(self, timezone: str, step_minutes: int, holidays: HolidayCalendar, shutdowns: Iterable[date] = ()):
        self.timezone = timezone
        self.step_minutes = step_minutes
        self.step_ns = step_minutes * 60 * 1_000_000_000
        self.slots = -(-1440 // step_minutes)
        self.holidays = holidays
        self.shutdown_days = np.fromiter((np.datetime64(d, "D").astype(np.int64) for d in shutdowns), dtype=np.int64)
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def keys_and_days(self, ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profile key ``day_type · slots + slot`` and local day number (days since 1970-01-01) for arbitrary
        UTC nanosecond times."""
        local = pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True)).tz_convert(self.timezone)
        wall = local.tz_localize(None).as_unit("ns").asi8
        day = wall // NS_PER_DAY
        slot = (wall - day * NS_PER_DAY) // self.step_ns
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        years = range(int(local.year.min()), int(local.year.max()) + 1) if len(day) else ()
        is_holiday = np.isin(day, self.holidays.days(years).astype(np.int64))
        day_type = np.where(is_holiday | (weekday == 6), SUNDAY_HOLIDAY, np.where(weekday == 5, SATURDAY, WEEKDAY))
        day_type = np.where(np.isin(day, self.shutdown_days), SHUTDOWN, day_type)
        return day_type * self.slots + slot, day

    def keys(self, ns: np.ndarray) -> np.ndarray:
        """Profile keys for UTC nanosecond times: a lattice lookup when aligned, else computed."""
        return self._lookup(ns, 0)

    def days(self, ns: np.ndarray) -> np.ndarray:
        """Local day numbers (days since 1970-01-01) for UTC nanosecond times."""
        return self._lookup(ns, 1)

    def _lookup(self, ns: np.ndarray, which: int) -> np.ndarray:
        index, rest = np.divmod(ns, self.step_ns)
        if len(ns) == 0 or rest.any():
            return self.keys_and_days(ns)[which]
        lo, hi = int(index.min()) // self.BLOCK_STEPS, int(index.max()) // self.BLOCK_STEPS
        if lo == hi:
            return self._block(lo)[which][index - lo * self.BLOCK_STEPS]
        joined = np.concatenate([self._block(b)[which] for b in range(lo, hi + 1)])
        return joined[index - lo * self.BLOCK_STEPS]

    def span(self, first: int, count: int) -> np.ndarray:
        """Profile keys of the ``count`` consecutive lattice steps from step number ``first``."""
        b = first // self.BLOCK_STEPS
        offset = first - b * self.BLOCK_STEPS
        if offset + count > self.BLOCK_STEPS:
            return self.keys(np.arange(first, first + count, dtype=np.int64) * self.step_ns)
        return self._block(b)[0][offset:offset + count]

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        block = self._blocks.get(b)
        if block is None:
            first = b * self.BLOCK_STEPS * self.step_ns
            block = self._blocks[b] = self.keys_and_days(
                first + np.arange(self.BLOCK_STEPS, dtype=np.int64) * self.step_ns)
        return block


class LoadForecaster:
    """Same-day-type load profile from recent history, corrected by the latest error.

    Profile: the mean load per (day type, local slot of day) over the ``weeks`` weeks of history before the
    local day of the forecast start (complete days). Day types: weekday (Mon–Fri), Saturday, Sunday or public
    holiday (``holiday_country`` via the holidays package, optionally its ``holiday_subdivision``, plus
    ``extra_holidays``, less the ``worked_holidays`` the plant works as any day of their week), and shutdown
    (``shutdown_days``: the plant's planned shutdowns, e.g. its Tết shutdown, ``site.planned_shutdowns``). A
    measured day whose mean load is below :data:`LOW_DAY_RATIO` of the median of its type's days in the window is
    profiled as the next lower type (a working day as a holiday, a holiday as a shutdown), so an unannounced stop
    neither drags the working-day profile down nor goes unlearnt; today itself is forecast as the lower type for the
    rest of the day once its first :data:`LOAD_TODAY_RETYPE_H` of readings look like one (:meth:`_today_shift`).
    The profile is rebuilt when the day changes or
    the history in its window does, so within a day a forecast costs a few lookups. Correction: the mean of
    (measured − profile) over the last ``correction_hours`` of history, added with weight
    ``exp(−L / decay_hours)`` at lead time ``L`` after the last measurement; it carries what today has shown so
    far. Degradation with little history: before any complete day the profile is built from all history so far;
    a shutdown day with no shutdown in the window uses the window's :data:`BASE_LOAD_QUANTILE` load (the base
    load); another (day type, slot) never seen uses the all-days mean of the slot; a slot never seen uses the
    latest measured load (persistence: a controller started at 06:00 that has seen the factory start at 07:00
    forecasts the day's unseen hours at the day's load, not at the mean of a night and an hour); no history at all
    uses ``fallback_kw`` or raises :class:`ForecastError`. The result is
    never negative.
    """

    def __init__(self, timezone: str, holiday_country: str | None = "VN", extra_holidays: Iterable[date] = (),
                 weeks: float = 3.0, correction_hours: float = 1.0, decay_hours: float = 2.0,
                 fallback_kw: float | None = None, shutdown_days: Iterable[date] = (),
                 holiday_subdivision: str | None = None, worked_holidays: Iterable[date] = ()):
        self.timezone = timezone
        self.holiday_country = holiday_country
        self.holiday_subdivision = holiday_subdivision
        self.extra_holidays = tuple(extra_holidays)
        self.worked_holidays = tuple(worked_holidays)
        self.shutdown_days = tuple(shutdown_days)
        self.window_ns = int(weeks * 7 * NS_PER_DAY)
        self.correction_ns = int(correction_hours * NS_PER_H)
        self.decay_hours = decay_hours
        self.fallback_kw = fallback_kw
        self._calendars: dict[int, _Calendar] = {}
        self._reader = _HistoryReader()
        self._history_keys = _PerTimestamps()  # profile keys of the history's timestamps
        self._history_days = _PerTimestamps()  # local day numbers of the history's timestamps
        #: The last profile and what it was built from: (step minutes, timestamps, lo, hi, values or None, profile).
        self._profile: tuple | None = None
        self._quantiles: ErrorQuantiles | None = None  # made on the first call of quantiles()

    @classmethod
    def for_site(cls, site: SiteInfo, tariff_holidays: HolidayCalendar,
                 fallback_kw: float | None = None) -> LoadForecaster:
        """The load forecaster of a site, as live control, ``ems plan`` and the offline MPC make it: the site's
        time zone, planned shutdowns and public holidays (``site.holidays`` applied to the site's tariff calendar
        ``tariff_holidays``, :attr:`optimizer.tariff.SiteTariff.calendar`, by
        :func:`~optimizer.tariff_calendar.forecast_calendar`). ``fallback_kw``: the forecast before any load is
        measured. [kW]"""
        holidays = forecast_calendar(tariff_holidays, site.holidays, site.worked_holidays)
        return cls(site.timezone, holidays.country, holidays.extra_days, fallback_kw=fallback_kw,
                   shutdown_days=site.shutdown_days(), holiday_subdivision=holidays.subdivision,
                   worked_holidays=holidays.worked_days)

    @property
    def look_back_ns(self) -> int:
        """How far before a forecast's start the history it reads reaches: the profile's weeks end where the
        forecast's local day starts, at most one (25-hour, on a DST change) day earlier. [ns]"""
        return self.window_ns + 25 * NS_PER_H

    def _calendar(self, step_minutes: int) -> _Calendar:
        calendar = self._calendars.get(step_minutes)
        if calendar is None:
            holidays = HolidayCalendar(self.holiday_country, self.holiday_subdivision, self.extra_holidays,
                                       self.worked_holidays)
            calendar = self._calendars[step_minutes] = _Calendar(self.timezone, step_minutes, holidays,
                                                                 self.shutdown_days)
        return calendar

    def forecast(self, grid: TimeGrid, history: pd.Series | History | None) -> np.ndarray:
        """Forecast site load per grid step.

        Parameters
        ----------
        grid : TimeGrid
            The planning steps.
        history : pandas.Series | History | None
            Measured site load at interval starts (UTC), NaN = missing; entries at or after the first grid
            step are ignored. [kW]

        Returns
        -------
        numpy.ndarray
            Forecast load per step, ≥ 0. [kW]
        """
        step_minutes = _grid_step_minutes(grid)
        calendar = self._calendar(step_minutes)
        starts = grid.starts_ns
        t0, step_ns = int(starts[0]), calendar.step_ns
        ns, values = self._reader.read(history)
        keys = self._history_keys.get(ns, step_minutes, calendar.keys)
        cut = int(np.searchsorted(ns, t0, side="left"))
        last = cut - 1  # the last measurement before the forecast start
        while last >= 0 and np.isnan(values[last]):
            last -= 1
        if last < 0:
            if self.fallback_kw is None:
                raise ForecastError("no load history before the forecast start and no fallback_kw")
            return np.full(len(starts), float(self.fallback_kw))
        last_ns = int(ns[last])
        first = _lattice_start(grid, step_ns)
        grid_keys = calendar.keys(starts) if first is None else calendar.span(first, len(starts))
        # the local day of the forecast start begins slot-of-day lattice steps before the start's step
        day_start = t0 - t0 % step_ns - int(grid_keys[0] % calendar.slots) * step_ns
        hi = int(np.searchsorted(ns[:cut], day_start, side="left"))
        if hi == 0:  # no complete day yet: everything so far
            lo, hi = 0, cut
        else:
            lo = int(np.searchsorted(ns[:hi], day_start - self.window_ns, side="left"))
        profile = self._profile_of(calendar, step_minutes, ns, values, keys, lo, hi,
                                   append_only=isinstance(history, History))
        recent = int(np.searchsorted(ns[:last + 1], last_ns - self.correction_ns, side="right"))
        _, recent_values, recent_keys = _measured(ns[recent:last + 1], values[recent:last + 1], keys[recent:last + 1])
        shift = self._today_shift(profile, values[hi:cut], keys[hi:cut], calendar.slots, step_ns)
        if shift:  # today looks like the next lower day type: its rest (and its recent readings) are profiled so
            days = calendar.days(starts)
            grid_keys = np.where(days == days[0], grid_keys + shift, grid_keys)
            if recent >= hi:
                recent_keys = recent_keys + shift
        misses = recent_values - profile[recent_keys]
        error = float(misses.sum()) / len(misses)  # their mean
        out = profile[grid_keys] + error * _decay(grid, last_ns, self.decay_hours)
        return np.maximum(out, 0.0)

    def _today_shift(self, profile: np.ndarray, today_values: np.ndarray, today_keys: np.ndarray, slots: int,
                     step_ns: int) -> int:
        """The change of profile key that re-types the rest of today (:data:`LOAD_TODAY_RETYPE_H`): ``slots`` ×
        (lower day type − today's) when today's measured load so far is below :data:`LOW_DAY_RATIO` of its type's
        profile and nearer the lower type's, else 0. [-]"""
        n = len(today_keys)
        if LOAD_TODAY_RETYPE_H <= 0 or n * step_ns < LOAD_TODAY_RETYPE_H * NS_PER_H:
            return 0
        first = int(today_keys[0])
        kind = first // slots
        lower = LOWER_DAY_TYPE.get(kind)
        if lower is None:
            return 0
        shift = (lower - kind) * slots
        measured = float(today_values.sum())  # the sums over the same slots compare as the means do
        if measured == measured and int(today_keys[-1]) - first == n - 1:  # all measured, consecutive slots
            own = float(profile[first:first + n].sum())
            below = float(profile[first + shift:first + shift + n].sum())
        else:
            keep = ~np.isnan(today_values)
            if keep.sum() * step_ns < LOAD_TODAY_RETYPE_H * NS_PER_H:
                return 0
            keys = today_keys[keep]
            measured = float(today_values[keep].sum())
            own, below = float(profile[keys].sum()), float(profile[keys + shift].sum())
        return shift if measured < LOW_DAY_RATIO * own and abs(measured - below) < abs(measured - own) else 0

    def quantiles(self, grid: TimeGrid, history: pd.Series | History | None,
                  levels: Sequence[float] = DEFAULT_LEVELS, point: np.ndarray | None = None) -> np.ndarray:
        """Quantile forecasts of site load per grid step (P10/P50/P90 by default).

        The point forecast plus the empirical quantiles of this forecaster's own errors [kW] over the last 14
        days, pooled by lead time (:class:`~optimizer.forecast_quantiles.ErrorQuantiles`). The point forecast
        (:meth:`forecast`) is unchanged; nothing of this runs unless called. Shape ``(len(levels), len(grid))``,
        each ≥ 0, non-decreasing along the levels. ``point``: :meth:`forecast` of the same grid and history when
        the caller has it already (it is not computed again). [kW]
        """
        if self._quantiles is None:
            self._quantiles = ErrorQuantiles(self.forecast)
        if point is None:
            point = self.forecast(grid, history)
        ns, values = self._reader.read(history)
        return self._quantiles.quantiles(grid, history, ns, values, point, levels)

    def _profile_of(self, calendar: _Calendar, step_minutes: int, ns: np.ndarray, values: np.ndarray,
                    keys: np.ndarray, lo: int, hi: int, append_only: bool) -> np.ndarray:
        """Mean load per profile key (day type · slots + slot) of the measured entries ``lo:hi`` of the history,
        low days re-typed (:meth:`_retyped`), with the fallbacks of the class docstring. [kW]

        The last profile is reused while the same entries come again: the same timestamp array and window, and,
        unless the history is a :class:`History` (whose past entries are never rewritten), the same values.
        """
        cached = self._profile
        window = values[lo:hi]
        if (cached is not None and cached[1] is ns and cached[0] == step_minutes and cached[2:4] == (lo, hi)
                and (append_only or np.array_equal(cached[4], window, equal_nan=True))):
            return cached[5]
        days = self._history_days.get(ns, step_minutes, calendar.days)
        keep = ~np.isnan(window)
        measured = window[keep]
        measured_keys = self._retyped(measured, keys[lo:hi][keep], days[lo:hi][keep], calendar.slots)
        size = DAY_TYPES * calendar.slots
        sums = np.bincount(measured_keys, weights=measured, minlength=size)
        counts = np.bincount(measured_keys, minlength=size)
        slot_sums = sums.reshape(DAY_TYPES, -1).sum(axis=0)
        slot_counts = counts.reshape(DAY_TYPES, -1).sum(axis=0)
        latest = float(measured[-1])   # a slot never seen: the load as it was last measured (persistence)
        slot_mean = np.where(slot_counts > 0, slot_sums / np.maximum(slot_counts, 1), latest)
        unseen = np.tile(slot_mean, DAY_TYPES)
        shutdown = slice(SHUTDOWN * calendar.slots, (SHUTDOWN + 1) * calendar.slots)
        if not counts[shutdown].any():
            unseen[shutdown] = float(np.quantile(measured, BASE_LOAD_QUANTILE))
        profile = np.where(counts > 0, sums / np.maximum(counts, 1), unseen)
        self._profile = (step_minutes, ns, lo, hi, None if append_only else window.copy(), profile)
        return profile

    @staticmethod
    def _retyped(measured: np.ndarray, keys: np.ndarray, days: np.ndarray, slots: int) -> np.ndarray:
        """``keys`` with the day type of every low day lowered by one (class docstring): a day measured over at
        least :data:`MIN_DAY_COVERAGE` of its slots whose mean is below :data:`LOW_DAY_RATIO` of the median day
        mean of its type. Working days are judged against working days, holidays against holidays; a working day
        lowered to a holiday is then judged as one. [-]"""
        if not len(days):
            return keys
        _, first, inverse = np.unique(days, return_index=True, return_inverse=True)
        count = np.bincount(inverse)
        mean = np.bincount(inverse, weights=measured) / count
        given = keys[first] // slots
        judged = count >= MIN_DAY_COVERAGE * slots
        day_type = given.copy()
        for kind, lower in LOWER_DAY_TYPE.items():
            peers = judged & (day_type == kind)  # the holiday pass also judges the working days lowered before it
            if peers.sum() < 2:
                continue
            day_type[peers & (mean < LOW_DAY_RATIO * float(np.median(mean[peers])))] = lower
        if np.array_equal(day_type, given):
            return keys
        return keys + ((day_type - given) * slots)[inverse]
