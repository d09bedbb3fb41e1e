"""``ems devices write`` and ``ems devices test`` against the simulated site over real Modbus on loopback.

The site is served in-process (speed 1, plant step 0.2 s); the command runs as ``ems.cli.main`` in a
worker thread (its own event loop, as from a shell), or as a subprocess for Ctrl-C. What the command
prints is checked against what the simulated unit really did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from drivers.simulated.site import SimulatedSite
from ems.cli import main
from tests.sim_peers import EXAMPLE_SITE, free_port

REPO = Path(__file__).resolve().parents[1]
MULTI_SITE = REPO / "deploy" / "examples" / "multi-asset-site.yaml"
NOON = {"start": "2026-05-04T12:00:00+07:00", "step_s": 0.2, "initial_soc_pct": 50,
        "weather": {"model": "clear_sky", "cloudiness": 0.0}, "load": {"day_kw": 600, "night_kw": 300, "noise_pct": 0}}
FAST = ["--hold-s", "0.5", "--allow-s", "2"]


def site_file(tmp_path: Path, source: Path = EXAMPLE_SITE, units: dict | None = None) -> Path:
    """``source`` with its devices on free ports (shared ports stay shared), a calm noon and ``units``."""
    data = yaml.safe_load(source.read_text())
    ports: dict[int, int] = {}
    for dev in data["devices"]:
        dev["endpoint"]["port"] = ports.setdefault(dev["endpoint"]["port"], free_port())
    data["simulation"] = {**data["simulation"], **NOON, "units": units or {}}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def served(path: Path) -> AsyncIterator[SimulatedSite]:
    site = SimulatedSite.from_file(path, speed=1)
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


async def ems(*args: str) -> int:
    """``ems ARGS`` in a worker thread (its own event loop); the exit code."""
    return await asyncio.to_thread(main, list(args))


async def test_write_sends_reads_back_and_reports(tmp_path, capsys):
    path = site_file(tmp_path)
    async with served(path) as site:
        code = await ems("devices", "write", "--config", str(path), "battery", "setpoint_reversion_s", "45")
        held = site.images["battery"].value("setpoint_reversion_s")
    out = capsys.readouterr().out
    assert code == 0 and held == 45
    assert "battery: wrote setpoint_reversion_s = 45 s (verified)" in out
    assert "battery: reports setpoint_reversion_s = 45 s" in out


REFUSED = [
    ("battery_setpoint_kw", "-600", "battery_setpoint_kw = -600 kW is outside its limits -500 … 500 kW"),
    ("setpoint_enable", "2", "setpoint_enable = 2 is outside its limits 0 … 1"),
    ("soc_pct", "50", "'soc_pct' is not a writable point of profile sunspec-battery; writable: battery_setpoint_kw,"),
    ("nan_point", "1", "'nan_point' is not a writable point"),
]


async def test_write_refuses_what_the_profile_and_the_unit_do_not_allow(tmp_path, capsys):
    path = site_file(tmp_path)
    async with served(path) as site:
        for point, value, says in REFUSED:
            code = await ems("devices", "write", "--config", str(path), "battery", point, value)
            err = capsys.readouterr().err
            assert code == 2 and says in err and "Traceback" not in err, (point, err)
        writes = dict(site.images["battery"].last_write)
    assert writes == {}                                                          # nothing reached the device


async def test_write_to_an_unknown_device_names_the_devices(tmp_path, capsys):
    path = site_file(tmp_path)
    assert await ems("devices", "write", "--config", str(path), "bess-9", "battery_setpoint_kw", "0") == 2
    assert "no device named bess-9; devices: grid-meter, pv-inverter, battery" in capsys.readouterr().err


async def test_battery_test_passes_and_leaves_the_unit_at_zero(tmp_path, capsys):
    path = site_file(tmp_path)
    async with served(path) as site:
        code = await ems("devices", "test", "--config", str(path), "battery", "--kw", "20", *FAST)
        image = site.images["battery"]
        setpoint, enabled = image.setpoint("battery_setpoint_kw"), image.value("setpoint_enable")
        battery_kw = site.state.battery_kw
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.split()}
    assert rows["charge"].split()[1:3] == ["-20.0", "-20.0"] and "pass" in rows["charge"]
    assert rows["discharge"].split()[1:3] == ["+20.0", "+20.0"] and "pass" in rows["discharge"]
    assert "pass" in rows["zero"] and "pass" in rows["left"]
    assert "battery: PASS" in out
    # the grid meter, read in each hold, rose by the 40 kW the battery moved from discharging to charging
    assert out.rstrip().endswith("grid-meter: sign ok: grid +40.0 kW from the discharge hold to the charge hold, "
                                 "+40.0 kW expected")
    assert setpoint is None and enabled == 0 and battery_kw == 0.0   # 0 kW, remote control released


async def test_a_grid_meter_read_with_the_wrong_sign_fails_the_battery_test(tmp_path, capsys):
    """The simulated meter serves import +; the command reads it through a profile copy that inverts grid_kw (a
    meter whose CTs face the other way reads the same): the battery passes, the meter fails, exit status 1."""
    path = site_file(tmp_path)
    reversed_meter = reversed_meter_site(tmp_path, path)
    async with served(path):
        code = await ems("devices", "test", "--config", str(reversed_meter), "battery", "--kw", "20", *FAST)
    out = capsys.readouterr().out
    assert code == 1 and "battery: PASS" in out
    assert ("grid-meter: FAIL: sign reversed: grid -40.0 kW from the discharge hold to the charge hold, +40.0 kW "
            "expected: it reads import as export") in out


async def test_a_meter_that_does_not_see_the_battery_is_said_and_not_failed(tmp_path, capsys):
    path = site_file(tmp_path)
    async with served(path) as site:
        site.faults.freeze("grid-meter")   # serves what it held: as a meter with the battery not behind it
        code = await ems("devices", "test", "--config", str(path), "battery", "--kw", "20", *FAST)
    out = capsys.readouterr().out
    assert code == 0 and ("grid-meter: does not see the battery: grid +0.0 kW from the discharge hold to the charge "
                          "hold, +40.0 kW expected; is the battery behind another meter?") in out


async def test_on_the_multi_asset_site_the_unit_ignoring_its_setpoint_fails_and_limits_are_the_units(
        tmp_path, capsys):
    path = site_file(tmp_path, MULTI_SITE, units={"bess-2": {"ignore_setpoint": True}, "inv-10": {"offline": True}})
    async with served(path) as site:
        refused = await ems("devices", "write", "--config", str(path), "bess-1", "battery_setpoint_kw", "-300")
        assert "bess-1: battery_setpoint_kw = -300 kW is outside its limits -250 … 250 kW" in capsys.readouterr().err
        code = await ems("devices", "test", "--config", str(path), "bess-2", "--kw", "20", *FAST)
        assert site.plant.units["bess-2"].battery_kw == 0.0
    out = capsys.readouterr().out
    assert refused == 2 and code == 1
    charge = next(line for line in out.splitlines() if line.startswith("charge"))
    assert "FAIL" in charge and "no response within 2 s: measured +0.0 kW for -20.0 kW" in charge
    assert " ok " in charge          # the register took the value: only the measured power tells
    skipped = next(line for line in out.splitlines() if line.startswith("discharge"))
    assert re.match(r"discharge\s+-\s+-\s+-\s+-\s+not run\s+skipped after a failed step$", skipped), skipped
    assert "pass" in next(line for line in out.splitlines() if line.startswith("zero"))
    assert out.rstrip().endswith("bess-2: FAIL")                 # a step ran and failed: not "NOT RUN"


async def test_battery_test_refuses_more_than_its_bms_allows_now(tmp_path, capsys):
    """bess-2's BMS derated to 40 % of its 250 kW PCS: a 150 kW test would stop at 100 kW and fail as "no response"
    (seen on the simulated multi-asset site); it is refused before anything is written, with what the BMS allows.
    100 kW passes."""
    path = site_file(tmp_path, MULTI_SITE, units={"bess-2": {"bms_max_charge_pct": 40}})
    async with served(path) as site:
        refused = await ems("devices", "test", "--config", str(path), "bess-2", "--kw", "150", *FAST)
        untouched = site.images["bess-2"].setpoint("battery_setpoint_kw")
        err = capsys.readouterr().err
        passed = await ems("devices", "test", "--config", str(path), "bess-2", "--kw", "100", *FAST)
    assert refused == 2 and untouched is None
    assert ("refused: bess-2: its BMS allows 100 kW charge now (max_charge_kw), less than --kw 150: the unit would "
            "stop there and the test fail; test with --kw 100 or less") in err
    out = capsys.readouterr().out
    assert passed == 0 and "\nbess-2: PASS\n" in out
    assert "grid-meter: sign ok: grid +200.0 kW" in out     # one unit of the two moves, the site's meter sees it


async def test_battery_test_refuses_more_than_the_pcs_and_other_roles(tmp_path, capsys):
    path = site_file(tmp_path)
    assert await ems("devices", "test", "--config", str(path), "battery", "--kw", "600") == 2
    assert "battery_setpoint_kw = -600 kW is outside its limits -500 … 500 kW" in capsys.readouterr().err
    assert await ems("devices", "test", "--config", str(path), "grid-meter") == 2
    assert "grid-meter is a meter; ems devices test drives batteries and PV inverters" in capsys.readouterr().err


def _interruptible() -> None:
    """In the child: Ctrl-C as in a terminal. A test run started in the background (``make test &``) has SIGINT
    ignored, and an ignored signal stays ignored across exec, so the tool would never see the interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_mid_test_leaves_the_unit_at_zero(tmp_path):
    path = site_file(tmp_path)
    async with served(path) as site:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ems.cli", "devices", "test", "--config", str(path), "battery", "--kw", "20",
            "--hold-s", "30", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            preexec_fn=_interruptible)
        image = site.images["battery"]
        async with asyncio.timeout(20):
            while image.setpoint("battery_setpoint_kw") != -20.0:   # charging: the first step is under way
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = await proc.communicate()
        setpoint, enabled = image.setpoint("battery_setpoint_kw"), image.value("setpoint_enable")
    assert proc.returncode == 130, err.decode()
    left = next(line for line in out.decode().splitlines() if line.startswith("left at 0 kW"))
    assert "pass" in left
    assert setpoint is None and enabled == 0


