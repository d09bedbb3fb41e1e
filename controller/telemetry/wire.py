"""The wire formats the controller speaks, defined once as pydantic models; the JSON Schemas are generated.

* commands: the models of :mod:`controller.commands` (one per command) plus the envelope every remote
  command may carry (:class:`Envelope`: a correlation ``id`` and the time ``ts`` it was issued); the
  command's name is the topic's last level, not a field;
* :class:`CommandResultMessage`: the answer to every command (``cmd/<name>/result``, the dashboard's and
  the REST API's command responses);
* :class:`StateMessage`: the cycle state (``ems/<site>/state``, the dashboard's ``state`` events), built by
  ``Controller._state_payload``;
* :class:`ForecastMessage` and :class:`ForecastResultMessage`: a forecast from outside (``ems/<site>/forecast``,
  ``POST /api/v1/forecasts``) and its answer; the checks are :func:`optimizer.external_forecast.parse_forecast`.

``controller/telemetry/schemas/cmd_<name>.json``, ``cmd_result.json``, ``state.json``, ``forecast.json`` and
``forecast_result.json`` are generated
from these models and committed (for consumers that read them without Python); a test checks that the
committed files are what the models generate. After changing a model::

    python -m controller.telemetry.wire --write      # rewrite the schema files
    python -m controller.telemetry.wire --check      # exit 1 if a committed file differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from controller.commands import COMMAND_MODELS
from optimizer.external_forecast import DEFAULT_VALID_HOURS, MAX_HORIZON_H, MAX_VALID_HOURS

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE = "https://pv-battery-ems.example/schemas/"

Absent = SkipJsonSchema[None]
"""A field that may be left out but is never ``null`` on the wire (``x: T | Absent = None``)."""


class Envelope(BaseModel):
    """What any remote command may carry besides its own fields (the intake reads it, ``apply`` never sees it)."""

    model_config = ConfigDict(extra="forbid")

    id: str | Absent = Field(None, max_length=64, description="Correlation id, echoed in the result")
    ts: AwareDatetime | Absent = Field(
        None, description="When the command was issued (ISO 8601 with offset); with ttl_s, a command older than "
                          "its TTL is rejected as expired")


class CommandResultMessage(BaseModel):
    """Payload of ems/<site>/cmd/<name>/result (not retained), one per command received; also the body of the
    dashboard's and the REST API's command answers."""

    model_config = ConfigDict(extra="forbid", title="Command result")

    command: str = Field(description="The command's name as received")
    id: str | None = Field(None, description="The command's correlation id, null when it had none")
    accepted: bool
    reason: str = Field(description="Why it was accepted or rejected")
    ts: AwareDatetime = Field(description="Controller site time (UTC)")
    site: str | Absent = Field(None, description="Site id of the controller that answered")


# ------------------------------------------------------------------------------------------ state


class _Part(BaseModel):
    """A part of the state message: fields may be added in later versions (consumers ignore unknown ones)."""

    model_config = ConfigDict(extra="allow")


Number = float
OptionalNumber = float | None


class Reading(_Part):
    value: float | str | None = Field(description="null unless quality is ok")
    unit: str
    quality: Literal["ok", "stale", "missing", "implausible"]
    detail: str | Absent = Field(None, description="why the quality is not ok")


class DeviceStatus(_Part):
    ok: bool = Field(description="answered this cycle")
    error: str | None = Field(description="why not, null when it answered")
    role: Literal["meter", "pv_inverter", "battery"] | Absent = None
    location: Literal["grid", "feeder", "pv", "load"] | Absent = Field(None, description="meters: where it measures")
    in_group: bool | Absent = Field(None, description="batteries and inverters: in its group (healthy, following)")
    reason: str | Absent | None = Field(None, description="why the unit is out of its group (or out in one direction)")
    measured_kw: OptionalNumber | Absent = Field(
        None, description="[kW] the device's measured power (battery + discharge, PV ≥ 0, meter + import)")
    setpoint: OptionalNumber | Absent = Field(
        None, description="the unit's share of the decision: battery [kW, + discharge], inverter [% of its rating]")
    setpoint_unit: Literal["kW", "%"] | Absent = None
    soc_pct: OptionalNumber | Absent = Field(None, description="[%] batteries: the unit's own SOC")
    soh_pct: Number | Absent = Field(None, description="[%] batteries: the last state of health the unit reported "
                                                       "that planning uses (50–100 %); absent before one")


class GroupStatus(_Part):
    healthy: bool = Field(description="every unit in the group, in both directions, following its setpoint")
    units: int = Field(description="units of the group")
    in_group: int = Field(description="units in the group now")


class Bound(_Part):
    step: str = Field(description="limits-chain step")
    lo_kw: Number = Field(description="[kW] lowest battery power allowed after the step")
    hi_kw: Number = Field(description="[kW] highest battery power allowed after the step")
    note: str


class Setpoints(_Part):
    """The limits chain's decision this cycle"""

    battery_kw: Number = Field(description="[kW] battery setpoint, + discharge")
    pv_limit_pct: Number = Field(description="[%] of PV AC rating")
    pv_limit_kw: OptionalNumber = Field(description="[kW] null = unlimited")
    safe: bool = Field(description="the safe state is in force (a required measurement is missing)")
    source: str = Field(description="where the target came from (plan, rule, operator, ...)")
    follow: str | None = Field(description="battery or grid")
    reason: str
    expected_grid_kw: OptionalNumber = Field(description="[kW]")
    bounds: list[Bound] = Field(description="the allowed interval after each limits-chain step")


