"""The sites' coincident month peak: the highest demand-window average of their summed grid power this month.

A park that buys its power at one connection and supplies its factories behind it is billed on the peak of the
*sum* of their imports, which is not the sum of each factory's own peak (they rarely peak at the same time). From
what the sites' InfluxDB sinks write (``ems_state_grid_kw``: kW, + import, − export), over the sites reporting,
for every complete window W of the park-local month:

    max(0, Σ_sites mean_{t in W} grid_kw(site, t))

one PromQL range query (:func:`window_expr`: each site's window average, summed, clamped at 0 since the park imports
the sites' net), evaluated at each window's end; the month's peak is the highest, dated by the bills' rule
(:func:`optimizer.billing.sets_month_peak`: the last window more than 0.05 kW above every window before it). A
window counts once it ended ``SETTLE_S`` ago (the database shows the last seconds of data late); the window now
under way is never in it. The result changes only when a window completes, so :class:`CoincidentPeak` asks the
database once per window; the query bypasses VictoriaMetrics' response cache, so points a site delivers late (its
outbox after an outage) count from the next window on.

Limits (docs/fleet.md): the sites that report only (a tenant without an EMS behind the same connection is not in
it), so this is the sites' share of the connection's peak, not a meter reading; windows aligned to the clock as the
tariff's are (30 min on the hour and half hour; the park's time zone offset a whole number of windows from UTC,
which the summary's settings check).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from optimizer.billing import sets_month_peak
from park.tsdb import PromQuery

SETTLE_S = 60
"""A demand window is read this long after its end, when every site's last samples of it are queryable. [s]"""


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
    through : str or None
        UTC ISO 8601 end of the last window counted (None with no complete window yet).
    window_minutes : int
        The demand window. [min]
    """

    month: str
    peak_kw: float | None
    peak_at: str | None
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


def window_expr(match: str, window_minutes: int) -> str:
    """The PromQL of the sites' summed window-average grid import, at a window's end. [kW]"""
    return f"clamp_min(sum(avg_over_time(ems_state_grid_kw{{{match}}}[{window_minutes}m])), 0)"


class CoincidentPeak:
    """The coincident month peak, read from the database once per completed window (cached between).

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
        self._cached: tuple[datetime, CoincidentReading] | None = None

    def read(self, client: PromQuery, now: datetime) -> CoincidentReading:
        """The reading at ``now``; queries only when a window completed since the last read (raises
        ``park.tsdb.TsdbError``)."""
        start = month_start(now, self.timezone)
        month = start.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m")
        end = last_complete_window_end(now, self.window_minutes)
        if self._cached is not None and self._cached[0] == end and self._cached[1].month == month:
            return self._cached[1]
        if end <= start:
            reading = CoincidentReading(month, None, None, None, self.window_minutes)
        else:
            step = timedelta(minutes=self.window_minutes)
            series = client.range(window_expr(self.match, self.window_minutes), start + step, end,
                                  int(step.total_seconds()))
            peak, peak_at = None, None
            for t, kw in sorted(p for s in series for p in s.points if p[1] is not None):
                if sets_month_peak(kw, peak):
                    peak_at = datetime.fromtimestamp(t, UTC) - step
                peak = kw if peak is None else max(peak, kw)
            reading = CoincidentReading(month, peak, None if peak_at is None else peak_at.isoformat(),
                                        end.isoformat(), self.window_minutes)
        self._cached = (end, reading)
        return reading
