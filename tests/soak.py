"""Fault soak: the real controller against the simulated site, random faults, the *true* plant judged.

    report = asyncio.run(run_soak(days=7, seed=1, workdir=Path("/tmp/soak")))
    print(report.summary()); report.as_json()

The controller (``controller.service.Controller.run``, unchanged) and the simulated site
(``drivers.simulated.site.SimulatedSite``, real Modbus TCP on loopback) share one :class:`LockstepClock`.
Site time stands still while the controller computes and jumps to the next timer once its loop and its
planning task sleep on the clock, so a simulated week takes minutes, not a week. A cycle (or a planning
attempt) that takes longer than ``STALL_REAL_S`` of real time makes all its real time flow as site time
at 1×, with the plant stepped through it: a slow device costs the plant the time it costs the controller.

Faults (``drivers.simulated.faults``), seeded, per device one at a time with a quiet gap between them:
offline, frozen (mid-run), slow, implausible (out_of_range), sentinel, exception, flapping (offline
toggled every ``FLAP_S``). The judge reads the plant's state after every plant step (``site.state``,
the registers the devices act on) and counts breaches outside ``REACTION_CYCLES`` after any fault event
(and after the start, a restart, a load step);
a fault is *alarmed* when the controller held an alarm naming its device while it lasted, *cleared*
when no alarm names the device within ``CLEAR_S`` of its end. A frozen fault whose device's true
values never moved away from the frozen ones (e.g. PV at night) cannot be told from a healthy device:
it is counted as ``faults_unobservable`` and not in ``faults_injected``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import json
import logging
import math
import random
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from controller.config import load_config
from controller.planning import PerfectForecasts
from controller.service import Controller
from drivers.roles import Role
from drivers.simulated.site import SimulatedSite

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SITE = REPO / "deploy" / "examples" / "simulated-site.yaml"

START = "2026-05-04T00:00:00+07:00"
"""Site time at which a soak starts (a Monday, local midnight)."""
CYCLE_S = 10.0
"""Default control cycle of the soak's site file, 10× the example's 1 s (a day is 8,640 cycles). [site s]

The plant is stepped once per cycle (setpoints change only at a cycle, and stepping the plant and
publishing every register costs about as much as a cycle): every step is judged."""
REACTION_CYCLES = 3
"""Breaches within this many cycles after a fault starts, ends or flaps, after the start and after a restart
are allowed: one cycle to read the fault, one to act, one for the plant to follow."""
LOAD_STEP_KW = 50.0
"""A load change larger than this between two plant steps (the shift starting or ending) also starts a reaction
time: no controller follows it before its next cycle, and at a 20 s cycle one step of it is 20 s long. [kW]"""
CLEAR_S = 120.0
"""An alarm naming a device must be gone this long after the device's fault ended (device back-off is at most
20 s in the soak's site file). [site s]"""
DEVICE_TIMEOUT_S = 0.2
"""Each device's request timeout in the soak's site file (``timeout_s``, no retries). [real s]"""
SLOW_DELAY_S = 0.5
"""A slow device answers this late: beyond ``DEVICE_TIMEOUT_S``, so it misses every poll deadline. [real s]"""
FLAP_S = 30.0
"""A flapping device goes offline and back every this long. [site s]"""
STALL_REAL_S = 0.1
"""Real time a cycle or plan may take before it counts as site time (below it, computing is free). [s]"""
MEAN_GAP_S = 4 * 3600.0
"""Mean quiet time between two faults of one device (exponential), after ``CLEAR_S``. [site s]"""
EXPORT_TOL_KW = 10.0
"""Export beyond the cap by more than this is a breach (1 % of the example's 1,000 kWp). [kW]"""
DEAF_KINDS = frozenset({"offline", "exception", "slow", "flapping"})
"""Faults under which a device takes no commands: export only counts as a breach when it could have been held
with the devices that do (a PV inverter refusing writes after its own limit reverted, with the battery full,
exports whatever the controller does). [-]"""
IMPORT_TOL_KW = 10.0
"""Import beyond the cap by more than this is a breach (1 % of the 1,000 kW cap), when it could be held. [kW]"""
SOC_TOL_PCT = 0.5
"""True SOC beyond the battery's window by more than this is a breach. [%]"""
SETPOINT_TOL_KW = 0.5
"""A battery setpoint beyond the site's power ratings by more than this is out of limits. [kW]"""
OBSERVABLE_DELTA = {"kW": 5.0, "%": 0.5}
"""A frozen device is observable once a true power (kW) or SOC (%) point moved this far from its frozen value."""

