"""In-memory devices for cycle tests: the capability protocols of ``controller.devices``, no Modbus, no sleeping.

    clock = ManualClock(T0)                                  # ems.clock: moves only when told
    meter = FakeDevice.for_role(Role.METER, clock, grid_kw=300.0)
    battery = FakeDevice.for_role(Role.BATTERY, clock, soc_pct=50.0, battery_kw=0.0, follow=True)
    battery.set(max_charge_kw=0.0)                           # the BMS allows no charge now
    meter.go_offline(); meter.come_back()                    # no answer / answers again
    meter.freeze()                                           # readings keep their timestamp: stale after max_age_s
    battery.ignore_setpoints = True                          # acknowledges writes, does not follow them
    battery.writes                                           # [(site monotonic s, point, value)] actually sent

Readings are scripted (:meth:`FakeDevice.set`; ``None`` makes a point missing). With ``follow=True`` a battery's
``battery_kw`` is its last setpoint within the BMS limits it reports, and a PV inverter's ``pv_kw`` is
``min(available_kw, limit % × rated_kw)``, from the next poll on. Writes go through the same skip/re-send rule
as a Modbus device (``drivers.writes.WriteMemory``), so ``writes`` holds what a real device would have received.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from drivers.config import DeviceConfig
from drivers.readings import Reading, missing
from drivers.roles import CANONICAL_POINTS, Role
from drivers.writes import WriteMemory, WriteResult
from ems.clock import Clock

OFFLINE = "unreachable (fake device offline)"
"""The detail of every reading of an offline fake (``unreachable…`` like a Modbus device's)."""
SETPOINT = {Role.BATTERY: "battery_setpoint_kw", Role.PV_INVERTER: "pv_limit_pct"}
"""The point the controller writes on each role."""
LIMITS = {"battery_setpoint_kw": (None, None), "pv_limit_pct": (0.0, 100.0)}
"""Write limits of the setpoints (the PCS's own limit comes from the BMS readings). [point unit]"""


def device_config(role: Role, name: str | None = None, max_age_s: float = 5.0) -> DeviceConfig:
    """A device entry for ``role`` (the endpoint is never used)."""
    return DeviceConfig.model_validate({"name": name or role.value, "role": role.value, "profile": "fake",
                                        "endpoint": {"host": "fake.invalid"}, "max_age_s": max_age_s})


class FakeDevice:
    """One in-memory device: scripted readings, recorded writes, faults on demand.

    Parameters
    ----------
    config : DeviceConfig
        Name, role and ``max_age_s``.
    clock : Clock
        Site time (a ``ManualClock`` in tests).
    values : Mapping[str, float | str | None]
        Initial readings by canonical point name, in canonical units (``None``: missing).
    follow : bool
        The measured power follows the setpoint (see the module docstring).
    available_kw : float | None
        PV power available before curtailment, for a PV inverter that follows its limit; ``None``: ``pv_kw``
        stays as scripted. [kW]
    rated_kw : float
        AC rating, what 100 % of ``pv_limit_pct`` is. [kW]
    reversion_s : float | None
        The fallback timer entering remote control sets. [s]
    resend_s : float | None
        Re-send an unchanged setpoint this often. [s]
    """

    def __init__(self, config: DeviceConfig, clock: Clock, values: Mapping[str, float | str | None] | None = None,
                 *, follow: bool = False, available_kw: float | None = None, rated_kw: float = 0.0,
                 reversion_s: float | None = None, resend_s: float | None = None):
        self._config = config
        self.clock = clock
        self.follow = follow
        self.available_kw = available_kw
        self.rated_kw = rated_kw
        self._reversion_s = reversion_s
        self.values: dict[str, float | str | None] = {}
        self.offline = False
        self.ignore_setpoints = False
        """Writes are acknowledged (``ok``) but the measured power does not follow them."""
        self.writes: list[tuple[float, str, float]] = []
        """Every write actually sent: (site monotonic s, point, value)."""
        self.remote_control = False
        self.has_remote_control = True
        """Whether shutdown must release it (a real meter's profile has no remote-control sequence)."""
        self.enter_count = self.leave_count = self.heartbeats = 0
        self.polls = 0
        self.closed = False
        self._online: bool | None = None
        self._error = ""
        self._frozen: tuple[datetime, dict[str, float | str | None]] | None = None
        self._memory = WriteMemory(resend_s)
        self.set(**(values or {}))

    @classmethod
    def for_role(cls, role: Role, clock: Clock, *, name: str | None = None, max_age_s: float = 5.0,
                 **kw: object) -> FakeDevice:
        """A fake for ``role``; keyword arguments that are canonical points are its readings, the rest go to
        the constructor."""
        values = {k: v for k, v in kw.items() if k in CANONICAL_POINTS}
        rest = {k: v for k, v in kw.items() if k not in CANONICAL_POINTS}
        return cls(device_config(role, name, max_age_s), clock, values, **rest)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------ script

    def set(self, **values: float | str | None) -> None:
        """Script readings (canonical point → value in its unit; ``None``: missing from now on)."""
        for name in values:
            point = CANONICAL_POINTS.get(name)
            if point is None or point.role is not self._config.role:
                raise KeyError(f"{self.name}: {name!r} is not a canonical point of role {self._config.role}")
        self.values.update(values)

    def go_offline(self) -> None:
        """No answer from now on (polls MISSING, writes fail); what was written is forgotten, as by a real device."""
        self.offline = True
        self._memory.forget()

    def come_back(self) -> None:
        """Answer again from the next poll on."""
        self.offline = False

    def freeze(self) -> None:
        """Keep returning the current readings with the current timestamp (a device that stopped updating its
        registers but answers): stale once older than ``max_age_s``."""
        self._frozen = (self.clock.now(), dict(self.values))

    def unfreeze(self) -> None:
        self._frozen = None

    # ------------------------------------------------------------------------------------------ Readable

    @property
    def config(self) -> DeviceConfig:
        return self._config

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def online(self) -> bool | None:
        return self._online

    @property
    def last_error(self) -> str:
        return self._error

    async def poll(self) -> dict[str, Reading]:
        self.polls += 1
        now = self.clock.now()
        if self.offline:
            self._online, self._error = False, OFFLINE
            return {n: missing(CANONICAL_POINTS[n].unit, now, OFFLINE) for n in self.values}
        self._online, self._error = True, ""
        if self.follow:
            self.apply_setpoint()
        stamp, values = self._frozen if self._frozen is not None else (now, self.values)
        out = {}
        for name, value in values.items():
            unit = CANONICAL_POINTS[name].unit
            out[name] = missing(unit, stamp, "scripted missing") if value is None else Reading(value, unit, stamp)
        return out

    def apply_setpoint(self) -> None:
        """Move the measured power as a following device does: a battery to the setpoint it holds within the BMS
        limits it reports (unchanged when it holds none or ignores setpoints); a PV inverter to
        ``min(available_kw, limit % × rated_kw)`` with the limit it holds (its ``pv_limit_pct`` register keeps
        the last one it took; 100 % at first)."""
        role = self._config.role
        setpoint = None if self.ignore_setpoints or role not in SETPOINT else self.last_written(SETPOINT[role])
        if role is Role.BATTERY and setpoint is not None:
            charge, discharge = self.values.get("max_charge_kw"), self.values.get("max_discharge_kw")
            kw = setpoint
            if isinstance(discharge, float | int):
                kw = min(kw, float(discharge))
            if isinstance(charge, float | int):
                kw = max(kw, -float(charge))
            self.values["battery_kw"] = kw
        elif role is Role.PV_INVERTER and self.available_kw is not None:
            held = self.values.get("pv_limit_pct")
            pct = setpoint if setpoint is not None else float(held) if isinstance(held, float | int) else 100.0
            self.values["pv_limit_pct"] = pct
            self.values["pv_kw"] = min(self.available_kw, pct / 100.0 * self.rated_kw)

    # ------------------------------------------------------------------------------------------ SetpointWriter

    async def write(self, point: str, value: float, *, force: bool = False, deadband: float = 0.0) -> WriteResult:
        if SETPOINT.get(self._config.role) != point:
            raise KeyError(f"{self.name}: {point!r} is not a writable point of a fake {self._config.role}")
        lo, hi = LIMITS[point]
        target = float(value)
        target = max(target, lo) if lo is not None else target
        target = min(target, hi) if hi is not None else target
        clamped = target != float(value)
        now = self.clock.monotonic()
        if self.offline:
            self._memory.forget()
            return WriteResult(point, float(value), target, clamped, True, None, False, OFFLINE)
        if not self._memory.due(point, target, now, deadband=deadband, force=force):
            held = self._memory.last(point)
            assert held is not None
            return WriteResult(point, float(value), held.value, clamped, False, None, True, "unchanged, not re-sent")
        self.writes.append((now, point, target))
        self._memory.record(point, target, now)
        return WriteResult(point, float(value), target, clamped, True, None, True)

    def last_written(self, point: str) -> float | None:
        held = self._memory.last(point)
        return held.value if held is not None else None

    def sent(self, point: str) -> list[float]:
        """The values sent to ``point``, in order."""
        return [v for _, p, v in self.writes if p == point]

    # ------------------------------------------------------------------------------------------ Watchdog

    async def heartbeat(self) -> bool:
        if self.offline:
            return False
        self.heartbeats += 1
        return True

    # ------------------------------------------------------------------------------------------ RemoteControlled

    @property
    def reversion_s(self) -> float | None:
        return self._reversion_s

    async def enter_remote_control(self) -> list[WriteResult]:
        self._memory.forget()
        if self.offline:
            return [WriteResult("remote_control", 1, 1, False, True, None, False, OFFLINE)]
        self.remote_control = True
        self.enter_count += 1
        return [WriteResult("remote_control", 1, 1, False, True, None, True)]

    async def leave_remote_control(self) -> list[WriteResult]:
        if self.offline:
            return [WriteResult("remote_control", 0, 0, False, True, None, False, OFFLINE)]
        self.remote_control = False
        self.leave_count += 1
        return [WriteResult("remote_control", 0, 0, False, True, None, True)]

    def close(self) -> None:
        self.closed = True


class FakeSite:
    """A meter, a PV inverter and a battery as fakes (``devices``: what ``Controller`` takes), and a one-line plant.

    :meth:`settle` is one plant step between two cycles: the battery and the PV inverter go to the setpoints they
    hold (:meth:`FakeDevice.apply_setpoint`) and the meter closes the balance, ``grid = load − PV − battery``
    (docs/conventions.md), with a voltage that moves every step as a live grid's does. Readings can also be
    scripted directly (:meth:`read`).

    Parameters
    ----------
    clock : Clock
    pv_rated_kw : float
        The inverter's AC rating (``pv.ac_kw``). [kW]
    resend_s : float | None
        Re-send period of unchanged setpoints (``control.heartbeat_s``). [s]
    reversion_s : float | None
        The battery's own fallback timer. [s]
    max_age_s : float
        Readings older than this are stale. [s]
    """

    def __init__(self, clock: Clock, pv_rated_kw: float = 900.0, resend_s: float | None = 10.0,
                 reversion_s: float | None = 30.0, max_age_s: float = 5.0):
        self.clock = clock
        self.meter = FakeDevice(device_config(Role.METER, "grid-meter", max_age_s), clock,
                                {"grid_kw": 0.0, "voltage_l1_v": 230.0})
        self.pv = FakeDevice(device_config(Role.PV_INVERTER, "pv-inverter", max_age_s), clock,
                             {"pv_kw": 0.0, "pv_limit_pct": 100.0}, rated_kw=pv_rated_kw, resend_s=resend_s)
        self.battery = FakeDevice(device_config(Role.BATTERY, "battery", max_age_s), clock,
                                  {"battery_kw": 0.0, "soc_pct": 50.0, "max_charge_kw": 500.0,
                                   "max_discharge_kw": 500.0},
                                  resend_s=resend_s, reversion_s=reversion_s)
        self.steps = 0

    @property
    def devices(self) -> dict[Role, FakeDevice]:
        return {Role.METER: self.meter, Role.PV_INVERTER: self.pv, Role.BATTERY: self.battery}

    def read(self, **values: float | None) -> None:
        """Script the next readings by canonical point, each on the device of its role (``None``: missing; a point
        not named keeps its value)."""
        for device in self.devices.values():
            mine = {k: v for k, v in values.items() if CANONICAL_POINTS[k].role is device.config.role}
            if mine:
                device.set(**mine)

    def settle(self, load_kw: float, pv_available_kw: float) -> float:
        """One plant step at site load ``load_kw`` and available PV ``pv_available_kw`` [kW]; returns the grid
        power the meter now reads [kW, + import]."""
        self.pv.available_kw = pv_available_kw
        self.pv.apply_setpoint()
        self.battery.apply_setpoint()
        pv_kw, battery_kw = float(self.pv.values["pv_kw"] or 0.0), float(self.battery.values["battery_kw"] or 0.0)
        grid_kw = load_kw - pv_kw - battery_kw
        self.steps += 1
        self.meter.set(grid_kw=grid_kw, voltage_l1_v=230.0 + 0.1 * (self.steps % 2))
        return grid_kw
