"""Measured irradiance (GHI or plane-of-array, CSV) converted through pvlib to the AC power of a site's PV system.

A study can take its PV from irradiance a user downloaded (a PVGIS or NSRDB TMY file, a weather station) instead
of measured PV power: :func:`read_irradiance_csv` validates the file, :func:`irradiance_pv_kw` runs the model
chain of :mod:`optimizer.solar` (solar position at each interval's middle → for GHI, Erbs decomposition into DNI
and DHI and Hay–Davies transposition → Faiman cell temperature → PVWatts DC and inverter), and
:func:`pv_from_irradiance` does both and puts the result on the study's step. Format, rules and messages:
docs/data.md ("Measured irradiance").
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ems.series_csv import (
    TIMESTAMP_COLUMNS,
    DataError,
    _check_order,
    _check_timezone,
    _Errors,
    _file_step_ns,
    _parse_numbers,
    _parse_timestamps,
    _read_rows,
)
from ems.yamlfile import FieldError
from optimizer.site import PVSpec, SiteInfo
from optimizer.solar import AMBIENT_TEMPERATURE_C, WIND_SPEED_M_S, ac_power_kw, plane_of_array_w_m2

IRRADIANCE_COLUMNS = ("ghi_w_m2", "poa_w_m2")
"""Exactly one of these (case-insensitive): global horizontal or global plane-of-array irradiance. [W/m²]"""
WEATHER_COLUMNS = {"temp_air_c": (-50.0, 70.0), "wind_speed_m_s": (0.0, 60.0)}
"""Optional columns and their plausible ranges: ambient temperature [°C] and wind speed [m/s]."""
MAX_IRRADIANCE_W_M2 = 1500.0
"""Above this no irradiance on Earth's surface is plausible (the solar constant is 1,361 W/m²). [W/m²]"""
NIGHT_OFFSET_W_M2 = 10.0
"""Negative readings down to −this (pyranometer night offsets) are taken as 0; lower ones are errors. [W/m²]"""
KW_M2_HINT = 1.5
"""A column whose largest value is at most this looks like kW/m², not W/m². [W/m²]"""


def read_irradiance_csv(path: str | Path, timezone: str | None = None, max_errors: int = 50) -> pd.DataFrame:
    """Read and validate an irradiance CSV.

    Parameters
    ----------
    path : str or Path
        The file: a timestamp column (interval starts, ISO 8601, with a UTC offset or in ``timezone``), one of
        ``ghi_w_m2`` / ``poa_w_m2``, optionally ``temp_air_c`` and ``wind_speed_m_s``.
    timezone : str, optional
        IANA zone of timestamps written without a UTC offset.
    max_errors : int
        Stop listing errors after this many.

    Returns
    -------
    pandas.DataFrame
        Index: the file's UTC interval starts (``step_minutes`` in ``attrs``); the irradiance column [W/m²]
        (negative night offsets set to 0) and the weather columns found.

    Raises
    ------
    DataError
        Naming every problem by row (file line, header = row 1) and column.
    """
    p = Path(path)
    source = str(p)
    _check_timezone(source, timezone)
    header, rows, lines, decimal_comma = _read_rows(p, source)
    names = [h.strip().lower() for h in header]
    ts_col = next((names.index(c) for c in TIMESTAMP_COLUMNS if c in names), None)
    if ts_col is None:
        raise DataError(source, [FieldError("(header)", f"no timestamp column: name one of "
                                                        f"{', '.join(TIMESTAMP_COLUMNS)} (found {', '.join(header)})")])
    found = [c for c in IRRADIANCE_COLUMNS if c in names]
    if len(found) != 1:
        why = "no column ghi_w_m2 or poa_w_m2" if not found else "both ghi_w_m2 and poa_w_m2: keep one"
        raise DataError(source, [FieldError("(header)", f"{why} (found {', '.join(header)})")])
    columns = [found[0], *(c for c in WEATHER_COLUMNS if c in names)]
    errors = _Errors(max_errors)
    for row, line in zip(rows, lines, strict=True):
        if len(row) != len(header):
            errors.add(f"row {line}", f"{len(row)} cells where the header has {len(header)}")
    errors.raise_if_any(source)

    ts_name = header[ts_col]
    ns = _parse_timestamps([r[ts_col] for r in rows], lines, ts_name, timezone, errors, source)
    valid = ns != np.iinfo(np.int64).min
    values = {c: _parse_numbers([r[names.index(c)] for r in rows], lines, header[names.index(c)], False, errors,
                                decimal_comma)
              for c in columns}
    step_ns = _file_step_ns(ns, valid, errors, source)
    _check_order(ns, valid, lines, ts_name, step_ns, errors)
    irradiance, column = values[found[0]], header[names.index(found[0])]
    for j in np.flatnonzero(irradiance < -NIGHT_OFFSET_W_M2):
        errors.add(f"row {lines[j]}, column {column}", f"negative irradiance {irradiance[j]:g} W/m²")
    for j in np.flatnonzero(irradiance > MAX_IRRADIANCE_W_M2):
        errors.add(f"row {lines[j]}, column {column}",
                   f"{irradiance[j]:g} W/m² is above the plausible bound {MAX_IRRADIANCE_W_M2:g} W/m²")
    finite = irradiance[np.isfinite(irradiance)]
    if len(finite) and 0 < finite.max() <= KW_M2_HINT:
        errors.add(f"column {column}", f"the largest value is {finite.max():g}: these look like kW/m²; "
                                       "write W/m² (× 1000)")
    for c in columns[1:]:
        lo, hi = WEATHER_COLUMNS[c]
        for j in np.flatnonzero((values[c] < lo) | (values[c] > hi)):
            errors.add(f"row {lines[j]}, column {header[names.index(c)]}",
                       f"{values[c][j]:g} is outside the plausible range {lo:g}..{hi:g}")
    errors.raise_if_any(source)

    order = np.argsort(ns, kind="stable")
    values[found[0]] = np.maximum(irradiance, 0.0)
    frame = pd.DataFrame({c: values[c][order] for c in columns},
                         index=pd.DatetimeIndex(pd.to_datetime(ns[order], unit="ns", utc=True), name="start"))
    frame.attrs["step_minutes"] = step_ns / 6e10
    return frame


