"""External forecasts kept across a restart (controller/forecast_record.py): the real controller on fake devices
takes back the forecast in use and scores its accuracy window again to the same figures; a stored value that is not
a valid forecast is dropped and named; old values are deleted; the stored form reads back as it was accepted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from controller.forecast_record import KEY_PREFIX, ForecastRecord
from controller.state_store import StateStore
from optimizer.external_forecast import ExternalForecasts, parse_forecast
from tests.test_external_accuracy import MEASURED_END as END
from tests.test_external_accuracy import T0, flat_forecast, two_banded_load_forecasts_measured
from tests.test_external_forecast import controller_on_fake_site


def plant_pv(issued: datetime, steps: int = 24) -> dict:
    """A banded PV forecast of the plant's own, valid 6 h from ``issued``."""
    return {"source": "plant", "issued_at": issued.isoformat(), "valid_hours": 6, "start": issued.isoformat(),
            "step_minutes": 15, "unit": "W", "pv_kw": [150_000.0 + 1000 * i for i in range(steps)],
            "pv_kw_p10": [100_000.0] * steps, "pv_kw_p90": [300_000.0] * steps}


async def state_after_cycles(controller, site, cycles: int = 3) -> dict:
    site.settle(400.0, 0.0)
    for _ in range(cycles):  # one forecast is scored per cycle; the alarm it raises is listed in the next state
        await controller.cycle()
    return json.loads(json.dumps(controller.bus.latest("state").payload))


async def test_a_restart_takes_back_the_forecast_in_use_and_scores_the_window_again(tmp_path) -> None:
    """Two banded day-ahead load forecasts (the live scoring test's) and a plant PV forecast still in use: after a
    restart the PV forecast is in use again with its band and the same values, and once the new controller has
    scored the load forecasts again on the restored history its figures, band factors and alarm are the first's."""
    first, site, clock, _ = controller_on_fake_site(tmp_path, "nam-cau-kien", "evn-legacy-22kv", T0)
    try:
        two_banded_load_forecasts_measured(first, clock)
        assert first.external_forecasts.submit(plant_pv(END - timedelta(minutes=30)), now=END).accepted
        before = await state_after_cycles(first, site)
        first.persist(clock.now())
        assert len(first.store.keys(KEY_PREFIX)) == 3
        grid_pv = first.external_forecasts.current("pv_kw", END).values["pv_kw"]
    finally:
        first.store.close()

    second, site, clock, _ = controller_on_fake_site(tmp_path, "nam-cau-kien", "evn-legacy-22kv", END)
    try:
        assert second.external_forecasts.status(END) == before["forecast_sources"]
        assert before["forecast_sources"]["pv_kw"]["source"] == "plant" and before["forecast_sources"]["pv_kw"]["band"]
        assert second.external_forecasts.current("pv_kw", END).values["pv_kw"].tolist() == grid_pv.tolist()
        assert grid_pv[0] == 150.0  # sent in W, kept in kW
        assert second.external_forecasts.current("load_kw", END) is None  # expired: the built-in model is in use
        after = await state_after_cycles(second, site)
        assert after["forecast_accuracy"]["external"] == before["forecast_accuracy"]["external"]
        [weather] = after["forecast_accuracy"]["external"]["load"]
        assert weather["issues"] == 2 and weather["band_scale_p10"] == 2.0  # the live test's known answers
        assert "external_load_band_miscalibrated" in after["alarms"] and "state_value_invalid" not in after["alarms"]
        assert second.external_forecasts.band_scale("load_kw", "weather") == pytest.approx((2.0, 2.0 / 3.0))
    finally:
        second.store.close()


async def test_a_stored_value_that_is_not_a_valid_forecast_is_dropped_and_named(tmp_path) -> None:
    """Three stored values: a valid forecast, one with a negative load and one that is not a forecast at all. The
    controller starts, uses the valid one, deletes the other two and names each in ``state_value_invalid``."""
    now = T0 + timedelta(hours=1)
    store = StateStore(tmp_path / "state.sqlite", now)
    good = flat_forecast(T0, 400.0)
    bad_load = {**flat_forecast(T0 + timedelta(minutes=15), 400.0), "load_kw": [400.0, -5.0]}
    key = [f"{KEY_PREFIX}{pd.Timestamp(T0).value + i:020d}/{name}/load_kw"
           for i, name in enumerate(("weather", "weather", "x"))]
    store.put(key[0], {"received_at": T0.isoformat(), "forecast": good}, now)
    store.put(key[1], {"received_at": (T0 + timedelta(minutes=15)).isoformat(), "forecast": bad_load}, now)
    store.put(key[2], [1, 2, 3], now)
    store.close()

    controller, site, _, _ = controller_on_fake_site(tmp_path, "nam-cau-kien", "evn-legacy-22kv", now)
    try:
        assert controller.external_forecasts.status(now)["load_kw"]["source"] == "weather"
        message = controller.alarms["state_value_invalid"]
        assert f"{key[1]}: load_kw[1]: -5.0 kW is negative" in message
        assert f"{key[2]}: not {{received_at, forecast}}" in message
        assert controller.store.keys(KEY_PREFIX) == key[:1]
        state = await state_after_cycles(controller, site, 1)
        assert "state_value_invalid" in state["alarms"]
    finally:
        controller.store.close()


