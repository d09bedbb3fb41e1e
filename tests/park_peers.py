"""The park tier on loopback for tests and benchmarks/bench_park.py: a park mosquitto (passwords and
the shipped deploy/mosquitto/park-acl), one site mosquitto per site bridged into it by the shipped
deploy/mosquitto/park-bridge.conf (placeholders filled in, TLS lines left out), and site publishers
that are the controller's real telemetry (``start_telemetry``: MQTT sink and InfluxDB sink fed by a
``controller.bus.Bus``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from controller.bus import Bus
from controller.commands import Commands
from controller.modes import Mode, ModeMachine
from controller.telemetry import Telemetry, TelemetryContext, start_telemetry
from controller.telemetry.config import DashboardSettings, InfluxSettings, MqttSettings, TelemetrySettings
from ems.clock import ManualClock
from tests.peers import Mosquitto

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
PARK = "test-park"
TLS_OPTIONS = ("bridge_cafile", "bridge_certfile", "bridge_keyfile", "bridge_insecure", "bridge_require_ocsp")
"""Lines of the shipped bridge left out on loopback (the park listener here is plain MQTT)."""
FORCED_BY_PEER = ("persistence ",)
"""Lines the :class:`Mosquitto` peer already writes."""


def site_password(site: str) -> str:
    return f"pw-{site}"


def park_broker(workdir: Path, sites: list[str]) -> Mosquitto:
    """The park broker: one user per site (user name = site id), ``park-operator``, the shipped ACL."""
    workdir.mkdir(parents=True, exist_ok=True)
    users = {site: site_password(site) for site in sites} | {"park-operator": "op-secret"}
    broker = Mosquitto(workdir, users=users, acl=(DEPLOY / "park-acl").read_text(), persistence=True)
    broker.conf.write_text(broker.conf.read_text() + "max_queued_messages 100000\n")
    return broker


def bridge_conf(site: str, park: Mosquitto, password: str | None = None, restart_s: int = 1,
                edge: str | None = None) -> str:
    """The shipped bridge for ``site`` towards ``park`` (loopback, no TLS, quick reconnect). ``edge``
    names the simulated edge PC in the bridge's client id (mosquitto's default uses the host name,
    which every simulated site here shares)."""
    text = (DEPLOY / "park-bridge.conf").read_text()
    text = (text.replace("@PARK_HOST@:8883", f"{park.host}:{park.port}").replace("@PARK@", PARK)
            .replace("@SITE@", site)
            .replace("CHANGE-ME-site-password-from-the-park", password or site_password(site))
            .replace("restart_timeout 5 120", f"restart_timeout {restart_s} {restart_s}"))
    lines = [line for line in text.splitlines()
             if not line.startswith(TLS_OPTIONS) and not line.startswith(FORCED_BY_PEER)]
    if edge is not None:
        lines.insert(lines.index(f"connection park-{site}") + 1, f"remote_clientid park-{site}.{edge}")
    return "\n".join(lines) + "\n"


def site_broker(workdir: Path, site: str, park: Mosquitto, password: str | None = None) -> Mosquitto:
    """A site's own broker (anonymous on loopback, persistent) with the park bridge."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir, persistence=True)
    broker.conf.write_text(broker.conf.read_text() + bridge_conf(site, park, password, edge=workdir.name))
    return broker


@dataclass
class SitePublisher:
    """One simulated site: the controller's bus, its command side and its running telemetry."""

    site: str
    bus: Bus
    clock: ManualClock
    modes: ModeMachine
    commands: Commands
    telemetry: Telemetry


async def start_site(site: str, broker: Mosquitto | None, influx_url: str, state_dir: Path, t0: datetime, *,
                     park_commands: bool = False, min_state_interval_s: float = 0.0,
                     batch_size: int = 5000) -> SitePublisher:
    """Start the real telemetry of ``site`` (MQTT to its broker, InfluxDB to the central database; no
    ``broker``: InfluxDB only)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    clock = ManualClock(t0)
    modes = ModeMachine(Mode.SELF_CONSUMPTION, t0)
    commands = Commands(modes, clock, (500.0, 500.0), (10.0, 95.0), lambda _t: None)
    settings = TelemetrySettings(
        mqtt=MqttSettings(enabled=True, host=broker.host, port=broker.port, min_state_interval_s=min_state_interval_s,
                          max_backoff_s=0.5, park_commands=park_commands) if broker else MqttSettings(enabled=False),
        influxdb=InfluxSettings(enabled=True, url=influx_url, token_env=None, max_backoff_s=0.5,
                                batch_size=batch_size),
        dashboard=DashboardSettings(enabled=False))
    bus = Bus()
    ctx = TelemetryContext(site=site, timezone="Asia/Ho_Chi_Minh", clock=clock, apply=commands.apply,
                           state_dir=state_dir)
    telemetry = await start_telemetry(settings, bus, ctx)
    return SitePublisher(site, bus, clock, modes, commands, telemetry)
