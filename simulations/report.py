"""The study report: one self-contained HTML page (figures as inline SVG, no scripts, no network).

Figures (matplotlib, Agg): a typical week of dispatch per strategy with the tariff periods shaded,
monthly bills, the SOC distribution and the cumulative cash flow; plus the tables of summary.json
and a plain-language account of what pays back and why (:func:`plain_summary`).
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from simulations.runner import RunResult

PERIOD_COLOURS = {"peak": "#f4a6a6", "off_peak": "#a6c8f4", "normal": None}
STRATEGY_LABELS = {
    "no_system": "no system", "pv_only": "PV only", "self_consumption": "self-consumption",
    "tou_rule": "TOU rule", "mpc": "MPC (forecasts)", "mpc_perfect": "MPC (perfect forecasts)",
    "perfect_foresight": "perfect foresight",
}


def _svg(fig: plt.Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def typical_week_start(frame: pd.DataFrame, timezone: str) -> int:
    """Index of the first step of the whole local Monday-to-Sunday week whose PV energy is the median.

    Falls back to the first step when the period holds no whole week.
    """
    local = frame.index.tz_convert(timezone)
    monday = (local.normalize() - pd.to_timedelta(local.day_of_week, unit="D")).tz_localize(None)
    energy = frame["pv_available_kw"].groupby(monday).sum()
    counts = frame["pv_available_kw"].groupby(monday).size()
    whole = energy[counts >= counts.max()] if len(counts) else energy
    if len(whole) < 1:
        return 0
    median = whole.median()
    week = (whole - median).abs().idxmin()
    return int(np.flatnonzero(monday == week)[0])


def week_figure(result: RunResult, names: list[str]) -> str:
    """A typical week per strategy: load, PV, grid and battery power, SOC, tariff periods shaded."""
    tz = result.scenario.site.timezone
    first = result.results[names[0]].frame
    start = typical_week_start(first, tz)
    steps = round(7 * 24 / float(result.data.duration_h[0]))
    sl = slice(start, start + steps)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.3 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        f = result.results[name].frame.iloc[sl]
        x = f.index.tz_convert(tz).tz_localize(None)
        step = pd.Timedelta(hours=float(result.data.duration_h[0]))
        for period, colour in PERIOD_COLOURS.items():
            if colour is None:
                continue
            for t in x[f["period"].to_numpy() == period]:
                ax.axvspan(t, t + step, color=colour, alpha=0.35, lw=0)
        ax.plot(x, f["load_kw"], color="black", lw=0.9, label="load")
        ax.plot(x, f["pv_kw"], color="#e0a000", lw=0.9, label="PV")
        ax.plot(x, f["grid_kw"], color="#7030a0", lw=0.9, label="grid (+import)")
        ax.plot(x, f["battery_kw"], color="#008060", lw=0.9, label="battery (+discharge)")
        ax.set_ylabel("kW")
        ax.set_title(STRATEGY_LABELS.get(name, name), fontsize=9, loc="left")
        if result.scenario.battery.capacity_kwh > 0 and name not in ("no_system", "pv_only"):
            ax2 = ax.twinx()
            ax2.plot(x, f["soc_pct"], color="#008060", lw=0.7, ls=":")
            ax2.set_ylim(0, 100)
            ax2.set_ylabel("SOC %")
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=4)
    fig.suptitle("Typical week (local time); red shading = peak, blue = off-peak", fontsize=10)
    return _svg(fig)


def monthly_bills_figure(result: RunResult, names: list[str]) -> str:
    """Grouped bars: monthly bill (incl. VAT) per strategy."""
    frames = {n: result.results[n].bill.to_frame()["total"] for n in names}
    table = pd.DataFrame(frames) / 1e6
    fig, ax = plt.subplots(figsize=(11, 3.5))
    width = 0.8 / len(names)
    x = np.arange(len(table))
    for i, name in enumerate(names):
        ax.bar(x + i * width, table[name], width, label=STRATEGY_LABELS.get(name, name))
    ax.set_xticks(x + 0.4 - width / 2, table.index, rotation=0, fontsize=8)
    ax.set_ylabel(f"million {result.currency}")
    ax.set_title("Monthly bill including VAT", fontsize=10)
    ax.legend(fontsize=7, ncol=4)
    return _svg(fig)


def soc_figure(result: RunResult, names: list[str]) -> str:
    """Histogram of the end-of-step SOC per battery strategy."""
    fig, ax = plt.subplots(figsize=(11, 3))
    bins = np.linspace(0, 100, 41)
    for name in names:
        ax.hist(result.results[name].frame["soc_pct"], bins=bins, histtype="step", density=True,
                label=STRATEGY_LABELS.get(name, name))
    ax.set_xlabel("SOC %")
    ax.set_ylabel("share of time (density)")
    ax.set_title("SOC distribution", fontsize=10)
    ax.legend(fontsize=7)
    return _svg(fig)


def cash_flow_figure(result: RunResult, names: list[str]) -> str:
    """Cumulative nominal cash flow of each investment against no system."""
    fig, ax = plt.subplots(figsize=(11, 3.5))
    for name in names:
        flow = pd.DataFrame(result.economics[name]["cash_flow"])
        ax.plot(flow["year"], flow["cumulative"] / 1e9, marker=".", label=STRATEGY_LABELS.get(name, name))
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("year")
    ax.set_ylabel(f"billion {result.currency}")
    ax.set_title("Cumulative cash flow against no system (nominal, with escalation, degradation, replacement)",
                 fontsize=10)
    ax.legend(fontsize=7)
    return _svg(fig)


def _years(value: float | None) -> str:
    return "never within the study life" if value is None else f"{value:.1f} years"


def _money(value: float, currency: str) -> str:
    return f"{value / 1e6:,.0f} million {currency}"


def plain_summary(summary: dict[str, Any]) -> list[str]:
    """Sentences that say what pays back, by how much and why, from the numbers of summary.json."""
    cur = summary["currency"]
    econ = summary["economics"]
    lines = []
    ref = summary["strategies"]["no_system"]["annual_bill"]
    lines.append(f"Without PV or battery the factory pays about {_money(ref, cur)} a year "
                 f"({'excluding' if summary['vat_recoverable'] else 'including'} VAT, at the simulated year's prices).")
    if "pv_only" in econ:
        pv = econ["pv_only"]
        fin = pv["finance"]["system"]
        lines.append(
            f"PV alone saves {_money(pv['savings_vs_no_system'], cur)} a year; it costs "
            f"{_money(fin['capex'], cur)} and pays back in {_years(fin['simple_payback_years'])} "
            f"(discounted: {_years(fin['discounted_payback_years'])}, NPV {_money(fin['npv'], cur)}).")
    battery = {k: v for k, v in econ.items() if "battery" in v["finance"]}
    if battery:
        best = max(battery, key=lambda k: battery[k]["savings_vs_pv_only"])
        b = battery[best]
        fin = b["finance"]["battery"]
        lines.append(
            f"The battery is worth most under {STRATEGY_LABELS.get(best, best)}: "
            f"{_money(b['savings_vs_pv_only'], cur)} a year on top of PV, from "
            f"{b['equivalent_full_cycles']:.0f} full cycles a year. Against its cost of {_money(fin['capex'], cur)} "
            f"(plus O&M and {fin['replacements']} replacement(s)) it pays back in "
            f"{_years(fin['simple_payback_years'])}; NPV {_money(fin['npv'], cur)}"
            + (f", IRR {100 * fin['irr']:.1f} %" if fin["irr"] is not None else "")
            + (f", storage cost (LCOS) {fin['lcos_per_kwh']:,.0f} {cur}/kWh delivered"
               if fin["lcos_per_kwh"] is not None else "") + ".")
        if fin.get("break_even_per_kwh") is not None:
            lines.append(
                f"The battery's NPV would be zero at an installed cost of about {fin['break_even_per_kwh']:,.0f} {cur} "
                f"per kWh (with replacements scaled alike), against "
                f"{fin['capex'] / max(summary['sizes']['battery_kwh'], 1e-9):,.0f} {cur}/kWh assumed.")
        value_per_cycle = b["savings_vs_pv_only"] / max(b["battery_discharge_kwh"], 1e-9)
        lines.append(
            f"Why: each kWh the battery delivers saves about {value_per_cycle:,.0f} {cur} (the spread between the "
            f"hours it charges and the hours it discharges, less losses), which is "
            + ("more" if fin["lcos_per_kwh"] is not None and value_per_cycle > fin["lcos_per_kwh"] else "less")
            + " than what a kWh of storage costs over its life.")
    if "mpc" in econ and "perfect_foresight" in econ:
        pf = econ["perfect_foresight"]["savings_vs_pv_only"]
        mpc = econ["mpc"]["savings_vs_pv_only"]
        if pf > 0:
            lines.append(f"MPC on forecasts captures {100 * mpc / pf:.0f} % of the battery value that perfect "
                         "foresight of the whole year would reach.")
    co2 = {k: v["co2_avoided_t"] for k, v in econ.items()}
    best_co2 = max(co2, key=lambda k: co2[k])
    lines.append(f"CO2 avoided through lower net grid import: up to {co2[best_co2]:,.0f} t a year "
                 f"({STRATEGY_LABELS.get(best_co2, best_co2)}); battery losses count against it.")
    return lines


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def strategy_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy: bill, savings, cycles, paybacks, NPV, IRR, CO2."""
    rows = []
    for name, s in summary["strategies"].items():
        e = summary["economics"].get(name)
        fin_sys = e["finance"]["system"] if e else None
        fin_bat = e["finance"].get("battery") if e else None
        rows.append({
            "strategy": STRATEGY_LABELS.get(name, name),
            "annual bill": s["annual_bill"],
            "saving vs none": e["savings_vs_no_system"] if e else None,
            "saving vs PV only": e["savings_vs_pv_only"] if e else None,
            "cycles/yr": e["equivalent_full_cycles"] if e else None,
            "system payback [yr]": fin_sys["simple_payback_years"] if fin_sys else None,
            "system NPV": fin_sys["npv"] if fin_sys else None,
            "battery payback [yr]": fin_bat["simple_payback_years"] if fin_bat else None,
            "battery NPV": fin_bat["npv"] if fin_bat else None,
            "battery IRR %": 100 * fin_bat["irr"] if fin_bat and fin_bat["irr"] is not None else None,
            "LCOS/kWh": fin_bat["lcos_per_kwh"] if fin_bat else None,
            "break-even battery cost/kWh": fin_bat.get("break_even_per_kwh") if fin_bat else None,
            "CO2 avoided t/yr": e["co2_avoided_t"] if e else None,
        })
    return rows


