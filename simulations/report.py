"""The study report: one self-contained HTML page (figures as inline SVG, no scripts, no network).

Figures (matplotlib, Agg): a typical week of dispatch per strategy with the tariff periods shaded,
monthly bills, the SOC distribution and the cumulative cash flow; plus the tables of summary.json
and a plain-language account of what pays back and why (:func:`plain_summary`).
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from simulations.economics import not_paid_back

if TYPE_CHECKING:
    from simulations.runner import RunResult

PERIOD_COLOURS = {"peak": "#f4a6a6", "off_peak": "#a6c8f4", "normal": None}
PERIOD_LABELS = {"peak": "peak hours", "normal": "normal hours", "off_peak": "off-peak hours"}
"""Plain names of the tariff periods (the week figure's legend, the demand table); a tariff's other periods are shown
by their own names."""
STRATEGY_LABELS = {
    "no_system": "no PV, no battery", "pv_only": "PV only", "self_consumption": "self-consumption rule",
    "tou_rule": "time-of-use rule", "mpc": "MPC on forecasts", "mpc_perfect": "MPC, perfect forecasts (bound)",
    "perfect_foresight": "perfect foresight (upper bound)",
}
"""Plain names of the strategies; the two bounds are labelled as such (no plant can run them)."""
LEAD_ORDER = ("mpc", "tou_rule", "self_consumption", "mpc_perfect", "perfect_foresight")
"""Which battery strategy the verdict quotes: the first present, a strategy a plant can run before a bound."""
BOUNDS = ("mpc_perfect", "perfect_foresight")
ENERGY_LABELS = {
    "pv_available": "PV the array offered", "pv": "PV used", "import": "grid import", "load": "factory load",
    "export": "grid export", "curtailment": "PV curtailed", "battery_losses": "battery losses",
    "battery_charge": "battery charged", "battery_discharge": "battery discharged",
    "delta_soc": "battery energy at the end minus at the start",
}
DASH = "—"
"""How a figure the investment never reaches (payback, IRR) is shown; the reason goes beside it."""


def _label(name: str) -> str:
    return STRATEGY_LABELS.get(name, name)


def _svg(fig: plt.Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # same study → same bytes
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _legend_outside(ax: plt.Axes, ncol: int = 1) -> None:
    """Legend to the right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=ncol, frameon=False)


def typical_week_start(frame: pd.DataFrame, timezone: str) -> int:
    """Index of the first step of the whole local Monday-to-Sunday week whose PV energy is the median.

    Falls back to the first step when the period holds no whole week.
    """
    local = frame.index.tz_convert(timezone)
    # local wall-clock days (a day whose midnight does not exist, a DST change at 00:00, is still one day)
    monday = local.tz_localize(None).normalize() - pd.to_timedelta(local.day_of_week, unit="D")
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
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.3 * len(names)), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[:, 0], names, strict=True):
        f = result.results[name].frame.iloc[sl]
        x = f.index.tz_convert(tz).tz_localize(None)
        step = pd.Timedelta(hours=float(result.data.duration_h[0]))
        for period, colour in PERIOD_COLOURS.items():
            if colour is None:
                continue
            for t in x[f["period"].to_numpy() == period]:
                ax.axvspan(t, t + step, color=colour, alpha=0.35, lw=0)
        ax.plot(x, f["load_kw"], color="black", lw=0.9, label="factory load")
        ax.plot(x, f["pv_kw"], color="#e0a000", lw=0.9, label="PV used")
        ax.plot(x, f["grid_kw"], color="#7030a0", lw=0.9, label="grid (+ import)")
        ax.plot(x, f["battery_kw"], color="#008060", lw=0.9, label="battery (+ discharge)")
        ax.set_ylabel("power [kW]")
        ax.set_title(_label(name), fontsize=9, loc="left")
        if result.scenario.battery.capacity_kwh > 0 and name not in ("no_system", "pv_only"):
            ax2 = ax.twinx()
            ax2.plot(x, f["soc_pct"], color="#008060", lw=0.7, ls=":", label="battery SOC (right axis)")
            ax2.set_ylim(0, 100)
            ax2.set_ylabel("SOC [%]")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="#008060", lw=0.7, ls=":"), Patch(color=PERIOD_COLOURS["peak"], alpha=0.5),
                Patch(color=PERIOD_COLOURS["off_peak"], alpha=0.5)]
    labels += ["battery SOC [%] (right axis)", PERIOD_LABELS["peak"], PERIOD_LABELS["off_peak"]]
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel(f"local time ({tz})")
    fig.suptitle("A typical week (median PV), local time; unshaded hours are normal-price hours", fontsize=10)
    return _svg(fig)


