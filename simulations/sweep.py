"""Sizing sweeps: one scenario over a grid of PV and battery sizes, on local processes or a Dask cluster.

Each cell resizes the scenario (:meth:`Scenario.resized`: the inverter keeps its DC/AC ratio, the battery
its C-rate), runs the reference, PV only and one battery strategy, and keeps the headline economics.
Cells are independent; they run on a ``concurrent.futures.ProcessPoolExecutor`` (default) or, given an
address, on a ``dask.distributed`` cluster. Outputs: ``sweep.csv``, payback and NPV heatmaps (PNG and SVG)
and ``sweep.html`` (figures inline).
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from simulations.scenario import Scenario


def parse_range(text: str) -> list[float]:
    """``"0:2000:250"`` → 0, 250, …, 2000 (stop included); ``"500"`` → [500]; ``"0,500,1500"`` → a list.

    Raises ValueError naming the problem.
    """
    if "," in text:
        values = [float(v) for v in text.split(",")]
    elif ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"range {text!r} must be START:STOP:STEP")
        start, stop, step = (float(p) for p in parts)
        if step <= 0 or stop < start:
            raise ValueError(f"range {text!r} needs STEP > 0 and STOP ≥ START")
        values = list(np.arange(start, stop + step / 2, step))
    else:
        values = [float(text)]
    if any(v < 0 for v in values):
        raise ValueError(f"range {text!r} has a negative size")
    return [float(v) for v in values]


def run_cell(scenario_data: dict[str, Any], base_dir: str, pv_kwp: float, battery_kwh: float,
             strategy: str) -> dict[str, Any]:
    """Run one sweep cell (a picklable top-level function for process pools and Dask workers)."""
    from simulations.runner import run

    base = Scenario.model_validate(scenario_data)
    base._base_dir = Path(base_dir)
    scenario = base.resized(pv_kwp, battery_kwh)
    result = run(scenario, strategies=[strategy])
    name = strategy if strategy in result.economics else "pv_only"
    e = result.economics[name]
    system = e["finance"]["system"]
    battery = e["finance"].get("battery") or {}
    ref = result.summary()["strategies"]["no_system"]["annual_bill"]
    return {
        "pv_kwp": pv_kwp, "battery_kwh": battery_kwh, "battery_kw": scenario.battery.max_discharge_kw,
        "strategy": name, "annual_bill_no_system": ref, "annual_bill": e["annual_bill"],
        "savings_vs_no_system": e["savings_vs_no_system"], "savings_vs_pv_only": e["savings_vs_pv_only"],
        "capex": system["capex"], "simple_payback_years": system["simple_payback_years"],
        "discounted_payback_years": system["discounted_payback_years"], "npv": system["npv"], "irr": system["irr"],
        "battery_payback_years": battery.get("simple_payback_years"), "battery_npv": battery.get("npv"),
        "equivalent_full_cycles": e["equivalent_full_cycles"], "co2_avoided_t": e["co2_avoided_t"],
    }


def sweep(scenario: Scenario, pv_kwp: Iterable[float], battery_kwh: Iterable[float], strategy: str,
          workers: int = 1, dask_address: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Run every (PV, battery) cell; one row per cell, sorted by PV then battery.

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

    if dask_address is not None:
        from dask.distributed import Client, as_completed

        with Client(dask_address) as client:
            futures = [client.submit(run_cell, *a, pure=False) for a in args]
            for future in as_completed(futures):
                done(future.result())
    elif workers <= 1:
        for a in args:
            done(run_cell(*a))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(run_cell, *zip(*args, strict=True)):
                done(row)
    return pd.DataFrame(rows).sort_values(["pv_kwp", "battery_kwh"]).reset_index(drop=True)


def heatmap(table: pd.DataFrame, column: str, title: str, unit: str, scale: float = 1.0) -> plt.Figure:
    """A PV × battery heatmap of ``column`` / ``scale`` with the values written in the cells ("never" = NaN)."""
    grid = table.pivot(index="battery_kwh", columns="pv_kwp", values=column).astype(float) / scale
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * grid.shape[1], 1.0 + 0.6 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis_r" if "payback" in column
                      else "viridis")
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
    ax.set_xlabel("PV [kWp]")
    ax.set_ylabel("battery [kWh]")
    ax.set_title(title, fontsize=10)
    for (i, j), value in np.ndenumerate(grid.to_numpy()):
        text = "never" if np.isnan(value) else f"{value:.1f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if np.isnan(value) else "white")
    fig.colorbar(image, ax=ax, label=unit)
    return fig


def write_sweep(table: pd.DataFrame, out_dir: Path, scenario: Scenario, command: str, currency: str) -> dict[str, Path]:
    """Write ``sweep.csv``, ``payback.png/.svg``, ``npv.png/.svg`` and ``sweep.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / "sweep.csv", "html": out_dir / "sweep.html"}
    table.to_csv(paths["table"], index=False)
    svgs = []
    for column, title, unit, scale in (
            ("simple_payback_years", "Simple payback of PV + battery against no system [years]", "years", 1.0),
            ("npv", f"NPV of PV + battery against no system [billion {currency}]", f"billion {currency}", 1e9)):
        fig = heatmap(table, column, title, unit, scale)
        stem = "payback" if "payback" in column else "npv"
        fig.savefig(out_dir / f"{stem}.png", dpi=110, bbox_inches="tight")
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        (out_dir / f"{stem}.svg").write_text(buf.getvalue(), encoding="utf-8")
        svgs.append(buf.getvalue()[buf.getvalue().index("<svg"):])
        paths[stem] = out_dir / f"{stem}.png"
        plt.close(fig)
    rows = table.to_html(index=False, float_format=lambda v: f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}",
                         na_rep="–")
    paths["html"].write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(scenario.name)} – sizing sweep</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:1em auto}}table{{border-collapse:collapse;font-size:11px}}
td,th{{border:1px solid #ccc;padding:2px 5px;text-align:right}}svg{{max-width:100%;height:auto}}</style></head><body>
<h1>{html.escape(scenario.name)}: sizing sweep</h1>
<p>Battery dispatch: {html.escape(str(table['strategy'].iloc[-1]) if len(table) else '')}; battery power at the base
case's C-rate; figures per year in {html.escape(currency)}. Reproduce: <code>{html.escape(command)}</code></p>
{''.join(svgs)}
<h2>Table</h2>{rows}
</body></html>
""", encoding="utf-8")
    return paths
