"""The park summary (``ems park-summary``) against a real VictoriaMetrics on loopback, fed by the real
InfluxDB sinks of two simulated sites: the JSON endpoint's figures worked out by hand, a listed site
that does not report, a database that stops answering, and the rendered page in Japanese."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ems.yamlfile import ConfigError
from park.app import SummaryServer, create_app
from park.coincident import month_start
from park.config import SummarySettings, TsdbSettings, load_summary_settings
from park.summary import assemble, site_matcher
from park.tsdb import PromQuery, Sample
from tests.park_peers import start_site
from tests.peers import VictoriaMetrics, browser, free_port, sample_state, victoria_metrics  # noqa: F401 (fixtures)

GRID_FACTOR = 0.681
PEAK_SET_AT = "2026-05-04T01:30:00+00:00"   # site-a's month peak: Mon 4 May, 08:30 park time
HISTORY_GRID_KW = {"site-a": 321.0, "site-b": 337.0}   # the states' own grid power (sample_state, i = 3 and 11)


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def feed_two_sites(vm: VictoriaMetrics, tmp_path: Path) -> datetime:
    """site-a in auto, under its contracted capacity; site-b in safe state with an alarm, above it."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)   # older than VM's 30-s latency offset
    a = sample_state(now, 3, site="site-a")
    a["demand"] = {**a["demand"], "month_peak_at": PEAK_SET_AT, "month_peak_period": "normal"}
    a["battery"] = {"soh_pct": 85.0, "capacity_kwh": 850.0, "nameplate_kwh": 1000.0}   # site-b's state has none
    b = sample_state(now, 11, site="site-b", mode="safe")
    b["setpoints"] = {**b["setpoints"], "safe": True}
    b["alarms"] = ["data_missing", "demand_peak_rising"]
    b["demand"] = {**b["demand"], "month_peak_kw": 1500.0, "import_cap_kw": 1250.0, "month_peak_at": None,
                   "month_peak_period": None}
    b["today"] = {**b["today"], "export_kwh": 11.0}
    # the last two hours before: each site at its state's grid power, a sample a minute (the coincident peak)
    history = [f"ems_state,site={site} grid_kw={grid} "
               f"{round((now - timedelta(minutes=k, seconds=30)).timestamp() * 1000)}"
               for site, grid in HISTORY_GRID_KW.items() for k in range(2, 122)]
    request = urllib.request.Request(f"{vm.url}/api/v2/write?precision=ms", data="\n".join(history).encode(),
                                     method="POST")
    await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    await asyncio.to_thread(vm.wait_for, "ems_state_grid_kw", len(history))
    sites = [await start_site(name, None, vm.url, tmp_path / name, now) for name in ("site-a", "site-b")]
    try:
        sites[0].bus.publish("state", a)
        sites[1].bus.publish("alarm", {"ts": now.isoformat(), "site": "site-b", "code": "data_missing",
                                       "active": True, "message": "soc_pct missing"})
        sites[1].bus.publish("alarm", {"ts": now.isoformat(), "site": "site-b", "code": "write_failed:bess-1",
                                       "active": False, "message": ""})   # cleared: not active
        sites[1].bus.publish("alarm", {"ts": now.isoformat(), "site": "site-b", "code": "demand_peak_rising",
                                       "active": True, "message": "shed 90.0 kW of load for the remaining 20 min"})
        sites[1].bus.publish("state", b)
        for metric, labels in (("ems_state_soc_pct", {"site": "site-a"}), ("ems_state_soc_pct", {"site": "site-b"}),
                               ("ems_alarm_active", {"site": "site-b", "code": "data_missing"}),
                               ("ems_alarm_active", {"site": "site-b", "code": "demand_peak_rising"})):
            await asyncio.to_thread(vm.wait_for, metric, 1, **labels)
    finally:
        for site in sites:
            await site.telemetry.aclose()
    return now


def settings(url: str, **extra: Any) -> SummarySettings:
    return SummarySettings(park="test-park", tsdb=TsdbSettings(url=url), sites=("site-a", "site-b", "site-c"),
                           grid_factor_t_per_mwh=GRID_FACTOR, currency="VND", language="ja",
                           serve={"host": "127.0.0.1", "port": 0}, **extra)


