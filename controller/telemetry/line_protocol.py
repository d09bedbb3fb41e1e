"""InfluxDB line protocol: pure encoders from the bus messages (schema in docs/telemetry.md).

``state_lines`` / ``plan_lines`` / ``alarm_lines`` / ``stats_line`` turn one message into lines;
``accuracy_lines`` the forecast accuracy a state message carries. Every
number is written as a float so a field never changes type (InfluxDB rejects type conflicts with
HTTP 400).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from controller.modes import MODE_CODES, Mode
from controller.telemetry.outbox import OutboxStats

STRING_FIELDS = frozenset({"mode", "reason", "period", "source", "follow", "follow_reason", "request",
                           "month_peak_period"})
"""Flattened state keys written as string fields; every other string is left out (type stability)."""

POWER_FLOW_POINTS = ("pv_kw", "grid_kw", "battery_kw", "soc_pct")
"""Measurements copied into ``ems_state`` (when OK) so one measurement holds the power flows."""


def _escape_measurement(name: str) -> str:
    return name.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_key(key: str) -> str:
    """Tag keys, tag values and field keys."""
    return (key.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
            .replace("\n", "\\n"))


def _field_value(value: float | str) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return repr(float(value))


def encode_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, float | str], ts_ms: int) -> str | None:
    """One line of InfluxDB line protocol (``None`` when there is no field to write).

    Parameters
    ----------
    tags : mapping
        Empty tag values are left out (InfluxDB rejects them).
    fields : mapping
        Floats (NaN and infinities are left out) or strings.
    ts_ms : int
        Timestamp, milliseconds since the Unix epoch (UTC). [ms]
    """
    parts = [f"{_escape_key(k)}={_field_value(v)}" for k, v in fields.items()
             if isinstance(v, str) or math.isfinite(v)]
    if not parts:
        return None
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(tags.items()) if v)
    return f"{_escape_measurement(measurement)}{tag_text} {','.join(parts)} {ts_ms}"


def to_ms(ts: str | datetime) -> int:
    """An aware timestamp (datetime or ISO 8601 text) as milliseconds since the epoch. [ms]"""
    when = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    if when.tzinfo is None:
        raise ValueError(f"naive timestamp {ts!r}: timestamps must carry their UTC offset")
    return round(when.timestamp() * 1000)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, float | str]) -> None:
    """Numeric and boolean leaves of nested dicts as ``a_b_c`` float fields; strings only for the keys of
    ``STRING_FIELDS``; lists (bounds, alarms) and ``None`` are left out."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, f"{name}_", out)
        elif (number := _number(value)) is not None:
            out[name] = number
        elif isinstance(value, str) and (name in STRING_FIELDS or key in STRING_FIELDS):
            out[name] = value


def state_lines(site: str, state: Mapping[str, Any]) -> list[str]:
    """A cycle's ``state`` message as ``ems_state``, ``ems_measurement`` and ``ems_quality`` lines.

    ``ems_state`` also carries ``mode_code`` (:data:`controller.modes.MODE_CODES`: the mode as a number,
    for databases that drop string fields), ``alarms_active`` (how many alarms are active) and
    ``demand_month_peak_at_s`` (when the month's peak was set, ``demand.month_peak_at`` as Unix time [s], absent
    while the month has none)."""
    ts_ms = to_ms(state["ts"])
    tags = {"site": site}
    measurements: Mapping[str, Any] = state.get("measurements") or {}
    values: dict[str, float | str] = {}
    qualities: dict[str, float | str] = {}
    for name, reading in measurements.items():
        quality = reading.get("quality", "ok")
        value = reading.get("value")
        if quality == "ok" and (number := _number(value)) is not None:
            values[name] = number
        elif quality != "ok":
            qualities[name] = str(quality)
    fields: dict[str, float | str] = {k: values[k] for k in POWER_FLOW_POINTS if k in values}
    _flatten({k: v for k, v in state.items() if k not in ("ts", "site", "measurements", "alarms")}, "", fields)
    peak_at = (state.get("demand") or {}).get("month_peak_at")
    if isinstance(peak_at, str):
        fields["demand_month_peak_at_s"] = to_ms(peak_at) / 1000
    if state.get("mode") in set(Mode):
        fields["mode_code"] = float(MODE_CODES[Mode(state["mode"])])
    alarms = state.get("alarms")
    if isinstance(alarms, list | tuple):
        fields["alarms_active"] = float(len(alarms))
    lines = [encode_line("ems_state", tags, fields, ts_ms), encode_line("ems_measurement", tags, values, ts_ms),
             encode_line("ems_quality", tags, qualities, ts_ms)]
    return [line for line in lines if line]


PLAN_STEP_SERIES = ("duration_h", "battery_kw", "charge_kw", "discharge_kw", "grid_kw", "import_kw", "export_kw",
                    "pv_kw", "curtail_kw", "load_kw", "import_price", "export_price")
"""Per-step plan series written at the step's start (``optimizer.plan.SERIES`` minus ``soc_kwh``)."""


