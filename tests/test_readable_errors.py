"""Validation errors at the path the user wrote, in words a plant engineer reads: a site file, a scenario, a command.

pydantic names the union branch it tried in an error's location and reports every branch that failed; these tests
hold each mistake to one error at the field the file has, and the planning step to the tariff it must carry.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import yaml

from controller.cli import EXAMPLE_SITE
from controller.commands import parse_command
from controller.config import load_config, validate_config
from ems.yamlfile import ConfigError, FieldError
from optimizer.tariff import Tariff
from simulations.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"
SHIPPED_TARIFFS = Path(__file__).resolve().parents[1] / "optimizer" / "tariffs"
MULTI = yaml.safe_load((EXAMPLE_SITE.parent / "multi-asset-site.yaml").read_text())


def errors_of(change) -> dict[str, str]:
    """The errors of the multi-asset example after ``change(data)``, by field path."""
    data = copy.deepcopy(MULTI)
    change(data)
    with pytest.raises(ConfigError) as info:
        validate_config(data, "site.yaml", EXAMPLE_SITE.parent)
    return {e.field: e.message for e in info.value.errors}


def test_a_wrong_tcp_port_is_one_error_at_the_port():
    errors = errors_of(lambda d: d["devices"][0]["endpoint"].update(port=150300))
    assert errors == {"devices[0].endpoint.port": "Input should be less than or equal to 65535, got 150300"}


def test_a_wrong_serial_setting_is_one_error_of_the_rtu_form():
    errors = errors_of(lambda d: d["devices"][0].update(endpoint={"serial_port": "/dev/ttyUSB0", "baudrate": -5}))
    assert errors == {"devices[0].endpoint.baudrate": "Input should be greater than 0, got -5"}


def test_an_empty_endpoint_names_what_either_form_needs():
    errors = errors_of(lambda d: d["devices"][0].update(endpoint={}))
    assert errors == {"devices[0].endpoint.host": "Field required", "devices[0].endpoint.serial_port": "Field required"}


def test_a_misspelt_key_names_the_key_it_was_meant_to_be():
    errors = errors_of(lambda d: d["devices"][0].update(endpoint={"hots": "127.0.0.1", "port": 15030}))
    assert errors == {"devices[0].endpoint.host": "Field required",
                      "devices[0].endpoint.hots": "unknown field; did you mean host?; known here: host, port"}
    errors = errors_of(lambda d: d["pv"].update(tilt=12))
    assert errors["pv.tilt"].startswith("unknown field; did you mean tilt_deg?; known here: ac_kw, azimuth_deg"), errors
    errors = errors_of(lambda d: d["control"]["dispatch"].update(soc_hysteresis=2))
    assert errors["control.dispatch.soc_hysteresis"].startswith("unknown field; did you mean soc_hysteresis_pct?")


def test_a_union_tag_stays_out_of_the_path():
    errors = errors_of(lambda d: d["simulation"]["load"].update(day_end="25:00"))
    assert list(errors) == ["simulation.load.day_end"], errors   # not simulation.load.shift.day_end
    errors = errors_of(lambda d: d["simulation"]["weather"].update(model="clear_skyy"))
    assert errors == {"simulation.weather.model": "'clear_skyy' is not one of 'clear_sky', 'series'"}


def test_a_rule_of_a_section_reads_without_pydantic_prefix():
    errors = errors_of(lambda d: d["battery"].update(soc_min_pct=96))
    assert errors == {"battery": "soc_min_pct (96.0) must be below soc_max_pct (95.0)"}


def test_an_unknown_tariff_preset_is_said_once():
    message = errors_of(lambda d: d["tariff"].update(preset="evn-22"))["tariff.preset"]
    assert message.startswith("unknown preset 'evn-22'; shipped: evn-manufacturing-110kv, "), message
    assert message.count("preset") == 1


@pytest.mark.parametrize("step", [7, 9, 25, 45])
def test_a_step_that_does_not_divide_an_hour_is_refused(step):
    errors = errors_of(lambda d: d["planner"].update(step_minutes=step, block_minutes=0))
    assert errors == {"planner.step_minutes": f"{step} does not divide an hour; steps start on the clock: choose 1, "
                                              "2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60"}


def test_a_step_the_tariff_windows_would_cut_is_refused():
    """The shipped 22 kV tariff starts windows at 09:30, 11:30, 17:30 and 22:30 (legacy and Decision 963
    schedules): 20- and 60-minute steps straddle them; 30 and 15 do not."""
    errors = errors_of(lambda d: d["planner"].update(step_minutes=20, block_minutes=60))
    assert errors == {"planner.step_minutes": "20-minute steps straddle this tariff's window edges at 09:30, 11:30, "
                                              "17:30, 22:30 (local); choose a step that divides the windows"}
    for step in (15, 30):
        data = copy.deepcopy(MULTI)
        data["planner"].update(step_minutes=step, block_minutes=30)
        assert validate_config(data, "site.yaml", EXAMPLE_SITE.parent).planner.step_minutes == step


def test_a_step_longer_than_the_demand_window_is_refused():
    two_part = Tariff.preset("evn-two-part-22kv")
    assert two_part.step_problems(15) == []
    assert any("30-minute demand window" in why for why in two_part.step_problems(60))
    whole_hours = Tariff.preset("jp-high-voltage-illustrative")
    assert [m % 60 for m in whole_hours.edges_min] == [0] * len(whole_hours.edges_min)
    assert whole_hours.step_problems(60) == [
        "60-minute steps do not make up this tariff's 30-minute demand window; choose a step that divides it"]


def test_a_study_on_hourly_data_keeps_its_hourly_step(tmp_path: Path):
    """Studies price and bill each step at its start, like NREL SAM (docs/simulation.md): hourly measured data under
    half-hour windows is billed consistently, so a scenario is not refused what a live site file is."""
    for name in ("nam-cau-kien.yaml", "nam-cau-kien-legacy.yaml"):
        (tmp_path / name).write_text((SCENARIOS / name).read_text())
    scenario = tmp_path / "hourly.yaml"
    scenario.write_text("extends: nam-cau-kien-legacy.yaml\nname: hourly\nplanner: {step_minutes: 60}\n")
    assert load_scenario(scenario).planner.step_minutes == 60
    assert Tariff.preset("evn-manufacturing-22kv-legacy").step_problems(60)   # which a site file is refused


@pytest.mark.parametrize(("command", "said"), [
    ({"command": "set_mode", "mode": "autoo"}, "mode: Input should be 'auto', 'self_consumption', 'tou_rule' or "
                                               "'standby', got 'autoo'"),
    ({"command": "setmode"}, "command: 'setmode' is not one of 'set_mode', 'manual_setpoint', 'soc_reserve', "
                             "'replan'"),
    ({"mode": "auto"}, "command: Field required"),
    ({"command": "soc_reserve", "pct": 5}, "soc_pct: Field required; pct: unknown field; did you mean soc_pct?; "
                                           "known here: command, soc_pct, ttl_s"),
])
def test_a_bad_command_is_named_at_its_own_fields(command, said):
    with pytest.raises(ValueError) as info:
        parse_command(command)
    assert str(info.value) == said


def said(load, path: Path) -> list[str]:
    """Each error ``load(path)`` refuses the file with, as printed."""
    with pytest.raises(ConfigError) as info:
        load(path)
    return [str(e) for e in info.value.errors]


def line_of(path: Path, text: str, after: int = 0) -> int:
    """The 1-based number of the first line of ``path`` after line ``after`` that holds ``text``."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, start=1) if n > after and text in line)


