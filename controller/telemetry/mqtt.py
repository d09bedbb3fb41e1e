"""MQTT sink (aiomqtt, MQTT v5): state, plan, alarms and status out; commands in.

Topics under ``<prefix>/<site>/`` (docs/telemetry.md, payload schemas in ``schemas/``):

* ``state`` (retained, QoS 1): the latest cycle state, on change (ignoring ``ts`` and ``cycle``), at
  most every ``min_state_interval_s``;
* ``plan`` (retained, QoS 1): each new plan;
* ``alarms`` (QoS 1): each alarm transition, queued while disconnected (bounded);
* ``status`` (retained, QoS 1): ``online`` on connect; ``offline`` published before every clean
  disconnect (stop, or an internal error that restarts the connection: the broker sends the will
  only when a connection is lost, not on a clean DISCONNECT), or sent by the broker as the will;
* ``cmd/<name>`` (in): commands, subscribed with retain-as-published so a retained one is recognised;
* ``cmd/<name>/result`` (QoS 1): ``{command, id, accepted, reason, ts, site}`` per command;
* ``instance`` (retained, QoS 1): ``{instance, site, started, host}``, this process's claim on the site
  id (``claim_site``): before saying ``online`` the sink reads the retained claim and status; another
  instance's claim with status ``online`` means a second site with the same id (in a park the bridge
  brings the park's claim in, docs/fleet.md): the sink then publishes nothing, raises
  ``telemetry.duplicate_site`` and tries again after the back-off. A newer claim seen while running
  raises the same alarm and is answered with this process's claim, so the newcomer refuses;
* ``park/cmd/<name>`` (in) and ``park/cmd/<name>/result``: commands from the park uplink, handled
  like the others only when ``park_commands`` is on, otherwise each is answered refused;
* ``forecast`` (in, when the controller takes external forecasts) and ``forecast/result`` (QoS 1): a PV
  and/or load forecast from outside (:mod:`controller.telemetry.forecast_intake`, at most 64 kB; a retained
  one is applied only when newer than the forecast in use), queued and answered like a command.

aiomqtt neither reconnects nor queues: the connection loop reconnects with exponential back-off
and resubscribes, the latest state and plan are republished on every connect, and alarms wait in
a bounded deque. The loop survives *any* error: a failure that is not the broker's is logged once
(with its traceback), ``offline`` is published, and the loop connects again after the back-off.
Back-off and the state rate limit run on real time (they protect the broker).

Commands: a reader takes each message off aiomqtt's inbox and puts it on a bounded queue
(``command_queue``) served by one worker; a command that finds the queue full is answered at once
with ``busy`` (never dropped) and the ``telemetry.command_queue_full`` alarm is raised until the
queue has drained. Every command gets exactly one result, and no message can end the loop: each
one is handled inside its own ``try``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.telemetry.config import MqttSettings, secret_from_env
from controller.telemetry.forecast_intake import ForecastIntake
from controller.telemetry.remote import CommandIntake

log = logging.getLogger(__name__)

MAX_QUEUED_ALARMS = 500
MAX_UNSENT_RESULTS = 1000
"""Results whose publication was cut by a lost connection, published again on reconnect."""
INBOX_LIMIT = 1000
"""Messages aiomqtt may hold before the reader takes them; beyond it aiomqtt discards (counted as
``dropped`` and alarmed). The reader only ever waits for a result's publication, so this fills
only under a flood far beyond any operator's rate."""
QUEUE_ALARM = "telemetry.command_queue_full"
DUPLICATE_ALARM = "telemetry.duplicate_site"
CLAIM_TIMEOUT_S = 5.0
"""Bound on reading back this process's own site claim on connect. [s]"""
PARK_COMMANDS_OFF = ("park commands are not allowed by this site's configuration "
                     "(telemetry.mqtt.park_commands: false)")
OFFLINE_TIMEOUT_S = 2.0
"""Bound on publishing ``offline`` before a clean disconnect. [s]"""