async def test_battery_that_goes_the_wrong_way_fails_on_the_sign(tmp_path, capsys):
    path = site_file(tmp_path)
    async with served(path) as site:
        site.faults.out_of_range("battery", "battery_kw", 20.0)   # reports discharging whatever it does
        code = await ems("devices", "test", "--config", str(path), "battery", "--kw", "20", "--hold-s", "0.5",
                         "--allow-s", "1")
    out = capsys.readouterr().out
    charge = next(line for line in out.splitlines() if line.startswith("charge"))
    assert code == 1 and "wrong sign: measured +20.0 kW for -20.0 kW" in charge


async def test_a_power_setpoint_is_held_then_the_value_before_is_written_back(tmp_path, capsys):
    """Every command expires: ``write`` of a battery setpoint holds it, then writes back what the point held
    before (here a setpoint kept from an earlier write), not 0 and not the new value."""
    path = site_file(tmp_path)
    write = ("devices", "write", "--config", str(path), "battery")
    async with served(path) as site:
        image = site.images["battery"]
        for point, value in (("setpoint_mode", "1"), ("setpoint_enable", "1")):
            assert await ems(*write, point, value) == 0
        assert await ems(*write, "battery_setpoint_kw", "10", "--keep") == 0
        assert "is kept: nothing expires it until it is written again" in capsys.readouterr().out
        held: list[float | None] = []

        async def watch() -> None:
            while True:
                held.append(image.setpoint("battery_setpoint_kw"))
                await asyncio.sleep(0.1)
        watcher = asyncio.create_task(watch())
        code = await ems(*write, "battery_setpoint_kw", "-30", "--hold-s", "1.5")
        watcher.cancel()
        after = image.setpoint("battery_setpoint_kw")
        async with asyncio.timeout(5):
            while site.state.battery_kw != 10.0:         # the unit follows it (plant steps of 0.2 s)
                await asyncio.sleep(0.05)
    out = capsys.readouterr().out
    assert code == 0, out
    assert held.count(-30.0) >= 10                       # held about 1.5 s (sampled every 0.1 s)
    assert after == 10.0                                 # the value before
    assert "holding battery_setpoint_kw = -30 kW for 1.5 s, then writing back 10 kW, its value before" in out
    assert out.rstrip().endswith("battery: wrote back battery_setpoint_kw = 10 kW (verified)")


