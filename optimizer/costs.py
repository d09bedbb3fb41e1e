"""Cost terms of any schedule on the planner's objective, and the limits every schedule shares.

The LP plan and every fallback policy are priced by :func:`evaluate` with the same formulas, so
their totals compare like for like (energy cost, export revenue, wear, demand charge, terminal
value and slack penalties). :func:`make_plan` turns a schedule into a :class:`~optimizer.plan.Plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from optimizer import surplus
from optimizer.plan import Objective, Plan, SlackUse, SolverInfo
from optimizer.site import BatterySpec, GridSpec, PlannerSettings

if TYPE_CHECKING:
    from optimizer.planner import PlanInputs

#: Violations at or below this are numerical noise, not slack use. [kW or kWh]
SLACK_TOL = 1e-6

#: Under a demand charge on a flat energy price, how far above its cost (price + wear, over the charge efficiency)
#: a kWh stored at the horizon end is valued, so that the plan keeps the battery full for the peak it does not
#: foresee (:func:`terminal_value_per_kwh`). Above the planner's tie-breaks (≤ 1e-4 of the price); measured in
#: docs/performance.md ("Kept full on a flat price"). [-]
KEPT_FULL_PREMIUM = 0.01


@dataclass(frozen=True)
class Schedule:
    """A battery schedule with its consequences, per step (all ≥ 0).

    charge_kw, discharge_kw, import_kw, export_kw, curtail_kw [kW]; soc_kwh at the end of each step [kWh].
    """

    charge_kw: np.ndarray
    discharge_kw: np.ndarray
    import_kw: np.ndarray
    export_kw: np.ndarray
    curtail_kw: np.ndarray
    soc_kwh: np.ndarray


def per_step(value: float | np.ndarray | None, steps: int, default: float, first_only: bool = False,
             out: np.ndarray | None = None) -> np.ndarray:
    """A per-step array from a scalar, an array or None (→ ``default``), written into ``out`` if given.

    With ``first_only`` a scalar applies to the first step and the others take ``default``.
    """
    out = np.empty(steps) if out is None else out
    if value is None:
        out[:] = default
        return out
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        if first_only:
            out[:] = default
            out[:1] = float(arr)
        else:
            out[:] = float(arr)
        return out
    if arr.shape != (steps,):
        raise ValueError(f"expected a scalar or {steps} values, got shape {arr.shape}")
    out[:] = arr
    return out


def charge_limit_kw(inputs: PlanInputs, battery: BatterySpec, out: np.ndarray | None = None) -> np.ndarray:
    """Charge limit per step: PCS limit, lowered by the BMS limit (scalar = first step only). [kW]"""
    bms = per_step(inputs.max_charge_kw, len(inputs.grid), np.inf, first_only=True, out=out)
    return np.minimum(battery.max_charge_kw, bms, out=bms)


def discharge_limit_kw(inputs: PlanInputs, battery: BatterySpec, out: np.ndarray | None = None) -> np.ndarray:
    """Discharge limit per step: PCS limit, lowered by the BMS limit (scalar = first step only). [kW]"""
    bms = per_step(inputs.max_discharge_kw, len(inputs.grid), np.inf, first_only=True, out=out)
    return np.minimum(battery.max_discharge_kw, bms, out=bms)


def import_cap_kw(inputs: PlanInputs, grid: GridSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Import cap per step (inf = none): the input override, else the contracted capacity. [kW]"""
    default = grid.import_cap_kw if grid.import_cap_kw is not None else np.inf
    return per_step(inputs.import_cap_kw, len(inputs.grid), default, out=out)


