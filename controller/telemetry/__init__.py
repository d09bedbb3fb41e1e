"""Telemetry sinks (InfluxDB through a disk outbox, MQTT, the live dashboard, the SCADA Modbus server) and their wiring.

The controller's service calls :func:`start_telemetry` once with the ``telemetry:`` settings and
its bus; each enabled sink gets its own bus subscription (bounded, drop-oldest, so a slow sink
never slows the cycle) and a pump task that hands messages to it. :meth:`Telemetry.aclose` stops
everything within a bounded time. Schema of every topic, measurement and endpoint:
docs/telemetry.md.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the sinks pull in influxdb-client, aiomqtt, uvicorn: imported when started, so that
    # reading a site file (controller.config imports controller.telemetry.config) stays light
    from controller.api.roles import Token, TokenStore
    from controller.api.settings import RuntimeSettings
    from controller.audit import AuditLog
    from controller.bus import Bus, Subscription
    from controller.dashboard.app import DashboardHub, DashboardServer
    from controller.scada.server import ScadaServer
    from controller.telemetry.config import DashboardSettings, ScadaSettings, TelemetrySettings
    from controller.telemetry.influx import AlarmCallback, InfluxSink
    from controller.telemetry.mqtt import MqttSink
    from controller.telemetry.remote import ApplyFn, CommandIntake
    from ems.clock import Clock
    from optimizer.external_forecast import ExternalForecasts
    from optimizer.tariff import SiteTariff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TelemetryContext:
    """What the sinks need from the controller.

    Attributes
    ----------
    site : str
        Site name (MQTT topic level, InfluxDB ``site`` tag, dashboard title).
    timezone : str
        Site IANA time zone (dashboard).
    clock : Clock
        Site clock (command TTLs, timestamps of self-monitoring points).
    apply : ApplyFn
        ``Controller.apply``: remote commands from MQTT, the dashboard and SCADA go through it (it
        records each in the audit log).
    state_dir : Path
        Where a relative ``influxdb.outbox_path`` lives.
    currency : str, optional
        ISO 4217 code of the tariff currency, for the dashboard (e.g. VND, JPY).
    on_alarm : AlarmCallback, optional
        ``(code, active, message)`` on transitions of telemetry alarms (InfluxDB unreachable,
        outbox overflow, quarantined points, dashboard not serving, MQTT command queue full).
    tariff : SiteTariff, optional
        The site's tariff (the dashboard shades its named periods).
    audit : AuditLog, optional
        The controller's audit log: commands refused before they reach ``apply`` are recorded there, and
        the dashboard shows the recent entries.
        The site's tariff (the dashboard shades its named periods; the REST API's ``/tariff`` and energy cost).
    cycle_s : float
        The control cycle [s of site time] (the REST API's readiness).
    config : Mapping, optional
        The site file as read (the REST API's ``/config``, secrets redacted).
    settings : RuntimeSettings, optional
        Run-time settings an admin may change over the REST API.
    forecasts : ExternalForecasts, optional
        Where forecasts from outside are submitted (MQTT ``forecast``, the REST API's ``POST /forecasts``;
        docs/data.md); each submission is recorded in ``audit``.
    """

    site: str
    timezone: str
    clock: Clock
    apply: ApplyFn
    state_dir: Path
    currency: str | None = None
    on_alarm: AlarmCallback | None = None
    tariff: SiteTariff | None = None
    audit: AuditLog | None = None
    cycle_s: float = 1.0
    config: Mapping[str, Any] | None = None
    settings: RuntimeSettings | None = None
    forecasts: ExternalForecasts | None = None


class Telemetry:
    """The running sinks (each ``None`` when disabled)."""

    def __init__(self, intake: CommandIntake):
        self.intake = intake
        self.influx: InfluxSink | None = None
        self.mqtt: MqttSink | None = None
        self.dashboard: DashboardServer | None = None
        self.hub: DashboardHub | None = None
        self.scada: ScadaServer | None = None
        self._pumps: list[asyncio.Task[None]] = []

    def pump(self, subscription: Subscription, offer: Callable[[str, Mapping[str, Any]], None], name: str) -> None:
        """Feed ``subscription`` to ``offer`` on a task of its own."""
        self._pumps.append(asyncio.create_task(_pump(subscription, offer, name), name=f"telemetry-pump-{name}"))

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop every sink; each is bounded by ``timeout_s`` and they stop concurrently."""
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        sinks = (self.scada, self.dashboard, self.mqtt, self.influx)
        closers = [sink.aclose(timeout_s) for sink in sinks if sink is not None]
        for result in await asyncio.gather(*closers, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("telemetry shutdown: %s", result)


async def _pump(subscription: Subscription, offer: Callable[[str, Mapping[str, Any]], None], name: str) -> None:
    try:
        while True:
            message = await subscription.get()
            try:
                offer(message.kind, message.payload)
            except Exception:  # a sink's bug must not stop the others (or the controller)
                log.exception("telemetry sink %s failed on a %s message", name, message.kind)
    finally:
        subscription.close()


async def start_telemetry(settings: TelemetrySettings, bus: Bus, ctx: TelemetryContext) -> Telemetry:
    """Start the enabled sinks on the running loop.

    Raises ``OSError``/``sqlite3.Error`` when the outbox file cannot be opened (a deployment error
    to fix before running). A dashboard that cannot bind its port is logged and raised as the
    ``telemetry.dashboard_unavailable`` alarm; control goes on without it. The dashboard's app also
    serves the Prometheus metrics (``/metrics``).
    """
    from controller.api.app import ApiContext, create_api
    from controller.api.roles import Lockout
    from controller.bus import KINDS, STATE
    from controller.dashboard.app import HISTORY_POINTS, DashboardHub, DashboardServer, create_app
    from controller.dashboard.history import FILE_NAME, HistoryStore
    from controller.telemetry.config import secret_from_env
    from controller.telemetry.forecast_intake import ForecastIntake
    from controller.telemetry.influx import InfluxSink, InfluxWriter
    from controller.telemetry.metrics import ControllerMetrics
    from controller.telemetry.mqtt import MqttSink
    from controller.telemetry.outbox import Outbox
    from controller.telemetry.remote import CommandIntake

    record = ctx.audit.record if ctx.audit is not None else None
    telemetry = Telemetry(CommandIntake(ctx.apply, ctx.clock, site=ctx.site, audit=record))
    forecasts = None if ctx.forecasts is None else ForecastIntake(ctx.forecasts, ctx.clock, site=ctx.site,
                                                                  audit=record)
    influx = settings.influxdb
    if influx.enabled:
        path = influx.outbox_path if influx.outbox_path.is_absolute() else ctx.state_dir / influx.outbox_path
        outbox = await asyncio.to_thread(Outbox, path, influx.max_outbox_points)
        writer = InfluxWriter(influx.url, influx.org, influx.bucket, secret_from_env(influx.token_env),
                              influx.timeout_s)
        telemetry.influx = InfluxSink(ctx.site, outbox, writer, ctx.clock, batch_size=influx.batch_size,
                                      max_backoff_s=influx.max_backoff_s, on_alarm=ctx.on_alarm)
        telemetry.influx.start()
        telemetry.pump(bus.subscribe(KINDS), telemetry.influx.offer, "influxdb")
    if settings.mqtt.enabled:
        telemetry.mqtt = MqttSink(settings.mqtt, ctx.site, telemetry.intake, on_alarm=ctx.on_alarm,
                                  forecasts=forecasts)
        mqtt_offer = _with_command_counters(telemetry.intake, telemetry.mqtt.offer)
        _seed(bus, mqtt_offer)
        telemetry.mqtt.start()
        telemetry.pump(bus.subscribe(KINDS), mqtt_offer, "mqtt")
    dash = settings.dashboard
    if dash.enabled:
        try:
            store: HistoryStore | None = HistoryStore(ctx.state_dir / FILE_NAME, HISTORY_POINTS)
        except (OSError, sqlite3.Error) as exc:   # earlier days are lost to the charts; nothing else is
            log.error("dashboard history unavailable (%s): only today is shown", exc)
            store = None
        hub = DashboardHub(ctx.timezone, tariff=ctx.tariff, store=store)
        if ctx.audit is not None:
            _feed_audit(ctx.audit, hub)
        hub_offer = _with_command_counters(telemetry.intake, hub.offer)
        _seed(bus, hub_offer)
        sink = telemetry.influx
        metrics = ControllerMetrics((lambda: sink.backlog) if sink is not None else None)
        metrics_offer = _with_command_counters(telemetry.intake, metrics.offer)
        tokens, lockout = access_tokens(dash, ctx), Lockout()
        api = create_api(ApiContext(hub=hub, intake=telemetry.intake, tokens=tokens, lockout=lockout, clock=ctx.clock,
                                    site=ctx.site, timezone=ctx.timezone, cycle_s=ctx.cycle_s, tariff=ctx.tariff,
                                    config=ctx.config, settings=ctx.settings, audit=ctx.audit,
                                    forecasts=ctx.forecasts))
        app = create_app(hub, dash, site=ctx.site, timezone=ctx.timezone, currency=ctx.currency,
                         intake=telemetry.intake, tokens=tokens, lockout=lockout, metrics=metrics, api=api)
        server = DashboardServer(app, hub, dash.host, dash.port, tls=dash.tls)
        try:
            await server.start()
        except (OSError, RuntimeError) as exc:
            log.error("dashboard on %s:%d not available: %s", dash.host, dash.port, exc)
            if ctx.on_alarm is not None:
                ctx.on_alarm("telemetry.dashboard_unavailable", True, f"dashboard not serving: {exc}")
        else:
            telemetry.hub, telemetry.dashboard = hub, server
            telemetry.pump(bus.subscribe(KINDS), hub_offer, "dashboard")
            telemetry.pump(bus.subscribe((STATE,)), metrics_offer, "metrics")
            log.info("dashboard on %s://%s:%d/ (REST API at /api/v1, %d access tokens)", server.scheme, dash.host,
                     server.port, len(tokens.tokens))
    if settings.scada.enabled:
        await _start_scada(settings.scada, bus, telemetry, ctx)
    return telemetry


def tokens_file_path(settings: DashboardSettings, state_dir: Path, environ: Mapping[str, str]) -> Path | None:
    """The tokens file: ``tokens_file``, else ``$EMS_API_TOKENS_FILE``; a relative path is in the state directory."""
    from controller.api.roles import TOKENS_FILE_ENV

    path = settings.tokens_file or (Path(environ[TOKENS_FILE_ENV]) if environ.get(TOKENS_FILE_ENV) else None)
    return path if path is None or path.is_absolute() else state_dir / path


def read_tokens_file(path: Path) -> tuple[list[Token], str | None]:
    """The tokens of the file at ``path``, and why it gives none (not there, unreadable, a bad line) or None."""
    from controller.api.roles import TokenError, read_file

    if not path.exists():
        return [], f"{path}: no such file (make it with `ems tokens add NAME --role ROLE --file {path}`)"
    try:
        return read_file(path), None
    except TokenError as exc:
        return [], str(exc)


def access_tokens(settings: DashboardSettings, ctx: TelemetryContext) -> TokenStore:
    """The REST API's and dashboard's tokens: the tokens file (``tokens_file``, relative to the state directory,
    else ``$EMS_API_TOKENS_FILE``), ``$EMS_API_TOKENS`` and the dashboard token (operator). A source that cannot
    be read is logged and raised as the ``telemetry.tokens_invalid`` alarm, and left out; the rest still count."""
    import os

    from controller.api.roles import TOKENS_ENV, TokenError, TokenStore, read_env
    from controller.telemetry.config import secret_from_env

    tokens = []
    path = tokens_file_path(settings, ctx.state_dir, os.environ)
    problems = []
    if path is not None:
        from_file, problem = read_tokens_file(path)
        tokens += from_file
        problems += [problem] if problem else []
    try:
        tokens += read_env(os.environ.get(TOKENS_ENV, ""))
    except TokenError as exc:
        problems.append(str(exc))
    for problem in problems:
        log.error("access tokens not loaded: %s", problem)
    if problems and ctx.on_alarm is not None:
        ctx.on_alarm("telemetry.tokens_invalid", True, "access tokens not loaded: " + " | ".join(problems))
    return TokenStore(tokens, secret_from_env(settings.token_env))


async def _start_scada(settings: ScadaSettings, bus: Bus, telemetry: Telemetry, ctx: TelemetryContext) -> None:
    """Start the SCADA Modbus server; one that cannot bind is logged and raised as the
    ``telemetry.scada_unavailable`` alarm, and control goes on without it."""
    from controller.bus import STATE
    from controller.scada.server import ScadaServer

    scada = ScadaServer(settings, telemetry.intake)
    _seed(bus, scada.offer)
    try:
        await scada.start()
    except (OSError, RuntimeError) as exc:
        log.error("SCADA Modbus server on %s:%d not available: %s", settings.host, settings.port, exc)
        if ctx.on_alarm is not None:
            ctx.on_alarm("telemetry.scada_unavailable", True, f"SCADA Modbus server not serving: {exc}")
        return
    telemetry.scada = scada
    telemetry.pump(bus.subscribe((STATE,), maxsize=2), scada.offer, "scada")
    log.info("SCADA Modbus server on %s:%d", settings.host, scada.port)


def _feed_audit(audit: AuditLog, hub: DashboardHub) -> None:
    """Show the newest audit entries on the dashboard, and each new one as it is recorded."""
    from controller.dashboard.app import RECENT_COMMANDS

    try:
        for entry in reversed(audit.entries(limit=RECENT_COMMANDS)):
            hub.offer("audit", entry)
    except sqlite3.Error as exc:  # the list starts empty; the log itself is unaffected
        log.error("dashboard: recent commands not read from the audit log: %s", exc)
    audit.listeners.append(lambda entry: hub.offer("audit", entry))


def _with_command_counters(intake: CommandIntake, offer: Callable[[str, Mapping[str, Any]], None],
                           ) -> Callable[[str, Mapping[str, Any]], None]:
    """``offer`` that adds the remote-command counters (``CommandIntake.counters``) to each state as
    ``commands``: accepted, rejected, busy, errors, dropped since start."""
    def offer_with_counters(kind: str, payload: Mapping[str, Any]) -> None:
        offer(kind, {**payload, "commands": intake.counters()} if kind == "state" else payload)
    return offer_with_counters


def _seed(bus: Bus, offer: Callable[[str, Mapping[str, Any]], None]) -> None:
    """Hand a late sink the latest plan and state already published."""
    for kind in ("plan", "state"):
        message = bus.latest(kind)
        if message is not None:
            offer(message.kind, message.payload)
