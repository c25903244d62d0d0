"""The Kafka worker: a faust application whose hot path reads and writes Kafka in batches.

``tracewatch.events`` ──route──▶ ``tracewatch.codes`` (partitioned by product key: one
writer per code) ──codes──▶ ``tracewatch.persons`` (partitioned by person) ──persons──▶
``tracewatch.alerts``. Stateless alerts leave from the first stage, code alerts from the
second, HOARDING from the third; bad input goes unchanged to ``tracewatch.events.dlq`` with
the reason in the ``tracewatch-reason`` header.

faust runs the process (start-up, signals, the web pages, timers); the three stages run in
one faust app task over one aiokafka consumer subscribed to the three topics, a batch at a
time (``getmany``: at most ``TRACEWATCH_BATCH_SIZE`` records, waiting at most
``TRACEWATCH_BATCH_WAIT`` seconds when nothing is there, never for a batch to fill). faust's
per-event streams cost ~300-400 µs a record on our cores (docs/kafka-notes.md), so the hot
path does not use them, and the internal topics carry one record per batch and partition
(``streams.wire``), not one per code. Input partitions are merged in business-time order
(``streams.align``): a batch from one institution's partition never runs days ahead of
another's, so a fast replay of a log on many partitions raises what ``check`` raises. The
records fetched and waiting for their turn are bounded: input partitions stop being fetched
while the worker holds more than two batches of them (:func:`partitions_to_hold_back`).

An event for a partition of ``tracewatch.codes`` or ``tracewatch.persons`` that this worker
owns is applied in the same batch, in process, rather than sent and fetched back (its owner
would read it from that very partition); only events for partitions other workers own take
the topic. A single worker therefore uses the internal topics not at all.

Each batch: every stage calls the shared :class:`Pipeline`, every output record is sent, the
broker's acknowledgements are awaited, then the ledger is written — the person stage's state
first, then the codes', then the routing memory, so an event handed over in process is never
forgotten by the stage that made it before its own stage stored it — and then the input
offsets are committed. A crash in between replays the batch: the ledger's fingerprints drop
what was applied, and an alert that is raised again has the same ``alert_id`` (the topic's
key), so nothing is lost and no new alert appears.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypeVar, cast

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from faust.app.base import BootStrategy
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from detectors.codes import product_key_of
from detectors.messages import BadInput, parse
from detectors.model import Alert, CodeEvent, Message, PersonEvent
from streams import allocator
from streams.align import TimeAligner
from streams.kafka_io import TopicSpec, ensure_topics
from streams.ledger import Ledger, MemoryLedger
from streams.metrics import Metrics
from streams.offline import alert_json, now_text
from streams.partitioner import partition_of
from streams.pipeline import Pipeline
from streams.reference import rule_config
from streams.settings import Settings
from streams.wire import Batch, dump_batch, load_code_batch, load_person_batch

log = logging.getLogger("tracewatch.worker")

REASON_HEADER = "tracewatch-reason"
SOURCE_HEADER = "tracewatch-source"
STATIC = Path(__file__).with_name("static")
T = TypeVar("T")
E = TypeVar("E", CodeEvent, PersonEvent)


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
            expected_codes=settings.expected_codes,
        )
    except Exception as error:
        if settings.ledger != "auto":
            raise
        log.warning("%s; using an in-memory ledger (nothing kept after exit)", error)
        return MemoryLedger()


def partitions_to_hold_back(held: Mapping[T, int], batch_size: int) -> set[T]:
    """The input partitions not to fetch from for now, given the records each one holds.

    Held records wait for release in time order, parsed. A partition more than two batches
    ahead of the others is held back (it would only pile up); and once the partitions hold
    more than two batches between them, every partition that holds some is held back too:
    several backlogged partitions would otherwise each fill up to its own limit, and the
    worker's memory would follow (~29,000 records held in a soak, BENCHMARKS.md "Twelfth
    session"). A partition holding nothing is never held back, so release can always go on:
    it waits only for partitions behind that hold nothing.
    """
    limit = 2 * batch_size
    over_all = sum(held.values()) > limit
    return {tp for tp, count in held.items() if count > limit or (over_all and count > 0)}


class Progress:
    """How far the worker got: for /healthz, the benchmark and an operator's curiosity.

    Input records fetched and released (in time order) to the first stage, internal events
    sent (through the topic, or handed over in process) and applied: when every stage has
    applied what was sent to it and all the input fetched was released, everything the
    worker read has been judged.
    """

    def __init__(self) -> None:
        self.partitions_assigned = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.first_cpu = 0.0
        """This process's CPU seconds at ``first_at`` (all its threads)."""
        self.last_cpu = 0.0
        """… and at ``last_at``: the bench divides their difference by the codes judged."""
        self.input_records = 0
        self.input_released = 0
        self.codes_sent = 0
        self.codes_applied = 0
        self.persons_sent = 0
        self.persons_applied = 0

    def touch(self) -> None:
        """Note the wall time and CPU time of work done."""
        self.last_at = time.time()
        self.last_cpu = time.process_time()
        if not self.first_at:
            self.first_at = self.last_at
            self.first_cpu = self.last_cpu

    def as_dict(self) -> dict[str, float | int]:
        """The counters as JSON-ready values."""
        return dict(vars(self))


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


