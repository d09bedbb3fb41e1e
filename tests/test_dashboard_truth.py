"""What the dashboard page says, read from its DOM in headless Chromium (issue 14): the tariff's named
periods shaded over the whole day, plan beside what happened, device health, translated alarms,
month-to-date peak, day navigation from the stored history. The app is fed synthetic bus messages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from optimizer.tariff import Tariff
from tests.peers import browser, sample_plan, sample_state  # noqa: F401 (fixtures)
from tests.test_dashboard import TOKEN, TZ, Site, start_site


def site_ms(hh: int, mm: int, day: tuple[int, int, int] = (2026, 5, 4)) -> int:
    """Epoch ms of a Hai Phong wall time (UTC+7, no DST)."""
    return int((datetime(*day, hh, mm, tzinfo=UTC).timestamp() - 7 * 3600) * 1000)


async def open_dashboard(chromium: Any, site: Site, locale: str) -> tuple[Any, Any]:
    """A browser context in ``locale`` and the dashboard page in it, once its live connection is up with no alarm
    (the connection dot green): ``(context, page)``."""
    context = await chromium.new_context(locale=locale)
    page = await context.new_page()
    await page.goto(site.url + "/")
    await page.wait_for_function("document.getElementById('conn').className === 'conn'")
    return context, page


async def shaded_period_at(page: Any, ms: int) -> list[str]:
    """The named periods of the shading rectangles that cover ``ms`` on the power chart, once one is drawn (the
    week view draws its days as their periods arrive)."""
    await page.wait_for_function(
        """(ms) => [...document.querySelectorAll('#chart-power rect.shade')]
             .some((r) => Number(r.dataset.start) <= ms && ms < Number(r.dataset.end))""", arg=ms)
    return await page.evaluate(
        """(ms) => [...document.querySelectorAll('#chart-power rect.shade')]
             .filter((r) => Number(r.dataset.start) <= ms && ms < Number(r.dataset.end))
             .map((r) => r.dataset.period)""", ms)


@pytest.mark.parametrize(("preset", "expected"), [
    # Decision 963/QĐ-BCT windows: 06:00–17:30 is *normal* (the old shading called it "thấp điểm")
    ("evn-manufacturing-22kv-qd963", {(3, 0): "off_peak", (6, 0): "normal", (12, 0): "normal", (17, 29): "normal",
                                      (17, 30): "peak", (22, 29): "peak", (22, 30): "normal", (23, 59): "normal"}),
    # the earlier windows: two peaks, off-peak from 22:00
    ("evn-manufacturing-22kv-legacy", {(3, 59): "off_peak", (4, 0): "normal", (10, 0): "peak", (12, 0): "normal",
                                       (18, 0): "peak", (21, 0): "normal", (22, 0): "off_peak"}),
])
async def test_named_periods_shaded_over_the_whole_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       browser: Any, preset: str,  # noqa: F811
                                                       expected: dict[tuple[int, int], str]) -> None:
    tariff = Tariff.preset(preset).bind(TZ)
    site: Site = await start_site(tmp_path, monkeypatch, TOKEN, tariff=tariff)
    try:
        context, page = await open_dashboard(browser, site, "vi-VN")
        now = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)        # 16:00 site time, a Monday
        site.bus.publish("plan", sample_plan(now, steps=8))  # a plan covering only the next two hours
        site.bus.publish("state", sample_state(now, 1))
        midnight = f"#chart-power rect.shade[data-start='{site_ms(0, 0)}']"    # drawn for the state's day
        await page.wait_for_function(f'document.querySelector("{midnight}")')
        for (hh, mm), period in expected.items():           # past and future alike, from the tariff
            assert await shaded_period_at(page, site_ms(hh, mm)) == [period], (hh, mm)
        legend = await page.eval_on_selector_all("#period-legend .key", "els => els.map(e => e.textContent)")
        assert legend == ["giờ thấp điểm", "giờ bình thường", "giờ cao điểm"]   # the tariff's names, translated
        await page.select_option("#nav-span", "week")                 # every day of the week, by its own day type
        await page.wait_for_function("document.getElementById('nav-label').textContent.includes('–')")
        await page.click("#nav-prev")                                  # the week of 27 April – 3 May
        tuesday = f"#chart-power rect.shade[data-start='{site_ms(0, 0, (2026, 4, 28))}']"
        await page.wait_for_function(f'document.querySelector("{tuesday}")')
        assert await shaded_period_at(page, site_ms(18, 0, (2026, 4, 28))) == ["peak"]
        assert await shaded_period_at(page, site_ms(18, 0, (2026, 5, 3))) == ["normal"]    # Sunday: no peak
        holiday = site_ms(18, 0, (2026, 4, 30))                       # a public holiday: the tariff's own rule
        rule = tariff.prices(pd.DatetimeIndex([pd.Timestamp(holiday, unit="ms", tz="UTC")])).period[0]
        assert await shaded_period_at(page, holiday) == [str(rule)]
        await context.close()
    finally:
        await site.telemetry.aclose()


async def test_periods_endpoint_rejects_a_bad_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_dashboard import call

    site = await start_site(tmp_path, monkeypatch, TOKEN, tariff=Tariff.preset("evn-manufacturing-22kv-qd963").bind(TZ))
    try:
        status, body = await call(site, "/api/periods?day=2026-13-01")
        assert status == 422 and "not a date" in body["error"]
        status, body = await call(site, "/api/periods?day=2026-05-03")      # a Sunday: no peak under 963
        assert status == 200 and [p for _, _, p in body["intervals"]] == ["off_peak", "normal"]
        assert body["intervals"][0][0] == site_ms(0, 0, (2026, 5, 3))
        assert body["intervals"][-1][1] == site_ms(0, 0, (2026, 5, 4))
    finally:
        await site.telemetry.aclose()
    await asyncio.sleep(0)


async def test_device_fault_in_health_panel_and_as_a_translated_alarm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       browser: Any) -> None:  # noqa: F811
    site = await start_site(tmp_path, monkeypatch, TOKEN)
    try:
        context, page = await open_dashboard(browser, site, "vi-VN")
        now = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)                                            # 10:00 site time
        site.bus.publish("state", sample_state(now, 1))
        await page.wait_for_function("document.querySelector('#health tr[data-device=battery]')")
        assert await page.get_attribute("#health tr[data-device=battery]", "data-status") == "ok"
        raised = {"planner_failed": "ForecastError: no weather forecast for 2026-05-04 (HTTP 503)",
                  "device_unreachable:battery": "battery: no answer within 2.0 s",
                  "point_stale:grid-meter:grid_kw": "grid-meter grid_kw frozen at 312.0 kW for 60 s"}
        fault = now.replace(minute=5)
        for code, message in raised.items():
            site.bus.publish("alarm", {"ts": fault.isoformat(), "site": "demo-factory", "code": code, "active": True,
                                       "message": message})
        state = sample_state(fault, 2)
        state["devices"]["battery"] = {"ok": False, "error": "no answer within 2.0 s"}
        state["alarms"] = sorted(raised)
        site.bus.publish("state", state)
        await page.wait_for_function("document.querySelector('#health tr[data-device=battery]')"
                                     ".dataset.status === 'unreachable'")
        battery = await page.inner_text("#health tr[data-device=battery]")
        assert "không phản hồi" in battery and "10:05" in battery                  # status and since when
        meter = await page.inner_text("#health tr[data-device=grid-meter]")
        assert "không cập nhật" in meter and "grid_kw" in meter
        assert await page.get_attribute("#conn", "class") == "conn alarm"          # not green "live"
        shown = await page.inner_text("#alarms")                                    # what the operator sees
        assert "Không lập được kế hoạch" in shown and "battery không phản hồi" in shown
        assert "Kiểm tra nguồn, cáp mạng" in shown                                 # an action hint
        assert "ForecastError" not in shown and "no answer" not in shown and "planner_failed" not in shown
        await page.click("#alarms li[data-code=planner_failed] summary")           # the raw text, on request
        assert "ForecastError: no weather" in await page.inner_text("#alarms li[data-code=planner_failed] details")
        await context.close()
    finally:
        await site.telemetry.aclose()


async def test_a_past_step_shows_what_was_planned_beside_what_happened(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       browser: Any) -> None:  # noqa: F811
    """The plan changes at 10:15; the 10:00 step keeps what its own plan said (battery 100 kW)."""
    site = await start_site(tmp_path, monkeypatch, TOKEN)
    try:
        context, page = await open_dashboard(browser, site, "en-US")
        start = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)                               # 10:00 site time
        for minute in range(0, 30, 5):
            state = sample_state(start.replace(minute=minute), 1)                      # battery measured 99 kW
            state["plan"]["battery_kw"] = 100.0 if minute < 15 else -250.0            # a new plan from 10:15
            site.bus.publish("state", state)
        later = start.replace(minute=30)
        site.bus.publish("plan", {**sample_plan(later, steps=4), "battery_kw": [-300.0] * 4})
        site.bus.publish("state", sample_state(later, 1))
        first = f"#chart-power rect.step[data-start='{site_ms(10, 0)}']"
        await page.wait_for_function(f'document.querySelector("{first}")')
        assert await page.get_attribute(first, "data-battery-plan") == "100"
        assert await page.get_attribute(first, "data-battery-actual") == "99"
        title = await page.text_content(f"{first} title")
        assert "Battery: planned 100.0 kW, measured 99.0 kW" in title
        second = f"#chart-power rect.step[data-start='{site_ms(10, 15)}'] title"
        assert "planned -250.0 kW, measured 99.0 kW" in await page.text_content(second)
        ahead = "#chart-power path.battery-plan:not(.past)"                                # the current plan,
        await page.wait_for_function(f'(document.querySelector("{ahead}")?.getAttribute("d") || "")'  # drawn once
                                     '.startsWith("M")')                                             # it arrived
        assert (await page.get_attribute(ahead, "d")).startswith("M")
        await context.close()
    finally:
        await site.telemetry.aclose()


async def test_month_to_date_peak_and_money_cards_explain_themselves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     browser: Any) -> None:  # noqa: F811
    site = await start_site(tmp_path, monkeypatch, TOKEN)
    try:
        context, page = await open_dashboard(browser, site, "en-US")
        now = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
        site.bus.publish("plan", {**sample_plan(now, steps=8), "import_kw": [300.0] * 7 + [1020.0]})
        state = sample_state(now, 1)
        state["demand"] = {"month": "2026-05", "month_peak_kw": 950.0, "interval_avg_kw": 310.0,
                           "import_cap_kw": 1200.0, "month_peak_at": "2026-05-04T01:30:00+00:00",
                           "month_peak_period": "normal", "hold_kw": 1005.0, "window_projected_kw": 1064.5,
                           "shed_to_hold_kw": 133.5, "window_left_min": 10.0, "billed_kw": 950.0,
                           "window_minutes": 15.0, "window_elapsed_min": 5.4}
        state["today"].update(charge_kwh=527.0, discharge_kwh=0.0, cost=4.0e6, cost_no_battery=3.95e6, saved=-50_000.0,
                              load_kwh=3000.0, import_kwh=1800.0, pv_kwh=1200.0, export_kwh=0.0,
                              load_from_pv_kwh=1200.0, load_from_battery_kwh=0.0, load_from_grid_kwh=1800.0 - 527.0,
                              expected_saved=78_310.0)
        # the month so far: the day's negative energy figure is the price of a capacity charge 200 kW lower
        state["month"] = {"month": "2026-05", "energy_cost": 9.0e7, "energy_cost_no_battery": 8.9e7,
                          "energy_saved": -1.0e6, "billed_kw": 950.0, "billed_kw_no_battery": 1150.0,
                          "demand_charge": 2.4e8, "demand_charge_no_battery": 2.9e8, "demand_saved": 5.0e7,
                          "saved": 4.9e7}
        site.bus.publish("state", state)
        await page.wait_for_function("document.getElementById('mtd-peak').textContent === '950.0 kW'")
        assert await page.text_content("#mtd-cap") == "1,200.0 kW"
        # the tariff's own demand window (15 min here), and the import so far building up to its average
        assert await page.text_content("#mtd-title") == "This month's peak demand (15-min average)"
        assert await page.text_content("#mtd-now") == "310.0 kW · 5 of 15 min"
        assert await page.text_content("#mtd-set") == "Mon 04 May, 08:30 · normal"  # 01:30 UTC in site time
        # the level the plan holds on the tariff's 30-minute measure, not its highest 15-minute import (1,020 kW)
        assert await page.text_content("#mtd-planned") == "1,005.0 kW"
        explain = await page.text_content("#mtd-explain")
        assert "79 % of the contracted capacity" in explain and "higher peak later this month" in explain
        # the demand watch: where the running window is heading, and what to shed to hold the month's level
        assert await page.text_content("#mtd-projected") == "1,064.5 kW · 10 min left"
        assert await page.is_visible("#mtd-projected") and await page.is_visible("#mtd-projected-label")
        state["demand"] = {**state["demand"], "hold_kw": None, "window_projected_kw": None, "shed_to_hold_kw": None,
                           "window_left_min": None}   # a month without a demand charge: no outlook, no row
        site.bus.publish("state", state)
        await page.wait_for_function("document.getElementById('mtd-projected').hidden")
        assert not await page.is_visible("#mtd-projected-label")
        assert await page.text_content("#mtd-planned") == "1,020.0 kW"      # no demand charge: the plan's import
        # on the card's own measure: a half hour planned at 1,020 then 980 kW is a 1,000 kW half hour (the card
        # said 1,020 beside a month's peak counted in half hours)
        state["demand"] = {**state["demand"], "window_minutes": 30.0}
        site.bus.publish("plan", {**sample_plan(now, steps=8), "import_kw": [300.0] * 6 + [1020.0, 980.0]})
        site.bus.publish("state", state)
        await page.wait_for_function("document.getElementById('mtd-planned').textContent === '1,000.0 kW'")
        assert "Shed" not in await page.text_content("#mtd-explain")
        assert "Shed 133.5 kW of load for the remaining 10 min to hold 1,005.0 kW this month." in explain
        assert await page.get_attribute("#saved-today", "class") == "big money negative"   # not green
        said = await page.text_content("#saved-explain")
        assert "charged 527 kWh" in said and "bought energy for the coming peak" in said
        # the controller's own figure (controller.accounting.plan_saving, by the day's money rule), as it says it
        assert "Expected saving by the end of today (plan): ₫78,310." in said
        # 1,200 / 0 / 1,273 of 2,473 kWh: 48.52 / 0 / 51.48 % → 49 / 0 / 51 by the largest remainder (not the
        # 40 % "self-sufficiency" that counted the 527 kWh bought to charge the battery as load bought)
        shares = (await page.text_content("#load-supply")).replace("\u00a0", "_")    # no break inside a share
        assert shares == "PV_49_% · battery_0_% · grid_51_%"
        assert await page.text_content("#self-consumption") == "100 %"     # nothing exported
        assert await page.text_content("#saved-month") == "₫49,000,000"
        assert await page.get_attribute("#saved-month", "class") == "money"            # green
        assert await page.text_content("#month-explain") == (
            "Energy -₫1,000,000. Capacity charge ₫50,000,000: billed on 950.0 kW so far, 1,150.0 kW without the "
            "battery (the month's peak can still rise until it ends).")
        assert not await page.is_visible("#mtd-billed")   # billed on the month's own peak: no row
        # a 12-month basis: the month is billed on 1,300 kW of an earlier month, which the plan holds too
        state["demand"] = {**state["demand"], "billed_kw": 1300.0, "hold_kw": 1300.0}
        site.bus.publish("state", state)
        await page.wait_for_function("!document.getElementById('mtd-billed').hidden")
        assert await page.text_content("#mtd-billed") == "1,300.0 kW · the highest of this month and the 11 before"
        assert await page.text_content("#mtd-planned") == "1,300.0 kW"
        assert "higher peak later" not in await page.text_content("#mtd-explain")   # no rise: the level is billed
        # a month the battery has so far cost money on (a week of charging for peaks not yet shaved) is red, not
        # green as it was: the same colour rule as today's figure
        state["month"] = {**state["month"], "saved": -918_324.0}
        site.bus.publish("state", state)
        await page.wait_for_function("document.getElementById('saved-month').textContent === '-₫918,324'")
        assert await page.get_attribute("#saved-month", "class") == "money negative"
        # the period the peak was set in, by the tariff's names: the Japanese preset's one period is translated,
        # a user's tariff's own name is shown as it is (it read "period.flat", a dictionary key)
        for period, shown in (("flat", "flat rate"), ("shoulder", "shoulder")):
            state["demand"] = {**state["demand"], "month_peak_period": period}
            site.bus.publish("state", state)
            await page.wait_for_function(f"document.getElementById('mtd-set').textContent.endsWith(' · {shown}')")
        # a new month, or a controller just started: no demand window has closed (no time it was set), so there is
        # no peak to show; it read "0.0 kW" as if the factory had drawn nothing
        state["demand"] = {**state["demand"], "month_peak_kw": 0.0, "month_peak_at": None, "month_peak_period": None}
        site.bus.publish("state", state)
        await page.wait_for_function("document.getElementById('mtd-peak').textContent === '–'")
        assert await page.text_content("#mtd-set") == "–"
        assert "of the contracted capacity" not in await page.text_content("#mtd-explain")
        await context.close()
    finally:
        await site.telemetry.aclose()


@pytest.mark.parametrize(("currency", "period", "price", "shown"), [
    ("JPY", "flat", 18.238, "flat rate · JP¥18.24/kWh"),    # was "JP¥18/kWh": 1.3 % off (the yen has no cents)
    ("VND", "normal", 1979.64, "normal · ₫1,980/kWh"),
    ("VND", "shoulder", 2510.0, "shoulder · ₫2,510/kWh")])    # a user's tariff's own period name, as it is
async def test_the_price_now_is_shown_to_three_figures_in_the_sites_currency(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Any,  # noqa: F811
        currency: str, period: str, price: float, shown: str) -> None:
    site = await start_site(tmp_path, monkeypatch, TOKEN, currency=currency)
    try:
        context, page = await open_dashboard(browser, site, "en-US")
        state = sample_state(datetime(2026, 5, 4, 3, 0, tzinfo=UTC), 1)
        state["tariff"] = {"period": period, "import_price": price, "export_price": 0.0, "currency": currency}
        site.bus.publish("state", state)
        await page.wait_for_function(f"document.getElementById('tariff').textContent === {shown!r}")
        await context.close()
    finally:
        await site.telemetry.aclose()


async def test_each_unit_shows_its_power_setpoint_and_soc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          browser: Any) -> None:  # noqa: F811
    """A plant of many units: the devices table had a status and an always-empty "Points" column per unit; the state
    carried each unit's measured power, setpoint and SOC, and why a unit left its group, and the screen showed none."""
    site = await start_site(tmp_path, monkeypatch, TOKEN)
    try:
        context, page = await open_dashboard(browser, site, "en-US")
        state = sample_state(datetime(2026, 5, 4, 3, 0, tzinfo=UTC), 1)
        state["devices"] = {
            "grid-meter": {"ok": True, "error": None, "role": "meter", "location": "grid", "measured_kw": 98.6},
            "inv-01": {"ok": True, "error": None, "role": "pv_inverter", "in_group": True, "reason": None,
                       "measured_kw": 24.6, "setpoint": 30.0, "setpoint_unit": "%", "soc_pct": None},
            "bess-1": {"ok": True, "error": None, "role": "battery", "in_group": True, "reason": None,
                       "measured_kw": -250.0, "setpoint": -250.0, "setpoint_unit": "kW", "soc_pct": 28.34},
            "bess-2": {"ok": True, "error": None, "role": "battery", "in_group": False,
                       "reason": "ignores its setpoint: asked 200.0 kW, measures 0.0 kW", "measured_kw": 0.0,
                       "setpoint": 0.0, "setpoint_unit": "kW", "soc_pct": 45.0},
            "bess-3": {"ok": False, "error": "no answer within 2.0 s", "role": "battery", "in_group": False,
                       "reason": "unreachable", "measured_kw": None, "setpoint": 0.0, "setpoint_unit": "kW",
                       "soc_pct": None}}
        site.bus.publish("state", state)
        await page.wait_for_function("document.querySelector('#health tr[data-device=bess-3]')")

        async def cells(device: str) -> list[str]:
            return [c.strip() for c in await page.locator(f"#health tr[data-device={device}] td").all_inner_texts()]

        assert (await cells("bess-1"))[2:5] == ["-250.0 kW", "-250.0 kW", "28 %"]
        assert (await cells("inv-01"))[2:5] == ["24.6 kW", "30 %", ""]
        assert (await cells("grid-meter"))[2:5] == ["98.6 kW", "", ""]
        assert (await cells("bess-2"))[5] == "out of its group: ignores its setpoint: asked 200.0 kW, measures 0.0 kW"
        assert (await cells("bess-3"))[2] == "–"            # not read: a dash, never 0 kW
        assert "a battery + discharge" in await page.text_content("#devices-card")
        # on a phone the table scrolls inside its card and the chart's day buttons wrap: the page itself never
        # scrolls sideways (it was 503 px wide on a 390 px screen: the table and the CSV button stuck out)
        await page.set_viewport_size({"width": 390, "height": 844})
        widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], widths
        # the charts are redrawn at their width on the phone: one chart unit is one pixel both ways, so the axis
        # labels keep their 11 px shape (a fixed 900-unit viewBox squeezed them to 40 % of their width)
        scale = """(id) => { const m = document.getElementById(id).getScreenCTM(); return [m.a, m.d]; }"""
        await page.wait_for_function(f"(({scale})('chart-power')[0] > 0.99)")
        for chart in ("chart-power", "chart-soc"):
            horizontal, vertical = await page.evaluate(f"({scale})('{chart}')")
            assert horizontal == pytest.approx(1, abs=0.01) and vertical == pytest.approx(1, abs=0.01), chart
        hours = await page.eval_on_selector_all("#chart-power text.xtick", "els => els.map(e => e.textContent)")
        assert hours == ["00:00", "06:00", "12:00", "18:00"], hours   # every 6 h where 3-hourly labels would touch
        await context.close()
    finally:
        await site.telemetry.aclose()


