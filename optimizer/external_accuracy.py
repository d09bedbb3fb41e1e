"""Accuracy of forecasts from outside, as they were sent: each accepted forecast scored against what was measured.

An external forecast (:mod:`optimizer.external_forecast`) cannot be re-run at past issue times like the built-in
models (:mod:`optimizer.forecast_accuracy`), so each accepted one is kept, cut to the planning grid, until its
first 48 hours from its issue time are measured, and then scored once. Per quantity, per source and per lead-time
bucket (lead = step start − ``issued_at``; 0–1, 1–6, 6–12, 12–24 and 24–48 h: a day-ahead forecast is used up to
two days after it is issued), on the steps where the forecast, the measurement, the
value measured 24 h before and the built-in model's forecast all exist (for PV in daylight only):

- ``mae_kw``, ``rmse_kw``: mean absolute and root-mean-square error [kW];
- ``bias_kw``: mean of forecast − measured (above 0: the forecast runs high) [kW];
- ``persistence_mae_kw``, ``persistence_rmse_kw`` and ``skill = 1 − MAE / persistence MAE``: against
  same-time-yesterday persistence;
- ``builtin_mae_kw`` and ``skill_vs_builtin = 1 − MAE / builtin MAE``: against the built-in model's forecast made
  at the same instant on the history before it (above 0: the forecast from outside is the better one);
- where the forecast carried its P10/P90 band: ``band_n`` (steps scored with a band), ``band_coverage`` (share
  measured inside [P10, P90]; 0.8 for a calibrated band), ``below_p10`` and ``above_p90`` (0.1 each when
  calibrated).

The same :class:`ExternalAccuracy` scores the live controller's forecasts (state key ``forecast_accuracy``,
``external``) and a study's day-ahead forecast (``summary.json``, :mod:`simulations.accuracy`). Docs: docs/data.md
("Accuracy of external forecasts").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from optimizer.external_forecast import BAND_LEVELS, BANDS, ExternalForecast
from optimizer.forecast import History
from optimizer.forecast_accuracy import NS_PER_H, bucket_names, values_at
from optimizer.timegrid import TimeGrid, regular_grid_ns

#: Upper edges of the lead-time buckets: a day-ahead forecast is used up to two days after it is issued. [h]
LEAD_EDGES_H: tuple[float, ...] = (1.0, 6.0, 12.0, 24.0, 48.0)
#: Name of each forecast quantity in the accuracy figures (as the built-in models' ``forecast_accuracy``).
QUANTITY_KEYS = {"pv_kw": "pv", "load_kw": "load"}
#: Forecasts kept waiting to be scored, at most (the oldest are dropped beyond it: a sender posting every minute
#: keeps a day of them).
MAX_PENDING = 1440

#: Steps scored (per quantity and source, over the window) before :func:`warnings` judges a forecast. [-]
MIN_STEPS_TO_JUDGE = 200
#: Share of measurements inside a P10–P90 band outside which :func:`warnings` calls it miscalibrated (0.8 when
#: calibrated; steps of a day err together, so the share of two weeks scatters well beyond binomial noise). [-]
BAND_COVERAGE_OK = (0.6, 0.95)

#: Range of :meth:`ExternalAccuracy.band_scale`: a band is at most halved or tripled. [-]
BAND_SCALE_LIMITS = (0.5, 3.0)
#: Band sides narrower than this are left out of the band's calibration (no spread to scale). [kW]
MIN_BAND_KW = 0.1

_ROWS = ("abs", "sq", "err", "p_abs", "p_sq", "b_abs", "n", "band_n", "below", "above")
_R = {name: i for i, name in enumerate(_ROWS)}


@dataclass(frozen=True)
class _Score:
    """One forecast's scores: the summed rows of :data:`_ROWS` per lead bucket, and where it had a band the
    measured shortfalls below the forecast per step in units of ``forecast − P10`` and the excesses above it in
    units of ``P90 − forecast`` (steps where that width exceeds :data:`MIN_BAND_KW`). [-]"""

    rows: np.ndarray
    z_low: np.ndarray | None
    z_high: np.ndarray | None


class _Key(NamedTuple):
    """Which forecast a score is of (kept instead of its values once it is scored)."""

    quantity: str
    source: str
    issued_ns: int


@dataclass(frozen=True)
class _Issued:
    """One quantity of one accepted forecast on the planning grid from its issue time: values [kW] per step (NaN
    where the forecast does not reach), the band's where it has one."""

    quantity: str
    source: str
    issued_ns: int
    start_ns: int
    value: np.ndarray
    p10: np.ndarray | None
    p90: np.ndarray | None
    #: When all its steps have been measured: the end of its last covered step plus one step (a step's
    #: measurement is recorded once the step has ended). [UTC epoch ns]
    ready_ns: int

    @property
    def key(self) -> _Key:
        return _Key(self.quantity, self.source, self.issued_ns)