def month_ticks(months: list[dict[str, Any]]) -> list[str]:
    """The monthly bar chart's labels: "2026-02", and "2026-03\n(3 of 31 days)" for a month the period covers in
    part (its bar is a whole month's bill for those days)."""
    return [m["month"] + _coverage(m).replace(" (", "\n(") for m in months]


def monthly_bills_figure(result: RunResult, names: list[str]) -> str:
    """Grouped bars: monthly bill (incl. VAT) per strategy, legend outside the bars."""
    frames = {n: result.results[n].bill.to_frame()["total"] for n in names}
    table = pd.DataFrame(frames) / 1e6
    fig, ax = plt.subplots(figsize=(11, 3.5))
    width = 0.8 / len(names)
    x = np.arange(len(table))
    for i, name in enumerate(names):
        ax.bar(x + i * width, table[name], width, label=_label(name))
    ax.set_xticks(x + 0.4 - width / 2, month_ticks(result.results[names[0]].bill.to_dict()["months"]), rotation=0,
                  fontsize=8)
    ax.set_xlabel("billing month (local)")
    ax.set_ylabel(f"bill [million {result.currency}]")
    ax.set_title("Monthly bill including VAT", fontsize=10)
    _legend_outside(ax)
    return _svg(fig)


def soc_figure(result: RunResult, names: list[str]) -> str:
    """Share of time at each SOC per battery strategy: one small panel each, so no series hides another."""
    fig, axes = plt.subplots(1, len(names), figsize=(11, 2.8), sharey=True, squeeze=False, layout="constrained")
    bins = np.linspace(0, 100, 41)
    for ax, name in zip(axes[0], names, strict=True):
        soc = result.results[name].frame["soc_pct"].to_numpy()
        weights = np.full(len(soc), 100.0 / max(len(soc), 1))
        ax.hist(soc, bins=bins, weights=weights, color="#008060")
        ax.set_title(_label(name).replace(" (", "\n("), fontsize=8)
        ax.set_xlabel("SOC at step end [%]")
        ax.set_xlim(0, 100)
    axes[0, 0].set_ylabel("share of time [%]")
    fig.suptitle("How full the battery was", fontsize=10)
    return _svg(fig)


