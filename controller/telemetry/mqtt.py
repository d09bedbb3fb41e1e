"""MQTT sink (aiomqtt, MQTT v5): state, plan, alarms and status out; commands in.

Topics under ``<prefix>/<site>/`` (docs/telemetry.md, payload schemas in ``schemas/``):

* ``state`` (retained, QoS 1): the latest cycle state, on change (ignoring ``ts`` and ``cycle``), at
  most every ``min_state_interval_s``;
* ``plan`` (retained, QoS 1): each new plan;
* ``alarms`` (QoS 1): each alarm transition, queued while disconnected (bounded);
* ``status`` (retained, QoS 1): ``online``; ``offline`` on shutdown or as the broker-sent will;
* ``cmd/<name>`` (in): commands, subscribed with retain-as-published so a retained one is recognised;
* ``cmd/<name>/result`` (QoS 1): ``{command, id, accepted, reason, ts}`` per command.

aiomqtt neither reconnects nor queues: the connection loop reconnects with exponential back-off
and resubscribes, the latest state and plan are republished on every connect, and alarms wait in
a bounded deque. Back-off and the state rate limit run on real time (they protect the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.telemetry.config import MqttSettings, secret_from_env
from controller.telemetry.remote import CommandIntake

log = logging.getLogger(__name__)

MAX_QUEUED_ALARMS = 500


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


VOLATILE_STATE_KEYS = frozenset({"ts", "cycle"})
"""State keys that change every cycle without news (time, cycle timing): ignored when deciding
whether the state changed."""


def _content(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in VOLATILE_STATE_KEYS}


class MqttSink:
    """Publishes bus messages to a broker and feeds commands to the controller.

    Parameters
    ----------
    settings : MqttSettings
    site : str
        Site name (second topic level).
    intake : CommandIntake
        Validates and applies commands received on ``cmd/<name>``.
    """

    def __init__(self, settings: MqttSettings, site: str, intake: CommandIntake):
        self.settings = settings
        self.site = site
        self.intake = intake
        self.base = f"{settings.topic_prefix}/{site}"
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_error: str | None = None
        self._state: dict[str, Any] | None = None
        self._state_published: dict[str, Any] | None = None
        self._state_dirty = False
        self._plan: dict[str, Any] | None = None
        self._plan_dirty = False
        self._alarms: deque[dict[str, Any]] = deque(maxlen=MAX_QUEUED_ALARMS)
        self._wake = asyncio.Event()
        self._next_state_at = 0.0
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    def topic(self, leaf: str) -> str:
        return f"{self.base}/{leaf}"

    # -- input from the bus --------------------------------------------------------------------

    def offer(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Take one bus message; publishing happens on the sink's own task."""
        if kind == "state":
            self._state = dict(payload)
            if self._state_published is None or _content(payload) != _content(self._state_published):
                self._state_dirty = True
        elif kind == "plan":
            self._plan, self._plan_dirty = dict(payload), True
        elif kind == "alarm":
            self._alarms.append(dict(payload))
        else:
            return
        self._wake.set()

    # -- connection ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-sink")

    def _client_for_connect(self) -> aiomqtt.Client:
        s = self.settings
        tls = None
        if s.tls is not None:
            tls = aiomqtt.TLSParameters(ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                                        certfile=str(s.tls.cert) if s.tls.cert else None,
                                        keyfile=str(s.tls.key) if s.tls.key else None)
        return aiomqtt.Client(
            s.host, s.port, identifier=s.client_id or f"ems-{self.site}", username=s.username,
            password=secret_from_env(s.password_env), protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.topic("status"), b"offline", qos=1, retain=True),
            tls_params=tls, keepalive=s.keepalive_s, timeout=10, max_queued_incoming_messages=100)

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            client = self._client_for_connect()
            try:
                async with client:
                    self._client = client
                    await self._on_connect(client)
                    backoff = 1.0
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                if str(exc) != self.last_error:
                    log.warning("MQTT %s:%d: %s (reconnecting with back-off)", self.settings.host,
                                self.settings.port, exc)
                self.last_error = str(exc)
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.max_backoff_s)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish and take commands until either side fails; the failure ends the connection."""
        tasks = [asyncio.create_task(self._publish_loop(client), name="mqtt-publish"),
                 asyncio.create_task(self._command_loop(client), name="mqtt-commands")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise the MqttError that ended the connection
        raise aiomqtt.MqttError("message stream ended")

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topic("status"), b"online", qos=1, retain=True)
        await client.subscribe(self.topic("cmd/+"), options=SubscribeOptions(qos=1, retainAsPublished=True))
        self.connects += 1
        if self.last_error is not None:
            log.info("MQTT connected again to %s:%d", self.settings.host, self.settings.port)
        self.last_error = None
        # the broker may have lost its retained messages: publish the latest again
        self._plan_dirty = self._plan is not None
        self._state_dirty = self._state is not None
        self._next_state_at = 0.0
        self._wake.set()
        self.connected.set()

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        prefix = self.topic("cmd/")
        async for message in client.messages:
            topic = str(message.topic)
            if not topic.startswith(prefix):
                continue
            name = topic[len(prefix):]
            payload = message.payload if isinstance(message.payload, bytes | str) else str(message.payload)
            result = self.intake.handle(name, payload, by="mqtt", retained=bool(message.retain))
            await client.publish(self.topic(f"cmd/{name}/result"), _json(result), qos=1)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            while self._alarms:
                await client.publish(self.topic("alarms"), _json(self._alarms[0]), qos=1)
                self._alarms.popleft()
            if self._plan_dirty and self._plan is not None:
                self._plan_dirty = False
                await client.publish(self.topic("plan"), _json(self._plan), qos=1, retain=True)
            wait: float | None = None
            if self._state_dirty and self._state is not None:
                wait = self._next_state_at - loop.time()
                if wait <= 0:
                    state, self._state_dirty = self._state, False
                    await client.publish(self.topic("state"), _json(state), qos=1, retain=True)
                    self._state_published = state
                    self._next_state_at = loop.time() + self.settings.min_state_interval_s
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def aclose(self, timeout_s: float = 3.0) -> None:
        """Publish ``offline`` (retained) if connected and disconnect; bounded by ``timeout_s``."""
        client = self._client
        if client is not None and self.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await client.publish(self.topic("status"), b"offline", qos=1, retain=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, aiomqtt.MqttError):
                async with asyncio.timeout(timeout_s):
                    await self._task
