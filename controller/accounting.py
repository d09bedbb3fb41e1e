"""Accounting, once per cycle: today's energies and money, the demand interval and the month-to-date peak.

- :class:`DemandTracker` — the month-to-date peak of the average import over the tariff's demand interval
  (30 min by default, aligned to the local clock), the demand-charge basis, and the peaks of the months before
  (a 12-month demand basis bills on them);
- :class:`EnergyCounters` — one local day's energies [kWh] and money [currency], and the same day without the
  battery (the money saved);
- :class:`MonthCounters` — the billing month's energy money with and without the battery; with the demand peak
  the same load and PV would have set without the battery (a second :class:`DemandTracker`), what the battery
  saved this month, demand charge included (:meth:`Accounting.month_value`);
- :class:`Accounting` — what the controller calls every cycle: integrates the measured powers over the time
  since the previous cycle (a gap of more than :data:`MAX_ACCOUNTED_GAP_CYCLES` cycles is not integrated: the
  controller was not running) and looks up the tariff's prices (cached per minute).

The system clock may be set back while the controller runs (an NTP step, an operator): the time since the
previous cycle is then not integrated, and no counter goes back to the day or billing month before — what is
measured after the step counts towards the day and month under way (restarting the earlier one's counters
would have wiped today's and the month's peak). A clock set back further than that (a dead RTC, a clock that
was wrong and is now right) starts the counters again at its day and month (:func:`just_before`).

All are kept across restarts in the state file (``controller.state_store``) as :class:`StoredDemand`,
:class:`StoredEnergy` and :class:`StoredMonth`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from pydantic import AwareDatetime, Field, StringConstraints

from controller.state_store import StoredValue
from optimizer.billing import billed_demand_kw, sets_month_peak
from optimizer.tariff import DemandCharge, SiteTariff

MonthLabel = Annotated[str, StringConstraints(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]
"""A billing month, ``"YYYY-MM"``."""
MonthPeakKw = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A month's peak demand [kW]."""

PAST_MONTHS_KEPT = 12
"""How many earlier billing months' peaks the demand tracker keeps: a 12-month demand basis reads the 11 before
the running month."""

def just_before(label: str, current: str | None) -> bool:
    """Whether ``label`` is the day (``YYYY-MM-DD``) or billing month (``YYYY-MM``) right before ``current``: a
    clock set back across midnight or the month's end, whose cycles count in ``current``."""
    if not current or len(label) != len(current):
        return False
    if len(current) == 7:
        year, month = int(current[:4]), int(current[5:])
        return label == (f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}")
    return label == (date.fromisoformat(current) - timedelta(days=1)).isoformat()


MAX_ACCOUNTED_GAP_CYCLES = 5
"""A gap between two cycles longer than this many cycles is not integrated (the controller was not running)."""


class StoredDemand(StoredValue):
    """The ``demand`` value: :meth:`DemandTracker.to_dict`."""

    month: str | None = None
    peak_kw: float = Field(0.0, ge=0, allow_inf_nan=False)
    peak_at: AwareDatetime | None = None
    interval_start: AwareDatetime | None = None
    interval_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    interval_measured_h: float | None = Field(None, ge=0, allow_inf_nan=False)
    """How much of the interval ``interval_kwh`` covers [h]; None in files written before it was kept."""
    past_peaks_kw: dict[MonthLabel, MonthPeakKw] = Field(default_factory=dict)
    """The peaks of earlier billing months [kW]; empty in files written before they were kept."""


class StoredEnergy(StoredValue):
    """The ``energy`` value: :meth:`EnergyCounters.to_dict` (kWh ≥ 0, money any finite number)."""

    day: str = ""
    import_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    export_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    pv_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    load_kwh: float = Field(0.0, allow_inf_nan=False)
    charge_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    discharge_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    load_from_pv_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    load_from_battery_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    load_from_grid_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    cost: float = Field(0.0, allow_inf_nan=False)
    cost_no_battery: float = Field(0.0, allow_inf_nan=False)


