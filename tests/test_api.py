"""The REST API (/api/v1) served by uvicorn on loopback: roles per endpoint, problem documents, history
pagination and bounds, lock-out, the dashboard token as operator, readiness, known answers for the tariff
day and month-to-date energy, TLS with a generated certificate, and `ems tokens`."""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.api.app import readiness, redact
from controller.api.roles import (
    Lockout,
    Role,
    TokenError,
    TokenStore,
    digest,
    format_entry,
    read_env,
    read_file,
    write_entry,
)
from controller.api.settings import RuntimeSettings
from controller.audit import AuditLog
from controller.bus import Bus
from controller.cli import EXAMPLE_SITE
from controller.commands import CommandResult, Commands
from controller.dashboard.app import HISTORY_POINTS
from controller.modes import Mode, ModeMachine
from controller.telemetry import Telemetry, TelemetryContext, start_telemetry
from controller.telemetry.config import DashboardSettings, DashboardTls, TelemetrySettings
from ems.cli import main
from ems.clock import ManualClock
from optimizer.external_forecast import ExternalForecasts
from optimizer.tariff import Tariff
from tests.peers import free_port, sample_plan, sample_state

SITE, TZ = "demo-factory", "Asia/Ho_Chi_Minh"
T0 = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)            # 08:00 in Hai Phong
TOKENS = {"viewer": "tok-viewer-1", "operator": "tok-operator-1", "admin": "tok-admin-1"}
DASHBOARD_TOKEN = "dash-token"
CONFIG = {"site": {"name": SITE}, "telemetry": {"mqtt": {"password": "hunter2", "password_env": "EMS_MQTT_PW"},
                                               "influxdb": {"url": "http://ems:s3cr3t@influx:8086"}}}


@dataclass
class Api:
    telemetry: Telemetry
    commands: Commands
    bus: Bus
    clock: ManualClock
    base: str

    def client(self, role: str | None = None, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}
        return httpx.AsyncClient(base_url=self.base + "/api/v1", headers=headers, timeout=10, **kw)


async def start_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **dashboard: Any) -> Api:
    """The telemetry stack with the dashboard (and so the API) on a free port; viewer and operator tokens in a
    tokens file, admin in $EMS_API_TOKENS, the dashboard token in $EMS_DASHBOARD_TOKEN."""
    tokens_file = tmp_path / "tokens"
    write_entry(tokens_file, "viewer", Role.VIEWER, TOKENS["viewer"])
    write_entry(tokens_file, "operator", Role.OPERATOR, TOKENS["operator"])
    monkeypatch.setenv("EMS_API_TOKENS", f"admin:admin:sha256:{digest(TOKENS['admin']).hex()}")
    monkeypatch.setenv("EMS_DASHBOARD_TOKEN", DASHBOARD_TOKEN)
    clock = ManualClock(T0)
    commands = Commands(ModeMachine(Mode.SELF_CONSUMPTION, T0), clock, (500.0, 500.0), (10.0, 95.0), lambda _: None)
    audit = AuditLog(tmp_path / "state.sqlite")

    def apply(command: dict[str, Any], *, interface: str = "internal", identity: str | None = None) -> CommandResult:
        """What ``Controller.apply`` does with a command: apply it, record it in the audit log."""
        result = commands.apply(command, interface=interface, identity=identity)
        audit.record(ts=clock.now(), interface=interface, identity=identity, command=command["command"],
                     payload=command, accepted=result.accepted, reason=result.reason)
        return result

    bus = Bus()
    settings = TelemetrySettings(dashboard=DashboardSettings(port=free_port(), tokens_file=Path("tokens"),
                                                             **dashboard))
    ctx = TelemetryContext(site=SITE, timezone=TZ, clock=clock, apply=apply, state_dir=tmp_path,
                           currency="VND", tariff=Tariff.preset("evn-manufacturing-22kv-qd963").bind(TZ),
                           config=CONFIG, settings=RuntimeSettings(commands, apply, audit.record, clock.now),
                           audit=audit, forecasts=ExternalForecasts(pv_limit_kw=900))
    telemetry = await start_telemetry(settings, bus, ctx)
    scheme = telemetry.dashboard.scheme
    return Api(telemetry, commands, bus, clock, f"{scheme}://127.0.0.1:{telemetry.dashboard.port}")


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    a = await start_api(tmp_path, monkeypatch)
    a.bus.publish("state", sample_state(T0, 1))
    a.bus.publish("plan", sample_plan(T0))
    await asyncio.sleep(0.05)
    yield a
    await a.telemetry.aclose()


