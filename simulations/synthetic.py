"""A seeded, reproducible synthetic year of PV and factory load for a site (Hai Phong by default).

PV: clear-sky power (optimizer.solar) × a persistent daily clearness (AR(1) in logit space) × intra-day
cloud noise, then rescaled month by month so each local calendar month's energy matches the reference
monthly yields (shape Jan..Dec, scaled to ``annual_yield_kwh_per_kwp`` × kWp), never above the AC limit.
Optionally the daily clearness's AR coefficient is calibrated so that the year's daily PV energy has a
requested lag-one correlation (``daily_energy_lag1``).

Load: a day shift and a night level in local time, × factors for Saturdays (optionally a lower Saturday
afternoon), Sundays and public holidays, a Tết shutdown, seeded irregular shutdown days, and correlated
multiplicative noise. Method and parameters: docs/data.md; :data:`PRESETS` names parameter sets (``hard``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import date, time, timedelta

import holidays
import numpy as np
import pandas as pd
from pydantic import Field

from optimizer.shift import on_shift
from optimizer.site import PVSpec, SiteInfo, StrictModel
from optimizer.solar import HAI_PHONG_MONTHLY_KWH_PER_KWP, clear_sky_pv_kw

DAILY_CLEARNESS_AR = 0.6
"""Lag-one autocorrelation of the daily clearness (in logit space). [-]"""
DAILY_CLEARNESS_SPREAD = 1.0
"""Standard deviation of the daily clearness in logit space. [-]"""
INTRADAY_AR_PER_HOUR = 0.5
"""Autocorrelation of the intra-day cloud noise one hour apart. [-]"""
INTRADAY_SPREAD = 0.5
"""Standard deviation of the intra-day noise on a fully overcast day, × (1 − daily clearness). [-]"""
LOAD_NOISE_AR_PER_HOUR = 0.5
"""Autocorrelation of the load noise one hour apart. [-]"""
LAG1_AR_BOUNDS = (-0.95, 0.98)
"""Range searched for the daily clearness's AR coefficient when calibrating ``daily_energy_lag1``. [-]"""
LAG1_TOLERANCE = 1e-3
"""The calibrated year's lag-one correlation of daily PV energy is within this of the requested value. [-]"""

PRESETS: dict[str, dict] = {
    "hard": {
        # Measured years: lag-one correlation of daily PV energy 0.24–0.52 (docs/data.md); the default year: 0.83.
        "daily_energy_lag1": 0.38,
        "daily_clearness_spread": 2.0,
        "load": {"saturday_afternoon_start": "12:00", "saturday_afternoon_factor": 0.7,
                 "irregular_shutdowns_per_year": 6.0},
    },
}
"""Named parameter sets of :class:`simulations.scenario.SyntheticData` (``data.synthetic.preset``); keys given
in the scenario win over the preset's. ``hard``: measured-like day-to-day PV persistence, Saturday afternoons
at 70 % and irregular shutdown days (docs/data.md, "The harder year")."""