async def test_hold_and_keep_are_refused_for_points_that_do_not_move_power(tmp_path, capsys):
    path = site_file(tmp_path)
    code = await ems("devices", "write", "--config", str(path), "battery", "setpoint_mode", "1", "--hold-s", "5")
    assert code == 2
    assert "--hold-s and --keep are for power setpoints (battery_setpoint_kw, pv_limit_pct)" in capsys.readouterr().err


async def test_ctrl_c_mid_hold_writes_the_value_before_back(tmp_path):
    path = site_file(tmp_path)
    async with served(path) as site:
        image = site.images["battery"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ems.cli", "devices", "write", "--config", str(path), "pv-inverter",
            "pv_limit_pct", "40", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            preexec_fn=_interruptible)
        inverter = site.images["pv-inverter"]
        async with asyncio.timeout(20):
            while inverter.value("pv_limit_pct") != 40:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            out, err = await proc.communicate()
        limit = inverter.value("pv_limit_pct")
        assert image.setpoint("battery_setpoint_kw") is None          # the battery was not touched
    assert proc.returncode == 130, err.decode()
    assert "holding pv_limit_pct = 40 % for 60 s, then writing back 100 %, its value before" in out.decode()
    assert "wrote back pv_limit_pct = 100 % (verified)" in out.decode()
    assert limit == 100


