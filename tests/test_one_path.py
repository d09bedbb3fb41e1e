"""One path for live and offline: the live plan keeper and the offline MPC make identical plans and targets.

Over the same day (a constructed factory day: 300 kW at night, 800 kW by day with a spike, a clear-sky PV bell),
with the same (perfect) forecasts, both are asked at the start of every step: the live
:class:`~controller.planning.PlanKeeper` (planning grid from the clock, the tariff read live, the follow rule
with the demand window the demand tracker reports) and the offline :class:`~simulations.strategies.Mpc` inside
the study runner. Their PlanInputs, schedules and dispatch targets must be the same, under an energy-only tariff,
under the two-part tariff (demand charge on the 30-minute measure) and under a 12-month demand basis. The same
holds for the real ``Controller`` on fake devices and a manual clock (``tests.fakes``): its first plan and its
auto-mode target from what its devices report equal the offline MPC's at that step.
"""

from __future__ import annotations

import asyncio
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from controller.planning import PlanKeeper
from controller.targets import DemandWindow
from optimizer.forecast import PVForecaster
from optimizer.planner import PlanInputs, Planner
from optimizer.tariff import load_tariff
from optimizer.timegrid import TimeGrid
from simulations.runner import SeriesData, _StepWindow, make_strategy, price_inputs, simulate
from simulations.scenario import Scenario, load_scenario
from simulations.strategies import StepContext

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def scenario(tariff: str) -> Scenario:
    base = load_scenario(SCENARIOS / "nam-cau-kien-two-part.yaml")
    data = base.model_dump()
    data["tariff"] = {**data["tariff"], "preset": tariff, "file": None}
    data["planner"]["horizon_hours"] = 12  # half the solves' size: the test stays fast, both sides plan alike
    out = Scenario.model_validate(data)
    out._base_dir = base.base_dir
    return out


def factory_day() -> SeriesData:
    """Monday 2026-05-04 (local), 15-minute steps: load 300/800 kW with a 1,100 kW half hour, PV a 900 kW bell."""
    starts = pd.date_range("2026-05-04", periods=96, freq="15min", tz="Asia/Ho_Chi_Minh").tz_convert("UTC")
    hour = np.arange(96) / 4.0
    load = np.where((hour >= 7) & (hour < 19), 800.0, 300.0)
    load[(hour >= 17) & (hour < 17.5)] = 1100.0
    pv = 900.0 * np.clip(np.sin((hour - 6.0) / 12.0 * np.pi), 0.0, None)
    return SeriesData(starts=starts, duration_h=np.full(96, 0.25), pv_kw=pv, load_kw=load)


class KnownSeries:
    """The study's own PV and load as the live controller's forecast source (as ``mpc_perfect`` sees them)."""

    def __init__(self, starts_ns: np.ndarray, pv_kw: np.ndarray, load_kw: np.ndarray):
        self.starts_ns, self.pv_kw, self.load_kw = starts_ns, pv_kw, load_kw

    def forecast(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
        at = np.searchsorted(self.starts_ns, grid.starts_ns)
        return self.pv_kw[at], self.load_kw[at]

    def peak_risk(self, grid: TimeGrid, pv_kw: np.ndarray, load_kw: np.ndarray) -> np.ndarray:
        return np.zeros(len(grid))

    def pv_quantiles(self, grid: TimeGrid, levels) -> None:
        return None  # known PV: no spread, as the offline mpc_perfect (no surplus-day rule)

    def measured(self) -> None:
        return None  # one day: no whole day measured before it, so no month peak target on either side


def same_inputs(live: PlanInputs, offline: PlanInputs) -> None:
    """Every field of the two PlanInputs equal (fixed_battery_kw: live plans at step starts are free too)."""
    for f in fields(PlanInputs):
        a, b = getattr(live, f.name), getattr(offline, f.name)
        if f.name == "grid":
            np.testing.assert_array_equal(a.starts_ns, b.starts_ns)
            np.testing.assert_array_equal(a.duration_h, b.duration_h)
        elif a is None or b is None or np.isscalar(a):
            assert a == b, f.name
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f.name)


