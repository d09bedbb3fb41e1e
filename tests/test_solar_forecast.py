"""Clear-sky PV and the PV / load forecasters: known answers, no look-ahead, beating persistence."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pytest

from optimizer import forecast as forecast_module
from optimizer.forecast import DEFAULT_CLEARNESS, ForecastError, LoadForecaster, PVForecaster
from optimizer.site import Location, PVSpec, SiteInfo
from optimizer.solar import (
    HAI_PHONG_MONTHLY_KWH_PER_KWP,
    ClearSkyCache,
    ClearSkyWorkerError,
    clear_sky_pv_kw,
    clear_sky_pv_kw_in_worker,
    clear_sky_pv_kw_isolated,
)
from optimizer.timegrid import TimeGrid, regular_grid

REPO = Path(__file__).resolve().parents[1]
TZ = "Asia/Ho_Chi_Minh"
SITE = SiteInfo(name="hp", timezone=TZ, location=Location(latitude=20.86, longitude=106.68, altitude_m=5))
PV = PVSpec(kwp=1000, ac_kw=900, tilt_deg=12)
PV_CLIMATE = PV.model_copy(update={"monthly_yield_kwh_per_kwp": HAI_PHONG_MONTHLY_KWH_PER_KWP})  # Hai Phong climatology
STEP = pd.Timedelta(minutes=15)


def quarter_hours(start: str, days: int, tz: str = TZ) -> pd.DatetimeIndex:
    first = pd.Timestamp(start, tz=tz).tz_convert("UTC")
    return pd.date_range(first, periods=days * 96, freq="15min")


# ---------------------------------------------------------------- clear sky


def test_clear_sky_physical_bounds_and_day_night():
    starts = quarter_hours("2026-06-21", 1)
    p = clear_sky_pv_kw(starts, 0.25, SITE, PV)
    local_hour = starts.tz_convert(TZ).hour
    assert np.all(p >= 0) and np.all(p <= PV.ac_limit_kw)
    assert np.all(p[(local_hour < 4) | (local_hour >= 20)] == 0)
    assert p[(local_hour >= 11) & (local_hour < 13)].min() > 0.5 * PV.kwp
    assert starts[np.argmax(p)].tz_convert(TZ).hour in (11, 12)  # solar noon ≈ 11:50 local at 106.7 °E


def test_clear_sky_is_interval_average_and_scales():
    starts = quarter_hours("2026-03-10", 1)
    quarter = clear_sky_pv_kw(starts, 0.25, SITE, PV)
    hourly = clear_sky_pv_kw(starts[::4], 1.0, SITE, PV)
    # the hourly value at mid-hour is close to the mean of the four quarter hours
    daylight = hourly > 100
    assert np.allclose(hourly[daylight], quarter.reshape(-1, 4).mean(axis=1)[daylight], rtol=0.03)
    lossy = clear_sky_pv_kw(starts, 0.25, SITE, PV.model_copy(update={"losses_pct": 28.0}))
    assert lossy.sum() < quarter.sum()
    big = clear_sky_pv_kw(starts, 0.25, SITE, PVSpec(kwp=2000, tilt_deg=12))
    assert big.max() > PV.ac_limit_kw


def test_clear_sky_year_exceeds_measured_yield():
    starts = pd.date_range("2026-01-01", "2027-01-01", freq="1h", inclusive="left", tz="UTC")
    annual = clear_sky_pv_kw(starts, 1.0, SITE, PVSpec(kwp=1, tilt_deg=12)).sum()
    assert sum(HAI_PHONG_MONTHLY_KWH_PER_KWP) < annual < 2200  # kWh/kWp: clear sky is an upper envelope


def test_cache_matches_direct_computation():
    cache = ClearSkyCache(SITE, PV, 15)
    starts = quarter_hours("2026-12-30", 4)  # crosses a cache block
    ns = starts.as_unit("ns").asi8
    assert np.allclose(cache.at(ns, 0.25), clear_sky_pv_kw(starts, 0.25, SITE, PV))
    shifted = ns + 5 * 60 * 10**9  # not lattice aligned: computed directly
    assert np.allclose(cache.at(shifted, 0.25), clear_sky_pv_kw(starts + pd.Timedelta(minutes=5), 0.25, SITE, PV))


# ---------------------------------------------------------------- clear sky in a worker process (the controller)


def test_isolated_cache_equals_the_in_process_cache(caplog):
    starts = quarter_hours("2026-12-30", 4)  # crosses a cache block
    ns = starts.as_unit("ns").asi8
    isolated = ClearSkyCache(SITE, PV, 15, isolated=True)
    with caplog.at_level(logging.INFO, logger="optimizer.solar"):
        got = isolated.at(ns, 0.25)
    assert np.allclose(got, ClearSkyCache(SITE, PV, 15).at(ns, 0.25), rtol=1e-12, atol=1e-9)
    assert "clear-sky worker process:" in caplog.text and "failed" not in caplog.text  # really the worker
    # the blocks reach 48 h past the last step asked for, so a caller moving forward finds them computed
    assert (ns[-1] // isolated.step_ns + isolated.ahead_steps) // isolated.BLOCK_STEPS in isolated._blocks
    # off the lattice (a plan made part-way through a step): interpolated, within 1 % of the AC limit
    shifted = ns + 7 * 60 * 10**9
    direct = clear_sky_pv_kw(starts + pd.Timedelta(minutes=7), 0.2, SITE, PV)
    assert np.abs(isolated.at(shifted, 0.2) - direct).max() < 0.01 * PV.ac_limit_kw


def test_isolated_pv_forecaster_equals_the_in_process_one():
    grid = regular_grid(pd.Timestamp("2026-03-01", tz=TZ), 96, 15)
    hist_idx = quarter_hours("2026-02-26", 3)
    history = pd.Series(0.4 * clear_sky_pv_kw(hist_idx, 0.25, SITE, PV), index=hist_idx)
    isolated = PVForecaster(SITE, PV_CLIMATE, isolated=True)
    in_process = PVForecaster(SITE, PV_CLIMATE)
    for hist in (None, history):  # climatology (a year's table) and measured clearness
        assert np.allclose(isolated.forecast(grid, hist), in_process.forecast(grid, hist), rtol=1e-12, atol=1e-9)


def test_isolated_falls_back_to_in_process_when_the_worker_fails(monkeypatch, caplog):
    starts = quarter_hours("2026-06-21", 1)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(ClearSkyWorkerError):
        clear_sky_pv_kw_in_worker(starts, 0.25, SITE, PV)
    with caplog.at_level(logging.WARNING, logger="optimizer.solar"):
        got = clear_sky_pv_kw_isolated(starts, 0.25, SITE, PV)
    assert np.array_equal(got, clear_sky_pv_kw(starts, 0.25, SITE, PV))
    assert "clear-sky worker process failed" in caplog.text


CONTROLLER_IMPORTS = textwrap.dedent("""
    import asyncio, json, sys, tempfile
    from pathlib import Path
    HEAVY = ("pvlib", "scipy", "h5py", "requests")
    import controller.service
    after_import = [m for m in HEAVY if m in sys.modules]
    from controller.cli import EXAMPLE_SITE
    from controller.config import load_config
    from optimizer.service import SiteState
    from controller.service import Controller
    from ems.clock import ManualClock
    config = load_config(EXAMPLE_SITE)
    clock = ManualClock(config.simulation.start)
    with tempfile.TemporaryDirectory() as tmp:
        controller = Controller.from_config(config, EXAMPLE_SITE, clock, state_directory=Path(tmp))
        after_build = [m for m in HEAVY if m in sys.modules]
        controller.history.add(clock.now(), 0.0, 400.0, 1 / 3600)  # a load reading for the load forecast
        outcome = asyncio.run(controller.plans.replan(clock.now(), SiteState(500.0, None, None, 0.0), 120.0))
    print(json.dumps({"after_import": after_import, "after_build": after_build,
                      "after_plan": [m for m in HEAVY if m in sys.modules], "detail": outcome.detail,
                      "pv_max_kw": None if outcome.plan is None else float(outcome.plan.pv_kw.max())}))
