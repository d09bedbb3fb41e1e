"""Load YAML files and validate them with pydantic, failing with errors that name the file and field.

What a file may not be, each reported with the file and the line or field (never a traceback): not UTF-8
(binary, UTF-16, Latin-1; a UTF-8 byte-order mark is allowed), invalid YAML, a mapping that repeats a key
(YAML says keys are unique; PyYAML would silently keep the last), a date that does not exist (``2026-09-31``), or a
number that is not finite (``.inf``, ``.nan``, ``1e999``). Where text belongs but YAML read ``off``/``no``/``on``/
``yes`` as true or false, the error says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class FieldError:
    """One problem in a config file: where (dotted field path, or line:column) and what; ``line`` is where in the file
    the field is written (``battery.max_charge_kw (line 17): …``), or where its section starts for a field the file
    lacks (``battery.capacity_kwh (section at line 16): Field required``), when known (:class:`ConfigError`
    finds it)."""

    field: str
    message: str
    line: str = dataclasses.field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.field}{f' ({self.line})' if self.line else ''}: {self.message}"


class ConfigError(ValueError):
    """A configuration, profile, tariff or scenario file is invalid.

    ``source`` names the file (or other origin); ``errors`` lists every problem found. When ``source`` is a YAML file
    that exists, each error at a field path is given the line the field is written on (:func:`field_lines`), so the
    engineer goes to it without counting indentation.
    """

    def __init__(self, source: str, errors: Sequence[FieldError]):
        self.source = source
        self.errors = _with_lines(source, errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its own arguments: raised in a worker process (sweeps, parks), it reaches the command
        whole (unpickling it through ``ValueError``'s arguments failed and broke the process pool)."""
        return type(self), (self.source, self.errors)


def _with_lines(source: str, errors: Sequence[FieldError]) -> list[FieldError]:
    """``errors`` with the line of each field in the YAML file ``source`` (when it is one that parses); errors at no
    field path (syntax, ``(file)``, a line already) and an origin that is not a file are left as they are."""
    errors = list(errors)
    if all(e.line for e in errors) or not source.endswith((".yaml", ".yml")):
        return errors
    lines = field_lines(source)
    if not lines:
        return errors
    out = []
    for e in errors:
        at = e.field
        while not e.line and at and at not in lines:
            at = at[:max(at.rfind("."), at.rfind("["), 0)]
        if e.line or not at:
            out.append(e)
        else:
            where = f"line {lines[at]}" if at == e.field else f"section at line {lines[at]}"
            out.append(dataclasses.replace(e, line=where))
    return out


def field_lines(path: str | Path) -> dict[str, int]:
    """The line (1-based) each field of a YAML file is written on, by field path (``battery.max_charge_kw``,
    ``devices[1].endpoint``; a list item's line is where it starts); empty when the file cannot be read or parsed."""
    try:
        node = yaml.compose(Path(path).read_bytes().decode("utf-8-sig"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, loc: tuple[int | str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode):
                    lines.setdefault(field_path((*loc, key.value)), key.start_mark.line + 1)
                    walk(value, (*loc, key.value))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines.setdefault(field_path((*loc, i)), item.start_mark.line + 1)
                walk(item, (*loc, i))

    if node is not None:
        walk(node, ())
    return lines


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
        raise ConfigError(source, readable_errors(model, data, exc.errors())) from exc


def readable_errors(root: Any, data: Any, errors: Sequence[Any]) -> list[FieldError]:
    """pydantic's errors of validating ``data`` against type ``root``, each at the path the user wrote.

    pydantic puts the branch of a union it tried into the error's location (``devices[0].endpoint.TcpEndpoint.port``,
    ``simulation.load.shift.day_end``, a command's ``set_mode.mode``); that branch is dropped, and where several
    branches of one union failed, only the errors of the branch that failed least are kept (a TCP endpoint with a bad
    port is one error, not also "serial_port required, host and port not permitted" of the RTU branch).
    """
    located = [(e, *_user_path(data, tuple(e["loc"]))) for e in errors if not _echo_of_a_bad_item(e, errors)]
    failures: dict[tuple[Any, ...], dict[Any, int]] = {}
    for _e, _path, branches in located:
        for at, branch in branches:
            failures.setdefault(at, {}).setdefault(branch, 0)
            failures[at][branch] += 1
    out: list[FieldError] = []
    for e, path, branches in located:
        if all(failures[at][branch] == min(failures[at].values()) for at, branch in branches):
            if e["type"] in ("union_tag_invalid", "union_tag_not_found"):   # the field that names the kind
                path = (*path, str(e["ctx"]["discriminator"]).strip("'"))
                message = ("Field required" if e["type"] == "union_tag_not_found"
                           else f"{e['ctx']['tag']!r} is not one of {e['ctx']['expected_tags']}")
            else:
                message = error_message(e, root, path, dict(branches))
            found = FieldError(field_path(path), message)
            if found not in out:
                out.append(found)
    return out


def _user_path(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[tuple[tuple[Any, ...], Any]]]:
    """``loc`` as the path in ``data`` (the keys and indices it holds, and a missing field at the end), and the union
    branches pydantic named along it, each as (path where the union is, branch)."""
    path: list[Any] = []
    branches: list[tuple[tuple[Any, ...], Any]] = []
    node = data
    for i, part in enumerate(loc):
        held = ((isinstance(node, Mapping) and part in node)
                or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)))
        if held:
            node = node[part]
            path.append(part)
        elif i == len(loc) - 1:
            path.append(part)   # a field the data lacks, or holds where the model wants it under a new name
        else:
            branches.append((tuple(path), part))
    return tuple(path), branches