class LoadShape(StrictModel):
    """A factory's load pattern (scenario files hold it in YAML)."""

    day_kw: float = Field(default=800.0, ge=0, description="Load during the day shift [kW]")
    night_kw: float = Field(default=300.0, ge=0, description="Load outside the day shift [kW]")
    day_start: time = Field(default=time(7), description="Day shift start, local time")
    day_end: time = Field(default=time(19), description="Day shift end, local time (exclusive)")
    saturday_factor: float = Field(default=0.7, ge=0, description="Multiplier on Saturdays [-]")
    sunday_factor: float = Field(default=0.3, ge=0, description="Multiplier on Sundays [-]")
    holiday_factor: float = Field(default=0.3, ge=0, description="Multiplier on public holidays [-]")
    holiday_country: str | None = Field(default="VN", description="holidays package country code; None = none")
    tet_shutdown_days: int = Field(default=9, ge=0, description="Length of the Tết shutdown [days]; 0 = none")
    tet_days_before: int = Field(default=2, ge=0,
                                 description="Shutdown starts this many days before Lunar New Year's Day [days]")
    tet_shutdown_dates: list[date] = Field(default_factory=list,
                                           description="Explicit shutdown days; replaces the derived Tết window")
    shutdown_factor: float = Field(default=0.15, ge=0, description="Load in a shutdown, × night_kw [-]")
    saturday_afternoon_start: time | None = Field(
        default=None, description="From this local time on, Saturdays use saturday_afternoon_factor instead of "
                                  "saturday_factor; None = saturday_factor all day")
    saturday_afternoon_factor: float = Field(default=0.7, ge=0, description="Multiplier on Saturday afternoons [-]")
    irregular_shutdowns_per_year: float = Field(
        default=0.0, ge=0, le=100, description="Mean number of irregular shutdown days a year (seeded Poisson count "
                                               "on random working days, load as on a public holiday) [1/yr]")
    noise_pct: float = Field(default=5.0, ge=0, lt=100, description="Standard deviation of the load noise [%]")

    @property
    def day_shift_hours(self) -> float:
        """Length of the day shift (one past midnight included; 0 when it starts where it ends). [h]"""
        return ((self.day_end.hour * 60 + self.day_end.minute) - (self.day_start.hour * 60 + self.day_start.minute)
                ) / 60.0 % 24.0

    @property
    def weekday_mean_kw(self) -> float:
        """Mean load of a working weekday without noise: ``day_kw`` over the day shift, ``night_kw`` outside it. [kW]"""
        day_h = self.day_shift_hours
        return (self.day_kw * day_h + self.night_kw * (24.0 - day_h)) / 24.0


def lunar_new_year(year: int) -> date:
    """Lunar New Year's Day (Tết) of ``year``, from the Vietnamese holiday calendar."""
    days = [d for d, name in holidays.VN(years=year, language="en_US").items() if name == "Lunar New Year"]
    if not days:
        raise ValueError(f"no Lunar New Year's Day found for {year}")
    return min(days)


def shutdown_days(load: LoadShape, year: int) -> set[date]:
    """The Tết shutdown days of ``year``: the explicit dates if given, else the derived window."""
    if load.tet_shutdown_dates:
        return set(load.tet_shutdown_dates)
    first = lunar_new_year(year) - timedelta(days=load.tet_days_before)
    return {first + timedelta(days=i) for i in range(load.tet_shutdown_days)}


def irregular_shutdown_days(load: LoadShape, year: int, rng: np.random.Generator) -> set[date]:
    """Irregular shutdown days of the local ``year``: a Poisson count with mean ``irregular_shutdowns_per_year``,
    drawn without replacement from the working days (Monday–Saturday, not a public holiday, not in the Tết
    shutdown). Empty, and nothing drawn from ``rng``, when the mean is 0."""
    if load.irregular_shutdowns_per_year <= 0:
        return set()
    public = holidays.country_holidays(load.holiday_country, years=year) if load.holiday_country else {}
    tet = shutdown_days(load, year)
    first = date(year, 1, 1)
    working = [d for d in (first + timedelta(days=i) for i in range((date(year + 1, 1, 1) - first).days))
               if d.weekday() < 6 and d not in public and d not in tet]
    count = min(int(rng.poisson(load.irregular_shutdowns_per_year)), len(working))
    return {working[i] for i in rng.choice(len(working), size=count, replace=False)}


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """A stationary AR(1) series with unit variance."""
    innovations = rng.standard_normal(n)
    return _ar1_path(innovations, rng.standard_normal(), phi)


