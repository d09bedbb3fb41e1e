"""The warm-up history a study's MPC starts with (simulations/warmup.py): where each value comes from, and that the
first re-plan forecasts from it instead of from nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulations.report import warmup_text
from simulations.runner import SeriesData, load_data, make_strategy, price_inputs, simulate
from simulations.scenario import Scenario, load_scenario
from simulations.warmup import WRAP, Warmup, warmup_from

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def _series(first: str, days: int) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """Hourly UTC steps; PV = the step's number, load = 1000 + the step's number (every value tells its step)."""
    index = pd.date_range(first, periods=24 * days, freq="h", tz="UTC")
    k = np.arange(len(index), dtype=float)
    return index, k, 1000.0 + k


def test_warmup_reads_the_data_before_the_start_when_it_has_it() -> None:
    index, pv, load = _series("2026-01-01", 400)
    start = index[24 * 30]  # the study starts on day 30 of the data
    warm = warmup_from(index, pv, load, start, days=7, step_minutes=60)
    assert warm.steps == 7 * 24
    assert warm.starts_ns[0] == (start - pd.Timedelta(days=7)).value
    assert warm.starts_ns[-1] == (start - pd.Timedelta(hours=1)).value
    assert np.array_equal(warm.pv_kw, np.arange(23 * 24, 30 * 24, dtype=float))
    assert np.array_equal(warm.load_kw, 1000.0 + np.arange(23 * 24, 30 * 24))


def test_warmup_wraps_52_weeks_ahead_at_the_start_of_the_data() -> None:
    index, pv, load = _series("2026-01-01", 365)
    warm = warmup_from(index, pv, load, index[0], days=3, step_minutes=60)
    # 29 Dec 2025 00:00 UTC is read from 28 Dec 2026 00:00 UTC: step (364 - 3) × 24, a Monday both
    first = 361 * 24
    assert np.array_equal(warm.pv_kw, np.arange(first, first + 72, dtype=float))
    assert pd.Timestamp(warm.starts_ns[0], tz="UTC").day_name() == (pd.Timestamp(warm.starts_ns[0], tz="UTC")
                                                                     + WRAP).day_name() == "Monday"


def test_warmup_mixes_own_and_wrapped_days_and_leaves_the_unknown_missing() -> None:
    index, pv, load = _series("2026-01-01", 20)  # too short to wrap
    warm = warmup_from(index, pv, load, index[24 * 2], days=5, step_minutes=60)
    assert np.isnan(warm.pv_kw[:72]).all() and np.isnan(warm.load_kw[:72]).all()  # 3 days before the data
    assert np.array_equal(warm.pv_kw[72:], np.arange(48, dtype=float))  # the data's own first two days
    index, pv, load = _series("2026-01-01", 366)
    warm = warmup_from(index, pv, load, index[24 * 2], days=5, step_minutes=60)
    assert np.array_equal(warm.pv_kw[:72], np.arange(361 * 24, 364 * 24, dtype=float))  # wrapped
    assert np.array_equal(warm.pv_kw[72:], np.arange(48, dtype=float))  # own


def test_no_warmup_days_is_empty() -> None:
    index, pv, load = _series("2026-01-01", 30)
    assert warmup_from(index, pv, load, index[0], days=0, step_minutes=60).steps == 0
    assert warmup_text(None, measured_load=True) == "none (cold start: the first forecasts use 0 kW until some is " \
                                                   "measured)"
    assert warmup_text(Warmup().coverage(1.0)) == warmup_text(None) == \
        "none (cold start: the first forecasts use a nominal load)"


def test_report_says_where_the_warmup_came_from() -> None:
    index, pv, load = _series("2026-01-01", 20)
    short = warmup_from(index, pv, load, index[24 * 2], days=5, step_minutes=60).coverage(1.0)
    assert short == {"days": 5.0, "own_days": 2.0, "wrapped_days": 0.0, "missing_days": 3.0}
    assert warmup_text(short) == "5 days before the period: 2 from the data, 3 missing"
    index, pv, load = _series("2026-01-01", 366)
    mixed = warmup_from(index, pv, load, index[24 * 2 + 12], days=5, step_minutes=60).coverage(1.0)
    assert mixed == {"days": 5.0, "own_days": 2.5, "wrapped_days": 2.5, "missing_days": 0.0}
    assert warmup_text(mixed) == "5 days before the period: 2.5 from the data, 2.5 from 52 weeks later (wrapped)"


def _scenario(warmup_days: int) -> Scenario:
    base = load_scenario(SCENARIOS / "nam-cau-kien.yaml")
    data = base.model_dump()
    data["planner"].update(step_minutes=60, horizon_hours=24)
    data["data"].update(days=2, warmup_days=warmup_days)
    out = Scenario.model_validate(data)
    out._base_dir = base.base_dir
    return out


def test_shipped_year_starts_with_the_last_weeks_of_its_own_december() -> None:
    sc = _scenario(21)
    series = load_data(sc)
    full = load_data(_scenario(0).model_copy(update={"data": sc.data.model_copy(update={"days": None})}))
    assert series.warmup.steps == 21 * 24
    assert np.isfinite(series.warmup.load_kw).all() and np.isfinite(series.warmup.pv_kw).all()
    later = full.starts.get_indexer(pd.DatetimeIndex(series.warmup.starts_ns, tz="UTC") + WRAP)
    assert (later >= 0).all()
    assert np.array_equal(series.warmup.load_kw, full.load_kw[later])
    assert np.array_equal(series.warmup.pv_kw, full.pv_kw[later])


@pytest.mark.parametrize("warm", [True, False])
def test_first_replan_forecasts_from_the_warmup(warm: bool) -> None:
    """A factory measured at a flat 321 kW for three weeks: the first re-plan's load forecast is 321 kW at every
    step; with no warm-up it is the scenario's nominal load (nothing measured yet)."""
    sc = _scenario(21 if warm else 0)
    series = load_data(sc)
    if warm:
        w = series.warmup
        series = SeriesData(series.starts, series.duration_h, series.pv_kw, series.load_kw,
                            Warmup(w.starts_ns, w.pv_kw, np.full(w.steps, 321.0)))
    from optimizer.tariff import load_tariff

    tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    inputs = price_inputs(series, tariff, sc.planner.horizon_steps)
    mpc = make_strategy("mpc", sc, inputs, tariff)
    seen: list[np.ndarray] = []
    forecasts = mpc.forecasts

    def record(t, grid, ctx, demand):  # the strategy's own forecasts, recorded at the first step
        pv, load = forecasts(t, grid, ctx, demand)
        if t == 0:
            seen.append(load)
        return pv, load

    mpc.forecasts = record
    result = simulate(mpc, sc, inputs, tariff, battery=True)
    assert result.replans == inputs.steps and len(seen) == 1
    expected = 321.0 if warm else sc.data.synthetic.load.weekday_mean_kw
    assert np.allclose(seen[0], expected), seen[0]
