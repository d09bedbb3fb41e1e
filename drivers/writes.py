"""The one write-skip/re-send rule for setpoints, shared by every device (real or in-memory).

A setpoint is sent when it is *due*: the device has no value of ours (first write, after a failed
write, after the device was lost or entered remote control), the caller forces it, the re-send period
has passed since the last write, the new value differs from the last one by at least the deadband, or
it returns to 0 from anything else (a stop is never swallowed by the deadband). Otherwise the device
already holds (nearly) the value and nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one setpoint write.

    ``value`` is what was written after clamping, in the point's unit, or — when the write was skipped
    (``sent`` False) — the value the device already holds from the last write; ``verified`` is None when
    no read-back was made.
    """

    point: str
    requested: float
    value: float
    clamped: bool
    sent: bool
    verified: bool | None
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Sent:
    """A value written to a point, and when. [point unit, site monotonic s]"""

    value: float
    at: float


class WriteMemory:
    """What was last written to each point of one device, and whether a new value is due.

    Parameters
    ----------
    resend_s : float | None
        Re-send an unchanged value at least this often (the controller's ``control.heartbeat_s``);
        ``None``: only the point's own period (a profile's ``write.rewrite_s``). [site s]
    """

    def __init__(self, resend_s: float | None = None):
        self.resend_s = resend_s
        self._sent: dict[str, Sent] = {}

    def last(self, point: str) -> Sent | None:
        """The last successful write of ``point``, or ``None`` when the device holds no value of ours."""
        return self._sent.get(point)

    def due(self, point: str, value: float, now: float, *, deadband: float = 0.0, force: bool = False,
            period_s: float | None = None) -> bool:
        """Whether ``value`` must be sent now.

        Parameters
        ----------
        value : float
            The (clamped) value to write. [point unit]
        now : float
            Site monotonic time. [s]
        deadband : float
            A change smaller than this is not sent (a change to 0 always is). [point unit]
        force : bool
            Send whatever the last value.
        period_s : float | None
            The point's own re-send period (``write.rewrite_s``), combined with :attr:`resend_s`. [s]
        """
        last = self._sent.get(point)
        if last is None or force:
            return True
        periods = [p for p in (period_s, self.resend_s) if p is not None]
        if periods and now - last.at >= min(periods):
            return True
        change = abs(value - last.value)
        return (value == 0 != last.value) or (change > 0 and change >= deadband)

    def record(self, point: str, value: float, now: float) -> None:
        """``value`` was written to ``point`` and applied, at site monotonic ``now``. [s]"""
        self._sent[point] = Sent(value, now)

    def forget(self, point: str | None = None) -> None:
        """The device may no longer hold ``point`` (every point when ``None``): send it again next time."""
        if point is None:
            self._sent.clear()
        else:
            self._sent.pop(point, None)
