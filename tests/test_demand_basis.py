"""A 12-month demand basis (``rolling_12_month_max``, Japanese 実量制 contract power) is planned, defended and
tracked as it is billed: one rule, :func:`optimizer.billing.billed_demand_kw`, for bills, studies and the live
controller.

Known answers: the billed demand of a month from the months' peaks; the LP's charge on its running peak (a rise
billed for twelve months costs twelve months' rate, once); a rise worth shaving at twelve months' rate and not at
one; the level billed by the months before is taken as paid, in a study (the step context the planner and the
dispatcher read) and live (the demand tracker keeps the months' peaks across months and restarts, with the peaks
billed before it measured).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import jsonschema
import numpy as np
import pandas as pd
import pytest

from controller.accounting import Accounting, DemandTracker, StoredDemand
from optimizer import costs
from optimizer.billing import billed_demand_kw
from optimizer.planner import PlanInputs, Planner
from optimizer.service import SiteState
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.tariff import DemandCharge, Tariff, load_tariff
from optimizer.timegrid import regular_grid
from simulations.runner import SeriesData, make_strategy, price_inputs, simulate
from tests.test_one_path import KnownSeries, factory_day, scenario

TZ = "Asia/Ho_Chi_Minh"
MONTH_MAX = DemandCharge(1000.0, "month_max", 30)
ROLLING = DemandCharge(1000.0, "rolling_12_month_max", 30)


def test_the_billed_demand_of_a_month_by_its_basis():
    peaks = {"2025-06": 900.0, "2025-07": 950.0, "2026-03": 700.0, "2026-05": 600.0}
    assert billed_demand_kw(MONTH_MAX, "2026-05", peaks) == 600.0
    assert billed_demand_kw(ROLLING, "2026-05", peaks) == 950.0  # July 2025 is the 11th month before May 2026
    assert billed_demand_kw(ROLLING, "2026-07", peaks) == 700.0  # July 2025 has left the twelve months
    assert billed_demand_kw(MONTH_MAX, "2026-04", peaks) is None  # nothing known of April
    assert billed_demand_kw(ROLLING, "2026-05", peaks, {"2026-05": 980.0}) == 980.0  # each month's larger value
    assert (MONTH_MAX.months_billed, ROLLING.months_billed) == (1, 12)


def test_the_bill_uses_the_same_rule():
    """Two months of the Japanese tariff: 800 kW in April, 500 kW in May; May is billed on April's 800 kW."""
    site = Tariff.preset("jp-high-voltage-illustrative").bind(TZ)
    starts = pd.DatetimeIndex([pd.Timestamp("2026-04-10 08:00", tz=TZ), pd.Timestamp("2026-05-10 08:00", tz=TZ)])
    bill = site.bill(starts.tz_convert("UTC"), 0.5, np.array([800.0, 500.0]))
    assert bill.month("2026-05").demand_kw == 800.0 and bill.month("2026-05").peak_kw == 500.0


def plan_inputs(n: int, months: np.ndarray | None, billed_months: int, after: bool = True,
                load: np.ndarray | None = None, rate: float = 500.0) -> PlanInputs:
    return PlanInputs(
        grid=regular_grid(datetime(2026, 5, 4, 1, tzinfo=UTC), n, 30), pv_kw=np.zeros(n),
        load_kw=np.full(n, 500.0) if load is None else load, import_price=np.full(n, 1000.0),
        export_price=np.zeros(n), soc0_kwh=500.0, month_peak_kw=500.0, demand_charge_per_kw=rate,
        peak_billed_months=billed_months, bill_after_horizon=after, billing_month=months)


def test_the_running_peak_is_charged_for_every_month_it_is_billed_in_once():
    one = np.zeros(4, dtype=int)
    two = np.array([0, 0, 1, 1])
    assert costs.peak_charge_per_kw(plan_inputs(4, one, 1), one).tolist() == [0, 0, 0, 500]
    assert costs.peak_charge_per_kw(plan_inputs(4, two, 1), two).tolist() == [0, 500, 0, 500]
    assert costs.peak_charge_per_kw(plan_inputs(4, one, 12), one).tolist() == [0, 0, 0, 6000]
    # the first month's bill at its last step, the 11 months a rise is billed in from the next month at the end
    assert costs.peak_charge_per_kw(plan_inputs(4, two, 12), two).tolist() == [0, 500, 0, 5500]
    # a horizon that is the whole bill (a study's perfect foresight) charges the months in it only
    assert costs.peak_charge_per_kw(plan_inputs(4, two, 12, after=False), two).tolist() == [0, 500, 0, 500]


BATTERY = BatterySpec(capacity_kwh=500, max_charge_kw=250, max_discharge_kw=250, charge_efficiency=1.0,
                      discharge_efficiency=1.0, soc_min_pct=0, soc_max_pct=100, wear_cost_per_kwh=1000.0)


