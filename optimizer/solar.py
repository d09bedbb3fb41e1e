"""Clear-sky PV power of a site with pvlib, and a cache of it on a regular time lattice.

Model chain (pvlib): solar position → Ineichen clear sky with the monthly Linke turbidity that ships
with pvlib → Hay–Davies transposition to the plane of array → cell temperature (Faiman, constant
ambient) → PVWatts DC (−0.4 %/°C) → system losses → PVWatts inverter clipped at the AC limit.
Degradation (``PVSpec.degradation_pct_per_year``) is not applied: this is year-one power.

Each interval is evaluated at its middle, so the value is the interval-average power to good accuracy.

pvlib is imported only when power is computed in this process: with SciPy (which it pulls in), h5py and
requests it adds ≈75 MB to a process. The live controller keeps it out of its own process by computing
its tables in a short-lived worker process (:func:`clear_sky_pv_kw_isolated`, ``ClearSkyCache(isolated=True)``);
offline studies and tests compute in process.
"""

from __future__ import annotations

import logging
import math
import pickle
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from optimizer.site import PVSpec, SiteInfo

log = logging.getLogger(__name__)

HAI_PHONG_MONTHLY_KWH_PER_KWP: tuple[float, ...] = (53, 45, 36, 62, 115, 131, 150, 119, 109, 111, 105, 80)
"""Hai Phong fixed-tilt specific yield per month Jan..Dec, Global-Solar-Atlas derived (1,116 per year);
docs/sources.md §4. Use only the shape and scale the total (1,100 central, 950 pessimistic).
[kWh/kWp]"""

AMBIENT_TEMPERATURE_C = 28.0
"""Constant ambient temperature assumed for the cell temperature under clear sky. [°C]"""
WIND_SPEED_M_S = 1.0
"""Constant wind speed assumed for the cell temperature. [m/s]"""
GAMMA_PDC_PER_C = -0.004
"""PVWatts temperature coefficient of DC power. [1/°C]"""
INVERTER_EFFICIENCY = 0.96
"""PVWatts nominal inverter efficiency. [-]"""
WORKER_TIMEOUT_S = 60.0
"""Real time a clear-sky worker process may take (start, imports, computation) before it is killed. [s]"""


def clear_sky_pv_kw(starts: pd.DatetimeIndex, duration_h: float | np.ndarray, site: SiteInfo,
                    pv: PVSpec) -> np.ndarray:
    """Clear-sky AC power of the PV system, averaged over each interval.

    Parameters
    ----------
    starts : pandas.DatetimeIndex
        Interval starts, timezone-aware (UTC inside the product).
    duration_h : float or numpy.ndarray
        Interval durations (scalar or one per interval). [h]
    site : SiteInfo
        Location (latitude, longitude, altitude).
    pv : PVSpec
        DC nameplate, AC limit, tilt, azimuth, losses.

    Returns
    -------
    numpy.ndarray
        Clear-sky AC power per interval, ≥ 0 and ≤ ``pv.ac_limit_kw``. [kW]
    """
    if starts.tz is None:
        raise ValueError("clear_sky_pv_kw needs timezone-aware starts")
    n = len(starts)
    if n == 0 or pv.kwp == 0:
        return np.zeros(n)
    import pvlib  # here, not at the top: see the module docstring

    half = pd.to_timedelta(np.broadcast_to(np.asarray(duration_h, dtype=float), (n,)) * 1800.0, unit="s")
    times = starts.tz_convert("UTC") + half
    loc = site.location
    location = pvlib.location.Location(loc.latitude, loc.longitude, tz="UTC", altitude=loc.altitude_m)
    with warnings.catch_warnings():  # pvlib 0.16 still calls DatetimeIndex.dayofyear, deprecated in pandas 3
        warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
        solpos = location.get_solarposition(times)
        clearsky = location.get_clearsky(times, model="ineichen", solar_position=solpos)
        dni_extra = pvlib.irradiance.get_extra_radiation(times)
    poa_global = plane_of_array_w_m2(pv, solpos, clearsky["dni"], clearsky["ghi"], clearsky["dhi"], dni_extra)
    return ac_power_kw(poa_global, pv)


