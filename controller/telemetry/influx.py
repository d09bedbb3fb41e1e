"""InfluxDB sink: bus messages → line protocol → disk outbox → InfluxDB v2 write API.

Three layers, each usable alone:

* ``state_lines`` / ``plan_lines`` / ``alarm_lines`` / ``stats_line``: pure encoders from the bus
  messages to InfluxDB line protocol (schema in docs/telemetry.md). Every number is written as a
  float so a field never changes type (InfluxDB rejects type conflicts with HTTP 400).
* ``InfluxWriter`` + ``drain``: synchronous sender. ``drain`` reads the oldest batch from the
  :class:`~controller.telemetry.outbox.Outbox`, POSTs it with influxdb-client's SYNCHRONOUS write
  API (pre-serialised lines, millisecond precision) and deletes it only once the server answered
  2xx. A batch refused as malformed (400/413/422) is bisected until the offending points are
  isolated and quarantined; everything else (connection errors, timeouts, 401/403/404, 429, 5xx)
  leaves the outbox untouched for a later retry.
* ``InfluxSink``: the asyncio side. ``offer()`` encodes a bus message into memory; one task spools
  memory to the outbox, another drains the outbox off the event loop with exponential back-off
  while the server is away. Network timing (back-off, spool period) runs on real time on purpose;
  timestamps come from the messages or the injected site clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from controller.telemetry.outbox import Batch, Outbox, OutboxStats
from ems.clock import Clock

log = logging.getLogger(__name__)

MALFORMED_STATUSES = frozenset({400, 413, 422})
"""HTTP answers that mean "these points will never be accepted": bisect, then quarantine."""

STRING_FIELDS = frozenset({"mode", "reason", "period", "source", "follow", "follow_reason", "request"})
"""Flattened state keys written as string fields; every other string is left out (type stability)."""

POWER_FLOW_POINTS = ("pv_kw", "grid_kw", "battery_kw", "soc_pct")
"""Measurements copied into ``ems_state`` (when OK) so one measurement holds the power flows."""

AlarmCallback = Callable[[str, bool, str], None]
"""``on_alarm(code, active, message)``: raised on a transition of a telemetry alarm."""


# ----------------------------------------------------------------------------------------------
# line protocol


def _escape_measurement(name: str) -> str:
    return name.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_key(key: str) -> str:
    """Tag keys, tag values and field keys."""
    return (key.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
            .replace("\n", "\\n"))


def _field_value(value: float | str) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return repr(float(value))


def encode_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, float | str], ts_ms: int) -> str | None:
    """One line of InfluxDB line protocol (``None`` when there is no field to write).

    Parameters
    ----------
    tags : mapping
        Empty tag values are left out (InfluxDB rejects them).
    fields : mapping
        Floats (NaN and infinities are left out) or strings.
    ts_ms : int
        Timestamp, milliseconds since the Unix epoch (UTC). [ms]
    """
    parts = [f"{_escape_key(k)}={_field_value(v)}" for k, v in fields.items()
             if isinstance(v, str) or math.isfinite(v)]
    if not parts:
        return None
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(tags.items()) if v)
    return f"{_escape_measurement(measurement)}{tag_text} {','.join(parts)} {ts_ms}"


def to_ms(ts: str | datetime) -> int:
    """An aware timestamp (datetime or ISO 8601 text) as milliseconds since the epoch. [ms]"""
    when = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    if when.tzinfo is None:
        raise ValueError(f"naive timestamp {ts!r}: timestamps must carry their UTC offset")
    return round(when.timestamp() * 1000)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, float | str]) -> None:
    """Numeric and boolean leaves of nested dicts as ``a_b_c`` float fields; strings only for the keys of
    ``STRING_FIELDS``; lists (bounds, alarms) and ``None`` are left out."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, f"{name}_", out)
        elif (number := _number(value)) is not None:
            out[name] = number
        elif isinstance(value, str) and (name in STRING_FIELDS or key in STRING_FIELDS):
            out[name] = value


