"""The tariff YAML format (pydantic models) and the cross-field checks that name the offending field.

Field-by-field description: docs/tariffs.md. Pydantic checks types and ranges; :func:`check_tariff`
checks what spans fields (windows tiling each day, known period names, ordered effective dates,
a known holiday country) and reports each problem with its path, e.g. ``schedules[1].mon_sat[2].start``.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

import holidays as holidays_lib
from pydantic import Field, field_validator

from ems.yamlfile import FieldError
from optimizer.site import StrictModel

MINUTES_PER_DAY = 1440
DAY_TYPES: tuple[str, ...] = ("mon_sat", "sunday", "holiday")
"""Day types in index order: Monday–Saturday, Sunday, public holiday."""

_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_hhmm(value: object) -> int:
    """``"09:30"`` → 570 minutes after local midnight; ``"24:00"`` → 1440. [min]"""
    if not isinstance(value, str):
        raise ValueError(
            f"write times as quoted strings 'HH:MM' (got {value!r}; YAML reads an unquoted 17:30 as the number 1050)")
    match = _HHMM.match(value.strip())
    if not match:
        raise ValueError(f"time {value!r} is not 'HH:MM'")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes != 0):
        raise ValueError(f"time {value!r} is outside 00:00–24:00")
    return hours * 60 + minutes


def format_minutes(minutes: int) -> str:
    """570 → ``"09:30"``."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Dated(StrictModel):
    """An entry of an effective-dated list: applies from local midnight of ``from`` until the next entry.

    Only the first entry of a list may omit ``from`` (it then applies to every earlier date too).
    """

    effective_from: date | None = Field(default=None, alias="from")


class Window(StrictModel):
    """One time-of-use window of a local day: [start, end) in local wall-clock time."""

    start: int = Field(description="[min] after local midnight, given as 'HH:MM'")
    end: int = Field(description="[min] after local midnight, given as 'HH:MM' ('24:00' = end of day)")
    period: str

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hhmm(cls, value: object) -> int:
        return parse_hhmm(value)


class Schedule(Dated):
    """The windows of each day type, in force from ``from``.

    ``holiday`` is required when public holidays have windows of their own (``holidays.pricing:
    holiday_windows``, the default) and must be left out when they are priced as their day of the week.
    """

    label: str | None = None
    mon_sat: list[Window]
    sunday: list[Window]
    holiday: list[Window] | None = None


class EnergyPrices(Dated):
    """Energy price per period, excluding VAT. [currency/kWh]"""

    prices: dict[str, float]


class DemandChargeSpec(Dated):
    """A charge per kW per month on the highest window-average import."""

    rate_per_kw_month: float = Field(ge=0, description="[currency/(kW·month)] excluding VAT")
    basis: Literal["month_max", "rolling_12_month_max"] = Field(
        description="month_max: the billing month's highest average; rolling_12_month_max: the highest of the "
                    "billing month and the 11 before it (Japanese contract demand)")
    window_minutes: Literal[15, 30, 60] = Field(default=30, description="[min] averaging window, aligned locally")


class ExportTerms(Dated):
    """What exported energy earns, and the informational export cap."""

    price_per_kwh: float = Field(default=0.0, ge=0, description="[currency/kWh], not subject to VAT here")
    cap_pct_of_pv: float | None = Field(default=None, ge=0, le=100,
                                        description="[%] of PV output that may be exported; None = not stated")


class VatRate(Dated):
    """Value-added tax on energy and demand charges."""

    rate: float = Field(ge=0, le=1, description="[-] e.g. 0.08 for 8 %")


HolidayPricing = Literal["holiday_windows", "day_of_week"]
"""How a public holiday is priced: ``holiday_windows`` by the schedules' ``holiday`` windows;
``day_of_week`` like any other day of its weekday (a Monday–Saturday holiday keeps the peak, a Sunday
holiday is a Sunday), as EVN's text prices it."""


class HolidaySource(StrictModel):
    """Which country's public holidays (python-holidays codes, e.g. VN, JP) and how they are priced."""

    country: str
    subdivision: str | None = None
    pricing: HolidayPricing = Field(default="holiday_windows",
                                    description="holiday_windows: the schedules' holiday windows; day_of_week: "
                                                "priced like the same weekday (the site's extra holidays too)")


