"""What the controller must remember across restarts, in one SQLite file under the state directory.

- the month-to-date peak import and today's energy and money counters (``controller.accounting``);
- the last valid plan (JSON) and the operator's mode request and SOC reserve;
- the measured history the forecasters read, and the external forecasts accepted (``controller.forecast_record``).

Each stored value is read back through its model (:func:`read_stored`, a :class:`StoredValue`).

The store is a small key/value table of JSON documents. A file that SQLite cannot read is moved
aside (``<name>.corrupt-<UTC time>``), :attr:`StateStore.alarm` says so, and the controller starts
clean: a broken state file must never keep the controller from starting.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 20
"""Longest a state write waits for another process's lock before it is kept for the next write. [ms]"""
_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated TEXT NOT NULL)"


def state_dir_problem(directory: Path) -> str | None:
    """Why the controller could not keep its state in ``directory`` (created if missing), or ``None``.

    Checked before anything starts, so a deployment error is one clear line, not a traceback later: a path
    that is not a directory, cannot be created, is not writable, or lies on a read-only filesystem.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        return f"state directory {d} is not a directory"
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return f"state directory {d} is on a read-only filesystem"
        return f"state directory {d} is not usable: {exc.strerror or exc}"
    return None


class StateStore:
    """A JSON key/value store in SQLite.

    Parameters
    ----------
    path : Path
        The SQLite file; its directory is created if needed.
    now : datetime
        Site time (UTC), to name a corrupt file moved aside.
    """

    def __init__(self, path: Path, now: datetime):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.alarm: str | None = None
        self.write_error: str | None = None
        """Why the latest write could not be made (locked or read-only file), ``None`` once writes work."""
        self._pending: dict[str, tuple[str | None, str]] = {}  # key → (JSON or None to delete, updated)
        try:
            self._db = self._open()
        except sqlite3.OperationalError:
            raise  # locked, read-only, unreachable: not a corrupt file, never moved aside
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{now:%Y%m%dT%H%M%SZ}")
            self.path.replace(aside)
            self.alarm = f"state file unreadable ({exc}); moved to {aside.name}, starting clean"
            log.error("%s", self.alarm)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=0.0)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute("SELECT key, value FROM kv").fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def get(self, key: str) -> Any | None:
        """The JSON document stored under ``key``, or ``None``; an unparsable value counts as absent."""
        if key in self._pending:
            text = self._pending[key][0]
            return None if text is None else json.loads(text)
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            log.error("state %s is not JSON; ignored", key)
            return None

    def updated(self, key: str) -> datetime | None:
        """When ``key`` was last stored (the site time given to :meth:`put`), or ``None``."""
        if key in self._pending:
            text, stamp = self._pending[key]
        else:
            row = self._db.execute("SELECT value, updated FROM kv WHERE key = ?", (key,)).fetchone()
            text, stamp = (None, "") if row is None else row
        try:
            return datetime.fromisoformat(stamp) if text is not None else None
        except ValueError:
            return None

    def keys(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix`` (writes still pending included), sorted."""
        rows = self._db.execute("SELECT key FROM kv WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)).fetchall()
        found = {row[0] for row in rows}
        for key, (text, _) in self._pending.items():
            if key.startswith(prefix):
                (found.add if text is not None else found.discard)(key)
        return sorted(found)

    def put(self, key: str, value: Any, now: datetime) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``; see :meth:`_write` when the file is busy."""
        self._pending[key] = (json.dumps(value), now.isoformat())
        self._write()

    def delete(self, key: str) -> None:
        self._pending[key] = (None, "")
        self._write()

    def _write(self) -> None:
        """Write what is pending. A file locked by another process (or read-only) never holds the cycle: SQLite
        waits at most ``BUSY_TIMEOUT_MS``, the values stay pending in memory, :attr:`write_error` says why,
        and the next write tries them all again."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for key, (text, updated) in self._pending.items():
                if text is None:
                    self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO kv (key, value, updated) VALUES (?, ?, ?)",
                                     (key, text, updated))
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if self.write_error is None:
                log.error("state file %s not writable now (%s); %d value(s) kept in memory and retried",
                          self.path, exc, len(self._pending))
            self.write_error = str(exc)
            return
        self._pending.clear()
        if self.write_error is not None:
            log.warning("state file %s writable again", self.path)
        self.write_error = None

    def close(self) -> None:
        self._db.close()


class StoredValue(BaseModel):
    """A value as the controller stores it (extra keys tolerated: older or newer versions may add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class StoredMode(StoredValue):
    """The ``mode`` value: the operator's mode request."""

    mode: str = Field(pattern="^(auto|self_consumption|tou_rule|manual|standby)$")
    until: AwareDatetime
    setpoint_kw: float | None = Field(None, allow_inf_nan=False)


class StoredReserve(StoredValue):
    """The ``reserve`` value: the operator's SOC reserve."""

    soc_pct: float = Field(ge=0, le=100, allow_inf_nan=False)
    until: AwareDatetime


def read_stored(store: StateStore, key: str, model: type[StoredValue]) -> tuple[StoredValue | None, str | None]:
    """The value under ``key`` checked against ``model``: ``(value, None)``, ``(None, None)`` when absent, or
    ``(None, why)`` when it is not what the controller stores (the caller resets it and raises an alarm)."""
    data = store.get(key)
    if data is None:
        return None, None
    try:
        return model.model_validate(data), None
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
        return None, f"{key}: {why}"
