"""The grid meter's sign judged from the battery and PV tests' holds (drivers.meter_check), by hand."""

from __future__ import annotations

import pytest

from drivers.meter_check import HoldReadings, judge


def holds(grid_charge: list[float], grid_discharge: list[float], battery_kw: float = 20.0
          ) -> tuple[HoldReadings, HoldReadings]:
    """The discharge hold at +battery_kw and the charge hold at −battery_kw, with the meter's readings."""
    return (HoldReadings([battery_kw] * len(grid_discharge), {"m": grid_discharge}),
            HoldReadings([-battery_kw] * len(grid_charge), {"m": grid_charge}))


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
    assert judge("m", discharge, charge).why == "not judged: its grid_kw did not read in both holds"
    assert judge("m", discharge, HoldReadings()).why == ("not judged: the battery did not hold both its discharge "
                                                        "hold and its charge hold")
    assert judge("other", *holds([520.0, 521.0], [480.0, 481.0])).judged is False   # no readings of that meter


@pytest.mark.parametrize(("limited", "passed", "judged", "why"), [
    ([612.0, 611.0], True, True, "sign ok: grid +211.5 kW from the full-output hold to the limit hold, +210.0 kW "
                                 "expected"),
    ([189.0, 188.0], False, True, "sign reversed: grid -211.5 kW from the full-output hold to the limit hold, "
                                  "+210.0 kW expected: it reads import as export"),
    ([400.0, 401.0], True, False, "does not see the inverter: grid +0.5 kW from the full-output hold to the limit "
                                  "hold, +210.0 kW expected; is the inverter behind another meter?"),
])
def test_a_pv_inverter_limited_to_half_its_output_raises_the_import_by_as_much(limited, passed, judged, why) -> None:
    """The PV test's holds: 420 kW at full output, 210 kW in the limit hold; 400 kW imported before the limit."""
    full = HoldReadings([420.0, 420.0], {"m": [400.0, 400.0]})
    limit = HoldReadings([210.0, 210.0], {"m": limited})
    verdict = judge("m", full, limit, unit="inverter", high_name="full-output hold", low_name="limit hold",
                    advice="test again while the load and the sun are steady")
    assert (verdict.passed, verdict.judged) == (passed, judged) and verdict.why.startswith(why), verdict.why