def state_lines(site: str, state: Mapping[str, Any]) -> list[str]:
    """A cycle's ``state`` message as ``ems_state``, ``ems_measurement`` and ``ems_quality`` lines."""
    ts_ms = to_ms(state["ts"])
    tags = {"site": site}
    measurements: Mapping[str, Any] = state.get("measurements") or {}
    values: dict[str, float | str] = {}
    qualities: dict[str, float | str] = {}
    for name, reading in measurements.items():
        quality = reading.get("quality", "ok")
        value = reading.get("value")
        if quality == "ok" and (number := _number(value)) is not None:
            values[name] = number
        elif quality != "ok":
            qualities[name] = str(quality)
    fields: dict[str, float | str] = {k: values[k] for k in POWER_FLOW_POINTS if k in values}
    _flatten({k: v for k, v in state.items() if k not in ("ts", "site", "measurements", "alarms")}, "", fields)
    alarms = state.get("alarms")
    if isinstance(alarms, list | tuple):
        fields["alarms_active"] = float(len(alarms))
    lines = [encode_line("ems_state", tags, fields, ts_ms), encode_line("ems_measurement", tags, values, ts_ms),
             encode_line("ems_quality", tags, qualities, ts_ms)]
    return [line for line in lines if line]


PLAN_STEP_SERIES = ("duration_h", "battery_kw", "charge_kw", "discharge_kw", "grid_kw", "import_kw", "export_kw",
                    "pv_kw", "curtail_kw", "load_kw", "import_price", "export_price")
"""Per-step plan series written at the step's start (``optimizer.plan.SERIES`` minus ``soc_kwh``)."""


def plan_lines(site: str, plan: Mapping[str, Any]) -> list[str]:
    """A ``plan`` message (``Plan.to_dict()``, columnar) as ``ems_plan`` lines.

    Each step's powers and prices are stamped with its start; the SOC is stamped with the instant it
    refers to (``soc0_kwh`` at the first start, each step's ``soc_kwh`` at its end), as ``soc_kwh``
    and ``soc_pct``. A new plan overwrites the previous one where they overlap (same series and
    timestamp), so the stored plan is always the latest one. Plan-level numbers (objective terms,
    solver times) go to one ``ems_plan_info`` line at ``created_at``.
    """
    tags = {"site": site}
    starts = [to_ms(s) for s in plan["starts"]]
    capacity_kwh = _number(plan.get("capacity_kwh")) or 0.0
    periods = plan.get("period") or [None] * len(starts)
    soc_at: dict[int, float] = {}
    if (soc0 := _number(plan.get("soc0_kwh"))) is not None and starts:
        soc_at[starts[0]] = soc0
    lines = []
    for i, start_ms in enumerate(starts):
        fields: dict[str, float | str] = {}
        for name in PLAN_STEP_SERIES:
            if name in plan and (value := _number(plan[name][i])) is not None:
                fields[name] = value
        if periods[i]:
            fields["period"] = str(periods[i])
        if "duration_h" in fields and (soc := _number(plan["soc_kwh"][i])) is not None:
            soc_at[start_ms + round(float(fields["duration_h"]) * 3_600_000)] = soc
        lines.append(encode_line("ems_plan", tags, fields, start_ms))
    for ts_ms, soc_kwh in sorted(soc_at.items()):
        soc_fields = {"soc_kwh": soc_kwh}
        if capacity_kwh > 0:
            soc_fields["soc_pct"] = 100.0 * soc_kwh / capacity_kwh
        lines.append(encode_line("ems_plan", tags, soc_fields, ts_ms))
    info: dict[str, float | str] = {}
    _flatten({k: plan[k] for k in ("objective", "solver", "soc0_kwh", "capacity_kwh") if k in plan}, "", info)
    if "created_at" in plan:
        lines.append(encode_line("ems_plan_info", tags, info, to_ms(plan["created_at"])))
    return [line for line in lines if line]


def alarm_lines(site: str, alarm: Mapping[str, Any]) -> list[str]:
    """An ``alarm`` transition as one ``ems_alarm`` line: tags code and severity, fields active and message."""
    code = str(alarm.get("code") or alarm.get("name") or alarm.get("id") or "unknown")
    active = alarm.get("active")
    if active is None:
        active = str(alarm.get("state", "")).lower() in ("raised", "active", "on")
    fields: dict[str, float | str] = {"active": 1.0 if active else 0.0}
    if alarm.get("message"):
        fields["message"] = str(alarm["message"])
    tags = {"site": site, "code": code, "severity": str(alarm.get("severity") or "")}
    line = encode_line("ems_alarm", tags, fields, to_ms(alarm["ts"]))
    return [line] if line else []


