"""Instant and range queries against a Prometheus query API (``GET /api/v1/query``, ``/api/v1/query_range``):
VictoriaMetrics single node, VictoriaMetrics cluster ``vmselect``, or Prometheus. InfluxDB has no such API:
docs/fleet.md."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime


class TsdbError(RuntimeError):
    """The database did not answer, or answered with an error: the message names the URL and why."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and value (``None`` when not finite)."""

    labels: dict[str, str]
    value: float | None


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: its labels and ``(Unix time [s], value or None)`` points."""

    labels: dict[str, str]
    points: list[tuple[float, float | None]]


class PromQuery:
    """Instant and range queries over HTTP (blocking; call from a thread in async code).

    Parameters
    ----------
    url : str
        Base URL; ``/api/v1/query`` is appended.
    token : str, optional
        Sent as ``Authorization: Bearer``.
    timeout_s : float
        Per-request timeout. [s]
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 5.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def instant(self, expr: str, at: datetime | None = None) -> list[Sample]:
        """The instant vector of ``expr`` now, or at ``at`` (aware); raises :class:`TsdbError`."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at.timestamp():.3f}"}
        result = self._get("query", params, "vector")
        return [Sample(dict(item["metric"]), _finite(item["value"][1])) for item in result]

    def range(self, expr: str, start: datetime, end: datetime, step_s: int) -> list[RangeSeries]:
        """``expr`` evaluated every ``step_s`` seconds from ``start`` to ``end`` (aware, both included), read from
        the stored samples, not from VictoriaMetrics' response cache (``nocache=1``; Prometheus ignores it), so
        points a site delivers late (its outbox after an outage) count as soon as they are stored; raises
        :class:`TsdbError`."""
        params = {"query": expr, "start": f"{start.timestamp():.3f}", "end": f"{end.timestamp():.3f}",
                  "step": str(step_s), "nocache": "1"}
        result = self._get("query_range", params, "matrix")
        return [RangeSeries(dict(item["metric"]), [(float(t), _finite(v)) for t, v in item["values"]])
                for item in result]

    def _get(self, endpoint: str, params: dict[str, str], result_type: str) -> list[dict]:
        """``GET /api/v1/<endpoint>``'s ``data.result`` of ``result_type``."""
        request = urllib.request.Request(f"{self.url}/api/v1/{endpoint}?" + urllib.parse.urlencode(params))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        expr = params["query"]
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            raise TsdbError(f"{self.url}: HTTP {exc.code} for {expr!r}: {detail}") from None
        except (OSError, ValueError) as exc:   # refused, timeout, DNS, not JSON
            raise TsdbError(f"{self.url} not answering: {exc}") from None
        if body.get("status") != "success" or body.get("data", {}).get("resultType") != result_type:
            raise TsdbError(f"{self.url}: unexpected answer to {expr!r}: {str(body)[:200]}")
        return body["data"]["result"]


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None
