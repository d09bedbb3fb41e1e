"""Secure defaults of deploy/: the shipped broker configs listen on loopback (or TLS), refuse anonymous and
unauthorised clients (a real mosquitto with the shipped config, ACL and a password file from
deploy/init-secrets.sh), every published port of the compose stack is on the host's loopback, secrets are
generated once and never overwritten, and ``ems config check`` warns about secrets the enabled sinks lack."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
import yaml
from aiomqtt.exceptions import MqttCodeError

from controller.telemetry.config import MqttSettings, MqttTls, TelemetrySettings
from controller.telemetry.secret_check import read_env_file, secret_warnings
from ems.cli import main as ems_main
from tests.peers import free_port, make_tls_files, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MOSQUITTO = DEPLOY / "mosquitto"
AUTH = ("per_listener_settings false", "allow_anonymous false", "password_file /etc/mosquitto/passwd",
        "acl_file /etc/mosquitto/acl")
CONTROLLER_SECRETS = ("EMS_INFLUX_TOKEN", "EMS_MQTT_PASSWORD", "EMS_DASHBOARD_TOKEN")


def active_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_shipped_broker_configs_listen_on_loopback_and_require_passwords() -> None:
    debian, docker = active_lines(MOSQUITTO / "mosquitto.conf"), active_lines(MOSQUITTO / "mosquitto-docker.conf")
    for config in (debian, docker):
        assert all(line in config for line in AUTH), config
        assert "allow_anonymous true" not in config
    assert [line for line in debian if line.startswith("listener")] == ["listener 1883 127.0.0.1"]
    assert [line for line in docker if line.startswith("listener")] == ["listener 1883"]  # compose network only
    compose = yaml.safe_load((DEPLOY / "docker" / "docker-compose.yml").read_text())
    ports = [port for service in compose["services"].values() for port in service.get("ports", [])]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports), ports
    volumes = compose["services"]["mosquitto"]["volumes"]
    assert "../mosquitto/mosquitto-docker.conf:/mosquitto/config/mosquitto.conf:ro" in volumes


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """deploy/init-secrets.sh run once: (env file, mosquitto password file, what it printed)."""
    folder = tmp_path_factory.mktemp("secrets")
    env, passwd = folder / "ems.env", folder / "passwd"
    done = subprocess.run([str(DEPLOY / "init-secrets.sh"), str(env), str(passwd)], capture_output=True,
                          text=True, check=True)
    yield env, passwd, done.stdout


def printed_password(stdout: str, user: str) -> str:
    return re.search(rf"user {user}\s+password (\w+)", stdout).group(1)


def test_init_secrets_writes_each_secret_once_and_shows_it(secrets: tuple[Path, Path, str]) -> None:
    env, passwd, stdout = secrets
    values = read_env_file(env)
    required = set(re.findall(r"\$\{(\w+):\?", (DEPLOY / "docker" / "docker-compose.yml").read_text()))
    assert set(values) == required | set(CONTROLLER_SECRETS)
    assert all(re.fullmatch(r"[0-9a-f]{24,48}", v) for v in values.values()) and len(set(values.values())) == 5
    for path in (env, passwd):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert values["GRAFANA_ADMIN_PASSWORD"] in stdout and values["INFLUXDB_ADMIN_PASSWORD"] in stdout
    assert values["EMS_DASHBOARD_TOKEN"] in stdout and "not shown again" in stdout
    assert values["EMS_MQTT_PASSWORD"] not in stdout                        # the controller's own: in the file only
    users = [line.split(":")[0] for line in passwd.read_text().splitlines()]
    assert users == ["ems-controller", "operator", "grafana"]
    assert printed_password(stdout, "operator") not in passwd.read_text()   # stored hashed
    before = env.read_bytes()
    again = subprocess.run([str(DEPLOY / "init-secrets.sh"), str(env)], capture_output=True, text=True)
    assert again.returncode == 1 and "exists; not overwritten" in again.stderr and env.read_bytes() == before


def shipped_broker(workdir: Path, passwd: Path, tls: tuple[Path, Path, Path] | None = None,
                   ) -> tuple[subprocess.Popen[bytes], int]:
    """deploy/mosquitto/mosquitto.conf in Debian's layout (main config including conf.d), on a free port
    (with ``tls``: its TLS block switched on, on loopback), with the shipped ACL and ``passwd``."""
    port = free_port()
    (workdir / "conf.d").mkdir()
    text = ((MOSQUITTO / "mosquitto.conf").read_text().replace("/etc/mosquitto/passwd", str(passwd))
            .replace("/etc/mosquitto/acl", str(MOSQUITTO / "acl")))
    if tls is None:
        text = text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    else:
        text = (text.replace("listener 1883 127.0.0.1", f"listener {free_port()} 127.0.0.1")
                .replace("#listener 8883 0.0.0.0", f"listener {port} 127.0.0.1")
                .replace("#cafile /etc/mosquitto/certs/ca.crt", f"cafile {tls[0]}")
                .replace("#certfile /etc/mosquitto/certs/broker.crt", f"certfile {tls[1]}")
                .replace("#keyfile /etc/mosquitto/certs/broker.key", f"keyfile {tls[2]}")
                .replace("#tls_version", "tls_version").replace("#require_certificate", "require_certificate"))
    (workdir / "conf.d" / "pv-battery-ems.conf").write_text(text)
    (workdir / "mosquitto.conf").write_text(
        f"persistence_location {workdir}/\nuser root\nlog_dest file {workdir}/mosquitto.log\n"
        f"include_dir {workdir}/conf.d\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(workdir / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    return proc, port


async def test_shipped_broker_refuses_anonymous_and_unauthorised_clients(secrets: tuple[Path, Path, str],
                                                                         tmp_path: Path) -> None:
    env, passwd, stdout = secrets
    controller_password = read_env_file(env)["EMS_MQTT_PASSWORD"]
    operator, viewer = printed_password(stdout, "operator"), printed_password(stdout, "grafana")
    proc, port = shipped_broker(tmp_path, passwd)
    try:
        await asyncio.to_thread(wait_for_port, port, proc)
        for login in ({}, {"username": "operator", "password": "wrong"}, {"username": "nobody", "password": "x"}):
            with pytest.raises(MqttCodeError):
                async with aiomqtt.Client("127.0.0.1", port, **login):
                    pass
        async with aiomqtt.Client("127.0.0.1", port, username="ems-controller", password=controller_password) as ems:
            await ems.subscribe("ems/+/cmd/+", qos=1)
            async with aiomqtt.Client("127.0.0.1", port, username="grafana", password=viewer) as dashboard:
                await dashboard.publish("ems/site/cmd/set_mode", b'{"mode": "standby"}', qos=1)  # read-only user
            async with aiomqtt.Client("127.0.0.1", port, username="operator", password=operator) as op:
                await op.publish("ems/site/cmd/replan", b'{"id": "allowed"}', qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(ems.messages))
        assert str(message.topic) == "ems/site/cmd/replan" and message.payload == b'{"id": "allowed"}'
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_the_shipped_tls_listener_serves_passwords_over_tls_only(secrets: tuple[Path, Path, str],
                                                                       tmp_path: Path) -> None:
    _, passwd, stdout = secrets
    ca, crt, key = make_tls_files(tmp_path)
    proc, port = shipped_broker(tmp_path, passwd, tls=(ca, crt, key))
    tls = aiomqtt.TLSParameters(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    try:
        await asyncio.to_thread(wait_for_port, port, proc)
        with pytest.raises(MqttCodeError):
            async with aiomqtt.Client("127.0.0.1", port, tls_params=tls):
                pass
        async with aiomqtt.Client("127.0.0.1", port, username="operator", password=printed_password(stdout, "operator"),
                                  tls_params=tls) as client:
            await client.publish("ems/site/cmd/replan", b"{}", qos=1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_secret_warnings_name_what_the_enabled_sinks_lack() -> None:
    settings = TelemetrySettings.model_validate({
        "influxdb": {"enabled": True},
        "mqtt": {"enabled": True, "host": "broker.plant.lan", "username": "ems-controller",
                 "password_env": "EMS_MQTT_PASSWORD"}})
    assert secret_warnings(settings, {}) == [
        "telemetry.influxdb.token_env: environment variable EMS_INFLUX_TOKEN is not set: InfluxDB refuses writes "
        "without a token",
        "telemetry.mqtt.password_env: environment variable EMS_MQTT_PASSWORD is not set: user ems-controller cannot "
        "log in to the broker",
        "telemetry.mqtt.tls: not set for host broker.plant.lan: the password and the commands cross the network in "
        "clear; use the broker's TLS listener (port 8883, tls: {ca_file: ...})"]
    secure = settings.model_copy(update={"mqtt": MqttSettings(enabled=True, host="broker.plant.lan", port=8883,
                                                              username="ems-controller", password_env="P",
                                                              tls=MqttTls())})
    assert secret_warnings(secure, {"EMS_INFLUX_TOKEN": "a" * 48, "P": "b" * 32}) == []
    placeholder = secret_warnings(secure, {"EMS_INFLUX_TOKEN": "change-me-influx-token", "P": "x"})
    assert placeholder == ["telemetry.influxdb.token_env: EMS_INFLUX_TOKEN is still the example placeholder: "
                           "generate secrets with deploy/init-secrets.sh"]
    anonymous = TelemetrySettings.model_validate({"mqtt": {"enabled": True}, "dashboard": {"enabled": False}})
    assert secret_warnings(anonymous, {}) == [
        "telemetry.mqtt.username: not set: the shipped broker config refuses anonymous clients"]
    assert secret_warnings(TelemetrySettings(), {}) == []                   # nothing enabled needs a secret


def test_a_scada_server_open_to_every_client_of_the_network_is_warned_about() -> None:
    """The SCADA server takes mode requests and battery setpoints from whoever connects (Modbus has no passwords):
    on a network address without allowed_clients, config check said OK."""
    open_to_all = TelemetrySettings.model_validate({"dashboard": {"enabled": False},
                                                    "scada": {"enabled": True, "host": "0.0.0.0", "port": 502}})
    assert secret_warnings(open_to_all, {}) == [
        "telemetry.scada.allowed_clients: empty while the SCADA server listens on 0.0.0.0: any host that reaches "
        "port 502 may request modes, battery setpoints and SOC reserves (Modbus has no passwords); list the "
        "SCADA's addresses"]
    listed = open_to_all.model_copy(update={"scada": open_to_all.scada.model_copy(
        update={"allowed_clients": ("10.0.5.20",)})})
    loopback = open_to_all.model_copy(update={"scada": open_to_all.scada.model_copy(update={"host": "127.0.0.1"})})
    assert secret_warnings(listed, {}) == [] and secret_warnings(loopback, {}) == []


def test_secret_warnings_name_tls_files_that_are_not_there(tmp_path: Path) -> None:
    """A CA, certificate or key named at an absolute path that is not there: that sink cannot start TLS (config
    check said OK). A relative path is the service's working directory's, not judged from here."""
    ca = tmp_path / "ca.crt"
    settings = TelemetrySettings.model_validate({
        "mqtt": {"enabled": True, "host": "broker.plant.lan", "port": 8883, "username": "u", "password_env": "P",
                 "tls": {"ca_file": str(ca)}},
        "dashboard": {"enabled": True, "tls": {"cert": str(tmp_path / "site.crt"), "key": "site.key"}}})
    assert secret_warnings(settings, {"P": "b" * 32}) == [
        f"telemetry.mqtt.tls.ca_file: {ca} is not there: that sink cannot start TLS",
        f"telemetry.dashboard.tls.cert: {tmp_path / 'site.crt'} is not there: that sink cannot start TLS"]
    ca.write_text("PEM")
    (tmp_path / "site.crt").write_text("PEM")
    assert secret_warnings(settings, {"P": "b" * 32}) == []


def test_config_check_warns_but_passes(secrets: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site = DEPLOY / "examples" / "nam-cau-kien-site.yaml"
    for name in CONTROLLER_SECRETS:
        monkeypatch.delenv(name, raising=False)
    assert ems_main(["config", "check", str(site)]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out and "warning: telemetry.mqtt.password_env: environment variable EMS_MQTT_PASSWORD" in out.err
    assert ems_main(["config", "check", str(site), "--env-file", str(secrets[0])]) == 0
    assert "warning" not in capsys.readouterr().err
    assert os.environ.get("EMS_MQTT_PASSWORD") is None                      # the file is read, not exported
