"""Import measured load and PV series from CSV, validated, converted to kW on a UTC grid of ``step_minutes``.

Format and every validation rule with its message: docs/data.md. In short: one timestamp column (interval
starts, ISO 8601, with a UTC offset or in a declared time zone), one column per series named with its unit
(``load_kw`` or ``load_kwh``, ``pv_kw`` or ``pv_kwh``). Every problem found is collected (up to
``max_errors``) and raised together as :class:`DataError`, each naming the row (the file's line number,
header = row 1) and the column.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from ems.yamlfile import ConfigError, FieldError

TIMESTAMP_COLUMNS = ("timestamp", "time", "datetime", "start", "date", "start_utc", "start_local")
"""Accepted names of the timestamp column (case-insensitive); the first one present is used. ``start_utc`` and
``start_local`` are the dashboard's CSV download's (``/api/history.csv``), so a controller's own export is read back
by ``ems history import`` and a study as it comes."""
RATED_BOUND_FACTOR = 1.5
"""A value above this × the declared rating is absurd. [-]"""
MEDIAN_BOUND_FACTOR = 10.0
"""Without a rating, a value above this × the median of the positive values is absurd. [-]"""
_OFFSET = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE)
_NUMERIC_DATE = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?)?")
"""A date written day and month first, as spreadsheets and meter portals export it: 05/01/2026 08:00."""
DELIMITERS = (",", ";", "\t")
"""Cell separators recognised, told from the header line; a ``;`` or tab file may write decimal commas."""
_DECIMAL_COMMA = re.compile(r"[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?")


class DataError(ConfigError):
    """A data file is invalid; ``errors`` lists every problem found (up to the cap)."""


class _Errors:
    """Collects FieldErrors up to a cap."""

    def __init__(self, cap: int):
        self.cap = cap
        self.items: list[FieldError] = []
        self.dropped = 0

    def add(self, field: str, message: str) -> None:
        if len(self.items) < self.cap:
            self.items.append(FieldError(field, message))
        else:
            self.dropped += 1

    def _listed(self) -> list[FieldError]:
        more = [FieldError("(file)", f"{self.dropped} more error(s) not shown")] if self.dropped else []
        return self.items + more

    def fatal(self, source: str, field: str, message: str) -> DataError:
        """The error that stops the checks, listed after those already found."""
        return DataError(source, [*self._listed(), FieldError(field, message)])

    def raise_if_any(self, source: str) -> None:
        if self.items:
            raise DataError(source, self._listed())


PREAMBLE_LINES = 20
"""Non-blank lines looked through for the header: exports often open with a title, the customer, the meter."""


def _header_line(path: Path) -> tuple[int, str]:
    """(lines before the header, cell separator): the header is the first of the first :data:`PREAMBLE_LINES`
    non-blank lines that names a timestamp column (split at one of ``DELIMITERS``), else the first non-blank line,
    split at the separator it holds most of (``,`` on a tie)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        nonblank = [(i, line) for i, line in enumerate(f) if line.strip()][:PREAMBLE_LINES]
    for i, line in nonblank:
        for delimiter in sorted(DELIMITERS, key=line.count, reverse=True):
            cells = {c.strip().strip('"').lower() for c in line.split(delimiter)}
            if cells & set(TIMESTAMP_COLUMNS):
                return i, delimiter
    i, first = nonblank[0] if nonblank else (0, "")
    return i, delimiter_of(first)


def delimiter_of(line: str) -> str:
    """Of ``DELIMITERS``, the one ``line`` (a header) holds most of (``,`` on a tie)."""
    return max(DELIMITERS, key=lambda d: (line.count(d), d == ","))


def decimal_points(cells: list[str]) -> list[str]:
    """One column's cells of a ``;`` or tab file, numbers written with decimal points: where some cell has a
    decimal comma, ``1.234,5`` → ``1234.5`` (dots group thousands); a column without one as it is (``1.234``)."""
    if not any("," in c for c in cells):
        return cells
    return [c.replace(".", "").replace(",", ".") if _DECIMAL_COMMA.fullmatch(c) else c for c in cells]