def error_message(error: Any, root: Any = None, path: Sequence[Any] = (),
                  branches: Mapping[tuple[Any, ...], Any] | None = None) -> str:
    """pydantic's message, readable: without its "Value error, " prefix; an unknown field with the nearest known
    one of its section and, unless they are many, all its known ones (``root``, the validated type, and ``path``, the
    user's path of the field, tell the section, ``branches`` the union branches taken, by path: :func:`_user_path`);
    and what YAML did when text came out as true/false (``off``, ``no``, ``on`` unquoted); and the value given, where
    pydantic's message does not say it (``Input should be less than or equal to 1, got 95``)."""
    if error["type"] == "string_type" and isinstance(error.get("input"), bool):
        return (f"{error['msg']}, got {str(error['input']).lower()}: YAML reads yes/no/on/off/true/false without "
                "quotes as true or false; put the text in quotes, e.g. 'off'")
    if error["type"] == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and path:
        known = set().union(*(_keys(t) for t in _types_at(root, path[:-1], branches or {}) if _is_model(t)))
        return unknown_field(str(path[-1]), known)
    given = error.get("input")
    if isinstance(given, (str, int, float)) and error["type"] not in ("missing", "extra_forbidden", "assertion_error"):
        return f"{error['msg']}, got {_given(given)}"
    return error["msg"]


def _given(value: str | int | float) -> str:
    """A value the file gave, as YAML wrote it: text in quotes (cut at 40 characters), true/false, numbers as is."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:39] + "…")
    return repr(value)


def unknown_field(name: str, known: Iterable[str]) -> str:
    """What to say of a key ``name`` its section does not have: the nearest of the ``known`` keys and, unless they
    are many, all of them (``unknown field; did you mean tilt_deg?; known here: …``)."""
    keys = sorted(known)
    # the key with its unit or qualifier left off (pv → pv_kw, tilt → tilt_deg), else the closest spelling
    near = sorted((k for k in keys if k.startswith(name + "_")), key=len)[:1] or \
        difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    guess = f"did you mean {near[0]}?" if near else ""
    listed = f"known here: {', '.join(keys)}" if keys and (len(keys) <= 12 or not near) else ""
    return "; ".join(["unknown field", *filter(None, [guess, listed])])


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields by the key a file gives them (the alias where there is one, e.g. ``from``)."""
    return {(f.validation_alias if isinstance(f.validation_alias, str) else f.alias) or name: f
            for name, f in model.model_fields.items()}


def _members(t: Any) -> list[Any]:
    """``t`` without ``Annotated``, ``Optional`` and unions: the plain types it can be."""
    origin = get_origin(t)
    if origin is Annotated:
        return _members(get_args(t)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(t) for m in _members(arg)]
    return [t]


def _branch(members: list[Any], branch: Any) -> list[Any]:
    """The members of a union that pydantic's ``branch`` names (a model by its class name, or by the value of its
    discriminator field); all of them when none matches."""
    named = [m for m in members if _is_model(m) and (m.__name__ == branch or any(
        branch in get_args(f.annotation) for f in m.model_fields.values() if get_origin(f.annotation) is Literal))]
    return named or members


def _types_at(root: Any, path: Sequence[Any], branches: Mapping[tuple[Any, ...], Any]) -> list[Any]:
    """The types the value at ``path`` can have when the whole is of type ``root`` (models, lists, mappings), the
    unions along it narrowed to the ``branches`` pydantic took (by path)."""
    found = _branch(_members(root), branches[()]) if () in branches else _members(root)
    for depth, part in enumerate(path, start=1):
        inner: list[Any] = []
        for t in found:
            args = get_args(t)
            if _is_model(t) and isinstance(part, str) and part in _keys(t):
                inner += _members(_keys(t)[part].annotation)
            elif get_origin(t) in (list, tuple, Sequence) and isinstance(part, int) and args:
                inner += _members(args[0])
            elif get_origin(t) in (dict, Mapping) and len(args) == 2:
                inner += _members(args[1])
        at = tuple(path[:depth])
        found = _branch(inner, branches[at]) if at in branches else inner
    return found


def _echo_of_a_bad_item(error: Any, errors: Sequence[Any]) -> bool:
    """Whether ``error`` is a list's "too short after validation" that only counts items already reported bad (a
    park of one site with a negative size is one error, not also "sites: should have at least 1 item")."""
    loc = tuple(error["loc"])
    return error["type"] == "too_short" and any(
        len(e["loc"]) > len(loc) and tuple(e["loc"][:len(loc)]) == loc for e in errors if e is not error)


def load_model(model: type[ModelT], path: str | Path) -> ModelT:
    """Read a YAML file and validate it against ``model``."""
    return validate(model, read_yaml(path), str(path))
