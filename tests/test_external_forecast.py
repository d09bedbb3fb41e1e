"""External forecasts (optimizer/external_forecast.py): validation with the field named, expiry, fallback to the
built-in model, the CSV form; and the accuracy-by-lead figures (optimizer/forecast_accuracy.py) on known answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from optimizer.external_forecast import (
    ExternalForecasts,
    ForecastInputError,
    WithExternal,
    csv_payload,
    parse_forecast,
)
from optimizer.forecast_accuracy import LiveAccuracy, accuracy
from optimizer.timegrid import regular_grid

NOW = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


def payload(**changes) -> dict:
    base = {"source": "weather-service", "issued_at": "2026-06-01T07:00:00+07:00", "valid_hours": 6,
            "start": "2026-06-01T07:00:00+07:00", "step_minutes": 15, "unit": "kW",
            "pv_kw": [10.0, 20.0, 30.0, 40.0], "load_kw": [400.0, 410.0, 420.0, 430.0]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_a_valid_forecast_is_accepted_and_used_then_expires():
    store = ExternalForecasts(pv_limit_kw=900)
    result = store.submit(payload(), now=NOW)
    assert result.accepted and result.steps == 4 and result.quantities == ("pv_kw", "load_kw")
    assert result.expires_at == NOW + timedelta(hours=6)
    grid = regular_grid(pd.Timestamp(NOW) + pd.Timedelta(minutes=15), 6, 15)  # steps 1..3 covered, 2 beyond
    builtin = np.full(6, 5.0)
    pv, origin = store.blend("pv_kw", grid, builtin, NOW + timedelta(hours=1))
    assert np.array_equal(pv, [20.0, 30.0, 40.0, 5.0, 5.0, 5.0]) and origin == "weather-service+builtin"
    pv, origin = store.blend("pv_kw", grid, builtin, NOW + timedelta(hours=6))  # expired: the built-in model
    assert pv is builtin and origin == "builtin"
    assert store.current("load_kw", NOW + timedelta(hours=5, minutes=59)) is not None


def test_watts_are_converted_and_a_newer_forecast_replaces_the_older():
    store = ExternalForecasts()
    store.submit(payload(unit="W", pv_kw=[1000.0, 2000.0, 3000.0, 4000.0], load_kw=None), now=NOW)
    newer = payload(source="plant", issued_at="2026-06-01T07:30:00+07:00", load_kw=None)
    grid = regular_grid(pd.Timestamp(NOW), 4, 15)
    assert np.array_equal(store.blend("pv_kw", grid, np.zeros(4), NOW)[0], [1.0, 2.0, 3.0, 4.0])
    assert store.submit(newer, now=NOW + timedelta(minutes=30)).accepted
    pv, origin = store.blend("pv_kw", grid, np.zeros(4), NOW + timedelta(minutes=30))
    assert np.array_equal(pv, [10.0, 20.0, 30.0, 40.0]) and origin == "plant"
    assert store.blend("load_kw", grid, np.zeros(4), NOW)[1] == "builtin"  # no load forecast was sent


@pytest.mark.parametrize(("changes", "message"), [
    ({"issued_at": "2026-06-01T07:00:00"}, "issued_at: .* no UTC offset"),
    ({"issued_at": "2026-06-01T09:00:00+07:00"}, "issued_at: .* in the future"),
    ({"issued_at": 1}, "issued_at: an ISO 8601"),
    ({"start": "2026-06-01T07:05:00+07:00"}, "start: .* not on the 15-minute lattice"),
    ({"start": "2026-05-30T07:00:00+07:00"}, "start: .* more than a day before"),
    ({"unit": "MW"}, "unit: 'kW' or 'W'"),
    ({"pv_kw": [1.0, float("nan"), 2.0, 3.0]}, r"pv_kw\[1\]: not a finite number"),
    ({"pv_kw": [1.0, 2.0, -3.0, 4.0]}, r"pv_kw\[2\]: -3.0 kW is negative"),
    ({"pv_kw": [1.0, 2.0, 3.0, 950.0]}, r"pv_kw\[3\]: 950 kW is above the PV AC limit 900 kW"),
    ({"pv_kw": [1.0, "x", 3.0, 4.0]}, r"pv_kw\[1\]: a number is required"),
    ({"pv_kw": [1.0] * (7 * 96 + 1), "load_kw": None}, "exceed the 168 h horizon"),
    ({"load_kw": [1.0, 2.0]}, "different lengths"),
    ({"pv_kw": None, "load_kw": None}, "no forecast values"),
    ({"valid_hours": 0}, r"valid_hours: a number in \(0, 48\]"),
    ({"valid_hours": 100}, r"valid_hours: a number in \(0, 48\]"),
    ({"step_minutes": 7}, "step_minutes: one of"),
    ({"pv": [1.0]}, r"^pv: unknown field; did you mean pv_kw\?; known here: issued_at, load_kw, "),
    ({"pv_kw_p10": [1.0] * 4}, "pv_kw_p90: pv_kw_p10 was given, a band needs both"),
    ({"load_kw_p90": [500.0] * 4}, "load_kw_p10: load_kw_p90 was given, a band needs both"),
    ({"pv_kw": None, "pv_kw_p10": [1.0] * 4, "pv_kw_p90": [50.0] * 4}, "pv_kw_p10: a band needs pv_kw itself"),
    ({"pv_kw_p10": [1.0] * 3, "pv_kw_p90": [50.0] * 4}, "pv_kw_p10: 3 values, pv_kw has 4"),
    ({"pv_kw_p10": [5.0, 25.0, 5.0, 5.0], "pv_kw_p90": [50.0] * 4},
     r"pv_kw_p10\[1\]: 25 kW lies on the wrong side of pv_kw 20 kW"),
    ({"load_kw_p10": [300.0] * 4, "load_kw_p90": [500.0, 500.0, 415.0, 500.0]},
     r"load_kw_p90\[2\]: 415 kW lies on the wrong side of load_kw 420 kW"),
    ({"pv_kw_p10": [5.0] * 4, "pv_kw_p90": [50.0, 50.0, 950.0, 50.0]},
     r"pv_kw_p90\[2\]: 950 kW is above the PV AC limit 900 kW"),
    ({"pv_kw_p10": [5.0, -1.0, 5.0, 5.0], "pv_kw_p90": [50.0] * 4}, r"pv_kw_p10\[1\]: -1.0 kW is negative"),
])
def test_bad_forecasts_are_refused_naming_the_field(changes, message):
    with pytest.raises(ForecastInputError, match=message):
        parse_forecast(payload(**changes), NOW, pv_limit_kw=900)
    store = ExternalForecasts(pv_limit_kw=900)
    result = store.submit(payload(**changes), now=NOW)  # the service keeps running: a result, not an exception
    assert not result.accepted and result.error and store.current("pv_kw", NOW) is None


def test_a_band_gives_the_quantiles_where_the_forecast_covers_the_grid():
    """P10/P90 come back exactly and the forecast is the median; other levels follow the split normal (level 0.05 is
    1.6449 / 1.2816 = 1.2835 band-halves out: 100 − 1.2835 × 20 = 74.33 kW, 100 + 1.2835 × 30 = 138.5 kW); steps the
    forecast does not cover keep the built-in quantiles; the band's quantity is all a submission reports."""
    store = ExternalForecasts(pv_limit_kw=900)
    result = store.submit(payload(pv_kw=[100.0, 0.0, 880.0, 40.0], pv_kw_p10=[80.0, 0.0, 700.0, 40.0],
                                  pv_kw_p90=[130.0, 0.0, 900.0, 40.0], load_kw=None), now=NOW)
    assert result.accepted and result.quantities == ("pv_kw",) and result.steps == 4
    grid = regular_grid(pd.Timestamp(NOW), 6, 15)
    builtin = np.array([[1.0] * 6, [2.0] * 6, [3.0] * 6])
    q = store.quantiles("pv_kw", grid, (0.1, 0.5, 0.9), lambda: builtin, NOW)
    assert q.tolist() == [[80.0, 0.0, 700.0, 40.0, 1.0, 1.0], [100.0, 0.0, 880.0, 40.0, 2.0, 2.0],
                          [130.0, 0.0, 900.0, 40.0, 3.0, 3.0]]
    tails = store.quantiles("pv_kw", regular_grid(pd.Timestamp(NOW), 4, 15), (0.05, 0.95), lambda: None, NOW)
    assert tails[:, 0] == pytest.approx([74.33, 138.50], abs=0.01)
    assert tails[1, 2] == 900.0  # the PV AC limit caps the upper tail
    top = builtin[2:]
    assert store.quantiles("load_kw", grid, (0.9,), lambda: top, NOW) is top  # no external load forecast
    assert store.quantiles("pv_kw", grid, (0.5,), lambda: None, NOW) is None  # uncovered steps, no built-in
    plain = ExternalForecasts()
    assert plain.submit(payload(), now=NOW).accepted and not plain.banded(NOW) and store.banded(NOW)
    assert plain.quantiles("pv_kw", grid, (0.1,), lambda: builtin[:1], NOW) is None  # no band: none


