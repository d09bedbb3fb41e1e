"""The shipped Grafana dashboard: the bucket comes from the datasource setting, money panels carry VND, the mode
timeline is aggregated to the display interval, and a month-to-date peak panel shows the demand basis."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.test_deploy import written_fields

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana/dashboards/ems.json").read_text(encoding="utf-8"))


def _panel(title: str) -> dict:
    return next(p for p in _dashboard()["panels"] if p["title"] == title)


def test_every_query_reads_the_bucket_set_on_the_datasource() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/influxdb.yaml").read_text())
    assert datasource["datasources"][0]["jsonData"]["defaultBucket"] == "${INFLUXDB_BUCKET}"
    dashboard = _dashboard()
    queries = [t["query"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert queries and all("v.defaultBucket" in q and "${bucket}" not in q for q in queries)
    assert "bucket" not in {v["name"] for v in dashboard["templating"]["list"]}


def test_money_panels_are_in_vnd() -> None:
    assert _panel("Saved by the battery")["fieldConfig"]["defaults"]["unit"] == "suffix: VND"
    assert _panel("Prices")["fieldConfig"]["defaults"]["unit"] == "suffix: VND/kWh"


def test_mode_timeline_is_aggregated_to_the_display_interval() -> None:
    query = _panel("Mode")["targets"][0]["query"]
    assert "aggregateWindow(every: v.windowPeriod, fn: last" in query


def test_month_to_date_peak_panel_reads_the_controllers_demand_fields() -> None:
    panel = _panel("Month-to-date peak")
    assert panel["fieldConfig"]["defaults"]["unit"] == "kwatt"
    query = panel["targets"][0]["query"]
    written = written_fields()
    for field in ("demand_month_peak_kw", "demand_interval_avg_kw", "demand_import_cap_kw", "demand_hold_kw",
                  "demand_shed_to_hold_kw"):
        assert f'r._field == "{field}"' in query and ("ems_state", field) in written
    cap = next(o for o in panel["fieldConfig"]["overrides"] if "import_cap" in o["matcher"]["options"])
    names = {p["id"]: p["value"] for p in cap["properties"]}
    assert names["displayName"] == "contracted capacity" and names["custom.lineStyle"]["fill"] == "dash"


def test_the_saved_panel_shows_today_and_the_month_with_its_demand_charge() -> None:
    panel = _panel("Saved by the battery")
    query = panel["targets"][0]["query"]
    written = written_fields()
    for field in ("today_saved", "month_saved", "month_demand_saved"):
        assert f'r._field == "{field}"' in query and ("ems_state", field) in written
    names = {o["matcher"]["options"]: o["properties"][0]["value"] for o in panel["fieldConfig"]["overrides"]}
    assert names[".*month_demand_saved.*"] == "of it, demand charge"


def test_the_state_of_health_panel_reads_what_the_controller_plans_on() -> None:
    panel = _panel("Battery state of health")
    query = panel["targets"][0]["query"]
    written = written_fields()
    for field in ("battery_soh_pct", "battery_capacity_kwh"):
        assert f'r._field == "{field}"' in query and ("ems_state", field) in written
    assert "fn: last" in query
    units = {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}["unit"]
             for o in panel["fieldConfig"]["overrides"]}
    assert units == {".*battery_soh_pct.*": "percent", ".*battery_capacity_kwh.*": "kwatth"}