async def test_previous_day_shows_stored_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 browser: Any) -> None:  # noqa: F811
    """Yesterday's buckets go to the SQLite store in the state directory; ◀ draws them, and they survive a
    restart of the dashboard (a new hub reading the same file)."""
    site = await start_site(tmp_path, monkeypatch, TOKEN)
    yesterday = datetime(2026, 5, 3, 3, 0, tzinfo=UTC)                        # 10:00 site time, 3 May
    for minute in range(0, 30, 5):
        state = sample_state(yesterday.replace(minute=minute), 1)
        state["measurements"]["battery_kw"]["value"] = 77.0
        state["plan"]["battery_kw"] = 80.0
        site.bus.publish("state", state)
    site.bus.publish("state", sample_state(datetime(2026, 5, 4, 3, 0, tzinfo=UTC), 1))   # today
    await asyncio.sleep(0.05)
    await site.telemetry.aclose()
    assert (tmp_path / "dashboard-history.sqlite").exists()

    site = await start_site(tmp_path, monkeypatch, TOKEN)                       # restarted: today is empty
    try:
        context, page = await open_dashboard(browser, site, "en-US")
        site.bus.publish("state", sample_state(datetime(2026, 5, 4, 3, 0, 30, tzinfo=UTC), 1))
        await page.wait_for_function("document.getElementById('nav-label').dataset.day === '2026-05-04'")
        await page.click("#nav-prev")
        await page.wait_for_function("document.getElementById('nav-label').dataset.day === '2026-05-03'")
        step = f"#chart-power rect.step[data-start='{site_ms(10, 0, (2026, 5, 3))}']"
        await page.wait_for_function(f'document.querySelector("{step}")')
        assert await page.get_attribute(step, "data-battery-actual") == "77"
        assert await page.get_attribute(step, "data-battery-plan") == "80"
        assert "Stored history" in await page.text_content("#chart-title")
        assert await page.get_attribute("#nav-csv", "href") == "/api/history.csv?day=2026-05-03&span=day"
        await page.select_option("#nav-span", "week")                            # the week of 3 May: Mon 27 Apr
        await page.wait_for_function("document.getElementById('nav-label').textContent.includes('27')")
        assert await page.get_attribute("#nav-csv", "href") == "/api/history.csv?day=2026-05-03&span=week"
        assert (await page.get_attribute("#chart-power path.battery-actual", "d")).startswith("M")
        await page.click("#nav-today")
        await page.select_option("#nav-span", "day")
        await page.wait_for_function("document.getElementById('nav-label').dataset.day === '2026-05-04'")
        await context.close()
        status, body = await asyncio.to_thread(site.request, "/api/history?day=2026-05-03&span=fortnight")
        assert status == 422 and "day, week, month" in body["error"]
    finally:
        await site.telemetry.aclose()


