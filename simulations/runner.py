"""The offline runner: the plant physics stepped with the live dispatcher, one strategy at a time.

For every step the runner does what the live controller does once per measurement, at the
scenario's resolution and without Modbus: the strategy picks a target from what is known at the
start of the step (:class:`~simulations.strategies.StepContext`), the live
:class:`~controller.dispatch.Dispatcher` turns it into a battery setpoint and a PV limit with its
limits chain, and the plant (:class:`~drivers.simulated.plant.Plant`, the physics of the simulated
devices) runs the step. The dispatcher sees the step's load and the PV the array offers (what its
1-second loop converges to within a step), the battery power of the previous step and the BMS
allowance at the start of the step. Nothing a strategy sees comes from after the step's start.

Bills come from the tariff (:mod:`optimizer.billing`), economics from :mod:`simulations.economics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from controller.dispatch import Dispatcher, DispatchInputs
from drivers.simulated.plant import BatteryModel, Plant, PVModel
from ems.series_csv import DataError, read_series_csv, series_columns, site_ratings
from ems.yamlfile import ConfigError, FieldError
from optimizer.billing import Bill, billed_demand_kw
from optimizer.forecast import History
from optimizer.service import TariffSteps
from optimizer.site import BatterySpec, PVSpec, SiteInfo
from optimizer.solar import HAI_PHONG_MONTHLY_KWH_PER_KWP
from optimizer.tariff import SiteTariff, load_tariff
from simulations import economics
from simulations.accuracy import study_accuracy
from simulations.data_checks import coarse_demand_warning, pv_held_back_warning
from simulations.gap_fill import FIELD as FILL_FIELD
from simulations.gap_fill import FilledGaps, fill_gaps
from simulations.irradiance import pv_from_irradiance
from simulations.scenario import Scenario
from simulations.strategies import (
    Inputs,
    Mpc,
    NoBattery,
    PerfectForesight,
    SelfConsumption,
    StepContext,
    Strategy,
    TouRule,
)
from simulations.synthetic import shutdown_days, synthetic_year
from simulations.warmup import Warmup, warmup_from

REFERENCE = "no_system"
"""The reference every saving is measured against: the same load, no PV, no battery."""

COLUMNS = ("pv_available_kw", "pv_kw", "curtail_kw", "load_kw", "battery_kw", "grid_kw", "import_kw",
           "export_kw", "soc_kwh", "soc_pct")


@dataclass(frozen=True)
class SeriesData:
    """PV and load of the simulated period (UTC step starts, durations [h], powers [kW]), and the measured history
    before it the MPC starts with (:mod:`simulations.warmup`)."""

    starts: pd.DatetimeIndex
    duration_h: np.ndarray
    pv_kw: np.ndarray
    load_kw: np.ndarray
    warmup: Warmup = field(default_factory=Warmup)
    filled: dict[str, dict[str, float]] = field(default_factory=dict)
    """Gaps of measured data filled within the period, per series (:meth:`FilledGaps.summary`); empty: none."""
    warnings: list[str] = field(default_factory=list)
    """What makes the data less than it seems (:mod:`simulations.data_checks`); empty: nothing found."""
    filled_steps: dict[str, np.ndarray] = field(default_factory=dict)
    """Per series (``pv``, ``load``) True at the steps of the period whose value was filled; empty: nothing filled
    or filling not asked for."""

    @property
    def hours(self) -> float:
        """Length of the period. [h]"""
        return float(np.sum(self.duration_h))


def load_data(scenario: Scenario) -> SeriesData:
    """The scenario's PV and load (synthetic year or CSV; PV from ``data.irradiance`` when given), cut to
    ``data.start`` / ``data.days``, with ``data.warmup_days`` of history before the first day."""
    d = scenario.data
    step = scenario.planner.step_minutes
    gaps: FilledGaps | None = None
    measured_pv: np.ndarray | None = None  # PV as the plant delivered it, for the held-back check
    if d.csv is None:  # a synthetic year (its PV replaced below where data.irradiance gives it)
        assert d.synthetic is not None
        frame = synthetic_frame(scenario, d.synthetic.year, d.synthetic.seed)
        pv, load = frame["pv_kw"], frame["load_kw"]
    elif d.irradiance is not None or d.synthetic is not None:  # load from the CSV, PV from irradiance or synthetic
        frame, gaps = read_measured(scenario, ("load",))
        pv, load = None, frame["load_kw"]
    else:
        frame, gaps = read_measured(scenario, ("pv", "load"))
        measured_pv = frame["pv_kw"].to_numpy(dtype=float).copy()
        if d.csv.pv_kwp:
            frame["pv_kw"] = frame["pv_kw"] * scenario.pv.kwp / d.csv.pv_kwp
        frame["pv_kw"] = frame["pv_kw"].clip(upper=scenario.pv.ac_limit_kw)
        pv, load = frame["pv_kw"], frame["load_kw"]
    local = frame.index.tz_convert(scenario.site.timezone)
    keep = np.ones(len(frame), dtype=bool)
    if d.start is not None:
        keep &= np.asarray(local.date) >= d.start
    first_day = d.start if d.start is not None else (local[0].date() if len(local) else None)
    if d.days is not None and first_day is not None:
        keep &= np.asarray(local.date) < first_day + pd.Timedelta(days=d.days).to_pytimedelta()
    if len(local):
        _check_period(scenario, local[0].date(), local[-1].date())
    if not keep.any():
        raise ConfigError(f"scenario {scenario.name}", [FieldError("data.start", "data.start and data.days select "
                                                                                 "no step of the data")])
    starts = frame.index[keep]
    if d.irradiance is not None:
        pv_all = irradiance_pv(scenario, pd.DatetimeIndex(frame.index), require=keep).to_numpy(dtype=float)
    elif pv is None:
        pv_all = synthetic_pv_kw(scenario, pd.DatetimeIndex(frame.index))
    else:
        pv_all = pv.to_numpy(dtype=float)
    load_all = load.to_numpy(dtype=float)
    warmup = warmup_from(frame.index, pv_all, load_all, starts[0], d.warmup_days, step)
    return SeriesData(starts=pd.DatetimeIndex(starts).tz_convert("UTC"), duration_h=np.full(int(keep.sum()), step / 60),
                      pv_kw=pv_all[keep], load_kw=load_all[keep], warmup=warmup,
                      filled=gaps.summary(keep) if gaps is not None else {},
                      filled_steps={k: m[keep] for k, m in gaps.mask.items()} if gaps is not None else {},
                      warnings=[w for w in [None if measured_pv is None else
                                            pv_held_back_warning(measured_pv[keep], load_all[keep]),
                                            coarse_demand_warning(frame.attrs.get("file_step_minutes"),
                                                                  load_tariff(scenario.tariff.ref(),
                                                                              scenario.base_dir).spec)] if w])


def synthetic_frame(scenario: Scenario, year: int, seed: int) -> pd.DataFrame:
    """The scenario's synthetic local year ``year`` on its step, drawn with ``seed`` (``pv_kw``, ``load_kw`` [kW])."""
    s = scenario.data.synthetic
    assert s is not None
    return synthetic_year(scenario.site, scenario.pv, year, s.load, seed, scenario.planner.step_minutes,
                          s.annual_yield_kwh_per_kwp, daily_energy_lag1_target=s.daily_energy_lag1,
                          daily_clearness_spread=s.daily_clearness_spread)