async def test_pv_limit_test_passes_and_leaves_the_inverter_at_100_pct(tmp_path, capsys):
    """At a clear noon the simulated inverter (900 kW AC, the example's pv.ac_kw) is limited to half its output, holds
    it, rises again at 100 %, and is left at 100 % with remote control released."""
    path = site_file(tmp_path)
    async with served(path) as site:
        before = site.state.pv_kw
        code = await ems("devices", "test", "--config", str(path), "pv-inverter", *FAST)
        inverter = site.images["pv-inverter"]
        limit, enabled = inverter.value("pv_limit_pct"), inverter.value("pv_limit_enable")
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.split()}
    assert before > 400                                     # the sun is up: a limit at half of it can be seen
    limit_kw, measured = float(rows["limit"][1]), float(rows["limit"][2])
    assert limit_kw == pytest.approx(before / 2, rel=0.05) and measured <= limit_kw + 45 and "pass" in rows["limit"]
    assert float(rows["release"][2]) > limit_kw + 45 and "pass" in rows["release"]
    assert "pass" in rows["left"] and "pv-inverter: PASS" in out
    assert (limit, enabled) == (100, 0)                     # left at 100 %, remote control released
    # the grid meter, read before and in the limit hold, saw the import rise by what the limit took off
    said = out.rstrip().splitlines()[-1]
    found = re.fullmatch(r"grid-meter: sign ok: grid \+([\d.]+) kW from the full-output hold to the limit hold, "
                         r"\+([\d.]+) kW expected", said)
    assert found and float(found[2]) > 150 and float(found[1]) == pytest.approx(float(found[2]), rel=0.1), said


def reversed_meter_site(tmp_path: Path, path: Path) -> Path:
    """``path`` with its grid meter read through a copy of the SunSpec meter profile that inverts grid_kw (as a meter
    whose CTs face the other way reads)."""
    profile = yaml.safe_load((REPO / "drivers" / "profiles" / "sunspec-meter.yaml").read_text())
    profile["name"] = "meter-inverted"
    profile["points"]["grid_kw"]["invert"] = True
    (tmp_path / "meter-inverted.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    site = yaml.safe_load(path.read_text())
    next(d for d in site["devices"] if d["name"] == "grid-meter")["profile"] = "meter-inverted.yaml"
    reversed_meter = tmp_path / "reversed.yaml"
    reversed_meter.write_text(yaml.safe_dump(site, sort_keys=False))
    return reversed_meter


async def test_a_grid_meter_read_with_the_wrong_sign_fails_the_pv_limit_test(tmp_path, capsys):
    """A site with PV and no battery is commissioned on its inverter: a reversed grid meter fails there too."""
    path = site_file(tmp_path)
    async with served(path):
        code = await ems("devices", "test", "--config", str(reversed_meter_site(tmp_path, path)), "pv-inverter",
                         *FAST)
    out = capsys.readouterr().out
    assert code == 1 and "pv-inverter: PASS" in out, out
    assert re.search(r"grid-meter: FAIL: sign reversed: grid -[\d.]+ kW from the full-output hold to the limit "
                     r"hold, \+[\d.]+ kW expected: it reads import as export", out), out


async def test_pv_limit_test_fails_an_inverter_that_ignores_the_limit_and_refuses_at_night(tmp_path, capsys):
    path = site_file(tmp_path)
    async with served(path) as site:
        site.faults.ignore_setpoint("pv-inverter")
        code = await ems("devices", "test", "--config", str(path), "pv-inverter", "--hold-s", "0.5", "--allow-s", "1")
        limit = site.images["pv-inverter"].value("pv_limit_pct")
    out = capsys.readouterr().out
    failed = next(line for line in out.splitlines() if line.startswith("limit"))
    assert code == 1 and "FAIL" in failed and "no response within 1 s" in failed and "above the limit" in failed
    assert "pass" in next(line for line in out.splitlines() if line.startswith("left at 100 %"))
    assert limit == 100
    night = tmp_path / "night"
    night.mkdir()
    path = site_file(night)
    data = yaml.safe_load(path.read_text())
    data["simulation"]["start"] = "2026-05-04T01:00:00+07:00"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    async with served(path) as site:
        code = await ems("devices", "test", "--config", str(path), "pv-inverter")
        writes = dict(site.images["pv-inverter"].last_write)
    out = capsys.readouterr().out
    assert code == 1 and re.search(r"limit\s+-\s+\+0\.0\s+-\s+-\s+not run\s+it produces 0\.0 kW, below 10 % of "
                                   r"its 900 kW rating", out), out   # a step never tried: no setpoint, not FAIL
    assert out.rstrip().endswith("pv-inverter: NOT RUN (nothing was written)")
    assert writes == {}                                      # nothing was written at night
    assert await ems("devices", "test", "--config", str(path), "pv-inverter", "--kw", "5") == 2
    assert "--kw is the battery test's power" in capsys.readouterr().err
