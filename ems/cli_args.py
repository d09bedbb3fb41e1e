"""Argument types for the ``ems`` command line: a number outside its range (or not finite), a time without a UTC
offset or a date that does not exist is refused by argparse with the argument's name and what it needs, exit
status 2, before anything starts.

``type=number(lo=0, lo_open=True)`` takes a finite float > 0; ``type=number(int, 1, 65535)`` an integer port;
``type=aware_time`` an ISO 8601 time with its offset; ``type=local_date`` a date ``YYYY-MM-DD``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import date, datetime
from typing import Literal

TIME_EXAMPLE = "2026-05-04T06:00:00+07:00"


def number(kind: type[int] | type[float] = float, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` that parses a finite ``kind`` within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    low = "" if lo is None else f"{'>' if lo_open else '≥'} {lo:g}"
    high = "" if hi is None else f"≤ {hi:g}"
    wanted = ("an integer" if kind is int else "a number") + (
        f" {low} and {high}" if low and high else f" {low or high}" if low or high else "")

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{wanted} is required, got {text!r}") from None
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
                or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{wanted} is required, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def aware_time(text: str) -> datetime:
    """An argparse ``type``: an ISO 8601 time with its UTC offset (``+07:00`` or ``Z``)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an ISO 8601 time is required, e.g. {TIME_EXAMPLE}, got {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: write it as e.g. {TIME_EXAMPLE} (or Z)")
    return moment


def start_or_now(text: str) -> datetime | Literal["now"]:
    """An argparse ``type`` for a simulated site's ``--start``: ``now`` (the wall clock) or an ISO 8601 time with its
    UTC offset."""
    if text == "now":
        return "now"
    try:
        return aware_time(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or now for the wall clock") from None


def local_date(text: str) -> date:
    """An argparse ``type``: a calendar date ``YYYY-MM-DD`` that exists."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a date YYYY-MM-DD that exists is required, got {text!r}") from None