#: An input record with its parsed message, or with the reason it was refused.
Parsed = tuple[ConsumerRecord[bytes, bytes], Message | Exception]

#: Longest wait for an unread input partition before records of the others are released.
MAX_ORDER_WAIT_S = 2.0

#: Events per record on the internal topics: well under the broker's 1 MB record limit.
EVENTS_PER_RECORD = 1000


@lru_cache(maxsize=1 << 12)
def _code_partition(key: bytes, partitions: int) -> int:
    # Product keys are few and hot: a cache hit is cheaper still than compiled murmur2
    # (enterprise codes are their own keys and pass through).
    return partition_of(key, partitions)


def _person_partition(psn_hash: str, partitions: int) -> int:
    # Not cached: people are many (a cache of 2^18 of them cost ~50 MB and missed most of the
    # time), and murmur2 is compiled.
    return partition_of(psn_hash.encode(), partitions)


def _worth_retrying(error: Exception) -> bool:
    """A ledger call failed for now (unreachable, timed out, or Redis refused it): the
    worker waits and repeats it rather than stop."""
    return (isinstance(error, (ConnectionError, OSError, TimeoutError))
            or type(error).__module__.startswith("redis"))


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _earliest(first_ms: int, second_ms: int) -> int:
    """The earlier of two arrival times, 0 meaning none."""
    return min(first_ms, second_ms) if first_ms and second_ms else first_ms or second_ms


def _unbatch(records: Sequence[ConsumerRecord[bytes, bytes]],
             load: Callable[[bytes], Batch]) -> tuple[list[Any], int]:
    """The events of internal records, in order, and when the oldest message behind them
    arrived (ms)."""
    events: list[Any] = []
    arrived_ms = 0
    for record in records:
        batch = load(record.value or b"{}")
        events.extend(batch.events)
        arrived_ms = _earliest(arrived_ms, batch.arrived_ms or record.timestamp)
    return events, arrived_ms


class _Handoff:
    """Events for a later stage of this batch whose partition this worker owns.

    They are applied in this batch, in process, instead of taking a round trip through the
    internal topic: the same writer would read them back from the same partition. Events of
    partitions other workers own still go through the topic. Ownership cannot change during
    a batch (partitions are handed over only between batches).
    """

    def __init__(self, code_partitions: frozenset[int],
                 person_partitions: frozenset[int]) -> None:
        self.code_partitions = code_partitions
        self.person_partitions = person_partitions
        self.codes: list[CodeEvent] = []
        self.codes_arrived_ms = 0
        self.persons: list[PersonEvent] = []
        self.persons_arrived_ms = 0


@dataclass(slots=True)
class _ToRoute:
    """A batch's released input, ready to route: its ``records`` count, the messages (with
    their numbers in the batch), the bad input for the dead-letter topic, the earliest
    arrival (ms), which codes and people this worker's later stages own (None: all), and
    the seconds its preparation took (part of the route step's)."""

    records: int
    messages: list[tuple[int, Message]]
    bad: list[tuple[ConsumerRecord[bytes, bytes], Exception]]
    arrived_ms: int
    owns_code: Callable[[str], bool] | None
    owns_person: Callable[[str], bool] | None
    prepared_seconds: float


class GlibcHeap:
    """glibc's malloc, set for a process whose batches free nearly all they allocate.

    A batch allocates blocks of hundreds of KB (fetched records, packed ledger writes, Redis
    replies). When the heap has no room for one, glibc maps it on its own and unmaps it when
    freed; but the first time it frees one it raises its mmap threshold (up to 32 MB) to that
    size and its trim threshold to twice that, so from then on such blocks grow the heap and
    the heap keeps its free space. ``start`` fixes both thresholds (``M_MMAP_THRESHOLD``,
    ``M_TRIM_THRESHOLD``), which also stops the raising, and ``trim`` (``malloc_trim``) gives
    the heap's free pages back. Elsewhere (musl, macOS) both do nothing, and under jemalloc
    (:mod:`streams.allocator`) they reach only glibc's idle heap: jemalloc gives its free pages
    back by itself, a few seconds after they are freed.
    In a 12-minute soak at half the throughput the heap grew 12 MB with this, 27 MB without,
    and the RSS 50 against 63 MB (BENCHMARKS.md "Soak"); Python's own arenas are not glibc's
    and are not affected.
    """

    M_TRIM_THRESHOLD = -1
    M_MMAP_THRESHOLD = -3

    def __init__(self, mmap_threshold: int = 256 * 1024,
                 trim_threshold: int = 4 * 1024 * 1024) -> None:
        self._mmap_threshold = mmap_threshold
        self._trim_threshold = trim_threshold
        self._libc: ctypes.CDLL | None = None
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version.restype = ctypes.c_char_p
            libc.gnu_get_libc_version()  # AttributeError unless the C library is glibc
            libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        except (OSError, AttributeError):
            return
        self._libc = libc

    @property
    def present(self) -> bool:
        """Whether this process runs on glibc's malloc."""
        return self._libc is not None

    def start(self) -> bool:
        """Fix the thresholds; whether glibc took them."""
        if self._libc is None:
            return False
        return bool(self._libc.mallopt(self.M_MMAP_THRESHOLD, self._mmap_threshold)
                    and self._libc.mallopt(self.M_TRIM_THRESHOLD, self._trim_threshold))

    def trim(self) -> bool:
        """Give the heap's free pages back to the system; whether any were."""
        return bool(self._libc is not None and self._libc.malloc_trim(0))


