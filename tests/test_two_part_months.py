"""benchmarks/bench_two_part_months.py: where in the day the MPC's month peaks rose above perfect foresight's, and what
the battery did after, on hand-made series."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.bench_modules import benchmark

TZ = "Asia/Ho_Chi_Minh"
bench = benchmark("bench_two_part_months")


def local_windows(start: str, values: list[float]) -> pd.Series:
    return pd.Series(values, index=pd.date_range(pd.Timestamp(start, tz=TZ), periods=len(values), freq="30min"))


@pytest.mark.parametrize(("hour", "name"), [(22, "night"), (3, "night"), (6, "night"), (7, "07-09"), (8, "07-09"),
                                             (9, "09-14"), (13, "09-14"), (14, "14-22"), (21, "14-22")])
def test_hour_classes(hour, name):
    assert bench.hour_class(hour) == name


def test_the_excess_is_split_by_the_hour_of_each_rise():
    # 4 May from 06:30 local: 690 (night, under the level 700), 720 at 07:00 (+20), 715, 750 at 08:30 (+30),
    # 740, … 780 at 12:00 (+30), 700 at 12:30; the month's level with perfect foresight 700 kW.
    values = [690.0, 720.0, 715.0, 705.0, 750.0] + [740.0] * 6 + [780.0, 700.0]
    out = bench.excess_by_hour(local_windows("2026-05-04 06:30", values), 700.0)
    assert out == {"night": 0.0, "07-09": 50.0, "09-14": 30.0, "14-22": 0.0}
    assert sum(out.values()) == max(values) - 700.0


def test_a_rise_day_says_how_low_the_battery_went_and_what_it_sold_under_the_peak():
    # 4 May: the month's peak rises from 700 to 730 kW at 12:00 local (a rise at 09–22 h above the level 700);
    # afterwards the battery discharges 100 kW in each quarter hour to 20:00, the import at 730 (holding the peak)
    # until 18:00 and at 650 (80 kW under it: selling, not holding) from 18:00 to 20:00.
    width = pd.Timedelta(minutes=30)
    windows = local_windows("2026-05-04 00:00", [700.0] * 24 + [730.0] + [730.0] * 11 + [650.0] * 4 + [300.0] * 8)
    steps = pd.date_range(pd.Timestamp("2026-05-04 00:00", tz=TZ), periods=96, freq="15min")
    battery = [100.0 if 50 <= i < 80 else 0.0 for i in range(96)]  # 12:30–20:00 local
    soc = [900.0 - 25.0 * max(0, min(i, 79) - 49) for i in range(96)]  # at each step's end: 150 kWh by 20:00
    frame = pd.DataFrame({"battery_kw": battery, "soc_kwh": soc, "duration_h": 0.25}, index=steps.tz_convert("UTC"))
    days = bench.rise_days(frame, windows, width, 700.0, 100.0, TZ)
    assert days == [{"day": "2026-05-04", "kw_added": 30.0, "lowest_soc_above_floor_kwh": 50.0,
                     "discharged_kwh": 750.0, "discharged_under_peak_kwh": 200.0}]
    # a rise at 07:00 (the factory starting) is not a rise day of this kind
    morning = local_windows("2026-05-04 00:00", [700.0] * 14 + [730.0] * 34)
    assert bench.rise_days(frame, morning, width, 700.0, 100.0, TZ) == []