def export_cap_kw(inputs: PlanInputs, grid: GridSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Export cap per step (0 = zero export): the input override, else the site's. [kW]"""
    return per_step(inputs.export_cap_kw, len(inputs.grid), grid.export_cap_kw, out=out)


def terminal_value_per_kwh(inputs: PlanInputs, battery: BatterySpec, settings: PlannerSettings) -> float:
    """Value of 1 kWh stored at the horizon end. [currency/kWh]

    ``auto``: the cheapest gross import price in the horizon (floored at 0) × discharge efficiency —
    what the stored kWh will at least save later by displacing an import. Under a demand charge with one energy
    price over the whole horizon (:func:`optimizer.surplus.is_flat`, the test the surplus rule on a flat price uses;
    a flat tariff: no cheaper window to recharge in later) the stored kWh is worth
    its defence of a peak the forecast does not see, so it is valued at :data:`KEPT_FULL_PREMIUM` above what it
    costs to store ((price + wear) / η_c): the plan refills the battery in the headroom under the level it holds.
    ``none``: 0.
    """
    if settings.terminal_value == "none":
        return 0.0
    low = max(0.0, float(np.min(inputs.import_price)))
    if inputs.demand_charge_per_kw > 0 and surplus.is_flat(inputs.import_price):
        return (1.0 + KEPT_FULL_PREMIUM) * (low + battery.wear_cost_per_kwh) / battery.charge_efficiency
    return battery.discharge_efficiency * low


def month_floors_kw(inputs: PlanInputs) -> np.ndarray:
    """Peak already reached per billing month in the horizon (0 for months that start inside it). [kW]"""
    months = int(inputs.billing_month[-1]) + 1 if inputs.billing_month is not None else 1
    peak = np.asarray(inputs.month_peak_kw, dtype=float)
    if peak.ndim == 0:
        floors = np.zeros(months)
        floors[0] = float(peak)
        return floors
    if peak.shape != (months,):
        raise ValueError(f"month_peak_kw has {peak.size} values for {months} billing months in the horizon")
    return peak.copy()


def peak_charge_per_kw(inputs: PlanInputs, months: np.ndarray) -> np.ndarray:
    """What each step's running peak is charged per kW under the demand charge (``months``: the billing month
    of each step, 0, 1, …): the rate on the last step of each billing month in the horizon (that month's bill),
    and at the horizon's last step also the billing months after it that a peak is still billed in
    (:attr:`PlanInputs.peak_billed_months` − the months in the horizon, when
    :attr:`PlanInputs.bill_after_horizon`). [currency/kW]"""
    n = len(months)
    cost = np.zeros(n)
    if n == 0:
        return cost
    rate = inputs.demand_charge_per_kw
    cost[:-1][months[1:] != months[:-1]] = rate
    after = max(0, inputs.peak_billed_months - int(months[-1]) - 1) if inputs.bill_after_horizon else 0
    cost[-1] = rate * (1 + after)
    return cost


def demand_cost(measure_kw: np.ndarray, inputs: PlanInputs) -> float:
    """The demand charge a plan adds [currency]: for each step's charge (:func:`peak_charge_per_kw`), the running
    peak of the demand measure ``measure_kw`` [kW] above the level already billed then — per billing month from
    its floor (:func:`month_floors_kw`), or, where a peak is billed in more months than its own
    (:attr:`PlanInputs.peak_billed_months` > 1), carried across the horizon's months from the highest floor so
    far, as the LP's running peak is."""
    n = len(measure_kw)
    months = inputs.billing_month if inputs.billing_month is not None else np.zeros(n, dtype=int)
    floors = month_floors_kw(inputs)[months]
    level = np.maximum(measure_kw, floors)
    if inputs.peak_billed_months > 1:
        peak, floors = np.maximum.accumulate(level), np.maximum.accumulate(floors)
    else:
        peak = np.concatenate([np.maximum.accumulate(level[months == m]) for m in range(int(months[-1]) + 1)]) \
            if n else level
    return float(np.sum(peak_charge_per_kw(inputs, months) * (peak - floors)))


def window_average_import_kw(import_kw: np.ndarray, inputs: PlanInputs) -> np.ndarray:
    """The demand measure per step: the average import of the step's demand window up to the end of the step,
    counting the import measured in the first window before the plan (``inputs.window_import_kwh``); at a
    window's last step, the window's average (the billed value). Per-step import without windows. [kW]

    A window is ``inputs.demand_window_h`` long (a step at least that long is its own window) and restarts with
    a billing month, as in the LP (:mod:`optimizer.lp_model`).
    """
    imp = np.asarray(import_kw, dtype=float)
    if inputs.demand_window is None or inputs.demand_window_h <= 0:
        return imp
    dt = np.asarray(inputs.grid.duration_h, dtype=float)
    energy = imp * dt / np.maximum(dt, inputs.demand_window_h)
    start = np.ones(len(imp), dtype=bool)
    start[1:] = np.diff(inputs.demand_window) != 0
    if inputs.billing_month is not None:
        start[1:] |= np.diff(inputs.billing_month) != 0
    group = np.cumsum(start) - 1
    cumulative = np.cumsum(energy)
    before = np.concatenate([[0.0], cumulative])[np.flatnonzero(start)][group]
    out = cumulative - before
    if len(out):
        out[group == 0] += inputs.window_import_kwh / inputs.demand_window_h
    return out


def slack_penalty_per_kwh(inputs: PlanInputs, settings: PlannerSettings, *,
                          max_abs_price: float | None = None) -> float:
    """Penalty P on every slack: the setting, raised so that breaking a soft constraint never pays. [currency/kWh]

    One kWh of SOC violation for one step (cost P·dt) can at best buy one kWh at the highest |price|
    (/η < 2) or cut a month peak by 1/dt kW (rate/dt). P is raised to at least
    10 × (max |price| / dt_min + demand rate × months billed / dt_min²), which covers both with margin.
    ``max_abs_price``: the largest |import or export price| when the caller has it already. [currency/kWh]
    """
    dt_min = float(np.min(inputs.grid.duration_h))
    price = max_abs_price if max_abs_price is not None else max(
        float(np.max(np.abs(inputs.import_price))), float(np.max(np.abs(inputs.export_price))))
    floor = 10.0 * (price / dt_min + inputs.demand_charge_per_kw * inputs.peak_billed_months / dt_min**2)
    return max(settings.soc_slack_penalty_per_kwh, floor)


def evaluate(schedule: Schedule, inputs: PlanInputs, battery: BatterySpec, grid: GridSpec,
             settings: PlannerSettings) -> tuple[Objective, tuple[SlackUse, ...]]:
    """Price ``schedule`` on the planner's objective and list the soft constraints it breaks.

    Penalties (P = :func:`slack_penalty_per_kwh`): P·dt per kWh of SOC outside the window
    per step, P·dt per kW above an import or export cap, P·dt₀ per kW of first-step battery power
    away from ``inputs.fixed_battery_kw``. The demand term is ``rate × max(0, peak import − peak so
    far)`` per billing month, on the tariff's measure (:func:`window_average_import_kw`), or under a 12-month
    basis the peak's rise charged for the months it is billed in (:func:`demand_cost`).
    """
    dt = np.asarray(inputs.grid.duration_h, dtype=float)
    s = schedule
    pen = slack_penalty_per_kwh(inputs, settings)
    energy_cost = float(np.sum(dt * inputs.import_price * s.import_kw))
    export_revenue = float(np.sum(dt * inputs.export_price * s.export_kw))
    wear = float(battery.wear_cost_per_kwh * np.sum(dt * (s.charge_kw + s.discharge_kw)))
    demand = 0.0
    if inputs.demand_charge_per_kw > 0:
        demand = demand_cost(window_average_import_kw(s.import_kw, inputs), inputs)
    terminal = terminal_value_per_kwh(inputs, battery, settings) * float(s.soc_kwh[-1])

    battery_kw = s.discharge_kw - s.charge_kw
    fixed = np.zeros(len(dt))
    if inputs.fixed_battery_kw is not None:
        fixed[0] = abs(battery_kw[0] - inputs.fixed_battery_kw)
    violations = {
        "soc_min": ("kWh", np.maximum(battery.soc_min_kwh - s.soc_kwh, 0.0)),
        "soc_max": ("kWh", np.maximum(s.soc_kwh - battery.soc_max_kwh, 0.0)),
        "import_cap": ("kW", np.maximum(s.import_kw - import_cap_kw(inputs, grid), 0.0)),
        "export_cap": ("kW", np.maximum(s.export_kw - export_cap_kw(inputs, grid), 0.0)),
        "fixed_battery": ("kW", fixed),
    }
    penalty = 0.0
    slack = []
    for name, (unit, amount) in violations.items():
        amount = np.where(amount > SLACK_TOL, amount, 0.0)
        penalty += pen * float(np.sum(dt * amount))
        if amount.any():
            steps = tuple(int(i) for i in np.flatnonzero(amount))
            slack.append(SlackUse(name, unit, float(amount.max()), steps))
    objective = Objective(energy_cost=energy_cost, export_revenue=export_revenue, wear=wear, demand=demand,
                          terminal_value=terminal, slack_penalty=penalty)
    return objective, tuple(slack)


def make_plan(schedule: Schedule, inputs: PlanInputs, battery: BatterySpec, grid: GridSpec,
              settings: PlannerSettings, source: str, solver: SolverInfo,
              created_at: datetime | None = None) -> Plan:
    """Assemble a :class:`Plan` from a schedule, priced by :func:`evaluate`.

    ``created_at`` defaults to the first step start (nothing here reads the system clock).
    """
    objective, slack = evaluate(schedule, inputs, battery, grid, settings)
    s = schedule
    created = created_at if created_at is not None else inputs.grid.starts[0].to_pydatetime()
    return Plan(
        created_at=created.astimezone(UTC), source=source, starts=inputs.grid.starts,
        duration_h=np.asarray(inputs.grid.duration_h, dtype=float),
        battery_kw=s.discharge_kw - s.charge_kw, charge_kw=s.charge_kw, discharge_kw=s.discharge_kw,
        grid_kw=s.import_kw - s.export_kw, import_kw=s.import_kw, export_kw=s.export_kw,
        soc0_kwh=float(inputs.soc0_kwh), soc_kwh=s.soc_kwh, pv_kw=inputs.pv_kw.copy(), curtail_kw=s.curtail_kw,
        load_kw=inputs.load_kw.copy(), import_price=inputs.import_price.copy(),
        export_price=inputs.export_price.copy(), capacity_kwh=battery.capacity_kwh, objective=objective,
        solver=solver, slack=slack, period=tuple(inputs.period) if inputs.period is not None else None,
        demand_kw=window_average_import_kw(s.import_kw, inputs) if inputs.demand_charge_per_kw > 0 else None)