class Twin:
    """The offline MPC strategy, with the live plan keeper asked the same question at every step."""

    def __init__(self, mpc, keeper: PlanKeeper, window_h: float):
        self.mpc, self.keeper, self.window_h = mpc, keeper, window_h
        self.name, self.solve_s, self.replans = "mpc_perfect", 0.0, 0
        self.compared = 0

    def target(self, t: int, now: datetime, ctx: StepContext):
        offline = self.mpc.target(t, now, ctx)
        state = ctx.state()  # what the live controller reads: the BMS's own limits
        outcome = asyncio.run(self.keeper.replan(now, state, 60.0))
        assert outcome.plan is not None, outcome.detail
        _, _, schedule, inputs, _ = self.mpc._last
        same_inputs(self.keeper.inputs(now, state), inputs)
        for name in ("charge_kw", "discharge_kw", "import_kw", "export_kw", "curtail_kw", "soc_kwh"):
            np.testing.assert_allclose(getattr(outcome.plan, name), getattr(schedule, name), atol=1e-9, err_msg=name)
        window = DemandWindow(self.window_h, ctx.window_elapsed_h, ctx.window_kwh) if self.window_h else None
        live = self.keeper.target(now, ctx.month_peak_kw, window, ctx.max_discharge_kw)
        assert live is not None and offline is not None
        assert replace(live, expires_at=None) == offline  # the live step also expires; nothing else differs
        self.compared += 1
        return offline


@pytest.mark.parametrize("tariff", ["evn-manufacturing-22kv", "evn-two-part-22kv", "jp-high-voltage-illustrative"])
def test_live_plan_keeper_and_offline_mpc_make_the_same_plans_and_targets(tariff: str) -> None:
    sc = scenario(tariff)
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    data = price_inputs(factory_day(), site_tariff, sc.planner.horizon_steps)
    mpc = make_strategy("mpc_perfect", sc, data, site_tariff)
    spec = sc.battery.spec()
    keeper = PlanKeeper(Planner(spec, sc.grid, sc.planner, sc.planner.horizon_steps), sc.planner, sc.grid,
                        site_tariff, KnownSeries(data.starts.as_unit("ns").asi8, data.pv_kw, data.load_kw),
                        sc.dispatch.follow_tol_kw)
    twin = Twin(mpc, keeper, data.tariff.window_h if data.demand_rate[0] > 0 else 0.0)
    simulate(twin, sc, data, site_tariff, battery=True)
    assert twin.compared == data.steps == 96


# ------------------------------------------------------------------ the live Controller (fake devices, manual clock)

SITE_DEVICES = [{"name": "grid-meter", "role": "meter", "profile": "sunspec-meter",
                 "endpoint": {"host": "fake.invalid"}},
                {"name": "pv-inverter", "role": "pv_inverter", "profile": "sunspec-inverter",
                 "endpoint": {"host": "fake.invalid"}, "unit_id": 2},
                {"name": "battery", "role": "battery", "profile": "sunspec-battery",
                 "endpoint": {"host": "fake.invalid"}, "unit_id": 3}]