async def test_summary_from_the_sites_telemetry_in_victoria_metrics(
        victoria_metrics: VictoriaMetrics, tmp_path: Path, browser: Any) -> None:  # noqa: F811
    now = await feed_two_sites(victoria_metrics, tmp_path)
    config = settings(victoria_metrics.url, refresh_s=1)
    server = SummaryServer(create_app(config, PromQuery(config.tsdb.url)), "127.0.0.1", 0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        status, summary = await asyncio.to_thread(get, f"{url}/api/summary")
        assert status == 200, summary
        a, b, c = summary["sites"]
        assert [s["site"] for s in (a, b, c)] == ["site-a", "site-b", "site-c"]
        # site-a: sample_state(i=3): PV 403, load 821, battery 97 → grid 321 kW; SOC 50.3 % (site-b, i=11: 411, 837, 89)
        assert (a["mode"], a["pv_kw"], a["battery_kw"], a["grid_kw"]) == ("auto", 403.0, 97.0, 321.0)
        assert a["soc_pct"] == 50.3
        # site-a's battery at SOH 85 % holds 850 kWh, 50.3 % of it stored; site-b (an older state) says nothing
        assert (a["soh_pct"], a["capacity_kwh"], a["stored_kwh"]) == (85.0, 850.0, pytest.approx(427.55))
        assert (b["soh_pct"], b["capacity_kwh"], b["stored_kwh"]) == (None, None, None)
        assert a["safe"] is False and a["alarms"] == [] and a["alarms_active"] == 0
        assert a["saved_today"] == 1_250_300.0
        assert (a["saved_month"], a["demand_saved_month"]) == (5.2e7, 5.0e7)   # the state's month block
        assert a["co2_avoided_kg_today"] == pytest.approx(1203 * GRID_FACTOR)           # (PV 1203 − export 0) kWh
        assert (a["month_peak_kw"], a["import_cap_kw"]) == (950.0, 1200.0)
        assert a["peak_of_cap_pct"] == pytest.approx(950 / 1200 * 100)
        assert a["month_peak_at"] == PEAK_SET_AT and b["month_peak_at"] is None   # site-b's state has none
        assert datetime.fromisoformat(a["updated"]) == now
        # site-b: safe state, one active alarm (the cleared one is not listed), above its capacity
        assert (b["mode"], b["safe"], b["alarms"], b["alarms_active"]) == \
            ("safe", True, ["data_missing", "demand_peak_rising"], 2)
        assert b["co2_avoided_kg_today"] == pytest.approx((1211 - 11) * GRID_FACTOR)
        assert b["peak_of_cap_pct"] == pytest.approx(120.0)
        # site-c is listed in the park file but has never reported: shown, and no figure is 0
        assert c["reporting"] is False and c["grid_kw"] is None and c["mode"] is None and c["updated"] is None
        totals = summary["totals"]
        assert (totals["sites"], totals["reporting"], totals["safe"], totals["over_cap"]) == (3, 2, 1, 1)
        assert totals["shedding"] == 1   # site-b's demand watch asks for load to be shed
        assert totals["pv_kw"] == 403 + 411 and totals["grid_kw"] == 321 + (837 - 411 - 89)
        assert totals["saved_today"] == 1_250_300 + 1_251_100 and totals["import_cap_kw"] == 1200 + 1250
        assert (totals["saved_month"], totals["demand_saved_month"]) == (2 * 5.2e7, 2 * 5.0e7)
        assert totals["co2_avoided_kg_today"] == pytest.approx((1203 + 1200) * GRID_FACTOR)
        assert (totals["storage_sites"], totals["stored_kwh"], totals["capacity_kwh"]) == \
            (1, pytest.approx(427.55), 850)
        assert summary["timezone"] == "Asia/Ho_Chi_Minh"
        # the sites' coincident peak: every complete window of the last two hours holds 321 + 337 kW together;
        # their own month peaks (950 and 1,500 kW) add up to 2,450 kW
        assert totals["month_peak_kw"] == 950 + 1500
        coincident = summary["coincident_peak"]
        month_began = now - month_start(now, "Asia/Ho_Chi_Minh")
        if month_began > timedelta(hours=1):   # a complete window of this month lies in the history
            assert coincident["peak_kw"] == pytest.approx(658.0) and coincident["window_minutes"] == 30
            assert (a["park_peak_share_kw"], b["park_peak_share_kw"], c["park_peak_share_kw"]) == \
                (pytest.approx(321.0), pytest.approx(337.0), None)   # what each brought to it; site-c nothing
            assert datetime.fromisoformat(coincident["through"]) > now - timedelta(minutes=32)

        # the page, in Japanese (the park file's language), in park time with units
        context = await browser.new_context(locale="en-GB")
        page = await context.new_page()
        await page.goto(url + "/")
        await page.wait_for_selector("#sites tbody tr[data-site='site-c']")
        assert await page.text_content("h1") == "工業団地サマリー · test-park"
        row_b = "#sites tr[data-site='site-b']"
        assert await page.text_content(f"{row_b} td.mode") == "安全状態"           # the site dashboard's word
        assert await page.text_content(f"{row_b} td.alarms li") == \
            "計測値が欠けています。制御装置は安全状態です。"
        assert await page.text_content(f"{row_b} td.pv") == "411.0 kW"
        assert await page.text_content(f"{row_b} td.peak div div") == "1,500.0 kW / 1,250.0 kW (120 %)"
        assert await page.get_attribute(f"{row_b} td.peak .bar", "class") == "bar over"
        lines_b = await page.locator(f"{row_b} td.peak .set").all_text_contents()
        assert not any("に記録" in line for line in lines_b), lines_b   # site-b's state says no time
        set_a = await page.text_content("#sites tr[data-site='site-a'] td.peak .set")
        assert "08:30" in set_a and "04" in set_a and set_a.endswith("に記録"), set_a   # park time, not UTC
        local = now.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).strftime("%H:%M:%S")
        assert await page.text_content(f"{row_b} td.updated") == local
        assert "データなし" in await page.text_content("#sites tr[data-site='site-c']")
        assert await page.text_content("#t-reporting") == "2 / 3"
        assert await page.text_content("#t-shedding") == "1"
        assert await page.text_content("#t-pv_kw") == "814.0 kW"
        assert await page.text_content("#t-stored_kwh") == "428 / 850 kWh"
        assert await page.text_content("#sites tr[data-site='site-a'] td.soc .set") == \
            "428 / 850 kWh · 劣化状態（SOH）85 %"
        assert await page.locator(f"{row_b} td.soc .set").count() == 0
        assert await page.text_content(f"{row_b} td.saved-month .set") == "うち基本料金 ₫50,000,000"
        assert await page.text_content("#t-demand_saved_month") == "うち基本料金 ₫100,000,000"
        if coincident["peak_kw"] is not None:
            assert await page.text_content("#t-coincident_peak") == "658.0 kW"
            hint = await page.text_content("#coincident-hint")
            assert "30分平均" in hint and "2,450.0 kW" in hint, hint
            share = page.locator("#sites tr[data-site='site-a'] td.peak .set").nth(1)
            assert await share.text_content() == "団地の同時最大需要時 321.0 kW"
            set_at = datetime.fromisoformat(coincident["peak_at"]).astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))
            assert set_at.strftime("%H:%M") + "に記録" in hint, hint   # the first window of the history
        await page.select_option("#lang", "vi")
        await page.wait_for_function("document.querySelector('h1').textContent.startsWith('Tổng quan')")
        assert await page.text_content(f"{row_b} td.pv") == "411,0 kW"
        set_a = await page.text_content("#sites tr[data-site='site-a'] td.peak .set")
        assert set_a.startswith("đạt lúc ") and "08:30" in set_a, set_a
        await context.close()

        # a saving is green, a loss red
        context = await browser.new_context(locale="en-GB")
        page = await context.new_page()
        await page.goto(url + "/")
        await page.wait_for_function("document.getElementById('t-saved_today').textContent !== '–'")
        await page.select_option("#lang", "en")
        await page.wait_for_function("document.querySelector('h1').textContent.startsWith('Park summary')")
        assert await page.get_attribute("#t-saved_today", "class") == "value money"
        assert await page.get_attribute("#sites tr[data-site='site-a'] td.saved-month", "class") == \
            "saved-month money"

        # the database stops answering: a clear 503, and the app goes on serving
        victoria_metrics.stop()
        status, body = await asyncio.to_thread(get, f"{url}/api/summary")
        assert status == 503 and "not answering" in body["error"] and victoria_metrics.url in body["error"]
        assert (await asyncio.to_thread(get, f"{url}/api/config"))[0] == 200
        # the open page says its figures are the last answer's, and when that was (park time)
        await page.wait_for_function("!document.getElementById('error').hidden")
        banner = await page.text_content("#error")
        said = re.search(r"the figures below are from its last answer, at (\d\d/\d\d/\d{4}), \d\d:\d\d:\d\d\. \(",
                         banner)
        assert said is not None and victoria_metrics.url in banner, banner
        assert said.group(1) in {datetime.now(UTC).astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).strftime("%d/%m/%Y"),
                                 now.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).strftime("%d/%m/%Y")}, banner
        await context.close()
    finally:
        await server.aclose()


