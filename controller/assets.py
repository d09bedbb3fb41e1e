"""The site's devices as the controller sees them: every device read, one aggregate site, per-unit writes.

Each cycle :meth:`Assets.read` polls every device concurrently (``controller.snapshot.poll_devices``) and
builds the :class:`~controller.snapshot.Snapshot` the planner, dispatcher and validator work with — one
aggregate battery and one PV plant:

- the grid meter's readings as they are (its ``grid_kw`` is the site's); sub-meters (``location`` feeder, pv,
  load) are read and published per device, never used for control;
- ``battery_kw``, ``soc_pct``, ``max_charge_kw``, ``max_discharge_kw`` from the
  :class:`~controller.groups.BatteryGroup`, ``pv_kw``, ``pv_limit_pct`` (and the summed ``pv_energy_kwh``)
  from the :class:`~controller.groups.PVGroup`. A group of one passes its device's readings through, except
  that the group's limits (``max_charge_kw``, ``max_discharge_kw``; ``pv_limit_pct``) read as missing while
  its one unit is out of the group.

Every device's own readings stay in ``Snapshot.units`` for telemetry. :meth:`Assets.write` splits the dispatcher's
one decision into a setpoint per unit (the groups' split rule) and writes them all at once, each within its
device's deadline; a unit's write failure takes it out of its group and raises ``write_failed:<device>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from controller.devices import Device
from controller.dispatch import Decision
from controller.groups import BatteryGroup, Group, GroupSettings, PVGroup, out_of_group
from controller.snapshot import Snapshot, poll_devices
from drivers.config import MeterLocation
from drivers.readings import Reading, missing
from drivers.roles import CANONICAL_POINTS, Role
from ems.clock import Clock
from optimizer.site import UNIT_FIELDS, BatterySpec, BatteryUnit

SETPOINT = {Role.BATTERY: "battery_setpoint_kw", Role.PV_INVERTER: "pv_limit_pct"}
"""The point the controller writes on each controlled role."""
LIMIT_POINTS = {Role.BATTERY: ("max_charge_kw", "max_discharge_kw"), Role.PV_INVERTER: ("pv_limit_pct",)}
"""The points that read as missing while a group of one has its unit out."""
WRITE_FAILED = "write_failed:"


class Assets:
    """The devices of one site, by name, with the battery and PV groups.

    Parameters
    ----------
    devices : Mapping[Any, Device]
        Every device (the keys are not used: each device's ``config`` names it and gives its role, meter
        location, inverter rating and battery spec).
    battery : BatterySpec
        The site's battery: the spec of a battery device that gives none (a site's only battery).
    pv_ac_kw : float
        The plant's AC rating: the rating of an inverter that gives none (a site's only inverter). [kW]
    settings : GroupSettings
    clock : Clock
        Site time; its monotonic seconds time the groups' verified control.
    """

    def __init__(self, devices: Mapping[Any, Device], battery: BatterySpec, pv_ac_kw: float,
                 settings: GroupSettings, clock: Clock):
        self.devices = {d.name: d for d in devices.values()}
        self.clock = clock
        grid = [d for d in self.devices.values() if d.config.meter_location is MeterLocation.GRID]
        if len(grid) != 1:
            raise ValueError(f"exactly one grid meter is needed, found {len(grid)}")
        self.grid_meter = grid[0].name
        site_unit = BatteryUnit.model_validate(battery.model_dump(include=set(UNIT_FIELDS)))
        self.batteries = BatteryGroup({d.name: d.config.battery or site_unit for d in self.of(Role.BATTERY)},
                                      settings)
        self.pv = PVGroup({d.name: d.config.rating_kw or pv_ac_kw for d in self.of(Role.PV_INVERTER)}, settings)
        self.groups: dict[Role, Group] = {Role.BATTERY: self.batteries, Role.PV_INVERTER: self.pv}

    def of(self, role: Role) -> list[Device]:
        """The devices serving ``role``, in configuration order."""
        return [d for d in self.devices.values() if d.config.role is role]

    @property
    def battery_reversion_s(self) -> float | None:
        """The longest fallback timer of the batteries' own (``None`` if one of them has none). [s]"""
        timers = [d.reversion_s for d in self.of(Role.BATTERY)]
        return None if not timers or any(t is None for t in timers) else max(timers)  # type: ignore[type-var]

    def commanded_battery_kw(self) -> float | None:
        """The battery setpoints the units hold from their last successful writes, summed (``None`` before
        any). [kW, + discharge]"""
        held = [d.last_written(SETPOINT[Role.BATTERY]) for d in self.of(Role.BATTERY)]
        known = [v for v in held if v is not None]
        return sum(known) if known else None

    # ------------------------------------------------------------------------------------------ reading

    async def read(self) -> Snapshot:
        """Poll every device; the snapshot's ``readings`` are the site's (see the module docstring)."""
        snap = await poll_devices(list(self.devices.values()), self.clock)
        mono = self.clock.monotonic()
        units = snap.units
        readings: dict[str, Reading] = dict(units[self.grid_meter])
        for role, group in self.groups.items():
            aggregate = group.observe(units, mono, snap.device_errors)
            readings.update(self._role_readings(role, group, aggregate, units, snap))
        return Snapshot(snap.ts, MappingProxyType(readings), snap.device_ok, snap.device_errors, units)

    @staticmethod
    def _role_readings(role: Role, group: Group, aggregate: Mapping[str, float | None],
                       units: Mapping[str, Mapping[str, Reading]], snap: Snapshot) -> dict[str, Reading]:
        ts = snap.ts
        if len(group.names) == 1:
            name = group.names[0]
            out = dict(units.get(name, {}))
            state = group.units[name].state
            if not state.in_group:
                for point in LIMIT_POINTS[role]:
                    r = out.get(point)
                    if r is not None and r.ok:
                        out[point] = missing(r.unit, ts, out_of_group(name, group.kind, state.reason))
            return out
        out = {}
        why = "; ".join(f"{n}: {s.reason}" for n, s in group.states().items() if not s.in_group) or "no unit reads"
        for point, value in aggregate.items():
            unit = CANONICAL_POINTS[point].unit
            out[point] = Reading(value, unit, ts) if value is not None else missing(unit, ts, why)
        if role is Role.PV_INVERTER:
            counters = [units.get(n, {}).get("pv_energy_kwh") for n in group.names]
            if all(r is not None and r.ok for r in counters):
                out["pv_energy_kwh"] = Reading(sum(float(r.value) for r in counters), "kWh", ts)  # type: ignore[union-attr, arg-type]
        return out

    # ------------------------------------------------------------------------------------------ writing

    def split(self, decision: Decision) -> dict[Role, dict[str, float]]:
        """``decision`` as one setpoint per unit (battery kW, inverter % of its rating), by role and device name;
        the units' states (telemetry) show them too."""
        return {Role.BATTERY: self.batteries.split(decision.battery_setpoint_kw),
                Role.PV_INVERTER: self.pv.split(decision.pv_limit_pct)}

    async def write(self, decision: Decision, battery_deadband_kw: float, pv_deadband_pct: float) -> dict[str, str]:
        """Split ``decision`` over the units and write every setpoint (and every watchdog) at once; returns the
        ``write_failed:<device>`` alarms (code → message) of this cycle."""
        deadbands = {Role.BATTERY: battery_deadband_kw, Role.PV_INVERTER: pv_deadband_pct}
        jobs = [self._write(self.groups[role], name, SETPOINT[role], value, deadbands[role])
                for role, values in self.split(decision).items() for name, value in values.items()]
        results = await asyncio.gather(*jobs, *(d.heartbeat() for d in self.devices.values() if d.online is True))
        return {f"{WRITE_FAILED}{name}": message for name, message in results[:len(jobs)] if message}

    async def _write(self, group: Group, name: str, point: str, value: float,
                     deadband: float) -> tuple[str, str | None]:
        """Write one unit's setpoint; (device name, error or None). The group learns what the unit now holds."""
        device = self.devices[name]
        if device.online is not True:  # never block the cycle on connect attempts to a dead device
            return name, f"{name} unreachable: {device.last_error or 'not polled yet'}"
        try:
            result = await device.write(point, value, deadband=deadband)
        except KeyError as exc:  # SunSpec points have no address until the device has been discovered
            return name, exc.args[0]
        mono = self.clock.monotonic()
        if not result.ok:
            group.wrote(name, None, result.detail, mono)
            return name, f"{name}: {point}={value:g}: {result.detail}"
        group.wrote(name, result.value, "", mono)
        return name, None

    # ------------------------------------------------------------------------------------------ reporting

    def alarms(self) -> dict[str, str]:
        """The groups' ``unit_out:<device>`` and ``unit_not_following:<device>`` alarms (code → message)."""
        return {**self.batteries.alarms(), **self.pv.alarms()}

    def device_entries(self, snap: Snapshot) -> dict[str, dict[str, Any]]:
        """The state message's ``devices``: per device whether it answered, and for units of a group their
        setpoint, measured power and whether they are in the group (and why not); sub-meters their power."""
        out: dict[str, dict[str, Any]] = {}
        for name, device in self.devices.items():
            entry: dict[str, Any] = {"ok": snap.device_ok.get(name, False), "error": snap.device_errors.get(name),
                                     "role": device.config.role.value}
            group = self.groups.get(device.config.role)
            if group is not None:
                unit = "kW" if group is self.batteries else "%"
                entry.update(group.units[name].state.to_dict(unit))
            else:
                r = snap.units.get(name, {}).get("grid_kw")
                entry["location"] = device.config.meter_location.value  # type: ignore[union-attr]
                entry["measured_kw"] = float(r.value) if r is not None and r.ok else None  # type: ignore[arg-type]
            out[name] = entry
        return out

    def group_entries(self) -> dict[str, dict[str, Any]]:
        """The state message's ``groups``: per group whether it is healthy (every unit in it, in both directions,
        following its setpoint), its units and how many are in it now."""
        return {group.kind: {"healthy": group.healthy, "units": len(group.units),
                             "in_group": sum(s.in_group for s in group.states().values())}
                for group in (self.batteries, self.pv)}
