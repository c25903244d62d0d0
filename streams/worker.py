"""The Kafka worker: a faust application with three agents over the pipeline's three stages.

``tracewatch.events`` ──route──▶ ``tracewatch.codes`` (keyed by code: one writer per code)
──codes──▶ ``tracewatch.persons`` (keyed by person) ──persons──▶ ``tracewatch.alerts``.
Stateless alerts leave from the first stage, code alerts from the second, HOARDING from the
third; bad input goes unchanged to ``tracewatch.events.dlq`` with the reason in the
``tracewatch-reason`` header.

Every stage works a batch at a time (``take_events``: at most ``TRACEWATCH_BATCH_SIZE``
records, never waiting more than ``TRACEWATCH_BATCH_WAIT`` seconds), loads and stores the
ledger once per batch, and writes the ledger only after the batch's output was acknowledged
by the broker. A crash in between replays the batch: the ledger's fingerprints drop what was
applied, and an alert that is raised again has the same ``alert_id`` (the topic's key), so
nothing is lost and no new alert appears.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import faust
import orjson
from aiokafka.partitioner import murmur2
from faust.types import EventT, StreamT
from faust.web import Request, Response, View

from detectors.codes import product_key_of
from detectors.messages import BadInput, parse
from detectors.model import Alert, CodeEvent, Message, PersonEvent
from streams.kafka_io import TopicSpec, ensure_topics
from streams.ledger import Ledger, MemoryLedger
from streams.metrics import Metrics
from streams.offline import alert_json, now_text
from streams.pipeline import Pipeline
from streams.reference import rule_config
from streams.settings import Settings
from streams.wire import dump_event, load_code_event, load_person_event

log = logging.getLogger("tracewatch.worker")

REASON_HEADER = "tracewatch-reason"
SOURCE_HEADER = "tracewatch-source"
STATIC = Path(__file__).with_name("static")
T = TypeVar("T")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the JVM does)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def code_key(code: str) -> bytes:
    """The Kafka key of a code's events on the codes topic: its product key when it has one.

    One writer per code still holds (a code has one product), and the boxes of one product
    share a writer, so a split sale drawing units from several boxes of a product, and every
    later event of those boxes, are applied in the log's order. Only a split sale across
    products or enterprise codes forwards the rest of its draw to another partition.
    """
    return (product_key_of(code) or code).encode()


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics the worker needs, created if missing."""
    day = 86_400_000
    n = settings.partitions
    return [
        TopicSpec(settings.topic_events, n, 7 * day),
        TopicSpec(settings.topic_codes, n, day),
        TopicSpec(settings.topic_persons, n, day),
        TopicSpec(settings.topic_alerts, n, 90 * day),
        TopicSpec(settings.topic_dlq, 1, 30 * day),
    ]


def open_ledger(settings: Settings) -> Ledger:
    """The ledger ``TRACEWATCH_LEDGER`` names; ``auto`` falls back to memory without Redis."""
    from streams.redis_ledger import RedisLedger

    if settings.ledger == "memory":
        return MemoryLedger()
    try:
        return RedisLedger.from_url(
            settings.redis_url,
            prefix=settings.key_prefix,
            retention_days=settings.retention_days,
            dedupe_days=settings.dedupe_days,
        )
    except Exception as error:
        if settings.ledger != "auto":
            raise
        log.warning("%s; using an in-memory ledger (nothing kept after exit)", error)
        return MemoryLedger()


class LiveFeed:
    """The latest alerts and counters for the supervisor page."""

    def __init__(self, keep: int = 500) -> None:
        self.recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=keep)
        self.serial = 0
        self.by_rule: dict[str, int] = {}
        self.messages = 0
        self.bad = 0
        self.started = time.time()

    def add(self, alert: dict[str, Any]) -> None:
        """Record one sent alert."""
        self.serial += 1
        self.recent.append((self.serial, alert))
        rule = str(alert["rule"])
        self.by_rule[rule] = self.by_rule.get(rule, 0) + 1

    def since(self, serial: int) -> dict[str, Any]:
        """Alerts after ``serial`` and the counters, for the page's polling."""
        return {
            "serial": self.serial,
            "alerts": [alert for number, alert in self.recent if number > serial],
            "by_rule": self.by_rule,
            "messages": self.messages,
            "bad": self.bad,
            "uptime_s": round(time.time() - self.started, 1),
        }