async def test_a_page_that_never_had_an_answer_says_so(browser: Any) -> None:  # noqa: F811
    """The database down from the start: the banner said the figures below were "from the last answer" above a
    page of dashes; it says nothing has been read yet."""
    config = settings(f"http://127.0.0.1:{free_port()}", refresh_s=1)
    server = SummaryServer(create_app(config, PromQuery(config.tsdb.url)), "127.0.0.1", 0)
    await server.start()
    try:
        context = await browser.new_context(locale="en-GB")
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{server.port}/")
        await page.select_option("#lang", "en")
        # the banner in English (its technical part says "not answering" in every language: waiting for that raced
        # the switch from the page's first language)
        await page.wait_for_function("document.getElementById('error').textContent.startsWith('The central')")
        assert (await page.text_content("#error")).startswith(
            "The central time-series database is not answering, and has not answered since this page started: "
            "there is nothing to show yet.")
        assert await page.get_attribute("#t-saved_today", "class") == "value"   # a dash is not a green saving
        await context.close()
    finally:
        await server.aclose()


def test_site_matcher_escapes_ids() -> None:
    assert site_matcher(["a.b", "c-d"]) == 'site=~"a\\\\.b|c\\\\-d"'
    assert site_matcher([]) == 'site=~".+"'


def test_every_site_in_the_database_when_none_is_listed() -> None:
    config = SummarySettings(park="p", tsdb=TsdbSettings(url="http://127.0.0.1:1"), grid_factor_t_per_mwh=0.5)
    state = [Sample({"__name__": "ems_state_pv_kwh_today", "site": "z"}, 10.0),
             Sample({"__name__": "ems_state_today_pv_kwh", "site": "z"}, 10.0),
             Sample({"__name__": "ems_state_today_export_kwh", "site": "z"}, 0.0),
             Sample({"__name__": "ems_state_today_pv_kwh", "site": "y"}, 10.0),     # export missing: CO2 missing
             Sample({"__name__": "ems_state_grid_kw", "site": "y"}, None)]
    summary = assemble(config, state, [], [], datetime(2026, 5, 4, tzinfo=UTC))
    y, z = summary["sites"]
    assert (y["site"], y["grid_kw"], y["co2_avoided_kg_today"], z["site"], z["co2_avoided_kg_today"]) == \
        ("y", None, None, "z", 5.0)
    assert summary["totals"]["grid_kw"] is None and summary["totals"]["co2_avoided_kg_today"] == 5.0