def test_values_past_keeping_are_deleted_and_at_most_max_kept_stay(tmp_path) -> None:
    """``keep_days`` 1: a forecast issued 25 h before the latest is deleted when that one is added; with ``max_kept``
    2 the oldest received goes when a third is added. A forecast sent again, or another issued in the same 15-minute
    planning step, overwrites the value of its step."""
    store = StateStore(tmp_path / "state.sqlite", T0)
    record = ForecastRecord(store, keep_days=1.0, step_minutes=15, max_kept=2)
    old = parse_forecast(flat_forecast(T0, 400.0), T0)
    record.add(old, T0)
    record.add(old, T0 + timedelta(minutes=1))  # sent again
    assert len(store.keys(KEY_PREFIX)) == 1
    minute = T0 + timedelta(minutes=1)
    for value in (401.0, 402.0):  # issued 00:01 and 00:02: both in the step from 00:15 on
        record.add(parse_forecast({**flat_forecast(T0, value), "issued_at": minute.isoformat()}, minute), minute)
        minute += timedelta(minutes=1)
    [_, later] = store.keys(KEY_PREFIX)
    assert later.startswith(f"{KEY_PREFIX}{pd.Timestamp(T0 + timedelta(minutes=15)).value:020d}/weather")
    assert store.get(later)["forecast"]["load_kw"][0] == 402.0
    at = T0 + timedelta(hours=25)
    newer = [parse_forecast(flat_forecast(at + timedelta(hours=h), 400.0), at + timedelta(hours=h)) for h in (0, 1, 2)]
    record.add(newer[0], at)
    assert store.keys(KEY_PREFIX) == [f"{KEY_PREFIX}{pd.Timestamp(at).value:020d}/weather/load_kw"]
    record.add(newer[1], at + timedelta(hours=1))
    record.add(newer[2], at + timedelta(hours=2))
    assert store.keys(KEY_PREFIX) == [f"{KEY_PREFIX}{pd.Timestamp(at + timedelta(hours=h)).value:020d}/weather/load_kw"
                                      for h in (1, 2)]
    store.close()


def test_the_stored_form_reads_back_as_the_forecast_was_accepted() -> None:
    """``to_payload`` → ``restore``: values in kW (sent in W), the band, validity and times unchanged; a forecast
    restored after it expired is returned (for its scores) but not in use; the newest received is in use."""
    sent = parse_forecast(plant_pv(T0), T0, pv_limit_kw=900.0)
    again = ExternalForecasts(pv_limit_kw=900.0)
    later = parse_forecast(plant_pv(T0 + timedelta(hours=1), steps=4), T0 + timedelta(hours=1), pv_limit_kw=900.0)
    taken, refused = again.restore([sent.to_payload(), later.to_payload(), {"source": "x"}])
    assert refused == {2: "issued_at: an ISO 8601 timestamp with a UTC offset is required, got None"}
    assert [f.issued_at for f in taken] == [sent.issued_at, later.issued_at]
    back = taken[0]
    assert (back.source, back.issued_at, back.expires_at, back.start, back.step_minutes) == (
        sent.source, sent.issued_at, sent.expires_at, sent.start, sent.step_minutes)
    assert set(back.values) == {"pv_kw", "pv_kw_p10", "pv_kw_p90"}
    for name, values in sent.values.items():
        np.testing.assert_array_equal(back.values[name], values)
    assert back.values["pv_kw"][1] == 151.0
    assert again.current("pv_kw", T0 + timedelta(hours=2)) is taken[1]
    assert again.current("pv_kw", T0 + timedelta(hours=7)) is None  # both expired
    assert json.loads(json.dumps(sent.to_payload())) == sent.to_payload()


def test_keys_see_pending_writes_and_match_the_prefix_literally(tmp_path) -> None:
    store = StateStore(tmp_path / "state.sqlite", datetime(2026, 6, 1, tzinfo=UTC))
    now = datetime(2026, 6, 1, tzinfo=UTC)
    for key in ("external_forecast/1", "external_forecast/2", "external_forecastX", "plan"):
        store.put(key, {}, now)
    store.delete("external_forecast/2")
    assert store.keys("external_forecast/") == ["external_forecast/1"]
    assert store.keys("external_forecast_") == []  # "_" is no wildcard
    store.close()
