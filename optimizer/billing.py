"""Itemised bills and peak demand per local billing month, for a series of steps under a bound tariff.

Per billing month (local calendar month of each step start):

- energy: kWh and amount per period, excluding VAT; each step is priced at its start, like
  ``SiteTariff.prices(starts)``, or with ``by_duration=True`` split by the time it spends in each period, like
  ``SiteTariff.prices(starts, duration_h)`` (bill the way the planner priced);
- demand: the highest window-average import of the month (``peak_kw``), set in the window starting at ``peak_at``
  (UTC; :func:`sets_month_peak`) in tariff period ``peak_period``; the billed demand is that peak
  (``month_max``) or the highest of this and the 11 previous months (``rolling_12_month_max``), times the
  rate in force at local midnight of the 1st. ``prior_peaks_kw`` supplies peaks the series does not hold
  (earlier months, or the month-to-date peak before the series starts); each month uses the larger of its
  series peak and its prior peak. A partly covered month pays a full month's demand charge;
- export: kWh and credit at the export price (no VAT on the credit);
- VAT on energy (rate of the day each part of a step falls on) and demand (rate on the 1st);
  total = energy + demand + VAT − export.

Amounts are in the tariff's currency, unrounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from optimizer.tariff_calendar import LocalSteps, month_label, utc_index, window_starts

if TYPE_CHECKING:
    from optimizer.tariff import DemandCharge, SiteTariff

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

PEAK_AT_TOLERANCE_KW = 0.05
"""A demand window sets the month's peak anew only when its average import is more than this above the month's
highest so far (:func:`sets_month_peak`). A controller that holds its grid ceiling at the month's peak imports at
that level again and again, a few watts either side: those windows do not move when the peak was set. Half the
0.1 kW a report shows. [kW]"""


def sets_month_peak(window_kw: float, peak_so_far_kw: float | None) -> bool:
    """Whether a demand window of average import ``window_kw`` [kW] sets the month's peak anew: it is the month's
    first window (``peak_so_far_kw`` None) or more than :data:`PEAK_AT_TOLERANCE_KW` above the highest window of
    the month before it [kW]. The last window that does is when the month's peak was set (``MonthBill.peak_at``;
    the live demand tracker, ``controller.accounting.DemandTracker``, applies the same rule as windows close)."""
    return peak_so_far_kw is None or window_kw > peak_so_far_kw + PEAK_AT_TOLERANCE_KW


@dataclass(frozen=True)
class EnergyLine:
    """Energy bought in one period of a billing month."""

    period: str
    kwh: float
    """[kWh]"""
    amount: float
    """[currency] excluding VAT"""


@dataclass(frozen=True)
class MonthBill:
    """One local billing month of a bill. Amounts in the tariff currency."""

    month: str
    """``"YYYY-MM"``"""
    hours: float
    """[h] covered by the series"""
    month_hours: float
    """[h] of the whole local billing month (743–745 across a daylight-saving change)"""
    energy: tuple[EnergyLine, ...]
    """one line per tariff period, in tariff order"""
    peak_kw: float | None
    """[kW] highest window-average import of the month in the series; None without data"""
    peak_at: str | None
    """when the month's peak was set: the UTC start (ISO 8601) of the month's last demand window that set it anew
    (:func:`sets_month_peak`), as the live controller's ``demand.month_peak_at``; None without data"""
    peak_period: str | None
    """tariff period of the first step of that window (e.g. ``off_peak``: a night's charge set the peak)"""
    demand_kw: float | None
    """[kW] billed demand; None if no demand charge applies"""
    demand_rate_per_kw_month: float | None
    """[currency/(kW·month)]"""
    demand_amount: float
    demand_vat: float
    """[currency] the VAT on ``demand_amount`` (part of ``vat``)"""
    export_kwh: float
    """[kWh]"""
    export_credit: float
    vat: float

    @property
    def covered_share(self) -> float:
        """Share of the billing month the series covers [-]: 1 for a whole month."""
        return min(1.0, self.hours / self.month_hours) if self.month_hours > 0 else 1.0

    def demand_beyond_coverage(self, with_vat: bool) -> float:
        """The part of the month's demand charge a series covering only part of the month does not earn: the
        charge × (1 − :attr:`covered_share`), with its VAT if ``with_vat`` [currency]. A study that scales a period
        to a year counts a 3-day month's capacity charge for 3 days, not a whole month (the bill itself charges the
        whole month, as the utility would)."""
        return (self.demand_amount + (self.demand_vat if with_vat else 0.0)) * (1.0 - self.covered_share)

    @property
    def energy_kwh(self) -> float:
        """[kWh] imported"""
        return sum((line.kwh for line in self.energy), 0.0)

    @property
    def energy_amount(self) -> float:
        return sum((line.amount for line in self.energy), 0.0)

    @property
    def subtotal(self) -> float:
        """Energy + demand, before VAT and export credit."""
        return self.energy_amount + self.demand_amount

    @property
    def total(self) -> float:
        """Subtotal + VAT − export credit."""
        return self.subtotal + self.vat - self.export_credit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "month": self.month, "hours": self.hours, "month_hours": self.month_hours,
            "covered_share": self.covered_share,
            "energy": [{"period": e.period, "kwh": e.kwh, "amount": e.amount} for e in self.energy],
            "energy_kwh": self.energy_kwh, "energy_amount": self.energy_amount,
            "peak_kw": self.peak_kw, "peak_at": self.peak_at, "peak_period": self.peak_period,
            "demand_kw": self.demand_kw,
            "demand_rate_per_kw_month": self.demand_rate_per_kw_month, "demand_amount": self.demand_amount,
            "demand_vat": self.demand_vat,
            "export_kwh": self.export_kwh, "export_credit": self.export_credit,
            "subtotal": self.subtotal, "vat": self.vat, "total": self.total,
        }