def _ar1_path(unit_innovations: np.ndarray, first: float, phi: float) -> np.ndarray:
    """The stationary unit-variance AR(1) series with coefficient ``phi`` driven by the given standard normal
    innovations, starting from the standard normal ``first``: the same draws give the series for any ``phi``."""
    innovations = unit_innovations * np.sqrt(1.0 - phi * phi)
    out = np.empty(len(innovations))
    prev = first
    for i in range(len(innovations)):
        prev = phi * prev + innovations[i]
        out[i] = prev
    return out


def daily_energy_lag1(kw: np.ndarray, day_number: np.ndarray, step_h: float) -> float:
    """Lag-one (day to next day) Pearson correlation of the daily energies of ``kw`` [kW], whose entries belong
    to the consecutive days ``day_number`` (0, 1, …) with steps of ``step_h`` [h]. [-]"""
    daily = np.bincount(day_number, weights=kw) * step_h
    return float(np.corrcoef(daily[:-1], daily[1:])[0, 1])


def local_day_numbers(starts: pd.DatetimeIndex, timezone: str) -> np.ndarray:
    """0, 1, … per entry: the local calendar day each interval start falls in, counted from the first."""
    local = starts.tz_convert(timezone)
    return np.unique(np.asarray(local.tz_localize(None).normalize().as_unit("s").asi8), return_inverse=True)[1]


def year_starts(timezone: str, year: int, step_minutes: int) -> pd.DatetimeIndex:
    """UTC interval starts covering the local calendar year ``year``."""
    if step_minutes <= 0 or 1440 % step_minutes:
        raise ValueError(f"step_minutes must divide a day, got {step_minutes}")
    first = pd.Timestamp(year=year, month=1, day=1, tz=timezone).tz_convert("UTC")
    last = pd.Timestamp(year=year + 1, month=1, day=1, tz=timezone).tz_convert("UTC")
    return pd.date_range(first, last, freq=f"{step_minutes}min", inclusive="left")


def _month_targets_kwh(pv: PVSpec, annual_yield_kwh_per_kwp: float, monthly_shape: Sequence[float]) -> np.ndarray:
    shape = np.asarray(monthly_shape, dtype=float)
    if shape.shape != (12,) or np.any(shape < 0) or shape.sum() <= 0:
        raise ValueError("monthly_shape needs 12 non-negative values (Jan..Dec) with a positive sum")
    return shape / shape.sum() * annual_yield_kwh_per_kwp * pv.kwp


