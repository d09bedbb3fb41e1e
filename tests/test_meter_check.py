"""The grid meter's sign judged from the battery test's holds (drivers.meter_check), by hand."""

from __future__ import annotations

import pytest

from drivers.meter_check import HoldReadings, judge


def holds(grid_charge: list[float], grid_discharge: list[float], battery_kw: float = 20.0
          ) -> tuple[HoldReadings, HoldReadings]:
    """The charge hold at −battery_kw, the discharge hold at +battery_kw, with the meter's readings."""
    return (HoldReadings([-battery_kw] * len(grid_charge), {"m": grid_charge}),
            HoldReadings([battery_kw] * len(grid_discharge), {"m": grid_discharge}))


@pytest.mark.parametrize(("charge", "discharge", "passed", "judged", "starts"), [
    ([520.0, 521.0], [481.0, 480.0], True, True, "sign ok: grid +40.0 kW"),          # +40 for 40: share 1
    ([480.0, 481.0], [521.0, 520.0], False, True, "sign reversed: grid -40.0 kW"),   # −1
    ([500.0, 501.0], [500.0, 501.0], True, False, "does not see the battery"),       # 0
    ([510.0, 510.0], [490.0, 490.0], False, True, "saw 50 % of the battery's change"),   # a third phase, a CT ratio
    ([540.0, 500.0], [480.0, 480.0], True, False, "cannot tell: the grid moved by up to 40.0 kW within a hold"),
])
def test_the_share_of_the_batterys_change_the_meter_sees(charge, discharge, passed, judged, starts) -> None:
    verdict = judge("m", *holds(charge, discharge))
    assert (verdict.passed, verdict.judged) == (passed, judged) and verdict.why.startswith(starts), verdict.why
    assert verdict.expected_kw == pytest.approx(40.0)


def test_too_few_readings_or_a_battery_that_did_not_hold_are_not_judged() -> None:
    charge, discharge = HoldReadings([-20.0, -20.0], {"m": []}), HoldReadings([20.0], {"m": [480.0]})
    assert judge("m", charge, discharge).why == "not judged: its grid_kw did not read in both holds"
    assert judge("m", HoldReadings(), discharge).why.startswith("not judged: the battery did not hold")
    assert judge("other", *holds([520.0, 521.0], [480.0, 481.0])).judged is False   # no readings of that meter
