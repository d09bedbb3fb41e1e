"""Measurements as they come off devices: a value, its unit, when it was read, and how far to trust it.

A failed, not-implemented (sentinel), implausible or stale read is not a number: ``value`` is
``None`` and ``quality`` says why. Nothing downstream may read a missing value as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class Quality(StrEnum):
    OK = "ok"
    STALE = "stale"              # last good value is older than the configured maximum age
    MISSING = "missing"          # read failed, device offline, or not-implemented sentinel
    IMPLAUSIBLE = "implausible"  # decoded but outside the profile's plausible range


@dataclass(frozen=True)
class Reading:
    """One measured point.

    Attributes
    ----------
    value : float | str | None
        The value in ``unit``; ``None`` unless ``quality`` is OK.
    unit : str
        Unit after scaling (kW, kWh, %, V, A, Hz, degC, ...).
    timestamp : datetime
        When the value was read (UTC, aware). For missing readings: when the attempt was made.
    quality : Quality
    detail : str
        Why the quality is not OK (empty when OK), e.g. "timeout", "sentinel 0x8000".
    meaning : str
        What the value says by the profile's names of its states or bits, e.g. "MPPT" or "OVER_TEMP_ALARM"
        (empty for other points and when not OK).
    """

    value: float | str | None
    unit: str
    timestamp: datetime
    quality: Quality = Quality.OK
    detail: str = ""
    meaning: str = ""

    def __post_init__(self) -> None:
        if self.quality is not Quality.OK and self.value is not None:
            raise ValueError("a reading that is not OK carries no value")
        if self.quality is Quality.OK and self.value is None:
            raise ValueError("an OK reading needs a value")
        if self.meaning and self.value is None:
            raise ValueError("a reading without a value has no meaning")

    @property
    def ok(self) -> bool:
        return self.quality is Quality.OK

    def aged(self, now: datetime, max_age_s: float) -> Reading:
        """This reading, marked STALE (value dropped) if older than ``max_age_s`` at ``now``."""
        if self.quality is Quality.OK and (now - self.timestamp).total_seconds() > max_age_s:
            return replace(self, value=None, quality=Quality.STALE, detail=f"older than {max_age_s:g} s", meaning="")
        return self


def missing(unit: str, timestamp: datetime, detail: str) -> Reading:
    """A missing reading with the reason."""
    return Reading(value=None, unit=unit, timestamp=timestamp, quality=Quality.MISSING, detail=detail)