class Worker:
    """Builds the faust app; the agents call the shared :class:`Pipeline`."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger | None = None,
        metrics: Metrics | None = None,
        app_id: str = "tracewatch",
    ) -> None:
        self.settings = settings
        self.config = rule_config(settings)
        self.ledger = ledger if ledger is not None else open_ledger(settings)
        self.pipeline = Pipeline(self.ledger, self.config)
        self.metrics = metrics or Metrics()
        self.feed = LiveFeed()
        self.psn_key = settings.psn_key_bytes
        self.app = self._build_app(app_id)

    # ------------------------------------------------------------------ app

    def _build_app(self, app_id: str) -> faust.App:
        s = self.settings
        app = faust.App(
            app_id,
            broker=[f"kafka://{server.strip()}" for server in s.kafka.split(",")],
            store="memory://",
            value_serializer="raw",
            key_serializer="raw",
            topic_partitions=s.partitions,
            topic_replication_factor=1,
            topic_allow_declare=True,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            # Tansu answers a group's first join only after half the session timeout, and
            # faust's 60 s default made every start wait 30 s (docs/kafka-notes.md).
            broker_session_timeout=10.0,
            broker_heartbeat_interval=2.0,
            broker_rebalance_timeout=10.0,
            broker_commit_every=s.batch_size,
            broker_commit_interval=1.0,
            broker_max_poll_records=max(s.batch_size, 500),
            stream_buffer_maxsize=max(s.batch_size * 2, 16384),
            producer_linger=0.005,
            producer_max_batch_size=1_048_576,
            producer_acks=-1,
            web_port=s.web_port,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_enabled=True,
            table_cleanup_interval=3600.0,
        )
        self.events_topic = app.topic(s.topic_events, key_type=bytes, value_type=bytes)
        self.codes_topic = app.topic(s.topic_codes, key_type=bytes, value_type=bytes,
                                     partitions=s.partitions, internal=False)
        self.persons_topic = app.topic(s.topic_persons, key_type=bytes, value_type=bytes,
                                       partitions=s.partitions)
        self.alerts_topic = app.topic(s.topic_alerts, key_type=bytes, value_type=bytes)
        self.dlq_topic = app.topic(s.topic_dlq, key_type=bytes, value_type=bytes)

        app.agent(self.events_topic, name="tracewatch.route")(self._route_agent)
        app.agent(self.codes_topic, name="tracewatch.codes")(self._codes_agent)
        app.agent(self.persons_topic, name="tracewatch.persons")(self._persons_agent)
        app.timer(5.0)(self._sample_gauges)
        self._add_pages(app)
        return app

    # ------------------------------------------------------------------ helpers

    async def _retry(self, what: str, action: Callable[[], T]) -> T:
        """Run a ledger action, retrying while the ledger is unreachable (nothing lost)."""
        delay = 0.5
        while True:
            try:
                return action()
            except (ConnectionError, OSError, TimeoutError) as error:
                log.error("ledger %s failed (%s); retrying in %.1f s", what, error, delay)
            except Exception as error:
                if type(error).__module__.startswith("redis"):
                    log.error("ledger %s failed (%s); retrying in %.1f s", what, error, delay)
                else:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _send_all(self, sends: Iterable[Awaitable[Any]]) -> None:
        """Wait until the broker acknowledged every record of a batch."""
        futures = [await send for send in sends]
        for future in futures:
            await future

    def _alert_sends(self, alerts: Sequence[Alert], arrived: float) -> list[Awaitable[Any]]:
        sends: list[Awaitable[Any]] = []
        detected = now_text()
        latency = max(0.0, time.time() - arrived) if arrived else 0.0
        for alert in alerts:
            body = alert.to_dict(detected)
            self.feed.add(body)
            self.metrics.alerts.labels(str(alert.rule), alert.severity).inc()
            self.metrics.alert_latency.observe(latency)
            sends.append(self.alerts_topic.send(
                key=alert.alert_id.encode(), value=alert_json(alert, detected)))
        return sends

    def _batches(self, stream: StreamT[Any]) -> AsyncIterator[Sequence[EventT[Any]]]:
        """Batches of events: full, or whatever arrived within the batch wait."""
        typed = cast("faust.Stream[Any]", stream)
        return typed.take_events(self.settings.batch_size, within=self.settings.batch_wait)

    # ------------------------------------------------------------------ stage 1

    async def _route_agent(self, stream: StreamT[Any]) -> None:
        async for batch in self._batches(stream):
            started = time.perf_counter()
            messages: list[tuple[int, Message]] = []
            sends: list[Awaitable[Any]] = []
            oldest = min((e.message.timestamp for e in batch), default=0.0)
            for number, event in enumerate(batch):
                raw = event.message.value or b""
                try:
                    message = parse(orjson.loads(raw), self.psn_key)
                except (orjson.JSONDecodeError, BadInput) as error:
                    sends.append(self._dead_letter(event, error))
                    continue
                messages.append((number, message))
            routed = await self._retry("route", partial(self.pipeline.route, messages))
            for code_event in routed.events:
                sends.append(self.codes_topic.send(
                    key=code_key(code_event.code), value=dump_event(code_event)))
            sends.extend(self._alert_sends(routed.alerts, oldest))
            await self._send_all(sends)
            await self._retry("commit routing",
                              partial(self.pipeline.commit_routing, routed.commit))
            self._count_messages(messages, routed.duplicates)
            self.metrics.codes.labels("invalid").inc(routed.codes_rejected)
            self.metrics.batch_seconds.labels("route").observe(time.perf_counter() - started)
            self.metrics.batch_size.labels("route").observe(len(batch))

    def _dead_letter(self, event: Any, error: Exception) -> Awaitable[Any]:
        reason = error.reason if isinstance(error, BadInput) else f"not JSON: {error}"
        category = reason.split(":")[0].split(" ")[0] if isinstance(error, BadInput) else "json"
        self.metrics.dlq.labels(category[:32]).inc()
        self.feed.bad += 1
        message = event.message
        source = f"{message.topic}/{message.partition}/{message.offset}"
        return self.dlq_topic.send(
            key=message.key,
            value=message.value,
            headers=[(REASON_HEADER, reason.encode()), (SOURCE_HEADER, source.encode())],
        )

    def _count_messages(self, messages: Sequence[tuple[int, Message]], duplicates: int) -> None:
        self.feed.messages += len(messages)
        counts: dict[str, int] = {}
        for _, message in messages:
            counts[message.infno] = counts.get(message.infno, 0) + 1
        for infno, number in counts.items():
            self.metrics.messages.labels(infno, "applied").inc(number)
        if duplicates:
            self.metrics.messages.labels("any", "duplicate").inc(duplicates)

    # ------------------------------------------------------------------ stage 2

    def _owned_codes(self) -> Callable[[str], bool]:
        topic = self.settings.topic_codes
        owned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}
        partitions = self.settings.partitions

        def owns(code: str) -> bool:
            return partition_of(code_key(code), partitions) in owned

        return owns

    async def _codes_agent(self, stream: StreamT[Any]) -> None:
        async for batch in self._batches(stream):
            started = time.perf_counter()
            events: list[CodeEvent] = [load_code_event(e.message.value or b"{}") for e in batch]
            oldest = min((e.message.timestamp for e in batch), default=0.0)
            owns = self._owned_codes()
            result = await self._retry(
                "load codes", partial(self.pipeline.apply_codes, events, owns, store=False))
            sends = self._alert_sends(result.alerts, oldest)
            for forwarded in result.forwarded:
                sends.append(self.codes_topic.send(
                    key=code_key(forwarded.code), value=dump_event(forwarded)))
            for person in result.person_events:
                sends.append(self.persons_topic.send(
                    key=person.psn_hash.encode(), value=dump_event(person)))
            await self._send_all(sends)
            await self._retry("store codes", partial(self.pipeline.store_codes, result))
            self.metrics.codes.labels("applied").inc(result.applied)
            self.metrics.codes.labels("duplicate").inc(result.duplicates)
            self.metrics.ledger_roundtrips.labels("load").inc()
            self.metrics.ledger_roundtrips.labels("store").inc(1 if result.changed else 0)
            self.metrics.batch_seconds.labels("codes").observe(time.perf_counter() - started)
            self.metrics.batch_size.labels("codes").observe(len(batch))

    # ------------------------------------------------------------------ stage 3

    async def _persons_agent(self, stream: StreamT[Any]) -> None:
        async for batch in self._batches(stream):
            started = time.perf_counter()
            people: list[PersonEvent] = [load_person_event(e.message.value or b"{}")
                                         for e in batch]
            oldest = min((e.message.timestamp for e in batch), default=0.0)
            found = await self._retry(
                "load persons", partial(self.pipeline.apply_persons, people, store=False))
            await self._send_all(self._alert_sends(found.alerts, oldest))
            await self._retry("store persons", partial(self.pipeline.store_persons, found))
            self.metrics.batch_seconds.labels("persons").observe(time.perf_counter() - started)
            self.metrics.batch_size.labels("persons").observe(len(batch))

    # ------------------------------------------------------------------ monitoring

    async def _sample_gauges(self) -> None:
        self.metrics.worker_up.set(1)
        consumer = self.app.consumer
        lags: dict[str, int] = {}
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
                position = await consumer.position(tp)
            except Exception:  # a partition being reassigned has no position yet
                continue
            if high is not None and position is not None:
                lags[tp.topic] = lags.get(tp.topic, 0) + max(0, high - position)
        for topic, lag in lags.items():
            self.metrics.consumer_lag.labels(topic).set(lag)
        stats = getattr(self.ledger, "stats", None)
        if callable(stats):
            try:
                figures = stats()
                self.metrics.ledger_codes.set(figures.get("codes", 0))
                self.metrics.ledger_bytes_per_code.set(figures.get("bytes_per_code", 0))
            except Exception as error:  # monitoring must never stop the worker
                log.debug("ledger stats failed: %s", error)

    def _add_pages(self, app: faust.App) -> None:
        worker = self

        class MetricsPage(View):
            async def get(self, request: Request) -> Response:
                return self.bytes(worker.metrics.exposition(),
                                  content_type="text/plain; version=0.0.4; charset=utf-8")

        class AlertsApi(View):
            async def get(self, request: Request) -> Response:
                try:
                    since = int(request.query.get("since", "0"))
                except ValueError:
                    since = 0
                return self.json(worker.feed.since(since))

        class LivePage(View):
            async def get(self, request: Request) -> Response:
                return self.html((STATIC / "live.html").read_text(encoding="utf-8"))

        class Health(View):
            async def get(self, request: Request) -> Response:
                return self.json({"ok": True, "messages": worker.feed.messages})

        app.page("/metrics")(MetricsPage)
        app.page("/api/alerts")(AlertsApi)
        app.page("/live")(LivePage)
        app.page("/healthz")(Health)


def run_worker(settings: Settings, ledger: Ledger | None = None) -> int:
    """Create the topics, then run the worker until interrupted."""
    created = ensure_topics(settings.kafka, topic_specs(settings))
    if created:
        print(f"tracewatch worker: created topics {', '.join(created)}")
    worker = Worker(settings, ledger=ledger)
    faust_worker = faust.Worker(worker.app, loglevel=settings.log_level.upper())
    faust_worker.execute_from_commandline()
    return 0  # execute_from_commandline exits the process itself
