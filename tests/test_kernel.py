"""The shared kernel: YAML errors that name file and field, clocks, site models and the time grid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ems.clock import AcceleratedClock, ManualClock
from ems.yamlfile import ConfigError, load_model, read_yaml
from optimizer.site import PlanningSite, PlanningSiteView
from optimizer.timegrid import TimeGrid, floor_to_step, regular_grid

GOOD_SITE = """
site: {name: demo, timezone: Asia/Ho_Chi_Minh, location: {latitude: 20.86, longitude: 106.68}}
pv: {kwp: 100}
battery: {capacity_kwh: 200, max_charge_kw: 100, max_discharge_kw: 100}
tariff: {preset: evn-manufacturing-22kv}
"""


def test_good_site_loads_with_defaults(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(GOOD_SITE)
    site = load_model(PlanningSite, path)
    assert site.battery.soc_min_kwh == pytest.approx(20.0)
    assert site.battery.soc_max_kwh == pytest.approx(190.0)
    assert site.grid.export_cap_kw == 0.0
    assert site.planner.horizon_steps == 96


def test_every_bad_field_is_named_with_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_SITE.replace("kwp: 100", "kwp: -5").replace("Asia/Ho_Chi_Minh", "Mars/Olympus")
                    .replace("capacity_kwh: 200", "capacity_kwh: 200, soc_min_pct: 90, soc_max_pct: 20, colour: red"))
    with pytest.raises(ConfigError) as err:
        load_model(PlanningSite, path)
    fields = {e.field for e in err.value.errors}
    assert "pv.kwp" in fields
    assert "site.timezone" in fields
    assert "battery.colour" in fields
    assert str(path) in str(err.value)


def test_unknown_sections_are_ignored_only_by_the_planning_view(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(GOOD_SITE + "devices: []\n")
    assert load_model(PlanningSiteView, path).pv.kwp == 100
    with pytest.raises(ConfigError) as err:
        load_model(PlanningSite, path)
    assert [e.field for e in err.value.errors] == ["devices"]


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("site:\n  name: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert err.value.errors[0].field.startswith("line ")


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        read_yaml(tmp_path / "absent.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_model(PlanningSite, empty)


def test_tariff_needs_exactly_one_source(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(GOOD_SITE.replace("{preset: evn-manufacturing-22kv}", "{}"))
    with pytest.raises(ConfigError, match="exactly one"):
        load_model(PlanningSite, path)


def test_regular_grid_is_utc_with_durations():
    start = datetime(2026, 3, 29, 0, 0, tzinfo=pd.Timestamp("2026-03-29", tz="Europe/Berlin").tzinfo)
    grid = regular_grid(start, steps=96, step_minutes=15)
    assert str(grid.starts.tz) == "UTC"
    assert len(grid) == 96
    assert np.allclose(grid.duration_h, 0.25)
    # the local day of the DST switch has 23 hours: 96 UTC quarter hours reach 01:00 local the next day
    assert grid.end.tz_convert("Europe/Berlin").hour == 1


def test_time_grid_rejects_naive_and_mismatched():
    with pytest.raises(ValueError, match="UTC"):
        TimeGrid(pd.date_range("2026-01-01", periods=2, freq="15min"), np.array([0.25, 0.25]))
    with pytest.raises(ValueError, match="length"):
        TimeGrid(pd.date_range("2026-01-01", periods=2, freq="15min", tz="UTC"), np.array([0.25]))


def test_time_grid_window_is_the_grid_of_the_sliced_starts():
    """A window (no re-validation, no pandas index until asked) equals a grid built from the sliced starts, keeps
    the uniform step, pickles, and cannot be changed."""
    import pickle

    whole = regular_grid(datetime(2026, 3, 28, 22, 0, tzinfo=UTC), steps=200, step_minutes=15)
    irregular = TimeGrid(whole.starts[[0, 1, 3, 4]], np.array([0.25, 0.5, 0.25, 0.25]))
    for grid, first, count in ((whole, 37, 96), (whole, 150, 96), (irregular, 2, 2)):
        window = grid.window(first, count)
        built = TimeGrid(grid.starts[first:first + count], grid.duration_h[first:first + count])
        assert len(window) == len(built) == min(count, len(grid) - first)
        np.testing.assert_array_equal(window.starts_ns, built.starts_ns)
        np.testing.assert_array_equal(window.duration_h, built.duration_h)
        assert window.starts.equals(built.starts) and str(window.starts.tz) == "UTC"
        assert window.end == built.end
        assert window.uniform_step_ns == (15 * 60 * 10**9 if grid is whole else None)
        again = pickle.loads(pickle.dumps(window))
        np.testing.assert_array_equal(again.starts_ns, window.starts_ns)
        assert again.uniform_step_ns == window.uniform_step_ns
    with pytest.raises(AttributeError, match="immutable"):
        whole.duration_h = np.ones(200)


def test_floor_to_step():
    moment = datetime(2026, 5, 4, 10, 37, 12, tzinfo=UTC)
    assert floor_to_step(moment, 15) == datetime(2026, 5, 4, 10, 30, tzinfo=UTC)
    assert floor_to_step(datetime(2026, 5, 4, 10, 30, tzinfo=UTC), 15) == datetime(2026, 5, 4, 10, 30, tzinfo=UTC)


async def test_manual_clock_moves_only_when_told():
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    await clock.sleep(90)
    assert clock.now() == datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC)
    assert clock.monotonic() == 90


async def test_accelerated_clock_runs_faster_than_wall_time():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = AcceleratedClock(speed=1000, start=start)
    await clock.sleep(50)  # 50 site seconds = 50 ms of wall time
    elapsed = clock.now() - start
    assert elapsed >= timedelta(seconds=50)
    with pytest.raises(ValueError):
        AcceleratedClock(speed=0)
