"""Measured PV held back by an export limit (simulations/data_checks.py): the rule by hand, the threshold, and the
warning through ems simulate and ems sweep to their reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ems.cli import main
from simulations.data_checks import WARN_SHARE, pv_held_back, pv_held_back_warning
from tests.series_files import BASE_SCENARIO


def test_held_back_steps_by_hand():
    pv = np.array([1000.0, 500.0, 500.0, 50.0, 600.0, 800.0, 0.0])
    load = np.array([300.0, 505.0, 700.0, 50.0, 590.0, 300.0, 400.0])
    # 0: exporting 700 kW; 1: grid +5 kW, within 3 % of 505 kW (15.2 kW): held; 2: importing 200 kW; 3: PV below
    # 10 % of the 1,000 kW peak, not looked at; 4: grid −10 kW, within 17.7 kW: held; 5: exporting; 6: night
    assert pv_held_back(pv, load).tolist() == [False, True, False, False, True, False, False]
    assert not pv_held_back(np.zeros(3), np.full(3, 100.0)).any()


def test_the_warning_needs_a_twentieth_of_the_sunny_steps():
    sunny = 100
    pv = np.full(sunny, 500.0)
    load = np.full(sunny, 800.0)  # importing: nothing held
    assert pv_held_back_warning(pv, load) is None
    held = int(WARN_SHARE * sunny)
    load[:held - 1] = 500.0
    assert pv_held_back_warning(pv, load) is None  # 4 of 100
    load[held - 1] = 500.0
    warning = pv_held_back_warning(pv, load)
    assert warning is not None and warning.startswith("the measured PV looks held back at 5 of 100 sunny steps (5 %)")


def zero_export_study(folder: Path) -> Path:
    """Three days, hourly, of a plant that held its export at 0: the array could give up to 900 kW at noon, the load
    is 400 kW, and the PV measured never exceeds the load (grid +1 kW there). The Nam Cau Kien scenario on it."""
    starts = pd.date_range(pd.Timestamp("2026-06-01", tz="Asia/Ho_Chi_Minh"), periods=72, freq="1h")
    hour = np.asarray(starts.hour)
    array_kw = np.clip(900 * np.sin(np.pi * (hour - 6) / 12), 0, None)
    load = np.full(72, 400.0)
    pv = np.minimum(array_kw, load - 1.0)
    rows = ["timestamp,pv_kw,load_kw"] + [f"{t.isoformat()},{p:.1f},{v:.1f}"
                                           for t, p, v in zip(starts, pv, load, strict=True)]
    (folder / "zero-export.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = yaml.safe_load(BASE_SCENARIO.read_text(encoding="utf-8"))
    data["data"] = {"csv": {"path": "zero-export.csv"}, "warmup_days": 0}
    data["planner"]["step_minutes"] = 60
    (folder / "study.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder / "study.yaml"


def test_ems_simulate_and_sweep_say_the_pv_looks_held_back(tmp_path, capsys):
    study = zero_export_study(tmp_path)
    assert main(["simulate", str(study), "--out", str(tmp_path / "o"), "--no-progress", "--strategies",
                 "pv_only"]) == 0
    err = capsys.readouterr().err
    # sunny (PV above 10 % of its 399 kW peak): 07–17 h, 11 steps a day; held (PV at the load − 1 kW): 08–16 h, 9
    assert "warning: the measured PV looks held back at 27 of 33 sunny steps (82 %)" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["data_warnings"]) == 1 and "take the PV from irradiance" in summary["data_warnings"][0]
    report = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert '<p class="warning data-warning">Data: the measured PV looks held back at 27 of 33' in report

    assert main(["sweep", str(study), "--pv", "1000", "--battery", "0", "--strategy", "self_consumption", "--out",
                 str(tmp_path / "s")]) == 0
    assert "warning: the measured PV looks held back at 27 of 33 sunny steps" in capsys.readouterr().err
    assert "Data: the measured PV looks held back" in (tmp_path / "s" / "sweep.html").read_text(encoding="utf-8")


def test_a_synthetic_year_carries_no_data_warning(tmp_path):
    assert main(["simulate", str(BASE_SCENARIO), "--out", str(tmp_path / "o"), "--no-progress", "--strategies",
                 "pv_only", "--days", "2"]) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))["data_warnings"] == []


def test_ems_park_names_the_site_whose_pv_looks_held_back(tmp_path, capsys):
    study = zero_export_study(tmp_path)
    (tmp_path / "park.yaml").write_text(f"name: p\nstrategy: self_consumption\ndays: 3\nsites:\n"
                                        f"  - {{id: held, scenario: {study}}}\n"
                                        f"  - {{id: synthetic, scenario: {BASE_SCENARIO}}}\n", encoding="utf-8")
    assert main(["park", str(tmp_path / "park.yaml"), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: site held: the measured PV looks held back at 27 of 33 sunny steps" in err
    assert "site synthetic:" not in err
    assert "**Data of held:** the measured PV looks held back" in (tmp_path / "o" / "park.md").read_text(
        encoding="utf-8")


def test_hourly_data_under_a_30_minute_demand_charge_is_said_to_understate_it(tmp_path):
    from optimizer.tariff import Tariff
    from simulations.data_checks import coarse_demand_warning
    from simulations.runner import load_data
    from simulations.scenario import load_scenario

    two_part = Tariff.preset("evn-two-part-22kv").spec
    assert coarse_demand_warning(60, two_part) == (
        "the data's step is 60 min, coarser than the 30-minute windows the tariff's demand charge is billed on: each "
        "month's peak is a 60-minute average, lower than the 30-minute peak billed, so the demand charge and what a "
        "battery saves on it are understated; study data at 30-minute steps or finer.")
    assert coarse_demand_warning(30, two_part) is None and coarse_demand_warning(None, two_part) is None
    assert coarse_demand_warning(60, Tariff.preset("evn-manufacturing-22kv").spec) is None  # no demand charge
    study = zero_export_study(tmp_path)  # hourly data
    text = yaml.safe_load(study.read_text(encoding="utf-8"))
    text["tariff"] = {"preset": "evn-two-part-22kv"}
    study.write_text(yaml.safe_dump(text), encoding="utf-8")
    warnings = load_data(load_scenario(study)).warnings
    assert len(warnings) == 2 and warnings[1].startswith("the data's step is 60 min, coarser than the 30-minute")
