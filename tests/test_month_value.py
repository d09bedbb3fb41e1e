"""What the battery saved this month, live, demand charge included (controller.accounting.Accounting.month_value).

Known answers worked out by hand under EVN's two-part pilot (Cp 235,414 VND/kW·month, Ca normal 1,275 VND/kWh, VAT
8 %); the live ledger against the bills of the same series with and without the battery (one rule: the live
figures are what ``optimizer.billing.make_bill`` bills); the ledger across a restart and into a new month.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.accounting import (
    NO_BATTERY_DEMAND_KEY,
    Accounting,
    DemandTracker,
    EnergyCounters,
    MonthCounters,
    StoredDemand,
    StoredEnergy,
    StoredMonth,
)
from optimizer.tariff import Tariff

TZ = "Asia/Ho_Chi_Minh"
TWO_PART = Tariff.preset("evn-two-part-22kv").bind(TZ)
START = datetime(2026, 6, 9, 1, 0, tzinfo=UTC)  # Tuesday 9 June 2026, 08:00 local


def feed(acc: Accounting, start: datetime, steps: list[tuple[float, float, float]], step_min: int = 15) -> datetime:
    """Cycles ``step_min`` apart from ``start``: each (grid, PV, battery) [kW] over the step before it; the first
    cycle at ``start`` only starts the clock. Returns the last cycle's time."""
    acc.add(start, *steps[0])
    now = start
    for grid, pv, battery in steps:
        now += timedelta(minutes=step_min)
        acc.add(now, grid, pv, battery)
    return now


def test_an_hour_of_shaving_is_worth_its_demand_charge_and_its_energy():
    """08:00–09:00 local a load of 500 kW from the grid; 09:00–10:00 800 kW, of which the battery gives 200 kW; then
    500 kW again to 10:30. Without the battery the month's peak would be 800 kW, with it 600 kW: 200 kW ×
    235,414 × 1.08 = 50,849,424 VND of demand charge saved so far; 200 kWh of normal-hour energy not bought:
    200 × 1,275 × 1.08 = 275,400 VND."""
    acc = Accounting(TWO_PART, TZ, cycle_s=900.0, export_cap_kw=0.0, demand_interval_minutes=30)
    steps = [(500.0, 0.0, 0.0)] * 4 + [(600.0, 0.0, 200.0)] * 4 + [(500.0, 0.0, 0.0)] * 2
    now = feed(acc, START, steps)
    acc.add(now + timedelta(minutes=15), 500.0, 0.0, 0.0)  # the 10:00 window closes
    value = acc.month_value(now + timedelta(minutes=15))
    assert value["month"] == "2026-06"
    assert (value["billed_kw"], value["billed_kw_no_battery"]) == (pytest.approx(600.0), pytest.approx(800.0))
    assert value["demand_saved"] == pytest.approx(200 * 235_414 * 1.08)
    assert value["energy_saved"] == pytest.approx(200 * 1275 * 1.08)
    assert value["saved"] == pytest.approx(200 * 235_414 * 1.08 + 200 * 1275 * 1.08)
    assert value["demand_charge"] == pytest.approx(600 * 235_414 * 1.08)


def test_without_a_demand_charge_the_month_saves_energy_only():
    acc = Accounting(Tariff.preset("evn-manufacturing-22kv").bind(TZ), TZ, 900.0, 0.0, 30)
    now = feed(acc, START, [(600.0, 0.0, 200.0)] * 4)
    value = acc.month_value(now)
    assert value["billed_kw"] is None and value["demand_saved"] == 0.0
    assert value["saved"] == value["energy_saved"] > 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 900), st.floats(0, 700), st.floats(-300, 300)), min_size=2, max_size=120),
       st.integers(0, 47))
@example(steps=[(100.0, 0.0, 0.0), (900.0, 0.0, 0.0)] * 4, first=10)  # 05:00–07:00 local, over off-peak → normal
def test_the_live_month_is_what_the_bills_of_the_same_steps_say(steps, first):
    """Random 15-minute steps of load, PV and battery (export capped at 0 kW: any PV beyond the load is curtailed,
    as the controller would), whole half hours from a random one of 9 June: the live ledger's energy cost and demand
    charge, with and without the battery, equal the bills of the same steps (energy with VAT, less the export
    credit; demand × rate with VAT)."""
    start = START - timedelta(hours=8) + timedelta(minutes=30 * first)  # 9 June 00:00 local + first half hour
    steps = steps[:len(steps) // 2 * 2]
    acc = Accounting(TWO_PART, TZ, cycle_s=900.0, export_cap_kw=0.0, demand_interval_minutes=30)
    rows = []
    for load, pv, battery in steps:
        grid = max(load - pv - battery, 0.0)       # no export: what the PV and the battery leave
        rows.append((grid, load - grid - battery, battery))   # the PV that was used
    now = feed(acc, start, rows)
    acc.add(now + timedelta(microseconds=1), 0.0, 0.0, 0.0)  # the next window starts: the last one closes
    value = acc.month_value(now)
    starts = pd.date_range(start, periods=len(rows), freq="15min")
    grid = np.array([r[0] for r in rows])
    no_battery = np.array([max(r[0] + r[2], 0.0) for r in rows])
    for key, imports in (("", grid), ("_no_battery", no_battery)):
        bill = TWO_PART.bill(starts, 0.25, imports).month("2026-06")
        energy = bill.energy_amount + bill.vat - bill.demand_amount * 0.08 - bill.export_credit
        assert value[f"energy_cost{key}"] == pytest.approx(energy, rel=1e-9, abs=1e-6)
        assert value[f"demand_charge{key}"] == pytest.approx(bill.demand_amount * 1.08, rel=1e-9, abs=1e-6)


def test_the_month_survives_a_restart_and_a_new_month_starts_from_zero():
    acc = Accounting(TWO_PART, TZ, 900.0, 0.0, 30)
    now = feed(acc, START, [(600.0, 0.0, 200.0)] * 4)
    before = acc.month_value(now)
    stored = acc.stored()
    again = Accounting(TWO_PART, TZ, 900.0, 0.0, 30)
    again.restore(StoredDemand.model_validate(stored[DemandTracker.KEY]),
                  StoredEnergy.model_validate(stored[EnergyCounters.KEY]),
                  StoredMonth.model_validate(stored[MonthCounters.KEY]),
                  StoredDemand.model_validate(stored[NO_BATTERY_DEMAND_KEY]))
    assert again.month_value(now) == before
    july = again.month_value(datetime(2026, 7, 2, tzinfo=UTC))
    assert july["month"] == "2026-07" and july["saved"] == 0.0 and july["energy_cost"] == 0.0
    assert StoredMonth.model_validate(MonthCounters().to_dict()).month is None   # a fresh ledger stores cleanly