async def test_axes_have_units_round_ticks_and_no_minus_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             browser: Any) -> None:  # noqa: F811
    site = await start_site(tmp_path, monkeypatch, TOKEN)
    try:
        context, page = await open_dashboard(browser, site, "vi-VN")
        now = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
        site.bus.publish("plan", sample_plan(now, steps=8))
        state = sample_state(now, 1)
        state["measurements"]["battery_kw"]["value"] = -0.02                    # rounds to zero: "0,0", not "-0,0"
        site.bus.publish("state", state)
        await page.wait_for_function("document.getElementById('battery-kw').textContent === '0,0 kW'")
        power = await page.eval_on_selector_all("#chart-power text.ytick", "els => els.map(e => e.textContent)")
        soc = await page.eval_on_selector_all("#chart-soc text.ytick", "els => els.map(e => e.textContent)")
        assert soc == ["0 %", "50 %", "100 %"]                                 # 1-2-5 steps: 100/4 → 50
        values = [int(v.removesuffix(" kW").replace(".", "")) for v in power]   # vi: "1.000 kW"
        assert all(v.endswith(" kW") for v in power) and len(values) >= 3
        step = values[1] - values[0]
        assert step in (100, 200, 500) and all(v % step == 0 for v in values)   # round: 1, 2 or 5 × 10^k
        assert not any(v.startswith("-0") for v in power)
        assert (await page.text_content("#clock")).endswith("10:00:00")         # site time of the state
        await context.close()
    finally:
        await site.telemetry.aclose()


