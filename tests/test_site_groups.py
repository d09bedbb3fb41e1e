"""Asset groups in the site file: several inverters, batteries and meters per site, every error with its field path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from controller.cli import EXAMPLE_SITE
from controller.config import validate_config
from drivers.roles import Role
from ems.yamlfile import ConfigError

EXAMPLE = yaml.safe_load(EXAMPLE_SITE.read_text())
GATEWAY = {"host": "127.0.0.1", "port": 15021}


def multi_site() -> dict:
    """The example site with a PV sub-meter, three inverters behind one gateway and two battery containers."""
    data = copy.deepcopy(EXAMPLE)
    meter, _, battery = data["devices"]
    data["battery"] = {"wear_cost_per_kwh": 150}
    data["devices"] = [
        meter,
        {**meter, "name": "pv-meter", "location": "pv", "unit_id": 2},
        *({"name": f"inv-{i}", "role": "pv_inverter", "profile": "sunspec-inverter", "endpoint": GATEWAY,
           "unit_id": i, "rating_kw": 300} for i in (1, 2, 3)),
        {**battery, "name": "bess-1", "battery": {"capacity_kwh": 600, "max_charge_kw": 300, "max_discharge_kw": 300,
                                                  "soc_min_pct": 10, "soc_max_pct": 90}},
        {**battery, "name": "bess-2", "unit_id": 2,
         "battery": {"capacity_kwh": 400, "max_charge_kw": 200, "max_discharge_kw": 250, "charge_efficiency": 0.9,
                     "soc_min_pct": 20, "soc_max_pct": 95}},
    ]
    return data


def errors_of(data: dict, base: Path = EXAMPLE_SITE.parent) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as info:
        validate_config(data, "test.yaml", base)
    out: dict[str, list[str]] = {}
    for e in info.value.errors:
        out.setdefault(e.field, []).append(e.message)
    return out


def test_a_multi_asset_site_derives_the_aggregate_battery():
    config = validate_config(multi_site(), "test.yaml", EXAMPLE_SITE.parent)
    bat = config.battery
    assert (bat.capacity_kwh, bat.max_charge_kw, bat.max_discharge_kw) == (1000, 500, 550)
    # capacity-weighted: (600·10 + 400·20) / 1000, (600·90 + 400·95) / 1000, (600·0.95 + 400·0.9) / 1000
    assert bat.soc_min_pct == pytest.approx(14.0) and bat.soc_max_pct == pytest.approx(92.0)
    assert bat.charge_efficiency == pytest.approx(0.93) and bat.discharge_efficiency == pytest.approx(0.95)
    assert bat.wear_cost_per_kwh == 150
    # the usable energy is the units' sum: 600·0.8 + 400·0.75 = 780 kWh
    assert bat.soc_max_kwh - bat.soc_min_kwh == pytest.approx(780.0)
    assert [d.name for d in config.devices_of(Role.PV_INVERTER)] == ["inv-1", "inv-2", "inv-3"]
    assert config.grid_meter.name == "grid-meter" and config.device(Role.METER).name == "grid-meter"
    assert [d.rating_kw for d in config.devices_of(Role.PV_INVERTER)] == [300, 300, 300]
    assert config.role_name(Role.BATTERY) == "battery-group" and config.role_name(Role.METER) == "grid-meter"


def test_single_device_sites_are_unchanged():
    config = validate_config(copy.deepcopy(EXAMPLE), "test.yaml", EXAMPLE_SITE.parent)
    (inverter,), (battery,) = config.devices_of(Role.PV_INVERTER), config.devices_of(Role.BATTERY)
    assert inverter.rating_kw is None and battery.battery is None and config.grid_meter.location is None
    assert config.role_name(Role.BATTERY) == "battery"  # a role's only device names its aggregate


def test_a_given_total_must_agree_with_the_units():
    data = multi_site()
    data["battery"].update(capacity_kwh=1000, max_charge_kw=600, soc_min_pct=10)
    errors = errors_of(data)
    assert "battery.capacity_kwh" not in errors
    assert "600, but the battery units give 500" in errors["battery.max_charge_kw"][0]
    assert "units give 14" in errors["battery.soc_min_pct"][0]
    data = multi_site()
    data["pv"]["ac_kw"] = 1000
    assert "rating_kw sum to 900 kW" in errors_of(data)["pv.ac_kw"][0]


def test_every_group_error_is_named_with_its_field_path():
    data = multi_site()
    devices = data["devices"]
    devices[3]["name"] = "inv-1"                      # repeated name
    devices[4]["unit_id"] = 1                          # inv-3 on the gateway's unit id 1, like inv-1
    del devices[3]["rating_kw"]                        # several inverters: rating required
    devices[1]["location"] = "grid"                    # a second grid meter
    del devices[6]["battery"]                          # several batteries: spec required
    data["control"]["cycle_s"] = 0                     # and a schema error elsewhere, reported at the same time
    errors = errors_of(data)
    assert "already the name of devices[2]" in errors["devices[3].name"][0]
    assert "like devices[2] (inv-1)" in errors["devices[4].unit_id"][0]
    assert "second grid meter" in errors["devices[1].location"][0]
    assert "required when the site has more than one PV inverter" in errors["devices[3].rating_kw"][0]
    assert "required when the site has more than one battery" in errors["devices[6].battery"][0]
    assert "control.cycle_s" in errors
    data = multi_site()
    data["devices"][5]["rating_kw"] = 100              # a battery has no rating
    data["devices"][0]["battery"] = data["devices"][5]["battery"]
    errors = errors_of(data)
    assert "rating_kw is only for devices with role pv_inverter" in errors["devices[5]"][0]
    assert "battery is only for devices with role battery" in errors["devices[0]"][0]


def test_no_grid_meter_is_an_error():
    data = multi_site()
    data["devices"][0]["location"] = "feeder"
    data["devices"][1]["location"] = "load"
    assert "no meter at the connection point" in errors_of(data)["devices"][0]


def test_a_profile_lacking_the_points_of_its_role_is_refused_at_config_time(tmp_path: Path):
    battery = yaml.safe_load((Path("drivers/profiles/sunspec-battery.yaml")).read_text())
    del battery["points"]["soc_pct"]
    battery["points"]["battery_setpoint_kw"].pop("write")
    battery["remote_control"]["enter"] = [s for s in battery["remote_control"]["enter"]
                                          if s["point"] != "battery_setpoint_kw"]
    battery["remote_control"]["leave"] = [s for s in battery["remote_control"]["leave"]
                                          if s["point"] != "battery_setpoint_kw"]
    (tmp_path / "no-soc.yaml").write_text(yaml.safe_dump(battery))
    inverter = yaml.safe_load((Path("drivers/profiles/sunspec-inverter.yaml")).read_text())
    inverter["points"]["pv_kw"]["unit"] = "W"
    (tmp_path / "watts.yaml").write_text(yaml.safe_dump(inverter))
    data = multi_site()
    data["devices"][5]["profile"] = "no-soc.yaml"
    data["devices"][2]["profile"] = "watts.yaml"
    data["devices"][0]["profile"] = "sunspec-inverter"   # serves no meter role
    data["devices"][1]["profile"] = "sunspec-inverter"   # sub-meter: wrong role too
    errors = errors_of(data, tmp_path)
    message = errors["devices[5].profile"][0]
    assert "lacks what a battery needs: soc_pct, battery_setpoint_kw (present but not writable)" in message
    assert any("points.pv_kw.unit" in m and "'kW', not 'W'" in m for m in errors["devices[2].profile"])
    assert "does not serve role meter" in errors["devices[0].profile"][0]


def test_a_sub_meter_needs_no_grid_power(tmp_path: Path):
    meter = yaml.safe_load((Path("drivers/profiles/sunspec-meter.yaml")).read_text())
    del meter["points"]["grid_kw"]
    for name in [n for n, p in meter["points"].items() if p.get("add") == "grid_kw" or p.get("subtract") == "grid_kw"]:
        del meter["points"][name]
    (tmp_path / "energy-only.yaml").write_text(yaml.safe_dump(meter))
    data = multi_site()
    data["devices"][1]["profile"] = "energy-only.yaml"
    data["devices"][0]["profile"] = "energy-only.yaml"
    errors = errors_of(data, tmp_path)
    assert list(errors) == ["devices[0].profile"] and "lacks what a meter at grid needs: grid_kw" in \
        errors["devices[0].profile"][0]


def test_ems_config_check_prints_the_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from ems.cli import main

    data = multi_site()
    del data["devices"][3]["rating_kw"]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(multi_site()))
    assert main(["config", "check", str(tmp_path / "ok.yaml")]) == 0
    assert main(["config", "check", str(path)]) != 0
    assert "devices[3].rating_kw" in capsys.readouterr().err


def test_the_documented_multi_asset_example_is_valid():
    import re

    text = Path("docs/configuration.md").read_text()
    block = re.search(r"A site with two battery containers.*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    config = validate_config({**copy.deepcopy(EXAMPLE), **yaml.safe_load(block.group(1))}, "docs", EXAMPLE_SITE.parent)
    bat = config.battery
    assert (bat.capacity_kwh, bat.max_charge_kw, bat.max_discharge_kw) == (1000, 500, 550)
    assert (round(bat.soc_min_pct, 6), round(bat.soc_max_pct, 6)) == (14, 92)  # as the comment in the example says
