"""Park studies: every site of an industrial park its own scenario, run on local processes or a Dask
cluster, with a park table (per site and in total: investment, savings, payback, CO2).

A park file (YAML) lists the sites::

    name: deep-c-zone-1
    strategy: perfect_foresight      # battery dispatch of every site (default)
    start: 2026-06-01                # optional, overrides every site's data.start (local date)
    days: 7                          # optional, overrides every site's data.days
    jcm_factor_t_per_mwh: 0.6       # optional: the JCM conservative grid factor for every site
    shared_battery:                  # optional: one battery behind the park's connection instead
      capacity_kwh: 4000             #   of the sites' own batteries
      power_kw: 2000
    sites:
      - id: factory-a                # unique in the park
        scenario: scenarios/factory-a.yaml   # relative to the park file
        pv_kwp: 1000                 # optional: resize (default: the scenario's own sizes)
        battery_kwh: 2000

Each site runs as one sweep cell (:func:`simulations.sweep.run_cell`), so a park study and a sizing
sweep give a site the same figures. The park total adds investments, bills, savings and CO2. Each
row also gets ``investment_over_saving_years``, the investment over the yearly saving (for the
total, the summed ones); and the payback from the yearly cash flow with O&M, ageing and replacements: each
site's own, and for the park the sites' yearly cash flows added year by year (a site past its study life adds
nothing). All sites must use one currency.

CO2 comes twice: ``co2_avoided_t``, the fall in net grid import (battery losses count against it) ×
the scenario's grid factor; and ``co2_jcm_t``, JCM-style (methodology VN_AM007, "Installation of Solar
PV System"): reference emissions = the PV energy used on site or exported × a conservative grid factor,
project emissions 0. The factor is the park file's ``jcm_factor_t_per_mwh``, else the scenario's
``co2.jcm_factor_t_per_mwh``, else its grid factor (``jcm_factor_source`` says which).

A shared battery (:func:`run_shared_battery`) assumes the sites sit behind one park connection, metered
and billed once under their common tariff (required: every site the same tariff and time zone): the
sites' PV and load are added step by step, the sites' own batteries are left out, and one battery is
dispatched on the park's net load by the park's strategy, with the first site's battery parameters and
costs. It is compared with the sites' own batteries: bill, battery investment and payback, CO2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ems.yamlfile import ConfigError, FieldError, load_model
from simulations.economics import jcm_reduction_t, payback_years
from simulations.report import BOUNDS, STRATEGY_LABELS
from simulations.scenario import ALL_STRATEGIES, Scenario, load_scenario
from simulations.sweep import period_warning, run_all, run_cell

CASH_FLOW = "cash_flow_net"
"""Column of a site's yearly net cash flow (:func:`simulations.sweep.run_cell`), read by :func:`park_total` and
left out of the park table."""
TOTAL = "park total"
"""The ``site`` of the park table's total row."""
SUMMED = ("capex", "annual_bill_no_system", "annual_bill", "savings_vs_no_system", "savings_vs_pv_only",
          "co2_avoided_t", "co2_jcm_t", "pv_kwh", "pv_kwp", "battery_kwh", "battery_capex")
"""Columns the park total adds up."""


class ParkSite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Site id, unique in the park")
    scenario: Path = Field(description="Scenario YAML, relative to the park file")
    pv_kwp: float | None = Field(default=None, ge=0, description="PV size [kWp]; default the scenario's")
    battery_kwh: float | None = Field(default=None, ge=0, description="Battery energy [kWh]; default the scenario's")