async def test_forecasts_from_outside_show_how_good_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              browser: Any) -> None:  # noqa: F811
    """The forecast card lists each external source's MAE, skill against the built-in model and band coverage by
    lead (state key forecast_accuracy.external), hides the table while none was received, and translates it."""
    site = await start_site(tmp_path, monkeypatch, TOKEN)
    try:
        context, page = await open_dashboard(browser, site, "en-US")
        now = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
        empty = {"lead": "0-1 h", "n": 0, "mae_kw": None, "rmse_kw": None, "persistence_mae_kw": None,
                 "persistence_rmse_kw": None, "skill": None}
        builtin = {"issues": 0, "by_lead": [empty]}
        state = sample_state(now, 1)
        state["forecast_accuracy"] = {"window_days": 14, "pv": builtin, "load": builtin}
        site.bus.publish("state", state)
        await page.wait_for_function("document.getElementById('accuracy-table').textContent.length > 0")
        assert await page.is_hidden("#external-accuracy-table")
        day_ahead = {"lead": "24-48 h", "n": 480, "mae_kw": 53.7, "rmse_kw": 75.9, "bias_kw": -7.1,
                     "persistence_mae_kw": 70.4, "skill": 0.2367, "builtin_mae_kw": 70.05, "skill_vs_builtin": 0.2331,
                     "band_n": 480, "band_coverage": 0.7997, "below_p10": 0.089, "above_p90": 0.1114}
        state = sample_state(now, 2)
        state["forecast_accuracy"] = {"window_days": 14, "pv": builtin, "load": builtin, "external": {
            "window_days": 14, "pv": [{"source": "solcast", "issues": 12, "band_scale_p10": 1.4, "band_scale_p90": 1.0,
                                       "by_lead": [{**day_ahead, "lead": "0-1 h", "n": 0}, day_ahead]}]}}
        site.bus.publish("state", state)
        await page.wait_for_function("!document.getElementById('external-accuracy-table').hidden")
        rows = await page.evaluate("""[...document.querySelectorAll('#external-accuracy-table tr')]
                                      .map((tr) => [...tr.children].map((c) => c.textContent))""")
        assert rows == [["Lead", "MAE", "vs built-in", "in P10–P90"],
                        ["PV: solcast (12 forecasts scored; band recalibrated to its record: P10 side / P90 side "
                         "×1.40 / ×1.00)"],
                        ["24-48 h", "53.7 kW", "23 %", "80 %"]]
        await page.select_option("#lang", "vi")
        await page.wait_for_function(
            "document.querySelector('[data-i18n=\"fx.title\"]').textContent === 'Dự báo từ bên ngoài'")
        await context.close()
    finally:
        await site.telemetry.aclose()


