"""Synchronous InfluxDB sender: outbox batches → InfluxDB v2 write API, deleted only once accepted.

``drain`` reads the oldest batch from the :class:`~controller.telemetry.outbox.Outbox`, POSTs it with
influxdb-client's SYNCHRONOUS write API (pre-serialised lines, millisecond precision) through
:class:`InfluxWriter` and deletes it only once the server answered 2xx. A batch refused as malformed
(400/413/422) is bisected until the offending points are isolated and quarantined; everything else
(connection errors, timeouts, 401/403/404, 429, 5xx) leaves the outbox untouched for a later retry.
Runs on a worker thread (:class:`controller.telemetry.influx.InfluxSink`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from controller.telemetry.outbox import Batch, Outbox

log = logging.getLogger(__name__)

MALFORMED_STATUSES = frozenset({400, 413, 422})
"""HTTP answers that mean "these points will never be accepted": bisect, then quarantine."""



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
