"""Itemised bills and peak demand: bills worked out by hand, 30-minute averaging, the Japanese 12-month basis,
DST, and a hypothesis property against an independent per-step sum."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.billing import window_average_kw
from optimizer.tariff import Tariff

VN = "Asia/Ho_Chi_Minh"
TOKYO = "Asia/Tokyo"


def local_steps(start: str, count: int, minutes: int, tz: str = VN) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp(start, tz=tz), periods=count, freq=f"{minutes}min").tz_convert("UTC")


@pytest.fixture(scope="module")
def two_part():
    return Tariff.preset("evn-two-part-22kv").bind(VN)


@pytest.fixture(scope="module")
def japan():
    return Tariff.preset("jp-high-voltage-illustrative").bind(TOKYO)


# --- bills worked out by hand -----------------------------------------------------------------------------------------

def test_two_part_bill_by_hand(two_part):
    # Tue 2026-07-14, 17:00–18:00 local, 15-minute steps; Decision 963 windows: 17:00, 17:15 normal; 17:30, 17:45 peak.
    starts = local_steps("2026-07-14 17:00", 4, 15)
    bill = two_part.bill(starts, 0.25, np.array([100.0, 200.0, 300.0, 100.0]))
    m = bill.month("2026-07")
    lines = {e.period: (e.kwh, e.amount) for e in m.energy}
    assert lines == {"off_peak": (0.0, 0.0), "normal": (75.0, 75 * 1275.0), "peak": (100.0, 100 * 2182.0)}
    assert m.energy_amount == 313_825.0  # 95,625 + 218,200
    assert m.peak_kw == 200.0  # 30-min averages: (100+200)/2 = 150 at 17:00, (300+100)/2 = 200 at 17:30
    assert m.demand_kw == 200.0 and m.demand_rate_per_kw_month == 235_414
    assert m.demand_amount == 47_082_800.0
    assert m.subtotal == 47_396_625.0
    assert m.vat == pytest.approx(3_791_730.0)  # 8 %
    assert m.total == pytest.approx(51_188_355.0)
    assert bill.total == pytest.approx(51_188_355.0)
    assert m.hours == 1.0 and m.export_kwh == 0.0


def test_a_month_the_series_covers_in_part_says_how_much_of_its_demand_charge_it_earned(two_part, japan):
    # the hand-worked hour above: 1 of July's 744 hours; the bill charges the whole month, as the utility would
    starts = local_steps("2026-07-14 17:00", 4, 15)
    m = two_part.bill(starts, 0.25, np.array([100.0, 200.0, 300.0, 100.0])).month("2026-07")
    assert m.month_hours == 744.0 and m.covered_share == pytest.approx(1 / 744)
    assert m.demand_vat == pytest.approx(0.08 * 47_082_800.0)
    assert m.demand_beyond_coverage(with_vat=False) == pytest.approx(47_082_800.0 * 743 / 744)
    assert m.demand_beyond_coverage(with_vat=True) == pytest.approx(1.08 * 47_082_800.0 * 743 / 744)
    # a whole month: nothing beyond coverage; February has 672 hours
    feb = local_steps("2026-02-01 00:00", 28 * 96, 15)
    bill = two_part.bill(feb, 0.25, np.full(len(feb), 500.0))
    assert bill.month("2026-02").month_hours == 672.0 and bill.month("2026-02").covered_share == 1.0
    assert bill.demand_beyond_coverage(with_vat=True) == 0.0
    # across a daylight-saving change the month's hours are its own (Tokyo has none; a European month has 743)
    assert japan.bill(local_steps("2026-03-10 00:00", 4, 15, TOKYO), 0.25, np.full(4, 10.0)).month(
        "2026-03").month_hours == 744.0
    berlin = Tariff.preset("evn-two-part-22kv").bind("Europe/Berlin")
    march = berlin.bill(local_steps("2026-03-10 00:00", 4, 15, "Europe/Berlin"), 0.25, np.full(4, 10.0))
    assert march.month("2026-03").month_hours == 743.0


def test_month_to_date_peak_from_before_the_series_sets_the_demand(two_part):
    starts = local_steps("2026-07-14 17:00", 4, 15)
    bill = two_part.bill(starts, 0.25, np.array([100.0, 200.0, 300.0, 100.0]), prior_peaks_kw={"2026-07": 250.0})
    assert bill.month("2026-07").peak_kw == 200.0
    assert bill.month("2026-07").demand_kw == 250.0
    assert bill.month("2026-07").demand_amount == 250 * 235_414


def test_export_credit_is_not_vated():
    # Surplus sale from 2026-06-26 at 1,382.7 VND/kWh. Tue 2026-07-14 12:00–12:30, normal period (1,833).
    site = Tariff.preset("evn-manufacturing-22kv-surplus-sale").bind(VN)
    starts = local_steps("2026-07-14 12:00", 2, 15)
    bill = site.bill(starts, 0.25, import_kw=np.array([0.0, 40.0]), export_kw=np.array([100.0, 100.0]))
    m = bill.months[0]
    assert m.energy_kwh == 10.0 and m.energy_amount == 18_330.0
    assert m.export_kwh == 50.0 and m.export_credit == pytest.approx(69_135.0)
    assert m.vat == pytest.approx(1_466.4)  # 8 % of 18,330 only
    assert m.total == pytest.approx(18_330.0 + 1_466.4 - 69_135.0)
    assert m.demand_kw is None and m.demand_amount == 0.0


def test_bill_splits_at_local_month_end_and_vat_changes_with_the_year():
    # 2026-12-31 23:00 and 23:30, 2027-01-01 00:00 and 00:30 local (holiday): 30-minute steps, 100 kW each.
    site = Tariff.preset("evn-manufacturing-22kv").bind(VN)
    bill = site.bill(local_steps("2026-12-31 23:00", 4, 30), 0.5, np.full(4, 100.0))
    assert [m.month for m in bill.months] == ["2026-12", "2027-01"]
    december, january = bill.months
    assert december.energy[1].period == "normal" and december.energy[1].kwh == 100.0  # 963: 22:30–24:00 normal
    assert december.vat == pytest.approx(100 * 1833 * 0.08)
    assert january.energy[0].period == "off_peak" and january.energy[0].kwh == 100.0
    assert january.vat == pytest.approx(100 * 1190 * 0.10)
    assert bill.total == pytest.approx(100 * 1833 * 1.08 + 100 * 1190 * 1.10)


# --- peak demand ------------------------------------------------------------------------------------------------------

def test_peak_uses_locally_aligned_half_hours(two_part):
    # 300 kW during 10:15–10:45 straddles two half hours: each averages 150 kW, so the peak is 150, not 300.
    starts = local_steps("2026-07-14 10:00", 4, 15)
    assert two_part.peak_demand_kw(starts, 0.25, np.array([0.0, 300.0, 300.0, 0.0])) == {"2026-07": 150.0}
    # One 15-minute spike of 400 kW next to 0 averages to 200 kW.
    assert two_part.peak_demand_kw(starts, 0.25, np.array([400.0, 0.0, 0.0, 0.0])) == {"2026-07": 200.0}


def test_the_demand_measure_window_by_window(two_part):
    starts = local_steps("2026-07-14 10:00", 5, 15)  # 10:00–11:15 local: the last window half measured
    w = window_average_kw(two_part, starts, 0.25, np.array([0.0, 300.0, 300.0, np.nan, 90.0]))
    assert list(w.index) == list(pd.DatetimeIndex(["2026-07-14T03:00Z", "2026-07-14T03:30Z", "2026-07-14T04:00Z"]))
    assert list(w) == [150.0, 300.0, 90.0]  # NaN skipped: 10:30 averages its one measured step
    assert w.max() == two_part.peak_demand_kw(starts, 0.25, np.array([0.0, 300.0, 300.0, np.nan, 90.0]))["2026-07"]


def test_peak_averages_five_minute_steps_and_keeps_hourly_steps(two_part):
    five = local_steps("2026-07-14 10:00", 12, 5)
    kw = np.array([60.0, 0, 0, 0, 0, 0, 30, 30, 30, 30, 30, 30])
    assert two_part.peak_demand_kw(five, 5 / 60, kw) == {"2026-07": pytest.approx(30.0)}  # 10:00 averages 10 kW
    hourly = local_steps("2026-07-14 10:00", 3, 60)
    assert two_part.peak_demand_kw(hourly, 1.0, np.array([100.0, 300.0, 200.0])) == {"2026-07": 300.0}


def test_peak_skips_missing_steps_and_is_per_local_month(two_part):
    starts = local_steps("2026-07-31 23:00", 4, 30)  # two half hours in July, two in August (local)
    peaks = two_part.peak_demand_kw(starts, 0.5, np.array([np.nan, 80.0, 120.0, np.nan]))
    assert peaks == {"2026-07": 80.0, "2026-08": 120.0}


def test_when_the_month_peak_was_set_and_in_which_period(two_part):
    # Tue 2026-07-14 (Decision 963 windows): 17:00 averages 150 kW (normal hours), 17:30 200 kW (peak hours).
    m = two_part.bill(local_steps("2026-07-14 17:00", 4, 15), 0.25, np.array([100.0, 200.0, 300.0, 100.0])).months[0]
    assert (m.peak_at, m.peak_period) == ("2026-07-14T10:30:00+00:00", "peak")  # 17:30 local
    assert m.to_dict()["peak_at"] == m.peak_at and m.to_dict()["peak_period"] == "peak"


@pytest.mark.parametrize(("night_kw", "set_at", "period"), [
    (500.03, "2026-07-14T01:00:00+00:00", "normal"),  # the night rides the level within 0.05 kW: set at 08:00 local
    (500.10, "2026-07-14T19:00:00+00:00", "off_peak"),  # 0.1 kW above it: the night's charge (02:00 local) set it
    (None, "2026-07-14T01:00:00+00:00", "normal"),  # 500, 500.04, 500.08: no window 0.05 kW above the ones before
])
def test_the_month_peak_is_set_where_it_was_first_reached(two_part, night_kw, set_at, period):
    starts = local_steps("2026-07-14 00:00", 96, 30)
    kw = np.full(96, 300.0)
    if night_kw is None:  # creeping up in steps each within the tolerance: 08:00, 09:00, 10:00 on the 14th
        kw[16], kw[18], kw[20] = 500.0, 500.04, 500.08
    else:  # 08:00 on the 14th, 02:00 on the 15th (local)
        kw[16], kw[52] = 500.0, night_kw
    m = two_part.bill(starts, 0.5, kw).months[0]
    assert m.peak_kw == kw.max() and m.demand_kw == kw.max()
    assert (m.peak_at, m.peak_period) == (set_at, period)


def test_the_month_peak_of_a_dst_fall_back_night_is_dated_by_its_own_instant():
    site = Tariff.preset("evn-two-part-22kv").bind("Europe/Berlin")
    starts = pd.date_range("2026-10-25T00:00Z", periods=8, freq="15min")  # 02:00–03:00 local twice
    first = site.bill(starts, 0.25, np.array([0.0, 0, 0, 0, 100.0, 100.0, 0, 0])).months[0]
    assert first.peak_at == "2026-10-25T01:00:00+00:00"  # the second 02:00 local, in CET
    second = site.bill(starts, 0.25, np.array([100.0, 100.0, 0, 0, 0, 0, 0, 0])).months[0]
    assert second.peak_at == "2026-10-25T00:00:00+00:00"  # the first, in CEST


def test_peak_keeps_the_two_local_01_30_half_hours_of_a_dst_fall_back_night_apart():
    site = Tariff.preset("evn-two-part-22kv").bind("Europe/Berlin")
    # 2026-10-25: 02:00–03:00 local happens twice (00:00–01:00 UTC in CEST, 01:00–02:00 UTC in CET).
    starts = pd.date_range("2026-10-25T00:00Z", periods=8, freq="15min")
    kw = np.array([100.0, 100.0, 0, 0, 0, 0, 0, 0])
    assert site.peak_demand_kw(starts, 0.25, kw) == {"2026-10": 100.0}
    bill = site.bill(starts, 0.25, kw)
    assert bill.months[0].hours == 2.0


# --- Japanese 12-month basis ------------------------------------------------------------------------------------------

def japan_day(peak_kw: float) -> tuple[pd.DatetimeIndex, np.ndarray]:
    starts = local_steps("2026-06-10 00:00", 48, 30, TOKYO)
    kw = np.full(48, 100.0)
    kw[20] = peak_kw
    return starts, kw


@pytest.mark.parametrize(("prior", "demand_kw"), [
    ({}, 300.0),
    ({"2025-08": 500.0, "2026-01": 400.0}, 500.0),
    ({"2025-06": 900.0}, 300.0),  # 12 months before June 2026: outside the window
    ({"2025-07": 900.0}, 900.0),  # 11 months before: inside
    ({"2026-07": 900.0}, 300.0),  # a later month does not count
])
def test_japanese_contract_demand_is_the_12_month_maximum(japan, prior, demand_kw):
    starts, kw = japan_day(300.0)
    m = japan.bill(starts, 0.5, kw, prior_peaks_kw=prior).month("2026-06")
    assert m.peak_kw == 300.0
    assert m.demand_kw == demand_kw
    assert m.demand_amount == demand_kw * 1738
    energy_kwh = 47 * 50 + 150  # 47 half hours at 100 kW, one at 300 kW
    assert m.energy_kwh == energy_kwh
    assert m.vat == pytest.approx(0.10 * (energy_kwh * 16.58 + demand_kw * 1738))


def test_japanese_peak_carries_into_the_next_month_of_the_series(japan):
    starts = local_steps("2026-06-30 00:00", 96, 30, TOKYO)  # 30 June and 1 July
    kw = np.where(np.arange(96) == 10, 600.0, 100.0)
    bill = japan.bill(starts, 0.5, kw)
    assert bill.month("2026-06").demand_kw == 600.0
    assert bill.month("2026-07").peak_kw == 100.0
    assert bill.month("2026-07").demand_kw == 600.0


# --- output forms and input errors ------------------------------------------------------------------------------------

def test_to_dict_is_json_ready_and_to_frame_matches(two_part):
    bill = two_part.bill(local_steps("2026-07-31 22:00", 8, 30), 0.5, np.arange(8) * 10.0)
    data = json.loads(json.dumps(bill.to_dict()))
    assert data["currency"] == "VND" and data["tariff"] == "evn-two-part-22kv"
    assert [m["month"] for m in data["months"]] == ["2026-07", "2026-08"]
    assert data["total"] == pytest.approx(bill.total)
    frame = bill.to_frame()
    assert list(frame.index) == ["2026-07", "2026-08"]
    assert frame["total"].sum() == pytest.approx(bill.total)
    assert frame.loc["2026-08", "peak_kw"] == 70.0
    # Fri 31 July 22:00 (peak, 0 kW), 22:30–24:00 (normal: 10, 20, 30 kW for half an hour each)
    assert frame.loc["2026-07", ["off_peak_kwh", "normal_kwh", "peak_kwh"]].tolist() == [0.0, 30.0, 0.0]
    assert frame.loc["2026-07", "energy_kwh"] == bill.month("2026-07").energy_kwh == 30.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"import_kw": np.array([1.0, np.nan])}, r"import_kw\[1\] = nan"),
    ({"import_kw": np.array([1.0, -2.0])}, r"import_kw\[1\] = -2.0"),
    ({"import_kw": np.array([1.0])}, "shape"),
    ({"export_kw": np.array([np.inf, 0.0])}, r"export_kw\[0\]"),
    ({"duration_h": np.array([0.25, 0.0])}, r"duration_h\[1\]"),
    ({"prior_peaks_kw": {"2026-7": 5.0}}, "YYYY-MM"),
])
def test_bad_series_raise_clear_errors(two_part, kwargs, message):
    args = {"starts": local_steps("2026-07-14 10:00", 2, 15), "duration_h": 0.25,
            "import_kw": np.array([1.0, 2.0])} | kwargs
    with pytest.raises(ValueError, match=message):
        two_part.bill(**args)


# --- property: the bill equals an independent per-step sum ------------------------------------------------------------

PRESETS = {name: Tariff.preset(name) for name in
           ("evn-two-part-22kv", "evn-manufacturing-22kv-surplus-sale", "jp-high-voltage-illustrative")}
RATE = {"evn-two-part-22kv": 235_414, "jp-high-voltage-illustrative": 1738}


@st.composite
def series(draw):
    name = draw(st.sampled_from(sorted(PRESETS)))
    tz = TOKYO if name.startswith("jp") else VN
    minutes = draw(st.sampled_from([15, 30, 60]))
    count = draw(st.integers(1, 400))
    day = draw(st.dates(date(2026, 6, 1), date(2027, 2, 28)))
    offset = draw(st.integers(0, 24 * 60 // minutes - 1)) * minutes
    start = pd.Timestamp(day, tz=tz) + pd.Timedelta(minutes=offset)
    values = st.floats(0, 1000, allow_nan=False)
    import_kw = np.array(draw(st.lists(values, min_size=count, max_size=count)))
    export_kw = np.array(draw(st.lists(values, min_size=count, max_size=count)))
    return name, tz, minutes, start, import_kw, export_kw, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(series())
def test_bill_total_equals_an_independent_sum_over_steps(case):
    name, tz, minutes, start, import_kw, export_kw, by_duration = case
    site = PRESETS[name].bind(tz)
    starts = pd.date_range(start, periods=len(import_kw), freq=f"{minutes}min").tz_convert("UTC")
    dt = minutes / 60
    bill = site.bill(starts, dt, import_kw, export_kw, by_duration=by_duration)

    # Energy: price each step at its start, or (by duration) 15-minute sub-steps at their starts
    # (all window edges are on local half hours).
    parts = minutes // 15 if by_duration else 1
    sub_starts = (starts.repeat(parts) + pd.to_timedelta(np.tile(np.arange(parts) * 15, len(starts)), unit="min"))
    prices = site.prices(sub_starts)
    expected = float(np.sum(prices.import_price_gross * np.repeat(import_kw, parts) * dt / parts)
                     - np.sum(prices.export_price * np.repeat(export_kw, parts) * dt / parts))
    if name in RATE:  # demand: 30-minute means (UTC bins = local bins at UTC+7/+9), max per local month
        kw = pd.Series(import_kw, index=starts)
        half_hours = kw.resample("30min").mean().dropna() if minutes < 60 else kw
        month_peaks = half_hours.groupby(half_hours.index.tz_convert(tz).strftime("%Y-%m")).max()
        if name.startswith("jp"):
            month_peaks = month_peaks.cummax()  # the series spans < 12 months
        for month, demand_kw in month_peaks.items():
            vat = 0.10 if name.startswith("jp") or month >= "2027-01" else 0.08
            expected += demand_kw * RATE[name] * (1 + vat)
            assert bill.month(month).demand_kw == pytest.approx(demand_kw)
    assert bill.total == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert bill.energy_kwh == pytest.approx(float(np.sum(import_kw) * dt), rel=1e-9, abs=1e-9)
    assert sum(m.hours for m in bill.months) == pytest.approx(len(starts) * dt)


def test_the_example_in_docs_tariffs_md_runs_and_prints_what_it_says(capsys):
    doc = (Path(__file__).parents[1] / "docs" / "tariffs.md").read_text(encoding="utf-8")
    code = doc.split("```python\n")[-1].split("```")[0]
    exec(compile(code, "docs/tariffs.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "['normal', 'normal', 'peak', 'peak']"
    assert out[2] == "200.0 47082800.0"
    assert out[3] == "51188355"


def test_an_empty_series_gives_an_empty_bill(two_part):
    empty = pd.DatetimeIndex([], tz="UTC")
    bill = two_part.bill(empty, 0.25, np.array([]))
    assert bill.months == () and bill.total == 0.0 and bill.to_frame().empty
    assert two_part.peak_demand_kw(empty, 0.25, np.array([])) == {}


def test_an_hourly_step_is_billed_at_its_start_or_in_the_periods_it_covers():
    site = Tariff.preset("evn-manufacturing-22kv").bind(VN)
    starts = local_steps("2026-03-10 09:00", 1, 60)  # legacy peak from 09:30
    at_start = site.bill(starts, 1.0, np.array([100.0]))
    assert {e.period: e.kwh for e in at_start.months[0].energy} == {"off_peak": 0.0, "normal": 100.0, "peak": 0.0}
    assert at_start.total == pytest.approx(100 * 1833 * 1.08)
    split = site.bill(starts, 1.0, np.array([100.0]), by_duration=True)
    lines = {e.period: (e.kwh, e.amount) for e in split.months[0].energy}
    assert lines == {"off_peak": (0.0, 0.0), "normal": (50.0, 50 * 1833.0), "peak": (50.0, 50 * 3398.0)}
    assert split.total == pytest.approx(50 * (1833 + 3398) * 1.08)