def synthetic_pv_kw(site: SiteInfo, pv: PVSpec, starts: pd.DatetimeIndex, step_minutes: int,
                    rng: np.random.Generator, annual_yield_kwh_per_kwp: float,
                    monthly_shape: Sequence[float] = HAI_PHONG_MONTHLY_KWH_PER_KWP,
                    daily_energy_lag1_target: float | None = None,
                    daily_clearness_spread: float = DAILY_CLEARNESS_SPREAD) -> np.ndarray:
    """PV power per interval whose local-month energies match the scaled monthly yields. [kW]

    With ``daily_energy_lag1_target`` the daily clearness's AR coefficient (else :data:`DAILY_CLEARNESS_AR`) is
    found by bisection, on the same random draws, so that the lag-one correlation of the result's daily energies
    is within :data:`LAG1_TOLERANCE` of the target; a target this year cannot reach is a ``ValueError``.
    A plant of 0 kWp (a sweep's no-PV column) gives zeros, whatever the target.
    """
    if pv.kwp == 0:
        return np.zeros(len(starts))
    step_h = step_minutes / 60.0
    clear = clear_sky_pv_kw(starts, step_h, site, pv)
    local = starts.tz_convert(site.timezone)
    month = np.asarray(local.month) - 1
    day_number = local_day_numbers(starts, site.timezone)
    targets = _month_targets_kwh(pv, annual_yield_kwh_per_kwp, monthly_shape)
    clear_month = np.bincount(month, weights=clear, minlength=12) * step_h
    mean_k = np.clip(targets / np.maximum(clear_month, 1e-9), 0.01, 0.99)
    days = int(day_number.max()) + 1
    day_innovations, day_first = rng.standard_normal(days), rng.standard_normal()
    noise = _ar1(rng, len(starts), INTRADAY_AR_PER_HOUR ** step_h)

    def power(phi: float) -> np.ndarray:
        z_day = _ar1_path(day_innovations, day_first, phi)
        logit = np.log(mean_k[month] / (1.0 - mean_k[month])) + daily_clearness_spread * z_day[day_number]
        k_step = 1.0 / (1.0 + np.exp(-logit))
        raw = np.minimum(clear * k_step * np.clip(1.0 + INTRADAY_SPREAD * (1.0 - k_step) * noise, 0.0, None),
                         pv.ac_limit_kw)
        return _match_months(raw, month, targets, pv.ac_limit_kw, step_h)

    if daily_energy_lag1_target is None:
        return power(DAILY_CLEARNESS_AR)
    lo, hi = LAG1_AR_BOUNDS
    low, high = power(lo), power(hi)
    reach = (daily_energy_lag1(low, day_number, step_h), daily_energy_lag1(high, day_number, step_h))
    if not reach[0] - LAG1_TOLERANCE <= daily_energy_lag1_target <= reach[1] + LAG1_TOLERANCE:
        raise ValueError(f"daily_energy_lag1 {daily_energy_lag1_target:g} is out of reach: with "
                         f"daily_clearness_spread {daily_clearness_spread:g} this year's daily PV energy has a lag-one "
                         f"correlation between {reach[0]:.2f} and {reach[1]:.2f} "
                         "(a larger spread reaches lower values)")
    best, best_miss = low, abs(reach[0] - daily_energy_lag1_target)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        out = power(mid)
        miss = daily_energy_lag1(out, day_number, step_h) - daily_energy_lag1_target
        if abs(miss) < best_miss:
            best, best_miss = out, abs(miss)
        if best_miss <= LAG1_TOLERANCE:
            break
        lo, hi = (mid, hi) if miss < 0 else (lo, mid)
    if best_miss > LAG1_TOLERANCE:
        raise ValueError(f"daily_energy_lag1 {daily_energy_lag1_target:g}: calibration ended {best_miss:.3g} away")
    return best


def _match_months(pv_kw: np.ndarray, month: np.ndarray, targets: np.ndarray, ac_limit_kw: float,
                  step_h: float) -> np.ndarray:
    """``pv_kw`` [kW] scaled month by month (one factor each, found iteratively since power is capped at
    ``ac_limit_kw``) so that each month's energy is its ``targets`` entry [kWh]; modifies and returns ``pv_kw``."""
    for m in range(12):
        in_month = month == m
        if not in_month.any():
            continue
        raw = pv_kw[in_month]
        scale = 1.0
        for _ in range(50):
            scaled = np.minimum(raw * scale, ac_limit_kw)
            energy = scaled.sum() * step_h
            if abs(energy - targets[m]) <= 1e-9 * max(targets[m], 1.0):
                break
            free = raw[raw * scale < ac_limit_kw].sum() * step_h * scale
            if energy <= 0 or free <= 0:
                raise ValueError(f"month {m + 1}: {targets[m]:.0f} kWh is more than the PV system can produce")
            scale *= 1.0 + (targets[m] - energy) / free
        else:
            raise ValueError(f"month {m + 1}: {targets[m]:.0f} kWh is more than the PV system can produce")
        pv_kw[in_month] = scaled
    return pv_kw


