"""The external forecasts a controller accepted, kept in its state file so that a restart loses none of them.

Every accepted forecast (REST, MQTT, CSV; :mod:`optimizer.external_forecast`) is stored as one value of the state
file (:class:`controller.state_store.StateStore`), key ``external_forecast/<step ns>/<source>/<quantities>`` with
the start of the first planning step at or after its ``issued_at`` (one received later in the same step overwrites
it, as :meth:`optimizer.external_accuracy.ExternalAccuracy.record` keeps one per step: a sender posting every
minute keeps 96 a day), holding ``{"received_at", "forecast"}`` with the forecast as
:meth:`~optimizer.external_forecast.ExternalForecast.to_payload`. After a restart :meth:`ForecastRecord.restore`
hands them back in the order they arrived: the forecast that was in use is in use again until it expires, and the
forecasts of the accuracy window are scored again on the restored measured history (docs/data.md, "Accuracy of
external forecasts"). Values are kept ``keep_days`` after their issue time, at most :data:`MAX_KEPT` of them (the
oldest received go first). A stored value that is not a valid forecast is dropped and named, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import pandas as pd

from controller.state_store import StateStore
from optimizer.external_forecast import ExternalForecast, ExternalForecasts

log = logging.getLogger(__name__)

#: Key prefix of the stored forecasts in the state file.
KEY_PREFIX = "external_forecast/"
#: Stored forecasts kept at most (a sender posting every 15 minutes keeps 20 days of them). [-]
MAX_KEPT = 2000


def _step_ns(key: str) -> int:
    return int(key[len(KEY_PREFIX):].split("/", 1)[0])


class ForecastRecord:
    """The accepted external forecasts of the last ``keep_days`` days in ``store``, one per source, quantities and
    planning step of issue (the last received).

    Parameters
    ----------
    store : StateStore
        The controller's state file.
    keep_days : float
        How long after its issue time a forecast is kept: the accuracy window plus the 48 h it is scored over, or
        the longest validity (2 days) when nothing is scored. [d]
    step_minutes : int
        The planning step: one forecast per source, quantities and step of issue is kept.
    max_kept : int
        Most forecasts kept.
    """

    def __init__(self, store: StateStore, keep_days: float, step_minutes: int, max_kept: int = MAX_KEPT):
        self.store, self.keep_days, self.max_kept = store, keep_days, max_kept
        self.step_ns = step_minutes * 60_000_000_000
        self._received: dict[str, int] = {}  # key → received [UTC epoch ns]

    def _key(self, forecast: ExternalForecast) -> str:
        step = -(-pd.Timestamp(forecast.issued_at).value // self.step_ns) * self.step_ns
        return f"{KEY_PREFIX}{step:020d}/{forecast.source}/{'+'.join(forecast.quantities)}"

    def add(self, forecast: ExternalForecast, now: datetime) -> None:
        """Store an accepted forecast received at ``now`` (UTC) and drop what is past keeping."""
        key = self._key(forecast)
        self.store.put(key, {"received_at": now.isoformat(), "forecast": forecast.to_payload()}, now)
        self._received.pop(key, None)
        self._received[key] = pd.Timestamp(now).value
        self._prune(now)

    def restore(self, forecasts: ExternalForecasts, now: datetime,
                on_restored: Callable[[ExternalForecast], None] | None = None) -> list[str]:
        """Hand the stored forecasts back to ``forecasts`` in the order they were received
        (:meth:`~optimizer.external_forecast.ExternalForecasts.restore`) and each one taken back to ``on_restored``
        (the accuracy record). Returns why each stored value was dropped (``"<key>: <why>"``); dropped values are
        deleted."""
        problems: list[str] = []
        stored: list[tuple[int, str, dict]] = []
        for key in self.store.keys(KEY_PREFIX):
            value = self.store.get(key)
            try:
                _step_ns(key)
                if not isinstance(value, dict) or not isinstance(value.get("forecast"), dict):
                    raise ValueError("not {received_at, forecast}")
                received = pd.Timestamp(value["received_at"])
                if received.tzinfo is None:
                    raise ValueError(f"received_at {value['received_at']!r} has no UTC offset")
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(f"{key}: {exc}")
                self.store.delete(key)
                continue
            stored.append((received.value, key, value["forecast"]))
        stored.sort()
        taken, refused = forecasts.restore([payload for _, _, payload in stored])
        for i, (received_ns, key, _) in enumerate(stored):
            if i in refused:
                problems.append(f"{key}: {refused[i]}")
                self.store.delete(key)
            else:
                self._received[key] = received_ns
        if on_restored is not None:
            for forecast in taken:
                on_restored(forecast)
        if taken:
            log.info("%d external forecast(s) taken back from the state file", len(taken))
        self._prune(now)
        return problems

    def _prune(self, now: datetime) -> None:
        oldest = pd.Timestamp(now).value - int(self.keep_days * 86_400e9)
        drop = [key for key in self._received if _step_ns(key) < oldest]
        by_arrival = sorted((ns, key) for key, ns in self._received.items() if key not in drop)
        drop += [key for _, key in by_arrival[:max(0, len(by_arrival) - self.max_kept)]]
        for key in drop:
            self.store.delete(key)
            del self._received[key]
