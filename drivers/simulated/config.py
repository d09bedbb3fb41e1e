"""The ``simulation:`` section of a site file, and the view of a site file the simulated site needs.

Example (deploy/examples/simulated-site.yaml)::

    simulation:
      start: "2026-05-04T06:00:00+07:00"   # site time at which the simulated clock starts (default: now)
      speed: 1                             # site seconds per real second (the CLI's --speed overrides it)
      step_s: 0.5                          # plant step [site s]
      initial_soc_pct: 50
      weather: {model: clear_sky, cloudiness: 0.3, seed: 7}      # or {model: series, file: pv.csv, column: pv_kw}
      load: {day_kw: 800, night_kw: 300, day_start: "07:00", day_end: "19:00", sunday_factor: 0.3,
             noise_pct: 5, seed: 7}                              # or {model: series, file: load.csv, column: load_kw}
      units:                               # per device (all optional): settings and faults from the start
        bess-2: {initial_soc_pct: 80, bms_max_charge_pct: 50}
        inv-07: {offline: true}
        inv-08: {ignore_setpoint: true}

Series files are CSV with a ``timestamp`` column (ISO 8601 with offset) at a regular step and one
power column in kW; a relative ``file`` is taken relative to the site file.
"""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from drivers.profile import PROFILE_DIR, profile_path
from drivers.roles import Role
from ems.clock import MAX_SPEED
from ems.yamlfile import load_model
from optimizer.site import BatterySpec, BatteryUnit, PVSpec, SiteInfo, StrictModel


class ClearSkyWeather(StrictModel):
    """PV available = pvlib clear-sky power × (1 − cloudiness × a seeded, smooth random process in [0, 1])."""

    model: Literal["clear_sky"] = "clear_sky"
    cloudiness: float = Field(default=0.0, ge=0, le=1,
                              description="Largest fraction of clear-sky power clouds take [-]")
    cloud_period_s: float = Field(default=300.0, gt=0, description="Time between independent cloud states [s]")
    seed: int = 0


class SeriesSource(StrictModel):
    """A power series from a CSV file (``timestamp`` column + ``column`` in kW, regular step)."""

    model: Literal["series"]
    file: Path
    column: str = Field(min_length=1)


class ShiftLoadConfig(StrictModel):
    """Factory load with a day shift (``drivers.simulated.plant.ShiftLoad``)."""

    model: Literal["shift"] = "shift"
    day_kw: float = Field(ge=0, description="[kW]")
    night_kw: float = Field(ge=0, description="[kW]")
    day_start: time = time(7)
    day_end: time = time(19)
    sunday_factor: float = Field(default=1.0, ge=0)
    noise_pct: float = Field(default=0.0, ge=0, le=100, description="Standard deviation of the noise [%]")
    noise_correlation_s: float = Field(
        default=60.0, ge=0,
        description="Time over which the noise forgets itself (Ornstein-Uhlenbeck; a factory's load drifts from "
                    "minute to minute, not by 5 % every half second); 0: an independent draw each plant step [s]")
    seed: int = 0


Weather = Annotated[ClearSkyWeather | SeriesSource, Field(discriminator="model")]
Load = Annotated[ShiftLoadConfig | SeriesSource, Field(discriminator="model")]


class UnitSimulation(StrictModel):
    """Simulation settings and faults of one device (``simulation.units.<device name>``), all optional.

    ``bms_max_charge_pct``/``bms_max_discharge_pct`` derate the BMS: it allows that share of the unit's
    PCS limits (and says so in ``max_charge_kw``/``max_discharge_kw``); ``ignore_setpoint`` makes the unit
    keep its own power whatever is written (it still reads back what was written); ``offline`` stops it
    answering. The last three are faults (``drivers.simulated.faults``) that can also change at run time.
    """

    initial_soc_pct: float | None = Field(default=None, ge=0, le=100,
                                          description="SOC at start [%]; default simulation.initial_soc_pct")
    soh_pct: float | None = Field(default=None, gt=0, le=100,
                                  description="State of health [%]: the unit holds its capacity_kwh × this / 100; "
                                              "default simulation.soh_pct")
    bms_max_charge_pct: float = Field(default=100.0, ge=0, le=100, description="BMS charge allowance [% of PCS]")
    bms_max_discharge_pct: float = Field(default=100.0, ge=0, le=100,
                                         description="BMS discharge allowance [% of PCS]")
    ignore_setpoint: bool = False
    offline: bool = False


class SimulationConfig(StrictModel):
    """How the simulated site runs: clock, plant step, initial state, BMS behaviour, weather and load."""

    start: datetime | None = Field(default=None, description="Site time at start (aware); default: now")
    speed: float = Field(default=1.0, gt=0, le=MAX_SPEED, description="Site seconds per real second [-]")
    step_s: float = Field(default=0.5, gt=0, le=60, description="Plant step [site s]")
    initial_soc_pct: float = Field(default=50.0, ge=0, le=100, description="[%]")
    soh_pct: float = Field(default=100.0, gt=0, le=100, description="[%]")
    taper_high_pct: float = Field(default=90.0, ge=0, le=100, description="BMS charge taper starts [%]")
    taper_low_pct: float = Field(default=10.0, ge=0, le=100, description="BMS discharge taper starts [%]")
    ramp_kw_per_s: float | None = Field(default=None, gt=0, description="PCS ramp [kW/s]; default none")
    weather: Weather = ClearSkyWeather()
    load: Load = ShiftLoadConfig(day_kw=0.0, night_kw=0.0)
    units: dict[str, UnitSimulation] = Field(default_factory=dict,
                                             description="per-device settings and faults, by device name")

    @field_validator("weather", "load", mode="before")
    @classmethod
    def _default_model(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, dict) and "model" not in value:
            return {"model": "clear_sky" if info.field_name == "weather" else "shift", **value}
        return value

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-05-04T06:00:00+07:00")
        return value

    @model_validator(mode="after")
    def _taper(self) -> SimulationConfig:
        if self.taper_low_pct >= self.taper_high_pct:
            raise ValueError("taper_low_pct must be below taper_high_pct")
        return self


