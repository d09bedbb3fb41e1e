"""The limits chain: from measurements and a target to a battery setpoint and a PV limit.

Pure and synchronous (no I/O, no clock reads); stateful only for hysteresis and for knowing the
PV limit it last commanded. The live controller and the offline simulator use the same object.

The chain runs in a fixed order. Each step can only narrow the allowed battery power interval
``[lo, hi]`` (kW, +discharge) or lower the PV limit; nothing after a step can undo it, so a plan,
an operator or a remote command can never override safety:

1. ``data``       missing or stale meter, PV or battery data → safe state: battery 0 kW, PV at the
                  configured safe limit, alarm ``data_missing``.
2. ``pcs``, ``bms``, ``soc``  the PCS nameplate, what the BMS allows now, and the SOC window with
                  hysteresis (no discharge at or below ``soc_min`` until SOC recovers by
                  ``soc_hysteresis_pct``; no charge at or above ``soc_max`` likewise).
3. ``import_cap`` discharge at least enough to hold import under the contracted capacity, as far
                  as step 2 allows (alarm ``import_cap_unheld`` when it cannot).
4. ``export_cap`` discharge at most what keeps export under the cap (reduce discharge, then charge
                  from surplus); what the battery cannot absorb is curtailed through the PV limit.
5. ``target``     the plan step or the operating mode's target (manual setpoint, self-consumption,
                  TOU rule, standby) picks a point inside what is left. Operator and remote
                  commands arrive here, below the safety steps, and every target expires.

The follow rule (:func:`plan_target`): a plan step is followed as a *grid* target when the plan
sits on the export bound (zero export, self-consumption, export at the cap): the battery then
absorbs whatever PV surplus or load the forecast missed instead of the grid. Otherwise it is
followed as a *battery power*, so a forecast miss moves the grid, not the battery's schedule —
except that the grid may not rise above a ceiling: under a demand charge, always the highest import
the plan allows in the billing month (so a load above the forecast makes the battery charge less or
discharge rather than set a new monthly peak); without one, the contracted capacity on steps that
sit on it.

Sign conventions: docs/conventions.md (grid + import, battery + discharge, PV ≥ 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
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


class DispatchSettings(BaseModel):
    """Tuning of the limits chain (the ``control.dispatch`` section of a site file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    soc_hysteresis_pct: float = Field(
        default=2.0, ge=0, le=20,
        description="SOC must recover this far past a hard limit before that direction is allowed again [%]")
    safe_pv_limit_pct: float = Field(
        default=0.0, ge=0, le=100,
        description="PV limit while in the safe state [% of PV AC rating]; keep it at or below the site's "
                    "minimum load on zero-export sites")
    export_margin_kw: float = Field(
        default=0.0, ge=0, description="Keep the grid this far above the export cap (import bias) [kW]")
    import_margin_kw: float = Field(
        default=0.0, ge=0, description="Keep import this far under the contracted capacity [kW]")
    curtail_probe_pct: float = Field(
        default=5.0, gt=0, le=100,
        description="While PV sits at its limit, assume this much more is available per cycle, so the "
                    "battery takes it and the limit rises step by step [% of PV AC rating]")
    saturation_tol_pct: float = Field(
        default=1.0, gt=0, le=20,
        description="PV within this of its limit counts as held back by the limit [% of PV AC rating]")
    follow_tol_kw: float = Field(
        default=1.0, ge=0, description="A plan grid value this close to a bound counts as on the bound [kW]")


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

    def missing(self) -> tuple[str, ...]:
        """Names of the required inputs that are missing."""
        names = ("grid_kw", "pv_kw", "battery_kw", "soc_pct", "bms_max_charge_kw", "bms_max_discharge_kw")
        return tuple(n for n in names if getattr(self, n) is None)


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
    """

    source: Source
    follow: Follow
    value_kw: float
    grid_ceiling_kw: float | None = None
    reserve_soc_pct: float | None = None
    expires_at: datetime | None = None
    reason: str = ""


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
    """

    def __init__(self, battery: BatterySpec, grid: GridSpec, settings: DispatchSettings | None = None,
                 pv_rated_kw: float = 0.0):
        self.battery = battery
        self.grid = grid
        self.settings = settings or DispatchSettings()
        self.pv_rated_kw = float(pv_rated_kw)
        self._discharge_blocked = False
        self._charge_blocked = False
        self._reserve_blocked = False
        self._pv_limit_kw: float | None = None

    def _pct(self, kw: float | None) -> float:
        if kw is None or self.pv_rated_kw <= 0:
            return 100.0 if kw is None else 0.0
        return min(100.0, max(0.0, 100.0 * kw / self.pv_rated_kw))

    def _safe(self, missing: tuple[str, ...]) -> Decision:
        s = self.settings
        limit_kw = self.pv_rated_kw * s.safe_pv_limit_pct / 100.0
        self._pv_limit_kw = None if s.safe_pv_limit_pct >= 100 else limit_kw
        note = "missing: " + ", ".join(missing)
        return Decision(
            battery_setpoint_kw=0.0, pv_limit_kw=self._pv_limit_kw, pv_limit_pct=self._pct(self._pv_limit_kw),
            safe=True, source="safe", follow=None, load_kw=None, expected_grid_kw=None,
            bounds=(BoundNote("data", 0.0, 0.0, note),), alarms=(Alarm.DATA_MISSING.value,), reason="data_missing")

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

    def _pv_estimate(self, pv_kw: float, limit_pct: float | None) -> tuple[float, bool]:
        """Available PV [kW] and whether a limit is in force.

        The measurement, plus a probe step when PV sits at its limit (the limit hides how much more
        there is); the read-back limit wins over the one last commanded.
        """
        s = self.settings
        limit_kw = self._pv_limit_kw if limit_pct is None else (
            None if limit_pct >= 100 else self.pv_rated_kw * limit_pct / 100.0)
        if limit_kw is None:
            return pv_kw, False
        if pv_kw >= limit_kw - self.pv_rated_kw * s.saturation_tol_pct / 100.0:
            return pv_kw + self.pv_rated_kw * s.curtail_probe_pct / 100.0, True
        return pv_kw, True

    def step(self, inputs: DispatchInputs, target: Target | None, now: datetime) -> Decision:
        """Run the chain for one cycle.

        Parameters
        ----------
        inputs : DispatchInputs
            This cycle's measurements.
        target : Target | None
            What the plan or mode wants; ``None`` (or expired at ``now``) idles the battery.
        now : datetime
            Site time of the snapshot (UTC), for target expiry.
        """
        missing = inputs.missing()
        if missing:
            return self._safe(missing)
        s, bat, grid = self.settings, self.battery, self.grid
        grid_kw, pv_kw, battery_kw = float(inputs.grid_kw), float(inputs.pv_kw), float(inputs.battery_kw)
        soc = float(inputs.soc_pct)
        load_kw = grid_kw + pv_kw + battery_kw
        pv_est, limit_active = self._pv_estimate(pv_kw, inputs.pv_limit_pct)
        expired = target is not None and target.expires_at is not None and now >= target.expires_at
        if expired:
            target = None
        self._update_hysteresis(soc, target)
        notes: list[BoundNote] = []
        alarms: list[str] = []

        # 2. PCS nameplate, BMS allowance, SOC window with hysteresis.
        lo, hi = -bat.max_charge_kw, bat.max_discharge_kw
        notes.append(BoundNote("pcs", lo, hi, "PCS nameplate"))
        bms_lo = -max(0.0, float(inputs.bms_max_charge_kw))
        bms_hi = max(0.0, float(inputs.bms_max_discharge_kw))
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
        allow = load_kw - pv_est + grid.export_cap_kw - s.export_margin_kw
        if allow < hi:
            hi = max(allow, lo)
            notes.append(BoundNote("export_cap", lo, hi, f"hold export under {grid.export_cap_kw:g} kW"))

        # 5. The plan's or the mode's target.
        follow: str | None = None
        if target is None:
            want, source, reason = 0.0, "none", "target_expired" if expired else "no_target"
        else:
            source, follow, reason = target.source.value, target.follow.value, target.reason or target.source.value
            want = load_kw - pv_est - target.value_kw if target.follow is Follow.GRID else target.value_kw
            if target.grid_ceiling_kw is not None:
                want = max(want, load_kw - pv_kw - target.grid_ceiling_kw)
            if self._reserve_blocked and want > 0:
                want = 0.0
                notes.append(BoundNote("reserve", lo, hi, f"operator reserve {target.reserve_soc_pct:g} %"))
        setpoint = min(max(want, lo), hi)
        if want < lo:
            reason = next(n.step for n in notes if n.lo_kw == lo)  # bounds only narrow: first = setter
        elif want > hi:
            reason = next(n.step for n in notes if n.hi_kw == hi)

        # PV limit: curtail what neither the load, the battery nor the export cap can take.
        limit_kw = load_kw - setpoint + grid.export_cap_kw - s.export_margin_kw
        if limit_active or pv_est > limit_kw:
            new_limit: float | None = max(0.0, limit_kw)
            if new_limit >= self.pv_rated_kw:
                new_limit = None
        else:
            new_limit = None
        if new_limit is not None:
            notes.append(BoundNote("pv_limit", lo, hi, f"PV limited to {new_limit:.1f} kW"))
        self._pv_limit_kw = new_limit
        pv_after = pv_est if new_limit is None else min(pv_est, new_limit)
        return Decision(
            battery_setpoint_kw=setpoint, pv_limit_kw=new_limit, pv_limit_pct=self._pct(new_limit), safe=False,
            source=source, follow=follow, load_kw=load_kw, expected_grid_kw=load_kw - pv_after - setpoint,
            bounds=tuple(notes), alarms=tuple(alarms), reason=reason)
