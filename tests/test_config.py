"""The site file: the example validates, every problem is named with its field path, secrets stay in the environment."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import pytest
import yaml

from controller.cli import EXAMPLE_SITE
from controller.config import ControlSettings, at_device_pace, load_config, state_dir, validate_config
from controller.dispatch import DispatchSettings
from drivers.roles import Role
from ems.cli import main
from ems.yamlfile import ConfigError

EXAMPLE = yaml.safe_load(EXAMPLE_SITE.read_text())


def errors_of(data: dict, base: Path = EXAMPLE_SITE.parent) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data, "test.yaml", base)
    return {e.field: e.message for e in info.value.errors}


def error_with(section: str, key: str, value) -> str:
    """The message of the error on ``section.key`` when the example site file sets it to ``value``."""
    data = copy.deepcopy(EXAMPLE)
    data.setdefault(section, {})[key] = value
    errors = errors_of(data)
    assert f"{section}.{key}" in errors, errors
    return errors[f"{section}.{key}"]


def test_the_example_site_file_is_valid():
    config = load_config(EXAMPLE_SITE)
    assert config.site.name == "demo-factory"
    assert config.device(Role.BATTERY).name == "battery"
    assert config.control.dispatch.safe_pv_limit_pct == 30
    assert config.simulation is not None and config.simulation.initial_soc_pct == 50
    assert config.replan_minutes == config.planner.step_minutes == 15


def test_every_bad_field_is_named_at_once():
    data = copy.deepcopy(EXAMPLE)
    data["battery"]["capacity_kwh"] = -1
    data["battery"]["soc_min_pct"] = 120
    data["grid"]["export_cap_kw"] = "none"
    data["control"]["cycle_s"] = 0
    data["control"]["dispatch"]["soc_hysteresis_pct"] = -2
    data["control"]["fallback_mode"] = "panic"
    data["devices"][1]["endpoint"]["port"] = 70000
    data["telemetry"]["mqtt"]["port"] = 0
    data["simulation"]["initial_soc_pct"] = 200
    data["colour"] = "blue"
    errors = errors_of(data)
    for field in ("battery.capacity_kwh", "battery.soc_min_pct", "grid.export_cap_kw", "control.cycle_s",
                  "control.dispatch.soc_hysteresis_pct", "control.fallback_mode", "telemetry.mqtt.port",
                  "simulation.initial_soc_pct", "colour"):
        assert field in errors, (field, errors)
    assert any(f.startswith("devices[1].endpoint") for f in errors), errors


def test_referenced_tariff_and_profiles_are_checked_with_the_schema(tmp_path):
    data = copy.deepcopy(EXAMPLE)
    data["tariff"] = {"preset": "no-such-tariff"}
    data["devices"][0]["profile"] = "no-such-profile"
    data["devices"][2]["profile"] = "sunspec-meter"  # exists, but does not serve the battery role
    data["planner"]["step_minutes"] = 0
    errors = errors_of(data)
    assert "unknown preset" in errors["tariff.preset"]
    assert "devices[0].profile" in errors and "does not serve role battery" in errors["devices[2].profile"]
    assert "planner.step_minutes" in errors
    data = copy.deepcopy(EXAMPLE)
    data["tariff"] = {"file": "tariffs/mine.yaml"}
    assert "tariff.file" in errors_of(data, tmp_path)


def test_one_grid_meter_and_at_least_one_inverter_and_battery():
    data = copy.deepcopy(EXAMPLE)
    data["devices"].append({**data["devices"][0], "name": "meter-2", "unit_id": 2})
    data["devices"] = [d for d in data["devices"] if d["role"] != "pv_inverter"]
    errors = errors_of(data)
    assert "second grid meter" in errors["devices[2].location"]
    assert "role pv_inverter" in errors["devices"]


def test_secrets_are_named_not_stored():
    config = load_config(EXAMPLE_SITE)
    assert config.telemetry.influxdb.token_env == "EMS_INFLUX_TOKEN"
    assert "token" not in ControlSettings.model_fields


def test_state_dir_resolution(tmp_path, monkeypatch):
    config = load_config(EXAMPLE_SITE)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert state_dir(config, tmp_path / "site.yaml") == tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/ems")
    assert state_dir(config, tmp_path / "site.yaml") == Path("/var/lib/ems")
    relative = config.model_copy(update={"control": config.control.model_copy(update={"state_dir": Path("st")})})
    assert state_dir(relative, tmp_path / "site.yaml") == tmp_path / "st"


def test_a_controller_paced_to_a_fast_simulated_site():
    """600x: the devices step every 12 site s, so the cycle becomes 12 s; readings stale after, and units
    answer within, max(3 steps, 0.5 s of real time) = 300 s. Everything else, and the file's own config, is
    unchanged."""
    config = load_config(EXAMPLE_SITE)
    assert config.control.cycle_s == 1.0 and config.control.groups.response_s == 5.0
    paced = at_device_pace(config, 12.0, 600)
    assert paced.control.cycle_s == 12.0
    assert paced.control.groups.response_s == 300.0
    assert [d.max_age_s for d in paced.devices] == [300.0] * len(config.devices)
    assert paced.control.validation == config.control.validation.model_copy(update={"soc_lag_s": 300.0})
    assert paced.battery == config.battery
    assert paced.control.groups.tolerance_kw == config.control.groups.tolerance_kw
    assert config.control.cycle_s == 1.0 and [d.max_age_s for d in config.devices] == [5.0] * len(config.devices)
    # three steps when they are longer than the real-time lag (a coarse simulation step at a low speed)
    assert at_device_pace(config, 10.0, 5).control.groups.response_s == 30.0
    # 60x: a 1.2 s step, 30 s of lag
    at_60 = at_device_pace(config, 1.2, 60)
    assert (at_60.control.cycle_s, at_60.control.groups.response_s, at_60.devices[0].max_age_s) == (1.2, 30.0, 30.0)
    # slower settings are kept; at 10x with the example's 0.5 s step nothing changes
    slow = config.model_copy(update={"control": config.control.model_copy(update={"cycle_s": 20.0})})
    assert at_device_pace(slow, 12.0, 600).control.cycle_s == 20.0
    assert at_device_pace(config, 0.5, 10) is config


def test_config_check_says_when_the_forecast_file_is_not_there_yet(tmp_path, capsys):
    """The site file names a forecast CSV another system writes; until it is there the controller runs on alarm
    forecast_csv_invalid, which commissioning should know before the start (it said only "OK")."""
    data = copy.deepcopy(EXAMPLE)
    data["control"]["external_forecast_csv"] = {"path": "feeds/pv.csv", "source": "plant"}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(site)]) == 0
    err = capsys.readouterr().err
    assert f"control.external_forecast_csv.path: {tmp_path / 'feeds' / 'pv.csv'} is not there (yet)" in err
    assert "forecast_csv_invalid" in err
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "pv.csv").write_text("timestamp,pv_kw\n")
    assert main(["config", "check", str(site)]) == 0
    assert "external_forecast_csv" not in capsys.readouterr().err


def test_config_check_says_what_it_read_for_the_engineer_to_compare_with_the_plant(capsys):
    """Sizes and devices by role, a long list of one role as its first and last name: the multi-asset example."""
    multi = EXAMPLE_SITE.parent / "multi-asset-site.yaml"
    assert main(["config", "check", str(multi)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{multi}: OK — site demo-factory-multi (Asia/Ho_Chi_Minh); PV 1,100 kWp / 1,000 kW AC; "
                          "battery 1,000 kWh / 500 kW charge / 500 kW discharge; 14 devices: 2 meters (grid-meter, "
                          "pv-meter), 10 PV inverters (inv-01 … inv-10), 2 batteries (bess-1, bess-2); tariff "
                          "evn-manufacturing-22kv; state in "), out


def test_config_check_notes_a_battery_that_reports_no_state_of_health(tmp_path, capsys):
    """The example's SunSpec battery reads SoH (no note); with the SMA Sunny Island profile, which has no SOH
    register, the check says plans count the nameplate for life and what to do as the battery ages."""
    assert main(["config", "check", str(EXAMPLE_SITE)]) == 0
    assert "note:" not in capsys.readouterr().out
    data = copy.deepcopy(EXAMPLE)
    battery = next(d for d in data["devices"] if d["role"] == "battery")
    battery["profile"] = "sma-sunny-island"
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(site)]) == 0
    assert (f"note: devices.{battery['name']}: profile sma-sunny-island reads no soh_pct: plans count the battery's "
            "nameplate energy for its whole life") in capsys.readouterr().out


def test_dispatch_settings_defaults_are_conservative():
    s = DispatchSettings()
    assert s.safe_pv_limit_pct == 0 and s.soc_hysteresis_pct > 0


def test_config_check_command(tmp_path, capsys):
    assert main(["config", "check", str(EXAMPLE_SITE)]) == 0
    assert "OK" in capsys.readouterr().out
    data = copy.deepcopy(EXAMPLE)
    data["battery"]["max_charge_kw"] = -5
    data["control"]["heartbeat_s"] = "often"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "battery.max_charge_kw" in err and "control.heartbeat_s" in err
    bad.write_text("site: [unclosed\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "line" in capsys.readouterr().err


def test_a_profile_file_is_found_beside_the_site_file(tmp_path):
    from drivers.profile import PROFILE_DIR

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "my-meter.yaml").write_text((PROFILE_DIR / "sunspec-meter.yaml").read_text())
    data = copy.deepcopy(EXAMPLE)
    data["devices"][0]["profile"] = "profiles/my-meter.yaml"
    assert validate_config(data, "site.yaml", tmp_path).devices[0].profile == "profiles/my-meter.yaml"
    data["devices"][0]["profile"] = "profiles/missing.yaml"
    assert "devices[0].profile" in errors_of(data, tmp_path)


# --- files that are not what they claim (issue 11, failure 6): each one exit 2, file and line or field ------

SUNSPEC_BATTERY = (Path(__file__).resolve().parents[1] / "drivers" / "profiles" / "sunspec-battery.yaml").read_text()


def check_cli(path: Path, capsys) -> str:
    """``ems config check PATH``: must exit 2; its stderr."""
    assert main(["config", "check", str(path)]) == 2
    return capsys.readouterr().err


def site_text() -> str:
    return EXAMPLE_SITE.read_text()


@pytest.mark.parametrize(("name", "content", "says"), [
    ("utf16.yaml", lambda: site_text().encode("utf-16"), "NUL bytes"),
    ("binary.yaml", lambda: bytes(range(256)) * 4, "NUL bytes"),
    ("latin1.yaml", lambda: site_text().replace("Nam Cau Kien", "Nam Câu Kiên").encode("latin-1")
     if "Nam Cau Kien" in site_text() else ("# Hải Phòng\n" + site_text()).encode("cp1258", "replace"), "not UTF-8"),
])
def test_a_site_file_that_is_not_utf8_text_is_named_not_a_traceback(tmp_path, capsys, name, content, says):
    path = tmp_path / name
    path.write_bytes(content())
    err = check_cli(path, capsys)
    assert str(path) in err and says in err and "Traceback" not in err


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + site_text().encode())
    (tmp_path / "profiles").mkdir()
    assert load_config(path).site.name


def test_a_repeated_key_is_refused_with_both_lines(tmp_path, capsys):
    text = site_text().replace("battery:\n", "battery:\n  capacity_kwh: 5\n", 1)
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    err = check_cli(path, capsys)
    assert "duplicate key 'capacity_kwh'" in err and "first at line" in err


def test_a_date_that_does_not_exist_is_named_with_its_line_not_a_traceback(tmp_path, capsys):
    """PyYAML reads ``2026-09-31`` as a date and raises a bare ValueError: a traceback before this was mended."""
    text = site_text().replace("site:\n", "site:\n  worked_holidays: [2026-09-21, 2026-09-31]\n", 1)
    path = tmp_path / "bad-date.yaml"
    path.write_text(text)
    err = check_cli(path, capsys)
    line = text.splitlines().index("  worked_holidays: [2026-09-21, 2026-09-31]") + 1
    assert "'2026-09-31' is not a valid date or time" in err and f"line {line}," in err and "Traceback" not in err


def test_worked_holidays_are_read_from_the_site_file(tmp_path):
    text = site_text().replace("site:\n", "site:\n  worked_holidays: [2026-09-21, 2026-09-22]\n", 1)
    path = tmp_path / "worked.yaml"
    path.write_text(text)
    (tmp_path / "profiles").mkdir()
    assert load_config(path).site.worked_holidays == (date(2026, 9, 21), date(2026, 9, 22))


@pytest.mark.parametrize(("value", "says"), [("0", "battery.capacity_kwh (line {line}): must be above 0"),
                                             ("1e308", "battery.capacity_kwh (line {line}): 1e+308 is beyond"),
                                             (".inf", "not a finite number"), (".nan", "not a finite number")])
def test_a_battery_of_no_or_absurd_or_infinite_size_fails_config_check(tmp_path, capsys, value, says):
    """``capacity_kwh: 0`` passed config check and then crashed ``ems run``; 1e308 and .inf ran for ever safe."""
    data = copy.deepcopy(EXAMPLE)
    text = yaml.safe_dump(data, sort_keys=False).replace(
        f"capacity_kwh: {data['battery']['capacity_kwh']}", f"capacity_kwh: {value}", 1)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    err = check_cli(path, capsys)
    line = next(n for n, text in enumerate(text.splitlines(), start=1) if text.strip().startswith("capacity_kwh:"))
    assert "capacity_kwh" in err and says.format(line=line) in err


def profile_with(tmp_path: Path, old: str, new: str) -> Path:
    assert old in SUNSPEC_BATTERY
    (tmp_path / "bad-profile.yaml").write_text(SUNSPEC_BATTERY.replace(old, new, 1))
    data = copy.deepcopy(EXAMPLE)
    for dev in data["devices"]:
        if dev["role"] == "battery":
            dev["profile"] = str(tmp_path / "bad-profile.yaml")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("old", "new", "says"), [
    ("{model: 802, point: SoC}", "{model: 9999, point: SoC}", "9999"),
    ("{model: 802, point: SoC}", "{model: 802, point: NoSuchPoint}", "NoSuchPoint"),
    ("soc_pct: {sunspec: {model: 802, point: SoC}, type: u16, unit: \"%\", plausible: {min: 0, max: 100}}",
     "soc_pct: {sunspec: {model: 802, point: SoC}, type: u16, unit: \"%\", plausible: {min: 100, max: 0}}", "min"),
    ("type: u16, write: {min: 0, max: 1}}", "type: u16, write: {min: 1, max: 0}}", "min"),
    ("soc_pct: {sunspec: {model: 802, point: SoC}, type: u16,", "soc_pct: {sunspec: {model: 802, point: SoC}, "
     "type: u17,", "type"),
    ("soh_pct: {sunspec: {model: 802, point: SoH}, type: u16,", "soh_pct: {sunspec: {model: 802, point: SoH}, "
     "type: u16, states: {0: off, 1: on},", "got false: YAML reads yes/no/on/off/true/false without quotes"),
    ("soh_pct: {sunspec: {model: 802, point: SoH}, type: u16,", "soh_pct: {sunspec: {model: 802, point: SoH}, "
     "type: u16, bits: {16: x},", "'bits' numbers a bit of the 16-bit value: 0 … 15"),
])
def test_a_profile_naming_what_does_not_exist_or_an_inverted_range_fails_config_check(tmp_path, capsys, old, new,
                                                                                      says):
    """An unknown SunSpec model (9999) or point, an inverted plausible or write range, a wrong type: config
    check passed them all and the controller found out at run time (or never). State names YAML read as
    true/false (``off`` unquoted) say so; a bit beyond the register is refused."""
    err = check_cli(profile_with(tmp_path, old, new), capsys)
    assert "devices[" in err and "bad-profile.yaml" in err and says in err and "Traceback" not in err


def test_ems_run_with_an_unusable_state_directory_exits_2_with_one_line(tmp_path, capsys):
    """Before: a traceback from deep inside the state store, after the simulated site had started."""
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for state, says in ((afile, "is not a directory"), (afile / "sub", "is not usable")):
        assert main(["run", "--simulate", "--state-dir", str(state)]) == 2
        captured = capsys.readouterr()
        lines = [ln for ln in captured.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and says in lines[0] and str(state) in lines[0], captured.err
        assert "simulated site at" not in captured.out


def test_a_read_only_state_filesystem_is_named_as_such(tmp_path, capsys):
    """A read-only mount (root ignores file modes, so a real read-only tmpfs is mounted)."""
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        assert main(["run", "--simulate", "--state-dir", str(mnt)]) == 2
        assert "read-only filesystem" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize(("months", "says"), [
    ([53, 45, 36], "needs 12 values (Jan..Dec), got 3"),
    ([53, 45, 36, 62, -115, 131, 150, 119, 109, 111, 105, 80], "month 5: -115.0 is not a yield"),
    ([53, 45, 36, 62, 115, 131, float("nan"), 119, 109, 111, 105, 80], "month 7: nan is not a yield")])
def test_a_pv_climatology_of_the_wrong_length_or_a_negative_month_is_named(months, says):
    assert says in error_with("pv", "monthly_yield_kwh_per_kwp", months)


def test_the_real_site_example_gives_the_pv_forecast_its_climatology():
    """deploy/examples/nam-cau-kien-site.yaml carries Hai Phong's monthly yields, so its live PV forecast blends the
    last days with the month's climatology as a study of the site does (docs/data.md)."""
    from optimizer.forecast import PVForecaster
    from optimizer.solar import HAI_PHONG_MONTHLY_KWH_PER_KWP

    config = load_config(EXAMPLE_SITE.parent / "nam-cau-kien-site.yaml")
    assert config.pv.monthly_yield_kwh_per_kwp == HAI_PHONG_MONTHLY_KWH_PER_KWP
    forecaster = PVForecaster(config.site, config.pv)
    assert forecaster.climatological_clearness(3) < 0.4 < 0.8 < forecaster.climatological_clearness(7)