class Endpoint(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


MeterLocation = Literal["grid", "feeder", "pv", "load"]


class SimulatedDevice(BaseModel):
    """What the simulated site needs of a ``devices:`` entry (the controller validates the rest).

    ``location`` places a meter (``grid``: the connection point; ``pv``, ``load``, ``feeder``: sub-meters);
    ``rating_kw`` is an inverter's AC rating; ``battery`` a battery unit's own spec.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str = Field(min_length=1)
    role: Role
    profile: str = Field(min_length=1, description="shipped profile name, or a path relative to the site file")
    endpoint: Endpoint
    unit_id: int = Field(default=1, ge=1, le=247)
    location: MeterLocation = "grid"
    rating_kw: float | None = Field(default=None, gt=0, description="inverter AC rating [kW]")
    battery: BatteryUnit | None = None


class SimulatedSiteFile(BaseModel):
    """The sections of a site file the simulated site reads; other sections are ignored here."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    site: SiteInfo
    pv: PVSpec
    battery: BatterySpec | None = Field(default=None, description="the single battery, or the sums of the units")
    devices: list[SimulatedDevice] = Field(min_length=1)
    simulation: SimulationConfig = SimulationConfig()

    @model_validator(mode="after")
    def _unique(self) -> SimulatedSiteFile:
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError("device names must be unique")
        seats = [(d.endpoint.host, d.endpoint.port, d.unit_id) for d in self.devices]
        if len(set(seats)) != len(seats):
            raise ValueError("two devices share host, port and unit_id")
        unknown = sorted(set(self.simulation.units) - set(names))
        if unknown:
            raise ValueError(f"simulation.units: no device named {', '.join(unknown)}")
        grid_meters = [d.name for d in self.of_role(Role.METER) if d.location == "grid"]
        if len(grid_meters) > 1:
            raise ValueError(f"more than one meter at location grid: {', '.join(grid_meters)}")
        self.inverter_ratings()
        self.battery_specs()
        return self

    def of_role(self, role: Role) -> list[SimulatedDevice]:
        """The devices of ``role``, in file order."""
        return [d for d in self.devices if d.role is role]

    def inverter_ratings(self) -> dict[str, float]:
        """AC rating of each inverter [kW]: its ``rating_kw``; a single inverter without one has ``pv.ac_kw``.

        ValueError when several inverters lack a rating or their ratings do not add up to ``pv.ac_kw``.
        """
        inverters = self.of_role(Role.PV_INVERTER)
        ac_kw = self.pv.ac_limit_kw
        if len(inverters) == 1 and inverters[0].rating_kw is None:
            return {inverters[0].name: ac_kw}
        missing = [d.name for d in inverters if d.rating_kw is None]
        if missing:
            raise ValueError(f"devices {', '.join(missing)}: rating_kw is required with more than one inverter")
        ratings = {d.name: float(d.rating_kw) for d in inverters if d.rating_kw is not None}
        if ratings and abs(sum(ratings.values()) - ac_kw) > 1e-6 * ac_kw:
            raise ValueError(f"the inverters' rating_kw add up to {sum(ratings.values()):g} kW, "
                             f"pv.ac_kw is {ac_kw:g} kW")
        return ratings

    def battery_specs(self) -> dict[str, BatteryUnit]:
        """Each battery unit's spec: its own ``battery:``, or the top-level one for a single battery without one.

        ValueError naming the unit when a spec is missing.
        """
        batteries = self.of_role(Role.BATTERY)
        specs: dict[str, BatteryUnit] = {}
        for d in batteries:
            spec = d.battery or (self.battery if len(batteries) == 1 else None)
            if spec is None:
                where = "battery: (its own or the top-level one)" if len(batteries) == 1 else \
                    "its own battery: section (required with more than one battery)"
                raise ValueError(f"device {d.name}: needs {where}")
            specs[d.name] = spec
        return specs


def load_site_file(path: str | Path) -> SimulatedSiteFile:
    """Read a site file for the simulated site; relative profile paths and series files are made relative to it."""
    cfg = load_model(SimulatedSiteFile, path)
    base = Path(path).parent
    sim = cfg.simulation
    update = {}
    for key in ("weather", "load"):
        source = getattr(sim, key)
        if isinstance(source, SeriesSource) and not source.file.is_absolute():
            update[key] = source.model_copy(update={"file": base / source.file})
    devices = []
    for d in cfg.devices:
        is_path = profile_path(d.profile).parent != PROFILE_DIR
        if is_path and not Path(d.profile).is_absolute():
            d = d.model_copy(update={"profile": str(base / d.profile)})
        devices.append(d)
    return cfg.model_copy(update={"simulation": sim.model_copy(update=update), "devices": devices})