""")


def test_the_controller_never_imports_pvlib():
    """In a fresh process: importing the controller, building it and planning once leave pvlib, SciPy, h5py and
    requests out of the process (the PV forecast's clear sky comes from a worker process)."""
    done = subprocess.run([sys.executable, "-c", CONTROLLER_IMPORTS], capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["after_import"] == result["after_build"] == result["after_plan"] == [], result
    assert result["pv_max_kw"] is not None and result["pv_max_kw"] > 100, result  # planned with clear-sky PV


# ---------------------------------------------------------------- truth data


def pv_truth(starts: pd.DatetimeIndex, seed: int) -> pd.Series:
    """Clear sky × persistent daily clearness (AR(1)) × intra-day noise."""
    rng = np.random.default_rng(seed)
    days = len(starts) // 96
    z = np.zeros(days)
    for d in range(1, days):
        z[d] = 0.6 * z[d - 1] + 0.8 * rng.standard_normal()
    k_day = np.clip(0.6 + 0.25 * z, 0.05, 1.0)
    k = np.repeat(k_day, 96) * np.clip(1 + 0.1 * rng.standard_normal(len(starts)), 0, None)
    return pd.Series(np.minimum(clear_sky_pv_kw(starts, 0.25, SITE, PV) * k, PV.ac_limit_kw), index=starts)


def load_pattern(starts: pd.DatetimeIndex, tz: str = TZ, country: str | None = "VN") -> np.ndarray:
    local = starts.tz_convert(tz)
    hours = np.asarray(local.hour + local.minute / 60)
    base = np.where((hours >= 7) & (hours < 19), 800.0, 300.0) + 50 * np.sin(2 * np.pi * hours / 24)
    days = local.tz_localize(None).normalize()
    hol = holidays.country_holidays(country, years=range(local.year.min(), local.year.max() + 1)) if country else {}
    is_off = np.array([d.date() in hol for d in days]) | (local.day_of_week == 6)
    factor = np.where(is_off, 0.3, np.where(local.day_of_week == 5, 0.7, 1.0))
    return base * factor


def load_truth(starts: pd.DatetimeIndex, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    noise = np.zeros(len(starts))
    for i in range(1, len(starts)):
        noise[i] = 0.9 * noise[i - 1] + 20 * rng.standard_normal()
    return pd.Series(load_pattern(starts) + noise, index=starts)


# ---------------------------------------------------------------- PV forecaster


def test_pv_forecast_scales_clear_sky_by_measured_clearness():
    hist_idx = quarter_hours("2026-05-01", 4)
    clear = clear_sky_pv_kw(hist_idx, 0.25, SITE, PV)
    history = pd.Series(0.5 * clear, index=hist_idx)
    grid = regular_grid(hist_idx[-1] + STEP, 96, 15)
    expected = 0.5 * clear_sky_pv_kw(grid.starts, 0.25, SITE, PV)
    assert np.allclose(PVForecaster(SITE, PV, day_weight=1.0).forecast(grid, history), expected)


def test_pv_forecast_blends_the_days_clearness_with_climatology():
    # measured clearness 0.5 all day for four days, a climatology of k_clim: the forecast's clearness is
    # k_clim + w · (0.5 − k_clim) (the history ends at midnight: no recent daylight clearness to decay from)
    hist_idx = quarter_hours("2026-05-01", 4)
    clear = clear_sky_pv_kw(hist_idx, 0.25, SITE, PV)
    history = pd.Series(0.5 * clear, index=hist_idx)
    grid = regular_grid(hist_idx[-1] + STEP, 96, 15)
    pv = PVForecaster(SITE, PV_CLIMATE, day_weight=0.6)
    k_clim = pv.climatological_clearness(5)
    k_base = k_clim + 0.6 * (0.5 - k_clim)
    expected = k_base * clear_sky_pv_kw(grid.starts, 0.25, SITE, PV)
    assert 0.5 < k_base < k_clim  # May's climatology is clearer than these days
    assert np.allclose(pv.forecast(grid, history), expected)
    with pytest.raises(ValueError, match="day_weight"):
        PVForecaster(SITE, PV, day_weight=1.5)


def test_pv_forecast_without_history_uses_climatology():
    grid = regular_grid(pd.Timestamp("2026-03-01", tz=TZ), 96, 15)
    clear = clear_sky_pv_kw(grid.starts, 0.25, SITE, PV)
    assert np.allclose(PVForecaster(SITE, PV).forecast(grid, None), DEFAULT_CLEARNESS * clear)
    fc = PVForecaster(SITE, PV_CLIMATE)
    k_march = fc.climatological_clearness(3)
    assert 0.15 < k_march < 0.35  # March: 36 kWh/kWp measured against ≈160 clear sky
    assert fc.climatological_clearness(7) > 0.8
    assert np.allclose(fc.forecast(grid, None), k_march * clear)


def test_pv_forecast_without_pv_is_zero():
    grid = regular_grid(pd.Timestamp("2026-06-01", tz=TZ), 96, 15)
    history = pd.Series(0.0, index=quarter_hours("2026-05-30", 2))
    assert np.array_equal(PVForecaster(SITE, PVSpec(kwp=0)).forecast(grid, history), np.zeros(96))
    no_pv_with_climate = PVSpec(kwp=0, monthly_yield_kwh_per_kwp=HAI_PHONG_MONTHLY_KWH_PER_KWP)
    with np.errstate(all="raise"):  # it divided the climatology by a clear-sky yield of 0 (a warning per study)
        forecaster = PVForecaster(SITE, no_pv_with_climate)
        assert forecaster.climatological_clearness(3) == DEFAULT_CLEARNESS
        assert np.array_equal(forecaster.forecast(grid, None), np.zeros(96))


def test_pv_recent_clearness_dominates_short_leads():
    hist_idx = quarter_hours("2026-05-01", 3)[:-96 + 52]  # up to 13:00 local on day 3
    clear = clear_sky_pv_kw(hist_idx, 0.25, SITE, PV)
    k = np.full(len(hist_idx), 0.3)
    k[-12:] = 1.0  # the last 3 hours were clear
    grid = regular_grid(hist_idx[-1] + STEP, 96, 15)
    out = PVForecaster(SITE, PV).forecast(grid, pd.Series(clear * k, index=hist_idx))
    with np.errstate(invalid="ignore"):
        ratio = out / clear_sky_pv_kw(grid.starts, 0.25, SITE, PV)
    assert ratio[0] > 0.9
    assert ratio[80] < 0.5  # 09:15 next day: back towards the multi-day clearness


def test_a_dark_morning_is_read_as_a_dark_day_as_far_as_it_has_been_seen():
    # three clear days, then today at clearness 0.2 until 10:00 local. k_days (the last 3 days' daylight clearness,
    # each step weighted 2^(−age / 1 day)) is worked out below; with no recent-hours term after the first step
    # (decay_hours → 0) the rest of today is forecast at k_days + w · (0.2 − k_days), w = C / (C + prior × AC
    # limit), C today's measured daylight clear-sky energy; tomorrow stays at k_days; prior 0 = the term off.
    days = quarter_hours("2026-05-01", 3)
    today = pd.date_range(pd.Timestamp("2026-05-04", tz=TZ), pd.Timestamp("2026-05-04 10:00", tz=TZ),
                          freq=STEP, inclusive="left").tz_convert("UTC")
    hist_idx = days.append(today)
    clear = clear_sky_pv_kw(hist_idx, 0.25, SITE, PV)
    k = np.where(hist_idx >= today[0], 0.2, 1.0)
    history = pd.Series(k * clear, index=hist_idx)
    grid = regular_grid(today[-1] + STEP, 96, 15)
    t0 = grid.starts[0]
    lit = (clear > 0.05 * PV.ac_limit_kw) & (hist_idx >= t0 - pd.Timedelta(days=3))
    weight = np.exp2(np.asarray((hist_idx - t0) / pd.Timedelta(days=1)))[lit]
    k_days = float((weight * k[lit] * clear[lit]).sum() / (weight * clear[lit]).sum())
    c_today = float(clear[lit & (hist_idx >= today[0])].sum()) * 0.25  # [kWh]
    grid_clear = clear_sky_pv_kw(grid.starts, 0.25, SITE, PV)
    is_today = grid.starts < pd.Timestamp("2026-05-05", tz=TZ)
    later = np.arange(96) > 0  # the first step is the recent hours' clearness (lead 0)
    assert 0.2 < k_days < 0.95
    for prior in (0.5, 1.0, 4.0):
        w = c_today / (c_today + prior * PV.ac_limit_kw)
        fc = PVForecaster(SITE, PV, day_weight=1.0, decay_hours=1e-9, today_prior_hours=prior).forecast(grid, history)
        expected = np.where(is_today, k_days + w * (0.2 - k_days), k_days) * grid_clear
        assert np.allclose(fc[later], expected[later])
    assert 0.5 < c_today / (c_today + PV.ac_limit_kw) < 0.8  # by 10:00 the day is read mostly from itself
    off = PVForecaster(SITE, PV, day_weight=1.0, decay_hours=1e-9, today_prior_hours=0.0).forecast(grid, history)
    assert np.allclose(off[later], k_days * grid_clear[later])
    with pytest.raises(ValueError, match="today_prior_hours"):
        PVForecaster(SITE, PV, today_prior_hours=-1.0)


def test_todays_clearness_on_a_day_whose_midnight_does_not_exist():
    # Santiago de Chile skips 00:00–01:00 on 6 Sep 2026: that local day starts at 01:00 and lasts 23 h; today's dark
    # morning still lowers the rest of today, and only today
    tz = "America/Santiago"
    site = SiteInfo(name="scl", timezone=tz, location=Location(latitude=-33.45, longitude=-70.66, altitude_m=570))
    hist_idx = pd.date_range(pd.Timestamp("2026-09-03", tz=tz), pd.Timestamp("2026-09-06 12:00", tz=tz), freq=STEP,
                             inclusive="left").tz_convert("UTC")
    clear = clear_sky_pv_kw(hist_idx, 0.25, site, PV)
    today = hist_idx >= pd.Timestamp("2026-09-06 01:00", tz=tz)
    history = pd.Series(np.where(today, 0.2, 1.0) * clear, index=hist_idx)
    grid = regular_grid(hist_idx[-1] + STEP, 96, 15)
    on = PVForecaster(site, PV, day_weight=1.0).forecast(grid, history)
    off = PVForecaster(site, PV, day_weight=1.0, today_prior_hours=0.0).forecast(grid, history)
    is_today = grid.starts < pd.Timestamp("2026-09-07", tz=tz)
    lit = clear_sky_pv_kw(grid.starts, 0.25, site, PV) > 0.05 * PV.ac_limit_kw
    later = np.arange(96) > 0  # the first step is the recent hours' clearness (lead 0)
    assert np.all(on[is_today & lit & later] < off[is_today & lit & later] - 1.0)
    assert np.allclose(on[~is_today], off[~is_today])


def test_the_climatology_month_of_a_month_whose_first_midnight_does_not_exist():
    # Asunción skipped 00:00–01:00 on 1 Oct 2023 (DST at midnight on the 1st): a forecast on that day takes
    # October's climatology (it raised ValueError while the month was found by Timestamp.normalize)
    tz = "America/Asuncion"
    site = SiteInfo(name="asu", timezone=tz, location=Location(latitude=-25.28, longitude=-57.63, altitude_m=100))
    pv = PV_CLIMATE
    forecaster = PVForecaster(site, pv)
    for start, month in (("2023-10-01 12:00", 10), ("2023-09-30 12:00", 9), ("2023-10-31 12:00", 10)):
        grid = regular_grid(pd.Timestamp(start, tz=tz).tz_convert("UTC"), 4, 15)
        no_history = pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float)
        expected = forecaster.climatological_clearness(month) * clear_sky_pv_kw(grid.starts, 0.25, site, pv)
        assert np.allclose(forecaster.forecast(grid, no_history), np.minimum(expected, pv.ac_limit_kw), rtol=1e-9)


def test_a_shortened_first_step_keeps_the_grid_step():
    """A plan made part-way through a step (a shortened first step, then whole steps, as the controller plans)
    forecasts the whole steps exactly as the aligned grid does, for PV and load."""
    t0 = pd.Timestamp("2026-05-04 10:00", tz=TZ).tz_convert("UTC")
    hist_idx = pd.date_range(t0 - pd.Timedelta(days=21), t0, freq="15min", inclusive="left")
    pv_hist = pd.Series(0.6 * clear_sky_pv_kw(hist_idx, 0.25, SITE, PV), index=hist_idx)
    load_hist = load_truth(hist_idx, seed=3)
    aligned = regular_grid(t0, 96, 15)
    late = TimeGrid(pd.DatetimeIndex([t0 + pd.Timedelta(minutes=7), *aligned.starts[1:]]),
                    np.r_[8 / 60, aligned.duration_h[1:]])
    pv = PVForecaster(SITE, PV)
    assert np.allclose(pv.forecast(late, pv_hist)[1:], pv.forecast(aligned, pv_hist)[1:], rtol=1e-12)
    load = LoadForecaster(TZ)
    assert np.allclose(load.forecast(late, load_hist)[1:], load.forecast(aligned, load_hist)[1:], rtol=1e-12)


# ---------------------------------------------------------------- load forecaster


def test_load_forecast_reproduces_a_clean_weekly_pattern_with_holidays():
    hist_idx = quarter_hours("2026-04-01", 28)
    history = pd.Series(load_pattern(hist_idx), index=hist_idx)
    grid = regular_grid(hist_idx[-1] + STEP, 96 * 3, 15)  # Apr 29 (Wed), Apr 30 (holiday), May 1 (holiday)
    out = LoadForecaster(TZ).forecast(grid, history)
    assert np.allclose(out, load_pattern(grid.starts))
    on_holiday = grid.local_starts(TZ).day == 30
    assert out[on_holiday].max() < 0.5 * out[~on_holiday].max()


def today_stopped(measured_steps: int) -> tuple[pd.Series, TimeGrid]:
    """Three weeks of the clean pattern from Monday 1 June 2026, then Monday 22 June stopped (load at the Sunday
    level) for its first ``measured_steps`` quarter hours; the grid from there over the rest of the day and the next."""
    hist_idx = quarter_hours("2026-06-01", 21)
    today_idx = quarter_hours("2026-06-22", 1)[:measured_steps]
    stopped = 0.3 * load_pattern(today_idx)  # a Monday at the Sunday/holiday factor
    history = pd.Series(np.r_[load_pattern(hist_idx), stopped], index=hist_idx.append(today_idx))
    return history, regular_grid(today_idx[-1] + STEP, 96 * 2 - measured_steps, 15)


@pytest.mark.parametrize("missing", [False, True])
def test_a_day_that_starts_stopped_is_forecast_as_a_holiday_for_the_rest_of_the_day(missing):
    history, grid = today_stopped(8)  # 00:00–02:00 measured at the holiday level
    if missing:  # a reading lost at 00:30: the seven others still make more than an hour
        history.iloc[-6] = np.nan
    out = LoadForecaster(TZ).forecast(grid, history)
    today = grid.local_starts(TZ).day == 22
    sunday_level = 0.3 * load_pattern(grid.starts)
    # the rest of Monday on the Sunday/holiday profile (its recent readings match it: no correction), Tuesday
    # on the working-day profile
    assert np.allclose(out[today], sunday_level[today])
    assert np.allclose(out[~today], load_pattern(grid.starts)[~today])


def test_a_day_is_not_retyped_on_less_than_an_hour_or_with_the_rule_off(monkeypatch):
    history, grid = today_stopped(3)  # 45 minutes: not enough
    day_hours = (grid.local_starts(TZ).day == 22) & np.isin(grid.local_starts(TZ).hour, range(9, 18))
    assert LoadForecaster(TZ).forecast(grid, history)[day_hours].min() > 700.0  # the working-day profile
    history, grid = today_stopped(8)
    monkeypatch.setattr(forecast_module, "LOAD_TODAY_RETYPE_H", 0.0)
    day_hours = (grid.local_starts(TZ).day == 22) & np.isin(grid.local_starts(TZ).hour, range(9, 18))
    assert LoadForecaster(TZ).forecast(grid, history)[day_hours].min() > 700.0


def test_a_working_day_with_a_high_night_is_not_retyped():
    hist_idx = quarter_hours("2026-06-01", 21)
    today_idx = quarter_hours("2026-06-22", 1)[:8]
    history = pd.Series(np.r_[load_pattern(hist_idx), 0.9 * load_pattern(today_idx)], index=hist_idx.append(today_idx))
    grid = regular_grid(today_idx[-1] + STEP, 96, 15)
    day_hours = (grid.local_starts(TZ).day == 22) & np.isin(grid.local_starts(TZ).hour, range(9, 18))
    assert LoadForecaster(TZ).forecast(grid, history)[day_hours].min() > 700.0


def test_load_forecast_follows_local_time_across_dst():
    tz = "Europe/Berlin"
    hist_idx = quarter_hours("2026-03-01", 28, tz)  # DST starts 2026-03-29
    history = pd.Series(load_pattern(hist_idx, tz, None), index=hist_idx)
    grid = regular_grid(hist_idx[-1] + STEP, 96, 15)
    out = LoadForecaster(tz, holiday_country=None).forecast(grid, history)
    assert np.allclose(out, load_pattern(grid.starts, tz, None))


def test_load_forecast_error_correction_decays():
    hist_idx = quarter_hours("2026-06-01", 21)  # 21 days from Monday
    pattern = load_pattern(hist_idx)
    values = pattern.copy()
    values[-4:] += 100.0  # the last hour ran 100 kW high
    grid = regular_grid(hist_idx[-1] + STEP, 96, 15)
    out = LoadForecaster(TZ).forecast(grid, pd.Series(values, index=hist_idx))
    # same-day-type (Sunday) profile saw the +100 once out of 3 Sundays in those four slots
    error = 100 - 100 / 3
    expected = load_pattern(grid.starts) + error * np.exp(-(np.arange(96) + 1) * 0.25 / 2.0)
    assert np.allclose(out, expected)


def test_load_forecast_degrades_with_little_history():
    fc = LoadForecaster(TZ)
    grid = regular_grid(pd.Timestamp("2026-06-06", tz=TZ), 96, 15)  # a Saturday
    with pytest.raises(ForecastError):
        fc.forecast(grid, None)
    assert np.all(LoadForecaster(TZ, fallback_kw=450).forecast(grid, None) == 450)
    hist_idx = quarter_hours("2026-06-04", 2)  # Thursday and Friday only: no Saturday seen
    weekday = pd.Series(load_pattern(hist_idx), index=hist_idx)
    assert np.allclose(fc.forecast(grid, weekday), load_pattern(hist_idx[:96]))
    few = weekday.iloc[-6:]  # 1.5 h of history: unseen slots take the load last measured
    out = fc.forecast(grid, few)
    assert np.all(out > 0) and np.isfinite(out).all()
    seen = np.isin(grid.local_starts(TZ).time, few.index.tz_convert(TZ).time)
    assert np.allclose(out[~seen][-10:], few.iloc[-1], rtol=0.01)


def test_a_first_morning_forecasts_the_day_at_the_load_the_factory_started_with():
    """A controller started at 05:00 on its first day: 300 kW until 07:00, then the factory at 800 kW. At 07:30 the
    day's hours it has not seen are forecast at 800 kW (they were the mean of the night and the half hour, 350 kW)
    and the night's hours it has seen at 300 kW; the correction term is 0 (the last hour is its own profile)."""
    hist_idx = pd.date_range(pd.Timestamp("2026-06-10 05:00", tz=TZ), pd.Timestamp("2026-06-10 07:30", tz=TZ),
                             freq="15min", inclusive="left").tz_convert("UTC")
    local_hours = hist_idx.tz_convert(TZ).hour
    history = pd.Series(np.where(local_hours >= 7, 800.0, 300.0), index=hist_idx)
    grid = regular_grid(pd.Timestamp("2026-06-10 07:30", tz=TZ), 96, 15)
    out = LoadForecaster(TZ).forecast(grid, history)
    local = grid.local_starts(TZ)
    assert np.allclose(out[local.hour == 12], 800.0)
    assert np.allclose(out[(local.hour == 5) | (local.hour == 6)], 300.0)   # tomorrow's 05:00–07:00, seen today


# ---------------------------------------------------------------- no look-ahead, beating persistence


def test_no_look_ahead():
    idx = quarter_hours("2026-05-01", 30)
    pv, load = pv_truth(idx, 1), load_truth(idx, 2)
    t = 96 * 25 + 37
    grid = regular_grid(idx[t], 96, 15)
    rng = np.random.default_rng(3)
    for fc, series in ((PVForecaster(SITE, PV), pv), (LoadForecaster(TZ), load)):
        before = fc.forecast(grid, series)
        changed = series.copy()
        changed.iloc[t:] = rng.uniform(0, 2000, len(series) - t)
        assert np.array_equal(fc.forecast(grid, changed), before)
        assert np.array_equal(fc.forecast(grid, series.iloc[:t]), before)


def test_forecasters_beat_persistence_over_three_weeks():
    idx = quarter_hours("2026-05-04", 42)
    truth = {"pv": pv_truth(idx, 11), "load": load_truth(idx, 12)}
    forecasters = {"pv": PVForecaster(SITE, PV), "load": LoadForecaster(TZ)}
    horizon = 96
    origins = range(96 * 21, len(idx) - horizon, 2)  # every half hour over three weeks
    for name, series in truth.items():
        values = series.to_numpy()
        err_model = err_yesterday = err_last = 0.0
        for t in origins:
            grid = TimeGrid(idx[t:t + horizon], np.full(horizon, 0.25))
            actual = values[t:t + horizon]
            err_model += np.abs(forecasters[name].forecast(grid, series) - actual).mean()
            err_yesterday += np.abs(values[t - 96:t - 96 + horizon] - actual).mean()
            err_last += np.abs(values[t - 1] - actual).mean()
        assert err_model < 0.9 * err_yesterday, name
        assert err_model < 0.9 * err_last, name


def test_extra_holidays_use_the_holiday_profile():
    hist_idx = quarter_hours("2026-06-01", 21)
    history = pd.Series(load_pattern(hist_idx), index=hist_idx)
    grid = regular_grid(hist_idx[-1] + STEP, 96, 15)  # Monday 2026-06-22
    plain = LoadForecaster(TZ).forecast(grid, history)
    shut = LoadForecaster(TZ, extra_holidays=[date(2026, 6, 22)]).forecast(grid, history)
    assert shut.max() < 0.5 * plain.max()


# ---------------------------------------------------------------- History arrays, reuse of derived data


def _with_gaps(series: pd.Series, every: int) -> pd.Series:
    """``series`` with every ``every``-th value missing (NaN)."""
    out = series.copy()
    out.iloc[::every] = np.nan
    return out


def test_history_arrays_give_the_same_forecasts_as_series():
    """The offline runner's plain arrays (History) and a Series of the same measurements forecast alike, also
    with missing values, grids off the lattice (a shortened first step) and forecasts back in time."""
    from optimizer.forecast import History

    idx = quarter_hours("2026-05-01", 30)
    for fc_series, fc_arrays, series in ((PVForecaster(SITE, PV), PVForecaster(SITE, PV), pv_truth(idx, 1)),
                                         (LoadForecaster(TZ), LoadForecaster(TZ), load_truth(idx, 2))):
        gappy = _with_gaps(series, 7)
        arrays = History.from_series(gappy)
        for t in (96 * 25 + 37, 96 * 26, 96 * 29 + 80, 96 * 27 + 50, 96 * 3 + 40):
            grid = regular_grid(idx[t], 96, 15)
            # PV from History uses running sums (differences of sums: equal up to rounding)
            np.testing.assert_allclose(fc_series.forecast(grid, gappy), fc_arrays.forecast(grid, arrays),
                                       rtol=1e-12, atol=1e-9)
        t = 96 * 25 + 37
        late = TimeGrid(pd.DatetimeIndex([idx[t] + pd.Timedelta(minutes=5)]).append(idx[t + 1:t + 96]),
                        np.r_[10 / 60, np.full(95, 0.25)])
        np.testing.assert_allclose(fc_series.forecast(late, gappy), fc_arrays.forecast(late, arrays), rtol=1e-12)


def test_a_history_filled_as_time_passes_forecasts_like_the_series_so_far():
    """The runner's use: one History whose values are NaN until measured, filled step by step (the running sums
    are extended, never recomputed), forecasts as the Series of what was measured so far."""
    from optimizer.forecast import History

    idx = quarter_hours("2026-05-01", 12)
    truth = _with_gaps(pv_truth(idx, 4), 11)
    live = History(idx.as_unit("ns").asi8.copy(), np.full(len(idx), np.nan))
    fc_series, fc_arrays = PVForecaster(SITE, PV), PVForecaster(SITE, PV)
    checked = 0
    for t in range(96 * 4, 96 * 11, 5):
        live.values[:t] = truth.to_numpy()[:t]
        grid = regular_grid(idx[t], 96, 15)
        np.testing.assert_allclose(fc_arrays.forecast(grid, live), fc_series.forecast(grid, truth.iloc[:t]),
                                   rtol=1e-12, atol=1e-9)
        checked += 1
    assert checked > 100


def test_history_rejects_bad_arrays():
    from optimizer.forecast import History

    with pytest.raises(ValueError, match="equal 1-D shapes"):
        History(np.arange(3, dtype=np.int64), np.zeros(2))
    with pytest.raises(ValueError, match="int64"):
        History(np.arange(3, dtype=np.float64), np.zeros(3))
    with pytest.raises(ValueError, match="strictly increasing"):
        History(np.array([0, 2, 1], dtype=np.int64), np.zeros(3))


def test_load_profile_is_rebuilt_when_the_series_history_changes():
    """The day's profile is reused only while its window holds the same values: a corrected measurement in a
    Series (same index object) must change the next forecast, exactly as a fresh forecaster sees it."""
    idx = quarter_hours("2026-06-01", 21)
    history = pd.Series(load_pattern(idx), index=idx)
    grid = regular_grid(idx[-1] + STEP, 96, 15)
    fc = LoadForecaster(TZ)
    before = fc.forecast(grid, history)
    values = history.to_numpy().copy()
    values[96 * 14 + 40] += 700.0  # a Monday two weeks back, 10:00 local: a weekday slot
    corrected = pd.Series(values, index=history.index)
    assert corrected.index is history.index  # (pandas' copy-on-write makes a new index on any in-place set)
    after = fc.forecast(grid, corrected)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, LoadForecaster(TZ).forecast(grid, corrected))


def test_load_profile_leaves_out_the_forecast_day():
    """The profile covers complete days before the local day of the forecast start; today's measurements reach
    the forecast only through the correction term: a jump this morning moves the forecast by the decaying
    correction alone, not through the profile of today's slots."""
    idx = quarter_hours("2026-06-01", 22)  # 21 whole days, then Monday 22 June
    values = load_pattern(idx)
    t = 96 * 21 + 40  # Monday 10:00 local
    jumped = values.copy()
    jumped[96 * 21:t] += 200.0  # Monday from midnight until now ran 200 kW high
    grid = regular_grid(idx[t], 96, 15)
    fc = LoadForecaster(TZ)
    base = fc.forecast(grid, pd.Series(values[:t], index=idx[:t]))
    high = LoadForecaster(TZ).forecast(grid, pd.Series(jumped[:t], index=idx[:t]))
    lead_h = (np.arange(96) + 1) * 0.25
    np.testing.assert_allclose(high - base, 200.0 * np.exp(-lead_h / 2.0), atol=1e-9)


def test_clear_sky_span_equals_lattice_lookup():
    cache = ClearSkyCache(SITE, PV, 15)
    first = int(quarter_hours("2026-03-01", 1)[0].value // cache.step_ns)
    for start in (first, first - first % cache.BLOCK_STEPS + cache.BLOCK_STEPS - 40):  # inside, across blocks
        np.testing.assert_array_equal(cache.span(start, 96), cache.lattice(np.arange(start, start + 96)))


def test_time_grid_uniform_step():
    starts = quarter_hours("2026-03-01", 1)[:4]
    assert regular_grid(starts[0], 4, 15).uniform_step_ns == 15 * 60 * 10**9
    assert TimeGrid(starts, np.array([0.25, 0.25, 0.5, 0.25])).uniform_step_ns is None
    gap = starts[[0, 1, 3]]
    assert TimeGrid(gap, np.full(3, 0.25)).uniform_step_ns is None
    assert TimeGrid(starts[:1], np.array([0.25])).uniform_step_ns == 15 * 60 * 10**9


@pytest.mark.parametrize("timezone", ["Asia/Ho_Chi_Minh", "Asia/Kathmandu", "America/St_Johns"])
def test_local_month_of_the_climatology_follows_the_site_zone(timezone):
    pv = PVForecaster(SiteInfo(name="x", timezone=timezone, location=Location(latitude=20, longitude=100)), PV)
    instants = pd.date_range("2026-01-01", "2027-01-02", freq="37min", tz="UTC").as_unit("ns")
    months = [pv._local_month(t) for t in instants.asi8]
    assert months == instants.tz_convert(timezone).month.tolist()
