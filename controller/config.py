"""The site file, validated as a whole: one YAML file describes a site for the controller.

Sections (field reference with the example: docs/configuration.md):

- ``site``, ``pv``, ``battery``, ``grid``, ``tariff``, ``planner`` — ``optimizer.site`` (planning);
- ``devices`` — a list of ``drivers.config.DeviceConfig``: exactly one meter at the connection point (``location:
  grid``, the default) and any sub-meters, one or more PV inverters (each with ``rating_kw`` when there are
  several), one or more batteries (each with its own ``battery:`` spec when there are several; the top-level
  ``battery:`` is then their aggregate, :func:`optimizer.site.aggregate_units`) — :func:`group_errors`;
- ``control`` — :class:`ControlSettings` (cycle, writes, planning cadence, fallback, state directory,
  ``dispatch``: the limits chain's :class:`~controller.dispatch.DispatchSettings`, and ``groups``: when a unit
  follows its setpoint, :class:`~controller.groups.GroupSettings`);
- ``telemetry`` — ``controller.telemetry.config.TelemetrySettings`` (MQTT, InfluxDB, dashboard);
- ``simulation`` — ``drivers.simulated.config.SimulationConfig`` (only for ``ems run --simulate``).

Secrets never live in the file: sections name the environment variables holding them
(``token_env``, ``password_env``). :func:`load_config` reports every problem at once — schema errors
with their field paths, plus the tariff and device profiles the file refers to — so the service
never starts half-configured.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, model_validator

from controller.accounting import MonthLabel, MonthPeakKw
from controller.audit import AuditSettings
from controller.dispatch import DispatchSettings
from controller.forecast_csv import ForecastCsvSettings
from controller.groups import GroupSettings
from controller.modes import FallbackMode
from controller.telemetry.config import TelemetrySettings
from controller.validation import ValidationSettings
from drivers.config import DeviceConfig, MeterLocation, device_list_errors
from drivers.profile import PROFILE_DIR, Profile, load_profile, profile_path
from drivers.roles import CANONICAL_POINTS, Role
from drivers.simulated.config import SimulationConfig
from drivers.sunspec import reference_errors as sunspec_reference_errors
from ems.yamlfile import ConfigError, FieldError, other_kind, read_yaml, readable_errors
from optimizer.site import PlannerSettings, PlanningSite, StrictModel, TariffRef, aggregate_units
from optimizer.tariff import Tariff, load_tariff


class ControlSettings(StrictModel):
    """The ``control:`` section: how the controller runs."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "holiday_country" in data:
            raise ValueError("control.holiday_country is now site.holidays ('tariff' = the tariff's calendar, the "
                             "default; a country code; or null), shared with studies and `ems plan` "
                             "(docs/configuration.md)")
        return data

    cycle_s: float = Field(default=1.0, gt=0, le=60, description="Control cycle [s of site time]")
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="Setpoints are re-written at least this often even when unchanged [s]")
    write_deadband_kw: float = Field(
        default=1.0, ge=0, description="A battery setpoint change smaller than this is not written [kW]")
    pv_write_deadband_pct: float = Field(
        default=0.5, ge=0, description="A PV limit change smaller than this is not written [% of PV AC rating]")
    fallback_mode: FallbackMode = Field(
        default="self_consumption", description="What auto mode does without a valid plan")
    initial_mode: Literal["auto", "standby", "monitor_only"] = Field(
        default="auto", description="Mode at start until an operator asks for one: monitor_only writes nothing "
                                    "(commissioning), standby holds the battery at 0 kW")
    replan_minutes: int | None = Field(
        default=None, ge=1, le=24 * 60,
        description="Planning interval, aligned to the clock [min]; default: planner.step_minutes")
    replan_deviation_kw: float = Field(
        default=100.0, gt=0,
        description="Re-plan early when measured net load (load − PV) differs from the plan's by more than this [kW]")
    replan_deviation_s: float = Field(
        default=120.0, ge=0, description="... for at least this long [s]")
    min_replan_gap_s: float = Field(default=60.0, ge=0, description="Never plan more often than this [s]")
    demand_interval_minutes: int = Field(
        default=30, ge=1, le=60, description="Averaging interval of the demand (peak) measurement [min]")
    demand_warning_kw: float | None = Field(
        default=10.0, gt=0,
        description="Under a demand charge, alarm demand_peak_rising when the running demand window is on course "
                    "to exceed the month's held peak by needing at least this much load shed until it ends; clears "
                    "below half of it; null: no alarm (the outlook is still published) [kW]")
    billed_month_peaks_kw: dict[MonthLabel, MonthPeakKw] = Field(
        default_factory=dict,
        description='Month peaks billed before the controller measured them, from the utility\'s bills, e.g. '
                    '{"2026-03": 812.0}: under a 12-month demand basis (rolling_12_month_max) the level already '
                    'billed, which the planner and the dispatcher do not shave below, includes them; a month the '
                    'controller measured counts the higher of the two [kW]')
    history_days: float = Field(
        default=23.0, gt=0, le=60,
        description="Measured history kept for the forecasts, in memory and in the state file across restarts [d]: "
                    "the load profile reads the 3 weeks before today, and each day's hindcast of the forecast errors "
                    "that profile before its own start (23 days give the offline study's error quantiles exactly; "
                    "22 were up to 2 kW off), the month's peak target 5 days")
    persist_interval_s: float = Field(default=60.0, gt=0, description="Counters are saved this often [s]")
    state_dir: Path | None = Field(
        default=None,
        description="Where the state file lives; default $STATE_DIRECTORY (systemd) or ./state beside the site "
                    "file; a relative path is relative to the site file")
    dispatch: DispatchSettings = DispatchSettings()
    validation: ValidationSettings = ValidationSettings()
    groups: GroupSettings = GroupSettings()
    audit: AuditSettings = AuditSettings()
    external_forecast_csv: ForecastCsvSettings | None = Field(
        default=None, description="A forecast CSV file read before the first plan and whenever it changes "
                                  "(docs/data.md, External forecasts)")


