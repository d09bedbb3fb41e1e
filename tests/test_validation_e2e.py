"""Validation end to end: faults injected mid-run into the simulated site, judged on the plant's *true* values.

The controller runs against the simulated site over real Modbus on one accelerated clock (see
tests/test_controller_e2e.py); a sampler records the plant's true grid power every half second of
site time. Issue 11, failures 1 (a frozen meter is believed for ever) and 2 (an impossible meter
value is believed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from drivers.simulated.site import SimulatedSite
from tests.test_controller_e2e import running, site_file, until

pytestmark = pytest.mark.slow

KWP = 1000
EXPORT_TOL_KW = 0.01 * KWP
"""True export allowed on a zero-export site: 1 % of the array, as in test_controller_e2e. [kW]"""
REACTION_S = 15.0
"""Documented reaction time to a frozen meter (docs/controller.md, "Validation stage"): the 10 s window of
``grid_stuck_s`` plus a few cycles for the PV limit to reach the inverter. [s of site time]"""


async def sample_grid(site: SimulatedSite, since: float, out: list[tuple[float, float]]) -> None:
    """Append (site seconds since ``since``, true grid power [kW, + import]) every half second."""
    while True:
        assert site.state is not None
        out.append((site.clock.monotonic() - since, site.state.grid_kw))
        await site.clock.sleep(0.5)


async def fault_run(site: SimulatedSite, inject: Callable[[], None], site_s: float) -> list[tuple[float, float]]:
    """Inject a fault, then sample the true grid for ``site_s`` site seconds."""
    samples: list[tuple[float, float]] = []
    inject()
    sampler = asyncio.create_task(sample_grid(site, site.clock.monotonic(), samples))
    await site.clock.sleep(site_s)
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    return samples


async def test_frozen_meter_mid_run_goes_safe_and_holds_zero_export(tmp_path):
    """Issue 11 failure 1: the meter freezes (answers, values old) while PV exceeds the load and the battery
    is full; then the load drops from 500 to 300 kW. Believing the frozen grid value, the controller keeps PV
    where it was and the site exports; with validation the frozen grid power is found within the window,
    alarmed as point_stale naming the meter, and the safe state (PV 30 % = 270 kW < 300 kW load) holds
    zero export from then on."""
    path = site_file(tmp_path, simulation={"start": "2026-05-04T11:00:00+07:00", "initial_soc_pct": 96,
                                           "weather": {"cloudiness": 0.0},
                                           "load": {"day_kw": 500, "night_kw": 500}})
    async with running(path, 20, tmp_path / "state") as (site, _controller, states):
        assert await until(site, lambda: len(states) >= 30, 120)

        def inject() -> None:
            site.faults.freeze("grid-meter")
            site.load_source = lambda now: 300.0

        n_fault = len(states)
        samples = await fault_run(site, inject, 90.0)
        after = states[n_fault:]
    exports = [(t, -g) for t, g in samples]
    worst_after = max((e for t, e in exports if t >= REACTION_S), default=0.0)
    print(f"frozen meter: peak true export {max(e for _, e in exports):.0f} kW in the reaction time, "
          f"{worst_after:.0f} kW after it")
    assert site.state.pv_available_kw > 600  # PV well above the load: export is possible
    assert worst_after <= EXPORT_TOL_KW, [(t, e) for t, e in exports if t >= REACTION_S and e > EXPORT_TOL_KW][:10]
    assert any("point_stale:grid-meter:grid_kw" in s["alarms"] for s in after)
    assert after[-1]["mode"] == "safe"
    assert after[-1]["measurements"]["grid_kw"]["quality"] == "stale"


@pytest.mark.parametrize("bad_kw", [-3000.0, 3000.0])
async def test_impossible_grid_power_is_implausible_and_holds_the_caps(tmp_path, bad_kw):
    """Issue 11 failure 2: the meter reads ±3,000 kW on a site whose grid can carry at most import cap + PV +
    battery charge (2,400 kW) or PV + battery discharge (1,400 kW). Believed, −3,000 made the controller
    cut PV and charge at 500 kW (true import 1,300 kW against the 1,000 kW cap) and +3,000 made it
    discharge into the grid. With validation the reading is implausible, alarmed, and the safe state
    holds import under the cap with no export."""
    path = site_file(tmp_path, simulation={"start": "2026-05-04T11:00:00+07:00", "initial_soc_pct": 50,
                                           "weather": {"cloudiness": 0.0},
                                           "load": {"day_kw": 800, "night_kw": 800}})
    async with running(path, 20, tmp_path / "state") as (site, _controller, states):
        assert await until(site, lambda: len(states) >= 20, 120)
        n_fault = len(states)
        samples = await fault_run(site, lambda: site.faults.out_of_range("grid-meter", "grid_kw", bad_kw), 60.0)
        after = states[n_fault:]
    settled = [g for t, g in samples if t >= 5.0]
    print(f"grid_kw {bad_kw:+.0f}: true grid {min(settled):.0f}…{max(settled):.0f} kW after 5 s")
    assert max(settled) <= 1000 * 1.01, max(settled)
    assert min(settled) >= -EXPORT_TOL_KW, min(settled)
    assert any("point_implausible:grid-meter:grid_kw" in s["alarms"] for s in after)
    assert after[-1]["measurements"]["grid_kw"]["quality"] == "implausible"


async def test_a_device_frozen_from_the_start_serves_its_first_values(tmp_path):
    """``--fault grid-meter:frozen`` from the start used to serve "not implemented" (the image was never
    written); frozen now means the first step's values, old but plausible, and never updated."""
    site = SimulatedSite.from_file(site_file(tmp_path), speed=50)
    site.faults.freeze("grid-meter")
    await site.start()
    try:
        image = site.images["grid-meter"]
        first = {p: image.value(p) for p in image.measured_points()}
        assert all(v is not None for v in first.values()), first
        steps = site.steps
        while site.steps < steps + 5:
            await site.clock.sleep(1.0)
        assert {p: image.value(p) for p in image.measured_points()} == first
        assert site.images["battery"].value("soc_pct") is not None
    finally:
        await site.stop()


async def test_frozen_battery_mid_run_is_found_before_the_soc_leaves_its_window(tmp_path):
    """Issue 11 failure 1, battery: the battery freezes (answers, old values; it still obeys setpoints) while it
    charges from PV surplus at 93 % SOC against a 95 % limit. Believed, its frozen power and SOC let the
    controller keep charging past the limit; with validation the frozen readings are alarmed (point_stale
    naming the battery) and the true SOC stays within its window."""
    path = site_file(tmp_path, simulation={"start": "2026-05-04T11:00:00+07:00", "initial_soc_pct": 93,
                                           "weather": {"cloudiness": 0.0},
                                           "load": {"day_kw": 300, "night_kw": 300}})
    async with running(path, 20, tmp_path / "state") as (site, _controller, states):
        assert await until(site, lambda: len(states) >= 20, 120)
        assert site.state.battery_kw < -100  # charging from the surplus
        n_fault = len(states)
        socs: list[float] = []

        async def watch() -> None:
            while True:
                socs.append(site.state.soc_pct)
                await site.clock.sleep(1.0)

        watcher = asyncio.create_task(watch())
        site.faults.freeze("battery")
        await site.clock.sleep(420.0)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        after = states[n_fault:]
    print(f"frozen battery: true SOC {socs[0]:.2f} → max {max(socs):.2f} %")
    assert any(code.startswith("point_stale:battery:") for s in after for code in s["alarms"])
    assert max(socs) <= 95.0, max(socs)
