"""Night grid charging valued against tomorrow's likely PV surplus (docs/planner.md, "Surplus days").

A kWh bought in the cheap window and stored pays only if the next day's PV surplus does not fill the battery
anyway: when it does, that kWh displaces a free PV kWh, which is curtailed (zero export). With ``c_now`` the
import price now and ``c_later`` the cheapest price of the day's daylight hours (where a shortfall would be
bought instead), one more stored kWh is worth buying now while

    P(surplus < room left) · c_later > c_now,

so the room the battery should keep for the surplus is the surplus's quantile at level ``ρ = c_now / c_later``
(a newsvendor rule). PV forecast errors move together over a day (the weather of the day), so the day's surplus
at level ρ is the surplus of the PV quantile forecast at level ρ; the load is kept at its point forecast. The
planner's LP is unchanged: for the steps after the cheap window it is handed the PV quantile at level ρ instead
of the point forecast, and it then buys at night exactly what that surplus leaves room for.

The same decision comes again in daylight, the other way round: in a price window followed by a dearer one (the
morning and afternoon before the evening peak), a kWh discharged now saves ``c_now`` and, if the afternoon's
surplus comes, is refilled for free; if it does not, it is bought back at the same price and only the round-trip
loss (~10 %) is lost. So the battery should make room for the surplus at a high quantile of it; the planner is
handed the PV quantile at ``room_level`` (``planner.surplus_room_level``) on the steps where a refill that does
not come is bought back at the price of now: the rest of the running window, and the later steps at the same
price before the horizon's next cheaper one (:func:`room_steps`; under the legacy windows the afternoon after the
morning peak, where a Saturday's surplus comes). The newsvendor level would be the round-trip efficiency (~0.9),
but a quantile of each step is not the quantile of the day's surplus (the steps' errors do not move together
completely), and measured on the harder years 0.7 keeps the most value (docs/planner.md). Under a demand charge
a refill that fails can cost a month's peak, not a round-trip loss, so there this half plans the quantile only on
the room steps where it covers the load forecast (:func:`covers_load`): where the likely PV covers the load, the
import the plan expects is far below a month's level, and the steps that could set the level keep the point
forecast.

On a horizon with one import price (a flat energy tariff, e.g. the Japanese preset) neither half applies: there is
no cheaper window and no dearer one. There a kWh discharged before a surplus saves the price and, if the surplus
does not come, is bought back at the same price: again only the round-trip loss is at stake. Under a demand charge
the battery is otherwise kept full on such a horizon (:func:`optimizer.costs.terminal_value_per_kwh`), so the
surplus of a low-load day is curtailed unless the plan sees it. The planner is handed the PV quantile at
``flat_level`` (``planner.surplus_flat_level``) on the steps where that quantile covers the load forecast, and the
point forecast elsewhere (:func:`flat_surplus_pv`), for the same reason as under a demand charge above; a surplus
that does not come leaves the battery to be refilled from the grid in the headroom under the level (the battery kept
full again), at the price it was sold at. Elsewhere the point forecast is used as it is.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np

#: Quantile levels of the PV forecast the rule interpolates between. [-]
LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9)

#: Prices within this fraction of the current one count as the same window. [-]
PRICE_TOL = 1e-6


def surplus_level(import_price: np.ndarray, pv_band: np.ndarray) -> tuple[int, float] | None:
    """Where the cheap window ends and the PV level the rule plans on, or None when the rule does not apply.

    Parameters
    ----------
    import_price : numpy.ndarray
        Import price per horizon step. [currency/kWh]
    pv_band : numpy.ndarray
        Width of the PV quantile band per step (P_high − P_low); > 0 marks steps where PV is uncertain, i.e.
        daylight with some error history. [kW]

    Returns
    -------
    tuple of (int, float) or None
        ``(k, ρ)``: the first step after the cheap window, and ``ρ = c_now / c_later`` in (0, 1). None when the
        first step is not in the horizon's cheapest window, when no uncertain PV step follows that window, or
        when the later daylight price is not higher than now.
    """
    price = np.asarray(import_price, dtype=float)
    if not len(price):
        return None
    c_now = float(price[0])
    if c_now <= 0 or c_now > float(price.min()) * (1 + PRICE_TOL):
        return None
    above = np.flatnonzero(price > c_now * (1 + PRICE_TOL))
    if not len(above):
        return None
    k = int(above[0])
    daylight = np.flatnonzero(np.asarray(pv_band, dtype=float)[k:] > 0) + k
    if not len(daylight):
        return None
    c_later = float(price[daylight].min())
    if c_later <= c_now * (1 + PRICE_TOL):
        return None
    return k, c_now / c_later


def at_level(quantiles: np.ndarray, levels: Sequence[float], level: float) -> np.ndarray:
    """The forecast at probability ``level``, linear between the given quantile levels (clamped to the outer
    ones). [kW]

    Parameters
    ----------
    quantiles : numpy.ndarray
        Shape ``(len(levels), steps)``, non-decreasing along the levels. [kW]
    levels : sequence of float
        Increasing probabilities of the rows.
    level : float
        Probability wanted.
    """
    lv = [float(x) for x in levels]
    if len(lv) == 1:
        return np.asarray(quantiles[0], dtype=float)
    q = min(max(float(level), lv[0]), lv[-1])
    i = min(max(bisect.bisect_right(lv, q) - 1, 0), len(lv) - 2)
    w = (q - lv[i]) / (lv[i + 1] - lv[i])
    return (1 - w) * quantiles[i] + w * quantiles[i + 1]


def surplus_day_pv(point_pv: np.ndarray, pv_quantiles: np.ndarray, levels: Sequence[float],
                   import_price: np.ndarray) -> np.ndarray:
    """The PV forecast the planner plans on under the surplus-day rule (module docstring). [kW]

    Parameters
    ----------
    point_pv : numpy.ndarray
        The point PV forecast per step. [kW]
    pv_quantiles : numpy.ndarray
        PV quantile forecasts, shape ``(len(levels), steps)``. [kW]
    levels : sequence of float
        Their probabilities, increasing (at least two).
    import_price : numpy.ndarray
        Import price per step. [currency/kWh]

    Returns
    -------
    numpy.ndarray
        ``point_pv`` unchanged before the end of the cheap window (and everywhere when the rule does not apply);
        the PV quantile at level ρ from there on.
    """
    rule = surplus_level(import_price, pv_quantiles[-1] - pv_quantiles[0])
    if rule is None:
        return point_pv
    k, rho = rule
    out = np.array(point_pv, dtype=float)
    out[k:] = at_level(pv_quantiles[:, k:], levels, rho)
    return out


def room_window_end(import_price: np.ndarray, point_pv: np.ndarray) -> int | None:
    """The first step after the running price window when a dearer window follows it and the point forecast has
    daylight PV in the window's later steps (1 … end − 1), else None.

    Parameters
    ----------
    import_price : numpy.ndarray
        Import price per horizon step. [currency/kWh]
    point_pv : numpy.ndarray
        The point PV forecast per step. [kW]
    """
    price = np.asarray(import_price, dtype=float)
    if not len(price):
        return None
    c_now = float(price[0])
    other = np.flatnonzero(np.abs(price - c_now) > abs(c_now) * PRICE_TOL)
    if not len(other) or price[other[0]] <= c_now:
        return None
    end = int(other[0])
    return end if end > 1 and bool((np.asarray(point_pv)[1:end] > 0).any()) else None


def room_steps(import_price: np.ndarray, end: int) -> np.ndarray:
    """The steps the room rule plans on a PV quantile, given the end of the running window (:func:`room_window_end`):
    the window's later steps (1 … ``end`` − 1) and every later step at the same price as the first before the
    horizon's next cheaper step — where a refill the surplus does not bring is bought back at the price the energy
    was sold at (the legacy windows' afternoon after the morning peak). Step indices, increasing.

    Parameters
    ----------
    import_price : numpy.ndarray
        Import price per horizon step. [currency/kWh]
    end : int
        The first step after the running window.
    """
    price = np.asarray(import_price, dtype=float)
    c_now = float(price[0])
    cheaper = np.flatnonzero(price < c_now - abs(c_now) * PRICE_TOL)
    stop = int(cheaper[0]) if len(cheaper) else len(price)
    same = np.flatnonzero(np.abs(price[end:stop] - c_now) <= abs(c_now) * PRICE_TOL) + end
    return np.concatenate([np.arange(1, end), same])


def room_day_pv(point_pv: np.ndarray, pv_quantiles: np.ndarray, levels: Sequence[float], steps: np.ndarray,
                room_level: float) -> np.ndarray:
    """The PV forecast the planner plans on in a daylight window before a dearer one (module docstring): the PV
    quantile at ``room_level`` on ``steps`` (:func:`room_steps`), the point forecast elsewhere. [kW]"""
    out = np.array(point_pv, dtype=float)
    out[steps] = at_level(pv_quantiles[:, steps], levels, room_level)
    return out


def planned_pv(rule: str, point_pv: np.ndarray, import_price: np.ndarray,
               pv_quantiles: Callable[[Sequence[float]], np.ndarray | None],
               room_level: float | None = None, load_kw: np.ndarray | None = None,
               flat_level: float | None = None, demand: bool = False) -> np.ndarray:
    """The PV forecast a plan is made on, live and offline alike, when ``rule`` is ``"quantile"``
    (``planner.surplus_rule``): on a horizon with one import price, with a ``flat_level``
    (``planner.surplus_flat_level``) and the load forecast ``load_kw`` [kW], :func:`flat_surplus_pv`;
    :func:`surplus_day_pv` when the first step is in the horizon's cheapest window;
    otherwise, with a ``room_level`` (``planner.surplus_room_level``), :func:`room_day_pv` on :func:`room_steps` when
    :func:`room_window_end` finds a daylight window before a dearer one — under a demand charge (``demand``) only on
    those of the steps where the quantile covers ``load_kw`` (none without it); else the point forecast.
    ``pv_quantiles(levels)`` gives the PV quantile forecasts (shape ``(len(levels), steps)``), or None when the
    source has none (perfect or external forecasts); it is called only when a rule may apply. [kW]
    """
    price = np.asarray(import_price, dtype=float)
    if rule != "quantile" or not len(price):
        return point_pv
    if is_flat(price):
        if flat_level is None or load_kw is None:
            return point_pv
        quantiles = pv_quantiles(LEVELS)
        return point_pv if quantiles is None else flat_surplus_pv(point_pv, quantiles, LEVELS, load_kw, flat_level)
    if price[0] <= price.min() * (1 + PRICE_TOL):
        quantiles = pv_quantiles(LEVELS)
        return point_pv if quantiles is None else surplus_day_pv(point_pv, quantiles, LEVELS, price)
    end = None if room_level is None or (demand and load_kw is None) else room_window_end(price, point_pv)
    if end is None:
        return point_pv
    quantiles = pv_quantiles(LEVELS)
    if quantiles is None:
        return point_pv
    ruled = room_day_pv(point_pv, quantiles, LEVELS, room_steps(price, end), room_level)
    return np.where(covers_load(ruled, load_kw), ruled, point_pv) if demand else ruled


def is_flat(import_price: np.ndarray) -> bool:
    """Whether every step of the horizon has the first step's import price (within :data:`PRICE_TOL`)."""
    price = np.asarray(import_price, dtype=float)
    if not len(price):
        return False
    first = float(price[0])
    tol = abs(first) * PRICE_TOL
    return float(price.max()) - first <= tol and first - float(price.min()) <= tol


def flat_surplus_pv(point_pv: np.ndarray, pv_quantiles: np.ndarray, levels: Sequence[float], load_kw: np.ndarray,
                    level: float) -> np.ndarray:
    """The PV forecast the planner plans on over a horizon with one import price (module docstring): the PV
    quantile at ``level`` on the steps where it covers the load forecast ``load_kw`` (never below the point
    forecast there), the point forecast elsewhere. [kW]

    Parameters
    ----------
    point_pv : numpy.ndarray
        The point PV forecast per step. [kW]
    pv_quantiles : numpy.ndarray
        PV quantile forecasts, shape ``(len(levels), steps)``. [kW]
    levels : sequence of float
        Their probabilities, increasing.
    load_kw : numpy.ndarray
        The load forecast per step. [kW]
    level : float
        The quantile planned on where it covers the load (``planner.surplus_flat_level``). [-]
    """
    optimistic = at_level(pv_quantiles, levels, level)
    out = np.array(point_pv, dtype=float)
    surplus = covers_load(optimistic, load_kw)
    out[surplus] = np.maximum(out[surplus], optimistic[surplus])
    return out


def covers_load(pv_kw: np.ndarray, load_kw: np.ndarray) -> np.ndarray:
    """Per step, whether the PV ``pv_kw`` (a quantile forecast) covers the load forecast ``load_kw``: the steps where
    a rule may plan on a PV quantile under a demand charge or on one flat price. [kW] in, bool out"""
    return np.asarray(pv_kw, dtype=float) >= np.asarray(load_kw, dtype=float)
