"""Does the grid meter see the battery, with our sign? Judged from the holds of ``ems devices test`` on a battery.

A meter at the grid connection reads ``grid_kw = load − PV − battery`` (import +, battery discharge +): when the
battery goes from discharging to charging, the import must rise by as much. The battery test's charge and
discharge holds give that change twice over (2 × ``--kw``), with the factory's own load in between, so the test
reads every grid meter of the site file while it holds each step and compares

    seen     = mean grid_kw in the charge hold − mean grid_kw in the discharge hold        [kW]
    expected = mean battery_kw in the discharge hold − mean battery_kw in the charge hold  [kW]

as the share ``seen / expected``: about 1, the meter reads import + (pass); about −1, it reads import − (its CTs
face the other way, or the profile lacks ``invert: true``: FAIL); about 0, the battery is not behind this meter
(another incomer, a feeder meter; unclear, not a failure); anything else is a scale or wiring question (FAIL).
A load that moves by more than half the expected change within a hold makes the share meaningless: unclear, with
the advice to test with a larger ``--kw`` when the load is steady. A wrongly signed meter is the commissioning
fault the battery's own sign cannot show: the controller would read import as export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

SIGN_OK = (0.7, 1.3)
"""The share of the battery's change a meter with our sign shows (CT and scale tolerances). [-]"""
NOT_BEHIND = 0.3
"""Below this share (in size) the battery is not behind the meter. [-]"""


@dataclass
class HoldReadings:
    """What the battery test read while it held one step: the battery's power and each grid meter's. [kW]"""

    battery_kw: list[float] = field(default_factory=list)
    grid_kw: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MeterVerdict:
    """A grid meter judged against the battery test.

    Attributes
    ----------
    meter : str
    expected_kw, seen_kw : float | None
        The battery's change from the discharge hold to the charge hold as the grid should see it, and the
        meter's change. [kW]
    passed : bool
        False for a reversed sign or a share out of tolerance.
    judged : bool
        False when the test cannot tell (the load moved too much, too few readings, the battery did not move).
    why : str
        The finding in words.
    """

    meter: str
    expected_kw: float | None
    seen_kw: float | None
    passed: bool
    judged: bool
    why: str


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def judge(meter: str, charge: HoldReadings, discharge: HoldReadings) -> MeterVerdict:
    """The verdict on ``meter`` from the readings of the charge and the discharge holds."""
    def unclear(why: str, expected: float | None = None, seen: float | None = None) -> MeterVerdict:
        return MeterVerdict(meter, expected, seen, True, False, why)

    bat_c, bat_d = _mean(charge.battery_kw), _mean(discharge.battery_kw)
    grid_c, grid_d = charge.grid_kw.get(meter, []), discharge.grid_kw.get(meter, [])
    if bat_c is None or bat_d is None:
        return unclear("not judged: the battery did not hold its charge and discharge steps")
    if not grid_c or not grid_d:
        return unclear("not judged: its grid_kw did not read in both holds")
    expected, seen = bat_d - bat_c, sum(grid_c) / len(grid_c) - sum(grid_d) / len(grid_d)
    spread = max(max(grid_c) - min(grid_c), max(grid_d) - min(grid_d))
    said = f"grid {seen:+.1f} kW from the discharge hold to the charge hold, {expected:+.1f} kW expected"
    if spread > abs(expected) / 2:
        return unclear(f"cannot tell: the grid moved by up to {spread:.1f} kW within a hold, against the test's "
                       f"{expected:.1f} kW ({said}); test with a larger --kw while the load is steady", expected, seen)
    share = seen / expected
    if SIGN_OK[0] <= share <= SIGN_OK[1]:
        return MeterVerdict(meter, expected, seen, True, True, f"sign ok: {said}")
    if -SIGN_OK[1] <= share <= -SIGN_OK[0]:
        return MeterVerdict(meter, expected, seen, False, True,
                            f"sign reversed: {said}: it reads import as export; turn its CTs or set invert: true on "
                            "grid_kw in a copy of its profile (docs/devices.md)")
    if abs(share) < NOT_BEHIND:
        return unclear(f"does not see the battery: {said}; is the battery behind another meter?", expected, seen)
    return MeterVerdict(meter, expected, seen, False, True,
                        f"saw {100 * share:.0f} % of the battery's change: {said}; check its CT ratio, scale and "
                        "which phases it measures")