def synthetic_pv_kw(scenario: Scenario, index: pd.DatetimeIndex) -> np.ndarray:
    """The synthetic year's PV [kW] at the UTC interval starts ``index`` (the measured load's): each local year of
    ``index`` drawn with ``seed + (year − data.synthetic.year)``, so the PV of ``data.synthetic.year`` is the
    synthetic year's own.

    Raises
    ------
    ConfigError
        Where ``index`` has intervals off the study's step grid (the CSV's timestamps not on the step).
    """
    s = scenario.data.synthetic
    assert s is not None
    years = sorted(set(index.tz_convert(scenario.site.timezone).year))
    pv = pd.concat([synthetic_frame(scenario, y, s.seed + (y - s.year))["pv_kw"] for y in years]).reindex(index)
    off = pv.isna().to_numpy()
    if off.any():
        raise ConfigError(f"scenario {scenario.name}", [FieldError("data.synthetic", (
            f"no synthetic PV for {int(off.sum())} interval(s) of the CSV, the first starting {index[off][0]} (UTC): "
            f"its timestamps are not on the {scenario.planner.step_minutes}-minute steps of the local day"))])
    return pv.to_numpy(dtype=float)


def read_measured(scenario: Scenario, columns: tuple[str, ...]) -> tuple[pd.DataFrame, FilledGaps | None]:
    """The scenario's CSV of measured ``columns`` on the study's step [kW], its gaps filled as
    ``data.csv.fill_gaps_hours`` allows (:mod:`simulations.gap_fill`; None: the file had to have none).

    Raises
    ------
    DataError
        The reader's errors with what the scenario can do about them (:func:`_remedies`), or the gaps left.
    """
    csv, tz, step = scenario.data.csv, scenario.site.timezone, scenario.planner.step_minutes
    assert csv is not None
    path = scenario.resolve(csv.path)
    if "pv" not in columns and (pv_columns := series_columns(path, "pv")):
        giver = "data.irradiance" if scenario.data.irradiance is not None else "data.synthetic"
        raise DataError(str(path), [FieldError(giver, (
            f"the CSV has PV ({', '.join(pv_columns)}) and {giver} gives the PV too: keep one — drop {giver} "
            f"({giver.split('.')[1]}: null) to use the measured PV, or the CSV's PV column"))])
    rated = load_and_pv_ratings(scenario, columns)
    try:
        read = read_series_csv(path, tz, step, columns=columns, rated_kw=rated, allow_gaps=bool(csv.fill_gaps_hours),
                               timestamps_at=csv.timestamps_at)
    except DataError as exc:
        raise DataError(exc.source, [*exc.errors, *_remedies(exc.errors, scenario)]) from None
    gaps = None
    frame = read
    if csv.fill_gaps_hours:
        frame, gaps, errors = fill_gaps(read, tz, csv.fill_gaps_hours)
        if errors:
            raise DataError(str(path), errors)
    return _with_step(moved_to_year(frame, csv.move_to_year, tz), read), gaps


def load_and_pv_ratings(scenario: Scenario, columns: tuple[str, ...]) -> dict[str, float]:
    """What measured series are checked against (× ``ems.series_csv.RATED_BOUND_FACTOR``), so that W written for kW
    is refused: the PV against the plant it was measured on (``data.csv.pv_kwp``, else the scenario's AC limit), the
    load against what the factory can draw (``grid.import_cap_kw`` plus the PV's AC limit) where the scenario states
    a contracted capacity. [kW]"""
    csv = scenario.data.csv
    assert csv is not None
    return site_ratings(columns, csv.pv_kwp or scenario.pv.ac_limit_kw, scenario.grid.import_cap_kw,
                        scenario.pv.ac_limit_kw)


def _remedies(errors: list[FieldError], scenario: Scenario) -> list[FieldError]:
    """What the scenario can change about the reader's ``errors``: fill gaps; say which plant the PV is from."""
    csv = scenario.data.csv
    assert csv is not None
    out = []
    if not csv.fill_gaps_hours and any(e.message.startswith("gap:") or e.message == "empty cell" for e in errors):
        out.append(FieldError(FILL_FIELD, "the data has gaps: set data.csv.fill_gaps_hours to fill those up to that "
                                          "long (docs/data.md, \"Gaps in measured data\"), or fill them in the file"))
    if csv.pv_kwp is None and any("plausible bound" in e.message and e.field.lower().endswith(("pv_kw", "pv_kwh"))
                                  for e in errors):
        out.append(FieldError("data.csv.pv_kwp", (
            f"the PV is checked against the scenario's plant (AC limit {scenario.pv.ac_limit_kw:g} kW): if it was "
            "measured on another plant, give that plant's kWp here (the PV is then scaled to pv.kwp); if the column "
            "holds W, write kW")))
    if any("plausible bound" in e.message and e.field.lower().endswith(("load_kw", "load_kwh", "grid_kw", "grid_kwh",
                                                                         "import_kw", "import_kwh"))
           for e in errors):
        out.append(FieldError("grid.import_cap_kw", (
            f"the load is checked against what the factory can draw: the contracted {scenario.grid.import_cap_kw:g} "
            f"kW plus the PV's {scenario.pv.ac_limit_kw:g} kW: if the column holds W, write kW; if the factory draws "
            "more, its contracted capacity is higher")))
    return out


