"""The sites' coincident month peak (park/coincident.py) against a real VictoriaMetrics holding what the sinks write:
the highest window average of the sites' summed grid power, worked out by hand; the month's first window, the
month before and the window under way; once per completed window."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from park.coincident import SETTLE_S, CoincidentPeak, last_complete_window_end, month_start, window_expr
from park.summary import site_matcher
from park.tsdb import PromQuery, RangeSeries, Sample
from tests.peers import VictoriaMetrics, victoria_metrics  # noqa: F401 (fixture)

PARK_TZ = ZoneInfo("Asia/Ho_Chi_Minh")   # UTC+7


def local(day: int, hour: int, minute: int = 0, month: int = 5) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=PARK_TZ)


class CountingQuery(PromQuery):
    """The real client, counting the queries it sends."""

    def __init__(self, url: str):
        super().__init__(url)
        self.sent = 0

    def range(self, expr: str, start: datetime, end: datetime, step_s: int) -> list[RangeSeries]:
        self.sent += 1
        return super().range(expr, start, end, step_s)

    def instant(self, expr: str, at: datetime | None = None) -> list[Sample]:
        self.sent += 1
        return super().instant(expr, at)


def minute_lines(site: str, start: datetime, minutes: int, grid_kw: float) -> list[str]:
    """One ``ems_state`` grid sample a minute, at each minute's half (never on a window boundary)."""
    return [f"ems_state,site={site} grid_kw={grid_kw} "
            f"{round((start + timedelta(minutes=k, seconds=30)).timestamp() * 1000)}" for k in range(minutes)]


