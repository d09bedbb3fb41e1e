"""Device health for the dashboard: each device ok / stale / missing / implausible / unreachable,
from a state message's ``devices`` and the device-health alarm codes (by prefix, see docs/telemetry.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controller.groups import is_out_of_group

SEVERITY = ("ok", "stale", "implausible", "missing", "unreachable")
"""Health statuses, least to most severe: a device shows its worst."""
ALARM_STATUS = {"device_unreachable": "unreachable", "point_missing": "missing", "point_stale": "stale",
                "point_implausible": "implausible"}
"""Alarm-code prefix → the status it gives the device named after the first colon."""


def device_health(state: Mapping[str, Any], alarm_codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{device: {"status": ..., "points": [point, ...], "error": device error or None}}``.

    A device the state reports not ok is unreachable; a device named by a device-health alarm takes the
    alarm's status (``point_*:<device>:<point>`` also lists the point); devices only named in alarms appear too.
    A measurement whose quality is not ok and that no alarm names gets a row of its own, keyed by the
    point's name (the state's measurements do not say which device they came from), unless it is missing because
    its unit is out of its group of one (:func:`controller.groups.out_of_group`): then it is listed with that unit.
    """
    out: dict[str, dict[str, Any]] = {}
    devices: Mapping[str, Any] = state.get("devices") or {}
    for name, info in devices.items():
        ok = not isinstance(info, Mapping) or info.get("ok", True)
        error = info.get("error") if isinstance(info, Mapping) else None
        out[str(name)] = {"status": "ok" if ok else "unreachable", "points": [], "error": error}
    for code in alarm_codes:
        prefix, _, rest = str(code).partition(":")
        status = ALARM_STATUS.get(prefix)
        if status is None or not rest:
            continue
        device, _, point = rest.partition(":")
        entry = out.setdefault(device, {"status": "ok", "points": [], "error": None})
        if SEVERITY.index(status) > SEVERITY.index(entry["status"]):
            entry["status"] = status
        if point and point not in entry["points"]:
            entry["points"].append(point)
    named = {p for entry in out.values() for p in entry["points"]}
    measurements: Mapping[str, Any] = state.get("measurements") or {}
    for point, reading in measurements.items():
        quality = reading.get("quality", "ok") if isinstance(reading, Mapping) else "ok"
        if quality in SEVERITY and quality != "ok" and point not in named and point not in out:
            detail = str(reading.get("detail") or "")
            unit = next((d for d in out if is_out_of_group(detail, d)), None)
            if unit is not None:        # a limit of the only unit of a group, missing while the unit is out
                out[unit]["points"].append(str(point))
                continue
            out[str(point)] = {"status": quality, "points": [str(point)], "error": reading.get("detail")}
    return out
