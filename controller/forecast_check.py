"""``ems forecast check``: would the controller take this forecast file, and what does it say?

A commissioning tool for a forecast feed (a weather service's export, the plant's own forecaster): the file — the
JSON form of docs/data.md "External forecasts" or its CSV form — goes through the controller's own intake
(:class:`optimizer.external_forecast.ExternalForecasts`, with the site file's PV AC limit), so a file this
accepts is one the REST API, the MQTT topic and ``control.external_forecast_csv`` accept, and a refusal names the
same field or CSV line. An accepted forecast is summarised in the site's local time: its span, step, validity,
and per quantity the range, the energy per local day and whether it carries a P10/P90 band.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from controller.forecast_csv import MAX_FILE_BYTES
from optimizer.external_forecast import (
    BANDS,
    DEFAULT_VALID_HOURS,
    ExternalForecast,
    ExternalForecasts,
    ForecastInputError,
    csv_payload,
)
from optimizer.forecast import DAYLIGHT_SHARE
from optimizer.site import PVSpec, SiteInfo

#: A step is night when its clear-sky power is below this share of the AC limit. [-]
NIGHT_SHARE = 0.01
#: Largest time shift :func:`pv_warnings` looks for. [h]
MAX_SHIFT_H = 12
#: How much better (in correlation) a shifted clear-sky day must fit for a warning. [-]
SHIFT_MARGIN = 0.1


def check_forecast_file(path: Path, site: SiteInfo, pv: PVSpec, *, source: str | None = None,
                        issued_at: datetime | None = None, valid_hours: float | None = None,
                        now: datetime | None = None) -> tuple[bool, list[str]]:
    """Validate a forecast file as the controller of ``site`` with PV system ``pv`` would at ``now`` (default: the
    wall clock, UTC).

    ``source``, ``issued_at`` and ``valid_hours`` are what a CSV file does not carry (defaults: ``csv``, the file's
    modification time as the controller takes it, 6 h); for a JSON file they override its own fields when given.
    Returns ``(accepted, lines)``: the summary and its warnings (:func:`pv_warnings`), or the reason it was refused.
    """
    now = now or datetime.now(UTC)
    try:
        stat = path.stat()
        if stat.st_size > MAX_FILE_BYTES:
            return False, [f"{path}: {stat.st_size} bytes, more than {MAX_FILE_BYTES}"]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return False, [f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})"]
    try:
        if path.suffix.lower() == ".json":
            payload = json.loads(text)
            if isinstance(payload, dict):
                given = {"source": source, "valid_hours": valid_hours,
                         "issued_at": None if issued_at is None else issued_at.isoformat()}
                payload.update({key: value for key, value in given.items() if value is not None})
        else:
            issued = issued_at or min(datetime.fromtimestamp(stat.st_mtime, UTC), now)  # as ForecastCsvFile does
            payload = csv_payload(text, source=source or "csv", issued_at=issued.isoformat(),
                                  valid_hours=DEFAULT_VALID_HOURS if valid_hours is None else valid_hours)
    except json.JSONDecodeError as exc:
        return False, [f"{path}: not JSON: {exc}"]
    except ForecastInputError as exc:
        return False, [f"{path}: {exc}"]
    accepted: list[ExternalForecast] = []
    result = ExternalForecasts(pv_limit_kw=pv.ac_limit_kw, on_accept=accepted.append).submit(payload, now)
    if not result.accepted:
        return False, [f"{path}: {result.error}"]
    forecast = accepted[0]
    return True, summary(forecast, ZoneInfo(site.timezone), now) + [f"warning: {w}" for w in pv_warnings(forecast,
                                                                                                     site, pv)]


def pv_warnings(forecast: ExternalForecast, site: SiteInfo, pv: PVSpec) -> list[str]:
    """What looks wrong in a PV forecast against the site's clear-sky power (:func:`optimizer.solar.clear_sky_pv_kw`),
    though the intake takes it: PV at night (clear sky below :data:`NIGHT_SHARE` of the AC limit, forecast above
    :data:`DAYLIGHT_SHARE` of it), and a forecast whose shape matches the clear-sky day best shifted by whole hours
    (the commonest mistake of a feed: local time sent as UTC, or the offset applied twice)."""
    if "pv_kw" not in forecast.values:
        return []
    from optimizer.solar import clear_sky_pv_kw

    values = forecast.values["pv_kw"]
    step_h = forecast.step_minutes / 60
    limit = pv.ac_limit_kw
    starts = pd.date_range(forecast.start, periods=len(values), freq=f"{forecast.step_minutes}min")
    out = []
    clear = clear_sky_pv_kw(starts, step_h, site, pv)
    night = (clear < NIGHT_SHARE * limit) & (values > DAYLIGHT_SHARE * limit)
    if night.any():
        first = starts[int(np.flatnonzero(night)[0])].tz_convert(ZoneInfo(site.timezone))
        out.append(f"pv_kw above {DAYLIGHT_SHARE * limit:.0f} kW at night on {int(night.sum())} step(s), the first at "
                   f"{first:%Y-%m-%d %H:%M %Z}: are the timestamps' UTC offsets right?")
    per_hour = round(1 / step_h)
    if values.max() > DAYLIGHT_SHARE * limit and step_h <= 1 and len(values) * step_h >= 12:
        # the clear-sky power around the forecast's span, shifted by whole hours, against the forecast
        pad = MAX_SHIFT_H * per_hour
        wide = pd.date_range(starts[0] - pd.Timedelta(hours=MAX_SHIFT_H), periods=len(values) + 2 * pad,
                             freq=f"{forecast.step_minutes}min")
        sky = clear_sky_pv_kw(wide, step_h, site, pv)
        shifts = range(-MAX_SHIFT_H, MAX_SHIFT_H + 1)
        fit = [_correlation(values, sky[pad - h * per_hour: pad - h * per_hour + len(values)]) for h in shifts]
        best = int(np.nanargmax(fit))
        if shifts[best] != 0 and fit[best] - fit[MAX_SHIFT_H] > SHIFT_MARGIN:
            out.append(f"pv_kw follows the clear-sky day best shifted {shifts[best]:+d} h (correlation "
                       f"{fit[best]:.2f} against {fit[MAX_SHIFT_H]:.2f} as sent): are the timestamps' UTC offsets "
                       f"right?")
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def summary(forecast: ExternalForecast, zone: ZoneInfo, now: datetime) -> list[str]:
    """What an accepted forecast holds, in local time ``zone``: lines for a person."""
    def local(when: datetime) -> str:
        return when.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

    steps = len(forecast.values[forecast.quantities[0]])
    left = (forecast.expires_at - now).total_seconds() / 3600
    lines = [f"accepted: source {forecast.source}, {steps} steps of {forecast.step_minutes} min from "
             f"{local(forecast.start)} to {local(forecast.end)}",
             f"issued {local(forecast.issued_at)}, valid until {local(forecast.expires_at)} ({left:.1f} h left)"]
    starts = pd.date_range(forecast.start, periods=steps, freq=f"{forecast.step_minutes}min").tz_convert(zone)
    step_h = forecast.step_minutes / 60
    for name in forecast.quantities:
        values = forecast.values[name]
        band = "with P10/P90 band" if forecast.has_band(name) else "no band"
        lines.append(f"{name}: {values.min():.1f}–{values.max():.1f} kW, mean {values.mean():.1f} kW, {band}")
        if forecast.has_band(name):
            low, high = (forecast.values[field] for field in BANDS[name])
            lines.append(f"  band width P90 − P10: mean {np.mean(high - low):.1f} kW, max {np.max(high - low):.1f} kW")
        days = pd.Series(values * step_h, index=starts).groupby(starts.date).agg(["sum", "count"])
        for day, row in days.iterrows():
            part = "" if row["count"] * step_h >= 24 else f" (part: {row['count'] * step_h:g} h)"
            lines.append(f"  {day}: {row['sum']:.0f} kWh{part}")
    return lines
