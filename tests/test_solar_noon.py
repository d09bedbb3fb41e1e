"""A site whose time zone and longitude disagree (a copied example with one of them changed) is warned about: the
sun would be highest hours from midday and every PV forecast hours off (optimizer.site.SiteInfo.solar_noon_warning,
shown by `ems config check`, `ems run` and `ems simulate`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.config import load_config
from ems.cli import main
from optimizer.site import SiteInfo
from simulations.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]


def site(timezone: str, longitude: float) -> SiteInfo:
    return SiteInfo(name="s", timezone=timezone, location={"latitude": 20.0, "longitude": longitude})


@pytest.mark.parametrize(("timezone", "longitude", "noon"), [
    ("Europe/Berlin", 106.68, "05:53"),          # Hai Phong's longitude under Berlin's UTC+1: 12 − 7.11 + 1 h
    ("America/Los_Angeles", 118.2, "20:07"),     # the minus of west forgotten: 12 − 7.88 − 8 h
    ("Asia/Ho_Chi_Minh", -106.68, "02:07"),      # the same the other way: 12 + 7.11 + 7 h − 24
])
def test_a_time_zone_hours_from_the_longitude_is_named(timezone, longitude, noon):
    warning = site(timezone, longitude).solar_noon_warning()
    assert warning is not None and f"puts solar noon at {noon} local time in {timezone}" in warning


@pytest.mark.parametrize(("timezone", "longitude"), [
    ("Asia/Ho_Chi_Minh", 106.68), ("Asia/Tokyo", 130.88), ("Europe/Madrid", -3.7),
    ("Asia/Shanghai", 76.0),  # Kashgar on Beijing time: noon near 15:00, legal and real
    ("Pacific/Kiritimati", -157.4), ("America/Argentina/Buenos_Aires", -68.8)])
def test_real_places_on_their_legal_time_are_not(timezone, longitude):
    assert site(timezone, longitude).solar_noon_warning() is None


def test_no_shipped_site_or_scenario_is_warned():
    for path in sorted((REPO / "deploy" / "examples").glob("*site.yaml")):
        assert load_config(path).site.solar_noon_warning() is None, path
    for path in sorted((REPO / "simulations" / "scenarios").glob("*.yaml")):
        assert load_scenario(path).site.solar_noon_warning() is None, path


def test_config_check_shows_the_warning(tmp_path, capsys):
    data = yaml.safe_load((REPO / "deploy" / "examples" / "simulated-site.yaml").read_text())
    data["site"]["timezone"] = "Europe/Berlin"
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(tmp_path / "site.yaml")]) == 0
    assert "warning: site.location.longitude 106.68° puts solar noon at 05:53 local time in Europe/Berlin" \
        in capsys.readouterr().err
