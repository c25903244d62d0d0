"""faust-streaming on Tansu, end to end, in a real worker process.

A minimal app with the settings recommended in ``docs/kafka-notes.md``: faust creates its
topics (``internal=True`` source, ``maybe_declare`` for the outputs), one agent reads
``stream.take(200, within=0.2)`` batches, sends each good message to ``OUT`` keyed by
institution with a header, and each bad one unchanged to ``DLQ`` with the reason in a
header. The test runs the worker as a subprocess (this file is also the worker script),
replays a log into it, reads the outputs back, stops the worker with SIGTERM, and starts
it again to check that committed offsets hold: nothing is processed twice.

Run the worker by hand with::

    python tests/test_faust_tansu.py BOOTSTRAP PREFIX READY_FILE
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

PARTITIONS = 4
REASON_HEADER = "tracewatch-reason"
MSGID_HEADER = "tracewatch-msgid"
#: faust hard-codes fetch_max_wait_ms=1500 for its worker consumer, and Tansu does not
#: answer a waiting fetch when new records arrive: a caught-up agent sees new records
#: only when the wait runs out. The "tansu" transport below waits 100 ms instead.
FETCH_MAX_WAIT_MS = 100


def _tansu_transport_classes() -> Any:
    """faust's aiokafka transport with a short fetch wait (see ``FETCH_MAX_WAIT_MS``).

    Built on first use so that importing this module does not import faust.
    """
    from faust.transport.drivers import aiokafka as faust_aiokafka

    class TansuConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # aiokafka reads it in start()
            return consumer

    class TansuConsumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> Any:
            return TansuConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class TansuTransport(faust_aiokafka.Transport):
        Consumer = TansuConsumer

    return TansuTransport


def install_tansu_transport() -> str:
    """Register the ``tansu://`` broker scheme with faust; return the scheme."""
    from faust.transport import drivers

    globals()["TansuTransport"] = _tansu_transport_classes()
    drivers.TRANSPORTS.aliases["tansu"] = f"{__name__}:TansuTransport"
    return "tansu"


def tansu_faust_settings(
    bootstrap: str, *, session_timeout: float = 10.0, scheme: str = "kafka"
) -> dict[str, Any]:
    """faust App settings that work, and start fast, on a single Tansu broker.

    The reasons and the measurements are in docs/kafka-notes.md. ``session_timeout``
    matters most: Tansu answers the first JoinGroup only after half of it.
    """
    return {
        "broker": f"{scheme}://{bootstrap}",
        "store": "memory://",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_replication_factor": 1,
        "topic_partitions": PARTITIONS,
        "topic_allow_declare": True,
        "topic_disable_leader": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": session_timeout,
        "broker_heartbeat_interval": max(0.5, session_timeout / 5),
        "broker_rebalance_timeout": session_timeout,
        "broker_commit_interval": 1.0,
        "broker_commit_every": 1000,
        "stream_buffer_maxsize": 16384,
        "producer_linger": 0.005,
        "producer_max_batch_size": 1 << 20,
        "producer_acks": -1,
        "web_enabled": False,
        "web_bind": "127.0.0.1",
        "web_host": "127.0.0.1",
        "table_cleanup_interval": 3600.0,
    }


def topic_names(prefix: str) -> tuple[str, str, str]:
    """Input, output and dead-letter topic names for one test run."""
    return f"{prefix}.in", f"{prefix}.out", f"{prefix}.dlq"


def build_app(bootstrap: str, prefix: str) -> Any:
    """The worker's faust app (built only in the worker process)."""
    import faust

    scheme = install_tansu_transport()
    settings = tansu_faust_settings(bootstrap, session_timeout=3.0, scheme=scheme)
    app = faust.App(f"{prefix}-app", **settings)
    source_name, out_name, dlq_name = topic_names(prefix)
    # internal=True: the conductor declares (creates) the topic before subscribing to it.
    source = app.topic(source_name, partitions=PARTITIONS, internal=True)
    out = app.topic(out_name, partitions=PARTITIONS, internal=True)
    dlq = app.topic(dlq_name, partitions=1, internal=True)

    @app.agent(source)
    async def route(stream: faust.StreamT[bytes]) -> None:
        await out.maybe_declare()
        await dlq.maybe_declare()
        async for batch in stream.take(200, within=0.2):
            sends = []
            for value in batch:
                try:
                    message = orjson.loads(value)
                    key = message["fixmedins_code"].encode()
                    headers = {MSGID_HEADER: str(message["msgid"]).encode()}
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"[:200].encode()
                    sends.append(await dlq.send(value=value, headers={REASON_HEADER: reason}))
                    continue
                sends.append(await out.send(key=key, value=value, headers=headers))
            # the batch's offsets are acked after this body: wait for the broker first
            await asyncio.gather(*sends)

    return app


