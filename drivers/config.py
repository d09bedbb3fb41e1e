"""``DeviceConfig``: one entry of a site file's ``devices:`` list (name, role, profile, endpoint, unit id, timings).

The controller composes :class:`DeviceConfig` into its site model; ``ems devices read`` reads only the
``devices:`` list (:class:`DevicesFile`, other top-level sections are ignored). Devices whose endpoints are
equal share one connection (:attr:`TcpEndpoint.key`), whatever their unit ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.roles import Role
from ems.yamlfile import ConfigError, FieldError, other_kind, read_yaml, validate
from optimizer.site import BatteryUnit

_STRICT = ConfigDict(extra="forbid", frozen=True)

DEADLINE_SHARE_OF_CYCLE = 0.4
"""Default share of the control cycle one device operation may take: a read and a write per cycle. [-]"""
MIN_DEFAULT_DEADLINE_S = 0.25
"""Floor of the default deadline: a loopback or LAN Modbus exchange on a busy host fits in it (an accelerated
simulation's cycle can be far shorter in physical time). [s]"""


MAX_UNIT_RATING_KW = 1e6
"""Largest AC rating [kW] one device may give: 1 GW."""


class MeterLocation(StrEnum):
    """Where a meter measures: the site's connection point (exactly one) or a sub-meter."""

    GRID = "grid"
    FEEDER = "feeder"
    PV = "pv"
    LOAD = "load"


class TcpEndpoint(BaseModel):
    """Modbus TCP server (a device or a TCP-to-RS485 gateway)."""

    model_config = _STRICT
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)

    @property
    def key(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class RtuEndpoint(BaseModel):
    """Modbus RTU over a serial line (RS485 adapter)."""

    model_config = _STRICT
    serial_port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0")
    baudrate: int = Field(9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def key(self) -> str:
        return f"rtu://{self.serial_port}"

    def port_problem(self) -> str:
        """Why the serial port cannot be opened by this process, as far as the file system tells ('' if it looks
        openable, or if ``serial_port`` is a pyserial URL such as ``socket://host:port``)."""
        if "://" in self.serial_port:
            return ""
        port = Path(self.serial_port)
        if not port.exists():
            return (f"{port} is not there; adapter unplugged, or renamed at boot "
                    "(/dev/serial/by-id/ names do not change)")
        if not os.access(port, os.R_OK | os.W_OK):
            return f"no permission to open {port} (the user running the EMS needs the dialout group)"
        return ""


class DeviceConfig(BaseModel):
    """One Modbus device and how to poll it.

    Devices behind one endpoint share its connection; that connection uses the largest ``timeout_s``
    and ``min_request_gap_s`` of its devices. Back-off (``backoff_initial_s`` doubling up to
    ``backoff_max_s``) is per device, so one dead unit id does not hold up its neighbours for long.
    Every poll, write and heartbeat of the device must finish within its deadline (:meth:`deadline`),
    or the cycle goes on without it.
    """

    model_config = _STRICT
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    role: Role
    profile: str = Field(min_length=1, description="shipped profile name (e.g. sunspec-meter) or a YAML path")
    endpoint: TcpEndpoint | RtuEndpoint
    unit_id: int = Field(1, ge=0, le=247)
    timeout_s: float = Field(1.0, gt=0, description="per request attempt and per connect attempt [s]")
    retries: int = Field(1, ge=0, le=5, description="re-sends after a timeout")
    min_request_gap_s: float = Field(0.0, ge=0, description="pause between requests on the connection [s]")
    backoff_initial_s: float = Field(1.0, gt=0, description="first wait after a failed poll [s]")
    backoff_max_s: float = Field(30.0, gt=0, description="cap of the doubling wait for a dead device [s]")
    max_age_s: float = Field(5.0, gt=0, description="readings older than this are stale [s]")
    max_registers_per_read: int | None = Field(None, ge=1, le=125,
                                               description="lower the profile's limit for this device")
    deadline_s: float | None = Field(None, gt=0, description="time one poll or one write of this device may "
                                     "take before the cycle goes on without it [s]; default: see deadline()")
    location: MeterLocation | None = Field(None, description="meters only: where the meter measures; "
                                           "default grid (the connection point)")
    rating_kw: float | None = Field(None, gt=0, le=MAX_UNIT_RATING_KW,
                                    description="PV inverters only: AC rating [kW]")
    battery: BatteryUnit | None = Field(None, description="batteries only: this unit's energy, limits, "
                                        "efficiencies and SOC window")

    @model_validator(mode="after")
    def _consistent(self) -> DeviceConfig:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s is above backoff_max_s")
        for field, role in (("location", Role.METER), ("rating_kw", Role.PV_INVERTER), ("battery", Role.BATTERY)):
            if getattr(self, field) is not None and self.role is not role:
                raise ValueError(f"{field} is only for devices with role {role.value}")
        return self

    @property
    def meter_location(self) -> MeterLocation | None:
        """Where a meter measures (``grid`` unless configured); ``None`` for other roles."""
        if self.role is not Role.METER:
            return None
        return self.location or MeterLocation.GRID

    @property
    def address(self) -> str:
        """The device's bus address: endpoint and unit id, e.g. ``tcp://10.0.0.5:502#3``."""
        return f"{self.endpoint.key}#{self.unit_id}"


    def deadline(self, cycle_s: float | None = None) -> float:
        """Time one poll or one write of this device may take. [s, physical time]

        ``deadline_s`` if set. Otherwise the transport's own bound, ``timeout_s × (retries + 1)``, and
        with a control cycle of ``cycle_s`` physical seconds at most :data:`DEADLINE_SHARE_OF_CYCLE` of
        it (so a read and a write fit in one cycle), but never below :data:`MIN_DEFAULT_DEADLINE_S`.
        """
        if self.deadline_s is not None:
            return self.deadline_s
        bound = self.timeout_s * (self.retries + 1)
        if cycle_s is None:
            return bound
        return min(bound, max(DEADLINE_SHARE_OF_CYCLE * cycle_s, MIN_DEFAULT_DEADLINE_S))


def device_list_errors(devices: Sequence[DeviceConfig]) -> list[FieldError]:
    """Problems of a device list as a whole, each with its field path: a repeated name, two devices at one
    endpoint and unit id (a gateway's units need distinct ids)."""
    errors: list[FieldError] = []
    first_name: dict[str, int] = {}
    first_address: dict[str, int] = {}
    for i, d in enumerate(devices):
        if d.name in first_name:
            errors.append(FieldError(f"devices[{i}].name", f"{d.name!r} is already the name of "
                                     f"devices[{first_name[d.name]}]; device names must be unique"))
        else:
            first_name[d.name] = i
        if d.address in first_address:
            j = first_address[d.address]
            errors.append(FieldError(f"devices[{i}].unit_id", f"{d.name} is at {d.endpoint.key} unit id {d.unit_id}, "
                                     f"like devices[{j}] ({devices[j].name}); devices sharing an endpoint need "
                                     "distinct unit ids"))
        else:
            first_address[d.address] = i
    return errors


class DevicesFile(BaseModel):
    """The part of a site file that the device layer reads: its ``devices:`` list."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    devices: list[DeviceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> DevicesFile:
        errors = device_list_errors(self.devices)
        if errors:
            raise ValueError("; ".join(str(e) for e in errors))
        return self


def load_devices(path: str | Path) -> list[DeviceConfig]:
    """The ``devices:`` list of a site file; :class:`ConfigError` names the file and field on errors."""
    data = read_yaml(path)
    if isinstance(data, dict) and "devices" not in data:
        raise ConfigError(str(path), [other_kind(data, DevicesFile) or FieldError("devices", "Field required")])
    return list(validate(DevicesFile, data, str(path)).devices)
