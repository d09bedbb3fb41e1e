"""Scenario files: the shipped ones load, bad ones fail naming the file and the field, variants merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ems.yamlfile import ConfigError
from simulations.scenario import ALL_STRATEGIES, load_scenario, merge

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _base() -> dict:
    return yaml.safe_load((SCENARIOS / "nam-cau-kien.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.site.timezone == "Asia/Ho_Chi_Minh"
    assert scenario.grid.export_cap_kw == 0.0


def test_nam_cau_kien_values() -> None:
    s = load_scenario(SCENARIOS / "nam-cau-kien.yaml")
    assert (s.pv.kwp, s.battery.capacity_kwh, s.battery.max_discharge_kw) == (1000, 1000, 500)
    assert s.co2.grid_factor_t_per_mwh == 0.681
    assert set(s.strategies) == set(ALL_STRATEGIES)
    assert s.battery.spec().capacity_kwh == 1000
    legacy = load_scenario(SCENARIOS / "nam-cau-kien-legacy.yaml")
    assert legacy.tariff.preset == "evn-manufacturing-22kv-legacy"
    assert legacy.pv == s.pv and legacy.costs == s.costs


@pytest.mark.parametrize(("section", "key", "value", "field"), [
    ("battery", "soc_min_pct", 99, "battery"),
    ("battery", "capacity_kwh", -5, "battery.capacity_kwh"),
    ("battery", "cycle_life", 0, "battery.cycle_life"),
    ("pv", "kwpp", 10, "pv.kwpp"),
    ("site", "timezone", "Asia/Hai_Phong", "site.timezone"),
    ("costs", "pv_per_kwp", "cheap", "costs.pv_per_kwp"),
    ("finance", "discount_rate_pct", -1, "finance.discount_rate_pct"),
    ("co2", "grid_factor_t_per_mwh", 5, "co2.grid_factor_t_per_mwh"),
    ("tariff", "escalation_pct_per_year", 99, "tariff.escalation_pct_per_year"),
])
def test_bad_field_is_named(tmp_path: Path, section: str, key: str, value: object, field: str) -> None:
    data = _base()
    data[section][key] = value
    path = _write(tmp_path, "bad.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.source == str(path)
    assert any(e.field == field for e in info.value.errors), info.value.errors


def test_bad_strategy_and_sources_are_named(tmp_path: Path) -> None:
    data = _base()
    data["strategies"] = ["mpc", "crystal_ball"]
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, "s.yaml", data))
    assert [e.field for e in info.value.errors] == ["strategies[1]"]
    data = _base()
    del data["data"]["synthetic"]  # neither a synthetic year nor a CSV
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, "d.yaml", data))
    assert info.value.errors[0].field == "data"
    assert info.value.errors[0].message.startswith("give data.synthetic, data.csv, or both")
    data = _base()
    del data["tariff"]["preset"]
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, "t.yaml", data))
    assert info.value.errors[0].field == "tariff"


def test_missing_file_and_bad_extends(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(tmp_path / "nope.yaml")
    assert info.value.errors[0].field == "(file)"
    path = _write(tmp_path, "v.yaml", {"extends": "missing.yaml"})
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.errors[0].field == "extends"
    loop = _write(tmp_path, "loop.yaml", {"extends": "loop.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        load_scenario(loop)


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text((SCENARIOS / "nam-cau-kien.yaml").read_text(encoding="utf-8"))
    path = _write(tmp_path, "v.yaml", {"extends": "base.yaml", "name": "v", "battery": {"capacity_kwh": 2000},
                                       "strategies": ["pv_only"]})
    s = load_scenario(path)
    assert s.battery.capacity_kwh == 2000 and s.battery.max_discharge_kw == 500
    assert s.strategies == ["pv_only"]
    assert s.base_dir == tmp_path
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_resized_keeps_ratios() -> None:
    s = load_scenario(SCENARIOS / "nam-cau-kien.yaml")
    r = s.resized(pv_kwp=500, battery_kwh=2000)
    assert r.pv.kwp == 500 and r.pv.ac_limit_kw == pytest.approx(500 * s.pv.ac_limit_kw / s.pv.kwp)
    assert r.battery.max_charge_kw == pytest.approx(1000) and r.battery.capacity_kwh == 2000
    assert r.base_dir == s.base_dir
    z = s.resized(pv_kwp=0, battery_kwh=0)
    assert z.pv.kwp == 0 and z.battery.max_discharge_kw == 0
    assert s.resized(pv_kwp=2.5, battery_kwh=1e6).name == f"{s.name}-pv2.5-bat1000000"  # was "…-bat1e+06": refused


def test_a_fallback_mode_live_control_does_not_have_is_named(tmp_path: Path) -> None:
    """``control.fallback_mode`` takes the live controller's two fallbacks; anything else is an error at its key."""
    data = _base()
    data["control"] = {"fallback_mode": "peak_shaving"}
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, "f.yaml", data))
    assert [e.field for e in info.value.errors] == ["control.fallback_mode"]
    data["control"] = {"fallback_mode": "tou_rule"}
    assert load_scenario(_write(tmp_path, "g.yaml", data)).control.fallback_mode == "tou_rule"
