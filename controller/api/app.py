"""The REST API (``/api/v1``): a FastAPI app mounted in the dashboard's Starlette app.

It serves what the dashboard's hub holds (latest state and plan, alarms, device health, the local
history store) and takes commands through the same intake as MQTT and the dashboard
(:class:`controller.telemetry.remote.CommandIntake`: strict JSON, ``schemas/cmd_<name>.json``, expiry,
below the safety steps). Its OpenAPI document is served at ``/api/v1/openapi.json``.

Access (:mod:`controller.api.roles`): ``/health``, ``/ready`` and the OpenAPI document are open (for
supervisors); every other read needs a viewer token, commands an operator token, settings changes an
admin token (``Authorization: Bearer <token>``). Every error is an RFC 9457 problem document
(:mod:`controller.api.problems`). Nothing here runs in the control cycle: handlers read what the bus
already delivered, and the ones that compute (tariff day, history pages, month-to-date energy) do it in
a worker thread, off the event loop the cycle runs on.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field, ValidationError

from controller.api.problems import (
    MAX_BODY_BYTES,
    BodyLimit,
    Problem,
    ProblemError,
    install,
    problem,
    problem_responses,
)
from controller.api.roles import Lockout, Role, Token, TokenStore
from controller.api.settings import RuntimeSettings, SettingsChange
from controller.audit import INTERFACES, AuditLog
from controller.audit import MAX_LIMIT as AUDIT_MAX_LIMIT
from controller.config import LOOP_LAG_REAL_S
from controller.telemetry.forecast_intake import ForecastIntake
from controller.telemetry.remote import COMMAND_NAMES, MAX_JSON_DEPTH, CommandIntake, schema
from controller.telemetry.strict_json import PayloadError, loads_strict
from ems.clock import Clock
from ems.yamlfile import readable_errors
from optimizer.external_forecast import ExternalForecasts
from optimizer.tariff import SiteTariff

if TYPE_CHECKING:  # the hub lives in the dashboard module, which imports this one
    from controller.dashboard.app import DashboardHub

API_PREFIX = "/api/v1"
MAX_HISTORY_DAYS = 31
"""Longest time range one history request may ask for. [days]"""
MAX_HISTORY_ROWS = 1000
READY_CYCLES = 3
"""The service is ready while its latest state is at most this many cycles old (plus :data:`READY_SLACK_S`)."""
READY_SLACK_S = 2.0
"""[s of site time]; on a clock faster than real time at least :data:`~controller.config.LOOP_LAG_REAL_S` × its
speed."""
REDACTED = "***"
SECRET_WORDS = ("password", "secret", "token", "credential", "api_key", "apikey")


@dataclass
class ApiContext:
    """What the API serves from.

    Attributes
    ----------
    hub : DashboardHub
        Latest state and plan, alarms, device health, history store.
    intake : CommandIntake
        The shared remote-command intake.
    tokens : TokenStore
    lockout : Lockout
    clock : Clock
        Site clock (readiness, today).
    site, timezone : str
    cycle_s : float
        The control cycle [s of site time] (readiness).
    tariff : SiteTariff, optional
    config : Mapping, optional
        The site file as the controller read it; served with secrets redacted.
    settings : RuntimeSettings, optional
        Run-time settings (admin); without it ``/settings`` answers 503.
    audit : AuditLog, optional
        The controller's audit log (``/audit``; 503 without).
    forecasts : ExternalForecasts, optional
        Where ``POST /forecasts`` submits forecasts from outside (503 without).
    """

    hub: DashboardHub
    intake: CommandIntake
    tokens: TokenStore
    lockout: Lockout
    clock: Clock
    site: str
    timezone: str
    cycle_s: float = 1.0
    tariff: SiteTariff | None = None
    config: Mapping[str, Any] | None = None
    settings: RuntimeSettings | None = None
    audit: AuditLog | None = None
    forecasts: ExternalForecasts | None = None


# ------------------------------------------------------------------------------------------ models


def _iso(pattern: str, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, str) or not re.match(pattern, value):
            raise ValueError(f"not {what}")
        return value
    return check


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", "an ISO 8601 time"))]
"""A time given as ISO 8601 with its UTC offset (pydantic alone would also take a number as Unix time)."""
IsoDate = Annotated[date, BeforeValidator(_iso(r"^\d{4}-\d{2}-\d{2}$", "a date YYYY-MM-DD"))]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, Check]


class ActiveAlarm(BaseModel):
    code: str
    since: str | None = Field(description="When it was raised (ISO 8601), if known")
    message: str | None


class Alarms(BaseModel):
    active: list[ActiveAlarm]
    history: list[dict[str, Any]] = Field(description="Recent raise/clear messages (schemas/alarm.json), oldest "
                                                      "first; the last 50 since start")


class Device(BaseModel):
    name: str
    status: Literal["ok", "stale", "implausible", "missing", "unreachable"]
    points: list[str]
    error: str | None
    since: str | None


class Energy(BaseModel):
    day: str | None = Field(description="Site-local day of ``today``")
    month: str = Field(description="Site-local month (YYYY-MM) of ``month_to_date``")
    currency: str | None
    today: dict[str, Any] | None = Field(description="The controller's counters of the day [kWh, currency]: "
                                                     "import, export, PV, load, charge, discharge, cost, "
                                                     "cost without battery, saved")
    month_to_date: dict[str, float] = Field(
        description="From the local history (averages per history step): import, export, PV, load, charge, "
                    "discharge [kWh] and cost at the tariff's energy prices [currency]")
    demand: dict[str, Any] | None = Field(description="Month's peak demand [kW], current interval average "
                                                      "[kW], import cap [kW]")


class TariffInterval(BaseModel):
    start: str
    end: str
    period: str
    import_price: float = Field(description="Import energy price incl. VAT [currency/kWh]")
    export_price: float = Field(description="[currency/kWh]")


class TariffDay(BaseModel):
    day: str
    timezone: str
    currency: str
    periods: list[str]
    intervals: list[TariffInterval]


class HistoryPage(BaseModel):
    columns: list[str]
    rows: list[list[float | None]] = Field(description="``[ts_ms, *values]`` per history step; values in kW or %")
    step_s: float
    limit: int
    next_cursor: int | None = Field(description="Pass as ``cursor`` for the next page; null on the last page")


class CommandResultOut(BaseModel):
    command: str
    id: str | None
    accepted: bool
    reason: str
    ts: str
    site: str | None = None


class AuditEntry(BaseModel):
    id: int | None = Field(description="Row id; null while the entry still waits to be written")
    ts: str = Field(description="When the command arrived (site time, UTC, ISO 8601)")
    interface: str = Field(description="mqtt, rest, dashboard, scada, park or internal")
    identity: str | None = Field(description="Token name, MQTT user or client address")
    command: str
    payload: Any = Field(description="The command as received (JSON value; text when it was not JSON)")
    accepted: bool
    reason: str


class AuditPage(BaseModel):
    entries: list[AuditEntry] = Field(description="Newest first")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Pass as ``offset`` for the next (older) page; null on the last")


class SettingsOut(BaseModel):
    fallback_mode: str
    soc_reserve_pct: float | None
    soc_reserve_until: str | None


def _bare(name: str) -> dict[str, Any]:
    """A shipped JSON Schema without ``$schema``/``$id`` (for embedding in the OpenAPI document)."""
    return {k: v for k, v in schema(name).items() if k not in ("$schema", "$id")}


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secrets replaced by ``***``: values of keys naming a password, secret, token or
    credential (not the ``*_env``/``*_file`` keys, which name where a secret is), and passwords in URLs."""
    lowered = key.lower()
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if value is not None and any(w in lowered for w in SECRET_WORDS) and not lowered.endswith(("_env", "_file")):
        return REDACTED
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = value.split("://", 1)
        userinfo, _, host = rest.partition("@")
        return f"{scheme}://{userinfo.split(':', 1)[0]}:{REDACTED}@{host}" if ":" in userinfo else value
    return value


