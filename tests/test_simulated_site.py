"""The simulated site over real Modbus TCP: what clients read matches the plant, writes act, faults show.

Every site runs on free loopback ports (tests.sim_peers). Comparisons with ``site.state`` use a site
whose plant steps only every 60 site seconds (``step_s: 60``), so the registers cannot move between
the read and the comparison; tests that need the plant to move wait for a condition, never a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers import sunspec
from drivers.config import DeviceConfig
from drivers.device import ModbusDevice
from drivers.profile import load_profile, shipped_profiles
from drivers.readings import Quality
from drivers.roles import CANONICAL_POINTS
from drivers.simulated.config import SimulatedSiteFile
from drivers.simulated.site import SimulatedSite
from drivers.transport import ConnectionPool
from ems.cli import main
from ems.clock import ManualClock
from ems.yamlfile import ConfigError
from tests.sim_peers import simulated_site, site_config

CALM = {"weather": {"model": "clear_sky", "cloudiness": 0.0},
        "load": {"day_kw": 600, "night_kw": 300, "noise_pct": 0}}
NOON = "2026-05-04T12:00:00+07:00"
STILL = {**CALM, "step_s": 60, "start": NOON}


async def steps(site: SimulatedSite, n: int = 2) -> None:
    """Wait until the plant has stepped ``n`` more times (so a fault change has reached the registers)."""
    target = site.steps + n
    await until(lambda: site.steps >= target)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (real time) until ``condition()`` holds; fail after ``timeout_s`` (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


class Devices:
    """D1's ModbusDevice for every device of a running site, sharing one connection pool and the site clock."""

    def __init__(self, site: SimulatedSite, timeout_s: float = 1.0):
        self.pool = ConnectionPool()
        self.devices: dict[str, ModbusDevice] = {}
        for d in site.config.devices:
            config = DeviceConfig(name=d.name, role=d.role, profile=d.profile, unit_id=d.unit_id,
                                  endpoint={"host": d.endpoint.host, "port": d.endpoint.port},
                                  timeout_s=timeout_s, retries=0, backoff_initial_s=0.01, backoff_max_s=0.01)
            self.devices[d.name] = ModbusDevice(config, load_profile(d.profile), self.pool.connection(config),
                                                site.clock)

    def __getitem__(self, name: str) -> ModbusDevice:
        return self.devices[name]

    def close(self) -> None:
        self.pool.close()


async def client_for(site: SimulatedSite, name: str, timeout_s: float = 1.0) -> AsyncModbusTcpClient:
    ep = site.endpoints[name]
    client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=timeout_s, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


async def test_sunspec_client_discovers_every_device_and_reads_the_plant_state() -> None:
    async with simulated_site(site_config(simulation=STILL)) as site:
        decoded = {}
        for name, ep in site.endpoints.items():
            client = await client_for(site, name)
            try:
                models = await sunspec.discover(client, ep.unit_id)
                decoded[name] = {m.id: await sunspec.read_model(client, ep.unit_id, m) for m in models}
            finally:
                client.close()
        s = site.state
    assert s is not None and s.pv_kw > 300  # noon in May
    assert sorted(decoded["grid-meter"]) == [1, 203]
    assert sorted(decoded["pv-inverter"]) == [1, 103, 120, 123]
    assert sorted(decoded["battery"]) == [1, 704, 802, 803]
    assert decoded["battery"][1]["Mn"] == "pv-battery-ems" and decoded["battery"][1]["SN"] == "battery"
    meter, inverter, battery = decoded["grid-meter"][203], decoded["pv-inverter"][103], decoded["battery"][802]
    assert meter["W"] / 1000 == pytest.approx(s.grid_kw, abs=0.1)
    assert meter["TotWhImp"] / 1000 == pytest.approx(s.import_kwh, abs=0.01)
    assert inverter["W"] / 1000 == pytest.approx(s.pv_kw, abs=0.1)
    assert battery["SoC"] == pytest.approx(s.soc_pct, abs=0.01)
    assert battery["W"] / 1000 == pytest.approx(s.battery_kw, abs=0.1)
    assert battery["WChaRteMax"] / 1000 == pytest.approx(s.max_charge_kw, abs=0.1)


