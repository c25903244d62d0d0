"""``tracewatch bench``: tracewatch's worker against its peers, side by side, one broker, one run.

1. Build a workload (:mod:`streams.bench_workload`: NHSA messages with 1 to 10 codes each,
   split sales, returns, retries, a few percent of duplicates) and load it into the input
   topic of an embedded Tansu broker **before** any clock starts.
2. Throughput, each contender in its own process, reading the same pre-loaded topic:

   * ``tracewatch``: ``tracewatch worker`` with the Redis ledger (all its rules);
   * ``quixstreams``: :mod:`streams.peers_quix`, a straightforward Quix Streams app with
     RocksDB state applying ``DUPLICATE_SALE`` and ``SPLIT_OVERDISPENSE``;
   * ``naive-faust``: :mod:`streams.peers_faust`, a faust agent and ``Table``, one event at
     a time.

   Codes per second = codes listed in the workload / (wall time the last was judged − wall
   time the first record was handled): start-up and group joins are left out for everyone.
   With ``--rounds N`` (3 by default, 1 with ``--quick``) every contender runs N times, each
   round on a topic of its own loaded before any timing; a contender's figure is its median
   round, and a ratio the median of the rounds' ratios (a round's runs are a minute apart,
   so a shared machine's swings in speed, ±15 % here, cancel out of them).
3. Latency, on tracewatch's worker still running: a second workload produced at half the
   throughput just measured; for every alert, the time from its triggering message being
   produced to the alert record (its Kafka timestamp); p50/p99. Then one alert after the
   worker sat idle: a batch must not wait for filling.
4. Redis bytes per tracked code of tracewatch's ledger after its last round (sampled buckets).
5. ``--soak SECONDS``: steady load at half the throughput; worker RSS and lag sampled every
   ten seconds.

The last line is ``codes_per_s=N vs_quixstreams=X.XX vs_naive_faust=X.XX p99_ms=N
redis_bytes_per_code=N``. Every loop here is bounded; everything runs on loopback.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.compiled import hot_path_kind
from streams.settings import Settings

#: Workload sizes: messages for throughput, seconds of paced load.
QUICK = {"messages": 12_000, "paced_s": 10.0, "rounds": 1}
FULL = {"messages": 100_000, "paced_s": 60.0, "rounds": 3}
PEERS = ("quixstreams", "naive-faust")
#: How long the paced load's producer lets records gather into a batch (see _paced_produce).
PACED_LINGER_MS = 50
#: The same for the soak's load. Tansu's in-memory storage gets slower with every record
#: batch it holds: with the input keyed by institution (a batch per partition per linger) at
#: 1,800 messages/s and 50 ms, the broker alone went from 13 % to 37 % of a core in two and a
#: half minutes (``scripts/broker_soak.py``; in a soak the worker waited on fetches ever
#: longer, its batches and memory growing with them); at 400 ms it stayed at 8-9 %. A soak
#: measures the worker, not that (Apache Kafka finds an offset through its index however many
#: batches a partition holds).
SOAK_LINGER_MS = 400
PEER_MODULES = {"quixstreams": "peers_quix", "naive-faust": "peers_faust"}


class BenchError(RuntimeError):
    """The benchmark could not run; the message says why and what to do."""


@dataclass
class Throughput:
    """One contender's run over the pre-loaded workload."""

    name: str
    codes: int = 0
    seconds: float = 0.0
    alerts: int = 0
    rss_mb: float = 0.0
    note: str = ""
    cpu_s: float = 0.0
    """The contender's own CPU seconds (all its threads) over those ``seconds``; 0 if not
    reported. Steadier than the wall time on a shared machine."""
    redis_cpu_s: float = 0.0
    """Redis's CPU seconds over the run (tracewatch's ledger; 0 for the peers)."""
    steps: dict[str, float] = field(default_factory=dict)
    """tracewatch's worker: seconds its batches spent in each step (its /metrics)."""
    batches: tuple[float, float] = (0.0, 0.0)
    """tracewatch's worker: the batches its first stage routed and their input records."""

    @property
    def codes_per_s(self) -> float:
        """Codes judged per second of processing."""
        return self.codes / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_code(self) -> float:
        """The contender's CPU microseconds a code (0 if its CPU was not reported)."""
        return 1e6 * self.cpu_s / self.codes if self.cpu_s > 0 and self.codes else 0.0


