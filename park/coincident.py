"""The sites' coincident month peak: the highest demand-window average of their summed grid power this month.

A park that buys its power at one connection and supplies its factories behind it is billed on the peak of the
*sum* of their imports, which is not the sum of each factory's own peak (they rarely peak at the same time). From
what the sites' InfluxDB sinks write (``ems_state_grid_kw``: kW, + import, − export), over the sites reporting:

    max over this month's complete windows W of  max(0, Σ_sites mean_{t in W} grid_kw(site, t))

one PromQL expression (a subquery: each site's window average, summed, clamped at 0 since the park imports the
sites' net, then the month's maximum), evaluated at the end of the last complete window. A window counts once it
ended ``SETTLE_S`` ago (the database shows the last seconds of data late); the window now under way is never in it.
The result changes only when a window completes, so :class:`CoincidentPeak` asks the database once per window.

Limits (docs/fleet.md): the sites that report only (a tenant without an EMS behind the same connection is not in
it), so this is the sites' share of the connection's peak, not a meter reading; windows aligned to the clock as the
tariff's are (30 min on the hour and half hour; the park's time zone offset a whole number of windows from UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

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
    through : str or None
        UTC ISO 8601 end of the last window counted (None with no complete window yet).
    window_minutes : int
        The demand window. [min]
    """

    month: str
    peak_kw: float | None
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


def peak_expr(match: str, window_minutes: int, span_s: int) -> str:
    """The PromQL of the coincident peak over the ``span_s`` seconds before the evaluation time (windows ending
    in that span)."""
    w = f"{window_minutes}m"
    return f"max_over_time(clamp_min(sum(avg_over_time(ems_state_grid_kw{{{match}}}[{w}])), 0)[{span_s}s:{w}])"


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
            reading = CoincidentReading(month, None, None, self.window_minutes)
        else:
            # windows ending in (start, end]: the range stops a second short of the month's start, so the window
            # ending exactly at it (the last of the month before) is not evaluated
            span_s = int((end - start).total_seconds()) - 1
            samples = client.instant(peak_expr(self.match, self.window_minutes, span_s), at=end)
            values = [s.value for s in samples if s.value is not None]
            reading = CoincidentReading(month, max(values) if values else None, end.isoformat(),
                                        self.window_minutes)
        self._cached = (end, reading)
        return reading
