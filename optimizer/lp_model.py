"""The planner's linear programme, written once in Pyomo, and its affine standard form for HiGHS.

:func:`build_model` writes the battery dispatch LP (docs/planner.md gives it in mathematical form)
with every per-call input as a *mutable* Pyomo ``Param``. The structure (step count, step
durations, efficiencies, SOC window, penalties) is fixed at build time.

:func:`extract_affine_lp` turns that model into the data HiGHS needs, once: the constraint matrix
(which must not depend on any Param) and, for the column costs, column bounds, row bounds and the
objective constant, an exact *affine* map ``v(p) = v0 + J·p`` from the flat parameter vector ``p``.
It reads Pyomo's own standard representation (``generate_standard_repn(compute_values=False)``) and
walks each coefficient/bound expression symbolically; anything that is not affine in the Params is
an error. A re-plan then needs only numpy (``AffineVector.evaluate``) and three highspy calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.core.base.param import ParamData
from pyomo.core.expr import numeric_expr as ne
from pyomo.repn import generate_standard_repn

from optimizer.site import BatterySpec

#: Bounds at or beyond this magnitude are infinite for HiGHS (its ``infinite_bound`` option).
INF = 1e20

#: Mutable Params of the model, in the order of the flat parameter vector. Per-step ones have one
#: entry per step, the others one entry. The powers come first, next to each other, so that the planner rounds
#: them in one pass.
POWER_PARAMS = ("pv", "load_kw", "ch_max", "dis_max", "imp_cap", "exp_cap")
STEP_PARAMS = (*POWER_PARAMS, "c_imp", "c_exp", "peak_floor", "peak_cost", "peak_reset", "c_tie", "win_reset",
               "win_prior", "risk", "c_tie_dis")
SCALAR_PARAMS = ("soc0", "tv", "c_wear", "pen", "fix_pen", "fix_kw", "c_flat")


def build_model(duration_h: np.ndarray, battery: BatterySpec, demand: bool = True, window_h: float = 0.0,
                reserve_h: float = 0.0, reserve_weight: float = 0.1, stress_level: float = 0.0,
                stress_weight: float = 0.1) -> pyo.ConcreteModel:
    """Write the dispatch LP for a fixed grid of steps.

    Parameters
    ----------
    duration_h : numpy.ndarray
        Duration of each step. [h]
    battery : BatterySpec
        Efficiencies, SOC window and standby loss (fixed for the model's life).
    demand : bool
        Include the running-peak variables of the demand charge.
    window_h : float
        The tariff's demand measure: average import over windows of this length (the windows themselves are the
        Param ``win_reset``, 1 where a window starts); a step at least this long is its own window. 0 = per step. [h]
    reserve_h : float
        Under a demand charge: how long a net load above the forecast by ``risk`` [kW] may last. The part of such
        an excess the battery could not absorb from its power headroom and its energy above the SOC floor would
        raise the month's peak; the highest such rise (``ex``, a running maximum per month) is charged at
        ``reserve_weight`` × the demand rate. 0 = no reserve (no such columns or rows). [h]
    reserve_weight : float
        The chance that the excess comes, as a weight on the demand rate. [-]
    stress_level : float
        Under a demand charge: the *stress day* the battery must be able to carry at every moment. From the end of
        each step on, the stored energy above the floor covers the stress net load ``load − pv + stress_level ·
        risk`` above the running peak ``pk`` over the rest of the horizon, recharged only from the headroom below
        that peak (``st_req`` per step: the energy needed from the step's start [kWh]; ``st_ex`` / ``st_room``: the
        stress excess covered / the headroom recharged at the step [kW]). Energy above that can be spent on price
        arbitrage. Where the stress day cannot be carried, the stress path's peak rises above ``pk`` by ``st_pk``
        (a running maximum per month), charged at ``stress_weight`` × the demand rate: the plan pays for the chance
        of a stress day, not for a certain new peak, and ``st_pk`` gives no headroom to import under. 0 = no such
        columns or rows. [-]
    stress_weight : float
        The chance of the stress day, as a weight on the demand rate. [-]

    Returns
    -------
    pyomo.environ.ConcreteModel
        Variables ``ch, dis, imp, over, exp, dump, curt, soc_w, s_lo, s_hi`` per step (SOC =
        ``soc_w − s_lo + s_hi``, also the Expression ``soc``), ``fix_up,
        fix_dn`` for step 0, ``pk`` (running peak) and ``win`` (window-average import so far) per step when
        ``demand``, and ``rsv`` (excess the battery absorbs) and ``ex`` (running peak rise from an excess it does
        not) per step when ``demand`` and ``reserve_h``; all
        inputs are mutable Params
        (``STEP_PARAMS`` per step, ``SCALAR_PARAMS`` scalar) initialised to 0.
    """
    dt = [float(x) for x in np.asarray(duration_h, dtype=float)]
    n = len(dt)
    if n == 0:
        raise ValueError("the model needs at least one step")
    eta_c, eta_d = battery.charge_efficiency, battery.discharge_efficiency
    standby = battery.standby_loss_kw

    m = pyo.ConcreteModel(name="ems_dispatch")
    m.T = pyo.RangeSet(0, n - 1)
    for name in STEP_PARAMS:
        m.add_component(name, pyo.Param(m.T, mutable=True, initialize=0.0))
    for name in SCALAR_PARAMS:
        m.add_component(name, pyo.Param(mutable=True, initialize=0.0))

    m.ch = pyo.Var(m.T, bounds=lambda m, t: (0, m.ch_max[t]))
    m.dis = pyo.Var(m.T, bounds=lambda m, t: (0, m.dis_max[t]))
    m.imp = pyo.Var(m.T, bounds=lambda m, t: (0, m.imp_cap[t]))
    m.over = pyo.Var(m.T, bounds=(0, None))  # import above the cap (slack)
    m.exp = pyo.Var(m.T, bounds=lambda m, t: (0, m.exp_cap[t]))
    m.dump = pyo.Var(m.T, bounds=(0, None))  # export above the cap (slack)
    m.curt = pyo.Var(m.T, bounds=lambda m, t: (0, m.pv[t]))
    # SOC at the end of step t [kWh] = soc_w − s_lo + s_hi: soc_w stays in the window, the slacks
    # s_lo / s_hi measure how far below / above it the SOC is (a substitution, so no window rows)
    m.soc_w = pyo.Var(m.T, bounds=(battery.soc_min_kwh, battery.soc_max_kwh))
    m.s_lo = pyo.Var(m.T, bounds=(0, None))
    m.s_hi = pyo.Var(m.T, bounds=(0, None))
    m.soc = pyo.Expression(m.T, rule=lambda m, t: m.soc_w[t] - m.s_lo[t] + m.s_hi[t])
    m.fix_up = pyo.Var(bounds=(0, None))  # deviation from a fixed first-step battery power
    m.fix_dn = pyo.Var(bounds=(0, None))

    m.balance = pyo.Constraint(m.T, rule=lambda m, t: (
        m.imp[t] + m.over[t] - m.exp[t] - m.dump[t] + m.dis[t] - m.ch[t] - m.curt[t] == m.load_kw[t] - m.pv[t]))

    def soc_rule(m, t):
        before = m.soc0 if t == 0 else m.soc[t - 1]
        return m.soc[t] == before + dt[t] * (eta_c * m.ch[t] - m.dis[t] / eta_d) - standby * dt[t]
    m.soc_dyn = pyo.Constraint(m.T, rule=soc_rule)
    m.fix = pyo.Constraint(expr=m.dis[0] - m.ch[0] + m.fix_up - m.fix_dn == m.fix_kw)

    flat = False   # the tie-break towards flat import inside a demand window (below)
    if demand:
        # share of a window's average one kW of import over step t adds [-]
        share = [d / max(window_h, d) if window_h > 0 else 1.0 for d in dt]
        later = pyo.RangeSet(1, n - 1) if n > 1 else pyo.Set(initialize=[])
        m.pk = pyo.Var(m.T, bounds=lambda m, t: (m.peak_floor[t], None))
        m.win = pyo.Var(m.T, bounds=(0, None))
        m.win_first = pyo.Constraint(m.T, rule=lambda m, t: (
            m.win[t] - share[t] * (m.imp[t] + m.over[t]) >= m.win_prior[t]))
        m.win_run = pyo.Constraint(later, rule=lambda m, t: (
            m.win[t] - m.win[t - 1] - share[t] * (m.imp[t] + m.over[t]) >= -INF * m.win_reset[t]))
        m.pk_win = pyo.Constraint(m.T, rule=lambda m, t: m.pk[t] >= m.win[t])
        flat = any(x < 1.0 for x in share)
        if flat:
            # a step shorter than the demand window: its import above the running peak, at a tie-break cost
            # (c_flat). The bill sees only the window's average, so without it the plan may import 800 then 600 kW
            # in a window billed at 700 (a saw-tooth no operator expects, and a peak for a meter whose windows
            # start a few minutes off the controller's clock); with it the import stays flat at the peak.
            m.above = pyo.Var(m.T, bounds=(0, None))
            m.above_pk = pyo.Constraint(m.T, rule=lambda m, t: m.above[t] - m.imp[t] - m.over[t] + m.pk[t] >= 0)
        if reserve_h > 0:
            # share of a window's average an excess lasting reserve_h adds [-]
            lasting = min(reserve_h, window_h) / window_h if window_h > 0 else 1.0
            m.rsv = pyo.Var(m.T, bounds=lambda m, t: (0, m.risk[t]))
            m.ex = pyo.Var(m.T, bounds=(0, None))
            m.ex_win = pyo.Constraint(m.T, rule=lambda m, t: (
                m.ex[t] + m.pk[t] - m.win[t] + lasting * m.rsv[t] >= lasting * m.risk[t]))
            m.ex_run = pyo.Constraint(later, rule=lambda m, t: m.ex[t] - m.ex[t - 1] >= -INF * m.peak_reset[t])
            m.rsv_power = pyo.Constraint(m.T, rule=lambda m, t: m.rsv[t] + m.dis[t] - m.ch[t] <= m.dis_max[t])
            m.rsv_energy = pyo.Constraint(m.T, rule=lambda m, t: (
                m.soc_w[t] - m.s_lo[t] + m.s_hi[t] - reserve_h * m.rsv[t] / eta_d >= battery.soc_min_kwh))
        m.pk_run = pyo.Constraint(later, rule=lambda m, t: m.pk[t] - m.pk[t - 1] >= -INF * m.peak_reset[t])
        if stress_level > 0:
            m.st_req = pyo.Var(m.T, bounds=(0, None))
            m.st_pk = pyo.Var(m.T, bounds=(0, None))
            m.st_pk_run = pyo.Constraint(later, rule=lambda m, t: m.st_pk[t] - m.st_pk[t - 1] >= -INF * m.peak_reset[t])
            m.st_ex = pyo.Var(m.T, bounds=lambda m, t: (0, m.dis_max[t]))
            m.st_room = pyo.Var(m.T, bounds=lambda m, t: (0, m.ch_max[t]))
            m.st_net = pyo.Constraint(m.T, rule=lambda m, t: (
                m.st_ex[t] - m.st_room[t] + m.pk[t] + m.st_pk[t] >= m.load_kw[t] - m.pv[t] + stress_level * m.risk[t]))
            m.st_need = pyo.Constraint(m.T, rule=lambda m, t: (
                m.st_req[t] - (m.st_req[t + 1] if t + 1 < n else 0.0)
                - dt[t] * (m.st_ex[t] / eta_d - eta_c * m.st_room[t]) >= 0))
            m.st_soc = pyo.Constraint(later, rule=lambda m, t: (
                m.soc_w[t - 1] - m.s_lo[t - 1] + m.s_hi[t - 1] - m.st_req[t] >= battery.soc_min_kwh))

    def step_cost(t):
        yield dt[t] * m.c_imp[t] * m.imp[t]
        yield (dt[t] * m.c_imp[t] + dt[t] * m.pen) * m.over[t]
        yield -dt[t] * m.c_exp[t] * m.exp[t]
        yield (dt[t] * m.pen - dt[t] * m.c_exp[t]) * m.dump[t]
        yield dt[t] * (m.c_wear + m.c_tie[t]) * m.ch[t]
        yield dt[t] * (m.c_wear + m.c_tie_dis[t]) * m.dis[t]
        yield dt[t] * m.pen * m.s_lo[t]
        yield dt[t] * m.pen * m.s_hi[t]
        if demand:
            yield m.peak_cost[t] * m.pk[t]
        if flat:
            yield dt[t] * m.c_flat * m.above[t]
        if demand and reserve_h > 0:
            yield reserve_weight * m.peak_cost[t] * m.ex[t]
        if demand and stress_level > 0:
            yield stress_weight * m.peak_cost[t] * m.st_pk[t]

    terms = [term for t in m.T for term in step_cost(t)]
    terms += [dt[0] * m.fix_pen * m.fix_up, dt[0] * m.fix_pen * m.fix_dn,
              -m.tv * m.soc_w[n - 1], m.tv * m.s_lo[n - 1], -m.tv * m.s_hi[n - 1]]
    m.obj = pyo.Objective(expr=pyo.quicksum(terms), sense=pyo.minimize)
    return m


@dataclass(frozen=True)
class AffineVector:
    """A vector ``v(p) = base + J·p`` with sparse ``J`` stored as (target, param, coef) triplets."""

    base: np.ndarray
    target: np.ndarray
    param: np.ndarray
    coef: np.ndarray

    @property
    def varying(self) -> np.ndarray:
        """Indices of the entries that depend on at least one parameter (int32, ascending)."""
        return np.flatnonzero(np.bincount(self.target, minlength=len(self.base))).astype(np.int32)

    def evaluate(self, p: np.ndarray) -> np.ndarray:
        """The vector at parameter values ``p``."""
        return self.base + np.bincount(self.target, weights=self.coef * p[self.param], minlength=len(self.base))


@dataclass(frozen=True)
class AffineLP:
    """``min c(p)·x + k(p)`` s.t. ``rl(p) ≤ A x ≤ ru(p)``, ``cl(p) ≤ x ≤ cu(p)``; A in CSR (rows)."""

    a_start: np.ndarray
    a_index: np.ndarray
    a_value: np.ndarray
    cost: AffineVector
    col_lower: AffineVector
    col_upper: AffineVector
    row_lower: AffineVector
    row_upper: AffineVector
    offset: AffineVector  # length 1
    col_of: dict[str, np.ndarray]  # variable component name -> column index per index (step, or one entry)
    row_of: dict[str, tuple[np.ndarray, np.ndarray]]  # constraint name -> (index values, row numbers)
    param_slices: dict[str, slice]

    @property
    def num_col(self) -> int:
        return len(self.cost.base)

    @property
    def num_row(self) -> int:
        return len(self.row_lower.base)

    @cached_property
    def num_param(self) -> int:
        return max(s.stop for s in self.param_slices.values())

    def vectors(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cost, column lower/upper and row lower/upper bounds at ``params`` (bounds at ±INF as ±inf)."""
        return (self.cost.evaluate(params), infinite(self.col_lower.evaluate(params)),
                infinite(self.col_upper.evaluate(params)), infinite(self.row_lower.evaluate(params)),
                infinite(self.row_upper.evaluate(params)))

    def highs_lp(self, params: np.ndarray) -> highspy.HighsLp:
        """The LP at ``params`` as a highspy model, ready for ``Highs.passModel``."""
        return make_highs_lp(self.a_start, self.a_index, self.a_value, *self.vectors(params),
                             offset=float(self.offset.evaluate(params)[0]))


