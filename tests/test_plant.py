"""Plant physics: hand-computed SOC, taper, ramp, SOC bounds and exact energy conservation."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.simulated.plant import ArraySource, BatteryModel, Plant, PlantState, PVModel, ShiftLoad
from optimizer.site import BatterySpec

T0 = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)


def battery(**kw) -> BatteryModel:
    args = dict(nameplate_kwh=1000, max_charge_kw=500, max_discharge_kw=500, charge_efficiency=0.95,
                discharge_efficiency=0.9, initial_soc_pct=50, taper_high_pct=90, taper_low_pct=10)
    args.update(kw)
    return BatteryModel(**args)


def test_charge_one_hour_hand_computed():
    b = battery()
    p = b.step(-200, 3600)
    assert p == -200
    assert b.soc_kwh == pytest.approx(500 + 200 * 0.95)  # 690 kWh
    assert b.soc_pct == pytest.approx(69.0)
    assert b.charged_kwh == pytest.approx(200)
    assert b.losses_kwh == pytest.approx(10)


def test_discharge_quarter_hour_hand_computed():
    b = battery()
    p = b.step(360, 900)
    assert p == 360
    # 360 kW × 0.25 h = 90 kWh AC, 90 / 0.9 = 100 kWh from the cells
    assert b.soc_kwh == pytest.approx(400)
    assert b.discharged_kwh == pytest.approx(90)
    assert b.losses_kwh == pytest.approx(10)


def test_from_spec_and_soh():
    spec = BatterySpec(capacity_kwh=1000, max_charge_kw=400, max_discharge_kw=300, standby_loss_kw=2)
    b = BatteryModel.from_spec(spec, initial_soc_pct=50, soh_pct=80)
    assert b.capacity_kwh == pytest.approx(800)
    assert b.soc_kwh == pytest.approx(400)
    assert b.allowed_charge_kw() == 400 and b.allowed_discharge_kw() == 300
    b.step(0, 3600)  # idle hour: standby only
    assert b.soc_kwh == pytest.approx(398)
    assert b.losses_kwh == pytest.approx(2)


def test_taper_near_full_and_empty():
    b = battery(initial_soc_pct=95)
    assert b.allowed_charge_kw() == pytest.approx(250)  # halfway between 90 % and 100 %
    assert b.allowed_discharge_kw() == 500
    assert b.step(-500, 1) == pytest.approx(-250)
    b = battery(initial_soc_pct=2.5)
    assert b.allowed_discharge_kw() == pytest.approx(125)  # a quarter of the way from 0 % to 10 %
    assert b.step(500, 1) == pytest.approx(125)
    assert battery(initial_soc_pct=100).allowed_charge_kw() == 0
    assert battery(initial_soc_pct=0).allowed_discharge_kw() == 0


def test_large_step_lands_exactly_on_full_and_empty():
    b = battery(initial_soc_pct=89)  # 110 kWh of room; 500 kW × 0.25 h × 0.95 = 118.75 > 110
    p = b.step(-500, 900)
    assert b.soc_kwh == b.capacity_kwh
    assert p == pytest.approx(-110 / 0.95 / 0.25)
    b = battery(initial_soc_pct=11)  # 110 kWh stored; 500 kW × 0.25 h / 0.9 > 110
    p = b.step(500, 900)
    assert b.soc_kwh == 0
    assert p == pytest.approx(110 * 0.9 / 0.25)


def test_ramp_limits_change_per_step():
    b = battery(ramp_kw_per_s=50)
    assert b.step(400, 1) == 50
    assert b.step(400, 2) == 150
    assert b.step(-400, 1) == 100
    assert b.power_kw == 100
    assert b.step(-400, 100) == -400


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="finite"):
        battery().step(math.nan, 1)
    with pytest.raises(ValueError, match="taper"):
        battery(taper_low_pct=50, taper_high_pct=40)
    with pytest.raises(ValueError, match="available PV"):
        PVModel(100).step(-1, None, 1)


def test_pv_obeys_limit_and_rating():
    pv = PVModel(rated_kw=900)
    assert pv.step(1000, None, 3600) == 900
    assert pv.step(800, 50, 3600) == 450
    assert pv.step(300, 50, 3600) == 300
    assert pv.step(300, 0, 3600) == 0
    assert pv.step(300, 150, 3600) == 300  # clamped to 100 %
    assert pv.energy_kwh == pytest.approx(900 + 450 + 300 + 0 + 300)


def test_plant_balance_and_counters():
    plant = Plant(battery(), PVModel(900))
    s = plant.step(T0, 900, battery_setpoint_kw=-200, pv_limit_pct=None, pv_available_kw=700, load_kw=300)
    assert isinstance(s, PlantState)
    assert s.grid_kw == pytest.approx(300 - 700 + 200)  # −200 kW: export
    assert s.export_kwh == pytest.approx(50) and s.import_kwh == 0
    assert s.pv_energy_kwh == pytest.approx(175)
    assert s.soc_kwh == pytest.approx(500 + 200 * 0.25 * 0.95)
    assert s.timestamp == T0
    s = plant.step(T0 + timedelta(minutes=15), 900, 100, None, 0, 300)
    assert s.grid_kw == pytest.approx(200)
    assert s.import_kwh == pytest.approx(50)


steps = st.lists(
    st.tuples(st.floats(-1000, 1000), st.floats(0.01, 3600), st.floats(0, 1200), st.floats(0, 1000),
              st.one_of(st.none(), st.floats(-10, 120))),
    min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(seq=steps, soc0=st.floats(0, 100), ramp=st.one_of(st.just(math.inf), st.floats(0.5, 500)),
       standby=st.floats(0, 20))
def test_soc_bounded_and_energy_conserved(seq, soc0, ramp, standby):
    b = battery(initial_soc_pct=soc0, ramp_kw_per_s=ramp, standby_loss_kw=standby)
    plant = Plant(b, PVModel(900))
    soc_start = b.soc_kwh
    pv_sum = load_sum = 0.0
    now = T0
    for setpoint, dt_s, available, load, limit in seq:
        s = plant.step(now, dt_s, setpoint, limit, available, load)
        now += timedelta(seconds=dt_s)
        assert 0.0 <= s.soc_kwh <= b.capacity_kwh
        assert s.pv_kw <= min(available, 900) + 1e-9
        pv_sum += s.pv_kw * dt_s / 3600
        load_sum += s.load_kw * dt_s / 3600
    # battery: AC in − AC out = ΔSOC + losses
    assert b.charged_kwh - b.discharged_kwh == pytest.approx(b.soc_kwh - soc_start + b.losses_kwh, abs=1e-6)
    # site: PV + import = load + export + (charge − discharge)
    lhs = pv_sum + plant.import_kwh
    rhs = load_sum + plant.export_kwh + b.charged_kwh - b.discharged_kwh
    assert lhs == pytest.approx(rhs, abs=1e-6)
    assert plant.pv.energy_kwh == pytest.approx(pv_sum, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(seq=st.lists(st.tuples(st.floats(-1000, 1000), st.floats(0.01, 900)), min_size=1, max_size=40),
       soc0=st.floats(0, 100))
def test_power_within_bms_allowance_at_step_start(seq, soc0):
    b = battery(initial_soc_pct=soc0)
    for setpoint, dt_s in seq:
        allowed_c, allowed_d = b.allowed_charge_kw(), b.allowed_discharge_kw()
        p = b.step(setpoint, dt_s)
        assert -allowed_c - 1e-9 <= p <= allowed_d + 1e-9
        # never the wrong direction
        assert p * setpoint >= 0


def test_array_source_and_shift_load():
    src = ArraySource([1.0, 2.0, 3.0], T0, 900)
    assert src(T0) == 1.0 and src(T0 + timedelta(minutes=29)) == 2.0
    with pytest.raises(IndexError):
        src(T0 + timedelta(minutes=45))
    load = ShiftLoad("Asia/Ho_Chi_Minh", day_kw=800, night_kw=300, sunday_factor=0.5)
    assert load(datetime(2026, 5, 4, 3, tzinfo=UTC)) == 800    # Monday 10:00 local
    assert load(datetime(2026, 5, 4, 13, tzinfo=UTC)) == 300   # Monday 20:00 local
    assert load(datetime(2026, 5, 10, 3, tzinfo=UTC)) == 400   # Sunday 10:00 local


def _noise(load: ShiftLoad, steps: int, dt_s: float) -> list[float]:
    """The load's relative noise over ``steps`` plant steps of ``dt_s`` in one day shift (800 kW). [-]"""
    start = datetime(2026, 5, 4, 1, tzinfo=UTC)                 # Monday 08:00 local
    return [load(start + timedelta(seconds=i * dt_s)) / 800.0 - 1.0 for i in range(steps)]


