"""Real peers on loopback for the telemetry tests: mosquitto, VictoriaMetrics (as the InfluxDB v2
write endpoint), a stub InfluxDB that refuses malformed lines with HTTP 400, and headless Chromium.

Import the fixtures you use explicitly, e.g. ``from tests.peers import mosquitto  # noqa: F401``.
Every peer listens on 127.0.0.1 on a free port and keeps its files in a temporary directory.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

READY_TIMEOUT_S = 15.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago and that this process has not handed out before: the
    kernel may give a port just closed again, and two devices of one site file must not share one by chance
    (a CI run failed on "two devices share host, port and unit_id")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Block until 127.0.0.1:``port`` accepts connections (fail if ``proc`` exits first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------------------------
# mosquitto


class Mosquitto:
    """A mosquitto 2 broker on 127.0.0.1:``port``; ``users`` switches on passwords and ``acl`` an ACL file;
    ``persistence`` keeps retained messages and persistent sessions across a restart; ``tls`` = (CA
    certificate, broker certificate, broker key) makes the listener TLS-only."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, acl: str | None = None,
                 persistence: bool = False, tls: tuple[Path, Path, Path] | None = None):
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        conf = [f"listener {self.port} 127.0.0.1", "user root",
                f"persistence {'true' if persistence else 'false'}", f"persistence_location {workdir}/",
                f"log_dest file {workdir / 'mosquitto.log'}", "log_type error", "log_type warning"]
        if tls is not None:
            conf += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        if users:
            passwd = workdir / "passwd"
            passwd.touch()
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), name, password], check=True)
            conf += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            conf.append("allow_anonymous true")
        if acl is not None:
            (workdir / "acl").write_text(acl)
            conf.append(f"acl_file {workdir / 'acl'}")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """An anonymous broker."""
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


BROKER_USERS = {"ems-controller": "ctl-secret", "operator": "op-secret", "grafana": "viewer-secret"}
"""Users of :func:`mosquitto_auth` (same roles as deploy/mosquitto/acl)."""


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker with the shipped ACL (deploy/mosquitto/acl) and a password per user of ``BROKER_USERS``."""
    acl = (Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl").read_text()
    broker = Mosquitto(tmp_path, users=BROKER_USERS, acl=acl)
    broker.start()
    yield broker
    broker.stop()


def make_tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a broker certificate for 127.0.0.1 (openssl CLI): (ca.crt, broker.crt, broker.key)."""
    ca_key, ca, key, csr, crt = (workdir / n for n in ("ca.key", "ca.crt", "broker.key", "broker.csr", "broker.crt"))
    ext = workdir / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    quiet = {"check": True, "capture_output": True}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
                    "-keyout", str(ca_key), "-out", str(ca)], **quiet)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
                    "-out", str(csr)], **quiet)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt)], **quiet)
    return ca, crt, key


# ----------------------------------------------------------------------------------------------
# VictoriaMetrics


