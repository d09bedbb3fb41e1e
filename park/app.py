"""The park summary's web app (Starlette on uvicorn): a page in vi/en/ja and its JSON.

* ``GET /``: the page (``static/``); it reloads ``/api/summary`` every ``refresh_s``;
* ``GET /api/config``: park name, time zone, currency, default language, refresh interval;
* ``GET /api/summary``: :func:`park.summary.read_summary` (503 with ``error`` when the database does
  not answer; the app keeps serving and the next request tries again).

The page's translations are its own (``static/i18n``) plus the site dashboard's, served under
``/site-i18n`` (mode names and alarm sentences are the same words as on each factory's dashboard).
Read-only; requests must name an allowed host (``TrustedHostMiddleware``, as the site dashboard).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import controller.dashboard
from park.config import SummarySettings
from park.summary import coincident_peak, read_summary
from park.tsdb import PromQuery, TsdbError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SITE_I18N_DIR = Path(controller.dashboard.__file__).resolve().parent / "static" / "i18n"
"""The site dashboard's translations (mode names, alarm sentences)."""
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def create_app(settings: SummarySettings, client: PromQuery) -> Starlette:
    """The app for one park, reading through ``client``."""
    coincident = coincident_peak(settings)

    async def index(_request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    async def get_config(_request: Request) -> JSONResponse:
        return JSONResponse({"park": settings.park, "timezone": settings.timezone, "currency": settings.currency,
                             "language": settings.language, "refresh_s": settings.refresh_s})

    async def get_summary(_request: Request) -> JSONResponse:
        try:
            summary = await asyncio.to_thread(read_summary, client, settings, datetime.now(UTC), coincident)
        except TsdbError as exc:
            log.warning("park summary: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(summary)

    hosts = [*LOCAL_HOSTS, *([settings.serve.host] if settings.serve.host not in ("0.0.0.0", "::") else []),
             *settings.serve.allowed_hosts]
    return Starlette(routes=[
        Route("/", index), Route("/api/config", get_config), Route("/api/summary", get_summary),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Mount("/site-i18n", StaticFiles(directory=SITE_I18N_DIR), name="site-i18n"),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)])


class SummaryServer:
    """The app on the running event loop; port 0 picks a free port (:attr:`port` after :meth:`start`)."""

    def __init__(self, app: Starlette, host: str, port: int):
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning",
                                                     access_log=False, ws="none", timeout_graceful_shutdown=2))
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> None:
        """Serve; returns once the socket listens (raises ``RuntimeError`` when it cannot bind)."""
        self._task = asyncio.create_task(self._serve(), name="park-summary")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("park summary stopped before serving")
            await asyncio.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot bind: contain it
            raise RuntimeError(f"park summary could not start (exit {exc.code}); is the port in use?") from None

    async def wait(self) -> None:
        """Until the server stops (SIGINT/SIGTERM are uvicorn's)."""
        if self._task is not None:
            await self._task

    async def aclose(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
