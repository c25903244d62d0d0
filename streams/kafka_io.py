"""Kafka helpers for the command line and the tests (kafka-python, no faust).

* :func:`ensure_topics` creates the topics that are missing.
* :func:`replay` produces a ``.jsonl`` log of NHSA messages, one Kafka record per line,
  each line's bytes unchanged, keyed by institution (``fixmedins_code``).
* :func:`consume_all` reads a topic from the beginning without a consumer group.

Errors that a user sees are :class:`KafkaIOError`, whose message says what was wrong and
what to do. Measurements and broker quirks are in ``docs/kafka-notes.md``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "KafkaIOError",
    "Record",
    "ReplayStats",
    "TopicSpec",
    "consume_all",
    "count_lines",
    "ensure_topics",
    "replay",
]

log = logging.getLogger(__name__)

#: What to tell a user whose broker does not answer.
_HINT = "is the broker running? set TRACEWATCH_KAFKA to its host:port"
#: Kafka error code for "topic already exists" (CreateTopics).
_TOPIC_ALREADY_EXISTS = 36
#: Origin for business times (``inf_time`` is China time; only differences are used).
_EPOCH = datetime(2000, 1, 1)
#: With ``speed``, the longest single wait; a longer gap in the log is cut to this.
_MAX_PACING_SLEEP_S = 5.0
#: Update the progress bar every this many lines (tqdm per line costs time).
_PROGRESS_EVERY = 256
#: Producer tuning for throughput (see docs/kafka-notes.md for the measurements).
#: Idempotence keeps each institution's messages in order (and single) across retries;
#: it needs acks="all", which costs ~10 % against acks=1 on a single-node broker.
_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 20,
    "batch_size": 256 * 1024,
    "max_request_size": 8 * 1024 * 1024,
    "compression_type": None,
    "client_id": "tracewatch-replay",
    # Tansu creates unknown topics on a metadata request, with its own partition count
    "allow_auto_create_topics": False,
}


class KafkaIOError(RuntimeError):
    """A Kafka operation failed; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project needs: name, partition count and optional retention/compaction."""

    name: str
    partitions: int
    retention_ms: int | None = None
    compact: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a topic needs a name")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name}: partitions must be >= 1, not {self.partitions}")
        if self.retention_ms is not None and self.retention_ms < -1:
            raise ValueError(f"topic {self.name}: retention_ms must be >= -1 (-1 keeps forever)")

    def configs(self) -> dict[str, str]:
        """The topic configuration sent with CreateTopics."""
        configs: dict[str, str] = {}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        if self.compact:
            configs["cleanup.policy"] = "compact"
        return configs


@dataclass(frozen=True)
class ReplayStats:
    """What :func:`replay` did: records acknowledged, their value bytes, time, failures."""

    messages: int
    bytes: int
    seconds: float
    errors: int
    first_error: str | None = None

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record (the parts tests and ``alerts tail`` look at)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0

    def header(self, name: str) -> bytes | None:
        """The value of the first header called ``name``, if any."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _unreachable(bootstrap: str, exc: BaseException) -> KafkaIOError:
    return KafkaIOError(f"cannot reach the Kafka broker at {bootstrap} ({exc}); {_HINT}")