async def test_driver_with_generic_profiles_reads_ok_values_matching_the_state() -> None:
    async with simulated_site(site_config(simulation=STILL)) as site:
        devices = Devices(site)
        try:
            readings = {name: await devices[name].poll() for name in site.endpoints}
        finally:
            devices.close()
        s = site.state
    assert s is not None
    for name, points in readings.items():
        bad = {n: r.detail for n, r in points.items() if not r.ok}
        assert not bad, f"{name}: {bad}"
    meter, pv, battery = readings["grid-meter"], readings["pv-inverter"], readings["battery"]
    assert meter["grid_kw"].value == pytest.approx(s.grid_kw, abs=0.1)
    assert sum(meter[f"grid_l{i}_kw"].value for i in (1, 2, 3)) == pytest.approx(s.grid_kw, abs=0.3)
    assert meter["frequency_hz"].value == pytest.approx(50.0)
    assert meter["import_kwh"].value == pytest.approx(s.import_kwh, abs=0.01)
    assert meter["export_kwh"].value == pytest.approx(s.export_kwh, abs=0.01)
    assert pv["pv_kw"].value == pytest.approx(s.pv_kw, abs=0.1)
    assert pv["pv_rated_kw"].value == pytest.approx(900.0)
    assert pv["pv_state"].value == 4
    assert battery["soc_pct"].value == pytest.approx(s.soc_pct, abs=0.01)
    assert battery["battery_kw"].value == pytest.approx(s.battery_kw, abs=0.1)
    assert battery["max_discharge_kw"].value == pytest.approx(s.max_discharge_kw, abs=0.1)
    assert battery["battery_alarm"].value == 0


async def test_battery_setpoint_and_pv_limit_written_over_modbus_drive_the_plant() -> None:
    async with simulated_site(site_config(simulation={**CALM, "start": NOON, "step_s": 0.2}), speed=5) as site:
        devices = Devices(site)
        try:
            battery, inverter = devices["battery"], devices["pv-inverter"]
            await battery.poll()
            await inverter.poll()
            await battery.write("battery_setpoint_kw", -200.0)   # not enabled yet: the PCS ignores it
            await until(lambda: site.steps > 3)
            assert site.state.battery_kw == 0.0
            assert all(r.ok for r in await battery.enter_remote_control())
            assert (await battery.write("battery_setpoint_kw", -200.0, force=True)).ok
            await until(lambda: site.state.battery_kw == pytest.approx(-200.0))
            assert all(r.ok for r in await inverter.enter_remote_control())
            assert (await inverter.write("pv_limit_pct", 10.0)).ok
            await until(lambda: site.state.pv_kw == pytest.approx(90.0))
            s = site.state
            assert s.grid_kw == pytest.approx(s.load_kw - s.pv_kw - s.battery_kw)
            assert s.grid_kw == pytest.approx(600.0 - 90.0 + 200.0)
            meter = await devices["grid-meter"].poll()
            pv = await inverter.poll()
        finally:
            devices.close()
    assert meter["grid_kw"].value == pytest.approx(710.0, abs=1.0)
    assert pv["pv_state"].value == 5   # throttled


async def test_battery_setpoint_beyond_the_bms_allowance_is_clamped() -> None:
    config = site_config(simulation={**CALM, "start": NOON, "step_s": 0.2, "initial_soc_pct": 95})
    async with simulated_site(config) as site:
        devices = Devices(site)
        try:
            battery = devices["battery"]
            await battery.poll()
            await battery.enter_remote_control()
            await battery.write("battery_setpoint_kw", -500.0)
            await until(lambda: site.state.battery_kw < 0)
            readings = await battery.poll()
        finally:
            devices.close()
    s = site.state
    assert 0 < -s.battery_kw <= 250.0 + 1e-6   # taper from 90 % to 100 %: 250 kW allowed at 95 %
    assert readings["max_charge_kw"].value < 500.0


async def test_sunspec_reversion_timer_returns_the_pcs_to_zero() -> None:
    """The battery profile sets WSetRvrtTms = 30 s: without a new setpoint the PCS reverts to WSetRvrt (0 W)."""
    async with simulated_site(site_config(simulation={**CALM, "step_s": 1}), speed=30) as site:
        devices = Devices(site)
        try:
            battery = devices["battery"]
            await battery.poll()
            await battery.enter_remote_control()
            await battery.write("battery_setpoint_kw", 150.0)
            await until(lambda: site.state.battery_kw == pytest.approx(150.0))
            await until(lambda: site.state.battery_kw == 0.0)   # ~1 s real at 30x
            readings = await battery.poll()
        finally:
            devices.close()
    assert site.images["battery"].setpoint("battery_setpoint_kw") == 0.0
    assert readings["battery_kw"].value == pytest.approx(0.0, abs=0.1)


