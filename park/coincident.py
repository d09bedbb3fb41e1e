"""The sites' coincident month peak: the highest demand-window average of their summed grid power this month.

A park that buys its power at one connection and supplies its factories behind it is billed on the peak of the
*sum* of their imports, which is not the sum of each factory's own peak (they rarely peak at the same time). From
what the sites' InfluxDB sinks write (``ems_state_grid_kw``: kW, + import, − export), over the sites reporting,
for every complete window W of the park-local month:

    max(0, Σ_sites mean_{t in W} grid_kw(site, t))

a PromQL range query (:func:`window_expr`: each site's window average, summed, clamped at 0 since the park imports
the sites' net), evaluated at each window's end; the month's peak is the highest, dated by the bills' rule
(:func:`optimizer.billing.sets_month_peak`: the last window more than 0.05 kW above every window before it). A
window counts once it ended ``SETTLE_S`` ago (the database shows the last seconds of data late); the window now
under way is never in it.

With the peak come the sites' shares of it: each site's average grid power in the window that set it (one more
query, made again only when the peak moves), what a park shares the connection's demand charge by.

The sites write a state a second, so a month of them is millions of samples per site: :class:`CoincidentPeak`
keeps every window's value and, once per completed window, reads only the windows of the last :data:`LOOKBACK`
(bypassing VictoriaMetrics' response cache, so points a site delivers late — its outbox after an outage — count
if they arrive within it), in range queries of at most :data:`CHUNK` each (the month so far at start).

Limits (docs/fleet.md): the sites that report only (a tenant without an EMS behind the same connection is not in
it), so this is the sites' share of the connection's peak, not a meter reading; windows aligned to the clock as the
tariff's are (30 min on the hour and half hour; the park's time zone offset a whole number of windows from UTC,
which the summary's settings check).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from optimizer.billing import sets_month_peak
from park.tsdb import PromQuery

SETTLE_S = 60
"""A demand window is read this long after its end, when every site's last samples of it are queryable. [s]"""
LOOKBACK = timedelta(hours=24)
"""Each read reads again the windows that ended in this stretch up to its last one (points delivered late). A whole
number of windows."""
CHUNK = timedelta(days=1)
"""The longest stretch one range query asks for (a month at start is read a day at a time). A whole number of
windows."""


@dataclass(frozen=True)
class CoincidentReading:
    """The coincident month peak as of the end of the last complete window.

    Attributes
    ----------
    month : str
        The park-local month, ``YYYY-MM``.
    peak_kw : float or None
        Highest window average of the sites' summed grid power this month [kW]; None before the month's first
        window completes, or when no site reported in any of its windows.
    peak_at : str or None
        UTC ISO 8601 start of the window that set it (the bills' rule); None with no peak.
    shares_kw : dict[str, float]
        Each site's average grid power in that window (+ import; what each brought to the park's peak, e.g. to
        share its demand charge among the tenants). [kW]
    through : str or None
        UTC ISO 8601 end of the last window counted (None with no complete window yet).
    window_minutes : int
        The demand window. [min]
    """

    month: str
    peak_kw: float | None
    peak_at: str | None
    shares_kw: dict[str, float]
    through: str | None
    window_minutes: int


