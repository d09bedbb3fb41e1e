"""Operator and remote commands: validated, expiring, and entering below the safety steps.

MQTT, the dashboard, the SCADA server, the REST API and the CLI all reach :meth:`Commands.apply` (through
``Controller.apply``) with a command model or a plain dict (JSON). Every command carries a time to live;
nothing an operator asks for outlives it, and nothing an operator asks for can override the limits
chain's safety steps (the command only changes the *target* the chain narrows).

These models are the one definition of the commands: the MQTT JSON Schemas
(``controller/telemetry/schemas/cmd_<name>.json``) are generated from them
(:mod:`controller.telemetry.wire`), and the SCADA map and the REST API take the same fields.

JSON forms (``command`` picks the model)::

    {"command": "set_mode", "mode": "self_consumption", "ttl_s": 3600}
    {"command": "manual_setpoint", "battery_kw": -200, "ttl_s": 900}
    {"command": "soc_reserve", "soc_pct": 40, "ttl_s": 86400}
    {"command": "replan"}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from controller.modes import Mode, ModeMachine, Request
from ems.clock import Clock
from ems.yamlfile import readable_errors

log = logging.getLogger(__name__)

MAX_TTL_S = 7 * 86_400.0
"""Longest time to live a command may ask for. [s of site time]"""


TTL_DESCRIPTION = "Time to live [s of site time]; the command lapses after it"


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_s: float = Field(default=60.0, gt=0, le=MAX_TTL_S, description=TTL_DESCRIPTION)


class SetMode(_Command):
    """Request an operating mode for ttl_s; auto ends any operator request at once."""

    model_config = ConfigDict(title="Request an operating mode")

    command: Literal["set_mode"] = "set_mode"
    mode: Literal["auto", "self_consumption", "tou_rule", "standby"] = Field(
        description="auto ends any operator request at once")


class ManualSetpoint(_Command):
    """Manual mode: hold the battery at battery_kw for ttl_s (required), within the safety limits."""

    model_config = ConfigDict(title="Hold the battery at a power for a while")

    command: Literal["manual_setpoint"] = "manual_setpoint"
    battery_kw: float = Field(ge=-100_000, le=100_000, description="[kW] + discharge, - charge; the site's PCS "
                                                                   "limits are checked by the controller")
    ttl_s: float = Field(gt=0, le=MAX_TTL_S, description=TTL_DESCRIPTION)


class SocReserve(_Command):
    """Keep at least soc_pct for ttl_s: the battery does not discharge for the target below it."""

    model_config = ConfigDict(title="Keep a SOC reserve")

    command: Literal["soc_reserve"] = "soc_reserve"
    soc_pct: float = Field(ge=0, le=100, description="[%] 0 clears the reserve; otherwise within the site's "
                                                     "SOC window (checked by the controller)")


class Replan(_Command):
    """Plan again now; the request lapses if it is not served within ttl_s."""

    model_config = ConfigDict(title="Plan again now")

    command: Literal["replan"] = "replan"


Command = Annotated[SetMode | ManualSetpoint | SocReserve | Replan, Field(discriminator="command")]
COMMAND_MODELS: dict[str, type[_Command]] = {"set_mode": SetMode, "manual_setpoint": ManualSetpoint,
                                             "soc_reserve": SocReserve, "replan": Replan}
"""Each command's model by its name (the ``command`` field, the MQTT topic's last level)."""
_adapter: TypeAdapter[Any] = TypeAdapter(Command)


@dataclass(frozen=True)
class CommandResult:
    """Whether a command was taken, and why (or why not)."""

    accepted: bool
    reason: str

    def to_dict(self) -> dict:
        return {"accepted": self.accepted, "reason": self.reason}


@dataclass(frozen=True)
class Reserve:
    """An operator SOC reserve in force until ``until`` (UTC). [%]"""

    soc_pct: float
    until: datetime


def field_range(model: type[BaseModel], name: str) -> tuple[float, float]:
    """The ``(lowest, highest)`` value command ``model`` allows for field ``name`` (its ``ge``/``le``), for
    interfaces that check ranges themselves (the SCADA map's writable registers)."""
    low, high = -math.inf, math.inf
    for constraint in model.model_fields[name].metadata:
        low = getattr(constraint, "ge", low)
        high = getattr(constraint, "le", high)
    return low, high


def parse_command(data: dict | BaseModel) -> SetMode | ManualSetpoint | SocReserve | Replan:
    """Validate a command given as a dict (JSON) or a model; raises ``ValueError`` naming every bad field."""
    if isinstance(data, SetMode | ManualSetpoint | SocReserve | Replan):
        return data
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        raise ValueError("; ".join(str(e) for e in readable_errors(Command, data, exc.errors()))) from exc


def sender(interface: str, identity: str | None) -> str:
    """``interface:identity`` (or the interface alone), as a command's ``by``. [at most 64 characters]"""
    return (interface if not identity else f"{interface}:{identity}")[:64]


class Commands:
    """Applies commands to the mode machine and the controller's operator state.

    Parameters
    ----------
    modes : ModeMachine
    clock : Clock
        Site time (commands expire in site time).
    battery_limits_kw : tuple[float, float]
        PCS (max charge, max discharge), to reject setpoints no battery here could follow. [kW]
    soc_window_pct : tuple[float, float]
        (soc_min, soc_max), to reject reserves outside the usable window. [%]
    on_replan : Callable[[datetime], None]
        Asks the planning task to plan now; gets the deadline (UTC) after which the request lapses.
    """

    def __init__(self, modes: ModeMachine, clock: Clock, battery_limits_kw: tuple[float, float],
                 soc_window_pct: tuple[float, float], on_replan: Callable[[datetime], None]):
        self.modes = modes
        self.clock = clock
        self.battery_limits_kw = battery_limits_kw
        self.soc_window_pct = soc_window_pct
        self.on_replan = on_replan
        self.reserve: Reserve | None = None

    def reserve_pct(self, now: datetime) -> float | None:
        """The operator reserve in force at ``now``, if any. [%]"""
        if self.reserve is not None and now >= self.reserve.until:
            log.info("SOC reserve %.1f %% expired", self.reserve.soc_pct)
            self.reserve = None
        return self.reserve.soc_pct if self.reserve else None

    def clock_stepped(self, by: timedelta) -> None:
        """The system clock was set back (``by`` < 0; an NTP step, an operator): the mode request (a manual
        setpoint among them) and the SOC reserve keep the time they had left, their expiry moving with the clock,
        so that none outlives its ``ttl_s`` (set back an hour, a manual setpoint of 60 s held an hour longer)."""
        request = self.modes.request
        if request is not None:
            self.modes.request = replace(request, until=request.until + by)
        if self.reserve is not None:
            self.reserve = replace(self.reserve, until=self.reserve.until + by)

    def apply(self, command: dict | BaseModel, *, interface: str = "internal",
              identity: str | None = None) -> CommandResult:
        """Validate and apply one command; never raises for bad input.

        ``interface`` and ``identity`` (who sent it) are logged and kept with a mode request (``by``)."""
        try:
            cmd = parse_command(command)
        except ValueError as exc:
            return CommandResult(False, f"invalid: {exc}")
        by = sender(interface, identity)
        now = self.clock.now()
        until = now + timedelta(seconds=cmd.ttl_s)
        if isinstance(cmd, SetMode):
            self.modes.request_mode(Request(Mode(cmd.mode), until, by=by))
            result = CommandResult(True, f"mode {cmd.mode} until {until.isoformat()}")
        elif isinstance(cmd, ManualSetpoint):
            max_charge, max_discharge = self.battery_limits_kw
            if not -max_charge <= cmd.battery_kw <= max_discharge:
                return CommandResult(False, f"battery_kw {cmd.battery_kw:g} outside the PCS range "
                                            f"[{-max_charge:g}, {max_discharge:g}] kW")
            self.modes.request_mode(Request(Mode.MANUAL, until, cmd.battery_kw, by=by))
            result = CommandResult(True, f"manual {cmd.battery_kw:g} kW until {until.isoformat()}")
        elif isinstance(cmd, SocReserve):
            lo, hi = self.soc_window_pct
            if cmd.soc_pct == 0:
                self.reserve = None
                result = CommandResult(True, "reserve cleared")
            elif not lo <= cmd.soc_pct <= hi:
                return CommandResult(False, f"soc_pct {cmd.soc_pct:g} outside the SOC window [{lo:g}, {hi:g}] %")
            else:
                self.reserve = Reserve(cmd.soc_pct, until)
                result = CommandResult(True, f"reserve {cmd.soc_pct:g} % until {until.isoformat()}")
        else:
            self.on_replan(until)
            result = CommandResult(True, "replan requested")
        log.warning("command %s from %s: %s", cmd.command, by, result.reason)
        return result
