"""plan_for_site and ``ems plan`` on the example site file (real tariff preset, real forecasts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ems.cli import main
from ems.yamlfile import load_model
from optimizer.forecast import ForecastError
from optimizer.service import plan_for_site
from optimizer.site import PlanningSiteView
from optimizer.tariff import load_tariff

SITE_FILE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "simulated-site.yaml"
START = datetime(2026, 5, 4, 0, 7, tzinfo=UTC)  # 07:07 local; the horizon starts at 07:00


@pytest.fixture(scope="module")
def site() -> PlanningSiteView:
    return load_model(PlanningSiteView, SITE_FILE)


def test_plan_for_site_uses_tariff_prices_and_periods(site):
    tariff = load_tariff(site.tariff, SITE_FILE.parent)
    plan = plan_for_site(site, tariff, START, 500.0, load_kw=np.full(96, 600.0))
    assert plan.starts[0] == pd.Timestamp("2026-05-04T00:00Z") and len(plan) == 96
    assert set(plan.period) == {"off_peak", "normal", "peak"}
    peak = np.array(plan.period) == "peak"
    assert plan.import_price[peak].min() > plan.import_price[~peak].max()  # gross prices from the preset
    assert plan.pv_kw.max() > 100  # clear-sky forecast at midday in May
    np.testing.assert_allclose(plan.export_kw, 0, atol=1e-6)  # zero-export site
    with pytest.raises(ForecastError):
        plan_for_site(site, tariff, START, 500.0)  # no load history, no load given


def test_cli_json_with_a_series_overriding_prices(tmp_path, capsys):
    starts = pd.date_range("2026-05-04T07:00+07:00", periods=96, freq="15min")
    price = np.where(np.arange(96) < 48, 1000.0, 3000.0)
    pd.DataFrame({"timestamp": [s.isoformat() for s in starts], "pv_kw": 0.0, "load_kw": 400.0,
                  "import_price": price, "export_price": 0.0}).to_csv(tmp_path / "s.csv", index=False)
    code = main(["plan", "--config", str(SITE_FILE), "--start", "2026-05-04T07:00+07:00", "--soc", "10",
                 "--series", str(tmp_path / "s.csv"), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["import_price"] == price.tolist() and data["soc0_kwh"] == pytest.approx(100.0)
    charge, discharge = np.array(data["charge_kw"]), np.array(data["discharge_kw"])
    assert charge[:48].sum() > 0 and discharge[48:].sum() > 0 and charge[48:].sum() < 1e-6  # cheap first half


def test_cli_plans_an_aged_battery_on_the_energy_it_holds(tmp_path, capsys):
    """`ems plan --soh 80` on the 1,000 kWh example: SOC 10 % is 80 kWh of 800, the plan fills to 95 % of 800 kWh
    (760) and the table says what its SOC is a share of."""
    starts = pd.date_range("2026-05-04T07:00+07:00", periods=96, freq="15min")
    price = np.where(np.arange(96) < 48, 1000.0, 3000.0)
    pd.DataFrame({"timestamp": [s.isoformat() for s in starts], "pv_kw": 0.0, "load_kw": 400.0,
                  "import_price": price, "export_price": 0.0}).to_csv(tmp_path / "s.csv", index=False)
    args = ["plan", "--config", str(SITE_FILE), "--start", "2026-05-04T07:00+07:00", "--soc", "10",
            "--series", str(tmp_path / "s.csv")]
    assert main([*args, "--soh", "80", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["capacity_kwh"] == pytest.approx(800.0) and data["soc0_kwh"] == pytest.approx(80.0)
    assert max(data["soc_kwh"]) == pytest.approx(760.0)
    assert main([*args, "--soh", "80"]) == 0
    assert "SOC % of 800 kWh" in capsys.readouterr().out.splitlines()[0]
    assert main([*args]) == 0
    title, head = capsys.readouterr().out.splitlines()[:2]
    assert "SOC % of 1,000 kWh" in title and title.endswith("; import prices as s.csv gives them")
    assert "imp VND/kWh" in head


def test_cli_says_the_peak_as_the_demand_charge_measures_it(tmp_path, capsys):
    """Under the two-part tariff the far horizon's half-hour blocks hold the battery over two quarter hours, so a
    quarter hour imports 614 kW while the half hour averages the month's 600: the table said "peak import 614.0 kW"
    only; it now also says the peak as billed, the largest 30-minute average of the import, worked out here by hand."""
    data = yaml.safe_load(SITE_FILE.read_text())
    data["tariff"] = {"preset": "evn-two-part-22kv"}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    args = ["plan", "--config", str(site), "--month-peak", "600"]
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    starts = pd.DatetimeIndex(plan["starts"])
    half_hours = pd.Series(plan["import_kw"], index=starts).resample("30min").mean()
    assert main(args) == 0
    said = capsys.readouterr().out.splitlines()[-3]
    assert said.endswith(f"peak import {max(plan['import_kw']):.1f} kW in a step, {half_hours.max():.1f} kW as the "
                         "demand charge measures it (window average)"), said
    assert max(plan["import_kw"]) > half_hours.max() + 5 and half_hours.max() == pytest.approx(600.0, abs=0.5)
    assert main(["plan", "--config", str(SITE_FILE)]) == 0    # no demand charge: the step's peak alone
    assert "demand charge" not in capsys.readouterr().out.splitlines()[-3]


def test_cli_table_names_periods_and_says_its_prices_include_vat(capsys):
    """The table's prices are the tariff's with VAT (1,833 VND/kWh normal × 1.08 = 1,979.6), and it said neither
    the currency nor that; its periods read as the tariff's keys (``off_peak``)."""
    assert main(["plan", "--config", str(SITE_FILE), "--start", "2026-05-04T16:00+07:00", "--soc", "80"]) == 0
    title, head, _, *rows = capsys.readouterr().out.splitlines()
    assert title.endswith("; import prices incl. VAT")
    assert head.split()[3:7] == ["imp", "VND/kWh", "exp", "VND/kWh"]
    by_time = {row[:11]: row.split()[2:4] for row in rows if row[:2] == "05"}
    assert by_time["05-04 16:00"] == ["normal", "1979.6"]
    assert by_time["05-04 20:00"] == ["peak", "3669.8"]
    assert by_time["05-05 00:00"] == ["off-peak", "1285.2"]


