"""Seed the controller's measured history from the factory's meter export: ``ems history import``.

A controller started on a new site knows nothing of the factory's day: its first plans forecast the hours it has
not seen at the load it last measured (at 06:00 on the simulated site the night's 300 kW for the whole day, against
800 kW from 07:00), and under a demand charge the month's level is then set low and raised step by step as the day
comes. The forecasters need the weeks of measured steps
they normally collect themselves (``control.history_days``). This reads the meter export the analyst's studies read
(:func:`ems.series_csv.read_series_csv`: ``;`` and decimal commas, day-first dates, interval ends, a load derived
from the grid meter and the PV), keeps the planning steps of the ``history_days`` before now, and writes them into
the state file as the controller's own history (``MeasuredHistory``, key ``history``), where the controller
restores it at its next start. Steps the controller measured itself are kept: an import only fills the others.

The service must be stopped: it keeps its history in memory and would write over the import. A state file saved
less than :data:`RUNNING_WITHIN_S` ago is taken for a running controller, and the import is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from controller.config import SiteConfig
from controller.planning import MeasuredHistory, StoredHistory
from controller.state_store import StateStore, read_stored
from ems.series_csv import read_series_csv, series_columns, site_ratings
from optimizer.timegrid import floor_to_step

RUNNING_WITHIN_S = 180.0
"""A state file saved this recently belongs to a running controller. [s]"""


class ImportRefused(Exception):
    """Nothing was written; the message says why."""


@dataclass(frozen=True)
class Imported:
    """What :func:`import_history` wrote.

    Attributes
    ----------
    steps : int
        Steps taken from the file (at least one of PV and load measured).
    kept : int
        Steps the controller had measured itself, kept as they were.
    first, last : pandas.Timestamp or None
        The first and last step written from the file (UTC starts).
    pv : bool
        Whether the file had a PV column (without one the forecasters learn the PV from the controller's own days).
    """

    steps: int
    kept: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    pv: bool


def saved_ago_s(store: StateStore, now: datetime) -> float | None:
    """Seconds since the state file was last saved (any key), or None for an empty file. [s]"""
    stamps = [t for key in store.keys("") if (t := store.updated(key)) is not None]
    return None if not stamps else (now - max(stamps)).total_seconds()


def import_history(path: str | Path, config: SiteConfig, state_file: Path, now: datetime,
                   timestamps_at: Literal["start", "end"] = "start") -> Imported:
    """Read the meter export at ``path`` and write its steps of the ``control.history_days`` before ``now`` (UTC)
    into the state file ``state_file`` as measured history (:class:`controller.planning.StoredHistory`). The file is
    read before the state file is opened: a bad file touches nothing.

    Raises
    ------
    ImportRefused
        The controller looks running, or the file holds no step of that period (nothing written).
    ems.series_csv.DataError
        The file's own problems, by row and column (nothing written).
    """
    rows, has_pv = _read(path, config, now, timestamps_at)
    store = StateStore(state_file, now)
    try:
        saved = saved_ago_s(store, now)
        if saved is not None and 0 <= saved < RUNNING_WITHIN_S:
            raise ImportRefused(f"the controller looks running: its state file {state_file} was saved {saved:.0f} s "
                                "ago; stop it first (sudo systemctl stop pv-battery-ems), import, then start it: a "
                                "running controller keeps its history in memory and would write over the import")
        step = config.planner.step_minutes
        stored, _ = read_stored(store, MeasuredHistory.KEY, StoredHistory)
        own = {} if stored is None or stored.step_minutes != step else {r[0]: list(r) for r in stored.rows}
        merged = {**rows, **own}
        store.put(MeasuredHistory.KEY, StoredHistory(step_minutes=step, rows=[merged[s] for s in sorted(merged)])
                  .model_dump(mode="json"), now)
    finally:
        store.close()
    written = sorted(set(rows) - set(own))
    return Imported(len(written), sum(1 for start in own if start in rows),
                    pd.Timestamp(written[0], unit="s", tz="UTC") if written else None,
                    pd.Timestamp(written[-1], unit="s", tz="UTC") if written else None, has_pv)


def _read(path: str | Path, config: SiteConfig, now: datetime,
          timestamps_at: Literal["start", "end"]) -> tuple[dict[int, list], bool]:
    """The file's planning steps of the ``history_days`` before ``now`` with a reading, as the state file keeps them
    (``{UTC epoch s: [start s, PV kW or None, load kW or None]}``), and whether it has PV."""
    step = config.planner.step_minutes
    has_pv = bool(series_columns(path, "pv"))
    columns = ("pv", "load") if has_pv else ("load",)
    frame = read_series_csv(path, config.site.timezone, step, columns, allow_gaps=True, timestamps_at=timestamps_at,
                            rated_kw=site_ratings(columns, config.pv.ac_limit_kw, config.grid.import_cap_kw,
                                                  config.pv.ac_limit_kw))
    current = pd.Timestamp(floor_to_step(now, step))
    period = frame[(frame.index >= current - timedelta(days=config.control.history_days)) & (frame.index < current)]
    load = period["load_kw"].to_numpy(dtype=float)
    pv = period["pv_kw"].to_numpy(dtype=float) if has_pv else np.full(len(period), np.nan)
    measured = ~(np.isnan(load) & np.isnan(pv))
    if not measured.any():
        zone = config.site.timezone
        covers = (f"it covers {frame.index[0].tz_convert(zone):%Y-%m-%d %H:%M} – "
                  f"{frame.index[-1].tz_convert(zone):%Y-%m-%d %H:%M}" if len(frame) else "it is empty")
        raise ImportRefused(f"{path}: no reading in the {config.control.history_days:g} days before "
                            f"{current.tz_convert(zone):%Y-%m-%d %H:%M} (control.history_days), the days the "
                            f"forecasts read; {covers}")

    def kw(v: float) -> float | None:
        return None if np.isnan(v) else round(float(v), 3)

    return ({int(ts.value // 10**9): [int(ts.value // 10**9), kw(p), kw(q)]
             for ts, p, q, m in zip(period.index, pv, load, measured, strict=True) if m}, has_pv)
