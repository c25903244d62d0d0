"""The embedded Tansu broker alone under a soak's kind of load: does it slow as it fills?

    .venv/bin/python scripts/broker_soak.py --rate 1800 --seconds 180 --linger-ms 50
    .venv/bin/python scripts/broker_soak.py --rate 1800 --seconds 180 --linger-ms 400

Starts its own broker, sends the bench's workload at ``--rate`` messages/s keyed by
institution (as ``tracewatch bench`` does: a record batch per partition per linger) through
the bench's paced producer, reads them back at the tail with an aiokafka consumer that fetches
as the worker does (``fetch_max_wait_ms`` 20), and prints every 30 s the broker's CPU and RSS
and the records' delay from send to fetch. No worker, no Redis: what it shows is the broker's
own. BENCHMARKS.md "Thirteenth session" has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

from streams.bench import (
    _institution_key,
    _paced_produce,
    process_cpu_seconds,
    process_rss_mb,
    steady_messages,
)
from streams.broker import EmbeddedBroker
from streams.kafka_io import TopicSpec, ensure_topics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1800.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to send")
    parser.add_argument("--linger-ms", type=int, default=50, help="the producer's linger")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    delays: list[float] = []
    done = threading.Event()

    with tempfile.TemporaryDirectory(prefix="broker-soak-") as scratch, \
            EmbeddedBroker(log_path=Path(scratch) / "tansu.log") as broker:
        pid = broker.pid
        assert pid is not None
        ensure_topics(broker.bootstrap, [TopicSpec("soak", args.partitions, retention_ms=-1)])

        async def consume() -> None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer("soak", bootstrap_servers=broker.bootstrap,
                                        auto_offset_reset="earliest", fetch_max_wait_ms=20)
            await consumer.start()
            try:
                while not done.is_set():
                    fetched = await consumer.getmany(timeout_ms=200, max_records=5000)
                    now = time.time()
                    delays.extend(now - record.timestamp / 1000
                                  for records in fetched.values() for record in records)
            finally:
                await consumer.stop()

        def report() -> None:
            started = last_at = time.monotonic()
            last_cpu = process_cpu_seconds(pid)
            while not done.wait(30):
                cpu, at = process_cpu_seconds(pid), time.monotonic()
                window = sorted(delays)
                delays.clear()
                p50 = window[len(window) // 2] * 1000 if window else float("nan")
                p99 = window[int(len(window) * 0.99)] * 1000 if window else float("nan")
                share = 100 * (cpu - last_cpu) / (at - last_at)
                print(f"{at - started:5.0f} s  broker CPU {share:5.1f} %  "
                      f"RSS {process_rss_mb(pid):6.0f} MB  fetched {len(window):7,}  "
                      f"delay p50 {p50:4.0f} ms, p99 {p99:5.0f} ms",
                      flush=True)
                last_cpu, last_at = cpu, at

        reader = threading.Thread(target=lambda: asyncio.run(consume()), daemon=True)
        reporter = threading.Thread(target=report, daemon=True)
        reader.start()
        reporter.start()
        try:
            _paced_produce(broker.bootstrap, "soak",
                           steady_messages(int(args.rate * args.seconds), 9),
                           args.rate, args.seconds, _institution_key, linger_ms=args.linger_ms,
                           timed=False)
        finally:
            done.set()
            reader.join(timeout=10)
            reporter.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
