"""Which secrets the enabled telemetry sinks need and do not have (``ems config check`` warns about them).

A site file names the environment variables that hold secrets (``token_env``, ``password_env``); the
service gets them from its environment file (systemd ``EnvironmentFile=``, docker-compose ``env_file``).
These are warnings, not errors: the controller runs without them, but the sink that needs one cannot work
(InfluxDB refuses writes without a token, the shipped broker refuses clients without a password).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from controller.telemetry.config import TelemetrySettings

PLACEHOLDER = "change-me"
"""Values in ``deploy/docker/ems.env.example`` start with this."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an environment file (comments and blank lines skipped, one pair of quotes
    around a value removed), as systemd and docker-compose read it."""
    values: dict[str, str] = {}
    for line in Path(path).read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def secret_warnings(settings: TelemetrySettings, environ: Mapping[str, str]) -> list[str]:
    """One sentence per secret an enabled sink needs that ``environ`` lacks, or per placeholder value, per
    password that would cross the network in clear, per TLS file (absolute path) that is not there, and for a SCADA
    server open to any client of the network; each names the site file field."""
    warnings: list[str] = []

    def check(field: str, name: str | None, what: str) -> None:
        if not name:
            warnings.append(f"telemetry.{field}: not set: {what}")
        elif not environ.get(name):
            warnings.append(f"telemetry.{field}: environment variable {name} is not set: {what}")
        elif environ[name].startswith(PLACEHOLDER):
            warnings.append(f"telemetry.{field}: {name} is still the example placeholder: generate secrets with "
                            "deploy/init-secrets.sh")

    if settings.influxdb.enabled:
        check("influxdb.token_env", settings.influxdb.token_env, "InfluxDB refuses writes without a token")
    mqtt = settings.mqtt
    if mqtt.enabled:
        if mqtt.username is None:
            warnings.append("telemetry.mqtt.username: not set: the shipped broker config refuses anonymous clients")
        else:
            check("mqtt.password_env", mqtt.password_env, f"user {mqtt.username} cannot log in to the broker")
        if mqtt.tls is None and not _loopback(mqtt.host):
            warnings.append(f"telemetry.mqtt.tls: not set for host {mqtt.host}: the password and the commands cross "
                            "the network in clear; use the broker's TLS listener (port 8883, tls: {ca_file: ...})")
    dashboard = settings.dashboard
    if dashboard.enabled and dashboard.token_env and environ.get(dashboard.token_env, "").startswith(PLACEHOLDER):
        warnings.append(f"telemetry.dashboard.token_env: {dashboard.token_env} is still the example placeholder: "
                        "generate secrets with deploy/init-secrets.sh")
    scada = settings.scada
    if scada.enabled and not scada.allowed_clients and not _loopback(scada.host):
        warnings.append(f"telemetry.scada.allowed_clients: empty while the SCADA server listens on {scada.host}: any "
                        f"host that reaches port {scada.port} may request modes, battery setpoints and SOC reserves "
                        "(Modbus has no passwords); list the SCADA's addresses")
    files = {}
    if mqtt.enabled and mqtt.tls is not None:
        files.update({"mqtt.tls.ca_file": mqtt.tls.ca_file, "mqtt.tls.cert": mqtt.tls.cert,
                      "mqtt.tls.key": mqtt.tls.key})
    if dashboard.enabled and dashboard.tls is not None:
        files.update({"dashboard.tls.cert": dashboard.tls.cert, "dashboard.tls.key": dashboard.tls.key})
    for field, path in files.items():  # a relative path is the service's working directory's: not judged here
        if path is not None and path.is_absolute() and not path.is_file():
            warnings.append(f"telemetry.{field}: {path} is not there: that sink cannot start TLS")
    return warnings


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
