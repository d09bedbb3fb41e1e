"""The audit log: every command from any interface, with who sent it and what became of it.

One row per command in the ``audit`` table of the controller's state file (``state.sqlite``): time (UTC,
site clock), interface (``mqtt``, ``rest``, ``dashboard``, ``scada``, ``park``, ``internal``), identity
(token name, MQTT user, client address; ``None`` when the interface cannot tell), command name, payload
(JSON), result (accepted or rejected) and reason. :meth:`AuditLog.record` is called on the event loop by
:meth:`controller.service.Controller.apply` and, for commands refused before they reach it (bad JSON,
schema errors, a full queue), by :class:`controller.telemetry.remote.CommandIntake`.

Writes never hold the cycle: SQLite waits at most :data:`BUSY_TIMEOUT_MS` for another process's lock;
entries that cannot be written stay in memory (at most ``max_pending``), :attr:`AuditLog.write_error` says
why (the controller raises ``audit_log_unwritable``), and the next write retries them, at most once per
:data:`RETRY_S`. Entries beyond ``max_pending`` are dropped oldest first and counted in :attr:`AuditLog.lost`
(alarm ``audit_entries_lost``); once the file takes writes again a ``gap`` row (interface ``internal``)
records how many were lost, so a hole in the log is never silent.

The table is bounded: rows older than ``keep_days`` or beyond the newest ``keep_entries`` are deleted as
new ones are written. Readers (:meth:`AuditLog.entries`) open their own read-only connection, so they may
run on any thread (a REST worker) and see the rows still pending in memory too.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.telemetry.strict_json import printable

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 20
"""Longest an audit write waits for another process's lock before its entries are kept for later. [ms]"""
RETRY_S = 1.0
"""After a failed write, entries are only queued until this much real time has passed. [s]"""
MAX_PAYLOAD_CHARS = 4096
"""Longest payload stored (longer ones are kept as their truncated text). [characters]"""
MAX_TEXT_CHARS = 1000
"""Longest identity, command name or reason stored. [characters]"""
MAX_LIMIT = 1000
"""Most entries one :meth:`AuditLog.entries` call returns."""
INTERFACES = ("mqtt", "rest", "dashboard", "scada", "park", "internal")

_SCHEMA = ("CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, "
           "interface TEXT NOT NULL, identity TEXT, command TEXT NOT NULL, payload TEXT NOT NULL, "
           "accepted INTEGER NOT NULL, reason TEXT NOT NULL)",
           "CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)")
_COLUMNS = ("id", "ts", "interface", "identity", "command", "payload", "accepted", "reason")

Listener = Callable[[dict[str, Any]], None]


