"""Offline study scenarios: one YAML file per case, validated with pydantic.

A scenario reuses the site models of ``optimizer.site`` (site, PV, battery, grid, tariff, planner) and
adds what a study needs: battery life, tariff escalation, the data (CSV or a synthetic year), costs,
finance, CO2 factors and the strategies to compare. A variant names its base with ``extends:`` and
overrides sections key by key (mappings merge, everything else replaces). Relative paths (CSV,
tariff file) resolve against the directory of the file being loaded. Format: docs/simulation.md.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from controller.dispatch import DispatchSettings
from controller.modes import FallbackMode
from ems.yamlfile import ConfigError, FieldError, read_yaml, validate
from optimizer.site import (
    BatterySpec,
    GridSpec,
    PlannerSettings,
    PVSpec,
    SiteInfo,
    StrictModel,
    TariffRef,
)
from simulations.economics import BatteryAgeing
from simulations.synthetic import DAILY_CLEARNESS_SPREAD, PRESETS, LoadShape

StrategyName = Literal["pv_only", "self_consumption", "tou_rule", "mpc", "mpc_perfect", "perfect_foresight"]
"""Strategies a study can compare (the no-system reference is always computed):

- ``pv_only``: PV, no battery;  ``self_consumption`` / ``tou_rule``: rule policies;
- ``mpc``: the live planner re-planned every step on forecasts fed only the past;
- ``mpc_perfect``: the same planner fed the actual future as its forecast;
- ``perfect_foresight``: one LP over the whole period with the actual data."""

ALL_STRATEGIES: tuple[str, ...] = ("pv_only", "self_consumption", "tou_rule", "mpc", "mpc_perfect",
                                   "perfect_foresight")


class ScenarioBattery(BatterySpec):
    """The battery of a site file plus its life and starting state."""

    cycle_life: float = Field(default=6000.0, gt=0, description="Equivalent full cycles to end of life [-]")
    calendar_life_years: float = Field(default=15.0, gt=0, description="Years to end of life without cycling [yr]")
    end_of_life_soh_pct: float = Field(default=80.0, gt=0, lt=100, description="Replace at this SOH [%]")
    initial_soc_pct: float = Field(default=50.0, ge=0, le=100, description="SOC at the start of the run [%]")
    ageing_value: Literal["auto", "simulated", "proportional"] = Field(
        default="auto",
        description="How the battery's savings fall as it ages: 'simulated' = the study simulates its battery "
                    "strategies again with the energy left at end of life and interpolates in the state of health; "
                    "'proportional' = savings x state of health; 'auto' = simulated under a demand charge (power "
                    "keeps part of the value there), proportional otherwise (docs/simulation.md 'Battery ageing')")

    def spec(self) -> BatterySpec:
        """The plain :class:`BatterySpec` the planner, dispatcher and plant take."""
        return BatterySpec.model_validate(self.model_dump(include=set(BatterySpec.model_fields)))

    def ageing(self) -> BatteryAgeing:
        """The linear cycle + calendar fade model of this battery."""
        return BatteryAgeing(self.cycle_life, self.calendar_life_years, self.end_of_life_soh_pct)


class ScenarioTariff(TariffRef):
    """A tariff reference plus the yearly escalation applied in the multi-year cash flow."""

    escalation_pct_per_year: float = Field(default=3.0, ge=-20, le=50, description="[%/yr] nominal price rise")

    def ref(self) -> TariffRef:
        """The plain :class:`TariffRef`."""
        return TariffRef.model_validate(self.model_dump(include=set(TariffRef.model_fields)))


class SyntheticData(StrictModel):
    """A synthetic local calendar year (:func:`simulations.synthetic.synthetic_year`): clear-sky PV with seeded
    cloudiness scaled to the Hai Phong monthly yields, and a shift load with day types, holidays and Tết.

    ``preset`` fills in a named parameter set (:data:`simulations.synthetic.PRESETS`, e.g. ``hard``); keys given
    here win over the preset's."""

    preset: str | None = Field(default=None, description="A named parameter set, e.g. hard")
    year: int = Field(ge=2000, le=2100)
    seed: int = 7
    annual_yield_kwh_per_kwp: float = Field(default=1100.0, gt=0, le=3000, description="[kWh/kWp/yr]")
    daily_energy_lag1: float | None = Field(
        default=None, ge=-0.5, le=0.95,
        description="Lag-one correlation of the daily PV energy, calibrated (None: today's generator, ≈0.83) [-]")
    daily_clearness_spread: float = Field(default=DAILY_CLEARNESS_SPREAD, gt=0, le=5,
                                          description="Standard deviation of the daily clearness in logit space [-]")
    load: LoadShape = LoadShape()

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return merge(PRESETS[data["preset"]], data)
        return data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}: choose one of {', '.join(sorted(PRESETS))}")
        return value


