"""Clear-sky PV power of a site with pvlib, and a cache of it on a regular time lattice.

Model chain (pvlib): solar position → Ineichen clear sky with the monthly Linke turbidity that ships
with pvlib → Hay–Davies transposition to the plane of array → cell temperature (Faiman, constant
ambient) → PVWatts DC (−0.4 %/°C) → system losses → PVWatts inverter clipped at the AC limit.
Degradation (``PVSpec.degradation_pct_per_year``) is not applied: this is year-one power.

Each interval is evaluated at its middle, so the value is the interval-average power to good accuracy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pvlib

from optimizer.site import PVSpec, SiteInfo

HAI_PHONG_MONTHLY_KWH_PER_KWP: tuple[float, ...] = (53, 45, 36, 62, 115, 131, 150, 119, 109, 111, 105, 80)
"""Hai Phong fixed-tilt specific yield per month Jan..Dec, Global-Solar-Atlas derived (1,116 per year);
shared/reference/vietnam-energy.md §4. Use only the shape and scale the total (1,100 central, 950 pessimistic).
[kWh/kWp]"""

AMBIENT_TEMPERATURE_C = 28.0
"""Constant ambient temperature assumed for the cell temperature under clear sky. [°C]"""
WIND_SPEED_M_S = 1.0
"""Constant wind speed assumed for the cell temperature. [m/s]"""
GAMMA_PDC_PER_C = -0.004
"""PVWatts temperature coefficient of DC power. [1/°C]"""
INVERTER_EFFICIENCY = 0.96
"""PVWatts nominal inverter efficiency. [-]"""


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
    half = pd.to_timedelta(np.broadcast_to(np.asarray(duration_h, dtype=float), (n,)) * 1800.0, unit="s")
    times = starts.tz_convert("UTC") + half
    loc = site.location
    location = pvlib.location.Location(loc.latitude, loc.longitude, tz="UTC", altitude=loc.altitude_m)
    with warnings.catch_warnings():  # pvlib 0.16 still calls DatetimeIndex.dayofyear, deprecated in pandas 3
        warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
        solpos = location.get_solarposition(times)
        clearsky = location.get_clearsky(times, model="ineichen", solar_position=solpos)
        dni_extra = pvlib.irradiance.get_extra_radiation(times)
    poa = pvlib.irradiance.get_total_irradiance(
        pv.tilt_deg, pv.azimuth_deg, solpos["apparent_zenith"], solpos["azimuth"],
        clearsky["dni"], clearsky["ghi"], clearsky["dhi"], dni_extra=dni_extra, model="haydavies")
    poa_global = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float), nan=0.0).clip(min=0.0)
    temp_cell = pvlib.temperature.faiman(poa_global, AMBIENT_TEMPERATURE_C, WIND_SPEED_M_S)
    pdc = pvlib.pvsystem.pvwatts_dc(poa_global, temp_cell, pv.kwp, GAMMA_PDC_PER_C)
    pdc = np.asarray(pdc, dtype=float) * (1.0 - pv.losses_pct / 100.0)
    pac = pvlib.inverter.pvwatts(pdc, pv.ac_limit_kw / INVERTER_EFFICIENCY, INVERTER_EFFICIENCY)
    return np.clip(np.nan_to_num(np.asarray(pac, dtype=float), nan=0.0), 0.0, pv.ac_limit_kw)


class ClearSkyCache:
    """Clear-sky AC power on a regular UTC lattice of ``step_minutes``, computed lazily in blocks and reused.

    Lattice step ``i`` starts at ``1970-01-01 UTC + i × step``. :meth:`at` returns the interval-average
    clear-sky power for given interval starts: lattice-aligned starts are a lookup (microseconds); others are
    computed directly (milliseconds).
    """

    BLOCK_STEPS = 8192

    def __init__(self, site: SiteInfo, pv: PVSpec, step_minutes: int = 15):
        if step_minutes <= 0:
            raise ValueError("step_minutes must be positive")
        self.site = site
        self.pv = pv
        self.step_minutes = step_minutes
        self.step_ns = step_minutes * 60 * 1_000_000_000
        self._blocks: dict[int, np.ndarray] = {}

    def _block(self, b: int) -> np.ndarray:
        block = self._blocks.get(b)
        if block is None:
            first = b * self.BLOCK_STEPS * self.step_ns
            starts = pd.DatetimeIndex(pd.to_datetime(first + np.arange(self.BLOCK_STEPS, dtype=np.int64) * self.step_ns,
                                                     unit="ns", utc=True))
            block = clear_sky_pv_kw(starts, self.step_minutes / 60.0, self.site, self.pv)
            self._blocks[b] = block
        return block

    def lattice(self, index: np.ndarray) -> np.ndarray:
        """Clear-sky power at lattice step numbers ``index`` (int64). [kW]"""
        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            return np.zeros(0)
        lo, hi = int(index.min()) // self.BLOCK_STEPS, int(index.max()) // self.BLOCK_STEPS
        if lo == hi:
            return self._block(lo)[index - lo * self.BLOCK_STEPS]
        joined = np.concatenate([self._block(b) for b in range(lo, hi + 1)])
        return joined[index - lo * self.BLOCK_STEPS]

    def at(self, starts_ns: np.ndarray, duration_h: np.ndarray | float) -> np.ndarray:
        """Clear-sky power for intervals starting at ``starts_ns`` (UTC epoch nanoseconds). [kW]"""
        starts_ns = np.asarray(starts_ns, dtype=np.int64)
        index, rest = np.divmod(starts_ns, self.step_ns)
        step_h = self.step_minutes / 60.0
        if not rest.any() and np.all(np.asarray(duration_h) == step_h):
            return self.lattice(index)
        return clear_sky_pv_kw(pd.DatetimeIndex(pd.to_datetime(starts_ns, unit="ns", utc=True)), duration_h,
                               self.site, self.pv)