def plan_lines(site: str, plan: Mapping[str, Any]) -> list[str]:
    """A ``plan`` message (``Plan.to_dict()``, columnar) as ``ems_plan`` lines.

    Each step's powers and prices are stamped with its start; the SOC is stamped with the instant it
    refers to (``soc0_kwh`` at the first start, each step's ``soc_kwh`` at its end), as ``soc_kwh``
    and ``soc_pct``. A new plan overwrites the previous one where they overlap (same series and
    timestamp), so the stored plan is always the latest one. Plan-level numbers (objective terms,
    solver times) go to one ``ems_plan_info`` line at ``created_at``.
    """
    tags = {"site": site}
    starts = [to_ms(s) for s in plan["starts"]]
    capacity_kwh = _number(plan.get("capacity_kwh")) or 0.0
    periods = plan.get("period") or [None] * len(starts)
    soc_at: dict[int, float] = {}
    if (soc0 := _number(plan.get("soc0_kwh"))) is not None and starts:
        soc_at[starts[0]] = soc0
    lines = []
    for i, start_ms in enumerate(starts):
        fields: dict[str, float | str] = {}
        for name in PLAN_STEP_SERIES:
            if name in plan and (value := _number(plan[name][i])) is not None:
                fields[name] = value
        if periods[i]:
            fields["period"] = str(periods[i])
        if "duration_h" in fields and (soc := _number(plan["soc_kwh"][i])) is not None:
            soc_at[start_ms + round(float(fields["duration_h"]) * 3_600_000)] = soc
        lines.append(encode_line("ems_plan", tags, fields, start_ms))
    for ts_ms, soc_kwh in sorted(soc_at.items()):
        soc_fields = {"soc_kwh": soc_kwh}
        if capacity_kwh > 0:
            soc_fields["soc_pct"] = 100.0 * soc_kwh / capacity_kwh
        lines.append(encode_line("ems_plan", tags, soc_fields, ts_ms))
    info: dict[str, float | str] = {}
    _flatten({k: plan[k] for k in ("objective", "solver", "soc0_kwh", "capacity_kwh") if k in plan}, "", info)
    if "created_at" in plan:
        lines.append(encode_line("ems_plan_info", tags, info, to_ms(plan["created_at"])))
    return [line for line in lines if line]


ACCURACY_FIELDS = ("n", "mae_kw", "rmse_kw", "bias_kw", "persistence_mae_kw", "persistence_rmse_kw", "skill",
                   "builtin_mae_kw", "skill_vs_builtin", "band_n", "band_coverage", "below_p10", "above_p90")
"""Per-lead figures of the forecast accuracy written to ``ems_forecast_accuracy`` (those a model reports)."""


def accuracy_lines(site: str, accuracy: Mapping[str, Any], ts: str | datetime) -> list[str]:
    """The state's ``forecast_accuracy`` as ``ems_forecast_accuracy`` lines at ``ts``: one per quantity, source and
    lead bucket, tags ``site``, ``quantity`` (``pv``, ``load``), ``source`` (``builtin`` for the built-in models'
    hindcasts, the sender's name for a forecast from outside) and ``lead`` (``1-6h``), fields
    :data:`ACCURACY_FIELDS` as far as given (None is left out) plus ``issues`` and ``window_days``, and for a
    forecast from outside ``band_scale_p10`` / ``band_scale_p90``."""
    ts_ms = to_ms(ts)
    lines = []

    def add(quantity: str, source: str, figures: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        for lead in figures.get("by_lead") or []:
            fields = {name: value for name in ACCURACY_FIELDS if (value := _number(lead.get(name))) is not None}
            fields.update({name: value for name, raw in extra.items() if (value := _number(raw)) is not None})
            tags = {"site": site, "quantity": quantity, "source": source, "lead": str(lead["lead"]).replace(" ", "")}
            lines.append(encode_line("ems_forecast_accuracy", tags, fields, ts_ms))

    window = accuracy.get("window_days")
    for quantity in ("pv", "load"):
        if isinstance(builtin := accuracy.get(quantity), Mapping):
            add(quantity, "builtin", builtin, {"issues": builtin.get("issues"), "window_days": window})
    external = accuracy.get("external") or {}
    for quantity in ("pv", "load"):
        for figures in external.get(quantity) or []:
            add(quantity, str(figures["source"]), figures, {
                "issues": figures.get("issues"), "window_days": external.get("window_days"),
                "band_scale_p10": figures.get("band_scale_p10"), "band_scale_p90": figures.get("band_scale_p90")})
    return [line for line in lines if line]


def alarm_lines(site: str, alarm: Mapping[str, Any]) -> list[str]:
    """An ``alarm`` transition as one ``ems_alarm`` line: tags code and severity, fields active and message."""
    code = str(alarm.get("code") or alarm.get("name") or alarm.get("id") or "unknown")
    active = alarm.get("active")
    if active is None:
        active = str(alarm.get("state", "")).lower() in ("raised", "active", "on")
    fields: dict[str, float | str] = {"active": 1.0 if active else 0.0}
    if alarm.get("message"):
        fields["message"] = str(alarm["message"])
    tags = {"site": site, "code": code, "severity": str(alarm.get("severity") or "")}
    line = encode_line("ems_alarm", tags, fields, to_ms(alarm["ts"]))
    return [line] if line else []


def stats_line(site: str, stats: OutboxStats, pending: int, ts: datetime) -> str:
    """Self-monitoring: outbox depth, points waiting in memory, and lifetime counters (``ems_telemetry``)."""
    line = encode_line("ems_telemetry", {"site": site}, {
        "outbox_depth": float(stats.depth), "pending": float(pending), "dropped_total": float(stats.dropped_total),
        "quarantined_total": float(stats.quarantined_total), "sent_total": float(stats.sent_total)}, to_ms(ts))
    return line or ""
