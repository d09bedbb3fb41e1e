"""A multi-stage scenario plan under the two-part pilot: the study's MPC with its LP replaced by a 3 × 3 scenario
tree on the net load (docs/performance.md, "A multi-stage scenario plan under the two-part pilot").

The last policy idea left unmeasured for issue 13's two-part bar: a plan that branches on how the day's net load
turns out, with decisions that may depend only on what is known when they are taken. Each of the nine leaves of the
tree is one copy of the shipped LP (:func:`optimizer.lp_model.build_model`, with the demand reserve and the
30-minute measure, made on the MPC's coarse horizon), on its own net load, its costs weighted by the leaf's
probability; the copies are stacked block-diagonally in one HiGHS LP and *non-anticipativity* rows tie the battery's
charge, discharge and curtailment of the leaves that share a node: every leaf before the first branch (``b1`` hours
after the plan starts), the leaves of one first branch before the second (``b2`` hours). The leaves' loads are the
forecast plus ``alpha · σ_t · (z1 · [t ≥ b1] + z2 · [t ≥ b2]) / √2``, σ_t the net load's forecast error at step t
(the risk the shipped hedges use, :meth:`simulations.strategies.Mpc.peak_risk`, divided by the normal's P90 z),
``z1``, ``z2`` each −√3, 0, +√3 with probabilities 1/6, 2/3, 1/6 (the three-point rule with a standard normal's
mean and variance): a persistent error of the day's net load, revealed in two stages. The plan's first step (shared
by every leaf) is followed as the shipped plan's is; everything else (the recharge floor, the month's peak target,
the follow rule) is shipped. With ``alpha`` → 0 the tree is the shipped LP nine times over and plans the same.

Run:  .venv/bin/python benchmarks/bench_scenario_tree.py [--scenario nam-cau-kien-hard-two-part]
          [--seeds 7 11 23 42] [--alpha 1.0 …] [--branch-hours 1 4] [--days N]
One worker process per year, two at a time; ~8 min a tree variant for four years on two cores (the tree's MPC is
~4–5× the shipped MPC's time). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_seeds import P90_Z, pooled_shares, scenario_or_exit, seeded_scenario, two_part_parser  # noqa: E402

from optimizer import coarse_horizon, costs  # noqa: E402
from optimizer.costs import Schedule  # noqa: E402
from optimizer.lp_model import AffineLP, AffineVector  # noqa: E402
from optimizer.planner import PlanInputs, Planner, SolverInfo, _schedule, _Solver, parameter_values  # noqa: E402
from simulations.runner import battery_savings, evaluate, make_strategy, run, simulate  # noqa: E402

BRANCH_Z = np.array([-np.sqrt(3.0), 0.0, np.sqrt(3.0)])
"""The three points of each branching, in standard deviations of the error revealed there. [-]"""
BRANCH_P = np.array([1.0, 4.0, 1.0]) / 6.0
"""Their probabilities (the three-point rule: a standard normal's mean and variance). [-]"""
LINKED = ("ch", "dis", "curt")
"""The LP's decision columns that non-anticipativity ties between leaves of one node."""
MIDDLE = 4
"""The leaf whose first steps are the plan followed: both branchings at their middle point (every leaf shares the
first step)."""


def stack_leaves(lp: AffineLP, probabilities: np.ndarray, links: list[tuple[int, int, int]]) -> AffineLP:
    """``len(probabilities)`` copies of ``lp`` in one LP, copy ``s``'s costs (and objective constant) weighted by
    ``probabilities[s]``, each with its own parameters (copy ``s`` reads entries ``s · P … (s + 1) · P − 1`` of the
    parameter vector, ``P`` = ``lp.num_param``), plus one equality row per :data:`LINKED` column and link ``(s, r,
    step)``: copy ``s``'s column at ``step`` equals copy ``r``'s. ``col_of`` names the :data:`MIDDLE` copy's
    columns."""
    leaves = len(probabilities)
    nc, nr, npar, nnz = lp.num_col, lp.num_row, lp.num_param, len(lp.a_value)
    pairs = np.array([(int(lp.col_of[name][step]) + s * nc, int(lp.col_of[name][step]) + r * nc)
                      for s, r, step in links for name in LINKED], dtype=lp.a_index.dtype).reshape(-1, 2)
    a_start = np.concatenate([lp.a_start[:-1] + s * nnz for s in range(leaves)]
                             + [leaves * nnz + 2 * np.arange(len(pairs) + 1)])
    a_index = np.concatenate([lp.a_index + s * nc for s in range(leaves)] + [pairs.ravel()])
    a_value = np.concatenate([lp.a_value] * leaves + [np.tile([1.0, -1.0], len(pairs))])
    ones = np.ones(leaves)

    def copies(v: AffineVector, length: int, weight: np.ndarray, extra: int = 0) -> AffineVector:
        return AffineVector(np.concatenate([v.base * w for w in weight] + [np.zeros(extra)]),
                            np.concatenate([v.target + s * length for s in range(leaves)]),
                            np.concatenate([v.param + s * npar for s in range(leaves)]),
                            np.concatenate([v.coef * w for w in weight]))

    offset = lp.offset
    return AffineLP(
        a_start=a_start, a_index=a_index, a_value=a_value, cost=copies(lp.cost, nc, probabilities),
        col_lower=copies(lp.col_lower, nc, ones), col_upper=copies(lp.col_upper, nc, ones),
        row_lower=copies(lp.row_lower, nr, ones, len(pairs)), row_upper=copies(lp.row_upper, nr, ones, len(pairs)),
        offset=AffineVector(np.array([float(offset.base[0] * probabilities.sum())]),
                            np.zeros(len(offset.target) * leaves, dtype=offset.target.dtype),
                            np.concatenate([offset.param + s * npar for s in range(leaves)]),
                            np.concatenate([offset.coef * w for w in probabilities])),
        col_of={name: cols + MIDDLE * nc for name, cols in lp.col_of.items()}, row_of={},
        param_slices={"leaves": slice(0, leaves * npar)})


def tree_links(b1: int, b2: int) -> list[tuple[int, int, int]]:
    """Non-anticipativity of the 3 × 3 tree (leaf ``3 i + j``: first branch ``i``, second ``j``): every leaf equals
    the middle leaf before LP step ``b1``, and the middle leaf of its first branch before ``b2``."""
    links = []
    for i in range(3):
        for j in range(3):
            leaf = 3 * i + j
            if leaf != MIDDLE:
                links += [(leaf, MIDDLE, step) for step in range(b1)]
            if j != 1:
                links += [(leaf, 3 * i + 1, step) for step in range(b1, b2)]
    return links


def leaf_loads(load_kw: np.ndarray, risk_kw: np.ndarray, duration_h: np.ndarray, alpha: float, b1_h: float,
               b2_h: float) -> tuple[np.ndarray, int, int]:
    """The nine leaves' loads (rows ``3 i + j``) on the LP's steps, and the LP steps ``b1``, ``b2`` at which the
    branchings are revealed (the first step starting at or after ``b1_h`` / ``b2_h`` hours). [kW]"""
    starts = np.concatenate([[0.0], np.cumsum(duration_h)[:-1]])
    b1 = int(np.searchsorted(starts, b1_h - 1e-9))
    b2 = int(np.searchsorted(starts, b2_h - 1e-9))
    step = np.arange(len(load_kw))
    sigma = np.asarray(risk_kw, dtype=float) / P90_Z
    rows = [load_kw + alpha * sigma * (BRANCH_Z[i] * (step >= b1) + BRANCH_Z[j] * (step >= b2)) / np.sqrt(2.0)
            for i in range(3) for j in range(3)]
    return np.maximum(np.array(rows), 0.0), b1, b2


class TreePlanner:
    """The MPC's :class:`~optimizer.planner.Planner` with the scenario tree under a demand charge (module
    docstring); without a demand charge or a risk, the planner's own LP. Its :meth:`schedule` is the planner's."""

    def __init__(self, planner: Planner, alpha: float, branch_hours: tuple[float, float]):
        self.planner, self.alpha, self.branch_hours = planner, alpha, branch_hours
        self._solvers: dict[tuple, _Solver] = {}

    def schedule(self, inputs: PlanInputs) -> tuple[Schedule, SolverInfo]:
        """The tree's plan for ``inputs``: the middle leaf's schedule (its first step is every leaf's). The
        planner's removal of a simultaneous charge and discharge (a re-solve with the direction fixed) is not
        repeated here; the follow rule takes the net of the two."""
        if inputs.demand_charge_per_kw <= 0 or inputs.peak_risk_kw is None or self.alpha <= 0:
            return self.planner.schedule(inputs)
        t0 = time.perf_counter()
        settings = self.planner.settings
        window_h = inputs.demand_window_h if inputs.demand_window is not None else 0.0
        blocks = coarse_horizon.blocks(inputs.grid, settings, inputs.billing_month, window_h)
        lp_inputs = inputs if blocks is None else coarse_horizon.coarsen(inputs, blocks)
        duration = np.asarray(lp_inputs.grid.duration_h, dtype=float)
        loads, b1, b2 = leaf_loads(lp_inputs.load_kw, lp_inputs.peak_risk_kw, duration, self.alpha,
                                   *self.branch_hours)
        params = np.concatenate([self._leaf_params(lp_inputs, load) for load in loads])
        key = (window_h, duration.tobytes())
        solver = self._solvers.get(key)
        if solver is None:
            lp = self.planner.affine_lp(duration, True, window_h, reserve=True)
            solver = _Solver(stack_leaves(lp, np.outer(BRANCH_P, BRANCH_P).ravel(), tree_links(b1, b2)), params,
                             settings.time_limit_s)
            self._solvers[key] = solver
        solver.update(params)
        x, _ = solver.run()
        schedule = _schedule(x[solver.schedule_index])
        info = SolverInfo(status="optimal", build_ms=0.0, update_ms=0.0,
                          solve_ms=(time.perf_counter() - t0) * 1e3, note=None)
        if blocks is None:
            return schedule, info
        return coarse_horizon.expand(schedule, blocks, inputs, costs.export_cap_kw(inputs, self.planner.grid)), info

    def _leaf_params(self, lp_inputs: PlanInputs, load_kw: np.ndarray) -> np.ndarray:
        """The shipped LP's parameter vector for ``lp_inputs`` with the leaf's load."""
        leaf = copy.copy(lp_inputs)
        leaf.__dict__["load_kw"] = load_kw
        return parameter_values(leaf, self.planner.battery, self.planner.grid, self.planner.settings, True)


def seed_shares(name: str, seed: int, days: int | None, alphas: list[float],
                branch_hours: tuple[float, float]) -> dict[str, float]:
    """The shipped MPC's and each tree's battery value as a share of perfect foresight's on one seed's year. [-]"""
    t0 = time.perf_counter()
    scenario = seeded_scenario(name, seed, {}, days)
    result = run(scenario, strategies=["mpc", "perfect_foresight"])
    for alpha in alphas:
        strategy = make_strategy("mpc", scenario, result.inputs, result.tariff)
        strategy.planner = TreePlanner(strategy.planner, alpha, branch_hours)
        strategy.name = f"tree_{alpha:g}"
        result.results[strategy.name] = simulate(strategy, scenario, result.inputs, result.tariff, battery=True)
    result.economics = evaluate(result)
    value = battery_savings(result)
    pf = value["perfect_foresight"]
    out: dict[str, float] = {"seed": seed, "value_pf": pf, "wall_s": time.perf_counter() - t0}
    for variant in ["shipped"] + [f"tree_{alpha:g}" for alpha in alphas]:
        key = "mpc" if variant == "shipped" else variant
        out[f"value_{variant}"] = value[key]
        out[variant] = value[key] / pf if pf else float("nan")
        out[f"mpc_s_{variant}"] = result.results[key].wall_s
    return out


def main() -> int:
    parser = two_part_parser(__doc__.split("\n")[0])
    parser.add_argument("--alpha", type=float, nargs="+", default=[1.0],
                        help="the leaves' spread in standard deviations of the net load's error (> 0)")
    parser.add_argument("--branch-hours", type=float, nargs=2, default=[1.0, 4.0], metavar=("B1", "B2"),
                        help="hours after the plan's start at which the two branchings are revealed")
    args = parser.parse_args()
    if min(args.alpha) <= 0 or not 0 < args.branch_hours[0] <= args.branch_hours[1]:
        raise SystemExit("bench_scenario_tree: --alpha must be > 0 and 0 < B1 ≤ B2")
    command = " ".join(["python benchmarks/bench_scenario_tree.py", "--scenario", args.scenario, "--seeds",
                        *map(str, args.seeds), "--alpha", *(f"{a:g}" for a in args.alpha), "--branch-hours",
                        *(f"{b:g}" for b in args.branch_hours)] + ([f"--days {args.days}"] if args.days else []))
    print(f"reproduce: {command}", flush=True)
    scenario_or_exit("bench_scenario_tree", args.scenario, args.seeds[0], {}, args.days)
    n = len(args.seeds)
    with ProcessPoolExecutor(max_workers=2) as pool:
        years = list(pool.map(seed_shares, [args.scenario] * n, args.seeds, [args.days] * n, [args.alpha] * n,
                              [tuple(args.branch_hours)] * n))
    variants = ["shipped"] + [f"tree_{alpha:g}" for alpha in args.alpha]
    pooled = pooled_shares(years, variants, width=12)
    print(json.dumps({"command": command, "scenario": args.scenario, "branch_hours": args.branch_hours,
                      "pooled": pooled, "years": years}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