def _with_step(frame: pd.DataFrame, read: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the file's own step (``attrs["file_step_minutes"]``) of the frame as read."""
    frame.attrs["file_step_minutes"] = read.attrs["file_step_minutes"]
    return frame


def moved_to_year(frame: pd.DataFrame, year: int | None, timezone: str) -> pd.DataFrame:
    """``frame`` (UTC interval starts) moved by the whole number of weeks that brings its first local day nearest
    the same date in ``year`` (29 February: the 28th), so every weekday stays a weekday; as it is for None."""
    if year is None or len(frame) == 0:
        return frame
    first = frame.index[0].tz_convert(timezone).date()
    target = first.replace(year=year, day=min(first.day, 28) if first.month == 2 else first.day)
    weeks = round((target - first).days / 7)
    return frame.set_axis(frame.index + pd.Timedelta(weeks=weeks))


def _check_period(scenario: Scenario, first: date, last: date) -> None:
    """``data.start`` and ``data.days`` within the data's local days ``first`` … ``last``; a ``ConfigError`` naming
    the data's days otherwise (a period cut short at the data's end was simulated without a word)."""
    d, span = scenario.data, f"the data covers {first} to {last} (local days)"
    if d.start is not None and not first <= d.start <= last:
        raise ConfigError(f"scenario {scenario.name}", [FieldError("data.start", f"{d.start} is outside the data: "
                                                                                 f"{span}")])
    begin = d.start if d.start is not None else first
    if d.days is not None and begin + timedelta(days=d.days - 1) > last:
        available = (last - begin).days + 1
        raise ConfigError(f"scenario {scenario.name}", [FieldError(
            "data.days", f"{d.days} days from {begin} run past the end of the data ({span}): at most {available} "
                         f"from {begin}")])


def irradiance_pv(scenario: Scenario, index: pd.DatetimeIndex, require: np.ndarray | None = None) -> pd.Series:
    """PV AC power [kW] from the scenario's irradiance file on ``index`` (NaN where the file has none); every
    interval where ``require`` is True (default: all) must be covered."""
    irr = scenario.data.irradiance
    assert irr is not None
    path = scenario.resolve(irr.path)
    pv = pv_from_irradiance(path, scenario.site, scenario.pv, scenario.planner.step_minutes,
                            irr.timezone, irr.year).reindex(index)
    absent = pv.isna().to_numpy()
    missing = index[absent if require is None else absent & require]
    if len(missing):
        raise ConfigError(str(path), [FieldError("data.irradiance", f"no irradiance for {len(missing)} interval(s) of "
                                                                    f"the data, the first starting {missing[0]} "
                                                                    "(UTC)")])
    return pv


def price_inputs(data: SeriesData, tariff: SiteTariff, horizon: int) -> Inputs:
    """Prices, periods, billing months and demand rates for the period plus one horizon beyond it.

    Past the end of the data the actual PV and load repeat the first steps of the period (only
    ``mpc_perfect`` looks there, in its last horizon).
    """
    n = len(data.starts)
    step_h = float(data.duration_h[-1])
    extra = pd.date_range(data.starts[-1] + pd.Timedelta(hours=step_h), periods=horizon,
                          freq=pd.Timedelta(hours=step_h))
    starts = data.starts.append(extra)
    duration = np.concatenate([data.duration_h, np.full(horizon, step_h)])
    wrap = np.arange(horizon) % n
    return Inputs(starts=starts, duration_h=duration, steps=n,
                  pv_kw=np.concatenate([data.pv_kw, data.pv_kw[wrap]]),
                  load_kw=np.concatenate([data.load_kw, data.load_kw[wrap]]), tariff=TariffSteps.of(tariff, starts),
                  warmup=data.warmup)


@dataclass
class StrategyResult:
    """One strategy over the period.

    ``frame``: per-step series (:data:`COLUMNS` plus ``period``), powers [kW] averaged over the step,
    SOC at the end of the step; counters [kWh] from the plant; ``wall_s`` [s] for the whole run and
    ``cpu_s`` [s] the CPU time of this process over it, ``solve_s`` [s] inside HiGHS, ``replans`` planner calls.
    """

    name: str
    frame: pd.DataFrame
    bill: Bill
    soc0_kwh: float
    charged_kwh: float
    discharged_kwh: float
    losses_kwh: float
    capacity_kwh: float
    wall_s: float
    cpu_s: float
    solve_s: float
    replans: int
    planner_failures: list[tuple[str, str]] = field(default_factory=list)

    def energy(self) -> dict[str, float]:
        """Energy over the period [kWh]: the terms of PV + import = load + export + curtailment + losses + ΔSOC."""
        f = self.frame
        dt = f["duration_h"].to_numpy()
        return {
            "pv_available": float(np.sum(f["pv_available_kw"] * dt)), "pv": float(np.sum(f["pv_kw"] * dt)),
            "import": float(np.sum(f["import_kw"] * dt)), "load": float(np.sum(f["load_kw"] * dt)),
            "export": float(np.sum(f["export_kw"] * dt)), "curtailment": float(np.sum(f["curtail_kw"] * dt)),
            "battery_losses": self.losses_kwh, "battery_charge": self.charged_kwh,
            "battery_discharge": self.discharged_kwh,
            "delta_soc": float(f["soc_kwh"].iloc[-1] - self.soc0_kwh) if len(f) else 0.0,
        }


class _StepWindow:
    """The BMS allowance the dispatcher sees at the start of a step, narrowed to what keeps the SOC inside the
    window over the whole step: live, the 1-second limits chain stops at ``soc_min``/``soc_max`` within the
    step; at the study's resolution the same energy is expressed as the step's average power."""

    def __init__(self, spec: BatterySpec):
        self.spec = spec

    def limits_at(self, soc_kwh: float, bms_charge_kw: float, bms_discharge_kw: float,
                  dt_h: float) -> tuple[float, float]:
        """(charge, discharge) limits for a step of ``dt_h`` hours from ``soc_kwh``. [kW]"""
        s = self.spec
        standby = s.standby_loss_kw * dt_h
        room_charge = max(0.0, s.soc_max_kwh - soc_kwh + standby) / (s.charge_efficiency * dt_h)
        room_discharge = max(0.0, soc_kwh - standby - s.soc_min_kwh) * s.discharge_efficiency / dt_h
        return min(bms_charge_kw, room_charge), min(bms_discharge_kw, room_discharge)

    def update(self, ctx: StepContext, soc_kwh: float, bms_charge_kw: float, bms_discharge_kw: float,
               dt_h: float) -> None:
        """Set ``ctx``'s SOC, the BMS's limits as reported (the planner's, as live) and :meth:`limits_at` of them
        (the dispatcher's for the next step of ``dt_h`` hours)."""
        ctx.soc_kwh, ctx.max_charge_kw, ctx.max_discharge_kw = soc_kwh, bms_charge_kw, bms_discharge_kw
        ctx.step_charge_kw, ctx.step_discharge_kw = self.limits_at(soc_kwh, bms_charge_kw, bms_discharge_kw, dt_h)


class _BilledDemand:
    """The demand each billing month of a study is billed on so far, as the live controller's demand tracker keeps
    it (:func:`optimizer.billing.billed_demand_kw` of the months' peaks): what the planner and the dispatcher take
    as already billed (``StepContext.month_peak_kw``)."""

    def __init__(self, tariff: SiteTariff):
        self.tariff = tariff
        self.peaks: dict[str, float] = {}  # closed months' peaks [kW]
        self.base = 0.0  # billed by the months before the running one [kW]
        self.month_kw = 0.0  # the running month's own peak so far [kW]

    def before(self, month: str) -> float:
        """Start billing month ``month``: the demand it is billed on by the months before it (0 under
        ``month_max``). [kW]"""
        charge = self.tariff.billed_demand_charge(month)
        self.base = (billed_demand_kw(charge, month, self.peaks) or 0.0) if charge is not None else 0.0
        self.month_kw = 0.0
        return self.base

    def add_window(self, average_kw: float) -> float:
        """A demand window closed at ``average_kw`` [kW]: the demand billed so far. [kW]"""
        self.month_kw = max(self.month_kw, average_kw)
        return max(self.base, self.month_kw)

    def close(self, month: str) -> None:
        """Billing month ``month`` ended: keep its peak."""
        self.peaks[month] = self.month_kw


def simulate(strategy: Strategy, scenario: Scenario, data: Inputs, tariff: SiteTariff, *, battery: bool,
             pv: bool = True, progress: Callable[[int], None] | None = None) -> StrategyResult:
    """Step the plant with the live dispatcher under one strategy over the period (see module docstring)."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    spec = scenario.battery.spec()
    if not battery or spec.capacity_kwh <= 0:
        spec = spec.model_copy(update={"max_charge_kw": 0.0, "max_discharge_kw": 0.0, "standby_loss_kw": 0.0})
    capacity = max(spec.capacity_kwh, 1e-3)
    model = BatteryModel(capacity, spec.max_charge_kw, spec.max_discharge_kw, spec.charge_efficiency,
                         spec.discharge_efficiency, spec.standby_loss_kw,
                         initial_soc_pct=scenario.battery.initial_soc_pct,
                         taper_high_pct=spec.soc_max_pct, taper_low_pct=spec.soc_min_pct)
    rated = max(scenario.pv.ac_limit_kw, 1e-3)
    plant = Plant(model, PVModel(rated))
    # steps are minutes apart: no one-cycle load swing to learn, no start-up to watch it through
    dispatcher = Dispatcher(spec, scenario.grid, scenario.dispatch.model_copy(update={"load_swing_window_s": 0.0}),
                            pv_rated_kw=rated)
    n = data.steps
    starts = data.starts[:n]
    now_list = starts.to_pydatetime().tolist()
    dt_h = data.duration_h[:n]
    pv_avail = data.pv_kw[:n] if pv else np.zeros(n)
    load = data.load_kw[:n]
    # the histories: the warm-up (measured before the period), then one entry per step, written after the step
    warm = data.warmup
    w = warm.steps
    history_ns = np.concatenate([warm.starts_ns, starts.as_unit("ns").asi8])
    pv_hist = np.concatenate([warm.pv_kw if pv else np.zeros(w), np.full(n, np.nan)])
    load_hist = np.concatenate([warm.load_kw, np.full(n, np.nan)])
    window = _StepWindow(spec)
    ctx = StepContext(soc_kwh=model.soc_kwh, max_charge_kw=0.0, max_discharge_kw=0.0, month_peak_kw=0.0,
                      pv_history=History(history_ns, pv_hist), load_history=History(history_ns, load_hist),
                      history_offset=w)
    window.update(ctx, model.soc_kwh, model.allowed_charge_kw(), model.allowed_discharge_kw(), dt_h[0])
    windows = data.tariff.window[:n]  # the tariff's demand windows (each step its own without a demand charge)
    window_end = np.append(windows[1:] != windows[:-1], True)
    month_end = np.append(data.month[1:n] != data.month[:n - 1], True)
    labels = tariff.billing_months(starts)
    billed = _BilledDemand(tariff)
    ctx.month_peak_kw = billed.before(labels[0]) if n else 0.0
    out = np.zeros((len(COLUMNS), n))
    soc0 = model.soc_kwh
    prev_battery = 0.0
    window_kwh = window_h = 0.0
    for t in range(n):
        now = now_list[t]
        target = strategy.target(t, now, ctx)
        p_av, l_kw = float(pv_avail[t]), float(load[t])
        measured = DispatchInputs(grid_kw=l_kw - p_av - prev_battery, pv_kw=p_av, battery_kw=prev_battery,
                                  soc_pct=100.0 * ctx.soc_kwh / capacity, bms_max_charge_kw=ctx.step_charge_kw,
                                  bms_max_discharge_kw=ctx.step_discharge_kw, pv_limit_pct=100.0)
        decision = dispatcher.step(measured, target, now)
        limit = None if decision.pv_limit_kw is None else decision.pv_limit_pct
        state = plant.step(now, dt_h[t] * 3600.0, decision.battery_setpoint_kw, limit, p_av, l_kw)
        grid_kw = state.grid_kw
        out[:, t] = (p_av, state.pv_kw, p_av - state.pv_kw, l_kw, state.battery_kw, grid_kw, max(grid_kw, 0.0),
                     max(-grid_kw, 0.0), state.soc_kwh, state.soc_pct)
        prev_battery = state.battery_kw
        ctx.soc_kwh = state.soc_kwh
        if t + 1 < n:
            window.update(ctx, state.soc_kwh, state.max_charge_kw, state.max_discharge_kw, dt_h[t + 1])
        pv_hist[w + t] = np.nan if dispatcher.pv_held_at_limit(state.pv_kw, limit) else state.pv_kw
        load_hist[w + t] = l_kw
        window_kwh += max(grid_kw, 0.0) * dt_h[t]
        window_h += dt_h[t]
        if window_end[t]:
            ctx.month_peak_kw = billed.add_window(window_kwh / max(window_h, data.tariff.window_h))
            window_kwh = window_h = 0.0
        ctx.window_kwh, ctx.window_elapsed_h = window_kwh, window_h
        if month_end[t]:
            billed.close(labels[t])
            ctx.month_peak_kw = billed.before(labels[t + 1]) if t + 1 < n else 0.0
        if progress is not None:
            progress(t)
    frame = pd.DataFrame(out.T, index=starts, columns=list(COLUMNS))
    frame["duration_h"] = dt_h
    frame["period"] = data.period[:n]
    bill = tariff.bill(starts, dt_h, frame["import_kw"].to_numpy(), frame["export_kw"].to_numpy())
    return StrategyResult(
        name=strategy.name, frame=frame, bill=bill, soc0_kwh=soc0, charged_kwh=model.charged_kwh,
        discharged_kwh=model.discharged_kwh, losses_kwh=model.losses_kwh,
        capacity_kwh=spec.capacity_kwh if battery else 0.0, wall_s=time.perf_counter() - t_start,
        cpu_s=time.process_time() - cpu_start, solve_s=strategy.solve_s, replans=strategy.replans,
        planner_failures=list(getattr(strategy, "failures", [])))


def nominal_load_kw(scenario: Scenario) -> float | None:
    """The load assumed before any is measured: the synthetic load shape's weekday mean, ``day_kw`` over the day
    shift and ``night_kw`` outside it (None for measured CSV data, which the scenario gives no nominal for). [kW]

    A scenario parameter, not a statistic of the data: the MPC's first re-plan must not see the load it plans.
    """
    syn = scenario.data.synthetic_load
    return None if syn is None else syn.load.weekday_mean_kw


def forecast_site(scenario: Scenario) -> SiteInfo:
    """The site as the MPC's load forecaster knows it: the scenario's ``site.planned_shutdowns`` plus, for a
    synthetic year, the synthetic factory's Tết shutdown, which a plant plans and announces months ahead (its
    irregular shutdown days stay unannounced; docs/data.md, "The harder year")."""
    syn = scenario.data.synthetic_load
    if syn is None:
        return scenario.site
    tet = shutdown_days(syn.load, syn.year)
    if not tet:
        return scenario.site
    return scenario.site.model_copy(update={"planned_shutdowns": (*scenario.site.planned_shutdowns, *sorted(tet))})


def forecast_pv(scenario: Scenario) -> PVSpec:
    """The PV as the MPC's forecaster knows it: the scenario's ``pv`` with its own climatology
    (``pv.monthly_yield_kwh_per_kwp``, as a live site file gives it) or, for a synthetic year without one, the
    generator's: the Hai Phong monthly shape scaled to its ``annual_yield_kwh_per_kwp`` (docs/data.md)."""
    syn = scenario.data.synthetic_pv
    if scenario.pv.monthly_yield_kwh_per_kwp is not None or syn is None:
        return scenario.pv
    shape = np.asarray(HAI_PHONG_MONTHLY_KWH_PER_KWP, dtype=float)
    monthly = tuple(float(v) for v in shape / shape.sum() * syn.annual_yield_kwh_per_kwp)
    return scenario.pv.model_copy(update={"monthly_yield_kwh_per_kwp": monthly})


