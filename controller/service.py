"""The controller service: the cycle, the planning task, modes, persistence and shutdown (docs/controller.md).

Every cycle (``control.cycle_s`` of site time, aligned to the clock):

1. read every device concurrently into one frozen :class:`~controller.snapshot.Snapshot` — one aggregate battery
   and PV plant over the asset groups (:mod:`controller.assets`) — then validate it
   (:class:`~controller.validation.Validator`: stuck and implausible readings become stale/implausible,
   device-health alarms raised and cleared);
2. account energy, money and the demand peak (:class:`~controller.accounting.Accounting`); feed the
   forecasters' history;
3. decide the mode (:class:`~controller.modes.ModeMachine`) and its target (plan step by the follow
   rule, a fallback rule, or the operator's);
4. run the limits chain (:class:`~controller.dispatch.Dispatcher`);
5. split the setpoints over the units (:mod:`controller.groups`) and write them (each device skips a change
   inside the deadband and re-sends at the heartbeat: ``drivers.writes``), and keep the devices' watchdogs alive;
6. publish the cycle state on the bus, raise/clear alarms on transitions, ping systemd's watchdog.

The planning task re-plans at every planning interval, on a ``replan`` command and when the site
drifts from the plan, in a worker thread with a time limit; the last valid plan is followed until it
expires, then the mode machine falls back (self-consumption or TOU rule) with a reason code.
On stop: every battery 0 kW, remote control released, state saved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from controller.accounting import (
    NO_BATTERY_DEMAND_KEY,
    Accounting,
    DemandTracker,
    EnergyCounters,
    MonthCounters,
    StoredDemand,
    StoredEnergy,
    StoredMonth,
)
from controller.assets import WRITE_FAILED, Assets
from controller.audit import AuditLog
from controller.battery_health import BatteryHealth
from controller.bus import ALARM, PLAN, STATE, Bus
from controller.commands import CommandResult, Commands, Reserve
from controller.config import SiteConfig, resolve_profile, state_dir
from controller.demand_watch import ALARM as DEMAND_ALARM
from controller.demand_watch import DemandOutlook, DemandWatch
from controller.devices import Device
from controller.dispatch import Decision, Dispatcher, Follow, Source, Target
from controller.forecast_csv import ALARM as CSV_ALARM
from controller.forecast_csv import ForecastCsvFile
from controller.forecast_record import ForecastRecord
from controller.groups import ALARM_PREFIXES as GROUP_ALARMS
from controller.modes import Mode, ModeMachine, ModeState, Reason, Request
from controller.planning import (
    ForecastSource,
    MeasuredForecasts,
    MeasuredHistory,
    PlanKeeper,
    PlanOutcome,
    Replanner,
    StoredHistory,
)
from controller.sdnotify import SdNotify
from controller.snapshot import Snapshot
from controller.state_store import StateStore, StoredMode, StoredReserve, read_stored
from controller.targets import DemandWindow, mode_target
from controller.telemetry import Telemetry, TelemetryContext, start_telemetry
from controller.validation import ALARM_PREFIXES, ValidationTrace, Validator
from drivers.device import ModbusDevice
from drivers.profile import load_profile
from drivers.roles import Role
from drivers.transport import ConnectionPool
from ems.clock import Clock
from optimizer.external_accuracy import ExternalAccuracy
from optimizer.external_accuracy import warnings as external_warnings
from optimizer.external_forecast import MAX_VALID_HOURS, ExternalForecast, ExternalForecasts, WithExternal
from optimizer.forecast import DAYLIGHT_SHARE, LoadForecaster, PVForecaster
from optimizer.forecast_accuracy import LiveAccuracy
from optimizer.plan import Plan
from optimizer.planner import Planner
from optimizer.tariff import SiteTariff, load_tariff
from optimizer.timegrid import TimeGrid

#: Alarm codes of :func:`optimizer.external_accuracy.warnings`, set from the external forecasts' scores.
EXTERNAL_ALARMS = ("external_pv_", "external_load_")

log = logging.getLogger(__name__)

STATE_FILE = "state.sqlite"
CLOCK_ALARM = "clock_stepped"
CLOCK_ALARM_S = 600.0
"""How long the alarm of a system clock step stays up after the last step (monotonic time). [s]"""
PLAN_TIMEOUT_MARGIN_S = 1.0
"""Real seconds beyond twice the solver's time limit a planning attempt (forecasts, build, solve) may take."""
CYCLE_TIMES_KEPT = 3600
"""Cycle times kept for statistics (an hour at the default cycle)."""


def build_devices(config: SiteConfig, config_path: Path, clock: Clock,
                  pool: ConnectionPool) -> dict[str, Device]:
    """One :class:`ModbusDevice` per configured device, by name; a relative profile path is taken relative to the
    site file.

    Each device's deadline comes from its own settings and the control cycle in physical seconds
    (``DeviceConfig.deadline``); unchanged setpoints are re-sent every ``control.heartbeat_s``."""
    devices: dict[str, Device] = {}
    cycle_s = config.control.cycle_s / clock.speed
    for cfg in config.devices:
        path = resolve_profile(cfg.profile, config_path.resolve().parent)
        devices[cfg.name] = ModbusDevice(cfg, load_profile(path), pool.connection(cfg), clock,
                                         deadline_s=cfg.deadline(cycle_s), resend_s=config.control.heartbeat_s)
    return devices


