"""External forecasts over MQTT against a real mosquitto (controller/telemetry/forecast_intake.py): an accepted
forecast is what the planner's source returns on the steps it covers, a refused one names the field and changes
nothing, an expired one falls back to the built-in model, a retained one is taken once and never replaces a newer
one, every submission is in the audit log, and the shipped ACL lets operators send forecasts and dashboards not."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import numpy as np
import pandas as pd
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.audit import AuditLog
from controller.telemetry.forecast_intake import MAX_FORECAST_BYTES, ForecastIntake
from controller.telemetry.mqtt import MqttSink
from controller.telemetry.remote import schema
from controller.telemetry.wire import ForecastMessage
from optimizer.external_forecast import FIELDS, ExternalForecasts, WithExternal
from optimizer.timegrid import regular_grid
from tests.peers import BROKER_USERS, Mosquitto, mosquitto, mosquitto_auth  # noqa: F401 (fixtures)
from tests.test_mqtt import SITE, T0, WAIT_S, Controller, Listener, listener_for, settings_for

PV = [0.0, 12.5, 40.0, 81.0]


def forecast(**changes: Any) -> dict[str, Any]:
    """A valid forecast issued at T0 (the sink's clock), covering T0 … T0 + 1 h in 15-min steps."""
    base = {"id": "fc-1", "source": "weather-service", "issued_at": T0.isoformat(), "valid_hours": 2,
            "start": T0.isoformat(), "pv_kw": PV}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


class ConstantSource:
    """The built-in forecast source: constant PV 7 kW and load 300 kW."""

    def forecast(self, grid):
        return np.full(len(grid), 7.0), np.full(len(grid), 300.0)


@dataclass
class Site:
    controller: Controller
    store: ExternalForecasts
    audit: AuditLog
    intake: ForecastIntake
    sink: MqttSink
    listener: Listener

    def planned_pv(self) -> list[float]:
        """PV the planner's source gives for the six 15-min steps from T0 (built-in 7 kW where not covered)."""
        source = WithExternal(ConstantSource(), self.store, self.controller.clock.now)
        return source.forecast(regular_grid(pd.Timestamp(T0), 6, 15))[0].tolist()

    async def send(self, payload: bytes | str | dict[str, Any], user: str | None = None,
                   retain: bool = False) -> dict[str, Any]:
        body = json.dumps(payload) if isinstance(payload, dict) else payload
        properties = None
        if user is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = ("user", user)
        await self.listener.client.publish(f"ems/{SITE}/forecast", body, qos=1, retain=retain,
                                           properties=properties)
        return await result_of(self.listener)


async def result_of(listener: Listener) -> dict[str, Any]:
    result = json.loads((await listener.next("forecast/result")).payload)
    jsonschema.validate(result, schema("forecast_result"))
    return result


def sink_for(broker: Mosquitto, controller: Controller, intake: ForecastIntake, client_id: str = "ems-test",
             **kw: Any) -> MqttSink:
    sink = MqttSink(settings_for(broker, client_id=client_id, claim_site=False, **kw), SITE, controller.intake,
                    forecasts=intake)
    sink.start()
    return sink


async def v5_listener(broker: Mosquitto) -> tuple[aiomqtt.Client, Listener]:
    """A subscriber to ``ems/<site>/#`` speaking MQTT v5 (user properties name the sender)."""
    client = aiomqtt.Client(broker.host, broker.port, identifier="test-v5", protocol=aiomqtt.ProtocolVersion.V5)
    await client.__aenter__()
    await client.subscribe(f"ems/{SITE}/#", qos=1)
    return client, Listener(client)


@pytest.fixture
async def site(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Site]:  # noqa: F811
    controller = Controller()
    store = ExternalForecasts(pv_limit_kw=900)
    audit = AuditLog(tmp_path / "state.sqlite")
    intake = ForecastIntake(store, controller.clock, site=SITE, audit=audit.record)
    client, listener = await v5_listener(mosquitto)
    sink = sink_for(mosquitto, controller, intake)
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    yield Site(controller, store, audit, intake, sink, listener)
    await sink.aclose()
    listener._task.cancel()
    await client.__aexit__(None, None, None)
    audit.close()


async def test_an_accepted_forecast_is_what_the_planner_uses_until_it_expires(site: Site) -> None:
    assert site.planned_pv() == [7.0] * 6
    r = await site.send(forecast(), user="weather-svc")
    assert r["accepted"] and r["id"] == "fc-1" and r["site"] == SITE and r["error"] is None
    assert r["quantities"] == ["pv_kw"] and r["steps"] == 4 and r["expires_at"] == (T0 + timedelta(hours=2)).isoformat()
    assert site.planned_pv() == [*PV, 7.0, 7.0]            # the covered steps, the built-in model beyond
    site.controller.clock.advance(2 * 3600)                  # expired: the built-in model everywhere
    assert site.store.current("pv_kw", site.controller.clock.now()) is None and site.planned_pv() == [7.0] * 6
    late = await site.send(forecast(id="fc-late"))           # the same forecast arriving now is refused
    assert not late["accepted"] and late["id"] == "fc-late" and "expired at" in late["error"]
    entries = site.audit.entries(interface="mqtt")
    assert [(e["command"], e["identity"], e["accepted"]) for e in entries] == [
        ("forecast", None, False), ("forecast", "weather-svc", True)]
    assert entries[1]["payload"]["pv_kw"] == PV and "weather-service, pv_kw, 4 steps" in entries[1]["reason"]


@pytest.mark.parametrize(("payload", "error"), [
    (forecast(pv_kw=[10.0, -5.0, 0.0, 0.0]), r"pv_kw\[1\]: -5.0 kW is negative"),
    (forecast(pv_kw=[10.0, 950.0, 0.0, 0.0]), r"pv_kw\[1\]: 950 kW is above the PV AC limit 900 kW"),
    (forecast(start="2026-05-04T03:00:00"), "start: .* has no UTC offset"),
    (forecast(pv=[1.0]), r"pv: unknown field; did you mean pv_kw\?"),
    (forecast(source="x" * 60000), "^source: a name of 1–64 characters is required"),
    (forecast(id=7), "id: a string of at most 64 characters"),
    (b"{not json", "malformed JSON"),
    (b"", "empty payload"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps(forecast(pv_kw=[1.0] * 20000)).encode(), f"payload of .* bytes exceeds {MAX_FORECAST_BYTES}"),
])
async def test_a_bad_forecast_is_refused_naming_what_is_wrong_and_changes_nothing(
        site: Site, payload: bytes | dict[str, Any], error: str) -> None:
    assert (await site.send(forecast(id="good", pv_kw=[1.0, 2.0])))["accepted"]
    r = await site.send(payload, user="someone")
    assert not r["accepted"] and r["steps"] == 0 and r["expires_at"] is None
    assert re.search(error, r["error"]) and len(r["error"]) <= 1000, r["error"][:200]
    assert site.planned_pv() == [1.0, 2.0, 7.0, 7.0, 7.0, 7.0]  # the forecast in use is unchanged
    newest = site.audit.entries(limit=1)[0]
    assert newest["interface"] == "mqtt" and newest["identity"] == "someone" and not newest["accepted"]
    assert newest["command"] == "forecast" and newest["reason"] == r["error"]
    # the sink goes on: a good forecast after the bad one is taken
    assert (await site.send(forecast(id="after", pv_kw=[3.0])))["accepted"] and site.planned_pv()[0] == 3.0


async def test_a_retained_forecast_is_taken_once_and_never_replaces_a_newer_one(site: Site,
                                                                               mosquitto: Mosquitto) -> None:  # noqa: F811
    r = await site.send(forecast(id="kept"), retain=True)
    assert r["accepted"] and site.planned_pv()[:4] == PV
    # a controller starting later gets the publisher's latest forecast from the broker
    other = Controller()
    store = ExternalForecasts(pv_limit_kw=900)
    intake = ForecastIntake(store, other.clock, site=SITE)
    late = sink_for(mosquitto, other, intake, client_id="ems-late")
    first = await result_of(site.listener)
    assert first["accepted"] and first["id"] == "kept" and store.current("pv_kw", T0) is not None
    await late.aclose()
    # on its reconnect the broker delivers the retained copy again: not applied again, a newer one stays
    assert store.submit(forecast(issued_at=(T0 + timedelta(minutes=1)).isoformat(), pv_kw=[5.0], id=None),
                        T0 + timedelta(minutes=1)).accepted
    other.clock.advance(60)
    again = sink_for(mosquitto, other, intake, client_id="ems-late")
    second = await result_of(site.listener)
    assert not second["accepted"] and "not newer than the pv_kw forecast in use" in second["error"]
    assert store.current("pv_kw", other.clock.now()).values["pv_kw"].tolist() == [5.0]
    await again.aclose()
    await site.listener.client.publish(f"ems/{SITE}/forecast", b"", qos=1, retain=True)  # clear it


async def test_the_shipped_acl_lets_operators_send_forecasts_and_dashboards_not(
        mosquitto_auth: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    controller = Controller()
    store = ExternalForecasts()
    monkeypatch.setenv("TEST_EMS_MQTT_PASSWORD", BROKER_USERS["ems-controller"])
    sink = sink_for(mosquitto_auth, controller, ForecastIntake(store, controller.clock), username="ems-controller",
                    password_env="TEST_EMS_MQTT_PASSWORD")
    async with asyncio.timeout(WAIT_S):
        await sink.connected.wait()
    operator, op_listener = await listener_for(mosquitto_auth, "operator")
    viewer, viewer_listener = await listener_for(mosquitto_auth, "grafana")
    await viewer.publish(f"ems/{SITE}/forecast", json.dumps(forecast(id="viewer", pv_kw=[99.0])), qos=1)
    await operator.publish(f"ems/{SITE}/forecast", json.dumps(forecast(id="op")), qos=1)
    r = await result_of(op_listener)
    assert r["accepted"] and r["id"] == "op" and store.current("pv_kw", T0).values["pv_kw"].tolist() == PV
    assert op_listener.queue(f"ems/{SITE}/forecast/result").empty()  # the viewer's never reached the controller
    await sink.aclose()
    for client, lst in ((operator, op_listener), (viewer, viewer_listener)):
        lst._task.cancel()
        await client.__aexit__(None, None, None)


def test_the_forecast_schema_has_the_fields_the_intake_takes() -> None:
    assert set(ForecastMessage.model_fields) == {*FIELDS, "id"}
    assert schema("forecast")["additionalProperties"] is False
    jsonschema.validate(forecast(load_kw=[400.0] * 4), schema("forecast"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(forecast(pv_kw=None), schema("forecast"))   # neither pv_kw nor load_kw