def _worker_main(argv: list[str]) -> None:
    """Entry point of the worker subprocess: ``BOOTSTRAP PREFIX READY_FILE``.

    ``faust.Worker`` replaces ``app.on_startup_finished`` with its own method, so the
    ready signal (a file, written once partitions are assigned) hooks the Worker instead.
    SIGTERM or SIGINT stop it gracefully (exit code 0).
    """
    import faust

    bootstrap, prefix, ready_name = argv
    ready_file = Path(ready_name)
    app = build_app(bootstrap, prefix)

    class Worker(faust.Worker):
        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            ready_file.write_text(str(os.getpid()))

    loglevel = os.environ.get("TW_LOGLEVEL", "WARN")
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


# ---------------------------------------------------------------------------- the test

pytestmark = pytest.mark.integration


@dataclass
class WorkerProcess:
    """A faust worker subprocess and what it took to start and stop."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_s: float = 0.0
    stop_s: float = 0.0

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout``); return the exit code."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.stop_s = time.monotonic() - started
        return self.proc.returncode


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[str, str], WorkerProcess]]:
    """Start worker subprocesses; each is stopped (SIGTERM, then SIGKILL) at the end."""
    workers: list[WorkerProcess] = []

    def start(bootstrap: str, prefix: str, timeout: float = 45.0) -> WorkerProcess:
        n = len(workers)
        ready_file = tmp_path / f"ready-{n}"
        log_path = tmp_path / f"worker-{n}.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, __file__, bootstrap, prefix, str(ready_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        worker = WorkerProcess(proc, log_path)
        workers.append(worker)
        while not ready_file.exists():
            if proc.poll() is not None or time.monotonic() - started > timeout:
                worker.stop()
                pytest.fail(f"faust worker did not get ready:\n{worker.log_tail()}")
            time.sleep(0.05)
        worker.ready_s = time.monotonic() - started
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()


def _log(path: Path, rows: list[bytes]) -> Path:
    path.write_bytes(b"".join(row + b"\n" for row in rows))
    return path


def _message(i: int) -> bytes:
    return orjson.dumps({
        "infno": "3505", "msgid": f"M{i:05d}", "fixmedins_code": f"P{i % 7:011d}",
        "mdtrtarea_admvs": "110105", "inf_time": "2026-11-23 10:15:30",
        "input": {"selinfo": {"fixmedins_bchno": f"S{i}", "drugtracinfo": []}},
    })


def test_faust_worker_on_tansu_end_to_end(
    broker: Any, start_worker: Callable[[str, str], WorkerProcess], tmp_path: Path,
    topic_name: Callable[[str], str], capsys: pytest.CaptureFixture[str],
) -> None:
    from kafka import KafkaConsumer

    from streams.kafka_io import consume_all, replay

    prefix = topic_name("faust")
    source, out, dlq = topic_names(prefix)
    worker = start_worker(broker.bootstrap, prefix)

    # faust created its topics with the partition counts asked for
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        counts = {t: consumer.partitions_for_topic(t) for t in (source, out, dlq)}
    finally:
        consumer.close()
    assert counts == {source: set(range(PARTITIONS)), out: set(range(PARTITIONS)), dlq: {0}}

    good = [_message(i) for i in range(1000)]
    bad = [b"not json at all", b'{"msgid": "NO-INSTITUTION"}', b"[1, 2]"]
    first = _log(tmp_path / "first.jsonl", good[:500] + bad)
    started = time.monotonic()
    assert replay(first, broker.bootstrap, source, progress=False).errors == 0
    outputs = consume_all(broker.bootstrap, out, timeout_s=10.0, expect=500)
    dead = consume_all(broker.bootstrap, dlq, timeout_s=5.0, expect=len(bad))
    round_trip_s = time.monotonic() - started

    assert sorted(r.value or b"" for r in outputs) == sorted(good[:500])
    for record in outputs:
        message = orjson.loads(record.value or b"")
        assert record.key == message["fixmedins_code"].encode()
        assert record.header(MSGID_HEADER) == message["msgid"].encode()
    assert sorted(r.value or b"" for r in dead) == sorted(bad)
    reasons = {r.value: (r.header(REASON_HEADER) or b"").decode() for r in dead}
    assert reasons[b"not json at all"].startswith("JSONDecodeError")
    assert reasons[b'{"msgid": "NO-INSTITUTION"}'].startswith("KeyError")
    assert reasons[b"[1, 2]"].startswith("TypeError")

    assert worker.stop() == 0, worker.log_tail()

    # a new worker of the same app resumes from the committed offsets: nothing twice
    second = _log(tmp_path / "second.jsonl", good[500:])
    assert replay(second, broker.bootstrap, source, progress=False).errors == 0
    again = start_worker(broker.bootstrap, prefix)
    outputs = consume_all(broker.bootstrap, out, timeout_s=5.0, expect=1000)
    assert sorted(r.value or b"" for r in outputs) == sorted(good)
    assert again.stop() == 0, again.log_tail()
    with capsys.disabled():
        print(f"\n[faust on tansu] ready {worker.ready_s:.1f}s, 503 messages through in "
              f"{round_trip_s:.1f}s, stop {worker.stop_s:.1f}s; restart ready "
              f"{again.ready_s:.1f}s, stop {again.stop_s:.1f}s")
    assert worker.ready_s < 30 and worker.stop_s < 15


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
