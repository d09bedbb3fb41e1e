"""The live dashboard: a Starlette app served by uvicorn inside the controller's event loop.

Read-only by default and bound to 127.0.0.1 (``telemetry.dashboard``). The page (``static/``) gets
its data from:

* ``GET /api/config``: site name, time zone, language and locale, currency, whether control is on;
* ``GET /api/snapshot``: latest state and plan, today's measured history, recent alarm transitions;
* ``GET /api/periods?day=YYYY-MM-DD``: the tariff's named periods over a site-local day (default: the day
  of the latest state), for shading the charts (:mod:`controller.dashboard.periods`);
* ``GET /api/history?day=YYYY-MM-DD&span=day|week|month``: stored history of earlier days
  (:mod:`controller.dashboard.history`, a bounded SQLite file in the state directory);
* ``GET /api/events``: Server-Sent Events ``state``, ``plan``, ``alarm`` as the bus publishes them, and
  ``audit`` for each command recorded in the audit log (the snapshot's ``commands``: the latest ones);
* ``GET /metrics``: Prometheus metrics (``controller.telemetry.metrics``; docs/integration.md);
* ``/api/v1/...``: the REST API with its OpenAPI document (:mod:`controller.api.app`), when given;
* ``POST /api/cmd/{name}``: a command (same JSON as MQTT, ``schemas/cmd_<name>.json``), only with
  ``Authorization: Bearer <token>`` of an operator or admin (:mod:`controller.api.roles`; the
  ``EMS_DASHBOARD_TOKEN`` counts as an operator token) and only when such a token is configured. A client
  address with repeated wrong tokens is locked out (429), as on the REST API. The header cannot be sent
  cross-site without a CORS preflight the app never grants, which also rules out CSRF. The body is
  read only up to the intake's size limit (413 beyond it); every other refusal is a 422 with the
  reason, and no input gives a 500.

Every request must name an allowed host in its ``Host`` header (Starlette's
``TrustedHostMiddleware``; 400 otherwise): localhost, the bind address, and the configured
``allowed_hosts``. A web page on another origin that re-binds its own DNS name to this address
(DNS rebinding) sends its own name and is refused.

History: states are averaged into one sample per ``history_step_s`` of site time and kept for the
current local day (site time zone), so the page can draw the plan against what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Generator, Mapping
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from controller.api.app import API_PREFIX
from controller.api.roles import Lockout, Role, TokenStore
from controller.dashboard.health import device_health
from controller.dashboard.history import HistoryStore
from controller.dashboard.history_csv import history_csv
from controller.dashboard.periods import day_periods
from controller.telemetry.config import DashboardSettings, DashboardTls
from controller.telemetry.metrics import CONTENT_TYPE, ControllerMetrics
from controller.telemetry.remote import MAX_PAYLOAD_BYTES, CommandIntake
from optimizer.tariff import SiteTariff

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
FLOW_POINTS = ("pv_kw", "load_kw", "grid_kw", "battery_kw", "soc_pct")
"""Power-flow values kept in the history, in this order after the timestamp."""
PLAN_POINTS = ("plan_battery_kw", "plan_grid_kw", "plan_soc_pct")
"""The plan step in force when each history sample was taken (the state's ``plan``), after the flows."""
HISTORY_POINTS = FLOW_POINTS + PLAN_POINTS
KEEPALIVE_S = 15.0
RECENT_COMMANDS = 20
"""Audit entries the page shows (the newest)."""
STREAM_GRACE_S = 1.0
"""How long event streams get to end by themselves at shutdown before their connections are cut. [s]"""
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BIND = ("0.0.0.0", "::", "")


def allowed_hosts(settings: DashboardSettings) -> list[str]:
    """Host names the dashboard answers to: localhost, its bind address (unless it binds every
    interface), and ``settings.allowed_hosts`` (``*`` turns the check off). IPv6 literals in brackets."""
    hosts = [*LOCAL_HOSTS]
    for host in ([] if settings.host in WILDCARD_BIND else [settings.host]) + list(settings.allowed_hosts):
        name = f"[{host}]" if ":" in host and not host.startswith("[") else host
        if name.lower() not in hosts:
            hosts.append(name.lower())
    return hosts


def power_flows(state: Mapping[str, Any]) -> dict[str, float | None]:
    """PV, load, grid, battery power [kW] and SOC [%] of a state message (``None`` when missing), and the
    plan step in force: planned battery and grid power [kW] and SOC [%] (``None`` without a plan)."""
    measurements: Mapping[str, Any] = state.get("measurements") or {}
    out: dict[str, float | None] = {}
    for name in FLOW_POINTS:
        value = state.get(name)
        if value is None and isinstance(measurements.get(name), Mapping):
            reading = measurements[name]
            value = reading.get("value") if reading.get("quality", "ok") == "ok" else None
        out[name] = _number(value)
    plan: Mapping[str, Any] = state.get("plan") or {}
    for name in PLAN_POINTS:
        out[name] = _number(plan.get(name.removeprefix("plan_")))
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class DashboardHub:
    """The dashboard's view of the bus: latest messages, today's history, fan-out to SSE clients.

    Parameters
    ----------
    timezone : str
        Site IANA time zone (the history restarts at local midnight).
    history_step_s : float
        Averaging interval of the history. [s of site time]
    tariff : SiteTariff, optional
        The site's tariff, for the named periods shaded on the charts (none shaded without it).
    store : HistoryStore, optional
        Where finished buckets are kept for earlier days (``/api/history``); without it, only today.
    """

    def __init__(self, timezone: str, history_step_s: float = 60.0, max_clients: int = 32,
                 client_queue: int = 100, tariff: SiteTariff | None = None, store: HistoryStore | None = None):
        self.tz = ZoneInfo(timezone)
        self.tariff = tariff
        self.store = store
        self.history_step_s = history_step_s
        self.max_clients = max_clients
        self.client_queue = client_queue
        self.state: dict[str, Any] | None = None
        self.plan: dict[str, Any] | None = None
        self.alarms: deque[dict[str, Any]] = deque(maxlen=50)
        self.commands: deque[dict[str, Any]] = deque(maxlen=RECENT_COMMANDS)
        """The newest audit entries, oldest first (:mod:`controller.audit`)."""
        self.active_alarms: dict[str, dict[str, Any]] = {}
        """Active alarm code → its raising message (``ts`` = since when, ``message``)."""
        self.health: dict[str, dict[str, Any]] = {}
        """Device → status, points, error and ``since`` (ISO time the status began)."""
        self.history: list[list[float | None]] = []
        self._bucket: tuple[int, list[float], list[int]] | None = None
        self._day: Any = None
        self._clients: set[asyncio.Queue[str | None]] = set()
        self.closed = False

    def offer(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Take one bus message."""
        data = dict(payload)
        if kind == "state":
            self.state = data
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self._record(data)
            with contextlib.suppress(AttributeError, TypeError):
                self._update_health(data)
        elif kind == "plan":
            self.plan = data
        elif kind == "alarm":
            self.alarms.append(data)
            code = str(data.get("code"))
            if data.get("active", True):
                self.active_alarms.setdefault(code, {"ts": data.get("ts"), "message": data.get("message")})
            else:
                self.active_alarms.pop(code, None)
        elif kind == "audit":
            self.commands.append(data)
        else:
            return
        event = _sse(kind, data)  # serialised once for every client
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def _record(self, state: dict[str, Any]) -> None:
        when = datetime.fromisoformat(state["ts"])
        day = when.astimezone(self.tz).date()
        if day != self._day:
            self._close_bucket()           # the last bucket of the previous day reaches the store too
            self._day, self.history, self._bucket = day, [], None
        key = int(when.timestamp() // self.history_step_s)
        flows = power_flows(state)
        if self._bucket is None or self._bucket[0] != key:
            self._close_bucket()
            self._bucket = (key, [0.0] * len(HISTORY_POINTS), [0] * len(HISTORY_POINTS))
        _, sums, counts = self._bucket
        for i, name in enumerate(HISTORY_POINTS):
            if flows[name] is not None:
                sums[i] += flows[name]
                counts[i] += 1

    def _update_health(self, state: dict[str, Any]) -> None:
        """Device health of this state; a device keeps its ``since`` while its status is unchanged."""
        codes = state.get("alarms") or []
        for code in list(self.active_alarms):          # the state's list is the truth for what is active
            if code not in codes:
                del self.active_alarms[code]
        for code in codes:
            self.active_alarms.setdefault(str(code), {"ts": state.get("ts"), "message": None})
        health = device_health(state, codes)
        for name, entry in health.items():
            before = self.health.get(name)
            entry["since"] = before["since"] if before and before["status"] == entry["status"] else state.get("ts")
        self.health = health
        state["health"] = health
        state["active_alarms"] = self.active_alarms

    def _close_bucket(self) -> None:
        if self._bucket is not None:
            row = self._bucket_row(self._bucket)
            self.history.append(row)
            if self.store is not None:
                try:
                    self.store.add(row)
                except sqlite3.Error as exc:   # a full or broken disk costs the charts, never the controller
                    log.warning("dashboard history not stored: %s", exc)

    def stored(self, day: date, span: str) -> dict[str, Any]:
        """History of the ``span`` (``day``, ``week`` = 7 days, ``month`` = calendar month) that contains the
        site-local ``day``, from the store plus the bucket still open; averaged to 1 min, 15 min, 1 h."""
        if span == "month":
            first = day.replace(day=1)
            last = (first + timedelta(days=32)).replace(day=1)
        else:
            first = day - timedelta(days=day.weekday()) if span == "week" else day
            last = first + timedelta(days=7 if span == "week" else 1)
        start = int(datetime.combine(first, time(0), self.tz).timestamp() * 1000)
        end = int(datetime.combine(last, time(0), self.tz).timestamp() * 1000)
        step = {"day": round(self.history_step_s * 1000), "week": 900_000, "month": 3_600_000}[span]
        rows = self.store.rows(start, end, step) if self.store is not None else []
        return {"span": span, "first": first.isoformat(), "start_ms": start, "end_ms": end, "step_ms": step,
                "columns": ["ts_ms", *HISTORY_POINTS], "rows": rows}

    def _bucket_row(self, bucket: tuple[int, list[float], list[int]]) -> list[float | None]:
        key, sums, counts = bucket
        ts_ms = round(key * self.history_step_s * 1000)
        return [ts_ms] + [s / c if c else None for s, c in zip(sums, counts, strict=True)]

    def snapshot(self) -> dict[str, Any]:
        """Everything a page needs when it (re)connects."""
        history = self.history + ([self._bucket_row(self._bucket)] if self._bucket else [])
        return {"state": self.state, "plan": self.plan, "alarms": list(self.alarms), "commands": list(self.commands),
                "history": {"columns": ["ts_ms", *HISTORY_POINTS], "rows": history}}

    def periods(self, day: date | None = None) -> dict[str, Any] | None:
        """The tariff's named periods over the site-local ``day`` (default: the latest state's day, else
        today by the wall clock); ``None`` without a tariff."""
        if self.tariff is None:
            return None
        if day is None:
            when = datetime.fromisoformat(self.state["ts"]) if self.state and "ts" in self.state else None
            day = (when or datetime.now(self.tz)).astimezone(self.tz).date()
        return day_periods(self.tariff, day)

    def subscribe(self) -> asyncio.Queue[str | None]:
        """A queue of ready-to-send SSE events for one client (``None`` = end of stream)."""
        if self.closed:
            raise OverflowError("the dashboard is shutting down")
        if len(self._clients) >= self.max_clients:
            raise OverflowError("too many dashboard clients")
        queue: asyncio.Queue[str | None] = asyncio.Queue(self.client_queue)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._clients.discard(queue)

    def close(self) -> None:
        """End every event stream and refuse new ones (shutdown: a browser's EventSource reconnects at
        once, and a stream opened now would hold the server until its graceful-shutdown timeout)."""
        self.closed = True
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    @property
    def clients(self) -> int:
        return len(self._clients)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def create_app(hub: DashboardHub, settings: DashboardSettings, *, site: str, timezone: str,
               currency: str | None = None, intake: CommandIntake | None = None,
               tokens: TokenStore | None = None, lockout: Lockout | None = None,
               metrics: ControllerMetrics | None = None, api: ASGIApp | None = None) -> Starlette:
    """The dashboard application.

    Parameters
    ----------
    intake : CommandIntake, optional
        Where control actions go; without an operator (or admin) token or without an intake the dashboard
        is read-only.
    tokens : TokenStore, optional
        Access tokens (:mod:`controller.api.roles`); the dashboard's own token is among them as ``dashboard``.
    lockout : Lockout, optional
        Failed-token counting per client address (shared with the REST API).
    metrics : ControllerMetrics, optional
        Served at ``/metrics`` (404 without).
    api : ASGIApp, optional
        The REST API, mounted at ``/api/v1``.
    """
    tokens = tokens or TokenStore()
    lockout = lockout or Lockout()
    control = intake is not None and any(t.role >= Role.OPERATOR for t in tokens.tokens)
    config = {"site": site, "timezone": timezone, "currency": currency, "language": settings.language,
              "locale": settings.locale, "control": control}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def get_config(request: Request) -> Response:
        return JSONResponse(config)

    async def get_snapshot(request: Request) -> Response:
        return JSONResponse(hub.snapshot())

    async def get_periods(request: Request) -> Response:
        raw = request.query_params.get("day")
        try:
            day = date.fromisoformat(raw) if raw else None
        except ValueError:
            return JSONResponse({"error": f"day: {raw[:32]!r} is not a date (YYYY-MM-DD)"}, status_code=422)
        return JSONResponse(hub.periods(day))

    def history_query(request: Request) -> tuple[date, str] | JSONResponse:
        raw, span = request.query_params.get("day", ""), request.query_params.get("span", "day")
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            return JSONResponse({"error": f"day: {raw[:32]!r} is not a date (YYYY-MM-DD)"}, status_code=422)
        if span not in ("day", "week", "month"):
            return JSONResponse({"error": f"span: {span[:16]!r} is not one of day, week, month"}, status_code=422)
        return day, span

    async def get_history(request: Request) -> Response:
        query = history_query(request)
        return query if isinstance(query, JSONResponse) else JSONResponse(hub.stored(*query))

    async def get_history_csv(request: Request) -> Response:
        query = history_query(request)
        if isinstance(query, JSONResponse):
            return query
        stored = hub.stored(*query)
        text = await asyncio.to_thread(history_csv, stored, hub.tz, hub.tariff)
        name = f"{site}-{stored['first']}-{stored['span']}.csv"
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def events(request: Request) -> Response:
        try:
            queue = hub.subscribe()
        except OverflowError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

        async def stream() -> AsyncIterator[str]:
            try:
                yield _sse("snapshot", hub.snapshot())
                while True:
                    try:
                        async with asyncio.timeout(KEEPALIVE_S):
                            item = await queue.get()
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if item is None:
                        return
                    yield item
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def get_metrics(request: Request) -> Response:
        if metrics is None:
            return JSONResponse({"error": "metrics are off"}, status_code=404)
        await asyncio.to_thread(metrics.refresh_outbox_depth)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def command(request: Request) -> Response:
        name = request.path_params["name"]
        if not control or intake is None:
            return JSONResponse({"command": name, "accepted": False,
                                 "reason": "read-only dashboard: control actions are off (no token configured)"},
                                status_code=403)
        client = request.client.host if request.client else "?"
        wait = lockout.retry_after(client)
        if wait is not None:
            return JSONResponse({"command": name, "accepted": False, "reason": f"locked out for {wait:.0f} s after "
                                 "repeated wrong tokens"}, status_code=429, headers={"Retry-After": str(int(wait) + 1)})
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        token = tokens.lookup(credentials.strip()) if scheme.lower() == "bearer" and credentials.strip() else None
        if token is None:
            if credentials.strip():
                lockout.failed(client)
            return JSONResponse({"command": name, "accepted": False, "reason": "missing or wrong bearer token"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        lockout.succeeded(client)
        if token.role < Role.OPERATOR:
            return JSONResponse({"command": name, "accepted": False, "reason": f"token {token.name!r} is "
                                 f"{token.role.label}; control actions need operator"}, status_code=403)
        try:
            body = await _read_body(request, MAX_PAYLOAD_BYTES)
        except ClientDisconnect:  # gone before its body arrived: nothing to answer, nothing applied
            return Response(status_code=400)
        if body is None:
            return JSONResponse({"command": name[:64], "accepted": False,
                                 "reason": f"payload exceeds {MAX_PAYLOAD_BYTES} bytes"}, status_code=413)
        result = intake.handle(name, body, interface="dashboard", identity=token.name)   # never raises
        return JSONResponse(result, status_code=200 if result["accepted"] else 422)

    routes = [
        Route("/", index),
        Route("/api/config", get_config),
        Route("/api/snapshot", get_snapshot),
        Route("/api/periods", get_periods),
        Route("/api/history", get_history),
        Route("/api/history.csv", get_history_csv),
        Route("/api/events", events),
        Route("/metrics", get_metrics),
        Route("/api/cmd/{name}", command, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if api is not None:
        routes.append(Mount(API_PREFIX, app=api))
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings), www_redirect=False)]
    return Starlette(routes=routes, middleware=middleware)


async def _read_body(request: Request, max_bytes: int) -> bytes | None:
    """The request body, or ``None`` as soon as it is known to exceed ``max_bytes`` (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return None
    return bytes(body)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the controller owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class DashboardServer:
    """Runs the app on the current event loop.

    Parameters
    ----------
    host, port : str, int
        Bind address; port 0 picks a free port (see :attr:`port` after :meth:`start`).
    tls : DashboardTls, optional
        Serve HTTPS with this certificate and key (uvicorn's ``ssl_certfile``/``ssl_keyfile``).
    """

    def __init__(self, app: Starlette, hub: DashboardHub, host: str, port: int,
                 tls: DashboardTls | None = None):
        self.hub = hub
        self.scheme = "https" if tls is not None else "http"
        self._server = _EmbeddedServer(uvicorn.Config(
            app, host=host, port=port, lifespan="off", log_level="warning", access_log=False, ws="none",
            timeout_graceful_shutdown=2, timeout_keep_alive=5,
            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None))
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn exits the process when it cannot bind: contain it
            raise RuntimeError(f"dashboard could not start (exit {exc.code}); is the port in use?") from None

    async def start(self) -> None:
        """Start serving; returns once the socket listens (raises if it cannot)."""
        self._task = asyncio.create_task(self._serve(), name="dashboard")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)
        sockets = self._server.servers[0].sockets
        self.port = sockets[0].getsockname()[1]

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop within ``timeout_s``: end the event streams, then the server."""
        if self._task is None:
            return
        self.hub.close()
        self._server.should_exit = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STREAM_GRACE_S):
                while self.hub.clients:
                    await asyncio.sleep(0.02)
        if self.hub.clients:
            self._abort_stalled_responses()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await self._task

    def _abort_stalled_responses(self) -> None:
        """Cut the connections whose response is still going out: an event stream whose client stopped
        reading cannot even take its last chunk, and uvicorn would cancel it at its graceful-shutdown
        timeout with a traceback. ``abort`` (not ``close``: a full send buffer never flushes) makes
        uvicorn see a disconnect, so the stream ends as if the browser had gone."""
        for connection in list(self._server.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            if cycle is not None and not cycle.response_complete and transport is not None:
                transport.abort()
