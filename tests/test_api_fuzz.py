"""The REST API fuzzed by schemathesis against its own OpenAPI document, served by uvicorn on loopback:
no 5xx, every status, content type, header and body as the document declares, invalid input refused,
and every write refused (nothing changed) for a viewer token."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from controller.api.app import ApiContext, create_api
from controller.api.roles import Lockout, Role, Token, TokenStore, digest
from controller.api.settings import RuntimeSettings
from controller.audit import AuditLog
from controller.commands import Commands
from controller.dashboard.app import DashboardHub, DashboardServer, create_app
from controller.dashboard.history import HistoryStore
from controller.modes import Mode, ModeMachine
from controller.telemetry.config import DashboardSettings
from controller.telemetry.remote import CommandIntake
from ems.clock import ManualClock
from optimizer.external_forecast import ExternalForecasts
from optimizer.tariff import Tariff
from tests.peers import free_port, sample_plan, sample_state

TZ = "Asia/Ho_Chi_Minh"
T0 = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)
TOKENS = {Role.VIEWER: "fuzz-viewer", Role.ADMIN: "fuzz-admin"}
FUZZ = settings(max_examples=12, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


class Served:
    """The dashboard app with the API; :meth:`start` serves it on a loop of its own in a thread (schemathesis
    calls are blocking)."""

    def __init__(self, state_dir: Path):
        self.clock = ManualClock(T0)
        self.commands = Commands(ModeMachine(Mode.SELF_CONSUMPTION, T0), self.clock, (500.0, 500.0), (10.0, 95.0),
                                 lambda _: None)
        tariff = Tariff.preset("evn-manufacturing-22kv-qd963").bind(TZ)
        from controller.dashboard.app import HISTORY_POINTS
        self.hub = DashboardHub(TZ, tariff=tariff, store=HistoryStore(state_dir / "history.sqlite", HISTORY_POINTS))
        self.hub.offer("state", sample_state(T0, 1))
        self.hub.offer("plan", sample_plan(T0))
        self.hub.offer("alarm", {"ts": T0.isoformat(), "code": "planner_failed", "active": True, "message": "x"})
        tokens = TokenStore([Token(role.label, role, digest(token)) for role, token in TOKENS.items()])
        self.audit = AuditLog(state_dir / "state.sqlite")
        intake = CommandIntake(self.apply, self.clock, site="fuzz", audit=self.audit.record)
        ctx = ApiContext(hub=self.hub, intake=intake, tokens=tokens, lockout=Lockout(max_failures=10**9),
                         clock=self.clock, site="fuzz", timezone=TZ, tariff=tariff,
                         config={"mqtt": {"password": "p"}}, settings=RuntimeSettings(self.commands, self.apply),
                         audit=self.audit, forecasts=ExternalForecasts(pv_limit_kw=900))
        self.api = create_api(ctx)
        self.app = create_app(self.hub, DashboardSettings(), site="fuzz", timezone=TZ, intake=intake, tokens=tokens,
                              api=self.api)

    def apply(self, command: dict[str, Any], *, interface: str = "internal", identity: str | None = None) -> Any:
        """As ``Controller.apply``: apply, then record in the audit log."""
        result = self.commands.apply(command, interface=interface, identity=identity)
        self.audit.record(ts=self.clock.now(), interface=interface, identity=identity, command=command["command"],
                          payload=command, accepted=result.accepted, reason=result.reason)
        return result

    def operator_state(self) -> tuple[Any, ...]:
        """What a write could change: the operator request, the reserve, the fallback mode."""
        return self.commands.modes.request, self.commands.reserve, self.commands.modes.fallback

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = DashboardServer(self.app, self.hub, "127.0.0.1", free_port())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.base = f"http://127.0.0.1:{self.server.port}/api/v1"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


STACK = Served(Path(tempfile.mkdtemp(prefix="ems-api-fuzz-")))
schema = schemathesis.openapi.from_dict(STACK.api.openapi())
"""The API's own document (the one it serves: :func:`test_the_fuzzed_document_is_the_served_one`)."""


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    STACK.start()
    yield STACK
    STACK.close()
    shutil.rmtree(STACK.hub.store.path.parent, ignore_errors=True)


def test_the_fuzzed_document_is_the_served_one(served: Served) -> None:
    with urllib.request.urlopen(served.base + "/openapi.json", timeout=10) as response:
        served_document = json.loads(response.read())
    assert served_document.pop("servers") == [{"url": "/api/v1"}]     # where it is mounted
    assert served_document == schema.raw_schema


@schema.parametrize()
@FUZZ
def test_fuzz_as_admin_no_5xx_and_every_response_as_documented(case: Any, served: Served) -> None:
    # A schema-valid command may still be refused by the controller (a setpoint beyond the PCS, an expired ts):
    # that is a documented 422, so "valid data must be accepted" does not hold for this API.
    case.call_and_validate(base_url=served.base, headers={"Authorization": f"Bearer {TOKENS[Role.ADMIN]}"},
                           excluded_checks=[positive_data_acceptance])


@schema.include(method=["POST", "PUT"]).parametrize()
@settings(FUZZ, phases=[Phase.generate])
def test_fuzz_writes_as_viewer_are_refused(case: Any, served: Served) -> None:
    before = served.operator_state()
    response = case.call(base_url=served.base, headers={"Authorization": f"Bearer {TOKENS[Role.VIEWER]}"})
    # 401 when the generated case brings an Authorization header of its own; 413 refused before anything is read
    assert response.status_code in (401, 403, 413), response.text
    assert response.headers["content-type"] == ["application/problem+json"]
    assert served.operator_state() == before