HEARTBEAT_PROFILE = """
name: test-battery-heartbeat
roles: [battery]
points:
  soc_pct: {address: 100, type: u16, scale: 0.1, unit: "%"}
  battery_kw: {address: 101, type: s16, scale: 0.1, unit: kW}
  max_charge_kw: {function: input, address: 10, type: u16, scale: 0.1, unit: kW}
  max_discharge_kw: {function: input, address: 11, type: u16, scale: 0.1, unit: kW}
  battery_setpoint_kw: {address: 200, type: s32, scale: 0.001, unit: kW, write: {min: -500, max: 500}}
heartbeat: {address: 210, period_s: 5}
"""


async def test_address_based_profile_with_heartbeat_watchdog(tmp_path: Path) -> None:
    """A vendor-style profile (addresses, input registers, heartbeat): served, read, and the PCS reverts to
    0 kW when the heartbeat stops for three periods."""
    path = tmp_path / "hb.yaml"
    path.write_text(HEARTBEAT_PROFILE)
    config = site_config(profiles={"battery": str(path)}, simulation={**CALM, "step_s": 1})
    async with simulated_site(config, speed=20) as site:
        devices = Devices(site)
        try:
            battery = devices["battery"]
            readings = await battery.poll()
            assert {n: r.ok for n, r in readings.items()} == dict.fromkeys(readings, True)
            assert await battery.heartbeat()
            assert (await battery.write("battery_setpoint_kw", 100.0)).ok
            await until(lambda: site.state.battery_kw == pytest.approx(100.0))
            await until(lambda: site.state.battery_kw == 0.0)    # no heartbeat for > 15 site s
        finally:
            devices.close()
    assert site.images["battery"].value("battery_setpoint_kw") == 0.0


async def test_several_unit_ids_behind_one_port() -> None:
    async with simulated_site(site_config(shared_port=True, simulation=STILL)) as site:
        ports = {ep.port for ep in site.endpoints.values()}
        assert len(ports) == 1 and len(site.servers) == 1
        client = await client_for(site, "battery")
        try:
            found = {name: [m.id for m in await sunspec.discover(client, ep.unit_id)]
                     for name, ep in site.endpoints.items()}
        finally:
            client.close()
    assert found == {"grid-meter": [1, 203], "pv-inverter": [1, 103, 120, 123], "battery": [1, 704, 802, 803]}


async def test_each_fault_kind_is_observable_by_a_client() -> None:
    async with simulated_site(site_config(simulation={**CALM, "step_s": 0.2})) as site:
        devices = Devices(site, timeout_s=0.3)
        try:
            meter, battery = devices["grid-meter"], devices["battery"]
            assert (await meter.poll())["grid_kw"].ok and (await battery.poll())["soc_pct"].ok

            site.faults.exception("grid-meter", 4)
            client = await client_for(site, "grid-meter")
            rr = await client.read_holding_registers(40000, count=2, device_id=1)
            client.close()
            assert rr.isError() and rr.exception_code == 4
            assert "exception code 4" in (await meter.poll())["grid_kw"].detail
            site.faults.clear("grid-meter")

            site.faults.sentinel("battery", ["soc_pct"])
            await steps(site)
            r = (await battery.poll())["soc_pct"]
            assert r.quality is Quality.MISSING and "not implemented" in r.detail
            site.faults.clear("battery")

            site.faults.out_of_range("battery", "soc_pct", 250.0)
            await steps(site)
            assert (await battery.poll())["soc_pct"].quality is Quality.IMPLAUSIBLE
            site.faults.clear("battery")

            site.faults.freeze("grid-meter")
            frozen = list(site.images["grid-meter"].tables[next(iter(site.images["grid-meter"].tables))].registers)
            counter = site.state.import_kwh
            await until(lambda: site.state.import_kwh > counter + 0.01)
            assert site.images["grid-meter"].tables[next(iter(site.images["grid-meter"].tables))].registers == frozen
            site.faults.clear("grid-meter")

            site.faults.slow("grid-meter", 0.6)
            client = await client_for(site, "grid-meter", timeout_s=0.2)
            with pytest.raises(ModbusException):
                await client.read_holding_registers(40000, count=2, device_id=1)
            client.close()
            site.faults.clear("grid-meter")

            site.faults.offline("battery")
            await until(lambda: not site.servers[2].running)
            ep = site.endpoints["battery"]
            client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=0.3, retries=0, reconnect_delay=0)
            assert not await client.connect()
            client.close()
            r = (await battery.poll())["soc_pct"]
            assert r.quality is Quality.MISSING and "unreachable" in r.detail
            site.faults.clear("battery")
            await until(lambda: site.servers[2].running)
            await asyncio.sleep(0.05)   # let the driver's 10 ms back-off pass
            assert (await battery.poll())["soc_pct"].ok
        finally:
            devices.close()


