"""Fallback and baseline policies: simple rules on the same PlanInputs, returned as priced Plans.

Each policy walks the steps once, respects the same limits as the LP (PCS/BMS power limits, SOC
window, export cap, a fixed first-step battery power) and is priced by :func:`optimizer.costs.evaluate`
exactly like the LP plan, so costs compare like for like. Use them when the solver fails
(``self_consumption`` is the safe default) and as baselines in studies.

- ``no_battery``: the battery stays idle (only its standby loss drains it).
- ``self_consumption``: charge from PV surplus, discharge to cover the load; never from the grid.
- ``tou``: charge from the grid at full power in off-peak periods and from PV surplus at any
  time; discharge to cover the load in peak periods; hold otherwise. Needs ``inputs.period``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import numpy as np

from optimizer import costs
from optimizer.costs import Schedule
from optimizer.plan import Plan, SolverInfo
from optimizer.planner import PlanInputs
from optimizer.site import BatterySpec, GridSpec, PlannerSettings

#: Tariff period names the TOU rule treats as peak / off-peak (others: hold, charge from surplus only).
PEAK_PERIODS = frozenset({"peak"})
OFFPEAK_PERIODS = frozenset({"off_peak", "offpeak", "low"})



class TouAction(StrEnum):
    """What the TOU rule does in a moment."""

    ABSORB_SURPLUS = "absorb_surplus"  # PV above the load: charge from the surplus
    GRID_CHARGE = "grid_charge"        # off-peak: charge at full power (within the import cap)
    COVER_LOAD = "cover_load"          # peak: discharge to cover the load
    HOLD = "hold"                      # otherwise: battery idle


def tou_action(period: str, net_kw: float) -> TouAction:
    """The TOU rule: its action in tariff period ``period`` with net load ``net_kw`` (load − PV, kW).

    The one statement of the rule: :func:`tou` applies it per plan step, ``controller.targets.tou_target`` per
    control cycle (live and in studies).
    """
    if net_kw < 0:
        return TouAction.ABSORB_SURPLUS
    if period in OFFPEAK_PERIODS:
        return TouAction.GRID_CHARGE
    if period in PEAK_PERIODS:
        return TouAction.COVER_LOAD
    return TouAction.HOLD


Rule = Callable[[int, float, float, float], float]  # (step, net load kW, max charge, max discharge) → battery kW


def _simulate(inputs: PlanInputs, battery: BatterySpec, grid: GridSpec, rule: Rule) -> Schedule:
    """Apply ``rule`` step by step within the power limits and SOC window; settle grid and curtailment."""
    n = len(inputs.grid)
    dt = np.asarray(inputs.grid.duration_h, dtype=float)
    ch_lim, dis_lim = costs.charge_limit_kw(inputs, battery), costs.discharge_limit_kw(inputs, battery)
    exp_cap = costs.export_cap_kw(inputs, grid)
    eta_c, eta_d = battery.charge_efficiency, battery.discharge_efficiency
    out = {k: np.zeros(n) for k in ("ch", "dis", "imp", "exp", "curt", "soc")}
    soc = float(inputs.soc0_kwh)
    for t in range(n):
        after_standby = soc - battery.standby_loss_kw * dt[t]
        room_ch = max(0.0, (battery.soc_max_kwh - after_standby) / (eta_c * dt[t]))
        room_dis = max(0.0, (after_standby - battery.soc_min_kwh) * eta_d / dt[t])
        max_ch, max_dis = min(ch_lim[t], room_ch), min(dis_lim[t], room_dis)
        net = inputs.load_kw[t] - inputs.pv_kw[t]  # + = deficit
        if t == 0 and inputs.fixed_battery_kw is not None:
            bat = float(np.clip(inputs.fixed_battery_kw, -ch_lim[0], dis_lim[0]))
        else:
            bat = float(np.clip(rule(t, net, max_ch, max_dis), -max_ch, max_dis))
        ch, dis = max(-bat, 0.0), max(bat, 0.0)
        grid_kw = net - bat
        imp, exp = max(grid_kw, 0.0), max(-grid_kw, 0.0)
        curt = min(max(exp - exp_cap[t], 0.0), inputs.pv_kw[t])
        exp -= curt
        soc = after_standby + dt[t] * (eta_c * ch - dis / eta_d)
        for key, value in (("ch", ch), ("dis", dis), ("imp", imp), ("exp", exp), ("curt", curt), ("soc", soc)):
            out[key][t] = value
    return Schedule(charge_kw=out["ch"], discharge_kw=out["dis"], import_kw=out["imp"], export_kw=out["exp"],
                    curtail_kw=out["curt"], soc_kwh=out["soc"])


def _self_consumption_rule(t: int, net: float, max_ch: float, max_dis: float) -> float:
    return min(net, max_dis) if net > 0 else -min(-net, max_ch)


def no_battery(inputs: PlanInputs, battery: BatterySpec, grid: GridSpec, settings: PlannerSettings) -> Plan:
    """The battery idle all horizon (baseline)."""
    schedule = _simulate(inputs, battery, grid, lambda t, net, max_ch, max_dis: 0.0)
    return costs.make_plan(schedule, inputs, battery, grid, settings, "policy:no_battery", SolverInfo("policy"))


def self_consumption(inputs: PlanInputs, battery: BatterySpec, grid: GridSpec, settings: PlannerSettings) -> Plan:
    """Charge from PV surplus, discharge to cover the load (the safe fallback)."""
    schedule = _simulate(inputs, battery, grid, _self_consumption_rule)
    return costs.make_plan(schedule, inputs, battery, grid, settings, "policy:self_consumption",
                           SolverInfo("policy"))


def tou(inputs: PlanInputs, battery: BatterySpec, grid: GridSpec, settings: PlannerSettings) -> Plan:
    """Time-of-use rule: grid-charge off-peak, discharge to the load in peak, surplus-charge always.

    Raises ``ValueError`` without ``inputs.period``. Grid charging respects the import cap.
    """
    if inputs.period is None:
        raise ValueError("the TOU policy needs the tariff period of every step (PlanInputs.period)")
    imp_cap = costs.import_cap_kw(inputs, grid)

    def rule(t: int, net: float, max_ch: float, max_dis: float) -> float:
        action = tou_action(inputs.period[t], net)
        if action is TouAction.ABSORB_SURPLUS:
            return -min(-net, max_ch)
        if action is TouAction.GRID_CHARGE:
            return -max(0.0, min(max_ch, imp_cap[t] - net))
        if action is TouAction.COVER_LOAD:
            return min(net, max_dis)
        return 0.0

    schedule = _simulate(inputs, battery, grid, rule)
    return costs.make_plan(schedule, inputs, battery, grid, settings, "policy:tou", SolverInfo("policy"))


POLICIES: dict[str, Callable[[PlanInputs, BatterySpec, GridSpec, PlannerSettings], Plan]] = {
    "no_battery": no_battery, "self_consumption": self_consumption, "tou": tou}