class CycleCollector:
    """Python's cycle collector, run between batches rather than inside them.

    A batch builds tens of thousands of objects that live until it ends and are then freed
    by reference counting. The automatic collector, set off by allocations, walked them
    again and again in the middle of a batch: 8-10 % of the worker's CPU on a backlog
    (py-spy). Here it is off while the worker runs; the loop collects the middle generation
    (and the young with it) every ``middle_every`` batches, the young generation alone after
    a batch only when it holds ``young_limit`` objects or more, everything every
    ``full_every_s`` seconds (what survives is mostly the caches' entries, which the
    collector does not track: a full pass took under 25 ms in a soak), and when idle the
    young generation at most once a second. A young pass after every batch walked what the
    batch left alive, the next batch's parsed input mostly, dead a batch later: 4 % of the
    worker's CPU in the bench, a third of that with the limit (BENCHMARKS.md).
    ``observe`` gets each collection's seconds. With a :class:`GlibcHeap`, its thresholds are
    set at the start and a full collection trims it.
    """

    def __init__(self, observe: Callable[[float], None], middle_every: int = 32,
                 full_every_s: float = 60.0, idle_every_s: float = 1.0,
                 heap: GlibcHeap | None = None, young_limit: int = 100_000) -> None:
        self._observe = observe
        self._heap = heap
        self._middle_every = middle_every
        self._young_limit = young_limit
        self._full_every_s = full_every_s
        self._idle_every_s = idle_every_s
        self._batches = 0
        self._last = self._last_full = 0.0
        self._was_enabled = False

    def start(self) -> None:
        """Switch automatic collection off; what start-up built stays out of every pass."""
        gc.freeze()
        if self._heap is not None:
            self._heap.start()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._last = self._last_full = time.monotonic()

    def stop(self) -> None:
        """Give collection back to Python."""
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    def after_batch(self) -> None:
        """Collect after a batch: the middle generation now and then, the young one when it
        holds many objects, all every minute."""
        self._batches += 1
        now = time.monotonic()
        if now - self._last_full >= self._full_every_s:
            generation = 2
            self._last_full = now
        elif self._batches % self._middle_every == 0:
            generation = 1
        elif gc.get_count()[0] >= self._young_limit:  # allocations less deallocations
            generation = 0
        else:
            return
        self._collect(generation, now)

    def idle(self) -> None:
        """An empty poll: collect the young generation if a second has passed."""
        now = time.monotonic()
        if now - self._last >= self._idle_every_s:
            self._collect(0, now)

    def _collect(self, generation: int, now: float) -> None:
        gc.collect(generation)
        if generation == 2 and self._heap is not None:
            self._heap.trim()
        self._last = time.monotonic()
        self._observe(self._last - now)


