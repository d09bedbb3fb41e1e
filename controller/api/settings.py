"""Settings an admin may change at run time: the fallback mode (the mode defaults to it without a valid
plan or operator request) and a standing SOC reserve. Neither is written back to the site file: a
restart returns to the site file's fallback, and the reserve expires like every external command
(at most :data:`controller.commands.MAX_TTL_S`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.commands import MAX_TTL_S, CommandResult, Commands
from controller.modes import FallbackMode, Mode
from controller.telemetry.remote import ApplyFn

log = logging.getLogger(__name__)


class SettingsChange(BaseModel):
    """What to change (omitted fields stay as they are)."""

    model_config = ConfigDict(extra="forbid", strict=True)   # no false → 0 (that would clear the reserve)

    fallback_mode: FallbackMode | None = Field(
        default=None, description="Mode without a valid plan or operator request (until restart)")
    soc_reserve_pct: float | None = Field(default=None, ge=0, le=100,
                                          description="SOC reserve [%]; 0 clears it")
    soc_reserve_ttl_s: float = Field(default=MAX_TTL_S, gt=0, le=MAX_TTL_S,
                                     description="How long the reserve holds [s of site time]")


class RuntimeSettings:
    """Reads and changes the run-time settings of one controller.

    Parameters
    ----------
    commands : Commands
        The controller's commands (its mode machine and reserve).
    apply : ApplyFn
        ``Controller.apply``: the reserve goes through it, so that it is validated and recorded like a command.
    record : Callable, optional
        ``AuditLog.record``: a fallback-mode change (not a command) is recorded there as ``settings``.
    now : Callable[[], datetime], optional
        The controller's clock (site time) for that record; default the system clock (UTC).
    """

    def __init__(self, commands: Commands, apply: ApplyFn, record: Callable[..., None] | None = None,
                 now: Callable[[], datetime] | None = None):
        self.commands = commands
        self.apply = apply
        self.record = record
        self.now = now or (lambda: datetime.now(UTC))

    def current(self) -> dict[str, Any]:
        """``fallback_mode`` and the reserve in force (``soc_reserve_pct``, ``soc_reserve_until``; ``None``)."""
        reserve = self.commands.reserve
        return {"fallback_mode": self.commands.modes.fallback.value,
                "soc_reserve_pct": reserve.soc_pct if reserve else None,
                "soc_reserve_until": reserve.until.isoformat() if reserve else None}

    def change(self, change: SettingsChange, *, interface: str, identity: str | None) -> CommandResult:
        """Apply ``change``: the reserve first (it may be refused, then nothing changes), then the fallback."""
        reasons = []
        if change.soc_reserve_pct is not None:
            result = self.apply({"command": "soc_reserve", "soc_pct": change.soc_reserve_pct,
                                 "ttl_s": change.soc_reserve_ttl_s}, interface=interface, identity=identity)
            if not result.accepted:
                return result
            reasons.append(result.reason)
        if change.fallback_mode is not None:
            self.commands.modes.fallback = Mode(change.fallback_mode)
            log.warning("fallback mode set to %s by %s:%s", change.fallback_mode, interface, identity)
            reasons.append(f"fallback mode {change.fallback_mode}")
            if self.record is not None:
                self.record(ts=self.now(), interface=interface, identity=identity, command="settings",
                            payload={"fallback_mode": change.fallback_mode}, accepted=True,
                            reason=f"fallback mode {change.fallback_mode} until restart")
        return CommandResult(True, "; ".join(reasons) or "nothing to change")
