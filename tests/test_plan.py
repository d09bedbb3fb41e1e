"""The versioned Plan: JSON round trip, step lookup, expiry, schema checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optimizer.plan import SCHEMA_VERSION, SERIES, Plan
from optimizer.planner import PlanInputs, Planner
from optimizer.site import BatterySpec, GridSpec, PlannerSettings
from optimizer.timegrid import regular_grid

START = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def plan() -> Plan:
    n = 8
    inputs = PlanInputs(grid=regular_grid(START, n, 15), pv_kw=np.linspace(0, 7, n), load_kw=np.full(n, 3.0),
                        import_price=np.array([0.1] * 4 + [0.3] * 4), export_price=np.zeros(n), soc0_kwh=0.0,
                        max_charge_kw=2.0,
                        period=["off_peak"] * 4 + ["peak"] * 4)
    battery = BatterySpec(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5, wear_cost_per_kwh=0.01)
    return Planner(battery, GridSpec(), PlannerSettings(), n).plan(inputs, created_at=START)


def test_json_round_trip_is_exact(plan):
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    for name in SERIES:
        np.testing.assert_array_equal(getattr(again, name), getattr(plan, name))
    assert again.starts.equals(plan.starts) and again.slack == plan.slack and again.objective == plan.objective


def test_json_carries_units_signs_and_totals(plan):
    data = json.loads(plan.to_json())
    assert data["schema_version"] == SCHEMA_VERSION and data["source"] == "optimizer"
    assert data["starts"][0] == "2026-05-04T00:00:00+00:00"
    np.testing.assert_allclose(data["grid_kw"], np.array(data["import_kw"]) - np.array(data["export_kw"]))
    np.testing.assert_allclose(data["battery_kw"], np.array(data["discharge_kw"]) - np.array(data["charge_kw"]))
    assert data["objective"]["total"] == pytest.approx(plan.objective.total)
    assert data["slack"][0]["constraint"] == "soc_min"  # 0 + 2 kW × 0.25 h × 0.95 < the 1 kWh floor


def test_a_future_major_version_is_refused(plan):
    data = plan.to_dict()
    data["schema_version"] = "2.0"
    with pytest.raises(ValueError, match="schema_version"):
        Plan.from_dict(data)


def test_step_at_and_expiry(plan):
    step = plan.step_at(START + timedelta(minutes=20))
    assert step is not None and step.index == 1 and step.start == pd.Timestamp(START + timedelta(minutes=15))
    assert plan.step_at(START - timedelta(seconds=1)) is None
    assert plan.step_at(START + timedelta(hours=2)) is None
    assert plan.expires_at(valid_hours=1.0) == START + timedelta(hours=1)
    assert plan.expires_at(valid_hours=5.0) == START + timedelta(hours=2)  # the plan ends first
    assert not plan.is_expired(START + timedelta(minutes=59), 1.0) and plan.is_expired(START + timedelta(hours=1), 1.0)
    with pytest.raises(ValueError):
        plan.step_at(datetime(2026, 5, 4))


def test_json_matches_the_documented_schema(plan):
    """The JSON Schema in docs/plan.md accepts real plans (LP and policy) and rejects a broken one."""
    import jsonschema

    from optimizer import policies

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plan.md").read_text(encoding="utf-8")
    schema = json.loads(doc.split("```json", 1)[1].split("```", 1)[0])
    jsonschema.validate(json.loads(plan.to_json()), schema)
    inputs = PlanInputs(grid=regular_grid(START, 2, 60), pv_kw=np.zeros(2), load_kw=np.ones(2),
                        import_price=np.ones(2), export_price=np.zeros(2), soc0_kwh=5.0)
    battery = BatterySpec(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5)
    jsonschema.validate(policies.no_battery(inputs, battery, GridSpec(), PlannerSettings()).to_dict(), schema)
    broken = plan.to_dict()
    broken["charge_kw"][0] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
