"""What the controller must remember across restarts, in one SQLite file under the state directory.

- the month-to-date peak import (30-minute average, the demand-charge basis) — :class:`DemandTracker`;
- today's energy counters and money saved against no battery — :class:`EnergyCounters`;
- the last valid plan (JSON) and the operator's mode request.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

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


class _Stored(BaseModel):
    """A value as the controller stores it (extra keys tolerated: older or newer versions may add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class StoredDemand(_Stored):
    """The ``demand`` value: :meth:`DemandTracker.to_dict`."""

    month: str | None = None
    peak_kw: float = Field(0.0, ge=0, allow_inf_nan=False)
    peak_at: AwareDatetime | None = None
    interval_start: AwareDatetime | None = None
    interval_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)


class StoredEnergy(_Stored):
    """The ``energy`` value: :meth:`EnergyCounters.to_dict` (kWh ≥ 0, money any finite number)."""

    day: str = ""
    import_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    export_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    pv_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    load_kwh: float = Field(0.0, allow_inf_nan=False)
    charge_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    discharge_kwh: float = Field(0.0, ge=0, allow_inf_nan=False)
    cost: float = Field(0.0, allow_inf_nan=False)
    cost_no_battery: float = Field(0.0, allow_inf_nan=False)


class StoredMode(_Stored):
    """The ``mode`` value: the operator's mode request."""

    mode: str = Field(pattern="^(auto|self_consumption|tou_rule|manual|standby)$")
    until: AwareDatetime
    setpoint_kw: float | None = Field(None, allow_inf_nan=False)


class StoredReserve(_Stored):
    """The ``reserve`` value: the operator's SOC reserve."""

    soc_pct: float = Field(ge=0, le=100, allow_inf_nan=False)
    until: AwareDatetime


def read_stored(store: StateStore, key: str, model: type[_Stored]) -> tuple[_Stored | None, str | None]:
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