class ExternalAccuracy:
    """Scores of the external forecasts received over the last ``days`` days (module docstring).

    Parameters
    ----------
    builtin : mapping
        Per quantity (``pv_kw``, ``load_kw``) the built-in model's ``point(grid, history) -> ndarray`` [kW], as the
        planner runs it; a quantity without one is not scored.
    masks : mapping, optional
        Per quantity ``mask(grid) -> bool ndarray``: the steps to score (daylight for PV).
    days : float
        Forecasts issued in the last ``days`` days are reported. [d]
    step_minutes : int
        The planning grid a forecast is scored on: steps of ``step_minutes`` from the first one starting at or
        after its ``issued_at`` to the last lead edge.
    lead_edges_h : sequence of float
        Upper edges of the lead buckets. [h]
    """

    def __init__(self, builtin: Mapping[str, Callable[[TimeGrid, object], np.ndarray]],
                 masks: Mapping[str, Callable[[TimeGrid], np.ndarray]] | None = None, *, days: float = 14.0,
                 step_minutes: int = 15, lead_edges_h: Sequence[float] = LEAD_EDGES_H):
        self.builtin, self.masks = dict(builtin), dict(masks or {})
        self.lead_edges_h = tuple(lead_edges_h)
        self.days, self.step_minutes = days, step_minutes
        self.steps = round(self.lead_edges_h[-1] * 60 / step_minutes)
        self.step_ns = step_minutes * 60_000_000_000
        self._edges_ns = np.asarray(self.lead_edges_h, dtype=float) * NS_PER_H
        self._pending: list[_Issued] = []
        self._scored: list[tuple[_Key, _Score | None]] = []
        self._scales: dict[tuple[str, str], tuple[float, float]] = {}
        self._kept: set[_Key] = set()  # the forecasts received (pending, scored, or replaced in their step)
        #: The figures of the last :meth:`update` (:meth:`figures`), None before the first.
        self.result: dict | None = None

    def record(self, forecast: ExternalForecast) -> None:
        """Keep an accepted forecast for scoring (each of its quantities with a built-in model to compare; once per
        source and issue time). Per quantity and source one forecast is scored per planning step of issue: one
        received later whose first scored step is the same replaces it (the planner uses the latest; a sender
        posting every minute would otherwise keep 1,440 a day, each scored on the same two days)."""
        issued_ns = pd.Timestamp(forecast.issued_at).value
        first = -(-issued_ns // self.step_ns) * self.step_ns
        starts = first + np.arange(self.steps, dtype=np.int64) * self.step_ns
        f_start = pd.Timestamp(forecast.start).value
        index = (starts - f_start) // (forecast.step_minutes * 60_000_000_000)
        covered = (starts >= f_start) & (index < len(forecast.values[forecast.quantities[0]]))  # equal lengths
        if not covered.any():
            return
        ready = first + (int(np.flatnonzero(covered)[-1]) + 2) * self.step_ns

        def cut(values: np.ndarray) -> np.ndarray:
            out = np.full(self.steps, np.nan)
            out[covered] = values[index[covered]]
            return out

        for quantity in forecast.quantities:
            key = _Key(quantity, forecast.source, issued_ns)
            if quantity not in self.builtin or key in self._kept:
                continue  # a forecast sent again (same source and issue time) is scored once
            self._kept.add(key)
            low, high = BANDS[quantity]
            banded = forecast.has_band(quantity)
            self._pending = [item for item in self._pending
                             if (item.quantity, item.source, item.start_ns) != (quantity, forecast.source, first)]
            self._pending.append(_Issued(quantity, forecast.source, issued_ns, first, cut(forecast.values[quantity]),
                                         cut(forecast.values[low]) if banded else None,
                                         cut(forecast.values[high]) if banded else None, ready))
        del self._pending[:-MAX_PENDING]

    def due(self, now_ns: int) -> bool:
        """True when :meth:`update` has something to do: a forecast whose steps are all measured now, or none
        scored yet."""
        return self.result is None or any(item.ready_ns <= now_ns for item in self._pending)

    def update(self, now_ns: int, histories: Mapping[str, tuple[np.ndarray, np.ndarray]],
               limit: int | None = 1, *, final: bool = False) -> dict:
        """Score up to ``limit`` forecasts (None: all) whose steps are all measured by ``now_ns`` and return the
        figures of those issued in the last ``days`` days (:meth:`figures`).

        ``histories``: per quantity the measured history as (interval starts [UTC epoch ns], values [kW]).
        ``final``: no measurement will be added (a study's period is over): every forecast kept is scored on
        what was measured.
        """
        window_start = now_ns - int(self.days * 24 * NS_PER_H)
        ready = [item for item in self._pending if final or item.ready_ns <= now_ns]
        for item in ready[:limit]:
            self._pending.remove(item)
            if item.issued_ns >= window_start and item.quantity in histories:
                ns, values = histories[item.quantity]
                self._scored.append((item.key, self._score(item, np.asarray(ns, dtype=np.int64),
                                                           np.asarray(values, dtype=float))))
        self._pending = [item for item in self._pending if item.issued_ns >= window_start - 3 * 24 * NS_PER_H]
        self._scored = [(key, score) for key, score in self._scored if key.issued_ns >= window_start]
        self._kept = {key for key in self._kept if key.issued_ns >= window_start - 3 * 24 * NS_PER_H}
        self._scales = self._band_scales()
        self.result = self.figures()
        return self.result

    def band_scale(self, quantity: str, source: str) -> tuple[float, float]:
        """How much wider than sent the P10/P90 band of ``source``'s forecasts of ``quantity`` should be to hold its
        levels on their measured record (as of the last :meth:`update`): ``(low, high)``, the factors of
        ``forecast − P10`` and ``P90 − forecast``. The 90 % quantile of the measured shortfalls below the forecast
        in units of ``forecast − P10`` (and of the excesses above it in units of ``P90 − forecast``) is 1 for a
        calibrated band; it is that quantile, in [:data:`BAND_SCALE_LIMITS`], once :data:`MIN_STEPS_TO_JUDGE`
        steps have been scored, else 1 (the band as sent). [-]"""
        return self._scales.get((quantity, source), (1.0, 1.0))

    def _band_scales(self) -> dict[tuple[str, str], tuple[float, float]]:
        samples: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        for key, score in self._scored:
            if score is not None and score.z_low is not None and score.z_high is not None:
                samples.setdefault((key.quantity, key.source), []).append((score.z_low, score.z_high))
        out = {}
        low, high = BAND_SCALE_LIMITS
        for key, pairs in samples.items():
            scale = []
            for z in (np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])):
                scale.append(float(np.clip(np.quantile(z, BAND_LEVELS[1]), low, high))
                             if len(z) >= MIN_STEPS_TO_JUDGE else 1.0)
            out[key] = (scale[0], scale[1])
        return out

    def _score(self, item: _Issued, ns: np.ndarray, values: np.ndarray) -> _Score | None:
        """The summed rows of :data:`_ROWS` per lead bucket for one forecast and its band's normalised errors;
        None when no step compares."""
        grid = regular_grid_ns(item.start_ns, self.steps, self.step_minutes)
        starts = grid.starts_ns
        measured = values_at(ns, values, starts)
        before = values_at(ns, values, starts - 24 * NS_PER_H)
        bucket = np.searchsorted(self._edges_ns, (starts - item.issued_ns).astype(float), side="right")
        ok = np.isfinite(item.value) & np.isfinite(measured) & np.isfinite(before) & (bucket < len(self._edges_ns))
        mask = self.masks.get(item.quantity)
        if mask is not None:
            ok &= np.asarray(mask(grid), dtype=bool)
        if not ok.any():
            return None
        builtin = np.asarray(self.builtin[item.quantity](grid, History(ns, values)), dtype=float)
        ok &= np.isfinite(builtin)
        if not ok.any():
            return None
        e, p = item.value[ok] - measured[ok], before[ok] - measured[ok]
        b, m = builtin[ok] - measured[ok], measured[ok]
        nb = len(self._edges_ns)
        rows = np.zeros((len(_ROWS), nb))
        k = bucket[ok]
        for name, x in (("abs", np.abs(e)), ("sq", e * e), ("err", e), ("p_abs", np.abs(p)), ("p_sq", p * p),
                        ("b_abs", np.abs(b)), ("n", np.ones(len(e)))):
            rows[_R[name]] = np.bincount(k, weights=x, minlength=nb)
        if item.p10 is None or item.p90 is None:
            return _Score(rows, None, None)
        f, lo, hi = item.value[ok], item.p10[ok], item.p90[ok]
        rows[_R["band_n"]] = np.bincount(k, minlength=nb)
        rows[_R["below"]] = np.bincount(k, weights=(m < lo).astype(float), minlength=nb)
        rows[_R["above"]] = np.bincount(k, weights=(m > hi).astype(float), minlength=nb)
        wide_low, wide_high = f - lo > MIN_BAND_KW, hi - f > MIN_BAND_KW
        return _Score(rows, (f - m)[wide_low] / (f - lo)[wide_low], (m - f)[wide_high] / (hi - f)[wide_high])

    def figures(self) -> dict:
        """``{"window_days", "pv": [per source], "load": [per source]}`` (a quantity only once a forecast of it
        has been received); per source ``{"source", "issues", "by_lead": [...]}`` with the figures of the module
        docstring per lead bucket (None where nothing was compared), ``issues`` the forecasts scored."""
        out: dict = {"window_days": self.days}
        groups: dict[tuple[str, str], list[np.ndarray]] = {}
        for key, score in self._scored:
            kept = groups.setdefault((key.quantity, key.source), [])
            if score is not None:
                kept.append(score.rows)
        for item in self._pending:
            groups.setdefault((item.quantity, item.source), [])
        for (quantity, source), kept in sorted(groups.items()):
            total = np.sum(kept, axis=0) if kept else np.zeros((len(_ROWS), len(self._edges_ns)))
            scale = self.band_scale(quantity, source)
            out.setdefault(QUANTITY_KEYS[quantity], []).append(
                {"source": source, "issues": len(kept), "band_scale_p10": round(scale[0], 3),
                 "band_scale_p90": round(scale[1], 3), "by_lead": summarise(total, self.lead_edges_h)})
        return out