GROUP_NAMES = {Role.BATTERY: "battery-group", Role.PV_INVERTER: "pv-group"}
"""The name of a role's aggregate when several devices serve it."""

MAX_RATING = 1e6
"""Largest power [kW] or energy [kWh] rating a site file may give: 1 GW / 1 GWh."""


class SiteConfig(PlanningSite):
    """A whole site file."""

    devices: list[DeviceConfig] = Field(min_length=1)
    control: ControlSettings = ControlSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    simulation: SimulationConfig | None = None

    @model_validator(mode="after")
    def _whole_site(self, info: ValidationInfo) -> SiteConfig:
        """The device groups (:func:`group_errors`) and what the controller needs (:func:`controllable_errors`);
        with a ``collect`` list in the validation context the errors are added to it with their field paths
        instead of raised."""
        errors = group_errors(self) + controllable_errors(self)
        collect = info.context.get("collect") if isinstance(info.context, dict) else None
        if isinstance(collect, list):
            collect += errors
        elif errors:
            raise ValueError("; ".join(str(e) for e in errors))
        return self

    def device(self, role: Role) -> DeviceConfig:
        """The first device serving ``role`` (for a meter: the grid meter)."""
        if role is Role.METER:
            return self.grid_meter
        return next(d for d in self.devices if d.role is role)

    def devices_of(self, role: Role) -> list[DeviceConfig]:
        """Every device serving ``role``, in file order."""
        return [d for d in self.devices if d.role is role]

    @property
    def grid_meter(self) -> DeviceConfig:
        """The meter at the connection point."""
        return next(d for d in self.devices if d.meter_location is MeterLocation.GRID)

    def role_name(self, role: Role) -> str:
        """What names ``role``'s aggregate in alarms and validation: the grid meter, a role's only device, or
        ``battery-group`` / ``pv-group`` for several."""
        if role is Role.METER:
            return self.grid_meter.name
        devices = self.devices_of(role)
        return devices[0].name if len(devices) == 1 else GROUP_NAMES[role]

    @property
    def replan_minutes(self) -> int:
        return self.control.replan_minutes or self.planner.step_minutes


_DEVICE_LIST = TypeAdapter(list[DeviceConfig])

RATING_TOLERANCE = 1e-6
"""Relative difference [-] below which a given total and the sum over the units agree (decimal round-off)."""


