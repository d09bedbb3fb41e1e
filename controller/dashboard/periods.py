"""The tariff's named periods over one site-local day, for shading the dashboard's charts."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from optimizer.tariff import SiteTariff


def day_periods(tariff: SiteTariff, day: date) -> dict[str, Any]:
    """The named periods in force over the site-local ``day``, merged into intervals.

    Returns ``{"day": ISO date, "names": the tariff's period names in its own order,
    "intervals": [[start_ms, end_ms, period], ...]}`` with times in ms since the epoch (UTC),
    covering the whole local day (23 or 25 hours on a DST change) without gaps.
    """
    zone = ZoneInfo(tariff.timezone)
    start = datetime.combine(day, time(0), zone)
    end = datetime.combine(day + timedelta(days=1), time(0), zone)
    minutes = pd.date_range(pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC"),
                            freq="1min", inclusive="left")
    names = tariff.prices(minutes).period
    intervals: list[list[Any]] = []
    for ts, name in zip(minutes, names, strict=True):
        ms = int(ts.timestamp() * 1000)
        if intervals and intervals[-1][2] == str(name):
            intervals[-1][1] = ms + 60_000
        else:
            intervals.append([ms, ms + 60_000, str(name)])
    return {"day": day.isoformat(), "names": list(tariff.tariff.periods), "intervals": intervals}