async def test_offline_device_behind_a_shared_port_answers_gateway_no_response() -> None:
    async with simulated_site(site_config(shared_port=True, simulation=STILL)) as site:
        site.faults.offline("battery")
        client = await client_for(site, "grid-meter")
        try:
            meter = await client.read_holding_registers(40000, count=2, device_id=site.endpoints["grid-meter"].unit_id)
            battery = await client.read_holding_registers(40000, count=2, device_id=site.endpoints["battery"].unit_id)
        finally:
            client.close()
    assert not meter.isError()
    assert battery.isError() and battery.exception_code == 11


async def test_speed_factor_moves_the_soc_n_times_faster() -> None:
    """Two sites, 1x and 10x, charging at the same power over the same real interval: 10x the energy stored.

    (Each SOC is that of the site's last step, up to one step old: ≤ 0.05 s of the 2.5 s window.)"""
    sim = {**CALM, "step_s": 0.05}
    async with simulated_site(site_config(simulation=sim), speed=1) as slow, \
            simulated_site(site_config(simulation=sim), speed=10) as fast:
        for site in (slow, fast):
            devices = Devices(site)
            await devices["battery"].poll()
            await devices["battery"].enter_remote_control()
            await devices["battery"].write("battery_setpoint_kw", -300.0)
            devices.close()
        await until(lambda: slow.state.battery_kw < 0 and fast.state.battery_kw < 0)
        soc0 = slow.state.soc_kwh, fast.state.soc_kwh
        await asyncio.sleep(2.5)   # 25 site s at 10x: inside the 30 s reversion time of the setpoint
        gained = slow.state.soc_kwh - soc0[0], fast.state.soc_kwh - soc0[1]
    assert gained[0] > 0
    assert gained[1] / gained[0] == pytest.approx(10.0, rel=0.15)


def profile_roles() -> list[tuple[str, str]]:
    return [(name, str(role)) for name in shipped_profiles() for role in load_profile(name).roles]


def small_site(profile: str, role: str, **simulation: object) -> tuple[SimulatedSiteFile, str]:
    """A small site (vendor profiles carry residential ranges) whose ``role`` device serves ``profile`` alone."""
    base = site_config(simulation={**STILL, "load": {"day_kw": 4, "night_kw": 2, "noise_pct": 0}, **simulation})
    device = next(d for d in base.devices if d.role == role)
    config = SimulatedSiteFile.model_validate({
        **base.model_dump(), "pv": {"kwp": 10, "ac_kw": 8},
        "battery": {"capacity_kwh": 10, "max_charge_kw": 5, "max_discharge_kw": 5},
        "devices": [{**device.model_dump(), "profile": profile}]})
    return config, device.name


@pytest.mark.parametrize(("profile", "role"), profile_roles())
async def test_every_shipped_profile_is_served_and_read_with_ok_quality(profile: str, role: str) -> None:
    config, name = small_site(profile, role)
    async with simulated_site(config) as site:
        devices = Devices(site)
        try:
            readings = await devices[name].poll()
        finally:
            devices.close()
    canonical = {n: r for n, r in readings.items() if n in CANONICAL_POINTS}
    assert canonical, f"{profile} has no canonical {role} points"
    bad = {n: f"{r.quality}: {r.detail}" for n, r in canonical.items() if not r.ok}
    assert not bad, bad


def writable(role: str, point: str) -> list[str]:
    return [name for name in shipped_profiles() if role in load_profile(name).roles
            and (p := load_profile(name).points.get(point)) is not None and p.write is not None]


@pytest.mark.parametrize("profile", writable("battery", "battery_setpoint_kw"))
async def test_every_shipped_battery_profile_takes_a_signed_setpoint(profile: str) -> None:
    config, name = small_site(profile, "battery", step_s=0.2)
    async with simulated_site(config, speed=5) as site:
        devices = Devices(site)
        try:
            battery = devices[name]
            await battery.poll()
            assert all(r.ok for r in await battery.enter_remote_control())
            for kw in (-2.0, 3.0):
                assert (await battery.write("battery_setpoint_kw", kw)).ok
                await until(lambda kw=kw: site.state.battery_kw == pytest.approx(kw))
                await steps(site)
                assert (await battery.poll())["battery_kw"].value == pytest.approx(kw, abs=0.01)
        finally:
            devices.close()


