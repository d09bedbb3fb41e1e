"""The park summary: every site's latest telemetry from the central database, and the park's totals.

Three instant queries (:class:`park.tsdb.PromQuery`) per summary, whatever the number of sites:

1. the latest ``ems_state`` fields of every site (VictoriaMetrics and Prometheus drop a series that has
   not been written for 5 minutes, so a site that stopped reporting is *not reporting*, not 0);
2. when each site last reported (``timestamp()`` of its ``alarms_active``, written every cycle);
3. the active alarms: the last transition of each ``ems_alarm`` code within ``alarm_lookback_days``;

and a fourth once per completed demand window: the sites' coincident month peak (:mod:`park.coincident`).

The InfluxDB sink writes the fields (docs/telemetry.md): powers in kW (grid + import, battery +
discharge), SOC in %, ``mode_code`` (:data:`controller.modes.MODE_CODES`), today's counters (site-local
day), what the battery saved this billing month (``month_saved``, of it ``month_demand_saved``) and the demand
figures (``demand_month_peak_kw``, ``demand_import_cap_kw``: the contracted
capacity; ``demand_month_peak_at_s``: when the month's peak was set, Unix time) and the battery's energy
(``battery_capacity_kwh``: what it holds at full SOC, nameplate × its state of health ``battery_soh_pct``). CO2
avoided today =
(PV kWh − export kWh) × the grid factor: PV used on site replaces grid energy; the park total is the sum of the
sites reporting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from controller.demand_watch import ALARM as DEMAND_ALARM
from controller.modes import MODE_CODES
from park.coincident import CoincidentPeak, CoincidentReading
from park.config import SummarySettings
from park.tsdb import PromQuery, Sample

FIELDS = {"grid_kw": "grid_kw", "pv_kw": "pv_kw", "battery_kw": "battery_kw", "load_kw": "load_kw",
          "soc_pct": "soc_pct", "mode_code": "mode_code", "setpoints_safe": "safe",
          "alarms_active": "alarms_active", "today_saved": "saved_today", "today_pv_kwh": "pv_kwh_today",
          "today_export_kwh": "export_kwh_today", "demand_month_peak_kw": "month_peak_kw",
          "demand_import_cap_kw": "import_cap_kw", "demand_month_peak_at_s": "month_peak_at_s",
          "month_saved": "saved_month", "month_demand_saved": "demand_saved_month",
          "battery_soh_pct": "soh_pct", "battery_capacity_kwh": "capacity_kwh"}
"""``ems_state`` field → key of a site in the summary."""
SUMMED = ("grid_kw", "pv_kw", "battery_kw", "load_kw", "saved_today", "saved_month", "demand_saved_month",
          "co2_avoided_kg_today", "alarms_active", "import_cap_kw", "month_peak_kw")
STORAGE = ("stored_kwh", "capacity_kwh")
"""Site keys the park total adds up over the sites that report both: the energy stored and the energy the sites'
batteries hold at full SOC."""
"""Site keys the park total adds up (over the sites that report them)."""
MODE_NAMES = {code: mode.value for mode, code in MODE_CODES.items()}


def site_matcher(sites: Iterable[str]) -> str:
    """The label matcher for ``sites`` (all sites when empty), e.g. ``site=~"a|b\\\\.c"``."""
    ids = [re.escape(s).replace("\\", "\\\\") for s in sites]
    return f'site=~"{"|".join(ids)}"' if ids else 'site=~".+"'


def queries(settings: SummarySettings) -> dict[str, str]:
    """The three PromQL expressions of a summary."""
    match = site_matcher(settings.sites)
    names = "|".join(FIELDS)
    return {"state": f'{{__name__=~"ems_state_({names})",{match}}}',
            "updated": f"timestamp(ems_state_alarms_active{{{match}}})",
            "alarms": f"last_over_time(ems_alarm_active{{{match}}}[{settings.alarm_lookback_days}d]) > 0"}


def coincident_peak(settings: SummarySettings) -> CoincidentPeak:
    """The coincident month peak of the settings' sites (keep one per app: it caches between windows)."""
    return CoincidentPeak(site_matcher(settings.sites), settings.timezone, settings.demand_window_minutes)


def read_summary(client: PromQuery, settings: SummarySettings, now: datetime,
                 coincident: CoincidentPeak) -> dict[str, Any]:
    """Query the database and assemble the summary (blocking; raises ``park.tsdb.TsdbError``); ``coincident``:
    the app's :func:`coincident_peak`, kept between summaries."""
    exprs = queries(settings)
    reading = coincident.read(client, now)
    return assemble(settings, client.instant(exprs["state"]), client.instant(exprs["updated"]),
                    client.instant(exprs["alarms"]), now, reading)


