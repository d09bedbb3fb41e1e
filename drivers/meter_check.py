"""Does the grid meter see the unit under test, with our sign? Judged from the holds of ``ems devices test``.

A meter at the grid connection reads ``grid_kw = load − PV − battery`` (import +, battery discharge +, PV output
+): when a unit gives the site less power, the import must rise by as much. The commissioning tests hold two
levels of the unit's power and read every grid meter of the site file while they hold each:

- a battery: its discharge hold and its charge hold, 2 × ``--kw`` apart;
- a PV inverter: its output before the limit (the full-output hold, nothing written) and in the limit hold, half
  its output apart;

with the factory's own load in between. The test compares

    seen     = mean grid_kw in the lower hold − mean grid_kw in the higher hold        [kW]
    expected = mean unit power in the higher hold − mean unit power in the lower hold  [kW]

as the share ``seen / expected``: about 1, the meter reads import + (pass); about −1, it reads import − (its CTs
face the other way, or the profile lacks ``invert: true``: FAIL); about 0, the unit is not behind this meter
(another incomer, a feeder meter; unclear, not a failure); anything else is a scale or wiring question (FAIL).
A load that moves by more than half the expected change within a hold makes the share meaningless: unclear, with
the advice to test again while the load is steady (a battery: with a larger ``--kw``). A wrongly signed meter is
the commissioning fault the unit's own sign cannot show: the controller would read import as export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

SIGN_OK = (0.7, 1.3)
"""The share of the unit's change a meter with our sign shows (CT and scale tolerances). [-]"""
NOT_BEHIND = 0.3
"""Below this share (in size) the unit is not behind the meter. [-]"""


@dataclass
class HoldReadings:
    """What a commissioning test read while it held one step: the unit's power (battery discharge +, PV output +)
    and each grid meter's ``grid_kw``. [kW]"""

    unit_kw: list[float] = field(default_factory=list)
    grid_kw: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MeterVerdict:
    """A grid meter judged against the battery test.

    Attributes
    ----------
    meter : str
    expected_kw, seen_kw : float | None
        The unit's change from the higher hold to the lower one as the grid should see it, and the meter's
        change. [kW]
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


def judge(meter: str, high: HoldReadings, low: HoldReadings, *, unit: str = "battery",
          high_name: str = "discharge hold", low_name: str = "charge hold",
          advice: str = "test with a larger --kw while the load is steady") -> MeterVerdict:
    """The verdict on ``meter`` from the readings of the hold where the ``unit`` gave the site more power (``high``,
    named ``high_name``) and the one where it gave less (``low``); ``advice`` is what to do when the load moved
    too much to tell."""
    def unclear(why: str, expected: float | None = None, seen: float | None = None) -> MeterVerdict:
        return MeterVerdict(meter, expected, seen, True, False, why)

    unit_high, unit_low = _mean(high.unit_kw), _mean(low.unit_kw)
    grid_high, grid_low = high.grid_kw.get(meter, []), low.grid_kw.get(meter, [])
    if unit_high is None or unit_low is None:
        return unclear(f"not judged: the {unit} did not hold both its {high_name} and its {low_name}")
    if not grid_high or not grid_low:
        return unclear("not judged: its grid_kw did not read in both holds")
    expected, seen = unit_high - unit_low, sum(grid_low) / len(grid_low) - sum(grid_high) / len(grid_high)
    spread = max(max(grid_low) - min(grid_low), max(grid_high) - min(grid_high))
    said = f"grid {seen:+.1f} kW from the {high_name} to the {low_name}, {expected:+.1f} kW expected"
    if spread > abs(expected) / 2:
        return unclear(f"cannot tell: the grid moved by up to {spread:.1f} kW within a hold, against the test's "
                       f"{expected:.1f} kW ({said}); {advice}", expected, seen)
    share = seen / expected
    if SIGN_OK[0] <= share <= SIGN_OK[1]:
        return MeterVerdict(meter, expected, seen, True, True, f"sign ok: {said}")
    if -SIGN_OK[1] <= share <= -SIGN_OK[0]:
        return MeterVerdict(meter, expected, seen, False, True,
                            f"sign reversed: {said}: it reads import as export; turn its CTs or set invert: true on "
                            "grid_kw in a copy of its profile (docs/devices.md)")
    if abs(share) < NOT_BEHIND:
        return unclear(f"does not see the {unit}: {said}; is the {unit} behind another meter?", expected, seen)
    return MeterVerdict(meter, expected, seen, False, True,
                        f"saw {100 * share:.0f} % of the {unit}'s change: {said}; check its CT ratio, scale and "
                        "which phases it measures")
