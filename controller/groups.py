"""Asset groups: several batteries seen as one, several PV inverters seen as one plant (docs/devices.md).

Pure and synchronous (no I/O, no clock reads: the caller passes site monotonic seconds). Each cycle the
controller gives a group every unit's readings (:meth:`BatteryGroup.observe`); the group decides which
units are *in* (healthy and following their setpoints) and returns the aggregate canonical points the
planner, dispatcher and validator work with. The dispatcher's one decision is then split across the
units in the group (:meth:`BatteryGroup.split`, :meth:`PVGroup.split`).

**Aggregation** (battery, unit *i* with usable capacity ``Eᵢ`` [kWh] — its nameplate ``capacity_kwh`` × its last
valid state of health (:func:`optimizer.site.health_share`; the nameplate until it reports one) —, window
``[minᵢ, maxᵢ]`` [%]):

- ``battery_kw = Σ pᵢ`` over units whose power reads (in the group or not: their power flows all the same);
  a unit whose power does not read is left out, so its power counts as part of the site load.
- ``soc_pct = min + (max − min) · Σ eᵢ / Σ Uᵢ`` over units whose SOC reads, with ``eᵢ = Eᵢ·(socᵢ − minᵢ)/100``
  the energy above the unit's own floor (negative below it), ``Uᵢ = Eᵢ·(maxᵢ − minᵢ)/100`` its usable energy,
  and ``min``/``max`` the aggregate window (the site's, weighted by the nameplates: ``optimizer.site.aggregate_units``).
  With every unit reading this is the energy-weighted mean ``Σ Eᵢ·socᵢ / Σ Eᵢ`` when the units share one window
  or one state of health.
- ``max_charge_kw`` / ``max_discharge_kw = Σ min(BMSᵢ, ratingᵢ)`` over units in the group, a unit at or beyond
  its own SOC window edge in that direction counting 0.
- ``soh_pct = 100 · Σ Eᵢ / Σ Cᵢ`` (``Cᵢ`` the nameplates) once a unit has reported its state of health; the
  energy the group holds is then the site's nameplate × ``soh_pct`` / 100, as planning counts it.

**Health.** A unit is out of the group at once — alarm ``unit_out:<device>`` with the reason — when a point it
needs (power, SOC, both BMS limits) is missing or stale, when its alarm word is non-zero (faulted), when a
setpoint write to it failed, and — alarm ``unit_not_following:<device>`` — when it does not follow its setpoint
(:class:`FollowCheck`). A unit whose BMS allows 0 kW in a direction while its SOC is inside its window (derated to
nothing) is out in that direction only (``unit_out:<device>`` too; it contributes 0 kW there and keeps the other).
It comes back when healthy again (a unit out for not following: after ``retry_s`` and following its 0 kW).
The group is healthy only while every unit is in.

**Split** (battery setpoint ``S``, + discharge): the power of units out of the group that still reads is
subtracted when it goes the way of ``S`` (they do it anyway; never added when it goes against ``S``), the rest
is clamped to the group's allowance and shared over the units in the group by available energy ``eᵢ``
(discharge) or headroom ``Eᵢ·(maxᵢ − socᵢ)/100`` (charge), each capped at ``min(BMSᵢ, ratingᵢ)`` and what it
cannot take passed on to the others (water-filling). A unit with more energy (headroom) takes more, so SOC
fractions converge; every unit gets the sign of ``S`` or 0, never the opposite; units out of the group get 0 kW.
Setpoints are rounded towards 0 kW to :data:`SETPOINT_STEP_KW`.

The PV plant's limit (``pv_limit_pct`` of the plant AC rating ``Σ rᵢ``) is shared over the inverters in the
group in proportion to their ratings: each gets ``min(100, 100·L/Σ_in rᵢ)`` % of its own rating, ``L`` the plant
limit in kW (an inverter out of the group does not count: its production, not read, is in the site load).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from controller.battery_health import SteadyReading
from drivers.readings import Reading
from optimizer.site import BatteryUnit, StrictModel, health_share, planning_soh_pct

SETPOINT_STEP_KW = 0.1
"""Battery setpoints are written in steps of this size, rounded towards 0 kW. [kW]"""
PV_STEP_PCT = 0.1
"""PV limits are written in steps of this size, rounded down. [%]"""

OUT = "unit_out:"
NOT_FOLLOWING = "unit_not_following:"
WARNING = "unit_warning:"
ALARM_PREFIXES = (OUT, NOT_FOLLOWING, WARNING)
"""Alarm code prefixes the groups manage (the device name follows)."""


def out_of_group(name: str, kind: str, reason: str) -> str:
    """Why the limit points of the only unit of a group read missing while it is out (``bess-1 out of the battery
    group: soc_pct implausible …``): a consequence, whose cause has its own alarm (:meth:`Group.alarms`)."""
    return f"{name} out of the {kind} group: {reason}"


def is_out_of_group(detail: str, name: str) -> bool:
    """Whether a reading's ``detail`` is :func:`out_of_group` of unit ``name``."""
    return detail.startswith(f"{name} out of the ") and " group: " in detail


