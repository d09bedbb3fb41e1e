"""A factory's meter year in a study: with no PV yet, its load with the synthetic year's PV (data.csv and
data.synthetic together), known answers against the synthetic year itself and the refusals; a year older than the
tariff's prices moved by whole weeks (data.csv.move_to_year), and refused with the remedy without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ems.cli import main
from ems.yamlfile import ConfigError
from simulations.runner import assumptions, forecast_site, load_data, nominal_load_kw, synthetic_frame
from simulations.scenario import load_scenario
from tests.series_files import BASE_SCENARIO

TZ = "Asia/Ho_Chi_Minh"


def study(folder: Path, start: str, hours: int, header: str = "timestamp,load_kw", **data: object) -> Path:
    """An hourly load CSV (load = 300 + the hour index) from local ``start``, and the Nam Cau Kien scenario (which
    has data.synthetic, year 2026, seed 7) extended with it."""
    starts = pd.date_range(pd.Timestamp(start, tz=TZ), periods=hours, freq="1h")
    extra = ",5" * (header.count(",") - 1)
    rows = [header] + [f"{t.isoformat()},{300 + i}{extra}" for i, t in enumerate(starts)]
    (folder / "meter.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    text = {"extends": str(BASE_SCENARIO), "name": "meter-and-synthetic-pv",
            "planner": {"step_minutes": 60}, "data": {"csv": {"path": "meter.csv"}, "warmup_days": 0, **data}}
    (folder / "study.yaml").write_text(yaml.safe_dump(text), encoding="utf-8")
    return folder / "study.yaml"


def test_the_meters_load_with_the_synthetic_years_pv(tmp_path):
    scenario = load_scenario(study(tmp_path, "2026-06-01", 48))
    data = load_data(scenario)
    assert data.load_kw.tolist() == [300.0 + i for i in range(48)]
    year = synthetic_frame(scenario, 2026, 7)
    assert data.pv_kw.tolist() == year["pv_kw"].reindex(data.starts).tolist()
    assert data.pv_kw.max() > 100  # June days: the synthetic PV is there
    # the load is measured: no nominal synthetic load, no synthetic Tết shutdown announced to the forecaster
    assert nominal_load_kw(scenario) is None and forecast_site(scenario) == scenario.site
    a = assumptions(scenario)
    assert a["data_source"] == ("load measured: meter.csv; PV of the synthetic year 2026 (seed 7, 1100 kWh/kWp/yr), "
                                 "another year of the CSV drawn with seed + (year − 2026)")
    assert a["data_kind"] == "measured and synthetic" and a["load_measured"]


def test_a_meter_year_across_new_year_takes_each_years_synthetic_pv(tmp_path):
    scenario = load_scenario(study(tmp_path, "2025-12-31", 48))
    data = load_data(scenario)
    local = data.starts.tz_convert(TZ)
    pv = pd.Series(data.pv_kw, index=data.starts)
    in_2026 = local.year == 2026
    assert pv[in_2026].tolist() == synthetic_frame(scenario, 2026, 7)["pv_kw"].reindex(data.starts[in_2026]).tolist()
    assert pv[~in_2026].tolist() == synthetic_frame(scenario, 2025, 6)["pv_kw"].reindex(
        data.starts[~in_2026]).tolist()
    assert np.nanmax(pv[~in_2026]) > 0


def test_a_csv_with_pv_beside_synthetic_pv_is_refused(tmp_path):
    scenario = load_scenario(study(tmp_path, "2026-06-01", 48, header="timestamp,load_kw,pv_kw"))
    with pytest.raises(ConfigError) as refused:
        load_data(scenario)
    assert [(e.field, e.message) for e in refused.value.errors] == [
        ("data.synthetic", "the CSV has PV (pv_kw) and data.synthetic gives the PV too: keep one — drop "
                           "data.synthetic (synthetic: null) to use the measured PV, or the CSV's PV column")]
    measured_pv = load_scenario(study(tmp_path, "2026-06-01", 48, header="timestamp,load_kw,pv_kw",
                                      synthetic=None))
    assert load_data(measured_pv).pv_kw.tolist() == [5.0] * 48


def test_sources_that_give_nothing_or_too_much_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.synthetic has nothing to give beside data\.csv"):
        load_scenario(study(tmp_path, "2026-06-01", 48, irradiance={"path": "ghi.csv"}))
    with pytest.raises(ConfigError, match=r"give data\.synthetic, data\.csv, or both"):
        load_scenario(study(tmp_path, "2026-06-01", 48, synthetic=None, csv=None))


def test_a_meter_year_older_than_the_tariffs_prices_is_refused_with_the_remedy(tmp_path, capsys):
    """The 22 kV preset prices days from 10 May 2025 on; a study from 1 March 2025 ended in a traceback."""
    path = study(tmp_path, "2025-03-01", 48)
    assert main(["simulate", str(path), "--out", str(tmp_path / "o"), "--no-progress", "--strategies",
                 "pv_only"]) == 2
    assert ("data.csv.move_to_year: the period starts 2025-03-01, before tariff evn-manufacturing-22kv prices any "
            "day (its prices start 2025-05-10): move the data to a year the tariff prices (data.csv.move_to_year: "
            "2026, weekdays kept), or start the study on or after 2025-05-10 (data.start)") in capsys.readouterr().err


def test_moved_to_a_year_by_whole_weeks_keeping_weekdays(tmp_path):
    path = study(tmp_path, "2025-03-01", 48, csv={"path": "meter.csv", "move_to_year": 2026})
    scenario = load_scenario(path)
    data = load_data(scenario)
    local = data.starts.tz_convert(TZ)
    # Saturday 1 March 2025 + 52 weeks = Saturday 28 February 2026 (364 days: the nearest same weekday)
    assert local[0] == pd.Timestamp("2026-02-28", tz=TZ) and local[0].day_name() == "Saturday"
    assert data.load_kw.tolist() == [300.0 + i for i in range(48)]
    assert data.pv_kw.tolist() == synthetic_frame(scenario, 2026, 7)["pv_kw"].reindex(data.starts).tolist()
    assert assumptions(scenario)["data_source"].startswith("load measured: meter.csv (moved by whole weeks to 2026)")
    back = study(tmp_path, "2026-06-03", 24, csv={"path": "meter.csv", "move_to_year": 2024})
    # Wednesday 3 June 2026 − 104 weeks = Wednesday 5 June 2024 (2 days from the same date)
    assert load_data(load_scenario(back)).starts[0].tz_convert(TZ) == pd.Timestamp("2024-06-05", tz=TZ)


def test_a_synthetic_year_before_the_tariffs_prices_names_the_year_to_simulate(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text(f"extends: {BASE_SCENARIO}\nname: old\ndata:\n  synthetic: {{year: 2024}}\n"
                                       "  days: 2\n", encoding="utf-8")
    assert main(["simulate", str(tmp_path / "old.yaml"), "--out", str(tmp_path / "o"), "--no-progress",
                 "--strategies", "pv_only"]) == 2
    assert ("data.synthetic.year: the period starts 2024-01-01, before tariff evn-manufacturing-22kv prices any day "
            "(its prices start 2025-05-10): simulate a year the tariff prices (data.synthetic.year: 2026), or start "
            "the study on or after 2025-05-10 (data.start)") in capsys.readouterr().err