def _admin(bootstrap: str, timeout: float) -> Any:
    """A KafkaAdminClient, or a :class:`KafkaIOError` that says the broker is unreachable."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    ms = max(1, int(timeout * 1000))
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="tracewatch-admin",
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
        )
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap, exc) from exc


def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], timeout: float = 30) -> list[str]:
    """Create the topics of ``specs`` that do not exist yet; return the names created.

    Idempotent: an existing topic (or one that another process creates at the same time)
    is left as it is; one whose partition count differs from its spec is logged as a
    warning, not changed. Returns once every topic is visible in the broker's metadata.
    """
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap, timeout)
    try:
        existing = _partition_counts(admin, [s.name for s in specs])
        for spec in specs:
            have = existing.get(spec.name)
            if have is not None and have != spec.partitions:
                log.warning(
                    "topic %s has %d partitions, the spec asks for %d; left unchanged",
                    spec.name, have, spec.partitions,
                )
        missing = {s.name: s for s in specs if s.name not in existing}
        if not missing:
            return []
        request = {
            spec.name: {
                "num_partitions": spec.partitions,
                "replication_factor": 1,
                "configs": spec.configs(),
            }
            for spec in missing.values()
        }
        timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
        response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
        created: list[str] = []
        problems: list[str] = []
        for result in response.get("topics", []):
            name, code = result.get("name"), result.get("error_code", 0)
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                problems.append(f"{name}: error {code} {result.get('error_message') or ''}".strip())
        if problems:
            raise KafkaIOError(
                f"the broker at {bootstrap} refused to create topics ({'; '.join(problems)}); "
                "check the topic names and partition counts"
            )
        _wait_visible(admin, list(missing), deadline, bootstrap)
        return sorted(created)
    except KafkaError as exc:
        raise KafkaIOError(f"creating topics on {bootstrap} failed ({exc}); {_HINT}") from exc
    finally:
        admin.close()


def _partition_counts(admin: Any, names: Sequence[str]) -> dict[str, int]:
    """Partition count of each topic in ``names`` that exists."""
    wanted = set(names)
    counts: dict[str, int] = {}
    for topic in admin.describe_topics(None):
        name = topic.get("name")
        if name in wanted and topic.get("error_code", 0) == 0:
            counts[name] = len(topic.get("partitions") or [])
    return counts


def _wait_visible(admin: Any, names: Sequence[str], deadline: float, bootstrap: str) -> None:
    """Poll metadata until every topic in ``names`` is listed, or raise at ``deadline``."""
    while True:
        listed = set(admin.list_topics())
        missing = [n for n in names if n not in listed]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise KafkaIOError(
                f"topics {', '.join(missing)} were created on {bootstrap} but never showed "
                "up in its metadata; check the broker log"
            )
        time.sleep(0.05)


# ---------------------------------------------------------------------------- replay


def count_lines(path: Path) -> int:
    """Number of lines in ``path`` (a last line without a newline counts), read in 1 MiB chunks."""
    count = 0
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count if last == b"\n" else count + 1


def _iter_lines(path: Path, limit: int | None) -> Iterator[bytes]:
    """Each line of ``path`` without its ending (``\\n`` or ``\\r\\n``); blank lines skipped."""
    sent = 0
    with path.open("rb") as fh:
        for raw in fh:
            if limit is not None and sent >= limit:
                return
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip():  # blank lines are no messages (as in `tracewatch check`)
                continue
            sent += 1
            yield line


def _key_and_time(
    line: bytes, key_field: str, want_time: bool
) -> tuple[bytes | None, float | None]:
    """The record key (``key_field`` of a JSON object) and, if wanted, ``inf_time`` in seconds."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(message, dict):
        return None, None
    key_value = message.get(key_field)
    key = key_value.encode() if isinstance(key_value, str) and key_value else None
    inf_time = message.get("inf_time") if want_time else None
    return key, (_business_seconds(inf_time) if isinstance(inf_time, str) else None)


def _business_seconds(inf_time: str) -> float | None:
    """``YYYY-MM-DD HH:MM:SS`` as seconds on a naive clock (only differences matter)."""
    if len(inf_time) != len("2026-11-23 10:15:30") or inf_time[10] != " ":
        return None
    try:
        when = datetime.fromisoformat(inf_time)
    except ValueError:
        return None
    return (when - _EPOCH).total_seconds()


class _Pacer:
    """Sleeps so that records go out at ``speed`` times the pace of their business time.

    The first timed record sets the origin. A record whose time lies more than
    ``_MAX_PACING_SLEEP_S`` ahead waits that long and becomes the new origin, so a quiet
    night in the log does not stall the replay; records out of order do not wait.
    """

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._origin: tuple[float, float] | None = None  # (business time, monotonic)

    def wait_for(self, business_time: float) -> None:
        """Block until ``business_time`` is due."""
        now = time.monotonic()
        if self._origin is None:
            self._origin = (business_time, now)
            return
        start_business, start_wall = self._origin
        delay = start_wall + (business_time - start_business) / self.speed - now
        if delay > _MAX_PACING_SLEEP_S:
            time.sleep(_MAX_PACING_SLEEP_S)
            self._origin = (business_time, time.monotonic())
        elif delay > 0:
            time.sleep(delay)


