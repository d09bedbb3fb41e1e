"""Canonical point names per device role: the contract between device profiles and the controller.

Profiles map registers to these names (docs/architecture.md, "Canonical point names"); the controller
only knows these names. Units and signs follow docs/conventions.md: grid power + import, battery
power + discharge, PV power ≥ 0. A profile point with a canonical name must carry the canonical unit
(checked when a profile is loaded), which catches W-vs-kW scaling mistakes before a device is polled.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    METER = "meter"
    PV_INVERTER = "pv_inverter"
    BATTERY = "battery"


@dataclass(frozen=True)
class CanonicalPoint:
    """One canonical point: its role, unit after scaling, whether the controller writes it, and its meaning."""

    name: str
    role: Role
    unit: str
    writable: bool
    description: str


def _p(name: str, role: Role, unit: str, description: str, writable: bool = False) -> CanonicalPoint:
    return CanonicalPoint(name, role, unit, writable, description)


_M, _PV, _B = Role.METER, Role.PV_INVERTER, Role.BATTERY

CANONICAL_POINTS: dict[str, CanonicalPoint] = {p.name: p for p in (
    _p("grid_kw", _M, "kW", "total active power at the point of connection, + import"),
    _p("grid_l1_kw", _M, "kW", "phase L1 active power, + import"),
    _p("grid_l2_kw", _M, "kW", "phase L2 active power, + import"),
    _p("grid_l3_kw", _M, "kW", "phase L3 active power, + import"),
    _p("voltage_l1_v", _M, "V", "phase L1 voltage (line to neutral)"),
    _p("voltage_l2_v", _M, "V", "phase L2 voltage (line to neutral)"),
    _p("voltage_l3_v", _M, "V", "phase L3 voltage (line to neutral)"),
    _p("frequency_hz", _M, "Hz", "grid frequency"),
    _p("import_kwh", _M, "kWh", "energy imported from the grid (counter)"),
    _p("export_kwh", _M, "kWh", "energy exported to the grid (counter)"),
    _p("pv_kw", _PV, "kW", "PV AC (or DC for hybrids) power, ≥ 0"),
    _p("pv_energy_kwh", _PV, "kWh", "PV energy produced (counter)"),
    _p("pv_state", _PV, "", "inverter operating state (device code)"),
    _p("pv_rated_kw", _PV, "kW", "rated AC power"),
    _p("pv_limit_pct", _PV, "%", "active power limit, % of rated", writable=True),
    _p("soc_pct", _B, "%", "state of charge, % of usable capacity"),
    _p("soh_pct", _B, "%", "state of health"),
    _p("battery_kw", _B, "kW", "battery power, + discharge"),
    _p("battery_voltage_v", _B, "V", "battery DC voltage"),
    _p("battery_current_a", _B, "A", "battery DC current, + discharge"),
    _p("battery_temperature_c", _B, "degC", "battery temperature"),
    _p("max_charge_kw", _B, "kW", "charge power the BMS allows now, ≥ 0"),
    _p("max_discharge_kw", _B, "kW", "discharge power the BMS allows now, ≥ 0"),
    _p("battery_alarm", _B, "", "alarm/fault code or bit field, 0 = none"),
    _p("battery_warning", _B, "", "warning bit field, 0 = none (shown; never takes the unit out)"),
    _p("battery_setpoint_kw", _B, "kW", "battery power setpoint, + discharge", writable=True),
)}


def role_points(role: Role | str) -> list[CanonicalPoint]:
    """The canonical points of ``role``, in table order."""
    r = Role(role)
    return [p for p in CANONICAL_POINTS.values() if p.role is r]
