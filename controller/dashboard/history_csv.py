"""The dashboard's stored history of a day, week or month as CSV, for a spreadsheet or an energy analyst.

One row per history step (1 min for a day, 15 min for a week, 1 h for a month): its start in site-local time (ISO
8601 with the offset) and in UTC, the tariff's named period(s) over the step, then the averages the chart draws
(kW, SOC %; grid + import, battery + discharge: docs/conventions.md) and the plan step in force. A value not
measured in a step is an empty cell, never 0.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from optimizer.tariff import SiteTariff


def step_periods(tariff: SiteTariff, start_ms: int, end_ms: int, step_ms: int) -> list[str]:
    """For each step ``[start_ms + i·step_ms, +step_ms)`` of the range, the tariff's period names over it in the
    order they come, joined by ``+`` (a one-hour step across a half-hour edge: ``normal+peak``)."""
    minutes = pd.date_range(pd.Timestamp(start_ms, unit="ms", tz="UTC"), pd.Timestamp(end_ms, unit="ms", tz="UTC"),
                            freq="1min", inclusive="left")
    names = [str(n) for n in tariff.prices(minutes).period]
    per_step = max(1, step_ms // 60_000)
    out = []
    for i in range(0, len(names), per_step):
        seen = dict.fromkeys(names[i:i + per_step])
        out.append("+".join(seen))
    return out


def history_csv(stored: Mapping[str, Any], tz: ZoneInfo, tariff: SiteTariff | None) -> str:
    """``stored`` (:meth:`DashboardHub.stored`: ``start_ms``, ``end_ms``, ``step_ms``, ``columns``, ``rows``) as CSV
    text with a header; ``tariff_period`` is empty without a tariff."""
    columns: Sequence[str] = stored["columns"][1:]
    start_ms, step_ms = int(stored["start_ms"]), int(stored["step_ms"])
    periods = step_periods(tariff, start_ms, int(stored["end_ms"]), step_ms) if tariff is not None else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["start_local", "start_utc", "tariff_period", *columns])
    for row in stored["rows"]:
        ts_ms = int(row[0])
        when = datetime.fromtimestamp(ts_ms / 1000, UTC)
        index = (ts_ms - start_ms) // step_ms
        period = periods[index] if 0 <= index < len(periods) else ""
        values = ["" if v is None else f"{v:.3f}" for v in row[1:]]
        writer.writerow([when.astimezone(tz).isoformat(), when.isoformat().replace("+00:00", "Z"), period, *values])
    return buffer.getvalue()
