"""The planning-relevant part of a site description (validated with pydantic).

One YAML site file describes a site; this module validates the sections the planner needs
(``site``, ``pv``, ``battery``, ``grid``, ``tariff``, ``planner``). The controller's config
(``controller/config.py``) composes these models with devices, control and telemetry sections;
offline scenarios (``simulations/scenario.py``) reuse them too. Units follow docs/conventions.md.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from optimizer.tariff_calendar import TARIFF_CALENDAR


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(StrictModel):
    latitude: float = Field(ge=-90, le=90, description="[deg] north positive")
    longitude: float = Field(ge=-180, le=180, description="[deg] east positive")
    altitude_m: float = Field(default=0.0, ge=-500, le=9000, description="[m]")


SOLAR_NOON_LOCAL_H = (9.5, 15.5)
"""Local hours between which the sun may be highest at a site before its time zone and longitude are questioned:
12:30 ± 3 h, which holds every inhabited place on its legal time (western China on Beijing time: about 15:00). [h]"""
MAX_SHUTDOWN_SPAN_DAYS = 366
"""Longest span of ``site.planned_shutdowns`` entry. [d]"""


class DateSpan(StrictModel):
    """Consecutive local calendar days, both ends included."""

    first: date
    last: date

    @model_validator(mode="after")
    def _ordered(self) -> DateSpan:
        if self.last < self.first:
            raise ValueError(f"last ({self.last}) is before first ({self.first})")
        if (self.last - self.first).days >= MAX_SHUTDOWN_SPAN_DAYS:
            raise ValueError(f"a span may cover at most {MAX_SHUTDOWN_SPAN_DAYS} days")
        return self

    def days(self) -> list[date]:
        """Every day of the span, in order."""
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


class SiteInfo(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Short identifier, used in MQTT topics and InfluxDB tags")
    timezone: str = Field(description="IANA time zone for tariffs and people, e.g. Asia/Ho_Chi_Minh")
    location: Location
    planned_shutdowns: tuple[date | DateSpan, ...] = Field(
        default=(),
        description="Local days the plant does not produce, known ahead (e.g. its Tết shutdown): dates or "
                    "{first, last} spans. The load forecast plans them on the shutdown profile (docs/data.md); "
                    "billing is not changed (that is tariff.extra_holidays)")
    holidays: str | None = Field(
        default=TARIFF_CALENDAR,
        description="Public holidays the plant treats as Sundays in the load forecast: 'tariff' = the tariff's "
                    "calendar (holidays.country and subdivision, plus tariff.extra_holidays); an ISO country code of "
                    "the holidays package (plus tariff.extra_holidays); null = the plant works on public holidays "
                    "(tariff.extra_holidays still count)")
    worked_holidays: tuple[date, ...] = Field(
        default=(),
        description="Local days of site.holidays (or tariff.extra_holidays) the plant works as any day of their "
                    "week, e.g. a company calendar that works Respect for the Aged Day: the load forecast plans them "
                    "as working days (docs/data.md); billing is not changed")

    def solar_noon_warning(self) -> str | None:
        """A warning when the sun is highest far from midday in :attr:`timezone` at :attr:`location` (outside
        :data:`SOLAR_NOON_LOCAL_H` in mid-January, equation of time left out): the time zone or the longitude was
        most likely changed without the other (a copied example), and every PV forecast would be hours off.
        ``None`` when they agree."""
        offset = ZoneInfo(self.timezone).utcoffset(datetime(2026, 1, 15, 12))
        assert offset is not None
        noon_h = (12.0 - self.location.longitude / 15.0 + offset.total_seconds() / 3600.0) % 24.0
        lo, hi = SOLAR_NOON_LOCAL_H
        if lo <= noon_h <= hi:
            return None
        hours, minutes = divmod(round(noon_h * 60), 60)
        return (f"site.location.longitude {self.location.longitude:g}° puts solar noon at {hours:02d}:{minutes:02d} "
                f"local time in {self.timezone}: check site.location and site.timezone (PV would be forecast hours "
                f"off)")

    def shutdown_days(self) -> list[date]:
        """Every day of :attr:`planned_shutdowns`, sorted, without repeats."""
        days: set[date] = set()
        for entry in self.planned_shutdowns:
            days.update(entry.days() if isinstance(entry, DateSpan) else [entry])
        return sorted(days)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("holidays")
    @classmethod
    def _known_calendar(cls, value: str | None) -> str | None:
        if value is None or value == TARIFF_CALENDAR or value in holidays_lib.list_supported_countries():
            return value
        raise ValueError(f"unknown holiday calendar {value!r}: 'tariff', null or a country code of the holidays "
                         "package (e.g. VN, JP)")


class PVSpec(StrictModel):
    kwp: float = Field(ge=0, description="DC nameplate [kWp]")
    ac_kw: float | None = Field(default=None, gt=0, description="Inverter AC limit [kW]; default = kwp")
    tilt_deg: float = Field(default=10.0, ge=0, le=90, description="[deg] from horizontal")
    azimuth_deg: float = Field(default=180.0, ge=0, lt=360, description="[deg] 180 = south")
    losses_pct: float = Field(default=14.0, ge=0, lt=100, description="System losses [%]")
    degradation_pct_per_year: float = Field(default=0.5, ge=0, lt=10, description="[%/yr]")
    monthly_yield_kwh_per_kwp: tuple[float, ...] | None = Field(
        default=None,
        description="The site's long-term PV yield per month Jan..Dec [kWh/kWp] (e.g. from PVGIS or the Global Solar "
                    "Atlas): the PV forecast's climatology, live and in studies (docs/data.md); none = no blending")

    @field_validator("monthly_yield_kwh_per_kwp")
    @classmethod
    def _twelve_months(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return value
        if len(value) != 12:
            raise ValueError(f"needs 12 values (Jan..Dec), got {len(value)}")
        bad = [i + 1 for i, v in enumerate(value) if not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError(f"month {bad[0]}: {value[bad[0] - 1]!r} is not a yield [kWh/kWp] (finite, ≥ 0)")
        return value

    @property
    def ac_limit_kw(self) -> float:
        """AC output limit of the PV inverters. [kW]"""
        return self.ac_kw if self.ac_kw is not None else self.kwp


class BatteryUnit(StrictModel):
    """One battery system (PCS + BMS): its energy, power limits, efficiencies and SOC window.

    A site file's battery device carries one as ``battery:`` (``devices[i].battery``); a site's
    :class:`BatterySpec` adds the site-level costs.
    """

    capacity_kwh: float = Field(ge=0, description="Usable nameplate energy [kWh]")
    max_charge_kw: float = Field(ge=0, description="PCS charge limit [kW]")
    max_discharge_kw: float = Field(ge=0, description="PCS discharge limit [kW]")
    charge_efficiency: float = Field(default=0.95, gt=0, le=1, description="AC→stored [-]")
    discharge_efficiency: float = Field(default=0.95, gt=0, le=1, description="stored→AC [-]")
    soc_min_pct: float = Field(default=10.0, ge=0, le=100, description="[%]")
    soc_max_pct: float = Field(default=95.0, ge=0, le=100, description="[%]")

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.soc_min_pct >= self.soc_max_pct:
            raise ValueError(f"soc_min_pct ({self.soc_min_pct}) must be below soc_max_pct ({self.soc_max_pct})")
        return self

    @property
    def soc_min_kwh(self) -> float:
        return self.capacity_kwh * self.soc_min_pct / 100.0

    @property
    def soc_max_kwh(self) -> float:
        return self.capacity_kwh * self.soc_max_pct / 100.0

    def at_health(self, soh_pct: float | None) -> Self:
        """This battery with the energy it holds at the state of health ``soh_pct`` [%]: ``capacity_kwh`` ×
        :func:`health_share` (powers, efficiencies and the SOC window unchanged; itself at 100 % or when the value is
        not one planning uses)."""
        share = health_share(soh_pct)
        return self if share == 1.0 else self.model_copy(update={"capacity_kwh": self.capacity_kwh * share})


SOH_FLOOR_PCT = 50.0
"""The lowest state of health planning takes from a BMS: below it a battery is far past its end of life (70–80 %),
and a BMS that does not compute SOH commonly reports 0. [%]"""


def planning_soh_pct(soh_pct: float | None) -> float | None:
    """A measured state of health as planning uses it [%]: rounded to a whole percent (a BMS's 0.1 % steps would
    re-build the planner's LP); None — plan on the nameplate — when not measured, not finite or outside
    [:data:`SOH_FLOOR_PCT`, 100]."""
    if soh_pct is None or not math.isfinite(soh_pct) or not SOH_FLOOR_PCT <= soh_pct <= 100.0:
        return None
    return float(round(soh_pct))


def health_share(soh_pct: float | None) -> float:
    """The share of its nameplate ``capacity_kwh`` a battery holds at the measured state of health ``soh_pct`` [%]
    (:func:`planning_soh_pct`; 1 when that is None): the BMS's SOC is a share of this energy. [-]"""
    used = planning_soh_pct(soh_pct)
    return 1.0 if used is None else used / 100.0


class BatterySpec(BatteryUnit):
    """The site's battery as the planner sees it (with several units: their aggregate, see :func:`aggregate_units`)."""

    wear_cost_per_kwh: float = Field(
        default=0.0, ge=0,
        description="Cost per kWh of AC throughput, charged on charge + discharge [currency/kWh]")
    standby_loss_kw: float = Field(default=0.0, ge=0, description="Self-consumption of the system [kW]")


UNIT_FIELDS = tuple(BatteryUnit.model_fields)
"""The battery fields a site derives from its units."""


def aggregate_units(units: list[BatteryUnit]) -> dict[str, float]:
    """The aggregate battery of ``units`` (at least one):

    - ``capacity_kwh``, ``max_charge_kw``, ``max_discharge_kw``: sums;
    - ``soc_min_pct``, ``soc_max_pct``, ``charge_efficiency``, ``discharge_efficiency``: capacity-weighted
      means, ``Σ Eᵢ·xᵢ / Σ Eᵢ`` (so the usable energy ``Σ Eᵢ·(maxᵢ − minᵢ)/100`` is the sum of the units'),
      plain means when every capacity is 0.
    """
    total = sum(u.capacity_kwh for u in units)
    weights = [u.capacity_kwh / total if total > 0 else 1.0 / len(units) for u in units]

    def mean(name: str) -> float:
        return sum(w * getattr(u, name) for w, u in zip(weights, units, strict=True))

    return {"capacity_kwh": total, "max_charge_kw": sum(u.max_charge_kw for u in units),
            "max_discharge_kw": sum(u.max_discharge_kw for u in units),
            "charge_efficiency": mean("charge_efficiency"), "discharge_efficiency": mean("discharge_efficiency"),
            "soc_min_pct": mean("soc_min_pct"), "soc_max_pct": mean("soc_max_pct")}


def raw_battery_units(data: Any) -> list[BatteryUnit] | None:
    """The valid ``battery:`` specs of a raw site file's battery devices, or ``None`` when there are none or one
    of them is missing or invalid (the schema check reports it)."""
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        return None
    raw = [d.get("battery") for d in devices if isinstance(d, dict) and d.get("role") == "battery"]
    if not raw or any(not isinstance(r, dict) for r in raw):
        return None
    try:
        return [BatteryUnit.model_validate(r) for r in raw]
    except ValidationError:
        return None


def with_derived_battery(data: Any) -> Any:
    """Raw site data whose top-level ``battery:`` gets each unit-derived field it omits (:func:`aggregate_units`).

    Given fields are kept as they are (a site file's check compares them with the derived ones)."""
    units = raw_battery_units(data)
    if units is None:
        return data
    given = data.get("battery")
    if given is not None and not isinstance(given, dict):
        return data
    derived = aggregate_units(units)
    return {**data, "battery": {**derived, **(given or {})}}


class GridSpec(StrictModel):
    import_cap_kw: float | None = Field(default=None, gt=0, description="Contracted import capacity [kW]; None = none")
    export_cap_kw: float = Field(default=0.0, ge=0, description="Export cap [kW]; 0 = zero-export site")


class TariffRef(StrictModel):
    """Which tariff applies: a shipped preset name or a YAML file (relative to the site file)."""

    preset: str | None = None
    file: Path | None = None
    extra_holidays: list[date] = Field(default_factory=list,
                                       description="Days billed as public holidays, e.g. a Tết shutdown")

    @model_validator(mode="after")
    def _one_source(self) -> TariffRef:
        if (self.preset is None) == (self.file is None):
            raise ValueError("give exactly one of tariff.preset or tariff.file")
        return self


class PlannerSettings(StrictModel):
    step_minutes: int = Field(default=15, ge=1, le=60)
    horizon_hours: float = Field(default=24.0, gt=0, le=24 * 7)
    block_minutes: int = Field(
        default=30, ge=0, le=240,
        description="After fine_hours, the LP plans in blocks of this many minutes aligned to the clock (a multiple "
                    "of step_minutes); plans are still reported per step (optimizer/coarse_horizon.py) [min]; "
                    "0, or at most one step = every step at step_minutes")
    fine_hours: float = Field(
        default=1.0, ge=0, le=24 * 7,
        description="Hours from a plan's start that the LP plans at step_minutes before the blocks begin [h]")
    time_limit_s: float = Field(default=5.0, gt=0, le=600, description="Solver wall-clock limit [s]")
    plan_valid_hours: float = Field(default=2.0, gt=0,
                                    description="A plan older than this is expired and not followed [h]")
    terminal_value: Literal["auto", "none"] = Field(
        default="auto",
        description="Value energy left at the horizon end (auto: cheapest import price × η; under a demand charge on "
                    "a flat energy price 1 % above its cost, so the battery is kept full)")
    soc_slack_penalty_per_kwh: float = Field(
        default=1e6, gt=0, description="Penalty on SOC-window slack [currency/kWh]")
    surplus_rule: Literal["quantile", "off"] = Field(
        default="quantile",
        description="In the cheapest window, plan the later daylight steps on the PV quantile at level "
                    "c_now / c_later so that night grid charging leaves room for a likely PV surplus "
                    "(optimizer/surplus.py); off: the point forecast everywhere")
    surplus_room_level: float | None = Field(
        default=0.7, ge=0.5, le=0.9,
        description="With surplus_rule quantile: in a daylight price window followed by a dearer one, plan the "
                    "window's later steps, and the later steps at the same price before the next cheaper one, on "
                    "the PV quantile at this level (under a demand charge only those where it covers the load "
                    "forecast), so the battery makes room early for a likely surplus (optimizer/surplus.py; 0.7 "
                    "measured best, docs/planner.md); null: the point forecast there")
    surplus_flat_level: float | None = Field(
        default=0.9, ge=0.5, le=0.9,
        description="With surplus_rule quantile, on a horizon with one import price (a flat energy tariff): plan "
                    "the steps where the PV quantile at this level covers the load forecast, so "
                    "the battery makes room for a likely surplus instead of being kept full through it "
                    "(optimizer/surplus.py; 0.9 measured best, docs/planner.md); null: the point forecast there")
    external_band_recalibrate: bool = Field(
        default=True,
        description="Scale an external forecast's P10/P90 band to its source's measured record before the planner "
                    "uses it (optimizer/external_accuracy.py: the band's sides × the 90 % quantile of the measured "
                    "misses in band widths, 0.5–3, once 200 steps are scored); false: the band as sent")
    demand_reserve_hours: float = Field(
        default=1.0, ge=0, le=24,
        description="Under a demand charge: how long a net load above the forecast (its upper error quantile) "
                    "may last; the plan keeps that much battery energy and power for it where it would set a new "
                    "monthly peak, or accepts the risk of a higher peak (docs/planner.md) [h]; 0 = off")
    demand_risk_margin: float = Field(
        default=0.0, ge=0, le=1,
        description="Under a demand charge, this share of the net load's upper forecast error is added to the load "
                    "forecast the plan is made on, so that it does not count on headroom under the peak that a load "
                    "above the forecast would take (docs/planner.md) [-]")
    demand_risk_margin_12_month: float = Field(
        default=0.125, ge=0, le=1,
        description="demand_risk_margin where the month's demand charge bills a peak for twelve months "
                    "(rolling_12_month_max): a peak the forecast missed costs a year of the rate there; measured on "
                    "eight synthetic years under the Japanese preset (the battery kept full, room made for a surplus), "
                    "0.125 kept 0.86 of perfect foresight's value with the best worst year (0.69); 0: 0.87 (worst "
                    "0.61), 0.25: 0.82, 0.5: 0.78 (docs/performance.md) [-]")
    demand_target_days: int = Field(
        default=5, ge=0, le=31,
        description="Under a demand charge, plan each month's peak at no less than the highest level the battery "
                    "could have held on each of this many recent days of measured net load, the peak the month is "
                    "likely to reach anyway (optimizer/peak_target.py, docs/planner.md) [d]; 0 = the month-to-date "
                    "peak only")
    demand_stress_level: float = Field(
        default=0.0, ge=0, le=5,
        description="Under a demand charge, the plan keeps at every moment the battery energy to hold the month's "
                    "peak through the rest of the horizon on a stress day: net load at the forecast plus this many "
                    "times its upper forecast error (optimizer/lp_model.py, docs/planner.md) [-]; 0 = off (the "
                    "default: with the recharge floor on it never binds; set it, e.g. 0.5, when the floor is off)")
    demand_floor_until_recharge: bool = Field(
        default=True,
        description="Under a demand charge, outside the cheapest price window, plan the month's peak at no less "
                    "than the lowest level the battery's energy now could hold on the stress net load (forecast + "
                    "demand_floor_stress_level × its upper error) until the next cheapest-price window "
                    "(optimizer/peak_target.py, docs/planner.md)")
    demand_floor_stress_level: float = Field(
        default=0.75, ge=0, le=5,
        description="The multiple of the net load's upper forecast error in the stress net load of "
                    "demand_floor_until_recharge; measured over four synthetic years, 0.75–1 keep the most value "
                    "and above ~1.1 the floor gives up too early (docs/planner.md, item 7) [-]")
    demand_stress_weight: float = Field(
        default=0.1, ge=0, le=1,
        description="Weight on the demand rate of the peak rise on a stress day the battery could not carry: the "
                    "chance of such a day [-]")
    demand_reserve_weight: float = Field(
        default=0.1, ge=0, le=1,
        description="Weight on the demand rate of the peak rise such an excess would cause where the battery could "
                    "not absorb it: the chance it comes (0.1 for the P90 excess) [-]")

    @field_validator("step_minutes")
    @classmethod
    def _on_the_clock(cls, value: int) -> int:
        if 60 % value:
            raise ValueError(f"{value} does not divide an hour; steps start on the clock: choose 1, 2, 3, 4, 5, 6, "
                             "10, 12, 15, 20, 30 or 60")
        return value

    @model_validator(mode="after")
    def _whole_blocks(self) -> PlannerSettings:
        if self.block_minutes > self.step_minutes and self.block_minutes % self.step_minutes:
            raise ValueError(f"planner.block_minutes ({self.block_minutes}) must be a multiple of "
                             f"planner.step_minutes ({self.step_minutes}) (or at most one step: no blocks)")
        return self

    @property
    def uses_peak_risk(self) -> bool:
        """Whether plans under a demand charge need the net load's upper forecast error (the reserve, the stress
        day or the recharge floor's stress net load is on)."""
        return (self.demand_reserve_hours > 0 or self.demand_stress_level > 0
                or (self.demand_floor_until_recharge and self.demand_floor_stress_level > 0))

    def risk_margin(self, peak_billed_months: int) -> float:
        """The share of the net load's upper forecast error added to the load forecast under a demand charge that
        bills a peak in ``peak_billed_months`` billing months: :attr:`demand_risk_margin_12_month` where it is more
        than one, else :attr:`demand_risk_margin`. [-]"""
        return self.demand_risk_margin_12_month if peak_billed_months > 1 else self.demand_risk_margin

    @property
    def horizon_steps(self) -> int:
        return round(self.horizon_hours * 60 / self.step_minutes)


class PlanningSite(StrictModel):
    """Everything the planner needs to know about a site."""

    site: SiteInfo
    pv: PVSpec
    battery: BatterySpec
    grid: GridSpec = GridSpec()
    tariff: TariffRef
    planner: PlannerSettings = PlannerSettings()

    @model_validator(mode="before")
    @classmethod
    def _derived_battery(cls, data: Any) -> Any:
        """A site file whose battery devices carry their own specs may omit the top-level battery sizes."""
        return with_derived_battery(data)


class PlanningSiteView(PlanningSite):
    """The planning sections of a full site file; other sections are ignored here (checked by their owners)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
