"""The day-ahead PV forecast of studies (simulations/day_ahead.py): what each issue says, its error statistics, that
the live validator accepts every issue, and that the study's MPC plans on it through the live blend."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optimizer.external_forecast import ExternalForecasts
from simulations.day_ahead import IssuedForecasts, day_ahead_payloads
from simulations.scenario import Scenario, load_scenario

TZ = "Asia/Ho_Chi_Minh"
SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def _days(n: int) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """Hourly steps from local midnight of 1 June 2026 for ``n`` days; clear sky 100 kW from 06:00 to 17:59 local,
    actual PV = clear sky × (0.3, 0.6, 0.9, 0.3, …) by day."""
    starts = pd.date_range("2026-06-01", periods=24 * n, freq="h", tz=TZ).tz_convert("UTC")
    hour = np.asarray(starts.tz_convert(TZ).hour)
    clear = np.where((hour >= 6) & (hour < 18), 100.0, 0.0)
    k = np.repeat(np.resize([0.3, 0.6, 0.9], n), 24)
    return starts, clear * k, clear


def test_an_exact_forecast_knows_each_days_energy_and_covers_the_rest_of_today_and_tomorrow() -> None:
    starts, pv, clear = _days(3)
    payloads = day_ahead_payloads(starts, pv, clear, TZ, issue_hour=6, daily_error_pct=0, seed=1, ac_limit_kw=900,
                                  step_minutes=60)
    assert [p["issued_at"] for p in payloads] == ["2026-05-31T06:00:00+07:00", "2026-06-01T06:00:00+07:00",
                                                   "2026-06-02T06:00:00+07:00", "2026-06-03T06:00:00+07:00"]
    first, second, last = payloads[0], payloads[1], payloads[-1]
    assert len(last["pv_kw"]) == 18 and np.allclose(last["pv_kw"], pv[54:])  # the data ends: the rest of its day
    assert pd.Timestamp(first["start"]) == starts[0] and len(first["pv_kw"]) == 24  # day 0 only (issued the day before)
    assert pd.Timestamp(second["start"]) == starts[6] and len(second["pv_kw"]) == 18 + 24  # 06:00 day 0 → end of day 1
    assert np.allclose(first["pv_kw"], pv[:24])  # flat clearness × clear sky = the actual here
    assert np.allclose(second["pv_kw"], pv[6:48])
    assert all(p["valid_hours"] == 48 and p["step_minutes"] == 60 for p in payloads)


def test_daily_errors_have_the_spread_asked_for_and_no_bias() -> None:
    starts, pv, clear = _days(600)
    payloads = day_ahead_payloads(starts, pv, clear, TZ, issue_hour=6, daily_error_pct=20, seed=3, ac_limit_kw=900,
                                  step_minutes=60)
    ratios = []
    for p in payloads[1:-1]:  # the first covers no next day, the last no next day in the data
        start = starts.get_loc(pd.Timestamp(p["start"]))
        ahead = slice(start + 18, start + 42)  # the next day, whole
        ratios.append(sum(p["pv_kw"][18:42]) / pv[ahead].sum())
    log = np.log(ratios)
    assert np.std(log) == pytest.approx(0.20, abs=0.02)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.02)  # the lognormal error is mean-preserving


def test_the_band_holds_about_eight_days_in_ten_and_leaves_the_forecast_as_it_was() -> None:
    """The P10/P90 band is calibrated to the error it was issued with: on days of flat clearness the next day's
    actual energy falls inside it on ~80 % of days (binomial spread over 600 days ±1.6 %); without the band the
    forecast values are the same."""
    starts, pv, clear = _days(600)
    kwargs = dict(issue_hour=6, daily_error_pct=30, seed=5, ac_limit_kw=900, step_minutes=60)
    banded = day_ahead_payloads(starts, pv, clear, TZ, **kwargs)
    plain = day_ahead_payloads(starts, pv, clear, TZ, **kwargs, band=False)
    assert all(p["pv_kw"] == q["pv_kw"] and "pv_kw_p10" not in q for p, q in zip(banded, plain, strict=True))
    inside, below = [], []
    for p in banded[1:-1]:
        start = starts.get_loc(pd.Timestamp(p["start"]))
        actual = pv[start + 18:start + 42].sum()
        low, high = sum(p["pv_kw_p10"][18:42]), sum(p["pv_kw_p90"][18:42])
        assert low <= sum(p["pv_kw"][18:42]) <= high
        inside.append(low <= actual <= high)
        below.append(actual < low)
    assert np.mean(inside) == pytest.approx(0.80, abs=0.05)
    assert np.mean(below) == pytest.approx(0.10, abs=0.04)


def test_a_band_width_other_than_one_scales_the_bands_distance_from_the_forecast() -> None:
    """``band_width`` 0.5 (an overconfident service) halves both distances of the band from the forecast where the
    AC limit does not cap them; the forecast itself is unchanged."""
    starts, pv, clear = _days(20)
    kwargs = dict(issue_hour=6, daily_error_pct=30, seed=5, ac_limit_kw=9000, step_minutes=60)
    calibrated = day_ahead_payloads(starts, pv, clear, TZ, **kwargs)
    narrow = day_ahead_payloads(starts, pv, clear, TZ, **kwargs, band_width=0.5)
    for p, q in zip(calibrated, narrow, strict=True):
        f = np.asarray(p["pv_kw"])
        assert q["pv_kw"] == p["pv_kw"]
        for side in ("pv_kw_p10", "pv_kw_p90"):
            assert np.allclose(np.asarray(q[side]) - f, 0.5 * (np.asarray(p[side]) - f), atol=2e-3)
        assert (np.asarray(p["pv_kw_p90"]) - f).max() > 1.0  # the band has width to halve


def test_the_band_is_calibrated_per_step_when_hours_vary_within_the_day() -> None:
    """Clearness varies within each day (alternate hours at 0.5× and 1.5× the day's level): a band of the day's level
    alone would hold few steps; the band multiplies in the steps' own spread, so ~80 % of daylight steps of the next
    day fall inside it and ~10 % below it."""
    starts, pv, clear = _days(400)
    wobble = np.where(np.arange(len(pv)) % 2 == 0, 0.5, 1.5)
    pv = pv * wobble
    payloads = day_ahead_payloads(starts, pv, clear, TZ, issue_hour=6, daily_error_pct=20, seed=4, ac_limit_kw=900,
                                  step_minutes=60)
    inside, below = [], []
    for p in payloads[1:-1]:
        start = starts.get_loc(pd.Timestamp(p["start"]))
        actual, lit = pv[start + 18:start + 42], clear[start + 18:start + 42] > 0
        low, high = np.array(p["pv_kw_p10"][18:42]), np.array(p["pv_kw_p90"][18:42])
        assert (low <= np.array(p["pv_kw"][18:42])).all() and (np.array(p["pv_kw"][18:42]) <= high).all()
        inside += list(((actual >= low) & (actual <= high))[lit])
        below += list((actual < low)[lit])
    assert np.mean(inside) == pytest.approx(0.80, abs=0.04)
    assert np.mean(below) == pytest.approx(0.10, abs=0.03)


def test_every_issue_passes_the_live_validator_and_expires_after_the_next() -> None:
    starts, pv, clear = _days(5)
    pv = pv * 20  # 600–1,800 kW: capped at the AC limit
    issued = IssuedForecasts(day_ahead_payloads(starts, pv, clear * 20, TZ, issue_hour=9, daily_error_pct=30, seed=2,
                                                ac_limit_kw=900, step_minutes=60))
    external = ExternalForecasts(pv_limit_kw=900)
    for t in starts[::6]:
        now = t.to_pydatetime()
        for payload in issued.due(t.value):
            result = external.submit(payload, now)
            assert result.accepted, result.error
        assert external.current("pv_kw", now) is not None
    assert issued.due(starts[-1].value + 10**15) == []


def _scenario(**forecast: float | bool) -> Scenario:
    base = load_scenario(SCENARIOS / "nam-cau-kien-hard-qd963.yaml")
    data = base.model_dump()
    data["planner"].update(step_minutes=60, horizon_hours=24)
    data["data"].update(start="2026-06-01", days=2, pv_forecast=forecast or None)
    out = Scenario.model_validate(data)
    out._base_dir = base.base_dir
    return out


@pytest.mark.parametrize("external", [True, False])
def test_the_study_mpc_plans_on_the_day_ahead_forecast(external: bool) -> None:
    """With an exact day-ahead forecast (point only: with a band the surplus-day rule moves the planned PV, as
    tests/test_one_path.py checks live and offline alike) the MPC's PV forecast is each day's actual energy spread
    over the clear sky (the issue in force) at every re-plan; without one it is the built-in forecast."""
    from optimizer.tariff import load_tariff
    from simulations.runner import load_data, make_strategy, price_inputs, simulate

    sc = _scenario(daily_error_pct=0, band=False) if external else _scenario()
    tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    inputs = price_inputs(load_data(sc), tariff, sc.planner.horizon_steps)
    mpc = make_strategy("mpc", sc, inputs, tariff)
    expected = ExternalForecasts()
    issued = IssuedForecasts(day_ahead_payloads(
        inputs.starts, inputs.pv_kw, mpc.pv_forecaster.clear_sky_kw(inputs.full_grid), sc.site.timezone, issue_hour=6,
        daily_error_pct=0, seed=1, ac_limit_kw=sc.pv.ac_limit_kw, step_minutes=60))
    seen: list[tuple[int, np.ndarray]] = []
    forecasts = mpc.forecasts

    def record(t, grid, ctx, demand):
        pv, load = forecasts(t, grid, ctx, demand)
        seen.append((t, pv))
        return pv, load

    mpc.forecasts = record
    simulate(mpc, sc, inputs, tariff, battery=True)
    assert len(seen) == inputs.steps
    differ = 0
    for t, pv in seen:
        grid = inputs.grid(t, mpc.horizon)
        now = datetime.fromtimestamp(int(grid.starts_ns[0]) / 1e9, UTC)
        for payload in issued.due(int(grid.starts_ns[0])):
            expected.submit(payload, now)
        blended, origin = expected.blend("pv_kw", grid, np.full(len(grid), -1.0), now)
        covered = blended >= 0  # before 06:00 tomorrow is not forecast yet: the built-in forecast there
        assert covered[:18].all() and origin.startswith("day-ahead")
        differ += not np.allclose(pv[covered], blended[covered], atol=1e-3)
    assert (differ == 0) if external else (differ == len(seen))


def test_the_report_names_the_forecast() -> None:
    from simulations.report import forecast_text
    from simulations.runner import assumptions

    a = assumptions(_scenario(daily_error_pct=25, issue_hour=5))
    assert forecast_text(a["pv_forecast"]) == ("issued daily at 05:00 local, 25 % error on each day's PV energy, "
                                               "with its P10/P90 band (seed 1)")
    a = assumptions(_scenario(daily_error_pct=25, band=False))
    assert forecast_text(a["pv_forecast"]).endswith("PV energy, without a band (seed 1)")


def test_a_bad_forecast_setting_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="daily_error_pct"):
        _scenario(daily_error_pct=-5)