@pytest.mark.parametrize("profile", writable("pv_inverter", "pv_limit_pct"))
async def test_every_shipped_pv_profile_takes_a_limit(profile: str) -> None:
    config, name = small_site(profile, "pv_inverter", step_s=0.2)
    async with simulated_site(config, speed=5) as site:
        devices = Devices(site)
        try:
            inverter = devices[name]
            await inverter.poll()
            assert all(r.ok for r in await inverter.enter_remote_control())
            assert (await inverter.write("pv_limit_pct", 25.0)).ok
            await until(lambda: site.state.pv_kw == pytest.approx(2.0))   # 25 % of 8 kW
        finally:
            devices.close()


async def test_scan_lists_models_and_identity(capsys) -> None:
    async with simulated_site(site_config(simulation=STILL)) as site:
        ep = site.endpoints["pv-inverter"]
        args = ["devices", "scan", f"{ep.host}:{ep.port}", "--unit", str(ep.unit_id)]
        assert await asyncio.to_thread(main, args) == 0
    text = capsys.readouterr().out
    assert "pv-battery-ems" in text and "pv-inverter" in text
    assert "inverter_three_phase" in text and "40070" in text


def test_a_bad_series_file_is_named_by_its_field_and_row(tmp_path: Path) -> None:
    """Read as every measured series is (ems.series_csv): a missing file or a negative value is a ConfigError
    naming simulation.load and the row; `ems run --simulate` printed a FileNotFoundError traceback."""
    clock = ManualClock(datetime(2026, 5, 4, 5, 0, tzinfo=UTC))
    missing = site_config(simulation={"load": {"model": "series", "file": str(tmp_path / "gone.csv"),
                                               "column": "load_kw"}})
    with pytest.raises(ConfigError) as gone:
        SimulatedSite(missing, clock=clock)
    assert gone.value.source == f"simulation.load: {tmp_path / 'gone.csv'}"
    assert [e.field for e in gone.value.errors] == ["(file)"]
    stamps = pd.date_range("2026-05-04T05:00:00Z", periods=4, freq="15min")
    pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "load_kw": [500.0, -5.0, 520.0, 530.0]}).to_csv(tmp_path / "load.csv", index=False)
    negative = site_config(simulation={"load": {"model": "series", "file": str(tmp_path / "load.csv"),
                                                "column": "load_kw"}})
    with pytest.raises(ConfigError) as bad:
        SimulatedSite(negative, clock=clock)
    assert [(e.field, e.message) for e in bad.value.errors] == [("row 3, column load_kw", "negative value -5")]


async def test_the_plant_stops_once_where_a_series_ends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Past the series' last interval the plant stops with one error line and says so to whoever runs it
    (`ems run --simulate` then stops the controller); it logged a traceback every step and went on."""
    stamps = pd.date_range("2026-05-04T05:00:00Z", periods=2, freq="15min")
    pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "load_kw": [500.0, 510.0]}).to_csv(tmp_path / "load.csv", index=False)
    config = site_config(simulation={"load": {"model": "series", "file": str(tmp_path / "load.csv"),
                                              "column": "load_kw"}, "step_s": 60})
    site = SimulatedSite(config, clock=ManualClock(datetime(2026, 5, 4, 5, 0, tzinfo=UTC)))
    ended: list[str] = []
    site.on_data_end = ended.append
    with caplog.at_level("ERROR", logger="drivers.simulated.site"):
        await asyncio.wait_for(site._run(), timeout=10)
    assert len(ended) == 1 and "is outside the data (30 steps from 2026-05-04T05:00:00+00:00)" in ended[0]
    assert site.steps == 30 and "Traceback" not in caplog.text and caplog.text.count("a series ends") == 1


def test_weather_and_load_from_series_files(tmp_path: Path) -> None:
    stamps = pd.date_range("2026-05-04T05:00:00Z", periods=4, freq="15min")
    pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%S%z"), "pv_kw": [100.0, 200.0, 300.0, 400.0],
                  "load_kw": [500.0, 510.0, 520.0, 530.0]}).to_csv(tmp_path / "series.csv", index=False)
    series = {"model": "series", "file": str(tmp_path / "series.csv")}
    config = site_config(simulation={"weather": {**series, "column": "pv_kw"}, "load": {**series, "column": "load_kw"}})
    site = SimulatedSite(config, clock=ManualClock(datetime(2026, 5, 4, 5, 20, tzinfo=UTC)))
    state = site.step(60.0)     # the minute from 05:19 to 05:20: second interval of the series
    assert (state.pv_available_kw, state.load_kw) == (200.0, 510.0)
    assert state.grid_kw == pytest.approx(310.0)
