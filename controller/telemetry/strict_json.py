"""Strict decoding of a JSON payload received from outside (MQTT, HTTP): bounded, UTF-8 only, finite.

Python's ``json.loads`` accepts what an operator interface must not: ``NaN`` and ``Infinity``,
``1e999`` (read as infinity), lone surrogates written as escapes (``"\\ud800"``, which no UTF-8
encoder can write back), duplicate keys (last wins) and, given deep enough nesting
(``[[[...]]]``), it raises ``RecursionError``. :func:`loads_strict` checks the size, the encoding
and the nesting depth *before* parsing, and refuses each of those with a :class:`PayloadError`
whose message says what is wrong and where (byte offset or field path). It never raises anything
else for any input bytes (``tests/test_remote_intake.py`` fuzzes it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

BYTE_ORDER_MARKS = ((b"\xef\xbb\xbf", "UTF-8"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


class PayloadError(ValueError):
    """The payload is not acceptable JSON (the message is the reason, for the sender)."""


class _NonFinite(str):
    """Stands in for ``NaN``, ``Infinity`` or an overflowing number while parsing (its text)."""


def _parse_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _parse_int(text: str) -> int | _NonFinite:
    # an integer of 4,300+ digits raises ValueError in Python; a payload bound below that keeps
    # them impossible, this only guards the bound
    try:
        return int(text)
    except ValueError:
        return _NonFinite(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PayloadError(f"duplicate key {key!r}")
        out[key] = value
    return out


def nesting_exceeds(text: str, max_depth: int) -> bool:
    """Whether the arrays/objects of ``text`` nest deeper than ``max_depth`` (brackets inside strings
    do not count; malformed text is judged as far as it goes)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _path(parts: list[str | int]) -> str:
    return ".".join(str(p) for p in parts) or "(payload)"


def _check_values(value: Any, path: list[str | int]) -> None:
    """Refuse non-finite numbers and strings that are not valid Unicode (lone surrogates)."""
    if isinstance(value, _NonFinite):
        raise PayloadError(f"{_path(path)}: {value} is not a finite number")
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, [*path, key], what="key")
            _check_values(item, [*path, key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, [*path, i])


def _check_text(text: str, path: list[str | int], what: str = "string") -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = _path(path[:-1]) if what == "key" else _path(path)
        raise PayloadError(f"{where}: {what} holds a lone surrogate \\u{ord(text[exc.start]):04x} at character "
                           f"{exc.start} (not valid Unicode)") from None


def loads_strict(raw: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Parse ``raw`` as one JSON value under the rules above.

    Parameters
    ----------
    raw : bytes
        The payload as received; an empty payload is refused (there is no value in it).
    max_bytes : int
        Largest accepted payload. [bytes]
    max_depth : int
        Deepest accepted nesting of arrays and objects (``{}`` is 1).

    Raises
    ------
    PayloadError
        For every refused payload, with the reason.
    """
    if len(raw) > max_bytes:
        raise PayloadError(f"payload of {len(raw)} bytes exceeds {max_bytes}")
    if not raw.strip():
        raise PayloadError("empty payload: send a JSON object")
    for mark, encoding in BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            raise PayloadError(f"starts with a {encoding} byte-order mark: send UTF-8 JSON without a BOM")
    if b"\x00" in raw:
        raise PayloadError(f"NUL byte at offset {raw.index(0)}: UTF-16 or binary data, send UTF-8 JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} ({exc.reason})") from None
    if nesting_exceeds(text, max_depth):
        raise PayloadError(f"JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_NonFinite,
                           object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc}") from None
    except RecursionError:  # cannot happen below the depth bound; kept so that no input raises anything else
        raise PayloadError(f"JSON nested deeper than {max_depth} levels") from None
    _check_values(value, [])
    return value


def printable(text: str) -> str:
    """``text`` with any lone surrogate written as ``\\udXXX`` text, so that it can be encoded (logged, stored)
    as UTF-8."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def payload_bytes(payload: bytes | str | Mapping[str, Any]) -> bytes:
    """The bytes of a message as they came, or of an in-process caller's object encoded as JSON, so that both pass
    the same checks (a string is UTF-8 with lone surrogates kept, to be refused as not UTF-8). Raises
    :class:`PayloadError` for an object that is not JSON."""
    if isinstance(payload, Mapping):
        try:
            return json.dumps(dict(payload), allow_nan=True).encode("ascii")
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"not JSON: {exc}") from None
    if isinstance(payload, str):
        return payload.encode("utf-8", errors="surrogatepass")
    return bytes(payload)