def assemble(settings: SummarySettings, state: list[Sample], updated: list[Sample], alarms: list[Sample],
             now: datetime, coincident: CoincidentReading | None = None) -> dict[str, Any]:
    """The summary from the query results (pure).

    Returns ``{park, timezone, currency, grid_factor_t_per_mwh, generated_at, sites: [...], totals,
    coincident_peak}``; ``coincident_peak`` is ``{month, peak_kw, peak_at, through, window_minutes}``
    (:class:`park.coincident.CoincidentReading`) or None; ``totals`` adds up the sites reporting (its
    ``month_peak_kw`` is the sum of their own peaks, against which the coincident peak shows their diversity;
    ``stored_kwh`` and ``capacity_kwh`` add up the sites that report both, ``storage_sites`` counts them;
    ``shedding`` counts the sites asked to shed load now, alarm ``demand_peak_rising``); each site ``{site,
    reporting, updated, mode, grid_kw, pv_kw, battery_kw, load_kw [kW], soc_pct [%], soh_pct (the battery's state of
    health) [%], capacity_kwh (the energy it holds at full SOC), stored_kwh (SOC × that) [kWh], safe, alarms_active,
    alarms [codes], saved_today, saved_month, demand_saved_month (of it the demand charge) [currency],
    pv_kwh_today, export_kwh_today [kWh], co2_avoided_kg_today [kg], month_peak_kw, import_cap_kw [kW],
    peak_of_cap_pct [%], month_peak_at (UTC ISO 8601 start of the demand interval that set the month's peak),
    park_peak_share_kw (its average grid power in the window that set the coincident peak) [kW]}``; a value the
    site did not report is ``None``.
    """
    values: dict[str, dict[str, float | None]] = {}
    for sample in state:
        site, field = sample.labels.get("site"), sample.labels.get("__name__", "").removeprefix("ems_state_")
        if site and field in FIELDS:
            values.setdefault(site, {})[FIELDS[field]] = sample.value
    last = {s.labels["site"]: s.value for s in updated if s.labels.get("site")}
    active: dict[str, list[str]] = {}
    for sample in alarms:
        if sample.labels.get("site") and sample.labels.get("code"):
            active.setdefault(sample.labels["site"], []).append(sample.labels["code"])
    ids = list(settings.sites) or sorted(set(values) | set(last))
    shares = coincident.shares_kw if coincident is not None else {}
    sites = [{**_site(site, values.get(site), last.get(site), sorted(active.get(site, [])),
                      settings.grid_factor_t_per_mwh), "park_peak_share_kw": shares.get(site)} for site in ids]
    return {"park": settings.park, "timezone": settings.timezone, "currency": settings.currency,
            "grid_factor_t_per_mwh": settings.grid_factor_t_per_mwh, "generated_at": now.isoformat(),
            "sites": sites, "totals": _totals(sites),
            "coincident_peak": None if coincident is None else {
                "month": coincident.month, "peak_kw": coincident.peak_kw, "peak_at": coincident.peak_at,
                "through": coincident.through, "window_minutes": coincident.window_minutes}}


def _site(site: str, values: dict[str, float | None] | None, updated_s: float | None, alarms: list[str],
          grid_factor: float) -> dict[str, Any]:
    v = dict(values or {})
    code = v.pop("mode_code", None)
    safe = v.get("safe")
    pv, export = v.get("pv_kwh_today"), v.get("export_kwh_today")
    peak, cap = v.get("month_peak_kw"), v.get("import_cap_kw")
    soc, energy = v.get("soc_pct"), v.get("capacity_kwh")
    peak_at = v.get("month_peak_at_s") if peak is not None else None
    return {
        "site": site, "reporting": values is not None,
        "updated": datetime.fromtimestamp(updated_s, UTC).isoformat() if updated_s is not None else None,
        "mode": MODE_NAMES.get(round(code)) if code is not None else None,
        **{key: v.get(key) for key in ("grid_kw", "pv_kw", "battery_kw", "load_kw", "soc_pct", "soh_pct",
                                       "capacity_kwh")},
        "stored_kwh": soc * energy / 100.0 if soc is not None and energy is not None else None,
        "safe": bool(safe) if safe is not None else None,
        "alarms_active": round(v["alarms_active"]) if v.get("alarms_active") is not None else None,
        "alarms": alarms,
        "saved_today": v.get("saved_today"), "saved_month": v.get("saved_month"),
        "demand_saved_month": v.get("demand_saved_month"), "pv_kwh_today": pv, "export_kwh_today": export,
        "co2_avoided_kg_today": (pv - export) * grid_factor if pv is not None and export is not None else None,
        "month_peak_kw": peak, "import_cap_kw": cap,
        "peak_of_cap_pct": 100.0 * peak / cap if peak is not None and cap else None,
        "month_peak_at": datetime.fromtimestamp(peak_at, UTC).isoformat() if peak_at is not None else None,
    }


def _totals(sites: list[dict[str, Any]]) -> dict[str, Any]:
    reporting = [s for s in sites if s["reporting"]]
    totals: dict[str, Any] = {"sites": len(sites), "reporting": len(reporting),
                              "safe": sum(1 for s in reporting if s["safe"]),
                              "over_cap": sum(1 for s in reporting if (s["peak_of_cap_pct"] or 0.0) > 100.0),
                              "shedding": sum(1 for s in reporting if DEMAND_ALARM in s["alarms"])}
    for key in SUMMED:
        present = [s[key] for s in reporting if s[key] is not None]
        totals[key] = sum(present) if present else None
    storing = [s for s in reporting if all(s[key] is not None for key in STORAGE)]
    totals["storage_sites"] = len(storing)
    for key in STORAGE:
        totals[key] = sum(s[key] for s in storing) if storing else None
    return totals