@pytest.mark.parametrize(("row", "column", "value", "says"), [
    (None, None, None, "(file): No such file or directory"),
    (30, "load_kw", "abc", "row 32, column load_kw: 'abc' is not a number"),
    (30, "pv_kw", "-50", "row 32, column pv_kw: negative value -50"),
    (30, "load_kw", "inf", "row 32, column load_kw: 'inf' is not a number"),
    (30, "pv_kw", "5000", "row 32, column pv_kw: 5000 kW is above the plausible bound 1350 kW (1.5 × rated 900 kW)"),
    (30, "import_price", "cheap", "row 32, column import_price: 'cheap' is not a number"),
    (31, "timestamp", "2026-05-04T14:30+07:00", "row 33, column timestamp: duplicate timestamp"),
])
def test_cli_a_bad_series_is_named_by_row_and_column(tmp_path, capsys, row, column, value, says):
    """`ems plan --series` reads its CSV as every measured series is read (ems.series_csv, docs/data.md): a bad
    cell is named by its row (the file's line, header = 1) and column, exit 2; before, a text cell, a missing
    file or a duplicate ended in a bare pandas message or a traceback, and a negative or absurd PV was planned on."""
    starts = pd.date_range("2026-05-04T07:00+07:00", periods=96, freq="15min")
    frame = pd.DataFrame({"timestamp": [s.isoformat() for s in starts], "pv_kw": 100.0, "load_kw": 400.0,
                          "import_price": 1500.0}).astype(object)
    path = tmp_path / "s.csv"
    if row is not None:
        frame.loc[row, column] = value
        frame.to_csv(path, index=False)
    code = main(["plan", "--config", str(SITE_FILE), "--start", "2026-05-04T07:00+07:00", "--soc", "10",
                 "--series", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(path) in err and says in err, err


def test_cli_table_and_clear_errors(tmp_path, capsys):
    assert main(["plan", "--config", str(SITE_FILE)]) == 0
    out = capsys.readouterr().out
    assert "local time" in out and "cost [VND]" in out and "05-04 06:00" in out
    bare = yaml.safe_load(SITE_FILE.read_text())
    del bare["simulation"]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(bare))
    args = ["plan", "--config", str(tmp_path / "site.yaml"), "--soc", "50", "--start", "2026-05-04T07:00+07:00"]
    assert main(args) == 2
    assert "--series" in capsys.readouterr().err


def test_cli_a_series_load_in_the_site_file_is_asked_for_as_series(tmp_path, capsys):
    """A `simulation.load` series was read as a shift shape with day_kw 0: a plan on no load at all."""
    data = yaml.safe_load(SITE_FILE.read_text())
    data["simulation"]["load"] = {"model": "series", "file": "load.csv", "column": "load_kw"}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(data))
    assert main(["plan", "--config", str(tmp_path / "site.yaml"), "--soc", "50"]) == 2
    assert "simulation.load is a series, not a shift shape: pass the load as --series" in capsys.readouterr().err


def test_two_part_tariff_demand_charge_is_gross_and_shaves(site):
    """evn-two-part-22kv: Cp 235,414 VND/kW-month + 8 % VAT; the plan pays only for a new peak."""
    from optimizer.tariff import Tariff

    tariff = Tariff.preset("evn-two-part-22kv")
    load = np.full(96, 600.0)
    load[40:44] = 1200.0  # a one-hour spike
    plan = plan_for_site(site.model_copy(update={"grid": site.grid.model_copy(update={"import_cap_kw": None})}),
                         tariff, START, 900.0, load_kw=load, month_peak_kw=0.0)
    assert plan.import_kw.max() < 1200.0 - 100.0  # the spike is shaved with the stored energy
    # billed on the tariff's measure: the highest 30-minute average import
    assert plan.demand_kw is not None and plan.demand_kw.max() <= plan.import_kw.max() + 1e-9
    assert plan.objective.demand == pytest.approx(235_414.0 * 1.08 * plan.demand_kw.max(), rel=1e-9)
