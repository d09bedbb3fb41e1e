"""Sizing sweeps: one scenario over a grid of PV and battery sizes, on local processes or a Dask cluster.

Each cell resizes the scenario (:meth:`Scenario.resized`: the inverter keeps its DC/AC ratio, the battery
its C-rate), runs the reference, PV only and one battery strategy, and keeps the headline economics.
Cells are independent; they run on a ``concurrent.futures.ProcessPoolExecutor`` (default) or, given an
address, on a ``dask.distributed`` cluster. Outputs: ``sweep.csv``, heatmaps (PNG and SVG) of the payback and
NPV of PV + battery against no system and of the battery against PV only, and ``sweep.html`` (figures inline,
laid out like the study report). A period that is not a whole number of years is scaled to a year and every
output says so.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ems.yamlfile import ConfigError
from simulations.report import STRATEGY_LABELS
from simulations.scenario import Scenario

#: Most sizes one axis of a sweep may have (a typo such as ``0:2000:0.1`` would
#: ask for 20,001 simulated years per battery size).
MAX_SIZES_PER_AXIS = 200


def parse_range(text: str) -> list[float]:
    """``"0:2000:250"`` → 0, 250, …, 2000 (stop included); ``"500"`` → [500]; ``"0,500,1500"`` → a list.

    Raises ValueError naming the problem: a value that is not a finite number, a negative or repeated size, a
    range going nowhere or one of more than :data:`MAX_SIZES_PER_AXIS` sizes.
    """
    if "," in text:
        values = [_size(v, text) for v in text.split(",")]
    elif ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"range {text!r} must be START:STOP:STEP")
        start, stop, step = (_size(p, text) for p in parts)
        if step <= 0 or stop < start:
            raise ValueError(f"range {text!r} needs STEP > 0 and STOP ≥ START")
        count = int(np.floor((stop - start) / step + 1e-9)) + 1  # STOP itself when a whole number of STEPs away
        if count > MAX_SIZES_PER_AXIS:
            raise ValueError(f"range {text!r} gives {count:,} sizes; at most {MAX_SIZES_PER_AXIS} (a larger STEP)")
        values = [round(start + i * step, 9) for i in range(count)]
    else:
        values = [_size(text, text)]
    if any(v < 0 for v in values):
        raise ValueError(f"range {text!r} has a negative size")
    if len(set(values)) != len(values):
        raise ValueError(f"range {text!r} repeats a size")
    if len(values) > MAX_SIZES_PER_AXIS:
        raise ValueError(f"range {text!r} gives {len(values):,} sizes; at most {MAX_SIZES_PER_AXIS}")
    return values


def _size(part: str, text: str) -> float:
    """One number of a size range; ValueError naming it and the range if it is not a finite number."""
    try:
        value = float(part)
    except ValueError:
        raise ValueError(f"range {text!r}: {part.strip()!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"range {text!r}: {part.strip()!r} is not a finite number")
    return value


def run_cell(scenario_data: dict[str, Any], base_dir: str, pv_kwp: float, battery_kwh: float,
             strategy: str, with_cash_flow: bool = False) -> dict[str, Any]:
    """Run one sweep cell (a picklable top-level function for process pools and Dask workers); with
    ``with_cash_flow`` the row also holds ``cash_flow_net``, the system's yearly net cash flow from year 0 (the
    investment) to the end of its study life [currency per year] (:func:`simulations.economics.cash_flow`)."""
    from simulations.runner import run

    base = Scenario.model_validate(scenario_data)
    base._base_dir = Path(base_dir)
    scenario = base.resized(pv_kwp, battery_kwh)
    result = run(scenario, strategies=[strategy])
    name = strategy if strategy in result.economics else "pv_only"
    e = result.economics[name]
    system = e["finance"]["system"]
    battery = e["finance"].get("battery") or {}
    summary = result.summary()
    ref = summary["strategies"]["no_system"]["annual_bill"]
    flow = {"cash_flow_net": [float(year["net"]) for year in e["cash_flow"]]} if with_cash_flow else {}
    return {
        "pv_kwp": pv_kwp, "battery_kwh": battery_kwh, "battery_kw": scenario.battery.max_discharge_kw,
        "strategy": name, "annual_bill_no_system": ref, "annual_bill": e["annual_bill"],
        "annual_bill_pv_only": summary["strategies"]["pv_only"]["annual_bill"],
        "savings_vs_no_system": e["savings_vs_no_system"], "savings_vs_pv_only": e["savings_vs_pv_only"],
        "capex": system["capex"], "simple_payback_years": system["simple_payback_years"],
        "discounted_payback_years": system["discounted_payback_years"], "npv": system["npv"],
        "irr_pct": 100 * system["irr"] if system["irr"] is not None else None,
        "battery_payback_years": battery.get("simple_payback_years"),
        "battery_discounted_payback_years": battery.get("discounted_payback_years"), "battery_npv": battery.get("npv"),
        "equivalent_full_cycles": e["equivalent_full_cycles"], "co2_avoided_t": e["co2_avoided_t"],
        "pv_kwh": e["pv_kwh"], "battery_capex": battery.get("capex", 0.0),
        "period_days": summary["period"]["days"], "whole_years": summary["period"]["whole_years"], **flow,
    }


FAILED = "failed"
"""Column of the cells that raised: the error (absent when every cell ran)."""


def run_cell_or_failure(scenario_data: dict[str, Any], base_dir: str, pv_kwp: float, battery_kwh: float,
                        strategy: str) -> dict[str, Any]:
    """:func:`run_cell`, or for a cell that raises a row of its sizes and the error (:data:`FAILED`): one cell's
    failure costs that cell, not the hours of the cells around it. A ``ConfigError`` (a bad scenario or data
    file, the same in every cell) still ends the sweep at once, with its message."""
    try:
        return run_cell(scenario_data, base_dir, pv_kwp, battery_kwh, strategy)
    except ConfigError:
        raise
    except Exception as exc:  # reported in the table, sweep.html and on stderr
        return {"pv_kwp": pv_kwp, "battery_kwh": battery_kwh, "strategy": strategy,
                FAILED: f"{type(exc).__name__}: {exc}"}


def sweep(scenario: Scenario, pv_kwp: Iterable[float], battery_kwh: Iterable[float], strategy: str,
          workers: int = 1, dask_address: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Run every (PV, battery) cell; one row per cell, sorted by PV then battery; a cell that raised has only its
    sizes and the error in column :data:`FAILED` (the column is there only then).

    Parameters
    ----------
    workers : int
        Local processes (1 = run in this process).
    dask_address : str, optional
        A ``dask.distributed`` scheduler address; cells run there instead of on local processes.
    progress : callable, optional
        Called with (cells done, cells total).
    """
    cells = [(p, b) for p in pv_kwp for b in battery_kwh]
    data = scenario.model_dump(mode="json")
    base = str(scenario.base_dir)
    args = [(data, base, p, b, strategy) for p, b in cells]
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress is not None:
            progress(len(rows), len(cells))

    run_all(run_cell_or_failure, args, done, workers=workers, dask_address=dask_address)
    table = pd.DataFrame(rows).sort_values(["pv_kwp", "battery_kwh"]).reset_index(drop=True)
    if FAILED in table.columns:
        table = table[[c for c in table.columns if c != FAILED] + [FAILED]]
    return table