class Operator(_Part):
    request: str | None = Field(description="requested mode")
    until: AwareDatetime | None
    manual_setpoint_kw: OptionalNumber = Field(description="[kW]")
    soc_reserve_pct: OptionalNumber = Field(description="[%]")


class PlanStep(_Part):
    """The plan step in force, or null without a plan"""

    created_at: AwareDatetime
    source: str
    step_start: AwareDatetime
    battery_kw: Number = Field(description="[kW]")
    grid_kw: Number = Field(description="[kW]")
    soc_pct: Number = Field(description="[%] at the end of the step")
    expires_at: AwareDatetime
    follow: str | None = Field(description="battery or grid, while auto mode follows this plan")
    follow_reason: str | None


class Prices(_Part):
    period: str = Field(description="named tariff period now")
    import_price: Number = Field(description="[currency/kWh]")
    export_price: Number = Field(description="[currency/kWh]")
    currency: str


class Today(_Part):
    """Energies [kWh] and money [currency] of the local day so far"""

    day: str = Field(description="local date YYYY-MM-DD ('' before the first accounted cycle)")
    import_kwh: Number = Field(description="[kWh]")
    export_kwh: Number = Field(description="[kWh]")
    pv_kwh: Number = Field(description="[kWh]")
    load_kwh: Number = Field(description="[kWh]")
    charge_kwh: Number = Field(description="[kWh]")
    discharge_kwh: Number = Field(description="[kWh]")
    load_from_pv_kwh: Number = Field(description="[kWh] load supplied by the PV at the time")
    load_from_battery_kwh: Number = Field(description="[kWh] load supplied by the battery's discharge at the time")
    load_from_grid_kwh: Number = Field(description="[kWh] load supplied by the grid at the time (import that "
                                                   "charged the battery is not load)")
    cost: Number = Field(description="[currency] measured import/export at energy prices")
    cost_no_battery: Number = Field(description="[currency] the same day without the battery")
    saved: Number = Field(description="[currency] cost_no_battery − cost")
    expected_saved: OptionalNumber = Field(
        None, description="[currency] saved plus what the plan's steps until the end of the local day save by the "
                          "same rule (controller.accounting.plan_saving); null without a plan")