class GroupSettings(StrictModel):
    """The ``control.groups:`` section: when a unit counts as following its setpoint."""

    tolerance_kw: float = Field(default=2.0, ge=0, description="Deviation always tolerated [kW]")
    tolerance_pct: float = Field(default=5.0, ge=0, le=100,
                                 description="Deviation tolerated, % of the unit's rating (the larger applies)")
    response_s: float = Field(default=5.0, ge=0, description="Time a unit may take to start moving towards its "
                              "setpoint [s]")
    ramp_pct_per_s: float = Field(default=10.0, gt=0, description="Slowest ramp a unit may have, % of its rating "
                                  "per second: Δ kW off its setpoint it has response_s + Δ / ramp [%/s]")
    retry_s: float = Field(default=300.0, ge=0,
                           description="A unit taken out for not following is tried again after this [s]")


def _value(readings: Mapping[str, Reading], name: str) -> float | None:
    r = readings.get(name)
    if r is None or not r.ok or isinstance(r.value, str):
        return None
    return float(r.value)


def _unusable(readings: Mapping[str, Reading], names: Sequence[str], error: str = "") -> list[str]:
    """Why each of ``names`` has no usable value, the points that share a reason named together, in ``names``'
    order: ``battery_kw, soc_pct, max_charge_kw, max_discharge_kw not read (cannot connect to tcp://…)`` for a unit
    that does not answer (the same cause four times over made the reason unreadable on the dashboard)."""
    by_reason: dict[str, list[str]] = {}
    for name in names:
        if _value(readings, name) is not None:
            continue
        r = readings.get(name)
        if r is None:
            reason = "not read" + (f" ({error})" if error else "")
        else:
            reason = r.quality.value + (f" ({r.detail})" if r.detail else "")
        by_reason.setdefault(reason, []).append(name)
    return [f"{', '.join(points)} {reason}" for reason, points in by_reason.items()]


def _toward_zero(x: float, step: float) -> float:
    """``x`` rounded towards 0 to a multiple of ``step`` (a hair of float error is forgiven)."""
    return math.copysign(math.floor(abs(x) / step + 1e-9) * step, x)


def water_fill(total: float, weights: Sequence[float], caps: Sequence[float]) -> list[float]:
    """Share ``total`` ≥ 0 in proportion to ``weights`` ≥ 0, no share above its cap ≥ 0; what a capped share
    cannot take goes to the others. The shares sum to ``min(total, Σ caps over positive weights)``."""
    shares = [0.0] * len(weights)
    open_ = [i for i, w in enumerate(weights) if w > 0 and caps[i] > 0]
    left = max(0.0, total)
    while open_ and left > 1e-12:
        wsum = sum(weights[i] for i in open_)
        capped = [i for i in open_ if left * weights[i] / wsum >= caps[i] - shares[i]]
        if not capped:
            for i in open_:
                shares[i] += left * weights[i] / wsum
            break
        for i in capped:
            left -= caps[i] - shares[i]
            shares[i] = caps[i]
        open_ = [i for i in open_ if i not in capped]
    return shares


# ---------------------------------------------------------------------------------------------- following


