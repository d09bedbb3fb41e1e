"""A forecast CSV file named in the site file (``control.external_forecast_csv``), read again when it changes.

The file has the CSV form of docs/data.md, "External forecasts" (header ``timestamp`` plus ``pv_kw`` and/or
``load_kw``). The controller reads it before its first plan and again before each re-plan when its modification
time or size changed. The forecast counts as issued when the file was last written (its modification time, or the
site clock's now if that is earlier: a simulated clock), so an old file expires ``valid_hours`` after it was
written, also across a restart. A file that cannot be read or is refused gives one log line and the alarm
:data:`ALARM` naming the line or field; the forecast in use stays until it expires, and the next good version of
the file clears the alarm. Nothing here raises.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field

from optimizer.external_forecast import DEFAULT_VALID_HOURS, MAX_VALID_HOURS, ExternalForecasts, SubmitResult
from optimizer.site import StrictModel

log = logging.getLogger(__name__)

ALARM = "forecast_csv_invalid"
MAX_FILE_BYTES = 1_000_000
"""Largest forecast file read (a week of 5-minute PV and load is about 100 kB). [bytes]"""
_UNREADABLE = (-1, -1)


class ForecastCsvSettings(StrictModel):
    """``control.external_forecast_csv``: a forecast file the controller reads when it changes."""

    path: Path = Field(description="The CSV file; a relative path is relative to the site file")
    source: str = Field(default="csv", min_length=1, max_length=64, description="Name the forecast is used under")
    valid_hours: float = Field(default=DEFAULT_VALID_HOURS, gt=0, le=MAX_VALID_HOURS,
                               description="Each version expires this long after the file was written [h]")

    def resolved(self, base: Path) -> Path:
        """The file: ``path``, relative to ``base`` (the site file's directory) unless absolute."""
        return self.path if self.path.is_absolute() else base / self.path

    def missing_warning(self, base: Path) -> str | None:
        """What ``ems config check`` says when the file is not there (yet); None when it is."""
        path = self.resolved(base)
        if path.is_file():
            return None
        return (f"control.external_forecast_csv.path: {path} is not there (yet): until a version is written there "
                f"the controller raises the alarm forecast_csv_invalid and plans on its built-in forecasts")


class ForecastCsvFile:
    """Submits the configured CSV to ``store`` when it changed since it was last read.

    Parameters
    ----------
    settings : ForecastCsvSettings
    base : Path
        Directory a relative ``settings.path`` is relative to (the site file's).
    store : ExternalForecasts
        The controller's ``Controller.external_forecasts``.
    """

    def __init__(self, settings: ForecastCsvSettings, base: Path, store: ExternalForecasts):
        self.settings, self.store = settings, store
        self.path = settings.resolved(base)
        self.error: str | None = None
        """Why the latest version was not taken (``None`` once one was)."""
        self._seen: tuple[int, int] | None = None

    def poll(self, now: datetime) -> SubmitResult | None:
        """Read the file if it changed since the last call; its result, or ``None`` when unchanged."""
        try:
            stat = self.path.stat()
        except OSError as exc:
            if self._seen == _UNREADABLE:
                return None
            return self._fail(_UNREADABLE, f"{self.path}: cannot be read ({exc.strerror or exc})")
        version = (stat.st_mtime_ns, stat.st_size)
        if version == self._seen:
            return None
        if stat.st_size > MAX_FILE_BYTES:
            return self._fail(version, f"{self.path}: {stat.st_size} bytes, more than {MAX_FILE_BYTES}")
        issued = min(datetime.fromtimestamp(stat.st_mtime, UTC), now)
        result = self.store.load_csv(self.path, source=self.settings.source, issued_at=issued.isoformat(),
                                     valid_hours=self.settings.valid_hours, now=now)
        if not result.accepted:
            error = result.error or "refused"
            return self._fail(version, error if error.startswith(str(self.path)) else f"{self.path}: {error}")
        self._seen, self.error = version, None
        log.info("forecast file %s read: %s, %d steps until %s", self.path, "+".join(result.quantities),
                 result.steps, result.expires_at.isoformat() if result.expires_at else "-")
        return result

    def _fail(self, version: tuple[int, int], error: str) -> SubmitResult:
        if version != self._seen:  # once per version of the file, not at every re-plan
            log.error("forecast file not used: %s", error)
        self._seen, self.error = version, error
        return SubmitResult(accepted=False, error=error)
