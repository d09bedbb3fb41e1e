"""One definition per wire format (controller/telemetry/wire.py): the committed JSON Schemas are what the
pydantic models generate, and the states a real controller publishes (simulated site on loopback Modbus)
are valid against the model, with no field the model does not declare, and against the schema file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from controller.commands import COMMAND_MODELS, parse_command
from controller.telemetry.remote import schema, schema_errors
from controller.telemetry.wire import SCHEMA_DIR, StateMessage, main, render, schemas
from tests.test_controller_e2e import running, site_file, until


@pytest.mark.parametrize("stem", sorted(schemas()))
def test_committed_schema_is_generated_from_the_models(stem: str) -> None:
    committed = (SCHEMA_DIR / f"{stem}.json").read_text("utf-8")
    assert committed == render(schemas()[stem]), "regenerate: python -m controller.telemetry.wire --write"


def test_check_command_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"]) == 0
    for stem in schemas():
        (tmp_path / f"{stem}.json").write_text((SCHEMA_DIR / f"{stem}.json").read_text("utf-8"))
    (tmp_path / "state.json").write_text("{}\n")
    monkeypatch.setattr("controller.telemetry.wire.SCHEMA_DIR", tmp_path)
    assert main(["--check"]) == 1 and "state.json" in capsys.readouterr().err
    assert main(["--write"]) == 0 and main(["--check"]) == 0


def test_a_command_schema_is_its_model_plus_the_envelope() -> None:
    for name, model in COMMAND_MODELS.items():
        generated = schema(f"cmd_{name}")
        assert set(generated["properties"]) == (set(model.model_fields) - {"command"}) | {"id", "ts"}
        assert generated["additionalProperties"] is False
    assert sorted(schema("cmd_manual_setpoint")["required"]) == ["battery_kw", "ttl_s"]      # no default expiry
    assert schema_errors("manual_setpoint", {"battery_kw": 5}) == ["(payload): 'ttl_s' is a required property"]
    with pytest.raises(ValueError, match="ttl_s: Field required"):
        parse_command({"command": "manual_setpoint", "battery_kw": 5})


def undeclared(value: Any, where: str = "state") -> list[str]:
    """Keys of a validated message that no model declares (a field added to the payload but not the model)."""
    if isinstance(value, BaseModel):
        found = [f"{where}.{key}" for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += undeclared(getattr(value, name), f"{where}.{name}")
        return found
    if isinstance(value, dict):
        return [f for key, item in value.items() for f in undeclared(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [f for i, item in enumerate(value) for f in undeclared(item, f"{where}[{i}]")]
    return []


async def test_a_real_cycles_state_matches_the_model_and_the_schema(tmp_path: Path) -> None:
    path = site_file(tmp_path)
    async with running(path, 10, tmp_path / "state") as (site, _controller, states):
        assert await until(site, lambda: any(s["plan"] is not None for s in states), 120)
    with_plan = next(s for s in states if s["plan"] is not None)
    for state in (states[0], with_plan):
        message = StateMessage.model_validate(state)
        assert undeclared(message) == []
        jsonschema.validate(state, schema("state"))
    assert set(with_plan) <= set(StateMessage.model_fields)