class Controller:
    """The live controller for one site.

    Parameters
    ----------
    config : SiteConfig
    devices : Mapping[Any, Device]
        Every device of the site (``controller.devices``: a Modbus device, or an in-memory one in tests); each
        names itself and gives its role (the keys are not used). Several inverters and batteries make the
        groups of ``controller.assets``.
    clock : Clock
        Site time (shared with the simulated site when there is one).
    tariff : SiteTariff
    state_path : Path
        The SQLite state file.
    forecasts : ForecastSource | None
        Default: ``optimizer.forecast`` fed the measured history.
    notify : SdNotify | None
        systemd notification; default from ``$NOTIFY_SOCKET``.
    """

    def __init__(self, config: SiteConfig, devices: Mapping[Any, Device], clock: Clock, tariff: SiteTariff,
                 state_path: Path, forecasts: ForecastSource | None = None, notify: SdNotify | None = None,
                 config_dir: Path | None = None):
        self.config = config
        self.assets = Assets(devices, config.battery, config.pv.ac_limit_kw, config.control.groups, clock)
        self.devices = self.assets.devices
        self.clock = clock
        self.tariff = tariff
        ctl, bat = config.control, config.battery
        now = clock.now()
        self.bus = Bus()
        self.notify = notify or SdNotify()
        self.store = StateStore(state_path, now)
        self.audit = AuditLog(state_path, ctl.audit)
        self.dispatcher = Dispatcher(bat, config.grid, ctl.dispatch, pv_rated_kw=config.pv.ac_limit_kw,
                                     battery_reversion_s=self.assets.battery_reversion_s)
        self.validator = Validator.from_config(config)
        self.validation = ValidationTrace(())
        self.modes = ModeMachine(Mode(ctl.fallback_mode), now, Mode(ctl.initial_mode))
        self.history = MeasuredHistory(config.planner.step_minutes, ctl.history_days)
        builtin = forecasts or MeasuredForecasts(
            PVForecaster(config.site, config.pv, isolated=True),  # pvlib in a worker process: docs/performance.md
            LoadForecaster.for_site(config.site, tariff.calendar), self.history)
        #: Forecasts from outside: ``external_forecasts.submit(payload)`` is the REST/MQTT entry point; an
        #: accepted forecast replaces the built-in one for the steps it covers until it expires (docs/data.md).
        #: Accuracy of the built-in forecasters (hindcasts) and of the external forecasts received, scored on the
        #: measured history; None when the planner runs on known forecasts.
        self.accuracy, self.external_accuracy = (
            self._live_accuracy(config, tariff) if isinstance(builtin, MeasuredForecasts) else (None, None))
        scores = self.external_accuracy
        #: Every accepted external forecast, kept in the state file for a restart (docs/data.md).
        self.forecast_record = ForecastRecord(self.store, MAX_VALID_HOURS / 24 if scores is None
                                              else scores.days + scores.lead_edges_h[-1] / 24,
                                              config.planner.step_minutes)
        self.external_forecasts = ExternalForecasts(
            pv_limit_kw=config.pv.ac_limit_kw, on_accept=self._external_accepted,
            band_scale=scores.band_scale if scores is not None and config.planner.external_band_recalibrate else None)
        self.forecasts = WithExternal(builtin, self.external_forecasts, clock.now)
        csv = ctl.external_forecast_csv  # relative to the site file (config_dir)
        self.forecast_csv = None if csv is None else ForecastCsvFile(csv, config_dir or Path.cwd(),
                                                                     self.external_forecasts)
        self.plans = PlanKeeper(Planner(bat, config.grid, config.planner, config.planner.horizon_steps),
                                config.planner, config.grid, tariff, self.forecasts, ctl.dispatch.follow_tol_kw)
        #: The battery's measured state of health: the energy plans and the SOC-rate rule count on.
        self.battery_health = BatteryHealth(bat.capacity_kwh)
        self.replanner = Replanner(self.plans, clock, ctl, config.replan_minutes, self.battery_health,
                                   config.planner.time_limit_s * 2 + PLAN_TIMEOUT_MARGIN_S, self._planned,
                                   self.assets.batteries.in_use_energy)
        self.commands = Commands(self.modes, clock, (bat.max_charge_kw, bat.max_discharge_kw),
                                 (bat.soc_min_pct, bat.soc_max_pct), self.replanner.request)
        self.accounting = Accounting(tariff, config.site.timezone, ctl.cycle_s, config.grid.export_cap_kw,
                                     ctl.demand_interval_minutes, ctl.billed_month_peaks_kw)
        self.demand = self.accounting.demand  # the demand windows and the month-to-date peak
        self.demand_watch = DemandWatch(ctl.demand_warning_kw)
        self.demand_outlook: DemandOutlook | None = None
        self.alarms: dict[str, str] = {}
        self.snapshot: Snapshot | None = None
        self.decision: Decision | None = None
        self.cycles = 0
        self.cycle_ms: deque[float] = deque(maxlen=CYCLE_TIMES_KEPT)
        """Read→write time of the latest cycles [ms, real time]."""
        self._last_persist = -float("inf")
        self._history_saved = 0  # MeasuredHistory.closed when the history was last saved
        self._online: dict[str, bool | None] = {name: None for name in self.devices}
        self._took_control = not self.modes.monitor_only  # False until a monitor-only start is switched out of it
        self._last_cycle_at: tuple[datetime, float] | None = None  # previous cycle's (site time, monotonic s)
        self._clock_stepped_at: float | None = None  # monotonic s of the last system clock step seen
        self._stop = asyncio.Event()
        self.telemetry: Telemetry | None = None
        self._restore(now)

    @classmethod
    def from_config(cls, config: SiteConfig, config_path: str | Path, clock: Clock, *,
                    state_directory: Path | None = None, forecasts: ForecastSource | None = None,
                    pool: ConnectionPool | None = None) -> Controller:
        """Build devices, tariff and state file from a validated site file."""
        path = Path(config_path)
        tariff = load_tariff(config.tariff, path.resolve().parent).bind(config.site.timezone,
                                                                        config.tariff.extra_holidays)
        devices = build_devices(config, path, clock, pool or ConnectionPool())
        directory = state_directory or state_dir(config, path)
        return cls(config, devices, clock, tariff, directory / STATE_FILE, forecasts=forecasts,
                   config_dir=path.resolve().parent)

    # ------------------------------------------------------------------------------------------ state

    def _restore(self, now: datetime) -> None:
        """Resume from the state file; a value that is not what the controller stores is reset to its default
        (and removed), the others kept, and alarm ``state_value_invalid`` names each bad one."""
        s = self.store
        if s.alarm:
            self._raise("state_store_corrupt", s.alarm, now)
        bad: list[str] = []

        def read(key: str, model: type) -> Any:
            value, why = read_stored(s, key, model)
            if why is not None:
                bad.append(why)
                s.delete(key)
            return value

        self.accounting.restore(read(DemandTracker.KEY, StoredDemand), read(EnergyCounters.KEY, StoredEnergy),
                                read(MonthCounters.KEY, StoredMonth), read(NO_BATTERY_DEMAND_KEY, StoredDemand))
        plan = s.get("plan")
        if plan:
            try:
                restored = Plan.from_dict(plan)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                bad.append(f"plan: {type(exc).__name__}: {exc}")
                s.delete("plan")
            else:
                if not restored.is_expired(now, self.config.planner.plan_valid_hours):
                    self.plans.plan, self.plans.last_error = restored, None

        def time_left(key: str, until: datetime) -> datetime:
            """``until``, or sooner if the clock was set back since it was saved: no more time than it had left
            then (its expiry is wall-clock time)."""
            saved = s.updated(key)
            return until if saved is None or saved <= now else min(until, now + (until - saved))

        mode = read("mode", StoredMode)
        if mode is not None and mode.until > now:
            try:
                self.modes.request_mode(Request(Mode(mode.mode), time_left("mode", mode.until), mode.setpoint_kw,
                                                "restored"))
            except ValueError as exc:
                bad.append(f"mode: {exc}")
                s.delete("mode")
        reserve = read("reserve", StoredReserve)
        if reserve is not None and reserve.until > now:
            self.commands.reserve = Reserve(reserve.soc_pct, time_left("reserve", reserve.until))
        note = self.history.restore(read(MeasuredHistory.KEY, StoredHistory), now)
        if note is not None:
            log.warning("%s", note)
            s.delete(MeasuredHistory.KEY)
        self._history_saved = self.history.closed
        scores = self.external_accuracy
        bad += self.forecast_record.restore(self.external_forecasts, now, None if scores is None else scores.record)
        if bad:
            self._raise("state_value_invalid", "state file values reset to their defaults: " + " | ".join(bad), now)

    def _external_accepted(self, forecast: ExternalForecast) -> None:
        """An external forecast was accepted: kept for its scores and in the state file."""
        if self.external_accuracy is not None:
            self.external_accuracy.record(forecast)
        self.forecast_record.add(forecast, self.clock.now())

    def persist(self, now: datetime) -> None:
        """Save counters, demand peak, operator requests and, when a step has closed since the last save, the
        measured history (a restart then resumes the forecasters, their errors and the month's peak target)."""
        s = self.store
        for key, value in self.accounting.stored().items():
            s.put(key, value, now)
        if self.history.closed != self._history_saved:
            s.put(MeasuredHistory.KEY, self.history.stored(), now)
            self._history_saved = self.history.closed
        r = self.modes.request
        if r is None:
            s.delete("mode")
        else:
            s.put("mode", {"mode": r.mode.value, "until": r.until.isoformat(), "setpoint_kw": r.setpoint_kw}, now)
        res = self.commands.reserve
        if res is None:
            s.delete("reserve")
        else:
            s.put("reserve", {"soc_pct": res.soc_pct, "until": res.until.isoformat()}, now)
        self._last_persist = self.clock.monotonic()
        self.audit.flush(now)
        self._store_health(now)

    def _store_health(self, now: datetime) -> None:
        """Alarm ``state_store_unwritable`` while the state file takes no writes (locked, read-only), and
        ``audit_log_unwritable``/``audit_entries_lost`` while audit entries wait in memory or were dropped."""
        if self.store.write_error is not None:
            self._raise("state_store_unwritable", f"state file {self.store.path} not writable: "
                        f"{self.store.write_error}; values kept in memory and retried", now)
        else:
            self._clear("state_store_unwritable", now)
        audit = self.audit
        if audit.write_error is not None:
            self._raise("audit_log_unwritable", f"audit log in {audit.path} not writable: {audit.write_error}; "
                        f"{audit.pending} entries kept in memory and retried", now)
        else:
            self._clear("audit_log_unwritable", now)
        if audit.lost:
            self._raise("audit_entries_lost", f"{audit.lost} audit entries dropped: more than "
                        f"{audit.settings.max_pending} waited for the locked state file", now)
        else:
            self._clear("audit_entries_lost", now)

    # ------------------------------------------------------------------------------------------ alarms

    def _raise(self, code: str, message: str, now: datetime) -> None:
        if code not in self.alarms:
            self.alarms[code] = message
            log.error("alarm raised: %s: %s", code, message)
            self.bus.publish(ALARM, {"ts": now.isoformat(), "site": self.config.site.name, "code": code,
                                     "active": True, "message": message})

    def _clear(self, code: str, now: datetime) -> None:
        if code in self.alarms:
            del self.alarms[code]
            log.warning("alarm cleared: %s", code)
            self.bus.publish(ALARM, {"ts": now.isoformat(), "site": self.config.site.name, "code": code,
                                     "active": False, "message": ""})

    def _set_alarms(self, prefix_codes: dict[str, str], managed: tuple[str, ...], now: datetime) -> None:
        """Make the alarms whose code starts with one of ``managed`` exactly ``prefix_codes``."""
        for code in [c for c in self.alarms if c.startswith(managed) and c not in prefix_codes]:
            self._clear(code, now)
        for code, message in prefix_codes.items():
            self._raise(code, message, now)

    # ------------------------------------------------------------------------------------------ commands

    def apply(self, command: dict | Any, *, interface: str = "internal", identity: str | None = None) -> CommandResult:
        """Apply an operator/remote command (see :mod:`controller.commands`) and record it in the audit log.

        Parameters
        ----------
        interface : str
            Where it came from: ``mqtt``, ``rest``, ``dashboard``, ``scada``, ``park`` or ``internal``.
        identity : str, optional
            Who sent it: token name, MQTT user, client address (``None`` when the interface cannot tell).
        """
        now = self.clock.now()
        try:
            result = self.commands.apply(command, interface=interface, identity=identity)
        except Exception as exc:  # recorded, then the caller answers it as an internal error
            self.audit.record(ts=now, interface=interface, identity=identity, command=_command_name(command),
                              payload=command, accepted=False, reason=f"internal error: {type(exc).__name__}")
            raise
        self.audit.record(ts=now, interface=interface, identity=identity, command=_command_name(command),
                          payload=command, accepted=result.accepted, reason=result.reason)
        if result.accepted:
            self.persist(now)
        else:
            self._store_health(now)
        return result

    # ------------------------------------------------------------------------------------------ the cycle

    def _account(self, snap: Snapshot, now: datetime) -> None:
        """Energy, money and demand peak (``controller.accounting``); the forecasters' step history (PV held at its
        limit is left out of it: :class:`~controller.planning.MeasuredHistory`)."""
        pv_kw = snap.value("pv_kw")
        dt_h = self.accounting.add(now, snap.value("grid_kw"), pv_kw, snap.value("battery_kw"))
        curtailed = pv_kw is not None and self.dispatcher.pv_held_at_limit(pv_kw, snap.value("pv_limit_pct"))
        self.history.add(now, pv_kw, snap.load_kw, dt_h, curtailed)

    def _watch_demand(self, snap: Snapshot, now: datetime, target: Target | None, decision: Decision) -> None:
        """The demand window's outlook against the level held this month, and its alarm
        (:mod:`controller.demand_watch`). The battery's headroom — what the limits chain of ``decision`` allows above
        the discharge measured now — counts only while ``target`` (the one written; None while nothing is written)
        has the dispatcher discharge for the grid: a plan's grid ceiling, or a grid target."""
        defended = target is not None and (target.grid_ceiling_kw is not None or target.follow is Follow.GRID)
        battery_kw = snap.value("battery_kw")
        headroom = 0.0
        reserved = any(note.step == "reserve" for note in decision.bounds)   # the operator's reserve: no discharge
        if defended and not decision.safe and not reserved and decision.bounds and battery_kw is not None:
            headroom = max(0.0, decision.bounds[-1].hi_kw - battery_kw)
        self.demand_outlook = self.demand_watch.update(
            now, snap.value("grid_kw"), DemandWindow(*self.demand.running(now)),
            self.plans.held_peak_kw(now, self.accounting.billed_demand_kw(now)), headroom)
        if self.demand_watch.alarm and self.demand_outlook is not None:
            self._raise(DEMAND_ALARM, self.demand_outlook.message(), now)
        else:
            self._clear(DEMAND_ALARM, now)

    def _target(self, state: ModeState, now: datetime, snap: Snapshot, reserve: float | None) -> Target | None:
        """The mode's target (:func:`controller.targets.mode_target`, the path the offline studies take too)."""
        request = state.request
        mode = Mode.AUTO if state.mode is Mode.MONITOR_ONLY else state.mode  # monitor-only: what auto would do,
        return mode_target(                                                   # published, not written
            mode, state.reason.value, reserve_soc_pct=reserve,
            plan=self.plans.target(now, self.accounting.billed_demand_kw(now), DemandWindow(*self.demand.running(now)),
                                   self._discharge_allowed_kw(snap))
            if mode is Mode.AUTO else None,
            period=self.accounting.prices(now)["period"] if mode is Mode.TOU_RULE else "", load_kw=snap.load_kw,
            pv_kw=snap.value("pv_kw"), max_charge_kw=self.config.battery.max_charge_kw,
            manual_kw=request.setpoint_kw if mode is Mode.MANUAL and request is not None else None,
            manual_until=request.until if mode is Mode.MANUAL and request is not None else None)

    def _discharge_allowed_kw(self, snap: Snapshot) -> float:
        """What the battery may discharge now: the PCS limit, narrowed by the BMS's allowance when it reads. [kW]"""
        bms = snap.value("max_discharge_kw")
        limit = self.config.battery.max_discharge_kw
        return limit if bms is None else min(limit, bms)

    async def _write(self, decision: Decision, now: datetime) -> None:
        """Setpoints split over the units, and heartbeats, all devices at once, each write within its device's
        deadline (a slow battery never delays the PV limits); ``write_failed:<device>`` for each that failed."""
        ctl = self.config.control
        errors = await self.assets.write(decision, ctl.write_deadband_kw, ctl.pv_write_deadband_pct)
        self._set_alarms(errors, (WRITE_FAILED,), now)

    async def _remote_control(self) -> None:
        """Enter remote control on devices that just came online (at start, and after an outage), all at once.

        A sequence cut short because the device stopped answering in time leaves it offline, so the
        sequence runs again when the device is back."""

        async def enter(device: Device) -> None:
            for result in await device.enter_remote_control():
                if not result.ok:
                    log.error("device %s: remote control not entered: %s", device.name, result.detail)

        await asyncio.gather(*(enter(d) for name, d in self.devices.items()
                               if d.online and not self._online[name]))
        for name, device in self.devices.items():
            self._online[name] = device.online

    def _watch_clock(self) -> None:
        """The system clock stepped by more than a cycle (against the monotonic clock) since the previous cycle:
        alarm :data:`CLOCK_ALARM` for :data:`CLOCK_ALARM_S`, saying how far and what was done.

        Set back: the commands keep the time they had left (:meth:`Commands.clock_stepped`), and the validator's,
        the dispatcher's and the demand watch's windows the time they had watched; the accounting and the measured
        history hold their own rules (``controller.accounting``, :meth:`MeasuredHistory.add`). Set forward: the gap
        is not integrated, and commands given before it lapse by the wall clock, on the safe side (the monotonic
        clock stops in a suspend, which a step cannot be told from)."""
        wall, mono, last = self.clock.now(), self.clock.monotonic(), self._last_cycle_at
        self._last_cycle_at = (wall, mono)  # sampled together: the snapshot's time is taken before a read of any length
        if self._clock_stepped_at is not None and mono - self._clock_stepped_at >= CLOCK_ALARM_S:
            self._clock_stepped_at = None
            self._clear(CLOCK_ALARM, wall)
        if last is None:
            return
        step = wall - (last[0] + timedelta(seconds=mono - last[1]))
        if abs(step.total_seconds()) <= self.config.control.cycle_s:
            return
        if step.total_seconds() > 0:
            message = (f"the system clock was set forward by {step.total_seconds():.0f} s (to {wall.isoformat()}): "
                       "the time skipped is not counted, commands given before lapse by the wall clock")
        else:
            for component in (self.commands, self.validator, self.dispatcher, self.demand_watch):
                component.clock_stepped(step)
            message = (f"the system clock was set back by {-step.total_seconds():.0f} s (to {wall.isoformat()}): "
                       "commands keep the time they had left, that cycle's energy is not counted, the measured "
                       "history's steps from then on are measured again")
        self._clear(CLOCK_ALARM, wall)  # a second step: the alarm says the latest
        self._raise(CLOCK_ALARM, message, wall)
        self._clock_stepped_at = mono

    def _note_stuck_battery(self, trace: ValidationTrace) -> None:
        """The only battery found unchanged after its command moved (the validation stage's stuck rule) is out of
        its group as not following, until ``control.groups.retry_s`` has passed and it follows its 0 kW again
        (alarm ``unit_not_following``). Without it the safe state cleared once the battery was held at 0 kW, the
        next command found it stuck again, and the controller went between the two every 20 s, trusting the battery
        to take the PV surplus for 10 s each time."""
        group = self.assets.batteries
        if len(group.names) != 1:
            return
        for f in trace.findings:
            if f.point == "battery_kw" and f.rule == "stuck":
                group.not_following(group.names[0], f.detail, self.clock.monotonic())

    async def cycle(self) -> dict[str, Any]:
        """One control cycle; returns the published state."""
        t0 = time.perf_counter()
        snap = await self.assets.read()
        t_read = time.perf_counter()
        now = snap.ts
        self._watch_clock()
        snap, health, self.validation = self.validator.check(snap, self.assets.commanded_battery_kw(),
                                                             self.battery_health.capacity_kwh)
        self._note_stuck_battery(self.validation)
        self.battery_health.observe(snap.value("soh_pct"), self.clock.monotonic())
        self._set_alarms(health, ALARM_PREFIXES, now)
        writing = not self.modes.monitor_only
        if writing:
            await self._remote_control()
            self._took_control = True
        self.snapshot = snap
        self._account(snap, now)
        inputs = snap.dispatch_inputs()
        reserve = self.commands.reserve_pct(now)
        state = self.modes.evaluate(now, safe=bool(inputs.missing()), plan_reason=self.plans.status(now))
        target = self._target(state, now, snap, reserve)
        decision = self.dispatcher.step(inputs, target, now)
        self.decision = decision
        self._watch_demand(snap, now, target if writing else None, decision)
        t_decide = time.perf_counter()
        if writing:
            await self._write(decision, now)
        else:  # monitor-only: each unit's share is published, not written
            self.assets.split(decision)
        t_write = time.perf_counter()
        self._set_alarms(self.assets.alarms(), GROUP_ALARMS, now)
        self._set_alarms({a: _ALARM_TEXT.get(a, a) + (f" ({decision.bounds[0].note})" if decision.safe else "")
                          for a in decision.alarms}, tuple(_ALARM_TEXT), now)
        self.replanner.observe(snap, now)
        self.cycles += 1
        timing = {"read_ms": (t_read - t0) * 1e3, "decide_ms": (t_decide - t_read) * 1e3,
                  "write_ms": (t_write - t_decide) * 1e3, "cycle_ms": (t_write - t0) * 1e3}
        self.cycle_ms.append(timing["cycle_ms"])
        payload = self._state_payload(snap, state, decision, target, timing)
        self.bus.publish(STATE, payload)
        self.notify.watchdog()
        if self.clock.monotonic() - self._last_persist >= self.config.control.persist_interval_s:
            self.persist(now)
        return payload

    def _battery_energy(self) -> dict[str, Any]:
        """The state's ``battery``: the energy the battery holds (its health) and, while a unit is out of its group,
        the energy of the units in use, which plans are made for. [kWh]"""
        in_use = self.assets.batteries.in_use_energy()
        return {**self.battery_health.to_dict(), "in_use_kwh": None if in_use is None else in_use[0],
                "in_use_stored_kwh": None if in_use is None else in_use[1]}

    def _state_payload(self, snap: Snapshot, state: ModeState, decision: Decision, target: Target | None,
                       timing: dict[str, float]) -> dict[str, Any]:
        now = snap.ts
        found = self.plans.current(now)
        plan_info = None
        if found is not None:
            plan, step = found
            plan_info = {"created_at": plan.created_at.isoformat(), "source": plan.source,
                         "step_start": step.start.isoformat(), "battery_kw": step.battery_kw,
                         "grid_kw": step.grid_kw, "soc_pct": 100.0 * step.soc_kwh / plan.capacity_kwh,
                         "expires_at": plan.expires_at(self.config.planner.plan_valid_hours).isoformat(),
                         "follow": target.follow.value if target is not None and target.source is Source.PLAN
                         else None,
                         "follow_reason": target.reason if target is not None and target.source is Source.PLAN
                         else None}
        outcome, plan = self.plans.last_outcome, self.plans.plan
        solver = {"plans_made": self.plans.plans_made, "failures": self.plans.failures,
                  "last_error": self.plans.last_error.value if self.plans.last_error else None,
                  "detail": self.plans.last_detail or None,
                  "elapsed_ms": outcome.elapsed_ms if outcome else None,
                  "status": plan.solver.status if plan is not None else None,
                  "solve_ms": plan.solver.solve_ms if plan is not None else None}
        return {
            "ts": now.isoformat(), "site": self.config.site.name,
            "mode": state.mode.value, "reason": state.reason.value, "mode_since": state.since.isoformat(),
            "measurements": snap.measurements(), "load_kw": snap.load_kw,
            "groups": self.assets.group_entries(),
            "devices": self.assets.device_entries(snap),
            "setpoints": {"battery_kw": decision.battery_setpoint_kw, "pv_limit_pct": decision.pv_limit_pct,
                          "pv_limit_kw": decision.pv_limit_kw, "safe": decision.safe, "source": decision.source,
                          "follow": decision.follow, "reason": decision.reason,
                          "expected_grid_kw": decision.expected_grid_kw,
                          "bounds": [{"step": b.step, "lo_kw": b.lo_kw, "hi_kw": b.hi_kw, "note": b.note}
                                     for b in decision.bounds]},
            "operator": {"request": state.request.mode.value if state.request else None,
                         "until": state.request.until.isoformat() if state.request else None,
                         "manual_setpoint_kw": state.request.setpoint_kw if state.request else None,
                         "soc_reserve_pct": self.commands.reserve.soc_pct if self.commands.reserve else None},
            "plan": plan_info,
            "battery": self._battery_energy(),
            "tariff": self.accounting.prices(now),
            "today": self.accounting.today(now, plan),
            "month": self.accounting.month_value(now),
            "demand": {"month": self.demand.month, **self.accounting.month_peak(now),
                       "interval_avg_kw": self.demand.current_average_kw(), **self._window_fields(now),
                       "import_cap_kw": self.config.grid.import_cap_kw, **self._outlook_fields()},
            "alarms": sorted(self.alarms),
            "validation": self.validation.to_dict(),
            "solver": solver,
            "cycle": {**timing, "n": self.cycles, "bus_dropped": self.bus.dropped},
            "forecast_accuracy": self._forecast_accuracy(now),
            "forecast_sources": self.external_forecasts.status(now),
        }

    def _window_fields(self, now: datetime) -> dict[str, float]:
        """The state's ``demand`` figures of the running demand window: its length (the tariff's measure) and how
        much of it has passed, the span ``interval_avg_kw`` builds up over. [min]"""
        length_h, elapsed_h, _ = self.demand.running(now)
        return {"window_minutes": length_h * 60.0, "window_elapsed_min": elapsed_h * 60.0}

    def _outlook_fields(self) -> dict[str, float | None]:
        """The state's ``demand`` figures of the running window's outlook (None while unknown)."""
        o = self.demand_outlook
        return {"hold_kw": None if o is None else o.hold_kw,
                "window_projected_kw": None if o is None else o.projected_kw,
                "shed_to_hold_kw": None if o is None else o.shed_kw,
                "window_left_min": None if o is None else o.left_min}

    @staticmethod
    def _live_accuracy(config: SiteConfig, tariff: SiteTariff) -> tuple[LiveAccuracy, ExternalAccuracy]:
        """Accuracy of forecasters configured as the planning ones (separate instances: their caches stay the
        planner's), and of the external forecasts against them, scored on the measured history (docs/data.md,
        "Forecast accuracy", "Accuracy of external forecasts")."""
        pv = PVForecaster(config.site, config.pv, isolated=True)
        load = LoadForecaster.for_site(config.site, tariff.calendar)
        limit = DAYLIGHT_SHARE * config.pv.ac_limit_kw

        def daylight(grid: TimeGrid) -> np.ndarray:
            return pv.clear_sky_kw(grid) > limit

        step = config.planner.step_minutes
        return (LiveAccuracy(pv.forecast, load.forecast, daylight, steps=config.planner.horizon_steps,
                             step_minutes=step),
                ExternalAccuracy({"pv_kw": pv.forecast, "load_kw": load.forecast}, {"pv_kw": daylight},
                                 step_minutes=step))

    def _forecast_accuracy(self, now: datetime) -> dict | None:
        """MAE, RMSE and skill vs persistence by lead time of the live forecasters over the last 14 days, and under
        ``external`` the scores of the external forecasts received (state key ``forecast_accuracy``); at most one
        new hindcast per quantity and one external forecast are scored per cycle."""
        if self.accuracy is None or self.external_accuracy is None:
            return None
        now_ns = pd.Timestamp(now).value
        builtin_due, external_due = self.accuracy.due(now_ns), self.external_accuracy.due(now_ns)
        if builtin_due or external_due:
            pv, load = self.history.histories()
            if builtin_due:
                self.accuracy.update(now_ns, (pv.ns, pv.values), (load.ns, load.values))
            if external_due:
                figures = self.external_accuracy.update(
                    now_ns, {"pv_kw": (pv.ns, pv.values), "load_kw": (load.ns, load.values)})
                self._set_alarms(external_warnings(figures), EXTERNAL_ALARMS, now)
        if self.accuracy.result is None:
            return None
        return {**self.accuracy.result, "external": self.external_accuracy.result}

    # ------------------------------------------------------------------------------------------ planning

    async def plan_once(self, why: str) -> None:
        """One planning attempt now on the latest snapshot (the planning task calls this; tests may too)."""
        snap, now = self.snapshot, self.clock.now()
        self._read_forecast_csv(now)
        await self.replanner.attempt(why, snap, self.accounting.billed_demand_kw(now), self.demand.running(now)[2])

    def _read_forecast_csv(self, now: datetime) -> None:
        """The forecast file (``control.external_forecast_csv``) again if it changed; its alarm follows it."""
        if self.forecast_csv is None:
            return
        self.forecast_csv.poll(now)
        error = self.forecast_csv.error
        if error is None or self.alarms.get(CSV_ALARM) != error:
            self._clear(CSV_ALARM, now)
        if error is not None:
            self._raise(CSV_ALARM, error, now)

    def _planned(self, outcome: PlanOutcome, why: str, now: datetime) -> None:
        """After a planning attempt: the ``planner_failed`` alarm, or the new plan stored and published."""
        if outcome.plan is None:
            timed_out = outcome.error is Reason.SOLVER_TIMEOUT      # else the code says it: not "planner_failed: …"
            self._raise("planner_failed", f"{Reason.SOLVER_TIMEOUT.value}: {outcome.detail}" if timed_out
                        else outcome.detail, now)
            return
        self._clear("planner_failed", now)
        log.info("new plan (%s) in %.0f ms: objective %.0f", why, outcome.elapsed_ms, outcome.plan.objective.total)
        data = outcome.plan.to_dict()
        self.store.put("plan", data, now)
        self._store_health(now)
        self.bus.publish(PLAN, {**data, "reason": why})

    # ------------------------------------------------------------------------------------------ life cycle

    def stop(self) -> None:
        """Ask :meth:`run` to finish (signal handlers call this)."""
        self._stop.set()

    def _telemetry_alarm(self, code: str, active: bool, message: str) -> None:
        if active:
            self._raise(code, message, self.clock.now())
        else:
            self._clear(code, self.clock.now())

    async def start_telemetry(self) -> Telemetry:
        """Start the enabled telemetry sinks (InfluxDB, MQTT, dashboard) on this controller's bus; idempotent."""
        if self.telemetry is None:
            from controller.api.settings import RuntimeSettings

            ctx = TelemetryContext(site=self.config.site.name, timezone=self.config.site.timezone, clock=self.clock,
                                   apply=self.apply, state_dir=self.store.path.parent, currency=self.tariff.currency,
                                   on_alarm=self._telemetry_alarm, tariff=self.tariff, audit=self.audit,
                                   cycle_s=self.config.control.cycle_s,
                                   config=self.config.model_dump(mode="json"),
                                   settings=RuntimeSettings(self.commands, self.apply, self.audit.record,
                                                            self.clock.now),
                                   forecasts=self.external_forecasts)
            self.telemetry = await start_telemetry(self.config.telemetry, self.bus, ctx)
        return self.telemetry

    async def run(self, duration_s: float | None = None) -> None:
        """Run cycles until :meth:`stop` (or for ``duration_s`` site seconds), then shut down safely."""
        ctl = self.config.control
        await self.start_telemetry()
        planning = asyncio.create_task(self.replanner.run(self._stop, self.plan_once), name="planning")
        started = self.clock.monotonic()
        try:
            first = True
            while not self._stop.is_set():
                await self.cycle()
                if first:
                    self.notify.ready(f"controlling {self.config.site.name}")
                    first = False
                mono = self.clock.monotonic()
                if duration_s is not None and mono - started >= duration_s:
                    break
                next_tick = (mono // ctl.cycle_s + 1) * ctl.cycle_s
                sleeper = asyncio.ensure_future(self.clock.sleep(next_tick - mono))
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for f in (sleeper, stopper):
                    f.cancel()
        finally:
            self._stop.set()
            planning.cancel()
            await asyncio.gather(planning, return_exceptions=True)
            await self.shutdown()
            if self.telemetry is not None:
                await self.telemetry.aclose()

    @staticmethod
    async def _zero_battery(battery: Device) -> bool:
        """Write 0 kW to one battery (polling it first if it is not known to be online); True if confirmed."""
        try:
            if battery.online is not True:
                await battery.poll()
            result = await battery.write("battery_setpoint_kw", 0.0, force=True)
        except KeyError as exc:
            log.error("shutdown: 0 kW not written to %s: %s", battery.name,
                      str(exc.args[0]).removeprefix(f"{battery.name}: "))
            return False
        if not result.ok:
            log.error("shutdown: 0 kW not confirmed by %s: %s", battery.name,
                      result.detail.removeprefix(f"{battery.name}: "))
        return result.ok

    async def shutdown(self) -> None:
        """Every battery to 0 kW, remote control released (and what entering changed restored), state saved."""
        self.notify.stopping()
        now = self.clock.now()
        zeroed = not self._took_control or all(
            await asyncio.gather(*(self._zero_battery(b) for b in self.assets.of(Role.BATTERY))))
        released = True
        for device in self.devices.values() if self._took_control else ():
            if not device.has_remote_control:  # a meter: nothing was taken, nothing to hand back
                continue
            if device.online is not True:
                log.error("shutdown: %s unreachable, remote control not released", device.name)
                released = False
                continue
            for result in await device.leave_remote_control():
                if not result.ok:
                    released = False
                    log.error("shutdown: %s did not leave remote control: %s", device.name, result.detail)
        self.persist(now)
        self.store.close()
        self.audit.close()
        for device in self.devices.values():
            device.close()
        self.notify.close()
        if not self._took_control:
            log.warning("controller stopped: monitor-only, nothing was written")
        elif zeroed and released:
            log.warning("controller stopped: battery 0 kW, remote control released")
        else:
            log.error("controller stopped: battery 0 kW %s, remote control %s (the devices' own reversion "
                      "timers apply)", "confirmed" if zeroed else "NOT confirmed",
                      "released" if released else "NOT released everywhere")


_ALARM_TEXT = {"data_missing": "required measurement missing or stale; safe state",
               "import_cap_unheld": "import above the contracted capacity and the battery cannot hold it"}


def _command_name(command: Any) -> str:
    """The ``command`` of a command given as a dict or a model (``?`` when it has none)."""
    name = command.get("command") if isinstance(command, Mapping) else getattr(command, "command", None)
    return name if isinstance(name, str) else "?"