@pytest.mark.parametrize(("holidays", "says"), [("XX", "unknown holiday calendar 'XX'"), ("Vietnam", "e.g. VN, JP")])
def test_an_unknown_holiday_calendar_is_named(holidays, says):
    assert says in error_with("site", "holidays", holidays)


def test_the_old_holiday_setting_says_where_it_went():
    data = copy.deepcopy(EXAMPLE)
    data.setdefault("control", {})["holiday_country"] = "VN"
    errors = errors_of(data)
    assert "site.holidays" in errors["control"], errors


@pytest.mark.parametrize("holidays", ["tariff", "JP", None])
def test_a_holiday_calendar_is_accepted(holidays):
    data = copy.deepcopy(EXAMPLE)
    data["site"]["holidays"] = holidays
    assert validate_config(data, "test.yaml", EXAMPLE_SITE.parent).site.holidays == holidays


def test_config_check_says_when_an_rs485_port_is_not_there(tmp_path, capsys):
    """A serial port renamed at boot (two adapters swap ttyUSB0/1) or unplugged: the check names the device and
    the port (it said OK and the controller found the meter unreachable)."""
    data = copy.deepcopy(EXAMPLE)
    data["devices"][0]["endpoint"] = {"serial_port": str(tmp_path / "ttyUSB1"), "baudrate": 9600}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(site)]) == 0
    name = data["devices"][0]["name"]
    assert (f"warning: devices.{name}.endpoint.serial_port: {tmp_path / 'ttyUSB1'} is not there; adapter "
            "unplugged, or renamed at boot") in capsys.readouterr().err
    (tmp_path / "ttyUSB1").touch()
    assert main(["config", "check", str(site)]) == 0
    assert "serial_port" not in capsys.readouterr().err