def infinite(v: np.ndarray) -> np.ndarray:
    """``v`` with entries at or beyond ±INF replaced by ±inf."""
    return np.where(v >= INF, np.inf, np.where(v <= -INF, -np.inf, v))


def make_highs_lp(a_start: np.ndarray, a_index: np.ndarray, a_value: np.ndarray, cost: np.ndarray,
                  col_lower: np.ndarray, col_upper: np.ndarray, row_lower: np.ndarray, row_upper: np.ndarray,
                  offset: float = 0.0) -> highspy.HighsLp:
    """A highspy model from a row-wise (CSR) matrix and its cost and bound vectors."""
    model = highspy.HighsLp()
    model.num_col_, model.num_row_ = len(cost), len(row_lower)
    model.col_cost_, model.col_lower_, model.col_upper_ = cost, col_lower, col_upper
    model.row_lower_, model.row_upper_ = row_lower, row_upper
    model.offset_ = offset
    model.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    model.a_matrix_.start_, model.a_matrix_.index_, model.a_matrix_.value_ = a_start, a_index, a_value
    return model


class _AffineBuilder:
    """Collects an affine vector entry by entry from Pyomo expressions."""

    def __init__(self, slot_of: dict[int, int]):
        self._slot_of = slot_of
        self.base: list[float] = []
        self.target: list[int] = []
        self.param: list[int] = []
        self.coef: list[float] = []

    def append(self, expr, missing: float = INF) -> None:
        """Append entry ``expr``; ``None`` (no bound) becomes ``missing``."""
        index = len(self.base)
        if expr is None:
            self.base.append(missing)
            return
        const, terms = _affine(expr, self._slot_of)
        self.base.append(const)
        for slot, c in terms.items():
            self.target.append(index)
            self.param.append(slot)
            self.coef.append(c)

    def add_to_last(self, expr, scale: float) -> None:
        """Add ``scale·expr`` to the last entry."""
        const, terms = _affine(expr, self._slot_of)
        self.base[-1] += scale * const
        for slot, c in terms.items():
            self.target.append(len(self.base) - 1)
            self.param.append(slot)
            self.coef.append(scale * c)

    def build(self) -> AffineVector:
        base = np.array(self.base, dtype=float)
        base[base >= INF] = np.inf
        base[base <= -INF] = -np.inf
        return AffineVector(base, np.array(self.target, dtype=np.int64), np.array(self.param, dtype=np.int64),
                            np.array(self.coef, dtype=float))


