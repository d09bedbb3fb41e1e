"""The live dashboard: HTTP API (read-only by default, bearer token for control) and the page in
headless Chromium (loads, switches language, follows published states and plans)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
import yaml

from controller.bus import Bus
from controller.commands import Commands
from controller.modes import Mode, ModeMachine
from controller.telemetry import Telemetry, TelemetryContext, start_telemetry
from controller.telemetry.config import DashboardSettings, TelemetrySettings
from controller.telemetry.remote import schema
from ems.clock import ManualClock
from tests.peers import (  # noqa: F401 (fixtures)
    Mosquitto,
    VictoriaMetrics,
    browser,
    free_port,
    mosquitto,
    sample_plan,
    sample_state,
    victoria_metrics,
    wait_for_port,
)

SITE, TZ = "demo-factory", "Asia/Ho_Chi_Minh"
T0 = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)            # 08:00 in Hai Phong
TOKEN = "s3cret-token"


class Site:
    def __init__(self, bus: Bus, telemetry: Telemetry, commands: Commands):
        self.bus, self.telemetry, self.commands = bus, telemetry, commands
        self.url = f"http://127.0.0.1:{telemetry.dashboard.port}"

    def request(self, path: str, body: dict | bytes | None = None, token: str | None = None,
                host: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if host:
            req.add_header("Host", host)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, _body(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _body(err.read())


def _body(raw: bytes) -> Any:
    """JSON when it is JSON (the API), else the text (Starlette's plain-text refusals)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


async def start_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str | None, language: str = "auto",
                     tariff: Any = None, currency: str = "VND", **dashboard: Any) -> Site:
    if token:
        monkeypatch.setenv("EMS_DASHBOARD_TOKEN", token)
    else:
        monkeypatch.delenv("EMS_DASHBOARD_TOKEN", raising=False)
    clock = ManualClock(T0)
    commands = Commands(ModeMachine(Mode.SELF_CONSUMPTION, T0), clock, (500.0, 500.0), (10.0, 95.0), lambda _: None)
    bus = Bus()
    settings = TelemetrySettings(dashboard=DashboardSettings(port=free_port(), language=language, **dashboard))
    ctx = TelemetryContext(site=SITE, timezone=TZ, clock=clock, apply=commands.apply, state_dir=tmp_path,
                           currency=currency, tariff=tariff)
    return Site(bus, await start_telemetry(settings, bus, ctx), commands)


@pytest.fixture
async def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Site]:
    s = await start_site(tmp_path, monkeypatch, TOKEN)
    yield s
    await s.telemetry.aclose()


