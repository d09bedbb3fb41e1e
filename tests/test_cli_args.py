"""Numbers, times and dates on the ``ems`` command line: refused with the argument's name and what it needs, exit 2,
before anything starts (``--speed 0`` used to run at the file's speed, ``--speed -5`` and ``nan`` to end in a
traceback, ``--duration nan`` to run for ever, ``park-summary --port 99999`` to end in an OverflowError, ``plan
--start tomorrow`` to say only "Invalid isoformat string", ``forecast check --at`` to name a private function)."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.cli import main
from ems.cli_args import aware_time, local_date, number


def test_known_answers():
    positive = number(lo=0, lo_open=True)
    assert positive("2.5") == 2.5 and positive("1e-9") == 1e-9
    port = number(int, 0, 65535)
    assert port("0") == 0 and port("65535") == 65535
    for parse, text, says in [
            (positive, "0", "a number > 0 is required, got '0'"),
            (positive, "nan", "a number > 0 is required, got 'nan'"),
            (positive, "inf", "a number > 0 is required, got 'inf'"),
            (positive, "fast", "a number > 0 is required, got 'fast'"),
            (port, "65536", "an integer ≥ 0 and ≤ 65535 is required, got '65536'"),
            (port, "80.5", "an integer ≥ 0 and ≤ 65535 is required, got '80.5'"),
            (number(lo=0), "-0.1", "a number ≥ 0 is required, got '-0.1'")]:
        with pytest.raises(argparse.ArgumentTypeError) as err:
            parse(text)
        assert str(err.value) == says


def test_times_and_dates():
    assert aware_time("2026-05-04T06:00:00+07:00") == datetime(2026, 5, 4, 6, tzinfo=timezone(timedelta(hours=7)))
    assert aware_time("2026-05-03T23:00Z") == datetime(2026, 5, 3, 23, tzinfo=UTC)
    assert local_date("2026-02-28") == date(2026, 2, 28)
    for parse, text, says in [
            (aware_time, "tomorrow", "an ISO 8601 time is required, e.g. 2026-05-04T06:00:00+07:00, got 'tomorrow'"),
            (aware_time, "2026-05-04T06:00", "'2026-05-04T06:00' has no UTC offset: write it as e.g. "
                                             "2026-05-04T06:00:00+07:00 (or Z)"),
            (local_date, "2026-02-29", "a date YYYY-MM-DD that exists is required, got '2026-02-29'")]:
        with pytest.raises(argparse.ArgumentTypeError) as err:
            parse(text)
        assert str(err.value) == says


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e6, 1e6), st.floats(0, 1e6), st.booleans())
def test_a_number_is_taken_exactly_when_finite_and_in_its_range(x, lo, width, lo_open):
    hi = lo + width
    parse = number(lo=lo, hi=hi, lo_open=lo_open)
    inside = math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi
    if inside:
        assert parse(repr(x)) == x
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(repr(x))


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "--simulate", "--speed", "0"], "ems run: error: argument --speed: a number > 0 and ≤ 10000 is required"),
    (["run", "--simulate", "--speed", "20000"], "argument --speed: a number > 0 and ≤ 10000 is required"),
    (["run", "--simulate", "--duration", "nan"], "argument --duration: a number > 0 is required, got 'nan'"),
    (["sim", "serve", "--config", "x.yaml", "--speed", "-5"], "argument --speed: a number > 0 and ≤ 10000"),
    (["plan", "--config", "x.yaml", "--month-peak", "nan"], "argument --month-peak: a number ≥ 0 is required"),
    (["park-summary", "--config", "x.yaml", "--port", "99999"], "argument --port: an integer ≥ 0 and ≤ 65535"),
    (["sweep", "x.yaml", "--out", "o", "--pv", "1", "--battery", "1", "--workers", "0"],
     "argument --workers: an integer ≥ 1 is required, got '0'"),
    (["devices", "scan", "127.0.0.1", "--unit", "248"], "argument --unit: an integer ≥ 0 and ≤ 247"),
    (["devices", "test", "--config", "x.yaml", "battery", "--hold-s", "-1"], "argument --hold-s: a number > 0"),
    (["devices", "write", "--config", "x.yaml", "battery", "battery_setpoint_kw", "nan"],
     "argument VALUE: a number is required, got 'nan'"),
    (["plan", "--config", "x.yaml", "--start", "tomorrow"], "ems plan: error: argument --start: an ISO 8601 time"),
    (["simulate", "x.yaml", "--out", "o", "--start", "2026-13-01"], "argument --start: a date YYYY-MM-DD that exists"),
    (["forecast", "check", "f.csv", "--config", "x.yaml", "--at", "noon"], "argument --at: an ISO 8601 time"),
])
def test_the_ems_command_refuses_a_number_out_of_range_before_it_starts(capsys, argv, says):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert says in capsys.readouterr().err