def make_strategy(name: str, scenario: Scenario, data: Inputs, tariff: SiteTariff) -> Strategy:
    """The strategy object for a name of :data:`simulations.scenario.StrategyName` (or ``no_system``)."""
    spec = scenario.battery.spec()
    tol = scenario.dispatch.follow_tol_kw
    if name in (REFERENCE, "pv_only") or spec.capacity_kwh <= 0:
        return NoBattery(name)
    if name == "self_consumption":
        return SelfConsumption()
    if name == "tou_rule":
        return TouRule(data, spec)
    if name in ("mpc", "mpc_perfect"):
        return Mpc(data, forecast_site(scenario), forecast_pv(scenario), spec, scenario.grid, scenario.planner, tol,
                   perfect=name == "mpc_perfect", holidays=tariff.calendar, nominal_load_kw=nominal_load_kw(scenario),
                   day_ahead=scenario.data.pv_forecast,
                   fallback=TouRule(data, spec) if scenario.control.fallback_mode == "tou_rule" else None)
    if name == "perfect_foresight":
        soc0 = spec.capacity_kwh * scenario.battery.initial_soc_pct / 100.0
        return PerfectForesight(data, spec, scenario.grid, scenario.planner, tol, soc0)
    raise ValueError(f"unknown strategy {name!r}")


