"""The harder synthetic year: calibrated day-to-day PV persistence, Saturday afternoon drops, irregular shutdown
days, the ``hard`` preset in scenario files, and today's year left bit for bit as it was."""

from __future__ import annotations

import hashlib
from datetime import time
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pytest

from ems.yamlfile import ConfigError
from optimizer.site import Location, PVSpec, SiteInfo
from optimizer.solar import HAI_PHONG_MONTHLY_KWH_PER_KWP
from simulations.runner import load_data
from simulations.scenario import load_scenario
from simulations.synthetic import (
    PRESETS,
    LoadShape,
    irregular_shutdown_days,
    shutdown_days,
    synthetic_year,
)

TZ = "Asia/Ho_Chi_Minh"
SITE = SiteInfo(name="hp", timezone=TZ, location=Location(latitude=20.86, longitude=106.68, altitude_m=5))
PV = PVSpec(kwp=1000, ac_kw=900, tilt_deg=12)
SHAPE = LoadShape(day_kw=800, night_kw=300, saturday_factor=0.7, sunday_factor=0.3, holiday_factor=0.3,
                  tet_shutdown_days=9, tet_days_before=2, shutdown_factor=0.15, noise_pct=5)
SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def daily_kwh(df: pd.DataFrame, column: str) -> pd.Series:
    local = df.tz_convert(TZ)
    return (local[column] * 0.25).groupby(local.index.date).sum()


def lag1(series: pd.Series) -> float:
    x = series.to_numpy()
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


def rounded_hash(values: np.ndarray) -> str:
    """sha256 of ``values`` rounded to 0.001 kW (1 W).

    Not of the raw bits: numpy's sine and cosine (pvlib's sun position) differ in their last bits between CPUs
    with and without AVX-512, so the raw hashes recorded on one host failed on another (8 Dec 2026: the generator
    before the harder-year options, run on the same host, still gave today's frame bit for bit). ``+ 0.0`` makes a
    rounded −0.0 the same bytes as 0.0."""
    return hashlib.sha256((np.round(values, 3) + 0.0).tobytes()).hexdigest()


def test_default_year_is_bit_identical_to_before_the_harder_year():
    # the seed-42 frame as the generator made it before the harder-year options, to the watt
    frame = synthetic_year(SITE, PV, 2026, SHAPE, seed=42)
    assert rounded_hash(frame.to_numpy()) == "d6d5862f8f8c6eb7015f8fe50e036c1f8cf570145cc0774b9810f6e7fc5f5413"
    assert lag1(daily_kwh(frame, "pv_kw")) == pytest.approx(0.83, abs=0.05)  # the "0.83 synthetic"


def test_base_scenario_data_unchanged():
    data = load_data(load_scenario(SCENARIOS / "nam-cau-kien.yaml"))
    frame = np.column_stack([data.pv_kw, data.load_kw])
    assert rounded_hash(frame) == "5ae1bca1ffdc8d0b01d9ef1529aa616dcd024515d8c2905259beff5f29a9ba6d"


@pytest.mark.parametrize(("target", "spread"), [(0.25, 2.5), (0.38, 2.0), (0.52, 2.0), (0.7, 1.0)])
def test_daily_energy_lag1_is_calibrated(target, spread):
    frame = synthetic_year(SITE, PV, 2026, SHAPE, seed=42, daily_energy_lag1_target=target,
                           daily_clearness_spread=spread)
    assert lag1(daily_kwh(frame, "pv_kw")) == pytest.approx(target, abs=1e-3)
    local = frame.tz_convert(TZ)  # the monthly yields still hold
    monthly_kwh = (local["pv_kw"] * 0.25).groupby(local.index.month).sum().to_numpy()
    assert np.allclose(monthly_kwh, np.array(HAI_PHONG_MONTHLY_KWH_PER_KWP) / 1116 * 1100 * PV.kwp, rtol=1e-6)
    assert (frame["pv_kw"] >= 0).all() and (frame["pv_kw"] <= PV.ac_limit_kw).all()


def test_calibration_holds_for_every_seed_and_persistence_drops():
    for seed in (1, 2, 3):
        hard = synthetic_year(SITE, PV, 2026, SHAPE, seed=seed, daily_energy_lag1_target=0.38,
                              daily_clearness_spread=2.0)
        easy = synthetic_year(SITE, PV, 2026, SHAPE, seed=seed)
        assert lag1(daily_kwh(hard, "pv_kw")) == pytest.approx(0.38, abs=1e-3)
        assert lag1(daily_kwh(easy, "pv_kw")) > 0.75
        pd.testing.assert_series_equal(hard["load_kw"], easy["load_kw"])  # PV settings leave the load alone


def test_unreachable_lag1_is_an_error():
    with pytest.raises(ValueError, match=r"0.1 is out of reach: .* between 0.25 and 0.91"):
        synthetic_year(SITE, PV, 2026, SHAPE, seed=1, daily_energy_lag1_target=0.1)


