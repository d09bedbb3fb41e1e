"""The park Grafana dashboard (deploy/grafana/park/) against a real VictoriaMetrics holding what the
InfluxDB sink writes for two sites: every query answers, per-site panels name both sites, and the
park totals are the sums worked out by hand."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from controller.modes import MODE_CODES, Mode
from controller.telemetry.influx import state_lines
from tests.peers import VictoriaMetrics, sample_state, victoria_metrics  # noqa: F401 (fixture)

PARK = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "park"
GRID_FACTOR = "0.681"


def dashboard() -> dict:
    return json.loads((PARK / "dashboards" / "park.json").read_text(encoding="utf-8"))


def targets() -> list[tuple[str, str]]:
    """``(panel title, expression)`` of every query, with the variables filled in (all sites)."""
    return [(panel["title"], target["expr"].replace("$site", ".*").replace("$grid_factor", GRID_FACTOR))
            for panel in dashboard()["panels"] for target in panel["targets"]]


def query(vm: VictoriaMetrics, expr: str, at: datetime) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "time": at.timestamp()})
    with urllib.request.urlopen(f"{vm.url}/api/v1/query?{params}", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_provisioning_points_at_the_park_dashboards() -> None:
    source = yaml.safe_load((PARK / "provisioning" / "datasources" / "victoriametrics.yaml").read_text())
    datasource = source["datasources"][0]
    provider = yaml.safe_load((PARK / "provisioning" / "dashboards" / "park.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]} and datasource["type"] == "prometheus"


def test_every_query_answers_from_what_the_sink_writes(victoria_metrics: VictoriaMetrics) -> None:  # noqa: F811
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    states = {"site-a": sample_state(now, 3, site="site-a"), "site-b": sample_state(now, 11, site="site-b")}
    body = "\n".join(line for site, state in states.items() for line in state_lines(site, state)).encode()
    request = urllib.request.Request(f"{victoria_metrics.url}/api/v2/write?precision=ms", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    victoria_metrics.wait_for("ems_state_soc_pct", 2)

    for title, expr in targets():
        result = query(victoria_metrics, expr, now + timedelta(seconds=5))
        assert result, f"{title}: {expr} returns nothing"
        if "sum(" not in expr and "count(" not in expr:
            assert {r["metric"]["site"] for r in result} == set(states), f"{title}: {expr}"

    def value(expr: str) -> float:
        return float(query(victoria_metrics, expr, now + timedelta(seconds=5))[0]["value"][1])

    pv = {site: s["measurements"]["pv_kw"]["value"] for site, s in states.items()}
    assert value('sum(ems_state_pv_kw{site=~".*"})') == sum(pv.values())                  # 403 + 411
    assert value('count(ems_state_soc_pct{site=~".*"})') == 2
    co2 = next(e for title, e in targets() if "CO2" in title and "export" in e)
    pv_used_kwh = sum(s["today"]["pv_kwh"] - s["today"]["export_kwh"] for s in states.values())  # 1203 + 1211
    assert abs(value(co2) - pv_used_kwh * float(GRID_FACTOR) / 1000) < 1e-9
    # what the batteries saved this month, and of it the demand charge: the sites' state month blocks summed
    savings = next(p for p in dashboard()["panels"] if p["title"] == "Savings and CO2 (park)")
    month = {t["legendFormat"]: t["expr"].replace("$site", ".*") for t in savings["targets"]}
    assert value(month["saved this month"]) == sum(s["month"]["saved"] for s in states.values())
    assert value(month["of it demand charge"]) == sum(s["month"]["demand_saved"] for s in states.values())
    # month-to-date peak against the contracted capacity, per site; the mode as its code
    peak = next(p for p in dashboard()["panels"] if p["title"].startswith("Month-to-date peak"))
    cap_expr = next(t["expr"] for t in peak["targets"] if "import_cap" in t["expr"]).replace("$site", ".*")
    assert {r["metric"]["site"]: float(r["value"][1]) for r in query(victoria_metrics, cap_expr, now)} == \
        {"site-a": 1200.0, "site-b": 1200.0}
    assert value('max(ems_state_mode_code{site=~".*"})') == MODE_CODES[Mode.AUTO]
    # the sites' coincident 30-min import: one reading each in the last 30 minutes, 321 + 337 kW (sample_state)
    coincident = next(p for p in dashboard()["panels"] if p["title"].startswith("Coincident"))
    grid = {site: s["measurements"]["grid_kw"]["value"] for site, s in states.items()}
    assert value(coincident["targets"][0]["expr"].replace("$site", ".*")) == sum(grid.values()) == 321 + 337
    # when each site's month peak was set, in ms for Grafana's date unit
    table = next(p for p in dashboard()["panels"] if p["title"] == "Sites now")
    set_at = next(t["expr"] for t in table["targets"] if "peak_at" in t["expr"]).replace("$site", ".*")
    assert {r["metric"]["site"]: float(r["value"][1]) for r in query(victoria_metrics, set_at, now)} == \
        {site: datetime.fromisoformat(s["demand"]["month_peak_at"]).timestamp() * 1000 for site, s in states.items()}
    # the site variable lists both sites
    with urllib.request.urlopen(f"{victoria_metrics.url}/api/v1/label/site/values", timeout=10) as resp:
        assert set(json.loads(resp.read())["data"]) >= set(states)


def test_queries_name_only_series_the_sink_writes() -> None:
    state = sample_state(datetime(2026, 5, 4, 3, 0, tzinfo=UTC))
    written = set()
    for line in state_lines("s", state):
        measurement = line.split(",", 1)[0]
        for field in line.split(" ")[1].split(","):
            written.add(f"{measurement}_{field.split('=')[0]}")
    used = {name for _, expr in targets() for name in re.findall(r"\bems_\w+", expr)}
    assert used and used <= written, used - written