@dataclass
class RunResult:
    """All strategies of one scenario, with the reference, bills and economics."""

    scenario: Scenario
    data: SeriesData
    inputs: Inputs
    tariff: SiteTariff
    results: dict[str, StrategyResult]
    economics: dict[str, dict] = field(default_factory=dict)
    #: The MPC's forecast accuracy by lead time on the study's data (:mod:`simulations.accuracy`); None
    #: without an ``mpc`` strategy.
    forecast_accuracy: dict | None = None
    #: Per battery strategy, the shares of its savings and discharge it keeps at end of life, simulated
    #: (:func:`end_of_life_shares`); empty when ageing is proportional.
    end_of_life_shares: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def currency(self) -> str:
        return self.tariff.currency

    def counted(self, bill: Bill) -> float:
        """What the economics count of a bill: excluding VAT when it is recoverable, and a demand charge only for
        the share of its billing month the period covers (a 62-day study from 1 January counts March's 3 days of
        capacity charge, not a whole month, before it is scaled to a year). [currency]"""
        recoverable = self.scenario.finance.vat_recoverable
        whole = bill.total - bill.vat if recoverable else bill.total
        return whole - bill.demand_beyond_coverage(with_vat=not recoverable)

    def counted_bill(self, name: str) -> float:
        """The bill the economics count for strategy ``name`` over the period. [currency]"""
        return self.counted(self.results[name].bill)

    @property
    def year(self) -> economics.StudyYear:
        """How many years the simulated period counts as (:func:`simulations.economics.study_year`)."""
        return economics.study_year(self.data.hours / 24.0)

    def summary(self, command: str = "") -> dict[str, Any]:
        """JSON-ready summary: period (local dates), per-strategy energy, bills and timing, economics."""
        sc, year = self.scenario, self.year
        per_year = 1.0 / year.years
        end = self.data.starts[-1] + pd.Timedelta(hours=float(self.data.duration_h[-1]))
        tz = sc.site.timezone
        strategies = {}
        for name, r in self.results.items():
            strategies[name] = {
                "annual_bill": self.counted_bill(name) * per_year,
                "bill_total_incl_vat": r.bill.total, "bill_vat": r.bill.vat,
                "energy_kwh": r.energy(), "monthly_bills": r.bill.to_dict()["months"],
                "wall_s": r.wall_s, "cpu_s": r.cpu_s, "solve_s": r.solve_s, "replans": r.replans,
                "planner_failures": len(r.planner_failures),
                "planner_failure_examples": r.planner_failures[:5],
            }
        return {
            "scenario": sc.name, "description": sc.description, "command": command,
            "tariff": self.tariff.tariff.name, "currency": self.currency,
            "vat_recoverable": sc.finance.vat_recoverable,
            "period": {"start": self.data.starts[0].tz_convert(tz).isoformat(),
                       "end": end.tz_convert(tz).isoformat(), "timezone": tz,
                       "first_day": str(self.data.starts[0].tz_convert(tz).date()),
                       "last_day": str((end - pd.Timedelta(minutes=1)).tz_convert(tz).date()),
                       "days": year.days, "step_minutes": sc.planner.step_minutes,
                       "years": year.years, "whole_years": year.whole, "warning": year.warning},
            "assumptions": assumptions(sc, simulates_ageing(sc, self.inputs)),
            "warmup": self.data.warmup.coverage(float(self.data.duration_h[0])),
            "data_filled": self.data.filled,
            "data_warnings": self.data.warnings,
            "sizes": {"pv_kwp": sc.pv.kwp, "battery_kwh": sc.battery.capacity_kwh,
                      "battery_kw": sc.battery.max_discharge_kw},
            "strategies": strategies,
            "economics": self.economics,
            "forecast_accuracy": self.forecast_accuracy,
        }