class DayAheadForecast(StrictModel):
    """A day-ahead PV forecast from outside, fed to the MPC as live through the external-forecast path
    (:mod:`simulations.day_ahead`, docs/simulation.md "Day-ahead forecast")."""

    daily_error_pct: float = Field(default=20.0, ge=0, le=100,
                                   description="Spread of the forecast's daily PV energy error (lognormal) [%]; 0 = "
                                               "each day's energy known exactly")
    issue_hour: int = Field(default=6, ge=0, le=23, description="Local hour the forecast is issued every day [h]")
    seed: int = Field(default=1, description="Seed of the forecast errors")
    band: bool = Field(default=True, description="The forecast carries its P10/P90 band per step, calibrated "
                                                 "to its error (as weather services give one); false: the point "
                                                 "forecast alone")
    band_width: float = Field(default=1.0, gt=0, le=5,
                              description="The band's width as a multiple of the calibrated one: below 1 an "
                                          "overconfident service, above 1 a timid one (what a miscalibrated band "
                                          "costs, and what recalibrating it recovers) [-]")


class CsvData(StrictModel):
    """Measured series: one CSV with a timestamp column and ``pv_kw``/``pv_kwh`` and ``load_kw``/``load_kwh``
    columns (format: docs/data.md)."""

    path: Path = Field(description="The CSV file, relative to the scenario file")
    pv_kwp: float | None = Field(default=None, gt=0,
                                 description="kWp of the plant the PV column was measured on; PV is scaled by "
                                             "pv.kwp / pv_kwp (None: used as is)")
    timestamps_at: Literal["start", "end"] = Field(
        default="start", description="What the file's timestamps label: the start of their interval (default), or "
                                     "its end, as many meter exports write (00:15 for 00:00–00:15, 24:00 for the "
                                     "day's last interval)")
    move_to_year: int | None = Field(
        default=None, ge=2000, le=2100,
        description="Move the data by whole weeks so that its first day falls within 3 days of the same date in "
                    "this year (weekdays kept): a meter year older than the tariff's prices, priced as today "
                    "(docs/data.md); None = as measured")
    fill_gaps_hours: float = Field(default=0.0, ge=0, le=168,
                                   description="Fill each gap of the measured series (missing rows, empty cells) up "
                                               "to this long: a straight line up to 1 h, else the same times on a "
                                               "like day (simulations/gap_fill.py, docs/data.md) [h]; 0 = gaps are "
                                               "errors")


class IrradianceData(StrictModel):
    """PV from measured irradiance: a CSV of GHI or plane-of-array irradiance converted through pvlib to the AC
    power of ``pv`` (:mod:`simulations.irradiance`, format: docs/data.md). It replaces the PV of the synthetic year
    or of the CSV (which then needs only a load column)."""

    path: Path = Field(description="The irradiance CSV, relative to the scenario file")
    timezone: str | None = Field(default=None, description="Zone of timestamps without offset (default: the site's)")
    year: int | None = Field(default=None, ge=2000, le=2100,
                             description="Relabel the file's timestamps to this local year (TMY files); None = as is")