def _read_rows(path: Path, source: str) -> tuple[list[str], list[list[str]], list[int], bool]:
    """Header, data rows, their line numbers and whether numbers may have decimal commas (a file separated by
    ``;`` or tabs, as a spreadsheet saves it where the comma is the decimal sign); blank lines and the lines
    above the header (:func:`_header_line`) are skipped."""
    try:
        skip, delimiter = _header_line(path)
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if reader.line_num <= skip or not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip() for cell in row]
                else:
                    rows.append(row)
                    lines.append(reader.line_num)
    except OSError as exc:
        raise DataError(source, [FieldError("(file)", exc.strerror or str(exc))]) from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(source, [FieldError("(file)", f"not a readable CSV file: {exc}")]) from exc
    if header is None:
        raise DataError(source, [FieldError("(file)", "the file is empty")])
    if not rows:
        raise DataError(source, [FieldError("(file)", "the file has a header but no data rows")])
    return header, rows, lines, delimiter != ","


LOAD_FROM_GRID = (("grid", 1),), (("import", 1), ("export", -1))
"""Columns a load may be derived from when the file has none: the grid meter's net power (import +, export −), or
its import and export apart; the load is then the grid's net power plus the PV measured in the same file."""


def _unit_column(lower: list[str], name: str, unit: Literal["kW", "kWh"] | None) -> list[tuple[int, str]]:
    """(index, unit) of the columns that could hold series ``name``: ``<name>_kw``, ``<name>_kwh``, and ``<name>``
    alone in ``unit`` when it is given."""
    candidates = [(lower.index(f"{name}_kw"), "kW")] if f"{name}_kw" in lower else []
    if f"{name}_kwh" in lower:
        candidates.append((lower.index(f"{name}_kwh"), "kWh"))
    if unit is not None and name in lower:
        candidates.append((lower.index(name), unit))
    return candidates


def _find_columns(header: list[str], columns: Sequence[str], unit: Literal["kW", "kWh"] | None,
                  source: str) -> tuple[int, dict[str, list[tuple[int, str, int, str]]]]:
    """Index of the timestamp column and, per series, its parts: (column index, unit, sign, quantity) — the series'
    own column with sign +1, or for a load the file does not have, the grid columns it is derived from
    (:data:`LOAD_FROM_GRID`)."""
    lower = [h.lower() for h in header]
    errors: list[FieldError] = []
    ts = next((lower.index(n) for n in TIMESTAMP_COLUMNS if n in lower), None)
    if ts is None:
        errors.append(FieldError("(header)", f"no timestamp column: name one of {', '.join(TIMESTAMP_COLUMNS)} "
                                             f"(found {', '.join(header)})"))
    found: dict[str, list[tuple[int, str, int, str]]] = {}
    for name in columns:
        candidates = _unit_column(lower, name, unit)
        if len(candidates) == 1:
            found[name] = [(*candidates[0], 1, name)]
        elif candidates:
            names = ", ".join(header[i] for i, _ in candidates)
            errors.append(FieldError("(header)", f"more than one column for {name}: {names}; keep one"))
        elif name == "load" and (parts := _load_from_grid(lower, header, unit, grid_errors := [])):
            found[name] = parts
        elif name == "load" and grid_errors:  # two columns for a grid quantity: said, not "no column"
            errors += grid_errors
        else:
            wanted = f"{name}_kw or {name}_kwh" + (f" (or {name} with unit={unit})" if unit else "")
            if name == "load":
                wanted += ("; or the grid meter's grid_kw or grid_kwh (import +, export −), or import_kw and "
                           "export_kw (or _kwh), with the load derived from them and the PV")
            errors.append(FieldError("(header)", f"no column {wanted} (found {', '.join(header)})"))
    if errors:
        raise DataError(source, errors)
    assert ts is not None
    return ts, found


def _load_from_grid(lower: list[str], header: list[str], unit: Literal["kW", "kWh"] | None,
                    errors: list[FieldError]) -> list[tuple[int, str, int, str]] | None:
    """The grid columns of :data:`LOAD_FROM_GRID` the file has (the first form complete), else None; a form with
    two columns for one quantity is an error."""
    for form in LOAD_FROM_GRID:
        parts = []
        for name, sign in form:
            candidates = _unit_column(lower, name, unit)
            if len(candidates) > 1:
                names = ", ".join(header[i] for i, _ in candidates)
                errors.append(FieldError("(header)", f"more than one column for {name}: {names}; keep one"))
                return None
            parts += [(*c, sign, name) for c in candidates]
        if len(parts) == len(form):
            return parts
    return None


