"""RFC 9457 problem details for every error of the REST API, and its request size limit.

Every refusal is ``application/problem+json``: ``{"type", "title", "status", "detail"}`` plus members
of its own where they help (``errors`` for a request that fails validation, the command result for a
rejected command, ``checks`` for a service that is not ready). ``type`` is a URI naming the problem
(``about:blank`` when the HTTP status says it all).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ems.yamlfile import error_message, field_path

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://pv-battery-ems.example/problems/"
MAX_BODY_BYTES = 4096
"""Largest request body the API reads (commands and settings are small flat objects). [bytes]"""


class Problem(BaseModel):
    """An RFC 9457 problem details object (extension members allowed)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="URI naming the kind of problem")
    title: str = Field(description="Short summary of the kind of problem")
    status: int = Field(ge=400, le=599, description="The HTTP status code")
    detail: str | None = Field(default=None, description="What went wrong with this request")


class ProblemError(Exception):
    """Raise in a handler to answer with a problem (``kind`` is appended to :data:`TYPE_BASE`)."""

    def __init__(self, status: int, title: str, detail: str | None = None, *, kind: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.kind = status, title, detail, kind
        self.headers = headers
        self.extra = extra


def problem(status: int, title: str, detail: str | None = None, *, kind: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """A problem response."""
    body = {"type": TYPE_BASE + kind if kind else "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, each a problem document."""
    titles = {400: "Bad request", 401: "Missing or unknown token", 403: "Role not sufficient",
              404: "Not found", 405: "Method not allowed", 413: "Request body too large",
              422: "Invalid request", 429: "Too many failed attempts", 503: "Not available yet"}
    return {s: {"description": titles.get(s, "Error"), "content": {MEDIA_TYPE: {"schema": {
        "$ref": "#/components/schemas/Problem"}}}} for s in statuses}


def install(app: FastAPI) -> None:
    """Make every error of ``app`` a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, kind=exc.kind, headers=exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404:
            detail = f"no resource {request.url.path[:200]!r}; see {request.scope.get('root_path', '')}/openapi.json"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            detail = f"{request.method[:16]} is not allowed on {request.url.path[:200]!r}; allowed: {allowed}"
            headers = {"Allow": allowed}
        return problem(exc.status_code, titles.get(exc.status_code, detail or "Error"), detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"where": field_path(e.get("loc", ())), "message": error_message(e)[:300]}
                  for e in exc.errors()][:20]
        return problem(422, "Invalid request", "; ".join(f"{e['where']}: {e['message']}" for e in errors),
                       kind="invalid-request", errors=errors)


def allowed_methods(request: Request) -> str:
    """Every method of every route on the request's path (Starlette's own ``Allow`` names only the first
    route's when one path has a route per method)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"}) if hasattr(route, "matches") else (None, None)
        if match is not None and match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


class BodyLimit:
    """ASGI middleware: a request body beyond ``max_bytes`` gets 413 (declared or streamed), unread."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Request body too large", f"the body exceeds {self.max_bytes} bytes",
                           kind="too-large", headers={"Connection": "close"})
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