async def call(site: Site, *args: Any, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(site.request, *args, **kw)


async def test_api_and_bearer_token(site: Site) -> None:
    status, config = await call(site, "/api/config")
    assert status == 200 and config == {"site": SITE, "timezone": TZ, "currency": "VND", "language": "auto",
                                        "locale": None, "control": True}
    site.bus.publish("state", sample_state(T0, 1))
    site.bus.publish("plan", sample_plan(T0))
    await asyncio.sleep(0.05)
    status, snap = await call(site, "/api/snapshot")
    assert snap["state"]["ts"] == T0.isoformat() and snap["plan"]["starts"][0] == T0.isoformat()
    assert snap["history"]["rows"][0][1:] == [401.0, 807.0, 307.0, 99.0, 50.1, 100.0, 300.0, 55.0]
    body = {"mode": "standby", "ttl_s": 600}
    assert (await call(site, "/api/cmd/set_mode", body))[0] == 401
    status, result = await call(site, "/api/cmd/set_mode", body, token="wrong")
    assert status == 401 and not result["accepted"] and site.commands.modes.request is None
    status, result = await call(site, "/api/cmd/set_mode", body, token=TOKEN)
    assert status == 200 and result["accepted"], result
    assert site.commands.modes.request.mode is Mode.STANDBY and site.commands.modes.request.by == "dashboard:dashboard"
    status, result = await call(site, "/api/cmd/manual_setpoint", {"battery_kw": 9000, "ttl_s": 60}, token=TOKEN)
    assert status == 422 and "outside the PCS range" in result["reason"]
    status, result = await call(site, "/api/cmd/set_mode", b"{oops", token=TOKEN)
    assert status == 422 and "malformed JSON" in result["reason"]


async def test_read_only_without_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = await start_site(tmp_path, monkeypatch, token=None)
    status, config = await call(site, "/api/config")
    assert config["control"] is False
    status, result = await call(site, "/api/cmd/replan", {}, token="anything")
    assert status == 403 and "read-only" in result["reason"]
    await site.telemetry.aclose()


async def test_page_live_values_and_languages(site: Site, browser: Any) -> None:  # noqa: F811
    context = await browser.new_context(locale="en-US")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(site.url + "/")
    await page.wait_for_function("document.getElementById('site').textContent === 'demo-factory'")
    await page.wait_for_function("document.getElementById('conn').className === 'conn'")   # SSE connected
    assert await page.text_content("[data-i18n=power_flows]") == "Power flows"

    site.bus.publish("plan", sample_plan(T0, steps=96))
    site.bus.publish("state", sample_state(T0, 1))
    await page.wait_for_function("document.getElementById('soc-pct').textContent === '50.1 %'")
    assert await page.text_content("#pv-kw") == "401.0 kW"
    assert await page.text_content("#soc-energy") == ""  # a state without the battery's energy says nothing of it
    site.bus.publish("state", {**sample_state(T0 + timedelta(seconds=61), 7),
                               "battery": {"soh_pct": 85.0, "capacity_kwh": 850.0, "nameplate_kwh": 1000.0}})
    await page.wait_for_function("document.getElementById('soc-pct').textContent === '50.7 %'")
    assert await page.text_content("#soc-energy") == "431 of 850 kWh: state of health 85 % of the 1,000 kWh nameplate"
    assert await page.text_content("#battery-kw") == "93.0 kW"
    assert await page.text_content("#mode") == "automatic (plan)"
    saved = await page.text_content("#saved-today")
    assert "1,250,700" in saved and "₫" in saved
    assert "08:01:01" in await page.text_content("#updated")           # site time zone, not the browser's
    # a unit out of its group: the energy of the units in use, which plans are made for, not the SOC × the nameplate
    site.bus.publish("state", {**sample_state(T0 + timedelta(seconds=62), 7), "battery": {
        "soh_pct": None, "capacity_kwh": 1000.0, "nameplate_kwh": 1000.0, "in_use_kwh": 600.0,
        "in_use_stored_kwh": 300.0}})
    await page.wait_for_function("document.getElementById('soc-energy').textContent.startsWith('300 of 600 kWh')")
    assert await page.text_content("#soc-energy") == ("300 of 600 kWh in the units in use (a unit is out of its "
                                                      "group: plans count on these); nameplate 1,000 kWh")
    plan_path = await page.get_attribute("#chart-power path.battery-plan:not(.past)", "d")
    actual_path = await page.get_attribute("#chart-power path.battery-actual", "d")
    assert plan_path.count("L") > 50 and actual_path.startswith("M")
    assert await page.locator("#chart-power rect.shade").count() == 0    # no tariff: nothing shaded
    assert await page.text_content("#command-log") == "No commands yet"
    site.telemetry.hub.offer("audit", {"id": 1, "ts": T0.isoformat(), "interface": "mqtt", "identity": "operator",
                                       "command": "set_mode", "payload": {"mode": "standby"}, "accepted": False,
                                       "reason": "battery busy"})          # what the audit log's listener hands it
    await page.wait_for_function("document.getElementById('command-log').textContent.includes('set_mode')")
    assert (await page.text_content("#command-log li")).endswith("set_mode · MQTT operator · rejected")
    assert await page.get_attribute("#command-log li", "title") == "battery busy"

    await page.select_option("#lang", "vi")
    await page.wait_for_function("document.querySelector('[data-i18n=power_flows]').textContent === 'Dòng công suất'")
    assert await page.text_content("#soc-pct") == "50,7 %"                 # Vietnamese number format
    assert (await page.text_content("#command-log li")).endswith("set_mode · MQTT operator · bị từ chối")
    assert await page.text_content("[data-i18n=saved_today]") == "tiết kiệm hôm nay"
    site.bus.publish("state", {**sample_state(T0 + timedelta(seconds=62), 9), "mode": "safe",
                               "reason": "data_missing", "alarms": ["data_missing"]})
    await page.wait_for_function("document.getElementById('mode').textContent === 'trạng thái an toàn'")
    assert await page.text_content("#reason") == "thiếu số liệu đo"
    assert (await page.text_content("#alarms li .alarm-text")).startswith("Thiếu số liệu đo: bộ điều khiển")
    await page.select_option("#lang", "ja")
    await page.wait_for_function("document.querySelector('[data-i18n=power_flows]').textContent === '電力の流れ'")
    assert errors == []
    await context.close()


async def test_page_language_from_browser_and_control(site: Site, browser: Any) -> None:  # noqa: F811
    context = await browser.new_context(locale="vi-VN")
    page = await context.new_page()
    await page.goto(site.url + "/")
    await page.wait_for_function("document.querySelector('[data-i18n=title]').textContent === 'Quản lý năng lượng'")
    assert await page.is_visible("#control")
    await page.fill("#token", TOKEN)
    await page.dispatch_event("#token", "change")
    await page.fill("form[data-command=manual_setpoint] input[name=battery_kw]", "-150")
    await page.click("form[data-command=manual_setpoint] button")
    await page.wait_for_function("document.getElementById('cmd-result').className === 'ok'")
    assert site.commands.modes.request.setpoint_kw == -150
    await context.close()


@pytest.mark.slow
async def test_ems_run_simulate_end_to_end(tmp_path: Path, browser: Any, mosquitto: Mosquitto,  # noqa: F811
                                           victoria_metrics: VictoriaMetrics) -> None:  # noqa: F811
    """``ems run --simulate`` at 60× with all three sinks on: the page follows the live states and
    draws the first plan, the state arrives on MQTT, an MQTT command is answered by the real
    controller, and the states reach the TSDB through the outbox."""
    example = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "simulated-site.yaml"
    config = yaml.safe_load(example.read_text())
    config["planner"]["horizon_hours"] = 4      # a short first plan: its model build shares the CPU
    port = free_port()
    config["telemetry"] = {
        "dashboard": {"enabled": True, "port": port, "token_env": None},
        "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port, "min_state_interval_s": 0.2},
        "influxdb": {"enabled": True, "url": victoria_metrics.url, "token_env": None}}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ems.cli", "run", "--simulate", "--speed", "60", "--config", str(site_file),
        "--state-dir", str(tmp_path / "state"), cwd=Path(__file__).resolve().parents[1],
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="e2e") as client:
            await client.subscribe("ems/demo-factory/#", qos=1)
            await asyncio.to_thread(wait_for_port, port, None, 120)
            page = await browser.new_page(locale="vi-VN")
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_function("document.getElementById('updated').textContent !== '–'", timeout=120_000)
            first = await page.text_content("#updated")
            await page.wait_for_function(f"document.getElementById('updated').textContent !== '{first}'",
                                         timeout=120_000)
            for selector in ("#pv-kw", "#load-kw", "#grid-kw", "#battery-kw"):
                assert (await page.text_content(selector)).endswith(" kW"), selector
            assert (await page.text_content("#soc-pct")).endswith(" %")
            await page.wait_for_function(
                "(document.querySelector('#chart-power path.battery-plan:not(.past)')?.getAttribute('d') || '')"
                ".length > 20",
                timeout=180_000)
            assert "₫" in await page.text_content("#saved-today")
            # the real controller hands the dashboard its tariff (named periods) and its devices (health panel)
            await page.wait_for_function("document.querySelectorAll('#chart-power rect.shade').length > 0",
                                         timeout=60_000)
            assert await page.locator("#health tr").count() >= 2

            command = {"mode": "standby", "ttl_s": 3600, "id": "e2e"}      # 3600 site s = 1 min at 60×
            await client.publish("ems/demo-factory/cmd/set_mode", json.dumps(command), qos=1)
            seen: dict[str, Any] = {}
            async with asyncio.timeout(120):
                async for msg in client.messages:
                    topic = str(msg.topic).removeprefix("ems/demo-factory/")
                    seen[topic] = msg.payload
                    if "cmd/set_mode/result" in seen and "state" in seen and "plan" in seen:
                        break
            result = json.loads(seen["cmd/set_mode/result"])
            assert result["accepted"] and result["id"] == "e2e", result
            jsonschema.validate(json.loads(seen["state"]), schema("state"))
            jsonschema.validate(json.loads(seen["plan"]), schema("plan"))
            await page.wait_for_function("document.getElementById('mode').textContent === 'chờ'", timeout=120_000)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert len(await asyncio.to_thread(victoria_metrics.wait_for, "ems_state_load_kw", 5)) >= 5