KINDS = ("offline", "frozen", "slow", "implausible", "sentinel", "exception", "flapping")
DURATION_S = {"slow": (60.0, 180.0), "frozen": (300.0, 1800.0)}
"""Duration range per kind [site s]; other kinds: ``DEFAULT_DURATION_S``. Slow faults cost real time: short."""
DEFAULT_DURATION_S = (120.0, 1800.0)
IMPLAUSIBLE = {Role.METER: [("grid_kw", 3000.0), ("grid_kw", -3000.0)],
               Role.PV_INVERTER: [("pv_kw", 3000.0), ("pv_kw", -500.0)],
               Role.BATTERY: [("soc_pct", 150.0), ("battery_kw", 3000.0), ("battery_kw", -3000.0)]}
"""What an implausible fault serves, per role: (point, value in the point's unit); all beyond any rating."""
DEVICE_ALARMS = ("device_unreachable", "point_missing", "point_stale", "point_implausible")
"""Alarm codes that name a device (docs/controller.md): ``code:<device>[:<point>]``."""


# ------------------------------------------------------------------------------------------------ the clock

class LockstepClock:
    """Site time that moves only through :meth:`set`; ``sleep`` waits until the harness moves it far enough.

    ``sleeping`` counts the tasks waiting in :meth:`sleep`; ``changed`` is set whenever one starts waiting.
    """

    speed = 1.0

    def __init__(self, start: datetime):
        self._start = start.astimezone(UTC)
        self._mono = 0.0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self.changed = asyncio.Event()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._mono)

    def monotonic(self) -> float:
        return self._mono

    @property
    def sleeping(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())

    def next_wakeup(self) -> float | None:
        """The earliest time a sleeper waits for (None: nobody sleeps). [site s]"""
        live = [t for t, _, f in self._waiters if not f.done()]
        return min(live) if live else None

    def set(self, mono: float) -> None:
        """Move site time to ``mono`` (never backwards) and wake every sleeper due by then."""
        self._mono = max(self._mono, mono)
        while self._waiters and (self._waiters[0][0] <= self._mono or self._waiters[0][2].done()):
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (self._mono + max(0.0, seconds), self._seq, fut))
        self.changed.set()
        try:
            await fut
        finally:
            fut.cancel()  # a cancelled sleeper no longer counts


# ------------------------------------------------------------------------------------------------ faults

@dataclass
class Fault:
    """One injected fault: ``kind`` on ``device`` over [start_s, start_s + duration_s) of site monotonic time."""

    kind: str
    device: str
    start_s: float
    duration_s: float
    point: str | None = None
    value: float | None = None
    alarmed: bool = False
    cleared: bool = False
    observable: bool = True
    codes: set[str] = field(default_factory=set)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def describe(self) -> str:
        arg = f" {self.point}={self.value:g}" if self.point else f" {self.value:g}" if self.value is not None else ""
        return f"{self.device}:{self.kind}{arg} at {self.start_s:.0f}+{self.duration_s:.0f}s"