def _ratio(num: float, den: float, digits: int = 4) -> float | None:
    return round(float(num / den), digits) if den > 0 else None


def summarise(total: np.ndarray, lead_edges_h: Sequence[float]) -> list[dict]:
    """The per-bucket figures of the module docstring from summed rows."""
    out = []
    for i, name in enumerate(bucket_names(lead_edges_h)):
        col = {row: float(total[_R[row], i]) for row in _ROWS}
        n, band_n = int(col["n"]), int(col["band_n"])
        mae = _ratio(col["abs"], n, 3)
        p_mae, b_mae = _ratio(col["p_abs"], n, 3), _ratio(col["b_abs"], n, 3)
        out.append({
            "lead": name, "n": n, "mae_kw": mae,
            "rmse_kw": round(math.sqrt(col["sq"] / n), 3) if n else None,
            "bias_kw": _ratio(col["err"], n, 3),
            "persistence_mae_kw": p_mae,
            "persistence_rmse_kw": round(math.sqrt(col["p_sq"] / n), 3) if n else None,
            "skill": round(1.0 - col["abs"] / col["p_abs"], 4) if n and col["p_abs"] > 0 else None,
            "builtin_mae_kw": b_mae,
            "skill_vs_builtin": round(1.0 - col["abs"] / col["b_abs"], 4) if n and col["b_abs"] > 0 else None,
            "band_n": band_n,
            "band_coverage": _ratio(band_n - col["below"] - col["above"], band_n),
            "below_p10": _ratio(col["below"], band_n),
            "above_p90": _ratio(col["above"], band_n)})
    return out