def synthetic_load_kw(timezone: str, starts: pd.DatetimeIndex, step_minutes: int, load: LoadShape,
                      rng: np.random.Generator, days_off: Collection[date] = ()) -> np.ndarray:
    """Factory load per interval: shifts, day types (Saturday afternoons), holidays, Tết shutdown and noise;
    ``days_off`` (irregular shutdown days) are loaded as public holidays. [kW]"""
    local = starts.tz_convert(timezone)
    minutes = np.asarray(local.hour * 60 + local.minute)
    base = np.where(on_shift(minutes, load.day_start, load.day_end), load.day_kw, load.night_kw)
    dates = np.asarray(local.tz_localize(None).normalize().date)
    years = range(int(local.year.min()), int(local.year.max()) + 1)
    public = holidays.country_holidays(load.holiday_country, years=years) if load.holiday_country else {}
    shutdown = set().union(*(shutdown_days(load, y) for y in years))
    weekday = np.asarray(local.day_of_week)
    factor = np.where(weekday == 5, load.saturday_factor, np.where(weekday == 6, load.sunday_factor, 1.0))
    if load.saturday_afternoon_start is not None:
        afternoon_min = load.saturday_afternoon_start.hour * 60 + load.saturday_afternoon_start.minute
        factor = np.where((weekday == 5) & (minutes >= afternoon_min), load.saturday_afternoon_factor, factor)
    off = set(days_off)
    is_holiday = np.fromiter((d in public or d in off for d in dates), dtype=bool, count=len(dates))
    factor = np.where(is_holiday, load.holiday_factor, factor)
    is_shutdown = np.fromiter((d in shutdown for d in dates), dtype=bool, count=len(dates))
    kw = np.where(is_shutdown, load.night_kw * load.shutdown_factor, base * factor)
    noise = _ar1(rng, len(starts), LOAD_NOISE_AR_PER_HOUR ** (step_minutes / 60.0))
    return np.maximum(kw * (1.0 + load.noise_pct / 100.0 * noise), 0.0)


def synthetic_year(site: SiteInfo, pv: PVSpec, year: int, load: LoadShape, seed: int, step_minutes: int = 15,
                   annual_yield_kwh_per_kwp: float = 1100.0,
                   monthly_shape: Sequence[float] = HAI_PHONG_MONTHLY_KWH_PER_KWP,
                   daily_energy_lag1_target: float | None = None,
                   daily_clearness_spread: float = DAILY_CLEARNESS_SPREAD) -> pd.DataFrame:
    """A synthetic local calendar year of PV and load.

    Parameters
    ----------
    site, pv : SiteInfo, PVSpec
        Where and what: location and time zone; kWp, AC limit, orientation, losses.
    year : int
        Local calendar year.
    load : LoadShape
        The factory's load pattern.
    seed : int
        Seed: the same arguments and seed give identical data. PV, load noise and the irregular shutdown days
        draw from separate streams.
    step_minutes : int
        Interval length; must divide a day. [min]
    annual_yield_kwh_per_kwp : float
        Specific yield of the year (1,100 central, 950 pessimistic for Hai Phong). [kWh/kWp]
    monthly_shape : sequence of 12 floats
        Relative monthly yields Jan..Dec (default: Hai Phong, docs/sources.md §4).
    daily_energy_lag1_target : float, optional
        Lag-one correlation wanted for the daily PV energies (None: the daily clearness's AR coefficient is
        :data:`DAILY_CLEARNESS_AR`, which gives ≈0.83 on the Hai Phong year). [-]
    daily_clearness_spread : float
        Standard deviation of the daily clearness in logit space. [-]

    Returns
    -------
    pandas.DataFrame
        Index: UTC interval starts; columns ``pv_kw`` and ``load_kw``. [kW]
    """
    starts = year_starts(site.timezone, year, step_minutes)
    pv_rng, load_rng, calendar_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    pv_kw = synthetic_pv_kw(site, pv, starts, step_minutes, pv_rng, annual_yield_kwh_per_kwp, monthly_shape,
                            daily_energy_lag1_target, daily_clearness_spread)
    days_off = irregular_shutdown_days(load, year, calendar_rng)
    load_kw = synthetic_load_kw(site.timezone, starts, step_minutes, load, load_rng, days_off)
    return pd.DataFrame({"pv_kw": pv_kw, "load_kw": load_kw}, index=starts.rename("start"))
