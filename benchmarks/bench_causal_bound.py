"""How much of perfect foresight's value any policy could keep against the load's own noise under the two-part pilot
(docs/performance.md, "The best any policy could do against the load's noise").

The oracles of `bench_two_part_oracles.py` run *this* MPC with better information; they do not say whether a better
policy could do more with the information a site has. This computes, by stochastic dynamic programming, the best
policy of all on a model of the study that knows more than any site: the year's PV and its noise-free load (the
synthetic year without its load noise: calendar, Saturday afternoons, unannounced shutdowns) are known in advance,
and only the load's noise — the generator's own AR(1) process, 5 % of the load with autocorrelation 0.5 an hour
(:mod:`simulations.synthetic`) — is not. Each billing month on its own, on the tariff's 30-minute demand windows:

- state: the battery's energy E [kWh], the month's peak so far P [kW] and the noise at the end of the last window;
- each window the noise of its steps is revealed first (generous: the dispatcher in fact learns it within the
  window), then the battery's power is chosen: any power within its limits, or the power that holds the import at
  P or at a few levels above it;
- cost: the import at the window's price, the battery's wear per kWh of throughput, the demand rate on each rise of
  the month's peak, and at the month's end the energy stored over the month credited at the month's cheapest
  price ÷ the charge efficiency; every month starts with the battery at :data:`START_SOC_PCT`.

The policy's cost is then counted on the actual year (the DP's policy, followed window by window on the actual
load), against perfect foresight on the same model (one exact LP per month) and against no battery: the share
``(no battery − policy) / (no battery − perfect foresight)``. Three MPC years are counted on the same terms from
their simulated years (:func:`study_month_cost`), so the shares compare directly (they differ from the study's own
shares, which count neither wear nor the energy left in the battery at a month's end):

- ``mpc``: the study's MPC;
- ``true_pv``: the same MPC on the actual PV (:mod:`bench_two_part_oracles`);
- ``informed``: the same MPC given what the DP knows (:class:`InformedMpc`): the actual PV, the noise-free load
  with the last measured noise carried forward (the ``best_load`` oracle's forecast), the net-load risk the
  noise's own 90th percentile, and the month's peak target from the month's own days on the noise-free net load;
  its recharge floor at the stress multiple :data:`INFORMED_FLOOR_MULTIPLE`. It answers whether the DP's lead
  over the MPC is the DP's policy or the DP's information.

Because the model knows the PV and the noise-free load in advance, no site's policy could beat the DP's share on
this year, but for two things: what the discretisation of E and P costs the DP, measured in the same run by the same
DP on the noise-free year (no uncertainty at all) against its own perfect foresight, whose share would be 1 without
discretisation (``grid_share``); and the chance of one year's noise (each share is one path of the noise).

Run:  .venv/bin/python benchmarks/bench_causal_bound.py [--scenario nam-cau-kien-hard-two-part]
          [--seeds 7 11 23 42] [--months 1 … 12] [--energy-step 12.5] [--peak-step 5]
One worker process per year, two at a time; ~35 min a year on one core (the DP: ~150 s a month; the three MPC
years ~3 min).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import highspy
import numpy as np
import pandas as pd
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_seeds import pooled_shares, scenario_or_exit, seeded_scenario, two_part_parser  # noqa: E402
from bench_two_part_oracles import BestLoad, MonthOracleTarget, OracleMpc  # noqa: E402

from optimizer.site import BatterySpec  # noqa: E402
from optimizer.tariff import SiteTariff  # noqa: E402
from optimizer.timegrid import TimeGrid  # noqa: E402
from simulations.runner import make_strategy, run, simulate  # noqa: E402
from simulations.scenario import Scenario  # noqa: E402
from simulations.strategies import Inputs, StepContext  # noqa: E402
from simulations.synthetic import LOAD_NOISE_AR_PER_HOUR  # noqa: E402

START_SOC_PCT = 50.0
"""Every month's battery starts here, in the DP and in perfect foresight alike. [% of capacity]"""
NOISE_POINTS = 7
"""Points of the noise's grid (−3 … +3 standard deviations, Tauchen's method). [-]"""
HOLD_LEVELS = 4
"""The DP's hold actions: the import held at P and at the next HOLD_LEVELS − 1 points of the peak grid above. [-]"""
GRID_BELOW_PF_KW = 30.0
"""The peak grid starts this far below perfect foresight's month peak (the month's peak is charged from there on:
no policy ends a month below it on this data, checked by ``lowest_margin_kw``). [kW]"""
GRID_ABOVE_PF_KW = 150.0
"""The peak grid ends this far above perfect foresight's month peak, or where the noise-free net load plus
:data:`NOISE_SPAN_SD` noise standard deviations ends, whichever is lower; a higher peak is valued as the grid's
top (the future's demand charges only fall with a higher peak, so this never flatters the DP; its peaks stay well
below, ``highest_margin_kw``). [kW]"""
NOISE_SPAN_SD = 3.5
"""See :data:`GRID_ABOVE_PF_KW`. [-]"""
POLICIES = ("dp", "mpc", "true_pv", "informed")
"""The policies whose shares are reported (module docstring)."""
INFORMED_FLOOR_MULTIPLE = 0.0
"""The recharge floor's stress multiple (``planner.demand_floor_stress_level``) of :class:`InformedMpc`: its forecasts
miss only the load's noise, and on seed 7 multiples 0 / 0.1 / 0.25 / 0.5 / 0.75 (the shipped one) keep 0.9237 /
0.9232 / 0.9212 / 0.9040 / 0.8798 of the study's value, on seed 23 0 keeps more than 0.5, on seeds 11 and 42 0.5
more than 0 (docs/performance.md). [-]"""