AlarmFn = Callable[[str, bool, str], None]


def _json(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate in a string is written as its escape text instead of failing."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", errors="backslashreplace")


def _payload(message: aiomqtt.Message) -> bytes | str:
    return message.payload if isinstance(message.payload, bytes | str) else str(message.payload)


class _Inbox(asyncio.Queue):  # type: ignore[type-arg]
    """aiomqtt's incoming queue, telling the sink about each message it has to discard."""

    def __init__(self, maxsize: int, on_overflow: Callable[[], None]):
        super().__init__(maxsize)
        self._on_overflow = on_overflow

    def put_nowait(self, item: Any) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            self._on_overflow()
            raise


SENDER_PROPERTY = "user"
"""MQTT v5 user property a command's sender names itself in (recorded as the audit identity)."""
VOLATILE_STATE_KEYS = frozenset({"ts", "cycle", "commands"})
"""State keys that change every cycle without news (time, cycle timing, command counters): ignored
when deciding whether the state changed."""


class SiteTaken(Exception):
    """Another live instance holds this site id on the broker (the message names it)."""


def _claim_of(payload: bytes | str) -> dict[str, Any] | None:
    """A site claim (``{instance, site, started, host}``) from an ``instance`` message, ``None`` if unreadable."""
    try:
        claim = json.loads(payload)
    except (TypeError, ValueError):
        return None
    return claim if isinstance(claim, dict) and isinstance(claim.get("instance"), str) else None


