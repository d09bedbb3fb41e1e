"""A coarser far horizon: the first hours at the plan's own step, the rest in clock-aligned blocks.

A re-plan acts only on its first step; the far end of the horizon has to value the energy carried there, not
schedule it minute by minute. :func:`blocks` keeps the first ``planner.fine_hours`` at the native step and
merges the later steps into blocks of ``planner.block_minutes`` that start on whole multiples of
``block_minutes`` of UTC epoch time (local :00/:30 for 30-minute blocks in every zone whose UTC offset is a
multiple of 30 minutes, so tariff windows and 30-minute demand windows stay whole); under a demand charge a block
is no longer than the demand window and never spans two billing months. :func:`coarsen` turns the plan's inputs
into inputs on the blocks, the planner solves that smaller LP (52 instead of 96 steps for a day of 15-minute
steps), and :func:`expand` turns its schedule back into one per native step: every caller (the dispatcher, the
dashboard, a study) sees the native grid (docs/planner.md, "Coarse far horizon").

Within a block: PV, load, prices and the peak risk are duration-weighted means (energy, and cost at a flat
price, preserved); limits and caps the smallest of the block; demand window and billing month those of its first
step. The LP does not read tariff period names: the blocks' inputs have none.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from optimizer.costs import Schedule
from optimizer.site import PlannerSettings
from optimizer.timegrid import TimeGrid

if TYPE_CHECKING:
    from optimizer.planner import PlanInputs

NS_PER_MINUTE = 60 * 10**9


@dataclass(frozen=True, eq=False)
class Blocks:
    """How native steps merge into LP steps.

    Attributes
    ----------
    first : numpy.ndarray  Index of the first native step of each LP step (int, ascending, from 0).
    block_of : numpy.ndarray  LP step of each native step.
    mean : numpy.ndarray  (LP steps × native steps) duration weights: ``mean @ x`` is the per-block mean of ``x``.
    duration_h : numpy.ndarray  Duration of each LP step. [h]
    fraction : numpy.ndarray  Share of its block's duration passed at the end of each native step. [-]
    single : numpy.ndarray  Native steps that are an LP step on their own (their indices).
    single_block : numpy.ndarray  The LP step of each of those.
    """

    first: np.ndarray
    block_of: np.ndarray
    mean: np.ndarray
    duration_h: np.ndarray
    fraction: np.ndarray
    single: np.ndarray
    single_block: np.ndarray

    @classmethod
    def of(cls, first: np.ndarray, duration_h: np.ndarray) -> Blocks:
        """The layout for LP steps starting at native steps ``first``, native steps of ``duration_h`` [h]."""
        n = len(duration_h)
        counts = np.diff(np.append(first, n))
        block_of = np.repeat(np.arange(len(first)), counts)
        block_h = np.add.reduceat(duration_h, first)
        mean = np.zeros((len(first), n))
        mean[block_of, np.arange(n)] = duration_h / block_h[block_of]
        elapsed = np.cumsum(duration_h)
        fraction = (elapsed - (elapsed - duration_h)[first][block_of]) / block_h[block_of]
        fraction[np.cumsum(counts) - 1] = 1.0
        single = np.flatnonzero(counts[block_of] == 1)
        arrays = (first, block_of, mean, block_h, fraction, single, block_of[single])
        for a in arrays:
            a.flags.writeable = False
        return cls(*arrays)


def blocks(grid: TimeGrid, settings: PlannerSettings, billing_month: np.ndarray | None = None,
           demand_window_h: float | None = None) -> Blocks | None:
    """The LP steps for a plan on ``grid``, or None when the horizon is not coarsened (``planner.block_minutes``
    0, or nothing to merge).

    The fine part runs until ``planner.fine_hours`` have passed and a step starts on a block boundary; from there
    each LP step merges the native steps up to the next boundary. Under a demand charge (``demand_window_h`` not
    None: the measure's window [h], 0 = per step) a block is no longer than the window and no block spans two
    billing months (``billing_month`` per step), so the LP's demand measure stays exact on the blocks' means; a
    per-step measure is not coarsened. Uniform grids (every offline re-plan, and a live one made at a step's
    start) reuse the layout of the same clock phase.
    """
    block_ns = settings.block_minutes * NS_PER_MINUTE
    month_starts: tuple[int, ...] = ()
    if demand_window_h is not None:
        block_ns = min(block_ns, round(demand_window_h * 60) * NS_PER_MINUTE)
        if billing_month is not None:
            month_starts = tuple(np.flatnonzero(np.diff(billing_month)).tolist())
    n = len(grid)
    if block_ns <= 0 or n < 2 or block_ns % (settings.step_minutes * NS_PER_MINUTE):
        return None
    step_ns = grid.uniform_step_ns
    if step_ns is not None:
        return _uniform_blocks(int(grid.starts_ns[0]) % block_ns, step_ns, n, block_ns, settings.fine_hours,
                               month_starts)
    return _layout(grid.starts_ns, np.asarray(grid.duration_h, dtype=float), block_ns, settings.fine_hours,
                   month_starts)


@functools.lru_cache(maxsize=64)
def _uniform_blocks(phase_ns: int, step_ns: int, n: int, block_ns: int, fine_hours: float,
                    month_starts: tuple[int, ...]) -> Blocks | None:
    """:func:`_layout` for ``n`` steps of ``step_ns`` starting ``phase_ns`` after a block boundary (cached)."""
    return _layout(phase_ns + step_ns * np.arange(n, dtype=np.int64), np.full(n, step_ns / 3.6e12), block_ns,
                   fine_hours, month_starts)


def _layout(starts_ns: np.ndarray, duration_h: np.ndarray, block_ns: int, fine_hours: float,
            month_starts: tuple[int, ...]) -> Blocks | None:
    """The layout of :func:`blocks` (``month_starts``: native steps after which a billing month starts)."""
    boundary = starts_ns % block_ns == 0
    boundary[np.asarray(month_starts, dtype=np.int64) + 1] = True
    offset_h = np.concatenate([[0.0], np.cumsum(duration_h[:-1])])
    candidates = np.flatnonzero(boundary & (offset_h >= fine_hours - 1e-9))
    if len(candidates) == 0:
        return None
    k = int(candidates[0])
    first = np.concatenate([np.arange(k), np.flatnonzero(boundary[k:]) + k])
    return None if len(first) == len(duration_h) else Blocks.of(first, duration_h)


def coarsen(inputs: PlanInputs, b: Blocks) -> PlanInputs:
    """``inputs`` on the native grid, on the LP steps of ``b``.

    Made from inputs already validated, and valid by construction, so not checked again (it runs on every
    re-plan: 35,040 times a simulated year).
    """
    first, mean = b.first, b.mean

    def smallest(x: float | np.ndarray | None) -> float | np.ndarray | None:
        return x if x is None or np.ndim(x) == 0 else np.minimum.reduceat(np.asarray(x, dtype=float), first)

    out = copy.copy(inputs)
    out.__dict__.update(
        grid=inputs.grid.merged(first, b.duration_h), pv_kw=mean @ inputs.pv_kw, load_kw=mean @ inputs.load_kw,
        import_price=mean @ inputs.import_price, export_price=mean @ inputs.export_price,
        billing_month=None if inputs.billing_month is None else inputs.billing_month[first],
        max_charge_kw=smallest(inputs.max_charge_kw), max_discharge_kw=smallest(inputs.max_discharge_kw),
        import_cap_kw=smallest(inputs.import_cap_kw), export_cap_kw=smallest(inputs.export_cap_kw),
        period=None,
        demand_window=None if inputs.demand_window is None else np.asarray(inputs.demand_window)[first],
        peak_risk_kw=None if inputs.peak_risk_kw is None else mean @ inputs.peak_risk_kw)
    return out


def expand(schedule: Schedule, b: Blocks, inputs: PlanInputs, export_cap_kw: np.ndarray) -> Schedule:
    """The LP's ``schedule`` on the blocks of ``b``, as a schedule on the native steps of ``inputs``.

    Battery power is held over each block and the SOC moves linearly through it (exact for a constant power).
    Steps that are an LP step on their own keep the LP's values. In a merged block each native step meets its own
    load and PV: the curtailment the export cap forces there (``export_cap_kw`` per native step [kW]), plus the
    block's voluntary curtailment (what the LP curtailed beyond what the cap forced on the block's mean), then
    import or export of the rest, plus any import and export at once the LP planned for the block (an export
    price above the import price).
    """
    of = b.block_of
    ch, dis = schedule.charge_kw[of], schedule.discharge_kw[of]
    end = schedule.soc_kwh
    start = np.concatenate([[float(inputs.soc0_kwh)], end[:-1]])
    soc = start[of] + (end - start)[of] * b.fraction

    net = inputs.load_kw - inputs.pv_kw + ch - dis  # what the grid takes (+) or gives (−) before curtailment
    forced = np.maximum(-net - export_cap_kw, 0.0)
    voluntary = np.maximum(schedule.curtail_kw - b.mean @ forced, 0.0)  # mean forced ≥ forced on the mean
    curtail = np.minimum(inputs.pv_kw, forced + voluntary[of])
    grid_kw = net + curtail
    both = np.minimum(schedule.import_kw, schedule.export_kw)[of]  # import and export at once, where that pays
    imp, exp = np.maximum(grid_kw, 0.0) + both, np.maximum(-grid_kw, 0.0) + both
    single, block = b.single, b.single_block
    curtail[single], imp[single], exp[single] = (schedule.curtail_kw[block], schedule.import_kw[block],
                                                 schedule.export_kw[block])
    return Schedule(charge_kw=ch, discharge_kw=dis, import_kw=imp, export_kw=exp, curtail_kw=curtail, soc_kwh=soc)