class AuditSettings(BaseModel):
    """The ``control.audit:`` section: how much of the command log the state file keeps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_entries: int = Field(default=100_000, ge=100, le=10_000_000, description="Newest entries kept")
    keep_days: float = Field(default=400.0, gt=0, le=3660, description="Entries older than this are deleted [d]")
    max_pending: int = Field(default=10_000, ge=10, le=1_000_000,
                             description="Entries kept in memory while the state file takes no writes")


class AuditLog:
    """The command log in the state file.

    Parameters
    ----------
    path : Path
        The SQLite state file (shared with :class:`controller.state_store.StateStore`, which opens it
        first and moves a corrupt file aside).
    settings : AuditSettings
    monotonic : Callable[[], float]
        Real-time clock for the retry pause. [s]
    """

    def __init__(self, path: Path, settings: AuditSettings | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.settings = settings or AuditSettings()
        self.monotonic = monotonic
        self.write_error: str | None = None
        """Why the latest write failed (locked or read-only file), ``None`` once writes work."""
        self.lost = 0
        """Entries dropped since the last ``gap`` row because more than ``max_pending`` waited."""
        self.listeners: list[Listener] = []
        """Called with each new entry (a dict as :meth:`entries` returns, ``id`` ``None``); must not raise."""
        self._pending: deque[dict[str, Any]] = deque()
        self._retry_at = 0.0
        self._lock = threading.Lock()  # readers on other threads copy the pending entries under it
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0.0)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: survives a process crash, fsync at checkpoints
        for statement in _SCHEMA:
            self._db.execute(statement)

    # ------------------------------------------------------------------------------------ writing

    def record(self, *, ts: datetime, interface: str, identity: str | None, command: str, payload: Any,
               accepted: bool, reason: str) -> None:
        """Log one command and its result; never raises for any payload, never waits longer than
        :data:`BUSY_TIMEOUT_MS`.

        Parameters
        ----------
        ts : datetime
            When the command was handled (aware; stored in UTC, ISO 8601).
        payload : Any
            The command as received: a mapping, a pydantic model, JSON bytes/text, or anything else
            (stored as its text).
        """
        entry = {"id": None, "ts": _utc(ts), "interface": _text(interface) or "internal",
                 "identity": _text(identity) if identity is not None else None, "command": _text(command),
                 "payload": payload_value(payload), "accepted": bool(accepted), "reason": _text(reason)}
        with self._lock:
            self._pending.append(entry)
        for listener in list(self.listeners):
            try:
                listener(dict(entry))
            except Exception:  # a display's bug must not cost the log
                log.exception("audit listener failed")
        if self.write_error is None or self.monotonic() >= self._retry_at:
            self.flush()
        with self._lock:
            while len(self._pending) > self.settings.max_pending:
                self._pending.popleft()
                self.lost += 1

    def flush(self, now: datetime | None = None) -> bool:
        """Write every pending entry (and a ``gap`` row first if entries were lost), then rotate; True when
        nothing is pending any more. ``now`` dates the gap row and the rotation cut-off; default: the newest
        pending entry's time."""
        with self._lock:
            batch = list(self._pending)
            lost = self.lost
        if not batch and not lost:
            return True
        if now is None and not batch:
            return False
        now_text = _utc(now) if now is not None else batch[-1]["ts"]
        rows = []
        if lost:
            rows.append((now_text, "internal", None, "gap", json.dumps({"lost": lost}), 0,
                         f"{lost} audit entries lost while the state file took no writes "
                         f"(more than {self.settings.max_pending} waiting)"))
        rows += [(e["ts"], e["interface"], e["identity"], e["command"], _dumps(e["payload"]), int(e["accepted"]),
                  e["reason"]) for e in batch]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO audit (ts, interface, identity, command, payload, accepted, reason) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._rotate(now_text)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if self.write_error is None:
                log.error("audit log in %s not writable now (%s); %d entries kept in memory and retried",
                          self.path, exc, len(batch))
            self.write_error = str(exc)
            self._retry_at = self.monotonic() + RETRY_S
            return False
        with self._lock:
            for _ in batch:
                self._pending.popleft()
            self.lost -= lost
        if self.write_error is not None:
            log.warning("audit log in %s writable again", self.path)
        self.write_error = None
        return not self._pending

    def _rotate(self, now: str) -> None:
        s = self.settings
        cutoff = _utc(datetime.fromisoformat(now) - timedelta(days=s.keep_days))
        self._db.execute("DELETE FROM audit WHERE ts < ?", (cutoff,))
        self._db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (s.keep_entries,))

    @property
    def pending(self) -> int:
        """Entries not yet in the file."""
        return len(self._pending)

    def close(self) -> None:
        """Write what is pending (one attempt) and close the file; entries that still cannot be written go to
        the service log instead (one error line each), so not even a shutdown on a locked file loses one."""
        if not self.flush():
            for entry in self._pending:
                log.error("audit entry not written (state file %s: %s): %s", self.path, self.write_error,
                          _dumps(entry))
            if self.lost:
                log.error("audit: %d more entries were dropped before shutdown", self.lost)
        self._db.close()

    # ------------------------------------------------------------------------------------ reading

    def entries(self, since: datetime | None = None, until: datetime | None = None, limit: int = 100,
                offset: int = 0, interface: str | None = None) -> list[dict[str, Any]]:
        """Entries newest first, from the file and those still pending in memory; safe on any thread.

        Parameters
        ----------
        since, until : datetime, optional
            Only entries with ``since <= ts < until`` (aware datetimes).
        limit : int
            At most this many (1 … :data:`MAX_LIMIT`).
        offset : int
            Skip this many of the newest matching entries first (pagination).
        interface : str, optional
            Only entries from this interface.

        Returns
        -------
        list[dict]
            ``{id, ts, interface, identity, command, payload, accepted, reason}``; ``id`` is ``None``
            for an entry still pending, ``payload`` the JSON value (a string if it was not JSON).
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit: {limit} is not in 1…{MAX_LIMIT}")
        if offset < 0:
            raise ValueError(f"offset: {offset} is negative")
        lo = _utc(since) if since is not None else None
        hi = _utc(until) if until is not None else None

        def matches(e: Mapping[str, Any]) -> bool:
            return ((lo is None or e["ts"] >= lo) and (hi is None or e["ts"] < hi)
                    and (interface is None or e["interface"] == interface))

        with self._lock:
            pending = [dict(e) for e in reversed(self._pending) if matches(e)]
        found = pending[offset:offset + limit]
        need, skip = limit - len(found), max(0, offset - len(pending))
        if need > 0:
            found += self._read(lo, hi, interface, need, skip)
        return found

    def _read(self, lo: str | None, hi: str | None, interface: str | None, limit: int,
              offset: int) -> list[dict[str, Any]]:
        where, args = [], []
        for clause, value in (("ts >= ?", lo), ("ts < ?", hi), ("interface = ?", interface)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = (f"SELECT {', '.join(_COLUMNS)} FROM audit {'WHERE ' + ' AND '.join(where) if where else ''} "
               "ORDER BY id DESC LIMIT ? OFFSET ?")
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            rows = db.execute(sql, (*args, limit, offset)).fetchall()
        finally:
            db.close()
        return [{**dict(zip(_COLUMNS, row, strict=True)), "payload": _loads(row[5]), "accepted": bool(row[6])}
                for row in rows]


def payload_value(payload: Any) -> Any:
    """A command payload as a JSON value for the log: mappings and models as objects, JSON text or bytes
    decoded, anything else (or anything too long) as its text."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json", exclude_defaults=False)
    if isinstance(payload, bytes | bytearray | memoryview):
        payload = bytes(payload).decode("utf-8", errors="backslashreplace")
    if isinstance(payload, str):
        if len(payload) > MAX_PAYLOAD_CHARS:
            return payload[:MAX_PAYLOAD_CHARS] + "…"
        try:
            value = json.loads(payload) if payload.strip() else {}
        except ValueError:
            return payload
        payload = value
    try:
        text = json.dumps(payload, allow_nan=False, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = None
    if text is None or len(text) > MAX_PAYLOAD_CHARS:
        shown = repr(payload) if text is None else text
        return printable(shown[:MAX_PAYLOAD_CHARS]) + ("…" if len(shown) > MAX_PAYLOAD_CHARS else "")
    return _clean(json.loads(text))


def _clean(value: Any) -> Any:
    """``value`` with every string (and key) :func:`_printable`, so that it encodes as UTF-8 JSON."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _utc(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError(f"audit time {ts.isoformat()} has no UTC offset")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds")


def _text(value: Any) -> str:
    return printable(str(value))[:MAX_TEXT_CHARS]