def test_saturday_afternoon_drop():
    shape = SHAPE.model_copy(update={"saturday_factor": 1.0, "saturday_afternoon_start": time(12),
                                     "saturday_afternoon_factor": 0.7, "noise_pct": 0.0})
    local = synthetic_year(SITE, PV, 2026, shape, seed=3).tz_convert(TZ)
    saturday = local.loc["2026-03-14"]["load_kw"]  # no holiday
    assert saturday.between_time(time(7), time(11, 45)).to_numpy() == pytest.approx(800.0)
    assert saturday.between_time(time(12), time(18, 45)).to_numpy() == pytest.approx(560.0)
    assert saturday.between_time(time(19), time(23, 45)).to_numpy() == pytest.approx(210.0)
    assert saturday.between_time(time(0), time(6, 45)).to_numpy() == pytest.approx(300.0)
    friday = local.loc["2026-03-13"]["load_kw"]
    assert friday.between_time(time(12), time(18, 45)).to_numpy() == pytest.approx(800.0)


def test_irregular_shutdown_days_known_properties():
    shape = SHAPE.model_copy(update={"irregular_shutdowns_per_year": 6.0})
    rng = np.random.default_rng(11)
    public = holidays.VN(years=2026)
    tet = shutdown_days(shape, 2026)
    counts = []
    for _ in range(400):
        days = irregular_shutdown_days(shape, 2026, rng)
        counts.append(len(days))
        assert all(d.year == 2026 and d.weekday() < 6 and d not in public and d not in tet for d in days)
    assert np.mean(counts) == pytest.approx(6.0, abs=0.4)  # Poisson(6): standard error of the mean 0.12
    assert np.var(counts) == pytest.approx(6.0, rel=0.3)
    assert irregular_shutdown_days(SHAPE, 2026, rng) == set()


def test_irregular_shutdown_days_in_the_load():
    shape = SHAPE.model_copy(update={"irregular_shutdowns_per_year": 8.0})
    frame = synthetic_year(SITE, PV, 2026, shape, seed=5)
    again = synthetic_year(SITE, PV, 2026, shape, seed=5)
    pd.testing.assert_frame_equal(frame, again)
    plain = synthetic_year(SITE, PV, 2026, SHAPE, seed=5)
    pd.testing.assert_series_equal(frame["pv_kw"], plain["pv_kw"])  # separate streams
    daily = daily_kwh(frame, "load_kw") / 24
    changed = [d for d, a, b in zip(daily.index, daily, daily_kwh(plain, "load_kw") / 24, strict=True)
               if abs(a - b) > 1e-9]
    assert 2 <= len(changed) <= 16
    for d in changed:
        assert daily[d] == pytest.approx(550 * 0.3, rel=0.06)  # loaded as a public holiday


def surplus_saturdays(frame: pd.DataFrame) -> int:
    """Saturdays on which PV exceeds the load for at least an hour (docs/data.md)."""
    local = frame.tz_convert(TZ)
    hours = ((local["pv_kw"] > local["load_kw"]) * 0.25).groupby(local.index.date).sum()
    return int(sum(1 for d, h in hours.items() if d.weekday() == 5 and h >= 1.0))


def scenario_frame(name: str) -> pd.DataFrame:
    data = load_data(load_scenario(SCENARIOS / name))
    return pd.DataFrame({"pv_kw": data.pv_kw, "load_kw": data.load_kw}, index=data.starts)


def test_hard_scenario_is_the_base_with_the_hard_preset():
    base, hard = load_scenario(SCENARIOS / "nam-cau-kien.yaml"), load_scenario(SCENARIOS / "nam-cau-kien-hard.yaml")
    s = hard.data.synthetic
    assert s.preset == "hard" and s.daily_energy_lag1 == PRESETS["hard"]["daily_energy_lag1"]
    assert s.load.saturday_afternoon_start == time(12) and s.load.irregular_shutdowns_per_year == 6.0
    assert s.load.day_kw == base.data.synthetic.load.day_kw and hard.tariff == base.tariff
    assert base.data.synthetic.daily_energy_lag1 is None and base.data.synthetic.load.saturday_afternoon_start is None


def test_hard_year_surplus_saturdays_and_persistence():
    hard, base = scenario_frame("nam-cau-kien-hard.yaml"), scenario_frame("nam-cau-kien.yaml")
    assert lag1(daily_kwh(hard, "pv_kw")) == pytest.approx(0.38, abs=1e-3)
    assert 17 <= surplus_saturdays(hard) <= 24  # the issue: 19–21 a year on measured factory calendars
    assert surplus_saturdays(base) <= 3  # the issue: 1 in the synthetic year
    assert daily_kwh(hard, "pv_kw").sum() == pytest.approx(1100e3, rel=1e-6)


def test_preset_keys_given_win_and_unknown_preset_is_an_error(tmp_path):
    variant = tmp_path / "v.yaml"
    variant.write_text(f"extends: {SCENARIOS / 'nam-cau-kien.yaml'}\nname: v\n"
                       "data:\n  synthetic:\n    preset: hard\n    daily_energy_lag1: 0.3\n"
                       "    load: {saturday_afternoon_factor: 0.5}\n")
    s = load_scenario(variant).data.synthetic
    assert s.daily_energy_lag1 == 0.3 and s.load.saturday_afternoon_factor == 0.5
    assert s.load.saturday_afternoon_start == time(12)
    variant.write_text(f"extends: {SCENARIOS / 'nam-cau-kien.yaml'}\nname: v\n"
                       "data:\n  synthetic:\n    preset: harder\n")
    with pytest.raises(ConfigError, match="unknown preset 'harder': choose one of hard"):
        load_scenario(variant)

