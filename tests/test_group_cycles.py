"""Cycle tables for a multi-asset site: the real ``Controller.cycle`` against in-memory devices on a manual clock.

Rows are ``(site second, what changes, expected)``, as in tests/test_cycle_tables.py. Before each cycle the fake
plant takes one step: every battery and inverter goes to the setpoint written in the previous cycle (a battery
that ignores setpoints keeps its power), the grid meter reads ``grid = load − Σ PV − Σ battery`` and the PV
sub-meter ``−Σ PV``. At a row with an expectation the published state must give that total battery setpoint
[kW, + discharge], plant PV limit [% of 900 kW], mode, exactly those alarms and, per unit, those setpoints (kW for a
battery, % of its own rating for an inverter).

The site (``SITE``): a grid meter, a PV sub-meter, two inverters of 450 kW behind one logger, two batteries of
500 kWh / 250 kW both ways (SOC window 10–95 %) — as one battery the same 1000 kWh / 500 kW as the cycle tables'
single battery. Import cap 1000 kW, zero export, export margin 10 kW, safe PV limit 30 %; no plan is made, so the
mode is ``self_consumption``; the load's swing is watched for 30 s before the battery discharges to cover load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.config import SiteConfig
from controller.planning import PerfectForecasts
from controller.service import Controller
from drivers.config import DeviceConfig
from ems.clock import ManualClock
from optimizer.tariff import Tariff
from tests.fakes import FakeDevice

T0 = datetime(2026, 5, 4, 3, 0, tzinfo=UTC)
TZ = "Asia/Ho_Chi_Minh"
UNIT = {"capacity_kwh": 500, "max_charge_kw": 250, "max_discharge_kw": 250, "soc_min_pct": 10, "soc_max_pct": 95}
LOGGER = {"host": "fake.invalid", "port": 502}
DEVICES = [
    {"name": "grid-meter", "role": "meter", "profile": "sunspec-meter", "endpoint": {"host": "meter.invalid"}},
    {"name": "pv-meter", "role": "meter", "location": "pv", "profile": "sunspec-meter",
     "endpoint": {"host": "meter.invalid"}, "unit_id": 2},
    {"name": "inv-1", "role": "pv_inverter", "rating_kw": 450, "profile": "sunspec-inverter", "endpoint": LOGGER,
     "unit_id": 1},
    {"name": "inv-2", "role": "pv_inverter", "rating_kw": 450, "profile": "sunspec-inverter", "endpoint": LOGGER,
     "unit_id": 2},
    {"name": "bess-1", "role": "battery", "battery": UNIT, "profile": "sunspec-battery",
     "endpoint": {"host": "bess-1.invalid"}},
    {"name": "bess-2", "role": "battery", "battery": UNIT, "profile": "sunspec-battery",
     "endpoint": {"host": "bess-2.invalid"}},
]
SITE = SiteConfig.model_validate({
    "site": {"name": "multi-table-site", "timezone": TZ, "location": {"latitude": 20.86, "longitude": 106.68}},
    "pv": {"kwp": 1000, "ac_kw": 900},
    "battery": {},
    "grid": {"import_cap_kw": 1000, "export_cap_kw": 0},
    "tariff": {"preset": "evn-manufacturing-22kv"},
    "devices": DEVICES,
    "control": {"cycle_s": 1.0, "heartbeat_s": 10,
                "dispatch": {"safe_pv_limit_pct": 30, "export_margin_kw": 10, "soc_hysteresis_pct": 2},
                "groups": {"tolerance_kw": 2, "tolerance_pct": 5, "response_s": 5, "ramp_pct_per_s": 10,
                           "retry_s": 60}},
})
TARIFF = Tariff.preset("evn-manufacturing-22kv").bind(TZ)
UNPLANNED = PerfectForecasts(lambda _t: 0.0, lambda _t: 0.0)  # never asked: no planning task runs


class MultiSite:
    """The fake plant: every device of ``SITE`` as a :class:`FakeDevice`."""

    def __init__(self, clock: ManualClock):
        def fake(cfg: DeviceConfig, **values: float) -> FakeDevice:
            return FakeDevice(cfg, clock, values, rated_kw=cfg.rating_kw or 0.0, resend_s=10.0, reversion_s=30.0)

        cfgs = {d.name: d for d in SITE.devices}
        self.devices = {
            "grid-meter": fake(cfgs["grid-meter"], grid_kw=0.0),
            "pv-meter": fake(cfgs["pv-meter"], grid_kw=0.0),
            **{n: fake(cfgs[n], pv_kw=0.0) for n in ("inv-1", "inv-2")},
            **{n: fake(cfgs[n], battery_kw=0.0, soc_pct=50.0, max_charge_kw=250.0, max_discharge_kw=250.0)
               for n in ("bess-1", "bess-2")},
        }
        self.steps = 0

    def settle(self, load_kw: float, pv_available_kw: float) -> None:
        inverters = [self.devices[n] for n in ("inv-1", "inv-2")]
        batteries = [self.devices[n] for n in ("bess-1", "bess-2")]
        for inv in inverters:
            inv.available_kw = pv_available_kw / len(inverters)
            inv.apply_setpoint()
        for bat in batteries:
            bat.apply_setpoint()
        pv_kw = sum(float(d.values["pv_kw"] or 0.0) for d in inverters)
        battery_kw = sum(float(d.values["battery_kw"] or 0.0) for d in batteries)
        self.steps += 1
        self.devices["grid-meter"].set(grid_kw=load_kw - pv_kw - battery_kw,
                                       voltage_l1_v=230.0 + 0.1 * (self.steps % 2))
        self.devices["pv-meter"].set(grid_kw=-pv_kw)


@dataclass(frozen=True)
class Expect:
    battery_kw: float
    pv_pct: float
    units: dict[str, float]
    alarms: frozenset[str] = frozenset()
    mode: str = "self_consumption"
    out: frozenset[str] = field(default_factory=frozenset)


def expect(battery_kw: float, pv_pct: float, units: dict[str, float], *alarms: str, mode: str = "self_consumption",
           out: tuple[str, ...] = ()) -> Expect:
    return Expect(battery_kw, pv_pct, units, frozenset(alarms), mode, frozenset(out))


Row = tuple[int, dict[str, Any], Expect | None]


async def run(rows: list[Row], tmp_path: Path) -> tuple[MultiSite, list[dict]]:
    clock = ManualClock(T0)
    site = MultiSite(clock)
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
                    continue
                what, name = key.split(":")
                device = site.devices[name]
                if what == "set":
                    device.set(**value)
                elif what == "ignore":
                    device.ignore_setpoints = value
                else:
                    {"offline": device.go_offline, "back": device.come_back}[what]()
            site.settle(world["load"], world["pv"])
            state = await controller.cycle()
            if want is not None:
                got = (state["setpoints"]["battery_kw"], state["setpoints"]["pv_limit_pct"])
                assert got == pytest.approx((want.battery_kw, want.pv_pct), abs=0.05), (t, got)
                assert (state["mode"], frozenset(state["alarms"])) == (want.mode, want.alarms), (t, state["alarms"])
                units = {n: state["devices"][n]["setpoint"] for n in want.units}
                assert units == pytest.approx(want.units, abs=0.05), (t, units)
                out = {n for n, d in state["devices"].items() if d.get("in_group") is False}
                assert out == want.out, (t, out)
                seen.append(state)
            clock.advance(1.0)
    finally:
        controller.store.close()
    return site, seen


CASES: dict[str, list[Row]] = {
    # Load 400, PV 700 (350 per inverter): self-consumption charges −310 (as the single battery in the cycle tables:
    # the export cap allows 400 − 700 − 10). Split by headroom: bess-1 at 30 % has 500 · 0.65 = 325 kWh, bess-2 at
    # 80 % has 75 kWh: 310 · 325/400 = 251.9 > 250 → bess-1 −250 (its limit), bess-2 the other −60. No PV limit.
    # The published SOC is the energy-weighted 55 %.
    "split by headroom, capped at a unit's limit": [
        (0, {"load": 400.0, "pv": 700.0, "set:bess-1": {"soc_pct": 30.0}, "set:bess-2": {"soc_pct": 80.0}},
         expect(-310, 100, {"bess-1": -250, "bess-2": -60, "inv-1": 100, "inv-2": 100})),
        (5, {}, expect(-310, 100, {"bess-1": -250, "bess-2": -60})),
    ],
    # Night, load 1300, both at 60 %: the import cap needs 300, shared by available energy (equal): 150 each.
    # t=5: bess-2 trips (0 kW) and stops answering: out of the group at once, the group's limit shrinks to
    # bess-1's 250 → 250 and import_cap_unheld; bess-2 is not written (write_failed). t=10: it answers again: back
    # in, 150 each.
    "a unit drops out and comes back": [
        (0, {"load": 1300.0, "set:bess-1": {"soc_pct": 60.0}, "set:bess-2": {"soc_pct": 60.0}},
         expect(300, 100, {"bess-1": 150, "bess-2": 150})),
        (4, {}, expect(300, 100, {"bess-1": 150, "bess-2": 150})),
        (5, {"set:bess-2": {"battery_kw": 0.0}, "offline:bess-2": None},
         expect(250, 100, {"bess-1": 250, "bess-2": 0}, "unit_out:bess-2", "write_failed:bess-2",
                "import_cap_unheld", out=("bess-2",))),
        (9, {}, expect(250, 100, {"bess-1": 250, "bess-2": 0}, "unit_out:bess-2", "write_failed:bess-2",
                       "import_cap_unheld", out=("bess-2",))),
        (10, {"back:bess-2": None}, expect(300, 100, {"bess-1": 150, "bess-2": 150})),
        (12, {}, expect(300, 100, {"bess-1": 150, "bess-2": 150})),
    ],
    # As above, but bess-2 acknowledges its setpoints and stays at 0 kW. Asked 150 kW at t=0, seen at 0 kW from
    # t=1, it has 5 s + 150 / (10 %/s × 250 kW) = 11 s: at t=12 unit_not_following (stuck at 0), it is taken out and
    # gets 0 kW; bess-1 alone can give 250 of the 300 the import cap needs (import_cap_unheld).
    "a unit that ignores its setpoint is taken out": [
        (0, {"load": 1300.0, "set:bess-1": {"soc_pct": 60.0}, "set:bess-2": {"soc_pct": 60.0}, "ignore:bess-2": True},
         expect(300, 100, {"bess-1": 150, "bess-2": 150})),
        (11, {}, expect(300, 100, {"bess-1": 150, "bess-2": 150})),
        (12, {}, expect(250, 100, {"bess-1": 250, "bess-2": 0}, "unit_not_following:bess-2", "import_cap_unheld",
                        out=("bess-2",))),
        (15, {}, expect(250, 100, {"bess-1": 250, "bess-2": 0}, "unit_not_following:bess-2", "import_cap_unheld",
                        out=("bess-2",))),
    ],
    # Load 400, PV 300: t=5 the grid meter stops answering: the site-wide safe state (battery 0, PV 30 % on every
    # inverter); the PV sub-meter still answering changes nothing.
    "grid meter loss: site-wide safe state": [
        (0, {"load": 400.0, "pv": 300.0}, expect(0, 100, {"bess-1": 0, "bess-2": 0, "inv-1": 100, "inv-2": 100})),
        (5, {"offline:grid-meter": None},
         expect(0, 30, {"bess-1": 0, "bess-2": 0, "inv-1": 30, "inv-2": 30}, "data_missing",
                "device_unreachable:grid-meter", mode="safe")),
    ],
    # Load 400, PV 700, both at 50 %; bess-2's BMS allows no charge: it is out for charge (alarm), the group charges
    # at most bess-1's 250 → −250; PV limited to 400 + 250 − 10 = 640 kW = 71.1 %, on each inverter.
    "BMS 0 kW on one unit": [
        (0, {"load": 400.0, "pv": 700.0, "set:bess-2": {"max_charge_kw": 0.0}},
         expect(-250, 640 / 9, {"bess-1": -250, "bess-2": 0, "inv-1": 71.1, "inv-2": 71.1}, "unit_out:bess-2")),
        (3, {}, expect(-250, 640 / 9, {"bess-1": -250, "bess-2": 0}, "unit_out:bess-2")),
    ],
}


async def test_a_group_is_not_healthy_while_a_setpoint_does_not_reach_its_unit(tmp_path: Path) -> None:
    _, states = await run([(0, {"load": 1300.0, "set:bess-1": {"soc_pct": 60.0}, "set:bess-2": {"soc_pct": 60.0},
                                "ignore:bess-2": True}, None),
                           (12, {}, expect(250, 100, {"bess-1": 250, "bess-2": 0}, "unit_not_following:bess-2",
                                           "import_cap_unheld", out=("bess-2",)))], tmp_path)
    assert states[-1]["groups"]["battery"] == {"healthy": False, "units": 2, "in_group": 1}


@pytest.mark.parametrize("rows", CASES.values(), ids=CASES.keys())
async def test_group_cycle_table(rows: list[Row], tmp_path: Path) -> None:
    await run(rows, tmp_path)


async def test_aggregate_and_per_device_telemetry(tmp_path: Path) -> None:
    """The state message: aggregate points for the chain, one ``devices`` entry per unit and sub-meter."""
    site, (state,) = await run([(0, {"load": 400.0, "pv": 700.0, "set:bess-1": {"soc_pct": 30.0},
                                     "set:bess-2": {"soc_pct": 80.0}}, None),
                                (1, {}, expect(-310, 100, {"bess-1": -250, "bess-2": -60}))], tmp_path)
    m = state["measurements"]
    assert m["soc_pct"]["value"] == pytest.approx(55.0)
    assert m["battery_kw"]["value"] == pytest.approx(-310.0)
    assert m["max_charge_kw"]["value"] == 500.0 and m["pv_kw"]["value"] == 700.0
    assert state["devices"]["bess-1"] == {"ok": True, "error": None, "role": "battery", "in_group": True,
                                          "reason": None, "measured_kw": -250.0, "setpoint": -250.0,
                                          "setpoint_unit": "kW", "soc_pct": 30.0}
    assert state["groups"] == {"battery": {"healthy": True, "units": 2, "in_group": 2},
                               "pv": {"healthy": True, "units": 2, "in_group": 2}}
    assert state["devices"]["pv-meter"]["location"] == "pv" and state["devices"]["pv-meter"]["measured_kw"] == -700
    assert site.devices["bess-2"].sent("battery_setpoint_kw") == [-60.0]  # unchanged: not re-sent before the heartbeat
