"""PV held at its limit is missing from the forecasters' history, live and in studies: on a zero-export site a sunny
Sunday's PV is cut to the load, and read as measured it would tell the PV forecaster the day was dull (the next
surplus day then looks like none, and the night charge fills the battery the PV would have filled)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from optimizer.tariff import load_tariff
from simulations.runner import SeriesData, price_inputs, simulate
from simulations.strategies import StepContext
from tests.test_external_forecast import controller_on_fake_site
from tests.test_one_path import scenario

NOON_LOCAL = datetime(2026, 5, 3, 5, 0, tzinfo=UTC)  # Sunday 12:00 in Hai Phong (UTC+7), a step start


def run_step(controller, site, clock, load_kw: float, pv_available_kw: float, cycles: int = 180) -> None:
    """One 15-minute step of 5-second cycles (the longest gap the accounting still integrates at the 1 s cycle) at
    a constant load and available PV."""
    import asyncio

    async def go() -> None:
        for _ in range(cycles):
            site.settle(load_kw, pv_available_kw)
            await controller.cycle()
            clock.advance(5.0)

    asyncio.run(go())


def test_the_live_controller_leaves_pv_held_at_its_limit_out_of_the_history(tmp_path) -> None:
    """The real controller on a zero-export site (fake devices): a step whose PV the dispatcher held at the export
    limit (900 kW available, 300 kW load, the battery at its BMS limits of 0 kW) has no PV value in the forecasters'
    history, its load is kept; the next step, PV below the load and below its limit, is recorded as measured."""
    controller, site, clock, _ = controller_on_fake_site(tmp_path, "nam-cau-kien", "evn-manufacturing-22kv",
                                                         NOON_LOCAL)
    try:
        site.battery.set(soc_pct=95.0, max_charge_kw=0.0, max_discharge_kw=0.0)  # the battery takes and gives nothing
        run_step(controller, site, clock, 300.0, 900.0)
        assert site.pv.values["pv_limit_pct"] < 100.0 and site.pv.values["pv_kw"] < 320.0  # PV cut to the load
        run_step(controller, site, clock, 300.0, 100.0)
        run_step(controller, site, clock, 300.0, 100.0, cycles=1)  # closes the second step
        pv, load = controller.history.histories()
        at = pd.DatetimeIndex(pv.ns, tz="UTC")
        first, second = (int(np.flatnonzero(at == NOON_LOCAL + timedelta(minutes=m))[0]) for m in (0, 15))
        assert np.isnan(pv.values[first]) and abs(load.values[first] - 300.0) < 1e-9
        assert abs(pv.values[second] - 100.0) < 1e-9 and abs(load.values[second] - 300.0) < 1e-9
    finally:
        controller.store.close()


class Recorder:
    """No target (battery idle); keeps the PV history the study hands the strategy at its last step."""

    name, solve_s, replans = "recorder", 0.0, 0

    def __init__(self) -> None:
        self.pv_history: np.ndarray | None = None

    def target(self, t: int, now: datetime, ctx: StepContext) -> None:
        self.pv_history = ctx.pv_history.values.copy()
        return None


def test_a_study_leaves_pv_held_at_its_limit_out_of_the_history_too() -> None:
    """Offline, the same rule (``Dispatcher.pv_held_at_limit``): at zero export with no battery, the quarter hours
    whose PV (600 kW) is above the load (300 kW) are cut to it and missing from the history the strategy reads; the
    ones below the load are the PV as measured."""
    sc = scenario("evn-manufacturing-22kv")
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone)
    starts = pd.date_range("2026-05-03 10:00", periods=9, freq="15min", tz="Asia/Ho_Chi_Minh").tz_convert("UTC")
    pv = np.array([100.0, 200.0, 600.0, 600.0, 250.0, 600.0, 100.0, 50.0, 0.0])
    data = price_inputs(SeriesData(starts=starts, duration_h=np.full(9, 0.25), pv_kw=pv, load_kw=np.full(9, 300.0)),
                        site_tariff, 4)
    recorder = Recorder()
    result = simulate(recorder, sc, data, site_tariff, battery=False)
    assert np.allclose(result.frame["curtail_kw"].to_numpy()[:8] > 1.0, pv[:8] > 300.0)
    seen = recorder.pv_history[-data.steps:-1]  # before the last step: its own entry is written after it
    expected = np.where(pv[:8] > 300.0, np.nan, pv[:8])
    np.testing.assert_array_equal(seen, expected)