@dataclass
class FollowCheck:
    """Verified control of one unit: is its measured power where it was asked to be?

    A unit answers with a delay, so it follows while its measured power is within the tolerance
    (``max(tolerance_kw, tolerance_pct × rating)``) of *any* of the requests it held in the last ``response_s``
    (each clamped to what it may do now, e.g. its BMS allowance). From the moment it is further than that, it has
    ``response_s + |request − where it was then| / ramp`` to get back within it; still out after that, it is not
    following: *wrong sign* (its power has the opposite sign of the request), *stuck* (it has not moved from where
    it was), else *ignores its setpoint*. New requests while it is out of tolerance do not restart the time (a
    unit asked something slightly different every cycle is still found out). ``two_sided=False`` (PV) only counts
    power above what was asked (a limit, not a target).
    """

    rating_kw: float
    settings: GroupSettings
    two_sided: bool = True
    requests: deque[tuple[float, float]] = field(default_factory=deque)
    """(site monotonic s, request) of the changes in the last ``response_s``, and the one in force before."""
    from_kw: float | None = None
    """The unit's power when it went out of tolerance. [kW]"""
    bad_since: float | None = None
    """Since when it has been out of tolerance (``None`` while within). [s]"""

    @property
    def tolerance_kw(self) -> float:
        return max(self.settings.tolerance_kw, self.settings.tolerance_pct / 100.0 * self.rating_kw)

    @property
    def asked_kw(self) -> float | None:
        """The request the unit holds now. [kW]"""
        return self.requests[-1][1] if self.requests else None

    def ask(self, kw: float, now_s: float) -> None:
        """The unit holds the request ``kw`` from ``now_s`` on."""
        if self.asked_kw is None or abs(kw - self.asked_kw) > 1e-9:
            self.requests.append((now_s, kw))

    def allowance_s(self, expected_kw: float) -> float:
        """Time the unit has to reach ``expected_kw`` from where it was when it went out of tolerance. [s]"""
        ramp = self.settings.ramp_pct_per_s / 100.0 * max(self.rating_kw, 1e-9)
        start = self.from_kw if self.from_kw is not None else 0.0
        return self.settings.response_s + abs(expected_kw - start) / ramp

    def check(self, measured_kw: float | None, lo_kw: float, hi_kw: float, now_s: float) -> str | None:
        """Why the unit is not following (``None`` while it is, or while there is nothing to compare).

        ``lo_kw``, ``hi_kw``: what the unit may do now (a battery's BMS allowance; each request is clamped
        to it)."""
        while len(self.requests) > 1 and self.requests[1][0] <= now_s - self.settings.response_s:
            self.requests.popleft()
        if not self.requests or measured_kw is None:
            self.bad_since = self.from_kw = None
            return None
        recent = [min(max(kw, lo_kw), hi_kw) for _, kw in self.requests]
        expected_kw = recent[-1]
        tol = self.tolerance_kw
        bad = measured_kw > max(recent) + tol or (self.two_sided and measured_kw < min(recent) - tol)
        if not bad:
            self.bad_since = self.from_kw = None
            return None
        if self.bad_since is None:
            self.bad_since, self.from_kw = now_s, measured_kw
        if now_s - self.bad_since < self.allowance_s(expected_kw):
            return None
        if not self.two_sided:
            return f"produces {measured_kw:.1f} kW above its limit of {expected_kw:.1f} kW"
        if expected_kw * measured_kw < 0 and abs(measured_kw) > tol:
            return f"wrong sign: asked {expected_kw:.1f} kW, measures {measured_kw:.1f} kW"
        if self.from_kw is not None and abs(measured_kw - self.from_kw) <= tol:
            return f"stuck at {measured_kw:.1f} kW, asked {expected_kw:.1f} kW"
        return f"ignores its setpoint: asked {expected_kw:.1f} kW, measures {measured_kw:.1f} kW"


# ---------------------------------------------------------------------------------------------- units