class MonthValue(_Part):
    """What the battery saved so far in the billing month (controller.accounting.Accounting.month_value) [currency]"""
    month: str = Field(description="billing month, YYYY-MM")
    energy_cost: Number = Field(description="[currency] measured import and export at the energy prices")
    energy_cost_no_battery: Number = Field(description="[currency] the same load and PV without the battery")
    energy_saved: Number = Field(description="[currency] energy_cost_no_battery − energy_cost")
    billed_kw: OptionalNumber = Field(description="[kW] demand billed so far (demand.billed_kw); null without a "
                                                  "demand charge")
    billed_kw_no_battery: OptionalNumber = Field(description="[kW] the same without the battery")
    demand_charge: Number = Field(description="[currency] billed_kw × the demand rate with VAT (0 without one)")
    demand_charge_no_battery: Number = Field(description="[currency] billed_kw_no_battery × the same rate")
    demand_saved: Number = Field(description="[currency] demand_charge_no_battery − demand_charge")
    saved: Number = Field(description="[currency] energy_saved + demand_saved")


class Demand(_Part):
    month: str | None = Field(description="billing month of the peak")
    month_peak_kw: OptionalNumber = Field(description="[kW] highest demand-interval average import this month")
    month_peak_at: str | None = Field(None, description="UTC start (ISO 8601) of the interval that set the month's "
                                                        "peak (optimizer.billing.sets_month_peak); null in a new month")
    month_peak_period: str | None = Field(None, description="tariff period at month_peak_at (e.g. off_peak: a "
                                                            "night's charge set the peak)")
    billed_kw: OptionalNumber = Field(None, description="[kW] the demand the month is billed on so far "
                                      "(optimizer.billing.billed_demand_kw): the month-to-date peak, under a "
                                      "12-month basis the highest of it and the 11 months before; the level the "
                                      "planner and the dispatcher take as already paid; null without a demand charge")
    interval_avg_kw: OptionalNumber = Field(description="[kW] the running demand window's import so far over the "
                                            "window's whole length: it rises to the window's average by its end")
    window_minutes: OptionalNumber = Field(None, description="[min] length of the running demand window (the "
                                           "tariff's demand measure, else control.demand_interval_minutes)")
    window_elapsed_min: OptionalNumber = Field(None, description="[min] how much of the running demand window has "
                                               "passed")
    import_cap_kw: OptionalNumber = Field(description="[kW] contracted import capacity (grid.import_cap_kw); "
                                                      "null = none")
    hold_kw: OptionalNumber = Field(None, description="[kW] the month's demand level held now: the plan's planned "
                                    "peak or the month-to-date peak, the higher (controller.demand_watch); null "
                                    "without a demand charge or a level, or with the grid power missing")
    window_projected_kw: OptionalNumber = Field(None, description="[kW] the running window's average if the last "
                                                "minute's import lasts until it ends")
    shed_to_hold_kw: OptionalNumber = Field(None, description="[kW] load to shed until the window ends to hold "
                                            "hold_kw (0: it holds)")
    window_left_min: OptionalNumber = Field(None, description="[min] time left in the running demand window")


class BatteryEnergy(_Part):
    """The energy the battery holds (controller.battery_health.BatteryHealth): plans, their SOC in kWh and the SOC
    rule count on capacity_kwh"""

    soh_pct: OptionalNumber = Field(description="[%] the state of health planning uses (the last valid reading, "
                                                "whole percent, 50–100); null: not reported, the nameplate")
    capacity_kwh: Number = Field(description="[kWh] the energy at full SOC: nameplate × soh_pct / 100")
    nameplate_kwh: Number = Field(description="[kWh] battery.capacity_kwh")
    in_use_kwh: OptionalNumber = Field(
        None, description="[kWh] while a battery unit is out of its asset group: the energy the units in it hold at "
                          "full SOC, the battery plans are made for (controller.groups.BatteryGroup.in_use_energy); "
                          "null: every unit in")
    in_use_stored_kwh: OptionalNumber = Field(None, description="[kWh] what those units hold now; null: every unit in")


class Finding(_Part):
    point: str
    device: str | None
    quality: str
    rule: str
    detail: str


class Validation(_Part):
    """What measurement validation re-qualified this cycle"""

    findings: list[Finding]


