"""Instant queries against a Prometheus query API (``GET /api/v1/query``): VictoriaMetrics single node,
VictoriaMetrics cluster ``vmselect``, or Prometheus. InfluxDB has no such API: docs/fleet.md."""

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


class PromQuery:
    """Instant queries over HTTP (blocking; call from a thread in async code).

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
        request = urllib.request.Request(f"{self.url}/api/v1/query?" + urllib.parse.urlencode(params))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            raise TsdbError(f"{self.url}: HTTP {exc.code} for {expr!r}: {detail}") from None
        except (OSError, ValueError) as exc:   # refused, timeout, DNS, not JSON
            raise TsdbError(f"{self.url} not answering: {exc}") from None
        if body.get("status") != "success" or body.get("data", {}).get("resultType") != "vector":
            raise TsdbError(f"{self.url}: unexpected answer to {expr!r}: {str(body)[:200]}")
        return [Sample(dict(item["metric"]), _finite(item["value"][1])) for item in body["data"]["result"]]


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None