class DataSection(StrictModel):
    """Where PV and load come from, and which part of it is simulated."""

    synthetic: SyntheticData | None = None
    csv: CsvData | None = None
    irradiance: IrradianceData | None = None
    start: date | None = Field(default=None, description="First local day simulated (default: the first of the data)")
    days: int | None = Field(default=None, ge=1, le=366, description="Days simulated (default: all the data)")
    pv_forecast: DayAheadForecast | None = Field(
        default=None, description="A day-ahead PV forecast from outside for the MPC (simulations/day_ahead.py); "
                                  "None = the built-in forecasts only")
    warmup_days: int = Field(default=21, ge=0, le=60,
                             description="Days of measured history the MPC starts with: the data's days before "
                                         "data.start, else the same weekdays 52 weeks later (simulations/warmup.py, "
                                         "docs/simulation.md) [d]; 0 = a cold start with no history")

    @model_validator(mode="after")
    def _sources(self) -> DataSection:
        if self.synthetic is None and self.csv is None:
            raise ValueError("give data.synthetic, data.csv, or both (the CSV's load with the synthetic year's PV)")
        if self.synthetic is not None and self.csv is not None and self.irradiance is not None:
            raise ValueError("data.synthetic has nothing to give beside data.csv (the load) and data.irradiance "
                             "(the PV): drop it (synthetic: null)")
        return self

    @property
    def synthetic_load(self) -> SyntheticData | None:
        """The synthetic year whose load is simulated (None: the load is measured, ``data.csv``)."""
        return self.synthetic if self.csv is None else None

    @property
    def synthetic_pv(self) -> SyntheticData | None:
        """The synthetic year whose PV is simulated (None: the PV is measured, from ``data.csv`` or irradiance)."""
        return self.synthetic if self.irradiance is None else None


class Costs(StrictModel):
    """Investment and running costs, in the tariff's currency."""

    currency: str = Field(default="VND", min_length=1)
    pv_per_kwp: float = Field(ge=0, description="PV installed [currency/kWp]")
    battery_per_kwh: float = Field(ge=0, description="Battery installed, energy part [currency/kWh]")
    battery_per_kw: float = Field(default=0.0, ge=0, description="Battery PCS, power part [currency/kW]")
    pv_om_per_kwp_year: float = Field(default=0.0, ge=0, description="[currency/kWp/yr]")
    battery_om_per_kwh_year: float = Field(default=0.0, ge=0, description="[currency/kWh/yr]")
    battery_replacement_pct: float = Field(default=60.0, ge=0, le=200,
                                           description="Replacement cost in % of the initial battery capex [%]")


class Finance(StrictModel):
    discount_rate_pct: float = Field(default=8.0, ge=0, le=50, description="Nominal discount rate [%/yr]")
    lifetime_years: int = Field(default=20, ge=1, le=50, description="Study life [yr]")
    om_escalation_pct_per_year: float | None = Field(
        default=None, ge=-20, le=50, description="[%/yr] nominal rise of O&M costs; None = the tariff escalation")
    vat_recoverable: bool = Field(default=True,
                                  description="Savings exclude VAT (a VAT-registered factory recovers input VAT)")


class Co2(StrictModel):
    grid_factor_t_per_mwh: float = Field(default=0.681, ge=0, le=2,
                                         description="Grid emission factor [tCO2/MWh] (Viet Nam 2024: 0.681)")
    jcm_factor_t_per_mwh: float | None = Field(
        default=None, ge=0, le=2, description="Conservative factor for the JCM-style PV figure [tCO2/MWh]; "
                                              "None = not reported")


class StudyControl(StrictModel):
    """The live controller's settings a study models (the live ``control`` section's keys of the same name)."""

    fallback_mode: FallbackMode = Field(
        default="self_consumption",
        description="What the MPC does after a solver failure once its last plan has expired, as live: "
                    "self_consumption or tou_rule")


