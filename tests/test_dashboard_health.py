"""Device health from a state message and the device-health alarm codes (worked out by hand)."""

from controller.dashboard.health import device_health
from controller.groups import out_of_group


def test_device_health_from_devices_alarms_and_measurements() -> None:
    state = {
        "devices": {"grid-meter": {"ok": True, "error": None},
                    "battery": {"ok": False, "error": "no answer within 2 s"}, "pv": {"ok": True, "error": None}},
        "measurements": {"grid_kw": {"value": None, "quality": "stale"},          # named by an alarm below
                         "frequency_hz": {"value": None, "quality": "implausible", "detail": "70 Hz"},
                         "pv_kw": {"value": 10.0, "quality": "ok"}},
    }
    alarms = ["point_stale:grid-meter:grid_kw", "point_missing:grid-meter:energy_kwh", "planner_failed",
              "point_implausible:inverter-2:pv_kw", "device_unreachable:battery", "point_stale:battery:soc_pct"]
    health = device_health(state, alarms)
    assert health["grid-meter"] == {"status": "missing", "points": ["grid_kw", "energy_kwh"], "error": None}
    assert health["battery"] == {"status": "unreachable", "points": ["soc_pct"], "error": "no answer within 2 s"}
    assert health["pv"]["status"] == "ok"
    assert health["inverter-2"] == {"status": "implausible", "points": ["pv_kw"], "error": None}   # only in alarms
    assert health["frequency_hz"] == {"status": "implausible", "points": ["frequency_hz"], "error": "70 Hz"}
    assert "grid_kw" not in health and "planner_failed" not in health


def test_the_limits_of_a_unit_out_of_its_group_of_one_are_listed_with_the_unit() -> None:
    """The only battery reads SOC 250 %: its limits read missing because it is out of its group, with no alarm of
    their own (the cause has one); they are the battery's points, not rows of their own named max_charge_kw."""
    why = out_of_group("battery", "battery", "soc_pct implausible (250 % outside [0.0, 100.0])")
    state = {"devices": {"grid-meter": {"ok": True}, "battery": {"ok": True}},
             "measurements": {"soc_pct": {"value": None, "quality": "implausible", "detail": "250 % outside"},
                              "max_charge_kw": {"value": None, "quality": "missing", "detail": why},
                              "max_discharge_kw": {"value": None, "quality": "missing", "detail": why}}}
    health = device_health(state, ["point_implausible:battery:soc_pct", "data_missing"])
    assert set(health) == {"grid-meter", "battery"}
    assert health["battery"] == {"status": "implausible", "points": ["soc_pct", "max_charge_kw", "max_discharge_kw"],
                                 "error": None}


def test_every_language_has_every_alarm_sentence_and_hint() -> None:
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "controller" / "dashboard" / "static" / "i18n"
    dicts = {lang: json.loads((folder / f"{lang}.json").read_text()) for lang in ("en", "vi", "ja")}
    assert set(dicts["vi"]) == set(dicts["en"]) == set(dicts["ja"])
    for prefix in ("device_unreachable", "point_missing", "point_stale", "point_implausible", "data_missing",
                   "import_cap_unheld", "write_failed", "planner_failed", "state_store_corrupt", "state_value_invalid",
                   "state_store_unwritable", "audit_log_unwritable", "audit_entries_lost", "unit_out",
                   "unit_not_following", "unit_warning", "forecast_csv_invalid", "external_pv_forecast_worse",
                   "external_load_forecast_worse", "external_pv_band_miscalibrated", "external_load_band_miscalibrated",
                   "demand_peak_rising", "clock_stepped", "unknown"):
        for d in dicts.values():
            assert d[f"alarm.{prefix}"] and d[f"hint.{prefix}"], prefix