@dataclass(frozen=True)
class Month:
    """One billing month on its demand windows (means over each window's steps).

    Attributes
    ----------
    quiet_kw, pv_kw, load_kw : numpy.ndarray  Noise-free load, PV and actual load per window. [kW]
    price : numpy.ndarray  Gross import price per window. [currency/kWh]
    noise_end : numpy.ndarray  The load noise at each window's last step, in standard deviations. [-]
    rate : float  Demand charge per kW of the month's peak. [currency/kW]
    window_h : float  The demand window's length. [h]
    steps : int  Steps per window. [-]
    """

    quiet_kw: np.ndarray
    pv_kw: np.ndarray
    load_kw: np.ndarray
    price: np.ndarray
    noise_end: np.ndarray
    rate: float
    window_h: float
    steps: int


def months_of(load_kw: np.ndarray, quiet_kw: np.ndarray, pv_kw: np.ndarray, price: np.ndarray, month: np.ndarray,
              window: np.ndarray, rate: np.ndarray, window_h: float, noise_sd: float) -> list[Month]:
    """The year's billing months on their demand windows (per step: loads and PV [kW], gross price, billing month
    and demand window ids, demand rate; ``noise_sd`` the noise's standard deviation as a share of the load). Each
    month must be whole windows of one length: a month cut mid-window, or a window of another length, raises
    ValueError."""
    noise = np.divide(load_kw - quiet_kw, quiet_kw * noise_sd, out=np.zeros_like(load_kw), where=quiet_kw > 0)
    out = []
    for m in np.unique(month):
        rows = np.flatnonzero(month == m)
        _, sizes = np.unique(window[rows], return_counts=True)
        if len(set(sizes)) != 1 or len(rows) % sizes[0]:
            raise ValueError(f"billing month {m}: windows of unequal length")
        rows2 = rows.reshape(-1, int(sizes[0]))
        out.append(Month(quiet_kw=quiet_kw[rows2].mean(1), pv_kw=pv_kw[rows2].mean(1), load_kw=load_kw[rows2].mean(1),
                         price=price[rows2].mean(1), noise_end=noise[rows2[:, -1]], rate=float(rate[rows[0]]),
                         window_h=window_h, steps=int(sizes[0])))
    return out