# 00:00, 10:00 (PV and the morning peak), 16:30 (before the spike); and 16:30 with the battery 20 kWh above its
# floor, where the study's step limits (what the SOC allows in 15 minutes) are far below what the BMS reports
@pytest.mark.parametrize(("step", "soc_pct"), [(0, 63.0), (40, 63.0), (66, 63.0), (66, 12.0)])
async def test_the_live_controller_plans_and_targets_as_the_offline_mpc(step: int, soc_pct: float,
                                                                        tmp_path: Path) -> None:
    """The real ``Controller`` (fake devices, manual clock, the day's PV and load as its forecasts) makes its first
    plan at the start of ``step`` from what its devices report; the offline MPC asked at that step with the same
    measurements (the study runner's step context from the same SOC and BMS limits) makes the same PlanInputs and
    plan, and the controller's auto-mode target is the offline one."""
    from controller.config import SiteConfig
    from controller.modes import Mode, ModeState, Reason
    from controller.service import Controller
    from ems.clock import ManualClock
    from optimizer.forecast import History
    from simulations.strategies import Mpc
    from tests.fakes import FakeSite

    sc = scenario("evn-two-part-22kv")
    config = SiteConfig.model_validate({
        "site": sc.site.model_dump(), "pv": sc.pv.model_dump(), "battery": sc.battery.spec().model_dump(),
        "grid": sc.grid.model_dump(), "tariff": {"preset": "evn-two-part-22kv"}, "planner": sc.planner.model_dump(),
        "devices": SITE_DEVICES, "control": {"dispatch": sc.dispatch.model_dump()}})
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone)
    day = factory_day()
    data = price_inputs(day, site_tariff, config.planner.horizon_steps)
    known = KnownSeries(data.starts.as_unit("ns").asi8, data.pv_kw, data.load_kw)
    now = data.starts[step].to_pydatetime()
    clock = ManualClock(now)
    site = FakeSite(clock, pv_rated_kw=config.pv.ac_limit_kw)
    site.battery.set(soc_pct=soc_pct, max_charge_kw=400.0)
    controller = Controller(config, site.devices, clock, site_tariff, tmp_path / "state.sqlite", forecasts=known)
    try:
        site.settle(float(day.load_kw[step]), float(day.pv_kw[step]))
        await controller.cycle()
        await controller.plan_once("start")
        plan = controller.plans.plan
        assert plan is not None
        snap = controller.snapshot
        mpc = Mpc(data, config.site, config.pv, config.battery, config.grid, config.planner,
                  config.control.dispatch.follow_tol_kw, perfect=True, holidays=site_tariff.calendar)
        empty = History(data.starts.as_unit("ns").asi8[:96], np.full(96, np.nan))  # perfect forecasts read none
        ctx = StepContext(soc_kwh=0.0, max_charge_kw=0.0, max_discharge_kw=0.0,
                          month_peak_kw=controller.demand.month_peak_kw(now), pv_history=empty, load_history=empty,
                          window_kwh=controller.demand.running(now)[2])
        _StepWindow(config.battery).update(ctx, snap.value("soc_pct") / 100.0 * config.battery.capacity_kwh,
                                           snap.value("max_charge_kw"), snap.value("max_discharge_kw"), 0.25)
        if soc_pct < 20.0:  # the case is what it says: the step's limit is far below the BMS's
            assert ctx.step_discharge_kw < 0.25 * ctx.max_discharge_kw
        offline = mpc.target(step, now, ctx)
        _, _, schedule, inputs, _ = mpc._last
        same_inputs(controller.plans.inputs(now, controller.replanner.site_now(
            snap, ctx.month_peak_kw, ctx.window_kwh)), inputs)
        for name in ("charge_kw", "discharge_kw", "import_kw", "export_kw", "soc_kwh"):
            np.testing.assert_allclose(getattr(plan, name), getattr(schedule, name), atol=1e-9, err_msg=name)
        live = controller._target(ModeState(Mode.AUTO, Reason.PLAN, now), now, snap, None)
        assert live is not None and replace(live, expires_at=None) == offline
    finally:
        controller.store.close()


# ------------------------------------------------------ forecasts with a banded external PV forecast (day-ahead)

class StudyHistory:
    """The offline MPC's history views at the step being compared, as the live ``MeasuredHistory`` offers them."""

    def __init__(self, last_load_kw: float):
        self.views: tuple = ()
        self.last_load_kw = last_load_kw  # the load forecaster's own fallback: the live source sets it every call

    def histories(self):
        return self.views


class ForecastTwin(Twin):
    """:class:`Twin` on forecasts: the live source reads the histories the offline MPC reads at step ``t``."""

    def __init__(self, mpc, keeper: PlanKeeper, window_h: float, history: StudyHistory):
        super().__init__(mpc, keeper, window_h)
        self.name, self.history = "mpc", history

    def target(self, t: int, now: datetime, ctx: StepContext):
        self.history.views = self.mpc._history_views(t, ctx)
        return super().target(t, now, ctx)