@pytest.mark.parametrize(("billed_months", "discharged_kwh", "peak_kw"), [(1, 0.0, 700.0), (12, 400.0, 500.0)])
def test_a_rise_is_shaved_when_twelve_months_of_rate_pay_for_it(billed_months, discharged_kwh, peak_kw):
    """500 kW all day with 700 kW for two hours, the month's billed level 500 kW, a full 500 kWh battery with a
    wear cost of 1,000 per kWh through it, flat 1,000 /kWh (a kWh discharged saves as much import as it was worth
    kept). Shaving the 200 kW costs 400 kWh of wear = 400,000; at 500 /kW-month a month's bill saves 100,000 (not
    worth it), twelve months' 1,200,000 (worth it)."""
    load = np.full(24, 500.0)
    load[10:14] = 700.0
    inputs = plan_inputs(24, np.zeros(24, dtype=int), billed_months, load=load)
    plan = Planner(BATTERY, GridSpec(export_cap_kw=0), PlannerSettings(block_minutes=0), 24).plan(inputs)
    assert float(np.sum(plan.discharge_kw * 0.5)) == pytest.approx(discharged_kwh, abs=0.5)
    assert float(np.max(plan.import_kw)) == pytest.approx(peak_kw, abs=0.01)
    assert plan.objective.demand == pytest.approx(500.0 * billed_months * (peak_kw - 500.0), abs=1.0)


def two_days(march_kw: float) -> SeriesData:
    """31 March and 1 April 2026 (local), 15-minute steps, no PV: ``march_kw`` all of 31 March; 1 April 600 kW with
    900 kW from 10:00 to 12:00."""
    starts = pd.date_range("2026-03-31", periods=192, freq="15min", tz=TZ).tz_convert("UTC")
    load = np.full(192, float(march_kw))
    load[96:] = 600.0
    load[96 + 40:96 + 48] = 900.0
    return SeriesData(starts=starts, duration_h=np.full(192, 0.25), pv_kw=np.zeros(192), load_kw=load)


class Recorder:
    """The study's MPC, recording the demand billed so far that the planner and the dispatcher are given."""

    def __init__(self, mpc):
        self.mpc, self.name, self.solve_s, self.replans = mpc, "mpc_perfect", 0.0, 0
        self.levels: list[float] = []

    def target(self, t, now, ctx):
        self.levels.append(ctx.month_peak_kw)
        return self.mpc.target(t, now, ctx)


@pytest.mark.parametrize("tariff", ["jp-high-voltage-illustrative", "evn-two-part-22kv"])
def test_a_study_takes_the_level_billed_by_the_months_before_as_paid(tariff):
    """After a 1,000 kW March, April under the 12-month basis starts billed at March's peak and the 900 kW
    morning is not shaved; under the EVN pilot's month maximum April starts at 0 and the battery covers the
    morning."""
    sc = scenario(tariff)
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    data = price_inputs(two_days(1000.0), site_tariff, sc.planner.horizon_steps)
    rec = Recorder(make_strategy("mpc_perfect", sc, data, site_tariff))
    result = simulate(rec, sc, data, site_tariff, battery=True, pv=False)
    march = result.bill.month("2026-03").peak_kw
    april = result.frame.iloc[96:]
    morning = april.iloc[40:48]
    if tariff.startswith("jp"):
        assert rec.levels[96] == pytest.approx(march) and march > 900.0
        assert result.bill.month("2026-04").demand_kw == pytest.approx(march)
        assert morning["battery_kw"].max() <= 1e-6  # nothing to gain below the billed level
    else:
        assert rec.levels[96] == 0.0
        assert morning["battery_kw"].max() > 0.0  # the battery covers the morning


def month_of(ts: datetime) -> str:
    return ts.astimezone(ZoneInfo(TZ)).strftime("%Y-%m")


def test_the_live_tracker_keeps_the_months_peaks_and_bills_on_twelve():
    """Live: a 30-minute window of 800 kW in March and 500 kW in April; April is billed on 800 kW under the
    12-month basis and on its own 500 kW under the month maximum; the peaks survive a restart; a peak from the
    utility's bills counts, one older than the eleven months before does not."""
    jp = Tariff.preset("jp-high-voltage-illustrative").bind(TZ)
    evn = Tariff.preset("evn-two-part-22kv").bind(TZ)
    billed = {"2025-04": 2000.0, "2025-05": 850.0}  # April 2025 is twelve months before April 2026: left out
    live = Accounting(jp, TZ, cycle_s=900.0, export_cap_kw=0.0, demand_interval_minutes=30, billed_peaks_kw=billed)
    month_max = Accounting(evn, TZ, cycle_s=900.0, export_cap_kw=0.0, demand_interval_minutes=30)
    march, april = datetime(2026, 3, 20, 2, tzinfo=UTC), datetime(2026, 4, 20, 2, tzinfo=UTC)
    for acc in (live, month_max):
        for start, kw in ((march, 800.0), (april, 500.0)):
            for k in (1, 2):
                acc.demand.add(start + timedelta(minutes=15 * k), kw, 0.25)
            acc.demand.add(start + timedelta(minutes=45), 0.0, 0.25)  # the next window: this one closes
    now = april + timedelta(hours=1)
    assert live.demand.past_peaks == {"2026-03": pytest.approx(800.0)}
    assert live.billed_demand_kw(now) == pytest.approx(850.0)  # May 2025 from the bills, within the 12 months
    assert month_max.billed_demand_kw(now) == pytest.approx(500.0)
    assert live.month_peak(now)["month_peak_kw"] == pytest.approx(500.0)
    assert live.month_peak(now)["billed_kw"] == pytest.approx(850.0)
    assert Accounting(Tariff.preset("evn-manufacturing-22kv").bind(TZ), TZ, 900.0, 0.0, 30).month_peak(now)[
        "billed_kw"] is None  # no demand charge
    again = Accounting(jp, TZ, 900.0, 0.0, 30)
    again.restore(StoredDemand.model_validate(live.stored()[DemandTracker.KEY]), None)
    assert again.billed_demand_kw(now) == pytest.approx(800.0)  # March kept across the restart (no bills given)
    # a new month before any of its windows closed: April is still counted in May's twelve months
    assert again.billed_demand_kw(datetime(2026, 5, 1, 0, tzinfo=UTC)) == pytest.approx(800.0)