def _affine(expr, slot_of: dict[int, int]) -> tuple[float, dict[int, float]]:
    """``expr`` as ``const + Σ coef·param``; raises ``ValueError`` if it is not affine in mutable Params."""
    if isinstance(expr, (int, float)):
        return float(expr), {}
    if isinstance(expr, ParamData) and id(expr) in slot_of:
        return 0.0, {slot_of[id(expr)]: 1.0}
    if not expr.is_expression_type():  # a constant leaf (immutable Param, NumericConstant)
        return float(pyo.value(expr)), {}
    if isinstance(expr, ne.SumExpression):
        const, terms = 0.0, {}
        for arg in expr.args:
            c, t = _affine(arg, slot_of)
            const += c
            for k, v in t.items():
                terms[k] = terms.get(k, 0.0) + v
        return const, terms
    if isinstance(expr, ne.NegationExpression):
        c, t = _affine(expr.args[0], slot_of)
        return -c, {k: -v for k, v in t.items()}
    if isinstance(expr, ne.ProductExpression):
        (c1, t1), (c2, t2) = (_affine(a, slot_of) for a in expr.args)
        if t1 and t2:
            raise ValueError(f"not affine in the Params: {expr}")
        if t1:
            return c1 * c2, {k: v * c2 for k, v in t1.items()}
        return c1 * c2, {k: v * c1 for k, v in t2.items()}
    if isinstance(expr, ne.DivisionExpression):
        (c1, t1), (c2, t2) = (_affine(a, slot_of) for a in expr.args)
        if t2:
            raise ValueError(f"not affine in the Params (Param in a denominator): {expr}")
        return c1 / c2, {k: v / c2 for k, v in t1.items()}
    raise ValueError(f"unsupported expression in an LP coefficient or bound: {type(expr).__name__} {expr}")