HISTORY = "/history?start=2026-05-04T00:00:00%2B07:00&end=2026-05-05T00:00:00%2B07:00"
ENDPOINTS = [  # method, path, JSON body, least role (None: open)
    ("GET", "/health", None, None),
    ("GET", "/ready", None, None),
    ("GET", "/openapi.json", None, None),
    ("GET", "/state", None, Role.VIEWER),
    ("GET", "/plan", None, Role.VIEWER),
    ("GET", "/alarms", None, Role.VIEWER),
    ("GET", "/devices", None, Role.VIEWER),
    ("GET", "/energy", None, Role.VIEWER),
    ("GET", "/tariff?day=2026-05-04", None, Role.VIEWER),
    ("GET", HISTORY, None, Role.VIEWER),
    ("GET", "/config", None, Role.VIEWER),
    ("GET", "/settings", None, Role.VIEWER),
    ("GET", "/audit", None, Role.VIEWER),
    ("POST", "/commands/set_mode", {"mode": "standby", "ttl_s": 60}, Role.OPERATOR),
    ("POST", "/commands/manual_setpoint", {"battery_kw": -50, "ttl_s": 60}, Role.OPERATOR),
    ("POST", "/commands/soc_reserve", {"soc_pct": 30, "ttl_s": 60}, Role.OPERATOR),
    ("POST", "/commands/replan", {}, Role.OPERATOR),
    ("PUT", "/settings", {"soc_reserve_pct": 20}, Role.ADMIN),
    ("POST", "/forecasts", {"issued_at": "2026-05-04T08:00:00+07:00", "start": "2026-05-04T08:00:00+07:00",
                            "pv_kw": [100.0, 120.0]}, Role.OPERATOR),
]


async def test_every_endpoint_checks_its_role(api: Api) -> None:
    for role in (None, *TOKENS):
        level = Role.parse(role) if role else None
        async with api.client(role) as client:
            for method, path, body, least in ENDPOINTS:
                response = await client.request(method, path, json=body)
                allowed = least is None or (level is not None and level >= least)
                expected = 200 if allowed else 401 if level is None else 403
                assert response.status_code == expected, (method, path, role, response.text)
                assert response.headers["x-ems-site"] == SITE  # every response names its site (park tier)
                if expected != 200:
                    problem = response.json()
                    assert response.headers["content-type"] == "application/problem+json"
                    assert problem["status"] == expected and problem["title"] and problem["detail"]
                if expected == 401:
                    assert response.headers["www-authenticate"] == "Bearer"


async def test_commands_go_through_the_shared_intake_and_echo_the_result(api: Api) -> None:
    async with api.client("operator") as client:
        ok = await client.post("/commands/set_mode", json={"mode": "standby", "ttl_s": 600, "id": "c-1"})
        rejected = await client.post("/commands/manual_setpoint", json={"battery_kw": 9000, "ttl_s": 60, "id": "c-2"})
        unknown_field = await client.post("/commands/soc_reserve", json={"soc_pct": 30, "ttl_s": 60, "x": 1})
        malformed = await client.post("/commands/set_mode", content=b"{oops")
        expired = await client.post("/commands/replan", json={"ts": "2026-05-04T00:00:00+00:00", "ttl_s": 60})
    assert ok.status_code == 200 and ok.json() == {
        "command": "set_mode", "id": "c-1", "accepted": True, "reason": "mode standby until 2026-05-04T01:10:00+00:00",
        "ts": T0.isoformat(), "site": SITE}
    assert api.commands.modes.request.mode is Mode.STANDBY and api.commands.modes.request.by == "rest:operator"
    body = rejected.json()
    assert rejected.status_code == 422 and rejected.headers["content-type"] == "application/problem+json"
    assert body["type"].endswith("/command-rejected") and body["id"] == "c-2" and body["accepted"] is False
    assert "outside the PCS range [-500, 500] kW" in body["detail"] == body["reason"]
    assert unknown_field.status_code == 422
    assert unknown_field.json()["detail"] == "invalid: x: unknown field; known here: id, soc_pct, ts, ttl_s"
    assert malformed.status_code == 422 and "malformed JSON" in malformed.json()["detail"]
    assert expired.status_code == 422 and expired.json()["detail"].startswith("expired: issued")