def median_run(runs: Sequence[Throughput]) -> Throughput:
    """The run with the median codes per second (the lower middle one of an even count);
    a failed run (no seconds) stands for the contender when every run failed."""
    done = sorted((r for r in runs if r.seconds > 0), key=lambda r: r.codes_per_s)
    if not done:
        return runs[0]
    return done[(len(done) - 1) // 2]


def round_ratios(rounds: Sequence[Sequence[Throughput]], name: str) -> list[float]:
    """Per round, tracewatch's codes per second over ``name``'s (rounds where both ran)."""
    ratios = []
    for runs in rounds:
        by_name = {r.name: r for r in runs}
        mine, other = by_name.get("tracewatch"), by_name.get(name)
        if mine is not None and other is not None and mine.seconds > 0 and other.seconds > 0:
            ratios.append(mine.codes_per_s / other.codes_per_s)
    return ratios


@dataclass
class Latency:
    """Message-to-alert times of the paced phase, and of one alert after idling."""

    rate_msgs_per_s: float = 0.0
    alerts: int = 0
    samples_ms: list[float] = field(default_factory=list)
    idle_ms: float | None = None
    #: The codes its ledger was sized for (:func:`latency_ledger_codes`).
    ledger_codes: int = 0
    #: The worker's first-stage batches and records during the paced load, and its Redis's
    #: CPU seconds: small batches cost Redis more a code than the throughput rounds' large ones.
    batches: float = 0.0
    records: float = 0.0
    redis_cpu_s: float = 0.0
    #: The codes the messages sent listed.
    codes: int = 0

    def percentile(self, share: float) -> float:
        """The ``share`` (0-1) percentile of the samples, in ms (0 without samples)."""
        if not self.samples_ms:
            return 0.0
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --------------------------------------------------------------------------- the worker


class WorkerUnderTest:
    """``tracewatch worker`` as a subprocess on the bench's topics, with its own key prefix."""

    def __init__(self, bootstrap: str, input_topic: str, catalog: Path, settings: Settings,
                 run: str, partitions: int, workdir: Path, expected_codes: int) -> None:
        from streams.broker import free_port

        self.port = free_port()
        self.run = run
        self.alerts_topic = f"bench.{run}.tw.alerts"
        self.redis_url = settings.redis_url
        self.env = {
            **os.environ,
            "TRACEWATCH_KAFKA": bootstrap,
            "TRACEWATCH_TOPIC_EVENTS": input_topic,
            "TRACEWATCH_TOPIC_CODES": f"bench.{run}.tw.codes",
            "TRACEWATCH_TOPIC_PERSONS": f"bench.{run}.tw.persons",
            "TRACEWATCH_TOPIC_ALERTS": self.alerts_topic,
            "TRACEWATCH_TOPIC_DLQ": f"bench.{run}.tw.dlq",
            "TRACEWATCH_PARTITIONS": str(partitions),
            "TRACEWATCH_LEDGER": "redis",
            "TRACEWATCH_REDIS_URL": settings.redis_url,
            "TRACEWATCH_CATALOG": str(catalog),
            "TRACEWATCH_WEB_PORT": str(self.port),
            "TRACEWATCH_LOG_LEVEL": "warning",
        }
        # Sized for this run, so its buckets are as full as a production ledger's (~150
        # codes each) and bytes per code mean what they mean at 10 million.
        self.use_ledger("", expected_codes)
        self.log_path = workdir / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker process."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _page(self, path: str) -> bytes | None:
        """One of the worker's web pages, or None while it does not answer."""
        self._check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=2) as answer:
                body: bytes = answer.read()
                return body
        except OSError:
            return None

    def health(self) -> dict[str, Any] | None:
        """The worker's /healthz, or None while it does not answer."""
        page = self._page("/healthz")
        if page is None:
            return None
        body: dict[str, Any] = orjson.loads(page)
        return body

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"the worker stopped (exit {self.process.returncode}); "
                             f"its log {self.log_path} ends:\n{tail}")

    def wait_idle(self, records: int, timeout: float) -> dict[str, Any]:
        """Wait until ``records`` input records were released and every stage caught up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if (health and health["input_released"] >= records
                    and health["codes_applied"] >= health["codes_sent"]
                    and health["persons_applied"] >= health["persons_sent"]):
                return health
            time.sleep(0.05)
        raise BenchError(f"the worker did not judge {records} records within {timeout:.0f} s; "
                         f"see {self.log_path}")

    def wait_started(self, timeout: float) -> dict[str, float]:
        """Wait until the worker judged its first batch; its steps' seconds then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health and health.get("first_at"):
                return self.step_seconds()
            time.sleep(0.02)
        raise BenchError(f"the worker judged nothing within {timeout:.0f} s; "
                         f"see {self.log_path}")

    def wait_assigned(self, timeout: float) -> None:
        """Wait until the worker joined its group and holds partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health and health.get("partitions_assigned"):
                return
            time.sleep(0.1)
        raise BenchError(f"the worker got no partitions within {timeout:.0f} s; "
                         f"see {self.log_path}")

    def step_seconds(self) -> dict[str, float]:
        """Seconds the worker's batches spent in each step so far, from its /metrics."""
        page = self._page("/metrics")
        return {} if page is None else _step_seconds(page.decode())

    def batch_totals(self) -> tuple[float, float] | None:
        """(batches, records) the worker's first stage handled so far, from its /metrics."""
        page = self._page("/metrics")
        return None if page is None else _route_batches(page.decode())

    def redis_cpu_seconds(self) -> float:
        """The ledger's Redis server's CPU seconds so far (INFO cpu: user and system)."""
        import redis

        info = redis.Redis.from_url(self.redis_url).info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def rss_mb(self) -> float:
        """The worker's resident memory now, in MB."""
        return 0.0 if self.process is None else process_rss_mb(self.process.pid)

    def stop(self, clean: bool = True) -> None:
        """Stop the worker; with ``clean``, remove its keys from Redis too."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if not clean:
            return
        try:
            import redis

            from streams.redis_ledger import remove_prefix

            remove_prefix(redis.Redis.from_url(self.redis_url), self.prefix)
        except Exception as error:  # cleaning up must not hide the result
            print(f"tracewatch bench: could not remove {self.prefix}:* from Redis: {error}",
                  file=sys.stderr)

    def use_ledger(self, name: str, expected_codes: int) -> None:
        """Point the next start at a ledger of its own (prefix ``twbench<run><name>``) sized
        for ``expected_codes``: the run's, and the soak's (a soak writes many times the
        workload's codes, and a ledger sized for those overfills its buckets: Redis turns
        them into hash tables)."""
        self.prefix = f"twbench{self.run}{name}"
        self.env["TRACEWATCH_KEY_PREFIX"] = self.prefix
        self.env["TRACEWATCH_EXPECTED_CODES"] = str(max(1, expected_codes))

    def restart_on_ledger(self, name: str, expected_codes: int, timeout: float) -> None:
        """Stop the worker and remove its ledger's keys, then start it on a ledger of its own
        (:meth:`use_ledger`) and wait until it holds partitions: the latency phase's and the
        soak's."""
        self.stop()
        self.use_ledger(name, expected_codes)
        self.start()
        self.wait_assigned(timeout)

    def bytes_per_code(self) -> tuple[float, int]:
        """Redis bytes per tracked code and the codes tracked (sampled buckets)."""
        from streams.redis_ledger import RedisLedger

        ledger = RedisLedger.from_url(self.redis_url, prefix=self.prefix)
        figures = ledger.stats(sample=1024)
        return float(figures.get("bytes_per_code", 0.0)), int(figures.get("codes", 0))