async def test_the_shown_history_downloads_as_csv_with_local_time_and_tariff_periods(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch
                                                                                    ) -> None:
    """Tuesday 28 April under the legacy windows (peak 09:30–11:30): minutes at 09:40 and 10:00–10:05 site time,
    one without a SOC reading. The day's CSV has one row per stored minute, local and UTC starts, the named period,
    the averages and an empty cell (not 0) for the missing SOC; the month's hour from 09:00 spans normal and peak."""
    site = await start_site(tmp_path, monkeypatch, TOKEN,
                            tariff=Tariff.preset("evn-manufacturing-22kv-legacy").bind(TZ))
    try:
        for i, (hour, minute) in enumerate(((2, 40), (3, 0), (3, 5))):               # UTC: 09:40, 10:00, 10:05
            state = sample_state(datetime(2026, 4, 28, hour, minute, tzinfo=UTC), i)
            state["measurements"]["battery_kw"]["value"] = 77.0
            if i == 2:
                state["measurements"]["soc_pct"] = {"value": None, "unit": "%", "quality": "missing"}
            site.bus.publish("state", state)
        site.bus.publish("state", sample_state(datetime(2026, 5, 4, 3, 0, tzinfo=UTC), 1))   # closes the last minute
        await asyncio.sleep(0.05)
        status, day = await asyncio.to_thread(site.request, "/api/history.csv?day=2026-04-28&span=day")
        _, month = await asyncio.to_thread(site.request, "/api/history.csv?day=2026-04-28&span=month")
        status_bad, bad = await asyncio.to_thread(site.request, "/api/history.csv?day=2026-05-32")
    finally:
        await site.telemetry.aclose()
    assert status == 200
    lines = day.splitlines()
    assert lines[0] == ("start_local,start_utc,tariff_period,pv_kw,load_kw,grid_kw,battery_kw,soc_pct,"
                        "plan_battery_kw,plan_grid_kw,plan_soc_pct")
    rows = [line.split(",") for line in lines[1:]]
    assert [r[:3] for r in rows] == [["2026-04-28T09:40:00+07:00", "2026-04-28T02:40:00Z", "peak"],
                                     ["2026-04-28T10:00:00+07:00", "2026-04-28T03:00:00Z", "peak"],
                                     ["2026-04-28T10:05:00+07:00", "2026-04-28T03:05:00Z", "peak"]]
    assert [r[6] for r in rows] == ["77.000"] * 3 and rows[0][3] == "400.000" and rows[0][7] == "50.000"
    assert rows[2][7] == ""                                                       # not measured: empty, never 0
    hours = [line.split(",") for line in month.splitlines()[1:]]
    assert [r[:3] for r in hours] == [["2026-04-28T09:00:00+07:00", "2026-04-28T02:00:00Z", "normal+peak"],
                                      ["2026-04-28T10:00:00+07:00", "2026-04-28T03:00:00Z", "peak"]]
    assert status_bad == 422 and "is not a date" in bad["error"]
