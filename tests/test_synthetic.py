"""Synthetic Hai Phong year: monthly yields, reproducibility, day types, holidays and the Tết shutdown."""

from __future__ import annotations

from datetime import date, time

import numpy as np
import pandas as pd
import pytest

from optimizer.site import Location, PVSpec, SiteInfo
from optimizer.solar import HAI_PHONG_MONTHLY_KWH_PER_KWP
from simulations.synthetic import LoadShape, lunar_new_year, shutdown_days, synthetic_year

TZ = "Asia/Ho_Chi_Minh"
SITE = SiteInfo(name="hp", timezone=TZ, location=Location(latitude=20.86, longitude=106.68, altitude_m=5))
PV = PVSpec(kwp=1000, ac_kw=900, tilt_deg=12)
SHAPE = LoadShape(day_kw=800, night_kw=300, saturday_factor=0.7, sunday_factor=0.3, holiday_factor=0.3,
                  tet_shutdown_days=9, tet_days_before=2, shutdown_factor=0.15, noise_pct=5)


@pytest.fixture(scope="module")
def year() -> pd.DataFrame:
    return synthetic_year(SITE, PV, 2026, SHAPE, seed=42)


def daily_mean_load(df: pd.DataFrame) -> pd.Series:
    local = df.tz_convert(TZ)
    return local["load_kw"].groupby(local.index.date).mean()


def test_shape_index_and_bounds(year):
    assert list(year.columns) == ["pv_kw", "load_kw"]
    assert str(year.index.tz) == "UTC"
    assert len(year) == 365 * 96
    assert year.index[0] == pd.Timestamp("2026-01-01", tz=TZ)
    assert year.notna().all().all()
    assert (year["pv_kw"] >= 0).all() and (year["pv_kw"] <= PV.ac_limit_kw).all()
    assert (year["load_kw"] >= 0).all()


@pytest.mark.parametrize("annual", [1100.0, 950.0])
def test_monthly_energy_matches_yields(annual, year):
    df = year if annual == 1100.0 else synthetic_year(SITE, PV, 2026, SHAPE, seed=42, annual_yield_kwh_per_kwp=annual)
    local = df.tz_convert(TZ)
    monthly_kwh = (local["pv_kw"] * 0.25).groupby(local.index.month).sum().to_numpy()
    expected = np.array(HAI_PHONG_MONTHLY_KWH_PER_KWP) / 1116 * annual * PV.kwp  # e.g. July: 150/1116 × 1,100 MWh
    assert np.allclose(monthly_kwh, expected, rtol=0.01)
    assert monthly_kwh.sum() == pytest.approx(annual * PV.kwp, rel=0.01)


def test_pv_has_persistent_day_to_day_cloudiness(year):
    local = year.tz_convert(TZ)
    daily = (local["pv_kw"] * 0.25).groupby(local.index.date).sum().to_numpy()
    assert daily.std() / daily.mean() > 0.2  # days differ
    anomalies = daily - pd.Series(daily).rolling(31, center=True, min_periods=1).mean().to_numpy()
    assert np.corrcoef(anomalies[:-1], anomalies[1:])[0, 1] > 0.2  # and cloudy spells persist


def test_same_seed_identical_other_seed_different(year):
    again = synthetic_year(SITE, PV, 2026, SHAPE, seed=42)
    pd.testing.assert_frame_equal(year, again)
    other = synthetic_year(SITE, PV, 2026, SHAPE, seed=43)
    assert not np.allclose(year["pv_kw"], other["pv_kw"])
    assert not np.allclose(year["load_kw"], other["load_kw"])


def test_day_types_and_shifts(year):
    daily = daily_mean_load(year)
    # Mon 2026-03-09 .. Sun 2026-03-15: no holiday; day shift 07-19 → mean (12·800 + 12·300)/24 = 550 kW
    assert daily[date(2026, 3, 9)] == pytest.approx(550, rel=0.05)
    assert daily[date(2026, 3, 14)] == pytest.approx(550 * 0.7, rel=0.05)
    assert daily[date(2026, 3, 15)] == pytest.approx(550 * 0.3, rel=0.05)
    local = year.tz_convert(TZ)
    monday = local.loc["2026-03-09"]
    assert monday.between_time(time(9), time(17))["load_kw"].mean() == pytest.approx(800, rel=0.05)
    assert monday.between_time(time(0), time(6))["load_kw"].mean() == pytest.approx(300, rel=0.05)


def test_public_holiday_lower(year):
    daily = daily_mean_load(year)
    assert daily[date(2026, 4, 30)] == pytest.approx(550 * 0.3, rel=0.05)  # Thursday, Reunification Day
    assert daily[date(2026, 9, 2)] < 0.5 * daily[date(2026, 9, 3)]


def test_tet_shutdown():
    assert lunar_new_year(2026) == date(2026, 2, 17)
    days = shutdown_days(SHAPE, 2026)
    assert min(days) == date(2026, 2, 15) and max(days) == date(2026, 2, 23) and len(days) == 9
    explicit = SHAPE.model_copy(update={"tet_shutdown_dates": [date(2026, 2, 20)]})
    assert shutdown_days(explicit, 2026) == {date(2026, 2, 20)}


def test_tet_shutdown_in_load(year):
    daily = daily_mean_load(year)
    for d in pd.date_range("2026-02-15", "2026-02-23").date:
        assert daily[d] == pytest.approx(300 * 0.15, rel=0.05)
    assert daily[date(2026, 2, 24)] == pytest.approx(550, rel=0.05)


def test_hourly_step_and_bad_step():
    df = synthetic_year(SITE, PV, 2027, SHAPE, seed=1, step_minutes=60)
    assert len(df) == 365 * 24
    local = df.tz_convert(TZ)
    assert local["pv_kw"].groupby(local.index.month).sum().iloc[6] == pytest.approx(150 / 1116 * 1100e3, rel=0.01)
    with pytest.raises(ValueError, match="divide a day"):
        synthetic_year(SITE, PV, 2027, SHAPE, seed=1, step_minutes=7)


def test_unreachable_yield_is_an_error():
    with pytest.raises(ValueError, match="more than the PV system can produce"):
        synthetic_year(SITE, PV, 2026, SHAPE, seed=1, annual_yield_kwh_per_kwp=3000)


@pytest.mark.parametrize("lag1", [None, 0.38])
def test_a_plant_of_zero_kwp_has_no_pv_and_the_same_load(year, lag1):
    """A sweep's no-PV column: zeros, not a calibration error, and the load of any other size."""
    df = synthetic_year(SITE, PVSpec(kwp=0), 2026, SHAPE, seed=42, daily_energy_lag1_target=lag1)
    assert (df["pv_kw"] == 0).all()
    pd.testing.assert_series_equal(df["load_kw"], year["load_kw"])