@pytest.mark.parametrize("tariff", ["evn-manufacturing-22kv", "evn-two-part-22kv"])
def test_live_and_offline_plan_alike_on_a_banded_day_ahead_forecast(tariff: str) -> None:
    """Two days of the harder year with the built-in forecasters (three weeks of warm-up history) and the study's
    day-ahead PV forecast with its P10/P90 band: the live plan keeper on ``WithExternal(MeasuredForecasts)`` over the
    same store and histories makes the offline MPC's PlanInputs (PV after the surplus-day rule on the band's
    quantiles, the demand reserve's risk from the band, the recharge floor), plans and targets at every step."""
    from controller.planning import MeasuredForecasts
    from optimizer.external_forecast import WithExternal
    from simulations.runner import load_data

    base = load_scenario(SCENARIOS / "nam-cau-kien-hard-two-part.yaml")
    data = base.model_dump()
    data["tariff"] = {**data["tariff"], "preset": tariff, "file": None}
    data["planner"]["horizon_hours"] = 12
    data["data"].update(start="2026-03-02", days=2, pv_forecast={"daily_error_pct": 20})
    sc = Scenario.model_validate(data)
    sc._base_dir = base.base_dir
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    inputs = price_inputs(load_data(sc), site_tariff, sc.planner.horizon_steps)
    mpc = make_strategy("mpc", sc, inputs, site_tariff)
    history = StudyHistory(mpc.load_forecaster.fallback_kw)
    clock_now = {"now": None}
    source = WithExternal(MeasuredForecasts(mpc.pv_forecaster, mpc.load_forecaster, history), mpc.external,
                          lambda: clock_now["now"])
    spec = sc.battery.spec()
    keeper = PlanKeeper(Planner(spec, sc.grid, sc.planner, sc.planner.horizon_steps), sc.planner, sc.grid,
                        site_tariff, source, sc.dispatch.follow_tol_kw)
    twin = ForecastTwin(mpc, keeper, inputs.tariff.window_h if inputs.demand_rate[0] > 0 else 0.0, history)
    banded = []
    target = twin.target

    def compare(t, now, ctx):
        clock_now["now"] = now
        out = target(t, now, ctx)
        banded.append(mpc.external.banded(now))
        return out

    twin.target = compare
    simulate(twin, sc, inputs, site_tariff, battery=True)
    assert twin.compared == inputs.steps == 192 and all(banded)


# ------------------------------------------- the forecasters themselves: made alike by the controller and the study