class Solver(_Part):
    plans_made: int
    failures: int
    last_error: str | None
    detail: str | None
    elapsed_ms: OptionalNumber = Field(description="[ms]")
    status: str | None
    solve_ms: OptionalNumber = Field(description="[ms]")


class LeadAccuracy(_Part):
    lead: str = Field(description="lead-time bucket, e.g. '6-12 h'")
    n: int = Field(description="steps compared")
    mae_kw: OptionalNumber = Field(description="[kW]")
    rmse_kw: OptionalNumber = Field(description="[kW]")
    persistence_mae_kw: OptionalNumber = Field(description="[kW] same-time-yesterday persistence")
    persistence_rmse_kw: OptionalNumber = Field(description="[kW]")
    skill: OptionalNumber = Field(description="1 − MAE / persistence MAE [-]")


class QuantityAccuracy(_Part):
    issues: int = Field(description="hindcasts scored")
    by_lead: list[LeadAccuracy]


class ExternalLeadAccuracy(LeadAccuracy):
    """The figures of LeadAccuracy, leads counted from the forecast's issued_at (e.g. '24-48 h'), and more"""

    bias_kw: OptionalNumber = Field(description="[kW] mean forecast − measured (+: the forecast runs high)")
    builtin_mae_kw: OptionalNumber = Field(description="[kW] the built-in model's forecast made at issued_at")
    skill_vs_builtin: OptionalNumber = Field(description="1 − MAE / built-in MAE (+: the external one is better) [-]")
    band_n: int = Field(description="steps compared with a P10/P90 band")
    band_coverage: OptionalNumber = Field(description="share measured inside [P10, P90]; 0.8 when calibrated [-]")
    below_p10: OptionalNumber = Field(description="share measured below P10; 0.1 when calibrated [-]")
    above_p90: OptionalNumber = Field(description="share measured above P90; 0.1 when calibrated [-]")


class SourceAccuracy(_Part):
    source: str = Field(description="the external forecasts' source name")
    issues: int = Field(description="forecasts scored")
    band_scale_p10: Number = Field(description="factor on forecast − P10 that recalibrates the band on its measured "
                                               "record (1: as sent, or too few steps scored) [-]")
    band_scale_p90: Number = Field(description="factor on P90 − forecast, likewise [-]")
    by_lead: list[ExternalLeadAccuracy]


class ExternalAccuracy(_Part):
    """Accuracy of the external forecasts received over the last window_days, scored once measured (docs/data.md,
    Accuracy of external forecasts); a quantity appears once a forecast of it was received"""

    window_days: Number = Field(description="[d]")
    pv: list[SourceAccuracy] | Absent = None
    load: list[SourceAccuracy] | Absent = None


class ForecastAccuracy(_Part):
    """Live forecast accuracy over the last window_days (docs/data.md, Forecast accuracy)"""

    window_days: Number = Field(description="[d]")
    pv: QuantityAccuracy
    load: QuantityAccuracy
    external: ExternalAccuracy | Absent = None


class ForecastSource(_Part):
    """The PV or load forecast the planner uses now (docs/data.md, External forecasts)"""

    source: str = Field(description="'builtin' (the built-in model) or the external forecast's source name")
    band: bool | Absent = Field(None, description="The external forecast carries its P10/P90 band")
    issued_at: AwareDatetime | Absent = None
    expires_at: AwareDatetime | Absent = Field(None, description="After this the built-in model takes over again")


