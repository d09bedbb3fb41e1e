"""What the controller needs of a device, as small protocols per capability (docs/architecture.md).

The controller and the snapshot type against these, never against ``drivers.device.ModbusDevice``, so an
in-memory device (``tests/fakes.py``) can stand in for a Modbus one. ``ModbusDevice`` satisfies all of them:

- :class:`Readable` — read a snapshot of the device's points (``poll``), and whether it answers;
- :class:`SetpointWriter` — write a setpoint; the device itself skips a value it already holds (within a
  deadband, re-sent at its re-send period: ``drivers.writes.WriteMemory``, the only such rule);
- :class:`Watchdog` — keep the device's own watchdog register alive;
- :class:`RemoteControlled` — enter and leave remote control, and the fallback timer that entering sets;
- :class:`Device` — all of them, plus ``close``: what the controller drives.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from drivers.config import DeviceConfig
from drivers.readings import Reading
from drivers.writes import WriteResult


@runtime_checkable
class Readable(Protocol):
    """A device the snapshot can read."""

    @property
    def config(self) -> DeviceConfig:
        """Name, role, ``max_age_s`` (readings older than this are stale)."""
        ...

    @property
    def name(self) -> str: ...

    async def poll(self) -> dict[str, Reading]:
        """Every point of the device's role, within its own deadline; a failure is a MISSING reading, never 0."""
        ...

    @property
    def online(self) -> bool | None:
        """True after a poll that got answers, False after one that did not (in time), None before the first."""
        ...

    @property
    def last_error(self) -> str:
        """Why it is not online ("" when it is)."""
        ...


@runtime_checkable
class SetpointWriter(Protocol):
    """A device that takes setpoints (battery power, PV limit)."""

    async def write(self, point: str, value: float, *, force: bool = False, deadband: float = 0.0) -> WriteResult:
        """Write ``value`` [point unit] to writable ``point``, clamped to the point's limits.

        Not sent (``sent`` False, ``value`` = what the device holds) when within ``deadband`` of the last
        successful write and not due for re-sending; ``force`` sends anyway. ``ok`` False with ``detail``
        when it failed or did not read back. Raises ``KeyError`` for a point the device cannot write.
        """
        ...

    def last_written(self, point: str) -> float | None:
        """What the device holds from the last successful write of ``point``, ``None`` if nothing. [point unit]"""
        ...


@runtime_checkable
class Watchdog(Protocol):
    """A device with its own communication watchdog."""

    async def heartbeat(self) -> bool:
        """Write the watchdog register if its period has passed; True if written. Called every cycle."""
        ...


@runtime_checkable
class RemoteControlled(Protocol):
    """A device that must be put under (and released from) external control."""

    @property
    def has_remote_control(self) -> bool:
        """Whether the device has a remote-control sequence to enter and leave (a meter has none)."""
        ...

    @property
    def reversion_s(self) -> float | None:
        """The device's own fallback timer once remote control is entered [s]; ``None`` if it sets none."""
        ...

    async def enter_remote_control(self) -> list[WriteResult]:
        """Write the enter sequence (stops at the first failed step); forgets what was written before."""
        ...

    async def leave_remote_control(self) -> list[WriteResult]:
        """Write the leave sequence, handing control back to the device."""
        ...


@runtime_checkable
class Device(Readable, SetpointWriter, Watchdog, RemoteControlled, Protocol):
    """Everything the controller does with a device."""

    def close(self) -> None:
        """Release the device's connection (at shutdown)."""
        ...
