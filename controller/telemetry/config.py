"""The ``telemetry:`` section of a site file: MQTT, InfluxDB (with its disk outbox), the dashboard, the SCADA server.

Secrets never live in the file: it names the environment variables that hold them
(``password_env``, ``token_env``). Every sink is off unless enabled, except the dashboard, which
is on and bound to 127.0.0.1 (read-only unless a control token is set).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CYCLE_S = 1.0
"""The controller's default cycle. [s]"""

POINTS_PER_CYCLE = 3
"""Line-protocol points the InfluxDB sink writes per cycle on average: ``ems_state``,
``ems_measurement`` and, amortised, plan steps, alarms, quality and self-monitoring lines
(docs/telemetry.md). Used only to size the default outbox bound."""

DEFAULT_MAX_OUTBOX_POINTS = int(7 * 86_400 / DEFAULT_CYCLE_S * POINTS_PER_CYCLE)
"""Seven days of telemetry at the default cycle (1,814,400 points, roughly 400 MB of SQLite)."""


class _Strict(BaseModel):
    """Unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def secret_from_env(name: str | None) -> str | None:
    """The value of environment variable ``name`` (``None`` if no name is configured or it is unset/empty)."""
    if not name:
        return None
    return os.environ.get(name) or None


class MqttTls(_Strict):
    """TLS towards the broker; file paths are PEM files readable by the controller's user."""

    ca_file: Path | None = Field(default=None, description="CA bundle that signed the broker's certificate")
    cert: Path | None = Field(default=None, description="Client certificate (mutual TLS)")
    key: Path | None = Field(default=None, description="Client private key (mutual TLS)")

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together")
        return self


class MqttSettings(_Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password_env: str | None = Field(default=None, description="Environment variable holding the password")
    tls: MqttTls | None = None
    client_id: str | None = Field(default=None, description="MQTT client identifier; default ems-<site>")
    topic_prefix: str = Field(default="ems", pattern=r"^[A-Za-z0-9_-]+$",
                              description="Topics are <topic_prefix>/<site>/...")
    min_state_interval_s: float = Field(default=5.0, ge=0,
                                        description="Minimum time between two state publications [s, real time]")
    keepalive_s: int = Field(default=30, ge=5, le=600, description="[s]")
    max_backoff_s: float = Field(default=30.0, gt=0, description="Longest wait between reconnect attempts [s]")
    command_queue: int = Field(default=32, ge=1, le=1000,
                               description="Commands waiting to be handled; one more is answered 'busy'")
    claim_site: bool = Field(default=True,
                             description="Claim the site id on the broker (retained <prefix>/<site>/instance) and "
                                         "refuse to publish while another live instance holds it (docs/fleet.md)")
    park_commands: bool = Field(default=False,
                                description="Act on commands from the park uplink (<prefix>/<site>/park/cmd/<name>, "
                                            "bridged from park/<park>/<site>/cmd/<name>); off = each is answered "
                                            "refused")


class InfluxSettings(_Strict):
    enabled: bool = False
    url: str = "http://127.0.0.1:8086"
    org: str = "ems"
    bucket: str = "ems"
    token_env: str | None = Field(default="EMS_INFLUX_TOKEN", description="Environment variable holding the token")
    outbox_path: Path = Field(default=Path("telemetry-outbox.sqlite"),
                              description="SQLite outbox; a relative path is resolved against the state directory")
    max_outbox_points: int = Field(default=DEFAULT_MAX_OUTBOX_POINTS, ge=1000,
                                   description="Bound of the outbox; beyond it the oldest points are dropped")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="Points per HTTP write")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Bound on one HTTP write [s]")
    max_backoff_s: float = Field(default=60.0, gt=0, description="Longest wait between retries while down [s]")


class DashboardTls(_Strict):
    """HTTPS for the dashboard and the REST API (uvicorn's ``ssl_certfile`` / ``ssl_keyfile``); PEM files."""

    cert: Path = Field(description="Server certificate chain (PEM)")
    key: Path = Field(description="Its private key (PEM), readable by the controller's user only")


class DashboardSettings(_Strict):
    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="Bind address; 0.0.0.0 exposes the dashboard on the LAN")
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host names and addresses the dashboard is reached by (Host header check against "
                                "DNS rebinding), besides localhost and the bind address; '*' turns the check off")
    port: int = Field(default=8080, ge=0, le=65535, description="0 = any free port (tests); see the log")
    token_env: str | None = Field(default="EMS_DASHBOARD_TOKEN",
                                  description="Environment variable holding the bearer token for control actions; "
                                              "unset = read-only dashboard; it counts as an operator token "
                                              "named 'dashboard' (docs/integration.md)")
    tokens_file: Path | None = Field(
        default=None, description="Hashed access tokens of the REST API and the dashboard (`ems tokens add`); a "
                                  "relative path is resolved against the state directory; default "
                                  "$EMS_API_TOKENS_FILE, else none")
    tls: DashboardTls | None = Field(default=None, description="Serve HTTPS with this certificate and key")
    language: Literal["auto", "en", "vi", "ja"] = Field(
        default="auto", description="auto = the browser's language")
    locale: str | None = Field(default=None, description="BCP 47 locale for numbers and times, e.g. vi-VN; "
                                                        "default follows the language")

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not host or ("*" in host and host != "*" and not (host.startswith("*.") and "*" not in host[1:])):
                raise ValueError(f"{host!r}: a host name, an address, '*.domain' or '*'")
        return hosts


class ScadaSettings(_Strict):
    """The Modbus TCP server for the plant SCADA (docs/integration.md)."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", description="Bind address; 0.0.0.0 serves the LAN")
    port: int = Field(default=5020, ge=0, le=65535, description="502 is the Modbus port (needs privileges); "
                                                               "0 = any free port (tests)")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (device) id answered; 0 = any")
    allowed_clients: tuple[str, ...] = Field(
        default=(), description="Client addresses or networks (CIDR) allowed to connect; empty = any")
    write_timeout_s: int = Field(default=60, ge=1, le=3600,
                                 description="A manual setpoint lapses this long after its last write unless "
                                             "the SCADA wrote another expiry [s of site time]")
    command_ttl_s: float = Field(default=3600.0, gt=0, le=7 * 86_400,
                                 description="How long a mode request or SOC reserve written by the SCADA holds "
                                             "[s of site time]")

    @field_validator("allowed_clients")
    @classmethod
    def _networks(cls, clients: tuple[str, ...]) -> tuple[str, ...]:
        for client in clients:
            try:
                ipaddress.ip_network(client, strict=False)
            except ValueError as exc:
                raise ValueError(f"{client!r}: an IP address or network, e.g. 10.0.0.5 or 10.0.0.0/24") from exc
        return clients


class TelemetrySettings(_Strict):
    """The ``telemetry:`` section."""

    mqtt: MqttSettings = MqttSettings()
    influxdb: InfluxSettings = InfluxSettings()
    dashboard: DashboardSettings = DashboardSettings()
    scada: ScadaSettings = ScadaSettings()
