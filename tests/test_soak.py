"""The fault soak: a simulated week of random device faults against the real controller (``tests/soak.py``).

The week runs the controller and the simulated site (real Modbus TCP on loopback) on one lock-step clock:
site time stands still while anything computes and jumps to the next timer when everything sleeps, so
the week takes a few minutes of real time on a 2-core machine. What was chosen to make it fit:

- a 20 s control cycle (the example site runs 1 s): 30,240 cycles and plant steps; the plant is stepped
  and judged once per cycle. A 10 s cycle would double the time; 30 s would equal the battery's 30 s
  reversion timer, so one stalled cycle would let the PCS revert. Measured here: 97–152 cycles per
  real second, 3.5–5 min for the week (up to 8 min while the machine ran at load 4);
- faults on each device one at a time, a mean of 4 hours apart (~100 faults in the week, every kind on
  every device), 2–30 minutes long (slow ones 1–3 minutes: each slow poll costs 0.2 s of real time);
- reaction time 3 cycles (60 s) after a fault starts, ends or flaps; alarms cleared within 120 s.

It asserts on the *true* plant values (the simulator's state after every step), not on what the
controller believes: no export above the cap, import within the cap, SOC within its window, no setpoint
outside the ratings beyond the reaction time; no crash; every fault alarmed (an alarm naming its device)
and cleared. Run alone: ``pytest -m soak -s`` (prints the figures). ``benchmarks/bench_soak.py`` runs
the same harness for longer.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

import pytest

from drivers.roles import Role
from tests.soak import CLEAR_S, KINDS, LockstepClock, fault_events, report_json, run_soak, schedule

SEED = 11
DAYS = 7.0
CYCLE_S = 20.0
DEVICES = {"grid-meter": Role.METER, "pv-inverter": Role.PV_INVERTER, "battery": Role.BATTERY}


def test_the_week_schedules_every_kind_on_every_device_one_fault_at_a_time():
    faults = schedule(DEVICES, DAYS * 86400, SEED)
    assert {(f.device, f.kind) for f in faults} == {(d, k) for d in DEVICES for k in KINDS}
    for device in DEVICES:
        mine = [f for f in faults if f.device == device]
        assert all(b.start_s >= a.end_s + CLEAR_S for a, b in itertools.pairwise(mine))
    assert faults == schedule(DEVICES, DAYS * 86400, SEED)  # seeded


def test_a_flapping_fault_toggles_offline_and_ends_online():
    faults = [f for f in schedule(DEVICES, DAYS * 86400, SEED) if f.kind == "flapping"][:1]
    actions = [a for _, a, _ in fault_events(faults)]
    assert actions[0] == "start" and actions[-1] == "end"
    toggles = actions[1:-1]
    assert toggles and toggles == [("flap_off", "flap_on")[i % 2] for i in range(len(toggles))]


async def test_the_lockstep_clock_wakes_sleepers_only_when_moved_in_time_order():
    clock = LockstepClock(datetime(2026, 5, 4, tzinfo=UTC))
    woke: list[str] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("b", 20.0)), asyncio.create_task(sleeper("a", 10.0))]
    await asyncio.sleep(0)
    assert clock.sleeping == 2 and clock.next_wakeup() == 10.0
    await asyncio.sleep(0.01)
    assert woke == []  # real time does not move it
    clock.set(15.0)
    await asyncio.sleep(0)
    assert woke == ["a"] and clock.sleeping == 1
    clock.set(20.0)
    await asyncio.gather(*tasks)
    assert woke == ["a", "b"] and clock.now() == datetime(2026, 5, 4, 0, 0, 20, tzinfo=UTC)


@pytest.mark.soak
@pytest.mark.slow
async def test_a_simulated_week_of_device_faults(tmp_path):
    report = await run_soak(DAYS, SEED, tmp_path, cycle_s=CYCLE_S)
    print(report.summary())
    print(report_json(report))
    found = {"soak_sim_days": round(report.soak_sim_days, 2), "crashes": report.crashes,
             "export_breach_steps": report.export_breach_steps, "import_breach_steps": report.import_breach_steps,
             "soc_breach_steps": report.soc_breach_steps, "setpoint_out_of_limits": report.setpoint_out_of_limits,
             "faults_not_alarmed": report.faults_injected - report.faults_alarmed,
             "faults_not_cleared": report.faults_injected - report.faults_cleared}
    expected = {k: 0 for k in found} | {"soak_sim_days": DAYS}
    assert found == expected, report.summary()
    assert report.faults_injected >= 50