def plane_of_array_w_m2(pv: PVSpec, solpos: pd.DataFrame, dni: ArrayLike, ghi: ArrayLike, dhi: ArrayLike,
                        dni_extra: ArrayLike) -> np.ndarray:
    """Global irradiance on the plane of the array (Hay–Davies transposition), NaN → 0, never negative. [W/m²]

    ``solpos`` is pvlib's solar position (``apparent_zenith``, ``azimuth`` [deg]); ``dni``, ``ghi``, ``dhi`` and
    the extraterrestrial ``dni_extra`` per interval [W/m²]."""
    import pvlib  # see the module docstring

    poa = pvlib.irradiance.get_total_irradiance(
        pv.tilt_deg, pv.azimuth_deg, solpos["apparent_zenith"], solpos["azimuth"],
        dni, ghi, dhi, dni_extra=dni_extra, model="haydavies")
    return np.nan_to_num(np.asarray(poa["poa_global"], dtype=float), nan=0.0).clip(min=0.0)


def ac_power_kw(poa_global_w_m2: np.ndarray, pv: PVSpec, temp_air_c: ArrayLike = AMBIENT_TEMPERATURE_C,
                wind_speed_m_s: ArrayLike = WIND_SPEED_M_S) -> np.ndarray:
    """AC power of the PV system from plane-of-array irradiance: Faiman cell temperature → PVWatts DC
    (:data:`GAMMA_PDC_PER_C`) × (1 − ``losses_pct``) → PVWatts inverter (:data:`INVERTER_EFFICIENCY` nominal)
    clipped at the AC limit.

    Parameters
    ----------
    poa_global_w_m2 : numpy.ndarray
        Global plane-of-array irradiance per interval. [W/m²]
    pv : PVSpec
    temp_air_c, wind_speed_m_s : float or numpy.ndarray
        Ambient temperature [°C] and wind speed [m/s] (default: the constants of this module).

    Returns
    -------
    numpy.ndarray
        AC power per interval in [0, ``pv.ac_limit_kw``]. [kW]
    """
    import pvlib  # see the module docstring

    temp_cell = pvlib.temperature.faiman(poa_global_w_m2, temp_air_c, wind_speed_m_s)
    pdc = pvlib.pvsystem.pvwatts_dc(poa_global_w_m2, temp_cell, pv.kwp, GAMMA_PDC_PER_C)
    pdc = np.asarray(pdc, dtype=float) * (1.0 - pv.losses_pct / 100.0)
    pac = pvlib.inverter.pvwatts(pdc, pv.ac_limit_kw / INVERTER_EFFICIENCY, INVERTER_EFFICIENCY)
    return np.clip(np.nan_to_num(np.asarray(pac, dtype=float), nan=0.0), 0.0, pv.ac_limit_kw)


class ClearSkyWorkerError(RuntimeError):
    """The clear-sky worker process could not be started, failed, timed out or returned garbage."""


_WORKER_CODE = "import sys; sys.path[:0] = {path!r}; from optimizer.solar import _worker_main; _worker_main()"
"""What the worker process runs: this process's import path, then :func:`_worker_main`."""