class StateMessage(_Part):
    """Payload of ems/<site>/state (retained, QoS 1) and of the dashboard's `state` events: the cycle state the
    controller publishes on its bus (controller/service.py). Units are in the field names (docs/conventions.md):
    grid + import, battery + discharge. A missing value is null or absent, never 0. Fields may be added in later
    versions; consumers must ignore unknown fields."""

    model_config = ConfigDict(title="Controller state")

    ts: AwareDatetime = Field(description="Cycle time (UTC)")
    site: str
    mode: Literal["auto", "self_consumption", "tou_rule", "manual", "standby", "safe", "monitor_only"] = Field(
        description="Effective operating mode")
    reason: str = Field(description="Reason code of the mode: plan, no_plan, plan_expired, planner_failed, "
                                    "solver_timeout, operator, data_missing, initial_mode")
    mode_since: AwareDatetime | Absent = Field(None, description="When this mode and reason began")
    measurements: dict[str, Reading] = Field(description="Canonical point name → reading (docs/architecture.md)")
    load_kw: OptionalNumber = Field(None, description="[kW] site load = grid + PV + battery")
    groups: dict[Literal["battery", "pv"], GroupStatus] | Absent = Field(
        None, description="The battery and PV groups (docs/devices.md, Asset groups)")
    devices: dict[str, DeviceStatus] | Absent = Field(
        None, description="Device name → whether it answered, and for units of a group their share and health")
    setpoints: Setpoints | Absent = None
    operator: Operator | Absent = None
    plan: PlanStep | None = None
    battery: BatteryEnergy | Absent = None
    tariff: Prices | Absent = None
    today: Today | Absent = None
    month: MonthValue | Absent = None
    demand: Demand | Absent = None
    alarms: list[str] | Absent = Field(None, description="Active alarm codes")
    validation: Validation | Absent = None
    solver: Solver | Absent = None
    cycle: dict[str, Number] | Absent = Field(None, description="Cycle timing [ms] and counters")
    commands: dict[str, Annotated[int, Field(ge=0)]] | Absent = Field(
        None, description="Remote commands since start (accepted, rejected, busy, errors, dropped), added by the "
                          "MQTT, dashboard and metrics sinks")
    forecast_accuracy: ForecastAccuracy | Absent | None = Field(
        None, description="Live forecast accuracy; null without measured forecasters")
    forecast_sources: dict[Literal["pv_kw", "load_kw"], ForecastSource] | Absent = Field(
        None, description="Which PV and load forecast the planner uses now: built-in or from outside")


# ------------------------------------------------------------------------------------------ forecasts

MAX_STEPS = int(MAX_HORIZON_H * 60 / 5)
"""Most values a forecast may carry (the longest horizon in 5-min steps; fewer for longer steps)."""


Values = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1, max_length=MAX_STEPS)]
"""A forecast's values, one per interval."""


class ForecastMessage(BaseModel):
    """Payload of ems/<site>/forecast (MQTT, at most 64 kB) and body of POST /api/v1/forecasts: a PV and/or load
    forecast from outside; it replaces the built-in forecast for the steps it covers until it expires
    (docs/data.md, External forecasts). Values at interval starts start + i * step_minutes."""

    model_config = ConfigDict(extra="forbid", title="External forecast",
                              json_schema_extra={"anyOf": [{"required": ["pv_kw"]}, {"required": ["load_kw"]}]})

    id: str | Absent = Field(None, max_length=64, description="Correlation id, echoed in the result")
    source: str = Field("external", min_length=1, max_length=64, description="Who made the forecast")
    issued_at: AwareDatetime = Field(description="When it was made (ISO 8601 with offset; not in the future)")
    valid_hours: float = Field(DEFAULT_VALID_HOURS, gt=0, le=MAX_VALID_HOURS,
                               description="It expires this long after issued_at [h]")
    start: AwareDatetime = Field(description="Start of the first interval, on the step lattice, at most a day "
                                             "before issued_at")
    step_minutes: Literal[5, 10, 15, 30, 60] = 15
    unit: Literal["kW", "W"] = "kW"
    pv_kw: Values | Absent = Field(None, description="PV AC power per interval (at most the PV AC limit) [unit]")
    load_kw: Values | Absent = Field(None, description="Site load per interval, same length as pv_kw [unit]")
    pv_kw_p10: Values | Absent = Field(None, description="10 % quantile of pv_kw per interval (with pv_kw_p90; "
                                                         "pv_kw_p10 <= pv_kw <= pv_kw_p90) [unit]")
    pv_kw_p90: Values | Absent = Field(None, description="90 % quantile of pv_kw per interval (with pv_kw_p10) [unit]")
    load_kw_p10: Values | Absent = Field(None, description="10 % quantile of load_kw per interval (with load_kw_p90; "
                                                           "load_kw_p10 <= load_kw <= load_kw_p90) [unit]")
    load_kw_p90: Values | Absent = Field(None, description="90 % quantile of load_kw per interval (with "
                                                           "load_kw_p10) [unit]")


