"""The limits chain: from measurements and a target to a battery setpoint and a PV limit.

Pure and synchronous (no I/O, no clock reads); stateful only for hysteresis, the PV limit it last
commanded, the load's recent one-cycle falls and what it last saw of the battery. The live controller
and the offline simulator use the same object.

The chain runs in a fixed order. Each step can only narrow the allowed battery power interval
``[lo, hi]`` (kW, +discharge) or lower the PV limit; nothing after a step can undo it, so a plan,
an operator or a remote command can never override safety:

1. ``data``       missing or stale data → a safe state chosen per missing device (alarm ``data_missing``,
                  the rest of the chain does not run; docs/controller.md has the table):

                  - meter (or PV and battery together) → site-wide: battery 0 kW, PV at the configured
                    safe limit;
                  - battery (power, SOC or a BMS allowance) → battery 0 kW; PV alone holds the export cap
                    and the import cap from the meter, assuming the unreachable battery may still move
                    anywhere along its path (last measured → last commanded → 0 kW) until its own
                    reversion timer has certainly expired (:func:`battery_path_kw`);
                  - PV → the battery holds the grid inside the caps from the meter (steps 2–4 below
                    with an idle target), PV at the safe limit.
2. ``pcs``, ``bms``, ``soc``  the PCS nameplate, what the BMS allows now, and the SOC window with
                  hysteresis (no discharge at or below ``soc_min`` until SOC recovers by
                  ``soc_hysteresis_pct``; no charge at or above ``soc_max`` likewise).
3. ``import_cap`` discharge at least enough to hold import under the contracted capacity, as far
                  as step 2 allows (alarm ``import_cap_unheld`` when it cannot).
4. ``export_cap`` discharge at most what keeps export under the cap (reduce discharge, then charge
                  from surplus); what the battery cannot absorb is curtailed through the PV limit.
                  The margin kept above the cap is ``export_margin_kw`` or, if larger, the largest
                  fall of the load from one cycle to the next in the last ``load_swing_window_s``:
                  a load that falls faster than the cycle can follow would otherwise export until
                  the next cycle. Until the load has been watched for one window (at start-up, after
                  a gap in the data longer than the window) its swing is unknown, and the battery does
                  not discharge to cover load (only as far as the import cap needs).
5. ``target``     the plan step or the operating mode's target (manual setpoint, self-consumption,
                  TOU rule, standby) picks a point inside what is left. Operator and remote
                  commands arrive here, below the safety steps, and every target expires.

The follow rule (:func:`plan_target`): a plan step is followed as a *grid* target when the plan
sits on the export bound (zero export, self-consumption, export at the cap): the battery then
absorbs whatever PV surplus or load the forecast missed instead of the grid. Otherwise it is
followed as a *battery power*, so a forecast miss moves the grid, not the battery's schedule —
except that the grid may not rise above a ceiling: under a demand charge, always the highest import
the plan allows in the billing month (so a load above the forecast makes the battery charge less or
discharge rather than set a new monthly peak; ``controller.targets.follow_plan`` turns it into the
ceiling of the running demand window); without one, the contracted capacity on steps that sit on it.

Sign conventions: docs/conventions.md (grid + import, battery + discharge, PV ≥ 0).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from optimizer.site import BatterySpec, GridSpec


class Source(StrEnum):
    """Who asked for a target."""

    PLAN = "plan"
    MANUAL = "manual"
    SELF_CONSUMPTION = "self_consumption"
    TOU_RULE = "tou_rule"
    STANDBY = "standby"


class Follow(StrEnum):
    """How a target is followed."""

    BATTERY = "battery"  # hold the battery at a power [kW, +discharge]
    GRID = "grid"        # move the battery so the grid sits at a power [kW, +import]


class Alarm(StrEnum):
    """Alarm codes the chain raises (active while the condition lasts)."""

    DATA_MISSING = "data_missing"
    IMPORT_CAP_UNHELD = "import_cap_unheld"


def battery_path_kw(measured_kw: float | None, commanded_kw: float, reverted: bool) -> tuple[float, ...]:
    """Where an unreachable battery may go from now on, in order: its waypoints. [kW, +discharge]

    Until its reversion timer has certainly expired (``reverted`` False) the battery moves from its last
    measured power towards the setpoint last commanded, and it may drop to 0 kW at any moment (the
    timer, or a 0 kW write that got through); afterwards it is at 0 kW (or at the power it is measured
    at now, which may still fall to 0). Between waypoints it moves monotonically, so the extremes of
    any change lie on them.

    Parameters
    ----------
    measured_kw : float | None
        Battery power last measured; once reverted, only one measured now counts (``None``: none). [kW]
    commanded_kw : float
        Setpoint last commanded while the battery was seen (0 if none). [kW]
    reverted : bool
        Whether the battery's reversion timer has certainly expired.
    """
    seen = () if measured_kw is None else (measured_kw,)
    return (*seen, 0.0) if reverted else (*seen, commanded_kw, 0.0)


def path_moves_kw(path: tuple[float, ...]) -> tuple[float, float]:
    """Largest fall and largest rise of battery power along ``path`` from any point to a later one. [kW, ≥ 0]

    A fall (more charging) raises grid import; a rise (more discharging) raises export.
    """
    drop = max((a - b for i, a in enumerate(path) for b in path[i + 1:]), default=0.0)
    rise = max((b - a for i, a in enumerate(path) for b in path[i + 1:]), default=0.0)
    return max(0.0, drop), max(0.0, rise)


class DispatchSettings(BaseModel):
    """Tuning of the limits chain (the ``control.dispatch`` section of a site file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    soc_hysteresis_pct: float = Field(
        default=2.0, ge=0, le=20,
        description="SOC must recover this far past a hard limit before that direction is allowed again [%]")
    safe_pv_limit_pct: float = Field(
        default=0.0, ge=0, le=100,
        description="PV limit while in the safe state [% of PV AC rating]; keep it at or below the site's "
                    "minimum load on zero-export sites (the chain also lowers it to the lowest load it measured "
                    "in the last safe_pv_load_window_h)")
    safe_pv_load_window_h: float = Field(
        default=168.0, ge=0,
        description="The safe-state PV limit is never above the lowest site load measured in this window plus the "
                    "export cap (a Sunday's load can sit below the configured limit) [h]; 0 = off")
    export_margin_kw: float = Field(
        default=0.0, ge=0, description="Keep the grid this far above the export cap (import bias) [kW]")
    import_margin_kw: float = Field(
        default=0.0, ge=0, description="Keep import this far under the contracted capacity [kW]")
    load_swing_window_s: float = Field(
        default=30.0, ge=0,
        description="The export margin is at least the largest fall of the load between two cycles seen in this "
                    "window [s of site time]; 0 = off. Cycles further apart than the window are not compared")
    curtail_probe_pct: float = Field(
        default=5.0, gt=0, le=100,
        description="While PV sits at its limit, assume this much more is available per cycle, so the "
                    "battery takes it and the limit rises step by step [% of PV AC rating]")
    saturation_tol_pct: float = Field(
        default=1.0, gt=0, le=20,
        description="PV within this of its limit counts as held back by the limit [% of PV AC rating]")
    follow_tol_kw: float = Field(
        default=1.0, ge=0, description="A plan grid value this close to a bound counts as on the bound [kW]")
    battery_reversion_s: float | None = Field(
        default=None, gt=0,
        description="The battery's own fallback to 0 kW after this long without a setpoint [s], for profiles "
                    "whose remote_control.enter does not set setpoint_reversion_s; null = no known timer (an "
                    "unreachable battery is assumed to hold its last command until it is seen again)")
    reversion_margin_s: float = Field(
        default=10.0, ge=0,
        description="Beyond the reversion period, before an unreachable battery is taken to be at 0 kW: the last "
                    "write's latency and the PCS ramp [s]")


@dataclass(frozen=True)
class DispatchInputs:
    """One cycle's measurements (from the frozen snapshot). ``None`` = missing or stale.

    Attributes
    ----------
    grid_kw : float | None
        Grid power at the point of connection, +import. [kW]
    pv_kw : float | None
        PV AC output. [kW]
    battery_kw : float | None
        Battery AC power, +discharge. [kW]
    soc_pct : float | None
        State of charge, % of usable capacity. [%]
    bms_max_charge_kw, bms_max_discharge_kw : float | None
        What the BMS allows now (≥ 0). [kW]
    pv_limit_pct : float | None
        The PV active-power limit in force as read back from the inverter; ``None`` = unknown, the
        dispatcher then assumes the limit it last commanded. [% of PV AC rating]
    """

    grid_kw: float | None
    pv_kw: float | None
    battery_kw: float | None
    soc_pct: float | None
    bms_max_charge_kw: float | None
    bms_max_discharge_kw: float | None
    pv_limit_pct: float | None = None

    BATTERY = ("battery_kw", "soc_pct", "bms_max_charge_kw", "bms_max_discharge_kw")
    """The battery's inputs: any one missing counts as the battery missing."""

    def missing(self) -> tuple[str, ...]:
        """Names of the required inputs that are missing."""
        names = ("grid_kw", "pv_kw", *self.BATTERY)
        return tuple(n for n in names if getattr(self, n) is None)

    @property
    def battery_missing(self) -> bool:
        return any(getattr(self, n) is None for n in self.BATTERY)


@dataclass(frozen=True)
class LaterSteps:
    """How a demand window's grid ceiling tightens while the net load runs above the plan's.

    The ceiling of the step followed counts on the window's later steps importing as planned. When the load (less
    the PV) is above the plan's, the part of that excess the battery cannot take off later — at its discharge limit
    there — imports later as well, so the step followed must import that much less now for the window to hold its
    level (the excess taken to persist to the window's end).

    Attributes
    ----------
    planned_net_kw : float
        The plan's load less PV at the step followed (its grid plus battery power). [kW]
    left_h : float
        What is left of the step followed. [h]
    later : tuple of (float, float)
        The window's later steps: (duration [h], the battery's discharge headroom there [kW]: its limit less the
        plan's battery power).
    flat_kw : float
        The import that, held to the window's end, makes its average the level held: with the load above the plan's
        the ceiling is no higher (the window defended evenly, as the demand watch judges it). [kW]
    """

    planned_net_kw: float
    left_h: float
    later: tuple[tuple[float, float], ...]
    flat_kw: float

    def ceiling_kw(self, ceiling_kw: float, net_load_kw: float) -> float:
        """``ceiling_kw`` less the import the window's later steps will take above plan with the net load now at
        ``net_load_kw``, spread over what is left of the step followed, and no more than :attr:`flat_kw` (≥ 0). [kW]"""
        excess = net_load_kw - self.planned_net_kw
        if excess <= 0.0 or self.left_h <= 1e-9:
            return ceiling_kw
        extra_kwh = sum(h * max(0.0, excess - room) for h, room in self.later)
        return max(0.0, min(ceiling_kw - extra_kwh / self.left_h, self.flat_kw))


@dataclass(frozen=True)
class Target:
    """What the plan or the operating mode wants, before the safety steps narrow it.

    Attributes
    ----------
    source : Source
    follow : Follow
    value_kw : float
        Battery power (+discharge) when ``follow`` is BATTERY, grid power (+import) when GRID. [kW]
    grid_ceiling_kw : float | None
        Discharge more (charge less) if needed to keep import at or under this: the contracted capacity
        or, under a demand charge, the highest import the plan allows this billing month. [kW]
    reserve_soc_pct : float | None
        Operator reserve: no discharge for the target at or below this SOC (safety steps may still
        discharge, e.g. to hold the import cap). [%]
    expires_at : datetime | None
        After this instant the target is ignored (battery idles, safety steps still run). UTC.
    reason : str
        Why this target (reason code of the mode or the follow rule).
    later_steps : LaterSteps | None
        Under a demand charge: how ``grid_ceiling_kw`` tightens with the measured net load above the plan's.
    """

    source: Source
    follow: Follow
    value_kw: float
    grid_ceiling_kw: float | None = None
    reserve_soc_pct: float | None = None
    expires_at: datetime | None = None
    reason: str = ""
    later_steps: LaterSteps | None = None


@dataclass(frozen=True)
class BoundNote:
    """One chain step's effect: the allowed battery interval after it [kW] and why."""

    step: str
    lo_kw: float
    hi_kw: float
    note: str


@dataclass(frozen=True)
class Decision:
    """The chain's output for one cycle.

    Attributes
    ----------
    battery_setpoint_kw : float
        Battery power to command, +discharge. [kW]
    pv_limit_kw : float | None
        PV active-power limit; ``None`` = no limit (100 %). [kW]
    pv_limit_pct : float
        The same as % of the PV AC rating (100 when unlimited). [%]
    safe : bool
        True when the chain is in the safe state (step 1).
    source : str
        Source of the target that picked the setpoint, ``"safe"`` or ``"none"``.
    follow : str | None
        ``"battery"`` or ``"grid"``; None without a target.
    load_kw : float | None
        Site load derived from the measurements (grid + PV + battery). [kW]
    expected_grid_kw : float | None
        Grid power expected after the decision if load and available PV stay put. [kW]
    bounds : tuple[BoundNote, ...]
        Every step that narrowed the interval or the PV limit, in chain order.
    alarms : tuple[str, ...]
        Active alarm codes (:class:`Alarm`).
    reason : str
        Reason code for the setpoint (the last step that decided it).
    """

    battery_setpoint_kw: float
    pv_limit_kw: float | None
    pv_limit_pct: float
    safe: bool
    source: str
    follow: str | None
    load_kw: float | None
    expected_grid_kw: float | None
    bounds: tuple[BoundNote, ...] = field(default_factory=tuple)
    alarms: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""


def plan_target(battery_kw: float, grid_kw: float, grid: GridSpec, *, source: Source = Source.PLAN,
                peak_kw: float | None = None, expires_at: datetime | None = None,
                tol_kw: float = 1.0) -> Target:
    """The follow rule: turn a plan step into a :class:`Target`.

    Parameters
    ----------
    battery_kw : float
        The step's planned battery power, +discharge. [kW]
    grid_kw : float
        The step's planned grid power, +import. [kW]
    grid : GridSpec
        The site's grid bounds (export cap, contracted import capacity).
    peak_kw : float | None
        Only when the tariff has a demand charge: the highest import the plan allows in the step's
        billing month, ``max(month-to-date peak already reached, max of the plan's import_kw over its
        steps in that billing month)``; ``None`` = no demand charge. [kW]
    expires_at : datetime | None
        When the step (or its plan) stops being valid. UTC.
    tol_kw : float
        How close to a bound counts as on it. [kW]

    Returns
    -------
    Target
        On the export bound (``grid_kw ≤ −export_cap + tol``): a grid target of ``−export_cap``
        (reason ``plan_on_export_bound``): surplus PV the forecast missed goes into the battery, and a
        load the forecast missed is met from the battery as the plan meant.

        Otherwise: the battery power, with a grid ceiling (the dispatcher discharges more — charges
        less, or discharges instead — when the measured load would push import above it; it never
        charges more because the load came in lower):

        - with a demand charge, on *every* such step: ``max(peak_kw, grid_kw)`` (the step's own import
          is allowed by definition), and no more than the contracted capacity when the step sits on
          it. A load above the forecast while the plan charges or idles would otherwise set a new
          monthly peak, billed for the whole month at the demand rate — far more than the energy the
          battery stores less now is worth;
        - without one, only on a step on the contracted capacity (``grid_kw ≥ import_cap − tol``):
          that capacity. Elsewhere the grid absorbs forecast errors; the chain's ``import_cap`` step
          still holds the contract.

        The reason is ``plan_on_import_bound`` when the step sits on the capacity or the peak,
        ``plan_battery_power`` otherwise.
    """
    export_bound = -grid.export_cap_kw
    if grid_kw <= export_bound + tol_kw:
        return Target(source, Follow.GRID, export_bound, expires_at=expires_at, reason="plan_on_export_bound")
    on_cap = grid.import_cap_kw is not None and grid_kw >= grid.import_cap_kw - tol_kw
    on_peak = peak_kw is not None and grid_kw >= peak_kw - tol_kw
    reason = "plan_on_import_bound" if on_cap or on_peak else "plan_battery_power"
    ceilings = ([max(peak_kw, grid_kw)] if peak_kw is not None else []) + ([grid.import_cap_kw] if on_cap else [])
    return Target(source, Follow.BATTERY, battery_kw, grid_ceiling_kw=min(ceilings) if ceilings else None,
                  expires_at=expires_at, reason=reason)


class Dispatcher:
    """The ordered limits chain (see the module docstring).

    Parameters
    ----------
    battery : BatterySpec
        PCS limits and the SOC window.
    grid : GridSpec
        Contracted import capacity and export cap.
    settings : DispatchSettings
    pv_rated_kw : float
        PV AC rating, the base of ``pv_limit_pct``. [kW]
    battery_reversion_s : float | None
        The battery's own reversion timer as its remote-control sequence sets it (the live controller
        reads it from the battery profile); ``None``: ``settings.battery_reversion_s``. [s]
    """

    def __init__(self, battery: BatterySpec, grid: GridSpec, settings: DispatchSettings | None = None,
                 pv_rated_kw: float = 0.0, battery_reversion_s: float | None = None):
        self.battery = battery
        self.grid = grid
        self.settings = settings or DispatchSettings()
        self.pv_rated_kw = float(pv_rated_kw)
        self.battery_reversion_s = battery_reversion_s or self.settings.battery_reversion_s
        self._discharge_blocked = False
        self._charge_blocked = False
        self._reserve_blocked = False
        self._pv_limit_kw: float | None = None
        self._last_load: tuple[datetime, float] | None = None   # previous full-data cycle's load [kW]
        self._load_watched_since: datetime | None = None       # start of the unbroken run of load readings
        self._load_falls: deque[tuple[datetime, float]] = deque()  # one-cycle load falls in the window [kW]
        self._battery_seen_at: datetime | None = None  # last cycle with every battery input present
        self._battery_measured_kw: float | None = None  # last measured battery power [kW]
        self._battery_commanded_kw = 0.0                # setpoint decided when the battery was last seen [kW]
        self._hourly_min_load: dict[int, float] = {}   # hour index (UTC) → lowest load measured in it [kW]

    def _pct(self, kw: float | None) -> float:
        if kw is None or self.pv_rated_kw <= 0:
            return 100.0 if kw is None else 0.0
        return min(100.0, max(0.0, 100.0 * kw / self.pv_rated_kw))

    def _safe_pv_limit_kw(self) -> float | None:
        """The PV limit while the meter or PV data is missing: the configured share of the PV rating, lowered
        to the lowest load measured in the last ``safe_pv_load_window_h`` plus the export cap. [kW]"""
        s = self.settings
        limit = None if s.safe_pv_limit_pct >= 100 else self.pv_rated_kw * s.safe_pv_limit_pct / 100.0
        if self._hourly_min_load:
            floor_kw = max(0.0, min(self._hourly_min_load.values()) + self.grid.export_cap_kw - s.export_margin_kw)
            limit = floor_kw if limit is None else min(limit, floor_kw)
        return limit

    def _note_load(self, load_kw: float, now: datetime) -> None:
        """Keep the lowest measured load per hour over the last ``safe_pv_load_window_h``."""
        window_h = self.settings.safe_pv_load_window_h
        if window_h <= 0:
            return
        hour = int(now.timestamp() // 3600)
        lowest = self._hourly_min_load.get(hour)
        if lowest is None:
            for old in [h for h in self._hourly_min_load if h <= hour - window_h]:
                del self._hourly_min_load[old]
        if lowest is None or load_kw < lowest:
            self._hourly_min_load[hour] = load_kw

    def _remember_battery(self, inputs: DispatchInputs, setpoint_kw: float, now: datetime) -> None:
        """Note what the battery was doing and was told while seen (for when it goes missing)."""
        if inputs.battery_kw is not None:
            self._battery_measured_kw = float(inputs.battery_kw)
        if not inputs.battery_missing:
            self._battery_seen_at = now
            self._battery_commanded_kw = setpoint_kw

    def _safe(self, inputs: DispatchInputs, missing: tuple[str, ...], now: datetime) -> Decision:
        """Site-wide safe state: battery 0 kW, PV at the safe limit."""
        self._pv_limit_kw = self._safe_pv_limit_kw()
        self._remember_battery(inputs, 0.0, now)
        note = "missing: " + ", ".join(missing)
        return Decision(
            battery_setpoint_kw=0.0, pv_limit_kw=self._pv_limit_kw, pv_limit_pct=self._pct(self._pv_limit_kw),
            safe=True, source="safe", follow=None, load_kw=None, expected_grid_kw=None,
            bounds=(BoundNote("data", 0.0, 0.0, note),), alarms=(Alarm.DATA_MISSING.value,), reason="data_missing")

    def clock_stepped(self, by: timedelta) -> None:
        """The system clock was set back (``by`` < 0): the load's watch and the battery's last sighting keep the
        time they had (their times move with the clock)."""
        if self._last_load is not None:
            self._last_load = (self._last_load[0] + by, self._last_load[1])
        if self._load_watched_since is not None:
            self._load_watched_since += by
        self._load_falls = deque((t + by, fall) for t, fall in self._load_falls)
        if self._battery_seen_at is not None:
            self._battery_seen_at += by

    def _reverted(self, now: datetime) -> bool:
        """Whether the missing battery's reversion timer has certainly expired (never seen: nothing commanded)."""
        if self._battery_seen_at is None:
            return True
        if self.battery_reversion_s is None:
            return False
        elapsed_s = (now - self._battery_seen_at).total_seconds()
        return elapsed_s >= self.battery_reversion_s + self.settings.reversion_margin_s

    def _battery_missing(self, inputs: DispatchInputs, missing: tuple[str, ...], now: datetime) -> Decision:
        """Battery missing, meter and PV fine: battery 0 kW, PV alone holds the caps (see the module docstring)."""
        s, cap = self.settings, self.grid.import_cap_kw
        grid_kw, pv_kw = float(inputs.grid_kw), float(inputs.pv_kw)  # type: ignore[arg-type]
        self._remember_battery(inputs, 0.0, now)
        reverted = self._reverted(now)
        measured_kw = inputs.battery_kw if reverted else self._battery_measured_kw  # an old reading is void then
        path = battery_path_kw(measured_kw, self._battery_commanded_kw, reverted)
        drop_kw, rise_kw = path_moves_kw(path)
        pv_est, limit_active = self._pv_estimate(pv_kw, inputs.pv_limit_pct)
        # PV output that keeps export under the cap if the battery rises by rise_kw, and that keeps import
        # under the contract if it falls by drop_kw (grid changes 1:1 against PV and battery).
        ceiling_kw = grid_kw + pv_kw - rise_kw + self.grid.export_cap_kw - s.export_margin_kw
        floor_kw = None if cap is None else grid_kw + pv_kw + drop_kw - (cap - s.import_margin_kw)
        if reverted:
            when = "reversion timer expired"
        elif self.battery_reversion_s is None:
            when = "no reversion timer known"
        else:
            assert self._battery_seen_at is not None  # _reverted: never seen counts as reverted
            end = self._battery_seen_at + timedelta(seconds=self.battery_reversion_s + s.reversion_margin_s)
            when = f"until {end:%H:%M:%S} UTC"
        notes = [BoundNote("data", 0.0, 0.0, "missing: " + ", ".join(missing) + "; battery path "
                           + " → ".join(f"{p:g}" for p in path) + f" kW ({when}); PV holds the caps")]
        alarms = [Alarm.DATA_MISSING.value]
        new_limit: float | None = None
        if limit_active or pv_est > ceiling_kw:
            new_limit = max(0.0, ceiling_kw)
            notes.append(BoundNote("export_cap", 0.0, 0.0, f"PV at most {new_limit:.1f} kW for export under "
                                                           f"{self.grid.export_cap_kw:g} kW"))
        if floor_kw is not None:
            if new_limit is not None and floor_kw > new_limit:
                new_limit = floor_kw
                notes.append(BoundNote("import_cap", 0.0, 0.0, f"PV at least {floor_kw:.1f} kW for import under "
                                                               f"{cap:g} kW (export cap may not hold)"))
            if floor_kw > pv_est + 1e-9:
                alarms.append(Alarm.IMPORT_CAP_UNHELD.value)
        if new_limit is not None and new_limit >= self.pv_rated_kw:
            new_limit = None
        self._pv_limit_kw = new_limit
        pv_after = pv_est if new_limit is None else min(pv_est, new_limit)
        return Decision(
            battery_setpoint_kw=0.0, pv_limit_kw=new_limit, pv_limit_pct=self._pct(new_limit), safe=True,
            source="safe", follow=None, load_kw=None, expected_grid_kw=grid_kw + pv_kw - pv_after,
            bounds=tuple(notes), alarms=tuple(alarms), reason="battery_missing")

    def _update_hysteresis(self, soc: float, target: Target | None) -> None:
        b, h = self.battery, self.settings.soc_hysteresis_pct
        if soc <= b.soc_min_pct:
            self._discharge_blocked = True
        elif soc >= b.soc_min_pct + h:
            self._discharge_blocked = False
        if soc >= b.soc_max_pct:
            self._charge_blocked = True
        elif soc <= b.soc_max_pct - h:
            self._charge_blocked = False
        reserve = target.reserve_soc_pct if target is not None else None
        if reserve is None:
            self._reserve_blocked = False
        elif soc <= reserve:
            self._reserve_blocked = True
        elif soc >= reserve + h:
            self._reserve_blocked = False

    def _pv_limit_in_force_kw(self, limit_pct: float | None) -> float | None:
        """The PV limit in force [kW], None without one; the read-back limit wins over the one last commanded."""
        if limit_pct is None:
            return self._pv_limit_kw
        return None if limit_pct >= 100 else self.pv_rated_kw * limit_pct / 100.0

    def pv_held_at_limit(self, pv_kw: float, limit_pct: float | None) -> bool:
        """Whether measured PV ``pv_kw`` [kW] sits at the limit in force (read back as ``limit_pct`` [%], else the
        one last commanded), within ``saturation_tol_pct``: the limit, not the weather, sets it, and how much more
        there is is unknown (the forecasters' history leaves such a step out: docs/data.md)."""
        limit_kw = self._pv_limit_in_force_kw(limit_pct)
        return limit_kw is not None and pv_kw >= limit_kw - self.pv_rated_kw * self.settings.saturation_tol_pct / 100.0

    def _pv_estimate(self, pv_kw: float, limit_pct: float | None) -> tuple[float, bool]:
        """Available PV [kW] and whether a limit is in force.

        The measurement, plus a probe step when PV sits at its limit (the limit hides how much more
        there is); the read-back limit wins over the one last commanded.
        """
        if self._pv_limit_in_force_kw(limit_pct) is None:
            return pv_kw, False
        if self.pv_held_at_limit(pv_kw, limit_pct):
            return pv_kw + self.pv_rated_kw * self.settings.curtail_probe_pct / 100.0, True
        return pv_kw, True

    def _export_margin_kw(self, load_kw: float, now: datetime) -> tuple[float, bool]:
        """The margin above the export cap this cycle [kW], and whether the load's swing is known yet.

        The margin is ``export_margin_kw`` or, if larger, the largest fall of the load from one cycle to
        the next within the last ``load_swing_window_s`` (the chain decides on this cycle's load; until
        the next cycle a falling load turns discharge or PV into export). The swing is known once the
        load has been read without a gap longer than the window for a whole window.
        """
        window_s = self.settings.load_swing_window_s
        gap_s = None if self._last_load is None else (now - self._last_load[0]).total_seconds()
        if gap_s is not None and 0 < gap_s <= window_s:
            self._load_falls.append((now, self._last_load[1] - load_kw))  # type: ignore[index]
        if gap_s is None or gap_s > window_s:
            self._load_watched_since = now
        self._last_load = (now, load_kw)
        while self._load_falls and (now - self._load_falls[0][0]).total_seconds() > window_s:
            self._load_falls.popleft()
        watched_s = (now - self._load_watched_since).total_seconds()  # type: ignore[operator]
        margin_kw = max([self.settings.export_margin_kw, *(fall for _t, fall in self._load_falls)])
        return margin_kw, window_s == 0 or watched_s >= window_s

    def _battery_bounds(self, inputs: DispatchInputs, load_kw: float, pv_kw: float, pv_est_kw: float,
                        export_margin_kw: float, swing_known: bool = True
                        ) -> tuple[float, float, list[BoundNote], list[str]]:
        """Steps 2–4: the allowed battery interval [kW, +discharge], its notes and alarms.

        ``load_kw − pv_kw`` is the measured net load (grid + battery); ``pv_est_kw`` the PV estimate (the
        measurement plus the probe while PV sits at its limit). With PV missing: grid + battery, 0, 0. [kW]
        ``export_margin_kw`` is kept above the export cap [kW]; without ``swing_known`` the battery does
        not discharge beyond what the import cap needs.
        """
        s, bat, grid = self.settings, self.battery, self.grid
        soc = float(inputs.soc_pct)  # type: ignore[arg-type]
        notes: list[BoundNote] = []
        alarms: list[str] = []

        # 2. PCS nameplate, BMS allowance, SOC window with hysteresis.
        lo, hi = -bat.max_charge_kw, bat.max_discharge_kw
        notes.append(BoundNote("pcs", lo, hi, "PCS nameplate"))
        bms_lo = -max(0.0, float(inputs.bms_max_charge_kw))  # type: ignore[arg-type]
        bms_hi = max(0.0, float(inputs.bms_max_discharge_kw))  # type: ignore[arg-type]
        if bms_lo > lo or bms_hi < hi:
            lo, hi = max(lo, bms_lo), min(hi, bms_hi)
            notes.append(BoundNote("bms", lo, hi, "BMS allowance"))
        if self._discharge_blocked and hi > 0:
            hi = max(lo, 0.0)
            notes.append(BoundNote("soc", lo, hi, f"SOC {soc:.1f} % at or recovering from soc_min"))
        if self._charge_blocked and lo < 0:
            lo = min(hi, 0.0)
            notes.append(BoundNote("soc", lo, hi, f"SOC {soc:.1f} % at or recovering from soc_max"))

        # 3. Contracted import capacity: discharge at least this much.
        if grid.import_cap_kw is not None:
            need = load_kw - pv_kw - (grid.import_cap_kw - s.import_margin_kw)
            if need > lo:
                lo = min(need, hi)
                notes.append(BoundNote("import_cap", lo, hi, f"hold import under {grid.import_cap_kw:g} kW"))
                if need > hi + 1e-9:
                    alarms.append(Alarm.IMPORT_CAP_UNHELD.value)

        # 4. Export cap: discharge at most this much (negative: charge at least this much).
        allow = load_kw - pv_est_kw + grid.export_cap_kw - export_margin_kw
        if allow < hi:
            hi = max(allow, lo)
            swing = f" (margin {export_margin_kw:.0f} kW: load swing)" if export_margin_kw > s.export_margin_kw else ""
            notes.append(BoundNote("export_cap", lo, hi, f"hold export under {grid.export_cap_kw:g} kW{swing}"))
        if not swing_known and hi > max(lo, 0.0):
            hi = max(lo, 0.0)
            notes.append(BoundNote("export_cap", lo, hi, f"load swing not known yet (watched < "
                                                         f"{s.load_swing_window_s:g} s): no discharge for the load"))
        return lo, hi, notes, alarms

    @staticmethod
    def _setter(notes: list[BoundNote], want: float, lo: float, hi: float, reason: str) -> str:
        """The reason code: the step that set the bound ``want`` was clamped to (bounds only narrow: first = setter)."""
        if want < lo:
            return next(n.step for n in notes if n.lo_kw == lo)
        if want > hi:
            return next(n.step for n in notes if n.hi_kw == hi)
        return reason

    def _pv_missing(self, inputs: DispatchInputs, missing: tuple[str, ...], now: datetime) -> Decision:
        """PV missing, meter and battery fine: the battery holds the caps (idle target), PV at the safe limit."""
        grid_kw, battery_kw = float(inputs.grid_kw), float(inputs.battery_kw)  # type: ignore[arg-type]
        self._update_hysteresis(float(inputs.soc_pct), None)  # type: ignore[arg-type]
        lo, hi, notes, alarms = self._battery_bounds(inputs, grid_kw + battery_kw, 0.0, 0.0,
                                                     self.settings.export_margin_kw)
        setpoint = min(max(0.0, lo), hi)
        reason = self._setter(notes, 0.0, lo, hi, "pv_missing")
        self._pv_limit_kw = self._safe_pv_limit_kw()
        self._remember_battery(inputs, setpoint, now)
        data = BoundNote("data", lo, hi, "missing: " + ", ".join(missing) + "; the battery holds the caps")
        return Decision(
            battery_setpoint_kw=setpoint, pv_limit_kw=self._pv_limit_kw, pv_limit_pct=self._pct(self._pv_limit_kw),
            safe=True, source="safe", follow=None, load_kw=None,
            expected_grid_kw=grid_kw + battery_kw - setpoint, bounds=(data, *notes),
            alarms=(Alarm.DATA_MISSING.value, *alarms), reason=reason)

    def step(self, inputs: DispatchInputs, target: Target | None, now: datetime) -> Decision:
        """Run the chain for one cycle.

        Parameters
        ----------
        inputs : DispatchInputs
            This cycle's measurements.
        target : Target | None
            What the plan or mode wants; ``None`` (or expired at ``now``) idles the battery.
        now : datetime
            Site time of the snapshot (UTC), for target expiry and the battery's reversion timer.
        """
        missing = inputs.missing()
        if missing:
            if inputs.grid_kw is None or (inputs.pv_kw is None and inputs.battery_missing):
                return self._safe(inputs, missing, now)
            if inputs.battery_missing:
                return self._battery_missing(inputs, missing, now)
            return self._pv_missing(inputs, missing, now)
        grid = self.grid
        grid_kw, pv_kw, battery_kw = float(inputs.grid_kw), float(inputs.pv_kw), float(inputs.battery_kw)
        soc = float(inputs.soc_pct)
        load_kw = grid_kw + pv_kw + battery_kw
        self._note_load(load_kw, now)
        pv_est, limit_active = self._pv_estimate(pv_kw, inputs.pv_limit_pct)
        expired = target is not None and target.expires_at is not None and now >= target.expires_at
        if expired:
            target = None
        self._update_hysteresis(soc, target)
        margin_kw, swing_known = self._export_margin_kw(load_kw, now)
        lo, hi, notes, alarms = self._battery_bounds(inputs, load_kw, pv_kw, pv_est, margin_kw, swing_known)

        # 5. The plan's or the mode's target.
        follow: str | None = None
        if target is None:
            want, source, reason = 0.0, "none", "target_expired" if expired else "no_target"
        else:
            source, follow, reason = target.source.value, target.follow.value, target.reason or target.source.value
            want = load_kw - pv_est - target.value_kw if target.follow is Follow.GRID else target.value_kw
            if target.grid_ceiling_kw is not None:
                ceiling = target.grid_ceiling_kw if target.later_steps is None \
                    else target.later_steps.ceiling_kw(target.grid_ceiling_kw, load_kw - pv_kw)
                want = max(want, load_kw - pv_kw - ceiling)
            if self._reserve_blocked and want > 0:
                want = 0.0
                notes.append(BoundNote("reserve", lo, hi, f"operator reserve {target.reserve_soc_pct:g} %"))
        setpoint = min(max(want, lo), hi)
        reason = self._setter(notes, want, lo, hi, reason)

        # PV limit: curtail what neither the load, the battery nor the export cap can take.
        limit_kw = load_kw - setpoint + grid.export_cap_kw - margin_kw
        if limit_active or pv_est > limit_kw:
            new_limit: float | None = max(0.0, limit_kw)
            if new_limit >= self.pv_rated_kw:
                new_limit = None
        else:
            new_limit = None
        if new_limit is not None:
            notes.append(BoundNote("pv_limit", lo, hi, f"PV limited to {new_limit:.1f} kW"))
        self._pv_limit_kw = new_limit
        self._remember_battery(inputs, setpoint, now)
        pv_after = pv_est if new_limit is None else min(pv_est, new_limit)
        return Decision(
            battery_setpoint_kw=setpoint, pv_limit_kw=new_limit, pv_limit_pct=self._pct(new_limit), safe=False,
            source=source, follow=follow, load_kw=load_kw, expected_grid_kw=load_kw - pv_after - setpoint,
            bounds=tuple(notes), alarms=tuple(alarms), reason=reason)
