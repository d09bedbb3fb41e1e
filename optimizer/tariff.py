"""Tariffs as data: load a tariff file or a shipped preset, bind it to a site, price steps.

A :class:`Tariff` is one validated YAML file (format: docs/tariffs.md). :meth:`Tariff.bind` adds the
site's time zone and extra holidays and gives a :class:`SiteTariff`, which prices UTC steps
(vectorised: a year of 15-minute steps takes milliseconds), tells the demand charge and VAT in force,
finds billing months, and computes month peaks and itemised bills (:mod:`optimizer.billing`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ems.yamlfile import ConfigError, FieldError, load_model
from optimizer import billing
from optimizer.site import TariffRef
from optimizer.tariff_calendar import (
    HolidayCalendar,
    LocalSteps,
    check_timezone,
    local_steps,
)
from optimizer.tariff_schema import DAY_TYPES, MINUTES_PER_DAY, Dated, TariffSpec, check_tariff, format_minutes

PRESET_DIR = Path(__file__).with_name("tariffs")
_BEGINNING = np.datetime64("0001-01-01", "D")
_DATED = {"schedules": "time-of-use schedule", "energy_prices": "energy prices", "demand_charges": "demand charge",
          "export": "export terms", "vat": "VAT rate"}
"""Effective-dated lists of a tariff file and how error messages name them."""


def list_presets() -> list[str]:
    """Names of the shipped tariff presets (files in optimizer/tariffs/)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_tariff(ref: TariffRef, base_dir: Path) -> Tariff:
    """The tariff a site file refers to: a preset, or a file relative to the site file's folder."""
    if ref.preset is not None:
        return Tariff.preset(ref.preset)
    assert ref.file is not None  # TariffRef guarantees exactly one of preset / file
    return Tariff.from_file(ref.file if ref.file.is_absolute() else base_dir / ref.file)


@dataclass(frozen=True)
class DemandCharge:
    """The demand charge in force for a billing month."""

    rate_per_kw_month: float
    """[currency/(kW·month)] excluding VAT"""
    basis: Literal["month_max", "rolling_12_month_max"]
    window_minutes: int
    """[min] averaging window of the demand measurement"""

    @property
    def months_billed(self) -> int:
        """How many billing months a month's peak is billed in: 1 (``month_max``: its own), 12
        (``rolling_12_month_max``: its own and the 11 after it)."""
        return 12 if self.basis == "rolling_12_month_max" else 1


@dataclass(frozen=True)
class ExportRule:
    """What export earns on a date; the cap is informational (billing credits all export)."""

    price_per_kwh: float
    """[currency/kWh]"""
    cap_pct_of_pv: float | None
    """[%] of PV output that may be exported; None = not stated"""


@dataclass(frozen=True)
class TariffPrices:
    """Prices per step (arrays aligned with the step starts that were priced).

    Without step durations each step is priced at its start; with them, prices are time-weighted averages
    over the step, so an hourly step from 09:00 under a 09:30 peak edge is half normal, half peak.

    Attributes
    ----------
    import_price : numpy.ndarray
        Energy price excluding VAT. [currency/kWh]
    import_price_gross : numpy.ndarray
        Energy price including VAT (what the planner optimises on). [currency/kWh]
    export_price : numpy.ndarray
        Credit per exported kWh (no VAT). [currency/kWh]
    period : numpy.ndarray
        Period name in force at each step start (str).
    vat_rate : numpy.ndarray
        VAT rate in force (time-weighted over the step). [-]
    period_share : numpy.ndarray
        Shape (steps, periods): fraction of each step's time in each period of ``Tariff.periods``. [-]
    import_price_by_period : numpy.ndarray
        Shape (steps, periods): each period's part of ``import_price``; rows sum to it. [currency/kWh]
    """

    import_price: np.ndarray
    import_price_gross: np.ndarray
    export_price: np.ndarray
    period: np.ndarray
    vat_rate: np.ndarray
    period_share: np.ndarray
    import_price_by_period: np.ndarray


def _effective_dates(entries: list[Dated]) -> np.ndarray:
    return np.array([_BEGINNING if e.effective_from is None else np.datetime64(e.effective_from, "D")
                     for e in entries], dtype="datetime64[D]")


