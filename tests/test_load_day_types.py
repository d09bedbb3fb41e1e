"""Day types of the load forecast: planned shutdowns, and measured days that looked like a lower day type.

Known answers on a clean weekly pattern (800 kW by day, 300 kW by night, Saturday × 0.7, Sunday and holidays × 0.3,
the same helper as tests/test_solar_forecast.py): an unannounced stop is left out of the working-day profile and
learnt as a holiday; a planned shutdown is forecast at the base load until a shutdown has been measured, then at
what was measured; the live controller and the offline MPC make the same forecaster from the same site.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from controller.config import SiteConfig
from controller.service import Controller
from ems.clock import ManualClock
from optimizer.forecast import BASE_LOAD_QUANTILE, LoadForecaster
from optimizer.site import SiteInfo
from optimizer.tariff import load_tariff
from optimizer.timegrid import regular_grid
from simulations.runner import make_strategy, price_inputs
from simulations.scenario import Scenario
from tests.fakes import FakeSite
from tests.test_one_path import SITE_DEVICES, factory_day, scenario
from tests.test_solar_forecast import SITE, STEP, TZ, load_pattern, quarter_hours


def history(days: int = 21, start: str = "2026-06-01") -> pd.Series:
    """``days`` days of the clean pattern from Monday 1 June 2026 (local)."""
    idx = quarter_hours(start, days)
    return pd.Series(load_pattern(idx), index=idx)


def on_day(series: pd.Series, day: str) -> np.ndarray:
    """Boolean mask of the entries of local day ``day``."""
    return np.asarray(series.index.tz_convert(TZ).date == date.fromisoformat(day))


def test_an_unannounced_stop_stays_out_of_the_working_day_profile():
    hist = history()
    stop = on_day(hist, "2026-06-10")  # a Wednesday run at holiday level
    hist[stop] *= 0.3
    grid = regular_grid(hist.index[-1] + STEP, 96, 15)  # Monday 22 June
    out = LoadForecaster(TZ).forecast(grid, hist)
    np.testing.assert_allclose(out, load_pattern(grid.starts))  # not (14 × 800 + 240) / 15 by day
    sunday = regular_grid(pd.Timestamp("2026-06-21", tz=TZ), 96, 15)
    out_sunday = LoadForecaster(TZ).forecast(sunday, hist.loc[:sunday.starts[0] - STEP])
    np.testing.assert_allclose(out_sunday, load_pattern(sunday.starts))  # the stop was profiled with the Sundays


def test_without_re_typing_the_stop_would_drag_the_profile():
    """The same history with the stop only 30 % below normal (above the 0.6 threshold): it stays a working day."""
    hist = history()
    mild = on_day(hist, "2026-06-10")
    hist[mild] *= 0.7
    grid = regular_grid(hist.index[-1] + STEP, 96, 15)
    out = LoadForecaster(TZ).forecast(grid, hist)
    np.testing.assert_allclose(out, load_pattern(grid.starts) * (14 + 0.7) / 15)


def test_a_low_saturday_is_profiled_as_a_holiday():
    hist = history()
    hist[on_day(hist, "2026-06-13")] *= 0.3 / 0.7  # Saturday at the Sunday level
    grid = regular_grid(pd.Timestamp("2026-06-27", tz=TZ), 96, 15)  # the next Saturday but one
    full = history(26)
    full[on_day(full, "2026-06-13")] *= 0.3 / 0.7
    out = LoadForecaster(TZ).forecast(grid, full)
    np.testing.assert_allclose(out, load_pattern(grid.starts))


def test_a_planned_shutdown_without_a_measured_one_is_forecast_at_the_base_load():
    hist = history()
    grid = regular_grid(hist.index[-1] + STEP, 96, 15)  # Monday 22 June, planned shutdown
    out = LoadForecaster(TZ, shutdown_days=[date(2026, 6, 22)]).forecast(grid, hist)
    np.testing.assert_allclose(out, np.quantile(hist.to_numpy(), BASE_LOAD_QUANTILE))
    assert out.max() < 0.3 * load_pattern(grid.starts).min() * 2  # far below even a holiday by day


def test_a_planned_shutdown_is_learnt_from_the_measured_one():
    hist = history(26)  # to Friday 26 June
    shut = [date(2026, 6, d) for d in (25, 26, 29)]  # Thursday, Friday and the next Monday
    hist[on_day(hist, "2026-06-25") | on_day(hist, "2026-06-26")] = 50.0
    grid = regular_grid(pd.Timestamp("2026-06-29", tz=TZ), 96, 15)
    full = pd.concat([hist, pd.Series(load_pattern(quarter_hours("2026-06-27", 2)),
                                      index=quarter_hours("2026-06-27", 2))])
    out = LoadForecaster(TZ, shutdown_days=shut).forecast(grid, full)
    np.testing.assert_allclose(out, 50.0)
    weekday = LoadForecaster(TZ, shutdown_days=shut).forecast(regular_grid(pd.Timestamp("2026-06-30", tz=TZ), 96, 15),
                                                              full)
    assert weekday.max() > 700  # the shutdown days stayed out of the working-day profile


def test_a_holiday_at_shutdown_level_is_learnt_as_a_shutdown():
    hist = history()
    hist[on_day(hist, "2026-06-14")] = 40.0  # a Sunday with the plant fully off
    grid = regular_grid(hist.index[-1] + STEP, 96, 15)
    out = LoadForecaster(TZ, shutdown_days=[date(2026, 6, 22)]).forecast(grid, hist)
    np.testing.assert_allclose(out, 40.0)


def test_planned_shutdowns_in_the_site_file():
    site = SiteInfo.model_validate({**SITE.model_dump(), "planned_shutdowns": [
        "2027-02-05", {"first": "2027-02-04", "last": "2027-02-08"}, "2027-05-03"]})
    assert site.shutdown_days() == [date(2027, 2, d) for d in range(4, 9)] + [date(2027, 5, 3)]
    with pytest.raises(ValidationError, match=r"last .* is before first"):
        SiteInfo.model_validate({**SITE.model_dump(), "planned_shutdowns": [{"first": "2027-02-08",
                                                                              "last": "2027-02-04"}]})
    with pytest.raises(ValidationError, match="planned_shutdowns"):
        SiteInfo.model_validate({**SITE.model_dump(), "planned_shutdowns": ["next week"]})


def test_the_live_controller_and_the_offline_mpc_make_the_same_load_forecaster(tmp_path):
    """A site file with planned shutdowns and an extra holiday: the controller's built-in load forecaster and the
    study runner's MPC forecaster give the same forecast on a normal day, the shutdown and the extra holiday."""
    shutdowns = [{"first": "2026-06-22", "last": "2026-06-23"}]
    sc = scenario("evn-manufacturing-22kv")
    data = sc.model_dump()
    data["site"]["planned_shutdowns"] = shutdowns
    data["tariff"]["extra_holidays"] = ["2026-06-24"]
    study = Scenario.model_validate(data)
    study._base_dir = sc.base_dir
    config = SiteConfig.model_validate({
        "site": {**sc.site.model_dump(), "planned_shutdowns": shutdowns}, "pv": sc.pv.model_dump(),
        "battery": sc.battery.spec().model_dump(), "grid": sc.grid.model_dump(),
        "tariff": {"preset": "evn-manufacturing-22kv", "extra_holidays": ["2026-06-24"]},
        "planner": sc.planner.model_dump(), "devices": SITE_DEVICES})
    bound = load_tariff(study.tariff.ref(), sc.base_dir).bind(sc.site.timezone, study.tariff.extra_holidays)
    clock = ManualClock(pd.Timestamp("2026-06-22", tz=TZ).to_pydatetime())
    controller = Controller(config, FakeSite(clock, pv_rated_kw=config.pv.ac_limit_kw).devices, clock, bound,
                            tmp_path / "state.sqlite")
    try:
        live = controller.forecasts.builtin.load
        offline = make_strategy("mpc", study, price_inputs(factory_day(), bound, 48), bound).load_forecaster
        hist = history()
        for day in ("2026-06-22", "2026-06-24", "2026-06-25"):
            grid = regular_grid(pd.Timestamp(day, tz=TZ), 96, 15)
            np.testing.assert_array_equal(live.forecast(grid, hist), offline.forecast(grid, hist))
        shutdown = live.forecast(regular_grid(pd.Timestamp("2026-06-22", tz=TZ), 96, 15), hist)
        holiday = live.forecast(regular_grid(pd.Timestamp("2026-06-24", tz=TZ), 96, 15), hist)
        assert shutdown.max() < holiday.max() < 0.5 * load_pattern(quarter_hours("2026-06-25", 1)).max()
    finally:
        controller.store.close()