def schedule(devices: dict[str, Role], duration_s: float, seed: int, mean_gap_s: float = MEAN_GAP_S) -> list[Fault]:
    """Seeded random faults, every kind on every device in turn at random, never two at once on one device.

    Each device draws from its own generator (seeded by ``seed`` and its name), so a longer run starts with
    the faults of a shorter one."""
    faults: list[Fault] = []
    for name, role in devices.items():
        rng = random.Random(f"{seed}:{name}")
        t = CLEAR_S + rng.expovariate(1.0 / mean_gap_s)
        while True:
            kind = rng.choice(KINDS)
            lo, hi = DURATION_S.get(kind, DEFAULT_DURATION_S)
            f = Fault(kind, name, round(t), round(rng.uniform(lo, hi)))
            if f.end_s + CLEAR_S > duration_s:
                break
            if kind == "implausible":
                f.point, f.value = rng.choice(IMPLAUSIBLE[role])
            elif kind == "exception":
                f.value = rng.choice([4, 6])
            elif kind == "slow":
                f.value = SLOW_DELAY_S
            faults.append(f)
            t = f.end_s + CLEAR_S + rng.expovariate(1.0 / mean_gap_s)
    return sorted(faults, key=lambda f: f.start_s)


def fault_events(faults: list[Fault]) -> list[tuple[float, str, Fault]]:
    """(time, action, fault) in time order; actions: start, end, flap_off, flap_on."""
    events = []
    for f in faults:
        events += [(f.start_s, "start", f), (f.end_s, "end", f)]
        if f.kind == "flapping":
            t, on = f.start_s + FLAP_S, False
            while t < f.end_s:
                events.append((t, "flap_on" if on else "flap_off", f))
                t, on = t + FLAP_S, not on
    return sorted(events, key=lambda e: (e[0], e[1] != "end"))


def inject(site: SimulatedSite, f: Fault, action: str) -> None:
    """Apply one fault event to the simulated site."""
    faults = site.faults
    if action == "end":
        faults.clear(f.device)
    elif action in ("flap_off", "flap_on"):
        faults.offline(f.device, on=action == "flap_on")
    elif f.kind in ("offline", "flapping"):
        faults.offline(f.device)
    elif f.kind == "frozen":
        faults.freeze(f.device)
    elif f.kind == "slow":
        faults.slow(f.device, float(f.value or SLOW_DELAY_S))
    elif f.kind == "implausible":
        assert f.point is not None
        faults.out_of_range(f.device, f.point, f.value)
    elif f.kind == "sentinel":
        faults.sentinel(f.device)
    elif f.kind == "exception":
        faults.exception(f.device, int(f.value or 4))
    else:
        raise ValueError(f"unknown fault kind {f.kind!r}")


# ------------------------------------------------------------------------------------------------ the report