def test_csv_form(tmp_path):
    text = ("timestamp,pv_kw,load_kw\n2026-06-01T07:00:00+07:00,0,400\n2026-06-01T07:15:00+07:00,25.5,410\n"
            "2026-06-01T07:30:00+07:00,50,420\n")
    data = csv_payload(text, source="pvgis", issued_at="2026-06-01T06:00:00+07:00")
    forecast = parse_forecast(data, NOW)
    assert forecast.step_minutes == 15 and np.array_equal(forecast.values["pv_kw"], [0.0, 25.5, 50.0])
    path = tmp_path / "forecast.csv"
    path.write_text(text.replace("25.5", "abc"), encoding="utf-8")
    result = ExternalForecasts().load_csv(path, source="pvgis", issued_at="2026-06-01T06:00:00+07:00", now=NOW)
    assert not result.accepted and "CSV line 3" in result.error
    banded = parse_forecast(csv_payload(
        "timestamp,pv_kw,pv_kw_p10,pv_kw_p90\n2026-06-01T07:00:00+07:00,20,10,30\n", source="solcast",
        issued_at="2026-06-01T06:00:00+07:00"), NOW)
    assert banded.has_band("pv_kw") and banded.values["pv_kw_p90"].tolist() == [30.0]
    uneven = text.replace("07:30:00", "07:45:00")
    with pytest.raises(ForecastInputError, match="evenly spaced"):
        csv_payload(uneven, source="x", issued_at="2026-06-01T06:00:00+07:00")


