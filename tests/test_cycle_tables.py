"""Cycle tables: the real ``Controller.cycle`` against in-memory devices on a manual clock (no Modbus, no sleeping).

In the style of OpenEMS's controller tests: each case is a table of rows ``(site second, what changes, expected)``.
The controller cycles every second of the manual clock from 0 to the last row; before each cycle the fake plant
takes one step (``tests.fakes.FakeSite.settle``: the battery and PV go to the setpoints written in the previous
cycle, the meter reads ``grid = load − PV − battery``), so what a row changes holds until a later row changes it.
At a row with an expectation the cycle's published state must give that battery setpoint [kW, + discharge], PV
limit [% of 900 kW], mode and exactly those alarms.

The site (``SITE`` below): PV 900 kW AC; battery 1000 kWh, 500 kW both ways, SOC window 10–95 %, hysteresis 2 %;
import cap 1000 kW, zero export, export margin 10 kW; safe PV limit 30 % (270 kW); the load's swing is watched
for 30 s before the battery discharges to cover load (the import cap may always make it discharge); no plan is
ever made, so ``auto`` falls back to ``self_consumption`` (grid target 0). Known answers are worked out by hand in
the comments (docs/controller.md has the chain).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.config import SiteConfig
from controller.planning import PerfectForecasts
from controller.service import Controller
from ems.clock import ManualClock
from optimizer.tariff import Tariff
from tests.fakes import FakeSite

T0 = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)  # a Monday, 10:00 local
TZ = "Asia/Ho_Chi_Minh"
SITE = SiteConfig.model_validate({
    "site": {"name": "table-site", "timezone": TZ, "location": {"latitude": 20.86, "longitude": 106.68}},
    "pv": {"kwp": 1000, "ac_kw": 900},
    "battery": {"capacity_kwh": 1000, "max_charge_kw": 500, "max_discharge_kw": 500, "soc_min_pct": 10,
                "soc_max_pct": 95},
    "grid": {"import_cap_kw": 1000, "export_cap_kw": 0},
    "tariff": {"preset": "evn-manufacturing-22kv"},
    "devices": [{"name": "grid-meter", "role": "meter", "profile": "sunspec-meter",
                 "endpoint": {"host": "fake.invalid"}},
                {"name": "pv-inverter", "role": "pv_inverter", "profile": "sunspec-inverter",
                 "endpoint": {"host": "fake.invalid"}, "unit_id": 2},
                {"name": "battery", "role": "battery", "profile": "sunspec-battery",
                 "endpoint": {"host": "fake.invalid"}, "unit_id": 3}],
    "control": {"cycle_s": 1.0, "heartbeat_s": 10,
                "dispatch": {"safe_pv_limit_pct": 30, "export_margin_kw": 10, "soc_hysteresis_pct": 2}},
})
TARIFF = Tariff.preset("evn-manufacturing-22kv").bind(TZ)
UNPLANNED = PerfectForecasts(lambda _t: 0.0, lambda _t: 0.0)  # never asked: no planning task runs


@dataclass(frozen=True)
class Expect:
    battery_kw: float
    pv_pct: float
    mode: str
    alarms: frozenset[str] = frozenset()


Row = tuple[int, dict[str, Any], Expect | None]


def expect(battery_kw: float, pv_pct: float, mode: str = "self_consumption", *alarms: str) -> Expect:
    return Expect(battery_kw, pv_pct, mode, frozenset(alarms))


async def run(rows: list[Row], tmp_path: Path) -> list[dict]:
    """Run the table; returns the published states of the expectation rows."""
    clock = ManualClock(T0)
    site = FakeSite(clock, pv_rated_kw=900.0, resend_s=10.0, reversion_s=30.0, max_age_s=5.0)
    controller = Controller(SITE, site.devices, clock, TARIFF, tmp_path / "state.sqlite", forecasts=UNPLANNED)
    world = {"load": 0.0, "pv": 0.0}
    changes = {t: (change, want) for t, change, want in rows}
    seen = []
    try:
        for t in range(rows[-1][0] + 1):
            change, want = changes.get(t, ({}, None))
            for key, value in change.items():
                if key in world:
                    world[key] = value
                elif key == "soc":
                    site.battery.set(soc_pct=value)
                elif key == "bms_charge":
                    site.battery.set(max_charge_kw=value)
                elif key == "command":
                    assert controller.apply(value).accepted
                else:  # a fault: meter/battery → offline | back | freeze | ignore (writes acknowledged, not obeyed)
                    device = getattr(site, key)
                    {"offline": device.go_offline, "back": device.come_back, "freeze": device.freeze,
                     "ignore": lambda d=device: setattr(d, "ignore_setpoints", True)}[value]()
            site.settle(world["load"], world["pv"])
            state = await controller.cycle()
            if want is not None:
                got = Expect(state["setpoints"]["battery_kw"], state["setpoints"]["pv_limit_pct"], state["mode"],
                             frozenset(state["alarms"]))
                assert got.battery_kw == pytest.approx(want.battery_kw, abs=0.05), (t, got)
                assert got.pv_pct == pytest.approx(want.pv_pct, abs=0.01), (t, got)
                assert (got.mode, got.alarms) == (want.mode, want.alarms), (t, got)
                seen.append(state)
            clock.advance(1.0)
    finally:
        controller.store.close()
    return seen


CASES: dict[str, list[Row]] = {
    # Load 400, PV 700: 300 kW surplus. t=0: battery 0, grid −300, load = −300 + 700 + 0 = 400. Self-consumption
    # wants grid 0: battery = 400 − 700 = −300; the export cap allows at most 400 − 700 − 10 (margin) = −310 → −310.
    # PV limit = load − battery − margin = 400 + 310 − 10 = 700 ≥ the 700 available: none.
    # t=5: the battery charges 310, grid = 400 − 700 + 310 = +10 (the margin): steady.
    # t=6: the BMS allows only 300 kW of charge, PV rises to 900: battery −300 (BMS), grid = 400 − 900 + 300 = −200;
    # PV limit = 400 + 300 − 10 = 690 kW = 76.67 % of 900. t=7: PV 690 at its limit (probe +45 kW), battery still
    # −300 (BMS), limit 690 again: grid 400 − 690.3 + 300 ≈ +9.7 (the limit is written rounded to 76.7 %).
    "self-consumption charges from PV surplus, then the BMS limit curtails PV": [
        (0, {"load": 400.0, "pv": 700.0}, expect(-310, 100)),
        (5, {}, expect(-310, 100)),
        (6, {"bms_charge": 300.0, "pv": 900.0}, expect(-300, 690 / 9)),
        (7, {}, expect(-300, 690 / 9)),
    ],
    # Night, load 1300, PV 0, SOC 60. t=0: grid 1300; the import cap needs a discharge of at least
    # 1300 − 1000 = 300; the load's swing is not known yet (watched < 30 s), so no more than that: 300, grid 1000.
    # t=30: watched for 30 s: self-consumption discharges the full 500 (PCS), grid 800.
    # t=31: load 1700: the cap needs 700 > 500 → 500 and alarm import_cap_unheld.
    "the import cap is held by discharge": [
        (0, {"load": 1300.0, "soc": 60.0}, expect(300, 100)),
        (29, {}, expect(300, 100)),
        (30, {}, expect(500, 100)),
        (31, {"load": 1700.0}, expect(500, 100, "self_consumption", "import_cap_unheld")),
    ],
    # Load 400, PV 300 (no surplus), the battery idle (no discharge for load in the first 30 s).
    # t=5: the meter stops answering: site-wide safe state, battery 0, PV at the safe limit: 30 % = 270 kW (the
    # lowest load seen, 400 − margin 10 = 390, is higher). Mode safe, alarms data_missing and device_unreachable.
    # t=8: the meter is back: the chain runs again at once (data_missing clears), the device alarm is held
    # clear_after_s = 10 s. PV was held at 270 (at its 30 % limit: probe +45 → 315 available): battery 0 (swing
    # unknown), PV limit = 400 − 0 − 10 = 390 kW = 43.33 %.
    "meter missing: safe state, PV limited": [
        (0, {"load": 400.0, "pv": 300.0}, expect(0, 100)),
        (5, {"meter": "offline"}, expect(0, 30, "safe", "data_missing", "device_unreachable:grid-meter")),
        (7, {}, expect(0, 30, "safe", "data_missing", "device_unreachable:grid-meter")),
        (8, {"meter": "back"}, expect(0, 390 / 9, "self_consumption", "device_unreachable:grid-meter")),
        (18, {}, expect(0, 390 / 9)),
    ],
    # Load 400, PV 700: the battery charges 310 (as in the first case). t=3: the battery stops answering; it was
    # last seen charging 310 and told −310, its reversion timer (30 s + 10 s margin) has not run out, so it may
    # stop charging at any moment: path −310 → −310 → 0, largest rise 310. PV alone holds export under the cap
    # against that rise: PV ≤ grid + PV − rise − margin = 10 + 700 − 310 − 10 = 390 kW = 43.33 %. Battery 0 (not
    # written: unreachable → write_failed). t=4: PV 389.7 at its limit, the battery still charges (physically),
    # grid = 400 − 389.7 + 310 = 320.3; PV ≤ 320.3 + 389.7 − 310 − 10 = 390 again.
    "battery missing: PV alone holds the export cap": [
        (0, {"load": 400.0, "pv": 700.0}, expect(-310, 100)),
        (2, {}, expect(-310, 100)),
        (3, {"battery": "offline"},
         expect(0, 390 / 9, "safe", "data_missing", "device_unreachable:battery", "write_failed:battery")),
        (4, {}, expect(0, 390 / 9, "safe", "data_missing", "device_unreachable:battery", "write_failed:battery")),
    ],
    # Load 400, PV 300. t=3: the meter keeps answering but its registers stop updating (readings keep the t=3
    # timestamp). max_age_s 5: still fresh at t=8 (5 s old), stale at t=9 (6 s): safe state, PV 30 %.
    "a stale reading: safe state once older than max_age_s": [
        (0, {"load": 400.0, "pv": 300.0}, expect(0, 100)),
        (3, {"meter": "freeze"}, expect(0, 100)),
        (8, {}, expect(0, 100)),
        (9, {}, expect(0, 30, "safe", "data_missing", "point_stale:grid-meter:grid_kw",
                       "point_stale:grid-meter:voltage_l1_v")),
    ],
    # Night, load 400, PV 0. t=0: manual −200 kW for 40 s: inside every bound (charge allowed, the export cap
    # allows 400 − 10 = 390 of discharge) → −200, grid 600. At t=40 it has expired: back to self-consumption, which
    # after 40 s of watching the load discharges what the export margin allows: 400 − 0 − 10 = 390, grid +10.
    "manual mode expires into self-consumption": [
        (0, {"load": 400.0, "command": {"command": "manual_setpoint", "battery_kw": -200, "ttl_s": 40}},
         expect(-200, 100, "manual")),
        (39, {}, expect(-200, 100, "manual")),
        (40, {}, expect(390, 100)),
        (41, {}, expect(390, 100)),
    ],
    # Load 400, PV 300; the battery acknowledges its setpoints and stays at 0 kW (a PCS left in local mode). t=5: PV
    # 900: self-consumption asks −500 kW (PCS), PV limit 400 + 500 − 10 = 890 kW = 98.89 %. The battery stays at
    # 0 kW: the validation's stuck rule (battery_stuck_s 10 s from the command's move, a cycle later) marks
    # battery_kw stale at t=16: safe state, battery 0, and the only battery is out of its group as not following
    # (unit_not_following), so its limits are missing and the safe state holds. PV 0 % until the battery's own
    # reversion timer (30 s + 10 s margin after the last −500 kW write) can no longer have it charging; then PV
    # alone holds the export cap: 400 − 10 = 390 kW = 43.33 %. The stale reading clears at t=26, the safe state
    # does not: the battery stays out for control.groups.retry_s (300 s). Before, the safe state cleared at t=26,
    # the controller asked −500 kW again, trusted the battery with the PV surplus (PV limit back to 98 %) and went
    # between the two every 20 s.
    "a battery that ignores its setpoint stays out, no flapping": [
        (0, {"load": 400.0, "pv": 300.0, "battery": "ignore"}, expect(0, 100)),
        (5, {"pv": 900.0}, expect(-500, 890 / 9)),
        (15, {}, expect(-500, 890 / 9)),
        (16, {}, expect(0, 0, "safe", "data_missing", "point_stale:battery:battery_kw", "unit_not_following:battery")),
        (26, {}, expect(0, 0, "safe", "data_missing", "unit_not_following:battery")),
        (55, {}, expect(0, 390 / 9, "safe", "data_missing", "unit_not_following:battery")),
        (120, {}, expect(0, 390 / 9, "safe", "data_missing", "unit_not_following:battery")),
    ],
    # Night, load 600, PV 0, SOC 11 %. t=30: the swing is known: discharge 500 (PCS), grid 100. t=31: SOC at the
    # 10 % minimum: no discharge (the import cap does not need any: 600 < 1000) → 0, grid 600. t=40: SOC 11 % is
    # still inside the 2 % hysteresis (discharge again from 12 %) → 0.
    "SOC at its minimum: no discharge": [
        (0, {"load": 600.0, "soc": 11.0}, expect(0, 100)),
        (30, {}, expect(500, 100)),
        (31, {"soc": 10.0}, expect(0, 100)),
        (40, {"soc": 11.0}, expect(0, 100)),
    ],
}


@pytest.mark.parametrize("rows", CASES.values(), ids=CASES.keys())
async def test_cycle_table(rows: list[Row], tmp_path: Path) -> None:
    await run(rows, tmp_path)


async def test_setpoints_reach_the_devices_once_and_at_the_heartbeat(tmp_path: Path) -> None:
    """The first case's writes as the fakes received them: −310 kW once, re-sent every heartbeat_s = 10 s while
    unchanged (t=0, 10, 20); PV 100 % likewise."""
    clock = ManualClock(T0)
    site = FakeSite(clock, resend_s=10.0)
    controller = Controller(SITE, site.devices, clock, TARIFF, tmp_path / "state.sqlite", forecasts=UNPLANNED)
    try:
        for _ in range(21):
            site.settle(400.0, 700.0)
            await controller.cycle()
            clock.advance(1.0)
    finally:
        controller.store.close()
    assert [(t, v) for t, p, v in site.battery.writes if p == "battery_setpoint_kw"] == \
        [(0.0, -310.0), (10.0, -310.0), (20.0, -310.0)]
    assert site.pv.sent("pv_limit_pct") == [100.0, 100.0, 100.0]
    assert site.battery.enter_count == site.pv.enter_count == site.meter.enter_count == 1


@pytest.mark.parametrize(("meter_has_remote_control", "says"), [
    (False, "controller stopped: battery 0 kW, remote control released"),
    (True, "remote control NOT released everywhere"),
])
async def test_shutdown_owes_a_meter_without_remote_control_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, meter_has_remote_control: bool, says: str) -> None:
    """The meter went silent before the stop: a meter has no remote control to hand back (its profile has no
    sequence), so shutdown neither reports it "unreachable, remote control not released" nor calls the release
    incomplete; a device that has one and cannot be reached still is."""
    clock = ManualClock(T0)
    site = FakeSite(clock, pv_rated_kw=900.0, resend_s=10.0, reversion_s=30.0, max_age_s=5.0)
    site.meter.has_remote_control = meter_has_remote_control
    controller = Controller(SITE, site.devices, clock, TARIFF, tmp_path / "state.sqlite", forecasts=UNPLANNED)
    for _ in range(3):
        site.settle(400.0, 300.0)
        await controller.cycle()
        clock.advance(1.0)
    site.meter.go_offline()
    site.settle(400.0, 300.0)
    await controller.cycle()
    with caplog.at_level("WARNING", logger="controller.service"):
        await controller.shutdown()
    assert says in caplog.text
    assert ("grid-meter unreachable, remote control not released" in caplog.text) is meter_has_remote_control
    assert site.battery.leave_count == site.pv.leave_count == 1 and not site.battery.remote_control