# ------------------------------------------------------------------------------------------ access

BEARER = HTTPBearer(auto_error=False, description="A token made by `ems tokens add NAME --role ROLE`")


def need(role: Role) -> Callable[..., Awaitable[Token]]:
    """A dependency: the caller's token, which must have at least ``role`` (the app's ``state.api`` context)."""
    async def check(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> Token:
        ctx: ApiContext = request.app.state.api
        return authorize(ctx.tokens, ctx.lockout, request, credentials, role)
    return check


async def no_unknown_query(request: Request) -> None:
    """Refuse query parameters the operation does not declare (a typo such as ``limt=5`` must not pass)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        errors = [{"where": f"query.{name[:64]}", "message": "unknown parameter"} for name in unknown[:20]]
        raise ProblemError(422, "Invalid request", "; ".join(f"{e['where']}: {e['message']}" for e in errors),
                           kind="invalid-request", errors=errors)


def _query_names(dependant: Any) -> set[str]:
    """Names of the query parameters an operation and its dependencies declare (FastAPI's ``Dependant``)."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


Viewer = Annotated[Token, Depends(need(Role.VIEWER))]
Operator = Annotated[Token, Depends(need(Role.OPERATOR))]
Admin = Annotated[Token, Depends(need(Role.ADMIN))]


# ------------------------------------------------------------------------------------------ the app


SITE_HEADER = b"x-ems-site"
"""Response header naming the site on every ``/api/v1`` response, errors included (a park collects many)."""


class SiteHeader:
    """ASGI middleware: adds :data:`SITE_HEADER` (the site id, ``[A-Za-z0-9_.-]+``) to every HTTP response."""

    def __init__(self, app: Any, site: str):
        self.app, self.site = app, site.encode("ascii")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_site(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (SITE_HEADER, self.site)]
            await send(message)

        await self.app(scope, receive, send_with_site)


def create_api(ctx: ApiContext) -> FastAPI:
    """The ``/api/v1`` application (mount it at :data:`API_PREFIX`)."""
    app = FastAPI(title="pv-battery-ems", version="1", openapi_url="/openapi.json", docs_url=None,
                  redoc_url=None, dependencies=[Depends(no_unknown_query)],
                  summary=f"REST API of the EMS controller for site {ctx.site}",
                  description="State, plan, alarms, devices, energy, tariff, history, commands and settings "
                              "of one site. Units in field names (kW, kWh, %); grid import +, battery "
                              "discharge +. Errors are RFC 9457 problem documents. docs/integration.md.")
    app.state.api = ctx
    forecast_intake = None if ctx.forecasts is None else ForecastIntake(
        ctx.forecasts, ctx.clock, site=ctx.site, audit=ctx.audit.record if ctx.audit is not None else None)
    install(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(SiteHeader, site=ctx.site)
    zone = ZoneInfo(ctx.timezone)
    hub = ctx.hub
    state_json, plan_json = Encoded(), Encoded()

    auth_errors = problem_responses(401, 403, 429)

    @app.get("/health", response_model=Health, tags=["supervision"], summary="Liveness: the API answers")
    async def health() -> Health:
        return Health()

    @app.get("/ready", response_model=Ready, tags=["supervision"], responses=problem_responses(503),
             summary="Readiness: a recent control cycle and every device answering")
    async def ready() -> Any:
        checks = readiness(hub.state, ctx.clock.now(), ctx.cycle_s, ctx.clock.speed)
        if all(c.ok for c in checks.values()):
            return Ready(ready=True, checks=checks)
        return problem(503, "Not ready", "; ".join(f"{n}: {c.detail}" for n, c in checks.items() if not c.ok),
                       kind="not-ready", ready=False, checks={n: c.model_dump() for n, c in checks.items()})

    @app.get("/state", tags=["read"], response_model=None, summary="The latest cycle state",
             responses={200: {"description": "schemas/state.json", "content": {"application/json": {
                 "schema": _bare("state")}}}, **auth_errors, **problem_responses(503)})
    async def get_state(_: Viewer) -> Any:
        if hub.state is None:
            raise ProblemError(503, "No state yet", "the controller has not finished a cycle yet", kind="no-state",
                               headers={"Retry-After": "1"})
        return Response(state_json.body(hub.state), media_type="application/json")

    @app.get("/plan", tags=["read"], response_model=None, summary="The plan in force",
             responses={200: {"description": "schemas/plan.json", "content": {"application/json": {
                 "schema": _bare("plan")}}}, **auth_errors, **problem_responses(503)})
    async def get_plan(_: Viewer) -> Any:
        if hub.plan is None:
            raise ProblemError(503, "No plan yet", "no plan has been made since start", kind="no-plan",
                               headers={"Retry-After": "60"})
        return Response(plan_json.body(hub.plan), media_type="application/json")

    @app.get("/alarms", response_model=Alarms, tags=["read"], responses=auth_errors,
             summary="Active alarms and recent transitions")
    async def get_alarms(_: Viewer) -> Alarms:
        active = [ActiveAlarm(code=code, since=_text(info.get("ts")), message=_text(info.get("message")))
                  for code, info in sorted(hub.active_alarms.items())]
        return Alarms(active=active, history=list(hub.alarms))

    @app.get("/devices", response_model=list[Device], tags=["read"], responses=auth_errors,
             summary="Each device's health")
    async def get_devices(_: Viewer) -> list[Device]:
        return [Device(name=name, status=h["status"], points=[str(p) for p in h["points"]],
                       error=_text(h.get("error")), since=_text(h.get("since")))
                for name, h in sorted(hub.health.items())]

    @app.get("/energy", response_model=Energy, tags=["read"], responses=auth_errors,
             summary="Today's and month-to-date energy and money, the month's peak demand")
    async def get_energy(_: Viewer) -> Energy:
        state = hub.state or {}
        now = ctx.clock.now().astimezone(zone)
        today = state.get("today") if isinstance(state.get("today"), Mapping) else None
        return Energy(day=_text(today.get("day")) if today else None, month=now.strftime("%Y-%m"),
                      currency=ctx.tariff.currency if ctx.tariff else None, today=dict(today) if today else None,
                      month_to_date=await asyncio.to_thread(month_to_date, hub, ctx.tariff, now),
                      demand=state.get("demand") if isinstance(state.get("demand"), Mapping) else None)

    @app.get("/tariff", response_model=TariffDay, tags=["read"], responses={**auth_errors, **problem_responses(503)},
             summary="The tariff's periods and prices over a site-local day")
    async def get_tariff(_: Viewer, day: Annotated[IsoDate | None, Query(
            description="YYYY-MM-DD; default today (site time)")] = None) -> TariffDay:
        if ctx.tariff is None:
            raise ProblemError(503, "No tariff", "this controller was started without a tariff", kind="no-tariff")
        when = day or ctx.clock.now().astimezone(zone).date()
        if not 1971 <= when.year <= 2200:
            raise ProblemError(422, "Invalid request", f"day: {when.isoformat()} is outside 1971-2200",
                               kind="invalid-request")
        return await asyncio.to_thread(tariff_day, ctx.tariff, when)

    @app.get("/history", response_model=HistoryPage, tags=["read"], responses={**auth_errors, **problem_responses(422)},
             summary="Measured history (averages per history step) over a bounded time range")
    async def get_history(
            _: Viewer,
            start: Annotated[IsoTime, Query(description="Range start, ISO 8601 with offset (inclusive)")],
            end: Annotated[IsoTime, Query(description=f"Range end, ISO 8601 with offset (exclusive); at most "
                                                       f"{MAX_HISTORY_DAYS} days after start")],
            limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_ROWS, description="Rows per page")] = 500,
            cursor: Annotated[int | None, Query(ge=0, le=2**53, description="next_cursor of the previous page")] = None,
    ) -> HistoryPage:
        if not start < end <= start + timedelta(days=MAX_HISTORY_DAYS):
            raise ProblemError(422, "Invalid request", f"end must be after start and at most {MAX_HISTORY_DAYS} "
                               "days after it", kind="invalid-request")
        return await asyncio.to_thread(history_page, hub, start, end, limit, cursor)

    def command_route(name: str) -> None:
        body = _bare(f"cmd_{name}")

        async def send(request: Request, token: Operator) -> Any:
            raw = await request.body()
            result = ctx.intake.handle(name, raw, interface="rest", identity=token.name)
            if result["accepted"]:
                return JSONResponse(result)
            return problem(422, "Command rejected", result["reason"], kind="command-rejected", **result)

        app.post(f"/commands/{name}", tags=["commands"], response_model=CommandResultOut,
                 summary=body.get("title", name), description=body.get("description", ""),
                 openapi_extra={"requestBody": {"required": name != "replan", "content": {
                     "application/json": {"schema": body}}}},
                 responses={**auth_errors, **problem_responses(413, 422)})(send)

    for name in COMMAND_NAMES:
        command_route(name)

    @app.get("/config", response_model=dict[str, Any], tags=["read"],
             responses={**auth_errors, **problem_responses(503)},
             summary="The site file as the controller read it, secrets redacted")
    async def get_config(_: Viewer) -> Any:
        if ctx.config is None:
            raise ProblemError(503, "No configuration", "this controller was started without a site file",
                               kind="no-config")
        return redact(ctx.config)

    @app.get("/audit", response_model=AuditPage, tags=["read"],
             responses={**auth_errors, **problem_responses(422, 503)},
             summary="The audit log: every command from every interface, with who sent it and the result")
    async def get_audit(
            _: Viewer,
            since: Annotated[IsoTime | None, Query(description="Entries at or after (ISO 8601 with offset)")] = None,
            until: Annotated[IsoTime | None, Query(description="Entries before (ISO 8601 with offset)")] = None,
            interface: Annotated[Literal[INTERFACES] | None, Query(description="Only this interface")] = None,
            limit: Annotated[int, Query(ge=1, le=AUDIT_MAX_LIMIT, description="Entries per page")] = 100,
            offset: Annotated[int, Query(ge=0, le=10**9, description="next_offset of the previous page")] = 0,
    ) -> AuditPage:
        if ctx.audit is None:
            raise ProblemError(503, "No audit log", "this controller was started without its audit log",
                               kind="no-audit")
        return await asyncio.to_thread(audit_page, ctx.audit, since, until, interface, limit, offset)

    @app.get("/settings", response_model=SettingsOut, tags=["settings"],
             responses={**auth_errors, **problem_responses(503)}, summary="Run-time settings")
    async def get_settings(_: Viewer) -> Any:
        return _settings(ctx).current()

    @app.put("/settings", response_model=SettingsOut, tags=["settings"],
             responses={**auth_errors, **problem_responses(413, 422, 503)},
             summary="Change run-time settings (admin): fallback mode, SOC reserve",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": SettingsChange.model_json_schema()}}}})
    async def put_settings(request: Request, token: Admin) -> Any:
        change = settings_change(await request.body())   # read after the role check, strictly, like commands
        settings = _settings(ctx)
        result = settings.change(change, interface="rest", identity=token.name)
        if not result.accepted:
            raise ProblemError(422, "Settings rejected", result.reason, kind="settings-rejected")
        return settings.current()

    @app.post("/forecasts", tags=["commands"], response_model=dict[str, Any],
              responses={**auth_errors, **problem_responses(413, 422, 503)},
              summary="Submit a PV and/or load forecast from outside (operator); it replaces the built-in forecast "
                      "for the steps it covers until it expires (docs/data.md, External forecasts)")
    async def post_forecast(request: Request, token: Operator) -> Any:
        if forecast_intake is None:
            raise ProblemError(503, "No forecast intake", "this controller takes no external forecasts",
                               kind="no-forecasts")
        raw = await request.body()
        try:
            data = loads_strict(raw, max_bytes=MAX_BODY_BYTES, max_depth=MAX_JSON_DEPTH)
        except PayloadError as exc:
            forecast_intake.refuse(raw, str(exc), interface="rest", identity=token.name)  # recorded, like MQTT's
            raise ProblemError(422, "Invalid request", str(exc), kind="invalid-request") from None
        answer = forecast_intake.handle(data, interface="rest", identity=token.name)  # the body limit was checked
        result = {k: answer[k] for k in ("accepted", "error", "source", "quantities", "steps", "expires_at")}
        if not answer["accepted"]:
            return problem(422, "Forecast rejected", answer["error"], kind="forecast-rejected", **result)
        return JSONResponse(result)

    _add_problem_schema(app)
    return app


def settings_change(raw: bytes) -> SettingsChange:
    """A settings body decoded by the command path's strict JSON rules; raises a 422 problem naming each bad
    field."""
    try:
        data = loads_strict(raw, max_bytes=MAX_BODY_BYTES, max_depth=MAX_JSON_DEPTH)
        return SettingsChange.model_validate(data)
    except PayloadError as exc:
        raise ProblemError(422, "Invalid request", str(exc), kind="invalid-request") from None
    except ValidationError as exc:
        errors = [{"where": "body" if e.field == "(top level)" else f"body.{e.field}", "message": e.message}
                  for e in readable_errors(SettingsChange, data, exc.errors())]
        raise ProblemError(422, "Invalid request", "; ".join(f"{e['where']}: {e['message']}" for e in errors),
                           kind="invalid-request", errors=errors) from None


def audit_page(audit: AuditLog, since: datetime | None, until: datetime | None, interface: str | None,
               limit: int, offset: int) -> AuditPage:
    """One page of the audit log, newest first, and whether an older page follows."""
    found = audit.entries(since, until, limit, offset, interface)
    more = len(found) == limit and bool(audit.entries(since, until, 1, offset + limit, interface))
    return AuditPage(entries=[AuditEntry(**e) for e in found], limit=limit, offset=offset,
                     next_offset=offset + limit if more else None)


class Encoded:
    """The JSON of the latest message, encoded once per message however many clients read it."""

    def __init__(self) -> None:
        self._source: Mapping[str, Any] | None = None
        self._body = b""

    def body(self, message: Mapping[str, Any]) -> bytes:
        if message is not self._source:      # the hub replaces its message, never changes it once served
            self._body = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
            self._source = message
        return self._body


def _settings(ctx: ApiContext) -> RuntimeSettings:
    if ctx.settings is None:
        raise ProblemError(503, "No settings", "run-time settings need the controller", kind="no-settings")
    return ctx.settings


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _add_problem_schema(app: FastAPI) -> None:
    """The OpenAPI document with problem documents for every error: the ``Problem`` schema in the components,
    FastAPI's own 422 (``HTTPValidationError``) replaced by it, and a ``default`` problem response on every
    operation (404, 405, 413, 429 can come from anywhere)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            components["Problem"] = Problem.model_json_schema()
            for path in document.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.setdefault("responses", {})
                    if "422" in responses:
                        responses["422"] = problem_responses(422)[422]
                    responses["default"] = {"description": "Any other error, as a problem document",
                                            "content": problem_responses(400)[400]["content"]}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def authorize(tokens: TokenStore, lockout: Lockout, request: Request,
              credentials: HTTPAuthorizationCredentials | None, role: Role) -> Token:
    """The caller's token if it has at least ``role``; raises a 429, 401 or 403 problem otherwise."""
    client = request.client.host if request.client else "?"
    wait = lockout.retry_after(client)
    if wait is not None:
        raise ProblemError(429, "Too many failed attempts", f"{client}: locked out for {wait:.0f} s after "
                           f"{lockout.max_failures} wrong tokens", kind="locked-out",
                           headers={"Retry-After": str(int(wait) + 1)})
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ProblemError(401, "Missing or unknown token", "send Authorization: Bearer <token>",
                           kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    token = tokens.lookup(credentials.credentials)
    if token is None:
        lockout.failed(client)
        raise ProblemError(401, "Missing or unknown token", "the token is not known", kind="unauthorized",
                           headers={"WWW-Authenticate": "Bearer"})
    lockout.succeeded(client)
    if token.role < role:
        raise ProblemError(403, "Role not sufficient", f"token {token.name!r} is {token.role.label}; this needs "
                           f"{role.label}", kind="forbidden")
    return token


def readiness(state: Mapping[str, Any] | None, now: datetime, cycle_s: float, speed: float = 1.0
              ) -> dict[str, Check]:
    """``cycle``: the latest state is at most :data:`READY_CYCLES` cycles plus a slack old (``cycle_s`` [s of site
    time]; the slack :data:`READY_SLACK_S`, or the loop's real-time lag × ``speed`` on an accelerated clock, as
    ``controller.config.at_device_pace`` allows the devices); ``devices``: every device answered in it."""
    if state is None or "ts" not in state:
        return {"cycle": Check(ok=False, detail="no cycle yet"), "devices": Check(ok=False, detail="no cycle yet")}
    try:
        age = (now - datetime.fromisoformat(str(state["ts"]))).total_seconds()
    except (TypeError, ValueError):
        age = float("inf")
    limit = READY_CYCLES * cycle_s + max(READY_SLACK_S, LOOP_LAG_REAL_S * speed)
    cycle = Check(ok=age <= limit, detail=f"last cycle {age:.1f} s ago (limit {limit:g} s)")
    devices: Mapping[str, Any] = state.get("devices") or {}
    down = sorted(str(n) for n, d in devices.items() if isinstance(d, Mapping) and not d.get("ok", True))
    return {"cycle": cycle, "devices": Check(ok=not down, detail=f"not answering: {', '.join(down)}" if down
                                             else f"{len(devices)} answering")}


def tariff_day(tariff: SiteTariff, day: date) -> TariffDay:
    """The tariff's periods and prices over the site-local ``day``, merged into intervals (23 or 25 hours on a
    DST change)."""
    zone = ZoneInfo(tariff.timezone)
    start = pd.Timestamp(datetime.combine(day, time(0), zone)).tz_convert("UTC")
    end = pd.Timestamp(datetime.combine(day + timedelta(days=1), time(0), zone)).tz_convert("UTC")
    minutes = pd.date_range(start, end, freq="1min", inclusive="left")
    prices = tariff.prices(minutes)
    rows = zip(minutes, prices.period, prices.import_price_gross, prices.export_price, strict=True)
    intervals: list[TariffInterval] = []
    for ts, period, imp, exp in rows:
        stop = (ts + pd.Timedelta(minutes=1)).isoformat()
        last = intervals[-1] if intervals else None
        if last and (last.period, last.import_price, last.export_price) == (str(period), float(imp), float(exp)):
            last.end = stop
        else:
            intervals.append(TariffInterval(start=ts.isoformat(), end=stop, period=str(period),
                                            import_price=float(imp), export_price=float(exp)))
    return TariffDay(day=day.isoformat(), timezone=tariff.timezone, currency=tariff.currency,
                     periods=list(tariff.tariff.periods), intervals=intervals)


def history_page(hub: DashboardHub, start: datetime, end: datetime, limit: int, cursor: int | None) -> HistoryPage:
    """One page of stored history in ``[start, end)`` from ``cursor`` (ms) on."""
    from controller.dashboard.app import HISTORY_POINTS

    step_ms = round(hub.history_step_s * 1000)
    start_ms = max(int(start.timestamp() * 1000), cursor or 0)
    end_ms = int(end.timestamp() * 1000)
    rows = hub.store.rows(start_ms, end_ms, step_ms, limit + 1) if hub.store is not None else []
    more = len(rows) > limit
    return HistoryPage(columns=["ts_ms", *HISTORY_POINTS], rows=rows[:limit], step_s=hub.history_step_s,
                       limit=limit, next_cursor=int(rows[limit][0]) if more else None)


def month_to_date(hub: DashboardHub, tariff: SiteTariff | None, now: datetime) -> dict[str, float]:
    """Energies [kWh] and, with a tariff, cost [currency] of the local month so far from the history store
    (each stored step's averages × its length; steps without a value count nothing)."""
    from controller.dashboard.app import HISTORY_POINTS

    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    step_ms = round(hub.history_step_s * 1000)
    rows = hub.store.rows(int(first.timestamp() * 1000), int(now.timestamp() * 1000), step_ms) \
        if hub.store is not None else []
    out = {"import_kwh": 0.0, "export_kwh": 0.0, "pv_kwh": 0.0, "load_kwh": 0.0, "charge_kwh": 0.0,
           "discharge_kwh": 0.0}
    if not rows:
        return {**out, "cost": 0.0} if tariff is not None else out
    table = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    col = {name: table[:, 1 + i] for i, name in enumerate(HISTORY_POINTS)}
    dt_h = hub.history_step_s / 3600.0
    grid, battery = col["grid_kw"], col["battery_kw"]
    out["import_kwh"] = float(np.nansum(np.clip(grid, 0, None)) * dt_h)
    out["export_kwh"] = float(np.nansum(np.clip(-grid, 0, None)) * dt_h)
    out["pv_kwh"] = float(np.nansum(col["pv_kw"]) * dt_h)
    out["load_kwh"] = float(np.nansum(col["load_kw"]) * dt_h)
    out["discharge_kwh"] = float(np.nansum(np.clip(battery, 0, None)) * dt_h)
    out["charge_kwh"] = float(np.nansum(np.clip(-battery, 0, None)) * dt_h)
    if tariff is not None:
        starts = pd.DatetimeIndex(pd.to_datetime(table[:, 0].astype(np.int64), unit="ms", utc=True))
        prices = tariff.prices(starts)
        money = np.clip(grid, 0, None) * prices.import_price_gross - np.clip(-grid, 0, None) * prices.export_price
        out["cost"] = float(np.nansum(money) * dt_h)
    return out