def _runs_day_by_day(dates: list[tuple[int, int, int]]) -> bool:
    """Whether (year, month, day) triples are valid dates, each the same as or the day after the one before (or
    each the same or the day before: a file written newest first)."""
    try:
        ordinals = np.array([date(*d).toordinal() for d in dates])
    except ValueError:
        return False
    steps = np.diff(ordinals)
    return bool(np.all((steps >= 0) & (steps <= 1)) or np.all((steps <= 0) & (steps >= -1)))


def _numeric_dates_as_iso(cells: list[str], column: str, source: str) -> list[str]:
    """Cells written ``DD/MM/YYYY[ HH:MM[:SS]]`` (``/``, ``.`` or ``-`` between the parts) as ISO 8601.

    Day or month first is told from the column itself: a first part above 12 is a day, a second part above 12 is a
    day; where every part is 12 or less, the reading whose dates follow each other a day at most apart (a series on a
    step shorter than a day). A column where nothing tells is refused (05/01/2026 alone could be 5 January or 4 May);
    so is one where both do. Cells of another form are left for the ISO 8601 parser.
    """
    matches = [_NUMERIC_DATE.fullmatch(c) for c in cells]
    found = [m for m in matches if m is not None]
    if not found:
        return cells
    day_first = any(int(m[1]) > 12 for m in found)
    month_first = any(int(m[3]) > 12 for m in found)
    why = "some dates have the day first and others the month first" if day_first and month_first else ""
    if not day_first and not month_first:  # every part ≤ 12: the reading whose dates run day by day
        day_first = _runs_day_by_day([(int(m[4]), int(m[3]), int(m[1])) for m in found])
        month_first = _runs_day_by_day([(int(m[4]), int(m[1]), int(m[3])) for m in found])
        if day_first == month_first:
            why = f"{found[0][0]!r}: no date in the file tells whether the day or the month comes first"
    if why:
        raise DataError(source, [FieldError(f"column {column}", f"{why}; write ISO 8601 timestamps "
                                                                "(year-month-day, e.g. 2026-01-05 08:00)")])
    out = []
    for cell, m in zip(cells, matches, strict=True):
        if m is None:
            out.append(cell)
            continue
        day, month = (m[1], m[3]) if day_first else (m[3], m[1])
        time = f"T{int(m[5]):02d}:{m[6]}:{m[7] or '00'}" if m[5] is not None else ""
        out.append(f"{m[4]}-{int(month):02d}-{int(day):02d}{time}")
    return out


LOAD_MISMATCH_KW = 1.0
LOAD_MISMATCH_PV_FRACTION = 0.02
"""A load derived from the grid and the PV a little below 0 — by up to the larger of LOAD_MISMATCH_KW and this share
of the PV — is two instruments disagreeing, read as 0 kW; further below 0 it is an error. [kW], [-]"""


def _load_from_grid_kw(grid_kw: np.ndarray, pv_kw: np.ndarray | None, grid_columns: list[str],
                       pv_column: str | None, lines: list[int], errors: _Errors) -> np.ndarray:
    """The load from the grid meter's net import [kW] and the PV measured in the same file (none: a site without
    PV, the load is the grid's import): ``grid + pv``, within the meters' mismatch of 0 taken as 0. [kW]"""
    load = grid_kw + (pv_kw if pv_kw is not None else 0.0)
    pv = pv_kw if pv_kw is not None else np.zeros_like(grid_kw)
    tolerance = np.maximum(LOAD_MISMATCH_KW, LOAD_MISMATCH_PV_FRACTION * np.nan_to_num(pv))
    grid_name = " − ".join(grid_columns) + (" =" if len(grid_columns) > 1 else "")
    for j in np.flatnonzero(load < -tolerance):
        pv_text = f" + {pv_column} {pv[j]:g} kW" if pv_column else ""
        errors.add(f"row {lines[j]}, column {grid_columns[0]}",
                   f"the load derived from the grid is {load[j]:.4g} kW, below 0 ({grid_name} {grid_kw[j]:g} kW"
                   f"{pv_text}): the meters disagree, or the grid's sign is the other way (import is +)")
    return np.where(load < 0, np.where(load >= -tolerance, 0.0, load), load)


_HOUR_24 = re.compile(r"(\d{4}-\d{2}-\d{2})([T ]+)24:00(:00)?(.*)")


