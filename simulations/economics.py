"""Money, ageing and CO2 for offline studies: pure functions over yearly figures.

Conventions: cash flows are nominal, one value per year, year 0 is the investment (negative),
years 1..N are operating years; rates are fractions per year (0.08 = 8 %/yr). Amounts are in the
tariff's currency. Formulas are written out in docs/simulation.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

DAYS_PER_MEAN_YEAR = 365.25
"""Days of a mean year (leap years included); used only to scale a period that is not whole years. [d]"""


def npv(rate: float, cashflows: Sequence[float]) -> float:
    """Net present value ``Σ cf_y / (1 + rate)^y`` with ``cashflows[0]`` at year 0. [currency]"""
    cf = np.asarray(cashflows, dtype=float)
    return float(np.sum(cf / (1.0 + rate) ** np.arange(len(cf))))


def irr(cashflows: Sequence[float]) -> float | None:
    """Internal rate of return [fraction/yr]: the rate in [0, 10⁸ %) at which the NPV is zero.

    Returns None when the investment never pays back, i.e. even undiscounted its flows sum to less than
    zero (the root would be a negative rate, which is not shown as an IRR), or when the NPV does not change
    sign on the interval. For a conventional flow (one outlay, then inflows) the root is unique.
    """
    if float(np.sum(cashflows)) < 0.0:
        return None
    lo, hi = 0.0, 1e6
    f_lo, f_hi = npv(lo, cashflows), npv(hi, cashflows)
    if f_lo == 0.0:
        return lo
    if f_lo * f_hi > 0:
        return None
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        f_mid = npv(mid, cashflows)
        if f_mid == 0.0 or hi - lo < 1e-12:
            return mid
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def payback_years(cashflows: Sequence[float], rate: float = 0.0) -> float | None:
    """Years until the cumulative (discounted at ``rate``) cash flow reaches zero for good. [yr]

    The crossing after which the cumulative flow stays ≥ 0 to the end (a replacement that pushes it back
    below zero moves the payback later); linear interpolation inside the crossing year (cash assumed to
    arrive evenly through it); ``rate = 0`` gives the simple payback. None when the flow ends below zero
    (it never pays back within its years): the payback exists exactly when the NPV at ``rate`` is ≥ 0.
    """
    cf = np.asarray(cashflows, dtype=float) / (1.0 + rate) ** np.arange(len(cashflows))
    cumulative = np.cumsum(cf)
    if cumulative[-1] < 0:
        return None
    below = np.flatnonzero(cumulative < 0)
    if len(below) == 0:
        return 0.0
    year = int(below[-1]) + 1
    return year - 1 + (-cumulative[year - 1] / cf[year] if cf[year] > 0 else 1.0)


def not_paid_back_reason(lifetime_years: int, rate: float | None = None) -> str:
    """Why a payback or IRR is shown as "—": the investment does not pay back within its life
    (undiscounted, or discounted at ``rate`` [1/yr])."""
    at = "" if rate is None else f" at {100 * rate:g} %"
    return f"does not pay back{at} within the {lifetime_years}-year life"


def not_paid_back(finance: dict, note_key: str) -> bool:
    """Whether a :func:`finance_summary` figure is missing because the investment does not pay back within its life
    (``note_key`` is its note: ``payback_note``, ``discounted_payback_note`` or ``irr_note``), not because nothing
    was invested."""
    return (finance.get(note_key) or "").startswith("does not pay back")


def equivalent_full_cycles(discharge_kwh: float, capacity_kwh: float) -> float:
    """Equivalent full cycles: AC energy discharged / capacity (the usable SOC window, or nameplate when the
    nameplate figure is wanted). [-]"""
    return discharge_kwh / capacity_kwh if capacity_kwh > 0 else 0.0


@dataclass(frozen=True)
class StudyYear:
    """How many years the simulated period counts as, for the yearly figures.

    A period of whole local calendar years (365 or 366 days each) counts as exactly that many years, so a
    year's annual bill is the sum of its monthly bills. Any other period is scaled to a mean year
    (365.25 days) and flagged (:attr:`warning`): its seasons stand for the whole year.

    Attributes
    ----------
    days : float  Length of the period. [d]
    years : float  Years the period counts as; yearly figure = period figure / years. [yr]
    whole : bool  The period is a whole number of years (no scaling beyond dividing by that number).
    """

    days: float
    years: float
    whole: bool

    @property
    def warning(self) -> str | None:
        """Plain-language warning for a period that is not whole years; None otherwise."""
        if self.whole:
            return None
        short = "shorter than a year" if self.days < 365 else "not a whole number of years"
        return (f"The simulated period is {self.days:.1f} days, {short}: every yearly figure is the period scaled "
                f"by {DAYS_PER_MEAN_YEAR / self.days:.3f} (365.25 / {self.days:.1f} days), so the seasons it leaves "
                "out are assumed to be like the ones it holds. Simulate whole years for paybacks to rely on.")


def study_year(period_days: float) -> StudyYear:
    """:class:`StudyYear` of a period of ``period_days`` days (positive). [d]"""
    if not period_days > 0:
        raise ValueError("period_days must be positive")
    whole_years = round(period_days / DAYS_PER_MEAN_YEAR)
    if whole_years >= 1 and 365 * whole_years - 1e-9 <= period_days <= 366 * whole_years + 1e-9:
        return StudyYear(period_days, float(whole_years), True)
    return StudyYear(period_days, period_days / DAYS_PER_MEAN_YEAR, False)


@dataclass(frozen=True)
class BatteryAgeing:
    """Linear capacity fade to an end-of-life state of health, cycle and calendar ageing added.

    Attributes
    ----------
    cycle_life : float
        Equivalent full cycles from new to end of life. [-]
    calendar_life_years : float
        Years from new to end of life with no cycling. [yr]
    end_of_life_soh_pct : float
        State of health at which the battery is replaced. [%]
    """

    cycle_life: float
    calendar_life_years: float
    end_of_life_soh_pct: float

    def fade_pct_per_year(self, cycles_per_year: float) -> tuple[float, float]:
        """(cycle fade, calendar fade) per year of operation. [%/yr]"""
        span = 100.0 - self.end_of_life_soh_pct
        return span * cycles_per_year / self.cycle_life, span / self.calendar_life_years

    def life_years(self, cycles_per_year: float) -> float:
        """Years from new to end of life at this cycling rate. [yr]"""
        cycle, calendar = self.fade_pct_per_year(cycles_per_year)
        return (100.0 - self.end_of_life_soh_pct) / (cycle + calendar)


@dataclass(frozen=True)
class CashFlowInputs:
    """What a multi-year cash flow needs (one investment compared with its reference).

    Savings are the first-year bill reductions split by cause, at first-year prices; each grows with
    the tariff escalation, the PV part shrinks with PV degradation and the battery part with the
    battery's state of health (restored to 100 % at each replacement). Given ``pv_savings_by_year`` /
    ``battery_savings_by_year`` (from re-billing each year with the degraded PV, at first-year prices),
    those replace ``pv_savings × (1 − degradation)^(y−1)`` and ``battery_savings``. O&M grows with
    ``om_escalation`` from year 2.

    Attributes
    ----------
    lifetime_years : int  Operating years. [yr]
    discount_rate : float  Nominal discount rate. [1/yr]
    capex : float  Investment in year 0. [currency]
    pv_savings : float  First-year savings due to PV. [currency/yr]
    battery_savings : float  First-year savings due to the battery. [currency/yr]
    om_per_year : float  Operation and maintenance, nominal, from year 1. [currency/yr]
    tariff_escalation : float  Yearly rise of electricity prices. [1/yr]
    om_escalation : float  Yearly rise of O&M costs. [1/yr]
    pv_degradation : float  Yearly loss of PV output. [1/yr]
    pv_savings_by_year : tuple of float | None  Savings due to PV in years 1..N at first-year prices. [currency/yr]
    battery_savings_by_year : tuple of float | None  Savings due to the battery in years 1..N at first-year prices
        and full health. [currency/yr]
    battery_cycles_per_year : float  Equivalent full cycles in year 1 (0 when there is no battery). [1/yr]
    battery_discharge_kwh : float  AC energy discharged in year 1. [kWh/yr]
    ageing : BatteryAgeing | None  None: no battery in this investment.
    replacement_cost : float  Cost of one battery replacement (nominal). [currency]
    battery_capex : float  Battery part of ``capex`` (for LCOS). [currency]
    battery_om_per_year : float  Battery part of ``om_per_year`` (for LCOS). [currency/yr]
    end_of_life_shares : tuple of float | None  (savings, discharge): the share of its year-1 battery savings and
        discharge the battery keeps at its end-of-life state of health, from a simulation of the year with the
        energy it holds then (:func:`ageing_factor`); None = proportional to the state of health. [-]
    """

    lifetime_years: int
    discount_rate: float
    capex: float
    pv_savings: float
    battery_savings: float
    om_per_year: float
    tariff_escalation: float = 0.0
    om_escalation: float = 0.0
    pv_degradation: float = 0.0
    pv_savings_by_year: tuple[float, ...] | None = None
    battery_savings_by_year: tuple[float, ...] | None = None
    battery_cycles_per_year: float = 0.0
    battery_discharge_kwh: float = 0.0
    ageing: BatteryAgeing | None = None
    replacement_cost: float = 0.0
    battery_capex: float = 0.0
    battery_om_per_year: float = 0.0
    end_of_life_shares: tuple[float, float] | None = None


def ageing_factor(soh_pct: np.ndarray, end_of_life_soh_pct: float, end_of_life_share: float | None) -> np.ndarray:
    """What a battery at ``soh_pct`` [%] keeps of its value when new: linear in the state of health from 1 at 100 %
    to ``end_of_life_share`` at ``end_of_life_soh_pct`` (the share simulated at end of life; None = proportional,
    ``soh / 100``: the share an energy-limited battery keeps). [-]"""
    if end_of_life_share is None:
        return soh_pct / 100.0
    return 1.0 - (1.0 - end_of_life_share) * (100.0 - soh_pct) / (100.0 - end_of_life_soh_pct)


def cash_flow(inp: CashFlowInputs) -> pd.DataFrame:
    """Yearly cash flow, rows year 0..N. [currency]

    Columns: ``pv_savings``, ``battery_savings``, ``om``, ``replacement``, ``residual``, ``capex``, ``net``,
    ``cumulative``, ``discounted``, ``cumulative_discounted``, ``pv_output_factor`` (relative to
    year 1), ``battery_soh_pct`` (mean over the year), ``battery_discharge_kwh``.

    Battery state of health falls linearly (``BatteryAgeing``); the battery's savings and discharge in a year are
    year 1's × :func:`ageing_factor` of its mean state of health (``end_of_life_shares``). When it reaches end of
    life during
    year y the battery is replaced at the end of year y (cost in year y) unless y is the last year.
    The battery in service at the end of year N is credited a residual value (column ``residual``):
    its remaining life to end of life as a share of a new battery's, × ``replacement_cost``.
    """
    n = inp.lifetime_years
    years = np.arange(n + 1)
    escalation = (1.0 + inp.tariff_escalation) ** np.maximum(years - 1, 0)
    pv_factor = (1.0 - inp.pv_degradation) ** np.maximum(years - 1, 0)
    soh = np.zeros(n + 1)
    replacement = np.zeros(n + 1)
    residual = np.zeros(n + 1)
    if inp.ageing is not None:
        cycle, calendar = inp.ageing.fade_pct_per_year(inp.battery_cycles_per_year)
        fade = cycle + calendar
        eol = inp.ageing.end_of_life_soh_pct
        age = 0.0
        for y in range(1, n + 1):
            soh[y] = 100.0 - fade * (age + 0.5)
            age += 1.0
            if 100.0 - fade * age <= eol + 1e-9 and y < n:
                replacement[y] = inp.replacement_cost
                age = 0.0
        remaining = min(max((100.0 - fade * age - eol) / (100.0 - eol), 0.0), 1.0)
        residual[n] = remaining * inp.replacement_cost
    operating = years >= 1
    shares = inp.end_of_life_shares if inp.ageing is not None else None
    eol = inp.ageing.end_of_life_soh_pct if inp.ageing is not None else 0.0
    value_factor, discharge_factor = (np.where(operating, ageing_factor(soh, eol, share), 0.0)
                                      for share in (shares or (None, None)))
    pv_base = (np.concatenate([[0.0], _per_year(inp.pv_savings_by_year, n, "pv_savings_by_year")])
               if inp.pv_savings_by_year is not None else inp.pv_savings * pv_factor)
    bat_base = (np.concatenate([[0.0], _per_year(inp.battery_savings_by_year, n, "battery_savings_by_year")])
                if inp.battery_savings_by_year is not None else np.full(n + 1, inp.battery_savings))
    pv_sav = np.where(operating, pv_base * escalation, 0.0)
    bat_sav = np.where(operating, bat_base * escalation * value_factor, 0.0)
    om = np.where(operating, -inp.om_per_year * (1.0 + inp.om_escalation) ** np.maximum(years - 1, 0), 0.0)
    capex = np.where(years == 0, -inp.capex, 0.0)
    net = pv_sav + bat_sav + om - replacement + residual + capex
    discounted = net / (1.0 + inp.discount_rate) ** years
    return pd.DataFrame({
        "year": years, "pv_savings": pv_sav, "battery_savings": bat_sav, "om": om,
        "replacement": -replacement, "residual": residual, "capex": capex, "net": net,
        "cumulative": np.cumsum(net),
        "discounted": discounted, "cumulative_discounted": np.cumsum(discounted),
        "pv_output_factor": np.where(operating, pv_factor, 0.0), "battery_soh_pct": soh,
        "battery_discharge_kwh": np.where(operating, inp.battery_discharge_kwh * discharge_factor, 0.0),
    })


def _per_year(values: Sequence[float], n: int, name: str) -> np.ndarray:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for a {n}-year life")
    return np.asarray(values, dtype=float)


def lcos(inp: CashFlowInputs, flow: pd.DataFrame) -> float | None:
    """Levelised cost of storage [currency/kWh discharged]:

    (battery capex + Σ_y (battery O&M_y + replacement_y − residual_y)/(1+r)^y) / Σ_y discharge_y/(1+r)^y.

    The cost of the charging energy is not included (it is in the bills). None without discharge.
    """
    disc = (1.0 + inp.discount_rate) ** flow["year"].to_numpy()
    energy = float(np.sum(flow["battery_discharge_kwh"].to_numpy() / disc))
    if energy <= 0:
        return None
    year = flow["year"].to_numpy()
    om = np.where(year >= 1, inp.battery_om_per_year * (1.0 + inp.om_escalation) ** np.maximum(year - 1, 0), 0.0)
    yearly = om - flow["replacement"].to_numpy() - flow["residual"].to_numpy()
    costs = inp.battery_capex + float(np.sum(yearly / disc))
    return costs / energy


def levelised_saving(inp: CashFlowInputs, flow: pd.DataFrame) -> float | None:
    """Battery savings per kWh discharged over the life [currency/kWh]: Σ_y savings_y/(1+r)^y ÷ Σ_y
    discharge_y/(1+r)^y, escalation and ageing included, so that NPV = discounted kWh × (this − LCOS)
    for a battery-only investment. None without discharge."""
    disc = (1.0 + inp.discount_rate) ** flow["year"].to_numpy()
    energy = float(np.sum(flow["battery_discharge_kwh"].to_numpy() / disc))
    if energy <= 0:
        return None
    return float(np.sum(flow["battery_savings"].to_numpy() / disc)) / energy


def finance_summary(inp: CashFlowInputs) -> dict[str, float | str | None]:
    """Headline figures of one investment: simple and discounted payback [yr], NPV [currency], IRR
    [fraction/yr], LCOS and levelised saving [currency/kWh], first-year savings [currency/yr], replacements [-].

    A payback or IRR the investment never reaches is None, with the reason in ``payback_note`` /
    ``discounted_payback_note`` / ``irr_note`` (rendered "—" and the reason everywhere)."""
    flow = cash_flow(inp)
    net = flow["net"].to_numpy()
    invested = inp.capex > 0
    simple = payback_years(net) if invested else None
    discounted = payback_years(net, inp.discount_rate) if invested else None
    rate = irr(net) if invested else None
    never = not_paid_back_reason(inp.lifetime_years)
    nothing = "nothing invested"
    return {
        "capex": inp.capex,
        "first_year_savings": float(flow["pv_savings"][1] + flow["battery_savings"][1]) if len(flow) > 1 else 0.0,
        "simple_payback_years": simple,
        "payback_note": None if simple is not None else (never if invested else nothing),
        "discounted_payback_years": discounted,
        "discounted_payback_note": None if discounted is not None else (
            not_paid_back_reason(inp.lifetime_years, inp.discount_rate) if invested else nothing),
        "npv": npv(inp.discount_rate, net),
        "irr": rate,
        "irr_note": None if rate is not None else (never if invested else nothing),
        "lcos_per_kwh": lcos(inp, flow) if inp.ageing is not None else None,
        "levelised_saving_per_kwh": levelised_saving(inp, flow) if inp.ageing is not None else None,
        "replacements": int(np.count_nonzero(flow["replacement"].to_numpy())),
    }


def break_even_capex(inp: CashFlowInputs) -> float | None:
    """The investment at which the NPV is zero, with replacements scaling with it and O&M fixed. [currency]

    The NPV is affine in a common factor k on ``capex`` and ``replacement_cost``; k* = NPV(0) / (NPV(0) − NPV(1)).
    None when even a free investment has a negative NPV (the O&M exceeds the savings).
    """
    free = replace(inp, capex=0.0, replacement_cost=0.0, battery_capex=0.0)
    npv0 = npv(inp.discount_rate, cash_flow(free)["net"].to_numpy())
    npv1 = npv(inp.discount_rate, cash_flow(inp)["net"].to_numpy())
    if npv0 <= 0 or npv0 == npv1:
        return None
    return inp.capex * npv0 / (npv0 - npv1)


def co2_avoided_t(reference_net_import_kwh: float, net_import_kwh: float, factor_t_per_mwh: float) -> float:
    """CO2 avoided by lowering net grid import (import − export) [tCO2]:
    (reference − strategy) [kWh] / 1000 × factor [tCO2/MWh]. Battery losses count against it."""
    return (reference_net_import_kwh - net_import_kwh) / 1000.0 * factor_t_per_mwh


def jcm_reduction_t(pv_ac_kwh: float, conservative_factor_t_per_mwh: float) -> float:
    """JCM-style reference emissions of PV (VN_AM007 form) [tCO2]: PV AC output [kWh] / 1000 × a
    conservative grid factor [tCO2/MWh]. Project emissions are zero in that methodology."""
    return pv_ac_kwh / 1000.0 * conservative_factor_t_per_mwh


@dataclass(frozen=True)
class StrategyTotals:
    """What one strategy did over the simulated period (energies [kWh], bills [currency]).

    ``bill`` is what the economics count: the bill excluding VAT when VAT is recoverable, else the
    total including VAT. ``bills_by_year``: the same period re-billed with the PV of operating years 1..N
    (degraded; year 1 = ``bill``); None = no degradation to apply. ``soc_change_kwh``: SOC at the end of the
    period minus at its start; ``soc_change_value``: that energy valued at the terminal price (credited to
    the strategy: a battery left fuller than it started holds energy the bill paid for). ``usable_kwh``:
    capacity inside the SOC window, over which equivalent full cycles are counted. ``end_of_life_shares``: the
    share of its savings against PV only and of its discharge the battery keeps at its end-of-life state of health,
    simulated (:attr:`CashFlowInputs.end_of_life_shares`); None = proportional to the state of health.
    """

    bill: float
    import_kwh: float
    export_kwh: float
    pv_kwh: float
    discharge_kwh: float
    capacity_kwh: float
    usable_kwh: float = 0.0
    bills_by_year: tuple[float, ...] | None = None
    soc_change_kwh: float = 0.0
    soc_change_value: float = 0.0
    end_of_life_shares: tuple[float, float] | None = None

    def yearly_bills(self, n: int) -> np.ndarray:
        """Counted bills of the period for operating years 1..n, net of the SOC change value. [currency]"""
        bills = np.full(n, self.bill) if self.bills_by_year is None else _per_year(self.bills_by_year, n,
                                                                                    "bills_by_year")
        return bills - self.soc_change_value


@dataclass(frozen=True)
class StudyParameters:
    """The scenario figures the economics need, flattened (so this module needs no scenario import)."""

    pv_kwp: float
    battery_kwh: float
    battery_kw: float
    pv_per_kwp: float
    battery_per_kwh: float
    battery_per_kw: float
    pv_om_per_kwp_year: float
    battery_om_per_kwh_year: float
    battery_replacement_pct: float
    discount_rate: float
    lifetime_years: int
    tariff_escalation: float
    om_escalation: float
    pv_degradation: float
    ageing: BatteryAgeing
    grid_factor_t_per_mwh: float
    jcm_factor_t_per_mwh: float | None

    @property
    def pv_capex(self) -> float:
        return self.pv_kwp * self.pv_per_kwp

    @property
    def battery_capex(self) -> float:
        return self.battery_kwh * self.battery_per_kwh + self.battery_kw * self.battery_per_kw


def evaluate(params: StudyParameters, year: StudyYear, reference: StrategyTotals, pv_only: StrategyTotals,
             strategies: dict[str, StrategyTotals]) -> dict[str, dict]:
    """Yearly economics of each strategy against no system (``reference``) and against PV only.

    Yearly figures are the period's divided by ``year.years`` (exactly the period's for one whole year).
    Savings in year y are the bill differences of the period re-billed with year y's degraded PV
    (``bills_by_year``), net of the SOC change value. For a strategy with a battery, two investments are
    assessed: PV + battery against no system (``system``) and the battery alone against PV only
    (``battery``); PV only is assessed against no system (``system``).

    Returns
    -------
    dict
        Per strategy: annual bill and savings [currency/yr], the SOC change over the period
        (``soc_change_kwh`` [kWh], ``soc_change_value_period`` [currency]) and its value in the yearly figures
        (``soc_change_value`` [currency/yr]: a period shorter than a year is scaled like the bills), cycles (over
        the usable window and nameplate) and ageing, CO2 [t/yr], and ``finance`` (``system`` / ``battery``:
        :func:`finance_summary` figures) plus ``cash_flow`` (the ``system`` cash flow as yearly rows).
    """
    p, n = params, params.lifetime_years
    per_year = 1.0 / year.years
    ref_bill = reference.bill * per_year
    pv_bill = pv_only.bill * per_year
    ref_bills = reference.yearly_bills(n) * per_year
    pv_bills = pv_only.yearly_bills(n) * per_year
    ref_net = (reference.import_kwh - reference.export_kwh) * per_year
    out: dict[str, dict] = {}
    for name, s in strategies.items():
        bill = s.bill * per_year
        bills = s.yearly_bills(n) * per_year
        has_battery = name != "pv_only" and s.capacity_kwh > 0
        discharge = s.discharge_kwh * per_year if has_battery else 0.0
        cycles = equivalent_full_cycles(discharge, s.usable_kwh or s.capacity_kwh) if has_battery else 0.0
        pv_savings = ref_bills - pv_bills
        battery_savings = pv_bills - bills if has_battery else np.zeros(n)
        pv_om = p.pv_kwp * p.pv_om_per_kwp_year
        bat_om = p.battery_kwh * p.battery_om_per_kwh_year if has_battery else 0.0
        common = dict(lifetime_years=n, discount_rate=p.discount_rate, tariff_escalation=p.tariff_escalation,
                      om_escalation=p.om_escalation, pv_degradation=p.pv_degradation)
        battery_part = dict(battery_cycles_per_year=cycles, battery_discharge_kwh=discharge,
                            ageing=p.ageing, replacement_cost=p.battery_capex * p.battery_replacement_pct / 100.0,
                            battery_capex=p.battery_capex, battery_om_per_year=bat_om,
                            end_of_life_shares=s.end_of_life_shares)
        system = CashFlowInputs(capex=p.pv_capex + (p.battery_capex if has_battery else 0.0),
                                pv_savings=float(pv_savings[0]), battery_savings=float(battery_savings[0]),
                                pv_savings_by_year=tuple(pv_savings), battery_savings_by_year=tuple(battery_savings),
                                om_per_year=pv_om + bat_om, **common, **(battery_part if has_battery else {}))
        finance = {"system": finance_summary(system)}
        if has_battery:
            battery = CashFlowInputs(capex=p.battery_capex, pv_savings=0.0, battery_savings=float(battery_savings[0]),
                                     battery_savings_by_year=tuple(battery_savings), om_per_year=bat_om,
                                     **common, **battery_part)
            finance["battery"] = finance_summary(battery)
            finance["battery"]["break_even_capex"] = break_even_capex(battery)
            finance["battery"]["break_even_per_kwh"] = (
                finance["battery"]["break_even_capex"] / p.battery_kwh
                if finance["battery"]["break_even_capex"] is not None else None)
        net = (s.import_kwh - s.export_kwh) * per_year
        fade_cycle, fade_calendar = p.ageing.fade_pct_per_year(cycles) if has_battery else (0.0, 0.0)
        soc_value = s.soc_change_value * per_year
        out[name] = {
            "annual_bill": bill,
            "soc_change_kwh": s.soc_change_kwh,
            "soc_change_value_period": s.soc_change_value,
            "soc_change_value": soc_value,
            "savings_vs_no_system": ref_bill - bill + soc_value,
            "savings_vs_pv_only": pv_bill - bill + soc_value,
            "import_kwh": s.import_kwh * per_year,
            "export_kwh": s.export_kwh * per_year,
            "pv_kwh": s.pv_kwh * per_year,
            "battery_discharge_kwh": discharge,
            "equivalent_full_cycles": cycles,
            "equivalent_full_cycles_nameplate": equivalent_full_cycles(discharge, s.capacity_kwh) if has_battery
            else 0.0,
            "fade_cycle_pct_per_year": fade_cycle,
            "fade_calendar_pct_per_year": fade_calendar,
            "battery_life_years": p.ageing.life_years(cycles) if has_battery else None,
            "end_of_life_value_share": (s.end_of_life_shares[0] if s.end_of_life_shares is not None
                                        else p.ageing.end_of_life_soh_pct / 100.0) if has_battery else None,
            "end_of_life_value_simulated": has_battery and s.end_of_life_shares is not None,
            "co2_avoided_t": co2_avoided_t(ref_net, net, p.grid_factor_t_per_mwh),
            "jcm_pv_reduction_t": (jcm_reduction_t(s.pv_kwh * per_year, p.jcm_factor_t_per_mwh)
                                   if p.jcm_factor_t_per_mwh is not None else None),
            "finance": finance,
            "cash_flow": cash_flow(system).to_dict(orient="records"),
        }
    return out