async def test_audit_log_shows_rest_commands_by_token_name_in_pages(api: Api) -> None:
    async with api.client("operator") as client:
        for k in range(5):
            await client.post("/commands/soc_reserve", json={"soc_pct": 20 + k, "ttl_s": 60})
        await client.post("/commands/manual_setpoint", json={"battery_kw": 9000, "ttl_s": 60})
    async with httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"}) as c:
        await c.post("/api/cmd/replan", json={})
    async with api.client("viewer") as client:
        first = (await client.get("/audit?interface=rest&limit=4")).json()
        second = (await client.get(f"/audit?interface=rest&limit=4&offset={first['next_offset']}")).json()
        dashboard = (await client.get("/audit?interface=dashboard")).json()
        bad = await client.get("/audit?interface=telnet")
        largest = await client.get("/audit?limit=1000")
        naive = await client.get("/audit?since=2026-05-04T00:00:00")
        unix = await client.get("/audit?until=0.5")
    rest = first["entries"] + second["entries"]
    assert [(e["command"], e["identity"], e["accepted"]) for e in rest] == [
        ("manual_setpoint", "operator", False)] + [("soc_reserve", "operator", True)] * 5
    assert rest[0]["reason"] == "battery_kw 9000 outside the PCS range [-500, 500] kW"
    assert [e["payload"]["soc_pct"] for e in rest[1:]] == [24, 23, 22, 21, 20]
    assert second["next_offset"] is None and len(first["entries"]) == 4
    assert [(e["command"], e["identity"]) for e in dashboard["entries"]] == [("replan", "dashboard")]
    assert largest.status_code == 200 and largest.json()["next_offset"] is None
    assert bad.status_code == 422 and bad.json()["errors"][0]["where"] == "query.interface"
    assert naive.status_code == 422 and naive.json()["detail"] == ("query.since: Input should have timezone info, "
                                                                   "got '2026-05-04T00:00:00'")
    assert unix.status_code == 422 and unix.json()["detail"] == "query.until: not an ISO 8601 time"


async def test_problem_documents_for_404_405_413_422(api: Api) -> None:
    async with api.client("admin") as client:
        missing = await client.get("/nowhere")
        method = await client.delete("/state")
        large = await client.post("/commands/set_mode", content=b'{"mode": "' + b"x" * 5000 + b'"}')
        chunked = await client.post("/commands/set_mode", content=_chunks(b"x" * 5000))
        query = await client.get("/tariff?day=2026-13-01")
        body = await client.put("/settings", json={"fallback_mode": "standby"})
        refused = await client.put("/settings", json={"soc_reserve_pct": 99})
        typo = await client.put("/settings", json={"fallback": "tou_rule"})
    for response, status in ((missing, 404), (method, 405), (large, 413), (chunked, 413), (query, 422),
                             (body, 422), (refused, 422), (typo, 422)):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
        assert response.headers["x-ems-site"] == SITE
    assert "/api/v1/openapi.json" in missing.json()["detail"]
    assert query.json()["errors"][0]["where"] == "query.day"
    assert body.json()["errors"][0]["where"] == "body.fallback_mode"
    assert refused.json()["detail"] == "soc_pct 99 outside the SOC window [10, 95] %"
    assert typo.json()["errors"] == [{"where": "body.fallback", "message": (
        "unknown field; did you mean fallback_mode?; known here: fallback_mode, soc_reserve_pct, soc_reserve_ttl_s")}]
    assert api.commands.modes.fallback is Mode.SELF_CONSUMPTION and api.commands.reserve is None


def fill(api: Api, rows: list[list[float | None]]) -> None:
    """Write history rows into the hub's store file in one transaction (row by row, each is a disk sync)."""
    store = api.telemetry.hub.store
    marks = ", ".join("?" * (1 + len(store.columns)))
    with sqlite3.connect(store.path) as db:
        db.executemany(f"INSERT INTO dashboard_history (ts_ms, {', '.join(store.columns)}) VALUES ({marks})", rows)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