def failed_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the cells that raised (none when the table has no :data:`FAILED` column)."""
    return table[table[FAILED].notna()] if FAILED in table.columns else table.iloc[0:0]


def run_all(function: Callable[..., dict[str, Any]], args: list[tuple[Any, ...]],
            done: Callable[[dict[str, Any]], None], workers: int = 1, dask_address: str | None = None) -> None:
    """Call ``function(*a)`` for each ``a`` of ``args`` (independent cases) here, on ``workers`` local
    processes or on the Dask cluster at ``dask_address``; ``done`` gets each result as it comes."""
    if dask_address is not None:
        from dask.distributed import Client, as_completed

        with Client(dask_address) as client:
            futures = [client.submit(function, *a, pure=False) for a in args]
            for future in as_completed(futures):
                done(future.result())
    elif workers <= 1:
        for a in args:
            done(function(*a))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(function, *zip(*args, strict=True)):
                done(row)


COLUMN_LABELS = {
    "pv_kwp": "PV [kWp]", "battery_kwh": "battery [kWh]", "battery_kw": "battery [kW]", "strategy": "battery dispatch",
    "annual_bill_no_system": "yearly bill, no PV or battery [{cur}]", "annual_bill": "yearly bill [{cur}]",
    "annual_bill_pv_only": "yearly bill, PV only [{cur}]",
    "savings_vs_no_system": "saving vs no PV, no battery [{cur}/yr]",
    "savings_vs_pv_only": "saving vs PV only [{cur}/yr]",
    "capex": "investment [{cur}]", "simple_payback_years": "PV + battery payback [yr]",
    "discounted_payback_years": "PV + battery payback, discounted [yr]", "npv": "PV + battery NPV [{cur}]",
    "irr_pct": "PV + battery IRR [%]", "battery_payback_years": "battery payback vs PV only [yr]",
    "battery_discounted_payback_years": "battery payback vs PV only, discounted [yr]",
    "battery_npv": "battery NPV vs PV only [{cur}]", "equivalent_full_cycles": "full cycles/yr (usable window)",
    "co2_avoided_t": "CO2 avoided [t/yr]", "pv_kwh": "PV used on site or exported [kWh/yr]",
    "battery_capex": "battery investment [{cur}]", "period_days": "days simulated", "whole_years": "whole years",
    FAILED: "failed: the error",
}
"""Plain column names for sweep.html (``{cur}`` = the currency)."""
DASH = "—"
"""A figure that does not exist or apply: an IRR the cell never reaches, a battery figure of a cell without one."""
BATTERY_FIGURES = frozenset({"savings_vs_pv_only", "battery_payback_years", "battery_discounted_payback_years",
                             "battery_npv", "equivalent_full_cycles", "battery_capex"})
"""The table's columns that are the battery's own figures: "—" in a cell without a battery (not 0.00)."""
NEVER = "never"
"""A payback the cell does not reach within the study life."""


def period_warning(table: pd.DataFrame) -> str | None:
    """The warning every output carries when the swept period is not a whole number of years; None otherwise."""
    from simulations.economics import study_year

    ran = table.drop(failed_cells(table).index)
    if ran.empty or bool(ran["whole_years"].all()):
        return None
    return study_year(float(ran["period_days"].iloc[0])).warning


def heatmap(table: pd.DataFrame, column: str, title: str, unit: str, scale: float = 1.0,
            missing: str = NEVER) -> plt.Figure:
    """A PV × battery heatmap of ``column`` / ``scale`` with the values written in the cells (``missing``
    where the value is NaN, "—" for a battery figure of a cell without a battery, "failed" in a cell that raised);
    each label is black or white, whichever reads better on its cell's colour."""
    if column not in table.columns:  # every cell failed
        table = table.assign(**{column: np.nan})
    grid = table.pivot(index="battery_kwh", columns="pv_kwp", values=column).astype(float) / scale
    failed = (table.assign(_failed=table.index.isin(failed_cells(table).index))
              .pivot(index="battery_kwh", columns="pv_kwp", values="_failed").fillna(False).to_numpy(dtype=bool))
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * grid.shape[1], 1.2 + 0.6 * grid.shape[0]))
    cmap = plt.get_cmap("viridis_r" if "payback" in column else "viridis")
    image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap=cmap)
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
    ax.set_xlabel("PV [kWp]")
    ax.set_ylabel("battery [kWh]")
    ax.set_title(title, fontsize=10)
    for (i, j), value in np.ndenumerate(grid.to_numpy()):
        if np.isnan(value):
            no_battery = column.startswith("battery") and grid.index[i] == 0
            label = "failed" if failed[i, j] else DASH if no_battery else missing
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color="black")
            continue
        r, g, b, _ = cmap(image.norm(value))
        colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=colour)
    if not np.isnan(grid.to_numpy()).all():
        fig.colorbar(image, ax=ax, label=unit)
    return fig