@dataclass
class SoakReport:
    """What a soak found. Breach counts are plant steps (one per cycle) outside the allowed reaction time;
    ``setpoint_out_of_limits`` counts cycles after which a device held a setpoint beyond the site's ratings."""

    soak_sim_days: float = 0.0
    export_breach_steps: int = 0
    export_unholdable_steps: int = 0
    import_breach_steps: int = 0
    soc_breach_steps: int = 0
    setpoint_out_of_limits: int = 0
    faults_injected: int = 0
    faults_alarmed: int = 0
    faults_cleared: int = 0
    faults_unobservable: int = 0
    crashes: int = 0
    plant_steps: int = 0
    cycles: int = 0
    real_s: float = 0.0
    reaction_s: float = 0.0
    cycles_per_real_s: float = 0.0
    stall_site_s: float = 0.0
    plan_real_s: float = 0.0
    reacting_breach_steps: int = 0
    max_export_kw: float = 0.0
    max_import_kw: float = 0.0
    soc_range_pct: tuple[float, float] = (100.0, 0.0)
    false_alarm_cycles: int = 0
    breaches_by_fault: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    alarm_codes: Counter[str] = field(default_factory=Counter)
    missed: list[str] = field(default_factory=list)
    not_cleared: list[str] = field(default_factory=list)
    unfaulted: list[str] = field(default_factory=list)
    crash_texts: list[str] = field(default_factory=list)

    KEYS = ("soak_sim_days", "export_breach_steps", "export_unholdable_steps", "import_breach_steps",
            "soc_breach_steps", "setpoint_out_of_limits", "faults_injected", "faults_alarmed", "faults_cleared",
            "faults_unobservable", "crashes", "cycles", "cycles_per_real_s", "real_s", "stall_site_s", "plan_real_s",
            "max_export_kw", "max_import_kw")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.KEYS}
        for k in ("soak_sim_days", "cycles_per_real_s", "real_s", "stall_site_s", "plan_real_s", "max_export_kw",
                  "max_import_kw"):
            out[k] = round(out[k], 3)
        out["breaches_by_fault"] = dict(self.breaches_by_fault)
        return out

    def summary(self) -> str:
        lines = [f"{self.soak_sim_days:.2f} simulated days, {self.cycles} cycles, {self.plant_steps} plant steps in "
                 f"{self.real_s:.0f} s real ({self.cycles_per_real_s:.0f} cycles per real second; planning "
                 f"{self.plan_real_s:.0f} s of it; {self.stall_site_s:.0f} site s of stalls at 1x)",
                 f"breach steps beyond the {self.reaction_s:g} s reaction time: export {self.export_breach_steps}, "
                 f"import {self.import_breach_steps}, SOC {self.soc_breach_steps}, setpoint out of limits "
                 f"{self.setpoint_out_of_limits} (within reaction time: {self.reacting_breach_steps}; export the "
                 f"devices that took commands could not have held: {self.export_unholdable_steps})",
                 f"worst true export {self.max_export_kw:.0f} kW, import {self.max_import_kw:.0f} kW, SOC "
                 f"{self.soc_range_pct[0]:.1f}–{self.soc_range_pct[1]:.1f} %",
                 f"faults injected {self.faults_injected}, alarmed {self.faults_alarmed}, cleared "
                 f"{self.faults_cleared} (unobservable frozen: {self.faults_unobservable}); crashes {self.crashes}; "
                 f"cycles with an alarm naming a healthy device: {self.false_alarm_cycles}"]
        lines.append("per kind (injected/alarmed/cleared): " + ", ".join(
            f"{k} {v['injected']}/{v['alarmed']}/{v['cleared']}" for k, v in sorted(self.by_kind.items())))
        if self.breaches_by_fault:
            lines.append("breach steps by active fault: " + ", ".join(
                f"{k} {n}" for k, n in self.breaches_by_fault.most_common()))
        if self.alarm_codes:
            lines.append("alarm codes seen (cycles): " + ", ".join(
                f"{k} {n}" for k, n in self.alarm_codes.most_common(12)))
        lines += [f"  not alarmed: {m}" for m in self.missed[:10]]
        lines += [f"  not cleared: {m}" for m in self.not_cleared[:10]]
        lines += [f"  breach with no fault active: {m}" for m in self.unfaulted]
        lines += [f"  crash: {c}" for c in self.crash_texts[:3]]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the site file

def soak_site_file(workdir: Path, cycle_s: float = CYCLE_S, start: str = START) -> Path:
    """The example site with free loopback ports, no telemetry, a ``CYCLE_S`` cycle and fast device timeouts.

    Load noise is off: the simulator draws it independently per plant step, which no controller can follow
    and which would count as export breaches with no fault at all.
    """
    from tests.modbus_peers import free_port

    data = yaml.safe_load(EXAMPLE_SITE.read_text())
    data["telemetry"] = {"dashboard": {"enabled": False}}
    for dev in data["devices"]:
        dev["endpoint"]["port"] = free_port()
        dev.update(timeout_s=DEVICE_TIMEOUT_S, retries=0, backoff_max_s=20.0)
    data["control"]["cycle_s"] = cycle_s
    data["simulation"].update(start=start, step_s=cycle_s)
    data["simulation"]["load"]["noise_pct"] = 0
    path = workdir / "soak-site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ the harness