class SharedBattery(BaseModel):
    """One battery behind the park's connection (its other parameters: the first site's battery)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capacity_kwh: float = Field(gt=0, description="Energy [kWh]")
    power_kw: float = Field(gt=0, description="Charge and discharge limit [kW]")


class Park(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    strategy: str = "perfect_foresight"
    start: date | None = None
    days: int | None = Field(default=None, ge=1)
    jcm_factor_t_per_mwh: float | None = Field(
        default=None, ge=0, le=2, description="JCM conservative grid factor for every site [tCO2/MWh]; default each "
                                              "scenario's co2.jcm_factor_t_per_mwh, else its grid factor")
    shared_battery: SharedBattery | None = None
    sites: tuple[ParkSite, ...] = Field(min_length=1)

    @field_validator("sites")
    @classmethod
    def _unique(cls, sites: tuple[ParkSite, ...]) -> tuple[ParkSite, ...]:
        seen: set[str] = set()
        for site in sites:
            if site.id in seen:
                raise ValueError(f"site id {site.id!r} appears twice; each site needs its own id")
            seen.add(site.id)
        return sites

    @field_validator("strategy")
    @classmethod
    def _battery_dispatch(cls, strategy: str) -> str:
        if strategy not in ALL_STRATEGIES or strategy == "pv_only":
            raise ValueError(f"{strategy!r} is not a battery dispatch: one of "
                             f"{', '.join(s for s in ALL_STRATEGIES if s != 'pv_only')}")
        return strategy


def load_park(path: Path) -> tuple[Park, list[Scenario]]:
    """The park file and each site's scenario (period overrides applied); errors name file and field."""
    park = load_model(Park, path)
    files = [site.scenario if site.scenario.is_absolute() else path.parent / site.scenario for site in park.sites]
    missing = [FieldError(f"sites[{i}].scenario", f"site {site.id!r}: no scenario file {file}")
               for i, (site, file) in enumerate(zip(park.sites, files, strict=True)) if not file.is_file()]
    if missing:
        raise ConfigError(str(path), missing)
    scenarios = []
    for file in files:
        scenario = load_scenario(file)
        if park.start is not None or park.days is not None:
            data = scenario.model_dump()
            data["data"].update({k: v for k, v in (("start", park.start), ("days", park.days)) if v is not None})
            base = scenario.base_dir
            scenario = Scenario.model_validate(data)
            scenario._base_dir = base
        scenarios.append(scenario)
    if park.shared_battery is not None:
        tariffs = {_tariff_key(s) for s in scenarios}
        if len(tariffs) > 1:
            raise ConfigError(str(path), [FieldError("shared_battery", "a battery behind one park connection needs "
                                                     "every site on the same tariff and time zone; the sites use "
                                                     f"{len(tariffs)} different ones")])
    return park, scenarios


def _tariff_key(scenario: Scenario) -> str:
    """The tariff a scenario is billed under (files resolved), with its time zone."""
    data = scenario.tariff.model_dump(mode="json")
    if data.get("file"):
        data["file"] = str(scenario.resolve(Path(data["file"])).resolve())
    return json.dumps({**data, "timezone": scenario.site.timezone}, sort_keys=True)


