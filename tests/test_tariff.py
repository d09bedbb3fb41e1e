"""Tariff loading, validation and pricing: hand-checked known answers on the shipped EVN presets."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ems.yamlfile import ConfigError
from optimizer.site import TariffRef
from optimizer.tariff import PRESET_DIR, DemandCharge, ExportRule, Tariff, list_presets, load_tariff
from optimizer.tariff_schema import TariffSpec

VN = "Asia/Ho_Chi_Minh"


def utc(local: str, tz: str = VN) -> pd.DatetimeIndex:
    """One step start given in local wall time, as a UTC index."""
    return pd.DatetimeIndex([pd.Timestamp(local, tz=tz)]).tz_convert("UTC")


def price(site, local: str) -> tuple[str, float]:
    p = site.prices(utc(local, site.timezone))
    return str(p.period[0]), float(p.import_price[0])


@pytest.fixture(scope="module")
def evn22():
    return Tariff.preset("evn-manufacturing-22kv").bind(VN)


# --- shipped presets -----------------------------------------------------------------------------------------------

REQUIRED = ["evn-manufacturing-110kv", "evn-manufacturing-22kv", "evn-manufacturing-6kv", "evn-manufacturing-lv",
            "evn-manufacturing-22kv-legacy", "evn-manufacturing-22kv-qd963", "evn-two-part-22kv",
            "jp-high-voltage-illustrative"]


def test_required_presets_ship_and_name_their_file_and_sources():
    names = list_presets()
    assert set(REQUIRED) <= set(names)
    for name in names:
        tariff = Tariff.preset(name)
        assert tariff.name == name
        assert tariff.spec.sources


@pytest.mark.parametrize(("preset", "off_peak", "normal", "peak"), [
    ("evn-manufacturing-110kv", 1146, 1811, 3266),
    ("evn-manufacturing-22kv", 1190, 1833, 3398),
    ("evn-manufacturing-6kv", 1234, 1899, 3508),
    ("evn-manufacturing-lv", 1300, 1987, 3640),
    ("evn-two-part-22kv", 859, 1275, 2182),
])
def test_decision_1279_and_two_part_prices(preset, off_peak, normal, peak):
    site = Tariff.preset(preset).bind(VN)  # Tue 2026-05-12, Decision 963 windows
    assert price(site, "2026-05-12 03:00") == ("off_peak", off_peak)
    assert price(site, "2026-05-12 12:00") == ("normal", normal)
    assert price(site, "2026-05-12 19:00") == ("peak", peak)


# --- window edges ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("clock", "period"), [
    ("03:45", "off_peak"), ("04:00", "normal"),
    ("09:15", "normal"), ("09:30", "peak"), ("11:15", "peak"), ("11:30", "normal"),
    ("16:45", "normal"), ("17:00", "peak"), ("19:45", "peak"), ("20:00", "normal"),
    ("21:45", "normal"), ("22:00", "off_peak"), ("23:45", "off_peak"), ("00:00", "off_peak"),
])
def test_legacy_window_edges_on_a_tuesday(evn22, clock, period):
    assert price(evn22, f"2026-03-10 {clock}")[0] == period


@pytest.mark.parametrize(("clock", "period"), [
    ("00:00", "off_peak"), ("05:45", "off_peak"), ("06:00", "normal"), ("09:30", "normal"), ("11:30", "normal"),
    ("17:15", "normal"), ("17:30", "peak"), ("22:15", "peak"), ("22:30", "normal"), ("23:45", "normal"),
])
def test_decision_963_window_edges_on_a_tuesday(evn22, clock, period):
    assert price(evn22, f"2026-05-12 {clock}")[0] == period


def test_schedule_switches_at_local_midnight_of_2026_04_22(evn22):
    # Tue 21 Apr: legacy (morning peak, 04:00 normal, 21:00 normal); Wed 22 Apr: Decision 963.
    assert price(evn22, "2026-04-21 10:00") == ("peak", 3398)
    assert price(evn22, "2026-04-22 10:00") == ("normal", 1833)
    assert price(evn22, "2026-04-21 21:00")[0] == "normal"
    assert price(evn22, "2026-04-22 21:00")[0] == "peak"
    assert price(evn22, "2026-04-21 04:30")[0] == "normal"
    assert price(evn22, "2026-04-22 04:30")[0] == "off_peak"
    # 2026-04-21 17:00 UTC is already 22 Apr 00:00 in Viet Nam (UTC+7).
    starts = pd.DatetimeIndex(["2026-04-21T16:45Z", "2026-04-21T17:00Z", "2026-04-21T21:30Z"])
    assert list(evn22.prices(starts).period) == ["off_peak", "off_peak", "off_peak"]  # 23:45, 00:00, 04:30 local


def test_pinned_study_variants_keep_one_window_set_on_any_date():
    legacy = Tariff.preset("evn-manufacturing-22kv-legacy").bind(VN)
    qd963 = Tariff.preset("evn-manufacturing-22kv-qd963").bind(VN)
    for day in ("2025-01-14", "2026-03-10", "2027-03-09"):  # Tuesdays
        assert price(legacy, f"{day} 10:00") == ("peak", 3398)
        assert price(legacy, f"{day} 18:00") == ("peak", 3398)
        assert price(legacy, f"{day} 21:00") == ("normal", 1833)
        assert price(qd963, f"{day} 10:00") == ("normal", 1833)
        assert price(qd963, f"{day} 21:00") == ("peak", 3398)
        assert price(qd963, f"{day} 05:00") == ("off_peak", 1190)


# --- day types ------------------------------------------------------------------------------------------------------

def test_sunday_has_no_peak(evn22):
    assert date(2026, 5, 17).weekday() == 6 and date(2026, 3, 8).weekday() == 6
    assert evn22.day_type(datetime(2026, 5, 17, 11, tzinfo=UTC)) == "sunday"
    assert price(evn22, "2026-05-17 18:00")[0] == "normal"  # Decision 963 Sunday
    assert price(evn22, "2026-05-17 05:45")[0] == "off_peak"
    assert price(evn22, "2026-03-08 10:00")[0] == "normal"  # legacy Sunday
    assert price(evn22, "2026-03-08 03:00")[0] == "off_peak"
    assert price(evn22, "2026-03-08 22:00")[0] == "off_peak"


def test_evn_prices_a_weekday_holiday_like_its_weekday(evn22):
    # EVN's text sets the peak Monday–Saturday and exempts only Sundays (docs/sources.md §1.2).
    # 2 Sep 2026 (National Day) is a Wednesday: it keeps the Decision 963 evening peak.
    assert evn22.tariff.spec.holidays.pricing == "day_of_week"
    assert evn22.day_type(datetime(2026, 9, 2, 5, tzinfo=UTC)) == "mon_sat"
    assert price(evn22, "2026-09-02 18:00") == ("peak", 3398)
    assert price(evn22, "2026-09-09 18:00") == ("peak", 3398)
    # 1 Jan 2026 (New Year) is a Thursday under the legacy windows: morning peak kept.
    assert price(evn22, "2026-01-01 10:00") == ("peak", 3398)


def test_extra_holiday_from_the_site_is_priced_like_its_weekday_under_evn(evn22):
    shutdown = Tariff.preset("evn-manufacturing-22kv").bind(VN, extra_holidays=[date(2026, 2, 23)])
    assert price(shutdown, "2026-02-23 10:00")[0] == "peak"  # a Monday: EVN exempts only Sundays
    assert shutdown.day_type(datetime(2026, 2, 23, 3, tzinfo=UTC)) == "mon_sat"
    assert date(2026, 2, 23) in set(shutdown.calendar.days([2026]).astype(object))  # still a holiday of the site


def test_holiday_windows_pricing_prices_a_holiday_by_its_own_windows():
    spec = yaml.safe_load((PRESET_DIR / "evn-manufacturing-22kv.yaml").read_text(encoding="utf-8"))
    spec["holidays"]["pricing"] = "holiday_windows"
    for schedule in spec["schedules"]:
        schedule["holiday"] = schedule["sunday"]
    site = Tariff(TariffSpec.model_validate(spec), "test").bind(VN, extra_holidays=[date(2026, 2, 23)])
    assert site.day_type(datetime(2026, 9, 2, 5, tzinfo=UTC)) == "holiday"
    assert price(site, "2026-09-02 18:00") == ("normal", 1833)
    assert price(site, "2026-02-23 10:00")[0] == "normal"
    assert price(site, "2026-02-24 10:00")[0] == "peak"


def test_holiday_windows_must_match_the_holiday_pricing():
    spec = yaml.safe_load((PRESET_DIR / "evn-manufacturing-22kv.yaml").read_text(encoding="utf-8"))
    spec["schedules"][1]["holiday"] = spec["schedules"][1]["sunday"]
    with pytest.raises(ConfigError, match=r"schedules\[1\]\.holiday.*not used"):
        Tariff(TariffSpec.model_validate(spec), "test")
    spec = yaml.safe_load((PRESET_DIR / "jp-high-voltage-illustrative.yaml").read_text(encoding="utf-8"))
    spec["schedules"][0]["holiday"] = None
    with pytest.raises(ConfigError, match=r"schedules\[0\]\.holiday.*required"):
        Tariff(TariffSpec.model_validate(spec), "test")


# --- VAT, export, demand, dates -------------------------------------------------------------------------------------

def test_vat_is_8_percent_in_2026_and_10_percent_from_2027(evn22):
    p = evn22.prices(pd.DatetimeIndex([pd.Timestamp("2026-12-31 03:00", tz=VN), pd.Timestamp("2027-01-01", tz=VN)]))
    np.testing.assert_allclose(p.vat_rate, [0.08, 0.10])
    np.testing.assert_allclose(p.import_price, [1190, 1190])
    np.testing.assert_allclose(p.import_price_gross, [1285.2, 1309.0])
    assert evn22.vat_rate(datetime(2026, 12, 31, 16, 59, tzinfo=UTC)) == 0.08  # 23:59 local
    assert evn22.vat_rate(datetime(2026, 12, 31, 17, 0, tzinfo=UTC)) == 0.10  # 00:00 local


def test_export_terms_zero_by_default_and_surplus_sale_from_decree_243(evn22):
    assert evn22.export_rule(datetime(2026, 7, 1, tzinfo=UTC)) == ExportRule(0.0, 0.0)
    surplus = Tariff.preset("evn-manufacturing-22kv-surplus-sale").bind(VN)
    p = surplus.prices(pd.DatetimeIndex([pd.Timestamp("2026-06-25 12:00", tz=VN), pd.Timestamp("2026-06-26", tz=VN)]))
    np.testing.assert_allclose(p.export_price, [0.0, 1382.7])
    assert surplus.export_rule(datetime(2026, 7, 1, tzinfo=UTC)) == ExportRule(1382.7, 50.0)


def test_demand_charge_in_force():
    two_part = Tariff.preset("evn-two-part-22kv").bind(VN)
    assert two_part.demand_charge(datetime(2026, 7, 1, tzinfo=UTC)) == DemandCharge(235414, "month_max", 30)
    japan = Tariff.preset("jp-high-voltage-illustrative").bind("Asia/Tokyo")
    assert japan.demand_charge(datetime(2026, 7, 1, tzinfo=UTC)) == DemandCharge(1738, "rolling_12_month_max", 30)
    assert Tariff.preset("evn-manufacturing-22kv").bind(VN).demand_charge(datetime(2026, 7, 1, tzinfo=UTC)) is None


def test_billing_month_is_local(evn22):
    assert evn22.billing_month(datetime(2026, 5, 31, 16, 45, tzinfo=UTC)) == "2026-05"
    assert evn22.billing_month(datetime(2026, 5, 31, 17, 0, tzinfo=UTC)) == "2026-06"  # 00:00 local
    starts = pd.DatetimeIndex(["2026-05-31T16:45Z", "2026-05-31T17:00Z"])
    assert list(evn22.billing_months(starts)) == ["2026-05", "2026-06"]
    assert evn22.month_start("2026-06") == pd.Timestamp("2026-05-31T17:00Z")


def test_pricing_before_the_first_price_date_fails_clearly(evn22):
    with pytest.raises(ValueError, match=r"no energy prices before 2025-05-10"):
        evn22.prices(utc("2025-05-09 12:00"))
    assert price(evn22, "2025-05-10 00:00") == ("off_peak", 1190)


def test_naive_starts_are_rejected(evn22):
    with pytest.raises(ValueError, match="timezone-aware"):
        evn22.prices(pd.DatetimeIndex(["2026-05-12 10:00"]))


def test_holidays_of_japan_with_tokyo_time():
    japan = Tariff.preset("jp-high-voltage-illustrative").bind("Asia/Tokyo")
    assert japan.day_type(pd.Timestamp("2026-05-05 10:00", tz="Asia/Tokyo")) == "holiday"  # Children's Day
    assert japan.day_type(pd.Timestamp("2026-05-01 10:00", tz="Asia/Tokyo")) == "mon_sat"
    p = japan.prices(pd.DatetimeIndex([pd.Timestamp("2026-04-30 23:45", tz="Asia/Tokyo"),
                                       pd.Timestamp("2026-05-01 00:00", tz="Asia/Tokyo")]))
    np.testing.assert_allclose(p.import_price, [16.38, 16.58])
    np.testing.assert_allclose(p.import_price_gross, [18.018, 18.238])


# --- a test tariff: DST, loading by reference, malformed files --------------------------------------------------------

BASE = {
    "name": "test-day-night",
    "title": "test tariff",
    "currency": "EUR",
    "sources": ["hand-made for tests"],
    "holidays": {"country": "DE"},
    "periods": ["night", "day"],
    "schedules": [{
        "mon_sat": [{"start": "00:00", "end": "07:00", "period": "night"},
                    {"start": "07:00", "end": "22:00", "period": "day"},
                    {"start": "22:00", "end": "24:00", "period": "night"}],
        "sunday": [{"start": "00:00", "end": "07:00", "period": "night"},
                   {"start": "07:00", "end": "22:00", "period": "day"},
                   {"start": "22:00", "end": "24:00", "period": "night"}],
        "holiday": [{"start": "00:00", "end": "24:00", "period": "night"}],
    }],
    "energy_prices": [{"prices": {"night": 0.10, "day": 0.30}}],
    "vat": [{"rate": 0.19}],
}


def write(tmp_path: Path, data: dict, name: str = "tariff.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_dst_spring_forward_day_has_23_hours_and_windows_stay_on_the_local_clock(tmp_path):
    site = Tariff.from_file(write(tmp_path, BASE)).bind("Europe/Berlin")
    day = pd.date_range(pd.Timestamp("2026-03-29", tz="Europe/Berlin"), pd.Timestamp("2026-03-30", tz="Europe/Berlin"),
                        freq="15min", inclusive="left").tz_convert("UTC")
    assert len(day) == 92  # 23 local hours
    p = site.prices(day)
    assert (p.period == "day").sum() == 60  # 07:00–22:00 local = 15 h
    assert (p.period == "night").sum() == 32  # 00:00–07:00 (6 h, 02:00–03:00 skipped) + 22:00–24:00
    first_day_step = day[np.argmax(p.period == "day")]
    assert first_day_step == pd.Timestamp("2026-03-29T05:00Z")  # 07:00 CEST
    assert price(site, "2026-03-27 07:00") == ("day", 0.30)  # Friday, CET: 06:00 UTC
    assert site.prices(pd.DatetimeIndex(["2026-03-27T05:45Z"])).period[0] == "night"
    assert site.day_type(pd.Timestamp("2026-04-06 12:00", tz="Europe/Berlin")) == "holiday"  # Easter Monday


def test_load_tariff_by_preset_and_by_file_relative_to_the_site(tmp_path):
    assert load_tariff(TariffRef(preset="evn-manufacturing-6kv"), tmp_path).name == "evn-manufacturing-6kv"
    write(tmp_path, BASE, "mine.yaml")
    assert load_tariff(TariffRef(file=Path("mine.yaml")), tmp_path).name == "test-day-night"


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="evn-manufacturing-22kv") as info:
        Tariff.preset("evn-manufacturing-23kv")
    with pytest.raises(ConfigError, match="unknown preset"):
        Tariff.preset("../tariffs/evn-manufacturing-22kv")
    assert info.value.errors[0].field == "tariff.preset"


def test_shipped_files_are_readable_as_plain_yaml():
    for path in PRESET_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["name"] == path.stem


def broken(change) -> dict:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def _second_schedule(data):
    later = copy.deepcopy(data["schedules"][0])
    later["from"] = "2026-01-01"
    data["schedules"].append(later)
    return later


MALFORMED = {
    "overlap": (lambda d: d["schedules"][0]["mon_sat"][1].update(start="06:00"),
                "schedules[0].mon_sat[1].start", "overlaps"),
    "gap": (lambda d: d["schedules"][0]["sunday"][1].update(start="07:30"),
            "schedules[0].sunday[1].start", "07:00–07:30 are not covered"),
    "uncovered_end": (lambda d: d["schedules"][0]["holiday"][0].update(end="23:00"),
                      "schedules[0].holiday", "23:00–24:00 are not covered"),
    "end_before_start": (lambda d: d["schedules"][0]["mon_sat"][2].update(start="22:00", end="04:00"),
                         "schedules[0].mon_sat[2].end", "not after start"),
    "unknown_period_in_window": (lambda d: d["schedules"][0]["sunday"][1].update(period="peak"),
                                 "schedules[0].sunday[1].period", "unknown period 'peak'"),
    "unknown_period_in_prices": (lambda d: d["energy_prices"][0]["prices"].update(peak=0.5),
                                 "energy_prices[0].prices.peak", "unknown period"),
    "missing_price": (lambda d: d["energy_prices"][0]["prices"].pop("day"),
                      "energy_prices[0].prices", "no price for period 'day'"),
    "negative_price": (lambda d: d["energy_prices"][0]["prices"].update(day=-0.3),
                       "energy_prices[0].prices.day", "negative"),
    "negative_demand_rate": (lambda d: d.update(demand_charges=[{"rate_per_kw_month": -5, "basis": "month_max"}]),
                             "demand_charges[0].rate_per_kw_month", "greater than or equal to 0"),
    "unknown_basis": (lambda d: d.update(demand_charges=[{"rate_per_kw_month": 5, "basis": "yearly"}]),
                      "demand_charges[0].basis", "month_max"),
    "bad_date": (lambda d: _second_schedule(d).update({"from": "2026-02-30"}), "schedules[1].from", "date"),
    "unordered_dates": (lambda d: d["vat"].extend([{"from": "2027-01-01", "rate": 0.2},
                                                   {"from": "2026-01-01", "rate": 0.1}]),
                        "vat[2].from", "must be later"),
    "missing_date": (lambda d: d["energy_prices"].append({"prices": {"night": 1, "day": 2}}),
                     "energy_prices[1].from", "required"),
    "unknown_day_type": (lambda d: d["schedules"][0].update(saturday=d["schedules"][0]["sunday"]),
                         "schedules[0].saturday",
                         "unknown field; did you mean sunday?; known here: from, holiday, label, mon_sat, sunday"),
    "unknown_holiday_country": (lambda d: d.update(holidays={"country": "XX"}), "holidays", "unknown holiday"),
    "unquoted_time": (lambda d: d["schedules"][0]["mon_sat"][1].update(start=420),
                      "schedules[0].mon_sat[1].start", "quoted strings"),
    "vat_above_one": (lambda d: d["vat"][0].update(rate=8), "vat[0].rate", "less than or equal to 1"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_tariff_names_file_and_field(tmp_path, kind):
    change, field, message = MALFORMED[kind]
    path = write(tmp_path, broken(change), f"{kind}.yaml")
    with pytest.raises(ConfigError) as info:
        Tariff.from_file(path)
    assert info.value.source == str(path)
    matching = [e for e in info.value.errors if e.field == field]
    assert matching, f"no error at {field}: {info.value}"
    assert message in matching[0].message


def test_the_base_test_tariff_is_valid(tmp_path):
    assert Tariff.from_file(write(tmp_path, BASE)).periods == ("night", "day")


def test_unquoted_sexagesimal_time_in_a_real_yaml_file(tmp_path):
    text = write(tmp_path, BASE).read_text()
    assert "end: '07:00'" not in text and "end: 07:00" in text  # safe_dump leaves a leading-zero time unquoted
    text = text.replace("end: 07:00", "end: 17:30", 1)  # ...but YAML 1.1 reads 17:30 as the number 1050
    path = tmp_path / "sexagesimal.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="quoted strings"):
        Tariff.from_file(path)


# --- pricing by step duration -----------------------------------------------------------------------------------------

def test_an_hourly_step_across_the_legacy_09_30_edge_is_half_normal_half_peak(evn22):
    start = utc("2026-03-10 09:00")
    assert evn22.prices(start).import_price[0] == 1833  # at its start only
    p = evn22.prices(start, duration_h=1.0)
    assert p.period[0] == "normal"  # the period at the start
    np.testing.assert_allclose(p.period_share, [[0.0, 0.5, 0.5]])
    np.testing.assert_allclose(p.import_price_by_period, [[0.0, 1833 / 2, 3398 / 2]])
    np.testing.assert_allclose(p.import_price, [2615.5])
    np.testing.assert_allclose(p.import_price_gross, [2615.5 * 1.08])


def test_a_step_across_new_year_averages_prices_and_vat(evn22):
    # 2026-12-31 23:00–24:00 normal at 8 % VAT, 2027-01-01 00:00–01:00 (holiday) off-peak at 10 %.
    p = evn22.prices(utc("2026-12-31 23:00"), duration_h=2.0)
    np.testing.assert_allclose(p.import_price, [(1833 + 1190) / 2])
    np.testing.assert_allclose(p.import_price_gross, [(1833 * 1.08 + 1190 * 1.10) / 2])
    np.testing.assert_allclose(p.vat_rate, [0.09])


def test_quarter_hour_steps_price_the_same_with_or_without_durations(evn22):
    starts = pd.date_range("2026-04-20", "2026-04-24", freq="15min", tz=VN, inclusive="left").tz_convert("UTC")
    at_start, averaged = evn22.prices(starts), evn22.prices(starts, duration_h=0.25)
    np.testing.assert_array_equal(at_start.import_price, averaged.import_price)
    np.testing.assert_array_equal(at_start.period, averaged.period)


def test_durations_must_be_whole_minutes(evn22):
    with pytest.raises(ValueError, match="whole minutes"):
        evn22.prices(utc("2026-03-10 09:00"), duration_h=0.1234)


def test_billing_month_and_its_start_from_any_aware_instant_and_across_dst():
    """The per-cycle local-day lookups (the standard library's zone) agree with pandas' on any aware instant,
    also across a DST change; a naive time is refused; a month's start is the same object when asked again."""
    berlin = Tariff.preset("evn-manufacturing-22kv").bind("Europe/Berlin")
    instants = pd.date_range("2026-03-28", "2026-04-02", freq="7min", tz="UTC").append(
        pd.date_range("2026-10-24", "2026-11-02", freq="7min", tz="UTC"))
    for ts in instants:
        expected = ts.tz_convert("Europe/Berlin").strftime("%Y-%m")
        assert berlin.billing_month(ts) == expected and berlin.billing_month(ts.to_pydatetime()) == expected
    assert berlin.billing_month(datetime(2026, 3, 31, 22, 0, tzinfo=UTC)) == "2026-04"   # 00:00 CEST
    assert berlin.billing_month(datetime(2026, 10, 31, 22, 59, tzinfo=UTC)) == "2026-10"  # 23:59 CET
    with pytest.raises(ValueError, match="timezone-aware"):
        berlin.billing_month(datetime(2026, 5, 1, 12, 0))
    start = berlin.month_start("2026-11")
    assert start == pd.Timestamp("2026-10-31 23:00", tz="UTC") and berlin.month_start("2026-11") is start