async def test_port_in_use_raises_an_alarm_and_control_goes_on(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    alarms: list[tuple[str, bool, str]] = []
    clock = ManualClock(T0)
    commands = Commands(ModeMachine(Mode.SELF_CONSUMPTION, T0), clock, (500.0, 500.0), (10.0, 95.0), lambda _: None)
    settings = TelemetrySettings(dashboard=DashboardSettings(port=busy.getsockname()[1]))
    ctx = TelemetryContext(site=SITE, timezone=TZ, clock=clock, apply=commands.apply, state_dir=tmp_path,
                           on_alarm=lambda *a: alarms.append(a))
    telemetry = await start_telemetry(settings, Bus(), ctx)
    assert telemetry.dashboard is None
    assert alarms and alarms[0][:2] == ("telemetry.dashboard_unavailable", True)
    await telemetry.aclose()
    busy.close()


# ----------------------------------------------------------------------------------------------
# hostile input, Host header, shutdown (issue 11)

@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"[" * 1024 + b"]" * 1024, 422, "JSON nested deeper than 4 levels"),         # HTTP 500 before the fix
    (b'{"mode": "standby", "ttl_s": 600, "id": "\\ud800"}', 422, "lone surrogate"),  # 500 and applied before
    (b'\xef\xbb\xbf{"mode": "standby", "ttl_s": 600}', 422, "UTF-8 byte-order mark"),   # accepted before
    ('{"mode": "standby", "ttl_s": 600}'.encode("utf-16"), 422, "UTF-16 byte-order mark"),  # accepted before
    (b'{"mode": "standby", "ttl_s": NaN}', 422, "ttl_s: NaN is not a finite number"),
    (b'{"mode": "standby", "ttl_s": 600, "id": "' + b"x" * 5000 + b'"}', 413, "exceeds 4096 bytes"),
    (b'{"mode": "standby", "ttl_s": 600, "mode": "auto"}', 422, "duplicate key 'mode'"),
    (bytes(range(256)), 422, "NUL byte at offset 0"),
])
async def test_bad_command_bodies_get_4xx_with_a_reason(site: Site, body: bytes, status: int, reason: str) -> None:
    got_status, result = await call(site, "/api/cmd/set_mode", body, token=TOKEN)
    assert got_status == status and not result["accepted"] and reason in result["reason"], (got_status, result)
    assert site.commands.modes.request is None                          # nothing hostile is applied
    got_status, result = await call(site, "/api/cmd/set_mode", {"mode": "tou_rule", "ttl_s": 60, "id": "x"},
                                    token=TOKEN)
    assert got_status == 200 and result["id"] == "x"


