"""Remote command intake shared by MQTT and the dashboard: decode, validate, expire, apply, answer.

A command arrives as a name (``set_mode``, ``manual_setpoint``, ``soc_reserve``, ``replan``) and a
JSON object. It is checked against ``schemas/cmd_<name>.json``; a command stamped with ``ts`` whose
``ttl_s`` has already run out (site clock) is rejected as expired, otherwise its TTL is shortened
by its age. Then it goes to the controller's ``Controller.apply`` (below the safety steps) with the
interface it came through and the sender's identity. Every path ends in a result ``{command, id,
accepted, reason, ts, site}`` that echoes the command's ``id`` whenever one can be read (also for schema
rejections); nothing here raises, whatever the input. ``Controller.apply`` records each command it gets
in the audit log (:mod:`controller.audit`); a command refused here, before it gets there, is recorded
through ``audit``, so every command is recorded exactly once.

Payloads are decoded strictly before the schema sees them (:mod:`controller.telemetry.strict_json`):
at most :data:`MAX_PAYLOAD_BYTES`, UTF-8 without BOM, nesting at most :data:`MAX_JSON_DEPTH`,
finite numbers, no lone surrogates, no duplicate keys. An empty payload means ``{}`` (``replan``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Protocol

from jsonschema import Draft202012Validator

from controller.commands import COMMAND_MODELS, CommandResult, sender
from controller.telemetry.strict_json import PayloadError, loads_strict, payload_bytes, printable
from ems.clock import Clock
from ems.yamlfile import unknown_field

log = logging.getLogger(__name__)

COMMAND_NAMES = tuple(COMMAND_MODELS)
MAX_PAYLOAD_BYTES = 4096
"""Largest command payload; checked before anything is parsed. [bytes]"""
MAX_JSON_DEPTH = 4
"""Deepest nesting of arrays/objects in a command (commands are flat objects: depth 1)."""
MAX_NAME_CHARS = 64
MAX_REASON_CHARS = 1000



class ApplyFn(Protocol):
    """``Controller.apply``: takes the command as a dict with a ``command`` key, the interface it came by
    (``mqtt``, ``rest``, ``dashboard``, ``scada``, ``park``, ``internal``) and the caller's identity."""

    def __call__(self, command: dict[str, Any], *, interface: str = "internal",
                 identity: str | None = None) -> CommandResult: ...


AuditFn = Callable[..., None]
"""``AuditLog.record(*, ts, interface, identity, command, payload, accepted, reason)``."""


@cache
def schema(name: str) -> dict[str, Any]:
    """A shipped JSON Schema by file stem, e.g. ``state`` or ``cmd_set_mode``."""
    text = resources.files("controller.telemetry").joinpath("schemas").joinpath(f"{name}.json").read_text("utf-8")
    return json.loads(text)


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(f"cmd_{name}"))


def schema_errors(name: str, data: Any) -> list[str]:
    """Every violation of ``cmd_<name>.json`` as ``field: message`` (empty when valid); a key the command does not
    have as ``ttl: unknown field; did you mean ttl_s?; …`` (:func:`ems.yamlfile.unknown_field`)."""
    out = []
    for e in sorted(_validator(name).iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path)
        known = e.schema.get("properties", {}) if isinstance(e.schema, dict) else {}
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            out += [f"{where + '.' if where else ''}{key}: {unknown_field(str(key), known)}"
                    for key in e.instance if key not in known]
        else:
            out.append(f"{where or '(payload)'}: {e.message}")
    return out


