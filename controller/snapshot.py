"""One frozen view of the site per cycle: every device read concurrently, every point with its quality.

The cycle reads all devices at once into a :class:`Snapshot` and works only from it, so no value
changes while the limits chain runs (OpenEMS's process image). Each device's poll has its own
deadline (``drivers.device``: a poll that misses it returns every point *missing*, "no answer within
… s"), so the snapshot is ready when the slowest deadline expires at the latest and one slow device
never holds up the others' readings. A device whose poll fails, raises or misses its deadline counts
as not ok (``device_ok``, ``device_errors``) and contributes its points as *missing*; a reading older
than the device's ``max_age_s`` is *stale*. Missing is ``None``, never 0.

The site load is derived, not measured: ``load_kw = grid_kw + pv_kw + battery_kw`` (grid + import,
battery + discharge; docs/conventions.md), ``None`` if any of the three is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from controller.devices import Readable
from controller.dispatch import DispatchInputs
from drivers.config import DeviceConfig
from drivers.readings import Reading, missing
from drivers.roles import role_points
from ems.clock import Clock


@dataclass(frozen=True)
class Snapshot:
    """The site at ``ts``.

    Attributes
    ----------
    ts : datetime
        Site time the reads started (UTC).
    readings : Mapping[str, Reading]
        Canonical point name → reading, for every point of every configured device's role.
    device_ok : Mapping[str, bool]
        Device name → whether it answered this poll within its deadline (individual points may still be
        missing).
    device_errors : Mapping[str, str]
        Device name → why the poll failed (only failed devices), e.g. "no answer within 0.4 s".
    units : Mapping[str, Mapping[str, Reading]]
        Device name → its own readings (several devices may serve one role; ``readings`` holds the site's
        figures, aggregated by ``controller.assets``).
    """

    ts: datetime
    readings: Mapping[str, Reading]
    device_ok: Mapping[str, bool]
    device_errors: Mapping[str, str]
    units: Mapping[str, Mapping[str, Reading]] = field(default_factory=lambda: MappingProxyType({}))

    def value(self, name: str) -> float | None:
        """The numeric value of point ``name``, or ``None`` if missing, stale, implausible, absent or not a number."""
        r = self.readings.get(name)
        if r is None or not r.ok or isinstance(r.value, str):
            return None
        return float(r.value)

    @property
    def load_kw(self) -> float | None:
        """Site load = grid + PV + battery, ``None`` if any is missing. [kW]"""
        parts = (self.value("grid_kw"), self.value("pv_kw"), self.value("battery_kw"))
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]

    def dispatch_inputs(self) -> DispatchInputs:
        """The limits chain's inputs."""
        return DispatchInputs(
            grid_kw=self.value("grid_kw"), pv_kw=self.value("pv_kw"), battery_kw=self.value("battery_kw"),
            soc_pct=self.value("soc_pct"), bms_max_charge_kw=self.value("max_charge_kw"),
            bms_max_discharge_kw=self.value("max_discharge_kw"), pv_limit_pct=self.value("pv_limit_pct"))

    def measurements(self) -> dict[str, dict]:
        """JSON-ready ``{name: {value, unit, quality}}`` (``value`` is None unless the quality is ok)."""
        out = {}
        for name, r in self.readings.items():
            entry = {"value": r.value, "unit": r.unit, "quality": r.quality.value}
            if r.detail:
                entry["detail"] = r.detail
            out[name] = entry
        return out


def _all_missing(config: DeviceConfig, ts: datetime, detail: str) -> dict[str, Reading]:
    return {p.name: missing(p.unit, ts, detail) for p in role_points(config.role) if not p.writable}


async def poll_devices(devices: Sequence[Readable], clock: Clock) -> Snapshot:
    """Poll every device concurrently (each within its own deadline): a snapshot with every device's readings in
    ``units`` and no site-level ``readings`` yet (``controller.assets`` aggregates them)."""
    ts = clock.now()
    results = await asyncio.gather(*(d.poll() for d in devices), return_exceptions=True)
    units: dict[str, Mapping[str, Reading]] = {}
    ok: dict[str, bool] = {}
    errors: dict[str, str] = {}
    now = clock.now()
    for device, result in zip(devices, results, strict=True):
        cfg = device.config
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            ok[cfg.name] = False
            errors[cfg.name] = f"{type(result).__name__}: {result}"
            units[cfg.name] = MappingProxyType(_all_missing(cfg, ts, errors[cfg.name]))
            continue
        ok[cfg.name] = device.online is not False
        if not ok[cfg.name]:
            errors[cfg.name] = device.last_error
        units[cfg.name] = MappingProxyType({name: r.aged(now, cfg.max_age_s) for name, r in result.items()})
    return Snapshot(ts, MappingProxyType({}), MappingProxyType(ok), MappingProxyType(errors), MappingProxyType(units))


async def read_snapshot(devices: Sequence[Readable], clock: Clock) -> Snapshot:
    """Poll every device (one per role) concurrently and freeze the result, each device's points as the site's."""
    snap = await poll_devices(devices, clock)
    readings = {name: r for unit in snap.units.values() for name, r in unit.items()}
    return replace(snap, readings=MappingProxyType(readings))
