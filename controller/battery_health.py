"""The battery's state of health as the controller uses it.

A BMS's SOC is a share of the energy the battery holds *now* (its full-charge capacity), which falls with age: a
1,000 kWh battery at SOH 85 % holds 850 kWh, and 50 % SOC is 425 kWh. The controller plans on that energy — the
planner's LP, the SOC of a plan's start, the month's peak target — and the validator's SOC-rate rule allows for it,
from the last valid ``soh_pct`` the battery reported (SOH moves by tenths of a percent a month: a value a moment
old is as good as a new one, a poll that misses it does not change the plan, and a step change is taken only once it
holds: :class:`SteadyReading`). The rule of what planning takes
from a measured SOH is :func:`optimizer.site.planning_soh_pct` (whole percent, 50–100 %); a battery that never
reports SOH is planned on its nameplate ``battery.capacity_kwh``, as before (docs/controller.md "State of health").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from optimizer.site import SOH_FLOOR_PCT, health_share, planning_soh_pct

log = logging.getLogger(__name__)

SOH_STEP_PCT = 2.0
"""A state of health moves by tenths of a percent a month: a change larger than this at once is taken only when it
holds for :data:`SOH_SETTLE_S` (a BMS recalibration), never from one poll (a glitch of the register). [%]"""
SOH_SETTLE_S = 600.0
"""How long a step change of the state of health must hold to be taken. [s]"""


@dataclass
class SteadyReading:
    """The state of health one battery (or group) reported, as the controller takes it: the first valid value at
    once, then changes of up to :data:`SOH_STEP_PCT` at once and larger ones once they hold for
    :data:`SOH_SETTLE_S` of site time."""

    value: float | None = None
    """The value taken. [%]"""
    _candidate: float | None = None
    _since_s: float | None = None

    def offer(self, value: float, now_s: float) -> None:
        """A valid reading ``value`` [%] at site monotonic time ``now_s`` [s]."""
        if self.value is None or abs(value - self.value) <= SOH_STEP_PCT:
            self.value, self._candidate, self._since_s = value, None, None
        elif self._candidate is None or self._since_s is None or abs(value - self._candidate) > SOH_STEP_PCT:
            self._candidate, self._since_s = value, now_s
        elif now_s - self._since_s >= SOH_SETTLE_S:
            self.value, self._candidate, self._since_s = value, None, None


class BatteryHealth:
    """The last valid measured state of health and the energy it leaves the battery.

    Parameters
    ----------
    nameplate_kwh : float
        The site's usable nameplate energy, ``battery.capacity_kwh``. [kWh]
    """

    def __init__(self, nameplate_kwh: float):
        self.nameplate_kwh = float(nameplate_kwh)
        self.soh_pct: float | None = None
        """The SOH planning uses (:func:`~optimizer.site.planning_soh_pct` of the last valid reading); None until
        one is read. [%]"""
        self._ignored: float | None = None  # the last reading left out (logged once)
        self._reading = SteadyReading()

    def observe(self, soh_pct: float | None, now_s: float) -> None:
        """Take a validated ``soh_pct`` reading [%] at site monotonic time ``now_s`` [s] (None: not read this cycle,
        the last one stays; a step change is taken once it holds: :class:`SteadyReading`)."""
        if soh_pct is None:
            return
        used = planning_soh_pct(soh_pct)
        if used is None:
            if soh_pct != self._ignored:
                log.warning("battery state of health %g %% is not used for planning (outside %g–100 %%: a BMS "
                            "that does not compute it commonly reports 0); planning stays on %.0f kWh", soh_pct,
                            SOH_FLOOR_PCT, self.capacity_kwh)
                self._ignored = soh_pct
            return
        self._ignored = None
        self._reading.offer(soh_pct, now_s)
        used = planning_soh_pct(self._reading.value)
        if used != self.soh_pct:
            log.info("battery state of health %g %%: planning on %.0f kWh of the %.0f kWh nameplate", used,
                     self.nameplate_kwh * health_share(used), self.nameplate_kwh)
            self.soh_pct = used

    @property
    def capacity_kwh(self) -> float:
        """The energy the battery holds at full SOC now: nameplate × SOH (the nameplate without a valid SOH). [kWh]"""
        return self.nameplate_kwh * health_share(self.soh_pct)

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready entry ``battery`` of the state message: ``soh_pct`` (planning's, None = not measured),
        ``capacity_kwh`` (planned on) and ``nameplate_kwh``."""
        return {"soh_pct": self.soh_pct, "capacity_kwh": self.capacity_kwh, "nameplate_kwh": self.nameplate_kwh}