class CommandIntake:
    """Turns raw remote commands into ``apply`` calls and result messages.

    Every call of :meth:`handle` or :meth:`busy` returns a result that can be published as it is
    (valid UTF-8 JSON), whatever the input and whatever fails inside; each rejection is logged
    once and counted (:meth:`counters`).

    Parameters
    ----------
    apply : ApplyFn
        The controller's ``Controller.apply`` (which records what it gets in the audit log).
    clock : Clock
        Site clock: TTLs are site seconds, as in the controller.
    site : str, optional
        Site id, written into every result (``site``) so that an answer names its site wherever it
        ends up (a park broker, a REST client).
    audit : AuditFn, optional
        Records the commands refused before they reach ``apply`` (``AuditLog.record``).
    """

    def __init__(self, apply: ApplyFn, clock: Clock, site: str | None = None, audit: AuditFn | None = None):
        self.apply = apply
        self.clock = clock
        self.site = site
        self.audit = audit
        self.accepted = 0
        self.rejected = 0
        self.busy_rejected = 0
        self.errors = 0
        self.dropped = 0

    def counters(self) -> dict[str, int]:
        """Commands accepted and rejected since start; ``busy`` and ``errors`` (internal failures) are
        among the rejected; ``dropped`` never reached the intake (transport queue overflow)."""
        return {"accepted": self.accepted, "rejected": self.rejected, "busy": self.busy_rejected,
                "errors": self.errors, "dropped": self.dropped}

    def handle(self, name: str, payload: bytes | str | Mapping[str, Any], *, interface: str,
               identity: str | None = None, retained: bool = False) -> dict[str, Any]:
        """Process one command; returns its result message (``cmd_result.json``). Never raises.

        Parameters
        ----------
        interface : str
            ``mqtt``, ``rest``, ``dashboard``, ``scada``, ``park`` (the audit log's interface).
        identity : str, optional
            The sender: token name, MQTT user, client address (``None`` when unknown).
        """
        command_id: str | None = None
        shown = printable(name)[:MAX_NAME_CHARS]
        by = sender(interface, identity)
        reached = False
        try:
            try:
                data, undecodable = _decode(payload), None
                command_id = read_id(data)
            except _Rejected as exc:  # the reasons below come first: say what the sender can act on
                data, undecodable = None, exc
            if retained:
                raise _Rejected("retained command ignored: publish commands with retain=false")
            if name not in COMMAND_NAMES:
                raise _Rejected(f"unknown command {shown!r}; known: {', '.join(COMMAND_NAMES)}")
            if undecodable is not None:
                raise undecodable
            errors = schema_errors(name, data)
            if errors:
                raise _Rejected("invalid: " + "; ".join(errors))
            command = self._command(name, data)
            reached = True
            result = self._apply(command, interface, identity)
        except _Rejected as exc:
            result = CommandResult(False, str(exc))
        except Exception as exc:  # a bug here must cost one command, never the message path
            log.exception("command %s from %s: intake failed", shown, by)
            self.errors += 1
            result = CommandResult(False, f"internal error: {type(exc).__name__}")
        if result.accepted:
            self.accepted += 1
        else:
            self.rejected += 1
            log.warning("command %s from %s rejected: %s", shown, by, printable(result.reason)[:MAX_REASON_CHARS])
        if not reached:
            self._record(name, payload, result, interface, identity)
        return self._result(name, command_id, result)

    def refuse(self, name: str, payload: bytes | str | Mapping[str, Any], reason: str, *, interface: str,
               identity: str | None = None) -> dict[str, Any]:
        """The answer to a command its transport may not deliver (e.g. park commands while the site does not
        allow them): rejected with ``reason``, counted, logged and recorded like any rejection. Never raises."""
        try:
            command_id = read_id(_decode(payload))
        except Exception:  # an unreadable id is no reason not to answer
            command_id = None
        shown = printable(name)[:MAX_NAME_CHARS]
        self.rejected += 1
        log.warning("command %s from %s rejected: %s", shown, sender(interface, identity), reason)
        result = CommandResult(False, reason)
        self._record(name, payload, result, interface, identity)
        return self._result(name, command_id, result)

    def busy(self, name: str, payload: bytes | str | Mapping[str, Any], *, waiting: int, interface: str,
             identity: str | None = None) -> dict[str, Any]:
        """The answer to a command that found the command queue full (``waiting`` commands ahead of it).

        Not logged per command (the transport raises an alarm while its queue is full), but recorded."""
        try:
            command_id = read_id(_decode(payload))
        except Exception:  # an unreadable id is no reason not to answer
            command_id = None
        self.rejected += 1
        self.busy_rejected += 1
        result = CommandResult(False, f"busy: {waiting} commands waiting; send it again later")
        self._record(name, payload, result, interface, identity)
        return self._result(name, command_id, result)

    def _record(self, name: str, payload: bytes | str | Mapping[str, Any], result: CommandResult, interface: str,
                identity: str | None) -> None:
        """Put a command refused before ``apply`` into the audit log (a failure costs the entry, not the answer)."""
        if self.audit is None:
            return
        try:
            self.audit(ts=self.clock.now(), interface=interface, identity=identity,
                       command=printable(name)[:MAX_NAME_CHARS], payload=payload, accepted=result.accepted,
                       reason=printable(result.reason)[:MAX_REASON_CHARS])
        except Exception:
            log.exception("command %s: audit entry not recorded", name)

    def _result(self, name: str, command_id: str | None, result: CommandResult) -> dict[str, Any]:
        answer = {"command": printable(name)[:MAX_NAME_CHARS], "id": command_id, "accepted": result.accepted,
                  "reason": printable(result.reason)[:MAX_REASON_CHARS], "ts": self.clock.now().isoformat()}
        if self.site is not None:
            answer["site"] = self.site
        return answer

    def _command(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """The command ``apply`` gets: without ``id`` and ``ts``, its TTL shortened by its age; raises
        ``_Rejected`` when it has expired."""
        command = {k: v for k, v in data.items() if k not in ("id", "ts")}
        if "ts" in data:
            command["ttl_s"] = self._remaining_ttl(data["ts"], data.get("ttl_s"))
        command["command"] = name
        return command

    def _apply(self, command: dict[str, Any], interface: str, identity: str | None) -> CommandResult:
        try:
            return self.apply(command, interface=interface, identity=identity)
        except Exception as exc:  # the controller must answer, whatever went wrong inside (it recorded it)
            log.exception("command %s: apply failed", command["command"])
            self.errors += 1
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


def _decode(payload: bytes | str | Mapping[str, Any]) -> Any:
    """The command's JSON value (not yet checked against its schema); raises ``_Rejected``."""
    try:
        raw = payload_bytes(payload)
        return loads_strict(raw, max_bytes=MAX_PAYLOAD_BYTES, max_depth=MAX_JSON_DEPTH) if raw else {}
    except PayloadError as exc:
        raise _Rejected(str(exc)) from None


def read_id(data: Any) -> str | None:
    """The command's correlation ``id`` when it is a string (``None`` otherwise)."""
    if isinstance(data, Mapping) and isinstance(data.get("id"), str):
        return printable(data["id"])
    return None




class _Rejected(Exception):
    """A command refused before it reached the controller (the message is the reason)."""