def study_parameters(scenario: Scenario) -> economics.StudyParameters:
    """The scenario's figures for :func:`simulations.economics.evaluate`."""
    sc, c = scenario, scenario.costs
    return economics.StudyParameters(
        pv_kwp=sc.pv.kwp, battery_kwh=sc.battery.capacity_kwh, battery_kw=sc.battery.max_discharge_kw,
        pv_per_kwp=c.pv_per_kwp, battery_per_kwh=c.battery_per_kwh, battery_per_kw=c.battery_per_kw,
        pv_om_per_kwp_year=c.pv_om_per_kwp_year, battery_om_per_kwh_year=c.battery_om_per_kwh_year,
        battery_replacement_pct=c.battery_replacement_pct, discount_rate=sc.finance.discount_rate_pct / 100.0,
        lifetime_years=sc.finance.lifetime_years, tariff_escalation=sc.tariff.escalation_pct_per_year / 100.0,
        om_escalation=(sc.finance.om_escalation_pct_per_year if sc.finance.om_escalation_pct_per_year is not None
                       else sc.tariff.escalation_pct_per_year) / 100.0,
        pv_degradation=sc.pv.degradation_pct_per_year / 100.0, ageing=sc.battery.ageing(),
        grid_factor_t_per_mwh=sc.co2.grid_factor_t_per_mwh, jcm_factor_t_per_mwh=sc.co2.jcm_factor_t_per_mwh)


def run(scenario: Scenario, strategies: list[str] | None = None, progress: bool = False,
        data: SeriesData | None = None) -> RunResult:
    """Run the reference, PV only and every strategy of the scenario; bills and economics included.

    Parameters
    ----------
    strategies : list of str, optional
        Override the scenario's list (``pv_only`` and the reference always run).
    progress : bool
        Show a tqdm progress bar over all steps of all strategies.
    data : SeriesData, optional
        Use these series instead of loading the scenario's (tests, sweeps).
    """
    names = list(strategies if strategies is not None else scenario.strategies)
    order = [REFERENCE, "pv_only"] + [n for n in names if n not in (REFERENCE, "pv_only")]
    series = data if data is not None else load_data(scenario)
    tariff = load_tariff(scenario.tariff.ref(), scenario.base_dir).bind(scenario.site.timezone,
                                                                         scenario.tariff.extra_holidays)
    check_priced(scenario, series, tariff)
    inputs = price_inputs(series, tariff, scenario.planner.horizon_steps)
    bar = _progress_bar(progress, len(order) * inputs.steps, scenario.name)
    results: dict[str, StrategyResult] = {}
    for name in order:
        if bar is not None:
            bar.set_postfix_str(name)
        strategy = make_strategy(name, scenario, inputs, tariff)
        results[name] = simulate(strategy, scenario, inputs, tariff, battery=name not in (REFERENCE, "pv_only"),
                                 pv=name != REFERENCE, progress=_ticker(bar, inputs.steps))
    if bar is not None:
        bar.close()
    result = RunResult(scenario, series, inputs, tariff, results)
    result.end_of_life_shares = end_of_life_shares(result, progress)
    result.economics = evaluate(result)
    if "mpc" in results and scenario.battery.spec().capacity_kwh > 0:
        result.forecast_accuracy = study_accuracy(scenario, inputs, tariff)
    return result


