"""A file of another kind given to a command: one error saying what the file is and what reads it (a park summary
file given to ``ems config check`` had sixteen errors of required and unknown fields)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.config import SiteConfig
from drivers.config import DevicesFile
from drivers.profile import Profile
from ems.cli import main
from ems.yamlfile import other_kind
from optimizer.tariff_schema import TariffSpec
from park.config import SummarySettings
from simulations.park import Park
from simulations.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "examples" / "simulated-site.yaml"
SCENARIO = ROOT / "simulations" / "scenarios" / "nam-cau-kien.yaml"
PARK = ROOT / "simulations" / "parks" / "example-park.yaml"
SUMMARY = ROOT / "deploy" / "examples" / "park-summary.yaml"
TARIFF = ROOT / "optimizer" / "tariffs" / "evn-two-part-22kv.yaml"
PROFILE = ROOT / "drivers" / "profiles" / "sunspec-meter.yaml"

SHIPPED = [(SiteConfig, sorted((ROOT / "deploy" / "examples").glob("*site.yaml"))),
           (DevicesFile, sorted((ROOT / "deploy" / "examples").glob("*site.yaml"))),
           (Scenario, sorted((ROOT / "simulations" / "scenarios").glob("*.yaml"))),
           (Park, sorted((ROOT / "simulations" / "parks").glob("*.yaml"))),
           (SummarySettings, [SUMMARY]),
           (TariffSpec, sorted((ROOT / "optimizer" / "tariffs").glob("*.yaml"))),
           (Profile, sorted((ROOT / "drivers" / "profiles").glob("*.yaml")))]


@pytest.mark.parametrize(("model", "paths"), SHIPPED, ids=[m.__name__ for m, _ in SHIPPED])
def test_no_shipped_file_is_taken_for_another_kind_by_its_own_reader(model, paths):
    assert paths
    for path in paths:
        assert other_kind(yaml.safe_load(path.read_text()), model) is None, path


@pytest.mark.parametrize(("args", "kind", "reader"), [
    (["config", "check", str(SUMMARY)], "a park summary file", "ems park-summary --config"),
    (["config", "check", str(SCENARIO)], "a scenario", "ems simulate"),
    (["config", "check", str(TARIFF)], "a tariff file", "tariff: {file: …}"),
    (["config", "check", str(PROFILE)], "a device profile", "profile: of a device"),
    (["simulate", str(SITE), "--out", "OUT"], "a site file", "ems run --config"),
    (["park", str(SCENARIO), "--out", "OUT"], "a scenario", "ems simulate"),
    (["park-summary", "--config", str(SITE)], "a site file", "ems config check"),
    (["devices", "read", "--config", str(SCENARIO)], "a scenario", "ems sweep"),
    (["sim", "serve", "--config", str(PARK)], "a park file", "ems park"),
])
def test_a_command_given_another_kind_of_file_says_what_it_is(args, kind, reader, tmp_path, capsys):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 error(s)" in err and f"this is {kind} (it has " in err and reader in err, err
    assert "Field required" not in err and "Traceback" not in err
