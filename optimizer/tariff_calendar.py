"""Local calendar of a site for tariffs: local day, minute of day, day type, billing month, demand windows.

Steps are labelled by their UTC start; everything here converts them to the site's IANA time zone
once and works on numpy arrays, so a year of 15-minute steps is classified in milliseconds.
Day types (index order of :data:`optimizer.tariff_schema.DAY_TYPES`): 0 Monday–Saturday, 1 Sunday,
2 public holiday (country holidays from the ``holidays`` package plus the caller's extra days).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib
import numpy as np
import pandas as pd

MON_SAT, SUNDAY, HOLIDAY = 0, 1, 2


def utc_index(starts: pd.DatetimeIndex | Iterable) -> pd.DatetimeIndex:
    """``starts`` as a UTC DatetimeIndex; naive timestamps are rejected (see docs/conventions.md)."""
    index = pd.DatetimeIndex(starts)
    if index.tz is None:
        raise ValueError("step starts must be timezone-aware (UTC)")
    return index.tz_convert("UTC")


def check_timezone(timezone: str) -> str:
    """Return ``timezone`` if it is a known IANA zone, else raise ValueError."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {timezone!r}") from exc
    return timezone


@dataclass(frozen=True)
class LocalSteps:
    """Local-time view of step starts.

    Attributes
    ----------
    day : numpy.ndarray
        Local calendar date of each step start (datetime64[D]).
    minute : numpy.ndarray
        Local wall-clock minute of the day, 0–1439. [min]
    day_type : numpy.ndarray
        0 Monday–Saturday, 1 Sunday, 2 public holiday.
    month : numpy.ndarray
        Local billing month (datetime64[M]).
    wall_minute : numpy.ndarray
        Local wall-clock time as minutes since 1970-01-01 (int64; repeats in a DST fall-back hour). [min]
    utc_minute : numpy.ndarray
        UTC time as minutes since 1970-01-01 (int64, unique per instant). [min]
    """

    day: np.ndarray
    minute: np.ndarray
    day_type: np.ndarray
    month: np.ndarray
    wall_minute: np.ndarray
    utc_minute: np.ndarray


class HolidayCalendar:
    """Public holidays of one country (optionally a subdivision) plus extra days named by the site, less the public
    holidays it works (``worked_days``: the load forecast's calendar only, ``site.worked_holidays``)."""

    def __init__(self, country: str | None, subdivision: str | None = None, extra_days: Iterable[date] = (),
                 worked_days: Iterable[date] = ()):
        self.country = country
        self.subdivision = subdivision
        self.extra_days = tuple(sorted(set(extra_days)))
        self.worked_days = tuple(sorted(set(worked_days)))
        self._by_year: dict[int, np.ndarray] = {}

    def _year(self, year: int) -> np.ndarray:
        if year not in self._by_year:
            days = {d for d in self.extra_days if d.year == year}
            if self.country is not None:
                days |= set(holidays_lib.country_holidays(self.country, subdiv=self.subdivision, years=year))
            days -= set(self.worked_days)
            self._by_year[year] = np.array(sorted(days), dtype="datetime64[D]")
        return self._by_year[year]

    def days(self, years: Iterable[int]) -> np.ndarray:
        """Holiday dates in the given years (datetime64[D], sorted)."""
        parts = [self._year(int(y)) for y in sorted(set(years))]
        return np.concatenate(parts) if parts else np.array([], dtype="datetime64[D]")


TARIFF_CALENDAR = "tariff"
"""The load forecast's holiday setting (``site.holidays``) that means "the tariff's calendar"."""


def forecast_calendar(tariff_calendar: HolidayCalendar, holiday_country: str | None,
                      worked_days: Iterable[date] = ()) -> HolidayCalendar:
    """The public holidays the load forecast treats as Sundays (``site.holidays``): the tariff's calendar (country,
    subdivision and the site's extra days) when ``holiday_country`` is :data:`TARIFF_CALENDAR`, else that
    country's (None: none) with the same extra days; less the days the plant works (``site.worked_holidays``). One
    rule for live control, ``ems plan`` and the offline MPC (docs/data.md)."""
    worked = tuple(worked_days)
    if holiday_country == TARIFF_CALENDAR:
        if not worked:
            return tariff_calendar
        return HolidayCalendar(tariff_calendar.country, tariff_calendar.subdivision, tariff_calendar.extra_days, worked)
    return HolidayCalendar(holiday_country, None, tariff_calendar.extra_days, worked)


def local_steps(starts: pd.DatetimeIndex, timezone: str, calendar: HolidayCalendar) -> LocalSteps:
    """Classify UTC step starts in the site's local time (vectorised)."""
    utc = utc_index(starts)
    wall = utc.tz_convert(timezone).tz_localize(None).to_numpy().astype("datetime64[m]")
    utc_min = utc.tz_localize(None).to_numpy().astype("datetime64[m]").astype(np.int64)
    day = wall.astype("datetime64[D]")
    minute = (wall - day).astype(np.int64)
    weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    if len(day):
        years = range(int(day.min().astype("datetime64[Y]").astype(int)) + 1970,
                      int(day.max().astype("datetime64[Y]").astype(int)) + 1971)
        holiday = np.isin(day, calendar.days(years))
    else:
        holiday = np.zeros(0, dtype=bool)
    day_type = np.where(holiday, HOLIDAY, np.where(weekday == 6, SUNDAY, MON_SAT))
    return LocalSteps(day=day, minute=minute, day_type=day_type, month=day.astype("datetime64[M]"),
                      wall_minute=wall.astype(np.int64), utc_minute=utc_min)


def window_starts(steps: LocalSteps, window_minutes: int) -> np.ndarray:
    """UTC start [min since epoch] of the locally aligned averaging window each step starts in.

    Windows are aligned to the local wall clock (e.g. :00 and :30); using the UTC minute keeps the two
    wall-clock 01:30 windows of a DST fall-back night apart.
    """
    return steps.utc_minute - steps.wall_minute % window_minutes


def month_label(month: np.datetime64) -> str:
    """``numpy.datetime64('2026-05')`` → ``"2026-05"``."""
    return str(np.datetime_as_string(np.datetime64(month, "M"), unit="M"))