@dataclass
class UnitState:
    """One unit as the group saw it this cycle (and its setpoint once split)."""

    name: str
    in_group: bool = False
    reason: str = ""
    """Why the unit is out (empty while in)."""
    limited: str = ""
    """Why the unit, in the group, takes no power in one direction although its SOC allows it (its BMS allows 0 kW
    there); empty otherwise."""
    measured_kw: float | None = None
    setpoint: float | None = None
    """Battery: kW (+ discharge); PV: % of the inverter's rating."""
    soc_pct: float | None = None
    soh_pct: float | None = None
    """Battery: the last state of health the unit reported that planning uses
    (:func:`optimizer.site.planning_soh_pct`); None until one. [%]"""
    warning: str = ""
    """Battery: the warnings its BMS reports (``battery_warning``), e.g. ``warning word 4: OVER_TEMP_WARNING``;
    empty without one. They do not take the unit out."""
    charge_kw: float = 0.0
    """What the unit can charge now (0 when out): ``min(BMS, rating)``, 0 at its SOC ceiling (no headroom). [kW]"""
    discharge_kw: float = 0.0
    """... discharge now, 0 at its SOC floor (no energy available). [kW]"""

    def to_dict(self, unit: str) -> dict[str, Any]:
        """JSON-ready entry of the state message's ``devices``."""
        return {"in_group": self.in_group, "reason": self.reason or self.limited or None,
                "measured_kw": self.measured_kw,
                "setpoint": self.setpoint, "setpoint_unit": unit, "soc_pct": self.soc_pct,
                **({} if self.soh_pct is None else {"soh_pct": self.soh_pct})}


@dataclass
class _Unit:
    name: str
    spec: BatteryUnit | None
    rating_kw: float
    follow: FollowCheck
    state: UnitState
    not_following: str = ""
    out_since: float | None = None
    write_error: str = ""
    alarmed_elsewhere: bool = False
    """The unit is out only for missing/stale readings or a failed write, which the validation stage and
    ``write_failed:<device>`` already alarm by device name: a group of one raises no ``unit_out`` for it."""
    soh: SteadyReading = field(default_factory=SteadyReading)
    """Battery: its state of health as taken (a step change once it holds)."""


class Group:
    """What battery and PV groups share: units, alarms, writes, health."""

    kind = ""
    two_sided = True

    def __init__(self, ratings: Mapping[str, float], specs: Mapping[str, BatteryUnit | None],
                 settings: GroupSettings):
        if not ratings:
            raise ValueError(f"a {self.kind} group needs at least one unit")
        self.settings = settings
        self.units = {n: _Unit(n, specs.get(n), r, FollowCheck(r, settings, self.two_sided), UnitState(n))
                      for n, r in ratings.items()}

    @property
    def names(self) -> list[str]:
        return list(self.units)

    def _follow(self, u: _Unit, bounds: tuple[float, float] | None, now_s: float) -> None:
        """Update the not-following verdict of ``u`` (``bounds``: what it may do now, ``None`` when unknown: no
        verdict); re-admit it after ``retry_s`` once it follows."""
        why = None if bounds is None else u.follow.check(u.state.measured_kw, *bounds, now_s)
        if why is not None:
            if not u.not_following:
                u.out_since = now_s
            u.not_following = why
        elif u.not_following and u.out_since is not None and now_s - u.out_since >= self.settings.retry_s \
                and u.follow.bad_since is None and u.state.measured_kw is not None:
            u.not_following, u.out_since = "", None

    def not_following(self, name: str, why: str, now_s: float) -> None:
        """Take unit ``name`` out as not following its setpoint on a verdict from outside the group (the validation
        stage found its power unchanged after the command moved: ``why``); it comes back as any unit out for not
        following does, after ``retry_s`` and following its 0 kW."""
        u = self.units[name]
        if not u.not_following:
            u.out_since = now_s
        u.not_following = why

    def wrote(self, name: str, value: float | None, error: str, now_s: float) -> None:
        """A write to unit ``name``: the value the unit now holds (in kW for a battery, % for PV) or ``error``."""
        u = self.units[name]
        u.write_error = error
        if not error and value is not None:
            u.follow.ask(self._asked_kw(u, value), now_s)

    def _asked_kw(self, u: _Unit, value: float) -> float:
        return value

    def _judge(self, u: _Unit, data: list[str], faults: list[str]) -> None:
        """In or out: out for missing/stale ``data``, ``faults``, a failed write or not following (reasons joined)."""
        reasons = data + faults
        if u.write_error:
            reasons.append(f"setpoint write failed: {u.write_error}")
        if u.not_following:
            reasons.append(f"not following: {u.not_following}")
        u.state.in_group, u.state.reason = not reasons, "; ".join(reasons)
        u.alarmed_elsewhere = not faults and not u.not_following

    def alarms(self) -> dict[str, str]:
        """Active ``unit_out:<device>``, ``unit_not_following:<device>`` and ``unit_warning:<device>`` (a battery's
        BMS warns; the unit stays in) alarms (code → message).

        In a group of one, a unit out only for missing or stale readings or a failed write raises no
        ``unit_out`` (the validation stage's device alarms and ``write_failed:<device>`` name it already)."""
        out: dict[str, str] = {}
        single = len(self.units) == 1
        for u in self.units.values():
            if u.not_following:
                out[NOT_FOLLOWING + u.name] = f"{u.name} does not follow its setpoint: {u.not_following}; " \
                                              "taken out of the group"
            elif not u.state.in_group and not (single and u.alarmed_elsewhere):
                out[OUT + u.name] = f"{u.name} out of the {self.kind} group: {u.state.reason}"
            elif u.state.limited:
                out[OUT + u.name] = f"{u.name} out of the {self.kind} group in one direction: {u.state.limited}"
            if u.state.warning:
                out[WARNING + u.name] = f"{u.name}'s BMS warns ({u.state.warning}); it stays in the group"
        return out

    @property
    def healthy(self) -> bool:
        """Every unit is in the group in both directions (and so receives and follows its setpoints)."""
        return all(u.state.in_group and not u.state.limited for u in self.units.values())

    def states(self) -> dict[str, UnitState]:
        return {n: u.state for n, u in self.units.items()}


