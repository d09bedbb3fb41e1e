"""Accounting (controller/accounting.py): the month-to-date peak is a 30-min average on the local clock, today's
energies and money, and the once-per-cycle integration that skips gaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.accounting import (
    Accounting,
    DemandTracker,
    EnergyCounters,
    MonthCounters,
    StoredDemand,
    StoredEnergy,
    just_before,
    load_supply,
    plan_saving,
)
from controller.state_store import StateStore, read_stored
from optimizer.tariff import Tariff

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)
TZ = "Asia/Ho_Chi_Minh"


def month(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m")


def test_demand_peak_is_the_highest_interval_average():
    d = DemandTracker(month, TZ, 30)
    t = T0
    # 30 min at 600 kW, then 30 min alternating 1200 / 0 kW every minute (average 600), then 30 min at 700
    for minute in range(90):
        kw = 600 if minute < 30 else (1200 if minute % 2 == 0 else 0) if minute < 60 else 700
        t = T0 + timedelta(minutes=minute + 1)
        d.add(t, kw, 1 / 60)
    assert d.peak_kw == pytest.approx(600)  # the 700 kW interval is still open
    d.add(t + timedelta(seconds=1), 0, 1 / 3600)
    assert d.peak_kw == pytest.approx(700)
    assert d.month_peak_kw(t) == pytest.approx(700)
    assert d.month_peak_kw(datetime(2026, 6, 2, tzinfo=UTC)) == 0.0


def test_demand_peak_survives_a_restart_mid_interval(tmp_path):
    d = DemandTracker(month, TZ)
    for s in range(0, 45 * 60, 10):
        d.add(T0 + timedelta(seconds=s + 10), 800, 10 / 3600)
    store = StateStore(tmp_path / "s.sqlite", T0)
    store.put(DemandTracker.KEY, d.to_dict(), T0)
    store.close()
    d2 = DemandTracker(month, TZ)
    stored, why = read_stored(StateStore(tmp_path / "s.sqlite", T0), DemandTracker.KEY, StoredDemand)
    assert why is None
    d2.restore(stored)
    assert d2.peak_kw == pytest.approx(800)
    for s in range(45 * 60, 60 * 60, 10):
        d2.add(T0 + timedelta(seconds=s + 10), 800, 10 / 3600)
    d2.add(T0 + timedelta(minutes=61), 0, 60 / 3600)
    assert d2.peak_kw == pytest.approx(800)  # the interval across the restart averaged to 800 too


def test_demand_intervals_follow_the_local_clock_and_billing_month():
    site = Tariff.preset("evn-manufacturing-22kv").bind(TZ)
    d = DemandTracker(site.billing_month, TZ)
    # 2026-05-31 16:30 UTC = 23:30 local; 17:00 UTC = June 1st local midnight
    start = datetime(2026, 5, 31, 16, 30, tzinfo=UTC)
    for s in range(0, 3600, 60):
        d.add(start + timedelta(seconds=s + 60), 500 if s < 1800 else 100, 1 / 60)
    d.add(start + timedelta(minutes=61), 0, 1 / 60)
    assert d.month == "2026-06" and d.peak_kw == pytest.approx(100)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-500, 2000), min_size=1, max_size=200))
def test_peak_never_exceeds_the_highest_power(powers):
    d = DemandTracker(month, TZ, 15)
    for i, p in enumerate(powers):
        d.add(T0 + timedelta(minutes=i + 1), p, 1 / 60)
    d.add(T0 + timedelta(days=1), 0, 0)
    assert 0 <= d.peak_kw <= max(0.0, max(powers)) + 1e-9


def test_energy_counters_and_money_saved():
    c = EnergyCounters()
    # 1 h: load 500, PV 300, battery discharges 200 → grid 0. Without battery: import 200 at 2000/kWh.
    c.add("2026-05-04", grid_kw=0, pv_kw=300, battery_kw=200, dt_h=1, import_price=2000, export_price=0,
          export_cap_kw=0)
    # 1 h: load 100, PV 400, battery charges 300 → grid 0. Without battery: 300 kW would be curtailed.
    c.add("2026-05-04", grid_kw=0, pv_kw=400, battery_kw=-300, dt_h=1, import_price=1000, export_price=500,
          export_cap_kw=0)
    assert c.load_kwh == pytest.approx(600) and c.discharge_kwh == 200 and c.charge_kwh == 300
    assert c.cost == 0 and c.cost_no_battery == pytest.approx(400_000) and c.saved == pytest.approx(400_000)
    again = EnergyCounters.from_stored(StoredEnergy.model_validate(c.to_dict()))
    assert again.saved == pytest.approx(c.saved)
    c.add("2026-05-05", grid_kw=100, pv_kw=0, battery_kw=0, dt_h=1, import_price=1000, export_price=0,
          export_cap_kw=0)
    assert c.day == "2026-05-05" and c.import_kwh == 100 and c.saved == 0


@pytest.mark.parametrize(("grid", "pv", "battery", "expected"), [
    (400.0, 300.0, 0.0, (300.0, 0.0, 400.0)),        # load 700: PV first, the grid the rest
    (900.0, 300.0, -500.0, (300.0, 0.0, 400.0)),     # charging 500 from the grid: 500 of the 900 import is not load
    (0.0, 800.0, -300.0, (500.0, 0.0, 0.0)),         # PV surplus charges the battery; load 500 all from PV
    (-50.0, 800.0, 0.0, (750.0, 0.0, 0.0)),          # PV surplus exported
    (100.0, 200.0, 300.0, (200.0, 300.0, 100.0)),    # load 600: PV, then the battery, then the grid
    (-100.0, 0.0, 400.0, (0.0, 300.0, 0.0)),         # the battery covers the load and exports 100
    (-10.0, 0.0, 0.0, (0.0, 0.0, 0.0)),              # a load measured below zero supplies nothing
])
def test_the_load_is_supplied_by_pv_first_then_the_battery_then_the_grid(grid, pv, battery, expected):
    assert load_supply(grid, pv, battery) == pytest.approx(expected)


@settings(max_examples=300, deadline=None)
@given(st.floats(-1000, 1000), st.floats(0, 1000), st.floats(-500, 500))
def test_the_load_supply_adds_up_to_the_load_and_takes_no_more_than_each_source_gives(grid, pv, battery):
    from_pv, from_battery, from_grid = load_supply(grid, pv, battery)
    assert min(from_pv, from_battery, from_grid) >= 0
    assert from_pv + from_battery + from_grid == pytest.approx(max(0.0, grid + pv + battery), abs=1e-9)
    assert from_pv <= pv + 1e-9 and from_battery <= max(0.0, battery) + 1e-9
    assert from_grid <= max(0.0, grid) + 1e-9   # import that charges the battery is never counted as load


def test_a_morning_of_grid_charging_is_not_read_as_a_load_bought_from_the_grid():
    """The dashboard's case of 7 Dec: 1,535 kWh of load, 496 kWh of PV all used, 532 kWh charged from the grid:
    the old figure (load − import) / load said 2 % self-sufficiency; the PV supplied 32 % of the load."""
    c = EnergyCounters()
    # 06:00–07:00: load 500, PV 100, battery charging 500 from the grid → import 900
    c.add("2026-05-04", grid_kw=900, pv_kw=100, battery_kw=-500, dt_h=1, import_price=1800, export_price=0,
          export_cap_kw=0)
    # 07:00–08:00: load 800, PV 300, battery discharging 100 → import 400
    c.add("2026-05-04", grid_kw=400, pv_kw=300, battery_kw=100, dt_h=1, import_price=1800, export_price=0,
          export_cap_kw=0)
    assert (c.load_from_pv_kwh, c.load_from_battery_kwh, c.load_from_grid_kwh) == pytest.approx((400, 100, 800))
    assert c.load_from_pv_kwh + c.load_from_battery_kwh + c.load_from_grid_kwh == pytest.approx(c.load_kwh)
    assert c.import_kwh == 1300      # 500 of it went into the battery
    again = EnergyCounters.from_stored(StoredEnergy.model_validate(c.to_dict()))
    assert again.load_from_grid_kwh == pytest.approx(800)
    # a state file written before the split: the counters start from zero, nothing is refused
    old = {k: v for k, v in c.to_dict().items() if not k.startswith("load_from_")}
    assert EnergyCounters.from_stored(StoredEnergy.model_validate(old)).load_from_pv_kwh == 0


def _plan(start: datetime, **series: list[float]):
    """A plan-shaped object of hourly steps from ``start`` (the fields :func:`plan_saving` reads)."""
    from types import SimpleNamespace

    n = len(series["grid_kw"])
    arrays = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    return SimpleNamespace(starts=pd.date_range(start, periods=n, freq="h"), duration_h=np.ones(n), **arrays)


def test_the_plan_s_saving_is_counted_by_the_day_s_own_rule():
    """The dashboard had valued every planned battery kWh at the import price: a charge from PV that a zero-export
    site would otherwise curtail counted as bought (−300 kW × 1,000 ₫ below), so a sunny Sunday's "expected saving"
    read negative. Three hours by hand, zero export, export price 0:
    06:00 charge 500 from the grid: load 500, PV 100, grid 900; without battery 400 → −500 kWh × 1,000 ₫;
    12:00 charge 300 from PV surplus: load 300, PV 800 (200 curtailed), grid 0; without battery 0 (500 curtailed) → 0;
    18:00 discharge 400: load 500, grid 100; without battery 500 → +400 kWh × 3,000 ₫."""
    plan = _plan(T0, grid_kw=[900, 0, 100], battery_kw=[-500, -300, 400], pv_kw=[100, 800, 0],
                 curtail_kw=[0, 200, 0], import_price=[1000, 1000, 3000], export_price=[0, 0, 0])
    hours = timedelta(hours=3)
    assert plan_saving(plan, T0, T0 + hours, export_cap_kw=0.0) == pytest.approx(-500_000 + 0 + 1_200_000)
    # only what lies ahead counts, and only until the end: half of the first hour, the last hour not at all
    assert plan_saving(plan, T0 + timedelta(minutes=30), T0 + timedelta(hours=2), 0.0) == pytest.approx(-250_000)
    # where 100 kW may be exported at 500 ₫, the noon surplus without a battery earns 100 kWh × 500 ₫ that the
    # charging plan gives up
    plan.export_price[:] = 500.0
    assert plan_saving(plan, T0, T0 + hours, export_cap_kw=100.0) == pytest.approx(700_000 - 50_000)


def test_today_s_expected_saving_runs_to_the_local_midnight():
    """The state's ``today.expected_saved``: the saving so far + the plan until 24:00 site time (17:00 UTC in Viet
    Nam), not its steps of tomorrow."""
    tariff = Tariff.preset("evn-manufacturing-22kv").bind(TZ)
    acc = Accounting(tariff, TZ, cycle_s=3600.0, export_cap_kw=0.0, demand_interval_minutes=30)
    now = datetime(2026, 5, 4, 15, 0, tzinfo=UTC)                        # 22:00 site time
    acc.add(now - timedelta(hours=1), 100.0, 0.0, 400.0)
    acc.add(now, 100.0, 0.0, 400.0)                                     # 21:00–22:00: 400 kWh discharged
    so_far = acc.energy.saved
    assert so_far > 0
    plan = _plan(now, grid_kw=[100] * 4, battery_kw=[400] * 4, pv_kw=[0] * 4, curtail_kw=[0] * 4,
                 import_price=[1000] * 4, export_price=[0] * 4)            # 22:00, 23:00 today; 00:00, 01:00 tomorrow
    today = acc.today(now, plan)
    assert today["expected_saved"] == pytest.approx(so_far + 2 * 400 * 1000)
    assert today["saved"] == so_far and acc.today(now, None)["expected_saved"] is None


def test_each_cycle_is_integrated_over_the_time_since_the_last_and_gaps_are_not():
    """1 s cycles: 3 cycles at grid 360 kW import, PV 0, battery 0 → 2 intervals of 1 s = 0.2 kWh imported;
    then a 6 s gap (over 5 cycles: the controller was not running) adds nothing, the cycle after it 1 s again."""
    tariff = Tariff.preset("evn-manufacturing-22kv").bind(TZ)
    acc = Accounting(tariff, TZ, cycle_s=1.0, export_cap_kw=0.0, demand_interval_minutes=30)
    assert acc.add(T0, 360.0, 0.0, 0.0) == 0.0  # the first cycle has nothing before it
    for s in (1, 2):
        assert acc.add(T0 + timedelta(seconds=s), 360.0, 0.0, 0.0) == pytest.approx(1 / 3600)
    assert acc.energy.import_kwh == pytest.approx(0.2)
    assert acc.add(T0 + timedelta(seconds=8), 360.0, 0.0, 0.0) == 0.0
    acc.add(T0 + timedelta(seconds=9), 360.0, None, 0.0)  # PV missing: the demand interval still counts
    assert acc.energy.import_kwh == pytest.approx(0.2)
    assert acc.demand.current_average_kw() == pytest.approx(0.3 / 0.5)  # 0.3 kWh over the 30-min interval
    assert acc.prices(T0)["currency"] == tariff.currency
    again = Accounting(tariff, TZ, 1.0, 0.0, 30)
    stored = acc.stored()
    again.restore(StoredDemand.model_validate(stored[DemandTracker.KEY]),
                  StoredEnergy.model_validate(stored[EnergyCounters.KEY]))
    assert again.energy.import_kwh == pytest.approx(0.2) and again.demand.current_average_kw() == pytest.approx(0.6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=96), st.integers(0, 47))
def test_the_live_month_peak_is_dated_as_the_bill_dates_it(pairs, first):
    """Live and billed month peaks agree, value and date (optimizer.billing.sets_month_peak): whole 30-minute
    windows of 15-minute steps of 500 + k/32 kW (exact in binary, windows a few tens of watts apart, so the 0.05 kW
    rule decides), from a random half hour of 4 May (local). (Whole windows only: a bill has no readings before the
    series starts, while the live tracker's first reading covers the time since the cycle before it.)"""
    site = Tariff.preset("evn-two-part-22kv").bind(TZ)
    start = datetime(2026, 5, 3, 17, 0, tzinfo=UTC) + timedelta(minutes=30 * first)  # 4 May 00:00 local + first
    kw = [500.0 + k / 32 for pair in pairs for k in pair]
    accounting = Accounting(site, TZ, cycle_s=900.0, export_cap_kw=0.0, demand_interval_minutes=30)
    tracker = accounting.demand
    for i, p in enumerate(kw):
        tracker.add(start + timedelta(minutes=15 * (i + 1)), p, 0.25)
    end = start + timedelta(minutes=15 * len(kw))
    tracker.add(end + timedelta(minutes=30), 0.0, 0.0)  # close the last interval
    month = site.bill(pd.date_range(start, periods=len(kw), freq="15min"), 0.25, np.array(kw)).month("2026-05")
    assert tracker.peak_kw == month.peak_kw
    assert tracker.peak_at == month.peak_at  # the same UTC ISO string in the state and in the bill
    shown = accounting.month_peak(end)
    assert shown["month_peak_at"] == tracker.peak_at and shown["month_peak_period"] == month.peak_period


def test_a_new_month_has_no_peak_date_yet():
    site = Tariff.preset("evn-two-part-22kv").bind(TZ)
    accounting = Accounting(site, TZ, cycle_s=900.0, export_cap_kw=0.0, demand_interval_minutes=30)
    accounting.demand.add(datetime(2026, 5, 4, 1, 15, tzinfo=UTC), 400.0, 0.25)  # 08:00–08:15 local
    accounting.demand.add(datetime(2026, 5, 4, 1, 30, tzinfo=UTC), 400.0, 0.25)  # 08:15–08:30
    accounting.demand.add(datetime(2026, 5, 4, 1, 45, tzinfo=UTC), 0.0, 0.25)  # the next interval: 08:00's closes
    assert accounting.month_peak(datetime(2026, 5, 4, 2, 0, tzinfo=UTC)) == {
        "month_peak_kw": pytest.approx(400.0), "month_peak_at": "2026-05-04T01:00:00+00:00",
        "month_peak_period": "normal", "billed_kw": pytest.approx(400.0)}
    assert accounting.month_peak(datetime(2026, 6, 2, tzinfo=UTC)) == {
        "month_peak_kw": 0.0, "month_peak_at": None, "month_peak_period": None, "billed_kw": 0.0}


def test_time_the_tracker_did_not_measure_counts_at_the_windows_average_not_as_zero():
    """Ten minutes at 600 kW, ten unmeasured (the controller was down), then 600 kW again: the window so far is
    600 kW on average throughout, so the dispatcher's ceiling for the rest stays 600 kW (not 1,200) and the window
    closes at 600 kW (not 400), as a bill averages a window over the readings it has."""
    from controller.targets import DemandWindow

    d = DemandTracker(month, TZ, 30)
    start = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)   # 10:00 in Hai Phong
    for minute in range(1, 11):
        d.add(start + timedelta(minutes=minute), 600.0, 1 / 60)
    at = start + timedelta(minutes=20)
    length, elapsed, kwh = d.running(at)
    assert (length, elapsed, kwh) == (0.5, pytest.approx(1 / 3), pytest.approx(200.0))   # 100 kWh measured
    assert DemandWindow(length, elapsed, kwh).ceiling_kw(600.0) == pytest.approx(600.0)
    assert d.current_average_kw() == pytest.approx(200.0)   # the state's figure: what was measured, over 30 min
    stored = StoredDemand.model_validate(d.to_dict())       # a restart keeps how much was measured
    again = DemandTracker(month, TZ, 30)
    again.restore(stored)
    assert again.running(at)[2] == pytest.approx(200.0)
    for tracker in (d, again):
        for minute in range(21, 31):
            tracker.add(start + timedelta(minutes=minute), 600.0, 1 / 60)
        tracker.add(start + timedelta(minutes=31), 0.0, 1 / 60)   # closes 10:00–10:30
        assert tracker.peak_kw == pytest.approx(600.0)
    legacy = {k: v for k, v in stored.model_dump(mode="json").items() if k != "interval_measured_h"}
    old = DemandTracker(month, TZ, 30)
    old.restore(StoredDemand.model_validate(legacy))   # a file from before: as it was, nothing extrapolated
    assert old.running(at)[2] == pytest.approx(100.0)