def month_start(now: datetime, timezone: str) -> datetime:
    """The start of ``now``'s month in ``timezone``, as an aware UTC datetime."""
    local = now.astimezone(ZoneInfo(timezone))
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def last_complete_window_end(now: datetime, window_minutes: int) -> datetime:
    """The end of the last demand window that ended at least :data:`SETTLE_S` before ``now`` (UTC-aligned)."""
    step = window_minutes * 60
    settled = int((now - timedelta(seconds=SETTLE_S)).timestamp())
    return datetime.fromtimestamp(settled // step * step, UTC)


def site_window_expr(match: str, window_minutes: int) -> str:
    """The PromQL of each site's window-average grid power, at a window's end (as :func:`window_expr`). [kW]"""
    return f"avg_over_time(ems_state_grid_kw{{{match}}}[{window_minutes}m])"


def window_expr(match: str, window_minutes: int) -> str:
    """The PromQL of the sites' summed window-average grid import, at a window's end. [kW]

    The range selector at the window's end ``T`` takes the samples in ``(T − window, T]``: a reading stands for the
    cycle before it, as each site's own demand tracker integrates it (``controller.accounting.DemandTracker``), so a
    state stamped on a boundary belongs to the window it ends."""
    return f"clamp_min(sum({site_window_expr(match, window_minutes)}), 0)"


class CoincidentPeak:
    """The coincident month peak, from every window's value kept and the recent ones read again once per completed
    window (thread-safe: the summary app reads it from worker threads).

    Parameters
    ----------
    match : str
        The sites' label matcher (:func:`park.summary.site_matcher`).
    timezone : str
        The park's IANA time zone (its month).
    window_minutes : int
        The demand window [min]; it divides 60.
    """

    def __init__(self, match: str, timezone: str, window_minutes: int):
        if window_minutes < 1 or 60 % window_minutes:
            raise ValueError(f"window_minutes must divide 60, got {window_minutes}")
        self.match, self.timezone, self.window_minutes = match, timezone, window_minutes
        self._lock = threading.Lock()
        self._month: str | None = None
        self._windows: dict[float, float] = {}   # this month's windows: end (Unix time [s]) → summed average [kW]
        self._through: datetime | None = None   # the end of the last window read
        self._reading: CoincidentReading | None = None

    def read(self, client: PromQuery, now: datetime) -> CoincidentReading:
        """The reading at ``now``; queries only when a window completed since the last read (raises
        ``park.tsdb.TsdbError``; what was read before the error is kept)."""
        start = month_start(now, self.timezone)
        month = start.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m")
        end = last_complete_window_end(now, self.window_minutes)
        with self._lock:
            if month != self._month:
                self._month, self._windows, self._through, self._reading = month, {}, None, None
            if self._reading is not None and self._through == end:
                return self._reading
            if end > start:
                self._read_windows(client, start, end)
            self._through = end if end > start else None
            reading = self._evaluate(month)
            if reading.peak_at is not None:   # each site's share, read again only when the peak moves
                kept = self._reading
                shares = kept.shares_kw if kept is not None and kept.peak_at == reading.peak_at else \
                    self._shares(client, datetime.fromisoformat(reading.peak_at))
                reading = replace(reading, shares_kw=shares)
            self._reading = reading
            return reading

    def _read_windows(self, client: PromQuery, start: datetime, end: datetime) -> None:
        """Read the windows ending after the last one read, and those ending in the :data:`LOOKBACK` up to ``end``."""
        step = timedelta(minutes=self.window_minutes)
        first = start + step
        since = first if self._through is None else max(first, min(self._through + step, end - LOOKBACK + step))
        expr = window_expr(self.match, self.window_minutes)
        while since <= end:
            stop = min(since + CHUNK - step, end)
            for series in client.range(expr, since, stop, int(step.total_seconds())):
                for t, kw in series.points:
                    if kw is not None:
                        self._windows[t] = kw
            since = stop + step

    def _shares(self, client: PromQuery, window_start: datetime) -> dict[str, float]:
        """Each site's average grid power in the window starting at ``window_start``. [kW]"""
        at = window_start + timedelta(minutes=self.window_minutes)
        return {s.labels["site"]: s.value for s in client.instant(site_window_expr(self.match, self.window_minutes),
                                                                   at=at)
                if s.value is not None and "site" in s.labels}

    def _evaluate(self, month: str) -> CoincidentReading:
        """The month's peak and when it was set (the bills' rule) from the windows kept."""
        peak, peak_at = None, None
        for t in sorted(self._windows):
            kw = self._windows[t]
            if sets_month_peak(kw, peak):
                peak_at = datetime.fromtimestamp(t, UTC) - timedelta(minutes=self.window_minutes)
            peak = kw if peak is None else max(peak, kw)
        return CoincidentReading(month, peak, None if peak_at is None else peak_at.isoformat(), {},
                                 None if self._through is None else self._through.isoformat(), self.window_minutes)
