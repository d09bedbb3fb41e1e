"""Operating modes: what the controller is trying to do, why, and since when.

The operator (or a remote command) *requests* a mode for a while; the machine decides the
*effective* mode each cycle from that request, the data (safe state) and the plan:

==================  ==========================================================================
mode                the target it gives the limits chain
==================  ==========================================================================
``auto``            follow the current plan step (MPC), by the follow rule
``self_consumption``  grid target 0: charge from surplus, discharge to cover load
``tou_rule``        the TOU rule policy's step (charge off-peak, discharge at peak)
``manual``          an operator battery setpoint (with expiry)
``standby``         battery 0 kW (the safety steps still act)
``safe``            entered automatically on missing data: battery 0 kW, PV at the safe limit
``monitor_only``    ``control.initial_mode``: read, validate, plan and publish, write nothing
==================  ==========================================================================

Precedence: ``monitor_only`` > ``safe`` > an unexpired operator request > an initial ``standby`` >
``auto`` (or its fallback when there is no valid plan). Every request expires; at expiry the machine
returns to ``auto``. The initial mode of the site file (``monitor_only`` or ``standby``, reason
``initial_mode``) does not expire: it holds until the first operator request, whatever its mode.
Each transition (mode or reason changes) is logged once, not every cycle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

log = logging.getLogger(__name__)


class Mode(StrEnum):
    AUTO = "auto"
    SELF_CONSUMPTION = "self_consumption"
    TOU_RULE = "tou_rule"
    MANUAL = "manual"
    STANDBY = "standby"
    SAFE = "safe"
    MONITOR_ONLY = "monitor_only"


MODE_CODES: dict[Mode, int] = {Mode.AUTO: 0, Mode.SELF_CONSUMPTION: 1, Mode.TOU_RULE: 2, Mode.MANUAL: 3,
                                Mode.STANDBY: 4, Mode.SAFE: 5, Mode.MONITOR_ONLY: 6}
"""Each mode as a number, for time-series databases that store no strings (VictoriaMetrics, Prometheus):
the ``mode_code`` field of ``ems_state``. Fixed: a new mode gets the next number, none is ever renumbered."""

INITIAL_MODES = (Mode.AUTO, Mode.STANDBY, Mode.MONITOR_ONLY)
REQUESTABLE = (Mode.AUTO, Mode.SELF_CONSUMPTION, Mode.TOU_RULE, Mode.MANUAL, Mode.STANDBY)
FALLBACKS = (Mode.SELF_CONSUMPTION, Mode.TOU_RULE)
FallbackMode = Literal["self_consumption", "tou_rule"]
"""What auto mode does without a valid plan, as a configuration value (live ``control.fallback_mode``, a study's
``control.fallback_mode``, ``PUT /settings``): the names of :data:`FALLBACKS`."""


class Reason(StrEnum):
    """Reason codes for the effective mode."""

    PLAN = "plan"                        # auto, following a valid plan
    NO_PLAN = "no_plan"                  # auto requested, no plan yet → fallback
    PLAN_EXPIRED = "plan_expired"        # the last valid plan is too old → fallback
    PLANNER_FAILED = "planner_failed"    # the planner raised and no valid plan is left → fallback
    SOLVER_TIMEOUT = "solver_timeout"    # the solver ran out of time and no valid plan is left → fallback
    OPERATOR = "operator"                # an operator or remote command asked for this mode
    DATA_MISSING = "data_missing"        # safe state: a required measurement is missing or stale
    INITIAL_MODE = "initial_mode"        # control.initial_mode holds until the first operator request


@dataclass(frozen=True)
class Request:
    """An operator's mode request, valid until ``until`` (UTC)."""

    mode: Mode
    until: datetime
    setpoint_kw: float | None = None
    by: str = ""


@dataclass(frozen=True)
class ModeState:
    """The effective mode this cycle.

    Attributes
    ----------
    mode : Mode
    reason : Reason
    since : datetime
        When this (mode, reason) began. UTC.
    request : Request | None
        The operator request in force, if any.
    """

    mode: Mode
    reason: Reason
    since: datetime
    request: Request | None = None


class ModeMachine:
    """Decide the effective mode each cycle.

    Parameters
    ----------
    fallback : Mode
        What ``auto`` falls back to without a valid plan (``self_consumption`` or ``tou_rule``).
    start : datetime
        Site time at start-up (UTC).
    initial : Mode
        ``control.initial_mode``: ``auto``, or ``standby``/``monitor_only`` held until the first operator request.
    """

    def __init__(self, fallback: Mode, start: datetime, initial: Mode = Mode.AUTO):
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {[m.value for m in FALLBACKS]}, not {fallback}")
        if initial not in INITIAL_MODES:
            raise ValueError(f"initial mode must be one of {[m.value for m in INITIAL_MODES]}, not {initial}")
        self.fallback = fallback
        self.request: Request | None = None
        self.initial: Mode | None = None if initial is Mode.AUTO else initial
        """The initial mode still holding (None once an operator has asked for a mode, or from an auto start)."""
        self.state = ModeState(fallback, Reason.NO_PLAN, start) if self.initial is None else \
            ModeState(self.initial, Reason.INITIAL_MODE, start)
        self.transitions = 0

    @property
    def monitor_only(self) -> bool:
        """True while the controller must write nothing (initial mode ``monitor_only``, no operator request yet)."""
        return self.initial is Mode.MONITOR_ONLY

    def request_mode(self, request: Request) -> None:
        """An operator request (replaces any earlier one). ``auto`` clears the request."""
        if request.mode not in REQUESTABLE:
            raise ValueError(f"mode {request.mode} cannot be requested")
        if request.mode is Mode.MANUAL and request.setpoint_kw is None:
            raise ValueError("manual mode needs a setpoint")
        if self.initial is not None:
            log.warning("initial mode %s ended by a request for %s", self.initial.value, request.mode.value)
            self.initial = None
        self.request = None if request.mode is Mode.AUTO else request

    def evaluate(self, now: datetime, *, safe: bool, plan_reason: Reason | None) -> ModeState:
        """The effective mode at ``now``.

        Parameters
        ----------
        safe : bool
            The limits chain is in the safe state this cycle.
        plan_reason : Reason | None
            ``None`` when a valid plan covers ``now``; otherwise why not (NO_PLAN, PLAN_EXPIRED,
            PLANNER_FAILED, SOLVER_TIMEOUT).
        """
        if self.request is not None and now >= self.request.until:
            log.info("operator request %s expired at %s", self.request.mode.value, self.request.until.isoformat())
            self.request = None
        if self.initial is Mode.MONITOR_ONLY:
            mode, reason = Mode.MONITOR_ONLY, Reason.INITIAL_MODE
        elif safe:
            mode, reason = Mode.SAFE, Reason.DATA_MISSING
        elif self.request is not None:
            mode, reason = self.request.mode, Reason.OPERATOR
        elif self.initial is not None:
            mode, reason = self.initial, Reason.INITIAL_MODE
        elif plan_reason is None:
            mode, reason = Mode.AUTO, Reason.PLAN
        else:
            mode, reason = self.fallback, plan_reason
        if (mode, reason) != (self.state.mode, self.state.reason) or self.request is not self.state.request:
            if (mode, reason) != (self.state.mode, self.state.reason):
                self.transitions += 1
                log.warning("mode %s (%s) → %s (%s)", self.state.mode.value, self.state.reason.value,
                            mode.value, reason.value)
                self.state = ModeState(mode, reason, now, self.request)
            else:
                self.state = ModeState(mode, reason, self.state.since, self.request)
        return self.state