def sender_of(message: aiomqtt.Message) -> str | None:
    """The sender a command names in its MQTT v5 user property ``user`` (``None`` without one).

    A broker does not pass the publisher's user name to subscribers, so this is what the client claims;
    the broker's ACL decides who may publish commands at all (deploy/mosquitto/acl)."""
    for key, value in getattr(message.properties, "UserProperty", None) or []:
        if key == SENDER_PROPERTY and isinstance(value, str):
            return value[:64]
    return None


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
    on_alarm : AlarmFn, optional
        ``(code, active, message)`` on transitions of :data:`QUEUE_ALARM` and :data:`DUPLICATE_ALARM`.
    forecasts : ForecastIntake, optional
        Takes forecasts from outside on ``forecast`` (not subscribed without it).
    """

    def __init__(self, settings: MqttSettings, site: str, intake: CommandIntake, on_alarm: AlarmFn | None = None,
                 forecasts: ForecastIntake | None = None):
        self.settings = settings
        self.site = site
        self.intake = intake
        self.forecasts = forecasts
        self.on_alarm = on_alarm
        self.base = f"{settings.topic_prefix}/{site}"
        self.connected = asyncio.Event()
        self.connects = 0
        self.restarts = 0
        self.last_error: str | None = None
        self._state: dict[str, Any] | None = None
        self._state_published: dict[str, Any] | None = None
        self._state_dirty = False
        self._plan: dict[str, Any] | None = None
        self._plan_dirty = False
        self._alarms: deque[dict[str, Any]] = deque(maxlen=MAX_QUEUED_ALARMS)
        self._unsent_results: deque[tuple[str, bytes]] = deque(maxlen=MAX_UNSENT_RESULTS)  # (topic, payload)
        self._commands: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(settings.command_queue)
        self._queue_alarm = False
        self.claim = {"instance": uuid.uuid4().hex, "site": site, "started": datetime.now(UTC).isoformat(),
                      "host": socket.gethostname()}
        self.duplicate: dict[str, Any] | None = None
        """The other instance's claim while a duplicate site id is known (``None`` otherwise)."""
        self._wake = asyncio.Event()
        self._next_state_at = 0.0
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
            tls_params=tls, keepalive=s.keepalive_s, timeout=10, max_queued_incoming_messages=INBOX_LIMIT,
            queue_type=functools.partial(_Inbox, on_overflow=self._inbox_overflow))  # type: ignore[arg-type]

    async def _run(self) -> None:
        """Connect, serve, and on *any* error (but cancellation) connect again after the back-off."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            connected_at: float | None = None
            try:
                client = self._client_for_connect()
                async with client:
                    connected_at = loop.time()
                    try:
                        await self._on_connect(client)
                        await self._serve(client)
                    except (aiomqtt.MqttError, SiteTaken):
                        raise
                    except BaseException:  # stopping, or a bug: the clean disconnect below sends no will
                        await self._publish_offline(client)
                        raise
            except SiteTaken as exc:
                self.last_error = str(exc)
            except aiomqtt.MqttError as exc:
                if str(exc) != self.last_error:
                    log.warning("MQTT %s:%d: %s (reconnecting with back-off)", self.settings.host,
                                self.settings.port, exc)
                self.last_error = str(exc)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if error != self.last_error:
                    log.exception("MQTT sink failed (%s); restarting it after the back-off", error)
                self.last_error = error
                self.restarts += 1
            finally:
                self.connected.clear()
            if connected_at is not None and loop.time() - connected_at >= self.settings.max_backoff_s:
                backoff = 1.0  # a connection that lasted: start the back-off again from the beginning
            await asyncio.sleep(min(backoff, self.settings.max_backoff_s))
            backoff = min(backoff * 2, self.settings.max_backoff_s)

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(OFFLINE_TIMEOUT_S):
                await client.publish(self.topic("status"), b"offline", qos=1, retain=True)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish and take commands until either side fails; the failure ends the connection."""
        tasks = [asyncio.create_task(self._publish_loop(client), name="mqtt-publish"),
                 asyncio.create_task(self._command_reader(client), name="mqtt-command-reader"),
                 asyncio.create_task(self._command_worker(client), name="mqtt-command-worker")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise what ended the connection
        raise aiomqtt.MqttError("message stream ended")

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        if self.settings.claim_site:
            await self._claim_site(client)
        await client.publish(self.topic("status"), b"online", qos=1, retain=True)
        inputs = ("cmd/+", "park/cmd/+") + (("forecast",) if self.forecasts is not None else ())
        for leaf in inputs:
            await client.subscribe(self.topic(leaf), options=SubscribeOptions(qos=1, retainAsPublished=True))
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

    # -- site identity -------------------------------------------------------------------------

    async def _claim_site(self, client: aiomqtt.Client) -> None:
        """Claim the site id; raise :class:`SiteTaken` if another instance holds it and is online.

        Reads the retained ``status`` and ``instance`` (the broker sends them before it handles this
        process's own claim, published right after subscribing), until its own claim comes back."""
        await client.subscribe(self.topic("status"), qos=1)
        await client.subscribe(self.topic("instance"), qos=1)
        await client.publish(self.topic("instance"), _json(self.claim), qos=1, retain=True)
        other: tuple[dict[str, Any], bytes | str] | None = None
        status: bytes | str | None = None
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT_S):
                async for message in client.messages:
                    topic, payload = str(message.topic), _payload(message)
                    if topic == self.topic("status"):
                        status = payload
                    elif topic == self.topic("instance"):
                        claim = _claim_of(payload)
                        if claim is not None and claim["instance"] == self.claim["instance"]:
                            break
                        if claim is not None:
                            other = (claim, payload)
        except TimeoutError:
            log.warning("MQTT: own site claim not read back within %.0f s; going on", CLAIM_TIMEOUT_S)
        if other is not None and status in (b"online", "online"):
            claim, raw = other
            await client.publish(self.topic("instance"), raw, qos=1, retain=True)  # give the site id back
            self._set_duplicate(claim)
            raise SiteTaken(self._duplicate_message(claim))
        self._set_duplicate(None)

    def _on_claim(self, payload: bytes | str) -> bool:
        """A claim seen while serving; True when it is another, newer instance's (a duplicate site id)."""
        claim = _claim_of(payload)
        if claim is None or claim["instance"] == self.claim["instance"]:
            return False
        if str(claim.get("started", "")) < self.claim["started"]:
            return False  # a predecessor's claim coming back through a bridge, not a live duplicate
        first = self.duplicate is None
        self._set_duplicate(claim)
        return first

    def _duplicate_message(self, claim: Mapping[str, Any]) -> str:
        return (f"site id {self.site!r} is also used by instance {claim.get('instance')} on host "
                f"{claim.get('host')!r} (started {claim.get('started')}); this one is {self.claim['instance']} "
                f"on {self.claim['host']!r}: give each site its own id (site file 'site:')")

    def _set_duplicate(self, claim: Mapping[str, Any] | None) -> None:
        if (claim is None) == (self.duplicate is None):
            self.duplicate = dict(claim) if claim is not None else None
            return
        self.duplicate = dict(claim) if claim is not None else None
        if claim is not None:
            message = self._duplicate_message(claim)
            log.error("MQTT: %s", message)
        else:
            message = f"site id {self.site!r} is held by this instance alone again"
            log.info("MQTT: %s", message)
        if self.on_alarm is not None:
            self.on_alarm(DUPLICATE_ALARM, claim is not None, message)

    # -- commands ------------------------------------------------------------------------------

    async def _command_reader(self, client: aiomqtt.Client) -> None:
        """Move each command onto the bounded queue, or answer ``busy`` when it is full."""
        async for message in client.messages:
            await self._per_message(self._take, client, message)

    async def _take(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        if topic == self.topic("instance"):
            if self._on_claim(_payload(message)):  # answer with ours: the newcomer sees it and refuses
                await client.publish(self.topic("instance"), _json(self.claim), qos=1, retain=True)
            return
        forecast = self.forecasts is not None and topic == self.topic("forecast")
        name = self._command_name(topic)
        if name is None and not forecast:
            return
        if not self._commands.full():
            self._commands.put_nowait(message)
            return
        self._set_queue_alarm(True)
        if name is None:
            if self.forecasts is not None:
                await self._publish_result(client, self.topic("forecast/result"), self.forecasts.refuse(
                    _payload(message), f"busy: {self._commands.qsize()} commands waiting; send it again later",
                    interface="mqtt", identity=sender_of(message)))
            return
        interface = "park" if name.startswith("park/") else "mqtt"
        await self._publish_result(client, self._result_topic(name), self.intake.busy(
            name.removeprefix("park/"), _payload(message), waiting=self._commands.qsize(), interface=interface,
            identity=sender_of(message)))

    async def _command_worker(self, client: aiomqtt.Client) -> None:
        """Handle queued commands one by one; each gets its result, whatever it holds."""
        while True:
            message = await self._commands.get()
            await self._per_message(self._handle, client, message)
            if self._commands.empty():
                self._set_queue_alarm(False)

    def _command_name(self, topic: str) -> str | None:
        """``<name>`` of a command topic (``park/<name>`` for one from the park uplink), else ``None``."""
        for prefix in (self.topic("cmd/"), self.topic("park/cmd/")):
            if topic.startswith(prefix):
                name = topic[len(prefix):]
                return f"park/{name}" if prefix.endswith("park/cmd/") else name
        return None

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        identity = sender_of(message)
        if self.forecasts is not None and str(message.topic) == self.topic("forecast"):
            answer = self.forecasts.handle(_payload(message), interface="mqtt", identity=identity,
                                           retained=bool(message.retain))
            await self._publish_result(client, self.topic("forecast/result"), answer)
            return
        name = self._command_name(str(message.topic)) or ""
        if name.startswith("park/"):
            name = name.removeprefix("park/")
            if not self.settings.park_commands:
                result = self.intake.refuse(name, _payload(message), PARK_COMMANDS_OFF, interface="park",
                                            identity=identity)
            else:
                result = self.intake.handle(name, _payload(message), interface="park", identity=identity,
                                            retained=bool(message.retain))
            await self._publish_result(client, self._result_topic(f"park/{name}"), result)
            return
        result = self.intake.handle(name, _payload(message), interface="mqtt", identity=identity,
                                    retained=bool(message.retain))
        await self._publish_result(client, self._result_topic(name), result)

    async def _per_message(self, step: Callable[[aiomqtt.Client, aiomqtt.Message], Awaitable[None]],
                           client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """Run ``step`` for one message: a broker error ends the connection, anything else only this message."""
        try:
            await step(client, message)
        except aiomqtt.MqttError:
            raise
        except Exception:
            self.intake.errors += 1
            log.exception("MQTT message on %s not handled", message.topic)

    def _result_topic(self, name: str) -> str:
        """Where the result of command ``name`` goes (``park/<name>``: back on the park's side)."""
        if name.startswith("park/"):
            return self.topic(f"park/cmd/{name.removeprefix('park/')}/result")
        return self.topic(f"cmd/{name}/result")

    async def _publish_result(self, client: aiomqtt.Client, topic: str, result: Mapping[str, Any]) -> None:
        """Publish a command's result on ``topic``; kept for the next connection if this one is cut meanwhile."""
        payload = _json(result)
        try:
            await client.publish(topic, payload, qos=1)
        except (aiomqtt.MqttError, asyncio.CancelledError):
            self._unsent_results.append((topic, payload))
            raise
        except Exception:  # e.g. a topic paho refuses: lose this result, not the loop
            log.exception("%s: result could not be published", topic)

    def _set_queue_alarm(self, active: bool) -> None:
        if active == self._queue_alarm:
            return
        self._queue_alarm = active
        limit = self.settings.command_queue
        if active:
            message = f"MQTT command queue full ({limit} waiting): new commands are answered 'busy'"
            log.warning("%s", message)
        else:
            message = "MQTT command queue drained"
            log.info("%s", message)
        if self.on_alarm is not None:
            self.on_alarm(QUEUE_ALARM, active, message)

    def _inbox_overflow(self) -> None:
        """aiomqtt discards a message: counted and alarmed (called on the loop, from paho's callback,
        which must not raise)."""
        self.intake.dropped += 1
        if self.intake.dropped == 1 or self.intake.dropped % INBOX_LIMIT == 0:
            log.error("MQTT inbox full (%d messages): %d commands discarded so far", INBOX_LIMIT,
                      self.intake.dropped)
        if self.on_alarm is not None and not self._queue_alarm:
            self._queue_alarm = True
            with contextlib.suppress(Exception):
                self.on_alarm(QUEUE_ALARM, True, f"MQTT inbox full ({INBOX_LIMIT} messages): commands discarded")

    # -- publishing ----------------------------------------------------------------------------

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            while self._unsent_results:
                topic, payload = self._unsent_results[0]
                await client.publish(topic, payload, qos=1)
                self._unsent_results.popleft()
            while self._alarms:
                await self._publish_item(client, "alarms", self._alarms[0], retain=False)
                self._alarms.popleft()
            if self._plan_dirty and self._plan is not None:
                self._plan_dirty = False
                await self._publish_item(client, "plan", self._plan, retain=True)
            wait: float | None = None
            if self._state_dirty and self._state is not None:
                wait = self._next_state_at - loop.time()
                if wait <= 0:
                    state, self._state_dirty = self._state, False
                    await self._publish_item(client, "state", state, retain=True)
                    self._state_published = state
                    self._next_state_at = loop.time() + self.settings.min_state_interval_s
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _publish_item(self, client: aiomqtt.Client, leaf: str, payload: Mapping[str, Any],
                            retain: bool) -> None:
        """Publish one bus message; one that cannot be encoded is logged and skipped, not fatal."""
        try:
            data = _json(payload)
        except (TypeError, ValueError) as exc:
            log.error("MQTT %s message not published: %s", leaf, exc)
            return
        await client.publish(self.topic(leaf), data, qos=1, retain=retain)

    async def aclose(self, timeout_s: float = 3.0) -> None:
        """Stop: publish ``offline`` (retained) if connected and disconnect; bounded by ``timeout_s``."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, aiomqtt.MqttError):
            async with asyncio.timeout(timeout_s):
                await self._task
