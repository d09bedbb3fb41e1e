"""Measured irradiance → PV AC power: known answers by hand, the clear-sky model reproduced from clear-sky GHI,
GHI and POA paths consistent, every bad row named, and a study fed from irradiance."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib
import pytest

from ems.series_csv import DataError
from ems.yamlfile import ConfigError
from optimizer.site import Location, PVSpec, SiteInfo
from optimizer.solar import clear_sky_pv_kw
from simulations.irradiance import ghi_to_poa_w_m2, irradiance_pv_kw, pv_from_irradiance, read_irradiance_csv
from simulations.runner import assumptions, load_data
from simulations.scenario import load_scenario

TZ = "Asia/Ho_Chi_Minh"
SITE = SiteInfo(name="hp", timezone=TZ, location=Location(latitude=20.86, longitude=106.68, altitude_m=5))
PV = PVSpec(kwp=1000, ac_kw=900, tilt_deg=12, losses_pct=14)
SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def quarter_hours(day: str, days: int = 1) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp(day, tz=TZ), periods=96 * days, freq="15min")


def clear_sky_ghi(starts: pd.DatetimeIndex, minutes: float = 15) -> np.ndarray:
    middle = starts.tz_convert("UTC") + pd.Timedelta(minutes=minutes / 2)
    location = pvlib.location.Location(20.86, 106.68, tz="UTC", altitude=5)
    with warnings.catch_warnings():  # pvlib 0.16 still calls DatetimeIndex.dayofyear, deprecated in pandas 3
        warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
        return location.get_clearsky(middle, model="ineichen")["ghi"].to_numpy()


def test_zero_irradiance_gives_zero_power(tmp_path):
    starts = quarter_hours("2026-06-21")
    for column in ("ghi_w_m2", "poa_w_m2"):
        path = write_csv(tmp_path / f"{column}.csv", f"timestamp,{column}",
                         [f"{t.isoformat()},0" for t in starts])
        kw = pv_from_irradiance(path, SITE, PV, 15)
        assert len(kw) == 96 and (kw == 0).all()
        assert kw.index[0] == starts[0] and str(kw.index.tz) == "UTC"


def test_poa_known_answer_by_hand(tmp_path):
    # POA 1000 W/m², wind 1 m/s and an ambient temperature that puts the Faiman cell temperature at 25 °C
    # (T_cell = T_air + POA / (25 + 6.84 · wind)): PVWatts DC = 1000 kWp × 1000/1000 × (1 − 0.14) = 860 kW; PVWatts
    # inverter with pdc0 = 900/0.96 = 937.5 kW: ζ = 860/937.5, η = 0.96/0.9637 · (−0.0162 ζ − 0.0059/ζ + 0.9858)
    temp_air = 25.0 - 1000.0 / (25.0 + 6.84)
    path = write_csv(tmp_path / "poa.csv", "timestamp,poa_w_m2,temp_air_c,wind_speed_m_s",
                     [f"2026-06-21T12:00+07:00,1000,{temp_air!r},1", f"2026-06-21T13:00+07:00,0,{temp_air!r},1"])
    zeta = 860.0 / 937.5
    eta = 0.96 / 0.9637 * (-0.0162 * zeta - 0.0059 / zeta + 0.9858)
    kw = pv_from_irradiance(path, SITE, PV, 15)
    assert len(kw) == 8  # two hours held over their quarter hours
    assert kw.iloc[:4].to_numpy() == pytest.approx(860.0 * eta, rel=1e-9)  # 826.3 kW
    assert (kw.iloc[4:] == 0).all()


@pytest.mark.parametrize("day", ["2026-03-10", "2026-06-21", "2026-12-21"])
def test_clear_sky_ghi_reproduces_the_clear_sky_model(tmp_path, day):
    starts = quarter_hours(day)
    path = write_csv(tmp_path / "ghi.csv", "timestamp,ghi_w_m2",
                     [f"{t.isoformat()},{g:.3f}" for t, g in zip(starts, clear_sky_ghi(starts), strict=True)])
    kw = pv_from_irradiance(path, SITE, PV, 15).to_numpy()
    model = clear_sky_pv_kw(starts.tz_convert("UTC"), 0.25, SITE, PV)
    # the model splits GHI with Ineichen's own DNI/DHI, the file path with Erbs: close, not equal
    assert kw.sum() == pytest.approx(model.sum(), rel=0.03)
    assert np.abs(kw - model).max() < 0.05 * PV.ac_limit_kw
    assert kw.max() > 0.5 * PV.kwp


def test_poa_and_ghi_paths_agree(tmp_path):
    starts = quarter_hours("2026-04-15")
    ghi = clear_sky_ghi(starts) * np.where(np.arange(96) % 7 < 3, 0.4, 1.0)  # some cloudy quarter hours
    poa = ghi_to_poa_w_m2(starts.tz_convert("UTC") + pd.Timedelta(minutes=7.5), ghi, SITE, PV)
    ghi_file = write_csv(tmp_path / "ghi.csv", "timestamp,ghi_w_m2",
                         [f"{t.isoformat()},{float(g)!r}" for t, g in zip(starts, ghi, strict=True)])
    poa_file = write_csv(tmp_path / "poa.csv", "timestamp,poa_w_m2",
                         [f"{t.isoformat()},{float(g)!r}" for t, g in zip(starts, poa, strict=True)])
    assert np.allclose(pv_from_irradiance(ghi_file, SITE, PV, 15), pv_from_irradiance(poa_file, SITE, PV, 15),
                       rtol=1e-12, atol=1e-9)
    assert poa.max() > ghi.max()  # tilted towards the sun at 12° in April at 21° N: more than horizontal, a little


def test_hourly_file_on_a_quarter_hour_study_keeps_the_energy(tmp_path):
    starts = pd.date_range(pd.Timestamp("2026-06-21", tz=TZ), periods=24, freq="1h")
    path = write_csv(tmp_path / "h.csv", "timestamp,ghi_w_m2",
                     [f"{t.isoformat()},{g:.3f}" for t, g in zip(starts, clear_sky_ghi(starts, 60), strict=True)])
    frame = read_irradiance_csv(path)
    hourly = irradiance_pv_kw(frame, SITE, PV)
    quarter = pv_from_irradiance(path, SITE, PV, 15)
    assert len(quarter) == 96 and quarter.sum() / 4 == pytest.approx(hourly.sum())
    with pytest.raises(DataError, match="step of 60 min is not a whole multiple of 7 min"):
        pv_from_irradiance(path, SITE, PV, 7)


def messages(exc: pytest.ExceptionInfo) -> list[str]:
    return [f"{e.field}: {e.message}" for e in exc.value.errors]


def test_bad_rows_are_named(tmp_path):
    path = write_csv(tmp_path / "bad.csv", "timestamp,ghi_w_m2,temp_air_c", [
        "2026-06-21T06:00+07:00,-3,25",      # row 2: a night offset, taken as 0
        "2026-06-21T07:00+07:00,-40,25",     # row 3
        "2026-06-21T08:00+07:00,2500,25",    # row 4
        "2026-06-21T09:00+07:00,abc,25",     # row 5
        "2026-06-21T10:00+07:00,600,95",     # row 6
        "2026-06-21T10:00+07:00,600,30",     # row 7: duplicate
        "2026-06-21T13:00+07:00,700,30",     # row 8: two hours missing
        "2026-06-21T14:00,700,30",           # row 9: no offset
        "2026-06-21T15:00+07:00,,30",        # row 10: empty
    ])
    with pytest.raises(DataError) as exc:
        read_irradiance_csv(path)
    found = messages(exc)
    assert str(path) in str(exc.value)
    assert "row 3, column ghi_w_m2: negative irradiance -40 W/m²" in found
    assert "row 4, column ghi_w_m2: 2500 W/m² is above the plausible bound 1500 W/m²" in found
    assert "row 5, column ghi_w_m2: 'abc' is not a number" in found
    assert "row 6, column temp_air_c: 95 is outside the plausible range -50..70" in found
    assert "row 7, column timestamp: duplicate timestamp (same instant as row 6)" in found
    assert "row 8, column timestamp: gap: 2 missing interval(s) after row 6" in found
    assert any(m.startswith("row 9, column timestamp: '2026-06-21T14:00' has no UTC offset") for m in found)
    assert "row 10, column ghi_w_m2: empty cell" in found
    assert not any(m.startswith("row 2,") for m in found)


@pytest.mark.parametrize(("header", "rows", "expected"), [
    ("timestamp,load_kw", ["2026-06-21T06:00+07:00,3"], "(header): no column ghi_w_m2 or poa_w_m2"),
    ("timestamp,GHI_W_M2,poa_w_m2", ["2026-06-21T06:00+07:00,3,4"], "(header): both ghi_w_m2 and poa_w_m2"),
    ("when,ghi_w_m2", ["2026-06-21T06:00+07:00,3"], "(header): no timestamp column"),
    ("timestamp,ghi_w_m2", ["2026-06-21T06:00+07:00,0.2", "2026-06-21T07:00+07:00,0.9"],
     "column ghi_w_m2: the largest value is 0.9: these look like kW/m²"),
    ("timestamp,ghi_w_m2", ["2026-06-21T06:00,0", "2026-06-21T07:00,10"], "column timestamp: timestamps carry no UTC"),
])
def test_file_level_errors(tmp_path, header, rows, expected):
    path = write_csv(tmp_path / "f.csv", header, rows)
    with pytest.raises(DataError) as exc:
        read_irradiance_csv(path)
    assert any(m.startswith(expected) for m in messages(exc)), messages(exc)


def test_naive_timestamps_in_a_declared_zone_and_relabelled_year(tmp_path):
    # a typical-year file: hours of 2019 in local time; relabelled to 2026 it lines up with the study's days
    starts = pd.date_range("2019-06-21", periods=48, freq="1h")
    path = write_csv(tmp_path / "tmy.csv", "time,poa_w_m2", [f"{t:%Y-%m-%d %H:%M},500" for t in starts])
    as_is = pv_from_irradiance(path, SITE, PV, 60, timezone=TZ)
    assert as_is.index[0] == pd.Timestamp("2019-06-21", tz=TZ)
    moved = pv_from_irradiance(path, SITE, PV, 60, timezone=TZ, year=2026)
    assert moved.index[0] == pd.Timestamp("2026-06-21", tz=TZ) and np.array_equal(moved.to_numpy(), as_is.to_numpy())


def test_a_measured_load_with_pv_from_irradiance(tmp_path):
    starts = quarter_hours("2026-06-01", 2)
    write_csv(tmp_path / "ghi.csv", "timestamp,ghi_w_m2",
              [f"{t.isoformat()},{g:.3f}" for t, g in zip(starts, clear_sky_ghi(starts), strict=True)])
    write_csv(tmp_path / "meter.csv", "timestamp,load_kw", [f"{t.isoformat()},{400 + i}" for i, t in enumerate(starts)])
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"extends: {SCENARIOS / 'nam-cau-kien.yaml'}\nname: irr\n"
                        "data:\n  synthetic: null\n  csv: {path: meter.csv}\n  irradiance: {path: ghi.csv}\n"
                        "  warmup_days: 0\n")
    data = load_data(load_scenario(scenario))
    assert data.load_kw.tolist() == [400.0 + i for i in range(192)]
    expected = pv_from_irradiance(tmp_path / "ghi.csv", SITE, PV.model_copy(update={"losses_pct": 14}), 15)
    assert np.allclose(data.pv_kw, expected.to_numpy())
    assert assumptions(load_scenario(scenario))["data_source"] == (
        "load measured: meter.csv; PV from measured irradiance: ghi.csv")
    write_csv(tmp_path / "meter.csv", "timestamp,load_kw,pv_kw", [f"{t.isoformat()},400,5" for t in starts])
    with pytest.raises(ConfigError, match=r"data\.irradiance: the CSV has PV \(pv_kw\) and data\.irradiance gives"):
        load_data(load_scenario(scenario))


def test_a_spreadsheet_export_reads_as_the_iso_file(tmp_path):
    """';' between cells, decimal commas, dates day first: the same irradiance as the ISO 8601 file."""
    starts = pd.date_range("2019-06-21", periods=48, freq="1h")
    iso = write_csv(tmp_path / "iso.csv", "time,ghi_w_m2,temp_air_c",
                    [f"{t:%Y-%m-%d %H:%M},{i * 10.5:g},27.5" for i, t in enumerate(starts)])
    sheet = write_csv(tmp_path / "sheet.csv", "time;ghi_w_m2;temp_air_c",
                      [f"{t:%d/%m/%Y %H:%M};{i * 10.5:g};27,5".replace(".", ",") for i, t in enumerate(starts)])
    pd.testing.assert_frame_equal(read_irradiance_csv(sheet, timezone=TZ), read_irradiance_csv(iso, timezone=TZ))


def test_a_study_takes_its_pv_from_irradiance(tmp_path):
    starts = quarter_hours("2026-06-01", 3)
    write_csv(tmp_path / "ghi.csv", "timestamp,ghi_w_m2",
              [f"{t.isoformat()},{g:.3f}" for t, g in zip(starts, clear_sky_ghi(starts), strict=True)])
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"extends: {SCENARIOS / 'nam-cau-kien.yaml'}\nname: irr\n"
                        "data:\n  irradiance: {path: ghi.csv}\n  start: 2026-06-01\n  days: 2\n")
    data = load_data(load_scenario(scenario))
    assert len(data.starts) == 192
    expected = pv_from_irradiance(tmp_path / "ghi.csv", SITE, PV.model_copy(update={"losses_pct": 14}), 15)
    assert np.allclose(data.pv_kw, expected.to_numpy()[:192])
    assert data.load_kw.mean() > 300  # the synthetic year's load
    assert assumptions(load_scenario(scenario))["data_source"] == (
        "load of the synthetic year 2026 (seed 7, 1100 kWh/kWp/yr); PV from measured irradiance: ghi.csv")
    scenario.write_text(f"extends: {SCENARIOS / 'nam-cau-kien.yaml'}\nname: irr\n"
                        "data:\n  irradiance: {path: ghi.csv}\n  start: 2026-06-01\n  days: 5\n")
    with pytest.raises(ConfigError, match="no irradiance for 192 interval"):
        load_data(load_scenario(scenario))
