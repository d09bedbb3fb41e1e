"""Load YAML files and validate them with pydantic, failing with errors that name the file and field.

What a file may not be, each reported with the file and the line or field (never a traceback): not UTF-8
(binary, UTF-16, Latin-1; a UTF-8 byte-order mark is allowed), invalid YAML, a mapping that repeats a key
(YAML says keys are unique; PyYAML would silently keep the last), a date that does not exist (``2026-09-31``), or a
number that is not finite (``.inf``, ``.nan``, ``1e999``). Where text belongs but YAML read ``off``/``no``/``on``/
``yes`` as true or false, the error says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its own arguments: raised in a worker process (sweeps, parks), it reaches the command
        whole (unpickling it through ``ValueError``'s arguments failed and broke the process pool)."""
        return type(self), (self.source, self.errors)


def field_path(loc: Sequence[int | str]) -> str:
    """``('battery', 'capacity_kwh')`` → ``battery.capacity_kwh``; list indices as ``[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_checked_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date or time as PyYAML reads it, or a marked error for one that does not exist (``2026-09-31``: PyYAML
        raises a bare ValueError, which would surface as a traceback)."""
        try:
            return self.construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid date or time ({exc})", node.start_mark) from exc


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", _UniqueKeyLoader.construct_checked_timestamp)


def _decode(p: Path, raw: bytes) -> str:
    """The file's text, or :class:`ConfigError` saying why it is not UTF-8 text and where."""
    if b"\0" in raw:
        line = raw[:raw.index(b"\0")].count(b"\n") + 1
        raise ConfigError(str(p), [FieldError(f"line {line}", "not a text file: it contains NUL bytes "
                                              "(binary, or UTF-16 text: save it as UTF-8)")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(str(p), [FieldError(f"line {line}", f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset "
                                              f"{exc.start} (save the file as UTF-8)")]) from exc


def _non_finite(data: Any, loc: tuple[int | str, ...] = ()) -> Iterator[tuple[int | str, ...]]:
    """Field paths of every float in ``data`` that is infinite or NaN."""
    if isinstance(data, float) and not math.isfinite(data):
        yield loc
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _non_finite(v, (*loc, str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _non_finite(v, (*loc, i))


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing, non-UTF-8 or invalid file, a repeated key or a number that is not finite
    raises :class:`ConfigError` naming the line or field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(str(p), [FieldError("(file)", exc.strerror or str(exc))]) from exc
    text = _decode(p, raw)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(syntax)"
        raise ConfigError(str(p), [FieldError(where, str(exc.problem or exc))]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [FieldError("(syntax)", str(exc))]) from exc
    bad = [FieldError(field_path(loc), "not a finite number") for loc in _non_finite(data)]
    if bad:
        raise ConfigError(str(p), bad)
    return data


FILE_KINDS: tuple[tuple[str, frozenset[str], str], ...] = (
    ("park summary file", frozenset({"park", "tsdb"}), "ems park-summary --config"),
    ("site file", frozenset({"site", "devices"}), "ems run --config, ems config check, ems devices --config"),
    ("scenario", frozenset({"data", "costs"}), "ems simulate, ems sweep"),
    ("park file", frozenset({"sites"}), "ems park"),
    ("tariff file", frozenset({"periods", "energy_prices"}), "tariff: {file: …} of a site file or scenario"),
    ("device profile", frozenset({"points", "roles"}), "profile: of a device in a site file"),
)
"""The project's kinds of YAML file, each by the top-level keys that tell it (checked in this order), and what
reads it."""


def other_kind(data: Any, model: type[BaseModel]) -> FieldError | None:
    """When ``data`` is plainly another kind of file than ``model`` describes (:data:`FILE_KINDS`), one error that
    says what it is and what reads it (a park summary file given to ``ems config check`` had sixteen errors of
    required and unknown fields); ``None`` otherwise."""
    if not isinstance(data, dict):
        return None
    fields = model.model_fields.keys()
    if {name for name, f in model.model_fields.items() if f.is_required()} <= data.keys():
        return None   # all the model needs is there: its kind of file with errors, or a larger file it reads
    for kind, keys, reader in FILE_KINDS:
        if keys <= data.keys():
            if keys <= fields:
                return None
            return FieldError("(top level)", f"this is a {kind} (it has {', '.join(sorted(keys))}), read by {reader}; "
                                             "this command reads another kind of file")
    return None


def validate(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate ``data`` against ``model``; every error is reported with its field path (or, for another kind of
    file, one error saying so: :func:`other_kind`)."""
    if data is None:
        raise ConfigError(source, [FieldError("(top level)", "the file is empty")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        wrong = other_kind(data, model)
        if wrong is not None:
            raise ConfigError(source, [wrong]) from None
        found = exc.errors()
        raise ConfigError(source, [FieldError(field_path(e["loc"]), error_message(e)) for e in found
                                   if not _echo_of_a_bad_item(e, found)]) from exc


def error_message(error: Any) -> str:
    """pydantic's message, with what YAML did when text came out as true/false (``off``, ``no``, ``on`` unquoted)."""
    if error["type"] == "string_type" and isinstance(error.get("input"), bool):
        return (f"{error['msg']}, got {str(error['input']).lower()}: YAML reads yes/no/on/off/true/false without "
                "quotes as true or false; put the text in quotes, e.g. 'off'")
    return error["msg"]


def _echo_of_a_bad_item(error: Any, errors: Sequence[Any]) -> bool:
    """Whether ``error`` is a list's "too short after validation" that only counts items already reported bad (a
    park of one site with a negative size is one error, not also "sites: should have at least 1 item")."""
    loc = tuple(error["loc"])
    return error["type"] == "too_short" and any(
        len(e["loc"]) > len(loc) and tuple(e["loc"][:len(loc)]) == loc for e in errors if e is not error)


def load_model(model: type[ModelT], path: str | Path) -> ModelT:
    """Read a YAML file and validate it against ``model``."""
    return validate(model, read_yaml(path), str(path))