def test_the_tracker_keeps_twelve_earlier_months():
    d = DemandTracker(month_of, TZ, 30)
    t = datetime(2025, 1, 10, 2, tzinfo=UTC)
    for m in range(15):
        start = t + timedelta(days=31 * m)
        d.add(start + timedelta(minutes=30), 100.0 + m, 0.5)
        d.add(start + timedelta(minutes=60), 0.0, 0.5)
    assert len(d.past_peaks) == 12 and min(d.past_peaks) == "2025-03"
    assert StoredDemand.model_validate(d.to_dict()).past_peaks_kw == d.past_peaks
    with pytest.raises(ValueError, match="past_peaks_kw"):
        StoredDemand.model_validate({**d.to_dict(), "past_peaks_kw": {"2025-13": 1.0}})


async def test_the_controller_takes_the_twelve_months_level_as_held(tmp_path):
    """The real controller under the Japanese tariff with May's 900 kW from the utility's bills
    (``control.billed_month_peaks_kw``), June's own peak 600 kW so far and no plan: the state says June is billed
    on 900 kW, and that is the level the dispatcher holds, so a window heading for 660 kW asks no load to be shed
    (under the month maximum it would: tests/test_demand_watch.py)."""
    from controller.demand_watch import ALARM as DEMAND_ALARM
    from tests.test_external_forecast import controller_on_fake_site

    now = datetime(2026, 6, 10, 3, 0, tzinfo=UTC)
    controller, site, _, schema = controller_on_fake_site(
        tmp_path, "nam-cau-kien-two-part", "jp-high-voltage-illustrative", now,
        control={"billed_month_peaks_kw": {"2026-05": 900.0}}, bind_preset=True)
    try:
        controller.demand.restore(StoredDemand(month="2026-06", peak_kw=600.0, peak_at=now - timedelta(days=2),
                                               interval_start=now - timedelta(minutes=10), interval_kwh=100.0))
        site.battery.set(max_discharge_kw=0.0, max_charge_kw=0.0)
        site.settle(690.0, 0.0)
        state = await controller.cycle()
        jsonschema.validate(state, schema)
        demand = state["demand"]
        assert demand["month_peak_kw"] == 600.0 and demand["billed_kw"] == 900.0 and demand["hold_kw"] == 900.0
        assert demand["shed_to_hold_kw"] == 0.0 and DEMAND_ALARM not in state["alarms"]
    finally:
        controller.store.close()


class RiskySeries(KnownSeries):
    """The known day as the forecast source, with a net-load risk of 40 kW on every step."""

    def peak_risk(self, grid, pv_kw, load_kw):
        return np.full(len(grid), 40.0)


@pytest.mark.parametrize(("tariff", "margin"), [("jp-high-voltage-illustrative", 0.125), ("evn-two-part-22kv", 0.0)])
def test_a_12_month_basis_plans_on_the_loads_upper_error(tariff, margin):
    """A peak the forecast missed costs a year of the rate under a 12-month basis: the plan is made on the load
    forecast plus ``planner.demand_risk_margin_12_month`` (0.125) × the risk; under the EVN pilot's month maximum on the
    forecast plus ``demand_risk_margin`` (0) × the risk, as before."""
    from controller.planning import PlanKeeper

    sc = scenario(tariff)
    site_tariff = load_tariff(sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone, sc.tariff.extra_holidays)
    day = factory_day()
    source = RiskySeries(day.starts.as_unit("ns").asi8, day.pv_kw, day.load_kw)
    keeper = PlanKeeper(Planner(sc.battery.spec(), sc.grid, sc.planner, sc.planner.horizon_steps), sc.planner,
                        sc.grid, site_tariff, source, sc.dispatch.follow_tol_kw)
    now = day.starts[8].to_pydatetime()
    inputs = keeper.inputs(now, SiteState(soc_kwh=500.0))
    assert sc.planner.risk_margin(12) == 0.125 and sc.planner.risk_margin(1) == 0.0
    np.testing.assert_allclose(inputs.load_kw, day.load_kw[8:8 + len(inputs.load_kw)] + 40.0 * margin)