DEVICE_STEPS = 3
"""Plant steps that readings' ages and a unit's answer may take when the devices update slower than the control
cycle (see :func:`at_device_pace`). [-]"""
LOOP_LAG_REAL_S = 0.5
"""Real time the controller's cycle may lag, whatever the clock's speed: a plan's Python work in its thread
competes with the loop for the interpreter, a poll of a dozen devices takes its round trips, a machine with more
runnable processes than cores deschedules it. In site time it is this × the speed (300 s at 600x). [s]"""


def at_device_pace(config: SiteConfig, step_s: float, speed: float) -> SiteConfig:
    """``config`` for a controller on a clock ``speed`` × real time against devices whose values change only every
    ``step_s`` site seconds (a simulated site: :attr:`~drivers.simulated.site.SimulatedSite.step_period_s`, 12 s
    at 600x). [s, -]

    A cycle shorter than a step reads the same values twice, and a setting that judges a device by its values
    or their age would find a healthy device frozen, stale or not following. So ``control.cycle_s`` becomes at
    least ``step_s`` (the validation stage's stuck windows are at least ``min_cycles`` cycles), and each device's
    ``max_age_s``, ``control.groups.response_s`` and ``control.validation.soc_lag_s`` (how much older than its reading
    a SOC value may be: the simulated plant can step behind its servers) at least :data:`DEVICE_STEPS` steps and
    :data:`LOOP_LAG_REAL_S` of real time. Every other setting, and ``config`` itself, is unchanged (the same object
    when nothing needs to change)."""
    floor_s = max(DEVICE_STEPS * step_s, LOOP_LAG_REAL_S * speed)
    ctl = config.control
    cycle_s = max(ctl.cycle_s, step_s)
    response_s = max(ctl.groups.response_s, floor_s)
    soc_lag_s = max(ctl.validation.soc_lag_s, floor_s)
    if cycle_s == ctl.cycle_s and response_s == ctl.groups.response_s and soc_lag_s == ctl.validation.soc_lag_s \
            and all(d.max_age_s >= floor_s for d in config.devices):
        return config
    groups = ctl.groups.model_copy(update={"response_s": response_s})
    validation = ctl.validation.model_copy(update={"soc_lag_s": soc_lag_s})
    devices = [d.model_copy(update={"max_age_s": max(d.max_age_s, floor_s)}) for d in config.devices]
    return config.model_copy(update={"control": ctl.model_copy(update={"cycle_s": cycle_s, "groups": groups,
                                                                        "validation": validation}),
                                     "devices": devices})


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= RATING_TOLERANCE * max(1.0, abs(a), abs(b))


def group_errors(config: SiteConfig) -> list[FieldError]:
    """Problems of the device groups, each with its field path: those of :func:`device_group_errors`, inverter
    ratings not summing to ``pv.ac_kw``, battery specs disagreeing with the top-level ``battery:``."""
    devices = config.devices
    errors = device_group_errors(devices)
    inverters = [d for d in devices if d.role is Role.PV_INVERTER]
    ratings = [d.rating_kw for d in inverters if d.rating_kw is not None]
    if inverters and len(ratings) == len(inverters) and not _agree(sum(ratings), config.pv.ac_limit_kw):
        errors.append(FieldError("pv.ac_kw", f"{config.pv.ac_limit_kw:g} kW, but the inverters' rating_kw sum to "
                                 f"{sum(ratings):g} kW; they must agree"))
    batteries = [d for d in devices if d.role is Role.BATTERY]
    units = [d.battery for d in batteries if d.battery is not None]
    if batteries and len(units) == len(batteries):
        for name, derived in aggregate_units(units).items():
            given = getattr(config.battery, name)
            if not _agree(given, derived):
                errors.append(FieldError(f"battery.{name}", f"{given:g}, but the battery units give {derived:g} "
                                         "(sums; SOC window and efficiencies capacity-weighted); omit it to use the "
                                         "units' figure"))
    return errors