def stats_line(site: str, stats: OutboxStats, pending: int, ts: datetime) -> str:
    """Self-monitoring: outbox depth, points waiting in memory, and lifetime counters (``ems_telemetry``)."""
    line = encode_line("ems_telemetry", {"site": site}, {
        "outbox_depth": float(stats.depth), "pending": float(pending), "dropped_total": float(stats.dropped_total),
        "quarantined_total": float(stats.quarantined_total), "sent_total": float(stats.sent_total)}, to_ms(ts))
    return line or ""


# ----------------------------------------------------------------------------------------------
# synchronous sender


class WriteRejected(Exception):
    """The server refused the points themselves (malformed): they must not be retried."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class WriteFailed(Exception):
    """The write did not go through for a reason unrelated to the points (retry later)."""


class InfluxWriter:
    """POST pre-serialised line protocol to an InfluxDB v2 ``/api/v2/write`` endpoint.

    Parameters
    ----------
    timeout_s : float
        Bound on one HTTP request, connect and read. [s]
    """

    def __init__(self, url: str, org: str, bucket: str, token: str | None, timeout_s: float = 10.0):
        self.bucket = bucket
        self.org = org
        self._client = InfluxDBClient(url=url, token=token or "", org=org, timeout=int(timeout_s * 1000),
                                      retries=False)
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, payload: bytes) -> None:
        """Send one body; raises :class:`WriteRejected` (malformed points) or :class:`WriteFailed`."""
        try:
            self._api.write(self.bucket, self.org, payload, write_precision=WritePrecision.MS)
        except ApiException as exc:
            reason = (exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or ""))
            reason = reason.strip()[:500] or str(exc.reason)
            if exc.status in MALFORMED_STATUSES:
                raise WriteRejected(exc.status, reason) from exc
            raise WriteFailed(f"HTTP {exc.status}: {reason}") from exc
        except Exception as exc:  # urllib3 connection errors, timeouts, OSError: all mean "try again later"
            raise WriteFailed(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._client.close()


@dataclass
class DrainResult:
    """What one :func:`drain` call did."""

    sent: int = 0
    quarantined: int = 0
    error: str | None = None


def drain(outbox: Outbox, writer: InfluxWriter, batch_size: int, now: Callable[[], datetime],
          stop: threading.Event | None = None, max_batches: int = 50) -> DrainResult:
    """Write the oldest points until the outbox is empty, an error occurs, ``stop`` is set or
    ``max_batches`` batches went out. Runs on a worker thread."""
    result = DrainResult()
    for _ in range(max_batches):
        if stop is not None and stop.is_set():
            break
        batch = outbox.oldest(batch_size)
        if not batch:
            break
        try:
            _send(outbox, writer, batch, now, result)
        except WriteFailed as exc:
            result.error = str(exc)
            break
    return result


def _send(outbox: Outbox, writer: InfluxWriter, batch: Batch, now: Callable[[], datetime],
          result: DrainResult) -> None:
    try:
        writer.write(batch.payload())
    except WriteRejected as exc:
        if len(batch) == 1:
            log.warning("InfluxDB rejected a point, quarantined (%s): %s", exc, batch.lines[0][:200])
            outbox.quarantine(batch, str(exc), now())
            result.quarantined += 1
            return
        for half in batch.split():
            _send(outbox, writer, half, now, result)
        return
    outbox.ack(batch)
    result.sent += len(batch)


# ----------------------------------------------------------------------------------------------
# asyncio sink


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
        self._stop = threading.Event()
        self._wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx-sender")
        self._tasks: list[asyncio.Task[None]] = []
        self._alarms: dict[str, bool] = {}

    # -- input ---------------------------------------------------------------------------------

    def offer(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Encode one bus message (``state``, ``plan`` or ``alarm``); a message that cannot be
        encoded is logged and counted, never raised into the bus."""
        encoders = {"state": state_lines, "plan": plan_lines, "alarm": alarm_lines}
        encoder = encoders.get(kind)
        if encoder is None:
            return
        try:
            lines = encoder(self.site, payload)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.rejected_messages += 1
            log.warning("InfluxDB sink: cannot encode a %s message (%s: %s)", kind, type(exc).__name__, exc)
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
        return len(self._pending) + self.outbox.stats().depth

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
        try:
            dropped = await asyncio.to_thread(self.outbox.append, lines)
        except Exception:
            self._add_front(lines)
            raise
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