class ObservedController(Controller):
    """The controller, unchanged, telling the harness when it is inside a cycle or a planning attempt."""

    busy = 0

    async def cycle(self) -> dict[str, Any]:
        self.busy += 1
        try:
            return await super().cycle()
        finally:
            self.busy -= 1
            self.clock.changed.set()  # type: ignore[attr-defined]

    plan_real_s = 0.0

    async def plan_once(self, why: str) -> None:
        self.busy += 1
        t0 = time.perf_counter()
        try:
            await super().plan_once(why)
        finally:
            self.busy -= 1
            self.plan_real_s += time.perf_counter() - t0
            self.clock.changed.set()  # type: ignore[attr-defined]


def device_of(code: str) -> str | None:
    """The device an alarm code names (``point_stale:battery:soc_pct`` → ``battery``), None for site alarms."""
    kind, _, rest = code.partition(":")
    return rest.split(":")[0] if kind in DEVICE_ALARMS and rest else None


class Soak:
    """One soak run: build the site and the controller, inject ``faults``, judge every plant step."""

    def __init__(self, workdir: Path, days: float, seed: int, cycle_s: float = CYCLE_S,
                 mean_gap_s: float = MEAN_GAP_S, budget_real_s: float | None = None, state_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None):
        self.workdir = workdir
        self.cycle_s = cycle_s
        self.reaction_s = REACTION_CYCLES * cycle_s
        self.budget_real_s = budget_real_s
        self.path = soak_site_file(workdir, cycle_s)
        self.state_dir = state_dir or workdir / "state"
        self.config = load_config(self.path)
        self.clock = LockstepClock(datetime.fromisoformat(START))
        self.site = SimulatedSite.from_file(self.path, clock=self.clock)
        self.duration_s = days * 86400.0
        self.roles = {d.name: d.role for d in self.site.config.devices}
        self.faults = schedule(self.roles, self.duration_s, seed, mean_gap_s)
        self.events = fault_events(self.faults)
        self.event_times = [0.0]  # start, fault events applied, controller restarts, load steps
        self.report = SoakReport(reaction_s=self.reaction_s)
        self.progress = progress
        self._next_event = 0
        self._plant_mono = 0.0
        self._last_load_kw: float | None = None
        self._last_counted: tuple[ObservedController | None, int] = (None, -1)
        self._frozen: dict[str, dict[str, float]] = {}  # device → its true values when it froze
        self.active: dict[str, Fault] = {}  # device → its fault now
        self.ended: list[Fault] = []  # faults that ended less than CLEAR_S ago
        self.controller: ObservedController | None = None
        self._task: asyncio.Task[None] | None = None

    # --- controller life cycle (a crash is counted and the controller restarted, as systemd would) ----------

    def _start_controller(self) -> None:
        self.controller = ObservedController.from_config(
            self.config, self.path, self.clock, state_directory=self.state_dir,
            forecasts=PerfectForecasts(self.site.pv_source, self.site.load_source))
        self.controller.busy = 0
        self._task = asyncio.create_task(self.controller.run(), name="controller")

    def _count_cycles(self) -> None:
        c = self.controller
        if c is not None:
            self.report.cycles += c.cycles
            self.report.plan_real_s += c.plan_real_s

    def _check_crash(self) -> bool:
        task = self._task
        if task is None or not task.done():
            return False
        exc = None if task.cancelled() else task.exception()
        text = "".join(traceback.format_exception(exc)) if exc else "run() returned without being stopped"
        self.report.crashes += 1
        during = ", ".join(f.describe() for f in self.active.values()) or "no fault"
        self.report.crash_texts.append(f"at site second {self.clock.monotonic():.0f} ({during}): "
                                       f"{text.strip()[-600:]}")
        log.error("soak: controller crashed (%s); restarting it", text.strip().splitlines()[-1])
        bisect.insort(self.event_times, self.clock.monotonic())  # a restart gets the reaction time of a start
        self._count_cycles()
        self._start_controller()
        return True

    # --- time ---------------------------------------------------------------------------------------------

    async def _advance_to(self, mono: float, partial: bool = False) -> None:
        """Step the plant (and the fault schedule) up to ``mono``, judging every step, then wake the sleepers.

        The plant steps to the last whole cycle (the controller's ticks) unless ``partial`` (a stall): a
        wake-up of the planning task between two ticks does not cost a plant step."""
        target = mono if partial else math.floor(mono / self.cycle_s + 1e-9) * self.cycle_s
        while self._plant_mono < target - 1e-9:
            await self._apply_events(self._plant_mono)
            step = min(self.cycle_s, target - self._plant_mono)
            self._plant_mono += step
            self.clock.set(self._plant_mono)
            state = self.site.step(step)
            self._judge(state)
        await self._apply_events(self._plant_mono)
        self.clock.set(mono)

    async def _apply_events(self, now: float) -> None:
        changed = False
        while self._next_event < len(self.events) and self.events[self._next_event][0] <= now:
            _, action, f = self.events[self._next_event]
            self._next_event += 1
            inject(self.site, f, action)
            if action == "start":
                self.active[f.device] = f
                if f.kind == "frozen":
                    self._frozen[f.device] = dict(self.site.truth(f.device))
                    f.observable = False
            elif action == "end":
                del self.active[f.device]
                self.ended.append(f)
                self._frozen.pop(f.device, None)
            changed = True
        if changed:  # applied at the plant step boundary at or after the scheduled time
            bisect.insort(self.event_times, now)
            await self.site.reconcile()

    async def _settle(self, woken: int) -> None:
        """Wait until the controller is idle and every woken sleeper sleeps again (or its task ended).

        Real time beyond ``STALL_REAL_S`` flows as site time at 1× (the plant stepped through it)."""
        clock = self.clock
        mark = time.perf_counter()
        await asyncio.sleep(0)
        while True:
            c = self.controller
            assert c is not None and self._task is not None
            if self._task.done():
                return
            if c.busy == 0 and clock.sleeping >= woken:
                return
            clock.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(clock.changed.wait(), STALL_REAL_S)
            elapsed = time.perf_counter() - mark
            if elapsed >= STALL_REAL_S and not (c.busy == 0 and clock.sleeping >= woken):
                mark += elapsed
                self.report.stall_site_s += elapsed
                await self._advance_to(clock.monotonic() + elapsed, partial=True)

    # --- judging ------------------------------------------------------------------------------------------

    def _reacting(self, now: float) -> bool:
        """Whether ``now`` is within the reaction time after the start, a restart or a fault event."""
        i = bisect.bisect_right(self.event_times, now) - 1
        return i >= 0 and now - self.event_times[i] <= self.reaction_s

    def _judge(self, s: Any) -> None:
        r, cfg = self.report, self.config
        now = self._plant_mono
        r.plant_steps += 1
        if self._last_load_kw is not None and abs(s.load_kw - self._last_load_kw) > LOAD_STEP_KW:
            bisect.insort(self.event_times, now - self.cycle_s)  # the step began within the last cycle
        self._last_load_kw = s.load_kw
        r.max_export_kw = max(r.max_export_kw, -s.grid_kw)
        r.max_import_kw = max(r.max_import_kw, s.grid_kw)
        r.soc_range_pct = (min(r.soc_range_pct[0], s.soc_pct), max(r.soc_range_pct[1], s.soc_pct))
        bat = cfg.battery
        can_hold = s.load_kw - s.pv_available_kw - (s.max_discharge_kw if s.soc_pct > bat.soc_min_pct else 0.0)
        # the least grid power the controller could reach now: PV curtailed to 0 and the battery charging as far
        # as its BMS and SOC allow, unless the device takes no commands (then it stays where it is)
        pv_floor = s.pv_kw if self._deaf("pv-inverter") else 0.0
        charge = -s.battery_kw if self._deaf("battery") else (s.max_charge_kw if s.soc_pct < bat.soc_max_pct else 0.0)
        lowest_grid = s.load_kw - pv_floor + charge
        exporting = -s.grid_kw > cfg.grid.export_cap_kw + EXPORT_TOL_KW
        r.export_unholdable_steps += exporting and lowest_grid < -cfg.grid.export_cap_kw
        breaches = {
            "export": exporting and lowest_grid >= -cfg.grid.export_cap_kw,
            "import": s.grid_kw > cfg.grid.import_cap_kw + IMPORT_TOL_KW and can_hold <= cfg.grid.import_cap_kw,
            "soc": not bat.soc_min_pct - SOC_TOL_PCT <= s.soc_pct <= bat.soc_max_pct + SOC_TOL_PCT,
        }
        for device, frozen in self._frozen.items():
            self._observe_frozen(device, frozen, now)
        if not any(breaches.values()):
            return
        if self._reacting(now):
            r.reacting_breach_steps += 1
            return
        r.export_breach_steps += breaches["export"]
        r.import_breach_steps += breaches["import"]
        r.soc_breach_steps += breaches["soc"]
        active = list(self.active.values())
        for what, hit in breaches.items():
            if hit:
                for f in active or [None]:
                    r.breaches_by_fault[f"{what}@{f.device}:{f.kind}" if f else f"{what}@no fault"] += 1
        if not active and len(r.unfaulted) < 10:
            since = now - self.event_times[bisect.bisect_right(self.event_times, now) - 1]
            r.unfaulted.append(f"{self.clock.now():%Y-%m-%d %H:%M:%S} UTC ({since:.0f} s after the last event): "
                               f"grid {s.grid_kw:.0f} kW, PV {s.pv_kw:.0f}/{s.pv_available_kw:.0f} kW, load "
                               f"{s.load_kw:.0f} kW, battery {s.battery_kw:.0f} kW, SOC {s.soc_pct:.1f} %")

    def _deaf(self, device: str) -> bool:
        """Whether ``device`` takes no commands now (its fault refuses or drops writes)."""
        fault = self.active.get(device)
        return fault is not None and fault.kind in DEAF_KINDS

    def _setpoints_within_limits(self) -> bool:
        bat = self.config.battery
        for image in self.site.images.values():
            if image.role is Role.BATTERY:
                kw = image.setpoint("battery_setpoint_kw")
                if kw is not None and not -bat.max_charge_kw - SETPOINT_TOL_KW <= kw <= bat.max_discharge_kw + \
                        SETPOINT_TOL_KW:
                    return False
            elif image.role is Role.PV_INVERTER:
                pct = image.setpoint("pv_limit_pct")
                if pct is not None and not 0.0 <= pct <= 100.0:
                    return False
        return True

    def _observe_frozen(self, device: str, frozen: dict[str, float], now: float) -> None:
        """Mark the device's frozen fault observable once a true power or SOC point left its frozen value in time
        for the controller to notice (a reaction time before the fault ends)."""
        f = self.active[device]
        if f.observable or now > f.end_s - self.reaction_s:
            return
        image = self.site.images[device]
        for name, value in self.site.truth(device).items():
            point = image.profile.points.get(name)
            delta = OBSERVABLE_DELTA.get(point.unit) if point is not None else None
            if delta is not None and name in frozen and abs(value - frozen[name]) > delta:
                f.observable = True
                return

    def _watch_alarms(self) -> None:
        c = self.controller
        assert c is not None
        now = self.clock.monotonic()
        named = {device_of(code) for code in c.alarms} - {None}
        r = self.report
        counted = (c, c.cycles) != self._last_counted  # count each controller cycle once (planning wakes too)
        self._last_counted = (c, c.cycles)
        if counted:
            r.setpoint_out_of_limits += not self._setpoints_within_limits()
            r.alarm_codes.update(list(c.alarms))
        healthy = set(self.roles) - set(self.active)
        for f in self.active.values():
            if f.device in named:
                f.alarmed = True
                f.codes.update(code for code in c.alarms if device_of(code) == f.device)
        self.ended = [f for f in self.ended if now <= f.end_s + CLEAR_S]
        for f in self.ended:
            healthy.discard(f.device)
            if f.device not in named:
                f.cleared = True
        if named & healthy and counted:
            r.false_alarm_cycles += 1

    # --- the run ------------------------------------------------------------------------------------------

    async def run(self) -> SoakReport:
        real0 = time.perf_counter()
        await self.site.start(stepping=False)
        self._start_controller()
        try:
            await self._settle(woken=0)
            days_done = 0
            while self.clock.monotonic() < self.duration_s:
                if self.budget_real_s is not None and time.perf_counter() - real0 > self.budget_real_s:
                    break
                if self._check_crash():
                    await self._settle(woken=0)
                    continue
                wake = self.clock.next_wakeup()
                if wake is None:  # nobody sleeps and nothing runs: the controller must have ended
                    await asyncio.sleep(0.01)
                    continue
                before = self.clock.sleeping
                await self._advance_to(wake)
                await self._settle(before)
                self._watch_alarms()
                day = int(self.clock.monotonic() // 86400)
                if self.progress is not None and day > days_done:
                    days_done = day
                    self.progress(f"day {day}: {time.perf_counter() - real0:.0f} s real")
        finally:
            c = self.controller
            if c is not None and self._task is not None:
                self._count_cycles()
                c.stop()
                stopper = asyncio.ensure_future(self._task)
                while not stopper.done():  # shutdown may sleep on the clock: let time move
                    await asyncio.sleep(0.01)
                    self.clock.set(self.clock.monotonic() + self.cycle_s)
                with contextlib.suppress(Exception):
                    await stopper
            await self.site.stop()
        self._finish(time.perf_counter() - real0)
        return self.report

    def _finish(self, real_s: float) -> None:
        r = self.report
        r.soak_sim_days = min(self.clock.monotonic(), self.duration_s) / 86400.0
        r.real_s = real_s
        r.cycles_per_real_s = r.cycles / real_s if real_s else 0.0
        done = [f for f in self.faults if f.end_s + CLEAR_S <= self.clock.monotonic()]
        for f in done:
            kind = r.by_kind.setdefault(f.kind, {"injected": 0, "alarmed": 0, "cleared": 0, "unobservable": 0})
            if not f.observable:
                r.faults_unobservable += 1
                kind["unobservable"] += 1
                continue
            r.faults_injected += 1
            r.faults_alarmed += f.alarmed
            r.faults_cleared += f.cleared
            kind["injected"] += 1
            kind["alarmed"] += f.alarmed
            kind["cleared"] += f.cleared
            if not f.alarmed:
                r.missed.append(f.describe())
            if not f.cleared:
                r.not_cleared.append(f"{f.describe()} ({', '.join(sorted(f.codes)) or 'no device alarm'})")


async def run_soak(days: float, seed: int, workdir: Path, cycle_s: float = CYCLE_S, mean_gap_s: float = MEAN_GAP_S,
                   budget_real_s: float | None = None, progress: Callable[[str], None] | None = None) -> SoakReport:
    """Run a soak of ``days`` simulated days (or until ``budget_real_s`` real seconds) with faults seeded by
    ``seed``; the site file goes to ``workdir``, the controller's state file to a RAM disk when there is one
    (``/dev/shm``: the state store's fsyncs would otherwise cost more than the cycles)."""
    workdir.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="ems-soak-", dir=shm if shm.is_dir() else workdir) as state_dir:
        return await Soak(workdir, days, seed, cycle_s, mean_gap_s, budget_real_s, Path(state_dir), progress).run()


def report_json(report: SoakReport) -> str:
    return json.dumps(report.as_json(), sort_keys=True)