async def test_history_pages_and_bounds(api: Api) -> None:
    start_ms = int(datetime(2026, 5, 3, 17, 0, tzinfo=UTC).timestamp() * 1000)      # 00:00 in Hai Phong
    fill(api, [[start_ms + 60_000 * k, float(k)] + [None] * (len(HISTORY_POINTS) - 1) for k in range(1500)])
    two_days = "/history?start=2026-05-04T00:00:00%2B07:00&end=2026-05-06T00:00:00%2B07:00"
    async with api.client("viewer") as client:
        rows, cursor, pages = [], None, 0
        while True:
            page = (await client.get(two_days + "&limit=400" + (f"&cursor={cursor}" if cursor else ""))).json()
            rows += page["rows"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 4 and [r[1] for r in rows] == [float(k) for k in range(1500)]
        assert rows[0][0] == start_ms and page["columns"] == ["ts_ms", *HISTORY_POINTS]
        for query, where in (("&limit=0", "query.limit"), ("&limit=1001", "query.limit"),
                             ("&cursor=-1", "query.cursor"), ("&limt=5", "query.limt")):
            response = await client.get(two_days + query)
            assert response.status_code == 422 and response.json()["errors"][0]["where"] == where
        too_long = await client.get("/history?start=2026-05-01T00:00:00Z&end=2026-06-02T00:00:00Z")
        backwards = await client.get("/history?start=2026-05-02T00:00:00Z&end=2026-05-01T00:00:00Z")
        naive = await client.get("/history?start=2026-05-01T00:00:00&end=2026-05-02T00:00:00Z")
    assert too_long.status_code == backwards.status_code == naive.status_code == 422
    assert "at most 31 days" in too_long.json()["detail"]
    assert naive.json()["detail"] == "query.start: Input should have timezone info, got '2026-05-01T00:00:00'"


async def test_energy_month_to_date_and_tariff_day_known_answers(api: Api) -> None:
    may_1 = int(datetime(2026, 4, 30, 17, 0, tzinfo=UTC).timestamp() * 1000)        # 00:00 local, off-peak
    pv, load, grid, battery = (HISTORY_POINTS.index(n) + 1 for n in ("pv_kw", "load_kw", "grid_kw", "battery_kw"))
    rows = []
    for k in range(60):                           # one hour: grid 100 kW import, then a second hour exporting 50
        for hour, grid_kw in ((0, 100.0), (1, -50.0)):
            row: list[float | None] = [may_1 + 3_600_000 * hour + 60_000 * k] + [None] * len(HISTORY_POINTS)
            row[grid], row[pv], row[load], row[battery] = grid_kw, 10.0, 110.0, -20.0
            rows.append(row)
    fill(api, rows)
    async with api.client("viewer") as client:
        energy = (await client.get("/energy")).json()
        day = (await client.get("/tariff?day=2026-05-04")).json()
    month = energy["month_to_date"]
    assert energy["month"] == "2026-05" and energy["today"]["saved"] == 1_250_100.0
    assert month["import_kwh"] == pytest.approx(100.0) and month["export_kwh"] == pytest.approx(50.0)
    assert month["pv_kwh"] == pytest.approx(20.0) and month["charge_kwh"] == pytest.approx(40.0)
    off_peak = next(i for i in day["intervals"] if i["period"] == "off_peak")["import_price"]
    assert month["cost"] == pytest.approx(100.0 * off_peak)    # export earns nothing under this tariff
    assert energy["demand"]["month_peak_kw"] == 950.0
    # QĐ 963: off-peak 00:00-06:00, normal 06:00-17:30, peak 17:30-22:30, normal to midnight (site time, UTC+7)
    assert [(i["start"][11:16], i["period"]) for i in day["intervals"]] == [
        ("17:00", "off_peak"), ("23:00", "normal"), ("10:30", "peak"), ("15:30", "normal")]
    assert day["intervals"][-1]["end"] == "2026-05-04T17:00:00+00:00" and day["currency"] == "VND"


async def test_readiness_follows_the_cycle_and_the_devices(api: Api) -> None:
    async with api.client() as client:
        assert (await client.get("/ready")).status_code == 200
        api.clock.advance(10.0)
        stale = await client.get("/ready")
        state = sample_state(api.clock.now(), 2)
        state["devices"]["battery"] = {"ok": False, "error": "timeout"}
        api.bus.publish("state", state)
        await asyncio.sleep(0.05)
        down = await client.get("/ready")
        assert (await client.get("/health")).json() == {"status": "ok"}
    assert stale.status_code == 503 and not stale.json()["checks"]["cycle"]["ok"]
    assert stale.json()["checks"]["cycle"]["detail"] == "last cycle 10.0 s ago (limit 5 s)"
    assert down.status_code == 503 and down.json()["checks"]["devices"]["detail"] == "not answering: battery"
    assert down.json()["checks"]["cycle"]["ok"]


def test_readiness_allows_an_accelerated_loop_its_lag():
    """At 600x (a 12 s cycle, at_device_pace) a state 300 s of site time old is half a second of real time: ready,
    as the devices' readings are still fresh then (limit 3 × 12 + 0.5 × 600 = 336 s); at 1x the limit stays
    3 × 12 + 2 = 38 s."""
    state = sample_state(T0, 2)
    fast = readiness(state, T0 + timedelta(seconds=300), 12.0, speed=600)
    slow = readiness(state, T0 + timedelta(seconds=300), 12.0)
    assert fast["cycle"].ok and fast["cycle"].detail == "last cycle 300.0 s ago (limit 336 s)"
    assert not slow["cycle"].ok and slow["cycle"].detail == "last cycle 300.0 s ago (limit 38 s)"
    assert not readiness(state, T0 + timedelta(seconds=337), 12.0, speed=600)["cycle"].ok


async def test_config_is_redacted_and_settings_change_for_admin(api: Api) -> None:
    async with api.client("admin") as client:
        config = (await client.get("/config")).json()
        changed = await client.put("/settings", json={"fallback_mode": "tou_rule", "soc_reserve_pct": 30,
                                                      "soc_reserve_ttl_s": 3600})
    assert config["telemetry"]["mqtt"] == {"password": "***", "password_env": "EMS_MQTT_PW"}
    assert config["telemetry"]["influxdb"]["url"] == "http://ems:***@influx:8086"
    assert changed.json() == {"fallback_mode": "tou_rule", "soc_reserve_pct": 30.0,
                              "soc_reserve_until": "2026-05-04T02:00:00+00:00"}
    assert api.commands.modes.fallback is Mode.TOU_RULE
    async with api.client("viewer") as client:
        audit = (await client.get("/audit?interface=rest&limit=2")).json()
    # newest first: the fallback change (not a command, recorded as "settings"), then the reserve it came with
    assert [(e["command"], e["identity"], e["accepted"]) for e in audit["entries"]] == [
        ("settings", "admin", True), ("soc_reserve", "admin", True)]
    assert audit["entries"][0]["payload"] == {"fallback_mode": "tou_rule"}


async def test_wrong_tokens_lock_out_that_address_only(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base + "/api/v1", headers={"Authorization": "Bearer guess"}) as c:
        codes = [(await c.get("/state")).status_code for _ in range(5)]
        c.headers["Authorization"] = f"Bearer {TOKENS['admin']}"
        locked = await c.get("/state")
        dashboard = await c.post(api.base + "/api/cmd/replan", json={})
    other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with api.client("viewer", transport=other) as c:
        elsewhere = await c.get("/state")
    assert codes == [401] * 5 and locked.status_code == 429 and dashboard.status_code == 429
    assert locked.json()["type"].endswith("/locked-out") and 55 <= int(locked.headers["retry-after"]) <= 61
    assert elsewhere.status_code == 200


async def test_dashboard_token_is_an_operator_and_roles_guard_the_dashboard(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"}) as c:
        via_api = await c.post("/api/v1/commands/set_mode", json={"mode": "standby", "ttl_s": 60})
        settings = await c.put("/api/v1/settings", json={"fallback_mode": "tou_rule"})
        c.headers["Authorization"] = f"Bearer {TOKENS['viewer']}"
        viewer = await c.post("/api/cmd/replan", json={})
        c.headers["Authorization"] = f"Bearer {TOKENS['admin']}"
        admin = await c.post("/api/cmd/replan", json={})
    assert via_api.status_code == 200 and api.commands.modes.request.by == "rest:dashboard"
    assert settings.status_code == 403 and "'dashboard' is operator" in settings.json()["detail"]
    assert viewer.status_code == 403 and "need operator" in viewer.json()["reason"]
    assert admin.status_code == 200 and admin.json()["accepted"]


async def test_served_over_tls_with_a_generated_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "ems.crt", tmp_path / "ems.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    api = await start_api(tmp_path, monkeypatch, tls=DashboardTls(cert=cert, key=key))
    try:
        assert api.base.startswith("https://")
        async with api.client("viewer", verify=ssl.create_default_context(cafile=cert)) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            assert (await client.get("/plan")).status_code == 503      # over TLS, with the role checked
        async with httpx.AsyncClient(verify=False) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(api.base.replace("https", "http") + "/api/v1/health")
    finally:
        await api.telemetry.aclose()


def test_tokens_cli_prints_once_and_stores_the_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "etc" / "tokens"
    assert main(["tokens", "add", "scada-gw", "--role", "operator", "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) == 43 and token not in path.read_text() and path.stat().st_mode & 0o777 == 0o600
    store = TokenStore(read_file(path))
    assert store.lookup(token).role is Role.OPERATOR and store.lookup(token + "x") is None
    assert main(["tokens", "list", "--file", str(path)]) == 0 and capsys.readouterr().out == "scada-gw operator\n"
    assert main(["tokens", "remove", "scada-gw", "--file", str(path)]) == 0
    assert main(["tokens", "list", "--file", str(path)]) == 0 and capsys.readouterr().out == ""
    assert main(["tokens", "remove", "scada-gw", "--file", str(path)]) == 1


def test_tokens_cli_keeps_the_file_s_comments_and_refuses_to_rewrite_a_bad_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Adding or removing a token rewrote the file from its entries alone: the operator's comments were lost, and
    it was truncated before being written (a crash in between lost every token). A file with a bad line is
    refused, left as it was; listing a file that is not there says so."""
    path = tmp_path / "tokens"
    kept = f"# line 2 SCADA gateway, replaced 2026-11\nscada-gw operator sha256:{'1' * 64}  # Nguyen's laptop\n"
    path.write_text(kept)
    path.chmod(0o644)
    assert main(["tokens", "add", "grafana", "--role", "viewer", "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert path.read_text() == kept + format_entry("grafana", Role.VIEWER, token) + "\n"
    assert path.stat().st_mode & 0o777 == 0o600 and [p.name for p in tmp_path.iterdir()] == ["tokens"]
    assert main(["tokens", "remove", "grafana", "--file", str(path)]) == 0
    assert path.read_text() == kept
    assert main(["tokens", "add", "scada-gw", "--role", "admin", "--file", str(path)]) == 0  # replaced, not added
    assert [(t.name, t.role) for t in read_file(path)] == [("scada-gw", Role.ADMIN)]
    assert path.read_text().startswith("# line 2 SCADA gateway, replaced 2026-11\n")
    broken = kept + "grafana viewer plaintext\n"
    path.write_text(broken)
    capsys.readouterr()
    assert main(["tokens", "add", "other", "--role", "viewer", "--file", str(path)]) == 2
    assert "tokens:3: hash must be sha256" in capsys.readouterr().err and path.read_text() == broken
    assert main(["tokens", "remove", "scada-gw", "--file", str(path)]) == 2 and path.read_text() == broken
    assert main(["tokens", "list", "--file", str(tmp_path / "elsewhere")]) == 1
    assert "no tokens file" in capsys.readouterr().err


def test_tokens_cli_on_a_site_file_without_a_tokens_file_says_how_to_name_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["tokens", "add", "grafana", "--role", "viewer", "--config", str(EXAMPLE_SITE)])
    assert str(stop.value).endswith("sets no telemetry.dashboard.tokens_file: add one under telemetry.dashboard "
                                    "(e.g. tokens_file: api-tokens, in the state directory) for the controller to "
                                    "read, or give --file")
    assert capsys.readouterr().out == ""  # no token printed that nothing stored


def test_bad_token_entries_name_where() -> None:
    with pytest.raises(TokenError, match=r"\$EMS_API_TOKENS entry 2: role 'root': one of viewer, operator, admin"):
        read_env(f"a:viewer:sha256:{'0' * 64},b:root:sha256:{'0' * 64}")
    with pytest.raises(TokenError, match="entry 1: hash must be sha256:<64 lowercase hex digits>"):
        read_env("a:viewer:plaintext-token")


def test_lockout_expires_and_forgives_after_success() -> None:
    now = [0.0]
    lockout = Lockout(max_failures=3, window_s=10.0, lockout_s=30.0, now=lambda: now[0])
    for _ in range(2):
        lockout.failed("a")
    lockout.succeeded("a")
    lockout.failed("a")
    assert lockout.retry_after("a") is None
    lockout.failed("a")
    lockout.failed("a")
    assert lockout.retry_after("a") == 30.0
    now[0] = 30.0
    assert lockout.retry_after("a") is None


def test_redact_keeps_where_secrets_come_from() -> None:
    assert redact({"token_env": "X", "api_key": "k", "tokens_file": "t", "list": [{"secret": 1}],
                   "url": "mqtts://u@h"}) == {"token_env": "X", "api_key": "***", "tokens_file": "t",
                                               "list": [{"secret": "***"}], "url": "mqtts://u@h"}


def test_lookup_compares_every_hash() -> None:
    store = TokenStore([], dashboard_token="d")
    assert store.lookup("d").name == "dashboard" and store.lookup("e") is None


async def test_forecasts_from_outside_are_validated_and_kept(api: Api) -> None:
    body = {"source": "weather-service", "issued_at": "2026-05-04T08:00:00+07:00", "valid_hours": 3,
            "start": "2026-05-04T08:00:00+07:00", "pv_kw": [100.0, 120.0, 140.0, 160.0]}
    async with api.client("operator") as client:
        accepted = await client.post("/forecasts", json=body)
        negative = await client.post("/forecasts", json={**body, "pv_kw": [100.0, -5.0]})
        zoneless = await client.post("/forecasts", json={**body, "start": "2026-05-04T08:00:00"})
        garbage = await client.post("/forecasts", content=b"{not json")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["accepted"] and accepted.json()["expires_at"] == "2026-05-04T04:00:00+00:00"
    assert negative.status_code == 422 and "pv_kw[1]" in negative.json()["detail"]
    assert negative.headers["content-type"] == "application/problem+json"
    assert zoneless.status_code == 422 and "start" in zoneless.json()["detail"]
    assert garbage.status_code == 422
    async with api.client("viewer") as client:   # every submission is in the audit log, by token name
        entries = (await client.get("/audit?interface=rest")).json()["entries"]
    assert [(e["command"], e["identity"], e["accepted"]) for e in entries] == [
        ("forecast", "operator", False)] * 3 + [("forecast", "operator", True)]
    assert "pv_kw[1]" in entries[2]["reason"] and "malformed JSON" in entries[0]["reason"]
    assert entries[3]["payload"]["pv_kw"] == body["pv_kw"]


def test_a_tokens_file_that_is_not_there_is_said_at_start_and_by_config_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A tokens file named in the site file but not there (a typo, never made): every token was refused with 401
    and nothing said why. Now the controller raises telemetry.tokens_invalid naming the file and how to make it,
    and `ems config check` warns; a good file gives its tokens and no alarm."""
    from controller.telemetry import access_tokens

    monkeypatch.delenv("EMS_API_TOKENS", raising=False)
    monkeypatch.delenv("EMS_API_TOKENS_FILE", raising=False)
    alarms: list[tuple[str, bool, str]] = []
    ctx = TelemetryContext(site="s", timezone="UTC", clock=ManualClock(datetime(2026, 5, 4, tzinfo=UTC)),
                           apply=lambda *_a, **_k: None, state_dir=tmp_path,  # type: ignore[arg-type]
                           on_alarm=lambda code, active, message: alarms.append((code, active, message)))
    settings = DashboardSettings(tokens_file=Path("tokens"))
    store = access_tokens(settings, ctx)
    assert store.lookup(TOKENS["viewer"]) is None
    assert [(code, active) for code, active, _ in alarms] == [("telemetry.tokens_invalid", True)]
    assert f"{tmp_path / 'tokens'}: no such file (make it with `ems tokens add" in alarms[0][2]
    site = tmp_path / "site.yaml"
    data = yaml.safe_load(EXAMPLE_SITE.read_text())
    data["telemetry"]["dashboard"]["tokens_file"] = str(tmp_path / "tokens")
    site.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(site)]) == 0
    assert "telemetry.dashboard.tokens_file: " in capsys.readouterr().err
    write_entry(tmp_path / "tokens", "viewer", Role.VIEWER, TOKENS["viewer"])
    alarms.clear()
    assert access_tokens(settings, ctx).lookup(TOKENS["viewer"]).role is Role.VIEWER and alarms == []
    assert main(["config", "check", str(site)]) == 0
    assert "tokens_file" not in capsys.readouterr().err