@given(st.dates(min_value=datetime(2000, 1, 2).date(), max_value=datetime(2099, 12, 31).date()),
       st.integers(min_value=-40, max_value=40))
def test_just_before_is_the_previous_day_or_month_only(day, shift: int) -> None:
    other = day + timedelta(days=shift)
    assert just_before(other.isoformat(), day.isoformat()) is (shift == -1)
    month, other_month = day.strftime("%Y-%m"), other.strftime("%Y-%m")
    months_apart = (day.year - other.year) * 12 + day.month - other.month
    assert just_before(other_month, month) is (months_apart == 1)
    assert not just_before(other_month, day.isoformat()) and not just_before(other.isoformat(), None)


def test_counters_take_the_day_and_month_before_into_the_current_ones_only() -> None:
    """A clock set back across midnight (or the month's end) counts on in the day (month) under way; one set back
    further (a dead RTC, a wrong clock put right) starts them again at its own day (month)."""
    energy, month = EnergyCounters(), MonthCounters()
    energy.add("2026-06-01", 100.0, 0.0, 0.0, 1.0, 1000.0, 0.0, 0.0)
    month.add("2026-06", 1000.0, 1000.0)
    energy.add("2026-05-31", 100.0, 0.0, 0.0, 1.0, 1000.0, 0.0, 0.0)
    month.add("2026-05", 1000.0, 1000.0)
    assert (energy.day, energy.import_kwh, month.month, month.cost) == ("2026-06-01", 200.0, "2026-06", 2000.0)
    energy.add("2026-05-20", 100.0, 0.0, 0.0, 1.0, 1000.0, 0.0, 0.0)
    month.add("2026-04", 1000.0, 1000.0)
    assert (energy.day, energy.import_kwh, month.month, month.cost) == ("2026-05-20", 100.0, "2026-04", 1000.0)