@pytest.mark.parametrize("name", ["%ED%A0%80", "%FF", "x" * 3000, "set_mode%00"])
async def test_odd_command_names_get_422(site: Site, name: str) -> None:
    status, result = await call(site, f"/api/cmd/{name}", {"mode": "standby", "ttl_s": 60}, token=TOKEN)
    assert status == 422 and "unknown command" in result["reason"] and len(result["command"]) <= 64
    assert len(result["reason"]) < 200 and site.commands.modes.request is None


async def test_schema_rejection_echoes_the_id_and_counters_reach_the_state(site: Site) -> None:
    status, result = await call(site, "/api/cmd/set_mode", {"mode": "turbo", "id": "op-7"}, token=TOKEN)
    assert status == 422 and result["id"] == "op-7"                     # null before the fix
    site.bus.publish("state", sample_state(T0, 1))
    await asyncio.sleep(0.05)
    _, snap = await call(site, "/api/snapshot")
    assert snap["state"]["commands"] == {"accepted": 0, "rejected": 1, "busy": 0, "errors": 0, "dropped": 0}


@pytest.mark.parametrize(("allowed", "host", "status"), [
    ((), "127.0.0.1:{port}", 200),
    ((), "localhost:{port}", 200),
    ((), "LOCALHOST", 200),
    ((), "[::1]:{port}", 200),
    ((), "attacker.example:{port}", 400),        # a rebound DNS name: answered before the fix
    ((), "ems.factory.lan", 400),
    (("ems.factory.lan", "192.168.1.20"), "ems.factory.lan:{port}", 200),
    (("ems.factory.lan", "192.168.1.20"), "192.168.1.20", 200),
    (("*.factory.lan",), "ems.factory.lan", 200),
    (("*.factory.lan",), "factory.lan.attacker.example", 400),
    (("*",), "anything.example", 200),
])
async def test_host_header_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: tuple[str, ...],
                                      host: str, status: int) -> None:
    site = await start_site(tmp_path, monkeypatch, TOKEN, **({"allowed_hosts": allowed} if allowed else {}))
    try:
        got, _ = await call(site, "/api/config", host=host.format(port=site.telemetry.dashboard.port))
        assert got == status
        got, _ = await call(site, "/api/cmd/set_mode", {"mode": "standby", "ttl_s": 60}, token=TOKEN,
                                 host=host.format(port=site.telemetry.dashboard.port))
        assert got == (200 if status == 200 else 400)
        assert (site.commands.modes.request is not None) == (status == 200)
    finally:
        await site.telemetry.aclose()