def extract_affine_lp(m: pyo.ConcreteModel) -> AffineLP:
    """The affine standard form of ``m`` (built by :func:`build_model`).

    Raises
    ------
    ValueError
        A matrix coefficient depends on a Param, or a cost/bound is not affine in the Params.
    """
    slot_of: dict[int, int] = {}
    param_slices: dict[str, slice] = {}
    k = 0
    for name in STEP_PARAMS + SCALAR_PARAMS:
        comp = getattr(m, name)
        start = k
        for index in comp:
            slot_of[id(comp[index])] = k
            k += 1
        param_slices[name] = slice(start, k)

    col: dict[int, int] = {}
    col_of: dict[str, np.ndarray] = {}
    lower, upper = _AffineBuilder(slot_of), _AffineBuilder(slot_of)
    for var in m.component_objects(pyo.Var, active=True, descend_into=True):
        cols = []
        for index in var:
            vd = var[index]
            col[id(vd)] = len(col)
            cols.append(col[id(vd)])
            lower.append(vd.lower, -INF)
            upper.append(vd.upper)
        col_of[var.local_name] = np.array(cols, dtype=np.int64)

    rows_lo, rows_hi = _AffineBuilder(slot_of), _AffineBuilder(slot_of)
    starts, index, value = [0], [], []
    row_of: dict[str, tuple[list, list]] = {}
    for con in m.component_data_objects(pyo.Constraint, active=True, descend_into=True):
        keys, rows = row_of.setdefault(con.parent_component().local_name, ([], []))
        keys.append(-1 if con.index() is None else con.index())
        rows.append(len(starts) - 1)
        repn = generate_standard_repn(con.body, compute_values=False, quadratic=False)
        if not repn.is_linear():
            raise ValueError(f"constraint {con.name} is not linear")
        for v, c in zip(repn.linear_vars, repn.linear_coefs, strict=True):
            cval, terms = _affine(c, slot_of)
            if terms:
                raise ValueError(f"constraint {con.name}: a matrix coefficient depends on a Param")
            index.append(col[id(v)])
            value.append(cval)
        starts.append(len(index))
        rows_lo.append(con.lower, -INF)
        rows_hi.append(con.upper)
        if repn.constant is not None and not (isinstance(repn.constant, (int, float)) and repn.constant == 0):
            if con.lower is not None:
                rows_lo.add_to_last(repn.constant, -1.0)
            if con.upper is not None:
                rows_hi.add_to_last(repn.constant, -1.0)

    objectives = list(m.component_data_objects(pyo.Objective, active=True))
    if len(objectives) != 1 or objectives[0].sense != pyo.minimize:
        raise ValueError("the model needs exactly one minimised objective")
    repn = generate_standard_repn(objectives[0].expr, compute_values=False, quadratic=False)
    cost_const = np.zeros(len(col))
    cost_terms: list[tuple[int, int, float]] = []
    for v, c in zip(repn.linear_vars, repn.linear_coefs, strict=True):
        cval, terms = _affine(c, slot_of)
        j = col[id(v)]
        cost_const[j] += cval
        cost_terms.extend((j, slot, coef) for slot, coef in terms.items())
    target, param, coef = (np.array(x) for x in zip(*cost_terms, strict=True)) if cost_terms else ([], [], [])
    cost = AffineVector(cost_const, np.asarray(target, dtype=np.int64), np.asarray(param, dtype=np.int64),
                        np.asarray(coef, dtype=float))
    offset = _AffineBuilder(slot_of)
    offset.append(repn.constant if repn.constant is not None else 0.0)

    return AffineLP(
        a_start=np.array(starts, dtype=np.int32), a_index=np.array(index, dtype=np.int32),
        a_value=np.array(value, dtype=float), cost=cost, col_lower=lower.build(), col_upper=upper.build(),
        row_lower=rows_lo.build(), row_upper=rows_hi.build(), offset=offset.build(), col_of=col_of,
        row_of={k: (np.array(v[0], dtype=np.int64), np.array(v[1], dtype=np.int64)) for k, v in row_of.items()},
        param_slices=param_slices)