def pooled(by_lead: Sequence[dict]) -> dict:
    """One source's figures over all lead buckets: ``n``, ``mae_kw``, ``builtin_mae_kw``, ``skill_vs_builtin``,
    ``band_n``, ``band_coverage``, ``below_p10``, ``above_p90`` (None where nothing was compared)."""
    n = sum(b["n"] for b in by_lead)
    band_n = sum(b["band_n"] for b in by_lead)
    abs_sum = sum(b["mae_kw"] * b["n"] for b in by_lead if b["n"])
    b_abs_sum = sum(b["builtin_mae_kw"] * b["n"] for b in by_lead if b["n"])

    def share(key: str) -> float | None:
        return sum(b[key] * b["band_n"] for b in by_lead if b["band_n"]) / band_n if band_n else None

    return {"n": n, "mae_kw": abs_sum / n if n else None, "builtin_mae_kw": b_abs_sum / n if n else None,
            "skill_vs_builtin": 1.0 - abs_sum / b_abs_sum if n and b_abs_sum > 0 else None, "band_n": band_n,
            "band_coverage": share("band_coverage"), "below_p10": share("below_p10"), "above_p90": share("above_p90")}


def warnings(figures: dict, min_steps: int = MIN_STEPS_TO_JUDGE) -> dict[str, str]:
    """What an operator should know about the external forecasts scored (:meth:`ExternalAccuracy.figures`), as
    alarm codes and messages: ``external_<pv|load>_forecast_worse`` while a source's forecasts were less accurate
    than the built-in model's over the window, ``external_<pv|load>_band_miscalibrated`` while the share of
    measurements inside its P10–P90 band lies outside :data:`BAND_COVERAGE_OK`; each judged once at least
    ``min_steps`` steps (band steps for the band) have been scored."""
    out: dict[str, str] = {}
    days = f"{figures.get('window_days', 0):g}"
    for quantity, name, unit in (("pv", "PV", "daylight steps"), ("load", "load", "steps")):
        worse, band = [], []
        for source in figures.get(quantity, []):
            p = pooled(source["by_lead"])
            if p["n"] >= min_steps and p["skill_vs_builtin"] is not None and p["skill_vs_builtin"] < 0:
                worse.append(f"{source['source']}: mean error {p['mae_kw']:.1f} kW against the built-in model's "
                             f"{p['builtin_mae_kw']:.1f} kW ({-100 * p['skill_vs_builtin']:.0f} % worse; "
                             f"{p['n']} {unit} of {source['issues']} forecasts)")
            low, high = BAND_COVERAGE_OK
            if p["band_n"] >= min_steps and not low <= p["band_coverage"] <= high:
                band.append(f"{source['source']}: {100 * p['band_coverage']:.0f} % of measurements inside its P10–P90 "
                            f"band (about 80 % when calibrated; {100 * p['below_p10']:.0f} % below P10, "
                            f"{100 * p['above_p90']:.0f} % above P90; {p['band_n']} {unit})")
        if worse:
            out[f"external_{quantity}_forecast_worse"] = (
                f"{name} forecasts from outside were less accurate than the built-in model over the last {days} days: "
                + "; ".join(worse))
        if band:
            out[f"external_{quantity}_band_miscalibrated"] = (
                f"{name} forecasts from outside over the last {days} days: " + "; ".join(band)
                + "; the planner takes its risk and surplus quantiles from that band")
    return out
