"""Injectable clocks: nothing in the product reads the system time directly.

``WallClock`` is real time. ``AcceleratedClock`` runs ``speed`` times faster than real time from a
chosen start (for the simulated site, demos and end-to-end tests); both the simulated devices and
the controller must share the same clock object so that their notions of "now" agree.
``ManualClock`` only moves when told to (unit tests, offline stepping).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

MAX_SPEED = 10_000.0
"""The fastest a simulated site's clock runs (``simulation.speed``, ``--speed``): site seconds per real second. [-]"""


class Clock(Protocol):
    """Site time source. ``now()`` is UTC and aware; ``sleep`` takes *site* seconds."""

    @property
    def speed(self) -> float: ...

    def now(self) -> datetime: ...

    def monotonic(self) -> float:
        """Site seconds since an arbitrary origin; never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time."""

    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class AcceleratedClock:
    """Site time that runs ``speed`` × faster than real time, starting at ``start`` (UTC)."""

    def __init__(self, speed: float = 1.0, start: datetime | None = None):
        if speed <= 0:
            raise ValueError("speed must be positive")
        if start is not None and start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._speed = float(speed)
        self._start = (start or datetime.now(UTC)).astimezone(UTC)
        self._real0 = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def monotonic(self) -> float:
        return (time.monotonic() - self._real0) * self._speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)


class ManualClock:
    """A clock that moves only through :meth:`advance` (``sleep`` advances it and yields once)."""

    speed = 1.0

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative: set back), as an NTP step or an operator does; the
        monotonic clock does not move."""
        self._now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
