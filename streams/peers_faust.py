"""Benchmark peer (issue 5): the two code rules as a plain faust app, one event at a time.

What the faust docs teach::

    input topic ──agent explode──► await codes.send(key=code, value=record)   (per code)
    codes topic ──agent check───► table[code] read, rules, table[code] = state
                                  await alerts.send(...)                      (per alert)

``check`` reads and updates a faust ``Table`` keyed by code (the memory store, with its
changelog topic), one event at a time, and applies ``DUPLICATE_SALE`` and
``SPLIT_OVERDISPENSE`` through the same plain functions as the Quix peer
(:mod:`streams.peers_common`). The app settings are tracewatch's own for Tansu (short
session timeout, loopback only, no web server).

Run it as its own process; it reads the input topic from the earliest offset and, once the
second agent has handled ``--expect-codes`` code records, flushes its producer, writes the
report and stops (exit code 0)::

    python -m streams.peers_faust --bootstrap 127.0.0.1:9092 --input bench.in \\
        --output bench.faust.alerts --catalog catalog.csv --expect-codes 64821 \\
        --report faust.json --state-dir /tmp/faust-state --run-id run1

The codes topic (``tw-bench-faust-RUN.codes``) and the alerts topic are created before the
worker starts; faust creates the table's changelog topic itself.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from streams.kafka_io import TopicSpec, ensure_topics
from streams.peers_common import (
    Progress,
    arguments,
    explode,
    pack_units_of,
    start_watchdog,
    step,
)

NAME = "peers_faust"


def input_partitions(bootstrap: str, topic: str) -> int:
    """How many partitions ``topic`` has (the input topic must exist)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, allow_auto_create_topics=False)
    try:
        partitions = consumer.partitions_for_topic(topic)
    finally:
        consumer.close()
    if not partitions:
        raise SystemExit(f"{NAME}: the input topic {topic} does not exist on {bootstrap}")
    return len(partitions)


def _die(exc: Exception) -> None:
    """End the process: faust logs a crashed agent and keeps the worker running, which
    would leave the benchmark waiting for its timeout."""
    print(f"{NAME}: an agent failed: {exc!r}", file=sys.stderr, flush=True)
    os._exit(1)


def build_app(bootstrap: str, input_topic: str, codes_topic: str, output_topic: str,
              partitions: int, state_dir: Path, run_id: str, pack_units: dict[str, int],
              progress: Progress, report: Path) -> Any:
    """The faust app with its two agents and its table."""
    import faust

    app = faust.App(
        f"tw-bench-faust-{run_id}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(state_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # Tansu answers a group's first join only after half the session timeout.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_rebalance_timeout=10.0,
        broker_commit_interval=1.0,
        producer_linger=0.005,
        producer_acks=-1,
        web_enabled=False,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
    )
    source = app.topic(input_topic, key_type=bytes, value_type=bytes)
    codes = app.topic(codes_topic, key_type=bytes, value_type=bytes, partitions=partitions)
    alerts_out = app.topic(output_topic, key_type=bytes, value_type=bytes)
    # The state of a code, as JSON bytes (the app's serializers are raw).
    table = app.Table("codes", default=None, key_type=bytes, value_type=bytes,
                      partitions=partitions)

    @app.agent(source)
    async def split_codes(stream: Any) -> None:
        try:
            async for value in stream:
                progress.input_seen()
                for record in explode(orjson.loads(value)):
                    await codes.send(key=record["code"].encode(), value=orjson.dumps(record))
        except Exception as exc:
            _die(exc)

    @app.agent(codes)
    async def check(stream: Any) -> None:
        try:
            async for key, value in stream.items():
                stored = table.get(key)
                state, alerts = step(orjson.loads(stored) if stored else None,
                                     orjson.loads(value), pack_units)
                table[key] = orjson.dumps(state)
                for alert in alerts:
                    await alerts_out.send(key=key, value=orjson.dumps(alert))
                if progress.code_done(len(alerts)):
                    await app.producer.flush()
                    progress.write(report)
                    os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop of the worker
        except Exception as exc:
            _die(exc)

    return app


def main(argv: list[str] | None = None) -> int:
    """Run the worker until the expected codes are handled; write the report."""
    import faust

    parser = arguments(f"python -m streams.{NAME}", __doc__.split("\n\n")[0] if __doc__ else "")
    args = parser.parse_args(argv)
    progress = Progress(args.expect_codes)
    start_watchdog(NAME, args.timeout, progress)
    partitions = args.partitions or input_partitions(args.bootstrap, args.input)
    codes_topic = f"tw-bench-faust-{args.run_id}.codes"
    ensure_topics(args.bootstrap, [TopicSpec(codes_topic, partitions, retention_ms=-1),
                                   TopicSpec(args.output, 1, retention_ms=-1)])
    args.state_dir.mkdir(parents=True, exist_ok=True)
    progress.extra["framework"] = "faust"
    app = build_app(args.bootstrap, args.input, codes_topic, args.output, partitions,
                    args.state_dir, args.run_id, pack_units_of(args.catalog), progress,
                    args.report)
    faust.Worker(app, loglevel="WARN", quiet=True).execute_from_commandline()
    return 0 if args.report.exists() else 1


if __name__ == "__main__":
    sys.exit(main())