def cash_flow_figure(result: RunResult, names: list[str]) -> str:
    """Cumulative nominal cash flow of each investment against no system, whole years on the axis."""
    fig, ax = plt.subplots(figsize=(11, 3.5))
    for name in names:
        flow = pd.DataFrame(result.economics[name]["cash_flow"])
        ax.plot(flow["year"], flow["cumulative"] / 1e9, marker=".", label=_label(name))
    ax.axhline(0, color="black", lw=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_xlabel("year of operation")
    ax.set_ylabel(f"cumulative cash [billion {result.currency}]")
    ax.set_title("Cumulative cash flow against no system (nominal: escalation, degradation, replacements)",
                 fontsize=10)
    _legend_outside(ax)
    return _svg(fig)


def _years(value: float | None, note: str | None) -> str:
    return f"{DASH} ({note})" if value is None else f"{value:.1f} years"


def _money(value: float, currency: str) -> str:
    """An amount in millions (one decimal below ten million; below 100,000 in units, as 0 million would read)."""
    if abs(value) < 1e5:
        return f"{value:,.0f} {currency}"
    return f"{value / 1e6:,.{1 if abs(value) < 1e7 else 0}f} million {currency}"


def _replacements(count: int) -> str:
    """ " and 2 replacements", " and 1 replacement", "" for none (the battery outlasts the study)."""
    return "" if count == 0 else f" and {count} replacement{'' if count == 1 else 's'}"


def lead_strategy(summary: dict[str, Any]) -> str | None:
    """The battery strategy the verdict quotes (:data:`LEAD_ORDER`), None without a battery strategy."""
    econ = summary["economics"]
    return next((n for n in LEAD_ORDER if n in econ and "battery" in econ[n]["finance"]), None)


def verdict(summary: dict[str, Any]) -> str:
    """One sentence that says what pays back, consistent with the NPV signs of summary.json.

    PV: the discounted payback when its NPV is ≥ 0, else "does not pay back"; the battery: the same for the
    strategy a plant can run (:func:`lead_strategy`), with the installed cost at which it would break even.
    """
    cur, econ = summary["currency"], summary["economics"]
    a = summary["assumptions"]
    rate, life = a["discount_rate_pct"], a["lifetime_years"]
    parts = []
    if "pv_only" in econ:
        fin = econ["pv_only"]["finance"]["system"]
        if fin["npv"] >= 0 and fin["discounted_payback_years"] is not None:
            parts.append(f"PV pays back in {fin['discounted_payback_years']:.1f} years at {rate:g} % "
                         f"({fin['simple_payback_years']:.1f} years undiscounted)")
        else:
            parts.append(f"PV does not pay back at {rate:g} % within its {life}-year life "
                         f"(NPV {_money(fin['npv'], cur)})")
    lead = lead_strategy(summary)
    if lead is not None:
        fin = econ[lead]["finance"]["battery"]
        who = f"the battery (run by {_label(lead)})"
        if fin["npv"] >= 0 and fin["discounted_payback_years"] is not None:
            parts.append(f"{who} pays back in {fin['discounted_payback_years']:.1f} years at {rate:g} %")
        else:
            even = fin.get("break_even_per_kwh")
            tail = (f"break-even at {even / 1e6:,.2f} million {cur}/kWh installed against "
                    f"{a['battery_capex_per_kwh'] / 1e6:,.2f} million assumed" if even is not None
                    else "it would not pay back even if it were free")
            parts.append(f"{who} does not pay back at {rate:g} % within its {life}-year life — {tail}")
    text = "; ".join(parts) + "." if parts else "No investment to assess."
    return text[0].upper() + text[1:]


def plain_summary(summary: dict[str, Any]) -> list[str]:
    """Sentences that say what pays back, by how much and why, from the numbers of summary.json."""
    cur = summary["currency"]
    econ = summary["economics"]
    a = summary["assumptions"]
    lines = []
    ref = summary["strategies"]["no_system"]["annual_bill"]
    lines.append(f"Without PV or battery the factory pays about {_money(ref, cur)} a year "
                 f"({'excluding' if summary['vat_recoverable'] else 'including'} VAT, at the simulated year's prices).")
    if "pv_only" in econ:
        pv = econ["pv_only"]
        fin = pv["finance"]["system"]
        lines.append(
            f"PV alone saves {_money(pv['savings_vs_no_system'], cur)} in the first year and costs "
            f"{_money(fin['capex'], cur)}: simple payback {_years(fin['simple_payback_years'], fin['payback_note'])}, "
            f"discounted at {a['discount_rate_pct']:g} % "
            f"{_years(fin['discounted_payback_years'], fin['discounted_payback_note'])}; "
            f"NPV {_money(fin['npv'], cur)}.")
    lead = lead_strategy(summary)
    if lead is not None:
        b = econ[lead]
        fin = b["finance"]["battery"]
        lines.append(
            f"Run by {_label(lead)}, the battery saves {_money(b['savings_vs_pv_only'], cur)} in the first year on "
            f"top of PV, from {b['equivalent_full_cycles']:.0f} full cycles of its usable window "
            f"({b['equivalent_full_cycles_nameplate']:.0f} of its nameplate). Against its cost of "
            f"{_money(fin['capex'], cur)} (plus O&M{_replacements(fin['replacements'])}): discounted payback at "
            f"{a['discount_rate_pct']:g} % {_years(fin['discounted_payback_years'], fin['discounted_payback_note'])}; "
            f"NPV {_money(fin['npv'], cur)}; IRR "
            + (f"{100 * fin['irr']:.1f} %" if fin["irr"] is not None else f"{DASH} ({fin['irr_note']})") + ".")
        if b.get("soc_change_kwh"):
            amount, yearly = _money(abs(b["soc_change_value_period"]), cur), _money(abs(b["soc_change_value"]), cur)
            scaled = f" ({yearly} a year in the yearly figures, which scale the period)" if yearly != amount else ""
            kwh = f"{abs(b['soc_change_kwh']):,.0f} kWh"
            lines.append(
                f"The battery ended the period {kwh} fuller than it started: that energy, worth {amount}{scaled} "
                f"at the cost of buying it from the grid, is credited to its savings." if b["soc_change_kwh"] > 0 else
                f"The battery ended the period {kwh} emptier than it started: refilling it from the grid would "
                f"cost {amount}{scaled}, charged against its savings.")
        value, cost = fin.get("levelised_saving_per_kwh"), fin.get("lcos_per_kwh")
        if value is not None and cost is not None:
            lines.append(
                f"Why: over its life (prices escalating, capacity fading, discounted at {a['discount_rate_pct']:g} %) "
                f"each kWh the battery delivers saves on average {value:,.0f} {cur} — the spread between the hours it "
                f"charges and the hours it discharges, less losses — against {cost:,.0f} {cur} that a kWh of storage "
                f"costs (LCOS), so it {'earns' if value >= cost else 'loses'} {abs(value - cost):,.0f} {cur} per kWh.")
        bounds = [f"{_money(econ[b]['finance']['battery']['npv'], cur)} with {_label(b).split(' (')[0]}"
                  for b in BOUNDS if b in econ and b != lead and "battery" in econ[b]["finance"]]
        if bounds:
            lines.append(f"Bounds no plant reaches: the battery's NPV would be {' and '.join(bounds)}.")
    if "mpc" in econ and "perfect_foresight" in econ:
        pf = econ["perfect_foresight"]["savings_vs_pv_only"]
        mpc = econ["mpc"]["savings_vs_pv_only"]
        if pf > 0:
            lines.append(f"MPC on forecasts captures {100 * mpc / pf:.0f} % of the battery value that perfect "
                         "foresight of the whole year would reach.")
    lines.append(co2_sentence(summary))
    return lines


def co2_sentence(summary: dict[str, Any]) -> str:
    """CO2 avoided a year through lower net grid import: first with the strategy the verdict quotes (a plant can
    run it), then PV alone, then the most any strategy avoids where that is another one (named, a bound says so)."""
    econ = summary["economics"]
    co2 = {k: v["co2_avoided_t"] for k, v in econ.items()}
    if not co2:
        return "No CO2 avoided: nothing was invested."
    lead = lead_strategy(summary)
    shown = [n for n in (lead, "pv_only") if n is not None and n in co2]
    if not shown:
        shown = [max(co2, key=lambda k: co2[k])]
    parts = [f"{co2[n]:,.0f} t a year with {_label(n)}" for n in shown]
    best = max(co2, key=lambda k: co2[k])
    if best not in shown and co2[best] > max(co2[n] for n in shown) + 0.5:
        parts.append(f"the most with {_label(best)}: {co2[best]:,.0f} t")
    return f"CO2 avoided through lower net grid import: {'; '.join(parts)}; battery losses count against it."


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _payback_cell(fin: dict[str, Any] | None, years_key: str, note_key: str, life: int) -> float | str | None:
    """A payback cell [yr]: the years, "> life" where the investment does not pay back within its life, None (a
    dash) where nothing was invested."""
    if fin is None or fin[years_key] is not None:
        return None if fin is None else fin[years_key]
    return f"> {life}" if not_paid_back(fin, note_key) else None


def strategy_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy: bill, savings, cycles, paybacks, NPV, IRR, CO2. A payback not reached within the
    study life reads "> 20"; "—" is a figure that does not exist (:func:`strategy_notes` says which)."""
    cur = summary["currency"]
    life = summary["assumptions"]["lifetime_years"]
    rows = []
    for name, s in summary["strategies"].items():
        e = summary["economics"].get(name)
        fin_sys = e["finance"]["system"] if e else None
        fin_bat = e["finance"].get("battery") if e else None
        rows.append({
            "strategy": _label(name),
            f"yearly bill [{cur}]": s["annual_bill"],
            f"saving vs no PV, no battery [{cur}/yr]": e["savings_vs_no_system"] if e else None,
            f"saving vs PV only [{cur}/yr]": e["savings_vs_pv_only"] if e and name != "pv_only" else None,
            "full cycles/yr (usable window)": e["equivalent_full_cycles"] if fin_bat else None,
            "full cycles/yr (nameplate)": e["equivalent_full_cycles_nameplate"] if fin_bat else None,
            "savings kept at end of life": _kept_text(e) if fin_bat else None,
            "PV + battery payback [yr]": _payback_cell(fin_sys, "simple_payback_years", "payback_note", life),
            f"PV + battery NPV [{cur}]": fin_sys["npv"] if fin_sys else None,
            "battery payback, discounted [yr]": _payback_cell(fin_bat, "discounted_payback_years",
                                                              "discounted_payback_note", life),
            f"battery NPV [{cur}]": fin_bat["npv"] if fin_bat else None,
            "battery IRR [%]": 100 * fin_bat["irr"] if fin_bat and fin_bat["irr"] is not None else None,
            f"storage cost LCOS [{cur}/kWh]": fin_bat["lcos_per_kwh"] if fin_bat else None,
            f"battery break-even cost [{cur}/kWh]": fin_bat.get("break_even_per_kwh") if fin_bat else None,
            "CO2 avoided [t/yr]": e["co2_avoided_t"] if e else None,
        })
    return rows


def strategy_notes(summary: dict[str, Any]) -> list[str]:
    """What the strategy table's "> 20" and "—" cells mean, column by column, for the cells that show them."""
    a = summary["assumptions"]
    life, rate = a["lifetime_years"], a["discount_rate_pct"]
    fins = [e["finance"] for e in summary["economics"].values()]
    bats = [f["battery"] for f in fins if "battery" in f]
    notes = []
    if any(not_paid_back(f["system"], "payback_note") for f in fins):
        notes.append(f"PV + battery payback > {life}: does not pay back within the {life}-year life")
    if any(not_paid_back(b, "discounted_payback_note") for b in bats):
        notes.append(f"battery payback, discounted > {life}: does not pay back at {rate:g} % within the "
                     f"{life}-year life")
    if any(not_paid_back(b, "irr_note") for b in bats):
        notes.append(f"battery IRR {DASH}: none, the battery does not pay back within the {life}-year life")
    if any(b.get("break_even_per_kwh") is None for b in bats):
        notes.append(f"battery break-even cost {DASH}: none, it would not pay back even if it were free")
    notes.append(f"{DASH} elsewhere: does not apply (no battery, or nothing invested)")
    return notes


AGEING_TEXT = {
    "simulated": "simulated: each battery strategy run again with the energy left at end of life, savings "
                 "interpolated in the state of health",
    "proportional": "proportional to the state of health",
}
"""How the study counts an ageing battery's savings (assumption ``battery_ageing_value``, ``auto`` resolved)."""


def _kept_text(figures: dict[str, Any]) -> str:
    """The share of its savings a strategy's battery keeps at its end-of-life state of health, and how it is known
    (``end_of_life_value_share``, ``end_of_life_value_simulated``)."""
    how = "simulated" if figures["end_of_life_value_simulated"] else "proportional to SOH"
    return f"{100 * figures['end_of_life_value_share']:.0f} % ({how})"


def assumption_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cost and finance input of the study, one row each, with its unit."""
    a, cur = summary["assumptions"], summary["currency"]
    om = f"{a['om_escalation_pct_per_year']:g}" + (" (= tariff escalation)" if a["om_escalation_from_tariff"] else "")
    rows = [
        ("PV size", f"{a['pv_kwp']:,.0f}", "kWp"),
        ("battery size", f"{a['battery_kwh']:,.0f} kWh / {a['battery_kw']:,.0f} kW", ""),
        ("battery SOC window", f"{a['soc_window_pct'][0]:g}–{a['soc_window_pct'][1]:g}", "%"),
        ("PV installed cost", f"{a['pv_capex_per_kwp']:,.0f}", f"{cur}/kWp"),
        ("battery installed cost (energy)", f"{a['battery_capex_per_kwh']:,.0f}", f"{cur}/kWh"),
        ("battery installed cost (power)", f"{a['battery_capex_per_kw']:,.0f}", f"{cur}/kW"),
        ("PV O&M", f"{a['pv_om_per_kwp_year']:,.0f}", f"{cur}/kWp/yr"),
        ("battery O&M", f"{a['battery_om_per_kwh_year']:,.0f}", f"{cur}/kWh/yr"),
        ("battery replacement cost", f"{a['battery_replacement_pct']:g}", "% of the battery's initial cost"),
        ("discount rate (nominal)", f"{a['discount_rate_pct']:g}", "%/yr"),
        ("study life", f"{a['lifetime_years']}", "years"),
        ("electricity price escalation", f"{a['tariff_escalation_pct_per_year']:g}", "%/yr"),
        ("O&M cost escalation", om, "%/yr"),
        ("PV degradation", f"{a['pv_degradation_pct_per_year']:g}", "%/yr (each year re-billed)"),
        ("battery cycle life", f"{a['battery_cycle_life']:,.0f}", "full cycles of the usable window"),
        ("battery calendar life", f"{a['battery_calendar_life_years']:g}", "years"),
        ("battery replaced at", f"{a['battery_end_of_life_soh_pct']:g}", "% state of health"),
        ("battery savings as it ages", AGEING_TEXT[a.get("battery_ageing_value", "proportional")], ""),
        ("VAT", "recovered (savings exclude VAT)" if a["vat_recoverable"] else "paid (savings include VAT)", ""),
        ("grid emission factor", f"{a['grid_factor_t_per_mwh']:g}", "tCO2/MWh"),
        ("data", f"{a['data_source']}{filled_text(summary.get('data_filled'))}", ""),
        ("MPC warm-up history", warmup_text(summary.get("warmup"), a.get("load_measured", False)), ""),
        ("MPC day-ahead PV forecast", forecast_text(a.get("pv_forecast")), ""),
        ("random seed", DASH if a["seed"] is None else str(a["seed"]), ""),
    ]
    return [{"input": n, "value": v, "unit": u} for n, v, u in rows]


def forecast_text(forecast: dict[str, Any] | None) -> str:
    """The day-ahead PV forecast the MPC was given (assumption ``pv_forecast``), or that it had none."""
    if not forecast:
        return "none (the built-in forecasts only)"
    band = ", with its P10/P90 band" if forecast.get("band", False) else ", without a band"
    return (f"issued daily at {forecast['issue_hour']:02d}:00 local, {forecast['daily_error_pct']:g} % error on each "
            f"day's PV energy{band} (seed {forecast['seed']})")


def filled_text(filled: dict[str, dict[str, float]] | None) -> str:
    """The gaps of measured data filled within the period (summary key ``data_filled``), as a clause of the data
    row; empty when none were."""
    if not filled:
        return ""
    def hours(h: float) -> str:
        return f"{round(h * 60):g} min" if h < 1 else f"{h:.2f}".rstrip("0").rstrip(".") + " h"

    names = {"load": "load", "pv": "PV"}
    parts = [f"{names[name]} {f['share_pct']:.2g} % of the steps ({f['gaps']:.0f} gap{'s' * (f['gaps'] != 1)}, "
             f"longest {hours(f['longest_h'])})" for name, f in filled.items()]
    return "; gaps filled: " + ", ".join(parts)


def warmup_text(warmup: dict[str, float] | None, measured_load: bool = False) -> str:
    """The warm-up history the MPC started with (summary key ``warmup``), in days: where it came from; with none,
    what its first load forecast is (``measured_load``: the load is measured, and a study has no nominal for it)."""
    if not warmup or warmup["days"] <= 0:
        nominal = "0 kW until some is measured" if measured_load else "a nominal load"
        return f"none (cold start: the first forecasts use {nominal})"
    def days(d: float) -> str:
        return f"{d:.1f}".removesuffix(".0")

    parts = [(warmup["own_days"], "from the data"), (warmup["wrapped_days"], "from 52 weeks later (wrapped)"),
             (warmup["missing_days"], "missing")]
    return f"{days(warmup['days'])} days before the period: " + ", ".join(f"{days(d)} {what}" for d, what in parts
                                                                       if d > 0)


def accuracy_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The MPC forecasters' accuracy by lead time (summary key ``forecast_accuracy``), one row per quantity and
    lead bucket; empty without it."""
    rows = []
    for quantity, label in (("pv", "PV (daylight)"), ("load", "load")):
        figures = (summary.get("forecast_accuracy") or {}).get(quantity)
        for bucket in (figures or {}).get("by_lead", []):
            rows.append({"forecast": label, "lead": bucket["lead"], "steps": bucket["n"],
                         "MAE [kW]": bucket["mae_kw"], "RMSE [kW]": bucket["rmse_kw"],
                         "persistence MAE [kW]": bucket["persistence_mae_kw"],
                         "skill vs persistence": bucket["skill"]})
    return rows


def external_accuracy_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The accuracy of the forecasts from outside the MPC received (summary key ``forecast_accuracy.external``), one
    row per source and lead bucket with steps scored; empty without them."""
    rows = []
    external = (summary.get("forecast_accuracy") or {}).get("external") or {}
    for quantity, label in (("pv", "PV (daylight)"), ("load", "load")):
        for source in external.get(quantity, []):
            for bucket in source["by_lead"]:
                if not bucket["n"]:
                    continue
                rows.append({"forecast": f"{label}, {source['source']}", "lead": bucket["lead"],
                             "steps": bucket["n"], "MAE [kW]": bucket["mae_kw"], "bias [kW]": bucket["bias_kw"],
                             "built-in MAE [kW]": bucket["builtin_mae_kw"],
                             "skill vs built-in": bucket["skill_vs_builtin"],
                             "skill vs persistence": bucket["skill"],
                             "inside P10–P90": bucket["band_coverage"], "below P10": bucket["below_p10"],
                             "above P90": bucket["above_p90"]})
    return rows


def _period_label(period: str | None) -> str:
    return DASH if period is None else PERIOD_LABELS.get(period, period.replace("_", " "))


def _kw(value: float | None) -> str:
    """A demand to the 0.1 kW (:data:`optimizer.billing.PEAK_AT_TOLERANCE_KW` is half of it)."""
    return DASH if value is None else f"{value:,.1f}"


def _local_time(iso: str | None, timezone: str) -> str:
    """``2026-03-02T01:00:00+00:00`` in ``Asia/Ho_Chi_Minh`` → ``Mon 02 Mar 08:00`` (site time)."""
    return DASH if iso is None else pd.Timestamp(iso).tz_convert(timezone).strftime("%a %d %b %H:%M")


def demand_strategy(summary: dict[str, Any]) -> str | None:
    """Whose month peaks the demand table dates: the strategy the verdict quotes, else PV only, else none."""
    lead = lead_strategy(summary)
    return lead if lead is not None else ("pv_only" if "pv_only" in summary["strategies"] else None)


def demand_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Under a demand charge, one row per billing month: each strategy's billed demand [kW], and when (local time)
    and in which tariff period :func:`demand_strategy` set its month's peak (`peak_at`). Empty without one."""
    strategies = summary["strategies"]
    months = {name: {m["month"]: m for m in s["monthly_bills"]} for name, s in strategies.items()}
    labels = [m["month"] for m in next(iter(strategies.values()))["monthly_bills"]]
    if not any(m["demand_kw"] is not None for by_month in months.values() for m in by_month.values()):
        return []
    who = demand_strategy(summary)
    rows = []
    first = next(iter(months.values()))
    for label in labels:
        row: dict[str, Any] = {"month": pd.Period(label, "M").strftime("%b %Y") + _coverage(first[label])}
        row.update({f"{_label(name)} [kW]": _kw(months[name][label]["demand_kw"]) for name in strategies})
        if who is not None:
            bill = months[who][label]
            row[f"{_label(who)}: month's peak set (local time)"] = _local_time(bill["peak_at"],
                                                                               summary["period"]["timezone"])
            row["tariff period"] = _period_label(bill["peak_period"])
        rows.append(row)
    return rows


def _coverage(month: dict[str, Any]) -> str:
    """The part of its billing month a period covers, as " (3 of 30 days)"; "" for a whole month."""
    if month.get("covered_share", 1.0) >= 0.999:
        return ""
    return f" ({month['hours'] / 24:.0f} of {month['month_hours'] / 24:.0f} days)"


def demand_text(summary: dict[str, Any]) -> str:
    """What the demand table says, in words: the demand rate, in which tariff periods :func:`demand_strategy` set
    its month peaks, and how far it billed above the perfect-foresight bound and below PV only. [kW]"""
    strategies, cur = summary["strategies"], summary["currency"]
    who = demand_strategy(summary)
    rates = sorted({m["demand_rate_per_kw_month"] for s in strategies.values() for m in s["monthly_bills"]
                    if m["demand_rate_per_kw_month"] is not None})
    text = (f"The billed demand is each month's highest average import over the tariff's demand window, charged at "
            f"{' to '.join(f'{r:,.0f}' for r in rates)} {cur} per kW and month.")
    if any(m.get("covered_share", 1.0) < 0.999 for m in next(iter(strategies.values()))["monthly_bills"]):
        text += (" A month the period covers only in part (days in brackets) is billed in full, as the utility "
                 "would; the yearly figures count its charge for the days covered.")
    if who is None:
        return text
    bills = [m for m in strategies[who]["monthly_bills"] if m["demand_kw"] is not None]
    counts = Counter(_period_label(m["peak_period"]) for m in bills)
    text += (f" {_label(who)[0].upper() + _label(who)[1:]} set its month's peak in "
             + ", ".join(f"{period} in {n} of {len(bills)} months" for period, n in counts.most_common()) + ".")
    comparisons = []
    for other in ("perfect_foresight", "pv_only"):
        if other == who or other not in strategies:
            continue
        theirs = {m["month"]: m["demand_kw"] for m in strategies[other]["monthly_bills"]}
        gaps = [m["demand_kw"] - theirs[m["month"]] for m in bills if theirs.get(m["month"]) is not None]
        if gaps:
            mean = sum(gaps) / len(gaps)
            comparisons.append(f"{abs(mean):,.1f} kW {'above' if mean >= 0 else 'below'} {_label(other)}")
    if comparisons:
        text += f" Its billed demand was on average {' and '.join(comparisons)}."
    return text


def local_period(summary: dict[str, Any]) -> str:
    """``1 Jan 2026 – 31 Dec 2026 (365 days, local time Asia/Ho_Chi_Minh)``."""
    p = summary["period"]
    first, last = pd.Timestamp(p["first_day"]), pd.Timestamp(p["last_day"])
    return (f"{first.day} {first:%b %Y} – {last.day} {last:%b %Y} ({p['days']:.0f} days, "
            f"{p['step_minutes']}-minute steps, local time {p['timezone']})")


def render_html(result: RunResult, summary: dict[str, Any]) -> str:
    """The whole report page: verdict first, then the account, the assumptions, tables and figures."""
    names = list(result.results)
    battery_names = [n for n in names if n not in ("no_system", "pv_only")]
    invested = [n for n in names if n in result.economics]
    sc = result.scenario
    cur = summary["currency"]
    figures = [("A typical week", week_figure(result, names)),
               ("Monthly bills", monthly_bills_figure(result, names))]
    if battery_names and sc.battery.capacity_kwh > 0:
        figures.append(("Battery state of charge", soc_figure(result, battery_names)))
    if invested:
        figures.append(("Cash flow over the study life", cash_flow_figure(result, invested)))
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in plain_summary(summary))
    balance_rows = [{"strategy": _label(n), **{f"{ENERGY_LABELS.get(k, k)} [kWh]": v for k, v in
                                               summary["strategies"][n]["energy_kwh"].items()}} for n in names]
    jcm = [{"strategy": _label(n), "JCM-style PV reduction [t/yr]": e["jcm_pv_reduction_t"]}
           for n, e in summary["economics"].items()]
    accuracy = accuracy_rows(summary)
    accuracy_html = "" if not accuracy else (
        "<h2>Forecast accuracy by lead time</h2><p>The MPC's own forecasters, re-run every 6 h on the data "
        "measured before each issue time, against the data and against same-time-yesterday persistence; skill "
        "= 1 − MAE / persistence MAE (above 0: better than persistence).</p>" + _table(accuracy))
    external = external_accuracy_rows(summary)
    if external:
        accuracy_html += (
            "<h3>Forecasts from outside</h3><p>Each forecast the MPC received, scored as it was sent by lead time "
            "from its issue time, against the data, against the built-in forecast made at the same instant (skill "
            "vs built-in = 1 − MAE / built-in MAE: above 0, the forecast from outside is the better one) and "
            "against persistence; bias = mean forecast − data. Where it carried a P10/P90 band, the share of "
            "steps inside it (0.8 when calibrated) and below and above it (0.1 each).</p>" + _table(external))
    demand = demand_rows(summary)
    demand_html = "" if not demand else (
        f'<h2 id="demand">Demand charge by month</h2><p>{html.escape(demand_text(summary))}</p>' + _table(demand))
    warning = summary["period"]["warning"]
    notes = strategy_notes(summary)
    style = ("body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#222}"
             ".verdict{font-size:1.25em;font-weight:bold;border-left:6px solid #1f5f9f;padding:0.4em 0.8em;"
             "background:#eef4fb}.warning{border-left:6px solid #c07000;background:#fff4e0;padding:0.4em 0.8em}"
             "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left}svg{max-width:100%;height:auto}.small{font-size:11px;color:#555}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(sc.name)} – dispatch study</title>
<style>{style}</style></head><body>
<h1>{html.escape(sc.name)}</h1>
<p class="verdict" id="verdict">{html.escape(verdict(summary))}</p>
{f'<p class="warning" id="period-warning">{html.escape(warning)}</p>' if warning else ''}
{''.join(f'<p class="warning data-warning">Data: {html.escape(w)}</p>' for w in summary.get('data_warnings', []))}
<p>{html.escape(sc.description)}</p>
<p id="period">Period {html.escape(local_period(summary))}; tariff {html.escape(summary['tariff'])}; yearly figures in
{html.escape(cur)}{' (the sum of the simulated months)' if summary['period']['whole_years'] else ''}.
The verdict quotes {html.escape(_label(lead_strategy(summary) or 'pv_only'))}, a strategy a plant can run;
MPC with perfect forecasts and perfect foresight are bounds no plant reaches.</p>
<h2>What pays back, and why</h2><ul>{sentences}</ul>
<h2>Assumptions</h2>{_table(assumption_rows(summary))}
<h2>Strategies</h2>{_table(strategy_rows(summary))}
<p class="small">{html.escape('; '.join(notes))}</p>
{demand_html}{''.join(f'<h2>{html.escape(title)}</h2>{svg}' for title, svg in figures)}
<h2>Energy over the period</h2>{_table(balance_rows)}
{accuracy_html}
<h2>JCM-style figure (reported apart)</h2>
<p>PV AC output × a conservative grid factor ({sc.co2.jcm_factor_t_per_mwh} tCO2/MWh), the VN_AM007 form;
not added to the CO2 avoided above.</p>{_table(jcm)}
<p class="small">Reproduce: <code>{html.escape(summary['command'])}</code></p>
</body></html>
"""


def write_outputs(result: RunResult, out_dir: Path, command: str, csv: bool = False) -> dict[str, Path]:
    """Write ``summary.json``, the per-step series (``timeseries.parquet``, or ``.csv`` with ``csv``; each step's
    start in UTC and in the site's local time) and ``report.html`` into ``out_dir`` (created). Returns the paths
    written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary(command)
    paths = {"summary": out_dir / "summary.json", "report": out_dir / "report.html",
             "timeseries": out_dir / ("timeseries.csv" if csv else "timeseries.parquet")}
    paths["summary"].write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    frames = []
    for name, r in result.results.items():
        f = r.frame.copy()
        f.insert(0, "strategy", name)
        for series_name, filled in result.data.filled_steps.items():  # which values were not measured
            f[f"{series_name}_filled"] = filled
        frames.append(f)
    series = pd.concat(frames).rename_axis("start").reset_index()
    series.insert(1, "start_local", series["start"].dt.tz_convert(result.scenario.site.timezone))
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
