"""The forecast CSV named in the site file (controller/forecast_csv.py): read when it changes, issued when it was
written, a bad file named by its line in an alarm that the next good version clears, the service going on; and
the controller built from a site file plans on it."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from controller.config import load_config
from controller.forecast_csv import ALARM, ForecastCsvFile, ForecastCsvSettings
from controller.service import Controller
from ems.clock import ManualClock
from optimizer.external_forecast import ExternalForecasts
from optimizer.timegrid import regular_grid
from tests.test_controller_e2e import site_file

NOW = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
GOOD = ("timestamp,pv_kw,load_kw\n2026-06-01T07:00:00+07:00,0,400\n2026-06-01T07:15:00+07:00,25.5,410\n"
        "2026-06-01T07:30:00+07:00,50,420\n")


def write(path: Path, text: str, written: datetime) -> None:
    """Write ``text`` with modification time ``written``."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, (written.timestamp(), written.timestamp()))


def test_the_file_is_read_when_it_changes_and_expires_after_it_was_written(tmp_path: Path) -> None:
    store = ExternalForecasts(pv_limit_kw=900)
    file = ForecastCsvFile(ForecastCsvSettings(path=Path("fc.csv"), source="plant", valid_hours=2), tmp_path, store)
    write(tmp_path / "fc.csv", GOOD, NOW - timedelta(minutes=30))
    result = file.poll(NOW)
    assert result is not None and result.accepted and result.steps == 3 and file.error is None
    held = store.current("pv_kw", NOW)
    assert held.source == "plant" and held.issued_at == NOW - timedelta(minutes=30)
    assert held.expires_at == NOW + timedelta(minutes=90) and held.values["pv_kw"].tolist() == [0.0, 25.5, 50.0]
    assert file.poll(NOW + timedelta(minutes=15)) is None            # unchanged: not read again
    write(tmp_path / "fc.csv", GOOD.replace("25.5", "30"), NOW + timedelta(minutes=20))
    assert file.poll(NOW + timedelta(minutes=20)).accepted
    assert store.current("pv_kw", NOW + timedelta(minutes=20)).values["pv_kw"].tolist() == [0.0, 30.0, 50.0]
    assert store.current("pv_kw", NOW + timedelta(hours=2, minutes=20)) is None   # expired: built-in models


@pytest.mark.parametrize(("text", "error"), [
    (GOOD.replace("25.5", "abc"), "CSV line 3"),
    (GOOD.replace("25.5", "-4"), r"pv_kw\[1\]: -4.0 kW is negative"),
    ("time,pv\n1,2\n", "CSV header must be timestamp"),
    (GOOD.replace("07:30:00", "07:45:00"), "evenly spaced"),
])
def test_a_bad_file_is_named_and_the_forecast_in_use_stays(tmp_path: Path, text: str, error: str) -> None:
    store = ExternalForecasts(pv_limit_kw=900)
    path = tmp_path / "fc.csv"
    file = ForecastCsvFile(ForecastCsvSettings(path=path), tmp_path, store)
    write(path, GOOD, NOW)
    assert file.poll(NOW).accepted
    write(path, text, NOW + timedelta(minutes=5))
    result = file.poll(NOW + timedelta(minutes=5))
    assert not result.accepted and str(path) in file.error and re.search(error, file.error), file.error
    assert store.current("pv_kw", NOW + timedelta(minutes=5)).values["pv_kw"].tolist() == [0.0, 25.5, 50.0]
    assert file.poll(NOW + timedelta(minutes=6)) is None and file.error is not None   # stays until the file changes
    write(path, GOOD, NOW + timedelta(minutes=7))
    assert file.poll(NOW + timedelta(minutes=7)).accepted and file.error is None


def test_a_missing_file_is_an_error_until_it_appears(tmp_path: Path) -> None:
    file = ForecastCsvFile(ForecastCsvSettings(path=Path("later.csv")), tmp_path, ExternalForecasts())
    assert not file.poll(NOW).accepted and "later.csv: cannot be read" in file.error
    assert file.poll(NOW) is None
    write(tmp_path / "later.csv", GOOD, NOW)
    assert file.poll(NOW).accepted and file.error is None


class ConstantSource:
    """Built-in forecasts: PV 7 kW, load 300 kW."""

    def forecast(self, grid):
        return np.full(len(grid), 7.0), np.full(len(grid), 300.0)

    def peak_risk(self, grid, pv_kw, load_kw):
        return np.zeros(len(grid))

    def measured(self):
        return None


def test_the_controller_reads_the_configured_file_and_alarms_on_a_bad_one(tmp_path: Path) -> None:
    path = site_file(tmp_path, control={"external_forecast_csv": {"path": "forecast.csv", "source": "plant"}})
    config = load_config(path)
    assert config.control.external_forecast_csv.valid_hours == 6
    controller = Controller.from_config(config, path, ManualClock(NOW), state_directory=tmp_path / "state",
                                        forecasts=ConstantSource())
    write(tmp_path / "forecast.csv", GOOD, NOW)                      # beside the site file
    controller._read_forecast_csv(NOW)
    grid = regular_grid(pd.Timestamp(NOW), 4, 15)
    assert controller.forecasts.forecast(grid)[0].tolist() == [0.0, 25.5, 50.0, 7.0] and ALARM not in controller.alarms
    write(tmp_path / "forecast.csv", GOOD.replace("25.5", "x"), NOW + timedelta(minutes=1))
    controller._read_forecast_csv(NOW + timedelta(minutes=1))
    assert "CSV line 3" in controller.alarms[ALARM]
    assert controller.forecasts.forecast(grid)[0].tolist() == [0.0, 25.5, 50.0, 7.0]  # the last good one
    write(tmp_path / "forecast.csv", GOOD, NOW + timedelta(minutes=2))
    controller._read_forecast_csv(NOW + timedelta(minutes=2))
    assert ALARM not in controller.alarms
    controller.audit.close()
