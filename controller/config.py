"""The site file, validated as a whole: one YAML file describes a site for the controller.

Sections (field reference with the example: docs/configuration.md):

- ``site``, ``pv``, ``battery``, ``grid``, ``tariff``, ``planner`` — ``optimizer.site`` (planning);
- ``devices`` — a list of ``drivers.config.DeviceConfig``, exactly one per role (meter, pv_inverter, battery);
- ``control`` — :class:`ControlSettings` (cycle, writes, planning cadence, fallback, state directory,
  and ``dispatch``: the limits chain's :class:`~controller.dispatch.DispatchSettings`);
- ``telemetry`` — ``controller.telemetry.config.TelemetrySettings`` (MQTT, InfluxDB, dashboard);
- ``simulation`` — ``drivers.simulated.config.SimulationConfig`` (only for ``ems run --simulate``).

Secrets never live in the file: sections name the environment variables holding them
(``token_env``, ``password_env``). :func:`load_config` reports every problem at once — schema errors
with their field paths, plus the tariff and device profiles the file refers to — so the service
never starts half-configured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from controller.audit import AuditSettings
from controller.dispatch import DispatchSettings
from controller.telemetry.config import TelemetrySettings
from controller.validation import ValidationSettings
from drivers.config import DeviceConfig
from drivers.profile import PROFILE_DIR, load_profile, profile_path
from drivers.roles import Role
from drivers.simulated.config import SimulationConfig
from drivers.sunspec import reference_errors as sunspec_reference_errors
from ems.yamlfile import ConfigError, FieldError, field_path, read_yaml
from optimizer.site import PlanningSite, StrictModel, TariffRef
from optimizer.tariff import load_tariff


class ControlSettings(StrictModel):
    """The ``control:`` section: how the controller runs."""

    cycle_s: float = Field(default=1.0, gt=0, le=60, description="Control cycle [s of site time]")
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="Setpoints are re-written at least this often even when unchanged [s]")
    write_deadband_kw: float = Field(
        default=1.0, ge=0, description="A battery setpoint change smaller than this is not written [kW]")
    pv_write_deadband_pct: float = Field(
        default=0.5, ge=0, description="A PV limit change smaller than this is not written [% of PV AC rating]")
    fallback_mode: Literal["self_consumption", "tou_rule"] = Field(
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
    holiday_country: str | None = Field(
        default="VN", description="Public-holiday calendar for the load forecast (ISO country code); null = none")
    history_days: float = Field(default=14.0, gt=0, le=60, description="Measured history kept for forecasts [d]")
    persist_interval_s: float = Field(default=60.0, gt=0, description="Counters are saved this often [s]")
    state_dir: Path | None = Field(
        default=None,
        description="Where the state file lives; default $STATE_DIRECTORY (systemd) or ./state beside the site "
                    "file; a relative path is relative to the site file")
    dispatch: DispatchSettings = DispatchSettings()
    validation: ValidationSettings = ValidationSettings()
    audit: AuditSettings = AuditSettings()


MAX_RATING = 1e6
"""Largest power [kW] or energy [kWh] rating a site file may give: 1 GW / 1 GWh."""


class SiteConfig(PlanningSite):
    """A whole site file."""

    devices: list[DeviceConfig] = Field(min_length=1)
    control: ControlSettings = ControlSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    simulation: SimulationConfig | None = None

    @field_validator("devices")
    @classmethod
    def _devices(cls, devices: list[DeviceConfig]) -> list[DeviceConfig]:
        names = [d.name for d in devices]
        problems = []
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"device names must be unique; repeated: {', '.join(repeated)}")
        for role in Role:
            count = sum(d.role is role for d in devices)
            if count != 1:
                problems.append(f"exactly one device with role {role.value} is needed, found {count}")
        if problems:
            raise ValueError("; ".join(problems))
        return devices

    @model_validator(mode="after")
    def _controllable(self) -> SiteConfig:
        """What the live controller needs that a study does not: a battery with energy and power, and ratings
        no plant has are typing errors (a 10^308 kWh battery would keep the controller in its safe state)."""
        problems = []
        bat, pv = self.battery, self.pv
        if bat.capacity_kwh <= 0:
            problems.append("battery.capacity_kwh must be above 0 for the controller (a study can model no battery)")
        if bat.max_charge_kw <= 0 and bat.max_discharge_kw <= 0:
            problems.append("battery.max_charge_kw or battery.max_discharge_kw must be above 0")
        for name, value in (("battery.capacity_kwh", bat.capacity_kwh), ("battery.max_charge_kw", bat.max_charge_kw),
                            ("battery.max_discharge_kw", bat.max_discharge_kw), ("pv.kwp", pv.kwp),
                            ("pv.ac_kw", pv.ac_limit_kw), ("grid.import_cap_kw", self.grid.import_cap_kw or 0.0),
                            ("grid.export_cap_kw", self.grid.export_cap_kw)):
            if value > MAX_RATING:
                problems.append(f"{name} {value:g} is beyond any plant this controller is for (at most {MAX_RATING:g})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def device(self, role: Role) -> DeviceConfig:
        """The device serving ``role``."""
        return next(d for d in self.devices if d.role is role)

    @property
    def replan_minutes(self) -> int:
        return self.control.replan_minutes or self.planner.step_minutes


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
                load_tariff(ref, base_dir)
            except ConfigError as exc:
                where = "tariff.preset" if ref.preset is not None else "tariff.file"
                errors += [FieldError(where, f"{exc.source}: {e}") for e in exc.errors]
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
            if isinstance(role, str) and role in {r.value for r in Role} and Role(role) not in profile.roles:
                errors.append(FieldError(f"devices[{i}].profile",
                                         f"profile {profile.name} does not serve role {role}"))
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
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        errors += [FieldError(field_path(e["loc"]), e["msg"]) for e in exc.errors()]
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