def _std(x: list[float]) -> float:
    mean = sum(x) / len(x)
    return math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))


def test_the_load_drifts_over_a_minute_not_by_five_percent_every_step():
    """5 % noise correlated over 60 s: over 10 hours of half-second steps (600 correlation times) its standard
    deviation is 5 % within sampling error, and one step moves it by σ·√(2·(1 − e^(−0.5/60))) = 0.64 %, not the
    7.1 % (5 %·√2) of independent draws."""
    drift = _noise(ShiftLoad("Asia/Ho_Chi_Minh", 800, 300, noise_pct=5, seed=3, correlation_s=60), 72_000, 0.5)
    assert _std(drift) == pytest.approx(0.05, rel=0.1)
    one_step = _std([b - a for a, b in itertools.pairwise(drift)])
    assert one_step == pytest.approx(0.05 * math.sqrt(2 * (1 - math.exp(-0.5 / 60))), rel=0.05)
    white = _noise(ShiftLoad("Asia/Ho_Chi_Minh", 800, 300, noise_pct=5, seed=3), 20_000, 0.5)
    assert _std(white) == pytest.approx(0.05, rel=0.05)
    assert _std([b - a for a, b in itertools.pairwise(white)]) == pytest.approx(0.05 * math.sqrt(2), rel=0.05)


def test_the_load_at_one_instant_is_one_value():
    load = ShiftLoad("Asia/Ho_Chi_Minh", 800, 300, noise_pct=5, seed=1, correlation_s=60)
    now = datetime(2026, 5, 4, 3, tzinfo=UTC)
    assert load(now) == load(now) != load(now + timedelta(seconds=1))


@settings(max_examples=100, deadline=None)
@given(seq=st.lists(st.tuples(st.floats(-1000, 1000), st.floats(0.01, 10)), min_size=1, max_size=40),
       ramp=st.floats(0.5, 200))
def test_ramp_bounds_every_change_away_from_the_limits(seq, ramp):
    b = battery(nameplate_kwh=1e9, ramp_kw_per_s=ramp)  # SOC stays mid-range: only the ramp acts
    previous = 0.0
    for setpoint, dt_s in seq:
        p = b.step(setpoint, dt_s)
        assert abs(p - previous) <= ramp * dt_s + 1e-9
        assert abs(p - setpoint) <= abs(previous - setpoint) + 1e-9  # moves towards the setpoint
        previous = p
