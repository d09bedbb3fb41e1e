"""The park summary's settings file (``ems park-summary --config PARK-SUMMARY.yaml``)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ems.yamlfile import load_model


class TsdbSettings(BaseModel):
    """The central time-series database, read through its Prometheus query API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://", description="Base URL of the Prometheus query API: VictoriaMetrics "
                     "single node http://host:8428, cluster http://vmselect:8481/select/<accountID>/prometheus")
    token_env: str | None = Field(default=None, description="Environment variable holding a bearer token")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Per-query timeout [s]")


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    allowed_hosts: tuple[str, ...] = Field(default=(), description="Host names the page may be reached by, besides "
                                           "localhost and the bind address")


class SummarySettings(BaseModel):
    """One park's summary page.

    Attributes
    ----------
    park : str
        The park's name (page title).
    timezone : str
        IANA zone the page shows times in (the park's local time).
    currency : str
        ISO 4217 code of the sites' savings (one currency per park: the total is a plain sum).
    language : str
        The page's default language (vi, en, ja; auto: the browser's); each reader can switch.
    grid_factor_t_per_mwh : float
        Grid emission factor for the CO2 avoided by PV used on site. [t CO2/MWh = kg CO2/kWh]
    sites : tuple[str, ...]
        The park's site ids. Empty: every site in the database. A listed site that does not report is shown
        as not reporting; a site not listed is not shown (the database may hold other parks).
    alarm_lookback_days : int
        How far back the last transition of each alarm code is looked for. [d]
    refresh_s : float
        How often the page reloads the summary. [s]
    demand_window_minutes : int
        The demand window of the sites' coincident month peak (:mod:`park.coincident`); it divides 60. [min]
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    park: str = Field(min_length=1)
    timezone: str = "Asia/Ho_Chi_Minh"
    currency: str = Field(default="VND", pattern=r"^[A-Z]{3}$")
    language: str = Field(default="auto", pattern=r"^(auto|vi|en|ja)$")
    tsdb: TsdbSettings
    grid_factor_t_per_mwh: float = Field(default=0.681, ge=0, le=2)
    sites: tuple[str, ...] = ()
    alarm_lookback_days: int = Field(default=31, ge=1, le=366)
    refresh_s: float = Field(default=15.0, ge=1, le=3600)
    demand_window_minutes: int = Field(default=30, ge=1, le=60)
    serve: ServeSettings = ServeSettings()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Asia/Ho_Chi_Minh)") from None
        return value

    @field_validator("demand_window_minutes")
    @classmethod
    def _divides_the_hour(cls, value: int) -> int:
        if 60 % value:
            raise ValueError(f"{value} min does not divide the hour (e.g. 15, 30, 60)")
        return value

    @model_validator(mode="after")
    def _windows_on_the_local_clock(self) -> SummarySettings:
        """The coincident peak's windows are aligned to UTC (:mod:`park.coincident`): they fall on the park's clock
        (e.g. :00 and :30) only if the zone's offset is a whole number of windows, in winter and in summer."""
        zone = ZoneInfo(self.timezone)
        for month in (1, 7):
            offset = datetime(2026, month, 15, tzinfo=zone).utcoffset()
            minutes = 0 if offset is None else int(offset.total_seconds() // 60)
            if minutes % self.demand_window_minutes:
                raise ValueError(f"demand_window_minutes: {self.demand_window_minutes}-minute windows do not fall on "
                                 f"the clock of {self.timezone} (UTC offset {minutes} min); choose a window that "
                                 f"divides the offset (e.g. 15)")
        return self

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for site in value:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", site):
                raise ValueError(f"site id {site!r}: letters, digits, '_', '.' and '-' only (as in a site file)")
            if site in seen:
                raise ValueError(f"site id {site!r} appears twice; each site needs its own id")
            seen.add(site)
        return value


def load_summary_settings(path: Path) -> SummarySettings:
    """The settings file; every error names the file and the field (``ConfigError``)."""
    return load_model(SummarySettings, path)
