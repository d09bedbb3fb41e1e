"""Remote command intake shared by MQTT and the dashboard: decode, validate, expire, apply, answer.

A command arrives as a name (``set_mode``, ``manual_setpoint``, ``soc_reserve``, ``replan``) and a
JSON object. It is checked against ``schemas/cmd_<name>.json``; a command stamped with ``ts`` whose
``ttl_s`` has already run out (site clock) is rejected as expired, otherwise its TTL is shortened
by its age. Then it goes to the controller's ``Commands.apply`` (below the safety steps). Every
path ends in a result ``{command, id, accepted, reason, ts}``; nothing here raises for bad input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from controller.commands import CommandResult
from ems.clock import Clock

log = logging.getLogger(__name__)

COMMAND_NAMES = ("set_mode", "manual_setpoint", "soc_reserve", "replan")
MAX_PAYLOAD_BYTES = 4096

ApplyFn = Callable[[dict[str, Any]], CommandResult]
"""``Commands.apply`` of the controller (takes the command as a dict with a ``command`` key)."""


@cache
def schema(name: str) -> dict[str, Any]:
    """A shipped JSON Schema by file stem, e.g. ``state`` or ``cmd_set_mode``."""
    text = resources.files("controller.telemetry").joinpath("schemas").joinpath(f"{name}.json").read_text("utf-8")
    return json.loads(text)


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(f"cmd_{name}"))


def schema_errors(name: str, data: Any) -> list[str]:
    """Every violation of ``cmd_<name>.json`` as ``field: message`` (empty when valid)."""
    errors = sorted(_validator(name).iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(payload)'}: {e.message}" for e in errors]


class CommandIntake:
    """Turns raw remote commands into ``apply`` calls and result messages.

    Parameters
    ----------
    apply : ApplyFn
        The controller's ``Commands.apply``.
    clock : Clock
        Site clock: TTLs are site seconds, as in the controller.
    """

    def __init__(self, apply: ApplyFn, clock: Clock):
        self.apply = apply
        self.clock = clock
        self.accepted = 0
        self.rejected = 0

    def handle(self, name: str, payload: bytes | str | Mapping[str, Any], *, by: str,
               retained: bool = False) -> dict[str, Any]:
        """Process one command; returns its result message (``cmd_result.json``)."""
        command_id: str | None = None
        if isinstance(payload, Mapping) and isinstance(payload.get("id"), str):
            command_id = payload["id"]
        try:
            data = self._decode(name, payload, retained)
            command_id = data.get("id")
            result = self._apply(name, data, by)
        except _Rejected as exc:
            result = CommandResult(False, str(exc))
        if result.accepted:
            self.accepted += 1
        else:
            self.rejected += 1
            log.warning("command %s from %s rejected: %s", name, by, result.reason)
        return {"command": name, "id": command_id, "accepted": result.accepted, "reason": result.reason,
                "ts": self.clock.now().isoformat()}

    def _decode(self, name: str, payload: bytes | str | Mapping[str, Any], retained: bool) -> dict[str, Any]:
        if retained:
            raise _Rejected("retained command ignored: publish commands with retain=false")
        if name not in COMMAND_NAMES:
            raise _Rejected(f"unknown command {name!r}; known: {', '.join(COMMAND_NAMES)}")
        if isinstance(payload, Mapping):
            data: Any = dict(payload)
        else:
            raw = payload.encode("utf-8") if isinstance(payload, str) else payload
            if len(raw) > MAX_PAYLOAD_BYTES:
                raise _Rejected(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}")
            try:
                data = json.loads(raw or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise _Rejected(f"malformed JSON: {exc}") from exc
        errors = schema_errors(name, data)
        if errors:
            raise _Rejected("invalid: " + "; ".join(errors))
        return data

    def _apply(self, name: str, data: dict[str, Any], by: str) -> CommandResult:
        command = {k: v for k, v in data.items() if k not in ("id", "ts")}
        if "ts" in data:
            command["ttl_s"] = self._remaining_ttl(data["ts"], data.get("ttl_s"))
        command.update(command=name, by=by[:64])
        try:
            return self.apply(command)
        except Exception as exc:  # the controller must answer, whatever went wrong inside
            log.exception("command %s: apply failed", name)
            return CommandResult(False, f"internal error: {type(exc).__name__}: {exc}")

    def _remaining_ttl(self, ts: str, ttl_s: float | None) -> float:
        """TTL left for a command issued at ``ts``. [s]"""
        try:
            issued = datetime.fromisoformat(ts)
        except ValueError as exc:
            raise _Rejected(f"invalid: ts: {ts!r} is not an ISO 8601 time") from exc
        if issued.tzinfo is None:
            raise _Rejected("invalid: ts: needs a UTC offset, e.g. 2026-05-04T10:00:00+07:00")
        if ttl_s is None:
            raise _Rejected("invalid: ts given without ttl_s")
        age_s = (self.clock.now() - issued).total_seconds()
        remaining = ttl_s - max(0.0, age_s)
        if remaining <= 0:
            raise _Rejected(f"expired: issued {issued.isoformat()}, {age_s:.0f} s ago, ttl_s {ttl_s:g}")
        return remaining


class _Rejected(Exception):
    """A command refused before it reached the controller (the message is the reason)."""