def device_group_errors(devices: Sequence[DeviceConfig]) -> list[FieldError]:
    """Problems of the device list alone: repeated names and bus addresses, not exactly one grid meter, no PV
    inverter or battery, a missing ``rating_kw`` (several inverters) or ``battery:`` spec (several batteries)."""
    errors = device_list_errors(devices)
    grid = [i for i, d in enumerate(devices) if d.meter_location is MeterLocation.GRID]
    if not grid:
        errors.append(FieldError("devices", "no meter at the connection point: exactly one device with role meter "
                                 "and location grid (the default) is needed"))
    for i in grid[1:]:
        errors.append(FieldError(f"devices[{i}].location", f"{devices[i].name} is a second grid meter "
                                 f"(devices[{grid[0]}] is one); exactly one meter measures the connection point, "
                                 "give the others location feeder, pv or load"))
    for role in (Role.PV_INVERTER, Role.BATTERY):
        if not any(d.role is role for d in devices):
            errors.append(FieldError("devices", f"at least one device with role {role.value} is needed"))
    inverters = [(i, d) for i, d in enumerate(devices) if d.role is Role.PV_INVERTER]
    if len(inverters) > 1:
        errors += [FieldError(f"devices[{i}].rating_kw", f"{d.name}: required when the site has more than one "
                              "PV inverter (its AC rating, kW)") for i, d in inverters if d.rating_kw is None]
    batteries = [(i, d) for i, d in enumerate(devices) if d.role is Role.BATTERY]
    if len(batteries) > 1:
        errors += [FieldError(f"devices[{i}].battery", f"{d.name}: required when the site has more than one battery "
                              "(capacity_kwh, max_charge_kw, max_discharge_kw, ...)")
                   for i, d in batteries if d.battery is None]
    return errors


REQUIRED_POINTS: dict[tuple[Role, MeterLocation | None], tuple[str, ...]] = {
    (Role.BATTERY, None): ("battery_kw", "soc_pct", "battery_setpoint_kw"),
    (Role.PV_INVERTER, None): ("pv_kw", "pv_limit_pct"),
    (Role.METER, MeterLocation.GRID): ("grid_kw",),
}
"""Canonical points a device's profile must have for the controller to use it in its role (writable ones writable)."""


def missing_points(profile: Profile, role: Role, location: MeterLocation | None) -> list[str]:
    """The points of :data:`REQUIRED_POINTS` that ``profile`` lacks (or has, but not writable) for ``role``."""
    out = []
    for name in REQUIRED_POINTS.get((role, location), ()):
        point = profile.points.get(name)
        if point is None:
            out.append(name)
        elif CANONICAL_POINTS[name].writable and point.write is None:
            out.append(f"{name} (present but not writable)")
    return out


def resolve_profile(profile: str, base_dir: Path) -> Path:
    """A device's profile file: a shipped name, an absolute path, or a path relative to the site file's folder
    (or, failing that, to the working directory)."""
    path = profile_path(profile)
    if path.is_absolute() or path.is_relative_to(PROFILE_DIR) or not (base_dir / path).exists():
        return path
    return base_dir / path


def _reference_errors(data: dict, base_dir: Path) -> list[FieldError]:
    """Problems with what the file refers to (tariff, profiles), checked on the raw data section by section."""
    errors: list[FieldError] = []
    raw_tariff = data.get("tariff")
    if isinstance(raw_tariff, dict):
        try:
            ref = TariffRef.model_validate(raw_tariff)
        except ValidationError:
            ref = None  # reported by the schema check
        if ref is not None:
            try:
                tariff = load_tariff(ref, base_dir)
            except ConfigError as exc:
                where = "tariff.preset" if ref.preset is not None else "tariff.file"
                errors += [FieldError(where, e.message if e.field == where else f"{exc.source}: {e}")
                           for e in exc.errors]
            else:
                errors += step_errors(data.get("planner"), tariff)
    raw_devices = data.get("devices")
    if isinstance(raw_devices, list):
        for i, dev in enumerate(raw_devices):
            if not isinstance(dev, dict) or not isinstance(dev.get("profile"), str):
                continue
            path = resolve_profile(dev["profile"], base_dir)
            try:
                profile = load_profile(path)
            except ConfigError as exc:
                errors += [FieldError(f"devices[{i}].profile", f"{exc.source}: {e}") for e in exc.errors]
                continue
            errors += [FieldError(f"devices[{i}].profile", f"{path}: points.{point}.sunspec: {why}")
                       for point, why in sunspec_reference_errors(profile)]
            role = dev.get("role")
            if not (isinstance(role, str) and role in {r.value for r in Role}):
                continue
            if Role(role) not in profile.roles:
                errors.append(FieldError(f"devices[{i}].profile",
                                         f"profile {profile.name} does not serve role {role}"))
                continue
            location = dev.get("location", MeterLocation.GRID.value) if role == Role.METER.value else None
            if location is not None and location not in {m.value for m in MeterLocation}:
                continue  # reported by the schema check
            lacking = missing_points(profile, Role(role), MeterLocation(location) if location else None)
            if lacking:
                errors.append(FieldError(f"devices[{i}].profile", f"profile {profile.name} lacks what a {role}"
                                         f"{' at ' + location if location else ''} needs: {', '.join(lacking)}"))
    return errors