def run_park(park: Park, scenarios: list[Scenario], workers: int = 1, dask_address: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per site (in the park file's order) and the :data:`TOTAL` row."""
    args = []
    for site, scenario in zip(park.sites, scenarios, strict=True):
        pv = site.pv_kwp if site.pv_kwp is not None else scenario.pv.kwp
        battery = site.battery_kwh if site.battery_kwh is not None else scenario.battery.capacity_kwh
        args.append((site.id, scenario.model_dump(mode="json"), str(scenario.base_dir), pv, battery, park.strategy,
                     park.jcm_factor_t_per_mwh))
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress is not None:
            progress(len(rows), len(args))

    run_all(run_site, args, done, workers=workers, dask_address=dask_address)
    order = {site.id: k for k, site in enumerate(park.sites)}
    table = pd.DataFrame(sorted(rows, key=lambda r: order[r["site"]]))
    table = pd.concat([table, pd.DataFrame([park_total(table)])], ignore_index=True).drop(columns=CASH_FLOW)
    table["investment_over_saving_years"] = [investment_over_saving(c, s) for c, s in
                                             zip(table["capex"], table["savings_vs_no_system"], strict=True)]
    return table


def run_site(site: str, scenario_data: dict[str, Any], base_dir: str, pv_kwp: float, battery_kwh: float,
             strategy: str, jcm_factor_t_per_mwh: float | None = None) -> dict[str, Any]:
    """One site of the park (a picklable top-level function for process pools and Dask workers), with its
    JCM-style CO2 (``jcm_factor_t_per_mwh``: the park's factor, None = the scenario's)."""
    try:
        row = {"site": site, **run_cell(scenario_data, base_dir, pv_kwp, battery_kwh, strategy, with_cash_flow=True)}
    except ConfigError as exc:  # a site's bad data file: say which site it is
        raise ConfigError(f"site {site!r}: {exc.source}", exc.errors) from None
    co2 = scenario_data["co2"]
    if jcm_factor_t_per_mwh is not None:
        factor, source = jcm_factor_t_per_mwh, "park file"
    elif co2.get("jcm_factor_t_per_mwh") is not None:
        factor, source = co2["jcm_factor_t_per_mwh"], "scenario"
    else:
        factor, source = co2["grid_factor_t_per_mwh"], "grid factor"
    return {**row, "co2_jcm_t": jcm_reduction_t(row["pv_kwh"], factor), "jcm_factor_t_per_mwh": factor,
            "jcm_factor_source": source}


def run_shared_battery(park: Park, scenarios: list[Scenario], table: pd.DataFrame,
                       dask_address: str | None = None) -> dict[str, Any]:
    """The park's shared battery against the sites' own (``table``: :func:`run_park`'s).

    Returns ``{capacity_kwh, power_kw, per_site, shared, change}``; ``per_site`` and ``shared`` each hold
    ``annual_bill`` [currency/yr, the park's bills], ``battery_kwh``, ``battery_capex`` [currency],
    ``annual_bill_pv_only`` (the same PV without any battery: the sites' own connections, or the park's one),
    ``battery_saving`` (against PV only, [currency/yr]), ``battery_investment_over_saving_years`` [yr] and
    ``co2_avoided_t`` [t/yr]; ``shared`` also ``battery_payback_years`` (cash flow); ``change`` = shared −
    per site (its ``annual_bill_pv_only``: what one connection alone changes, the sites' surpluses serving
    other sites).
    """
    assert park.shared_battery is not None
    args = [(park.model_dump(mode="json"), [s.model_dump(mode="json") for s in scenarios],
             [str(s.base_dir) for s in scenarios])]
    results: list[dict[str, Any]] = []
    run_all(shared_battery_study, args, results.append, dask_address=dask_address)
    shared = results[0]
    sites = table[table["site"] != TOTAL]
    per_site = {"annual_bill": float(sites["annual_bill"].sum()),
                "annual_bill_pv_only": float(sites["annual_bill_pv_only"].sum()),
                "battery_kwh": float(sites["battery_kwh"].sum()),
                "battery_capex": float(sites["battery_capex"].sum()),
                "battery_saving": float(sites["savings_vs_pv_only"].sum()),
                "co2_avoided_t": float(sites["co2_avoided_t"].sum())}
    for side in (per_site, shared):
        side["battery_investment_over_saving_years"] = investment_over_saving(side["battery_capex"],
                                                                              side["battery_saving"])
    change = {key: (shared[key] - per_site[key] if shared[key] is not None and per_site[key] is not None else None)
              for key in per_site}
    return {"capacity_kwh": park.shared_battery.capacity_kwh, "power_kw": park.shared_battery.power_kw,
            "per_site": per_site, "shared": shared, "change": change}


def shared_battery_study(park_data: dict[str, Any], scenario_data: list[dict[str, Any]],
                         base_dirs: list[str]) -> dict[str, Any]:
    """The park behind one connection with one battery (a picklable top-level function, for Dask)."""
    from simulations.runner import SeriesData, load_data, run
    from simulations.warmup import Warmup

    park = Park.model_validate(park_data)
    assert park.shared_battery is not None
    sized, series = [], []
    for site, data, base in zip(park.sites, scenario_data, base_dirs, strict=True):
        scenario = Scenario.model_validate(data)
        scenario._base_dir = Path(base)
        scenario = scenario.resized(site.pv_kwp if site.pv_kwp is not None else scenario.pv.kwp,
                                    site.battery_kwh if site.battery_kwh is not None else scenario.battery.capacity_kwh)
        sized.append(scenario)
        series.append(load_data(scenario))
    first = series[0]
    for site, s in zip(park.sites, series, strict=True):
        if not (s.starts.equals(first.starts) and np.array_equal(s.duration_h, first.duration_h)):
            raise ConfigError(f"park {park.name}", [FieldError(
                "shared_battery", f"site {site.id!r} covers other steps than {park.sites[0].id!r}: a shared battery "
                                  "needs every site's data on the same steps (same step, start and days)")])
    aggregate = SeriesData(starts=first.starts, duration_h=first.duration_h,
                           pv_kw=np.sum([s.pv_kw for s in series], axis=0),
                           load_kw=np.sum([s.load_kw for s in series], axis=0),
                           warmup=Warmup(first.warmup.starts_ns, np.sum([s.warmup.pv_kw for s in series], axis=0),
                                         np.sum([s.warmup.load_kw for s in series], axis=0),
                                         first.warmup.wrapped_steps))
    data = sized[0].model_dump()
    kwp = sum(s.pv.kwp for s in sized)
    caps = [s.grid.import_cap_kw for s in sized]
    data["name"] = f"{park.name}-shared-battery"
    data["pv"].update(kwp=kwp, ac_kw=sum(s.pv.ac_limit_kw for s in sized) if kwp > 0 else None)
    data["battery"].update(capacity_kwh=park.shared_battery.capacity_kwh, max_charge_kw=park.shared_battery.power_kw,
                           max_discharge_kw=park.shared_battery.power_kw)
    data["grid"] = {"import_cap_kw": sum(c for c in caps if c is not None) if None not in caps else None,
                    "export_cap_kw": sum(s.grid.export_cap_kw for s in sized)}
    scenario = Scenario.model_validate(data)
    scenario._base_dir = sized[0].base_dir
    result = run(scenario, [park.strategy], data=aggregate)
    e, pv_only = result.economics[park.strategy], result.economics["pv_only"]
    battery = e["finance"]["battery"]
    return {"annual_bill": e["annual_bill"], "annual_bill_pv_only": pv_only["annual_bill"],
            "battery_kwh": park.shared_battery.capacity_kwh, "battery_capex": battery["capex"],
            "battery_saving": e["savings_vs_pv_only"], "battery_payback_years": battery["simple_payback_years"],
            "co2_avoided_t": e["co2_avoided_t"], "equivalent_full_cycles": e["equivalent_full_cycles"]}


def park_total(table: pd.DataFrame) -> dict[str, Any]:
    """The park's sums, and the simple payback [yr] of the sites' yearly net cash flows (column
    :data:`CASH_FLOW`, from year 0) added year by year: None when the sum does not turn within the longest
    study life, or nothing is invested."""
    flows = [np.asarray(flow, dtype=float) for flow in table[CASH_FLOW]]
    park_flow = np.zeros(max(len(flow) for flow in flows))
    for flow in flows:
        park_flow[:len(flow)] += flow
    capex = float(table["capex"].sum())
    return {"site": TOTAL, **{c: float(table[c].sum()) for c in SUMMED},
            "simple_payback_years": payback_years(park_flow) if capex > 0 else None}


def investment_over_saving(capex: float, saving: float) -> float | None:
    """Investment / yearly saving [yr]; ``None`` without a saving."""
    return capex / saving if saving > 0 else None


def write_park(table: pd.DataFrame, out: Path, park: Park, command: str, currency: str,
               shared: dict[str, Any] | None = None,
               data_warnings: dict[str, list[str]] | None = None) -> dict[str, Path]:
    """``park.csv`` (every column), ``park.md`` (the headline columns, per site and in total, the JCM
    factors, the shared battery against the sites' own, the warning of a period that is not a whole
    number of years and ``data_warnings`` per site: :func:`site_data_warnings`) and, with ``shared``
    (:func:`run_shared_battery`), ``park-shared-battery.json``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "park.csv", "report": out / "park.md"}
    table.to_csv(paths["table"], index=False)
    bound = park.strategy in BOUNDS
    saving = f"saving [{currency}/yr]" + (", upper bound" if bound else "")
    columns = [("site", "site"), ("pv_kwp", "PV [kWp]"), ("battery_kwh", "battery [kWh]"),
               ("capex", f"investment [{currency}]"), ("savings_vs_no_system", saving),
               ("investment_over_saving_years", "investment ÷ saving [yr]"),
               ("simple_payback_years", "payback, cash flow [yr]"),
               ("co2_avoided_t", "CO2 avoided, grid factor [t/yr]"), ("co2_jcm_t", "CO2, JCM-style [t/yr]")]
    dispatch = f"Battery dispatch: {strategy_label(park.strategy)}."
    if bound:
        dispatch += (" The savings, and every figure from them, are an upper bound: no plant dispatches with perfect "
                     "knowledge of its future; `strategy: mpc` in the park file gives what the sites can reach.")
    lines = [f"# Park study: {park.name}", "", f"{dispatch} Command: `{command}`.", "",
             "| " + " | ".join(label for _, label in columns) + " |", "|" + "---|" * len(columns)]
    for row in table.to_dict("records"):
        cells = [payback_text(row[key], row["capex"] > 0) if key == "simple_payback_years" else _cell(row.get(key))
                 for key, _ in columns]
        if row["site"] == TOTAL:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    sites = table[table["site"] != TOTAL]
    factors = "; ".join(f"{r['site']} {r['jcm_factor_t_per_mwh']:g} ({r['jcm_factor_source']})"
                        for r in sites.to_dict("records"))
    lines += ["", "Saving: yearly, against no PV and no battery (the simulated period scaled to a year). "
              "Investment ÷ saving: no O&M, ageing or replacements. Payback, cash flow: from each site's "
              "yearly cash flow with O&M, ageing and replacements; for the park, from the sites' yearly cash flows "
              "added year by year; never = not within the study life; — = nothing invested. CO2 avoided, grid "
              "factor: the fall in net grid import (battery losses count against it) × the grid emission factor "
              "of each site's scenario. CO2, JCM-style (methodology VN_AM007, Installation of Solar PV System): PV "
              "energy used on site or exported × a conservative grid factor, project emissions 0; the battery is "
              "not part of it.",
              "", f"JCM factors [t CO2/MWh]: {factors}."
              + (" A factor marked 'grid factor' is not the methodology's conservative factor: set "
                 "`jcm_factor_t_per_mwh` in the park file." if (sites["jcm_factor_source"] == "grid factor").any()
                 else "")]
    if shared is not None:
        lines += _shared_lines(shared, currency)
        paths["shared"] = out / "park-shared-battery.json"
        paths["shared"].write_text(json.dumps(shared, indent=2) + "\n", encoding="utf-8")
    warning = period_warning(sites)
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    for site, warnings in (data_warnings or {}).items():
        lines += ["", *(f"**Data of {site}:** {w}" for w in warnings)]
    paths["report"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def site_data_warnings(park: Park, scenarios: list[Scenario]) -> dict[str, list[str]]:
    """Per site on measured data, what makes that data less than it seems (``SeriesData.warnings``); sites without
    any are left out."""
    from simulations.runner import load_data

    found = {site.id: load_data(scenario).warnings for site, scenario in zip(park.sites, scenarios, strict=True)
             if scenario.data.csv is not None}
    return {site: warnings for site, warnings in found.items() if warnings}


def strategy_label(strategy: str) -> str:
    """The plain name of a park's battery dispatch, a bound labelled as such (``perfect foresight (upper
    bound)``)."""
    return STRATEGY_LABELS.get(strategy, strategy)


def _shared_lines(shared: dict[str, Any], currency: str) -> list[str]:
    """park.md's section on the shared battery."""
    rows = [("annual_bill", f"park's electricity bill [{currency}/yr]"),
            ("annual_bill_pv_only", f"the same without any battery [{currency}/yr]"),
            ("battery_kwh", "battery energy [kWh]"),
            ("battery_capex", f"battery investment [{currency}]"),
            ("battery_saving", f"battery saving against PV only [{currency}/yr]"),
            ("battery_investment_over_saving_years", "battery investment ÷ saving [yr]"),
            ("co2_avoided_t", "CO2 avoided, grid factor [t/yr]")]
    per_site, one, change = shared["per_site"], shared["shared"], shared["change"]
    lines = ["", f"## Shared park battery: {shared['capacity_kwh']:,.0f} kWh, {shared['power_kw']:,.0f} kW", "",
             "Assumption: the sites sit behind one park connection, metered and billed once under their common "
             "tariff; their PV and load add up step by step, their own batteries are left out and one battery "
             "is dispatched on the park's net load.", "",
             "| | sites' own batteries | one shared battery | change |", "|---|---|---|---|"]
    lines += [f"| {label} | {_cell(per_site[key])} | {_cell(one[key])} | {_change(change[key])} |"
              for key, label in rows]
    payback = payback_text(one["battery_payback_years"], True, " yr")
    payback += " (not within the study life)" if payback == NEVER else ""
    lines += ["", "Without any battery the change is what one connection alone does (one site's PV surplus "
              "serves another site instead of being exported or curtailed); the rest of the bill's change is the "
              f"battery's. The shared battery's cash-flow payback: {payback}."]
    return lines


NEVER = "never"
"""A cash-flow payback not reached within the study life."""


def payback_text(years: float | None, invested: bool, unit: str = "") -> str:
    """A cash-flow payback as the park study says it: the years (with ``unit``), :data:`NEVER` when an investment
    does not pay back within its study life, "—" when nothing is invested."""
    if years is None or pd.isna(years):
        return NEVER if invested else "—"
    return f"{float(years):.1f}{unit}"


def _change(value: Any) -> str:
    """A change with its sign: "+112,784,426", "−0.8" (a minus sign), "0"."""
    text = _cell(value)
    if text == "—" or text.strip("0.,") == "":
        return text
    return text.replace("-", "−") if text.startswith("-") else f"+{text}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 and not value.is_integer() else f"{value:,.0f}"
    return str(value)