def irradiance_pv_kw(frame: pd.DataFrame, site: SiteInfo, pv: PVSpec) -> np.ndarray:
    """AC power of the PV system per interval of an irradiance frame (:func:`read_irradiance_csv`).

    Each interval is evaluated at its middle. GHI is split into DNI and DHI with the Erbs model and transposed
    to the array's plane (Hay–Davies); POA is used as is. Cell temperature from ``temp_air_c`` and
    ``wind_speed_m_s`` where given, else the clear-sky model's constants (28 °C, 1 m/s). No degradation. [kW]
    """
    if len(frame) == 0 or pv.kwp == 0:
        return np.zeros(len(frame))
    step_minutes = float(frame.attrs.get("step_minutes", 60.0))
    times = frame.index.tz_convert("UTC") + pd.Timedelta(minutes=step_minutes / 2)
    temp_air = frame["temp_air_c"].to_numpy() if "temp_air_c" in frame else AMBIENT_TEMPERATURE_C
    wind = frame["wind_speed_m_s"].to_numpy() if "wind_speed_m_s" in frame else WIND_SPEED_M_S
    if "poa_w_m2" in frame:
        poa = frame["poa_w_m2"].to_numpy(dtype=float)
    else:
        poa = ghi_to_poa_w_m2(times, frame["ghi_w_m2"].to_numpy(dtype=float), site, pv)
    return ac_power_kw(poa, pv, temp_air, wind)


def ghi_to_poa_w_m2(times: pd.DatetimeIndex, ghi_w_m2: np.ndarray, site: SiteInfo, pv: PVSpec) -> np.ndarray:
    """Plane-of-array irradiance from GHI at the instants ``times``: Erbs decomposition, Hay–Davies. [W/m²]"""
    import pvlib  # see optimizer.solar

    loc = site.location
    location = pvlib.location.Location(loc.latitude, loc.longitude, tz="UTC", altitude=loc.altitude_m)
    with warnings.catch_warnings():  # pvlib 0.16 still calls DatetimeIndex.dayofyear, deprecated in pandas 3
        warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
        solpos = location.get_solarposition(times)
        dni_extra = pvlib.irradiance.get_extra_radiation(times)
        parts = pvlib.irradiance.erbs(ghi_w_m2, solpos["zenith"], times)
    return plane_of_array_w_m2(pv, solpos, np.nan_to_num(np.asarray(parts["dni"], dtype=float)), ghi_w_m2,
                               np.nan_to_num(np.asarray(parts["dhi"], dtype=float)), dni_extra)


def pv_from_irradiance(path: str | Path, site: SiteInfo, pv: PVSpec, step_minutes: int, timezone: str | None = None,
                       year: int | None = None) -> pd.Series:
    """PV AC power [kW] from an irradiance CSV, on UTC interval starts every ``step_minutes``.

    The file's step must be a whole multiple of ``step_minutes``; each interval's power is held over its
    sub-intervals (energy kept). ``year``: relabel the file's timestamps to that local calendar year, wrapping
    what falls outside it (a typical-meteorological-year file mixes years month by month); 29 February is dropped
    when ``year`` is not a leap year.
    """
    frame = read_irradiance_csv(path, timezone or site.timezone)
    file_step = float(frame.attrs["step_minutes"])
    if file_step % step_minutes:
        raise DataError(str(path), [FieldError("(file)", f"the file's step of {file_step:g} min is not a whole "
                                                         f"multiple of {step_minutes} min")])
    kw = pd.Series(irradiance_pv_kw(frame, site, pv), index=frame.index, name="pv_kw")
    if year is not None:
        kw = _relabel_year(kw, year, site.timezone)
    repeat = int(file_step // step_minutes)
    index = pd.DatetimeIndex(np.repeat(kw.index.as_unit("ns").asi8, repeat)
                             + np.tile(np.arange(repeat, dtype=np.int64) * step_minutes * 60_000_000_000, len(kw)))
    return pd.Series(np.repeat(kw.to_numpy(), repeat), index=pd.to_datetime(index, utc=True).rename("start"),
                     name="pv_kw")


def _relabel_year(kw: pd.Series, year: int, timezone: str) -> pd.Series:
    """``kw`` with each local timestamp moved to ``year`` (month, day and time kept), sorted."""
    local = kw.index.tz_convert(timezone).tz_localize(None)
    keep = ~((local.month == 2) & (local.day == 29)) if not pd.Timestamp(year=year, month=1, day=1).is_leap_year \
        else np.ones(len(local), dtype=bool)
    local = local[keep]
    moved = pd.to_datetime({"year": np.full(len(local), year), "month": local.month, "day": local.day,
                            "hour": local.hour, "minute": local.minute})
    index = pd.DatetimeIndex(moved).tz_localize(timezone, ambiguous="NaT", nonexistent="NaT").tz_convert("UTC")
    out = pd.Series(kw.to_numpy()[keep], index=index.rename("start"), name=kw.name)
    out = out[out.index.notna()]
    return out[~out.index.duplicated()].sort_index()