class BatteryGroup(Group):
    """Several batteries (or one) as one aggregate battery."""

    kind = "battery"

    def __init__(self, specs: Mapping[str, BatteryUnit], settings: GroupSettings | None = None):
        super().__init__({n: max(s.max_charge_kw, s.max_discharge_kw) for n, s in specs.items()}, specs,
                         settings or GroupSettings())

    def _spec(self, u: _Unit) -> BatteryUnit:
        assert u.spec is not None
        return u.spec

    def observe(self, readings: Mapping[str, Mapping[str, Reading]], now_s: float,
                errors: Mapping[str, str] | None = None) -> dict[str, float | None]:
        """Judge every unit from its readings (device name → point → reading; ``errors``: device name → why its
        poll failed) and return the aggregate ``battery_kw``, ``soc_pct``, ``max_charge_kw``, ``max_discharge_kw``
        (``None`` when no unit gives it) and, once a unit has reported its state of health, ``soh_pct`` (absent
        before: a battery need not report it, and its absence is no missing measurement)."""
        for u in self.units.values():
            self._observe_unit(u, readings.get(u.name, {}), now_s, (errors or {}).get(u.name, ""))
        units = list(self.units.values())
        powers = [u.state.measured_kw for u in units if u.state.measured_kw is not None]
        inside = [u for u in units if u.state.in_group]
        soh = self._soh(units)
        return {"battery_kw": sum(powers) if powers else None, "soc_pct": self._soc(units),
                "max_charge_kw": sum(u.state.charge_kw for u in inside) if inside else None,
                "max_discharge_kw": sum(u.state.discharge_kw for u in inside) if inside else None,
                **({} if soh is None else {"soh_pct": soh})}

    def in_use_energy(self) -> tuple[float, float] | None:
        """While some unit is out of the group and another in it: (the energy the units in the group hold at full
        SOC, the energy they hold now) [kWh] — the battery a plan can dispatch, setpoints going to them only (a
        unit out, unreachable or faulted, holds energy no setpoint reaches; planning on the whole nameplate at the
        others' SOC promised the plan energy it did not have). None otherwise: every unit in, or none (no plan is
        followed then)."""
        inside = [u for u in self.units.values() if u.state.in_group]
        if not inside or len(inside) == len(self.units):
            return None
        return (sum(self._capacity_kwh(u) for u in inside),
                sum(self._capacity_kwh(u) * u.state.soc_pct / 100.0 for u in inside))  # type: ignore[operator]

    def _capacity_kwh(self, u: _Unit) -> float:
        """The energy unit ``u`` holds at full SOC now: its nameplate × its state of health. [kWh]"""
        return self._spec(u).capacity_kwh * health_share(u.state.soh_pct)

    def _soh(self, units: list[_Unit]) -> float | None:
        """The group's state of health (module docstring); None while no unit has reported one. [%]"""
        total = sum(self._spec(u).capacity_kwh for u in units)
        if total <= 0 or all(u.state.soh_pct is None for u in units):
            return None
        return 100.0 * sum(self._capacity_kwh(u) for u in units) / total

    def _soc(self, units: list[_Unit]) -> float | None:
        known = [u for u in units if u.state.soc_pct is not None]
        if not known:
            return None
        specs = [self._spec(u) for u in units]
        total = sum(s.capacity_kwh for s in specs)
        if total <= 0:
            return None
        lo = sum(s.capacity_kwh * s.soc_min_pct for s in specs) / total
        hi = sum(s.capacity_kwh * s.soc_max_pct for s in specs) / total
        usable = sum(self._capacity_kwh(u) * (self._spec(u).soc_max_pct - self._spec(u).soc_min_pct) / 100.0
                     for u in known)
        if usable <= 0:
            return None
        above = sum(self._capacity_kwh(u) * (u.state.soc_pct - self._spec(u).soc_min_pct) / 100.0  # type: ignore[operator]
                    for u in known)
        return lo + (hi - lo) * above / usable

    def _observe_unit(self, u: _Unit, r: Mapping[str, Reading], now_s: float, error: str) -> None:
        spec, st = self._spec(u), u.state
        st.measured_kw, st.soc_pct = _value(r, "battery_kw"), _value(r, "soc_pct")
        soh = _value(r, "soh_pct")
        if planning_soh_pct(soh) is not None:
            u.soh.offer(soh, now_s)  # type: ignore[arg-type]
            st.soh_pct = u.soh.value
        bms_ch, bms_dis = _value(r, "max_charge_kw"), _value(r, "max_discharge_kw")
        self._follow(u, None if bms_ch is None or bms_dis is None else (-bms_ch, bms_dis), now_s)
        data = _unusable(r, ("battery_kw", "soc_pct", "max_charge_kw", "max_discharge_kw"), error)
        alarm = _value(r, "battery_alarm")
        named = r["battery_alarm"].meaning if alarm else ""
        faults = [f"faulted (alarm word {alarm:g}{': ' + named if named else ''})"] if alarm else []
        warning = _value(r, "battery_warning")
        warned = r["battery_warning"].meaning if warning else ""
        st.warning = f"warning word {warning:g}{': ' + warned if warned else ''}" if warning else ""
        self._judge(u, data, faults)
        limited = []
        if st.in_group:
            assert bms_ch is not None and bms_dis is not None and st.soc_pct is not None
            inside = spec.soc_min_pct < st.soc_pct < spec.soc_max_pct
            limited = [f"its BMS allows 0 kW {direction} at SOC {st.soc_pct:g} %"
                       for direction, bms in (("charge", bms_ch), ("discharge", bms_dis)) if bms <= 0 and inside]
        st.limited = "; ".join(limited)
        if st.in_group:
            assert bms_ch is not None and bms_dis is not None and st.soc_pct is not None
            room, energy = (spec.capacity_kwh * (spec.soc_max_pct - st.soc_pct),
                            spec.capacity_kwh * (st.soc_pct - spec.soc_min_pct))
            st.charge_kw = max(0.0, min(bms_ch, spec.max_charge_kw)) if room > 0 else 0.0
            st.discharge_kw = max(0.0, min(bms_dis, spec.max_discharge_kw)) if energy > 0 else 0.0
        else:
            st.charge_kw = st.discharge_kw = 0.0

    def _in_group_share(self, setpoint_kw: float) -> float:
        """What the units in the group are to do of ``setpoint_kw``: less what units out of the group already
        do in that direction, never more than ``setpoint_kw`` (an out unit working against it is not
        compensated by the others: that would cycle one battery through another). [kW, + discharge]"""
        outside = sum(u.state.measured_kw or 0.0 for u in self.units.values() if not u.state.in_group)
        sign = 1.0 if setpoint_kw > 0 else -1.0
        return sign * min(abs(setpoint_kw), max(0.0, sign * (setpoint_kw - outside)))

    def split(self, setpoint_kw: float) -> dict[str, float]:
        """The group's setpoint (+ discharge) as one setpoint per unit (see the module docstring). [kW]"""
        units = list(self.units.values())
        want = self._in_group_share(setpoint_kw)
        discharge = want > 0
        weights, caps = [], []
        for u in units:
            spec, st = self._spec(u), u.state
            if not st.in_group or st.soc_pct is None:
                weights.append(0.0)
                caps.append(0.0)
                continue
            if discharge:
                weights.append(max(0.0, self._capacity_kwh(u) * (st.soc_pct - spec.soc_min_pct) / 100.0))
                caps.append(st.discharge_kw)
            else:
                weights.append(max(0.0, self._capacity_kwh(u) * (spec.soc_max_pct - st.soc_pct) / 100.0))
                caps.append(st.charge_kw)
        shares = water_fill(abs(want), weights, caps)
        sign = 1.0 if discharge else -1.0
        out = {u.name: _toward_zero(sign * s, SETPOINT_STEP_KW) + 0.0 for u, s in zip(units, shares, strict=True)}
        for u in units:
            u.state.setpoint = out[u.name]
        return out


