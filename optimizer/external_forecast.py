"""Forecasts from outside (a weather service, the plant's own forecaster): validation, expiry and fallback.

A forecast is a JSON object (REST body, MQTT payload) or a CSV file (docs/data.md, "External forecasts")::

    {"source": "solcast", "issued_at": "2026-06-01T05:00:00+07:00", "valid_hours": 6,
     "start": "2026-06-01T05:00:00+07:00", "step_minutes": 15, "unit": "kW",
     "pv_kw": [0, 0, 12.5, ...], "load_kw": [410, 405, ...]}

``pv_kw`` and/or ``load_kw`` (at least one; equal lengths), values at interval starts ``start + i · step``.
Each may come with its uncertainty band, as weather services give it (Solcast's ``pv_estimate10``/``90``):
``pv_kw_p10`` and ``pv_kw_p90`` (``load_kw_p10``/``load_kw_p90``), the 10 % and 90 % quantiles per step, both or
neither, the same length as their quantity, ``p10 ≤ value ≤ p90``. With a band the planner takes its quantiles
(the surplus-day rule, the demand reserve's risk) from the forecast itself (:meth:`ExternalForecasts.quantiles`);
without one the surplus-day rule stands aside while the forecast is used.
``unit`` is ``kW`` (default) or ``W`` (divided by 1000). Refused, with a message naming the field: a missing or
zone-less timestamp, ``issued_at`` in the future, ``start`` off the step lattice or more than a day before
``issued_at``, a horizon of more than :data:`MAX_HORIZON_H`, a non-finite value, negative PV or load, PV above
``pv_limit_kw``, a validity outside (0, :data:`MAX_VALID_HOURS`], a forecast already expired when it arrives.

A forecast expires ``valid_hours`` after ``issued_at`` (default :data:`DEFAULT_VALID_HOURS`); the newest valid
one per quantity is used for the steps it covers and the built-in model everywhere else (:meth:`ExternalForecasts.
blend`), so an expired or absent forecast falls back to the built-in models without any action.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from ems.series_csv import decimal_points, delimiter_of
from ems.yamlfile import unknown_field
from optimizer.forecast import History
from optimizer.service import PEAK_RISK_LEVEL, net_load_risk_kw
from optimizer.timegrid import TimeGrid

#: Longest horizon accepted. [h]
MAX_HORIZON_H = 7 * 24.0
#: Longest validity accepted. [h]
MAX_VALID_HOURS = 48.0
#: Validity when the forecast gives none. [h]
DEFAULT_VALID_HOURS = 6.0
#: ``issued_at`` may lie this far in the future (clock skew between hosts). [s]
CLOCK_SKEW_S = 300.0
#: Quantities a forecast may carry.
QUANTITIES = ("pv_kw", "load_kw")
#: Probability levels of a quantity's band: fields ``<quantity>_p10`` and ``<quantity>_p90``. [-]
BAND_LEVELS = (0.1, 0.9)
#: Band fields per quantity, lower then upper.
BANDS = {name: (f"{name}_p10", f"{name}_p90") for name in QUANTITIES}
#: Fields holding values per step: each quantity followed by its band.
VALUE_FIELDS = tuple(field for name in QUANTITIES for field in (name, *BANDS[name]))
#: Fields a forecast may carry.
FIELDS = ("source", "issued_at", "valid_hours", "start", "step_minutes", "unit", *VALUE_FIELDS)
#: Tolerance of the ordering check ``p10 ≤ value ≤ p90`` (rounding in the sender's serialisation). [kW]
BAND_TOL_KW = 1e-6
_Z_BAND = NormalDist().inv_cdf(BAND_LEVELS[1])
_UNITS = {"kW": 1.0, "W": 1e-3}


class ForecastInputError(ValueError):
    """An external forecast was refused; the message names the field and what is wrong."""


@dataclass(frozen=True)
class ExternalForecast:
    """One accepted external forecast. Times UTC; values [kW] at interval starts ``start + i · step``, per
    quantity and band field (``values["pv_kw_p10"]``…)."""

    source: str
    issued_at: datetime
    expires_at: datetime
    start: datetime
    step_minutes: int
    values: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def end(self) -> datetime:
        """End of the last interval covered (UTC)."""
        n = max(len(v) for v in self.values.values())
        return self.start + timedelta(minutes=self.step_minutes * n)

    def expired(self, now: datetime) -> bool:
        """True from ``expires_at`` on."""
        return now >= self.expires_at

    @property
    def quantities(self) -> tuple[str, ...]:
        """The quantities forecast (``pv_kw``, ``load_kw``), without their bands."""
        return tuple(name for name in QUANTITIES if name in self.values)

    def has_band(self, quantity: str) -> bool:
        """True when ``quantity`` came with its P10/P90 band."""
        return BANDS[quantity][0] in self.values

    def to_payload(self) -> dict:
        """The forecast as a payload :func:`parse_forecast` accepts (times ISO 8601 UTC, values in kW): what the
        controller stores to resume it after a restart (:meth:`ExternalForecasts.restore`)."""
        return {"source": self.source, "issued_at": self.issued_at.isoformat(),
                "valid_hours": (self.expires_at - self.issued_at).total_seconds() / 3600.0,
                "start": self.start.isoformat(), "step_minutes": self.step_minutes, "unit": "kW",
                **{name: self.values[name].tolist() for name in VALUE_FIELDS if name in self.values}}


@dataclass(frozen=True)
class SubmitResult:
    """What :meth:`ExternalForecasts.submit` did: accepted or the reason why not."""

    accepted: bool
    error: str | None = None
    source: str | None = None
    quantities: tuple[str, ...] = ()
    steps: int = 0
    expires_at: datetime | None = None

    def as_dict(self) -> dict:
        """JSON-ready form (timestamps ISO 8601 UTC)."""
        return {"accepted": self.accepted, "error": self.error, "source": self.source,
                "quantities": list(self.quantities), "steps": self.steps,
                "expires_at": None if self.expires_at is None else self.expires_at.isoformat()}


def _time(payload: dict, name: str) -> datetime:
    raw = payload.get(name)
    if not isinstance(raw, str):
        raise ForecastInputError(f"{name}: an ISO 8601 timestamp with a UTC offset is required, got {raw!r}")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ForecastInputError(f"{name}: not an ISO 8601 timestamp: {raw!r}") from exc
    if value.tzinfo is None or value.utcoffset() is None:
        raise ForecastInputError(f"{name}: {raw!r} has no UTC offset (e.g. +07:00 or Z)")
    return value.astimezone(UTC)


def _number(payload: dict, name: str, default: float, low: float, high: float) -> float:
    raw = payload.get(name, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or not low < raw <= high:
        raise ForecastInputError(f"{name}: a number in ({low:g}, {high:g}] is required, got {raw!r}")
    return float(raw)


def parse_forecast(payload: object, now: datetime, pv_limit_kw: float | None = None) -> ExternalForecast:
    """Validate an external forecast (module docstring) received at ``now`` (UTC).

    Raises
    ------
    ForecastInputError
        Naming the first field that is wrong.
    """
    if not isinstance(payload, dict):
        raise ForecastInputError(f"the forecast must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise ForecastInputError("; ".join(f"{key}: {unknown_field(str(key), FIELDS)}" for key in unknown))
    source = payload.get("source", "external")
    if not isinstance(source, str) or not source.strip() or len(source) > 64:
        raise ForecastInputError(f"source: a name of 1–64 characters is required, got {source!r}")
    issued = _time(payload, "issued_at")
    if (issued - now).total_seconds() > CLOCK_SKEW_S:
        raise ForecastInputError(f"issued_at: {issued.isoformat()} is in the future (now {now.isoformat()})")
    valid_h = _number(payload, "valid_hours", DEFAULT_VALID_HOURS, 0.0, MAX_VALID_HOURS)
    start = _time(payload, "start")
    step = payload.get("step_minutes", 15)
    if isinstance(step, bool) or not isinstance(step, int) or step not in (5, 10, 15, 30, 60):
        raise ForecastInputError(f"step_minutes: one of 5, 10, 15, 30, 60 is required, got {step!r}")
    if int(start.timestamp()) % (step * 60) or start.microsecond:
        raise ForecastInputError(f"start: {start.isoformat()} is not on the {step}-minute lattice")
    if start < issued - timedelta(days=1):
        raise ForecastInputError(f"start: {start.isoformat()} is more than a day before issued_at")
    unit = payload.get("unit", "kW")
    if unit not in _UNITS:
        raise ForecastInputError(f"unit: 'kW' or 'W' is required, got {unit!r}")
    values: dict[str, np.ndarray] = {}
    for name in VALUE_FIELDS:
        if name not in payload:
            continue
        raw = payload[name]
        if not isinstance(raw, list) or not raw:
            raise ForecastInputError(f"{name}: a non-empty list of numbers is required")
        if any(isinstance(x, bool) or not isinstance(x, int | float) for x in raw):
            bad = next(i for i, x in enumerate(raw) if isinstance(x, bool) or not isinstance(x, int | float))
            raise ForecastInputError(f"{name}[{bad}]: a number is required, got {raw[bad]!r}")
        arr = np.asarray(raw, dtype=float) * _UNITS[unit]
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise ForecastInputError(f"{name}[{int(bad[0])}]: not a finite number")
        bad = np.flatnonzero(arr < 0)
        if len(bad):
            raise ForecastInputError(f"{name}[{int(bad[0])}]: {raw[int(bad[0])]} {unit} is negative")
        if name.startswith("pv_kw") and pv_limit_kw is not None:
            bad = np.flatnonzero(arr > pv_limit_kw * 1.000001)
            if len(bad):
                raise ForecastInputError(f"{name}[{int(bad[0])}]: {arr[bad[0]]:g} kW is above the PV AC limit "
                                         f"{pv_limit_kw:g} kW (is the unit right?)")
        if len(arr) * step / 60 > MAX_HORIZON_H:
            raise ForecastInputError(f"{name}: {len(arr)} steps of {step} min exceed the {MAX_HORIZON_H:g} h horizon")
        values[name] = arr
    if not any(name in values for name in QUANTITIES):
        raise ForecastInputError(f"no forecast values: give {' and/or '.join(QUANTITIES)}")
    _check_bands(values)
    lengths = {len(values[name]) for name in QUANTITIES if name in values}
    if len(lengths) > 1:
        raise ForecastInputError(f"pv_kw and load_kw have different lengths {sorted(lengths)}")
    expires = issued + timedelta(hours=valid_h)
    if expires <= now:
        raise ForecastInputError(f"valid_hours: the forecast issued at {issued.isoformat()} expired at "
                                 f"{expires.isoformat()} (now {now.isoformat()})")
    return ExternalForecast(source=source, issued_at=issued, expires_at=expires, start=start, step_minutes=step,
                            values=values)


def _check_bands(values: dict[str, np.ndarray]) -> None:
    """A band needs its quantity, both its fields, their lengths and ``p10 ≤ value ≤ p90`` per step."""
    for name, (low, high) in BANDS.items():
        given = [band for band in (low, high) if band in values]
        if not given:
            continue
        if name not in values:
            raise ForecastInputError(f"{given[0]}: a band needs {name} itself")
        if len(given) == 1:
            missing = high if given[0] == low else low
            raise ForecastInputError(f"{missing}: {given[0]} was given, a band needs both {low} and {high}")
        for band in (low, high):
            if len(values[band]) != len(values[name]):
                raise ForecastInputError(f"{band}: {len(values[band])} values, {name} has {len(values[name])}")
        for band, below, above in ((low, values[low], values[name]), (high, values[name], values[high])):
            bad = np.flatnonzero(below > above + BAND_TOL_KW)
            if len(bad):
                i = int(bad[0])
                raise ForecastInputError(f"{band}[{i}]: {values[band][i]:g} kW lies on the wrong side of {name} "
                                         f"{values[name][i]:g} kW (need {low} ≤ {name} ≤ {high})")


def band_quantiles(point: np.ndarray, p10: np.ndarray, p90: np.ndarray, levels: Sequence[float],
                   upper: float | None = None) -> np.ndarray:
    """Quantiles at ``levels`` from a forecast and its P10/P90 band, as a split normal: below the forecast scaled
    by ``forecast − P10``, above it by ``P90 − forecast`` (the band's own levels and 0.5 come back exactly), in
    [0, ``upper``]. Shape ``(len(levels), steps)``, non-decreasing along increasing levels. [kW]"""
    out = np.empty((len(levels), len(point)))
    for i, level in enumerate(levels):
        z = NormalDist().inv_cdf(float(level)) / _Z_BAND
        out[i] = point + z * ((point - p10) if z < 0 else (p90 - point))
    return np.clip(out, 0.0, upper if upper is not None else np.inf)


def csv_payload(text: str, *, source: str, issued_at: str, valid_hours: float = DEFAULT_VALID_HOURS) -> dict:
    """The JSON form of a forecast CSV: header ``timestamp`` plus ``pv_kw`` and/or ``load_kw`` (and optionally
    their bands, e.g. ``pv_kw_p10``, ``pv_kw_p90``), one row per step, timestamps ISO 8601 with UTC offset at
    interval starts, evenly spaced. Other columns are ignored. Cells may be separated by ``;`` or tabs (told from the
    header), numbers then written with decimal commas, as a spreadsheet saves CSV where the comma is the decimal sign
    (:func:`ems.series_csv.decimal_points`).

    Raises
    ------
    ForecastInputError
        A missing column, an unparseable row (named by line), uneven steps.
    """
    delimiter = delimiter_of(text.lstrip("\ufeff").split("\n", 1)[0])
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), delimiter=delimiter)
    fields = reader.fieldnames or []
    if "timestamp" not in fields or not set(fields) & set(QUANTITIES):
        raise ForecastInputError(f"CSV header must be timestamp plus pv_kw and/or load_kw (and optionally their "
                                 f"_p10/_p90 bands), got {fields}")
    times: list[datetime] = []
    cells: dict[str, list[str]] = {name: [] for name in VALUE_FIELDS if name in fields}
    for line, row in enumerate(reader, start=2):
        try:
            times.append(_time({"timestamp": row["timestamp"]}, "timestamp"))
        except ForecastInputError as exc:
            raise ForecastInputError(f"CSV line {line}: {exc}") from exc
        for name in cells:
            cells[name].append((row[name] or "").strip())
    columns: dict[str, list[float]] = {}
    for name, written in cells.items():  # a ';' or tab file (a spreadsheet's) may write decimal commas
        columns[name] = []
        for line, cell in enumerate(written if delimiter == "," else decimal_points(written), start=2):
            try:
                columns[name].append(float(cell))
            except ValueError as exc:
                raise ForecastInputError(f"CSV line {line}: {name}: {written[line - 2]!r} is not a number") from exc
    if not times:
        raise ForecastInputError("CSV has no rows")
    steps = {int((b - a).total_seconds()) for a, b in itertools.pairwise(times)}
    if len(steps) > 1 or (steps and next(iter(steps)) % 60):
        raise ForecastInputError(f"CSV timestamps must be evenly spaced, got steps of {sorted(steps)} s")
    step_minutes = next(iter(steps)) // 60 if steps else 15
    return {"source": source, "issued_at": issued_at, "valid_hours": valid_hours, "start": times[0].isoformat(),
            "step_minutes": step_minutes, **columns}


class ExternalForecasts:
    """The external forecasts a site has received; the newest valid one per quantity is used.

    Parameters
    ----------
    pv_limit_kw : float, optional
        PV AC limit: PV values above it are refused. [kW]
    on_accept : callable, optional
        Called with every accepted forecast (e.g. :meth:`optimizer.external_accuracy.ExternalAccuracy.record`).
    band_scale : callable, optional
        ``band_scale(quantity, source) -> (low, high)``: factors applied to a band's ``forecast − P10`` and
        ``P90 − forecast`` before its quantiles are used (:meth:`optimizer.external_accuracy.ExternalAccuracy.
        band_scale`: the band recalibrated on the source's measured record). None: the band as sent.
    """

    def __init__(self, pv_limit_kw: float | None = None,
                 on_accept: Callable[[ExternalForecast], None] | None = None,
                 band_scale: Callable[[str, str], tuple[float, float]] | None = None):
        self.pv_limit_kw = pv_limit_kw
        self.on_accept = on_accept
        self.band_scale = band_scale
        self._latest: dict[str, ExternalForecast] = {}

    def submit(self, payload: object, now: datetime | None = None, *, only_newer: bool = False) -> SubmitResult:
        """Validate and keep a forecast (REST, MQTT); never raises for bad input: the result says why.

        ``only_newer`` refuses a forecast not issued after the one in use for one of its quantities (a retained
        MQTT forecast, delivered again on every reconnect, must not replace a newer one)."""
        now = now or datetime.now(UTC)
        try:
            forecast = parse_forecast(payload, now, self.pv_limit_kw)
        except ForecastInputError as exc:
            return SubmitResult(accepted=False, error=str(exc))
        if only_newer:
            for name in forecast.quantities:
                held = self.current(name, now)
                if held is not None and held.issued_at >= forecast.issued_at:
                    return SubmitResult(accepted=False, source=forecast.source, error=(
                        f"issued_at: {forecast.issued_at.isoformat()} is not newer than the {name} forecast in use "
                        f"({held.source}, issued {held.issued_at.isoformat()}): not applied again"))
        for name in forecast.quantities:
            self._latest[name] = forecast
        if self.on_accept is not None:
            self.on_accept(forecast)
        return SubmitResult(accepted=True, source=forecast.source, quantities=forecast.quantities,
                            steps=len(forecast.values[forecast.quantities[0]]), expires_at=forecast.expires_at)

    def restore(self, payloads: Sequence[object]) -> tuple[list[ExternalForecast], dict[int, str]]:
        """Take back the forecasts accepted before a restart, in the order they arrived
        (:meth:`ExternalForecast.to_payload`; stored data is input too): each is validated as :func:`parse_forecast`
        did when it arrived (at its own ``issued_at``) and kept as :meth:`submit` kept it, so the forecast in use per
        quantity is the one that was in use (or none, once it has expired). ``on_accept`` is not called: the caller
        knows what it stored. Returns the forecasts taken back, and by index why each refused payload was refused."""
        taken: list[ExternalForecast] = []
        refused: dict[int, str] = {}
        for i, payload in enumerate(payloads):
            try:
                if not isinstance(payload, dict):
                    raise ForecastInputError(f"the forecast must be a JSON object, got {type(payload).__name__}")
                forecast = parse_forecast(payload, _time(payload, "issued_at"), self.pv_limit_kw)
            except ForecastInputError as exc:
                refused[i] = str(exc)
                continue
            taken.append(forecast)
            for name in forecast.quantities:
                self._latest[name] = forecast
        return taken, refused

    def load_csv(self, path: Path, *, source: str, issued_at: str, valid_hours: float = DEFAULT_VALID_HOURS,
                 now: datetime | None = None) -> SubmitResult:
        """Submit a forecast CSV file (see :func:`csv_payload`)."""
        try:
            payload = csv_payload(Path(path).read_text(encoding="utf-8"), source=source, issued_at=issued_at,
                                  valid_hours=valid_hours)
        except (ForecastInputError, OSError, UnicodeDecodeError) as exc:
            return SubmitResult(accepted=False, error=f"{path}: {exc}")
        return self.submit(payload, now)

    def current(self, quantity: str, now: datetime) -> ExternalForecast | None:
        """The newest unexpired forecast of ``quantity`` (``pv_kw`` or ``load_kw``), or None."""
        forecast = self._latest.get(quantity)
        return None if forecast is None or forecast.expired(now) else forecast

    def blend(self, quantity: str, grid: TimeGrid, builtin: np.ndarray, now: datetime) -> tuple[np.ndarray, str]:
        """``builtin`` with the steps the current external forecast covers replaced by its values. [kW]

        Returns the values and their origin: the external source's name, ``"<source>+builtin"`` when only part
        of the grid is covered, or ``"builtin"`` (no valid external forecast, or none of the grid covered).
        A grid step takes the external value at its start (the step of the external forecast it falls in).
        """
        forecast = self.current(quantity, now)
        if forecast is None:
            return builtin, "builtin"
        index, covered = _coverage(forecast, grid)
        if not covered.any():
            return builtin, "builtin"
        out = np.array(builtin, dtype=float)
        out[covered] = forecast.values[quantity][index[covered]]
        return out, forecast.source if covered.all() else f"{forecast.source}+builtin"

    def quantiles(self, quantity: str, grid: TimeGrid, levels: Sequence[float],
                  builtin: Callable[[], np.ndarray | None], now: datetime) -> np.ndarray | None:
        """Quantile forecasts of ``quantity`` at ``levels``, shape ``(len(levels), len(grid))``, to go with
        :meth:`blend`: on the steps the current external forecast covers, from its P10/P90 band
        (:func:`band_quantiles`; scaled by ``band_scale`` when given); elsewhere ``builtin()`` (the built-in
        model's quantiles at the same levels, only asked for when needed). None when the covering forecast has no
        band, or ``builtin()`` is None for steps it does not cover. [kW]
        """
        forecast = self.current(quantity, now)
        if forecast is None:
            return builtin()
        index, covered = _coverage(forecast, grid)
        if not covered.any():
            return builtin()
        if not forecast.has_band(quantity):
            return None
        rest = None if covered.all() else builtin()
        if rest is None and not covered.all():
            return None
        out = np.empty((len(levels), len(grid))) if rest is None else np.array(rest, dtype=float)
        i = index[covered]
        low, high = BANDS[quantity]
        point, p10, p90 = forecast.values[quantity][i], forecast.values[low][i], forecast.values[high][i]
        if self.band_scale is not None:
            s_low, s_high = self.band_scale(quantity, forecast.source)
            if (s_low, s_high) != (1.0, 1.0):
                p10, p90 = point - s_low * (point - p10), point + s_high * (p90 - point)
        out[:, covered] = band_quantiles(point, p10, p90, levels, self.pv_limit_kw if quantity == "pv_kw" else None)
        return out

    def status(self, now: datetime) -> dict[str, dict]:
        """Per quantity, the forecast the planner uses now: ``{"source", "band", "issued_at", "expires_at"}`` of the
        current external forecast (times ISO 8601 UTC), or ``{"source": "builtin"}`` (none, or it expired). For the
        state message (key ``forecast_sources``) and the dashboard."""
        out: dict[str, dict] = {}
        for name in QUANTITIES:
            forecast = self.current(name, now)
            out[name] = {"source": "builtin"} if forecast is None else {
                "source": forecast.source, "band": forecast.has_band(name),
                "issued_at": forecast.issued_at.isoformat(), "expires_at": forecast.expires_at.isoformat()}
        return out

    def banded(self, now: datetime) -> bool:
        """True when a current forecast of PV or load carries its band."""
        return any((f := self.current(name, now)) is not None and f.has_band(name) for name in QUANTITIES)

    def peak_risk_kw(self, grid: TimeGrid, pv_kw: np.ndarray, load_kw: np.ndarray, now: datetime,
                     builtin_quantiles: Callable[[], tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
        """The net-load risk of :func:`optimizer.service.peak_risk_kw` with the current forecasts' bands: the PV's
        P10 and the load's P90 from the band on the steps a banded forecast covers, from ``builtin_quantiles()``
        (the built-in PV P10 and load P90 per step) elsewhere. None while no current forecast has a band (the
        built-in risk stands). [kW]"""
        if not self.banded(now):
            return None
        pv_lo, load_hi = builtin_quantiles()
        pv_q = self.quantiles("pv_kw", grid, (1.0 - PEAK_RISK_LEVEL,), lambda: pv_lo[None], now)
        load_q = self.quantiles("load_kw", grid, (PEAK_RISK_LEVEL,), lambda: load_hi[None], now)
        return net_load_risk_kw(pv_kw, pv_lo if pv_q is None else pv_q[0], load_kw,
                                load_hi if load_q is None else load_q[0])


def _coverage(forecast: ExternalForecast, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
    """Per grid step: the index of the forecast's step holding its start, and whether the forecast covers it."""
    start_ns = pd.Timestamp(forecast.start).value
    step_ns = forecast.step_minutes * 60_000_000_000
    index = (grid.starts_ns - start_ns) // step_ns
    n = len(forecast.values[forecast.quantities[0]])
    return index, (grid.starts_ns >= start_ns) & (index < n)


class WithExternal:
    """A forecast source (``forecast(grid) -> (pv, load)`` [kW]) with the current external forecasts laid over it:
    the planner's :class:`~controller.planning.ForecastSource` when external forecasts are accepted.

    Parameters
    ----------
    builtin : object
        The built-in source, e.g. ``controller.planning.MeasuredForecasts``.
    external : ExternalForecasts
        Where accepted forecasts are kept (its :meth:`~ExternalForecasts.submit` is the REST/MQTT entry point).
    now : callable
        ``now() -> datetime`` (UTC, aware): the clock expiry is judged on.
    """

    def __init__(self, builtin: object, external: ExternalForecasts, now: Callable[[], datetime]):
        self.builtin, self.external, self.now = builtin, external, now
        #: Origin of the last forecast per quantity ("builtin", "<source>", "<source>+builtin").
        self.origin: dict[str, str] = {"pv_kw": "builtin", "load_kw": "builtin"}

    def forecast(self, grid: TimeGrid) -> tuple[np.ndarray, np.ndarray]:
        pv, load = self.builtin.forecast(grid)
        now = self.now()
        pv, self.origin["pv_kw"] = self.external.blend("pv_kw", grid, pv, now)
        load, self.origin["load_kw"] = self.external.blend("load_kw", grid, load, now)
        return pv, load

    def peak_risk(self, grid: TimeGrid, pv_kw: np.ndarray, load_kw: np.ndarray) -> np.ndarray:
        """The net-load risk from the current external forecasts' bands where they have one
        (:meth:`ExternalForecasts.peak_risk_kw`), otherwise the built-in source's (from its own errors). [kW]"""
        risk = self.external.peak_risk_kw(grid, pv_kw, load_kw, self.now(),
                                          lambda: self.builtin.peak_risk_quantiles(grid))
        return self.builtin.peak_risk(grid, pv_kw, load_kw) if risk is None else risk

    def measured(self) -> tuple[History, History] | None:
        """The built-in source's measured PV and load (the month's peak target). [kW]"""
        return self.builtin.measured()

    def pv_quantiles(self, grid: TimeGrid, levels: Sequence[float]) -> np.ndarray | None:
        """The built-in PV quantiles while the PV forecast is the built-in one; while an external PV forecast is
        laid over it, its band's quantiles on the steps it covers (:meth:`ExternalForecasts.quantiles`), or None
        when it has no band (the surplus-day rule then stands aside). [kW]"""
        if self.origin["pv_kw"] == "builtin":
            return self.builtin.pv_quantiles(grid, levels)
        return self.external.quantiles("pv_kw", grid, levels, lambda: self.builtin.pv_quantiles(grid, levels),
                                       self.now())
