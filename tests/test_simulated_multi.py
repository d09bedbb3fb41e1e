"""The simulated multi-asset site over real Modbus TCP: every unit its own physics, faults per unit.

The site is deploy/examples/multi-asset-site.yaml (10 inverters of 100 kW, eight behind one logger port,
two batteries of 500 kWh / 250 kW at 30 % and 80 %, a grid meter and a PV meter) on free loopback ports,
read and written with the drivers' ModbusDevice (pymodbus underneath). ``STILL`` sites step only every
60 site seconds, so registers cannot move between a read and the comparison.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.config import DeviceConfig
from drivers.device import ModbusDevice
from drivers.profile import load_profile
from drivers.readings import Quality
from drivers.simulated.config import SimulatedSiteFile
from drivers.simulated.faults import Faults
from drivers.simulated.plant import BatteryModel, PVModel, SitePlant
from drivers.simulated.site import SimulatedSite
from drivers.transport import ConnectionPool
from tests.sim_peers import simulated_site, site_config

MULTI_SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "multi-asset-site.yaml"
CALM = {"weather": {"model": "clear_sky", "cloudiness": 0.0},
        "load": {"day_kw": 600, "night_kw": 300, "noise_pct": 0}}
NOON = "2026-05-04T12:00:00+07:00"
STILL = {**CALM, "step_s": 60, "start": NOON}
FAULTY = {"bess-1": {"initial_soc_pct": 30},
          "bess-2": {"initial_soc_pct": 80, "bms_max_charge_pct": 40},   # derated: 100 kW of charge
          "inv-10": {"offline": True},
          "inv-09": {"ignore_setpoint": True}}
INVERTERS = [f"inv-{i:02d}" for i in range(1, 11)]


def multi_config(**simulation: object) -> SimulatedSiteFile:
    return site_config(MULTI_SITE, simulation={"units": FAULTY, **simulation})


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (real time) until ``condition()`` holds; fail after ``timeout_s`` (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


class Devices:
    """A ModbusDevice for every device of a running site, sharing one connection pool and the site clock."""

    def __init__(self, site: SimulatedSite):
        self.pool = ConnectionPool()
        self.devices: dict[str, ModbusDevice] = {}
        for d in site.config.devices:
            config = DeviceConfig(name=d.name, role=d.role, profile=d.profile, unit_id=d.unit_id,
                                  endpoint={"host": d.endpoint.host, "port": d.endpoint.port},
                                  timeout_s=1.0, retries=0, backoff_initial_s=0.01, backoff_max_s=0.01)
            self.devices[d.name] = ModbusDevice(config, load_profile(d.profile), self.pool.connection(config),
                                                site.clock)

    def __getitem__(self, name: str) -> ModbusDevice:
        return self.devices[name]

    def close(self) -> None:
        self.pool.close()


# --- the plant alone ---------------------------------------------------------------------------------------


def test_units_share_the_sun_by_rating_and_the_meter_reads_the_balance() -> None:
    now = datetime(2026, 5, 4, 5, tzinfo=UTC)
    plant = SitePlant({"b1": BatteryModel(500, 250, 250, initial_soc_pct=30),
                       "b2": BatteryModel(500, 250, 250, initial_soc_pct=80)},
                      {"big": PVModel(600), "small": PVModel(400)}, 1000)
    plant.batteries["b2"].bms_charge_share = 0.4
    s = plant.step(now, 360.0, {"b1": -200.0, "b2": -200.0}, {"small": 50.0}, 800.0, 700.0)
    assert plant.units["big"].pv_kw == pytest.approx(480.0)            # 60 % of the array, no limit
    assert plant.units["small"].pv_kw == pytest.approx(200.0)          # 50 % of 400 kW, below its 320 kW share
    assert plant.units["small"].limited and not plant.units["big"].limited
    assert plant.units["b1"].battery_kw == pytest.approx(-200.0)
    assert plant.units["b2"].battery_kw == pytest.approx(-100.0)       # BMS allows 40 % of 250 kW
    assert plant.units["b2"].max_charge_kw == pytest.approx(100.0)
    assert s.pv_kw == pytest.approx(680.0) and s.battery_kw == pytest.approx(-300.0)
    assert s.grid_kw == pytest.approx(700.0 - 680.0 + 300.0)
    assert s.soc_kwh == pytest.approx(plant.units["b1"].soc_kwh + plant.units["b2"].soc_kwh)
    assert plant.units["b1"].soc_pct == pytest.approx(30.0 + 100 * 200 * 0.1 * 0.95 / 500)   # 0.1 h at 200 kW


# --- the site file -------------------------------------------------------------------------------------------


def broken(change: Callable[[dict], None]) -> str:
    data = site_config(MULTI_SITE).model_dump(mode="json")
    change(data)
    with pytest.raises(ValidationError) as info:
        SimulatedSiteFile.model_validate(data)
    return str(info.value)


def test_site_file_errors_name_the_unit() -> None:
    def no_rating(d: dict) -> None:
        d["devices"][3]["rating_kw"] = None

    def wrong_sum(d: dict) -> None:
        d["devices"][3]["rating_kw"] = 150

    def no_spec(d: dict) -> None:
        d["devices"][-1]["battery"] = None

    def unknown_unit(d: dict) -> None:
        d["simulation"]["units"]["bess-9"] = {"offline": True}

    def two_grid_meters(d: dict) -> None:
        d["devices"][1]["location"] = "grid"

    assert "inv-02: rating_kw is required" in broken(no_rating)
    assert "add up to 1050 kW, pv.ac_kw is 1000 kW" in broken(wrong_sum)
    assert "bess-2: needs its own battery:" in broken(no_spec)
    assert "no device named bess-9" in broken(unknown_unit)
    assert "more than one meter at location grid: grid-meter, pv-meter" in broken(two_grid_meters)


def test_a_single_battery_without_its_own_spec_takes_the_top_level_one() -> None:
    config = site_config()
    assert config.battery_specs() == {"battery": config.battery}
    assert config.inverter_ratings() == {"pv-inverter": 900.0}


# --- over Modbus ---------------------------------------------------------------------------------------------


async def test_every_unit_is_read_over_modbus_with_its_own_state() -> None:
    config = multi_config(**STILL)
    assert len({(d.endpoint.port) for d in config.devices}) == 7   # inv-01..08 share the logger's port
    async with simulated_site(config) as site:
        devices = Devices(site)
        try:
            readings = {name: await devices[name].poll() for name in site.endpoints}
        finally:
            devices.close()
        s, units = site.state, site.plant.units
    assert s is not None
    for name, points in readings.items():
        if name == "inv-10":   # offline on its own port: connection refused, every point missing
            assert all(r.quality is Quality.MISSING for r in points.values())
            continue
        bad = {n: r.detail for n, r in points.items() if not r.ok}
        assert not bad, f"{name}: {bad}"
    assert s.pv_available_kw > 100
    for name in INVERTERS:
        assert units[name].pv_kw == pytest.approx(s.pv_available_kw / 10)   # 100 kW of 1000 kW: a tenth each
        if name != "inv-10":
            assert readings[name]["pv_kw"].value == pytest.approx(units[name].pv_kw, abs=0.1)
            assert readings[name]["pv_rated_kw"].value == pytest.approx(100.0)
    assert readings["pv-meter"]["grid_kw"].value == pytest.approx(-s.pv_kw, abs=0.2)
    assert readings["grid-meter"]["grid_kw"].value == pytest.approx(s.load_kw - s.pv_kw - s.battery_kw, abs=0.2)
    bess1, bess2 = readings["bess-1"], readings["bess-2"]
    assert (bess1["soc_pct"].value, bess2["soc_pct"].value) == (pytest.approx(30.0), pytest.approx(80.0))
    assert bess1["max_charge_kw"].value == pytest.approx(250.0, abs=0.1)
    assert bess2["max_charge_kw"].value == pytest.approx(100.0, abs=0.1)      # the derated BMS says so
    assert bess2["max_discharge_kw"].value == pytest.approx(250.0, abs=0.1)


async def test_an_offline_unit_behind_the_logger_does_not_take_its_neighbours_down() -> None:
    async with simulated_site(multi_config(**STILL)) as site:
        site.faults.apply("inv-05:offline")
        devices = Devices(site)
        try:
            inv4 = await devices["inv-04"].poll()
            inv5 = await devices["inv-05"].poll()
        finally:
            devices.close()
    assert inv4["pv_kw"].ok and devices["inv-04"].online
    assert not any(r.ok for r in inv5.values()) and devices["inv-05"].online is False


async def test_setpoints_act_per_unit_within_each_units_own_limits() -> None:
    async with simulated_site(multi_config(**CALM, start=NOON, step_s=0.2), speed=5) as site:
        devices = Devices(site)
        try:
            for name in ("bess-1", "bess-2", "inv-01", "inv-09"):
                await devices[name].poll()
                assert all(r.ok for r in await devices[name].enter_remote_control())
            assert (await devices["bess-1"].write("battery_setpoint_kw", -200.0)).ok
            assert (await devices["bess-2"].write("battery_setpoint_kw", -200.0)).ok
            assert (await devices["inv-01"].write("pv_limit_pct", 20.0)).ok
            written = await devices["inv-09"].write("pv_limit_pct", 20.0)
            units = site.plant.units
            await until(lambda: units["bess-1"].battery_kw == pytest.approx(-200.0)
                        and units["inv-01"].pv_kw == pytest.approx(20.0))
            await until(lambda: units["bess-2"].battery_kw == pytest.approx(-100.0))  # its derated BMS
            assert units["inv-09"].pv_kw == pytest.approx(units["inv-09"].pv_available_kw)  # ignores its limit
            assert units["inv-02"].pv_kw == pytest.approx(units["inv-02"].pv_available_kw)
            grid = (await devices["grid-meter"].poll())["grid_kw"].value
            s = site.state
        finally:
            devices.close()
    assert written.ok and written.verified   # the ignoring inverter reads back what was written
    assert grid == pytest.approx(s.load_kw - s.pv_kw - s.battery_kw, abs=1.0)


async def test_faults_at_run_time_ignore_setpoint_and_bms_limit() -> None:
    async with simulated_site(site_config(MULTI_SITE, simulation={**CALM, "start": NOON, "step_s": 0.2}),
                              speed=5) as site:
        devices = Devices(site)
        try:
            bess1, bess2 = devices["bess-1"], devices["bess-2"]
            for battery in (bess1, bess2):
                await battery.poll()
                await battery.enter_remote_control()
                assert (await battery.write("battery_setpoint_kw", 150.0)).ok
            units = site.plant.units
            await until(lambda: units["bess-1"].battery_kw == pytest.approx(150.0)
                        and units["bess-2"].battery_kw == pytest.approx(150.0))
            site.faults.apply("bess-1:ignore_setpoint")
            site.faults.apply("bess-2:bms_discharge=20")
            target = site.steps + 3
            await until(lambda: site.steps >= target)
            assert (await bess1.write("battery_setpoint_kw", -50.0)).ok
            await until(lambda: units["bess-2"].battery_kw == pytest.approx(50.0))   # 20 % of 250 kW
            target = site.steps + 3
            await until(lambda: site.steps >= target)
            assert units["bess-1"].battery_kw == pytest.approx(150.0)   # keeps what it had, not −50 kW
            assert (await bess2.poll())["max_discharge_kw"].value == pytest.approx(50.0, abs=0.1)
            site.faults.clear("bess-1")
            await until(lambda: units["bess-1"].battery_kw == pytest.approx(-50.0))
        finally:
            devices.close()


def test_fault_text_forms() -> None:
    faults = Faults(["bess-1"])
    faults.apply("bess-1:ignore_setpoint")
    faults.apply("bess-1:bms_charge=40")
    faults.apply("bess-1:bms_discharge=0")
    f = faults.of("bess-1")
    assert (f.ignore_setpoint, f.bms_max_charge_pct, f.bms_max_discharge_pct) == (True, 40.0, 0.0)
    with pytest.raises(ValueError, match="within 0–100 %"):
        faults.apply("bess-1:bms_charge=140")