class _Delivery:
    """Thread-safe tally of producer callbacks (they run on the sender thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.bytes = 0
        self.errors = 0
        self.first_error: str | None = None

    def success(self, size: int) -> None:
        with self._lock:
            self.ok += 1
            self.bytes += size

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"


def replay(
    path: Path,
    bootstrap: str,
    topic: str,
    *,
    speed: float | None = None,
    progress: bool = True,
    key_field: str = "fixmedins_code",
    limit: int | None = None,
    connect_timeout: float = 15.0,
) -> ReplayStats:
    """Produce each line of the log at ``path`` to ``topic``, unchanged, and flush.

    The key is the line's ``key_field`` when the line is a JSON object with a string
    there, else the record has no key; a line that is not JSON at all is produced as it
    is, for the worker's dead-letter topic. Blank lines are skipped; ``\\r\\n`` endings are
    removed with the ``\\n``. ``speed=None`` sends as fast as the client can; ``speed=N``
    paces by ``inf_time`` at N times real time. ``limit`` stops after that many records.
    A progress bar goes to stderr when ``progress`` is true.

    Raises :class:`KafkaIOError` when the file cannot be read, the broker cannot be
    reached within ``connect_timeout`` seconds, or the topic does not exist. Records the
    broker rejects are counted in :attr:`ReplayStats.errors`.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError
    from tqdm import tqdm

    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be positive, not {speed}")
    if not path.is_file():
        raise KafkaIOError(f"no log file at {path}; give the path of a .jsonl event log")
    _require_topic(bootstrap, topic, connect_timeout)
    total = count_lines(path)
    if limit is not None:
        total = min(total, limit)

    ms = max(1, int(connect_timeout * 1000))
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=ms,
                                 max_block_ms=ms, **_PRODUCER_CONFIG)
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap, exc) from exc

    tally = _Delivery()
    pacer = _Pacer(speed) if speed is not None else None
    bar = tqdm(total=total, unit="msg", unit_scale=True, file=sys.stderr,
               disable=not progress, desc=f"replay {topic}", mininterval=0.5)
    started = time.monotonic()
    pending = 0
    try:
        for line in _iter_lines(path, limit):
            key, business_time = _key_and_time(line, key_field, pacer is not None)
            if pacer is not None and business_time is not None:
                pacer.wait_for(business_time)
            size = len(line)
            try:
                future = producer.send(topic, value=line, key=key)
            except KafkaTimeoutError as exc:  # no metadata / buffer full: the broker is gone
                raise KafkaIOError(
                    f"producing to {topic} on {bootstrap} timed out ({exc}); {_HINT}"
                ) from exc
            except KafkaError as exc:  # e.g. a line larger than max_request_size
                tally.failure(exc)
            else:
                future.add_callback(lambda _meta, n=size: tally.success(n))
                future.add_errback(tally.failure)
            pending += 1
            if pending >= _PROGRESS_EVERY:
                bar.update(pending)
                pending = 0
        producer.flush(timeout=max(connect_timeout, 30.0))
    except KafkaError as exc:
        raise KafkaIOError(
            f"producing to {topic} on {bootstrap} failed ({exc}); {_HINT}"
        ) from exc
    finally:
        bar.update(pending)
        bar.close()
        producer.close(timeout=5)
    elapsed = time.monotonic() - started
    if tally.errors:
        log.error("replay: %d records were not delivered; first: %s",
                  tally.errors, tally.first_error)
    return ReplayStats(tally.ok, tally.bytes, elapsed, tally.errors, tally.first_error)


def _require_topic(bootstrap: str, topic: str, timeout: float) -> None:
    """Raise a helpful :class:`KafkaIOError` unless ``topic`` exists on the broker."""
    admin = _admin(bootstrap, timeout)
    try:
        topics = set(admin.list_topics())
    finally:
        admin.close()
    if topic not in topics:
        raise KafkaIOError(
            f"topic {topic} does not exist on {bootstrap}; start the worker once "
            "(it creates its topics) or create it, then replay again"
        )


# ---------------------------------------------------------------------------- consume


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float,
    expect: int | None = None,
    max_wait_s: float | None = None,
) -> list[Record]:
    """Read ``topic`` from the beginning of every partition, without a consumer group.

    Stops when ``expect`` records were read, or when no record arrived for ``timeout_s``
    seconds, or after ``max_wait_s`` seconds in all (default: ten times ``timeout_s``,
    at least 60 s). A topic that does not exist yet is waited for within the same
    limits. Records come in the order they were fetched: per partition by offset,
    partitions interleaved. Raises :class:`KafkaIOError` when the broker is unreachable.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    overall = max_wait_s if max_wait_s is not None else max(60.0, 10 * timeout_s)
    deadline = time.monotonic() + overall
    ms = max(1, int(min(timeout_s, overall) * 1000))
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="tracewatch-reader",
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=max(ms, 5_000),
            request_timeout_ms=max(ms, 5_000) + 1_000,
        )
    except (KafkaError, OSError) as exc:
        raise _unreachable(bootstrap, exc) from exc
    records: list[Record] = []
    try:
        partitions = _wait_partitions(consumer, topic, deadline, timeout_s)
        if not partitions:
            return records
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        last_record = time.monotonic()
        while True:
            now = time.monotonic()
            if expect is not None and len(records) >= expect:
                break
            if now - last_record >= timeout_s or now >= deadline:
                break
            wait_ms = int(max(0.0, min(0.5, deadline - now, timeout_s)) * 1000)
            batch = consumer.poll(timeout_ms=wait_ms)
            for tp, messages in batch.items():
                for m in messages:
                    records.append(Record(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=m.offset,
                        key=m.key,
                        value=m.value,
                        headers=[(k, bytes(v or b"")) for k, v in (m.headers or [])],
                        timestamp=m.timestamp,
                    ))
                    last_record = time.monotonic()
    except KafkaError as exc:
        raise KafkaIOError(f"reading {topic} from {bootstrap} failed ({exc}); {_HINT}") from exc
    finally:
        consumer.close()
    return records


def _wait_partitions(consumer: Any, topic: str, deadline: float, idle_s: float) -> set[int]:
    """Partition ids of ``topic``, waiting (within the limits) for the topic to appear."""
    give_up = min(deadline, time.monotonic() + idle_s)
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if time.monotonic() >= give_up:
            return set()
        time.sleep(0.1)