def _worker_main() -> None:
    """Worker side of :func:`clear_sky_pv_kw_in_worker`: pickled ``(starts, duration_h, site, pv)`` on stdin,
    the pickled result on stdout."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the result
    starts, duration_h, site, pv = pickle.load(sys.stdin.buffer)
    pickle.dump(clear_sky_pv_kw(starts, duration_h, site, pv), out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def clear_sky_pv_kw_in_worker(starts: pd.DatetimeIndex, duration_h: float | np.ndarray, site: SiteInfo,
                              pv: PVSpec, timeout_s: float = WORKER_TIMEOUT_S) -> np.ndarray:
    """:func:`clear_sky_pv_kw` computed in a fresh Python process that exits afterwards.

    The worker (same interpreter and import path, ``subprocess`` rather than a ``multiprocessing`` spawn
    pool: that would re-import the caller's ``__main__`` in the worker and leave a resource-tracker process
    running beside the caller) imports pandas and pvlib, computes, and returns the array through a pipe;
    its memory is the operating system's again when it exits. It takes ≈2 s, almost all of it imports.
    Blocks the calling thread: call it off the event loop.

    Parameters and result as :func:`clear_sky_pv_kw`; ``timeout_s`` is real time [s], after which the
    worker is killed.

    Raises
    ------
    ClearSkyWorkerError
        The worker could not start, exited with an error, timed out or returned something unreadable.
    """
    payload = pickle.dumps((starts, duration_h, site, pv), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        done = subprocess.run([sys.executable, "-c", _WORKER_CODE.format(path=sys.path)], input=payload,
                              capture_output=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise ClearSkyWorkerError(f"exit status {done.returncode}: {detail[-1] if detail else 'no message'}")
        result = pickle.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, pickle.UnpicklingError, EOFError) as exc:
        raise ClearSkyWorkerError(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(result, np.ndarray) or result.shape != (len(starts),):
        raise ClearSkyWorkerError(f"unexpected result {type(result).__name__}")
    return result


def clear_sky_pv_kw_isolated(starts: pd.DatetimeIndex, duration_h: float | np.ndarray, site: SiteInfo,
                             pv: PVSpec) -> np.ndarray:
    """:func:`clear_sky_pv_kw` without importing pvlib here: computed by :func:`clear_sky_pv_kw_in_worker`,
    or in this process (logged as a warning) if the worker fails. Blocks the calling thread for ≈2 s. [kW]"""
    t0 = time.perf_counter()
    try:
        result = clear_sky_pv_kw_in_worker(starts, duration_h, site, pv)
    except ClearSkyWorkerError as exc:
        log.warning("clear-sky worker process failed (%s); computing in this process instead, "
                    "which imports pvlib and SciPy (≈75 MB)", exc)
        return clear_sky_pv_kw(starts, duration_h, site, pv)
    log.info("clear-sky worker process: %d steps in %.1f s", len(starts), time.perf_counter() - t0)
    return result


class ClearSkyCache:
    """Clear-sky AC power on a regular UTC lattice of ``step_minutes``, computed lazily in blocks and reused.

    Lattice step ``i`` starts at ``1970-01-01 UTC + i × step``. :meth:`at` returns the interval-average
    clear-sky power for given interval starts: lattice-aligned steps are a lookup (microseconds), other
    intervals are computed directly (milliseconds) or, ``isolated``, interpolated from the lattice.

    Parameters
    ----------
    site : SiteInfo
    pv : PVSpec
    step_minutes : int
        Lattice step. [min]
    isolated : bool
        Compute blocks in a short-lived worker process (:func:`clear_sky_pv_kw_isolated`), so pvlib is never
        imported here (the live controller). Each block fill then costs ≈2 s of the calling thread, so a
        lookup also fills the blocks up to :attr:`AHEAD_HOURS` past its last step: a caller moving forward in
        time gets its blocks before it needs them, one worker run per ``BLOCK_STEPS`` steps (85 days at
        15 minutes). Intervals off the lattice (a shortened first planning step) are the lattice values
        linearly interpolated at the interval's middle (within ≈1 % of the AC limit of the direct value).
    """

    BLOCK_STEPS = 8192
    AHEAD_HOURS = 48.0
    """Isolated: how far past the latest step asked for the blocks are filled. [h]"""

    def __init__(self, site: SiteInfo, pv: PVSpec, step_minutes: int = 15, isolated: bool = False):
        if step_minutes <= 0:
            raise ValueError("step_minutes must be positive")
        self.site = site
        self.pv = pv
        self.step_minutes = step_minutes
        self.step_ns = step_minutes * 60 * 1_000_000_000
        self.isolated = isolated
        self.ahead_steps = math.ceil(self.AHEAD_HOURS * 60 / step_minutes) if isolated else 0
        self._compute = clear_sky_pv_kw_isolated if isolated else clear_sky_pv_kw
        self._blocks: dict[int, np.ndarray] = {}

    def _fill(self, first: int, last: int) -> None:
        """Compute the missing blocks among ``first..last`` in one call."""
        missing = [b for b in range(first, last + 1) if b not in self._blocks]
        if not missing:
            return
        offsets = np.arange(self.BLOCK_STEPS, dtype=np.int64) * self.step_ns
        ns = np.concatenate([b * self.BLOCK_STEPS * self.step_ns + offsets for b in missing])
        values = self._compute(pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True)), self.step_minutes / 60.0,
                               self.site, self.pv)
        for k, b in enumerate(missing):
            self._blocks[b] = values[k * self.BLOCK_STEPS:(k + 1) * self.BLOCK_STEPS]

    def lattice(self, index: np.ndarray) -> np.ndarray:
        """Clear-sky power at lattice step numbers ``index`` (int64). [kW]"""
        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            return np.zeros(0)
        first, last = int(index.min()), int(index.max())
        lo, hi = first // self.BLOCK_STEPS, last // self.BLOCK_STEPS
        self._fill(lo, (last + self.ahead_steps) // self.BLOCK_STEPS)
        if lo == hi:
            return self._blocks[lo][index - lo * self.BLOCK_STEPS]
        joined = np.concatenate([self._blocks[b] for b in range(lo, hi + 1)])
        return joined[index - lo * self.BLOCK_STEPS]

    def span(self, first: int, count: int) -> np.ndarray:
        """Clear-sky power at the ``count`` consecutive lattice steps from step number ``first``. [kW]"""
        b = first // self.BLOCK_STEPS
        offset = first - b * self.BLOCK_STEPS
        if offset + count > self.BLOCK_STEPS:
            return self.lattice(np.arange(first, first + count, dtype=np.int64))
        self._fill(b, (first + count - 1 + self.ahead_steps) // self.BLOCK_STEPS)
        return self._blocks[b][offset:offset + count]

    def _interpolated(self, starts_ns: np.ndarray, duration_h: np.ndarray) -> np.ndarray:
        """Lattice values (each belongs to its step's middle) linearly interpolated at the intervals' middles."""
        middle = starts_ns + np.rint(duration_h * 1800e9).astype(np.int64)
        index, rest = np.divmod(middle - self.step_ns // 2, self.step_ns)
        frac = rest / self.step_ns
        values = self.lattice(np.concatenate([index, index + 1]))
        return values[:len(index)] * (1.0 - frac) + values[len(index):] * frac

    def at(self, starts_ns: np.ndarray, duration_h: np.ndarray | float) -> np.ndarray:
        """Clear-sky power for intervals starting at ``starts_ns`` (UTC epoch nanoseconds) lasting ``duration_h``
        [h]. [kW]"""
        starts_ns = np.asarray(starts_ns, dtype=np.int64)
        index, rest = np.divmod(starts_ns, self.step_ns)
        if isinstance(duration_h, float) and duration_h == self.step_minutes / 60.0 and not rest.any():
            return self.lattice(index)  # the common case, without per-entry work on the durations
        duration = np.broadcast_to(np.asarray(duration_h, dtype=float), starts_ns.shape)
        aligned = (rest == 0) & (duration == self.step_minutes / 60.0)
        if aligned.all():
            return self.lattice(index)
        out = np.empty(len(starts_ns))
        out[aligned] = self.lattice(index[aligned])
        off = ~aligned
        if self.isolated:
            out[off] = self._interpolated(starts_ns[off], duration[off])
        else:
            out[off] = clear_sky_pv_kw(pd.DatetimeIndex(pd.to_datetime(starts_ns[off], unit="ns", utc=True)),
                                       duration[off], self.site, self.pv)
        return out