#: Steps of the template model that :func:`tiled_affine_lp` repeats: first, middle (``TEMPLATE_MID``), last.
TEMPLATE_STEPS = 5
TEMPLATE_MID = 2


def tiled_affine_lp(step_h: float, steps: int, battery: BatterySpec, demand: bool = True,
                    check_steps: int = 7, window_h: float = 0.0, reserve_h: float = 0.0,
                    reserve_weight: float = 0.1, stress_level: float = 0.0, stress_weight: float = 0.1) -> AffineLP:
    """The affine LP of ``build_model`` for ``steps`` equal steps, without building it at that size.

    The model couples a step only to its neighbour, so every middle step has the same rows, columns
    and parameter dependence. This builds the Pyomo model for ``TEMPLATE_STEPS`` steps, extracts
    it, and repeats its middle step (first and last step as they are). Before returning, the tiling
    is checked against a direct extraction at ``check_steps`` steps and any difference raises
    ``AssertionError`` (so a future model change that breaks the pattern cannot pass silently).
    Used for long horizons (a year: 35,040 steps), where building the Pyomo model costs seconds.

    Parameters
    ----------
    step_h : float
        Duration of every step. [h]
    steps : int
        Number of steps (≥ ``TEMPLATE_STEPS``).
    window_h, reserve_h, reserve_weight, stress_level, stress_weight : float
        As :func:`build_model`.
    """
    args = (battery, demand, window_h, reserve_h, reserve_weight, stress_level, stress_weight)
    template = extract_affine_lp(build_model(np.full(TEMPLATE_STEPS, step_h), *args))
    check = extract_affine_lp(build_model(np.full(check_steps, step_h), *args))
    _assert_same_lp(_tile(template, check_steps), check)
    return _tile(template, steps)


