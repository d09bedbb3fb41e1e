"""Benchmark the park summary's coincident month peak (park/coincident.py) against a real VictoriaMetrics.

N sites' grid power at one sample a second over D days (the sinks write a state a second), as a factory's load
moves: a day/night profile with 5 % noise correlated over minutes, so the samples compress as a real site's roughly
do, not as a constant. Measured, each the median of ``--repeats`` runs:

* ``read_month_s``: a fresh :class:`~park.coincident.CoincidentPeak` reading the month so far (a summary that just
  started: day-long range queries);
* ``read_window_s``: the next completed window (the last day read again);
* baseline, in the same run: ``baseline_state_s``, the summary's own query of every site's latest ``ems_state``
  fields (the query each page refresh makes), and the ratios to it.

The coincident peak is checked against the same figure computed here from the samples written (``check_kw``).
The last line printed is one JSON object.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_coincident.py [--sites 40] [--days 7] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.signal import lfilter

from park.coincident import CoincidentPeak
from park.config import SummarySettings, TsdbSettings
from park.summary import queries, site_matcher
from park.tsdb import PromQuery
from tests.peers import VictoriaMetrics

MONTH_START = datetime(2026, 5, 1, tzinfo=UTC) - timedelta(hours=7)   # 1 May 00:00 in Hai Phong
WINDOW_S = 1800
BATCH = 200_000


def site_power_kw(seed: int, seconds: int) -> np.ndarray:
    """One site's grid power, a sample a second from the month's start: 300 kW at night, 800 kW 07:00–19:00 site
    time, 5 % AR(1) noise with a 10-minute correlation time, rounded to 0.1 kW as a meter reports it. [kW]"""
    rng = np.random.default_rng(seed)
    hour = np.arange(seconds) // 3600 % 24
    base = np.where((hour >= 7) & (hour < 19), 800.0, 300.0) * (0.8 + 0.4 * rng.random())
    phi = np.exp(-1 / 600)
    noise = lfilter([1.0], [1.0, -phi], rng.normal(0.0, 0.05 * np.sqrt(1 - phi ** 2), seconds))   # AR(1)
    return np.round(base * (1.0 + noise), 1)


def write(vm: VictoriaMetrics, site: str, power: np.ndarray) -> None:
    t0_ms = int(MONTH_START.timestamp() * 1000)
    for lo in range(0, len(power), BATCH):
        body = "\n".join(f"ems_state,site={site} grid_kw={kw!r} {t0_ms + 1000 * (lo + k)}"
                         for k, kw in enumerate(power[lo:lo + BATCH].tolist()))
        request = urllib.request.Request(f"{vm.url}/api/v2/write?precision=ms", data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=120):
            pass


def timed(func) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = func()
    return time.perf_counter() - t0, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=40)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = f"PYTHONPATH=. .venv/bin/python benchmarks/bench_coincident.py --sites {args.sites} --days {args.days}"
    seconds = args.days * 86400
    sites = [f"site-{k:03d}" for k in range(args.sites)]
    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(Path(tmp))
        vm.start()
        try:
            t0 = time.perf_counter()
            total = np.zeros(seconds)
            for k, site in enumerate(sites):
                power = site_power_kw(k, seconds)
                total += power
                write(vm, site, power)
            with urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=60):
                pass
            write_s = time.perf_counter() - t0
            # the coincident peak from the samples themselves: each window's summed average, a sample counting in
            # the window it ends, as the sites' demand trackers count it (the last window has no sample at its end)
            windows = np.maximum(np.nanmean(np.append(total[1:], np.nan).reshape(-1, WINDOW_S), axis=1), 0.0)
            check_kw = float(windows.max())
            now = MONTH_START + timedelta(days=args.days, minutes=2)   # the last window ended 2 min ago
            client = PromQuery(vm.url, timeout_s=300)
            settings = SummarySettings(park="bench", tsdb=TsdbSettings(url=vm.url), sites=tuple(sites))
            state_expr = queries(settings)["state"]
            time.sleep(2)   # VictoriaMetrics makes fresh data searchable within about a second
            month, window, baseline, peaks = [], [], [], []
            for _ in range(args.repeats):
                peak = CoincidentPeak(site_matcher(sites), "Asia/Ho_Chi_Minh", WINDOW_S // 60)
                s, reading = timed(lambda p=peak: p.read(client, now))
                month.append(s)
                peaks.append(reading.peak_kw)
                window.append(timed(lambda p=peak: p.read(client, now + timedelta(seconds=WINDOW_S)))[0])
                baseline.append(timed(lambda: client.instant(state_expr, at=now))[0])
        finally:
            vm.stop()
    read_month_s, read_window_s, baseline_s = (statistics.median(x) for x in (month, window, baseline))
    samples = args.sites * seconds
    result = {
        "command": command, "sites": args.sites, "days": args.days, "samples": samples, "write_s": write_s,
        "read_month_s": read_month_s, "read_window_s": read_window_s, "baseline_state_s": baseline_s,
        "month_vs_baseline": read_month_s / baseline_s, "window_vs_baseline": read_window_s / baseline_s,
        "samples_per_s_month": samples / read_month_s, "peak_kw": peaks[0], "check_kw": check_kw,
        "peak_matches": None not in peaks and all(abs(p - check_kw) < 1e-6 * check_kw for p in peaks),
    }
    print(f"{args.sites} sites × {args.days} days at 1 s = {samples:,} samples (written in {write_s:.0f} s)")
    print(f"month so far, fresh summary: {read_month_s:.3f} s ({result['month_vs_baseline']:.1f} × the state query, "
          f"{result['samples_per_s_month'] / 1e6:.0f} M samples/s)")
    print(f"next window: {read_window_s:.3f} s ({result['window_vs_baseline']:.1f} × the state query "
          f"{baseline_s:.3f} s)")
    print(f"coincident peak {peaks[0]:.1f} kW, from the samples {check_kw:.1f} kW")
    print(f"reproduce: {command}")
    print(json.dumps(result))
    return 0 if result["peak_matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