class _WaitForBatch(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partitions over only between batches, after the batch in hand is committed
    (``settle`` confirms the last batch's ledger writes and commits its offsets)."""

    def __init__(self, lock: asyncio.Lock, aligner: TimeAligner[Parsed],
                 progress: Progress, settle: Callable[[], Awaitable[None]]) -> None:
        self.lock = lock
        self.aligner = aligner
        self.progress = progress
        self.settle = settle

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.lock:
            await self.settle()
            # Held input was not committed: its new owner reads it again.
            self.aligner.drop(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.progress.partitions_assigned = len(assigned)
        log.info("assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


class _WithoutFaustClients(BootStrategy):
    """faust starts the web server, sensors and tasks; the pipeline task has its own clients."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class _PipelineApp(faust.App):
    BootStrategy = _WithoutFaustClients


class Worker:
    """Builds the faust app; its pipeline task calls the shared :class:`Pipeline`."""

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
        self.progress = Progress()
        self.psn_key = settings.psn_key_bytes
        self.group_id = app_id
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._batch_lock = asyncio.Lock()
        #: The offsets of the last batch, to commit once its ledger writes, sent ahead, are
        #: confirmed (see :meth:`_settle`).
        self._unconfirmed: dict[TopicPartition, int] | None = None
        self._input: TimeAligner[Parsed] = TimeAligner()
        self._waiting_since = 0.0
        #: The latest business time applied: "now" for the retention sweep.
        self.latest_time = 0
        self.app = self._build_app(app_id)

    # ------------------------------------------------------------------ app

    def _build_app(self, app_id: str) -> faust.App:
        s = self.settings
        app = _PipelineApp(
            app_id,
            broker=[f"kafka://{server.strip()}" for server in s.kafka.split(",")],
            store="memory://",
            value_serializer="raw",
            key_serializer="raw",
            topic_replication_factor=1,
            topic_disable_leader=True,
            # Tansu answers a group's first join only after half the session timeout
            # (docs/kafka-notes.md); the app itself subscribes to nothing.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=2.0,
            web_port=s.web_port,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_enabled=True,
            table_cleanup_interval=3600.0,
        )
        app.task(self._run_pipeline)
        app.timer(5.0)(self._sample_gauges)
        app.timer(s.sweep_hours * 3600.0)(self._sweep)
        self._add_pages(app)
        return app

    # ------------------------------------------------------------------ the loop

    async def _start_clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        s = self.settings
        servers = [server.strip() for server in s.kafka.split(",")]
        producer = AIOKafkaProducer(
            bootstrap_servers=servers,
            acks="all",
            linger_ms=5,
            max_batch_size=1 << 20,
            max_request_size=8 << 20,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_size,
            # Tansu answers a waiting fetch only when its wait runs out, not when records
            # arrive: a short wait keeps a caught-up stage's delay small.
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=1 << 20,
            fetch_max_bytes=32 << 20,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            rebalance_timeout_ms=10_000,
        )
        await producer.start()
        try:
            await consumer.start()
        except BaseException:
            await producer.stop()
            raise
        consumer.subscribe(
            topics=[s.topic_events, s.topic_codes, s.topic_persons],
            listener=_WaitForBatch(self._batch_lock, self._input, self.progress, self._settle),
        )
        return consumer, producer

    async def _run_pipeline(self) -> None:
        """Read, handle and commit batches until the app stops."""
        consumer, producer = await self._start_clients()
        self.consumer, self.producer = consumer, producer
        seconds = self.metrics.batch_seconds
        collector = CycleCollector(seconds.labels("gc").observe, heap=GlibcHeap())
        collector.start()
        wait_ms = max(1, int(self.settings.batch_wait * 1000))
        try:
            while True:
                started = time.perf_counter()
                batch = await consumer.getmany(timeout_ms=wait_ms,
                                               max_records=self.settings.batch_size)
                if not batch and not len(self._input):
                    if self._unconfirmed is not None:
                        async with self._batch_lock:
                            await self._settle()
                    collector.idle()
                    continue
                seconds.labels("fetch").observe(time.perf_counter() - started)
                # aiokafka's fetch task runs only when this one awaits: a few turns of the loop
                # now let it ask for the next records before the batch's long stretch of CPU,
                # so they are there at the next getmany (its wait: 0.9-1.05 s → 0.6-0.8 s of a
                # bench round; BENCHMARKS.md "Twenty-sixth session").
                for _ in range(3):
                    await asyncio.sleep(0)
                async with self._batch_lock:
                    offsets = await self._handle(batch)
                    if offsets:  # else the batch waits for its writes (see _settle)
                        started = time.perf_counter()
                        await self._commit(consumer, offsets)
                        seconds.labels("commit").observe(time.perf_counter() - started)
                    self._hold_back_input(consumer)
                collector.after_batch()
        finally:
            collector.stop()
            try:
                await self._settle()
            except Exception as error:  # the batch is read again: every stage is idempotent
                log.warning("last batch not confirmed at stop (%s); it will be read again",
                            error)
            self.consumer = self.producer = None
            await consumer.stop()
            await producer.stop()

    def _input_partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """The partitions of the input topic this worker is assigned."""
        return [tp for tp in consumer.assignment() if tp.topic == self.settings.topic_events]

    def _hold_back_input(self, consumer: AIOKafkaConsumer) -> None:
        """Stop fetching input partitions while the worker holds enough of their records."""
        inputs = self._input_partitions(consumer)
        held = {tp: self._input.held(tp) for tp in inputs}
        hold_back = partitions_to_hold_back(held, self.settings.batch_size)
        paused = consumer.paused()
        for tp in inputs:
            if tp in hold_back:
                consumer.pause(tp)
            elif tp in paused:
                consumer.resume(tp)

    async def _settle(self) -> None:
        """Confirm the last batch's ledger writes, then commit its offsets.

        A batch's writes are sent ahead and the worker goes on without waiting for Redis to
        apply them (it parses the next fetch meanwhile); its offsets wait for them. If they
        failed, the ledger sends them again at the next try (idempotent, like the worker's
        other retries). The ledger keeps them as packed bytes: holding the batch's objects
        for another batch had tripled the cycle collector's time.
        """
        offsets = self._unconfirmed
        if offsets is None:
            return
        started = time.perf_counter()
        await self._retry("writes' confirmation", self.ledger.confirm_writes)
        self._unconfirmed = None
        self.metrics.batch_seconds.labels("confirm").observe(time.perf_counter() - started)
        consumer = self.consumer
        if consumer is not None:
            started = time.perf_counter()
            await self._commit(consumer, offsets)
            self.metrics.batch_seconds.labels("commit").observe(time.perf_counter() - started)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError as error:
            # The group moved on: the new owner reads these records again, and every stage
            # is idempotent, so this costs work, not correctness.
            log.warning("offsets not committed (%s); the batch will be read again", error)

    async def _input_behind(self) -> list[TopicPartition]:
        """Input partitions with records in the broker that were not fetched yet."""
        consumer = self.consumer
        if consumer is None:
            return []
        behind = []
        for tp in self._input_partitions(consumer):
            if self._input.held(tp):
                continue
            high = consumer.highwater(tp)
            if high is None or await consumer.position(tp) < high:
                behind.append(tp)
        return behind

    def _parse(self, record: ConsumerRecord[bytes, bytes]) -> tuple[int | None, Parsed]:
        try:
            message = parse(orjson.loads(record.value or b""), self.psn_key)
        except (orjson.JSONDecodeError, BadInput) as error:
            return None, (record, error)
        return message.time, (record, message)

    async def _handle(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
                      ) -> dict[TopicPartition, int]:
        """Run the three stages over a fetched batch; the offsets it finished, to commit."""
        s = self.settings
        codes: list[ConsumerRecord[bytes, bytes]] = []
        persons: list[ConsumerRecord[bytes, bytes]] = []
        offsets: dict[TopicPartition, int] = {}
        progress = self.progress
        started = time.perf_counter()
        for tp, records in batch.items():
            if tp.topic == s.topic_events:
                self._input.add(tp, map(self._parse, records))
                progress.input_records += len(records)
                continue
            if tp.topic == s.topic_codes:
                codes.extend(records)
            elif tp.topic == s.topic_persons:
                persons.extend(records)
            offsets[tp] = records[-1].offset + 1
        self.metrics.batch_seconds.labels("parse").observe(time.perf_counter() - started)
        behind = await self._input_behind()
        now = time.monotonic()
        if not behind or not len(self._input):
            self._waiting_since = 0.0
        elif not self._waiting_since:
            self._waiting_since = now
        elif now - self._waiting_since > MAX_ORDER_WAIT_S:
            # A partition that stays unread (a slow broker, a stuck fetch) must not hold the
            # others back for ever: give up some order for liveness.
            log.warning("input partitions %s unread for %.1f s; releasing without them",
                        sorted(tp.partition for tp in behind), now - self._waiting_since)
            behind = []
        released = self._input.release(behind=behind, limit=s.batch_size)
        progress.input_released += len(released)
        for tp, (record, _) in released:
            offsets[cast(TopicPartition, tp)] = record.offset + 1
        sends: list[asyncio.Future[Any]] = []
        writes: list[tuple[str, Callable[[], None]]] = []
        stages = _Handoff(self._owned(s.topic_codes), self._owned(s.topic_persons))
        to_route = (self._prepare_route([parsed for _, parsed in released], stages)
                    if released else None)
        # The last batch's writes were applied by Redis while the fetch above was parsed and
        # this batch's routing prepared: routing recalls what they wrote.
        await self._settle()
        if to_route is not None:
            await self._route(to_route, stages, sends, writes)
        if codes or stages.codes:
            await self._apply_codes(codes, stages, sends, writes)
        if persons or stages.persons:
            await self._apply_persons(persons, stages, sends, writes)
        seconds = self.metrics.batch_seconds
        if sends:
            started = time.perf_counter()
            await asyncio.gather(*sends)
            seconds.labels("acks").observe(time.perf_counter() - started)
        if batch or released:
            progress.touch()
        if writes:
            started = time.perf_counter()
            await self._retry(", ".join(what for what, _ in reversed(writes)),
                              partial(self._write_ledger, writes))
            seconds.labels("write").observe(time.perf_counter() - started)
            self._unconfirmed = offsets
            return {}  # committed by the next _settle, once Redis applied the writes
        return offsets

    def _write_ledger(self, writes: Sequence[tuple[str, Callable[[], None]]]) -> None:
        """Write what the stages changed, later stages first, as one round.

        An event handed over in process exists nowhere else until its stage's state is
        written, so the stage that made it writes after (a crash in between replays the
        batch; each stage drops what it already applied). The writes go to Redis back to
        back, each packed while Redis applies the one before; a failure repeats the round.
        The last ones may still be in flight on return: :meth:`_settle` confirms them.
        """
        with self.ledger.writes_in_flight(confirm=False):
            for _, write in reversed(writes):
                write()

    # ------------------------------------------------------------------ helpers

    async def _retry(self, what: str, action: Callable[[], T]) -> T:
        """Run a ledger action, retrying while the ledger is unreachable (nothing lost)."""
        delay = 0.5
        while True:
            try:
                return action()
            except Exception as error:
                if not _worth_retrying(error):
                    raise
                log.error("ledger %s failed (%s); retrying in %.1f s", what, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _send(self, topic: str, value: bytes, key: bytes | None = None,
                    partition: int | None = None,
                    headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        """Queue a record; the returned future resolves when the broker has it."""
        producer = self.producer
        if producer is None:
            raise KafkaError("the worker's producer is not running")
        future: asyncio.Future[Any] = await producer.send(
            topic, value=value, key=key, partition=partition, headers=headers)
        return future

    async def _send_alerts(self, alerts: Sequence[Alert], arrived_ms: int,
                           sends: list[asyncio.Future[Any]]) -> None:
        detected = now_text()
        latency = max(0.0, time.time() - arrived_ms / 1000) if arrived_ms else 0.0
        for alert in alerts:
            body = alert.to_dict(detected)
            self.feed.add(body)
            self.metrics.alerts.labels(str(alert.rule), alert.severity).inc()
            self.metrics.alert_latency.observe(latency)
            sends.append(await self._send(self.settings.topic_alerts,
                                          key=alert.alert_id.encode(),
                                          value=alert_json(alert, detected)))

    async def _send_batches(self, topic: str, events: Sequence[E],
                            partition_for: Callable[[E], int], arrived_ms: int,
                            sends: list[asyncio.Future[Any]], owned: frozenset[int],
                            keep: list[E]) -> None:
        """Send internal events to ``topic``: a record per partition per
        ``EVENTS_PER_RECORD``, each partition's events in their order. Events of the
        ``owned`` partitions are appended to ``keep`` instead, in their order."""
        if len(owned) >= self.settings.partitions:
            # A lone worker owns every partition: no event needs its partition worked out
            # (a hash of each code, ~3 % of the worker's CPU in the bench).
            keep.extend(events)
            return
        by_partition: dict[int, list[E]] = {}
        for event in events:
            number = partition_for(event)
            if number in owned:
                keep.append(event)
            else:
                by_partition.setdefault(number, []).append(event)
        for number, group in by_partition.items():
            for chunk in _chunks(group, EVENTS_PER_RECORD):
                sends.append(await self._send(topic, partition=number,
                                              value=dump_batch(chunk, arrived_ms)))

    async def _send_code_events(self, events: Sequence[CodeEvent], arrived_ms: int,
                                stages: _Handoff, sends: list[asyncio.Future[Any]]) -> None:
        kept = len(stages.codes)
        await self._send_batches(
            self.settings.topic_codes, events,
            lambda event: self._code_partition_of(event.code), arrived_ms, sends,
            stages.code_partitions, stages.codes)
        if len(stages.codes) > kept:
            stages.codes_arrived_ms = _earliest(stages.codes_arrived_ms, arrived_ms)
        self.progress.codes_sent += len(events)

    async def _send_person_events(self, events: Sequence[PersonEvent], arrived_ms: int,
                                  stages: _Handoff, sends: list[asyncio.Future[Any]]) -> None:
        partitions = self.settings.partitions
        kept = len(stages.persons)
        await self._send_batches(
            self.settings.topic_persons, events,
            lambda event: _person_partition(event.psn_hash, partitions), arrived_ms, sends,
            stages.person_partitions, stages.persons)
        if len(stages.persons) > kept:
            stages.persons_arrived_ms = _earliest(stages.persons_arrived_ms, arrived_ms)
        self.progress.persons_sent += len(events)

    # ------------------------------------------------------------------ stage 1

    def _prepare_route(self, parsed: Sequence[Parsed], stages: _Handoff) -> _ToRoute:
        """The released input split into messages and bad input, with what routing the
        messages needs worked out ahead (:meth:`Pipeline.prepare_route`: no ledger call)."""
        started = time.perf_counter()
        messages: list[tuple[int, Message]] = []
        bad: list[tuple[ConsumerRecord[bytes, bytes], Exception]] = []
        arrived_ms = parsed[0][0].timestamp
        for number, (record, outcome) in enumerate(parsed):
            if record.timestamp < arrived_ms:
                arrived_ms = record.timestamp
            if isinstance(outcome, Exception):
                bad.append((record, outcome))
            else:
                messages.append((number, outcome))
        partitions = self.settings.partitions
        owned_codes, owned_persons = stages.code_partitions, stages.person_partitions
        # What this worker's later stages will load is looked up while it routes; the boxes
        # and people of other workers are theirs to load.
        owns_code = (None if len(owned_codes) >= partitions else
                     lambda code: self._code_partition_of(code) in owned_codes)
        owns_person = (None if len(owned_persons) >= partitions else
                       lambda psn: _person_partition(psn, partitions) in owned_persons)
        self.pipeline.prepare_route(messages, owns_code, owns_person)
        return _ToRoute(len(parsed), messages, bad, arrived_ms, owns_code, owns_person,
                        time.perf_counter() - started)

    async def _route(self, to_route: _ToRoute, stages: _Handoff,
                     sends: list[asyncio.Future[Any]],
                     writes: list[tuple[str, Callable[[], None]]]) -> None:
        started = time.perf_counter()
        messages, arrived_ms = to_route.messages, to_route.arrived_ms
        for record, error in to_route.bad:
            sends.append(await self._dead_letter(record, error))
        for _, message in messages:
            if message.time > self.latest_time:
                self.latest_time = message.time
        # The same list of messages as prepared: routing uses what was worked out for it.
        routed = await self._retry(
            "route", partial(self.pipeline.route, messages, to_route.owns_code,
                             to_route.owns_person))
        await self._send_code_events(routed.events, arrived_ms, stages, sends)
        await self._send_alerts(routed.alerts, arrived_ms, sends)
        writes.append(("commit routing", partial(self.pipeline.commit_routing, routed.commit)))
        self._count_messages(messages, routed.duplicates)
        self.metrics.codes.labels("invalid").inc(routed.codes_rejected)
        self.metrics.batch_seconds.labels("route").observe(
            time.perf_counter() - started + to_route.prepared_seconds)
        self.metrics.batch_size.labels("route").observe(to_route.records)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes],
                           error: Exception) -> asyncio.Future[Any]:
        reason = error.reason if isinstance(error, BadInput) else f"not JSON: {error}"
        category = reason.split(":")[0].split(" ")[0] if isinstance(error, BadInput) else "json"
        self.metrics.dlq.labels(category[:32]).inc()
        self.feed.bad += 1
        source = f"{record.topic}/{record.partition}/{record.offset}"
        return await self._send(
            self.settings.topic_dlq,
            key=record.key,
            value=record.value or b"",
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

    def _code_partition_of(self, code: str) -> int:
        """The partition of the codes topic that owns ``code``."""
        return _code_partition(code_key(code), self.settings.partitions)

    def _owned(self, topic: str) -> frozenset[int]:
        """The partitions of ``topic`` assigned to this worker."""
        consumer = self.consumer
        assigned = consumer.assignment() if consumer is not None else set()
        return frozenset(tp.partition for tp in assigned if tp.topic == topic)

    async def _apply_codes(self, records: Sequence[ConsumerRecord[bytes, bytes]],
                           stages: _Handoff, sends: list[asyncio.Future[Any]],
                           writes: list[tuple[str, Callable[[], None]]]) -> None:
        started = time.perf_counter()
        events, arrived_ms = _unbatch(records, load_code_batch)
        # Fetched events were routed before this batch's own: they go first.
        events.extend(stages.codes)
        arrived_ms = _earliest(arrived_ms, stages.codes_arrived_ms)
        owned = stages.code_partitions

        def owns(code: str) -> bool:
            # The partition the events of `code` are sent to: a draw this writer does not
            # own is forwarded, and can never be one kept for this batch.
            return self._code_partition_of(code) in owned

        result = await self._retry(
            "load codes", partial(self.pipeline.apply_codes, events, owns, store=False))
        await self._send_alerts(result.alerts, arrived_ms, sends)
        # Forwarded draws continue on codes this worker does not own: all go to the topic.
        await self._send_code_events(result.forwarded, arrived_ms, stages, sends)
        await self._send_person_events(result.person_events, arrived_ms, stages, sends)
        writes.append(("store codes", partial(self.pipeline.store_codes, result)))
        self.progress.codes_applied += len(events)
        self.metrics.codes.labels("applied").inc(result.applied)
        self.metrics.codes.labels("duplicate").inc(result.duplicates)
        self.metrics.ledger_roundtrips.labels("load").inc()
        self.metrics.ledger_roundtrips.labels("store").inc(1 if result.changed else 0)
        self.metrics.batch_seconds.labels("codes").observe(time.perf_counter() - started)
        self.metrics.batch_size.labels("codes").observe(len(events))

    # ------------------------------------------------------------------ stage 3

    async def _apply_persons(self, records: Sequence[ConsumerRecord[bytes, bytes]],
                             stages: _Handoff, sends: list[asyncio.Future[Any]],
                             writes: list[tuple[str, Callable[[], None]]]) -> None:
        started = time.perf_counter()
        people, arrived_ms = _unbatch(records, load_person_batch)
        people.extend(stages.persons)
        arrived_ms = _earliest(arrived_ms, stages.persons_arrived_ms)
        found = await self._retry(
            "load persons", partial(self.pipeline.apply_persons, people, store=False))
        await self._send_alerts(found.alerts, arrived_ms, sends)
        writes.append(("store persons", partial(self.pipeline.store_persons, found)))
        self.progress.persons_applied += len(people)
        self.metrics.batch_seconds.labels("persons").observe(time.perf_counter() - started)
        self.metrics.batch_size.labels("persons").observe(len(people))

    # ------------------------------------------------------------------ monitoring

    async def _sample_gauges(self) -> None:
        self.metrics.worker_up.set(1)
        consumer = self.consumer
        lags: dict[str, int] = {}
        for tp in consumer.assignment() if consumer is not None else ():
            try:
                high = consumer.highwater(tp)  # type: ignore[union-attr]
                position = await consumer.position(tp)  # type: ignore[union-attr]
            except Exception:  # a partition being reassigned has no position yet
                continue
            if high is not None and position is not None:
                lags[tp.topic] = lags.get(tp.topic, 0) + max(0, high - position)
        for topic, lag in lags.items():
            self.metrics.consumer_lag.labels(topic).set(lag)
        stats = getattr(self.ledger, "stats", None)
        if callable(stats):
            try:
                # In a thread, like the sweep: the sample's ~1,000 commands queue behind the
                # batch scripts Redis is running, and on the event loop that wait (tens of ms
                # every 5 s in a backlog) stalled the pipeline and the alerts with it.
                figures = await asyncio.to_thread(stats)
                self.metrics.ledger_codes.set(figures.get("codes", 0))
                self.metrics.ledger_bytes_per_code.set(figures.get("bytes_per_code", 0))
                if "used_memory" in figures:  # a Redis ledger
                    self.metrics.redis_used_memory.set(figures["used_memory"])
                    self.metrics.redis_maxmemory.set(figures.get("maxmemory", 0))
            except Exception as error:  # monitoring must never stop the worker
                log.debug("ledger stats failed: %s", error)

    async def _sweep(self) -> None:
        """Remove ledger entries past their retention, judged by the latest business time.

        The messages' time, not the clock: a replay of an old log must not have its states
        swept as soon as they are written. Runs in a thread; the sweep's Lua calls are atomic
        and short, so the pipeline goes on meanwhile.
        """
        sweep = getattr(self.ledger, "sweep", None)
        if not callable(sweep) or not self.latest_time:
            return
        try:
            result = await asyncio.to_thread(sweep, self.latest_time)
        except Exception as error:  # a failed sweep is retried at the next timer
            log.error("retention sweep failed: %s; it runs again in %d h", error,
                      self.settings.sweep_hours)
            return
        log.info("retention sweep removed %s", result.removed)

    def _add_pages(self, app: faust.App) -> None:
        worker = self
        allocator_in_use = allocator.in_use()

        class MetricsPage(View):
            async def get(self, request: Request) -> Response:
                # As a header: aiohttp refuses a content_type argument naming a charset
                # (the scrape got a 500), and Prometheus wants its text format's full type.
                return self.bytes(worker.metrics.exposition(),
                                  headers={"Content-Type": CONTENT_TYPE_LATEST})

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
                return self.json({"ok": True, "messages": worker.feed.messages,
                                  "allocator": allocator_in_use,
                                  **worker.progress.as_dict()})

        app.page("/metrics")(MetricsPage)
        app.page("/api/alerts")(AlertsApi)
        app.page("/live")(LivePage)
        app.page("/healthz")(Health)


def faust_worker_for(app: faust.App, log_level: str) -> faust.Worker:
    """The faust worker that runs ``app``, logging at ``log_level`` and nothing below."""
    faust_worker = faust.Worker(app, loglevel=log_level.upper())
    # faust's start-up spinner sets the root logger to DEBUG so that every log record spins
    # it, whatever level was asked: aiokafka then built a record for each fetch and send
    # (~3 % of the worker's CPU under load).
    faust_worker.spinner = None
    return faust_worker


def run_worker(settings: Settings, ledger: Ledger | None = None) -> int:
    """Create the topics, then run the worker until interrupted."""
    created = ensure_topics(settings.kafka, topic_specs(settings))
    if created:
        print(f"tracewatch worker: created topics {', '.join(created)}")
    worker = Worker(settings, ledger=ledger)
    faust_worker_for(worker.app, settings.log_level).execute_from_commandline()
    return 0  # execute_from_commandline exits the process itself