def _hour_24_as_midnight(cell: str) -> str:
    """``2026-01-05 24:00`` (the end of 5 January, as meter exports write the end of a day's last interval) as
    ``2026-01-06 00:00``; other cells as they are."""
    m = _HOUR_24.fullmatch(cell)
    if m is None:
        return cell
    try:
        next_day = date.fromisoformat(m[1]) + timedelta(days=1)
    except ValueError:
        return cell
    return f"{next_day.isoformat()}{m[2]}00:00{m[4]}"


def _parse_timestamps(cells: list[str], lines: list[int], column: str, timezone: str | None,
                      errors: _Errors, source: str) -> np.ndarray:
    """UTC epoch nanoseconds per row; invalid rows are reported and get the int64 minimum. Dates written day and
    month first (05/01/2026 08:00) are read as :func:`_numeric_dates_as_iso` says, 24:00 as the next midnight."""
    n = len(cells)
    written = [c.strip() for c in cells]
    stripped = [_hour_24_as_midnight(c) for c in _numeric_dates_as_iso(written, column, source)]
    has_offset = np.fromiter((bool(_OFFSET.search(c)) and len(c) > 10 for c in stripped), dtype=bool, count=n)
    out = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    if has_offset.any():
        aware = pd.to_datetime([c for c, o in zip(stripped, has_offset, strict=True) if o], format="ISO8601",
                               utc=True, errors="coerce")
        out[has_offset] = np.where(aware.isna(), out[has_offset], aware.as_unit("ns").asi8)
    naive_rows = np.flatnonzero(~has_offset)
    if len(naive_rows) and has_offset.any():  # a mix is refused whatever the file's time zone: which is meant?
        parsed = pd.to_datetime([stripped[i] for i in naive_rows], format="ISO8601", errors="coerce")
        for j, i in enumerate(naive_rows):
            if not pd.isna(parsed[j]):
                errors.add(f"row {lines[i]}, column {column}",
                           f"{stripped[i]!r} has no UTC offset while other rows have one")
    elif len(naive_rows) and timezone is None:
        raise DataError(source, [FieldError(
            f"column {column}", "timestamps carry no UTC offset: give the file's time zone (timezone=...) "
                                "or write offsets such as 2026-01-01T00:00+07:00")])
    elif len(naive_rows):
        naive = pd.DatetimeIndex(pd.to_datetime([stripped[i] for i in naive_rows], format="ISO8601",
                                                errors="coerce"))
        early = naive.tz_localize(timezone, ambiguous=np.ones(len(naive), dtype=bool), nonexistent="NaT")
        late = naive.tz_localize(timezone, ambiguous=np.zeros(len(naive), dtype=bool), nonexistent="NaT")
        for j, i in enumerate(naive_rows):
            if naive.isna()[j]:
                continue
            if early.isna()[j]:
                errors.add(f"row {lines[i]}, column {column}",
                           f"{written[i]} does not exist in {timezone} (skipped by a daylight-saving change)")
            elif early[j] != late[j]:
                errors.add(f"row {lines[i]}, column {column}",
                           f"{written[i]} is ambiguous in {timezone} (repeated by a daylight-saving change); "
                           "write timestamps with UTC offsets")
            else:
                out[i] = early[j].value
    bad = np.flatnonzero(out == np.iinfo(np.int64).min)
    for i in bad:
        value = stripped[i]
        if value == "" or pd.isna(pd.to_datetime(value, format="ISO8601", errors="coerce", utc=bool(has_offset[i]))):
            errors.add(f"row {lines[i]}, column {column}",
                       f"{written[i]!r} is not an ISO 8601 timestamp" if value else "empty timestamp")
    return out


def _parse_numbers(cells: list[str], lines: list[int], column: str, allow_missing: bool,
                   errors: _Errors, decimal_comma: bool = False) -> np.ndarray:
    """Floats per row; empty cells are NaN (an error unless ``allow_missing``); text is an error.

    With ``decimal_comma`` a cell may write ``1.234,5`` (dots grouping thousands, a comma before the decimals): in a
    column where some cell has a decimal comma, ``1.234`` is 1234; in a column with none, the dot is the decimal sign.
    """
    stripped = [c.strip() for c in cells]
    if decimal_comma:
        stripped = decimal_points(stripped)
    values = pd.to_numeric(pd.Series(stripped, dtype=object).replace("", np.nan), errors="coerce")
    values = values.to_numpy(dtype=float, copy=True)
    for i in np.flatnonzero(~np.isfinite(values)):
        if stripped[i] == "":
            if not allow_missing:
                errors.add(f"row {lines[i]}, column {column}", "empty cell")
        else:
            errors.add(f"row {lines[i]}, column {column}", f"{stripped[i]!r} is not a number")
            values[i] = np.nan
    return values


