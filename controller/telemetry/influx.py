"""InfluxDB sink: bus messages → line protocol → disk outbox → InfluxDB v2 write API.

Three modules, each usable alone:

* :mod:`controller.telemetry.line_protocol`: pure encoders from the bus messages to line protocol;
* :mod:`controller.telemetry.influx_sender`: ``InfluxWriter`` + ``drain``, the synchronous sender that
  empties the :class:`~controller.telemetry.outbox.Outbox` into InfluxDB;
* this module, ``InfluxSink``: the asyncio side. ``offer()`` encodes a bus message into memory; one
  task spools memory to the outbox, another drains the outbox off the event loop with exponential
  back-off while the server is away. Network timing (back-off, spool period) runs on real time on
  purpose; timestamps come from the messages or the injected site clock.

The encoders and the sender are importable from here too, as before the split.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from controller.telemetry.influx_sender import DrainResult, InfluxWriter, WriteFailed, WriteRejected, drain
from controller.telemetry.line_protocol import (
    accuracy_lines,
    alarm_lines,
    encode_line,
    plan_lines,
    state_lines,
    stats_line,
    to_ms,
)
from controller.telemetry.outbox import Outbox
from ems.clock import Clock

__all__ = ["AlarmCallback", "DrainResult", "InfluxSink", "InfluxWriter", "WriteFailed", "WriteRejected",
           "accuracy_lines", "alarm_lines", "drain", "encode_line", "plan_lines", "state_lines", "stats_line", "to_ms"]

log = logging.getLogger(__name__)

AlarmCallback = Callable[[str, bool, str], None]
"""``on_alarm(code, active, message)``: raised on a transition of a telemetry alarm."""


class InfluxSink:
    """Bus messages → outbox → InfluxDB, with back-off, bounded buffering and bounded shutdown.

    Parameters
    ----------
    site : str
        Value of the ``site`` tag.
    clock : Clock
        Site clock, for quarantine and self-monitoring timestamps.
    on_alarm : AlarmCallback, optional
        Called on transitions of ``telemetry.influx_unreachable`` and ``telemetry.outbox_overflow``,
        and with ``telemetry.influx_quarantine`` when points were quarantined.
    spool_interval_s : float
        How often points in memory are moved to the outbox. [s, real time]
    stats_interval_s : float
        How often an ``ems_telemetry`` line is written. [s, real time]
    """

    def __init__(self, site: str, outbox: Outbox, writer: InfluxWriter, clock: Clock, *, batch_size: int = 5000,
                 max_backoff_s: float = 60.0, on_alarm: AlarmCallback | None = None,
                 spool_interval_s: float = 0.5, stats_interval_s: float = 10.0, max_pending: int = 100_000):
        self.site = site
        self.outbox = outbox
        self.writer = writer
        self.clock = clock
        self.batch_size = batch_size
        self.max_backoff_s = max_backoff_s
        self.on_alarm = on_alarm
        self.spool_interval_s = spool_interval_s
        self.stats_interval_s = stats_interval_s
        self.max_pending = max_pending
        self.rejected_messages = 0
        self.dropped_in_memory = 0
        self.last_error: str | None = None
        self._pending: list[str] = []
        self._spooling = 0  # points being written to the outbox by the spool task
        self._stop = threading.Event()
        self._wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx-sender")
        self._tasks: list[asyncio.Task[None]] = []
        self._alarms: dict[str, bool] = {}
        self._accuracy: Any = None  # the forecast accuracy last written

    # -- input ---------------------------------------------------------------------------------

    def offer(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Encode one bus message (``state``, ``plan`` or ``alarm``); a message that cannot be
        encoded is logged and counted, never raised into the bus. A state whose forecast accuracy differs from the
        one last written (the figures change when a forecast has been scored, a few times an hour) also gives its
        ``ems_forecast_accuracy`` lines."""
        encoders = {"state": state_lines, "plan": plan_lines, "alarm": alarm_lines}
        encoder = encoders.get(kind)
        if encoder is None:
            return
        self._encode(kind, lambda: encoder(self.site, payload))
        accuracy = payload.get("forecast_accuracy") if kind == "state" else None
        if accuracy and accuracy != self._accuracy:
            self._accuracy = copy.deepcopy(accuracy)  # a malformed one is reported once, not every cycle
            self._encode("forecast accuracy", lambda: accuracy_lines(self.site, accuracy, payload["ts"]))

    def _encode(self, what: str, encode: Callable[[], list[str]]) -> None:
        """Add the lines ``encode()`` gives; one that fails is logged and counted (``rejected_messages``)."""
        try:
            lines = encode()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.rejected_messages += 1
            log.warning("InfluxDB sink: cannot encode a %s message (%s: %s)", what, type(exc).__name__, exc)
            return
        self._add(lines)

    def _add(self, lines: Iterable[str]) -> None:
        self._pending.extend(lines)
        self._trim()
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    def _add_front(self, lines: list[str]) -> None:
        """Put back points the outbox could not take, ahead of newer ones."""
        self._pending[:0] = lines
        self._trim()

    def _trim(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess > 0:  # the disk is not keeping up (or failing): keep the newest
            del self._pending[:excess]
            self.dropped_in_memory += excess

    @property
    def backlog(self) -> int:
        """Points not yet acknowledged by the server (in memory + in the outbox)."""
        return len(self._pending) + self._spooling + self.outbox.stats().depth

    # -- tasks ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the spool and sender tasks on the running loop."""
        self._tasks = [asyncio.create_task(self._spool_loop(), name="influx-spool"),
                       asyncio.create_task(self._send_loop(), name="influx-send")]

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _spool(self) -> int:
        """Move the points in memory to the outbox; returns how many."""
        if not self._pending:
            return 0
        lines, self._pending = self._pending, []
        self._spooling = len(lines)  # on their way to the outbox: still backlog (neither in memory nor on disk yet)
        try:
            dropped = await asyncio.to_thread(self.outbox.append, lines)
        except Exception:
            self._add_front(lines)
            raise
        finally:
            self._spooling = 0
        if dropped:
            log.warning("InfluxDB outbox full (%d points): dropped the %d oldest", self.outbox.max_points, dropped)
        self._alarm("telemetry.outbox_overflow", self.outbox.stats().depth >= self.outbox.max_points,
                    f"telemetry outbox full ({self.outbox.max_points} points): dropping the oldest points")
        return len(lines)

    async def _spool_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_stats = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.spool_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if loop.time() >= next_stats:
                next_stats = loop.time() + self.stats_interval_s
                self._pending.append(stats_line(self.site, self.outbox.stats(), len(self._pending), self.clock.now()))
            try:
                if await self._spool():
                    self._send_wake.set()
            except Exception as exc:  # disk full, file deleted: keep the points in memory, try again
                log.error("InfluxDB outbox: cannot store points: %s", exc)

    async def _send_loop(self) -> None:
        backoff = 1.0
        while True:
            result: DrainResult = await self._in_thread(
                drain, self.outbox, self.writer, self.batch_size, self.clock.now, self._stop)
            if result.quarantined:
                self._alarm("telemetry.influx_quarantine", True,
                            f"InfluxDB rejected {result.quarantined} point(s) as malformed: quarantined")
            if result.error:
                if self.last_error is None:
                    log.warning("InfluxDB unreachable, buffering in the outbox: %s", result.error)
                self.last_error = result.error
                self._alarm("telemetry.influx_unreachable", True, f"InfluxDB write failed: {result.error}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if self.last_error is not None:
                log.info("InfluxDB reachable again")
            self.last_error = None
            backoff = 1.0
            self._alarm("telemetry.influx_unreachable", False, "InfluxDB writes succeed")
            if result.sent == 0 and result.quarantined == 0:
                await self._send_wake.wait()
                self._send_wake.clear()

    def _alarm(self, code: str, active: bool, message: str) -> None:
        """Report a transition of a telemetry alarm (nothing when it is already in that state)."""
        if self._alarms.get(code, False) != active:
            self._alarms[code] = active
            if self.on_alarm is not None:
                self.on_alarm(code, active, message)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop within about ``timeout_s``: store what is in memory, give the sender a bounded chance to
        finish its current write, close the outbox. Nothing queued is lost: it waits on disk."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await self._spool()
                # wait for a write still in flight on the sender thread (bounded by its HTTP timeout)
                await self._in_thread(lambda: None)
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.outbox.close)
        self.writer.close()
