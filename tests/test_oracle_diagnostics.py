"""The two-part diagnostic's best load forecast (benchmarks/bench_two_part_oracles.py, ``best_load``): known answers
for its carried noise and its percentile, and the noise-free year being the same seed's year."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulations.runner import load_data
from simulations.scenario import load_scenario
from tests.bench_modules import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_the_best_load_forecast_carries_the_last_noise_at_its_own_autocorrelation() -> None:
    """Noise-free load 100 kW, the last measured 110 kW (+10 % noise), 5 % noise, 15-minute steps: the noise one
    hour ahead is 0.5 of today's (the generator's hourly autocorrelation), so the forecast four steps ahead is
    105 kW, and the P90 above it is 1.2816 × 5 kW × √(1 − 0.25) = 5.549 kW; far ahead the forecast is 100 kW and
    the P90 1.2816 × 5 kW = 6.408 kW."""
    bench = benchmark("bench_two_part_oracles")
    quiet = np.full(200, 100.0)
    actual = quiet.copy()
    actual[9] = 110.0
    best = bench.BestLoad(quiet, actual, noise_sd=0.05, step_h=0.25)
    forecast, p90 = best.forecast(10, 150)
    assert forecast[3] == pytest.approx(105.0)
    assert p90[3] == pytest.approx(1.2816 * 5.0 * np.sqrt(0.75))
    assert forecast[-1] == pytest.approx(100.0, abs=1e-6)
    assert p90[-1] == pytest.approx(6.408, abs=1e-3)
    assert np.all(np.diff(forecast) <= 0) and np.all(np.diff(p90) >= 0)  # the noise fades, the spread grows
    first, _ = best.forecast(0, 4)  # nothing measured yet: the noise-free load
    assert np.allclose(first, 100.0)


def test_the_best_load_forecast_is_the_same_seeds_year_without_its_noise() -> None:
    """The noise-free year keeps the seed's calendar and unannounced shutdowns: the actual load over it is 1 + the
    noise, whose standard deviation is the scenario's 5 %, and the look-ahead beyond the year is the actual load."""
    bench = benchmark("bench_two_part_oracles")
    scenario = load_scenario(ROOT / "simulations" / "scenarios" / "nam-cau-kien-hard-two-part.yaml")
    data = load_data(scenario)

    class Inputs:  # the two arrays BestLoad.of reads of the MPC's inputs, with one day of look-ahead
        load_kw = np.concatenate([data.load_kw, data.load_kw[:96]])
        duration_h = data.duration_h

    best = bench.BestLoad.of(scenario, Inputs)
    n = len(data.load_kw)
    ratio = data.load_kw / best.quiet_kw[:n]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
    assert np.std(ratio) == pytest.approx(0.05, abs=0.005)
    assert np.array_equal(best.quiet_kw[n:], Inputs.load_kw[n:])
    assert best.phi == pytest.approx(0.5 ** 0.25)
