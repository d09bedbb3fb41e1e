"""Checks of measured study data that do not make it wrong, only less than it seems: said as warnings.

PV measured at a plant that holds its export at zero (or at a limit) is what the plant *delivered*, not what the
array could give: at midday on a light-load day the inverters were throttled down to the load. A study on that PV
leaves out the surplus a battery would have stored, the very value it is asked to find. The sign is in the data: at
those steps the PV covers the load almost exactly and the grid stays near 0 kW.

Meter data coarser than the window a demand charge is billed on (hourly readings under 30-minute windows) shows
each month's peak as a longer average, lower than the one billed. Rules and thresholds: docs/data.md.
"""

from __future__ import annotations

import numpy as np

from optimizer.tariff_schema import TariffSpec

HELD_GRID_KW = 2.0
HELD_GRID_LOAD_FRACTION = 0.03
"""The grid is "near 0 kW" within the larger of HELD_GRID_KW and this share of the load (a zero-export controller
keeps a small import margin). [kW], [-]"""
SUNNY_FRACTION_OF_PEAK = 0.1
"""Steps with PV above this share of the period's highest PV are the sunny ones looked at. [-]"""
WARN_SHARE = 0.05
"""Warn when at least this share of the sunny steps look held back. [-]"""


def _sunny(pv_kw: np.ndarray) -> np.ndarray:
    """True at the steps whose PV is above :data:`SUNNY_FRACTION_OF_PEAK` of the highest (none without PV). [kW] in."""
    peak = float(np.nanmax(pv_kw)) if len(pv_kw) and np.isfinite(pv_kw).any() else 0.0
    return pv_kw > SUNNY_FRACTION_OF_PEAK * peak if peak > 0 else np.zeros(len(pv_kw), dtype=bool)


def pv_held_back(pv_kw: np.ndarray, load_kw: np.ndarray) -> np.ndarray:
    """True at the sunny steps where the PV covered the load with the grid near 0 kW: PV held back by an export
    limit, most likely. [kW] in."""
    pv, load = np.asarray(pv_kw, dtype=float), np.asarray(load_kw, dtype=float)
    margin = np.maximum(HELD_GRID_KW, HELD_GRID_LOAD_FRACTION * load)
    return _sunny(pv) & (np.abs(load - pv) <= margin)


def pv_held_back_warning(pv_kw: np.ndarray, load_kw: np.ndarray) -> str | None:
    """The warning for measured PV that looks held back at :data:`WARN_SHARE` or more of the sunny steps, else
    None."""
    pv = np.asarray(pv_kw, dtype=float)
    sunny = int(np.sum(_sunny(pv)))
    held = int(np.sum(pv_held_back(pv, load_kw)))
    if sunny == 0 or held < WARN_SHARE * sunny:
        return None
    return (f"the measured PV looks held back at {held:,} of {sunny:,} sunny steps ({100 * held / sunny:.0f} %): "
            f"the grid stayed near 0 kW (within {HELD_GRID_KW:g} kW or {100 * HELD_GRID_LOAD_FRACTION:g} % of the "
            "load) while the PV covered the load, as under a zero-export limit. There the study's PV is what the plant "
            "delivered, not what the array could give, so the surplus a battery would store is left out and its "
            "value understated; take the PV from irradiance (data.irradiance) to count it.")


def coarse_demand_warning(file_step_minutes: float | None, tariff: TariffSpec) -> str | None:
    """The warning for measured data whose step (``file_step_minutes`` [min]; None: not measured) is longer than
    the shortest averaging window of a demand charge the tariff bills (rate above 0), else None."""
    windows = [c.window_minutes for c in tariff.demand_charges if c.rate_per_kw_month > 0]
    if file_step_minutes is None or not windows or file_step_minutes <= min(windows):
        return None
    window = min(windows)
    return (f"the data's step is {file_step_minutes:g} min, coarser than the {window}-minute windows the tariff's "
            f"demand charge is billed on: each month's peak is a {file_step_minutes:g}-minute average, lower than "
            f"the {window}-minute peak billed, so the demand charge and what a battery saves on it are understated; "
            f"study data at {window}-minute steps or finer.")
