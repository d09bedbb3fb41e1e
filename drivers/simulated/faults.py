"""Fault injection for the simulated devices: what each device does wrong right now.

Kinds (per device, several at once; a client sees them as it would on a real site):

- ``offline``: the device stops answering. If every device behind a port is offline the TCP server
  stops (connections refused); otherwise the shared port answers for it with exception 0x0B
  (gateway target failed to respond), as TCP-to-RS485 gateways do.
- ``frozen``: the register image stops updating and keeps serving the values it held at that moment (stale
  but plausible; from the start: the first step's values).
- ``exception``: every request gets a Modbus exception response with ``code`` (e.g. 4, device failure).
- ``slow``: every answer is delayed by ``delay_s`` real seconds (client timeouts are real time).
- ``sentinel``: the named points (all measured points if none are named) read "not implemented".
- ``out_of_range``: a point reads a given value (in the point's unit) instead of the truth.
- ``ignore_setpoint``: the unit keeps the power it had when the fault began (from the start: a battery
  0 kW, an inverter no limit) whatever is written; writes are still accepted and read back, as a unit
  whose setpoint never reaches its PCS does.
- ``bms_charge`` / ``bms_discharge``: a derated BMS allows only this % of the unit's PCS limits (and reports it).

Text form (``ems sim serve --fault``): ``DEVICE:offline``, ``DEVICE:frozen``, ``DEVICE:exception=4``,
``DEVICE:slow=3``, ``DEVICE:sentinel`` or ``DEVICE:sentinel=soc_pct``, ``DEVICE:out_of_range=soc_pct=250``,
``DEVICE:ignore_setpoint``, ``DEVICE:bms_charge=50``, ``DEVICE:bms_discharge=0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes


@dataclass
class DeviceFaults:
    """The faults active on one device (all off by default)."""

    offline: bool = False
    frozen: bool = False
    exception_code: int | None = None
    delay_s: float = 0.0
    sentinel_points: set[str] | None = None  # None: off; empty set: every measured point
    overrides: dict[str, float] = field(default_factory=dict)
    ignore_setpoint: bool = False
    bms_max_charge_pct: float = 100.0
    bms_max_discharge_pct: float = 100.0


class Faults:
    """Faults by device name; ``on_change`` runs after every change (the site reconciles its servers)."""

    def __init__(self, devices: Iterable[str], on_change: Callable[[], None] | None = None):
        self._faults = {name: DeviceFaults() for name in devices}
        self.on_change = on_change

    def of(self, device: str) -> DeviceFaults:
        """The faults of ``device`` (KeyError for an unknown device)."""
        try:
            return self._faults[device]
        except KeyError:
            raise KeyError(f"no simulated device {device!r}; devices: {', '.join(self._faults)}") from None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def offline(self, device: str, on: bool = True) -> None:
        self.of(device).offline = on
        self._changed()

    def freeze(self, device: str, on: bool = True) -> None:
        self.of(device).frozen = on
        self._changed()

    def exception(self, device: str, code: int | None = 4) -> None:
        """Answer every request with Modbus exception ``code``; ``None`` ends it."""
        if code is not None and code not in {c.value for c in ExcCodes}:
            raise ValueError(f"exception code must be one of {sorted(c.value for c in ExcCodes)}, got {code}")
        self.of(device).exception_code = code
        self._changed()

    def slow(self, device: str, delay_s: float) -> None:
        """Delay every answer by ``delay_s`` real seconds (0 ends it). [s]"""
        if delay_s < 0:
            raise ValueError("delay_s must be ≥ 0")
        self.of(device).delay_s = delay_s
        self._changed()

    def sentinel(self, device: str, points: Iterable[str] | None = None) -> None:
        """Serve ``points`` (default: every measured point) as not implemented."""
        self.of(device).sentinel_points = set(points or ())
        self._changed()

    def out_of_range(self, device: str, point: str, value: float | None) -> None:
        """Serve ``value`` for ``point`` instead of the truth; ``None`` ends it."""
        overrides = self.of(device).overrides
        if value is None:
            overrides.pop(point, None)
        else:
            overrides[point] = value
        self._changed()

    def ignore_setpoint(self, device: str, on: bool = True) -> None:
        """Make the unit keep its own power whatever is written (``on=False`` ends it)."""
        self.of(device).ignore_setpoint = on
        self._changed()

    def bms_limit(self, device: str, charge_pct: float | None = None, discharge_pct: float | None = None) -> None:
        """Derate the unit's BMS to ``charge_pct``/``discharge_pct`` % of its PCS limits (100 ends it). [%]"""
        f = self.of(device)
        for pct in (charge_pct, discharge_pct):
            if pct is not None and not 0.0 <= pct <= 100.0:
                raise ValueError(f"a BMS limit must be within 0–100 %, got {pct}")
        if charge_pct is not None:
            f.bms_max_charge_pct = charge_pct
        if discharge_pct is not None:
            f.bms_max_discharge_pct = discharge_pct
        self._changed()

    def clear(self, device: str | None = None) -> None:
        """End every fault of ``device`` (default: of every device)."""
        for name in [device] if device is not None else list(self._faults):
            self.of(name)
            self._faults[name] = DeviceFaults()
        self._changed()

    def apply(self, text: str) -> None:
        """Apply one fault in text form (see the module docstring); ValueError if it cannot be parsed."""
        device, sep, spec = text.partition(":")
        kind, _, arg = spec.partition("=")
        if not sep or not device or not kind:
            raise ValueError(f"fault {text!r}: expected DEVICE:KIND[=ARG]")
        try:
            if kind == "offline":
                self.offline(device)
            elif kind == "frozen":
                self.freeze(device)
            elif kind == "exception":
                self.exception(device, int(arg or 4))
            elif kind == "slow":
                self.slow(device, float(arg))
            elif kind == "sentinel":
                self.sentinel(device, [arg] if arg else None)
            elif kind == "ignore_setpoint":
                self.ignore_setpoint(device)
            elif kind == "bms_charge":
                self.bms_limit(device, charge_pct=float(arg))
            elif kind == "bms_discharge":
                self.bms_limit(device, discharge_pct=float(arg))
            elif kind == "out_of_range":
                point, _, value = arg.partition("=")
                self.out_of_range(device, point, float(value))
            else:
                raise ValueError(f"unknown fault kind {kind!r}")
        except KeyError as exc:
            raise ValueError(f"fault {text!r}: {exc.args[0]}") from None
        except ValueError as exc:
            raise ValueError(f"fault {text!r}: {exc}") from None