@dataclass(frozen=True)
class Bill:
    """An itemised bill: one :class:`MonthBill` per local billing month touched by the series."""

    tariff: str
    currency: str
    timezone: str
    months: tuple[MonthBill, ...]

    @property
    def total(self) -> float:
        """[currency] including VAT, net of export credit"""
        return sum((m.total for m in self.months), 0.0)

    @property
    def vat(self) -> float:
        return sum((m.vat for m in self.months), 0.0)

    @property
    def energy_kwh(self) -> float:
        return sum((m.energy_kwh for m in self.months), 0.0)

    @property
    def export_credit(self) -> float:
        return sum((m.export_credit for m in self.months), 0.0)

    def demand_beyond_coverage(self, with_vat: bool) -> float:
        """:meth:`MonthBill.demand_beyond_coverage` over the months [currency]: 0 when every month is whole."""
        return sum((m.demand_beyond_coverage(with_vat) for m in self.months), 0.0)

    def month(self, label: str) -> MonthBill:
        """The month ``"YYYY-MM"`` (KeyError if the series does not touch it)."""
        for m in self.months:
            if m.month == label:
                return m
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: tariff, currency, timezone, total, months."""
        return {"tariff": self.tariff, "currency": self.currency, "timezone": self.timezone,
                "total": self.total, "months": [m.to_dict() for m in self.months]}

    def to_frame(self) -> pd.DataFrame:
        """One row per month (index ``month``); energy per period as ``<period>_kwh`` / ``<period>_amount``."""
        rows = []
        for m in self.months:
            row: dict[str, Any] = {"month": m.month, "hours": m.hours}
            for line in m.energy:
                row[f"{line.period}_kwh"] = line.kwh
                row[f"{line.period}_amount"] = line.amount
            row.update({k: v for k, v in m.to_dict().items() if k not in ("month", "hours", "energy")})
            rows.append(row)
        if not rows:
            return pd.DataFrame(index=pd.Index([], name="month"))
        return pd.DataFrame(rows).set_index("month")


def _array(values: Any, n: int, name: str, starts: pd.DatetimeIndex, allow_nan: bool) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.shape != (n,):
        raise ValueError(f"{name} has shape {array.shape}; expected ({n},) like the step starts")
    bad = ~np.isfinite(array) if not allow_nan else np.isinf(array)
    bad |= array < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {array[i]} at {starts[i]} is not a finite value >= 0")
    return array


def _durations(duration_h: np.ndarray | float, n: int, starts: pd.DatetimeIndex) -> np.ndarray:
    dur = np.broadcast_to(np.asarray(duration_h, dtype=float), (n,))
    bad = ~(np.isfinite(dur) & (dur > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"duration_h[{i}] = {dur[i]} at {starts[i]} must be a positive number of hours")
    return dur


@dataclass(frozen=True)
class _MonthPeak:
    """A month's peak demand and the window that set it (:func:`sets_month_peak`)."""

    kw: float
    """[kW] highest window-average import"""
    window_start_minute: int
    """UTC start of the window that set it [min since 1970-01-01]"""
    first_step: int
    """index of that window's first step in the series"""