class PVGroup(Group):
    """Several PV inverters (or one) as one plant with one limit."""

    kind = "pv"
    two_sided = False

    def __init__(self, ratings: Mapping[str, float], settings: GroupSettings | None = None):
        super().__init__(ratings, {}, settings or GroupSettings())
        self.rated_kw = sum(ratings.values())

    def _asked_kw(self, u: _Unit, value: float) -> float:
        return u.rating_kw * value / 100.0

    def observe(self, readings: Mapping[str, Mapping[str, Reading]], now_s: float,
                errors: Mapping[str, str] | None = None) -> dict[str, float | None]:
        """Judge every inverter (``errors`` as for :meth:`BatteryGroup.observe`); return the aggregate ``pv_kw``
        (Σ over inverters that read) and ``pv_limit_pct`` (the limits the inverters in the group report, as % of
        the plant rating)."""
        for u in self.units.values():
            st, r = u.state, readings.get(u.name, {})
            st.measured_kw = _value(r, "pv_kw")
            self._follow(u, (-math.inf, math.inf), now_s)
            missing = _unusable(r, ("pv_kw",), (errors or {}).get(u.name, ""))
            self._judge(u, missing, [])
        units = list(self.units.values())
        powers = [u.state.measured_kw for u in units if u.state.measured_kw is not None]
        limits = [(u, _value(readings.get(u.name, {}), "pv_limit_pct")) for u in units if u.state.in_group]
        limit = None
        if limits and all(v is not None for _, v in limits):
            limit = 100.0 * sum(u.rating_kw * min(v, 100.0) / 100.0 for u, v in limits) / self.rated_kw  # type: ignore[type-var, operator]
        return {"pv_kw": sum(powers) if powers else None, "pv_limit_pct": limit}

    def split(self, limit_pct: float) -> dict[str, float]:
        """The plant limit (% of the plant rating) as a limit per inverter (% of its own rating): in proportion to
        the ratings of the inverters in the group; inverters out of the group get the plant's percentage."""
        inside = [u for u in self.units.values() if u.state.in_group]
        rated_in = sum(u.rating_kw for u in inside)
        limit_kw = self.rated_kw * limit_pct / 100.0
        share = min(100.0, 100.0 * limit_kw / rated_in) if rated_in > 0 else limit_pct
        out = {}
        for u in self.units.values():
            value = share if u.state.in_group else limit_pct
            out[u.name] = max(0.0, math.floor(value / PV_STEP_PCT + 1e-9) * PV_STEP_PCT)
            u.state.setpoint = out[u.name]
        return out

