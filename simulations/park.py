"""Park studies: every site of an industrial park its own scenario, run on local processes or a Dask
cluster, with a park table (per site and in total: investment, savings, payback, CO2).

A park file (YAML) lists the sites::

    name: deep-c-zone-1
    strategy: perfect_foresight      # battery dispatch of every site (default)
    start: 2026-06-01                # optional, overrides every site's data.start (local date)
    days: 7                          # optional, overrides every site's data.days
    sites:
      - id: factory-a                # unique in the park
        scenario: scenarios/factory-a.yaml   # relative to the park file
        pv_kwp: 1000                 # optional: resize (default: the scenario's own sizes)
        battery_kwh: 2000

Each site runs as one sweep cell (:func:`simulations.sweep.run_cell`), so a park study and a sizing
sweep give a site the same figures. The park total adds investments, bills, savings and CO2. Each
row also gets ``investment_over_saving_years``, the investment over the yearly saving (for the
total, the summed ones); the payback from each site's cash flow (O&M, ageing, replacements) stays a
per-site figure. All sites must use one currency.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ems.yamlfile import load_model
from simulations.scenario import ALL_STRATEGIES, Scenario, load_scenario
from simulations.sweep import period_warning, run_all, run_cell

TOTAL = "park total"
"""The ``site`` of the park table's total row."""
SUMMED = ("capex", "annual_bill_no_system", "annual_bill", "savings_vs_no_system", "savings_vs_pv_only",
          "co2_avoided_t", "pv_kwp", "battery_kwh")
"""Columns the park total adds up."""


class ParkSite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Site id, unique in the park")
    scenario: Path = Field(description="Scenario YAML, relative to the park file")
    pv_kwp: float | None = Field(default=None, ge=0, description="PV size [kWp]; default the scenario's")
    battery_kwh: float | None = Field(default=None, ge=0, description="Battery energy [kWh]; default the scenario's")


class Park(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    strategy: str = "perfect_foresight"
    start: date | None = None
    days: int | None = Field(default=None, ge=1)
    sites: tuple[ParkSite, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_and_known(self) -> Park:
        seen: set[str] = set()
        for site in self.sites:
            if site.id in seen:
                raise ValueError(f"sites: site id {site.id!r} appears twice; each site needs its own id")
            seen.add(site.id)
        if self.strategy not in ALL_STRATEGIES or self.strategy == "pv_only":
            raise ValueError(f"strategy {self.strategy!r}: one of "
                             f"{', '.join(s for s in ALL_STRATEGIES if s != 'pv_only')}")
        return self


def load_park(path: Path) -> tuple[Park, list[Scenario]]:
    """The park file and each site's scenario (period overrides applied); errors name file and field."""
    park = load_model(Park, path)
    scenarios = []
    for site in park.sites:
        scenario = load_scenario(site.scenario if site.scenario.is_absolute() else path.parent / site.scenario)
        if park.start is not None or park.days is not None:
            data = scenario.model_dump()
            data["data"].update({k: v for k, v in (("start", park.start), ("days", park.days)) if v is not None})
            base = scenario.base_dir
            scenario = Scenario.model_validate(data)
            scenario._base_dir = base
        scenarios.append(scenario)
    return park, scenarios


def run_park(park: Park, scenarios: list[Scenario], workers: int = 1, dask_address: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per site (in the park file's order) and the :data:`TOTAL` row."""
    args = []
    for site, scenario in zip(park.sites, scenarios, strict=True):
        pv = site.pv_kwp if site.pv_kwp is not None else scenario.pv.kwp
        battery = site.battery_kwh if site.battery_kwh is not None else scenario.battery.capacity_kwh
        args.append((site.id, scenario.model_dump(mode="json"), str(scenario.base_dir), pv, battery, park.strategy))
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress is not None:
            progress(len(rows), len(args))

    run_all(run_site, args, done, workers=workers, dask_address=dask_address)
    order = {site.id: k for k, site in enumerate(park.sites)}
    table = pd.DataFrame(sorted(rows, key=lambda r: order[r["site"]]))
    table = pd.concat([table, pd.DataFrame([park_total(table)])], ignore_index=True)
    table["investment_over_saving_years"] = [investment_over_saving(c, s) for c, s in
                                             zip(table["capex"], table["savings_vs_no_system"], strict=True)]
    return table


def run_site(site: str, scenario_data: dict[str, Any], base_dir: str, pv_kwp: float, battery_kwh: float,
             strategy: str) -> dict[str, Any]:
    """One site of the park (a picklable top-level function for process pools and Dask workers)."""
    return {"site": site, **run_cell(scenario_data, base_dir, pv_kwp, battery_kwh, strategy)}


def park_total(table: pd.DataFrame) -> dict[str, Any]:
    """The park's sums (no cash-flow payback: that needs the sites' yearly cash flows)."""
    return {"site": TOTAL, **{c: float(table[c].sum()) for c in SUMMED}}


def investment_over_saving(capex: float, saving: float) -> float | None:
    """Investment / yearly saving [yr]; ``None`` without a saving."""
    return capex / saving if saving > 0 else None


def write_park(table: pd.DataFrame, out: Path, park: Park, command: str, currency: str) -> dict[str, Path]:
    """``park.csv`` (every column) and ``park.md`` (the headline columns, per site and in total, and the
    warning of a period that is not a whole number of years)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "park.csv", "report": out / "park.md"}
    table.to_csv(paths["table"], index=False)
    columns = [("site", "site"), ("pv_kwp", "PV [kWp]"), ("battery_kwh", "battery [kWh]"),
               ("capex", f"investment [{currency}]"), ("savings_vs_no_system", f"saving [{currency}/yr]"),
               ("investment_over_saving_years", "investment ÷ saving [yr]"),
               ("simple_payback_years", "payback, cash flow [yr]"), ("co2_avoided_t", "CO2 avoided [t/yr]")]
    lines = [f"# Park study: {park.name}", "", f"Battery dispatch: {park.strategy}. Command: `{command}`.", "",
             "| " + " | ".join(label for _, label in columns) + " |", "|" + "---|" * len(columns)]
    for row in table.to_dict("records"):
        cells = [_cell(row.get(key)) for key, _ in columns]
        if row["site"] == TOTAL:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Saving: yearly, against no PV and no battery (the simulated period scaled to a year). "
              "Investment ÷ saving: no O&M, ageing or replacements. Payback, cash flow: from each site's "
              "yearly cash flow with O&M, ageing and replacements (per site only); — = not reached or not "
              "computed. CO2: the grid emission factor of each site's scenario."]
    warning = period_warning(table[table["site"] != TOTAL])
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    paths["report"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 and not value.is_integer() else f"{value:,.0f}"
    return str(value)
