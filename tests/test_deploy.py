"""Deployment files: docker-compose structure (Docker cannot run here, so the file is checked, not
started), Dockerfile sources, the systemd unit (systemd-analyze verify), Grafana provisioning against
the line protocol the sink really writes, the shipped broker config, and the example site files."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
import yaml
from aiomqtt.exceptions import MqttCodeError

from controller.config import load_config
from controller.telemetry.influx import alarm_lines, plan_lines, state_lines, stats_line
from controller.telemetry.outbox import OutboxStats
from tests.peers import free_port, sample_plan, sample_state, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
T0 = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)


def test_compose_structure() -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"controller", "influxdb", "mosquitto", "grafana"}
    build = services["controller"]["build"]
    assert (DEPLOY / "docker" / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "docker" / "Dockerfile"
    for name, service in services.items():
        assert "image" in service, name
        assert service["restart"] == "unless-stopped", name
        for dep in service.get("depends_on", []):
            assert dep in services, (name, dep)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if source in ("./site.yaml", "./passwd"):  # created by the operator (docs/deployment.md)
                    continue
                assert (DEPLOY / "docker" / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
        for port in service.get("ports", []):
            assert re.fullmatch(r"(127\.0\.0\.1:)?\d+:\d+", port), port
    assert services["controller"]["ports"] == ["127.0.0.1:8080:8080"]     # dashboard not on the LAN
    example_env = (DEPLOY / "docker" / "ems.env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", (DEPLOY / "docker" / "docker-compose.yml").read_text()))
    assert required and all(f"{var}=" in example_env for var in required), required


def test_dockerfile_copies_existing_sources() -> None:
    for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_systemd_unit() -> None:
    text = (DEPLOY / "systemd" / "pv-battery-ems.service").read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=ems", "ProtectSystem=strict",
                      "StateDirectory=pv-battery-ems", "NoNewPrivileges=yes", "TimeoutStopSec="):
        assert re.search(rf"^{re.escape(directive)}", text, re.M), directive
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    text = (DEPLOY / "systemd" / "pv-battery-ems.service").read_text()
    unit = tmp_path / "pv-battery-ems.service"
    unit.write_text(text.replace("/opt/pv-battery-ems/.venv/bin/ems", sys.executable))  # not installed here
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def written_fields() -> set[tuple[str, str]]:
    """(measurement, field) pairs the InfluxDB sink writes for representative messages."""
    battery = {"soh_pct": 85.0, "capacity_kwh": 850.0, "nameplate_kwh": 1000.0}
    lines = state_lines("s", {**sample_state(T0), "alarms": ["x"], "battery": battery})
    lines += plan_lines("s", sample_plan(T0))
    lines += alarm_lines("s", {"ts": T0.isoformat(), "code": "c", "active": True, "message": "m"})
    lines.append(stats_line("s", OutboxStats(1, 2, 3, 4), 5, T0))
    pairs = set()
    for line in lines:
        head, fields, _ = re.split(r"(?<!\\) ", line)
        measurement = head.split(",")[0]
        pairs |= {(measurement, f.split("=")[0]) for f in re.split(r',(?=[\w-]+=)', fields)}
    return pairs


def test_grafana_dashboard_queries_what_the_sink_writes() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/influxdb.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["jsonData"]["version"] == "Flux"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/ems.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/ems.json").read_text())
    written = written_fields()
    titles = set()
    for panel in dashboard["panels"]:
        titles.add(panel["title"])
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            query = target["query"]
            measurement = re.search(r'r\._measurement == "(\w+)"', query).group(1)
            for field in re.findall(r'r\._field == "(\w+)"', query):
                assert (measurement, field) in written, (panel["title"], measurement, field)
    assert {"Power flows", "State of charge: plan and measured", "Battery: plan and measured", "Prices",
            "Alarms", "Telemetry outbox"} <= titles


async def test_shipped_broker_config_requires_passwords(tmp_path: Path) -> None:
    """deploy/mosquitto/mosquitto.conf + acl in Debian's layout (main config including conf.d)."""
    port = free_port()
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "passwd").touch()
    subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "passwd"), "operator", "op-secret"], check=True)
    shipped = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    shipped = (shipped.replace("/etc/mosquitto/passwd", str(tmp_path / "passwd"))
               .replace("/etc/mosquitto/acl", str(DEPLOY / "mosquitto" / "acl"))
               .replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1"))
    (tmp_path / "conf.d" / "pv-battery-ems.conf").write_text(shipped)
    (tmp_path / "mosquitto.conf").write_text(   # what Debian's /etc/mosquitto/mosquitto.conf sets
        f"persistence true\npersistence_location {tmp_path}/data/\nuser root\ninclude_dir {tmp_path}/conf.d\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        await asyncio.to_thread(wait_for_port, port, proc)
        with pytest.raises(MqttCodeError):
            async with aiomqtt.Client("127.0.0.1", port):
                pass
        async with aiomqtt.Client("127.0.0.1", port, username="operator", password="op-secret") as client:
            await client.publish("ems/site/cmd/replan", b"{}", qos=1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("name", ["nam-cau-kien-site.yaml", "simulated-site.yaml", "multi-asset-site.yaml"])
def test_example_site_files_validate(name: str) -> None:
    config = load_config(DEPLOY / "examples" / name)
    assert config.telemetry.dashboard.host == "127.0.0.1"