def test_settings_file_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "park-summary.yaml"
    path.write_text("park: p\ntsdb: {url: http://127.0.0.1:8428}\nsites: [a, a]\n")
    with pytest.raises(ConfigError, match="site id 'a' appears twice"):
        load_summary_settings(path)
    path.write_text('park: p\ntsdb: {url: http://127.0.0.1:8428}\nsites: [\'a"b\']\n')
    with pytest.raises(ConfigError, match="letters, digits"):
        load_summary_settings(path)
    path.write_text("park: p\ntsdb: {url: http://127.0.0.1:8428}\ntimezone: Mars/Olympus\n")
    with pytest.raises(ConfigError, match="timezone"):
        load_summary_settings(path)
    path.write_text("park: p\ntsdb: {url: http://127.0.0.1:8428}\ndemand_window_minutes: 25\n")
    with pytest.raises(ConfigError, match=r"demand_window_minutes.*25 min does not divide the hour"):
        load_summary_settings(path)
    path.write_text("park: p\ntsdb: {url: http://127.0.0.1:8428}\ntimezone: Asia/Kathmandu\n")   # UTC+5:45
    with pytest.raises(ConfigError, match=r"30-minute windows do not fall on the clock of Asia/Kathmandu"):
        load_summary_settings(path)
    path.write_text("park: p\ntsdb: {url: http://127.0.0.1:8428}\ntimezone: Asia/Kathmandu\n"
                    "demand_window_minutes: 15\n")
    assert load_summary_settings(path).demand_window_minutes == 15
    shipped = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "park-summary.yaml"
    assert load_summary_settings(shipped).tsdb.url.startswith("http")


def test_every_word_of_the_page_is_translated() -> None:
    """vi/en/ja carry the same keys, and every ``data-i18n`` key of the page and ``t("…")`` of its script is
    in the park's dictionary or the site dashboard's (mode names, alarm sentences)."""
    static = Path(__file__).resolve().parents[1] / "park" / "static"
    site = static.parents[1] / "controller" / "dashboard" / "static" / "i18n"
    own = {lang: json.loads((static / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
           for lang in ("vi", "en", "ja")}
    assert set(own["vi"]) == set(own["en"]) == set(own["ja"])
    words = set(own["en"]) | set(json.loads((site / "en.json").read_text(encoding="utf-8")))
    used = set(re.findall(r'data-i18n="([\w.]+)"', (static / "index.html").read_text(encoding="utf-8")))
    used |= set(re.findall(r'\bt\("([\w.]+)"', (static / "app.js").read_text(encoding="utf-8")))
    assert used and used <= words, used - words