def _in_time_order(ns: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Indices of the valid rows in the file's order, or in reverse where every timestamp is earlier than the one
    above it (a file written newest first, as some meter portals export)."""
    rows = np.flatnonzero(valid)
    return rows[::-1] if len(rows) > 1 and np.all(np.diff(ns[rows]) < 0) else rows


def _file_step_ns(ns: np.ndarray, valid: np.ndarray, errors: _Errors, source: str) -> int:
    """The file's step: the most common positive difference between consecutive valid timestamps (in time order
    for a file written newest first)."""
    diffs = np.diff(ns[_in_time_order(ns, valid)])
    diffs = diffs[diffs > 0]
    if len(diffs) == 0:
        raise errors.fatal(source, "(file)", "need at least two distinct valid timestamps to tell the step")
    values, counts = np.unique(diffs, return_counts=True)
    return int(values[np.argmax(counts)])


def _check_timezone(source: str, timezone: str | None) -> None:
    """:class:`DataError` unless ``timezone`` is None or a known IANA zone."""
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise DataError(source, [FieldError("timezone", f"unknown IANA time zone {timezone!r}")]) from exc


def _check_order(ns: np.ndarray, valid: np.ndarray, lines: list[int], ts_name: str, step_ns: int,
                 errors: _Errors, allow_gaps: bool = False) -> None:
    """Duplicates, timestamps going backwards, off-step rows and (unless ``allow_gaps``) gaps, each reported
    at its row; a file written newest first throughout is checked from its last row up."""
    first_row: dict[int, int] = {}
    previous = None
    for i in _in_time_order(ns, valid):
        t = int(ns[i])
        field = f"row {lines[i]}, column {ts_name}"
        if t in first_row:
            errors.add(field, f"duplicate timestamp (same instant as row {first_row[t]})")
            continue
        first_row[t] = lines[i]
        if previous is not None:
            delta = t - int(ns[previous])
            if delta < 0:
                errors.add(field, f"timestamps go backwards (row {lines[previous]} is later)")
            elif delta % step_ns:
                errors.add(field, f"{delta / 6e10:g} min after row {lines[previous]}: not on the file's "
                                  f"{step_ns / 6e10:g}-minute step")
            elif delta > step_ns and not allow_gaps:
                errors.add(field, f"gap: {delta // step_ns - 1} missing interval(s) after row {lines[previous]}")
        previous = i


def site_ratings(columns: Sequence[str], pv_rating_kw: float, import_cap_kw: float | None,
                 pv_ac_kw: float) -> dict[str, float]:
    """What a site's measured series are checked against (× :data:`RATED_BOUND_FACTOR`), so that W written for kW is
    refused: the PV against the plant it was measured on (``pv_rating_kw``), the load against what the factory can
    draw (the contracted capacity ``import_cap_kw`` plus the PV's AC limit ``pv_ac_kw``) where one is stated. One
    rule for the studies' data and the controller's history import. [kW]"""
    rated = {}
    if "pv" in columns and pv_rating_kw > 0:
        rated["pv"] = pv_rating_kw
    if import_cap_kw is not None:
        rated["load"] = import_cap_kw + pv_ac_kw
    return rated


def series_columns(path: str | Path, name: str) -> list[str]:
    """The columns of the file's header that hold series ``name`` (``pv_kw``, ``pv_kwh``; any case); empty when none
    does or the file cannot be read (:func:`read_series_csv` then says why)."""
    p = Path(path)
    try:
        skip, delimiter = _header_line(p)
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next((row for row in reader if reader.line_num > skip and any(c.strip() for c in row)), [])
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    return [h.strip() for h in header if h.strip().lower() in (f"{name}_kw", f"{name}_kwh")]


def read_series_csv(path: str | Path, timezone: str | None = None, step_minutes: int = 15,
                    columns: Sequence[str] = ("pv", "load"), unit: Literal["kW", "kWh"] | None = None,
                    rated_kw: Mapping[str, float] | None = None, allow_gaps: bool = False,
                    max_errors: int = 50, optional_plain: Sequence[str] = (),
                    timestamps_at: Literal["start", "end"] = "start") -> pd.DataFrame:
    """Read measured series from a CSV file.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    timezone : str, optional
        IANA zone of timestamps written without a UTC offset (offsets, where present, win).
    step_minutes : int
        Target step; the file's step must be a whole multiple of it (15-minute or hourly files) or a whole part of
        it (1- or 5-minute files, averaged over each target step). [min]
    columns : sequence of str
        Series to read, e.g. ``("pv", "load")``; each becomes a ``<name>_kw`` output column.
    unit : "kW" or "kWh", optional
        Unit of columns named without one (``load``); a column named with its unit (``load_kwh``) keeps it.
    rated_kw : mapping, optional
        Rating per series (e.g. ``{"pv": 900, "load": 1500}``) for the plausibility bound. [kW]
    allow_gaps : bool
        If true, missing intervals and empty cells become NaN instead of errors.
    max_errors : int
        Stop listing errors after this many.
    timestamps_at : "start" or "end"
        What each timestamp labels: its interval's start (the convention) or its end, as many meter exports write
        (00:15 for 00:00–00:15, 24:00 for the day's last quarter hour); ends are moved back one file step.
    optional_plain : sequence of str
        Columns read when the file has them (e.g. ``import_price``), as numbers in their own unit under their own
        name: every cell a number, no sign or plausibility check; held over the quarter hours of a longer step.

    Returns
    -------
    pandas.DataFrame
        Index: UTC interval starts every ``step_minutes``; columns ``<name>_kw`` [kW], then the
        ``optional_plain`` columns found. An hourly kW value is held over its four quarter hours; an hourly kWh
        value is split evenly; values of a finer file are averaged over each step (a step less than half measured
        is NaN). ``attrs["file_step_minutes"]``: the file's own step. [min]

    Raises
    ------
    DataError
        Naming every problem by row (file line, header = row 1) and column.
    """
    p = Path(path)
    source = str(p)
    _check_timezone(source, timezone)
    if step_minutes <= 0:
        raise ValueError("step_minutes must be positive")
    header, rows, lines, decimal_comma = _read_rows(p, source)
    ts_col, found = _find_columns(header, columns, unit, source)
    errors = _Errors(max_errors)
    width = len(header)
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            errors.add(f"row {line}", f"{len(row)} cells where the header has {width}")
    errors.raise_if_any(source)

    ts_name = header[ts_col]
    ns = _parse_timestamps([r[ts_col] for r in rows], lines, ts_name, timezone, errors, source)
    valid = ns != np.iinfo(np.int64).min
    raw = {i: _parse_numbers([r[i] for r in rows], lines, header[i], allow_gaps, errors, decimal_comma)
           for parts in found.values() for i, *_ in parts}
    lower = [h.lower() for h in header]
    plain = {name: _parse_numbers([r[lower.index(name)] for r in rows], lines, header[lower.index(name)],
                                  allow_gaps, errors, decimal_comma)
             for name in optional_plain if name in lower}
    step_ns = _file_step_ns(ns, valid, errors, source)
    if timestamps_at == "end":
        ns[valid] -= step_ns
    target_ns = step_minutes * 60 * 1_000_000_000
    if step_ns % target_ns and target_ns % step_ns:
        raise errors.fatal(source, f"column {ts_name}", f"the file's step of {step_ns / 6e10:g} min is not a whole "
                                                        f"multiple of {step_minutes} min, nor a whole part of it")
    _check_order(ns, valid, lines, ts_name, step_ns, errors, allow_gaps=allow_gaps)
    step_h = step_ns / 3.6e12
    kw: dict[str, np.ndarray] = {}
    for name in sorted(found, key=lambda n: found[n][0][3] != n):  # a load derived from the grid after the PV
        parts = found[name]
        part_kw = []
        for i, col_unit, sign, quantity in parts:
            values = raw[i] / step_h if col_unit == "kWh" else raw[i]
            if quantity != "grid":  # the grid's net power is signed
                for j in np.flatnonzero(values < 0):
                    errors.add(f"row {lines[j]}, column {header[i]}", f"negative value {raw[i][j]:g}")
            part_kw.append(sign * values)
        values = np.sum(part_kw, axis=0)
        derived = parts[0][3] != name
        if derived:
            values = _load_from_grid_kw(values, kw.get("pv"), [header[i] for i, *_ in parts],
                                        header[found["pv"][0][0]] if "pv" in found else None, lines, errors)
        column = header[parts[0][0]]
        rating = None if rated_kw is None else rated_kw.get(name)
        positive = values[np.isfinite(values) & (values > 0)]
        if rating is not None:
            bound, why = RATED_BOUND_FACTOR * rating, f"{RATED_BOUND_FACTOR:g} × rated {rating:g} kW"
        elif len(positive):
            median = float(np.median(positive))
            bound, why = MEDIAN_BOUND_FACTOR * median, f"{MEDIAN_BOUND_FACTOR:g} × the median {median:.4g} kW"
        else:
            bound, why = np.inf, ""
        above = np.flatnonzero(values > bound)
        col_unit = parts[0][1]
        as_kw_fits = (len(above) > 0 and not derived and col_unit == "kWh" and rating is not None
                      and np.nanmax(raw[parts[0][0]]) <= bound)
        for j in above:
            hint = f"; these look like kW: name the column {name}_kw" if as_kw_fits else ""
            what = f"{name} derived from {column} is" if derived else ""
            errors.add(f"row {lines[j]}, column {column}",
                       f"{what + ' ' if what else ''}{values[j]:.4g} kW{'' if what else ' is'} above the plausible "
                       f"bound {bound:.4g} kW ({why}){hint}")
        kw[name] = values
    errors.raise_if_any(source)

    order = np.argsort(ns, kind="stable")
    ns = ns[order]
    series = {f"{name}_kw": values[order] for name, values in kw.items()} | {n: v[order] for n, v in plain.items()}
    to_step = _step_means if step_ns < target_ns else _held_over
    frame = to_step(ns, series, step_ns, target_ns)
    frame.attrs["file_step_minutes"] = step_ns / 6e10
    return frame


def _held_over(ns: np.ndarray, series: Mapping[str, np.ndarray], step_ns: int, target_ns: int) -> pd.DataFrame:
    """Series on a coarser step (a whole multiple of ``target_ns``; ``ns`` sorted interval starts [ns since the
    epoch, UTC]) on the target steps: each value held over its interval's target steps, a missing interval NaN."""
    repeat = step_ns // target_ns
    span = np.arange(ns[0], ns[-1] + step_ns, step_ns, dtype=np.int64)
    position = (ns - ns[0]) // step_ns
    out_index = pd.DatetimeIndex(pd.to_datetime(
        np.repeat(span, repeat) + np.tile(np.arange(repeat, dtype=np.int64) * target_ns, len(span)),
        unit="ns", utc=True), name="start")
    data = {}
    for name, values in series.items():
        full = np.full(len(span), np.nan)
        full[position] = values
        data[name] = np.repeat(full, repeat)
    return pd.DataFrame(data, index=out_index)


MEASURED_SHARE = 0.5
"""A target step read from a finer file is measured when at least this share of its sub-intervals is. [-]"""


def _step_means(ns: np.ndarray, series: Mapping[str, np.ndarray], step_ns: int, target_ns: int) -> pd.DataFrame:
    """Series on a finer step (``step_ns`` divides ``target_ns``; ``ns`` sorted interval starts [ns since the epoch,
    UTC]) as the mean of each target step, the steps on the clock (multiples of ``target_ns``): a 15-minute step is
    the mean power of its 1- or 5-minute intervals. A step whose measured sub-intervals are fewer than
    :data:`MEASURED_SHARE` of it is not measured (NaN), never 0."""
    bins = ns // target_ns
    first = int(bins[0])
    slot = bins - first
    size = int(bins[-1]) - first + 1
    needed = MEASURED_SHARE * (target_ns // step_ns)
    data = {}
    for name, values in series.items():
        ok = np.isfinite(values)
        sums = np.bincount(slot[ok], weights=values[ok], minlength=size)
        counts = np.bincount(slot[ok], minlength=size)
        data[name] = np.where(counts >= needed, sums / np.maximum(counts, 1), np.nan)
    starts = (first + np.arange(size, dtype=np.int64)) * target_ns
    return pd.DataFrame(data, index=pd.DatetimeIndex(pd.to_datetime(starts, unit="ns", utc=True), name="start"))