def test_a_site_file_error_names_the_line_the_field_is_on(tmp_path: Path):
    """A plant engineer goes to the line, not counts indentation: each error at a field says the line it is written
    on; a missing field, the line its section starts on; the value given where pydantic's message does not say it."""
    base = EXAMPLE_SITE.read_text()
    assert "  max_charge_kw: 500\n" in base and "  capacity_kwh: 1000\n" in base
    path = tmp_path / "site.yaml"
    path.write_text(base.replace("  max_charge_kw: 500\n", "  max_charge_kw: 500kW\n", 1)
                        .replace("  capacity_kwh: 1000\n", "", 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = {e.field: str(e) for e in info.value.errors}
    assert found["battery.max_charge_kw"] == (
        f"battery.max_charge_kw (line {line_of(path, 'max_charge_kw: 500kW')}): Input should be a valid number, "
        "unable to parse string as a number, got '500kW'")
    assert found["battery.capacity_kwh"] == (
        f"battery.capacity_kwh (section at line {line_of(path, 'battery:')}): Field required")
    assert f"  battery.max_charge_kw (line {line_of(path, 'max_charge_kw: 500kW')}):" in str(info.value)


def test_a_list_item_and_a_rule_of_a_section_are_found_at_their_lines(tmp_path: Path):
    data = copy.deepcopy(MULTI)
    data["devices"][1]["endpoint"]["port"] = 150300
    data["battery"]["soc_min_pct"] = 96
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = {e.field: e.line for e in info.value.errors}
    second_device = line_of(path, f"name: {data['devices'][1]['name']}")
    assert lines["devices[1].endpoint.port"] == f"line {line_of(path, 'port: 150300', after=second_device)}"
    assert lines["battery"] == f"line {line_of(path, 'battery:')}"


def test_an_error_in_a_file_the_site_names_has_both_lines(tmp_path: Path):
    """A tariff file's own error is said at its own line, after the site file's line of ``tariff.file``."""
    tariff = tmp_path / "my-tariff.yaml"
    tariff.write_text((SHIPPED_TARIFFS / "evn-manufacturing-22kv-qd963.yaml").read_text()
                      .replace("peak: 3398}", "peak: 3398x}", 1))
    data = copy.deepcopy(MULTI)
    data["tariff"] = {"file": str(tariff)}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert said(load_config, path) == [
        f"tariff.file (line {line_of(path, 'file: ')}): {tariff}: energy_prices[0].prices.peak "
        f"(line {line_of(tariff, 'peak: 3398x')}): Input should be a valid number, unable to parse string as a "
        "number, got '3398x'"]


def test_a_scenario_error_is_found_in_the_file_that_extends(tmp_path: Path):
    (tmp_path / "nam-cau-kien.yaml").write_text((SCENARIOS / "nam-cau-kien.yaml").read_text())
    scenario = tmp_path / "mine.yaml"
    scenario.write_text("extends: nam-cau-kien.yaml\nname: mine\n\nbattery:\n  capacity_kwh: -5\n")
    assert said(load_scenario, scenario) == [
        "battery.capacity_kwh (line 5): Input should be greater than or equal to 0, got -5"]


def test_errors_of_what_is_not_a_file_and_syntax_errors_keep_their_own_place(tmp_path: Path):
    errors = errors_of(lambda d: d["battery"].update(max_charge_kw="fast"))   # source "site.yaml": no such file
    assert errors == {"battery.max_charge_kw": "Input should be a valid number, unable to parse string as a number, "
                                               "got 'fast'"}
    path = tmp_path / "site.yaml"
    path.write_text("site:\n\tname: x\n")
    assert said(load_config, path) == [
        "line 2, column 1: found character '\\t' that cannot start any token"]


def test_a_config_error_keeps_its_lines_through_a_worker_process(tmp_path: Path):
    """Sweeps and parks raise a study's ConfigError in a worker: it arrives pickled, lines and all, even when the
    file has changed since."""
    path = tmp_path / "site.yaml"
    path.write_text("site:\n  name: [x]\n")
    error = ConfigError(str(path), [FieldError("site.name", "Input should be a valid string")])
    path.write_text("\n\n\n")
    again = pickle.loads(pickle.dumps(error))
    assert [str(e) for e in again.errors] == ["site.name (line 2): Input should be a valid string"]