def render_html(result: RunResult, summary: dict[str, Any]) -> str:
    """The whole report page."""
    names = list(result.results)
    battery_names = [n for n in names if n not in ("no_system", "pv_only")]
    invested = [n for n in names if n in result.economics]
    sc = result.scenario
    figures = [week_figure(result, names), monthly_bills_figure(result, names)]
    if battery_names and sc.battery.capacity_kwh > 0:
        figures.append(soc_figure(result, battery_names))
    if invested:
        figures.append(cash_flow_figure(result, invested))
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in plain_summary(summary))
    balance_rows = [{"strategy": STRATEGY_LABELS.get(n, n), **{k: v for k, v in summary["strategies"][n][
        "energy_kwh"].items()}} for n in names]
    jcm = [{"strategy": STRATEGY_LABELS.get(n, n), "JCM-style PV reduction t/yr": e["jcm_pv_reduction_t"]}
           for n, e in summary["economics"].items()]
    style = ("body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left}svg{max-width:100%;height:auto}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(sc.name)} – dispatch study</title>
<style>{style}</style></head><body>
<h1>{html.escape(sc.name)}</h1>
<p>{html.escape(sc.description)}</p>
<p>Period {html.escape(summary['period']['start'])} → {html.escape(summary['period']['end'])}
({summary['period']['days']:.1f} days, {summary['period']['step_minutes']} min steps), tariff
{html.escape(summary['tariff'])}, figures per year in {html.escape(summary['currency'])}.</p>
<h2>What pays back, and why</h2><ul>{sentences}</ul>
<h2>Strategies</h2>{_table(strategy_rows(summary))}
<h2>Dispatch</h2>{figures[0]}
<h2>Monthly bills</h2>{figures[1]}
{''.join(f'<h2>&nbsp;</h2>{f}' for f in figures[2:])}
<h2>Energy over the period [kWh]</h2>{_table(balance_rows)}
<h2>JCM-style figure (reported apart)</h2>
<p>PV AC output × a conservative grid factor ({sc.co2.jcm_factor_t_per_mwh} tCO2/MWh), the VN_AM007 form;
not added to the CO2 avoided above.</p>{_table(jcm)}
<p style="font-size:11px">Reproduce: <code>{html.escape(summary['command'])}</code></p>
</body></html>
"""


def write_outputs(result: RunResult, out_dir: Path, command: str, csv: bool = False) -> dict[str, Path]:
    """Write ``summary.json``, the per-step series (``timeseries.parquet``, or ``.csv`` with ``csv``) and
    ``report.html`` into ``out_dir`` (created). Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary(command)
    paths = {"summary": out_dir / "summary.json", "report": out_dir / "report.html",
             "timeseries": out_dir / ("timeseries.csv" if csv else "timeseries.parquet")}
    paths["summary"].write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    frames = []
    for name, r in result.results.items():
        f = r.frame.copy()
        f.insert(0, "strategy", name)
        frames.append(f)
    series = pd.concat(frames).rename_axis("start").reset_index()
    if csv:
        series.to_csv(paths["timeseries"], index=False)
    else:
        series.to_parquet(paths["timeseries"], index=False)
    paths["report"].write_text(render_html(result, summary), encoding="utf-8")
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