def _tile(tp: AffineLP, n: int) -> AffineLP:
    """Repeat the middle template step of ``tp`` to ``n`` steps (see :func:`tiled_affine_lp`)."""
    k, mid = TEMPLATE_STEPS, TEMPLATE_MID
    if n < k:
        raise ValueError(f"tiling needs at least {k} steps")

    def targets(tau: int) -> np.ndarray:
        return np.array([0]) if tau == 0 else np.array([n - 1]) if tau == k - 1 else np.arange(1, n - 1)

    # columns: a per-step component has k template columns and n new ones; others are copied
    col_of: dict[str, np.ndarray] = {}
    new_col_of_tmpl = np.full(tp.num_col, -1, dtype=np.int64)  # new number of step 0 (or of a scalar)
    col_step = np.full(tp.num_col, -1, dtype=np.int64)  # template step, -1 for scalar components
    col_groups: list[tuple[int, np.ndarray, np.ndarray]] = []  # (template entry, new entries, step shifts)
    nxt = 0
    for name, cols in tp.col_of.items():
        if len(cols) == k:
            col_of[name] = np.arange(nxt, nxt + n)
            new_col_of_tmpl[cols], col_step[cols] = nxt, np.arange(k)
            for tau in (0, mid, k - 1):
                steps = targets(tau)
                col_groups.append((int(cols[tau]), nxt + steps, steps - tau))
            nxt += n
        else:
            col_of[name] = np.arange(nxt, nxt + len(cols))
            new_col_of_tmpl[cols] = col_of[name]
            col_groups.extend((int(c), np.array([nc]), np.zeros(1, dtype=np.int64))
                              for c, nc in zip(cols, col_of[name], strict=True))
            nxt += len(cols)
    num_col = nxt

    def new_col(tcol: int, shift: np.ndarray) -> np.ndarray:
        if col_step[tcol] < 0:
            return np.full(len(shift), new_col_of_tmpl[tcol])
        return new_col_of_tmpl[tcol] + col_step[tcol] + shift

    # parameters: same rule
    param_slices: dict[str, slice] = {}
    p_base = np.empty(tp.num_param, dtype=np.int64)
    p_step = np.full(tp.num_param, -1, dtype=np.int64)
    nxt = 0
    for name, sl in tp.param_slices.items():
        size = sl.stop - sl.start
        if size == k:
            param_slices[name] = slice(nxt, nxt + n)
            p_base[sl], p_step[sl] = nxt, np.arange(k)
            nxt += n
        else:
            param_slices[name] = slice(nxt, nxt + size)
            p_base[sl] = nxt + np.arange(size)
            nxt += size

    def new_param(tparam: int, shift: np.ndarray) -> np.ndarray:
        if p_step[tparam] < 0:
            return np.full(len(shift), p_base[tparam])
        return p_base[tparam] + p_step[tparam] + shift

    # rows: per-step constraint components keep their index set pattern (first / middle / last)
    row_of: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    row_groups: list[tuple[int, np.ndarray, np.ndarray]] = []
    nxt = 0
    for name, (keys, rows) in tp.row_of.items():
        if np.all(keys >= 0):
            present = dict(zip(keys.tolist(), rows.tolist(), strict=True))
            taus = [tau for tau in (0, mid, k - 1) if tau in present]
            new_keys = np.sort(np.concatenate([targets(tau) for tau in taus]))
            for tau in taus:
                steps = targets(tau)
                row_groups.append((present[tau], nxt + np.searchsorted(new_keys, steps), steps - tau))
        else:
            new_keys = keys
            row_groups.extend((int(r), np.array([nxt + i]), np.zeros(1, dtype=np.int64)) for i, r in enumerate(rows))
        row_of[name] = (new_keys.astype(np.int64), nxt + np.arange(len(new_keys)))
        nxt += len(new_keys)
    num_row = nxt

    row_len = np.diff(tp.a_start)
    lengths = np.zeros(num_row, dtype=np.int64)
    for tr, nr, _ in row_groups:
        lengths[nr] = row_len[tr]
    a_start = np.zeros(num_row + 1, dtype=np.int64)
    np.cumsum(lengths, out=a_start[1:])
    a_index = np.empty(a_start[-1], dtype=np.int64)
    a_value = np.empty(a_start[-1])
    for tr, nr, shift in row_groups:
        for j in range(row_len[tr]):
            a_index[a_start[nr] + j] = new_col(int(tp.a_index[tp.a_start[tr] + j]), shift)
            a_value[a_start[nr] + j] = tp.a_value[tp.a_start[tr] + j]

    def tile_vector(vec: AffineVector, groups: list[tuple[int, np.ndarray, np.ndarray]], size: int) -> AffineVector:
        base = np.full(size, np.nan)
        by_entry: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for te, new, shift in groups:
            base[new] = vec.base[te]
            by_entry.setdefault(te, []).append((new, shift))
        if np.isnan(base).any():
            raise AssertionError("tiling left entries undefined")
        tgt, par, coef = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)], [np.empty(0)]
        for e, p, c in zip(vec.target.tolist(), vec.param.tolist(), vec.coef.tolist(), strict=True):
            for new, shift in by_entry.get(e, ()):
                tgt.append(new)
                par.append(new_param(p, shift))
                coef.append(np.full(len(new), c))
        return AffineVector(base, np.concatenate(tgt), np.concatenate(par), np.concatenate(coef))

    return AffineLP(
        a_start=a_start.astype(np.int32), a_index=a_index.astype(np.int32), a_value=a_value,
        cost=tile_vector(tp.cost, col_groups, num_col), col_lower=tile_vector(tp.col_lower, col_groups, num_col),
        col_upper=tile_vector(tp.col_upper, col_groups, num_col),
        row_lower=tile_vector(tp.row_lower, row_groups, num_row),
        row_upper=tile_vector(tp.row_upper, row_groups, num_row),
        offset=tp.offset, col_of=col_of, row_of=row_of, param_slices=param_slices)


def _assert_same_lp(a: AffineLP, b: AffineLP) -> None:
    """Raise ``AssertionError`` unless ``a`` and ``b`` are the same affine LP (entry order aside)."""
    def canon(v: AffineVector) -> tuple:
        order = np.lexsort((v.param, v.target))
        return v.base.tolist(), v.target[order].tolist(), v.param[order].tolist(), v.coef[order].tolist()

    same = (np.array_equal(a.a_start, b.a_start) and np.array_equal(a.a_index, b.a_index)
            and np.array_equal(a.a_value, b.a_value) and a.param_slices == b.param_slices
            and all(canon(getattr(a, f)) == canon(getattr(b, f))
                    for f in ("cost", "col_lower", "col_upper", "row_lower", "row_upper")))
    if not same:
        raise AssertionError("the tiled LP differs from the directly extracted one: the model is not step-periodic")