class DemandTracker:
    """Month-to-date peak of the average import over fixed demand intervals.

    Parameters
    ----------
    billing_month : Callable[[datetime], str]
        The billing month (e.g. ``"2026-05"``) of an instant, in the tariff's local time.
    timezone : str
        IANA zone; intervals are aligned to the local clock (:00, :30 for 30 min).
    interval_minutes : int
        Demand interval. [min]
    """

    KEY = "demand"

    def __init__(self, billing_month: Callable[[datetime], str], timezone: str, interval_minutes: int = 30):
        self.billing_month = billing_month
        self.zone = ZoneInfo(timezone)
        self.interval = timedelta(minutes=interval_minutes)
        self.month: str | None = None
        self.peak_kw = 0.0
        self.peak_at: str | None = None
        self._start: datetime | None = None
        self._kwh = 0.0

    def _interval_start(self, t: datetime) -> datetime:
        local = t.astimezone(self.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight + ((local - midnight) // self.interval) * self.interval).astimezone(UTC)

    def add(self, t: datetime, import_kw: float, dt_h: float) -> bool:
        """Add ``import_kw`` over ``dt_h`` ending at ``t``; True when the month peak rose (an interval closed).

        Parameters
        ----------
        import_kw : float
            Grid import (export counts as 0). [kW]
        dt_h : float
            Duration. [h]
        """
        start = self._interval_start(t - timedelta(microseconds=1))
        rose = False
        if self._start is not None and start != self._start:
            rose = self._close()
        if self._start != start:
            self._start, self._kwh = start, 0.0
        self._kwh += max(0.0, import_kw) * dt_h
        return rose

    def _close(self) -> bool:
        assert self._start is not None
        month = self.billing_month(self._start)
        if month != self.month:
            self.month, self.peak_kw, self.peak_at = month, 0.0, None
        avg_kw = self._kwh / (self.interval.total_seconds() / 3600.0)
        if avg_kw > self.peak_kw:
            self.peak_kw, self.peak_at = avg_kw, self._start.isoformat()
            return True
        return False

    def month_peak_kw(self, now: datetime) -> float:
        """The peak so far in the billing month of ``now`` (0 in a new month). [kW]"""
        return self.peak_kw if self.month == self.billing_month(now) else 0.0

    def running(self, now: datetime) -> tuple[float, float, float]:
        """The interval running at ``now``: (length [h], elapsed [h], import so far [kWh]), as
        :class:`controller.targets.DemandWindow` takes them; nothing imported yet when the last measurement
        belongs to an earlier interval."""
        start = self._interval_start(now)
        kwh = self._kwh if self._start == start else 0.0
        return self.interval.total_seconds() / 3600.0, (now - start).total_seconds() / 3600.0, kwh

    def current_average_kw(self) -> float:
        """Average import in the running interval so far, over the whole interval length. [kW]"""
        return self._kwh / (self.interval.total_seconds() / 3600.0)

    def to_dict(self) -> dict:
        return {"month": self.month, "peak_kw": self.peak_kw, "peak_at": self.peak_at,
                "interval_start": self._start.isoformat() if self._start else None, "interval_kwh": self._kwh}

    def restore(self, data: StoredDemand | None) -> None:
        """Resume from a checked :meth:`to_dict` output (the running interval too, if it is still running)."""
        if data is None:
            return
        self.month, self.peak_kw = data.month, data.peak_kw
        self.peak_at = data.peak_at.isoformat() if data.peak_at else None
        if data.interval_start is not None:
            self._start = data.interval_start.astimezone(UTC)
            self._kwh = data.interval_kwh


@dataclass
class EnergyCounters:
    """Energies [kWh] and money [currency] of one local day, and the same day without the battery.

    ``cost`` is what the measured import and export cost at the tariff's energy prices; ``cost_no_battery``
    is what the same load and PV would have cost with no battery (grid = load − PV, export beyond the cap
    curtailed). ``saved = cost_no_battery − cost`` (energy charges only; demand charges are in the bill).
    """

    day: str = ""
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    pv_kwh: float = 0.0
    load_kwh: float = 0.0
    charge_kwh: float = 0.0
    discharge_kwh: float = 0.0
    cost: float = 0.0
    cost_no_battery: float = 0.0

    KEY = "energy"

    def add(self, day: str, grid_kw: float, pv_kw: float, battery_kw: float, dt_h: float,
            import_price: float, export_price: float, export_cap_kw: float) -> None:
        """Integrate one cycle's measured powers [kW] over ``dt_h`` [h] at the given prices [currency/kWh]."""
        if day != self.day:
            for f in fields(self):
                setattr(self, f.name, f.default)
            self.day = day
        load_kw = grid_kw + pv_kw + battery_kw
        self.import_kwh += max(0.0, grid_kw) * dt_h
        self.export_kwh += max(0.0, -grid_kw) * dt_h
        self.pv_kwh += pv_kw * dt_h
        self.load_kwh += load_kw * dt_h
        self.discharge_kwh += max(0.0, battery_kw) * dt_h
        self.charge_kwh += max(0.0, -battery_kw) * dt_h
        self.cost += (max(0.0, grid_kw) * import_price - max(0.0, -grid_kw) * export_price) * dt_h
        grid_nb = max(load_kw - pv_kw, -export_cap_kw)
        self.cost_no_battery += (max(0.0, grid_nb) * import_price - max(0.0, -grid_nb) * export_price) * dt_h

    @property
    def saved(self) -> float:
        return self.cost_no_battery - self.cost

    def to_dict(self) -> dict:
        d = asdict(self)
        d["saved"] = self.saved
        return d

    @classmethod
    def from_stored(cls, data: StoredEnergy | None) -> EnergyCounters:
        """Counters from a checked :meth:`to_dict` output (zero when there is none)."""
        if data is None:
            return cls()
        return cls(**data.model_dump(include={f.name for f in fields(cls)}))