def _maps(currency: str) -> tuple[tuple[str, str, str, str, float, str], ...]:
    """(file stem, column, title, unit, scale, label of an empty cell) of every heatmap."""
    return (
        ("payback", "simple_payback_years", "PV + battery against no system: simple payback [years]", "years", 1.0,
         NEVER),
        ("npv", "npv", f"PV + battery against no system: NPV [billion {currency}]", f"billion {currency}", 1e9,
         DASH),
        ("battery-payback", "battery_discounted_payback_years",
         "Battery against PV only: discounted payback [years]", "years", 1.0, NEVER),
        ("battery-npv", "battery_npv", f"Battery against PV only: NPV [billion {currency}]", f"billion {currency}",
         1e9, DASH),
    )


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return html.escape(str(value))


def write_sweep(table: pd.DataFrame, out_dir: Path, scenario: Scenario, command: str, currency: str,
                data_warnings: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``sweep.csv``, the heatmaps (``payback``, ``npv``, ``battery-payback``, ``battery-npv``; PNG and SVG)
    and ``sweep.html`` into ``out_dir``, with ``data_warnings`` (``SeriesData.warnings`` of the scenario's data) as
    banners. Returns the paths written (PNG for the heatmaps)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / "sweep.csv", "html": out_dir / "sweep.html"}
    table.to_csv(paths["table"], index=False)
    has_battery = bool((table["battery_kwh"] > 0).any())
    figures = []
    for stem, column, title, unit, scale, missing in _maps(currency):
        if column.startswith("battery") and not has_battery:
            continue
        fig = heatmap(table, column, title, unit, scale, missing)
        fig.savefig(out_dir / f"{stem}.png", dpi=110, bbox_inches="tight")
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # no wall-clock time
        (out_dir / f"{stem}.svg").write_text(buf.getvalue(), encoding="utf-8")
        figures.append((title, buf.getvalue()[buf.getvalue().index("<svg"):]))
        paths[stem] = out_dir / f"{stem}.png"
        plt.close(fig)
    head = "".join(f"<th>{html.escape(COLUMN_LABELS.get(c, c).format(cur=currency))}</th>" for c in table.columns)
    shown = table.astype(object).assign(strategy=table["strategy"].map(lambda n: STRATEGY_LABELS.get(n, n)))
    sizes = {"pv_kwp", "battery_kwh", "battery_kw"}
    money = {c for c, label in COLUMN_LABELS.items() if "{cur}" in label}

    def text(column: str, value: Any, battery_kwh: float) -> str:
        if battery_kwh == 0 and column in BATTERY_FIGURES:
            return DASH
        if (column in sizes or column in money) and pd.notna(value):
            return f"{value:,.0f}"
        never = "payback" in column and pd.isna(value) and not (column.startswith("battery") and battery_kwh == 0)
        return NEVER if never else _cell(value)

    body = "".join("<tr>" + "".join(f"<td>{text(c, v, row.battery_kwh)}</td>"
                                    for c, v in zip(shown.columns, row, strict=True)) + "</tr>"
                   for row in shown.itertuples(index=False))
    warning = period_warning(table)
    failures = failed_cells(table)
    failed_note = (f'<p class="failed" id="failed-cells">{len(failures)} of {len(table)} cells failed and are marked '
                   '"failed" in the maps: ' + "; ".join(
                       f"PV {r.pv_kwp:g} kWp, battery {r.battery_kwh:g} kWh: {html.escape(str(r.failed))}"
                       for r in failures.itertuples()) + "</p>") if len(failures) else ""
    strategy = str(shown["strategy"].iloc[-1]) if len(table) else ""
    style = ("body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#222}"
             ".warning{border-left:6px solid #c07000;background:#fff4e0;padding:0.4em 0.8em}"
             ".failed{border-left:6px solid #b00020;background:#fde8ea;padding:0.4em 0.8em}"
             "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
             "svg{max-width:100%;height:auto}.small{font-size:11px;color:#555}")
    paths["html"].write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(scenario.name)} – sizing sweep</title>
<style>{style}</style></head><body>
<h1>{html.escape(scenario.name)}: sizing sweep</h1>
{f'<p class="warning" id="period-warning">{html.escape(warning)}</p>' if warning else ''}
{''.join(f'<p class="warning data-warning">Data: {html.escape(w)}</p>' for w in data_warnings)}
{failed_note}
<p>Battery dispatch in every cell: {html.escape(strategy)}; battery power at the base case's C-rate; yearly figures
in {html.escape(currency)}; discount rate {scenario.finance.discount_rate_pct:g} %, study life
{scenario.finance.lifetime_years} years. "{NEVER}": the cell does not pay back within the study life (a discounted
payback: at the discount rate); {DASH}: the figure does not exist (an IRR of a cell that does not pay back) or does
not apply (a battery figure of a cell without a battery).</p>
<h2>Maps</h2>{''.join(f'<div>{svg}</div>' for _, svg in figures)}
<h2>Table</h2><div style="overflow-x:auto"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<p class="small">Reproduce: <code>{html.escape(command)}</code></p>
</body></html>
""", encoding="utf-8")
    return paths