def test_allowed_hosts_setting() -> None:
    from controller.dashboard.app import allowed_hosts

    assert allowed_hosts(DashboardSettings()) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts(DashboardSettings(host="0.0.0.0", allowed_hosts=("EMS.lan", "fd00::5"))) == [
        "localhost", "127.0.0.1", "[::1]", "ems.lan", "[fd00::5]"]
    assert allowed_hosts(DashboardSettings(host="192.168.1.20")) == ["localhost", "127.0.0.1", "[::1]", "192.168.1.20"]
    for bad in ("ems*.lan", "", "a.*.lan"):
        with pytest.raises(ValueError, match="allowed_hosts"):
            DashboardSettings(allowed_hosts=(bad,))


async def _event_stream_that_reconnects(port: int, opened: list[int]) -> None:
    """What a browser's EventSource does: read the stream, and open a new one as soon as it ends."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        opened.append(1)
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        received = b""
        while not received.endswith(b"0\r\n\r\n"):          # the last chunk of a finished stream
            data = await reader.read(4096)
            if not data:
                break
            received += data
        writer.close()


async def test_shutdown_with_a_live_event_client_logs_no_traceback(site: Site, caplog: pytest.LogCaptureFixture,
                                                                  ) -> None:
    """Before the fix the reconnected stream held the server until uvicorn's graceful-shutdown
    timeout cancelled it: "Exception in ASGI application ... CancelledError" in the log."""
    opened: list[int] = []
    client = asyncio.create_task(_event_stream_that_reconnects(site.telemetry.dashboard.port, opened))
    async with asyncio.timeout(10):
        while site.telemetry.hub.clients == 0:
            await asyncio.sleep(0.01)
    await site.telemetry.aclose()
    async with asyncio.timeout(10):
        await client
    assert opened and site.telemetry.hub.clients == 0
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []


async def test_shutdown_with_a_stalled_event_client_logs_no_traceback(site: Site,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A client that stopped reading (its socket buffers full) cannot take the end of the stream;
    before the fix uvicorn cancelled it at its graceful-shutdown timeout, with a traceback."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", site.telemetry.dashboard.port))
    stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(10):
        while site.telemetry.hub.clients == 0:
            await asyncio.sleep(0.01)
    big_state = {**sample_state(T0, 1), "padding": "x" * 100_000}
    for _ in range(100):                      # ~10 MB the client never reads: the server's send blocks
        site.bus.publish("state", big_state)
        await asyncio.sleep(0.002)
    await site.telemetry.aclose()
    stalled.close()
    assert site.telemetry.hub.clients == 0
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
