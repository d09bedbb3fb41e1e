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

from dataclasses import replace
from datetime import datetime
from typing import Protocol

import numpy as np

from controller.dispatch import Follow, Source, Target, plan_target
from controller.modes import Mode
from optimizer.policies import TouAction, tou_action
from optimizer.site import GridSpec


class PlanArrays(Protocol):
    """What the follow rule reads of a plan or schedule: per-step powers. [kW]"""

    charge_kw: np.ndarray
    discharge_kw: np.ndarray
    import_kw: np.ndarray
    export_kw: np.ndarray


def planned_peak_kw(import_kw: np.ndarray, same_month: np.ndarray | slice, month_peak_kw: float) -> float:
    """The import level a plan holds for a billing month: ``max(month-to-date peak, the plan's highest import over
    its steps in that month)`` (``same_month``: bool per step, or the slice of those steps). [kW]"""
    return max(month_peak_kw, float(np.max(import_kw[same_month], initial=0.0)))


def follow_plan(plan: PlanArrays, i: int, grid: GridSpec, *, same_month: np.ndarray | slice | None,
                month_peak_kw: float,
                tol_kw: float, expires_at: datetime | None = None) -> Target:
    """Step ``i`` of ``plan`` as a dispatch target by the follow rule.

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
    """
    peak = None if same_month is None else planned_peak_kw(plan.import_kw, same_month, month_peak_kw)
    battery_kw = float(plan.discharge_kw[i] - plan.charge_kw[i])
    grid_kw = float(plan.import_kw[i] - plan.export_kw[i])
    return plan_target(battery_kw, grid_kw, grid, source=Source.PLAN, peak_kw=peak, expires_at=expires_at,
                       tol_kw=tol_kw)


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