def write(vm: VictoriaMetrics, lines: list[str]) -> None:
    request = urllib.request.Request(f"{vm.url}/api/v2/write?precision=ms", data="\n".join(lines).encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    vm.wait_for("ems_state_grid_kw", len(lines))


def test_month_start_and_the_last_complete_window() -> None:
    assert month_start(local(1, 0, 5), "Asia/Ho_Chi_Minh") == datetime(2026, 4, 30, 17, 0, tzinfo=UTC)
    assert month_start(local(31, 23, 59), "Asia/Ho_Chi_Minh") == datetime(2026, 4, 30, 17, 0, tzinfo=UTC)
    end = local(4, 10, 30).astimezone(UTC)
    assert last_complete_window_end(end + timedelta(seconds=SETTLE_S), 30) == end   # settled: counted
    assert last_complete_window_end(end + timedelta(seconds=SETTLE_S - 1), 30) == end - timedelta(minutes=30)
    assert last_complete_window_end(end + timedelta(minutes=14), 15) == end
    with pytest.raises(ValueError, match="divide 60"):
        CoincidentPeak(site_matcher([]), "Asia/Ho_Chi_Minh", 25)
    assert window_expr('site=~".+"', 30) == 'clamp_min(sum(avg_over_time(ems_state_grid_kw{site=~".+"}[30m])), 0)'


def test_the_coincident_peak_is_the_highest_window_of_the_summed_imports(
        victoria_metrics: VictoriaMetrics) -> None:  # noqa: F811
    lines = []
    for site, (w1, w2, w3) in {"site-a": (300.0, 100.0, -200.0), "site-b": (100.0, 500.0, 350.0)}.items():
        lines += minute_lines(site, local(1, 10, 0), 30, w1)     # 10:00–10:30 park time: 400 kW together
        lines += minute_lines(site, local(1, 10, 30), 30, w2)    # 10:30–11:00: 600 kW (each site's own peak apart)
        lines += minute_lines(site, local(1, 11, 0), 30, w3)     # 11:00–11:30: 150 kW (site-a exporting)
        lines += minute_lines(site, local(30, 23, 30, month=4), 30, 900.0)   # April's last window: 1,800 kW
        lines += minute_lines(site, local(1, 13, 0), 30, 1000.0)  # 13:00–13:30: 2,000 kW, under way at 13:10
        lines += minute_lines(site, local(2, 12, 0, month=7), 30, -100.0)   # July: the sites only export
    lines += minute_lines("other-park", local(1, 11, 30), 30, 5000.0)   # not one of the park's sites
    write(victoria_metrics, lines)

    client = CountingQuery(victoria_metrics.url)
    peak = CoincidentPeak(site_matcher(["site-a", "site-b"]), "Asia/Ho_Chi_Minh", 30)
    reading = peak.read(client, local(1, 13, 10).astimezone(UTC))
    # not the 1,800 kW of April's last window (it ends at the month's first instant), not the window under way,
    # not 300 + 500 (the sites' own peaks), not the other park's site
    assert reading.peak_kw == pytest.approx(600.0)
    assert reading.peak_at == local(1, 10, 30).astimezone(UTC).isoformat()   # the window 10:30–11:00
    assert (reading.month, reading.through, reading.window_minutes) == ("2026-05", "2026-05-01T06:00:00+00:00", 30)
    assert reading.shares_kw == {"site-a": pytest.approx(100.0), "site-b": pytest.approx(500.0)}   # who brought it
    assert client.sent == 2   # the windows, then the shares in the peak's window
    assert peak.read(client, local(1, 13, 29).astimezone(UTC)) == reading and client.sent == 2   # same window
    later = peak.read(client, local(1, 13, 31).astimezone(UTC))   # 13:00–13:30 has ended and settled
    assert later.peak_kw == pytest.approx(2000.0) and client.sent == 4   # a new peak: its shares read
    assert later.peak_at == local(1, 13, 0).astimezone(UTC).isoformat()
    assert later.shares_kw == {"site-a": pytest.approx(1000.0), "site-b": pytest.approx(1000.0)}
    # every site of the database when none is listed: the other park's site adds its 5,000 kW at 11:30–12:00
    everyone = CoincidentPeak(site_matcher([]), "Asia/Ho_Chi_Minh", 30).read(client, local(1, 12, 5))
    assert everyone.peak_kw == pytest.approx(5000.0)
    # the month's first window has not ended yet: nothing to read, no query
    sent = client.sent
    first = CoincidentPeak(site_matcher(["site-a", "site-b"]), "Asia/Ho_Chi_Minh", 30).read(
        client, local(1, 0, 20).astimezone(UTC))
    assert (first.peak_kw, first.peak_at, first.through, client.sent) == (None, None, None, sent)
    # a month with no data at all; a month in which the sites only exported: the park imported nothing
    assert peak.read(client, local(3, 12, 0, month=6)).peak_kw is None
    exported = peak.read(client, local(3, 12, 0, month=7))
    assert exported.peak_kw == 0.0 and exported.peak_at == local(2, 12, 0, month=7).astimezone(UTC).isoformat()


def test_a_month_is_read_a_day_at_a_time_then_only_the_last_day_again(
        victoria_metrics: VictoriaMetrics) -> None:  # noqa: F811
    """At start the month so far in day-long queries; then each completed window re-reads the last day only, so a
    point a site delivers late (its outbox after an outage) still counts if it is less than a day late."""
    lines = minute_lines("site-a", local(2, 9, 0), 30, 400.0) + minute_lines("site-b", local(2, 9, 0), 30, 300.0)
    write(victoria_metrics, lines)
    client = CountingQuery(victoria_metrics.url)
    peak = CoincidentPeak(site_matcher(["site-a", "site-b"]), "Asia/Ho_Chi_Minh", 30)
    reading = peak.read(client, local(3, 12, 5))        # windows ending 1 May 00:30 … 3 May 12:00: 2.5 days
    assert client.sent == 3 + 1 and reading.peak_kw == pytest.approx(700.0)   # three days' queries, the shares
    assert reading.peak_at == local(2, 9, 0).astimezone(UTC).isoformat()
    # site-b's outbox delivers, 20 hours late, what it imported on 2 May 16:00–16:30: 900 kW
    write(victoria_metrics, minute_lines("site-b", local(2, 16, 0), 30, 900.0))
    later = peak.read(client, local(3, 12, 35))         # one more window: one query over the last day
    assert client.sent == 5 + 1 and later.peak_kw == pytest.approx(900.0)   # and the new peak's shares
    assert later.peak_at == local(2, 16, 0).astimezone(UTC).isoformat() and later.shares_kw == {"site-b": 900.0}
    # more than a day late: not read again (the windows of 1 May stay as they were first read)
    write(victoria_metrics, minute_lines("site-a", local(1, 9, 0), 30, 5000.0))
    assert peak.read(client, local(3, 13, 5)).peak_kw == pytest.approx(900.0) and client.sent == 7   # same peak
    # a fresh summary (a restart) reads the whole month again and finds it
    assert CoincidentPeak(site_matcher(["site-a", "site-b"]), "Asia/Ho_Chi_Minh", 30).read(
        client, local(3, 13, 5)).peak_kw == pytest.approx(5000.0)


def test_a_sample_on_a_window_boundary_belongs_to_the_window_it_ends(
        victoria_metrics: VictoriaMetrics) -> None:  # noqa: F811
    """As each site's own demand tracker integrates it (a reading stands for the cycle before it): the 3,000 kW
    reading stamped 10:30:00 is in 10:00–10:30, and the park's window agrees with the site's to the digit."""
    start = local(4, 9, 31)   # a reading a minute, 09:31 … 11:00
    kws = [100.0] * 30 + [300.0] * 29 + [3000.0] + [100.0] * 30
    write(victoria_metrics, [f"ems_state,site=site-a grid_kw={kw} "
                             f"{round((start + timedelta(minutes=k)).timestamp() * 1000)}" for k, kw in enumerate(kws)])
    reading = CoincidentPeak(site_matcher(["site-a"]), "Asia/Ho_Chi_Minh", 30).read(
        PromQuery(victoria_metrics.url), local(4, 11, 5))
    assert reading.peak_kw == pytest.approx((29 * 300 + 3000) / 30)   # 390 kW, not (100 + 29 × 300) / 30
    assert reading.peak_at == local(4, 10, 0).astimezone(UTC).isoformat()

    from controller.accounting import DemandTracker
    from optimizer.tariff import Tariff

    tracker = DemandTracker(Tariff.preset("evn-two-part-22kv").bind("Asia/Ho_Chi_Minh").billing_month,
                            "Asia/Ho_Chi_Minh", 30)
    for k, kw in enumerate([*kws, 100.0]):   # the last reading closes 10:30–11:00
        tracker.add(start + timedelta(minutes=k), kw, 1 / 60)
    assert tracker.peak_kw == pytest.approx(reading.peak_kw)
    assert tracker.peak_at == reading.peak_at


def test_the_benchmark_finds_the_peak_it_wrote(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """benchmarks/bench_coincident.py at its smallest: the summary's coincident peak equals the one computed from the
    samples it wrote (its exit status says so), and the load it writes is a factory's (day above night)."""
    import json
    import sys

    import numpy as np

    from tests.bench_modules import benchmark

    bench = benchmark("bench_coincident")
    power = bench.site_power_kw(0, 86400)
    assert power[9 * 3600:17 * 3600].mean() > 2 * power[:5 * 3600].mean() and np.all(power > 0)
    monkeypatch.setattr(sys, "argv", ["bench_coincident.py", "--sites", "2", "--days", "1", "--repeats", "1"])
    assert bench.main() == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["peak_matches"] and result["samples"] == 2 * 86400
