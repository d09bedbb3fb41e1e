"""Finance known answers (by hand and against numpy-financial), ageing, cash flow and CO2."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy_financial as npf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.economics import (
    BatteryAgeing,
    CashFlowInputs,
    ageing_factor,
    cash_flow,
    co2_avoided_t,
    equivalent_full_cycles,
    finance_summary,
    irr,
    jcm_reduction_t,
    lcos,
    npv,
    payback_years,
    study_year,
)


def test_npv_and_irr_known_answers() -> None:
    assert npv(0.10, [-100.0, 110.0]) == pytest.approx(0.0, abs=1e-12)
    assert npv(0.0, [-100.0, 30.0, 30.0]) == pytest.approx(-40.0)
    assert irr([-100.0, 110.0]) == pytest.approx(0.10, abs=1e-9)
    assert irr([-100.0, 50.0, 50.0]) == pytest.approx(0.0, abs=1e-9)
    assert irr([-100.0, 40.0, 80.0]) == pytest.approx(npf.irr([-100.0, 40.0, 80.0]), abs=1e-9)
    assert irr([-100.0, -10.0]) is None


def test_irr_is_none_for_an_investment_that_never_pays_back() -> None:
    # numpy-financial gives about -0.7 for this flow; an IRR below zero is "never pays back", shown as "—"
    assert npf.irr([-100.0, 10.0, 10.0]) < 0
    assert irr([-100.0, 10.0, 10.0]) is None
    inp = CashFlowInputs(lifetime_years=2, discount_rate=0.08, capex=100.0, pv_savings=10.0, battery_savings=0.0,
                         om_per_year=0.0)
    summary = finance_summary(inp)
    assert summary["irr"] is None and summary["simple_payback_years"] is None
    assert summary["irr_note"] == summary["payback_note"] == "does not pay back within the 2-year life"
    assert summary["discounted_payback_note"] == "does not pay back at 8 % within the 2-year life"


def test_payback_known_answers() -> None:
    assert payback_years([-100.0, 30.0, 30.0, 30.0, 30.0]) == pytest.approx(100 / 30)
    assert payback_years([-100.0, 30.0, 30.0]) is None
    # discounted at 10 %: cumulative -100, -72.73, -47.93, -25.39, -4.90, +13.73 -> 4 + 4.90/18.63
    flows = [-100.0] + [30.0] * 5
    d = [f / 1.1**y for y, f in enumerate(flows)]
    expected = 4 + -(sum(d[:5])) / d[5]
    assert payback_years(flows, 0.10) == pytest.approx(expected)
    assert payback_years([0.0, 5.0]) == 0.0


def test_payback_is_the_crossing_after_which_the_flow_stays_paid_back() -> None:
    # cumulative -100, -40, 20, -30 (a replacement), -20: ends below zero -> never pays back
    assert payback_years([-100.0, 60.0, 60.0, -50.0, 10.0]) is None
    # cumulative -100, -40, 20, -30, 10: paid back for good during year 4 -> 3 + 30/40
    assert payback_years([-100.0, 60.0, 60.0, -50.0, 40.0]) == pytest.approx(3.75)


def test_discounted_payback_exists_exactly_when_the_npv_is_not_negative() -> None:
    # the case: simple payback in year 19.x, NPV at 8 % negative -> no discounted payback
    flows = [-1000.0] + [52.0] * 20
    assert payback_years(flows) == pytest.approx(1000 / 52)
    assert npv(0.08, flows) < 0 and payback_years(flows, 0.08) is None


def test_om_escalates_from_year_two() -> None:
    inp = CashFlowInputs(lifetime_years=3, discount_rate=0.0, capex=0.0, pv_savings=0.0, battery_savings=0.0,
                         om_per_year=10.0, om_escalation=0.10)
    assert list(cash_flow(inp)["om"].round(9)) == [0.0, -10.0, -11.0, -12.1]


def test_savings_by_year_replace_the_degradation_factor() -> None:
    # re-billed PV savings at first-year prices 200, 190, 181; escalation 10 % on top; no other flows
    inp = CashFlowInputs(lifetime_years=3, discount_rate=0.0, capex=0.0, pv_savings=200.0, battery_savings=0.0,
                         om_per_year=0.0, tariff_escalation=0.10, pv_degradation=0.5,
                         pv_savings_by_year=(200.0, 190.0, 181.0))
    assert list(cash_flow(inp)["pv_savings"].round(9)) == [0.0, 200.0, 209.0, 219.01]
    with pytest.raises(ValueError, match="2 values for a 3-year life"):
        cash_flow(CashFlowInputs(lifetime_years=3, discount_rate=0.0, capex=0.0, pv_savings=1.0,
                                 battery_savings=0.0, om_per_year=0.0, pv_savings_by_year=(1.0, 1.0)))


def test_study_year_counts_whole_years_exactly() -> None:
    assert study_year(365.0).years == 1.0 and study_year(365.0).whole and study_year(365.0).warning is None
    assert study_year(366.0).years == 1.0 and study_year(731.0).years == 2.0
    jan = study_year(28.0)
    assert not jan.whole and jan.years == pytest.approx(28 / 365.25)
    assert "28.0 days, shorter than a year" in jan.warning
    assert "not a whole number of years" in study_year(400.0).warning
    with pytest.raises(ValueError):
        study_year(0.0)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(min_value=0.0, max_value=0.3),
    capex=st.floats(min_value=100.0, max_value=1e6),
    flows=st.lists(st.one_of(st.just(0.0), st.floats(min_value=1.0, max_value=2e5)), min_size=1, max_size=25),
)
def test_npv_irr_match_numpy_financial(rate: float, capex: float, flows: list[float]) -> None:
    values = [-capex, *flows]
    assert npv(rate, values) == pytest.approx(npf.npv(rate, values), rel=1e-9, abs=1e-6)
    ours = irr(values)
    theirs = npf.irr(values)
    if ours is None:
        assert sum(values) < 0 or theirs != theirs  # no root in range: never pays back (or npf finds none)
    else:
        assert npv(ours, values) == pytest.approx(0.0, abs=1e-6 * capex)
        if theirs == theirs:  # npf returns nan when it fails
            assert ours == pytest.approx(theirs, abs=1e-6)


def test_cash_flow_by_hand() -> None:
    inp = CashFlowInputs(lifetime_years=3, discount_rate=0.08, capex=1000.0, pv_savings=200.0,
                         battery_savings=0.0, om_per_year=10.0, tariff_escalation=0.10, pv_degradation=0.05)
    flow = cash_flow(inp)
    assert list(flow["net"].round(6)) == [-1000.0, 190.0, 199.0, 208.405]
    assert flow["cumulative"].iloc[-1] == pytest.approx(-1000 + 190 + 199 + 208.405)
    summary = finance_summary(inp)
    assert summary["npv"] == pytest.approx(npf.npv(0.08, [-1000.0, 190.0, 199.0, 208.405]))
    assert summary["irr"] is None  # never pays back: no negative IRR (numpy-financial would give -0.22)
    assert summary["simple_payback_years"] is None
    assert summary["first_year_savings"] == pytest.approx(200.0)


def test_battery_ageing_and_replacement() -> None:
    ageing = BatteryAgeing(cycle_life=1000, calendar_life_years=10, end_of_life_soh_pct=80)
    # 100 cycles/yr: 20 % × 100/1000 = 2 %/yr cycle fade, 20 %/10 yr = 2 %/yr calendar fade
    assert ageing.fade_pct_per_year(100) == pytest.approx((2.0, 2.0))
    assert ageing.life_years(100) == pytest.approx(5.0)
    inp = CashFlowInputs(lifetime_years=12, discount_rate=0.0, capex=500.0, pv_savings=0.0, battery_savings=100.0,
                         om_per_year=0.0, battery_cycles_per_year=100, battery_discharge_kwh=1000.0,
                         ageing=ageing, replacement_cost=300.0, battery_capex=500.0)
    flow = cash_flow(inp)
    soh = flow["battery_soh_pct"].to_numpy()
    assert soh[1] == pytest.approx(98.0) and soh[5] == pytest.approx(82.0) and soh[6] == pytest.approx(98.0)
    assert list(flow.index[flow["replacement"] < 0]) == [5, 10]
    assert flow["battery_savings"][1] == pytest.approx(98.0)
    assert finance_summary(inp)["replacements"] == 2
    # residual value: 2 years into the third battery SOH is 92 %, 60 % of its life left -> 0.6 × 300 in year 12
    assert flow["residual"].iloc[-1] == pytest.approx(180.0) and flow["residual"].iloc[:-1].eq(0).all()
    # LCOS by hand (r = 0): (500 + 2 × 300 - 180) / Σ 1000 × SOH_y/100
    expected = (500 + 600 - 180) / sum(1000 * s / 100 for s in soh[1:])
    assert lcos(inp, flow) == pytest.approx(expected)


def test_a_simulated_end_of_life_share_interpolates_the_savings_in_the_state_of_health() -> None:
    """The battery above (SOH 98, 94, 90, 86, 82 % in years 1-5) keeping 0.9 of its savings and 0.85 of its
    discharge at SOH 80 %: year 1 keeps 1 − 0.1 × 2/20 = 0.99 of its 100 savings, year 5 1 − 0.1 × 18/20 = 0.91;
    the discharge 1 − 0.15 × 2/20 = 0.985 of 1000 kWh. Without shares: proportional (98 and 980), as before."""
    ageing = BatteryAgeing(cycle_life=1000, calendar_life_years=10, end_of_life_soh_pct=80)
    base = CashFlowInputs(lifetime_years=5, discount_rate=0.0, capex=500.0, pv_savings=0.0, battery_savings=100.0,
                          om_per_year=0.0, battery_cycles_per_year=100, battery_discharge_kwh=1000.0,
                          ageing=ageing, replacement_cost=300.0, battery_capex=500.0)
    simulated = cash_flow(replace(base, end_of_life_shares=(0.9, 0.85)))
    assert simulated["battery_savings"].tolist() == pytest.approx([0.0, 99.0, 97.0, 95.0, 93.0, 91.0])
    assert simulated["battery_discharge_kwh"][1] == pytest.approx(985.0)
    proportional = cash_flow(base)
    assert proportional["battery_savings"].tolist() == pytest.approx([0.0, 98.0, 94.0, 90.0, 86.0, 82.0])
    assert proportional["battery_discharge_kwh"][1] == pytest.approx(980.0)
    assert ageing_factor(np.array([100.0, 80.0]), 80.0, 0.9).tolist() == pytest.approx([1.0, 0.9])


def test_lcos_discounted_by_hand() -> None:
    ageing = BatteryAgeing(cycle_life=1e15, calendar_life_years=1e15, end_of_life_soh_pct=80)
    inp = CashFlowInputs(lifetime_years=2, discount_rate=0.10, capex=1000.0, pv_savings=0.0, battery_savings=0.0,
                         om_per_year=20.0, battery_discharge_kwh=100.0, ageing=ageing, battery_capex=1000.0,
                         battery_om_per_year=20.0)
    expected = (1000 + 20 / 1.1 + 20 / 1.21) / (100 / 1.1 + 100 / 1.21)
    assert lcos(inp, cash_flow(inp)) == pytest.approx(expected, rel=1e-9)


def test_cycles_and_co2() -> None:
    assert equivalent_full_cycles(3000.0, 1000.0) == 3.0
    assert equivalent_full_cycles(10.0, 0.0) == 0.0
    assert co2_avoided_t(1_000_000.0, 400_000.0, 0.681) == pytest.approx(408.6)
    assert jcm_reduction_t(1_100_000.0, 0.5) == pytest.approx(550.0)


def test_evaluate_splits_savings_and_investments() -> None:
    from simulations.economics import StrategyTotals, StudyParameters, evaluate

    params = StudyParameters(
        pv_kwp=100, battery_kwh=200, battery_kw=100, pv_per_kwp=10.0, battery_per_kwh=5.0, battery_per_kw=1.0,
        pv_om_per_kwp_year=0.1, battery_om_per_kwh_year=0.05, battery_replacement_pct=50, discount_rate=0.0,
        lifetime_years=10, tariff_escalation=0.0, om_escalation=0.0, pv_degradation=0.0,
        ageing=BatteryAgeing(cycle_life=1e12, calendar_life_years=1e12, end_of_life_soh_pct=80),
        grid_factor_t_per_mwh=0.5, jcm_factor_t_per_mwh=0.4)
    half = study_year(365.25 / 2)  # half a mean year simulated: every figure doubles
    ref = StrategyTotals(bill=1000.0, import_kwh=5000.0, export_kwh=0.0, pv_kwh=0.0, discharge_kwh=0.0, capacity_kwh=0)
    pv = StrategyTotals(bill=800.0, import_kwh=4000.0, export_kwh=0.0, pv_kwh=1000.0, discharge_kwh=0.0,
                        capacity_kwh=200)
    bat = StrategyTotals(bill=700.0, import_kwh=4100.0, export_kwh=100.0, pv_kwh=1000.0, discharge_kwh=2000.0,
                         capacity_kwh=200)
    out = evaluate(params, half, ref, pv, {"pv_only": pv, "mpc": bat})
    assert out["pv_only"]["savings_vs_no_system"] == pytest.approx(400.0)
    assert out["mpc"]["savings_vs_no_system"] == pytest.approx(600.0)
    assert out["mpc"]["savings_vs_pv_only"] == pytest.approx(200.0)
    assert out["mpc"]["equivalent_full_cycles"] == pytest.approx(20.0)
    assert out["mpc"]["co2_avoided_t"] == pytest.approx((10000 - 8000) / 1000 * 0.5)
    assert out["mpc"]["jcm_pv_reduction_t"] == pytest.approx(2000 / 1000 * 0.4)
    system = out["mpc"]["finance"]["system"]
    assert system["capex"] == pytest.approx(100 * 10 + 200 * 5 + 100 * 1)
    # yearly net: 400 (PV) + 200 (battery) - (10 + 10) O&M = 580 -> payback 2100 / 580
    assert system["simple_payback_years"] == pytest.approx(2100 / 580)
    battery = out["mpc"]["finance"]["battery"]
    assert battery["capex"] == pytest.approx(1100) and battery["simple_payback_years"] == pytest.approx(1100 / 190)
    assert "battery" not in out["pv_only"]["finance"]
    # break-even battery cost: at that capex (replacements scaled alike) the battery's NPV is zero
    k = battery["break_even_capex"] / battery["capex"]
    assert battery["break_even_per_kwh"] == pytest.approx(battery["break_even_capex"] / 200)
    # no replacement within 10 years at this ageing; a residual of the whole replacement cost (50 %) in year 10
    flows = [-1100 * k] + [200 - 10] * 9 + [200 - 10 + 0.5 * 1100 * k]
    assert npf.npv(0.0, flows) == pytest.approx(0.0, abs=1e-6)
    assert out["pv_only"]["finance"]["system"]["simple_payback_years"] == pytest.approx(1000 / 390)


def _params(**over):
    from simulations.economics import StudyParameters

    base = dict(pv_kwp=100, battery_kwh=200, battery_kw=100, pv_per_kwp=10.0, battery_per_kwh=5.0,
                battery_per_kw=0.0, pv_om_per_kwp_year=0.0, battery_om_per_kwh_year=0.0, battery_replacement_pct=50,
                discount_rate=0.0, lifetime_years=3, tariff_escalation=0.0, om_escalation=0.0, pv_degradation=0.0,
                ageing=BatteryAgeing(cycle_life=1e12, calendar_life_years=1e12, end_of_life_soh_pct=80),
                grid_factor_t_per_mwh=0.5, jcm_factor_t_per_mwh=None)
    return StudyParameters(**{**base, **over})


def test_evaluate_one_whole_year_is_the_sum_of_the_period() -> None:
    from simulations.economics import StrategyTotals, evaluate

    ref = StrategyTotals(bill=1234.5, import_kwh=10.0, export_kwh=0.0, pv_kwh=0.0, discharge_kwh=0.0, capacity_kwh=0)
    pv = StrategyTotals(bill=1000.25, import_kwh=8.0, export_kwh=0.0, pv_kwh=2.0, discharge_kwh=0.0, capacity_kwh=0)
    out = evaluate(_params(), study_year(365.0), ref, pv, {"pv_only": pv})
    assert out["pv_only"]["annual_bill"] == 1000.25  # no 8766/8760 factor
    assert out["pv_only"]["savings_vs_no_system"] == 234.25


def test_evaluate_credits_the_year_end_soc_and_counts_cycles_over_the_usable_window() -> None:
    from simulations.economics import StrategyTotals, evaluate

    ref = StrategyTotals(bill=1000.0, import_kwh=10.0, export_kwh=0.0, pv_kwh=0.0, discharge_kwh=0.0, capacity_kwh=0)
    pv = StrategyTotals(bill=800.0, import_kwh=8.0, export_kwh=0.0, pv_kwh=2.0, discharge_kwh=0.0, capacity_kwh=200)
    # the battery ended 40 kWh lower than it started; refilling it at 1.5/kWh is worth -60 against its savings
    bat = StrategyTotals(bill=700.0, import_kwh=7.0, export_kwh=0.0, pv_kwh=2.0, discharge_kwh=3400.0,
                         capacity_kwh=200, usable_kwh=170.0, soc_change_kwh=-40.0, soc_change_value=-60.0)
    out = evaluate(_params(), study_year(365.0), ref, pv, {"pv_only": pv, "mpc": bat})["mpc"]
    assert out["annual_bill"] == 700.0
    assert out["soc_change_value"] == -60.0 and out["soc_change_kwh"] == -40.0
    assert out["savings_vs_pv_only"] == pytest.approx(100.0 - 60.0)
    # a quarter year: the yearly figures scale the period's credit, but the battery ended the study 40 kWh lower
    # once, not 160 kWh (the report said a 1,000 kWh battery ended a month 5,302 kWh fuller)
    quarter = evaluate(_params(), study_year(365.25 / 4), ref, pv, {"pv_only": pv, "mpc": bat})["mpc"]
    assert quarter["soc_change_kwh"] == -40.0 and quarter["soc_change_value_period"] == -60.0
    assert quarter["soc_change_value"] == pytest.approx(-240.0)
    assert quarter["savings_vs_pv_only"] == pytest.approx(4 * 100.0 - 240.0)
    assert out["finance"]["battery"]["first_year_savings"] == pytest.approx(40.0)
    assert out["equivalent_full_cycles"] == pytest.approx(3400 / 170)  # 20, over the 10-95 % window
    assert out["equivalent_full_cycles_nameplate"] == pytest.approx(3400 / 200)  # 17


def test_evaluate_bills_each_degraded_year() -> None:
    from simulations.economics import StrategyTotals, evaluate

    ref = StrategyTotals(bill=1000.0, import_kwh=10.0, export_kwh=0.0, pv_kwh=0.0, discharge_kwh=0.0, capacity_kwh=0)
    # PV only re-billed with years 2 and 3 of degraded PV: savings 200, 195, 190 (not 200 × 0.5^y)
    pv = StrategyTotals(bill=800.0, import_kwh=8.0, export_kwh=0.0, pv_kwh=2.0, discharge_kwh=0.0, capacity_kwh=0,
                        bills_by_year=(800.0, 805.0, 810.0))
    out = evaluate(_params(pv_degradation=0.5, om_escalation=0.1, pv_om_per_kwp_year=1.0), study_year(365.0), ref,
                   pv, {"pv_only": pv})["pv_only"]
    flow = out["cash_flow"]
    assert [row["pv_savings"] for row in flow] == pytest.approx([0.0, 200.0, 195.0, 190.0])
    assert [row["om"] for row in flow] == pytest.approx([0.0, -100.0, -110.0, -121.0])
    assert out["finance"]["system"]["npv"] == pytest.approx(-1000 + 200 + 195 + 190 - 100 - 110 - 121)
