"""The installed package, not the source checkout: what docs/deployment.md installs (``pip install .``) runs.

The wheel is built from a copy of the sources (the build writes ``build/`` and ``*.egg-info`` beside them) and
installed into a folder of its own; a fresh interpreter started elsewhere imports the project from there only and
finds what the commands read from the package: the example site ``ems run --simulate`` starts without ``--config``,
the tariff presets, device profiles, scenarios, the dashboards' pages and the telemetry schemas.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
SOURCES = tuple(name.removesuffix("*").replace(".", "/") for name in PACKAGES)
"""The folders the wheel is built from: pyproject's packages (``park*`` → ``park``, ``deploy.examples``)."""

PROBE = """
import json, sys
from pathlib import Path
import controller.cli, controller.dashboard, simulations
from controller.cli import EXAMPLE_SITE
from controller.config import load_config
from drivers.profile import PROFILE_DIR
from optimizer.tariff import Tariff, list_presets
from simulations.scenario import load_scenario
site = load_config(EXAMPLE_SITE)
for name in list_presets():
    Tariff.preset(name)
scenarios = sorted((Path(simulations.__file__).parent / "scenarios").glob("*.yaml"))
for path in scenarios:
    load_scenario(path)
dashboard = Path(controller.dashboard.__file__).parent / "static"
print(json.dumps({"module": controller.cli.__file__, "example": str(EXAMPLE_SITE), "site": site.site.name,
                  "presets": len(list_presets()), "profiles": len(list(PROFILE_DIR.glob("*.yaml"))),
                  "scenarios": len(scenarios), "dashboard": sorted(p.name for p in dashboard.iterdir())}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of its sources and installed (without dependencies) into a folder."""
    work = tmp_path_factory.mktemp("package")
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "state", "*.sqlite*")
    for name in SOURCES:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("pv_battery_ems-*.whl")
    target = work / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    names = zipfile.ZipFile(wheel).namelist()
    assert "deploy/examples/simulated-site.yaml" in names and not any("/state/" in n for n in names), names
    return target


def test_the_docker_image_copies_every_package():
    """The image runs ``pip install .`` on what its Dockerfile copies: a package left out is not installed (the
    ``park`` package was, and ``ems park`` and ``ems park-summary`` were missing from the image)."""
    copied = {source.removeprefix("./") for line in (ROOT / "deploy" / "docker" / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") for source in line.split()[1:-1]}
    assert set(SOURCES) <= copied, set(SOURCES) - copied
    assert {"pyproject.toml", "README.md"} <= copied


def test_the_installed_package_finds_its_example_site_and_data(installed: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(installed), "PYTHONSAFEPATH": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["module"] == str(installed / "controller" / "cli.py")   # not the checkout's editable install
    assert found["example"] == str(installed / "deploy" / "examples" / "simulated-site.yaml")
    assert found["site"] == "demo-factory"
    assert found["presets"] == len(list((ROOT / "optimizer" / "tariffs").glob("*.yaml")))
    assert found["profiles"] == len(list((ROOT / "drivers" / "profiles").glob("*.yaml")))
    assert found["scenarios"] == len(list((ROOT / "simulations" / "scenarios").glob("*.yaml")))
    shipped = sorted(p.name for p in (ROOT / "controller" / "dashboard" / "static").iterdir())
    assert found["dashboard"] == shipped


def test_the_installed_command_checks_the_example_site(installed: Path, tmp_path: Path):
    """``ems config check`` on the installed example file, from a folder with no checkout in it."""
    env = {**os.environ, "PYTHONPATH": str(installed), "PYTHONSAFEPATH": "1"}
    example = installed / "deploy" / "examples" / "multi-asset-site.yaml"
    out = subprocess.run([sys.executable, "-c", "import sys; from ems.cli import main; main(sys.argv[1:])",
                          "config", "check", str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{example}: OK — site demo-factory-multi"), out.stdout