class Scenario(StrictModel):
    """One offline study case."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    site: SiteInfo
    pv: PVSpec
    battery: ScenarioBattery
    grid: GridSpec = GridSpec()
    tariff: ScenarioTariff
    planner: PlannerSettings = PlannerSettings()
    dispatch: DispatchSettings = DispatchSettings()
    control: StudyControl = StudyControl()
    data: DataSection
    costs: Costs
    finance: Finance = Finance()
    co2: Co2 = Co2()
    strategies: list[StrategyName] = Field(default_factory=lambda: list(ALL_STRATEGIES), min_length=1)

    _base_dir: Path = PrivateAttr(default=Path("."))

    @field_validator("strategies")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("strategies must not repeat")
        return value

    @property
    def base_dir(self) -> Path:
        """Directory against which relative paths in the scenario resolve."""
        return self._base_dir

    def resolve(self, path: Path) -> Path:
        """``path`` if absolute, else relative to the scenario file's directory."""
        return path if path.is_absolute() else self._base_dir / path

    def resized(self, pv_kwp: float, battery_kwh: float) -> Scenario:
        """The same case with another PV size and battery energy (sweeps).

        The PV inverter AC limit keeps its ratio to kWp; the battery power keeps its C-rate (0.5 C when
        the base case has no battery), so one sweep axis sizes the whole battery. Measured PV (``data.csv``) without
        ``pv_kwp`` was measured on the base case's plant: it is scaled from ``pv.kwp`` of the base (it stayed as
        measured, the same energy in every cell of a PV sweep while the investment grew).
        """
        ac_ratio = self.pv.ac_limit_kw / self.pv.kwp if self.pv.kwp > 0 else 1.0
        base_kwh = self.battery.capacity_kwh
        c_charge = self.battery.max_charge_kw / base_kwh if base_kwh > 0 else 0.5
        c_discharge = self.battery.max_discharge_kw / base_kwh if base_kwh > 0 else 0.5
        data = self.model_dump()
        data["pv"].update(kwp=pv_kwp, ac_kw=pv_kwp * ac_ratio if pv_kwp > 0 else None)
        data["battery"].update(capacity_kwh=battery_kwh, max_charge_kw=battery_kwh * c_charge,
                               max_discharge_kw=battery_kwh * c_discharge)
        measured = data["data"]["csv"]
        if measured is not None and measured["pv_kwp"] is None and data["data"]["irradiance"] is None \
                and self.pv.kwp > 0:
            measured["pv_kwp"] = self.pv.kwp
        data["name"] = f"{self.name}-pv{_size_label(pv_kwp)}-bat{_size_label(battery_kwh)}"
        out = Scenario.model_validate(data)
        out._base_dir = self._base_dir
        return out


def _size_label(value: float) -> str:
    """A size as it may stand in a scenario name: ``1000000``, ``2.5`` (``:g`` wrote ``1e+06``, a name refused)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def merge(base: Any, override: Any) -> Any:
    """Deep merge for ``extends``: mappings merge key by key, anything else in ``override`` replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override


def _raw(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    data = read_yaml(path)
    if data is None:
        raise ConfigError(str(path), [FieldError("(top level)", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(str(path), [FieldError("(top level)", "a scenario must be a mapping")])
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(str(path), [FieldError("extends", "must be a file name")])
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen:
        raise ConfigError(str(path), [FieldError("extends", f"circular: {parent} extends this file again")])
    if not parent_path.is_file():
        raise ConfigError(str(path), [FieldError("extends", f"no such file {parent_path}")])
    return merge(_raw(parent_path, (*seen, parent_path)), data)


def load_scenario(path: str | Path) -> Scenario:
    """Read, merge (``extends``) and validate a scenario file; errors name the file and the field."""
    p = Path(path)
    scenario = validate(Scenario, _raw(p, (p.resolve(),)), str(p))
    scenario._base_dir = p.parent
    return scenario