@dataclass(frozen=True)
class _Windows:
    """The locally aligned demand windows of a series, in time order."""

    start_minute: np.ndarray
    """UTC start of each window [min since 1970-01-01]"""
    average_kw: np.ndarray
    """average import over the window's measured steps [kW]"""
    first_step: np.ndarray
    """index of each window's first measured step in the series"""
    month: np.ndarray
    """local billing month of each window (datetime64[M])"""


def _windows(loc: LocalSteps, dur: np.ndarray, kw: np.ndarray, window_minutes: int) -> _Windows:
    if window_minutes <= 0 or 1440 % window_minutes:
        raise ValueError(f"window_minutes = {window_minutes} must divide a day")
    ok = np.isfinite(kw)
    buckets, inverse = np.unique(window_starts(loc, window_minutes)[ok], return_inverse=True)  # in time order
    average_kw = (np.bincount(inverse, weights=kw[ok] * dur[ok], minlength=len(buckets))
                  / np.bincount(inverse, weights=dur[ok], minlength=len(buckets)))
    first_step = np.full(len(buckets), len(kw))
    np.minimum.at(first_step, inverse, np.flatnonzero(ok))
    month = np.empty(len(buckets), dtype="datetime64[M]")
    month[inverse] = loc.month[ok]  # a window never crosses local midnight, so never a month end
    return _Windows(buckets, average_kw, first_step, month)


def _month_peaks(loc: LocalSteps, dur: np.ndarray, kw: np.ndarray, window_minutes: int) -> dict[str, _MonthPeak]:
    w = _windows(loc, dur, kw, window_minutes)
    if not len(w.average_kw):
        return {}
    buckets, average_kw, first_step = w.start_minute, w.average_kw, w.first_step
    months, month_of_bucket = np.unique(w.month, return_inverse=True)
    peaks = np.full(len(months), -np.inf)
    np.maximum.at(peaks, month_of_bucket, average_kw)
    out = {}
    for j, month in enumerate(months):
        mine = np.flatnonzero(month_of_bucket == j)  # the month's windows in time order
        before = np.concatenate([[-np.inf], np.maximum.accumulate(average_kw[mine])[:-1]])
        b = int(mine[np.flatnonzero(average_kw[mine] > before + PEAK_AT_TOLERANCE_KW)[-1]])  # sets_month_peak
        out[month_label(month)] = _MonthPeak(float(peaks[j]), int(buckets[b]), int(first_step[b]))
    return out


def peak_demand_kw(site: SiteTariff, starts: pd.DatetimeIndex, duration_h: np.ndarray | float,
                   import_kw: np.ndarray, window_minutes: int = 30) -> dict[str, float]:
    """Highest locally aligned window-average import per billing month (NaN steps skipped). [kW]"""
    starts = utc_index(starts)
    n = len(starts)
    dur = _durations(duration_h, n, starts)
    kw = _array(import_kw, n, "import_kw", starts, allow_nan=True)
    return {label: p.kw for label, p in _month_peaks(site.local(starts), dur, kw, window_minutes).items()}


def window_average_kw(site: SiteTariff, starts: pd.DatetimeIndex, duration_h: np.ndarray | float,
                      import_kw: np.ndarray, window_minutes: int = 30) -> pd.Series:
    """The demand measure itself: the average import of each locally aligned window over its measured steps (NaN
    steps skipped), indexed by the window's UTC start, in time order; each month's highest is its peak
    (:func:`peak_demand_kw`). [kW]"""
    starts = utc_index(starts)
    n = len(starts)
    w = _windows(site.local(starts), _durations(duration_h, n, starts),
                 _array(import_kw, n, "import_kw", starts, allow_nan=True), window_minutes)
    return pd.Series(w.average_kw, index=pd.to_datetime(w.start_minute * 60, unit="s", utc=True), name="import_kw")


def _previous_months(month: str, count: int) -> list[str]:
    m = np.datetime64(month, "M")
    return [month_label(m - k) for k in range(count)]


def billed_demand_kw(charge: DemandCharge, month: str, *peaks: Mapping[str, float]) -> float | None:
    """The demand billing month ``month`` (``"YYYY-MM"``) is billed on under ``charge``, from the month peaks
    known [kW] (``{"YYYY-MM": kW}``; several mappings: each month's larger value): the month's own peak
    (``month_max``) or the highest of it and the 11 months before it (``rolling_12_month_max``,
    :attr:`~optimizer.tariff.DemandCharge.months_billed`). None if no peak of those months is known. The rule of
    bills (:func:`make_bill`), of the level the planner and the live dispatcher take as already billed, and of the
    live controller's ``demand.billed_kw``. [kW]"""
    known = [v for m in _previous_months(month, charge.months_billed)
             if (v := max((p[m] for p in peaks if m in p), default=None)) is not None]
    return max(known) if known else None