class StoredMonth(StoredValue):
    """The ``month`` value: :meth:`MonthCounters.to_dict`."""

    month: MonthLabel | None = None
    cost: float = Field(0.0, allow_inf_nan=False)
    cost_no_battery: float = Field(0.0, allow_inf_nan=False)


def load_supply(grid_kw: float, pv_kw: float, battery_kw: float) -> tuple[float, float, float]:
    """Where the load's power comes from at this moment [kW]: (from the PV, from the battery, from the grid).

    The load is ``grid + PV + battery`` (conventions: grid + import, battery + discharge). The PV serves the load
    first, the battery's discharge next, the grid the rest; PV beyond the load charges the battery or is exported,
    and a battery that charges takes its power from the PV's surplus or the grid, never from the load's supply.
    The three sum to the load (0 for a load measured below zero). The grid's part is at most the import: energy
    bought to charge the battery is not load."""
    load_kw = max(0.0, grid_kw + pv_kw + battery_kw)
    from_pv = min(max(0.0, pv_kw), load_kw)
    from_battery = min(max(0.0, battery_kw), load_kw - from_pv)
    return from_pv, from_battery, load_kw - from_pv - from_battery


def energy_money(grid_kw: float, pv_kw: float, battery_kw: float, dt_h: float, import_price: float,
                 export_price: float, export_cap_kw: float) -> tuple[float, float, float]:
    """One interval of ``dt_h`` [h] at the measured powers [kW] and the prices [currency/kWh]: what the measured
    import and export cost, what the same load and PV would have cost with no battery (grid = load − PV, export
    beyond the cap curtailed) [currency], and that grid power [kW]."""
    grid_nb = max(grid_kw + battery_kw, -export_cap_kw)
    cost = (max(0.0, grid_kw) * import_price - max(0.0, -grid_kw) * export_price) * dt_h
    cost_nb = (max(0.0, grid_nb) * import_price - max(0.0, -grid_nb) * export_price) * dt_h
    return cost, cost_nb, grid_nb



def plan_saving(plan: Any, start: datetime, end: datetime, export_cap_kw: float) -> float:
    """What the plan's steps between ``start`` and ``end`` save against no battery, by the same rule as the day's
    measured saving (:func:`energy_money`) [currency]: each step's (or its part's) cost with the plan's grid power
    against the cost of the same load and available PV with no battery (grid = load − PV, export beyond the cap
    curtailed), at the plan's import and export prices. A charge from PV that would otherwise be curtailed costs
    nothing; a charge bought from the grid costs what it buys.

    ``plan`` is an :class:`optimizer.plan.Plan` (``starts``, ``duration_h``, ``grid_kw``, ``battery_kw``,
    ``curtail_kw``, ``import_price``, ``export_price``)."""
    begins = plan.starts.as_unit("ns").asi8.astype(np.float64) / 3.6e12         # [h since the epoch]
    first = np.maximum(begins, pd.Timestamp(start).value / 3.6e12)
    last = np.minimum(begins + np.asarray(plan.duration_h, dtype=float), pd.Timestamp(end).value / 3.6e12)
    hours = last - first
    saved = 0.0
    for i in np.flatnonzero(hours > 0).tolist():
        # grid + battery − curtailed = load − available PV: the grid power with no battery, before the export cap
        cost, cost_nb, _ = energy_money(float(plan.grid_kw[i]), float(plan.pv_kw[i]),
                                        float(plan.battery_kw[i] - plan.curtail_kw[i]), float(hours[i]),
                                        float(plan.import_price[i]), float(plan.export_price[i]), export_cap_kw)
        saved += cost_nb - cost
    return saved


