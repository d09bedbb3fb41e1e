"""The simulated site: plant physics on a shared clock, served on real Modbus TCP servers.

    site = SimulatedSite.from_file("deploy/examples/simulated-site.yaml", speed=60)
    endpoints = await site.start()       # {device name: Endpoint(host, port, unit_id)}
    ... any Modbus/SunSpec client, or the controller with the same site file and ``site.clock`` ...
    site.faults.offline("battery")       # fault injection (drivers.simulated.faults)
    site.state                           # the plant's true state (PlantState, site totals) of the last step
    site.plant.units["bess-1"]           # one unit's true state (BatteryUnitState / InverterUnitState)
    await site.stop()

Any number of inverters, battery units and meters (``drivers.simulated.plant.SitePlant``): each inverter
produces its rating's share of the array under the same weather, each battery unit runs its own PCS and
BMS, the grid meter reads the balance and sub-meters (``location: pv | load | feeder``) what they are
placed on. Devices behind one host:port share one server (unit ids, as behind a logger or gateway).
``simulation.units`` sets a unit's initial SOC and its faults from the start.

A background task steps the plant every ``simulation.step_s`` site seconds (or more at high speed,
so that steps stay ≥ 20 ms apart in real time) with the site time elapsed since the previous step. Each
step reads the setpoints clients wrote (``battery_setpoint_kw``, ``pv_limit_pct``) from each unit's
registers, runs the PCS watchdogs, steps the plant, and writes the measurements back through each
device's profile (unless that device is frozen: it keeps serving what it held when frozen, or its first
values if frozen from the start; sentinel and out-of-range faults are applied here).
Commands the BMS would not allow are clamped by the plant, as a real PCS does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np

from drivers.profile import load_profile
from drivers.roles import Role
from drivers.simulated.config import (
    ClearSkyWeather,
    SeriesSource,
    ShiftLoadConfig,
    SimulatedSiteFile,
    UnitSimulation,
    load_site_file,
)
from drivers.simulated.faults import Faults
from drivers.simulated.plant import (
    ArraySource,
    BatteryModel,
    InverterUnitState,
    PlantState,
    PVModel,
    SeriesEnded,
    ShiftLoad,
    SitePlant,
    Source,
)
from drivers.simulated.server import DeviceImage, DeviceServer, full_scale
from ems.clock import AcceleratedClock, Clock
from ems.series_csv import read_series_csv
from ems.yamlfile import ConfigError
from optimizer.site import PVSpec, SiteInfo
from optimizer.solar import ClearSkyCache

log = logging.getLogger(__name__)

MIN_REAL_STEP_S = 0.02
"""Steps are at least this far apart in real time, whatever the speed. [s]"""
BATTERY_CELLS = 240
"""Series LFP cells of the simulated battery: 2.8–3.6 V per cell → 672–864 V DC. [-]"""


@dataclass(frozen=True)
class Endpoint:
    """Where a simulated device answers."""

    host: str
    port: int
    unit_id: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port} unit {self.unit_id}"


def grid_voltage_v(ts: datetime, phase: int) -> float:
    """Phase-to-neutral voltage of the simulated grid: 230 V ± 2 V, slow and different on each phase, as a live
    meter shows it (a meter whose every value holds still is frozen: controller/validation.py). [V]"""
    t = ts.timestamp()
    return 230.0 + 2.0 * math.sin(2 * math.pi * t / (67.0 + 10.0 * phase) + 2.1 * phase)


@functools.lru_cache(maxsize=8)
def _clear_sky_cache(site: SiteInfo, pv: PVSpec) -> ClearSkyCache:
    """One 1-minute clear-sky cache per location and array, shared by every site in the process."""
    return ClearSkyCache(site, pv, step_minutes=1)


class CloudyClearSky:
    """Available PV: pvlib clear-sky power × (1 − cloudiness × c(t)), c a seeded smooth random process in [0, 1].

    ``c`` takes an independent uniform value every ``period_s`` seconds (a function of the seed and
    the period's index only, so it does not depend on how often it is asked) and is linear in between.
    Clear-sky power comes from ``optimizer.solar.ClearSkyCache`` on a 1-minute lattice.
    """

    def __init__(self, site: SiteInfo, pv: PVSpec, cloudiness: float, period_s: float, seed: int):
        self._cache = _clear_sky_cache(site, pv)
        self._cloudiness = cloudiness
        self._period_s = period_s
        self._seed = seed

    def _cloud(self, k: int) -> float:
        return random.Random(self._seed * 1_000_003 + k).random()

    def __call__(self, now: datetime) -> float:
        t = now.timestamp()
        clear = float(self._cache.lattice(np.array([int(t // 60)]))[0])
        if not self._cloudiness:
            return clear
        k, frac = divmod(t / self._period_s, 1.0)
        c = (1 - frac) * self._cloud(int(k)) + frac * self._cloud(int(k) + 1)
        return clear * (1.0 - self._cloudiness * c)


def series_source(source: SeriesSource, field: str, timezone: str, rated_kw: float | None = None) -> ArraySource:
    """A CSV power series (``timestamp`` + ``source.column`` [kW], or ``…_kwh``) as a plant source, read and checked as
    every measured series is (:func:`ems.series_csv.read_series_csv`: a missing file, a bad row, a gap or an absurd
    value is a ``ConfigError`` naming ``field`` of the site file and the row; it was a traceback), held over one-minute
    steps. ``timezone``: of timestamps written without an offset; ``rated_kw``: the plausibility bound's rating."""
    column = source.column
    lower = column.lower()
    name = column[:-3] if lower.endswith("_kw") else column[:-4] if lower.endswith("_kwh") else column
    try:
        frame = read_series_csv(source.file, timezone, 1, columns=(name,), unit=None if name != column else "kW",
                                rated_kw=None if rated_kw is None else {name: rated_kw})
    except ConfigError as exc:
        raise ConfigError(f"{field}: {exc.source}", exc.errors) from None
    return ArraySource(frame[f"{name}_kw"].tolist(), frame.index[0].to_pydatetime(), 60.0)


class SimulatedSite:
    """Plant + one :class:`DeviceImage` per ``devices:`` entry + one :class:`DeviceServer` per host:port."""

    def __init__(self, config: SimulatedSiteFile, clock: Clock | None = None, speed: float | None = None):
        sim = config.simulation
        self.config = config
        self.clock: Clock = clock or AcceleratedClock(sim.speed if speed is None else speed, sim.start)
        specs = config.battery_specs()
        batteries = {}
        for name, spec in specs.items():
            unit = self._unit(name)
            batteries[name] = BatteryModel.from_spec(
                spec, initial_soc_pct=sim.initial_soc_pct if unit.initial_soc_pct is None else unit.initial_soc_pct,
                soh_pct=sim.soh_pct if unit.soh_pct is None else unit.soh_pct,
                taper_high_pct=sim.taper_high_pct, taper_low_pct=sim.taper_low_pct,
                ramp_kw_per_s=sim.ramp_kw_per_s or math.inf)
        inverters = {name: PVModel(kw) for name, kw in config.inverter_ratings().items()}
        self.plant = SitePlant(batteries, inverters, config.pv.ac_limit_kw)
        self.pv_source: Source = self._weather()
        self.load_source: Source = self._load()
        self.faults = Faults([d.name for d in config.devices], on_change=self._faults_changed)
        for name, unit in sim.units.items():
            f = self.faults.of(name)
            f.offline, f.ignore_setpoint = unit.offline, unit.ignore_setpoint
            f.bms_max_charge_pct, f.bms_max_discharge_pct = unit.bms_max_charge_pct, unit.bms_max_discharge_pct
        self.state: PlantState | None = None
        self.steps = 0
        self.on_data_end: Callable[[str], None] | None = None
        """Called once, with the reason, when the run goes past a series file's data and the plant stops."""
        power_kw = max(config.pv.ac_limit_kw, sum(b.max_charge_kw for b in specs.values()),
                       sum(b.max_discharge_kw for b in specs.values()),
                       getattr(sim.load, "day_kw", 0.0), getattr(sim.load, "night_kw", 0.0), 1.0)
        magnitudes = full_scale(power_kw)
        self.images: dict[str, DeviceImage] = {}
        by_port: dict[tuple[str, int], list[DeviceImage]] = {}
        for d in config.devices:
            image = DeviceImage.build(
                d.name, d.role, d.unit_id, load_profile(d.profile), self.clock, magnitudes,
                identity={"Mn": "pv-battery-ems", "Md": f"simulated {d.role}", "SN": d.name, "Vr": "sim"})
            self.images[d.name] = image
            by_port.setdefault((d.endpoint.host, d.endpoint.port), []).append(image)
        self.servers = [DeviceServer(host, port, images, self.faults) for (host, port), images in by_port.items()]
        self._locations = {d.name: d.location for d in config.of_role(Role.METER)}
        self._sub_meter_kwh = {name: [0.0, 0.0] for name, where in self._locations.items() if where != "grid"}
        self._held_kw: dict[str, float] = {}  # battery units ignoring their setpoint: the power they keep [kW]
        self._task: asyncio.Task[None] | None = None
        self._serving = False
        self._reconciles: set[asyncio.Task[None]] = set()
        self._reconcile_lock = asyncio.Lock()
        self._last_mono = 0.0
        self._published: set[str] = set()  # devices whose registers hold measurements (a frozen one keeps them)

    def _unit(self, name: str) -> UnitSimulation:
        return self.config.simulation.units.get(name) or UnitSimulation()

    @classmethod
    def from_file(cls, path: str | Path, clock: Clock | None = None, speed: float | None = None,
                  start: datetime | Literal["now"] | None = None) -> SimulatedSite:
        """The site of a site file; ``start`` overrides its ``simulation.start`` (``"now"``: the wall clock)."""
        config = load_site_file(path)
        if start is not None:
            sim = config.simulation.model_copy(update={"start": None if start == "now" else start})
            config = config.model_copy(update={"simulation": sim})
        return cls(config, clock=clock, speed=speed)

    def _weather(self) -> Source:
        w = self.config.simulation.weather
        if isinstance(w, ClearSkyWeather):
            return CloudyClearSky(self.config.site, self.config.pv, w.cloudiness, w.cloud_period_s, w.seed)
        return series_source(w, "simulation.weather", self.config.site.timezone, self.config.pv.ac_limit_kw)

    def _load(self) -> Source:
        ld = self.config.simulation.load
        if isinstance(ld, ShiftLoadConfig):
            return ShiftLoad(self.config.site.timezone, ld.day_kw, ld.night_kw, ld.day_start, ld.day_end,
                             ld.sunday_factor, ld.noise_pct, ld.seed, ld.noise_correlation_s)
        return series_source(ld, "simulation.load", self.config.site.timezone)

    def site_time_text(self) -> str:
        """Site time now, as the commands print it: local time with the site's zone, and UTC."""
        zone = self.config.site.timezone
        now = self.clock.now()
        return f"site time {now.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S} {zone} ({now:%H:%M:%S} UTC)"

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """Where each device answers, by device name."""
        return {d.name: Endpoint(d.endpoint.host, d.endpoint.port, d.unit_id) for d in self.config.devices}

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self, stepping: bool = True) -> dict[str, Endpoint]:
        """Take a first plant step, start the stepping task and every server not offline; returns the endpoints.

        ``stepping=False`` starts no stepping task: the caller advances the plant with :meth:`step` (a lock-step
        run such as the fault soak, ``tests/soak.py``).
        """
        self._last_mono = self.clock.monotonic()
        self.step(0.0)
        self._serving = True
        if stepping:
            self._task = asyncio.create_task(self._run(), name="simulated-site")
        await self.reconcile()
        return self.endpoints

    async def stop(self) -> None:
        """Stop stepping and close every server."""
        tasks = [t for t in (self._task, *self._reconciles) if t is not None]
        self._task = None
        self._serving = False
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self.servers:
            await server.stop()

    @property
    def step_period_s(self) -> float:
        """Site seconds between two plant steps: ``simulation.step_s``, or more at a speed where that would be
        less than :data:`MIN_REAL_STEP_S` of real time (600x: 12 s). The devices' values change no more often. [s]"""
        return max(self.config.simulation.step_s, MIN_REAL_STEP_S * self.clock.speed)

    async def _run(self) -> None:
        period = self.step_period_s
        while True:
            await self.clock.sleep(period)
            now = self.clock.monotonic()
            dt_s, self._last_mono = now - self._last_mono, now
            try:
                self.step(dt_s)
            except SeriesEnded as exc:  # the run went past a series file's data: the plant stops, said once
                log.error("simulated site: a series ends: %s; the plant stops here (the devices keep their last "
                          "values): give simulation.weather/load a series that covers the run, or run shorter", exc)
                if self.on_data_end is not None:
                    self.on_data_end(str(exc))
                return
            except Exception:  # a broken step must not silently kill the site: log, keep serving
                log.exception("simulated site step failed")

    def _faults_changed(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop yet: start() reconciles
            task = asyncio.get_running_loop().create_task(self.reconcile())
            self._reconciles.add(task)
            task.add_done_callback(self._reconciles.discard)

    async def reconcile(self) -> None:
        """Bring the servers in line with the offline faults (stop a port whose devices are all offline)."""
        async with self._reconcile_lock:
            if not self._serving:
                return
            for server in self.servers:
                await server.reconcile()

    # --- one step --------------------------------------------------------------------------------------------

    def step(self, dt_s: float) -> PlantState:
        """Advance the plant by ``dt_s`` site seconds ending now and publish the result to the registers."""
        setpoints: dict[str, float] = {}
        for name, battery in self.plant.batteries.items():
            image, f = self.images[name], self.faults.of(name)
            image.watchdog()
            battery.bms_charge_share = f.bms_max_charge_pct / 100.0
            battery.bms_discharge_share = f.bms_max_discharge_pct / 100.0
            if f.ignore_setpoint:
                setpoints[name] = self._held_kw.setdefault(name, battery.power_kw)
            else:
                self._held_kw.pop(name, None)
                setpoints[name] = image.setpoint("battery_setpoint_kw") or 0.0
        limits_pct = {name: None if self.faults.of(name).ignore_setpoint
                      else self.images[name].setpoint("pv_limit_pct") for name in self.plant.inverters}
        end = self.clock.now()
        start = end - timedelta(seconds=dt_s)
        state = self.plant.step(start.astimezone(UTC), dt_s, setpoints, limits_pct,
                                max(0.0, self.pv_source(start)), max(0.0, self.load_source(start)))
        self.state = state
        self.steps += 1
        for name, counters in self._sub_meter_kwh.items():
            kw = self._sub_meter_kw(name, state)
            counters[0 if kw > 0.0 else 1] += abs(kw) * dt_s / 3600.0
        for image in self.images.values():
            self._publish(image, state)
        return state

    def _sub_meter_kw(self, name: str, s: PlantState) -> float:
        """What a sub-meter measures, + into the branch it is placed on: ``pv`` −Σ PV (the PV feeds the board),
        ``load`` the load, ``feeder`` the battery feeder (−Σ battery: + while charging). [kW]"""
        where = self._locations[name]
        return -s.pv_kw if where == "pv" else s.load_kw if where == "load" else -s.battery_kw

    def _values(self, image: DeviceImage, s: PlantState) -> dict[str, float]:
        if image.role is Role.METER:
            if self._locations[image.name] == "grid":
                power_kw, import_kwh, export_kwh = s.grid_kw, s.import_kwh, s.export_kwh
            else:
                power_kw = self._sub_meter_kw(image.name, s)
                import_kwh, export_kwh = self._sub_meter_kwh[image.name]
            phase = power_kw / 3.0
            volts = [grid_voltage_v(s.timestamp, k) for k in range(3)]
            return {"grid_kw": power_kw, "grid_l1_kw": phase, "grid_l2_kw": phase, "grid_l3_kw": phase,
                    "voltage_l1_v": volts[0], "voltage_l2_v": volts[1], "voltage_l3_v": volts[2], "frequency_hz": 50.0,
                    "import_kwh": import_kwh, "export_kwh": export_kwh}
        unit = self.plant.units[image.name]
        if isinstance(unit, InverterUnitState):
            state = 2 if unit.pv_kw <= 0.0 else 5 if unit.limited else 4  # SunSpec St: sleeping, throttled, MPPT
            return {"pv_kw": unit.pv_kw, "pv_energy_kwh": unit.energy_kwh, "pv_state": state,
                    "pv_rated_kw": self.plant.inverters[image.name].rated_kw}
        battery = self.plant.batteries[image.name]
        voltage_v = BATTERY_CELLS * (2.8 + 0.8 * unit.soc_pct / 100.0)
        load_pct = abs(unit.battery_kw) / max(1.0, battery.max_discharge_kw)
        return {"soc_pct": unit.soc_pct, "soh_pct": battery.soh_pct, "battery_kw": unit.battery_kw,
                "battery_voltage_v": voltage_v, "battery_current_a": 1000.0 * unit.battery_kw / voltage_v,
                "battery_temperature_c": 25.0 + 10.0 * load_pct,
                "max_charge_kw": unit.max_charge_kw, "max_discharge_kw": unit.max_discharge_kw, "battery_alarm": 0,
                "battery_warning": 0}

    def truth(self, device: str) -> dict[str, float]:
        """What ``device`` would serve now without faults (point → value in the point's unit), from the last step."""
        assert self.state is not None, "not started"
        return self._values(self.images[device], self.state)

    def _publish(self, image: DeviceImage, state: PlantState) -> None:
        f = self.faults.of(image.name)
        if f.frozen and image.name in self._published:  # keeps serving the image as it was when frozen
            return
        self._published.add(image.name)
        values = self._values(image, state)
        for name in image.measured_points():
            value = values.get(name)
            if f.sentinel_points is not None and (not f.sentinel_points or name in f.sentinel_points):
                value = None
            image.put(name, f.overrides.get(name, value))
