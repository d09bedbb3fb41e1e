"""The month's peak target under a demand charge: the level the battery can hold on recent hard days.

The plan bills a new monthly peak only above the peak already reached this month. Early in a month that peak is
low and the plan spends the battery on energy arbitrage counting on headroom under it, which a load above the
forecast takes away. :func:`holdable_peak_kw` looks at the recent days' measured net load (load − PV) and finds, per
day, the lowest demand measure (window-average import) the battery could have held with its full energy and power;
the highest of those over the last days is the peak the month will most likely reach anyway. Planning with that as
the month's peak floor lets the plan import freely up to it (as perfect foresight does) and keeps the battery for
the excess above it (docs/planner.md "Demand charge").

The same question asked of the coming hours: :meth:`PeakTarget.until_recharge_kw` finds the lowest level the energy
in the battery *now* could hold on the stress net load (the forecast plus ``planner.demand_floor_stress_level``
times its upper error) until the battery can next be recharged cheaply. Defending a lower level on a day that turns
out hard only spends the battery before the day's peak comes, which then sets the month's; planning at that level
from the start keeps the energy for it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from optimizer.forecast import History
from optimizer.site import BatterySpec

DAY_NS = 86_400 * 10**9


def _lowest_holding_level(top: float, power_kw: float, holds: Callable[[float], bool]) -> float:
    """The lowest level [kW] in [top − ``power_kw``, ``top``] at which ``holds`` (true from some level up) is true, to
    30 bisection steps."""
    lo, hi = max(0.0, top - power_kw), top
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if holds(mid):
            hi = mid
        else:
            lo = mid
    return hi


def day_holdable_kw(net_kw: np.ndarray, step_h: float, window_h: float, energy_kwh: float, power_kw: float) -> float:
    """The lowest level L [kW] at which a battery with ``energy_kwh`` deliverable [kWh] and ``power_kw`` [kW] could
    hold one day's demand measure: the averages of ``net_kw`` (per step of ``step_h`` [h]) over windows of
    ``window_h`` [h] (a step at least that long is its own window), each above L by at most ``power_kw``, and each
    run of windows above L needing at most ``energy_kwh`` (the battery is taken as full again between runs). A day
    at or below 0 kW gives 0."""
    per = max(1, round(window_h / step_h)) if window_h > step_h else 1
    n = len(net_kw) // per * per
    w = np.asarray(net_kw[:n], dtype=float).reshape(-1, per).mean(axis=1)
    return holdable_level_kw(w, np.full(len(w), step_h * per), energy_kwh, power_kw)


def holdable_level_kw(window_kw: np.ndarray, window_h: np.ndarray, energy_kwh: float, power_kw: float) -> float:
    """The lowest level L [kW] that windows of average net load ``window_kw`` [kW], each ``window_h`` long [h], can be
    held at by a battery with ``energy_kwh`` deliverable [kWh] and ``power_kw`` [kW]: each window above L by at most
    ``power_kw``, each run of windows above L needing at most ``energy_kwh`` (full again between runs); to 30
    bisection steps. 0 when no window is above 0 kW."""
    w = np.asarray(window_kw, dtype=float)
    dt = np.asarray(window_h, dtype=float)
    top = float(w.max(initial=0.0))
    if top <= 0.0:
        return 0.0

    def holds(level: float) -> bool:
        excess = np.maximum(w - level, 0.0)
        if excess.max(initial=0.0) > power_kw:
            return False
        run = 0.0
        for e, h in zip(excess.tolist(), dt.tolist(), strict=True):  # a day: at most 48 windows
            run = run + e * h if e > 0 else 0.0
            if run > energy_kwh:
                return False
        return True

    return _lowest_holding_level(top, power_kw, holds)


def holdable_from_now_kw(window_kw: np.ndarray, window_h: np.ndarray, energy_now_kwh: float,
                         energy_full_kwh: float, power_kw: float, charge_kw: float, round_trip: float) -> float:
    """The lowest level L [kW] that windows of average net load ``window_kw`` [kW], each ``window_h`` long [h], can
    be held at by a battery holding ``energy_now_kwh`` deliverable now [kWh] (at most ``energy_full_kwh``),
    discharging at most ``power_kw`` [kW] and, in windows below L, recharging from the headroom under L at up to
    ``charge_kw`` [kW], each kWh charged giving ``round_trip`` deliverable kWh; to 30 bisection steps. 0 when no
    window is above 0 kW."""
    w = np.asarray(window_kw, dtype=float)
    top = float(w.max(initial=0.0))
    if top <= 0.0:
        return 0.0
    windows = list(zip(w.tolist(), np.asarray(window_h, dtype=float).tolist(), strict=True))

    def holds(level: float) -> bool:
        if top - level > power_kw:
            return False
        energy = energy_now_kwh
        for value, h in windows:
            if value > level:
                energy -= (value - level) * h
                if energy < 0.0:
                    return False
            else:
                energy = min(energy_full_kwh, energy + min(level - value, charge_kw) * h * round_trip)
        return True

    return _lowest_holding_level(top, power_kw, holds)


class PeakTarget:
    """The month's peak target [kW]: the highest :func:`day_holdable_kw` over the last ``days`` whole UTC days of
    measured net load (load − PV) before a plan's start, for a battery's energy between its SOC limits (after
    discharge losses) and its discharge power. A whole day is evaluated once and kept (measurements are never
    rewritten); days with a missing or absent step are left out (and looked at again on the next call); 0 when
    none is complete (no target).

    Parameters
    ----------
    battery : BatterySpec
    days : int
        Whole days looked back. [d]
    """

    def __init__(self, battery: BatterySpec, days: int):
        self.energy_kwh = (battery.soc_max_kwh - battery.soc_min_kwh) * battery.discharge_efficiency
        self.power_kw = battery.max_discharge_kw
        self.soc_min_kwh, self.discharge_efficiency = battery.soc_min_kwh, battery.discharge_efficiency
        self.charge_kw = battery.max_charge_kw
        self.round_trip = battery.charge_efficiency * battery.discharge_efficiency
        self.days = days
        self._by_day: dict[tuple[int, float, float], float] = {}

    def __call__(self, pv: History, load: History, start_ns: int, step_h: float, window_h: float) -> float:
        """The target for a plan starting at ``start_ns`` [UTC epoch ns], from ``pv``/``load`` histories per step of
        ``step_h`` [h], on the demand measure's window ``window_h`` [h]. [kW]"""
        today = start_ns // DAY_NS * DAY_NS
        oldest = today - self.days * DAY_NS
        for key in [k for k in self._by_day if k[0] < oldest]:  # a long-running service keeps only what it reads
            del self._by_day[key]
        best = 0.0
        for d in range(1, self.days + 1):
            key = (today - d * DAY_NS, step_h, window_h)
            value = self._by_day.get(key)
            if value is None:  # a day not yet whole (its last step still being measured) is looked at again
                value = self._day(pv, load, key[0], step_h, window_h)
                if value is not None:
                    self._by_day[key] = value
            if value is not None:
                best = max(best, value)
        return best

    def _day(self, pv: History, load: History, lo_ns: int, step_h: float, window_h: float) -> float | None:
        per_day = round(24.0 / step_h)
        i0, i1 = np.searchsorted(load.ns, [lo_ns, lo_ns + DAY_NS])
        j0, j1 = np.searchsorted(pv.ns, [lo_ns, lo_ns + DAY_NS])
        if i1 - i0 != per_day or j1 - j0 != per_day or load.ns[i0] != lo_ns or pv.ns[j0] != lo_ns:
            return None
        net = load.values[i0:i1] - pv.values[j0:j1]
        if not np.all(np.isfinite(net)):
            return None
        return day_holdable_kw(net, step_h, window_h, self.energy_kwh, self.power_kw)

    def until_recharge_kw(self, net_kw: np.ndarray, duration_h: np.ndarray, import_price: np.ndarray,
                          window: np.ndarray, soc_kwh: float, max_discharge_kw: float) -> float:
        """The lowest demand level [kW] the energy in the battery now could hold over ``net_kw`` (per plan step
        [kW], e.g. the stress net load) from the plan's start until the horizon's next step in its cheapest price
        window, when the battery can be recharged cheaply, recharging on the way only from the headroom under the
        level (:func:`holdable_from_now_kw` on the windows' average net load). 0 when the plan starts in that window
        (the night's charge is still to come).

        Parameters
        ----------
        net_kw, duration_h : numpy.ndarray
            Net load [kW] and length [h] per step.
        import_price : numpy.ndarray
            Import price per step. [currency/kWh]
        window : numpy.ndarray of int
            The demand window each step starts in, consecutive from 0 (:attr:`TariffSteps.window`).
        soc_kwh : float
            The battery's energy now. [kWh]
        max_discharge_kw : float
            What the battery may discharge now (the BMS limit). [kW]
        """
        price = np.asarray(import_price, dtype=float)
        if not len(price):
            return 0.0
        cheap = price <= price.min() * (1 + 1e-9)
        if cheap[0]:
            return 0.0
        n = int(np.argmax(cheap))
        ids = np.asarray(window[:n])
        dur = np.asarray(duration_h[:n], dtype=float)
        hours = np.bincount(ids, dur)
        kwh = np.bincount(ids, np.asarray(net_kw[:n], dtype=float) * dur)
        seen = hours > 0
        energy = max(0.0, soc_kwh - self.soc_min_kwh) * self.discharge_efficiency
        return holdable_from_now_kw(kwh[seen] / hours[seen], hours[seen], min(energy, self.energy_kwh),
                                    self.energy_kwh, min(self.power_kw, max_discharge_kw), self.charge_kw,
                                    self.round_trip)