def process_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` now, in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of the live process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- phases


def _run_tracewatch(worker: WorkerUnderTest, messages: int, codes: int,
                    timeout: float) -> Throughput:
    from streams.kafka_io import consume_all

    redis_before = worker.redis_cpu_seconds()
    worker.start()
    # The steps' seconds from the first batch judged on: the wait for the group before it
    # would count as fetching.
    steps_before = worker.wait_started(timeout)
    health = worker.wait_idle(messages, timeout)
    # From the worker's start to its last batch: Redis does nothing else meanwhile but the
    # worker's start-up (a few commands) and the health polls.
    redis_cpu = worker.redis_cpu_seconds() - redis_before
    steps = {step: seconds - steps_before.get(step, 0.0)
             for step, seconds in worker.step_seconds().items()}
    batches = worker.batch_totals() or (0.0, 0.0)
    alerts = consume_all(worker.env["TRACEWATCH_KAFKA"], worker.alerts_topic, timeout_s=2)
    return Throughput("tracewatch", codes, health["last_at"] - health["first_at"],
                      len(alerts), worker.rss_mb(),
                      f"all rules, Redis ledger, {health.get('allocator', 'system')}",
                      cpu_s=float(health.get("last_cpu", 0.0) - health.get("first_cpu", 0.0)),
                      redis_cpu_s=redis_cpu, steps=steps, batches=batches)


def peer_environment(choice: str) -> tuple[dict[str, str], str]:
    """The peers' environment and allocator: the one the worker gets (``TRACEWATCH_ALLOCATOR``),
    so that the comparison is of the applications and not of their allocators."""
    from streams import allocator

    environment = allocator.preload_environment(choice, os.environ,
                                                allocator.jemalloc_library(), "system")
    return (dict(os.environ), "system") if environment is None else (environment, "jemalloc")


def _run_peer(name: str, bootstrap: str, input_topic: str, catalog: Path, codes: int,
              run: str, partitions: int, workdir: Path, timeout: float,
              files: str = "", allocator: str = "system") -> Throughput:
    """Run a peer to completion; ``files`` tells its report, log and state apart (rounds)."""
    from streams.peers_common import peer_command

    report = workdir / f"{name}{files}.report.json"
    log_path = workdir / f"{name}{files}.log"
    report.unlink(missing_ok=True)  # a kept folder's old report must not pass for this run's
    command = peer_command(PEER_MODULES[name], bootstrap=bootstrap, input_topic=input_topic,
                           output_topic=f"bench.{run}.{name}.alerts", expect_codes=codes,
                           report=report, state_dir=workdir / f"{name}{files}.state",
                           run_id=f"{run}{name.replace('-', '')}", catalog=catalog,
                           partitions=partitions, timeout=timeout)
    environment, allocator_used = peer_environment(allocator)
    with log_path.open("wb") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout + 60, check=False, env=environment)
    if finished.returncode != 0 or not report.is_file():
        tail = log_path.read_text(errors="replace")[-1500:]
        return Throughput(name, note=f"failed (exit {finished.returncode}); {log_path}: {tail}")
    body = orjson.loads(report.read_bytes())
    return Throughput(name, int(body["codes"]), float(body["done"]) - float(body["first"]),
                      int(body.get("alerts", 0)), float(body.get("rss_mb", 0.0)),
                      f"DUPLICATE_SALE + SPLIT_OVERDISPENSE only, {allocator_used}",
                      cpu_s=float(body.get("cpu_s") or 0.0))


def _paced_produce(bootstrap: str, topic: str, lines: Iterable[bytes], rate: float,
                   seconds: float, key_of: Callable[[bytes], bytes | None],
                   into: dict[str, float] | None = None,
                   counter: list[int] | None = None,
                   linger_ms: int = PACED_LINGER_MS, timed: bool = True) -> dict[str, float]:
    """Produce ``lines`` at ``rate`` per second for at most ``seconds``; msgid → send time
    (filled in as they go into ``into`` when given; none kept unless ``timed``: a soak sends
    millions). ``counter[0]`` counts the records sent (a retry repeats its msgid, so the
    dict's size does not).

    With confluent-kafka (librdkafka, C; installed with the ``bench`` extra for Quix Streams)
    the load costs this process a few % of a core; kafka-python, the fallback, took 40-60 %
    of one at 1,900 messages/s — CPU the worker under test, the broker and Redis need on two
    cores. Records linger ``linger_ms`` in the producer (counted in the latency: the
    send time is taken before it): Tansu's in-memory storage spends CPU per stored record
    batch and fetches slow as they pile up, so at 5 ms of linger (800 batches a second on four
    partitions) the broker alone, with no worker, went from p99 22 ms to 384 ms within a
    minute at 4,600 messages/s and took 90 % of a core; at 50 ms it stayed at 61 ms and 13 %.
    """
    send, finish = _paced_producer(bootstrap, linger_ms)
    sent: dict[str, float] = {} if into is None else into
    started = time.time()
    try:
        for index, line in enumerate(lines):
            due = started + index / rate
            if due - started > seconds:
                break
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            if timed:
                sent[str(orjson.loads(line).get("msgid", ""))] = time.time()
            send(topic, line, key_of(line))
            if counter is not None:
                counter[0] += 1
    finally:
        finish()
    return sent


def _paced_producer(bootstrap: str, linger_ms: int = PACED_LINGER_MS,
                    ) -> tuple[Callable[[str, bytes, bytes | None], None], Callable[[], None]]:
    """(send, flush and close) of the lightest Kafka producer installed."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        from kafka import KafkaProducer

        fallback = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=linger_ms)

        def send_slowly(topic: str, value: bytes, key: bytes | None) -> None:
            fallback.send(topic, value=value, key=key)

        def close_slowly() -> None:
            try:
                fallback.flush(timeout=30)
            finally:
                fallback.close(timeout=5)

        return send_slowly, close_slowly

    producer = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": linger_ms})

    def send(topic: str, value: bytes, key: bytes | None) -> None:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)  # serve delivery reports, or librdkafka's queue only grows

    def close() -> None:
        if producer.flush(30):
            raise BenchError("the paced load was not all delivered within 30 s")

    return send, close


def _institution_key(line: bytes) -> bytes | None:
    code = orjson.loads(line).get("fixmedins_code")
    return str(code).encode() if code else None


def _latencies(bootstrap: str, alerts_topic: str, sent: dict[str, float],
               keep: Path | None = None) -> list[float]:
    """Milliseconds from each sent trigger message to its alert record; (sent, ms) to
    ``keep`` as CSV."""
    from streams.kafka_io import consume_all

    records = consume_all(bootstrap, alerts_topic, timeout_s=2)
    pairs = []
    for record in records:
        alert = orjson.loads(record.value or b"{}")
        at = sent.get(str(alert.get("trigger_msgid")))
        if at is not None:
            pairs.append((at, max(0.0, record.timestamp / 1000 - at) * 1000))
    pairs.sort()
    if keep is not None:
        keep.write_text("sent_unix_s,latency_ms\n"
                        + "".join(f"{at:.3f},{ms:.1f}\n" for at, ms in pairs))
    return [ms for _, ms in pairs]


def _duplicate_of(lines: Sequence[bytes], tag: str) -> bytes:
    """A whole-box sale of the workload sold again under a new msgid: one DUPLICATE_SALE."""
    for line in reversed(lines):
        body = orjson.loads(line)
        info = body.get("input", {}).get("selinfo", {})
        if body.get("infno") == "3505" and str(info.get("trdn_flag")) == "0" \
                and info.get("drugtracinfo"):
            body["msgid"] = f"BENCH-IDLE-{tag}"
            info["fixmedins_bchno"] = f"IDLE{tag}"
            return orjson.dumps(body)
    raise BenchError("the workload has no whole-box sale to resell for the idle probe")


def _measure_latency(worker: WorkerUnderTest, bootstrap: str, input_topic: str, seed: int,
                     rate: float, seconds: float, run: str) -> Latency:
    from streams.bench_workload import generate

    before = worker.health() or {}
    count = max(100, int(rate * seconds))
    paced = generate(count, seed + 1)
    batches_before = worker.batch_totals() or (0.0, 0.0)
    redis_before = worker.redis_cpu_seconds()
    sent = _paced_produce(bootstrap, input_topic, paced.lines, rate, seconds, _institution_key)
    worker.wait_idle(int(before.get("input_released", 0)) + len(sent), 120)
    batches_after = worker.batch_totals() or batches_before
    result = Latency(rate_msgs_per_s=rate,
                     batches=batches_after[0] - batches_before[0],
                     records=batches_after[1] - batches_before[1],
                     redis_cpu_s=worker.redis_cpu_seconds() - redis_before,
                     codes=round(paced.codes * len(sent) / max(1, len(paced.lines))))
    result.samples_ms = _latencies(bootstrap, worker.alerts_topic, sent,
                                   worker.log_path.with_name("latency.csv"))
    result.alerts = len(result.samples_ms)
    # One alert after the worker sat idle: the batch it lands in must not wait to fill.
    time.sleep(3)
    probe = _duplicate_of(paced.lines[: len(sent)], run)
    probe_sent = _paced_produce(bootstrap, input_topic, [probe], 1.0, 1.0, _institution_key)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        idle = _latencies(bootstrap, worker.alerts_topic, probe_sent)
        if idle:
            result.idle_ms = idle[0]
            break
    return result


def _route_batches(metrics: str) -> tuple[float, float] | None:
    """(batches, records) of the first stage in a worker's /metrics text, if there."""
    from prometheus_client.parser import text_string_to_metric_families

    count = total = None
    for family in text_string_to_metric_families(metrics):
        if family.name != "tracewatch_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("stage") == "route":
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
    return (count, total) if count is not None and total is not None else None


def _step_seconds(metrics: str) -> dict[str, float]:
    """Each step's seconds (``tracewatch_batch_seconds_sum``) in a worker's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    steps: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "tracewatch_batch_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    steps[sample.labels.get("stage", "?")] = sample.value
    return steps


def _batch_trend(totals: Sequence[tuple[float, float, float]]) -> str:
    """The mean batch of the soak's first and last minute, from (elapsed s, batches, records)
    samples: the worker's memory follows its largest batch, and a slowing broker grows them."""
    def mean_over(start: tuple[float, float, float], end: tuple[float, float, float]) -> str:
        batches = end[1] - start[1]
        return f"{(end[2] - start[2]) / batches:,.0f}" if batches > 0 else "no"

    if len(totals) < 2:
        return "batch sizes not sampled"
    first = next((t for t in totals if t[0] >= totals[0][0] + 60), totals[-1])
    last = next((t for t in reversed(totals) if t[0] <= totals[-1][0] - 60), totals[0])
    return (f"batches of {mean_over(totals[0], first)} records on average in the first minute, "
            f"{mean_over(last, totals[-1])} in the last")


def steady_messages(total: int, seed: int, chunk: int = 60_000) -> Iterator[bytes]:
    """``total`` messages of one workload running on (the same institutions, drugs and
    people; time, record numbers and boxes continuing), as steady traffic is; generated
    ``chunk`` at a time."""
    from streams.bench_workload import stream

    chunks = stream(min(total, chunk), seed)
    return itertools.islice(itertools.chain.from_iterable(chunks), total)


def write_soak_load(path: Path, rate: float, seconds: float, seed: int,
                    chunk: int = 60_000) -> int:
    """Write the soak's messages to ``path`` (one a line): ``seconds`` of load at ``rate``
    (:func:`steady_messages`). Returns how many were written.

    Written before the soak, not while it runs: generating took this process ~7 s of CPU per
    minute of load at 5,000 messages/s, on the cores the worker under test needs, and left
    the load paused meanwhile."""
    total = max(100, int(rate * seconds))
    with path.open("wb") as handle:
        handle.writelines(line + b"\n" for line in steady_messages(total, seed, chunk))
    return total


def _soak(worker: WorkerUnderTest, bootstrap: str, input_topic: str, seed: int, rate: float,
          seconds: float, load: Path,
          ) -> tuple[list[tuple[float, float, int]], list[tuple[float, float, float]]]:
    """Steady load for ``seconds``: (elapsed s, worker RSS MB, lag in records) every 10 s, and
    (elapsed s, batches, records) of the worker's first stage when its /metrics answered.
    The load is written to ``load`` first (:func:`write_soak_load`), then sent on one
    schedule by one producer."""
    import threading

    started_writing = time.monotonic()
    count = write_soak_load(load, rate, seconds, seed + 2)
    print(f"      soak load: {count:,} messages written to {load} in "
          f"{time.monotonic() - started_writing:.0f} s; sending them now", file=sys.stderr)
    base = int((worker.health() or {}).get("input_released", 0))
    produced = [0]

    def produce() -> None:
        with load.open("rb") as handle:
            _paced_produce(bootstrap, input_topic, (line.rstrip(b"\n") for line in handle),
                           rate, seconds, _institution_key, counter=produced,
                           linger_ms=SOAK_LINGER_MS, timed=False)

    thread = threading.Thread(target=produce, daemon=True)
    started = time.monotonic()
    thread.start()
    samples: list[tuple[float, float, int]] = []
    batches: list[tuple[float, float, float]] = []
    while thread.is_alive() and time.monotonic() - started < seconds + 60:
        time.sleep(10)
        health = worker.health()
        totals = worker.batch_totals()
        elapsed = time.monotonic() - started
        if totals is not None:
            batches.append((round(elapsed, 1), *totals))
        if health is None:  # busy past the 2-s timeout: no figure, rather than a wrong one
            print(f"  soak {elapsed:6.0f} s  the worker's /healthz did not answer",
                  file=sys.stderr)
            continue
        lag = max(0, produced[0] - (int(health.get("input_released", 0)) - base))
        samples.append((round(elapsed, 1), round(worker.rss_mb(), 1), lag))
        print(f"  soak {elapsed:6.0f} s  worker RSS {samples[-1][1]:7.1f} MB  lag {lag}",
              file=sys.stderr)
    thread.join(timeout=60)
    return samples, batches


# --------------------------------------------------------------------------- the command


@contextmanager
def _broker(workdir: Path) -> Iterator[str]:
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        yield broker.bootstrap


def _check_redis(settings: Settings) -> None:
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2).ping()
    except Exception as error:
        raise BenchError(f"tracewatch bench needs Redis for the worker's ledger and none "
                         f"answers at TRACEWATCH_REDIS_URL={settings.redis_url} ({error}); "
                         "start redis-server or set TRACEWATCH_REDIS_URL") from None


def _table(results: Sequence[Throughput]) -> str:
    rows = [f"{'contender':<12} {'codes':>9} {'seconds':>8} {'codes/s':>9} {'CPU µs':>7} "
            f"{'alerts':>7} {'RSS MB':>7}  what"]
    for r in results:
        if r.seconds <= 0:
            rows.append(f"{r.name:<12} {'-':>9} {'-':>8} {'-':>9} {'-':>7} {'-':>7} {'-':>7}  "
                        f"{r.note}")
            continue
        cpu = f"{r.cpu_us_per_code:.1f}" if r.cpu_us_per_code else "-"
        rows.append(f"{r.name:<12} {r.codes:>9,} {r.seconds:>8.2f} {r.codes_per_s:>9,.0f} "
                    f"{cpu:>7} {r.alerts:>7,} {r.rss_mb:>7.0f}  {r.note}")
    return "\n".join(rows)


def _cpu_line(mine: Throughput) -> str:
    """Where tracewatch's CPU went, for a change judged on a noisy machine."""
    if not mine.cpu_s:
        return ""
    redis = (f", its Redis {mine.redis_cpu_s:.2f} s "
             f"({1e6 * mine.redis_cpu_s / max(1, mine.codes):.1f} µs a code)"
             if mine.redis_cpu_s > 0 else "")
    return (f"(CPU µs: the contender's own CPU a code while it judged; steadier than codes/s "
            f"on a shared machine. tracewatch's worker {mine.cpu_s:.2f} s{redis})")


def _steps_line(mine: Throughput) -> str:
    """Where tracewatch's worker spent its wall time, step by step (the rest: the Kafka
    client's own work, the event loop, the input's order)."""
    if not mine.steps:
        return ""
    spent = sum(mine.steps.values())
    return ("(tracewatch's worker, seconds by step after its first batch: "
            + " · ".join(f"{step} {seconds:.2f}" for step, seconds in
                         sorted(mine.steps.items(), key=lambda item: -item[1]))
            + f"; {spent:.2f} in all, against {mine.seconds:.2f} s judging"
            + (f"; {mine.batches[0]:,.0f} batches of {mine.batches[1] / mine.batches[0]:,.0f} "
               "records on average)" if mine.batches[0] else ")"))


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Run the benchmark; print the table and the summary line. 0 on success, 2 if it could
    not run."""
    from streams.bench_workload import generate, write_catalog, write_log
    from streams.kafka_io import TopicSpec, ensure_topics, replay

    sizes = QUICK if args.quick else FULL
    messages = args.messages or int(sizes["messages"])
    paced_s = args.paced_seconds or float(sizes["paced_s"])
    rounds = args.rounds or int(sizes["rounds"])
    if rounds < 1:
        print(f"tracewatch bench: --rounds takes a positive count, not {rounds}",
              file=sys.stderr)
        return 2
    if args.soak_rate < 0:
        print("tracewatch bench: --soak-rate takes messages per second (0: use --soak-share), "
              f"not {args.soak_rate}", file=sys.stderr)
        return 2
    if args.soak_share <= 0:
        print("tracewatch bench: --soak-share takes a share of the throughput above 0 (0.5: "
              f"half), not {args.soak_share}", file=sys.stderr)
        return 2
    run = uuid.uuid4().hex[:8]
    skip = set(args.skip or ())
    unknown = skip - set(PEERS)
    if unknown:
        print(f"tracewatch bench: --skip takes {', '.join(PEERS)}, not {', '.join(unknown)}",
              file=sys.stderr)
        return 2
    try:
        _check_redis(settings)
    except BenchError as error:
        print(f"tracewatch bench: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tracewatch-bench-") as scratch:
        workdir = Path(args.keep) if args.keep else Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"[1/5] workload: {messages:,} messages (seed {args.seed})", file=sys.stderr)
        workload = generate(messages, args.seed)
        log = write_log(workload.lines, workdir / "workload.jsonl")
        catalog = write_catalog(workload.catalog, workdir / "catalog.csv")
        print(f"      {workload.codes:,} codes, {workload.duplicate_sales} duplicate sales, "
              f"{workload.split_overdispenses} split overdispenses planted", file=sys.stderr)
        with _broker(workdir) as bootstrap:
            # A topic per round, so every run reads the whole workload from the start.
            topics = [f"bench.{run}.events" + (f".{n}" if n else "") for n in range(rounds)]
            # Quix Streams reads the input topic's retention.ms, which Tansu reports only
            # when the topic was created with it (docs/kafka-notes.md).
            ensure_topics(bootstrap, [TopicSpec(topic, args.partitions, retention_ms=-1)
                                      for topic in topics])
            print(f"[2/5] loading the input topic{'s' if rounds > 1 else ''} "
                  f"({args.partitions} partitions{f', {rounds} rounds' if rounds > 1 else ''})"
                  " before timing", file=sys.stderr)
            for topic in topics:
                replay(log, bootstrap, topic, progress=sys.stderr.isatty())
            rounds_run: list[list[Throughput]] = []
            worker: WorkerUnderTest | None = None
            latency = Latency()
            soak: list[tuple[float, float, int]] = []
            soak_batches: list[tuple[float, float, float]] = []
            soak_ledger: tuple[float, int] | None = None
            soak_rate = 0.0
            bytes_per_code, tracked = 0.0, 0
            try:
                for number, topic in enumerate(topics):
                    if worker is not None:
                        worker.stop()  # the last round's, with its keys
                    of = f" (round {number + 1} of {rounds})" if rounds > 1 else ""
                    # Each round's worker has its own topics and key prefix.
                    round_id = run if number == 0 else f"{run}r{number}"
                    worker = WorkerUnderTest(bootstrap, topic, catalog, settings, round_id,
                                             args.partitions, workdir, workload.codes)
                    print(f"[3/5] tracewatch worker{of}", file=sys.stderr)
                    runs = [_run_tracewatch(worker, messages, workload.codes, args.timeout)]
                    print(f"      {runs[0].codes_per_s:,.0f} codes/s", file=sys.stderr)
                    # The peers read the same topic next: stop the worker first, so it
                    # neither takes their CPU nor adds the latency phase's messages before
                    # they run.
                    worker.stop(clean=False)
                    for name in PEERS:
                        if name in skip:
                            continue
                        print(f"[4/5] {name}{of}", file=sys.stderr)
                        peer = _run_peer(name, bootstrap, topic, catalog, workload.codes,
                                         round_id, args.partitions, workdir, args.timeout,
                                         files=f".round{number + 1}" if number else "",
                                         allocator=settings.allocator)
                        runs.append(peer)
                        if peer.seconds > 0:
                            print(f"      {peer.codes_per_s:,.0f} codes/s", file=sys.stderr)
                    rounds_run.append(runs)
                assert worker is not None  # rounds >= 1
                mine = median_run([runs[0] for runs in rounds_run]).codes_per_s
                rate = 0.5 * mine / max(1.0, workload.codes / messages)
                print(f"[5/5] tracewatch latency at half its throughput ({rate:,.0f} messages/s "
                      f"for {paced_s:.0f} s), then one alert after idling", file=sys.stderr)
                bytes_per_code, tracked = worker.bytes_per_code()
                ledger_codes = latency_ledger_codes(rate, paced_s, workload.codes / messages)
                # The last round's keys go; see latency_ledger_codes.
                worker.restart_on_ledger("latency", ledger_codes, args.timeout)
                latency = _measure_latency(worker, bootstrap, topics[-1], args.seed, rate,
                                           paced_s, run)
                latency.ledger_codes = ledger_codes
                if args.soak:
                    soak_rate = soak_rate_of(args.soak_share, args.soak_rate, 2 * rate)
                    soak_codes = int(soak_rate * args.soak * workload.codes / messages)
                    print(f"      soak: {args.soak:.0f} s at {soak_rate:,.0f} messages/s, on a "
                          f"ledger of its own sized for {soak_codes:,} codes", file=sys.stderr)
                    worker.restart_on_ledger("soak", soak_codes, args.timeout)
                    soak, soak_batches = _soak(worker, bootstrap, topics[-1], args.seed,
                                               soak_rate, args.soak, workdir / "soak.jsonl")
                    # The workload's states at millions of codes: a ledger's real size.
                    soak_ledger = worker.bytes_per_code()
            except BenchError as error:
                print(f"tracewatch bench: {error}", file=sys.stderr)
                return 2
            finally:
                if worker is not None:
                    worker.stop()
        print(_report(rounds_run, latency, soak, bytes_per_code, tracked, messages,
                      workload.codes, workload.expected_alerts, args, soak_batches,
                      soak_rate, soak_ledger))
    return 0


def latency_ledger_codes(rate: float, seconds: float, codes_per_message: float) -> int:
    """The codes the latency phase's ledger is sized for: the paced load's own.

    Half the throughput is half of what the rounds measured, each on a ledger sized for its
    workload; the latency phase ran on the last round's ledger until the twenty-seventh
    session, and added two to six times the codes that ledger was sized for (9,000 messages/s
    for 20-60 s on a fast machine). Its code buckets then held up to 3× their design's
    entries, which Redis scans in each listpack: Redis spent ~3× the CPU a code of the rounds,
    the worker waited on it all the time, and p99 rose to 357-660 ms within 20 s. Sized for
    its load like the rounds' (and the soak's) ledgers, the phase runs on the system whose
    throughput it halves (BENCHMARKS.md "Twenty-seventh session")."""
    return max(1, int(rate * seconds * codes_per_message))


def soak_rate_of(share: float, fixed: float, throughput: float) -> float:
    """The soak's load in messages/s: ``fixed`` when given (> 0), else ``share`` of the
    ``throughput`` measured in messages/s. The throughput is measured on a ledger sized for the
    run's few codes, the soak runs on one sized for its millions, where a batch's codes fall in
    about as many bucket hashes as there are codes (Redis works more per code): a share of the
    first can overload the second. A fixed rate also compares soaks of different days."""
    return fixed if fixed > 0 else share * throughput


def _second_half(soak: Sequence[tuple[float, float, int]]) -> str:
    """How the worker's RSS moved over the soak's second half, once warm (caches full)."""
    middle = soak[-1][0] / 2
    half = [s for s in soak if s[0] >= middle]
    minutes = (half[-1][0] - half[0][0]) / 60 if len(half) > 1 else 0.0
    if minutes <= 0:
        return "second half too short to tell"
    growth = half[-1][1] - half[0][1]
    return f"second half {growth:+.0f} MB, {growth / minutes:+.1f} MB/min"


def _runs_of(rounds: Sequence[Sequence[Throughput]], name: str) -> list[Throughput]:
    """The runs of contender ``name``, round by round."""
    return [r for runs in rounds for r in runs if r.name == name]


def _median_ratio(rounds: Sequence[Sequence[Throughput]], name: str) -> str:
    ratios = round_ratios(rounds, name)
    return f"{statistics.median(ratios):.2f}" if ratios else "nan"


def _rounds_lines(rounds: Sequence[Sequence[Throughput]]) -> list[str]:
    """Each contender's codes per second in every round, and the rounds' ratios."""
    if len(rounds) < 2:
        return []
    lines = [f"{len(rounds)} rounds (the table gives each contender's median round):"]
    for name in [r.name for r in rounds[0]]:
        runs = _runs_of(rounds, name)
        line = f"  {name:<12} " + " · ".join(
            f"{r.codes_per_s:,.0f}" if r.seconds > 0 else "failed" for r in runs) + " codes/s"
        if name != "tracewatch":
            ratios = round_ratios(rounds, name)
            line += ("; tracewatch × " + " · ".join(f"{ratio:.2f}" for ratio in ratios)
                     if ratios else "")
        if all(r.cpu_us_per_code for r in runs):
            line += "; CPU µs a code " + " · ".join(f"{r.cpu_us_per_code:.1f}" for r in runs)
        lines.append(line)
    return lines


def interpreter() -> str:
    """Which Python ran the contenders, and whether tracewatch's hot path is compiled: an
    optimised build (a distribution's, the official image's) spends about 15 % less CPU than
    pyenv's default one (BENCHMARKS.md, "Sixteenth session")."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return (f"{platform.python_implementation()} {platform.python_version()} ({base}, "
            f"hot path {hot_path_kind()})")


def _latency_load_line(latency: Latency) -> str:
    """How the worker took the paced load: its ledger, its batches, its Redis's CPU."""
    mean = latency.records / latency.batches if latency.batches else 0.0
    redis_us = 1e6 * latency.redis_cpu_s / latency.codes if latency.codes else 0.0
    return (f"(the paced load on a ledger of its own sized for {latency.ledger_codes:,} codes: "
            f"{latency.batches:,.0f} batches of {mean:,.0f} records on average, its Redis "
            f"{latency.redis_cpu_s:.2f} s, {redis_us:.1f} µs a code)")


def _report(rounds: Sequence[Sequence[Throughput]], latency: Latency,
            soak: Sequence[tuple[float, float, int]], bytes_per_code: float, tracked: int,
            messages: int, codes: int, planted: int, args: argparse.Namespace,
            soak_batches: Sequence[tuple[float, float, float]] = (),
            soak_rate: float = 0.0, soak_ledger: tuple[float, int] | None = None) -> str:
    names = [r.name for r in rounds[0]]
    medians = [median_run(_runs_of(rounds, name)) for name in names]
    mine = medians[0].codes_per_s
    lines = [
        "",
        f"tracewatch bench — {messages:,} messages, {codes:,} codes, "
        f"{args.partitions} partitions, Tansu, {os.cpu_count()} CPUs, {interpreter()}",
        _table(medians),
        *filter(None, [_cpu_line(medians[0]), _steps_line(medians[0])]),
        f"(the workload plants {planted:,} DUPLICATE_SALE and SPLIT_OVERDISPENSE cases: each "
        "contender's alerts should be that many)",
        *_rounds_lines(rounds),
        "",
        f"latency at {latency.rate_msgs_per_s:,.0f} messages/s: {latency.alerts} alerts, "
        f"p50 {latency.percentile(0.5):.0f} ms, p99 {latency.percentile(0.99):.0f} ms, "
        f"max {max(latency.samples_ms, default=0):.0f} ms; one alert after idling: "
        + (f"{latency.idle_ms:.0f} ms" if latency.idle_ms is not None else "not seen"),
        _latency_load_line(latency),
        f"Redis: {bytes_per_code:.1f} bytes per tracked code ({tracked:,} codes, sampled)",
    ]
    if soak:
        rss = [s[1] for s in soak]
        throughput = mine * messages / max(1, codes)
        lines.append(f"soak {soak[-1][0]:.0f} s at {soak_rate:,.0f} messages/s "
                     f"({soak_rate / max(throughput, 1e-9):.0%} of the throughput): "
                     f"worker RSS {rss[0]:.0f} → {rss[-1]:.0f} MB "
                     f"(min {min(rss):.0f}, max {max(rss):.0f}; {_second_half(soak)}); lag max "
                     f"{max(s[2] for s in soak)}, last {soak[-1][2]} records; mean lag "
                     f"{statistics.mean(s[2] for s in soak):.0f}; "
                     f"{_batch_trend(soak_batches)}")
        if soak_ledger is not None:
            lines.append(f"soak's Redis: {soak_ledger[0]:.1f} bytes per tracked code "
                         f"({soak_ledger[1]:,} codes, sampled at the end)")
    lines.append(
        f"codes_per_s={mine:.0f} vs_quixstreams={_median_ratio(rounds, 'quixstreams')} "
        f"vs_naive_faust={_median_ratio(rounds, 'naive-faust')} "
        f"p99_ms={latency.percentile(0.99):.0f} redis_bytes_per_code={bytes_per_code:.0f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tracewatch bench``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"a small run, under two minutes ({QUICK['messages']:,} messages, "
                             f"{QUICK['paced_s']:.0f} s paced)")
    parser.add_argument("--messages", type=int, default=0,
                        help=f"messages in the workload (default {FULL['messages']:,})")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="runs of each contender, a pre-loaded topic each; medians are "
                             f"reported (default {FULL['rounds']}, quick {QUICK['rounds']})")
    parser.add_argument("--partitions", type=int, default=4,
                        help="partitions of the input and internal topics (default 4)")
    parser.add_argument("--paced-seconds", type=float, default=0.0,
                        help="seconds of paced load for the latency (default 60, quick 10)")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                        help="also run a steady load this long (e.g. 600), sampling the "
                             "worker's memory and lag")
    parser.add_argument("--soak-share", type=float, default=0.5,
                        help="the soak's load as a share of the measured throughput "
                             "(default 0.5)")
    parser.add_argument("--soak-rate", type=float, default=0.0, metavar="MESSAGES_PER_S",
                        help="the soak's load in messages per second, whatever the "
                             "throughput measured (instead of --soak-share)")
    parser.add_argument("--skip", nargs="*", choices=PEERS, help="peers not to run")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="give up on a contender after this many seconds (default 900)")
    parser.add_argument("--keep", type=Path,
                        help="keep the workload, logs and reports in this folder")
