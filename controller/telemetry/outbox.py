"""A bounded disk outbox for line-protocol points (SQLite in WAL mode).

Points are appended here first; a sender reads the oldest batch, writes it to the server and
deletes exactly the rows the server acknowledged. Past ``max_points`` the oldest rows are dropped
and counted. A point the server rejects as malformed is moved to the ``quarantine`` table. The
file survives restarts: a reopened outbox continues where the last one stopped.

All methods are synchronous and thread-safe (one connection behind a lock); the async sink calls
them through ``asyncio.to_thread`` so the event loop never waits on the disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Batch:
    """The oldest points of the outbox: row ids and their line-protocol lines, in order."""

    ids: tuple[int, ...]
    lines: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def payload(self) -> bytes:
        """The lines joined for one HTTP write body."""
        return "\n".join(self.lines).encode("utf-8")

    def split(self) -> tuple[Batch, Batch]:
        """Two halves (to isolate a malformed point by bisection)."""
        half = len(self.ids) // 2
        return Batch(self.ids[:half], self.lines[:half]), Batch(self.ids[half:], self.lines[half:])


@dataclass(frozen=True)
class OutboxStats:
    """Depth now and counters since the file was created (they survive restarts)."""

    depth: int
    dropped_total: int
    quarantined_total: int
    sent_total: int


class Outbox:
    """Bounded FIFO of line-protocol points on disk.

    Parameters
    ----------
    path : Path
        SQLite file; created with its directory if missing.
    max_points : int
        Bound on the number of queued points; older points are dropped beyond it.
    """

    def __init__(self, path: str | Path, max_points: int):
        if max_points < 1:
            raise ValueError("max_points must be at least 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_points = max_points
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def append(self, lines: Sequence[str]) -> int:
        """Queue ``lines``; returns how many of the oldest points were dropped to stay within the bound."""
        if not lines:
            return 0
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO outbox (line) VALUES (?)", ((line,) for line in lines))
            self._depth += len(lines)
            excess = self._depth - self.max_points
            if excess <= 0:
                return 0
            self._db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
            self._depth -= excess
            self._bump("dropped_total", excess)
            return excess

    def oldest(self, limit: int) -> Batch:
        """Up to ``limit`` of the oldest points (not removed)."""
        with self._lock:
            rows = self._db.execute("SELECT id, line FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
        return Batch(tuple(r[0] for r in rows), tuple(r[1] for r in rows))

    def ack(self, batch: Batch) -> None:
        """Delete the points of ``batch`` (the server acknowledged them)."""
        if not batch.ids:
            return
        with self._lock, self._transaction():
            deleted = self._delete(batch.ids)
            self._depth -= deleted
            self._bump("sent_total", deleted)

    def quarantine(self, batch: Batch, reason: str, at: datetime) -> None:
        """Move the points of ``batch`` to the quarantine table with the server's ``reason``."""
        if not batch.ids:
            return
        with self._lock, self._transaction():
            deleted = self._delete(batch.ids)
            self._db.executemany("INSERT INTO quarantine (line, reason, at) VALUES (?, ?, ?)",
                                 ((line, reason, at.isoformat()) for line in batch.lines))
            self._depth -= deleted
            self._bump("quarantined_total", len(batch.ids))

    def quarantined(self, limit: int = 100) -> list[tuple[str, str]]:
        """The newest quarantined ``(line, reason)`` pairs, newest first."""
        with self._lock:
            return self._db.execute(
                "SELECT line, reason FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)).fetchall()

    def stats(self) -> OutboxStats:
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            return OutboxStats(depth=self._depth, dropped_total=counters.get("dropped_total", 0),
                               quarantined_total=counters.get("quarantined_total", 0),
                               sent_total=counters.get("sent_total", 0))

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def _delete(self, ids: tuple[int, ...]) -> int:
        """Delete a batch's rows (the caller holds the lock and a transaction); returns how many existed.

        A batch is a run of the oldest rows in id order and ids only grow, so every row that still
        exists between its first and last id belongs to it: one range delete suffices.
        """
        before = self._db.total_changes
        self._db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
        return self._db.total_changes - before

    def _bump(self, name: str, by: int) -> None:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
