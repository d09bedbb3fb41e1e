"""Forecasts from outside over MQTT and REST: decode, validate, audit, answer (docs/data.md, "External forecasts").

A forecast arrives as a JSON object (``schemas/forecast.json``: the fields of
:func:`optimizer.external_forecast.parse_forecast` plus an optional correlation ``id``). It is decoded strictly
(:mod:`controller.telemetry.strict_json`, at most :data:`MAX_FORECAST_BYTES`), submitted to the controller's
:class:`~optimizer.external_forecast.ExternalForecasts` (validation and expiry are there) and recorded in the audit
log as command ``forecast`` with the interface it came through and the sender's identity, accepted or not. The
answer (``schemas/forecast_result.json``) is :meth:`SubmitResult.as_dict` plus ``command``, ``id``, ``ts`` and
``site``; nothing here raises, whatever the input.

A retained MQTT forecast is taken like any other (it is the publisher's latest forecast, useful to a controller
that starts after it was sent), except that it must be newer than the forecast in use: the broker delivers it
again on every reconnect, and a copy already applied, or older than one received since, is refused and changes
nothing. An expired one is refused whether retained or not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from controller.commands import sender
from controller.telemetry.remote import MAX_JSON_DEPTH, MAX_REASON_CHARS, AuditFn
from controller.telemetry.strict_json import PayloadError, loads_strict, payload_bytes, printable
from ems.clock import Clock
from optimizer.external_forecast import ExternalForecasts, SubmitResult

log = logging.getLogger(__name__)

COMMAND = "forecast"
"""The audit log's command name for a forecast submission."""
MAX_FORECAST_BYTES = 65536
"""Largest forecast payload over MQTT (a week of 15-min PV and load is about 10 kB). [bytes]"""
MAX_ID_CHARS = 64


class ForecastIntake:
    """Turns raw forecasts from MQTT or REST into :meth:`ExternalForecasts.submit` calls, audit entries and answers.

    Parameters
    ----------
    store : ExternalForecasts
        The controller's ``Controller.external_forecasts``.
    clock : Clock
        Site clock: expiry is judged on it, answers and audit entries are stamped with it.
    site : str, optional
        Site id, written into every answer.
    audit : AuditFn, optional
        ``AuditLog.record``: every submission is recorded, accepted or not.
    """

    def __init__(self, store: ExternalForecasts, clock: Clock, site: str | None = None,
                 audit: AuditFn | None = None):
        self.store, self.clock, self.site, self.audit = store, clock, site, audit

    def handle(self, payload: bytes | str | Mapping[str, Any], *, interface: str, identity: str | None = None,
               retained: bool = False) -> dict[str, Any]:
        """Submit one forecast; returns its answer (``forecast_result.json``). Never raises.

        Parameters
        ----------
        interface : str
            ``mqtt`` or ``rest`` (the audit log's interface).
        identity : str, optional
            The sender: MQTT user property ``user``, token name.
        retained : bool
            A retained MQTT message: applied only when newer than the forecast in use.
        """
        command_id: str | None = None
        try:
            data = _decode(payload)
            if isinstance(data, dict) and "id" in data:
                command_id = data.pop("id")
                if not isinstance(command_id, str) or len(command_id) > MAX_ID_CHARS:
                    bad, command_id = command_id, None
                    raise PayloadError(f"id: a string of at most {MAX_ID_CHARS} characters is required, got "
                                       f"{printable(repr(bad))[:80]}")
                command_id = printable(command_id)
            result = self.store.submit(data, self.clock.now(), only_newer=retained)
        except PayloadError as exc:
            result = SubmitResult(accepted=False, error=str(exc))
        except Exception as exc:  # a bug here must cost one forecast, never the message path
            log.exception("forecast from %s: intake failed", sender(interface, identity))
            result = SubmitResult(accepted=False, error=f"internal error: {type(exc).__name__}")
        return self._answer(payload, result, command_id, interface, identity)

    def refuse(self, payload: bytes | str | Mapping[str, Any], reason: str, *, interface: str,
               identity: str | None = None) -> dict[str, Any]:
        """The answer to a forecast its transport cannot take now (a full queue): refused with ``reason``,
        recorded like any refusal. Never raises."""
        return self._answer(payload, SubmitResult(accepted=False, error=reason), None, interface, identity)

    def _answer(self, payload: bytes | str | Mapping[str, Any], result: SubmitResult, command_id: str | None,
                interface: str, identity: str | None) -> dict[str, Any]:
        if result.accepted:
            reason = (f"accepted: {result.source}, {'+'.join(result.quantities)}, {result.steps} steps, "
                      f"expires {result.expires_at.isoformat() if result.expires_at else '-'}")
        else:
            reason = printable(result.error or "rejected")[:MAX_REASON_CHARS]
            log.warning("forecast from %s rejected: %s", sender(interface, identity), reason)
        self._record(payload, result.accepted, reason, interface, identity)
        answer = {"command": COMMAND, "id": command_id, **result.as_dict(), "ts": self.clock.now().isoformat()}
        if result.error is not None:
            answer["error"] = reason
        if self.site is not None:
            answer["site"] = self.site
        return answer

    def _record(self, payload: bytes | str | Mapping[str, Any], accepted: bool, reason: str, interface: str,
                identity: str | None) -> None:
        """Put one submission into the audit log (a failure costs the entry, not the answer)."""
        if self.audit is None:
            return
        try:
            self.audit(ts=self.clock.now(), interface=interface, identity=identity, command=COMMAND,
                       payload=dict(payload) if isinstance(payload, Mapping) else payload, accepted=accepted,
                       reason=reason)
        except Exception:
            log.exception("forecast: audit entry not recorded")


def _decode(payload: bytes | str | Mapping[str, Any]) -> Any:
    """The forecast's JSON value (not yet validated); raises :class:`PayloadError` naming what is wrong."""
    raw = payload_bytes(payload)
    if not raw:
        raise PayloadError("empty payload: a forecast is a JSON object (docs/data.md, External forecasts)")
    return loads_strict(raw, max_bytes=MAX_FORECAST_BYTES, max_depth=MAX_JSON_DEPTH)