def check_priced(scenario: Scenario, series: SeriesData, tariff: SiteTariff) -> None:
    """A ``ConfigError`` when the period starts before the tariff prices its days (its first prices came into force
    later): it ended in a traceback from the price lookup."""
    first_priced = tariff.tariff.priced_from
    first_day = series.starts[0].tz_convert(scenario.site.timezone).date() if len(series.starts) else None
    if first_priced is None or first_day is None or first_day >= first_priced:
        return
    same_date = first_day.replace(year=first_priced.year, day=min(first_day.day, 28))
    year = first_priced.year + (same_date < first_priced + timedelta(days=4))  # moved by weeks: ±3 days
    if scenario.data.csv is not None:
        field, move = "data.csv.move_to_year", (f"move the data to a year the tariff prices (data.csv.move_to_year: "
                                                f"{year}, weekdays kept), or ")
    else:
        field, move = "data.synthetic.year", f"simulate a year the tariff prices (data.synthetic.year: {year}), or "
    raise ConfigError(f"scenario {scenario.name}", [FieldError(field, (
        f"the period starts {first_day}, before tariff {tariff.tariff.name} prices any day (its prices start "
        f"{first_priced}): {move}start the study on or after {first_priced} (data.start)"))])


def _progress_bar(show: bool, total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` steps, or None when ``show`` is False."""
    if not show:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="step", desc=desc, mininterval=0.5)


def _ticker(bar: Any, steps: int) -> Callable[[int], None] | None:
    """The ``progress`` callback of :func:`simulate` that moves ``bar`` on by a day of 15-minute steps at a time
    and to the end of the ``steps`` of one strategy at its last step; None without a bar."""
    if bar is None:
        return None

    def tick(t: int) -> None:
        if t % 96 == 95 or t == steps - 1:
            bar.update(96 if t % 96 == 95 else (t + 1) % 96)
    return tick


def simulates_ageing(scenario: Scenario, data: Inputs) -> bool:
    """Whether the study simulates what its battery keeps at end of life (``battery.ageing_value``; ``auto``: when a
    demand charge applies in the period)."""
    mode = scenario.battery.ageing_value
    return mode == "simulated" or (mode == "auto" and bool(np.any(data.tariff.demand_rate > 0)))


def end_of_life_shares(result: RunResult, progress: bool = False) -> dict[str, tuple[float, float]]:
    """Per battery strategy of ``result``: the share of its savings against PV only (as the economics count them:
    counted bills, the SOC change credited) and of its discharge that it keeps with the energy its battery holds at
    end of life — the strategy simulated again on the same data with ``capacity_kwh`` × ``end_of_life_soh_pct`` /
    100, the same powers and SOC window. At most 1 each. Empty when the scenario does not simulate ageing
    (:func:`simulates_ageing`); a strategy that saves nothing or discharges nothing is left out (proportional)."""
    sc = result.scenario
    if not simulates_ageing(sc, result.inputs):
        return {}
    battery = sc.battery.model_copy(update={"capacity_kwh": sc.battery.capacity_kwh * sc.battery.end_of_life_soh_pct
                                            / 100.0})
    aged = sc.model_copy(update={"battery": battery})
    price = terminal_price_per_kwh(result)
    pv_bill = result.counted_bill("pv_only")

    def saved(r: StrategyResult) -> float:
        """What ``r`` saves against PV only over the period, as the economics count it. [currency]"""
        return pv_bill - result.counted(r.bill) + r.energy()["delta_soc"] * price

    savings = {name: saved(r) for name, r in result.results.items()
               if name not in (REFERENCE, "pv_only") and r.capacity_kwh > 0 and r.discharged_kwh > 0}
    names = [name for name, value in savings.items() if value > 0]
    steps = result.inputs.steps
    bar = _progress_bar(progress and bool(names), len(names) * steps,
                        f"{sc.name} at end of life ({sc.battery.end_of_life_soh_pct:g} % SOH)")
    shares: dict[str, tuple[float, float]] = {}
    for name in names:
        new = result.results[name]
        if bar is not None:
            bar.set_postfix_str(name)
        old = simulate(make_strategy(name, aged, result.inputs, result.tariff), aged, result.inputs, result.tariff,
                       battery=True, progress=_ticker(bar, steps))
        shares[name] = (min(max(saved(old) / savings[name], 0.0), 1.0),
                        min(old.discharged_kwh / new.discharged_kwh, 1.0))
    if bar is not None:
        bar.close()
    return shares


def degraded_bills(result: RunResult, name: str) -> tuple[float, ...] | None:
    """The period re-billed with the PV of each operating year 1..N (counted bills, first-year prices).

    In year y the array offers ``(1 − degradation)^(y−1)`` of its first-year power (after the inverter
    limit); PV delivered is the smaller of that and what was delivered in the run (the curtailment limit of
    zero export stays) and the grid takes the difference. For ``pv_only`` this is exact: the same bill as
    simulating the weaker PV again. None when PV does not degrade or the strategy has no PV.
    """
    sc = result.scenario
    d = sc.pv.degradation_pct_per_year / 100.0
    if d == 0 or name == REFERENCE:
        return None
    r = result.results[name]
    f = r.frame
    pv_available, pv = f["pv_available_kw"].to_numpy(), f["pv_kw"].to_numpy()
    grid = f["grid_kw"].to_numpy()
    starts, dt = result.data.starts, result.data.duration_h
    bills = [result.counted(r.bill)]
    for y in range(1, sc.finance.lifetime_years):
        delivered = np.minimum((1.0 - d) ** y * pv_available, pv)
        g = grid + (pv - delivered)
        bills.append(result.counted(result.tariff.bill(starts, dt, np.maximum(g, 0.0), np.maximum(-g, 0.0))))
    return tuple(bills)


def terminal_price_per_kwh(result: RunResult) -> float:
    """Value of one kWh of SOC at the end of the period [currency/kWh]: the cheapest counted import price of
    the period's last local day divided by the charge efficiency, i.e. what putting that kWh back into the
    battery from the grid would cost (excluding VAT when VAT is recoverable)."""
    starts = result.data.starts
    loc = result.tariff.local(starts)
    last = starts[loc.day == loc.day[-1]]
    prices = result.tariff.prices(last)
    counted = prices.import_price if result.scenario.finance.vat_recoverable else prices.import_price_gross
    return float(np.min(counted)) / result.scenario.battery.charge_efficiency


def assumptions(scenario: Scenario, ageing_simulated: bool = False) -> dict[str, Any]:
    """Every cost and finance input of the study, with its unit, for the report's assumptions table
    (``ageing_simulated``: :func:`simulates_ageing` of the study)."""
    sc, c, fin = scenario, scenario.costs, scenario.finance
    syn, d = sc.data.synthetic, sc.data
    year = (f"synthetic year {syn.year} (seed {syn.seed}, {syn.annual_yield_kwh_per_kwp:g} kWh/kWp/yr)"
            if syn is not None else "")
    if d.csv is None:
        source = year
    else:
        moved = f" (moved by whole weeks to {d.csv.move_to_year})" if d.csv.move_to_year is not None else ""
        source = (f"measured: {d.csv.path}{moved}" if d.irradiance is None and syn is None else
                  f"load measured: {d.csv.path}{moved}")
    if d.irradiance is not None:
        source = (f"{'load of the ' + year if d.csv is None else source}; PV from measured irradiance: "
                  f"{d.irradiance.path}")
    elif syn is not None and d.csv is not None:
        source += f"; PV of the {year}, another year of the CSV drawn with seed + (year − {syn.year})"
    om_esc = fin.om_escalation_pct_per_year
    return {
        "pv_kwp": sc.pv.kwp, "battery_kwh": sc.battery.capacity_kwh, "battery_kw": sc.battery.max_discharge_kw,
        "soc_window_pct": [sc.battery.soc_min_pct, sc.battery.soc_max_pct],
        "pv_capex_per_kwp": c.pv_per_kwp, "battery_capex_per_kwh": c.battery_per_kwh,
        "battery_capex_per_kw": c.battery_per_kw, "pv_om_per_kwp_year": c.pv_om_per_kwp_year,
        "battery_om_per_kwh_year": c.battery_om_per_kwh_year, "battery_replacement_pct": c.battery_replacement_pct,
        "discount_rate_pct": fin.discount_rate_pct, "lifetime_years": fin.lifetime_years,
        "tariff_escalation_pct_per_year": sc.tariff.escalation_pct_per_year,
        "om_escalation_pct_per_year": om_esc if om_esc is not None else sc.tariff.escalation_pct_per_year,
        "om_escalation_from_tariff": om_esc is None,
        "pv_degradation_pct_per_year": sc.pv.degradation_pct_per_year,
        "battery_cycle_life": sc.battery.cycle_life, "battery_calendar_life_years": sc.battery.calendar_life_years,
        "battery_end_of_life_soh_pct": sc.battery.end_of_life_soh_pct, "vat_recoverable": fin.vat_recoverable,
        "battery_ageing_value": "simulated" if ageing_simulated else "proportional",
        "grid_factor_t_per_mwh": sc.co2.grid_factor_t_per_mwh, "data_source": source,
        "data_kind": ("measured" if syn is None else "synthetic" if d.csv is None and d.irradiance is None
                      else "measured and synthetic"), "load_measured": d.csv is not None,
        "seed": syn.seed if syn is not None else None,
        "pv_forecast": None if sc.data.pv_forecast is None else sc.data.pv_forecast.model_dump(),
    }


def evaluate(result: RunResult) -> dict[str, dict]:
    """Economics of every strategy but the reference (:func:`simulations.economics.evaluate`).

    PV degradation: PV only is re-billed for every year (:func:`degraded_bills`); a battery strategy's bill
    in year y is its simulated bill plus what degradation adds to the PV-only bill that year, i.e. the
    battery keeps the value it has in the simulated year. (Re-billing the battery's schedule as it was, under
    weaker PV, would not let it respond: under a demand charge the lost PV would raise the month's peak, which
    the dispatcher holds live.)
    """
    spec = result.scenario.battery
    price = terminal_price_per_kwh(result)
    pv_bills = degraded_bills(result, "pv_only")
    pv_loss = None if pv_bills is None else np.asarray(pv_bills) - pv_bills[0]

    def totals(name: str) -> economics.StrategyTotals:
        r = result.results[name]
        e = r.energy()
        soc_change = e["delta_soc"] if r.capacity_kwh > 0 else 0.0
        return economics.StrategyTotals(
            bill=result.counted_bill(name), import_kwh=e["import"], export_kwh=e["export"], pv_kwh=e["pv"],
            discharge_kwh=r.discharged_kwh, capacity_kwh=r.capacity_kwh,
            usable_kwh=r.capacity_kwh * (spec.soc_max_pct - spec.soc_min_pct) / 100.0,
            bills_by_year=(pv_bills if name == "pv_only" else None if pv_loss is None or name == REFERENCE
                           else tuple(result.counted_bill(name) + pv_loss)),
            soc_change_kwh=soc_change,
            soc_change_value=soc_change * price,
            end_of_life_shares=result.end_of_life_shares.get(name))
    names = [n for n in result.results if n != REFERENCE]
    return economics.evaluate(study_parameters(result.scenario), result.year, totals(REFERENCE),
                              totals("pv_only"), {n: totals(n) for n in names})


def battery_savings(result: RunResult) -> dict[str, float]:
    """What each strategy of ``result`` but the reference saves against PV only over the period, exactly as the
    study's economics and report count it (``savings_vs_pv_only`` of :func:`evaluate`, which :func:`run` stores in
    ``result.economics``): counted bills (VAT out when it is recoverable), and the energy the battery holds at the
    end more than at the start credited at :func:`terminal_price_per_kwh` — a strategy that ends the period with a
    fuller battery has paid for energy it has not used yet. Scaled to a year like the study's figures.
    [currency/yr]"""
    return {name: figures["savings_vs_pv_only"] for name, figures in result.economics.items()}