class TariffSpec(StrictModel):
    """A whole tariff file."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = Field(min_length=1)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. VND, JPY")
    sources: list[str] = Field(min_length=1, description="Where the numbers come from")
    notes: str | None = None
    holidays: HolidaySource | None = Field(description="Public-holiday country; null = no public holidays")

    @property
    def holiday_pricing(self) -> HolidayPricing:
        """How public holidays (country and site extra days) are priced; no country = by holiday windows."""
        return self.holidays.pricing if self.holidays is not None else "holiday_windows"
    periods: list[str] = Field(min_length=1, description="Period names used by the windows and prices")
    schedules: list[Schedule] = Field(min_length=1)
    energy_prices: list[EnergyPrices] = Field(min_length=1)
    demand_charges: list[DemandChargeSpec] = Field(default_factory=list)
    export: list[ExportTerms] = Field(default_factory=list)
    vat: list[VatRate] = Field(min_length=1)


def _check_dates(entries: list[Dated], field: str) -> list[FieldError]:
    errors: list[FieldError] = []
    previous: date | None = None
    for i, entry in enumerate(entries):
        when = entry.effective_from
        if when is None:
            if i > 0:
                errors.append(FieldError(f"{field}[{i}].from", "required on every entry but the first"))
            continue
        if previous is not None and when <= previous:
            errors.append(FieldError(f"{field}[{i}].from",
                                     f"{when} must be later than the entry before it ({previous})"))
        previous = when
    return errors


def _check_day(windows: list[Window], field: str, periods: set[str]) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, w in enumerate(windows):
        if w.period not in periods:
            errors.append(FieldError(f"{field}[{i}].period",
                                     f"unknown period {w.period!r}; declared periods: {', '.join(sorted(periods))}"))
        if w.end <= w.start:
            errors.append(FieldError(f"{field}[{i}].end",
                                     f"{format_minutes(w.end)} is not after start {format_minutes(w.start)} "
                                     "(split windows that cross midnight at 24:00)"))
    covered = 0
    for i, w in sorted(enumerate(windows), key=lambda item: item[1].start):
        if w.end <= w.start:
            continue
        if w.start > covered:
            errors.append(FieldError(f"{field}[{i}].start",
                                     f"hours {format_minutes(covered)}–{format_minutes(w.start)} are not covered"))
        elif w.start < covered:
            errors.append(FieldError(f"{field}[{i}].start",
                                     f"overlaps another window up to {format_minutes(covered)}"))
        covered = max(covered, w.end)
    if covered < MINUTES_PER_DAY:
        errors.append(FieldError(field, f"hours {format_minutes(covered)}–24:00 are not covered"))
    return errors


def check_tariff(spec: TariffSpec) -> list[FieldError]:
    """Every cross-field problem of a validated tariff file, each with its field path (empty = fine)."""
    errors: list[FieldError] = []
    periods = set(spec.periods)
    if len(periods) != len(spec.periods):
        errors.append(FieldError("periods", "period names must be unique"))
    for field in ("schedules", "energy_prices", "demand_charges", "export", "vat"):
        errors += _check_dates(getattr(spec, field), field)
    for i, schedule in enumerate(spec.schedules):
        for day_type in DAY_TYPES:
            windows = getattr(schedule, day_type)
            if windows is not None:
                errors += _check_day(windows, f"schedules[{i}].{day_type}", periods)
        if schedule.holiday is None and spec.holiday_pricing == "holiday_windows":
            errors.append(FieldError(f"schedules[{i}].holiday", "required: public holidays are priced by their own "
                                                                "windows (or set holidays.pricing: day_of_week)"))
        if schedule.holiday is not None and spec.holiday_pricing == "day_of_week":
            errors.append(FieldError(f"schedules[{i}].holiday", "not used: holidays.pricing is day_of_week (holidays "
                                                                "are priced like their weekday); remove these windows"))
    for i, entry in enumerate(spec.energy_prices):
        for name in entry.prices:
            if name not in periods:
                errors.append(FieldError(f"energy_prices[{i}].prices.{name}", f"unknown period {name!r}"))
            elif entry.prices[name] < 0:
                errors.append(FieldError(f"energy_prices[{i}].prices.{name}",
                                         f"{entry.prices[name]} is negative; energy prices must be >= 0"))
        for name in spec.periods:
            if name not in entry.prices:
                errors.append(FieldError(f"energy_prices[{i}].prices", f"no price for period {name!r}"))
    if spec.holidays is not None:
        try:
            holidays_lib.country_holidays(spec.holidays.country, subdiv=spec.holidays.subdivision, years=2026)
        except NotImplementedError as exc:
            errors.append(FieldError("holidays", f"unknown holiday country/subdivision: {exc}"))
    return errors