async def test_the_live_controller_forecasts_as_the_offline_mpc(tmp_path: Path) -> None:
    """A site file carrying the study's PV climatology (``pv.monthly_yield_kwh_per_kwp``) and planned shutdowns:
    the real ``Controller``'s built-in forecasters (PV in a worker process, as deployed) forecast PV and load on the
    harder year's measured history exactly as the offline MPC's do, at night, in the morning and the afternoon —
    the study's climatology blend is the live one (before, the live PV forecaster had none)."""
    from controller.config import SiteConfig
    from controller.service import Controller
    from ems.clock import ManualClock
    from optimizer.forecast import History
    from simulations.runner import forecast_pv, forecast_site, load_data
    from tests.fakes import FakeSite

    base = load_scenario(SCENARIOS / "nam-cau-kien-hard.yaml")
    data = base.model_dump()
    data["data"].update(start="2026-03-02", days=8)
    sc = Scenario.model_validate(data)
    sc._base_dir = base.base_dir
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    inputs = price_inputs(load_data(sc), site_tariff, sc.planner.horizon_steps)
    mpc = make_strategy("mpc", sc, inputs, site_tariff)
    pv = forecast_pv(sc)
    assert pv.monthly_yield_kwh_per_kwp is not None and sc.pv.monthly_yield_kwh_per_kwp is None
    config = SiteConfig.model_validate({
        "site": forecast_site(sc).model_dump(), "pv": pv.model_dump(), "battery": sc.battery.spec().model_dump(),
        "grid": sc.grid.model_dump(), "tariff": {"preset": sc.tariff.preset}, "planner": sc.planner.model_dump(),
        "devices": SITE_DEVICES})
    clock = ManualClock(inputs.starts[0].to_pydatetime())
    fake = FakeSite(clock, pv_rated_kw=config.pv.ac_limit_kw)
    controller = Controller(config, fake.devices, clock, site_tariff, tmp_path / "state.sqlite")
    try:
        live = controller.forecasts.builtin
        ns = inputs.starts[:inputs.steps].as_unit("ns").asi8
        for t in (5 * 96 + 4, 6 * 96 + 32, 7 * 96 + 60):  # 01:00, 08:00 and 15:00 local after 5–7 days measured
            grid = inputs.grid(t, mpc.horizon)
            pv_hist, load_hist = History(ns[:t], inputs.pv_kw[:t]), History(ns[:t], inputs.load_kw[:t])
            offline_pv = mpc.pv_forecaster.forecast(grid, pv_hist)
            np.testing.assert_allclose(live.pv.forecast(grid, pv_hist), offline_pv, rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(live.load.forecast(grid, load_hist),
                                       mpc.load_forecaster.forecast(grid, load_hist), rtol=1e-12, atol=1e-9)
            without = PVForecaster(sc.site, sc.pv).forecast(grid, pv_hist)  # the live forecaster of before
            assert np.abs(without - offline_pv).max() > 1.0  # kW: without the blend the test would fail
    finally:
        controller.store.close()


# Monday 2026-05-04 is Greenery Day in Japan and a working day in Viet Nam
@pytest.mark.parametrize(("preset", "holidays", "worked", "holiday"), [
    ("jp-high-voltage-illustrative", "tariff", [], True),  # the tariff's calendar (JP): before, live used VN
    ("jp-high-voltage-illustrative", "tariff", ["2026-05-04"], False),  # a company calendar works Greenery Day
    ("jp-high-voltage-illustrative", "tariff", ["2026-05-05"], True),  # … or another holiday: Greenery Day stays
    ("jp-high-voltage-illustrative", "VN", [], False),
    ("evn-two-part-22kv", "JP", [], True),
    ("evn-two-part-22kv", "JP", ["2026-05-04"], False),
    ("evn-two-part-22kv", None, [], False),
])
async def test_live_and_offline_load_forecasts_keep_the_same_public_holidays(
        preset: str, holidays: str | None, worked: list[str], holiday: bool, tmp_path: Path) -> None:
    """``site.holidays`` over the tariff's calendar, less ``site.worked_holidays``, decides which days the load
    forecast plans as Sundays, the same for the real ``Controller`` and the offline MPC: three weeks at 800 kW with
    100 kW Sundays, then a forecast of Monday 4 May, a holiday only in Japan."""
    from controller.config import SiteConfig
    from controller.service import Controller
    from ems.clock import ManualClock
    from optimizer.forecast import History
    from tests.fakes import FakeSite

    sc = scenario(preset)
    data = sc.model_dump()
    data["site"]["holidays"] = holidays
    data["site"]["worked_holidays"] = worked
    sc = Scenario.model_validate(data)
    sc._base_dir = scenario(preset).base_dir
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    day = factory_day()
    inputs = price_inputs(day, site_tariff, sc.planner.horizon_steps)
    mpc = make_strategy("mpc", sc, inputs, site_tariff)
    config = SiteConfig.model_validate({
        "site": sc.site.model_dump(), "pv": sc.pv.model_dump(), "battery": sc.battery.spec().model_dump(),
        "grid": sc.grid.model_dump(), "tariff": {"preset": preset}, "planner": sc.planner.model_dump(),
        "devices": SITE_DEVICES})
    clock = ManualClock(day.starts[0].to_pydatetime())
    controller = Controller(config, FakeSite(clock, pv_rated_kw=config.pv.ac_limit_kw).devices, clock, site_tariff,
                            tmp_path / "state.sqlite")
    try:
        past = pd.date_range(end=day.starts[0], periods=21 * 96 + 1, freq="15min", inclusive="left")
        sunday = past.tz_convert(sc.site.timezone).day_of_week == 6
        history = History(past.as_unit("ns").asi8, np.where(sunday, 100.0, 800.0))
        grid = inputs.grid(40, 8)  # 10:00–12:00 local
        offline = mpc.load_forecaster.forecast(grid, history)
        np.testing.assert_array_equal(controller.forecasts.builtin.load.forecast(grid, history), offline)
        assert (offline.max() < 600.0) == holiday, offline
    finally:
        controller.store.close()


def test_a_worked_holiday_leaves_the_load_forecasts_calendar_only() -> None:
    """``site.worked_holidays`` takes days out of the calendar the load forecast plans on, never out of the tariff's
    (which bills them); every other holiday stays; without worked days the tariff's calendar is used as it is."""
    from datetime import date

    from optimizer.tariff_calendar import HolidayCalendar, forecast_calendar

    tariff = HolidayCalendar("JP", None, [date(2026, 12, 30)])
    forecast = forecast_calendar(tariff, "tariff", [date(2026, 5, 4), date(2026, 12, 30)])
    billed = set(tariff.days([2026]).tolist())
    assert {date(2026, 5, 4), date(2026, 12, 30)} <= billed
    assert set(forecast.days([2026]).tolist()) == billed - {date(2026, 5, 4), date(2026, 12, 30)}
    assert set(tariff.days([2026]).tolist()) == billed  # the tariff's own calendar is not touched
    assert forecast_calendar(tariff, "tariff") is tariff
    other = forecast_calendar(tariff, "VN", [date(2026, 9, 2)])  # Viet Nam's National Day, worked
    assert date(2026, 9, 2) not in set(other.days([2026]).tolist()) and date(2026, 12, 30) in set(
        other.days([2026]).tolist())
