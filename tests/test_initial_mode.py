"""``control.initial_mode``: a new site starts monitor-only (writes nothing) or in standby (battery 0 kW) and
stays there until an operator asks for a mode.

The mode machine by tables; then the controller against the simulated site over real Modbus: what the
devices' registers were written (``DeviceImage.last_write``), not what the controller believes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.modes import Mode, ModeMachine, Reason, Request
from drivers.roles import Role
from tests.test_controller_e2e import battery_register, running, site_file, until

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)


@pytest.mark.parametrize(("initial", "safe", "plan_reason", "expected"), [
    (Mode.MONITOR_ONLY, False, None, (Mode.MONITOR_ONLY, Reason.INITIAL_MODE)),
    (Mode.MONITOR_ONLY, True, None, (Mode.MONITOR_ONLY, Reason.INITIAL_MODE)),       # nothing written, even safe
    (Mode.MONITOR_ONLY, False, Reason.NO_PLAN, (Mode.MONITOR_ONLY, Reason.INITIAL_MODE)),
    (Mode.STANDBY, False, None, (Mode.STANDBY, Reason.INITIAL_MODE)),
    (Mode.STANDBY, True, None, (Mode.SAFE, Reason.DATA_MISSING)),                   # safe beats standby
    (Mode.STANDBY, False, Reason.NO_PLAN, (Mode.STANDBY, Reason.INITIAL_MODE)),
    (Mode.AUTO, False, None, (Mode.AUTO, Reason.PLAN)),
    (Mode.AUTO, False, Reason.NO_PLAN, (Mode.SELF_CONSUMPTION, Reason.NO_PLAN)),
])
def test_initial_mode_holds_without_expiry(initial: Mode, safe: bool, plan_reason: Reason | None,
                                           expected: tuple[Mode, Reason]) -> None:
    m = ModeMachine(Mode.SELF_CONSUMPTION, T0, initial)
    for t in (T0, T0 + timedelta(days=30)):
        s = m.evaluate(t, safe=safe, plan_reason=plan_reason)
        assert (s.mode, s.reason) == expected
    assert m.monitor_only is (initial is Mode.MONITOR_ONLY)


@pytest.mark.parametrize("initial", [Mode.MONITOR_ONLY, Mode.STANDBY])
@pytest.mark.parametrize(("request_", "then"), [
    (Request(Mode.AUTO, LATER), (Mode.AUTO, Reason.PLAN)),
    (Request(Mode.STANDBY, LATER), (Mode.STANDBY, Reason.OPERATOR)),
    (Request(Mode.MANUAL, LATER, setpoint_kw=-5), (Mode.MANUAL, Reason.OPERATOR)),
])
def test_the_first_operator_request_ends_the_initial_mode_for_good(initial: Mode, request_: Request,
                                                                    then: tuple[Mode, Reason]) -> None:
    m = ModeMachine(Mode.SELF_CONSUMPTION, T0, initial)
    assert m.state.mode is initial and m.state.reason is Reason.INITIAL_MODE
    m.request_mode(request_)
    s = m.evaluate(T0, safe=False, plan_reason=None)
    assert (s.mode, s.reason) == then and not m.monitor_only
    s = m.evaluate(LATER, safe=False, plan_reason=None)                  # the request expired: auto, not initial
    assert (s.mode, s.reason) == (Mode.AUTO, Reason.PLAN)


@pytest.mark.parametrize("mode", [Mode.MANUAL, Mode.SAFE, Mode.SELF_CONSUMPTION])
def test_only_auto_standby_and_monitor_only_start_a_site(mode: Mode) -> None:
    with pytest.raises(ValueError, match="initial mode must be one of"):
        ModeMachine(Mode.SELF_CONSUMPTION, T0, mode)


def test_every_dashboard_language_names_every_mode_and_reason() -> None:
    folder = Path(__file__).resolve().parents[1] / "controller" / "dashboard" / "static" / "i18n"
    for lang in ("en", "vi", "ja"):
        texts = json.loads((folder / f"{lang}.json").read_text())
        missing = [f"mode.{m}" for m in Mode if f"mode.{m}" not in texts] + \
            [f"reason.{r}" for r in Reason if f"reason.{r}" not in texts]
        assert not missing, f"{lang}: {missing}"


# --- end to end over real Modbus ---------------------------------------------------------------------------

NOON_EXPORT = {"start": "2026-05-04T12:00:00+07:00", "initial_soc_pct": 95,
               "weather": {"cloudiness": 0.0}, "load": {"day_kw": 300, "night_kw": 300}}
"""PV far above the load and a nearly full battery: auto would curtail the PV to hold zero export."""


@pytest.mark.slow
async def test_monitor_only_writes_nothing_until_the_operator_switches_to_auto(tmp_path):
    path = site_file(tmp_path, simulation=NOON_EXPORT, control={"initial_mode": "monitor_only"})
    async with running(path, 10, tmp_path / "state") as (site, controller, states):
        assert await until(site, lambda: len(states) >= 10, 60)
        assert {(s["mode"], s["reason"]) for s in states} == {("monitor_only", "initial_mode")}
        assert all(s["measurements"]["grid_kw"]["value"] is not None for s in states)   # it reads
        assert {name: image.last_write for name, image in site.images.items()} == \
            {name: {} for name in site.images}                                          # and writes nothing
        assert site.state.grid_kw < -100                                               # so the site exports
        assert controller.apply({"command": "set_mode", "mode": "auto"}).accepted
        n = len(states)
        assert await until(site, lambda: len(states) > n + 3 and states[-1]["mode"] != "monitor_only", 30)
        assert await until(site, lambda: site.state.grid_kw > -15, 30)                   # zero export held now
        inverter = next(i for i in site.images.values() if i.role is Role.PV_INVERTER)
        assert "pv_limit_pct" in inverter.last_write


@pytest.mark.slow
async def test_monitor_only_stop_releases_nothing(tmp_path):
    path = site_file(tmp_path, simulation=NOON_EXPORT, control={"initial_mode": "monitor_only"})
    async with running(path, 10, tmp_path / "state") as (site, _controller, states):
        assert await until(site, lambda: len(states) >= 3, 30)
    assert all(not image.last_write for image in site.images.values())


@pytest.mark.slow
async def test_standby_holds_the_battery_at_zero_until_the_operator_switches_to_auto(tmp_path):
    path = site_file(tmp_path, simulation={**NOON_EXPORT, "initial_soc_pct": 50, "load": {"day_kw": 1000}},
                     control={"initial_mode": "standby"})   # importing ~200 kW: no safety step moves the battery
    async with running(path, 10, tmp_path / "state") as (site, controller, states):
        assert await until(site, lambda: len(states) >= 10, 60)
        assert {(s["mode"], s["reason"]) for s in states[1:]} == {("standby", "initial_mode")}
        assert battery_register(site) == 0.0 and site.state.battery_kw == 0.0
        battery = next(i for i in site.images.values() if i.role is Role.BATTERY)
        assert "battery_setpoint_kw" in battery.last_write                                # written, not left alone
        assert controller.apply({"command": "set_mode", "mode": "auto"}).accepted
        n = len(states)
        assert await until(site, lambda: len(states) > n + 2, 30)
        assert states[-1]["reason"] != "initial_mode" and states[-1]["mode"] in ("auto", "self_consumption")
