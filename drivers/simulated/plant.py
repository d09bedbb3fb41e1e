"""Plant physics of a PV + battery factory site: battery (PCS + BMS), PV inverter, load, meter as the balance.

Pure and synchronous, no Modbus: the simulated Modbus site steps it every ~0.1–1 s of site time and the
offline year simulator steps it every 900 s. Plain floats only, so one :meth:`Plant.step` costs microseconds.

Signs and units follow docs/conventions.md: ``grid_kw`` + import, ``battery_kw`` + discharge, kW and kWh.

Time discretisation: within one step every power is constant (the step average). The PCS ramp limits the
change of battery power from one step to the next to ``ramp_kw_per_s × dt_s`` (the BMS allowance, a hard
limit, may cut faster); the BMS allowance (taper
near full and empty) is evaluated at the start of the step; and a step that would carry the SOC past 0 or
the capacity is shortened in power so that the SOC lands exactly on the limit. So the model is exact,
and energy is conserved exactly, for any ``dt_s``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

from optimizer.shift import minute_of_day, on_shift
from optimizer.site import BatterySpec, BatteryUnit

Source = Callable[[datetime], float]
"""A time-varying input of the plant (site load or available PV): UTC time → power. [kW]"""


class BatteryModel:
    """A battery system: PCS (AC power limits, ramp) and BMS (SOC, taper near full and empty).

    Parameters
    ----------
    nameplate_kwh : float
        Usable nameplate energy when new. [kWh]
    max_charge_kw, max_discharge_kw : float
        PCS limits (≥ 0). [kW]
    charge_efficiency, discharge_efficiency : float
        AC→stored and stored→AC efficiencies, in (0, 1]. [-]
    standby_loss_kw : float
        Self-consumption drawn from the stored energy at all times. [kW]
    soh_pct : float
        State of health: the usable capacity is ``nameplate_kwh × soh_pct / 100``. [%]
    initial_soc_pct : float
        SOC at start, in % of the usable capacity. [%]
    taper_high_pct : float
        Above this SOC the allowed charge power falls linearly to 0 at 100 %. [%]
    taper_low_pct : float
        Below this SOC the allowed discharge power falls linearly to 0 at 0 %. [%]
    ramp_kw_per_s : float
        Largest change of PCS power per second; ``math.inf`` = no ramp. [kW/s]
    """

    def __init__(
        self,
        nameplate_kwh: float,
        max_charge_kw: float,
        max_discharge_kw: float,
        charge_efficiency: float = 0.95,
        discharge_efficiency: float = 0.95,
        standby_loss_kw: float = 0.0,
        soh_pct: float = 100.0,
        initial_soc_pct: float = 50.0,
        taper_high_pct: float = 90.0,
        taper_low_pct: float = 10.0,
        ramp_kw_per_s: float = math.inf,
    ):
        if nameplate_kwh <= 0:
            raise ValueError(f"nameplate_kwh must be positive, got {nameplate_kwh}")
        if max_charge_kw < 0 or max_discharge_kw < 0:
            raise ValueError("PCS limits max_charge_kw and max_discharge_kw must be ≥ 0")
        if not (0 < charge_efficiency <= 1 and 0 < discharge_efficiency <= 1):
            raise ValueError("efficiencies must be in (0, 1]")
        if standby_loss_kw < 0:
            raise ValueError("standby_loss_kw must be ≥ 0")
        if not 0 < soh_pct <= 100:
            raise ValueError(f"soh_pct must be in (0, 100], got {soh_pct}")
        if not 0 <= initial_soc_pct <= 100:
            raise ValueError(f"initial_soc_pct must be in [0, 100], got {initial_soc_pct}")
        if not (0 <= taper_low_pct < taper_high_pct <= 100):
            raise ValueError("need 0 ≤ taper_low_pct < taper_high_pct ≤ 100")
        if not ramp_kw_per_s > 0:
            raise ValueError("ramp_kw_per_s must be positive (math.inf = no ramp)")
        self.nameplate_kwh = float(nameplate_kwh)
        self.max_charge_kw = float(max_charge_kw)
        self.max_discharge_kw = float(max_discharge_kw)
        self.charge_efficiency = float(charge_efficiency)
        self.discharge_efficiency = float(discharge_efficiency)
        self.standby_loss_kw = float(standby_loss_kw)
        self.taper_high_pct = float(taper_high_pct)
        self.taper_low_pct = float(taper_low_pct)
        self.ramp_kw_per_s = float(ramp_kw_per_s)
        self._soh_pct = float(soh_pct)
        self._capacity_kwh = self.nameplate_kwh * self._soh_pct / 100.0
        self._soc_kwh = self._capacity_kwh * initial_soc_pct / 100.0
        self._power_kw = 0.0
        self.bms_charge_share = 1.0
        """Share of ``max_charge_kw`` a derated BMS allows, in [0, 1] (a fault of the simulated site). [-]"""
        self.bms_discharge_share = 1.0
        """Share of ``max_discharge_kw`` a derated BMS allows, in [0, 1]. [-]"""
        self.charged_kwh = 0.0
        """AC energy taken in while charging. [kWh]"""
        self.discharged_kwh = 0.0
        """AC energy delivered while discharging. [kWh]"""
        self.losses_kwh = 0.0
        """Conversion losses plus standby consumption. [kWh]"""

    @classmethod
    def from_spec(
        cls,
        spec: BatteryUnit,
        initial_soc_pct: float = 50.0,
        soh_pct: float = 100.0,
        taper_high_pct: float = 90.0,
        taper_low_pct: float = 10.0,
        ramp_kw_per_s: float = math.inf,
    ) -> BatteryModel:
        """The battery a site file describes (a site's ``BatterySpec`` or one unit's ``BatteryUnit``, which has no
        standby loss), plus the simulation-only parameters."""
        return cls(
            nameplate_kwh=spec.capacity_kwh,
            max_charge_kw=spec.max_charge_kw,
            max_discharge_kw=spec.max_discharge_kw,
            charge_efficiency=spec.charge_efficiency,
            discharge_efficiency=spec.discharge_efficiency,
            standby_loss_kw=spec.standby_loss_kw if isinstance(spec, BatterySpec) else 0.0,
            soh_pct=soh_pct,
            initial_soc_pct=initial_soc_pct,
            taper_high_pct=taper_high_pct,
            taper_low_pct=taper_low_pct,
            ramp_kw_per_s=ramp_kw_per_s,
        )

    @property
    def capacity_kwh(self) -> float:
        """Usable capacity now (nameplate × SOH). [kWh]"""
        return self._capacity_kwh

    @property
    def soh_pct(self) -> float:
        """State of health. [%]"""
        return self._soh_pct

    @property
    def soc_kwh(self) -> float:
        """Stored energy. [kWh]"""
        return self._soc_kwh

    @property
    def soc_pct(self) -> float:
        """Stored energy in % of the usable capacity. [%]"""
        return 100.0 * self._soc_kwh / self._capacity_kwh

    @property
    def power_kw(self) -> float:
        """AC power of the last step, + discharge. [kW]"""
        return self._power_kw

    def allowed_charge_kw(self) -> float:
        """Charge power the BMS allows now (≥ 0): the PCS limit × ``bms_charge_share``, tapered to 0 between
        taper_high_pct and 100 %. [kW]"""
        soc_pct = 100.0 * self._soc_kwh / self._capacity_kwh
        limit = self.max_charge_kw * self.bms_charge_share
        if soc_pct <= self.taper_high_pct:
            return limit
        return limit * max(0.0, (100.0 - soc_pct) / (100.0 - self.taper_high_pct))

    def allowed_discharge_kw(self) -> float:
        """Discharge power the BMS allows now (≥ 0): the PCS limit × ``bms_discharge_share``, tapered to 0 between
        taper_low_pct and 0 %. [kW]"""
        soc_pct = 100.0 * self._soc_kwh / self._capacity_kwh
        limit = self.max_discharge_kw * self.bms_discharge_share
        if soc_pct >= self.taper_low_pct:
            return limit
        return limit * max(0.0, soc_pct / self.taper_low_pct)

    def step(self, setpoint_kw: float, dt_s: float) -> float:
        """Run the battery for ``dt_s`` seconds towards ``setpoint_kw`` (+ discharge).

        The setpoint is limited by the ramp from the previous step's power, then clamped to the BMS allowance
        (a hard limit, which may cut faster than the ramp), then reduced if needed so the SOC lands exactly on
        0 or the capacity.

        Returns
        -------
        float
            Actual AC power over the step, + discharge. [kW]
        """
        if not math.isfinite(setpoint_kw):
            raise ValueError(f"battery setpoint must be a finite number, got {setpoint_kw}")
        if dt_s < 0:
            raise ValueError(f"dt_s must be ≥ 0, got {dt_s}")
        if dt_s == 0:
            return self._power_kw
        dt_h = dt_s / 3600.0
        ramp = self.ramp_kw_per_s * dt_s
        power = min(max(setpoint_kw, self._power_kw - ramp), self._power_kw + ramp)
        power = min(max(power, -self.allowed_charge_kw()), self.allowed_discharge_kw())
        soc = self._soc_kwh
        standby = self.standby_loss_kw * dt_h
        if power < 0.0:
            eta = self.charge_efficiency
            room = self._capacity_kwh - soc + standby
            if -power * eta * dt_h > room:
                power = -max(0.0, room) / (eta * dt_h)
            charged = -power * dt_h
            standby = min(standby, soc + charged * eta)
            self._soc_kwh = min(self._capacity_kwh, soc + charged * eta - standby)
            self.charged_kwh += charged
            self.losses_kwh += charged * (1.0 - eta) + standby
        else:
            eta = self.discharge_efficiency
            standby = min(standby, soc)
            if power * dt_h / eta > soc - standby:
                power = (soc - standby) * eta / dt_h
            discharged = power * dt_h
            self._soc_kwh = max(0.0, soc - discharged / eta - standby)
            self.discharged_kwh += discharged
            self.losses_kwh += discharged * (1.0 / eta - 1.0) + standby
        self._power_kw = power
        return power


class PVModel:
    """PV inverter(s): follows the available power, capped by the active power limit and the AC rating.

    Parameters
    ----------
    rated_kw : float
        AC rating; ``limit_pct`` is a percentage of it. [kW]
    """

    def __init__(self, rated_kw: float):
        if rated_kw <= 0:
            raise ValueError(f"rated_kw must be positive, got {rated_kw}")
        self.rated_kw = float(rated_kw)
        self.energy_kwh = 0.0
        """AC energy produced. [kWh]"""
        self._power_kw = 0.0

    @property
    def power_kw(self) -> float:
        """AC power of the last step. [kW]"""
        return self._power_kw

    def step(self, available_kw: float, limit_pct: float | None, dt_s: float) -> float:
        """Produce for ``dt_s`` seconds.

        Parameters
        ----------
        available_kw : float
            What the array could deliver now (≥ 0). [kW]
        limit_pct : float | None
            Active power limit in % of ``rated_kw``, clamped to [0, 100]; ``None`` = no limit. [%]
        dt_s : float
            Step length. [s]

        Returns
        -------
        float
            Actual AC power. [kW]
        """
        if not available_kw >= 0.0:
            raise ValueError(f"available PV power must be ≥ 0, got {available_kw}")
        cap = self.rated_kw
        if limit_pct is not None:
            if not math.isfinite(limit_pct):
                raise ValueError(f"PV limit must be a finite number, got {limit_pct}")
            cap = self.rated_kw * min(max(limit_pct, 0.0), 100.0) / 100.0
        power = min(available_kw, cap)
        self.energy_kwh += power * dt_s / 3600.0
        self._power_kw = power
        return power


class SeriesEnded(IndexError):
    """A series source was asked for a time outside its data."""


class ArraySource:
    """A :data:`Source` backed by an array of interval values: ``values_kw[i]`` covers [start + i·step, …).

    Times before the first or after the last interval are errors (a simulation must not run off its data).
    """

    def __init__(self, values_kw: Sequence[float], start: datetime, step_s: float):
        if start.tzinfo is None:
            raise ValueError("ArraySource start must be timezone-aware")
        if step_s <= 0:
            raise ValueError("step_s must be positive")
        self._values = [float(v) for v in values_kw]
        self._start = start
        self._step_s = float(step_s)

    def __call__(self, now: datetime) -> float:
        i = math.floor((now - self._start).total_seconds() / self._step_s)
        if not 0 <= i < len(self._values):
            raise SeriesEnded(f"{now.isoformat()} is outside the data ({len(self._values)} steps from "
                             f"{self._start.isoformat()})")
        return self._values[i]


class ShiftLoad:
    """A factory load with a day shift, for the simulated site: ``day_kw`` from ``day_start`` to ``day_end``
    local time (past midnight when it ends before it starts: ``optimizer.shift``), ``night_kw`` otherwise,
    × ``sunday_factor`` on Sundays, times 1 + noise of standard deviation ``noise_pct`` %.

    The noise is an Ornstein-Uhlenbeck process that forgets itself over ``correlation_s`` seconds of site time: a
    factory's load drifts from minute to minute (a standard deviation of ``noise_pct`` % over the day) but moves
    little from one second to the next (σ·√(2·dt/τ): 0.6 % in half a second at 5 % and 60 s), as a meter shows it.
    Independent draws each step (``correlation_s`` 0) made a zero-export site's battery chase a new ±5 % load every
    plant step, one step late. A seeded sequence (one draw per call with a later time; a call at the same time
    returns the same value), so a run is reproducible for a given call sequence.
    """

    def __init__(self, timezone: str, day_kw: float, night_kw: float, day_start: time = time(7),
                 day_end: time = time(19), sunday_factor: float = 1.0, noise_pct: float = 0.0, seed: int = 0,
                 correlation_s: float = 0.0):
        self._zone = ZoneInfo(timezone)
        self.day_kw = float(day_kw)
        self.night_kw = float(night_kw)
        self.day_start = day_start
        self.day_end = day_end
        self.sunday_factor = float(sunday_factor)
        self.noise_pct = float(noise_pct)
        self.correlation_s = float(correlation_s)
        self._rng = random.Random(seed)
        self._noise: tuple[datetime, float] | None = None   # (time of the last draw, its standard normal value)

    def __call__(self, now: datetime) -> float:
        local = now.astimezone(self._zone)
        kw = self.day_kw if on_shift(minute_of_day(local.time()), self.day_start, self.day_end) else self.night_kw
        if local.weekday() == 6:
            kw *= self.sunday_factor
        if self.noise_pct:
            kw *= 1.0 + self._standard_noise(now) * self.noise_pct / 100.0
        return max(0.0, kw)

    def _standard_noise(self, now: datetime) -> float:
        """The noise at ``now``, standard normal over time: an exact Ornstein-Uhlenbeck step from the last draw
        (``correlation_s`` 0, or the first call: an independent draw). [-]"""
        last = self._noise
        if last is not None and now == last[0]:
            return last[1]
        if last is None or self.correlation_s <= 0 or now < last[0]:
            x = self._rng.gauss(0.0, 1.0)
        else:
            keep = math.exp(-(now - last[0]).total_seconds() / self.correlation_s)
            x = keep * last[1] + math.sqrt(1.0 - keep * keep) * self._rng.gauss(0.0, 1.0)
        self._noise = (now, x)
        return x


@dataclass(frozen=True, slots=True)
class PlantState:
    """The plant over one step: powers are step averages over [timestamp, timestamp + dt), SOC and counters at
    the end of the step. Signs per docs/conventions.md.

    Attributes
    ----------
    timestamp : datetime
        Start of the step (UTC).
    grid_kw : float
        Meter power, + import: ``load_kw − pv_kw − battery_kw``. [kW]
    pv_kw, pv_available_kw, load_kw, battery_kw : float
        [kW]
    soc_pct : float
        [%]
    soc_kwh : float
        [kWh]
    max_charge_kw, max_discharge_kw : float
        What the BMS allows at the end of the step (≥ 0). [kW]
    import_kwh, export_kwh, pv_energy_kwh : float
        Cumulative meter and PV counters. [kWh]
    """

    timestamp: datetime
    grid_kw: float
    pv_kw: float
    pv_available_kw: float
    load_kw: float
    battery_kw: float
    soc_pct: float
    soc_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    import_kwh: float
    export_kwh: float
    pv_energy_kwh: float


@dataclass(frozen=True, slots=True)
class BatteryUnitState:
    """One battery unit over a step: power the step average (+ discharge), the rest at the end of the step.

    Attributes
    ----------
    battery_kw, max_charge_kw, max_discharge_kw : float
        [kW]
    soc_pct : float
        [%]
    soc_kwh : float
        [kWh]
    """

    battery_kw: float
    soc_pct: float
    soc_kwh: float
    max_charge_kw: float
    max_discharge_kw: float


@dataclass(frozen=True, slots=True)
class InverterUnitState:
    """One PV inverter over a step.

    Attributes
    ----------
    pv_kw, pv_available_kw : float
        Step average; available is this inverter's share of the array. [kW]
    limited : bool
        Whether an active power limit held it below what was available.
    energy_kwh : float
        Cumulative AC energy. [kWh]
    """

    pv_kw: float
    pv_available_kw: float
    limited: bool
    energy_kwh: float


class SitePlant:
    """Several PV inverters and battery units behind one grid meter, each with its own physics.

    Every inverter sees the same weather: its available power is the array's × ``rated_kw / ac_kw``.
    Every battery unit follows its own setpoint within its own PCS and BMS limits. The meter reads
    ``load − Σ pv − Σ battery``. :class:`Plant` is the one-inverter, one-battery case.

    Parameters
    ----------
    batteries : Mapping[str, BatteryModel]
        Battery units by device name.
    inverters : Mapping[str, PVModel]
        PV inverters by device name; each one's ``rated_kw`` is its AC rating.
    ac_kw : float
        AC rating of the whole PV plant (the sum of the inverters'). [kW]
    """

    def __init__(self, batteries: Mapping[str, BatteryModel], inverters: Mapping[str, PVModel], ac_kw: float):
        if ac_kw <= 0:
            raise ValueError(f"ac_kw must be positive, got {ac_kw}")
        self.batteries = dict(batteries)
        self.inverters = dict(inverters)
        self.ac_kw = float(ac_kw)
        self.import_kwh = 0.0
        """Cumulative energy imported from the grid. [kWh]"""
        self.export_kwh = 0.0
        """Cumulative energy exported to the grid. [kWh]"""
        self.units: dict[str, BatteryUnitState | InverterUnitState] = {}
        """Each unit's state over the last step, by device name."""

    def step(self, now: datetime, dt_s: float, setpoints_kw: Mapping[str, float],
             limits_pct: Mapping[str, float | None], pv_available_kw: float, load_kw: float) -> PlantState:
        """Advance every unit by ``dt_s`` seconds from ``now``; returns the site totals.

        Parameters
        ----------
        now : datetime
            Start of the step (UTC, aware).
        dt_s : float
            Step length. [s]
        setpoints_kw : Mapping[str, float]
            Battery setpoint by unit, + discharge; a unit not named gets 0. [kW]
        limits_pct : Mapping[str, float | None]
            Active power limit by inverter, % of its rating; not named or ``None`` = no limit. [%]
        pv_available_kw : float
            PV power the whole array could deliver now. [kW]
        load_kw : float
            Site load (≥ 0). [kW]
        """
        if not load_kw >= 0.0:
            raise ValueError(f"load must be ≥ 0, got {load_kw}")
        pv_kw = pv_energy_kwh = 0.0
        for name, pv in self.inverters.items():
            available = pv_available_kw * (pv.rated_kw / self.ac_kw)
            limit = limits_pct.get(name)
            kw = pv.step(available, limit, dt_s)
            self.units[name] = InverterUnitState(kw, available, limit is not None and kw < available - 1e-6,
                                                 pv.energy_kwh)
            pv_kw += kw
            pv_energy_kwh += pv.energy_kwh
        battery_kw = soc_kwh = capacity_kwh = max_charge_kw = max_discharge_kw = 0.0
        for name, b in self.batteries.items():
            kw = b.step(setpoints_kw.get(name, 0.0), dt_s)
            unit = BatteryUnitState(kw, b.soc_pct, b.soc_kwh, b.allowed_charge_kw(), b.allowed_discharge_kw())
            self.units[name] = unit
            battery_kw += kw
            soc_kwh += unit.soc_kwh
            capacity_kwh += b.capacity_kwh
            max_charge_kw += unit.max_charge_kw
            max_discharge_kw += unit.max_discharge_kw
        grid_kw = load_kw - pv_kw - battery_kw
        if grid_kw > 0.0:
            self.import_kwh += grid_kw * dt_s / 3600.0
        else:
            self.export_kwh -= grid_kw * dt_s / 3600.0
        soc_pct = 100.0 * soc_kwh / capacity_kwh if capacity_kwh else 0.0
        return PlantState(now, grid_kw, pv_kw, pv_available_kw, load_kw, battery_kw, soc_pct, soc_kwh,
                          max_charge_kw, max_discharge_kw, self.import_kwh, self.export_kwh, pv_energy_kwh)


class Plant(SitePlant):
    """One battery and one PV inverter behind one grid meter (the offline runner's plant and the single-device
    simulated site): :class:`SitePlant` with one unit of each, so both faces step the same physics.

    Parameters
    ----------
    battery : BatteryModel
    pv : PVModel
        Its ``rated_kw`` is the plant's AC rating.
    """

    def __init__(self, battery: BatteryModel, pv: PVModel):
        super().__init__({"battery": battery}, {"pv": pv}, pv.rated_kw)
        self.battery = battery
        self.pv = pv

    def step(self, now: datetime, dt_s: float, battery_setpoint_kw: float, pv_limit_pct: float | None,
             pv_available_kw: float, load_kw: float) -> PlantState:
        """Advance the plant by ``dt_s`` seconds from ``now`` (:meth:`SitePlant.step` with one unit each).

        Parameters
        ----------
        now : datetime
            Start of the step (UTC, aware).
        dt_s : float
            Step length. [s]
        battery_setpoint_kw : float
            PCS setpoint, + discharge. [kW]
        pv_limit_pct : float | None
            PV active power limit, % of the PV AC rating; ``None`` = no limit. [%]
        pv_available_kw : float
            PV power available from the array. [kW]
        load_kw : float
            Site load (≥ 0). [kW]
        """
        return super().step(now, dt_s, {"battery": battery_setpoint_kw}, {"pv": pv_limit_pct}, pv_available_kw,
                            load_kw)
