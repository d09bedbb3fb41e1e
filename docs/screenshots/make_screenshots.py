"""Regenerate the screenshots in docs/screenshots/ with headless Chromium (Debian's, driven by Playwright).

    python docs/screenshots/make_screenshots.py [--report out/nam-cau-kien/report.html]

* ``dashboard-vi.png``: the live dashboard in Vietnamese, fed a synthetic day (Decision 963 tariff, a plan,
  one stale meter point) through the dashboard's own hub, exactly as the controller's bus would feed it.
* ``report.png``: the study report (``ems simulate --out``), only when ``--report`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.dashboard.app import DashboardHub, DashboardServer, create_app
from controller.telemetry.config import DashboardSettings
from optimizer.tariff import Tariff

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
TZ = "Asia/Ho_Chi_Minh"
DAY = datetime(2026, 5, 4, tzinfo=UTC) - timedelta(hours=7)          # 00:00 site time, Monday 4 May 2026
NOW = DAY + timedelta(hours=15, minutes=20)


def pv_kw(t: datetime) -> float:
    """A clear-day PV profile of a 1 MWp roof. [kW]"""
    h = (t - DAY).total_seconds() / 3600
    return max(0.0, 900.0 * math.sin(math.pi * (h - 6.0) / 12.5)) if 6.0 < h < 18.5 else 0.0


def battery_kw(t: datetime) -> float:
    """Charge off-peak at night and from surplus PV, discharge in the evening peak. [kW, + discharge]"""
    h = (t - DAY).total_seconds() / 3600
    if h < 6:
        return -180.0
    if 17.5 <= h < 22.5:
        return 300.0
    return -max(0.0, pv_kw(t) - 700.0)


def state(t: datetime, soc: float) -> dict[str, Any]:
    load = 750.0 + 80.0 * math.sin((t - DAY).total_seconds() / 5400)
    pv, bat = pv_kw(t), battery_kw(t)
    grid = load - pv - bat
    stale = t >= NOW - timedelta(minutes=25)
    period = "off_peak" if (t - DAY) < timedelta(hours=6) else "normal"
    return {
        "ts": t.isoformat(), "site": "nam-cau-kien", "mode": "auto", "reason": "plan", "mode_since": DAY.isoformat(),
        "measurements": {"grid_kw": {"value": grid, "unit": "kW", "quality": "ok"},
                         "pv_kw": {"value": pv, "unit": "kW", "quality": "ok"},
                         "battery_kw": {"value": bat, "unit": "kW", "quality": "ok"},
                         "soc_pct": {"value": soc, "unit": "%", "quality": "ok"}},
        "load_kw": load,
        "devices": {"grid-meter": {"ok": True, "error": None, "role": "meter", "location": "grid", "measured_kw": grid},
                    "battery": {"ok": True, "error": None, "role": "battery", "in_group": True, "reason": None,
                                "measured_kw": bat, "setpoint": bat, "setpoint_unit": "kW", "soc_pct": soc},
                    "pv-inverters": {"ok": True, "error": None, "role": "pv_inverter", "in_group": True,
                                     "reason": None, "measured_kw": pv, "setpoint": 100.0, "setpoint_unit": "%",
                                     "soc_pct": None}},
        "setpoints": {"battery_kw": bat},
        "plan": {"battery_kw": bat + 5.0 * math.sin((t - DAY).total_seconds() / 1800), "grid_kw": grid,
                 "soc_pct": soc},
        "tariff": {"period": period, "import_price": 1833.0 * 1.08, "export_price": 0.0, "currency": "VND"},
        "today": {"day": "2026-05-04", "import_kwh": 5210.0, "export_kwh": 0.0, "pv_kwh": 5830.0,
                  "load_kwh": 9550.0, "charge_kwh": 1490.0, "discharge_kwh": 0.0, "load_from_pv_kwh": 5480.0,
                  "load_from_battery_kwh": 0.0, "load_from_grid_kwh": 4070.0, "cost": 1.021e7,
                  "cost_no_battery": 1.012e7, "saved": -90_000.0},
        "demand": {"month": "2026-05", "month_peak_kw": 812.0, "month_peak_at": "2026-05-02T11:00:00+00:00",
                   "month_peak_period": "peak", "interval_avg_kw": 420.0, "window_minutes": 30.0,
                   "window_elapsed_min": 20.0, "import_cap_kw": 1200.0},
        "alarms": ["point_stale:grid-meter:frequency_hz"] if stale else [],
    }


def plan(t0: datetime) -> dict[str, Any]:
    steps = int((DAY + timedelta(days=1) - t0) / timedelta(minutes=15))
    starts = [t0 + timedelta(minutes=15 * k) for k in range(steps)]
    bats = [battery_kw(s) for s in starts]
    soc, socs = 88.0, []
    for b in bats:
        soc -= b * 0.25 / 20.0
        socs.append(soc * 20.0)
    return {"created_at": t0.isoformat(), "source": "optimizer", "starts": [s.isoformat() for s in starts],
            "duration_h": [0.25] * len(starts), "soc0_kwh": 88.0 * 20, "capacity_kwh": 2000.0,
            "battery_kw": bats, "grid_kw": [750.0 - pv_kw(s) - b for s, b in zip(starts, bats, strict=True)],
            "import_kw": [max(0.0, 750.0 - pv_kw(s) - b) for s, b in zip(starts, bats, strict=True)],
            "soc_kwh": socs, "import_price": [tariff_price(s) for s in starts]}


def tariff_price(t: datetime) -> float:
    """Decision 963 import price with 8 % VAT of a step on a Monday. [VND/kWh]"""
    h = (t - DAY).total_seconds() / 3600
    return 1.08 * (1190.0 if h < 6 else 3398.0 if 17.5 <= h < 22.5 else 1833.0)


async def dashboard_screenshot(browser: Any, out: Path) -> None:
    tariff = Tariff.preset("evn-manufacturing-22kv-qd963").bind(TZ)
    hub = DashboardHub(TZ, tariff=tariff)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(hub, DashboardSettings(port=port, language="vi"), site="nam-cau-kien", timezone=TZ, currency="VND")
    server = DashboardServer(app, hub, "127.0.0.1", port)
    await server.start()
    try:
        soc, t = 40.0, DAY
        while t <= NOW:
            hub.offer("state", state(t, soc))
            soc = min(95.0, max(10.0, soc - battery_kw(t) / 60.0 / 20.0))
            t += timedelta(minutes=1)
        hub.offer("plan", plan(NOW))
        hub.offer("alarm", {"ts": (NOW - timedelta(minutes=25)).isoformat(),
                            "code": "point_stale:grid-meter:frequency_hz", "active": True,
                            "message": "grid-meter frequency_hz frozen at 50.01 Hz for 60 s"})
        hub.offer("state", state(NOW, soc))
        page = await browser.new_page(locale="vi-VN", viewport={"width": 1400, "height": 1250})
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function("document.querySelectorAll('#chart-power rect.shade').length > 0")
        await page.wait_for_timeout(500)
        await page.screenshot(path=str(out), full_page=True)
        await page.close()
    finally:
        await server.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="a study's report.html to capture as report.png")
    args = parser.parse_args()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        await dashboard_screenshot(browser, HERE / "dashboard-vi.png")
        print(f"wrote {HERE / 'dashboard-vi.png'}")
        if args.report is not None:
            page = await browser.new_page(viewport={"width": 1200, "height": 1600})
            await page.goto(args.report.resolve().as_uri())
            await page.screenshot(path=str(HERE / "report.png"), full_page=False)
            print(f"wrote {HERE / 'report.png'}")
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
