"""How the simulated site serves its ports: an absent unit id, a port that is already taken."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes

from drivers.simulated.site import SimulatedSite
from tests.sim_peers import EXAMPLE_SITE, simulated_site, site_config

REPO = Path(__file__).resolve().parents[1]


async def test_an_absent_unit_id_is_answered_gateway_target_failed_to_respond():
    """Modbus over TCP: a gateway answers for a unit that is not behind it with 0x0B, not with 4 (device failure)."""
    async with simulated_site() as site:
        ep = site.endpoints["battery"]
        client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=2, retries=0)
        assert await client.connect()
        try:
            absent = ep.unit_id + 7
            answers = [await client.read_holding_registers(40000, count=2, device_id=absent),
                       await client.read_input_registers(0, count=1, device_id=absent),
                       await client.write_register(40000, 1, device_id=absent),
                       await client.read_holding_registers(65535, count=1, device_id=absent)]
            present = await client.read_holding_registers(40000, count=2, device_id=ep.unit_id)
        finally:
            client.close()
    assert [(a.isError(), a.exception_code) for a in answers] == [(True, ExcCodes.GATEWAY_NO_RESPONSE)] * 4
    assert not present.isError() and present.registers == [0x5375, 0x6E53]  # "SunS"


def example_on_free_ports(tmp_path: Path, **sections: object) -> tuple[Path, dict]:
    """The example site file with its devices on free ports and ``sections`` replaced, written to ``tmp_path``;
    the file and its data."""
    data = yaml.safe_load(EXAMPLE_SITE.read_text())
    for dev, free in zip(data["devices"], site_config().devices, strict=True):
        dev["endpoint"]["port"] = free.endpoint.port
    data.update(sections)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def test_sim_serve_on_a_busy_port_says_so_in_one_line_and_exits_2(tmp_path):
    path, data = example_on_free_ports(tmp_path)
    busy = data["devices"][1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", busy["endpoint"]["port"]))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "ems.cli", "sim", "serve", "--config", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {busy['name']}: cannot listen on 127.0.0.1:{busy['endpoint']['port']}: address already in use "
        "(another program listens on that port)"], proc.stderr
    assert "Ctrl-C" not in proc.stdout


async def test_a_port_on_an_address_not_of_this_machine_is_an_os_error_naming_it():
    host = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never an address of this machine
    config = site_config()
    devices = [d.model_copy(update={"endpoint": d.endpoint.model_copy(update={"host": host})}) if i == 0 else d
               for i, d in enumerate(config.devices)]
    site = SimulatedSite(config.model_copy(update={"devices": devices}), speed=1)
    with pytest.raises(OSError, match=rf"{devices[0].name}: cannot listen on {host}:{devices[0].endpoint.port}: "):
        await site.start()
    await site.stop()


def test_ems_run_simulate_on_a_busy_port_says_so_in_one_line_and_exits_2(tmp_path):
    """Issue 11: `ems run --simulate` printed a traceback (with the clear OSError at its bottom)."""
    path, data = example_on_free_ports(tmp_path, telemetry={"dashboard": {"enabled": False}})
    busy = data["devices"][0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", busy["endpoint"]["port"]))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "ems.cli", "run", "--simulate", "--config", str(path),
                               "--state-dir", str(tmp_path / "state")], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "address already in use" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def served_lines(path: Path, *args: str) -> list[str]:
    """What `ems sim serve --config path *args` prints up to its "Ctrl-C stops." line (then it is stopped)."""
    proc = subprocess.Popen([sys.executable, "-m", "ems.cli", "sim", "serve", "--config", str(path), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops."):
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert lines and lines[-1].startswith("Ctrl-C stops."), lines
    return lines


@pytest.mark.parametrize(("speed", "says"), [("60", True), ("1", False)])
def test_sim_serve_away_from_real_time_says_a_controller_needs_its_clock(tmp_path, speed, says):
    """At 60x a controller in another process would run on the wall clock against a plant 60x too fast, so `ems
    sim serve` points to `ems run --simulate` (which shares the site's clock); at 1x it says nothing."""
    path, _ = example_on_free_ports(tmp_path)
    lines = served_lines(path, "--speed", speed)
    told = [ln for ln in lines if "runs on the wall clock" in ln]
    if says:
        assert told == ["  at 60x a client in another process (ems devices, ems run) runs on the wall clock and sees "
                        "the plant move 60x too fast; to control it on its own clock use ems run --simulate "
                        "(docs/devices.md, Simulated site)\n"]
    else:
        assert not told, told


def test_sim_serve_at_1x_says_when_its_clock_is_not_the_wall_clock_and_start_now_serves_it(tmp_path):
    """At 1x a controller in another process (`ems run` without --simulate) runs on the wall clock: against the
    example's plant starting at 2026-05-04 06:00 it planned a December morning's tariff period and sun over a May
    sunrise. `ems sim serve` says so, with the site time in local time; `--start now` serves the wall clock and
    `--start TIME` any other start."""
    path, _ = example_on_free_ports(tmp_path)
    first = served_lines(path)
    assert first[0].startswith("simulated site demo-factory: speed 1x, site time 2026-05-04 06:00:0"), first[0]
    assert "Asia/Ho_Chi_Minh (23:00:0" in first[0], first[0]
    note = [ln for ln in first if "not the wall clock" in ln]
    assert len(note) == 1 and "--start now serves the wall clock" in note[0], first

    now = served_lines(path, "--start", "now")
    local_now = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))
    assert f"site time {local_now:%Y-%m-%d} " in now[0], now[0]  # the day (the minute may turn meanwhile)
    assert not [ln for ln in now if "not the wall clock" in ln], now

    noon = served_lines(path, "--start", "2026-05-04T11:00:00+07:00")
    assert "site time 2026-05-04 11:00:0" in noon[0], noon[0]


def test_sim_serve_start_must_be_now_or_a_time_with_its_offset(tmp_path):
    path, _ = example_on_free_ports(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "ems.cli", "sim", "serve", "--config", str(path), "--start",
                           "2026-05-04T11:00"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "argument --start: '2026-05-04T11:00' has no UTC offset" in proc.stderr, proc.stderr


def test_ems_run_simulate_starts_the_site_when_asked_and_says_its_time(tmp_path):
    """`ems run --simulate --start` runs the demo from another moment (the evening peak), and says the site time."""
    path, _ = example_on_free_ports(tmp_path, telemetry={"dashboard": {"enabled": False}})
    proc = subprocess.run([sys.executable, "-m", "ems.cli", "run", "--simulate", "--config", str(path), "--state-dir",
                           str(tmp_path / "state"), "--speed", "10", "--duration", "5", "--start",
                           "2026-05-04T17:30:00+07:00"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    # the site's clock runs from its start while the servers open (seconds at 10x)
    assert re.search(r"^simulated site at 10x, site time 2026-05-04 17:3\d:\d\d Asia/Ho_Chi_Minh \(10:3\d:\d\d UTC\): "
                     r"grid-meter ", proc.stdout, re.M), proc.stdout
    refused = subprocess.run([sys.executable, "-m", "ems.cli", "run", "--config", str(path), "--start", "now"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--start and --perfect-forecast need --simulate" in refused.stderr