class Tariff:
    """A validated tariff file, compiled into lookup tables."""

    def __init__(self, spec: TariffSpec, source: str):
        errors = check_tariff(spec)
        if errors:
            raise ConfigError(source, errors)
        self.spec = spec
        self.source = source
        self.periods: tuple[str, ...] = tuple(spec.periods)
        index = {name: i for i, name in enumerate(self.periods)}
        self._dates = {field: _effective_dates(getattr(spec, field)) for field in _DATED}
        self._windows = np.zeros((len(spec.schedules), len(DAY_TYPES), MINUTES_PER_DAY), dtype=np.int16)
        for s, schedule in enumerate(spec.schedules):
            for d, day_type in enumerate(DAY_TYPES):
                # Without holiday windows no day is classed a holiday (holidays priced as their weekday).
                for w in getattr(schedule, day_type) or schedule.mon_sat:
                    self._windows[s, d, w.start:w.end] = index[w.period]
        self._prices = np.array([[e.prices[p] for p in self.periods] for e in spec.energy_prices], dtype=float)
        self._vat = np.array([v.rate for v in spec.vat], dtype=float)
        self._export_price = np.array([x.price_per_kwh for x in spec.export], dtype=float)
        # Window start minutes of every schedule and day type, plus 1440 [min]: steps cut there never straddle.
        self.edges_min = np.array(sorted({w.start for schedule in spec.schedules for d in DAY_TYPES
                                          for w in getattr(schedule, d) or ()} | {MINUTES_PER_DAY}), dtype=np.int64)

    def step_problems(self, step_minutes: int) -> list[str]:
        """Why steps of ``step_minutes`` cannot carry this tariff: a window that starts inside a step (that step
        would be priced and named by the period at its start), or a demand-charge window that is not whole steps."""
        problems = []
        off_grid = [int(m) for m in self.edges_min if m % step_minutes]
        if off_grid:
            shown = ", ".join(format_minutes(m) for m in off_grid[:4]) + (" …" if len(off_grid) > 4 else "")
            problems.append(f"{step_minutes}-minute steps straddle this tariff's window edges at {shown} (local); "
                            "choose a step that divides the windows")
        windows = sorted({d.window_minutes for d in self.spec.demand_charges if d.window_minutes % step_minutes})
        if windows:
            problems.append(f"{step_minutes}-minute steps do not make up this tariff's {windows[0]}-minute demand "
                            "window; choose a step that divides it")
        return problems

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def currency(self) -> str:
        return self.spec.currency

    @classmethod
    def from_file(cls, path: str | Path) -> Tariff:
        """Load and check a tariff YAML file; problems raise :class:`ConfigError` naming file and field."""
        return cls(load_model(TariffSpec, path), str(path))

    @classmethod
    def preset(cls, name: str) -> Tariff:
        """A shipped preset by name (see :func:`list_presets`)."""
        shipped = list_presets()
        if name not in shipped:
            raise ConfigError(f"tariff preset {name!r}",
                              [FieldError("tariff.preset", f"unknown preset {name!r}; shipped: {', '.join(shipped)}")])
        return cls.from_file(PRESET_DIR / f"{name}.yaml")

    def bind(self, timezone: str, extra_holidays: Iterable[date] = ()) -> SiteTariff:
        """This tariff at a site: local time zone (IANA) and extra days billed as public holidays."""
        return SiteTariff(self, timezone, extra_holidays)

    def _lookup(self, field: str, days: np.ndarray) -> np.ndarray:
        """Index of the entry of ``field`` in force on each local day; days before the first entry raise."""
        dates = self._dates[field]
        idx = np.searchsorted(dates, days, side="right") - 1
        if len(idx) and idx.min() < 0:
            raise ValueError(f"tariff {self.name} ({self.source}) has no {_DATED[field]} before {dates[0]} "
                             f"(asked for {days[idx < 0].min()})")
        return idx

    def evaluate(self, loc: LocalSteps) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Period index, import price [currency/kWh], VAT rate [-] and export price [currency/kWh] in force at
        each local instant of ``loc``."""
        schedule = self._lookup("schedules", loc.day)
        period_idx = self._windows[schedule, loc.day_type, loc.minute]
        import_price = self._prices[self._lookup("energy_prices", loc.day), period_idx]
        vat_rate = self._vat[self._lookup("vat", loc.day)]
        if len(self._export_price):
            export_price = self._export_price[self._lookup("export", loc.day)]
        else:
            export_price = np.zeros(len(loc.day))
        return period_idx, import_price, vat_rate, export_price

    @property
    def priced_from(self) -> date | None:
        """The first local day the tariff prices in full (a schedule, energy prices, VAT and, where it has any,
        export terms in force); None: every day."""
        firsts = [self._dates[f][0] for f in ("schedules", "energy_prices", "vat", "export") if len(self._dates[f])]
        first = max(firsts) if firsts else _BEGINNING
        return None if first == _BEGINNING else first.astype(date)

    def in_force(self, field: str, day: date) -> Any | None:
        """The entry of an effective-dated list (``vat``, ``demand_charges``, ``export``, ...) in force on a
        local day; None if the list is empty or starts later."""
        idx = int(np.searchsorted(self._dates[field], np.datetime64(day, "D"), side="right")) - 1
        return getattr(self.spec, field)[idx] if idx >= 0 else None

    def __repr__(self) -> str:
        return f"Tariff({self.name!r}, {self.currency})"


class SiteTariff:
    """A tariff bound to a site's time zone and holidays; prices steps and makes bills."""

    def __init__(self, tariff: Tariff, timezone: str, extra_holidays: Iterable[date] = ()):
        self.tariff = tariff
        self.timezone = check_timezone(timezone)
        self._zone = ZoneInfo(self.timezone)
        self._month_starts: dict[str, pd.Timestamp] = {}
        source = tariff.spec.holidays
        self.calendar = HolidayCalendar(source.country if source else None,
                                        source.subdivision if source else None, extra_holidays)
        """The site's public holidays (country and extra days), whatever their pricing."""
        self._pricing_calendar = (self.calendar if tariff.spec.holiday_pricing == "holiday_windows"
                                  else HolidayCalendar(None))

    @property
    def currency(self) -> str:
        return self.tariff.currency

    def local(self, starts: pd.DatetimeIndex) -> LocalSteps:
        """Local day, minute, day type and billing month of each step start.

        The day type is the one the tariff prices by: with ``holidays.pricing: day_of_week`` a public holiday
        is its weekday (``mon_sat`` or ``sunday``)."""
        return local_steps(starts, self.timezone, self._pricing_calendar)

    def _local_day(self, at: datetime) -> date:
        """The site-local date of instant ``at`` (once per control cycle: the standard library's zone, not pandas')."""
        if not isinstance(at, datetime):
            at = pd.Timestamp(at)
        if at.tzinfo is None:
            raise ValueError("times must be timezone-aware (UTC)")
        return at.astimezone(self._zone).date()

    def prices(self, starts: pd.DatetimeIndex, duration_h: np.ndarray | float | None = None) -> TariffPrices:
        """Prices of the steps starting at ``starts`` (UTC).

        Without ``duration_h`` [h] each step is priced at the period in force at its start; with it, prices
        are averaged over each step (durations must be whole minutes).
        """
        return self.prices_local(self.local(starts), duration_h)

    def prices_local(self, loc: LocalSteps, duration_h: np.ndarray | float | None = None) -> TariffPrices:
        """:meth:`prices` for steps already classified by :meth:`local`."""
        t = self.tariff
        n, n_periods = len(loc.day), len(t.periods)
        if duration_h is None:
            group, weight, first = np.arange(n), np.ones(n), np.arange(n)
            period_idx, price, vat, export = t.evaluate(loc)
        else:
            minutes = np.broadcast_to(np.asarray(duration_h, dtype=float) * 60.0, (n,))
            whole = np.round(minutes).astype(np.int64)
            if n and (np.abs(minutes - whole).max() > 1e-6 or whole.min() <= 0):
                raise ValueError("duration_h must be positive whole minutes to price steps by duration")
            # Sub-steps of g minutes never straddle a window edge, a local midnight or a DST shift.
            g = int(np.gcd.reduce(np.concatenate([t.edges_min, [30], loc.wall_minute % MINUTES_PER_DAY, whole])))
            count = whole // g
            group = np.repeat(np.arange(n), count)
            first = np.cumsum(count) - count
            offset = np.arange(len(group)) - np.repeat(first, count)
            sub_minute = np.repeat(loc.utc_minute, count) + offset * g
            sub = self.local(pd.DatetimeIndex(sub_minute.astype("datetime64[m]")).tz_localize("UTC"))
            period_idx, price, vat, export = t.evaluate(sub)
            weight = 1.0 / count[group]

        def per_step(values: np.ndarray) -> np.ndarray:
            return np.bincount(group, weights=weight * values, minlength=n)

        cell = group * n_periods + period_idx
        share = np.bincount(cell, weights=weight, minlength=n * n_periods).reshape(n, n_periods)
        by_period = np.bincount(cell, weights=weight * price, minlength=n * n_periods).reshape(n, n_periods)
        return TariffPrices(import_price=by_period.sum(axis=1), import_price_gross=per_step(price * (1.0 + vat)),
                            export_price=per_step(export),
                            period=np.asarray(t.periods, dtype=object)[period_idx[first]],
                            vat_rate=per_step(vat), period_share=share, import_price_by_period=by_period)

    def day_type(self, at: datetime) -> str:
        """``mon_sat``, ``sunday`` or ``holiday`` as the tariff prices the local day of ``at``."""
        return DAY_TYPES[int(self.local(pd.DatetimeIndex([pd.Timestamp(at)])).day_type[0])]

    def vat_rate(self, at: datetime) -> float:
        """VAT rate in force on the local day of ``at``. [-]"""
        day = self._local_day(at)
        entry = self.tariff.in_force("vat", day)
        if entry is None:
            raise ValueError(f"tariff {self.tariff.name} has no VAT rate for {day}")
        return entry.rate

    def demand_rate_gross(self, month: str) -> float:
        """What billing month ``month`` pays per kW of billed demand: the rate of its demand charge
        (:meth:`billed_demand_charge`) with the VAT in force on its 1st, as a bill adds it; 0 without one.
        [currency/(kW·month)]"""
        charge = self.billed_demand_charge(month)
        return 0.0 if charge is None else charge.rate_per_kw_month * (1.0 + self.vat_rate(self.month_start(month)))

    def demand_charge(self, at: datetime) -> DemandCharge | None:
        """The demand charge in force on the local day of ``at``; None if the tariff has none then."""
        spec = self.tariff.in_force("demand_charges", self._local_day(at))
        return None if spec is None else DemandCharge(spec.rate_per_kw_month, spec.basis, spec.window_minutes)

    def billed_demand_charge(self, month: str) -> DemandCharge | None:
        """The demand charge billing month ``month`` (``"YYYY-MM"``) is billed on: the one in force on its first
        local day (a charge that starts mid-month bills from the next month), the rule of bills, plans and the live
        peak defence alike; None if none."""
        return self.demand_charge(self.month_start(month))

    def export_rule(self, at: datetime) -> ExportRule:
        """Export price and (informational) cap on the local day of ``at``; none stated = price 0, no cap."""
        spec = self.tariff.in_force("export", self._local_day(at))
        return ExportRule(0.0, None) if spec is None else ExportRule(spec.price_per_kwh, spec.cap_pct_of_pv)

    def billing_month(self, ts: datetime) -> str:
        """Local billing month of an instant, e.g. ``"2026-05"``."""
        day = self._local_day(ts)
        return f"{day.year:04d}-{day.month:02d}"

    def billing_months(self, starts: pd.DatetimeIndex) -> np.ndarray:
        """Local billing month label of each step start (array of str)."""
        return np.datetime_as_string(self.local(starts).month, unit="M").astype(object)

    def month_start(self, month: str) -> pd.Timestamp:
        """UTC instant of local midnight starting billing month ``"YYYY-MM"`` (kept: the controller asks every
        cycle)."""
        start = self._month_starts.get(month)
        if start is None:
            local = pd.Timestamp(f"{month}-01").tz_localize(self.timezone, ambiguous=True, nonexistent="shift_forward")
            start = self._month_starts[month] = local.tz_convert("UTC")
        return start

    def peak_demand_kw(self, starts: pd.DatetimeIndex, duration_h: np.ndarray | float, import_kw: np.ndarray,
                       window_minutes: int = 30) -> dict[str, float]:
        """Highest window-average import per local billing month. [kW]

        Windows are aligned to the local clock (:00, :30 for 30 min). Steps shorter than the window are
        averaged over the time they cover (NaN steps are missing and skipped); a step as long as the
        window or longer counts as its own average.
        """
        return billing.peak_demand_kw(self, starts, duration_h, import_kw, window_minutes)

    def bill(self, starts: pd.DatetimeIndex, duration_h: np.ndarray | float, import_kw: np.ndarray,
             export_kw: np.ndarray | None = None, prior_peaks_kw: Mapping[str, float] | None = None,
             by_duration: bool = False) -> billing.Bill:
        """Itemised bill per local billing month for a series of steps (see :func:`optimizer.billing.make_bill`)."""
        return billing.make_bill(self, starts, duration_h, import_kw, export_kw, prior_peaks_kw, by_duration)

    def __repr__(self) -> str:
        return f"SiteTariff({self.tariff.name!r}, {self.timezone!r})"


__all__ = ["DemandCharge", "ExportRule", "SiteTariff", "Tariff", "TariffPrices", "list_presets", "load_tariff"]
