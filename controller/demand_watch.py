"""Demand watch: is the demand window running now on course to set a new month peak, and how much load would the
factory have to shed to hold it?

Under a demand charge the battery holds the month's planned peak as far as its power and energy go (the grid
ceiling of :func:`controller.targets.follow_plan`). When it cannot — at its discharge limit, at its SOC floor, out
of service — only the factory can: a demand controller's classic job is to tell the operator in time to stop a
compressor or a furnace. Every cycle, from the window's import so far and the import of the last
:data:`SMOOTHING_S` seconds (a one-second spike is not a trend):

    projected = (import so far + recent import × time left) / window length           [kW, the window's average]
    shed      = recent import − the battery's headroom − the import that holds the level for the rest of the
                window   (≥ 0)

The level held is the higher of the month-to-date peak and the plan's planned peak for the month (what the
dispatcher defends; without a plan, the month-to-date peak); there is none in a month without a demand charge, or
before anything set a level (a new month's first window with no plan). The alarm ``demand_peak_rising`` is raised
when ``shed`` reaches ``control.demand_warning_kw`` and cleared when it falls below half of that or the window
ends; its message gives the figures. Once the window's import so far is above what the level allows for the whole
window, the new peak is certain and the message says so (nothing shed now can undo it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.targets import DemandWindow

SMOOTHING_S = 60.0
"""The projection extrapolates the mean import over this last stretch of time. [s]"""

ALARM = "demand_peak_rising"


@dataclass(frozen=True)
class DemandOutlook:
    """Where the running demand window is heading.

    Attributes
    ----------
    hold_kw : float
        The level held: the month-to-date peak or the plan's planned peak, the higher. [kW]
    import_kw : float
        The recent import the projection extrapolates (mean over the last :data:`SMOOTHING_S`). [kW]
    projected_kw : float
        The window's average import if the recent import lasts until the window ends. [kW]
    shed_kw : float
        Import to take off from now until the window ends to hold ``hold_kw`` (0: it holds). [kW]
    left_min : float
        Minutes left in the window. [min]
    certain : bool
        The window's import so far already exceeds what ``hold_kw`` allows for the whole window.
    """

    hold_kw: float
    import_kw: float
    projected_kw: float
    shed_kw: float
    left_min: float
    certain: bool

    def message(self) -> str:
        """The alarm's message: the figures an operator acts on."""
        if self.certain:
            return (f"this demand window will set a new month peak whatever is shed now: projected "
                    f"{self.projected_kw:.1f} kW against {self.hold_kw:.1f} kW held, {self.left_min:.0f} min left")
        return (f"this demand window is on course for {self.projected_kw:.1f} kW, above the {self.hold_kw:.1f} kW "
                f"held this month: shed {self.shed_kw:.1f} kW of load for the remaining {self.left_min:.0f} min "
                f"to hold it (import now {self.import_kw:.1f} kW)")


def outlook(window: DemandWindow, import_kw: float, hold_kw: float, headroom_kw: float = 0.0) -> DemandOutlook:
    """The outlook of ``window`` if ``import_kw`` (≥ 0 counts; export is 0 import) lasts until it ends, against the
    level ``hold_kw``; the load to shed is what the battery's ``headroom_kw`` (the discharge it has left now) cannot
    take off. [kW]"""
    imp = max(import_kw, 0.0)
    remaining_h = max(window.length_h - window.elapsed_h, 0.0)
    projected = (window.import_kwh + imp * remaining_h) / window.length_h
    certain = window.import_kwh > hold_kw * window.length_h + 1e-9
    shed = max(0.0, imp - max(headroom_kw, 0.0) - window.ceiling_kw(hold_kw)) if remaining_h > 1e-9 else 0.0
    return DemandOutlook(hold_kw=hold_kw, import_kw=imp, projected_kw=projected, shed_kw=shed,
                         left_min=remaining_h * 60.0, certain=certain)


class DemandWatch:
    """The demand window's outlook each cycle, and whether the ``demand_peak_rising`` alarm is due.

    Parameters
    ----------
    warning_kw : float or None
        Raise the alarm when the load to shed reaches this; it clears below half of it. None: no alarm (the
        outlook is still published). [kW]
    """

    def __init__(self, warning_kw: float | None):
        self.warning_kw = warning_kw
        self._recent: deque[tuple[datetime, float]] = deque()
        self._window_elapsed_h = 0.0
        self.alarm = False

    def clock_stepped(self, by: timedelta) -> None:
        """The system clock was set back (``by`` < 0): the recent readings keep their ages."""
        self._recent = deque((t + by, kw) for t, kw in self._recent)

    def update(self, now: datetime, import_kw: float | None, window: DemandWindow,
               hold_kw: float | None, headroom_kw: float = 0.0) -> DemandOutlook | None:
        """The outlook at ``now`` (None when the import is missing or no level is held) and :attr:`alarm`;
        ``headroom_kw``: the discharge the battery has left now, which the dispatcher takes before any load need be
        shed. [kW]"""
        if window.elapsed_h < self._window_elapsed_h:   # a new window: the alarm is judged afresh
            self.alarm = False
        self._window_elapsed_h = window.elapsed_h
        if import_kw is None:   # missing is missing: the data_missing alarm covers it, the outlook is unknown
            self._recent.clear()
            self.alarm = False
            return None
        self._recent.append((now, max(import_kw, 0.0)))
        while (now - self._recent[0][0]).total_seconds() >= SMOOTHING_S:
            self._recent.popleft()
        if hold_kw is None or hold_kw <= 0.0 or window.length_h <= 0.0:
            self.alarm = False
            return None
        recent = sum(kw for _, kw in self._recent) / len(self._recent)
        found = outlook(window, recent, hold_kw, headroom_kw)
        if self.warning_kw is None:
            self.alarm = False
        elif found.shed_kw >= self.warning_kw or (found.certain and found.left_min > 0.0):
            self.alarm = True
        elif found.shed_kw < self.warning_kw / 2:
            self.alarm = False
        return found
