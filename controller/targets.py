"""The one path from (mode, plan step, month-to-date peak, tariff period, measurements) to the dispatcher's target.

Pure functions, no I/O and no clock: the live controller (``controller.service``, ``controller.planning``) and
the offline strategies (``simulations.strategies``) call the same code, so a study follows a plan exactly as the
site does.

- :func:`planned_peak_kw`: the import level a plan holds for the billing month under a demand charge.
- :func:`follow_plan`: a plan step (of a :class:`~optimizer.plan.Plan` or a bare
  :class:`~optimizer.costs.Schedule`) by the follow rule (:func:`controller.dispatch.plan_target`).
- :func:`tou_target`: the TOU rule (:func:`optimizer.policies.tou_action`) for the current moment.
- :func:`mode_target`: the target of an operating mode.

Sign conventions: docs/conventions.md (grid + import, battery + discharge).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

import numpy as np

from controller.dispatch import Follow, LaterSteps, Source, Target, plan_target
from controller.modes import Mode
from optimizer.policies import TouAction, tou_action
from optimizer.site import GridSpec


class PlanArrays(Protocol):
    """What the follow rule reads of a plan or schedule: per-step powers. [kW]"""

    charge_kw: np.ndarray
    discharge_kw: np.ndarray
    import_kw: np.ndarray
    export_kw: np.ndarray


@dataclass(frozen=True)
class DemandWindow:
    """The demand window running now (the tariff's measure, e.g. 30 minutes aligned to the local clock).

    Attributes
    ----------
    length_h : float  The window's length. [h]
    elapsed_h : float  How much of it has passed. [h]
    import_kwh : float  Import measured in it so far. [kWh]
    """

    length_h: float
    elapsed_h: float
    import_kwh: float

    def ceiling_kw(self, peak_kw: float, later_kwh: float = 0.0, left_h: float | None = None) -> float:
        """The import over the next ``left_h`` hours (default: the rest of the window) that, with ``later_kwh``
        imported in the window after them, makes the window's average exactly ``peak_kw`` (≥ 0): above
        ``peak_kw`` after a quiet start or before a quiet end, below it after a heavy start. [kW]"""
        remaining = self.length_h - self.elapsed_h
        if self.length_h <= 0 or remaining <= 1e-9:
            return peak_kw
        left = remaining if left_h is None else min(left_h, remaining)
        return max(0.0, (peak_kw * self.length_h - self.import_kwh - later_kwh) / max(left, 1e-9))


def planned_peak_kw(import_kw: np.ndarray, same_month: np.ndarray | slice, month_peak_kw: float) -> float:
    """The import level a plan holds for a billing month: ``max(month-to-date peak, the plan's highest import over
    its steps in that month)`` (``same_month``: bool per step, or the slice of those steps). [kW]"""
    return max(month_peak_kw, float(np.max(import_kw[same_month], initial=0.0)))


def follow_plan(plan: PlanArrays, i: int, grid: GridSpec, *, same_month: np.ndarray | slice | None,
                month_peak_kw: float, tol_kw: float, expires_at: datetime | None = None,
                demand_kw: np.ndarray | None = None, window: DemandWindow | None = None,
                windows: np.ndarray | None = None, duration_h: np.ndarray | None = None,
                step_left_h: float | None = None, max_discharge_kw: float | None = None) -> Target:
    """Step ``i`` of ``plan`` as a dispatch target by the follow rule.

    Under a demand charge the grid ceiling defends the planned month peak P: the plan's highest demand measure in
    the month (``demand_kw``, else its import) or the peak already reached, whichever is higher. Within the demand
    window running now (``window``, with the plan's windows ``windows`` and step durations ``duration_h``) the
    ceiling for the rest of step ``i`` is the import that, with what was measured in the window so far and what
    the plan imports in it after step ``i``, makes the window's average exactly P (:meth:`DemandWindow.ceiling_kw`):
    the plan's own import while the window goes as planned, less after a load above the forecast, so the window's
    average stays at P whatever the load does, as far as the battery can (docs/planner.md).

    Parameters
    ----------
    plan : PlanArrays
        A :class:`~optimizer.plan.Plan` or :class:`~optimizer.costs.Schedule` (the same arithmetic on both, so the
        Plan built from a Schedule gives the same target).
    i : int
        The step followed.
    grid : GridSpec
    same_month : numpy.ndarray of bool, slice or None
        Under a demand charge, per plan step: in the billing month of step ``i`` (or the slice of those steps);
        None = no demand charge.
    month_peak_kw : float
        Highest window-average import of the billing month so far. [kW]
    tol_kw : float
        Tolerance of the follow rule. [kW]
    expires_at : datetime | None
        When the step (or its plan) stops being valid. UTC.
    demand_kw : numpy.ndarray | None
        The plan's demand measure per step (:attr:`optimizer.plan.Plan.demand_kw`); None = its import. [kW]
    window : DemandWindow | None
        The demand window running now; None = the plan's peak as it is.
    windows, duration_h : numpy.ndarray | None
        Per plan step: the demand window it starts in (integers) and its duration [h]; needed with ``window``.
    step_left_h : float | None
        What is left of step ``i`` now (None: all of it, the caller is at its start). [h]
    max_discharge_kw : float | None
        The battery's discharge limit now: with it the target carries :class:`~controller.dispatch.LaterSteps`, so
        that a net load above the plan's tightens the ceiling by what the window's later steps cannot take off. [kW]
    """
    peak = None
    if same_month is not None:
        peak = planned_peak_kw(plan.import_kw if demand_kw is None else demand_kw, same_month, month_peak_kw)
    battery_kw = float(plan.discharge_kw[i] - plan.charge_kw[i])
    grid_kw = float(plan.import_kw[i] - plan.export_kw[i])
    target = plan_target(battery_kw, grid_kw, grid, source=Source.PLAN, peak_kw=peak, expires_at=expires_at,
                         tol_kw=tol_kw)
    if peak is None or window is None or windows is None or duration_h is None or target.grid_ceiling_kw is None:
        return target
    # the window's own ceiling replaces "the step's planned import is allowed": that allowance assumed the window
    # so far went as planned
    later = 0.0
    rooms = []
    j = i + 1
    while j < len(windows) and windows[j] == windows[i]:
        later += float(plan.import_kw[j]) * float(duration_h[j])
        if max_discharge_kw is not None:
            planned = float(plan.discharge_kw[j] - plan.charge_kw[j])
            rooms.append((float(duration_h[j]), max(0.0, max_discharge_kw - planned)))
        j += 1
    left_h = float(duration_h[i]) if step_left_h is None else step_left_h
    ceiling = window.ceiling_kw(peak, later, left_h)
    if grid.import_cap_kw is not None:
        ceiling = min(ceiling, grid.import_cap_kw)
    steps = None if max_discharge_kw is None else LaterSteps(grid_kw + battery_kw, left_h, tuple(rooms),
                                                              window.ceiling_kw(peak))
    return replace(target, grid_ceiling_kw=ceiling, later_steps=steps)


def tou_target(period: str, load_kw: float | None, pv_kw: float | None, max_charge_kw: float,
               reason: str) -> Target | None:
    """The TOU rule for the current moment as a dispatch target; None when load or PV is missing.

    PV surplus or peak → grid target 0 (charge from the surplus / discharge to cover the load); off-peak →
    charge at ``max_charge_kw`` (the chain's import cap and BMS steps narrow it); otherwise hold.
    """
    if load_kw is None or pv_kw is None:
        return None
    action = tou_action(period, load_kw - pv_kw)
    if action in (TouAction.ABSORB_SURPLUS, TouAction.COVER_LOAD):
        return Target(Source.TOU_RULE, Follow.GRID, 0.0, reason=reason)
    if action is TouAction.GRID_CHARGE:
        return Target(Source.TOU_RULE, Follow.BATTERY, -max_charge_kw, reason=reason)
    return Target(Source.TOU_RULE, Follow.BATTERY, 0.0, reason=reason)


def mode_target(mode: Mode, reason: str, *, plan: Target | None = None, period: str = "",
                load_kw: float | None = None, pv_kw: float | None = None, max_charge_kw: float = 0.0,
                manual_kw: float | None = None, manual_until: datetime | None = None,
                reserve_soc_pct: float | None = None) -> Target | None:
    """The target of operating mode ``mode``.

    Parameters
    ----------
    mode : Mode
        The effective mode (``safe`` and unknown modes: no target).
    reason : str
        The mode's reason code (the target's reason for the fallback modes).
    plan : Target | None
        The plan step's target (:func:`follow_plan`) for ``auto``; None without a valid plan.
    period, load_kw, pv_kw, max_charge_kw
        For ``tou_rule``: the tariff period now, measured load and PV [kW] and the charge power [kW].
    manual_kw, manual_until
        For ``manual``: the operator's battery setpoint [kW, +discharge] and its expiry (UTC).
    reserve_soc_pct : float | None
        The operator's SOC reserve, carried on every target. [%]
    """
    if mode is Mode.AUTO:
        target = plan
    elif mode is Mode.SELF_CONSUMPTION:
        target = Target(Source.SELF_CONSUMPTION, Follow.GRID, 0.0, reason=reason)
    elif mode is Mode.TOU_RULE:
        target = tou_target(period, load_kw, pv_kw, max_charge_kw, reason)
    elif mode is Mode.MANUAL:
        if manual_kw is None:
            raise ValueError("manual mode needs the operator's setpoint")
        target = Target(Source.MANUAL, Follow.BATTERY, manual_kw, expires_at=manual_until, reason="operator")
    elif mode is Mode.STANDBY:
        target = Target(Source.STANDBY, Follow.BATTERY, 0.0, reason="operator")
    else:
        target = None
    if target is not None and reserve_soc_pct is not None:
        target = replace(target, reserve_soc_pct=reserve_soc_pct)
    return target
