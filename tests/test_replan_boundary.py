"""An interval re-plan waits for the first control cycle of the new interval: that cycle closes the step just ended
in the forecasters' history and the demand window in the month's peak, as the offline runner does before it plans the
next step. Before, the planning task (its own 1 s loop) could plan at the boundary ahead of that cycle: on one step
less of history and, when the window just ended set a new month peak, on the old peak."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from tests.test_curtailed_history import run_step
from tests.test_external_forecast import controller_on_fake_site
from tests.test_one_path import KnownSeries

ELEVEN_THIRTY = datetime(2026, 5, 4, 4, 30, tzinfo=UTC)  # Monday 11:30 in Hai Phong (UTC+7): a demand window start


def flat_forecasts() -> KnownSeries:
    starts = pd.date_range(ELEVEN_THIRTY - timedelta(days=1), periods=4 * 96, freq="15min")
    # the load as measured below: no deviation re-plan
    return KnownSeries(starts.as_unit("ns").asi8, np.zeros(len(starts)), np.full(len(starts), 900.0))


def test_the_interval_replan_waits_for_the_cycle_that_closes_the_step(tmp_path) -> None:
    controller, site, clock, _ = controller_on_fake_site(tmp_path, "nam-cau-kien", "evn-two-part-22kv",
                                                         ELEVEN_THIRTY, forecasts=flat_forecasts())
    replanner = controller.replanner
    try:
        site.battery.set(soc_pct=50.0, max_charge_kw=0.0, max_discharge_kw=0.0)  # the battery idle: import = load
        run_step(controller, site, clock, 900.0, 0.0, cycles=1)
        asyncio.run(controller.plan_once("start"))
        assert controller.plans.plan is not None
        run_step(controller, site, clock, 900.0, 0.0, cycles=179)
        run_step(controller, site, clock, 900.0, 0.0)  # 11:45–12:00; the clock now reads 12:00:00, no cycle yet
        noon = ELEVEN_THIRTY + timedelta(minutes=30)
        assert clock.now() == noon
        _, load = controller.history.histories()
        assert pd.Timestamp(load.ns[-1], tz="UTC") == noon - timedelta(minutes=30)  # 11:45 is not closed yet
        assert controller.demand.month_peak_kw(noon) == 0.0  # nor is the 11:30–12:00 window
        assert replanner.due(noon) is None
        run_step(controller, site, clock, 900.0, 0.0, cycles=1)  # the cycle at 12:00:00 ends 11:59:55–12:00:00
        assert replanner.due(clock.now()) is None
        run_step(controller, site, clock, 900.0, 0.0, cycles=1)  # the first cycle after the boundary
        assert replanner.due(clock.now()) == "interval"
        _, load = controller.history.histories()
        assert pd.Timestamp(load.ns[-1], tz="UTC") == noon - timedelta(minutes=15)
        assert abs(controller.demand.month_peak_kw(clock.now()) - 900.0) < 1.0
    finally:
        controller.store.close()
