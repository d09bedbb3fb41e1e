"""One rule for when a factory's day shift runs (optimizer.shift): the synthetic year, the simulated site and
`ems plan` agree, a night shift included (before, the simulated site and `ems plan` ran a 22:00–06:00 shift as
no shift at all: night_kw all day)."""

from __future__ import annotations

from datetime import UTC, datetime, time

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from drivers.simulated.plant import ShiftLoad
from optimizer.cli import shift_load
from optimizer.shift import on_shift
from simulations.synthetic import LoadShape, synthetic_load_kw

ZONE = "Asia/Ho_Chi_Minh"


def test_known_answers():
    minutes = np.array([0, 359, 360, 1319, 1320, 1439])  # 00:00, 05:59, 06:00, 21:59, 22:00, 23:59
    assert on_shift(minutes, time(7), time(19)).tolist() == [False, False, False, False, False, False]
    assert on_shift(minutes, time(22), time(6)).tolist() == [True, True, False, False, True, True]
    assert on_shift(minutes, time(6), time(22)).tolist() == [False, False, True, True, False, False]
    assert not on_shift(minutes, time(8), time(8)).any()


@given(st.times(), st.times(), st.times())
def test_a_night_shift_is_the_day_shift_turned_around(start, end, at):
    """Swapping start and end gives exactly the other minutes (when they differ)."""
    m = at.hour * 60 + at.minute + at.second / 60 + at.microsecond / 6e7
    if start != end:
        assert bool(on_shift(m, start, end)) != bool(on_shift(m, end, start))


def test_the_simulated_site_ems_plan_and_the_synthetic_year_agree_on_a_night_shift():
    starts = pd.date_range("2026-05-04T00:00+07:00", periods=96, freq="15min").tz_convert("UTC")  # a Monday
    shape = {"day_kw": 900.0, "night_kw": 200.0, "day_start": "22:00", "day_end": "06:00", "sunday_factor": 1.0}
    plan = shift_load(shape, starts, ZONE)
    site = ShiftLoad(ZONE, 900.0, 200.0, time(22), time(6))
    simulated = np.array([site(t.to_pydatetime()) for t in starts])
    year = synthetic_load_kw(ZONE, starts, 15, LoadShape(day_kw=900, night_kw=200, day_start=time(22),
                                                         day_end=time(6), noise_pct=0, holiday_country=None,
                                                         tet_shutdown_days=0), np.random.default_rng(0))
    expected = np.where((np.arange(96) < 24) | (np.arange(96) >= 88), 900.0, 200.0)  # 00:00–06:00, 22:00–24:00
    np.testing.assert_array_equal(plan, expected)
    np.testing.assert_array_equal(simulated, expected)
    np.testing.assert_allclose(year, expected)
    assert site(datetime(2026, 5, 4, 14, 59, 59, tzinfo=UTC)) == 200.0  # 21:59:59 local: not yet
    assert site(datetime(2026, 5, 4, 15, 0, tzinfo=UTC)) == 900.0  # 22:00 local
