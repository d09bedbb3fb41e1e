"""The publish bus every sink reads from (InfluxDB outbox, MQTT, dashboard).

The controller publishes; sinks subscribe to the kinds they want and each gets its own bounded
queue. A slow sink never slows the cycle: when its queue is full the oldest message is dropped and
counted. Kinds used by the controller (payload schemas in docs/controller.md):

- ``state``: once per cycle, the cycle state;
- ``plan``: once per new plan (``Plan.to_json()`` parsed, plus ``follow`` metadata);
- ``alarm``: once per alarm transition (raised or cleared).

Everything runs on the controller's event loop (not thread-safe by design).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

STATE, PLAN, ALARM = "state", "plan", "alarm"
KINDS = (STATE, PLAN, ALARM)


@dataclass(frozen=True)
class Message:
    """One published message: its kind, a JSON-ready payload and a bus-wide sequence number."""

    kind: str
    payload: dict[str, Any]
    seq: int


class Subscription:
    """A sink's view of the bus: a bounded queue of the kinds it asked for."""

    def __init__(self, bus: Bus, kinds: frozenset[str], maxsize: int):
        self._bus = bus
        self.kinds = kinds
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        """Messages dropped because this subscriber fell behind."""

    def _offer(self, message: Message) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(message)

    async def get(self) -> Message:
        """The next message (waits)."""
        return await self._queue.get()

    def get_nowait(self) -> Message | None:
        """The next message, or ``None`` if there is none."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Stop receiving."""
        self._bus._subscribers.discard(self)

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.get()


class Bus:
    """Fan-out publish/subscribe with bounded, drop-oldest queues per subscriber.

    Parameters
    ----------
    maxsize : int
        Default queue bound per subscriber (messages).
    """

    def __init__(self, maxsize: int = 1000):
        self.maxsize = maxsize
        self._subscribers: set[Subscription] = set()
        self._latest: dict[str, Message] = {}
        self._seq = 0

    def publish(self, kind: str, payload: dict[str, Any]) -> Message:
        """Hand ``payload`` to every subscriber of ``kind``; never blocks."""
        self._seq += 1
        message = Message(kind, payload, self._seq)
        self._latest[kind] = message
        for sub in tuple(self._subscribers):
            if kind in sub.kinds:
                sub._offer(message)
        return message

    def subscribe(self, kinds: Iterable[str] = KINDS, maxsize: int | None = None) -> Subscription:
        """A new subscription to ``kinds`` with its own queue of ``maxsize`` (default: the bus's)."""
        sub = Subscription(self, frozenset(kinds), maxsize or self.maxsize)
        self._subscribers.add(sub)
        return sub

    def latest(self, kind: str) -> Message | None:
        """The last message of ``kind`` published (for a sink that starts late, e.g. a new dashboard client)."""
        return self._latest.get(kind)

    @property
    def dropped(self) -> int:
        """Messages dropped so far across current subscribers."""
        return sum(s.dropped for s in self._subscribers)