class DemandTracker:
    """Month-to-date peak of the average import over fixed demand intervals.

    Parameters
    ----------
    billing_month : Callable[[datetime], str]
        The billing month (e.g. ``"2026-05"``) of an instant, in the tariff's local time.
    timezone : str
        IANA zone; intervals are aligned to the local clock (:00, :30 for 30 min).
    interval_minutes : int or Callable[[str], int]
        Demand interval [min], or the interval of each billing month (e.g. the window of the demand charge the
        month is billed on).
    """

    KEY = "demand"

    def __init__(self, billing_month: Callable[[datetime], str], timezone: str,
                 interval_minutes: int | Callable[[str], int] = 30):
        self.billing_month = billing_month
        self.zone = ZoneInfo(timezone)
        self._minutes_of = interval_minutes if callable(interval_minutes) else (lambda _month: interval_minutes)
        self._intervals: dict[str, timedelta] = {}
        self.month: str | None = None
        self.peak_kw = 0.0
        self.peak_at: str | None = None
        self._start: datetime | None = None
        self._kwh = 0.0
        self._measured_h: float | None = 0.0   # how much of the interval _kwh covers [h]; None: not known
        #: The peaks of the earlier billing months measured, at most :data:`PAST_MONTHS_KEPT` of them. [kW]
        self.past_peaks: dict[str, float] = {}

    def interval(self, t: datetime) -> timedelta:
        """The demand interval at ``t`` (that of its billing month)."""
        month = self.billing_month(t)
        if month not in self._intervals:
            self._intervals[month] = timedelta(minutes=self._minutes_of(month))
        return self._intervals[month]

    def _interval_start(self, t: datetime) -> datetime:
        local = t.astimezone(self.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        interval = self.interval(t)
        return (midnight + ((local - midnight) // interval) * interval).astimezone(UTC)

    def add(self, t: datetime, import_kw: float, dt_h: float) -> bool:
        """Add ``import_kw`` over ``dt_h`` ending at ``t``; True when the month peak rose (an interval closed).

        Parameters
        ----------
        import_kw : float
            Grid import (export counts as 0). [kW]
        dt_h : float
            Duration. [h]
        """
        start = self._interval_start(t - timedelta(microseconds=1))
        rose = False
        if self._start is not None and start != self._start:
            rose = self._close()
        if self._start != start:
            self._start, self._kwh, self._measured_h = start, 0.0, 0.0
        self._kwh += max(0.0, import_kw) * dt_h
        if self._measured_h is not None:
            self._measured_h += dt_h
        return rose

    def _estimated_kwh(self, span_h: float) -> float:
        """The running interval's import over its first ``span_h`` hours [kWh]: what was measured, and the time it
        did not measure (the controller not running, no grid reading) at the interval's measured average, never as
        0 (a bill averages a window over the readings it has, the same)."""
        measured = self._measured_h
        if measured is None or measured <= 0.0 or measured >= span_h:
            return self._kwh
        return self._kwh * span_h / measured

    def _close(self) -> bool:
        assert self._start is not None
        month = self.billing_month(self._start)
        if just_before(month, self.month):  # the clock was set back: counts in the month under way
            month = self.month
        if month != self.month:
            if self.month is not None:
                self.past_peaks[self.month] = self.peak_kw
                for old in sorted(self.past_peaks)[:-PAST_MONTHS_KEPT]:
                    del self.past_peaks[old]
            self.month, self.peak_kw, self.peak_at = month, 0.0, None
        length_h = self.interval(self._start).total_seconds() / 3600.0
        avg_kw = self._estimated_kwh(length_h) / length_h
        if sets_month_peak(avg_kw, None if self.peak_at is None else self.peak_kw):
            self.peak_at = self._start.isoformat()
        if avg_kw > self.peak_kw:
            self.peak_kw = avg_kw
            return True
        return False

    def month_peak_kw(self, now: datetime) -> float:
        """The peak so far in the billing month of ``now`` (0 in a new month). [kW]"""
        return self.peak_kw if self.month == self.billing_month(now) else 0.0

    def month_peaks(self) -> dict[str, float]:
        """The peaks measured per billing month: the earlier months' and the month of the last closed interval's
        so far. [kW]"""
        return self.past_peaks if self.month is None else {**self.past_peaks, self.month: self.peak_kw}

    def month_peak_at(self, now: datetime) -> str | None:
        """When the peak so far in the billing month of ``now`` was set: the UTC start (ISO 8601) of the last
        interval that set it anew, by the bills' rule (:func:`optimizer.billing.sets_month_peak`: rides within
        0.05 kW of it do not count); None in a new month."""
        return self.peak_at if self.month == self.billing_month(now) else None

    def running(self, now: datetime) -> tuple[float, float, float]:
        """The interval running at ``now``: (length [h], elapsed [h], import so far [kWh]), as
        :class:`controller.targets.DemandWindow` takes them; the import so far covers any time the tracker did not
        measure at the interval's measured average (:meth:`_estimated_kwh`); nothing imported yet when the last
        measurement belongs to an earlier interval."""
        start = self._interval_start(now)
        elapsed_h = (now - start).total_seconds() / 3600.0
        kwh = self._estimated_kwh(elapsed_h) if self._start == start else 0.0
        return self.interval(now).total_seconds() / 3600.0, elapsed_h, kwh

    def current_average_kw(self) -> float:
        """Average import in the running interval so far, over the whole interval length. [kW]"""
        if self._start is None:
            return 0.0
        return self._kwh / (self.interval(self._start).total_seconds() / 3600.0)

    def to_dict(self) -> dict:
        return {"month": self.month, "peak_kw": self.peak_kw, "peak_at": self.peak_at,
                "interval_start": self._start.isoformat() if self._start else None, "interval_kwh": self._kwh,
                "interval_measured_h": self._measured_h, "past_peaks_kw": dict(self.past_peaks)}

    def restore(self, data: StoredDemand | None) -> None:
        """Resume from a checked :meth:`to_dict` output (the running interval too, if it is still running)."""
        if data is None:
            return
        self.month, self.peak_kw = data.month, data.peak_kw
        self.peak_at = data.peak_at.isoformat() if data.peak_at else None
        self.past_peaks = dict(data.past_peaks_kw)
        if data.interval_start is not None:
            self._start = data.interval_start.astimezone(UTC)
            self._kwh, self._measured_h = data.interval_kwh, data.interval_measured_h


@dataclass
class EnergyCounters:
    """Energies [kWh] and money [currency] of one local day, and the same day without the battery.

    ``cost`` is what the measured import and export cost at the tariff's energy prices; ``cost_no_battery``
    is what the same load and PV would have cost with no battery (grid = load − PV, export beyond the cap
    curtailed). ``saved = cost_no_battery − cost`` (energy charges only; demand charges are in the bill).
    ``load_from_pv_kwh``, ``load_from_battery_kwh`` and ``load_from_grid_kwh`` split the load's energy by where it
    came from at the time (:func:`load_supply`); they sum to ``load_kwh`` except over cycles whose load was
    measured below zero.
    """

    day: str = ""
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    pv_kwh: float = 0.0
    load_kwh: float = 0.0
    charge_kwh: float = 0.0
    discharge_kwh: float = 0.0
    load_from_pv_kwh: float = 0.0
    load_from_battery_kwh: float = 0.0
    load_from_grid_kwh: float = 0.0
    cost: float = 0.0
    cost_no_battery: float = 0.0

    KEY = "energy"

    def add(self, day: str, grid_kw: float, pv_kw: float, battery_kw: float, dt_h: float,
            import_price: float, export_price: float, export_cap_kw: float) -> tuple[float, float, float]:
        """Integrate one cycle's measured powers [kW] over ``dt_h`` [h] at the given prices [currency/kWh]; the
        cycle's :func:`energy_money`. A cycle of the day before (the clock set back) counts in the day under way."""
        if day != self.day and not just_before(day, self.day):
            for f in fields(self):
                setattr(self, f.name, f.default)
            self.day = day
        load_kw = grid_kw + pv_kw + battery_kw
        self.import_kwh += max(0.0, grid_kw) * dt_h
        self.export_kwh += max(0.0, -grid_kw) * dt_h
        self.pv_kwh += pv_kw * dt_h
        self.load_kwh += load_kw * dt_h
        self.discharge_kwh += max(0.0, battery_kw) * dt_h
        self.charge_kwh += max(0.0, -battery_kw) * dt_h
        from_pv, from_battery, from_grid = load_supply(grid_kw, pv_kw, battery_kw)
        self.load_from_pv_kwh += from_pv * dt_h
        self.load_from_battery_kwh += from_battery * dt_h
        self.load_from_grid_kwh += from_grid * dt_h
        money = energy_money(grid_kw, pv_kw, battery_kw, dt_h, import_price, export_price, export_cap_kw)
        self.cost += money[0]
        self.cost_no_battery += money[1]
        return money

    @property
    def saved(self) -> float:
        return self.cost_no_battery - self.cost

    def to_dict(self) -> dict:
        d = asdict(self)
        d["saved"] = self.saved
        return d

    @classmethod
    def from_stored(cls, data: StoredEnergy | None) -> EnergyCounters:
        """Counters from a checked :meth:`to_dict` output (zero when there is none)."""
        if data is None:
            return cls()
        return cls(**data.model_dump(include={f.name for f in fields(cls)}))


@dataclass
class MonthCounters:
    """One billing month's energy money [currency]: ``cost`` measured, ``cost_no_battery`` the same load and PV
    with no battery (:func:`energy_money`); demand charges are :meth:`Accounting.month_value`'s."""

    month: str | None = None
    cost: float = 0.0
    cost_no_battery: float = 0.0

    KEY = "month"

    def add(self, month: str, cost: float, cost_no_battery: float) -> None:
        """Add one cycle's money [currency] to billing month ``month`` (a new month starts from zero; the month
        before, after the clock was set back, counts in the month under way)."""
        if month != self.month and not just_before(month, self.month):
            self.month, self.cost, self.cost_no_battery = month, 0.0, 0.0
        self.cost += cost
        self.cost_no_battery += cost_no_battery

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_stored(cls, data: StoredMonth | None) -> MonthCounters:
        """Counters from a checked :meth:`to_dict` output (zero when there is none)."""
        return cls() if data is None or data.month is None else cls(data.month, data.cost, data.cost_no_battery)


NO_BATTERY_DEMAND_KEY = "demand_no_battery"
"""State-file key of the demand tracker of the import without the battery (a :class:`StoredDemand`)."""


class Accounting:
    """The controller's once-per-cycle accounting.

    Parameters
    ----------
    tariff : SiteTariff
        Prices and the demand interval: the window of the demand charge each billing month is billed on
        (:meth:`~optimizer.tariff.SiteTariff.billed_demand_charge`).
    timezone : str
        IANA zone of the site: the local day of the counters, the demand intervals.
    cycle_s : float
        Control cycle. [s]
    export_cap_kw : float
        Export cap, for the no-battery comparison (export beyond it curtailed). [kW]
    demand_interval_minutes : int
        Demand interval of a month billed on no demand charge. [min]
    billed_peaks_kw : mapping
        ``{"YYYY-MM": kW}``: month peaks billed before the controller measured them (``control.billed_month_peaks_kw``,
        from the utility's bills); a month it measured counts the higher of the two. [kW]
    """

    def __init__(self, tariff: SiteTariff, timezone: str, cycle_s: float, export_cap_kw: float,
                 demand_interval_minutes: int, billed_peaks_kw: Mapping[str, float] | None = None):
        self.tariff = tariff
        self.billed_peaks_kw = dict(billed_peaks_kw or {})
        self.cycle_s = cycle_s
        self.export_cap_kw = export_cap_kw
        self._zone = ZoneInfo(timezone)
        def window_minutes(month: str) -> int:
            charge = tariff.billed_demand_charge(month)
            return charge.window_minutes if charge else demand_interval_minutes

        self.demand = DemandTracker(tariff.billing_month, timezone, window_minutes)
        #: The demand the same load and PV would have set with no battery (for :meth:`month_value`).
        self.demand_no_battery = DemandTracker(tariff.billing_month, timezone, window_minutes)
        self.energy = EnergyCounters()
        self.month = MonthCounters()
        self._last_ts: datetime | None = None
        self._price_cache: tuple[datetime, dict[str, Any]] | None = None
        self._peak_period: tuple[str, str] | None = None  # (peak_at, its tariff period)
        # billing month → the demand charge it is billed on and its rate with VAT (0 without one)
        self._charges: dict[str, tuple[DemandCharge | None, float]] = {}

    def month_peak(self, now: datetime) -> dict[str, Any]:
        """The month-to-date peak for the state's ``demand``: ``month_peak_kw`` [kW], ``month_peak_at`` (when it was
        set, :meth:`DemandTracker.month_peak_at`) and ``month_peak_period`` (the tariff period then, as the bills'
        ``peak_period``), None for the last two in a new month; and ``billed_kw``, the demand the month is billed
        on so far under its demand charge (:meth:`billed_demand_kw`; None without one) [kW]."""
        at = self.demand.month_peak_at(now)
        period = None
        if at is not None:
            if self._peak_period is None or self._peak_period[0] != at:
                prices = self.tariff.prices(pd.DatetimeIndex([pd.Timestamp(at)]))
                self._peak_period = (at, str(prices.period[0]))
            period = self._peak_period[1]
        billed = self.billed_demand_kw(now) if self._charge(self.tariff.billing_month(now)) else None
        return {"month_peak_kw": self.demand.month_peak_kw(now), "month_peak_at": at, "month_peak_period": period,
                "billed_kw": billed}

    def _charge(self, month: str) -> DemandCharge | None:
        """The demand charge billing month ``month`` is billed on (looked up once per month)."""
        return self._charge_and_rate(month)[0]

    def _charge_and_rate(self, month: str) -> tuple[DemandCharge | None, float]:
        """The demand charge billing month ``month`` is billed on, and its rate with VAT
        (:meth:`~optimizer.tariff.SiteTariff.demand_rate_gross`) [currency/(kW·month)]; looked up once per month."""
        if month not in self._charges:
            self._charges[month] = (self.tariff.billed_demand_charge(month), self.tariff.demand_rate_gross(month))
        return self._charges[month]

    def billed_demand_kw(self, now: datetime) -> float:
        """The demand the billing month of ``now`` is billed on so far, what the planner and the dispatcher take as
        already billed: under a demand charge :func:`optimizer.billing.billed_demand_kw` of the months' peaks
        (the month-to-date peak, and under a 12-month basis the 11 months before it too; with the peaks billed
        before the controller measured them); without one the month-to-date peak. [kW]"""
        return self._billed(self.demand, now)

    def _billed(self, tracker: DemandTracker, now: datetime) -> float:
        """:meth:`billed_demand_kw` of the peaks ``tracker`` measured. [kW]"""
        month = self.tariff.billing_month(now)
        charge = self._charge(month)
        if charge is None:
            return tracker.month_peak_kw(now)
        return billed_demand_kw(charge, month, tracker.month_peaks(), self.billed_peaks_kw) or 0.0

    def today(self, now: datetime, plan: Any | None) -> dict[str, Any]:
        """The state's ``today``: the day's counters (:class:`EnergyCounters`) and ``expected_saved``, the saving
        so far plus what the plan's steps until the end of the local day save (:func:`plan_saving`) [currency];
        None without a plan."""
        out = self.energy.to_dict()
        local = now.astimezone(self._zone)
        day_end = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), self._zone)
        so_far = self.energy.saved if self.energy.day == local.date().isoformat() else 0.0
        out["expected_saved"] = None if plan is None else so_far + plan_saving(
            plan, now, day_end.astimezone(UTC), self.export_cap_kw)
        return out

    def month_value(self, now: datetime) -> dict[str, Any]:
        """What the battery saved so far in the billing month of ``now``, for the state's ``month``: ``energy_cost``,
        ``energy_cost_no_battery``, ``energy_saved`` [currency]; under a demand charge ``billed_kw`` and
        ``billed_kw_no_battery`` (the demand billed so far, :meth:`billed_demand_kw`, and the same rule on the
        import without the battery) [kW], ``demand_charge``, ``demand_charge_no_battery`` (billed × the rate with
        VAT, :meth:`~optimizer.tariff.SiteTariff.demand_rate_gross`) and ``demand_saved`` [currency], else None
        and 0; ``saved`` = energy + demand saved [currency]. The demand charge so far is what the month would be
        billed if it ended now: its peak can still rise."""
        month = self.tariff.billing_month(now)
        same = self.month.month == month
        cost = self.month.cost if same else 0.0
        cost_nb = self.month.cost_no_battery if same else 0.0
        charge, rate = self._charge_and_rate(month)
        billed = billed_nb = None
        demand = demand_nb = 0.0
        if charge is not None:
            billed, billed_nb = self._billed(self.demand, now), self._billed(self.demand_no_battery, now)
            demand, demand_nb = billed * rate, billed_nb * rate
        return {"month": month, "energy_cost": cost, "energy_cost_no_battery": cost_nb, "energy_saved": cost_nb - cost,
                "billed_kw": billed, "billed_kw_no_battery": billed_nb, "demand_charge": demand,
                "demand_charge_no_battery": demand_nb, "demand_saved": demand_nb - demand,
                "saved": (cost_nb - cost) + (demand_nb - demand)}

    def prices(self, now: datetime) -> dict[str, Any]:
        """The tariff at ``now``: ``period``, ``import_price`` (with VAT), ``export_price`` [currency/kWh],
        ``currency``; looked up once per minute."""
        minute = now.replace(second=0, microsecond=0)
        if self._price_cache is None or self._price_cache[0] != minute:
            p = self.tariff.prices(pd.DatetimeIndex([pd.Timestamp(minute)]))
            self._price_cache = (minute, {"period": str(p.period[0]), "import_price": float(p.import_price_gross[0]),
                                          "export_price": float(p.export_price[0]),
                                          "currency": self.tariff.currency})
        return self._price_cache[1]

    def add(self, now: datetime, grid_kw: float | None, pv_kw: float | None, battery_kw: float | None) -> float:
        """Account one cycle's measured powers [kW] (``None``: missing) over the time since the previous cycle.

        The demand interval takes the grid power whenever it is measured; the energy counters, the month's money
        and the demand without the battery need all three. The time is priced at its start (as a bill prices a
        step). Returns that time [h] (0 at the first cycle and after a gap)."""
        dt_h = 0.0
        if self._last_ts is not None:
            dt_s = (now - self._last_ts).total_seconds()
            if 0 < dt_s <= MAX_ACCOUNTED_GAP_CYCLES * self.cycle_s:
                dt_h = dt_s / 3600.0
        self._last_ts = now
        if dt_h == 0 or grid_kw is None:
            return dt_h
        self.demand.add(now, grid_kw, dt_h)
        if pv_kw is None or battery_kw is None:
            return dt_h
        start = now - timedelta(hours=dt_h)
        prices = self.prices(start)
        day = start.astimezone(self._zone).date().isoformat()
        cost, cost_nb, grid_nb = self.energy.add(day, grid_kw, pv_kw, battery_kw, dt_h, prices["import_price"],
                                                 prices["export_price"], self.export_cap_kw)
        self.month.add(self.tariff.billing_month(start), cost, cost_nb)
        self.demand_no_battery.add(now, grid_nb, dt_h)
        return dt_h

    def restore(self, demand: StoredDemand | None, energy: StoredEnergy | None, month: StoredMonth | None = None,
                demand_no_battery: StoredDemand | None = None) -> None:
        """Resume from checked stored values (``None``: start from zero)."""
        self.demand.restore(demand)
        self.energy = EnergyCounters.from_stored(energy)
        self.month = MonthCounters.from_stored(month)
        self.demand_no_battery.restore(demand_no_battery)

    def stored(self) -> dict[str, dict]:
        """What to keep in the state file: key → JSON-ready value."""
        return {DemandTracker.KEY: self.demand.to_dict(), EnergyCounters.KEY: self.energy.to_dict(),
                MonthCounters.KEY: self.month.to_dict(), NO_BATTERY_DEMAND_KEY: self.demand_no_battery.to_dict()}