def test_csv_form_as_a_spreadsheet_saves_it():
    """';' between cells and decimal commas, as Excel saves CSV under Vietnamese settings: the same forecast."""
    text = ("timestamp,pv_kw,load_kw\n2026-06-01T07:00:00+07:00,0,1400\n2026-06-01T07:15:00+07:00,25.5,1410.25\n")
    sheet = ("\ufefftimestamp;pv_kw;load_kw\n2026-06-01T07:00:00+07:00;0;1.400\n"
             "2026-06-01T07:15:00+07:00;25,5;1.410,25\n")
    issued = "2026-06-01T06:00:00+07:00"
    assert csv_payload(sheet, source="x", issued_at=issued) == csv_payload(text, source="x", issued_at=issued)
    with pytest.raises(ForecastInputError, match=r"CSV line 3: pv_kw: 'n/a' is not a number"):
        csv_payload(sheet.replace("25,5", "n/a"), source="x", issued_at=issued)


def test_accuracy_known_answers():
    # a daily cycle repeated exactly: persistence is perfect; a forecast 10 kW too high has MAE = RMSE = 10 kW
    # and skill −inf-like (persistence error 0 → skill None); one with the day's pattern but a measured series
    # that alternates ±4 kW day by day: persistence errs 8 kW, a forecast of the mean pattern 4 kW → skill 0.5
    starts = pd.date_range("2026-03-01", periods=20 * 96, freq="15min", tz="UTC")
    ns = starts.as_unit("ns").asi8
    pattern = np.tile(100 + 50 * np.sin(np.arange(96) / 96 * 2 * np.pi), 20)
    day = np.arange(len(ns)) // 96
    measured = pattern + np.where(day % 2 == 0, 4.0, -4.0)

    def mean_pattern(grid, _):
        return 100 + 50 * np.sin(((grid.starts_ns // 900_000_000_000) % 96) / 96 * 2 * np.pi)

    out = accuracy(mean_pattern, None, ns, measured, int(ns[-1]), days=10)
    assert out["issues"] == 40
    for bucket in out["by_lead"]:
        assert bucket["mae_kw"] == pytest.approx(4.0) and bucket["rmse_kw"] == pytest.approx(4.0)
        assert bucket["persistence_mae_kw"] == pytest.approx(8.0) and bucket["skill"] == pytest.approx(0.5)
    high = accuracy(lambda g, h: mean_pattern(g, h) + 10.0, None, ns, pattern, int(ns[-1]), days=10)
    assert high["by_lead"][0]["mae_kw"] == pytest.approx(10.0) and high["by_lead"][0]["skill"] is None
    night = accuracy(mean_pattern, None, ns, measured, int(ns[-1]), days=10, mask=lambda g: np.zeros(len(g), bool))
    assert night["issues"] == 0 and all(b["n"] == 0 and b["mae_kw"] is None for b in night["by_lead"])


def test_live_accuracy_fills_one_issue_per_update_and_matches_the_batch_figures():
    starts = pd.date_range("2026-03-01", periods=20 * 96, freq="15min", tz="UTC")
    ns = starts.as_unit("ns").asi8
    day = np.arange(len(ns)) // 96
    measured = np.tile(100 + 50 * np.sin(np.arange(96) / 96 * 2 * np.pi), 20) + np.where(day % 2 == 0, 4.0, -4.0)

    def flat(grid, _):
        return np.full(len(grid), 100.0)

    live = LiveAccuracy(flat, flat, days=5)
    now = int(ns[-1])
    assert live.due(now)
    updates = 0
    while live.due(now):
        out = live.update(now, (ns, measured), (ns, measured))
        updates += 1
    assert updates == 20 and out["pv"]["issues"] == 20 and not live.due(now)  # 5 days × 4 issues, one per call
    batch = accuracy(flat, None, ns, measured, now, days=5)
    assert out["load"]["by_lead"] == batch["by_lead"]
    assert live.due(now + 6 * 3_600_000_000_000)  # a new issue's horizon has ended


def controller_on_fake_site(tmp_path, scenario_name: str, preset: str, now: datetime, forecasts=None,
                            control: dict | None = None, bind_preset: bool = False):
    """The real controller of a shipped scenario's site on fake devices with a manual clock at ``now``, and the state
    message's JSON Schema: ``(controller, site, clock, schema)``. The site file names tariff ``preset``; the
    controller runs on the scenario's tariff, or on ``preset`` with ``bind_preset``. ``control``: the site file's
    ``control`` section."""
    import json
    from pathlib import Path

    from controller.config import SiteConfig
    from controller.service import Controller
    from ems.clock import ManualClock
    from optimizer.tariff import load_tariff
    from simulations.scenario import load_scenario
    from tests.fakes import FakeSite
    from tests.test_one_path import SITE_DEVICES

    root = Path(__file__).resolve().parents[1]
    sc = load_scenario(root / "simulations" / "scenarios" / f"{scenario_name}.yaml")
    config = SiteConfig.model_validate({
        "site": sc.site.model_dump(), "pv": sc.pv.model_dump(), "battery": sc.battery.spec().model_dump(),
        "grid": sc.grid.model_dump(), "tariff": {"preset": preset}, "planner": sc.planner.model_dump(),
        "devices": SITE_DEVICES, **({"control": control} if control else {})})
    clock = ManualClock(now)
    site = FakeSite(clock, pv_rated_kw=config.pv.ac_limit_kw)
    tariff = load_tariff(config.tariff if bind_preset else sc.tariff.ref(), sc.base_dir).bind(sc.site.timezone)
    controller = Controller(config, site.devices, clock, tariff, tmp_path / "state.sqlite", forecasts=forecasts)
    schema = json.loads((root / "controller" / "telemetry" / "schemas" / "state.json").read_text(encoding="utf-8"))
    return controller, site, clock, schema


class ConstantSource:
    """A built-in forecast source of constant PV and load (what the planner's source returns). [kW]"""

    def forecast(self, grid):
        return np.full(len(grid), 7.0), np.full(len(grid), 300.0)


def test_the_planners_source_takes_external_forecasts_until_they_expire():
    clock = {"now": NOW}
    store = ExternalForecasts(pv_limit_kw=900)
    source = WithExternal(ConstantSource(), store, lambda: clock["now"])
    grid = regular_grid(pd.Timestamp(NOW), 6, 15)
    assert source.forecast(grid)[0].tolist() == [7.0] * 6 and source.origin["pv_kw"] == "builtin"
    assert store.submit(payload(load_kw=None), now=NOW).accepted
    pv, load = source.forecast(grid)
    assert pv.tolist() == [10.0, 20.0, 30.0, 40.0, 7.0, 7.0] and load.tolist() == [300.0] * 6
    assert source.origin == {"pv_kw": "weather-service+builtin", "load_kw": "builtin"}
    clock["now"] = NOW + timedelta(hours=6)
    assert source.forecast(grid)[0].tolist() == [7.0] * 6 and source.origin["pv_kw"] == "builtin"


class RiskSource(ConstantSource):
    """A built-in source whose PV P10 is 20 kW below its forecast and whose load P90 is 40 kW above it. [kW]"""

    def peak_risk_quantiles(self, grid):
        return np.full(len(grid), 7.0 - 20.0), np.full(len(grid), 340.0)

    def peak_risk(self, grid, pv_kw, load_kw):
        return np.full(len(grid), -1.0)  # marks "the built-in risk was used"

    def pv_quantiles(self, grid, levels):
        return np.tile(np.asarray(levels, dtype=float)[:, None], (1, len(grid)))


def test_the_planners_source_takes_risk_and_quantiles_from_the_band():
    """With a banded PV forecast: the risk on covered steps is √(30² + 40²) = 50 kW (PV P10 30 kW under the
    external 40 kW, load P90 40 kW over the built-in load), on the rest the built-in quantiles' √(20² + 40²) around
    the plan's PV; the PV quantiles come from the band where it covers. A forecast without a band: the built-in risk,
    and no quantiles (the surplus-day rule stands aside)."""
    clock = {"now": NOW}
    store = ExternalForecasts(pv_limit_kw=900)
    source = WithExternal(RiskSource(), store, lambda: clock["now"])
    grid = regular_grid(pd.Timestamp(NOW), 6, 15)
    assert store.submit(payload(pv_kw=[40.0] * 4, pv_kw_p10=[10.0] * 4, pv_kw_p90=[60.0] * 4, load_kw=None),
                        now=NOW).accepted
    pv, load = source.forecast(grid)
    risk = source.peak_risk(grid, pv, load)
    assert risk.tolist() == pytest.approx([50.0] * 4 + [np.hypot(20.0, 40.0)] * 2)
    q = source.pv_quantiles(grid, (0.1, 0.9))
    assert q.tolist() == [[10.0] * 4 + [0.1] * 2, [60.0] * 4 + [0.9] * 2]
    assert store.submit(payload(issued_at="2026-06-01T07:05:00+07:00", pv_kw=[40.0] * 4, load_kw=None),
                        now=NOW + timedelta(minutes=5)).accepted
    clock["now"] = NOW + timedelta(minutes=5)
    pv, load = source.forecast(grid)
    assert source.peak_risk(grid, pv, load).tolist() == [-1.0] * 6 and source.pv_quantiles(grid, (0.5,)) is None


def test_known_forecasts_under_a_banded_external_one_carry_risk_only_from_the_band():
    """Known (perfect) built-in forecasts have no spread: with a banded external PV forecast laid over them the risk
    is the band's 30 kW (PV P10 10 kW under the external 40 kW) on the steps it covers and 0 elsewhere."""
    from controller.planning import PerfectForecasts

    store = ExternalForecasts(pv_limit_kw=900)
    source = WithExternal(PerfectForecasts(lambda t: 25.0, lambda t: 300.0, samples_per_step=1), store, lambda: NOW)
    grid = regular_grid(pd.Timestamp(NOW), 6, 15)
    assert store.submit(payload(pv_kw=[40.0] * 4, pv_kw_p10=[10.0] * 4, pv_kw_p90=[60.0] * 4, load_kw=None),
                        now=NOW).accepted
    pv, load = source.forecast(grid)
    assert pv.tolist() == [40.0] * 4 + [25.0] * 2
    assert source.peak_risk(grid, pv, load).tolist() == pytest.approx([30.0] * 4 + [0.0] * 2)


def test_an_expired_forecast_is_refused_and_a_retained_copy_only_replaces_an_older_one():
    store = ExternalForecasts()
    late = store.submit(payload(valid_hours=1), now=NOW + timedelta(hours=1))   # issued 07:00, now 08:00 (+07:00)
    assert not late.accepted and "valid_hours: the forecast issued at" in late.error and "expired at" in late.error
    assert store.submit(payload(), now=NOW, only_newer=True).accepted            # nothing in use: taken
    again = store.submit(payload(), now=NOW + timedelta(minutes=5), only_newer=True)
    assert not again.accepted and "not newer than the pv_kw forecast in use" in again.error
    newer = payload(issued_at="2026-06-01T07:10:00+07:00", pv_kw=[1.0] * 4, load_kw=None)
    assert store.submit(newer, now=NOW + timedelta(minutes=10), only_newer=True).accepted
    assert store.current("pv_kw", NOW + timedelta(minutes=10)).values["pv_kw"].tolist() == [1.0] * 4
    assert store.current("load_kw", NOW + timedelta(minutes=10)).values["load_kw"].tolist()[0] == 400.0


async def test_the_state_says_which_forecast_the_planner_uses(tmp_path) -> None:
    """The controller's state message names the forecast in use per quantity: the built-in model, then an accepted
    external PV forecast (its source, band and expiry) until it expires; the message stays valid against its schema."""
    import json

    import jsonschema

    controller, site, clock, schema = controller_on_fake_site(tmp_path, "nam-cau-kien-two-part", "evn-two-part-22kv",
                                                              NOW, forecasts=ConstantSource())
    try:
        site.settle(400.0, 100.0)
        await controller.cycle()
        state = controller.bus.latest("state").payload
        assert state["forecast_sources"] == {"pv_kw": {"source": "builtin"}, "load_kw": {"source": "builtin"}}
        body = payload(load_kw=None, pv_kw_p10=[5.0] * 4, pv_kw_p90=[50.0] * 4)
        assert controller.external_forecasts.submit(body, now=NOW).accepted
        await controller.cycle()
        state = json.loads(json.dumps(controller.bus.latest("state").payload))
        jsonschema.validate(state, schema)
        assert state["forecast_sources"] == {
            "pv_kw": {"source": "weather-service", "band": True, "issued_at": "2026-06-01T00:00:00+00:00",
                      "expires_at": "2026-06-01T06:00:00+00:00"},
            "load_kw": {"source": "builtin"}}
        clock.advance(6 * 3600.0)
        site.settle(400.0, 100.0)
        await controller.cycle()
        assert controller.bus.latest("state").payload["forecast_sources"]["pv_kw"] == {"source": "builtin"}
    finally:
        controller.store.close()