def make_bill(site: SiteTariff, starts: pd.DatetimeIndex, duration_h: np.ndarray | float, import_kw: np.ndarray,
              export_kw: np.ndarray | None = None, prior_peaks_kw: Mapping[str, float] | None = None,
              by_duration: bool = False) -> Bill:
    """Itemised bill of a series of steps.

    Parameters
    ----------
    starts : pandas.DatetimeIndex
        Step starts, timezone-aware (UTC).
    duration_h : numpy.ndarray or float
        Step durations. [h]
    import_kw, export_kw : numpy.ndarray
        Average import and export power of each step, both >= 0, no NaN. [kW]
    prior_peaks_kw : mapping, optional
        ``{"YYYY-MM": kW}`` peaks known from outside the series (earlier months for the 12-month basis,
        or the month-to-date peak). [kW]
    by_duration : bool
        Price each step over its whole duration (steps must be whole minutes) instead of at its start;
        only matters for steps that straddle a window edge, e.g. hourly steps with a 17:30 edge.
    """
    starts = utc_index(starts)
    n = len(starts)
    dur = _durations(duration_h, n, starts)
    imp = _array(import_kw, n, "import_kw", starts, allow_nan=False)
    exp = np.zeros(n) if export_kw is None else _array(export_kw, n, "export_kw", starts, allow_nan=False)
    prior = dict(prior_peaks_kw or {})
    for key in prior:
        if not _MONTH.match(key):
            raise ValueError(f"prior_peaks_kw key {key!r} is not a month 'YYYY-MM'")
    loc = site.local(starts)
    prices = site.prices_local(loc, dur if by_duration else None)
    month_values, month_idx = np.unique(loc.month, return_inverse=True)
    labels = [month_label(m) for m in month_values]
    k = len(labels)

    def per_month(weights: np.ndarray) -> np.ndarray:
        return np.bincount(month_idx, weights=weights, minlength=k)

    energy_kwh = imp * dur
    hours = per_month(dur)
    energy_vat = per_month(energy_kwh * (prices.import_price_gross - prices.import_price))
    export_kwh = per_month(exp * dur)
    export_credit = per_month(exp * dur * prices.export_price)
    lines = {p: (per_month(energy_kwh * prices.period_share[:, j]),
                 per_month(energy_kwh * prices.import_price_by_period[:, j]))
             for j, p in enumerate(site.tariff.periods)}
    peaks_by_window: dict[int, dict[str, _MonthPeak]] = {}

    def peaks(window: int) -> dict[str, _MonthPeak]:
        if window not in peaks_by_window:
            peaks_by_window[window] = _month_peaks(loc, dur, imp, window)
        return peaks_by_window[window]

    months = []
    for i, label in enumerate(labels):
        first = site.month_start(label)
        following = str(pd.Period(label, "M") + 1)
        month_hours = (site.month_start(following) - first).total_seconds() / 3600.0
        charge = site.billed_demand_charge(label)
        window_peaks = peaks(charge.window_minutes if charge else 30)
        series_peaks = {m: p.kw for m, p in window_peaks.items()}
        peak = window_peaks.get(label)
        peak_at = peak_period = None
        if peak is not None:
            peak_at = pd.Timestamp(peak.window_start_minute * 60, unit="s", tz="UTC").isoformat()
            peak_period = site.tariff.periods[int(np.argmax(prices.period_share[peak.first_step]))]
        demand_kw = rate = None
        demand_amount = 0.0
        if charge is not None:
            rate = charge.rate_per_kw_month
            demand_kw = billed_demand_kw(charge, label, series_peaks, prior)
            if demand_kw is not None:
                demand_amount = demand_kw * rate
        demand_vat = demand_amount * site.vat_rate(first)
        months.append(MonthBill(
            month=label, hours=float(hours[i]), month_hours=month_hours,
            energy=tuple(EnergyLine(p, float(kwh[i]), float(amount[i])) for p, (kwh, amount) in lines.items()),
            peak_kw=series_peaks.get(label), peak_at=peak_at, peak_period=peak_period, demand_kw=demand_kw,
            demand_rate_per_kw_month=rate,
            demand_amount=demand_amount, demand_vat=demand_vat, export_kwh=float(export_kwh[i]),
            export_credit=float(export_credit[i]), vat=float(energy_vat[i] + demand_vat)))
    return Bill(tariff=site.tariff.name, currency=site.currency, timezone=site.timezone, months=tuple(months))
