"""The dashboard's local history: one row per history bucket in a small SQLite file in the state
directory, kept for ``retention_days`` and read back averaged for day / week / month views.

Separate from the controller's state database on purpose: losing or deleting this file loses only the
charts of earlier days, never controller state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

FILE_NAME = "dashboard-history.sqlite"


class HistoryStore:
    """Bounded history of the dashboard's buckets.

    Parameters
    ----------
    path : Path
        SQLite file (created with its table if absent).
    columns : sequence of str
        Value columns after ``ts_ms`` (the hub's ``HISTORY_POINTS``). [kW or %]
    retention_days : float
        Rows older than this before the newest row are deleted. [days]
    """

    def __init__(self, path: Path, columns: Sequence[str], retention_days: float = 92.0):
        self.path = path
        self.columns = tuple(columns)
        self.retention_ms = int(retention_days * 86_400_000)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        cols = ", ".join(f"{c} REAL" for c in self.columns)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS dashboard_history (ts_ms INTEGER PRIMARY KEY, {cols})")
        known = {row[1] for row in self._db.execute("PRAGMA table_info(dashboard_history)")}
        for c in self.columns:
            if c not in known:         # a newer version added a column: keep the older rows
                self._db.execute(f"ALTER TABLE dashboard_history ADD COLUMN {c} REAL")

    def add(self, row: Sequence[float | None]) -> None:
        """Store one bucket ``[ts_ms, *values]`` (replacing a row with the same start) and drop expired rows."""
        marks = ", ".join("?" * (1 + len(self.columns)))
        self._db.execute(f"INSERT OR REPLACE INTO dashboard_history (ts_ms, {', '.join(self.columns)}) "
                         f"VALUES ({marks})", list(row))
        self._db.execute("DELETE FROM dashboard_history WHERE ts_ms < ?", (int(row[0]) - self.retention_ms,))

    def rows(self, start_ms: int, end_ms: int, step_ms: int, limit: int = -1) -> list[list[float | None]]:
        """Rows in ``[start_ms, end_ms)`` averaged over ``step_ms`` (the row time is the step's start); the
        first ``limit`` of them (all when negative)."""
        means = ", ".join(f"AVG({c})" for c in self.columns)
        cursor = self._db.execute(
            f"SELECT (ts_ms / ?) * ? AS step, {means} FROM dashboard_history WHERE ts_ms >= ? AND ts_ms < ? "
            "GROUP BY step ORDER BY step LIMIT ?", (step_ms, step_ms, start_ms, end_ms, limit))
        return [list(r) for r in cursor]

    def close(self) -> None:
        self._db.close()