def stored_energy_credit(battery: BatterySpec, month: Month) -> float:
    """What a kWh stored over the month is credited at (module docstring): the month's cheapest window price over the
    charge efficiency. [currency/kWh]"""
    return float(month.price.min()) / battery.charge_efficiency


def no_battery_cost(month: Month) -> float:
    """The month's energy and demand charges without a battery (PV beyond the load curtailed). [currency]"""
    imports = np.maximum(month.load_kw - month.pv_kw, 0.0)
    return float((month.price * imports).sum() * month.window_h + month.rate * imports.max(initial=0.0))


def perfect_foresight(battery: BatterySpec, month: Month, start_kwh: float, credit: float) -> tuple[float, float]:
    """Perfect foresight's cost on the model (module docstring) and its month peak: one exact LP. [currency, kW]"""
    k, dt = len(month.load_kw), month.window_h
    net = month.load_kw - month.pv_kw
    inf = highspy.kHighsInf
    # columns: charge [k], discharge [k], import [k], energy [k + 1], peak
    n = 4 * k + 2
    lower, upper = np.zeros(n), np.full(n, inf)
    upper[:k], upper[k:2 * k] = battery.max_charge_kw, battery.max_discharge_kw
    lower[3 * k:4 * k + 1] = battery.soc_min_kwh
    upper[3 * k:4 * k + 1] = battery.soc_max_kwh
    lower[3 * k] = upper[3 * k] = start_kwh
    cost = np.zeros(n)
    cost[:2 * k] = battery.wear_cost_per_kwh * dt
    cost[2 * k:3 * k] = month.price * dt
    cost[4 * k], cost[4 * k + 1] = -credit, month.rate
    i = np.arange(k)
    # import ≥ net + charge − discharge; energy balance; peak ≥ import
    rows_import = [(net[j], inf, [2 * k + j, j, k + j], [1.0, -1.0, 1.0]) for j in i]
    rows_energy = [(0.0, 0.0, [3 * k + j + 1, 3 * k + j, j, k + j],
                    [1.0, -1.0, -battery.charge_efficiency * dt, dt / battery.discharge_efficiency]) for j in i]
    rows_peak = [(0.0, inf, [4 * k + 1, 2 * k + j], [1.0, -1.0]) for j in i]
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.addVars(n, lower, upper)
    h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
    rows = rows_import + rows_energy + rows_peak
    starts = np.cumsum([0] + [len(r[2]) for r in rows[:-1]]).astype(np.int32)
    h.addRows(len(rows), np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
              int(sum(len(r[2]) for r in rows)), starts,
              np.concatenate([r[2] for r in rows]).astype(np.int32), np.concatenate([r[3] for r in rows]))
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"perfect foresight LP: {h.modelStatusToString(h.getModelStatus())}")
    return float(h.getInfo().objective_function_value), float(h.getSolution().col_value[4 * k + 1])


