"""Load YAML files and validate them with pydantic, failing with errors that name the file and field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class FieldError:
    """One problem in a config file: where (dotted field path, or line:column) and what."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(ValueError):
    """A configuration, profile, tariff or scenario file is invalid.

    ``source`` names the file (or other origin); ``errors`` lists every problem found.
    """

    def __init__(self, source: str, errors: Sequence[FieldError]):
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n{lines}")


def field_path(loc: Sequence[int | str]) -> str:
    """``('battery', 'capacity_kwh')`` → ``battery.capacity_kwh``; list indices as ``[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file or a syntax error raises :class:`ConfigError` with line and column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [FieldError("(file)", exc.strerror or str(exc))]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(syntax)"
        raise ConfigError(str(p), [FieldError(where, str(exc.problem or exc))]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [FieldError("(syntax)", str(exc))]) from exc


def validate(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate ``data`` against ``model``; every error is reported with its field path."""
    if data is None:
        raise ConfigError(source, [FieldError("(top level)", "the file is empty")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [FieldError(field_path(e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(source, errors) from exc


def load_model(model: type[ModelT], path: str | Path) -> ModelT:
    """Read a YAML file and validate it against ``model``."""
    return validate(model, read_yaml(path), str(path))