class VictoriaMetrics:
    """VictoriaMetrics single-node; accepts InfluxDB line protocol on ``/api/v2/write``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{self.port}",
             f"-storageDataPath={self.workdir / 'data'}", "-retentionPeriod=100y", "-loggerLevel=ERROR"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        _stop(self.proc)

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return resp.read()

    def export(self, metric: str, **labels: str) -> list[tuple[int, float]]:
        """Every stored ``(timestamp_ms, value)`` of ``metric`` (all series matching ``labels``),
        duplicates included, sorted."""
        self._get("/internal/force_flush")
        selector = ",".join([f'__name__="{metric}"', *(f'{k}="{v}"' for k, v in labels.items())])
        query = urllib.parse.urlencode({"match[]": f"{{{selector}}}", "start": "0"})
        samples = []
        for line in self._get(f"/api/v1/export?{query}").splitlines():
            if line.strip():
                row = json.loads(line)
                samples += zip(row["timestamps"], row["values"], strict=True)
        return sorted(samples)

    def wait_for(self, metric: str, count: int, timeout_s: float = 60.0, **labels: str) -> list[tuple[int, float]]:
        """Export ``metric`` until at least ``count`` samples are visible (VM makes new data searchable
        after about a second, later on a loaded machine: a clean-clone CI run saw the last 5 of 240 accepted
        points still hidden after 20 s) or the timeout passes; returns the last export."""
        deadline = time.monotonic() + timeout_s
        while True:
            samples = self.export(metric, **labels)
            if len(samples) >= count or time.monotonic() > deadline:
                return samples
            time.sleep(0.3)


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    yield vm
    vm.stop()


# ----------------------------------------------------------------------------------------------
# stub InfluxDB


class StubInflux:
    """An ``/api/v2/write`` endpoint that answers 400 (like InfluxDB) to any body containing a line
    with ``marker`` and 204 otherwise; keeps every accepted line."""

    def __init__(self, marker: str = "malformed"):
        self.marker = marker
        self.accepted: list[str] = []
        self.requests = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                stub.requests += 1
                lines = body.splitlines()
                bad = [i for i, line in enumerate(lines) if stub.marker in line]
                if bad:
                    msg = json.dumps({"code": "invalid", "message": f"unable to parse line {bad[0] + 1}"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                stub.accepted += lines
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_influx() -> Iterator[StubInflux]:
    stub = StubInflux()
    stub.start()
    yield stub
    stub.stop()


# ----------------------------------------------------------------------------------------------
# headless Chromium


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[object]:
    """Debian's Chromium driven by Playwright (no browser download)."""
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (make test installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


# ----------------------------------------------------------------------------------------------
# recorded controller messages


def sample_state(ts: datetime, i: int = 0, site: str = "demo-factory", mode: str = "auto") -> dict[str, Any]:
    """A ``state`` message shaped like ``controller.service.Controller._state_payload`` (JSON-ready),
    varying with ``i``."""
    pv_kw = 400.0 + i % 50
    load_kw = 800.0 + (i * 7) % 40
    battery_kw = 100.0 - i % 20
    iso = ts.astimezone(UTC).isoformat()
    peak_at = (ts.astimezone(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0).isoformat()
    return {
        "ts": iso, "site": site, "mode": mode, "reason": "plan", "mode_since": iso,
        "measurements": {
            "grid_kw": {"value": load_kw - pv_kw - battery_kw, "unit": "kW", "quality": "ok"},
            "pv_kw": {"value": pv_kw, "unit": "kW", "quality": "ok"},
            "battery_kw": {"value": battery_kw, "unit": "kW", "quality": "ok"},
            "soc_pct": {"value": 50.0 + (i % 100) / 10, "unit": "%", "quality": "ok"},
            "frequency_hz": {"value": None, "unit": "Hz", "quality": "stale", "detail": "older than 5 s"},
        },
        "load_kw": load_kw,
        "devices": {"grid-meter": {"ok": True, "error": None}, "battery": {"ok": True, "error": None}},
        "setpoints": {"battery_kw": battery_kw, "pv_limit_pct": 100.0, "pv_limit_kw": None, "safe": False,
                      "source": "plan", "follow": "battery", "reason": "target", "expected_grid_kw": 300.0,
                      "bounds": [{"step": "bms", "lo_kw": -500.0, "hi_kw": 500.0, "note": ""}]},
        "operator": {"request": None, "until": None, "manual_setpoint_kw": None, "soc_reserve_pct": None},
        "plan": {"created_at": iso, "source": "optimizer", "step_start": iso, "battery_kw": 100.0, "grid_kw": 300.0,
                 "soc_pct": 55.0, "expires_at": iso, "follow": "battery", "follow_reason": "flat"},
        "tariff": {"period": "normal", "import_price": 1833.0, "export_price": 0.0, "currency": "VND"},
        "today": {"day": "2026-05-04", "import_kwh": 1500.0, "export_kwh": 0.0, "pv_kwh": 1200.0 + i,
                  "load_kwh": 3000.0 + i, "charge_kwh": 200.0, "discharge_kwh": 150.0, "load_from_pv_kwh": 1000.0 + i,
                  "load_from_battery_kwh": 150.0, "load_from_grid_kwh": 1850.0, "cost": 2.7e6,
                  "cost_no_battery": 3.95e6, "saved": 1_250_000.0 + 100 * i},
        "month": {"month": "2026-05", "energy_cost": 9.0e7, "energy_cost_no_battery": 9.2e7, "energy_saved": 2.0e6,
                  "billed_kw": 950.0, "billed_kw_no_battery": 1150.0, "demand_charge": 2.4e8,
                  "demand_charge_no_battery": 2.9e8, "demand_saved": 5.0e7, "saved": 5.2e7},
        "demand": {"month": "2026-05", "month_peak_kw": 950.0, "interval_avg_kw": 310.0, "import_cap_kw": 1200.0,
                   "month_peak_at": peak_at, "month_peak_period": "normal", "hold_kw": 980.0,
                   "window_projected_kw": 990.0, "shed_to_hold_kw": 30.0, "window_left_min": 10.0},
        "validation": {"findings": []},
        "alarms": [],
        "solver": {"plans_made": 3, "failures": 0, "last_error": None, "detail": None, "elapsed_ms": 420.0,
                   "status": "optimal", "solve_ms": 380.0},
        "cycle": {"read_ms": 12.0, "decide_ms": 0.4, "write_ms": 3.0, "cycle_ms": 15.4, "n": i, "bus_dropped": 0},
    }


def sample_plan(t0: datetime, steps: int = 4) -> dict[str, Any]:
    """A plan as ``Plan.to_dict()`` gives it (columnar, every series of ``optimizer.plan.SERIES``)."""
    battery = [10.0 * k for k in range(steps)]
    return {"schema_version": "1.0", "created_at": t0.isoformat(), "source": "optimizer",
            "starts": [(t0 + timedelta(minutes=15 * k)).isoformat() for k in range(steps)],
            "soc0_kwh": 500.0, "capacity_kwh": 1000.0, "duration_h": [0.25] * steps,
            "battery_kw": battery, "charge_kw": [0.0] * steps, "discharge_kw": battery,
            "grid_kw": [300.0] * steps, "import_kw": [300.0] * steps, "export_kw": [0.0] * steps,
            "soc_kwh": [500.0 - 2.5 * k for k in range(1, steps + 1)], "pv_kw": [400.0] * steps,
            "curtail_kw": [0.0] * steps, "load_kw": [700.0] * steps, "import_price": [1833.0] * steps,
            "export_price": [0.0] * steps, "period": ["normal"] * steps,
            "objective": {"energy_cost": 1e6, "total": 9e5}, "solver": {"status": "optimal", "solve_ms": 40.0},
            "slack": []}