def noise_transition(points: int, phi: float, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The noise grid z (unit stationary AR(1), coefficient ``phi`` a step), the probabilities of the noise at the
    end of a window of ``steps`` steps given z at the end of the last (Tauchen's method, rows summing to 1), and
    the window's mean noise given both (the Gaussian conditional mean). One point: no noise. [-]"""
    if points == 1:
        return np.zeros(1), np.ones((1, 1)), np.zeros((1, 1))
    z = np.linspace(-3.0, 3.0, points)
    ahead = phi ** steps
    edges = (z[1:] + z[:-1]) / 2.0
    cdf = norm.cdf((edges[None, :] - ahead * z[:, None]) / np.sqrt(1.0 - ahead ** 2))
    prob = np.diff(np.concatenate([np.zeros((points, 1)), cdf, np.ones((points, 1))], axis=1), axis=1)
    i = np.arange(1, steps + 1)
    cov_with_end = phi ** (steps - i) - phi ** (steps + i)  # Cov(e_i, e_end | z)
    gain = cov_with_end / (1.0 - phi ** (2 * steps))
    mean = ((phi ** i)[None, None, :] * z[:, None, None]
            + gain[None, None, :] * (z[None, :, None] - ahead * z[:, None, None])).mean(axis=2)
    return z, prob, mean


class CausalDP:
    """The best policy against the load noise on one month (module docstring), by backward induction.

    Parameters
    ----------
    battery : BatterySpec
    month : Month
    noise_sd : float  The noise's standard deviation as a share of the load; 0: a noise-free month. [-]
    peak_grid : numpy.ndarray  Equally spaced month-peak levels, the lowest the peak the month starts from. [kW]
    energy_step : float  Spacing of the battery-energy grid. [kWh]
    credit : float  Value of a kWh stored at the month's end. [currency/kWh]
    """

    def __init__(self, battery: BatterySpec, month: Month, noise_sd: float, peak_grid: np.ndarray,
                 energy_step: float, credit: float):
        self.battery, self.month, self.noise_sd, self.credit = battery, month, noise_sd, credit
        self.e_min, self.e_max = battery.soc_min_kwh, battery.soc_max_kwh
        self.energy = np.arange(self.e_min, self.e_max + 1e-9, energy_step)
        self.energy_step = energy_step
        self.peak, self.peak_step = peak_grid, float(peak_grid[1] - peak_grid[0])
        phi = LOAD_NOISE_AR_PER_HOUR ** (month.window_h / month.steps)
        self.z, self.prob, self.mean_noise = noise_transition(NOISE_POINTS if noise_sd > 0 else 1, phi, month.steps)
        dt = month.window_h
        shift_out = int(np.floor(battery.max_discharge_kw * dt / battery.discharge_efficiency / energy_step + 1e-9))
        shift_in = int(np.floor(battery.max_charge_kw * dt * battery.charge_efficiency / energy_step + 1e-9))
        self.shift = np.arange(-shift_out, shift_in + 1)  # energy-grid steps per window; negative: discharge
        d_e = self.shift * energy_step
        self.power = np.where(d_e < 0, -d_e * battery.discharge_efficiency / dt,
                              -d_e / (battery.charge_efficiency * dt))
        self.value: np.ndarray | None = None

    def _cost(self, net, power, peak, price):
        """Cost of a window's battery power (discharge +) from month peak ``peak``, and the new peak. [currency, kW]"""
        imports = np.maximum(net - power, 0.0)
        new_peak = np.maximum(peak, imports)
        wear = self.battery.wear_cost_per_kwh * np.abs(power)
        return (price * imports + wear) * self.month.window_h + self.month.rate * (new_peak - peak), new_peak

    def _power_bounds(self, energy):
        dt, b = self.month.window_h, self.battery
        most_out = np.minimum(b.max_discharge_kw, (energy - self.e_min) * b.discharge_efficiency / dt)
        most_in = np.minimum(b.max_charge_kw, (self.e_max - energy) / (b.charge_efficiency * dt))
        return -most_in, most_out

    def _after(self, energy, power):
        dt, b = self.month.window_h, self.battery
        return np.where(power >= 0, energy - power * dt / b.discharge_efficiency,
                        energy - power * dt * b.charge_efficiency)

    def _fraction(self, values, grid_start, step, size):
        f = np.clip((values - grid_start) / step, 0.0, size - 1 - 1e-9)
        low = np.floor(f).astype(np.int64)
        return low, f - low

    def solve(self) -> np.ndarray:
        """Backward induction: the expected cost to go per (window, noise, energy, peak). [currency]"""
        m = self.month
        k_all, n_z, n_e, n_p = len(m.quiet_kw), len(self.z), len(self.energy), len(self.peak)
        value = np.empty((k_all + 1, n_z, n_e, n_p))
        value[k_all] = -self.credit * self.energy[None, :, None]
        target = np.arange(n_e)[:, None] + self.shift[None, :]
        valid = (target >= 0) & (target < n_e)
        target = np.clip(target, 0, n_e - 1)
        zi = np.arange(n_z)[None, :, None, None]
        for k in range(k_all - 1, -1, -1):
            value[k] = self._step(k, value[k + 1], target, valid, zi)
        self.value = value
        return value

    def _step(self, k: int, later: np.ndarray, target: np.ndarray, valid: np.ndarray, zi: np.ndarray) -> np.ndarray:
        """The expected cost to go from window ``k`` per (noise, energy, peak), given ``later``'s. [currency]"""
        m, n_z, n_e, n_p = self.month, len(self.z), len(self.energy), len(self.peak)
        with np.errstate(invalid="ignore"):  # inf × 0 at unreachable energies, masked below
            net = m.quiet_kw[k] * (1.0 + self.noise_sd * self.mean_noise) - m.pv_kw[k]  # (z, z')
            # powers on the energy grid: the next energy is a grid point, only the peak is interpolated
            cost, new_peak = self._cost(net[..., None, None], self.power[None, None, :, None],
                                        self.peak[None, None, None, :], m.price[k])  # (z, z', A, P)
            low, w = self._fraction(new_peak, self.peak[0], self.peak_step, n_p)
            shifted = np.where(valid[None, :, :, None], later[:, target, :], np.inf)  # (z', E, A, P)
            shifted = np.broadcast_to(shifted[None], (n_z, *shifted.shape))
            low5 = np.broadcast_to(low[:, :, None], (n_z, n_z, n_e, *low.shape[2:]))
            v0 = np.take_along_axis(shifted, low5, axis=4)
            v1 = np.take_along_axis(shifted, low5 + 1, axis=4)
            w5 = w[:, :, None]
            ahead = np.where(np.isfinite(v0), (1.0 - w5) * v0 + w5 * np.where(np.isfinite(v1), v1, v0), np.inf)
            best = (cost[:, :, None] + ahead).min(axis=3)  # (z, z', E, P)
            # powers that hold the import at P or a few peak-grid points above it
            energy = self.energy[None, None, :, None]
            lowest, highest = self._power_bounds(energy)
            for j in range(HOLD_LEVELS):
                level = self.peak[np.minimum(np.arange(n_p) + j, n_p - 1)]
                power = np.clip(net[..., None, None] - level, lowest, highest)  # (z, z', E, P)
                cost, new_peak = self._cost(net[..., None, None], power, self.peak, m.price[k])
                e0, we = self._fraction(self._after(energy, power), self.e_min, self.energy_step, n_e)
                p0, wp = self._fraction(new_peak, self.peak[0], self.peak_step, n_p)
                ahead = ((1 - we) * (1 - wp) * later[zi, e0, p0] + we * (1 - wp) * later[zi, e0 + 1, p0]
                         + (1 - we) * wp * later[zi, e0, p0 + 1] + we * wp * later[zi, e0 + 1, p0 + 1])
                best = np.minimum(best, cost + ahead)
        return np.einsum("ij,ijep->iep", self.prob, best)

    def _value_at(self, k: int, z: float, energy: np.ndarray, peak: np.ndarray) -> np.ndarray:
        """The cost to go from window ``k`` at a state off the grids (linear in each of z, E and P). [currency]"""
        assert self.value is not None
        fz = float(np.interp(z, self.z, np.arange(len(self.z)))) if len(self.z) > 1 else 0.0
        z0 = min(int(fz), len(self.z) - 1)
        z1, wz = min(z0 + 1, len(self.z) - 1), fz - z0
        e0, we = self._fraction(energy, self.e_min, self.energy_step, len(self.energy))
        p0, wp = self._fraction(peak, self.peak[0], self.peak_step, len(self.peak))
        out = 0.0
        for zi, az in ((z0, 1.0 - wz), (z1, wz)):
            grid = self.value[k, zi]
            out = out + az * ((1 - we) * (1 - wp) * grid[e0, p0] + we * (1 - wp) * grid[e0 + 1, p0]
                              + (1 - we) * wp * grid[e0, p0 + 1] + we * wp * grid[e0 + 1, p0 + 1])
        return out

    def follow(self, start_kwh: float) -> tuple[float, float]:
        """The DP's policy on the month's actual load, window by window: its cost (the peak grid's lowest level
        charged from the start) and the month's peak. [currency, kW]"""
        m = self.month
        energy, peak = start_kwh, float(self.peak[0])
        total = m.rate * peak
        for k in range(len(m.load_kw)):
            net = float(m.load_kw[k] - m.pv_kw[k])
            lowest, highest = self._power_bounds(energy)
            holds = net - (peak + np.linspace(0.0, self.peak_step * HOLD_LEVELS, 4 * HOLD_LEVELS + 1))
            power = np.clip(np.concatenate([np.linspace(lowest, highest, 81), holds]), lowest, highest)
            after = self._after(energy, power)
            cost, new_peak = self._cost(net, power, peak, m.price[k])
            noise_end = float(m.noise_end[k]) if self.noise_sd > 0 else 0.0
            best = int(np.argmin(cost + self._value_at(k + 1, noise_end, after, new_peak)))
            total += float(cost[best])
            energy, peak = float(after[best]), float(new_peak[best])
        return total - self.credit * energy, peak


def month_costs(battery: BatterySpec, month: Month, noise_sd: float, energy_step: float,
                peak_step: float) -> dict[str, float]:
    """No battery, perfect foresight and the DP's policy on one month (module docstring). [currency, kW]"""
    start = battery.capacity_kwh * START_SOC_PCT / 100.0
    credit = stored_energy_credit(battery, month)
    pf_cost, pf_peak = perfect_foresight(battery, month, start, credit)
    lowest = max(0.0, np.floor((pf_peak - GRID_BELOW_PF_KW) / peak_step) * peak_step)
    top = min(float(np.max(month.quiet_kw * (1.0 + NOISE_SPAN_SD * noise_sd) - month.pv_kw)) + peak_step,
              pf_peak + GRID_ABOVE_PF_KW)
    grid = np.arange(lowest, max(top, lowest + 2 * peak_step) + 1e-9, peak_step)
    dp = CausalDP(battery, month, noise_sd, grid, energy_step, credit)
    dp.solve()
    dp_cost, dp_peak = dp.follow(start)
    # stored energy credited relative to the start, as a study's policy is (study_month_cost)
    return {"no_battery": no_battery_cost(month), "pf": pf_cost + credit * start, "dp": dp_cost + credit * start,
            "pf_peak_kw": pf_peak,
            "dp_peak_kw": dp_peak, "grid_low_kw": float(grid[0]), "grid_top_kw": float(grid[-1])}


def study_month_cost(battery: BatterySpec, month: Month, price: np.ndarray, step_h: float, import_kw: np.ndarray,
                     battery_kw: np.ndarray, start_kwh: float, end_kwh: float) -> float:
    """A study policy's month on the model's terms (module docstring): its imports per step at ``price``, the
    demand rate on its highest window mean, wear on its battery power (discharge +), and the energy it stored over
    the month (``end_kwh`` − ``start_kwh``) credited as the DP's is. [currency]"""
    credit = stored_energy_credit(battery, month)
    windows = import_kw.reshape(-1, month.steps).mean(axis=1)
    return float((price * import_kw).sum() * step_h + month.rate * windows.max(initial=0.0)
                 + battery.wear_cost_per_kwh * np.abs(battery_kw).sum() * step_h - credit * (end_kwh - start_kwh))


class InformedMpc(OracleMpc):
    """The study's MPC given what the DP knows (module docstring, ``informed``): the actual PV and the ``best_load``
    oracle's load as its forecasts, the noise's 90th percentile above that load as the net-load risk (the PV has
    none), and the month's peak target from the month's own days on the noise-free net load."""

    @classmethod
    def informed(cls, scenario: Scenario, data: Inputs, tariff: SiteTariff,
                 best_load: BestLoad) -> tuple[InformedMpc, Scenario]:
        """The informed MPC of ``scenario``'s year ``data`` under its bound ``tariff``, and the scenario it runs in:
        ``scenario`` with the recharge floor's multiple :data:`INFORMED_FLOOR_MULTIPLE`."""
        planner = scenario.planner.model_copy(update={"demand_floor_stress_level": INFORMED_FLOOR_MULTIPLE})
        own = scenario.model_copy(update={"planner": planner})
        mpc = cls.of(make_strategy("mpc", own, data, tariff), "best_load", own.site.timezone, best_load)
        mpc.name = "informed"
        mpc.peak_target = MonthOracleTarget(mpc.battery, planner.demand_target_days, data, own.site.timezone,
                                            load_kw=best_load.quiet_kw)
        return mpc, own

    def forecasts(self, t: int, grid: TimeGrid, ctx: StepContext, demand: bool) -> tuple[np.ndarray, np.ndarray]:
        _, load = super().forecasts(t, grid, ctx, demand)
        return self.data.pv_kw[t:t + len(grid)], load

    def peak_risk(self, t: int, grid: TimeGrid, ctx: StepContext, pv: np.ndarray, load: np.ndarray) -> np.ndarray:
        return self._best_load_risk


def study_frames(scenario: Scenario) -> tuple[Inputs, np.ndarray, dict[str, pd.DataFrame]]:
    """The study's inputs, its noise-free load per step of them [kW], and its MPC (``mpc``), the same MPC on the
    actual PV (``true_pv``, :mod:`bench_two_part_oracles`) and the informed MPC (:class:`InformedMpc`) step by step
    over the scenario's year."""
    result = run(scenario, strategies=["mpc"])
    inputs, tariff = result.inputs, result.tariff
    oracle = OracleMpc.of(make_strategy("mpc", scenario, inputs, tariff), "true_pv", scenario.site.timezone)
    true_pv = simulate(oracle, scenario, inputs, tariff, battery=True)
    best_load = BestLoad.of(scenario, inputs)
    informed, own = InformedMpc.informed(scenario, inputs, tariff, best_load)
    informed_year = simulate(informed, own, inputs, tariff, battery=True)
    return inputs, best_load.quiet_kw, {"mpc": result.results["mpc"].frame, "true_pv": true_pv.frame,
                                        "informed": informed_year.frame}


def share(costs: dict[str, float], policy: str = "dp") -> float:
    """A policy's battery value as a share of perfect foresight's: (no battery − policy) / (no battery − PF). [-]"""
    return (costs["no_battery"] - costs[policy]) / (costs["no_battery"] - costs["pf"])


def seed_year(name: str, seed: int, months: list[int] | None, energy_step: float, peak_step: float) -> dict:
    """One seed's year: each month's costs with the load noise and on the noise-free year (the grid check), and
    the shares. [currency]"""
    t0 = time.perf_counter()
    scenario = seeded_scenario(name, seed, {}, None)
    inputs, quiet, frames = study_frames(scenario)  # the year loaded once, for the MPC years and the DP alike
    n = inputs.steps
    quiet = quiet[:n]
    steps = inputs.tariff
    if steps.window_h <= 0:
        raise ValueError(f"{name}: the tariff has no demand charge")
    noise_sd = scenario.data.synthetic.load.noise_pct / 100.0
    args = (quiet, inputs.pv_kw[:n], steps.import_price[:n], steps.month[:n], steps.window[:n],
            steps.demand_rate[:n], steps.window_h, noise_sd)
    noisy = months_of(inputs.load_kw[:n], *args)
    quiet_months = months_of(quiet, *args)
    chosen = range(len(noisy)) if months is None else [m - 1 for m in months]
    step_h = float(inputs.duration_h[0])
    initial_kwh = scenario.battery.capacity_kwh * scenario.battery.initial_soc_pct / 100.0
    rows = []
    for m in chosen:
        row = {"month": m + 1, **month_costs(scenario.battery, noisy[m], noise_sd, energy_step, peak_step)}
        steps_of_month = np.flatnonzero(steps.month[:n] == m)
        first, last = int(steps_of_month[0]), int(steps_of_month[-1])
        for policy, frame in frames.items():
            soc = frame["soc_kwh"].to_numpy()  # at each step's end
            start = soc[first - 1] if first > 0 else initial_kwh
            row[policy] = study_month_cost(scenario.battery, noisy[m], steps.import_price[first:last + 1], step_h,
                                           frame["import_kw"].to_numpy()[first:last + 1],
                                           frame["battery_kw"].to_numpy()[first:last + 1], start, soc[last])
        check = month_costs(scenario.battery, quiet_months[m], 0.0, energy_step, peak_step)
        row.update({f"grid_{key}": value for key, value in check.items()})
        rows.append(row)
        print(f"seed {seed} month {m + 1:2d}: DP {share(row):.4f}, MPC {share(row, 'mpc'):.4f}, MPC on the actual PV "
              f"{share(row, 'true_pv'):.4f}, informed MPC {share(row, 'informed'):.4f} (peaks: perfect foresight "
              f"{row['pf_peak_kw']:.0f} kW, DP {row['dp_peak_kw']:.0f} kW), grid check {share(check):.4f}", flush=True)
    def value(prefix: str, policy: str) -> float:
        return sum(r[f"{prefix}no_battery"] - r[f"{prefix}{policy}"] for r in rows)

    value_pf = value("", "pf")
    shares = {policy: value("", policy) / value_pf for policy in POLICIES}
    grid_pf, grid_dp = value("grid_", "pf"), value("grid_", "dp")
    return {"seed": seed, "value_pf": value_pf, **{f"value_{p}": value("", p) for p in shares}, **shares,
            "value_grid_pf": grid_pf, "value_grid_dp": grid_dp, "grid_share": grid_dp / grid_pf,
            "lowest_margin_kw": min(r["dp_peak_kw"] - r["grid_low_kw"] for r in rows),
            "highest_margin_kw": min(r["grid_top_kw"] - r["dp_peak_kw"] for r in rows),
            "months": rows, "wall_s": time.perf_counter() - t0}


def main() -> int:
    parser = two_part_parser(__doc__.split("\n")[0])
    parser.add_argument("--months", type=int, nargs="+", default=None, help="billing months 1–12 (default: all)")
    parser.add_argument("--energy-step", type=float, default=12.5, help="the battery-energy grid's spacing [kWh]")
    parser.add_argument("--peak-step", type=float, default=5.0, help="the month-peak grid's spacing [kW]")
    args = parser.parse_args()
    if args.days is not None:
        raise SystemExit("bench_causal_bound: whole billing months only (use --months, not --days)")
    command = " ".join(["python benchmarks/bench_causal_bound.py", "--scenario", args.scenario, "--seeds",
                        *map(str, args.seeds)] + (["--months", *map(str, args.months)] if args.months else [])
                       + [f"--energy-step {args.energy_step:g}", f"--peak-step {args.peak_step:g}"])
    print(f"reproduce: {command}", flush=True)
    scenario_or_exit("bench_causal_bound", args.scenario, args.seeds[0], {}, None)
    n = len(args.seeds)
    with ProcessPoolExecutor(max_workers=2) as pool:
        years = list(pool.map(seed_year, [args.scenario] * n, args.seeds, [args.months] * n,
                              [args.energy_step] * n, [args.peak_step] * n))
    pooled = pooled_shares(years, list(POLICIES), width=8)
    grid = sum(y["value_grid_dp"] for y in years) / sum(y["value_grid_pf"] for y in years)
    print(f"grid check (noise-free year): pooled {grid:.4f}", flush=True)
    print(json.dumps({"command": command, "scenario": args.scenario, "pooled": pooled, "pooled_grid_share": grid,
                      "years": years}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