class ForecastResultMessage(BaseModel):
    """Payload of ems/<site>/forecast/result (not retained), one per forecast received over MQTT."""

    model_config = ConfigDict(extra="forbid", title="External forecast result")

    command: Literal["forecast"]
    id: str | None = Field(None, description="The forecast's correlation id, null when it had none")
    accepted: bool
    error: str | None = Field(description="Why it was refused, naming the field; null when accepted")
    source: str | None = None
    quantities: list[Literal["pv_kw", "load_kw"]] = Field(description="What it replaced")
    steps: Annotated[int, Field(ge=0)]
    expires_at: AwareDatetime | None = Field(description="When it stops being used (UTC); null when refused")
    ts: AwareDatetime = Field(description="Controller site time (UTC)")
    site: str | Absent = Field(None, description="Site id of the controller that answered")


# ------------------------------------------------------------------------------------------ schemas


def command_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of the MQTT payload of command ``name``: its model's fields without ``command`` (the
    topic names it), plus the :class:`Envelope`."""
    model = COMMAND_MODELS[name]
    schema = _tidy(model.model_json_schema())
    envelope = _tidy(Envelope.model_json_schema())
    schema["properties"].pop("command")
    schema["properties"].update(envelope["properties"])
    schema["required"] = [f for f in schema.get("required", []) if f != "command"]
    return _wrap(f"cmd_{name}", schema, f"{model.__doc__} Payload of ems/<site>/cmd/{name} (publish with "
                                        "retain=false; a retained command is rejected).")


def schemas() -> dict[str, dict[str, Any]]:
    """Every generated schema by file stem (``cmd_<name>``, ``cmd_result``, ``state``)."""
    out = {f"cmd_{name}": command_schema(name) for name in COMMAND_MODELS}
    for stem, model in (("cmd_result", CommandResultMessage), ("state", StateMessage),
                        ("forecast", ForecastMessage), ("forecast_result", ForecastResultMessage)):
        out[stem] = _wrap(stem, _tidy(model.model_json_schema()), " ".join((model.__doc__ or "").split()))
    return out


def render(schema: dict[str, Any]) -> str:
    """A schema file's text."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _wrap(stem: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    head = {"$schema": SCHEMA_DIALECT, "$id": f"{SCHEMA_BASE}{stem}.json", "title": schema.pop("title"),
            "description": " ".join(description.split())}
    schema.pop("description", None)
    return {**head, **schema}


def _tidy(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's schema made self-contained and plain: ``$ref`` to ``$defs`` inlined, field titles and null
    defaults dropped (the field names say it; an absent field has no default)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return walk(merged)
        out = {}
        for key, value in node.items():
            if in_properties:
                out[key] = walk(value)
            elif (key == "title" and not isinstance(value, dict)) or (key == "default" and value is None):
                continue
            else:
                out[key] = walk(value, in_properties=key == "properties")
        return out

    title = schema.get("title")
    tidy = walk(schema)
    if title is not None:
        tidy = {"title": title, **tidy}
    return tidy


def main(argv: list[str] | None = None) -> int:
    """``--write`` the schema files from the models, or ``--check`` that the committed ones match."""
    parser = argparse.ArgumentParser(prog="python -m controller.telemetry.wire", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite controller/telemetry/schemas/*.json")
    action.add_argument("--check", action="store_true", help="exit 1 if a committed schema differs")
    args = parser.parse_args(argv)
    stale = []
    for stem, schema in schemas().items():
        path = SCHEMA_DIR / f"{stem}.json"
        text = render(schema)
        if path.exists() and path.read_text("utf-8") == text:
            continue
        stale.append(path.name)
        if args.write:
            path.write_text(text, "utf-8")
    if stale:
        print(("written: " if args.write else "differs from the models: ") + ", ".join(stale),
              file=sys.stdout if args.write else sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
