"""Measurement validation: the cycle's stage between reading the devices and using what they said.

Pure and synchronous (no I/O, no clock reads: time is the snapshot's ``ts``); stateful only for the
history the rules need (when each value last changed, the energy that flowed since, the last
accepted SOC and counter values) and for the alarms' hysteresis. The device layer already marks
what it can see on its own (MISSING for a failed read or a sentinel, IMPLAUSIBLE outside a profile's
range, STALE when older than ``max_age_s``); this stage adds what only the site as a whole can tell:

- **stuck values** — a value still bit-identical a window after what should move it moved:
  ``grid_kw`` after PV + battery power changed (``grid_stuck_s``), ``battery_kw`` after the command
  changed and the battery does not follow it (``battery_stuck_s``), ``soc_pct`` while enough energy
  went through the battery to move it by two resolution steps, an energy counter while enough energy
  flowed through its power point, and a device's whole image (every point, voltages and counters
  included) for ``meter_stuck_s`` (a live grid's voltages always move), or for ``device_stuck_s`` while a
  PV inverter or battery reports a power large enough to show;
- **plausibility from the site** — grid power beyond import cap + PV rating + battery charge rating
  (import) or PV rating + battery discharge rating (export), PV and battery power beyond their
  ratings, all with ``range_margin_pct``; SOC jumping faster than the battery's power allows; an
  energy counter going backwards (a new level that holds for ``jump_settle_s`` is accepted: a BMS
  recalibration, a replaced meter);
- **the meter balance** — load = grid + PV + battery below −``balance_margin_pct`` of the site's
  ratings, or above the plausible maximum load, for ``balance_s``: the meter closes the balance, so
  its ``grid_kw`` is marked (the site then goes to its safe state).

A reading judged stale or implausible becomes a :class:`~drivers.readings.Reading` with that quality
and value ``None`` (missing is never 0); it stays so until its condition has been absent for
``clear_after_s``, so a flapping value neither spams alarms nor flips the safe state every cycle.
Validation never makes a reading OK.

Alarm codes (raised when a condition appears, cleared ``clear_after_s`` after it is gone)::

    device_unreachable:<device>          the device's poll failed or it did not answer in time
    point_missing:<device>:<point>       not implemented (sentinel), Modbus exception, not read
                                         (not for the limits of a unit out of its group of one)
    point_stale:<device>:<point>         older than max_age_s, or stuck (rules above)
    point_implausible:<device>:<point>   outside the profile's or the site's range, SOC jump,
                                         counter backwards, meter balance

Sign conventions: docs/conventions.md (grid + import, battery + discharge, PV ≥ 0). Documented
with defaults and reaction times in docs/controller.md, "Validation stage".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from controller.groups import is_out_of_group
from controller.snapshot import Snapshot
from drivers.readings import Quality
from drivers.roles import CANONICAL_POINTS, Role, role_points

if TYPE_CHECKING:
    from controller.config import SiteConfig

ALARM_PREFIXES = ("device_unreachable:", "point_missing:", "point_stale:", "point_implausible:")
"""The alarm codes this stage owns (``Controller._set_alarms`` clears and raises exactly these)."""

_UNREACHABLE_DETAILS = ("unreachable", "no answer within")
_COUNTERS = {"import_kwh": "grid import", "export_kwh": "grid export", "pv_energy_kwh": "PV power"}
_HOLD = "hold:"
"""Internal code of a re-qualification held without an alarm of its own."""
_LIVE_METER = {"voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "frequency_hz"}
"""Meter points that move on a live grid whatever the site does."""
_POWER = {Role.METER: "grid_kw", Role.PV_INVERTER: "pv_kw", Role.BATTERY: "battery_kw"}


class ValidationSettings(BaseModel):
    """Tuning of the validation stage (the ``control.validation`` section of a site file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    move_pct: float = Field(
        default=1.0, gt=0, le=50,
        description="A power change smaller than this is not 'moving' for the stuck rules "
                    "[% of the site's largest rating: PV AC, battery charge or discharge]")
    grid_stuck_s: float = Field(
        default=10.0, gt=0,
        description="grid_kw still bit-identical this long after PV + battery power moved → stale [s]")
    battery_stuck_s: float = Field(
        default=10.0, gt=0,
        description="battery_kw still bit-identical this long after the command left it, not following it → stale [s]")
    meter_stuck_s: float = Field(
        default=10.0, gt=0,
        description="every point of the meter bit-identical this long → stale (a live meter's voltages never hold "
                    "still; without voltage or frequency points only while |grid_kw| moves counters) [s]")
    device_stuck_s: float = Field(
        default=120.0, gt=0,
        description="every point of the PV inverter or battery bit-identical this long while its power is above "
                    "twice the moving threshold → stale [s]")
    pv_quiet_stuck_s: float = Field(
        default=300.0, gt=0,
        description="every point of the PV inverter bit-identical this long while it reports a non-zero power, "
                    "however small → stale (a producing inverter's power is never exactly still for minutes; "
                    "at night it reads exactly 0) [s]")
    level_stuck_s: float = Field(
        default=60.0, gt=0,
        description="SOC or an energy counter must also be unchanged this long before it is stuck (counters may "
                    "update less often than powers) [s]")
    soc_step_pct: float = Field(
        default=1.0, gt=0, le=10, description="Resolution of the SOC reading [%]")
    soc_lag_s: float = Field(
        default=10.0, ge=0, description="How much older than its reading a SOC value may be (a BMS updates it every "
                                        "few seconds): the SOC jump rule allows the battery's power over this much "
                                        "more time [s]")
    counter_step_kwh: float = Field(
        default=1.0, gt=0, description="Resolution of the energy counters (import, export, PV) [kWh]")
    range_margin_pct: float = Field(
        default=10.0, ge=0, le=100, description="Margin on the site's ratings for the range rules [%]")
    balance_margin_pct: float = Field(
        default=10.0, ge=0, le=100,
        description="Derived load below −this share of (PV AC + battery discharge rating) is implausible [%]")
    max_load_kw: float | None = Field(
        default=None, gt=0,
        description="Largest plausible site load; default: import cap + PV AC + battery discharge rating [kW]")
    balance_s: float = Field(
        default=3.0, ge=0, description="The meter balance must be off this long before grid_kw is marked [s]")
    jump_settle_s: float = Field(
        default=60.0, gt=0,
        description="A SOC jump or a counter going backwards that then holds this long is accepted as the "
                    "new level [s]")
    min_cycles: int = Field(
        default=3, ge=1,
        description="Every stuck window is at least this many cycles, and a gap between two cycles longer than "
                    "this restarts the stuck windows (devices updating slower than a long cycle, a stalled loop)")
    clear_after_s: float = Field(
        default=10.0, ge=0,
        description="A condition must be gone this long before its alarm clears and its reading is used again [s]")


@dataclass(frozen=True)
class SiteRatings:
    """What validation needs to know about the site.

    Attributes
    ----------
    devices : Mapping[Role, str]
        Device name per role.
    pv_rated_kw : float
        PV AC rating. [kW]
    capacity_kwh : float
        Usable battery energy. [kWh]
    max_charge_kw, max_discharge_kw : float
        Battery (PCS) ratings, ≥ 0. [kW]
    import_cap_kw : float | None
        Contracted import capacity; ``None`` = none. [kW]
    cycle_s : float
        Control cycle. [s]
    """

    devices: Mapping[Role, str]
    pv_rated_kw: float
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    import_cap_kw: float | None
    cycle_s: float = 1.0

    @classmethod
    def from_config(cls, config: SiteConfig) -> SiteRatings:
        bat = config.battery
        return cls(MappingProxyType({role: config.role_name(role) for role in Role}), config.pv.ac_limit_kw,
                   bat.capacity_kwh, bat.max_charge_kw, bat.max_discharge_kw, config.grid.import_cap_kw,
                   config.control.cycle_s)


@dataclass(frozen=True)
class Finding:
    """One reading re-qualified by a rule this cycle (or still held by the hysteresis)."""

    point: str
    device: str
    quality: Quality
    rule: str
    detail: str


@dataclass(frozen=True)
class ValidationTrace:
    """What validation did this cycle: the readings it re-qualified, with the rule and why."""

    findings: tuple[Finding, ...]

    def to_dict(self) -> dict[str, Any]:
        """Small JSON-ready form for the state message."""
        return {"findings": [{"point": f.point, "device": f.device, "quality": f.quality.value, "rule": f.rule,
                              "detail": f.detail} for f in self.findings]}


Mark = Callable[[str, Quality, str, str], None]
"""Re-qualify (point, quality, rule, detail) for this cycle; the first rule to mark a point wins."""


@dataclass
class _Since:
    """A value and when it last changed, plus what moved since then."""

    value: float | str | None = None
    since: datetime | None = None
    ref: float | None = None      # a driver's value when ``value`` last changed (grid: PV + battery)
    moved: float = 0.0            # largest |driver − ref| since then [kW] or energy through the driver [kWh]
    moved_at: datetime | None = None  # when the driver first moved by more than the threshold

    def note_move(self, moved: float, threshold: float, now: datetime) -> float:
        """Record the driver's movement; seconds since it first exceeded ``threshold`` (0 if it has not)."""
        self.moved = max(self.moved, moved)
        if self.moved > threshold and self.moved_at is None:
            self.moved_at = now
        return 0.0 if self.moved_at is None else (now - self.moved_at).total_seconds()


@dataclass
class _Level:
    """The last accepted value of a SOC or counter, and a candidate new level that may settle."""

    value: float
    ts: datetime
    candidate: float | None = None
    candidate_since: datetime | None = None


@dataclass
class _Active:
    code: str
    message: str
    last_seen: datetime
    finding: Finding | None = None  # the re-qualification held while the code is active


@dataclass
class Validator:
    """Validates one snapshot per cycle: :meth:`check`.

    Parameters
    ----------
    site : SiteRatings
    settings : ValidationSettings
    """

    site: SiteRatings
    settings: ValidationSettings = field(default_factory=ValidationSettings)
    _last_ts: datetime | None = None
    _stuck: dict[str, _Since] = field(default_factory=dict)
    _levels: dict[str, _Level] = field(default_factory=dict)
    _balance_since: datetime | None = None
    _active: dict[str, _Active] = field(default_factory=dict)
    _capacity_kwh: float = 0.0  # the energy the battery holds now (this check's), which its SOC is a share of

    @classmethod
    def from_config(cls, config: SiteConfig) -> Validator:
        return cls(SiteRatings.from_config(config), config.control.validation)

    # ------------------------------------------------------------------------------------------ derived limits

    @property
    def move_kw(self) -> float:
        """Smallest power change that counts as moving. [kW]"""
        s = self.site
        return self.settings.move_pct / 100.0 * max(s.pv_rated_kw, s.max_charge_kw, s.max_discharge_kw, 1e-3)

    @property
    def _margin(self) -> float:
        return 1.0 + self.settings.range_margin_pct / 100.0

    def ranges(self) -> dict[str, tuple[float | None, float | None]]:
        """Site-level plausible range per power point. [kW]"""
        s, m = self.site, self._margin
        grid_hi = None if s.import_cap_kw is None else m * (s.import_cap_kw + s.pv_rated_kw + s.max_charge_kw)
        return {"grid_kw": (-m * (s.pv_rated_kw + s.max_discharge_kw), grid_hi),
                "pv_kw": (None, m * s.pv_rated_kw),
                "battery_kw": (-m * s.max_charge_kw, m * s.max_discharge_kw)}

    def load_range(self) -> tuple[float, float | None]:
        """Plausible derived load (grid + PV + battery). [kW]"""
        s = self.site
        lo = -self.settings.balance_margin_pct / 100.0 * (s.pv_rated_kw + s.max_discharge_kw)
        hi = self.settings.max_load_kw
        if hi is None and s.import_cap_kw is not None:
            hi = self._margin * (s.import_cap_kw + s.pv_rated_kw + s.max_discharge_kw)
        return lo, hi

    # ------------------------------------------------------------------------------------------ the stage

    def device_of(self, point: str) -> str:
        """The configured device serving canonical ``point``."""
        return self.site.devices.get(CANONICAL_POINTS[point].role, "?")

    def check(self, snap: Snapshot, commanded_battery_kw: float | None = None, capacity_kwh: float | None = None
              ) -> tuple[Snapshot, dict[str, str], ValidationTrace]:
        """Validate ``snap``.

        Parameters
        ----------
        snap : Snapshot
            This cycle's readings as the devices gave them.
        commanded_battery_kw : float | None
            The battery setpoint last written (+ discharge), for the battery stuck rule. [kW]
        capacity_kwh : float | None
            The energy the battery holds now, which its SOC is a share of (nameplate × state of health,
            :class:`controller.battery_health.BatteryHealth`); None = the site's nameplate. When it changes, the SOC
            level starts afresh: a group's SOC (weighted by the energy its units hold) moves with it. [kWh]

        Returns
        -------
        (Snapshot, dict[str, str], ValidationTrace)
            The snapshot with readings re-qualified (STALE/IMPLAUSIBLE, value None), the device-health
            alarms that are active (code → message), and the trace.
        """
        now = snap.ts
        capacity_kwh = self.site.capacity_kwh if capacity_kwh is None else capacity_kwh
        if self._capacity_kwh and capacity_kwh != self._capacity_kwh:
            self._levels.pop("soc_pct", None)  # the SOC is a share of another energy now: no jump across the change
        self._capacity_kwh = capacity_kwh
        dt_s = 0.0 if self._last_ts is None else max(0.0, (now - self._last_ts).total_seconds())
        self._last_ts = now
        if dt_s > self._window(0.0):  # a gap: nobody saw whether values moved in it
            self._stuck.clear()
            dt_s = 0.0
        dt_h = dt_s / 3600.0
        raw = {n: float(r.value) for n, r in snap.readings.items()
               if r.ok and n in CANONICAL_POINTS and not isinstance(r.value, str)}
        found: dict[str, Finding] = {}

        def mark(point: str, quality: Quality, rule: str, detail: str) -> None:
            if point in raw and point not in found:
                found[point] = Finding(point, self.device_of(point), quality, rule, detail)

        self._range_rules(raw, mark)
        self._level_rules(raw, {n: r.timestamp for n, r in snap.readings.items()}, now, mark)
        self._stuck_rules(snap, raw, found, now, dt_h, commanded_battery_kw, mark)
        self._balance_rule(raw, found, now, mark)
        conditions = self._conditions(snap, found)
        return self._settle(snap, conditions, now)

    def clock_stepped(self, by: timedelta) -> None:
        """The system clock was set back (``by`` < 0): every watch keeps the time it had watched (its start moves
        with the clock), so a frozen meter is still found after its window, not the step's length later."""
        for t in self._stuck.values():  # the device images' watches among them (``device:<name>``)
            t.since = None if t.since is None else t.since + by
            t.moved_at = None if t.moved_at is None else t.moved_at + by
        for level in self._levels.values():
            level.ts += by
            level.candidate_since = None if level.candidate_since is None else level.candidate_since + by
        for active in self._active.values():
            active.last_seen += by
        self._balance_since = None if self._balance_since is None else self._balance_since + by
        self._last_ts = None if self._last_ts is None else self._last_ts + by

    # ------------------------------------------------------------------------------------------ rules

    def _range_rules(self, raw: Mapping[str, float], mark: Mark) -> None:
        for point, (lo, hi) in self.ranges().items():
            v = raw.get(point)
            if v is None:
                continue
            if lo is not None and v < lo:
                mark(point, Quality.IMPLAUSIBLE, "site_range", f"{v:g} kW below the site's plausible {lo:g} kW")
            elif hi is not None and v > hi:
                mark(point, Quality.IMPLAUSIBLE, "site_range", f"{v:g} kW above the site's plausible {hi:g} kW")

    def _level_rules(self, raw: Mapping[str, float], read_at: Mapping[str, datetime], now: datetime,
                     mark: Mark) -> None:
        """SOC moving faster than the battery's power allows; counters going backwards.

        The time between two levels is that of their readings (``read_at``: when the device answered), not of the
        snapshots: a read that answered late in a slow cycle holds a value that much newer than the cycle's start
        (at 600x a 0.3 s stall of the loop is 3 minutes of the plant, which looked like a SOC jump)."""
        s = self.site
        for point in ("soc_pct", *_COUNTERS):
            v = raw.get(point)
            if v is None:
                continue
            at = read_at.get(point, now)
            level = self._levels.get(point)
            if level is None:
                self._levels[point] = _Level(v, at)
                continue
            hours = max(0.0, (at - level.ts).total_seconds() / 3600.0)  # < 0 after the clock was set back
            if point == "soc_pct":
                if self._capacity_kwh <= 0:
                    continue
                # each value may be up to soc_lag_s older than its reading: the two may lie that much further apart
                lag_h = self.settings.soc_lag_s / 3600.0
                allowed = (self._margin * max(s.max_charge_kw, s.max_discharge_kw) * (hours + lag_h)
                           / self._capacity_kwh * 100.0 + self.settings.soc_step_pct)
                bad = abs(v - level.value) > allowed
                why = (f"jumped from {level.value:g} to {v:g} % in {hours * 3600:.0f} s; the battery's power "
                       f"allows {allowed:.2g} %")
                step = self.settings.soc_step_pct
            else:
                bad = v < level.value
                why = f"went backwards from {level.value:g} to {v:g} kWh"
                step = self.settings.counter_step_kwh
            if not bad:
                self._levels[point] = _Level(v, at)
                continue
            if level.candidate is None or abs(v - level.candidate) > step:
                level.candidate, level.candidate_since = v, now
            assert level.candidate_since is not None
            if (now - level.candidate_since).total_seconds() >= self.settings.jump_settle_s:
                self._levels[point] = _Level(v, at)  # the new level held: accepted
                continue
            mark(point, Quality.IMPLAUSIBLE, "soc_jump" if point == "soc_pct" else "counter_backwards", why)

    def _window(self, seconds: float) -> float:
        """A stuck window of ``seconds``, at least ``min_cycles`` cycles. [s]"""
        return max(seconds, self.settings.min_cycles * self.site.cycle_s)

    def _track(self, key: str, value: float | str | tuple, now: datetime) -> _Since:
        """The change record of ``key`` after seeing ``value`` (reset when it changed)."""
        t = self._stuck.get(key)
        if t is None or t.value != value:
            t = _Since(value, now)
            self._stuck[key] = t
        return t

    def _stuck_rules(self, snap: Snapshot, raw: Mapping[str, float], found: Mapping[str, Finding], now: datetime,
                     dt_h: float, commanded: float | None, mark: Mark) -> None:
        self._grid_stuck(raw, found, now, mark)
        self._battery_stuck(raw, now, commanded, mark)
        self._level_stuck(raw, found, now, dt_h, mark)
        self._image_stuck(snap, raw, now, mark)

    def _grid_stuck(self, raw: Mapping[str, float], found: Mapping[str, Finding], now: datetime, mark: Mark) -> None:
        """Grid power frozen while PV + battery moved (the load would have had to move by exactly as much).

        Only trusted PV and battery powers count as movement; while either is untrusted or missing the
        window starts again (a battery reading 3,000 kW did not move anything)."""
        cfg, move = self.settings, self.move_kw
        grid = raw.get("grid_kw")
        pv, bat = (None if p in found else raw.get(p) for p in ("pv_kw", "battery_kw"))
        if grid is not None:
            t = self._track("grid_kw", grid, now)
            since_move = 0.0
            if pv is None or bat is None:
                t.ref, t.moved, t.moved_at = None, 0.0, None
            else:
                if t.ref is None:
                    t.ref = pv + bat
                since_move = t.note_move(abs(pv + bat - t.ref), move, now)
            if since_move >= self._window(cfg.grid_stuck_s):
                mark("grid_kw", Quality.STALE, "stuck",
                     f"unchanged at {grid:g} kW for {since_move:.0f} s after PV + battery power changed by "
                     f"{t.moved:.0f} kW")

    def _battery_stuck(self, raw: Mapping[str, float], now: datetime, commanded: float | None, mark: Mark) -> None:
        """Battery power frozen since the command left it, not following it: the window starts when the command
        moves away from what the battery reads (a battery reading its command has followed)."""
        cfg, move = self.settings, self.move_kw
        bat = raw.get("battery_kw")
        if bat is not None:
            t = self._track("battery_kw", bat, now)
            if commanded is not None:
                lo, hi = -self.site.max_charge_kw, self.site.max_discharge_kw
                if raw.get("max_charge_kw") is not None:
                    lo = max(lo, -raw["max_charge_kw"])
                if raw.get("max_discharge_kw") is not None:
                    hi = min(hi, raw["max_discharge_kw"])
                expected = min(max(commanded, lo), hi) if lo <= hi else 0.0
                if t.ref is None or abs(expected - bat) <= move:
                    # at what it is asked: it has followed, whatever the command was before (a one-cycle command
                    # it never read must not start the window); the window starts when the command leaves it
                    t.ref, t.moved, t.moved_at = commanded, 0.0, None
                since_move = t.note_move(abs(commanded - t.ref), move, now)
                if since_move >= self._window(cfg.battery_stuck_s) and abs(expected - bat) > move:
                    mark("battery_kw", Quality.STALE, "stuck",
                         f"unchanged at {bat:g} kW for {since_move:.0f} s after the command changed to "
                         f"{commanded:g} kW")

    def _level_stuck(self, raw: Mapping[str, float], found: Mapping[str, Finding], now: datetime, dt_h: float,
                     mark: Mark) -> None:
        """SOC and counters frozen while energy flowed through them (two resolution steps' worth).

        Only trusted powers count as flow: a power already judged implausible this cycle (a meter reading
        −3,000 kW) or missing says nothing about what went through, so the count starts again. Otherwise a
        counter that legitimately stands still afterwards (export on a zero-export site, SOC of a battery
        held at 0 kW by the safe state that the alarm itself caused) would stay "stuck" for ever.
        """
        cfg = self.settings
        grid, pv, bat = (None if p in found else raw.get(p) for p in ("grid_kw", "pv_kw", "battery_kw"))
        flows = {"soc_pct": None if bat is None else abs(bat),
                 "import_kwh": None if grid is None else max(grid, 0.0),
                 "export_kwh": None if grid is None else max(-grid, 0.0),
                 "pv_energy_kwh": pv}
        for point, power in flows.items():
            v = raw.get(point)
            if v is None:
                continue
            t = self._track(point, v, now)
            if power is None:
                t.moved = 0.0
            elif t.since != now:  # what flowed until a change went into that change
                t.moved += power * dt_h
            if point == "soc_pct":
                needed = 2.0 * cfg.soc_step_pct / 100.0 * self._capacity_kwh
                what = f"unchanged at {v:g} % while {t.moved:.1f} kWh went through the battery"
            else:
                needed = 2.0 * cfg.counter_step_kwh
                what = f"unchanged at {v:g} kWh while {t.moved:.1f} kWh of {_COUNTERS[point]} flowed"
            held = (now - t.since).total_seconds()  # type: ignore[operator]
            if needed > 0 and t.moved > needed and held >= self._window(cfg.level_stuck_s):
                mark(point, Quality.STALE, "stuck", what)

    def _image_stuck(self, snap: Snapshot, raw: Mapping[str, float], now: datetime, mark: Mark) -> None:
        """A device's whole image identical: a meter on a live grid, or a device whose power should show."""
        cfg, move = self.settings, self.move_kw
        for role, name in self.site.devices.items():
            points = [p.name for p in role_points(role) if not p.writable]
            image = tuple((p, snap.readings[p].value) for p in points if p in snap.readings and snap.readings[p].ok)
            power = raw.get(_POWER[role])
            if not image:
                continue
            t = self._track(f"device:{name}", image, now)
            held = (now - t.since).total_seconds()  # type: ignore[operator]
            if role is Role.METER:
                live = any(p in _LIVE_METER for p, _ in image) or (power is not None and abs(power) > move)
                stuck = live and held >= self._window(cfg.meter_stuck_s)
            else:
                stuck = power is not None and abs(power) > 2 * move and held >= self._window(cfg.device_stuck_s)
                if role is Role.PV_INVERTER:
                    stuck = stuck or (power is not None and power != 0 and held >= self._window(cfg.pv_quiet_stuck_s))
            if stuck:
                why = f"every point of {name} unchanged for {held:.0f} s" + (
                    "" if power is None else f" while it reports {power:g} kW")
                for p, _ in image:
                    mark(p, Quality.STALE, "device_stuck", why)

    def _balance_rule(self, raw: Mapping[str, float], found: Mapping[str, Finding], now: datetime,
                      mark: Mark) -> None:
        parts = [raw.get(p) if p not in found else None for p in ("grid_kw", "pv_kw", "battery_kw")]
        lo, hi = self.load_range()
        if any(p is None for p in parts):
            self._balance_since = None
            return
        load = sum(parts)  # type: ignore[arg-type]
        if load >= lo and (hi is None or load <= hi):
            self._balance_since = None
            return
        if self._balance_since is None:
            self._balance_since = now
        if (now - self._balance_since).total_seconds() >= self.settings.balance_s:
            bound = f"< {lo:.0f}" if load < lo else f"> {hi:.0f}"
            mark("grid_kw", Quality.IMPLAUSIBLE, "balance",
                 f"meter balance: load = grid {parts[0]:g} + PV {parts[1]:g} + battery {parts[2]:g} = "
                 f"{load:.0f} kW {bound} kW")

    # ------------------------------------------------------------------------------------------ alarms

    def _conditions(self, snap: Snapshot, found: Mapping[str, Finding]) -> dict[str, tuple[str, Finding | None]]:
        """Every health condition present this cycle: code → (message, re-qualification or None)."""
        out: dict[str, tuple[str, Finding | None]] = {}
        for role, device in self.site.devices.items():
            points = {p.name: snap.readings[p.name] for p in role_points(role)
                      if not p.writable and p.name in snap.readings}
            missing = [r for r in points.values() if r.quality is Quality.MISSING]
            if not snap.device_ok.get(device, True) or (missing and len(missing) == len(points) and all(
                    r.detail.startswith(_UNREACHABLE_DETAILS) for r in missing)):
                why = snap.device_errors.get(device) or (missing[0].detail if missing else "poll failed")
                out[f"device_unreachable:{device}"] = (f"{device} unreachable: {why}", None)
                continue
            for name, r in points.items():
                if r.quality is Quality.MISSING and is_out_of_group(r.detail, device):
                    continue   # a unit out of its group of one: the cause is alarmed (a point here, a write, following)
                if r.quality is Quality.MISSING:
                    out[f"point_missing:{device}:{name}"] = (f"{device} {name} missing: {r.detail}", None)
                elif r.quality is Quality.STALE:
                    out[f"point_stale:{device}:{name}"] = (f"{device} {name} stale: {r.detail}", None)
                elif r.quality is Quality.IMPLAUSIBLE:
                    out[f"point_implausible:{device}:{name}"] = (f"{device} {name} implausible: {r.detail}", None)
        # a frozen device image is one alarm, on its power point (else its first point); the rest are held silently
        loud: dict[str, str] = {}
        for f in found.values():
            if f.rule == "device_stuck" and (f.device not in loud or f.point in _POWER.values()):
                loud[f.device] = f.point
        for f in found.values():
            kind = "stale" if f.quality is Quality.STALE else "implausible"
            quiet = f.rule == "device_stuck" and loud[f.device] != f.point
            code = f"{_HOLD}{f.device}:{f.point}" if quiet else f"point_{kind}:{f.device}:{f.point}"
            out[code] = (f"{f.device} {f.point} {kind}: {f.detail}", f)
        return out

    def _settle(self, snap: Snapshot, conditions: Mapping[str, tuple[str, Finding | None]], now: datetime
                ) -> tuple[Snapshot, dict[str, str], ValidationTrace]:
        """Apply the hysteresis, re-qualify the held readings, and build the result."""
        for code, (message, finding) in conditions.items():
            active = self._active.get(code)
            if active is None:
                self._active[code] = _Active(code, message, now, finding)
            else:
                active.message, active.last_seen = message, now
                active.finding = finding or active.finding
        for code in [c for c, a in self._active.items()
                     if c not in conditions and (now - a.last_seen).total_seconds() >= self.settings.clear_after_s]:
            del self._active[code]
        readings = dict(snap.readings)
        held: list[Finding] = []
        for a in self._active.values():
            f = a.finding
            if f is None:
                continue
            r = readings.get(f.point)
            if r is not None and r.ok:
                detail = f.detail if a.code in conditions else f"{f.detail} (cleared {self._ago(a, now)} ago)"
                readings[f.point] = replace(r, value=None, quality=f.quality, detail=detail, meaning="")
            held.append(f)
        out = replace(snap, readings=MappingProxyType(readings))
        alarms = {code: a.message for code, a in self._active.items() if not code.startswith(_HOLD)}
        return out, alarms, ValidationTrace(tuple(sorted(held, key=lambda f: f.point)))

    @staticmethod
    def _ago(active: _Active, now: datetime) -> str:
        return f"{(now - active.last_seen).total_seconds():.0f} s"