def step_errors(raw_planner: object, tariff: Tariff) -> list[FieldError]:
    """``planner.step_minutes`` against the tariff's windows (:meth:`Tariff.step_problems`), when the planner
    section is otherwise valid (else the schema check reports it)."""
    try:
        settings = PlannerSettings.model_validate(raw_planner or {})
    except ValidationError:
        return []
    return [FieldError("planner.step_minutes", why) for why in tariff.step_problems(settings.step_minutes)]


def controllable_errors(config: SiteConfig) -> list[FieldError]:
    """What the live controller needs that a study does not, at the fields: a battery with energy and power; ratings
    no plant has are typing errors (a 10^308 kWh battery would keep the controller in its safe state)."""
    errors = []
    bat, pv = config.battery, config.pv
    if bat.capacity_kwh <= 0:
        errors.append(FieldError("battery.capacity_kwh", "must be above 0 for the controller (a study can model no "
                                                         "battery)"))
    if bat.max_charge_kw <= 0 and bat.max_discharge_kw <= 0:
        errors.append(FieldError("battery.max_charge_kw", "this or battery.max_discharge_kw must be above 0"))
    for name, value in (("battery.capacity_kwh", bat.capacity_kwh), ("battery.max_charge_kw", bat.max_charge_kw),
                        ("battery.max_discharge_kw", bat.max_discharge_kw), ("pv.kwp", pv.kwp),
                        ("pv.ac_kw", pv.ac_limit_kw), ("grid.import_cap_kw", config.grid.import_cap_kw or 0.0),
                        ("grid.export_cap_kw", config.grid.export_cap_kw)):
        if value > MAX_RATING:
            errors.append(FieldError(name, f"{value:g} is beyond any plant this controller is for (at most "
                                           f"{MAX_RATING:g})"))
    return errors


def validate_config(data: object, source: str, base_dir: Path) -> SiteConfig:
    """Validate parsed YAML; raises :class:`ConfigError` listing every problem with its field path."""
    if data is None:
        raise ConfigError(source, [FieldError("(top level)", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(source, [FieldError("(top level)", "expected a mapping of sections")])
    errors: list[FieldError] = []
    config: SiteConfig | None = None
    try:
        config = SiteConfig.model_validate(data, context={"collect": errors})
    except ValidationError as exc:
        wrong = other_kind(data, SiteConfig)
        if wrong is not None:
            raise ConfigError(source, [wrong]) from None
        errors += readable_errors(SiteConfig, data, exc.errors())
        with contextlib.suppress(ValidationError):  # else the device errors are among the schema errors
            # a valid device list is checked as a whole even when another section is not
            errors += device_group_errors(_DEVICE_LIST.validate_python(data.get("devices")))
    errors += _reference_errors(data, base_dir)
    if errors or config is None:
        raise ConfigError(source, errors)
    return config


def load_config(path: str | Path) -> SiteConfig:
    """Read and validate a site file (see :func:`validate_config`)."""
    p = Path(path)
    return validate_config(read_yaml(p), str(p), p.resolve().parent)


def state_dir(config: SiteConfig, config_path: str | Path) -> Path:
    """The state directory: ``control.state_dir`` (relative to the site file), else ``$STATE_DIRECTORY``,
    else ``state/`` beside the site file."""
    base = Path(config_path).resolve().parent
    if config.control.state_dir is not None:
        d = config.control.state_dir
        return d if d.is_absolute() else base / d
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return base / "state"
