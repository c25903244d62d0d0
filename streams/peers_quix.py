"""Benchmark peer (issue 5): the two code rules as a straightforward Quix Streams app.

What a Python user following the Quix Streams docs would write::

    input topic ──apply(explode, expand=True)──► per-code records
                ──group_by(code)──► repartition topic (one writer per code)
                ──apply(check, stateful=True, expand=True)──► alerts ──to_topic(output)

``check`` keeps each code's state in Quix's RocksDB state store (with its changelog topic)
and applies ``DUPLICATE_SALE`` and ``SPLIT_OVERDISPENSE`` through the same plain functions as
the faust peer (:mod:`streams.peers_common`). Quix's defaults are kept (JSON serialisation,
5 s commit interval, at-least-once); only the consumer's session timeout is shortened,
because Tansu answers a group's first join after half of it.

Run it as its own process; it reads the input topic from the earliest offset and, once the
stateful stage has handled ``--expect-codes`` code records, writes the report and exits 0::

    python -m streams.peers_quix --bootstrap 127.0.0.1:9092 --input bench.in \\
        --output bench.quix.alerts --catalog catalog.csv --expect-codes 64821 \\
        --report quix.json --state-dir /tmp/quix-state --run-id run1

Tansu: a topic's configs are reported only when they were given at creation, and Quix reads
the input topic's ``retention.ms`` to size its repartition and changelog topics; when the
broker does not report it, this app assumes ``-1`` (keep forever), as Kafka's defaults would
say for a benchmark topic. Create the input topic with ``retention.ms`` to avoid relying on it.
``--partitions`` is accepted for a command line like the faust peer's and not used: Quix sizes
its repartition and changelog topics like the input topic.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from streams.peers_common import (
    Progress,
    Record,
    arguments,
    explode,
    pack_units_of,
    start_watchdog,
    step,
)

NAME = "peers_quix"
#: Shorter than librdkafka's 45 s: Tansu answers the first JoinGroup after half of it.
SESSION_TIMEOUT_MS = 10_000


def build_app(bootstrap: str, input_topic: str, output_topic: str, state_dir: Path,
              run_id: str, pack_units: dict[str, int], progress: Progress) -> Any:
    """The Quix Streams application, ready to ``run()``."""
    # quixstreams imports authlib's httpx integration, which warns on import (and sets its own
    # filter to always show that warning); not ours to fix, so it is recorded and dropped.
    with warnings.catch_warnings(record=True):
        from quixstreams import Application, State

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"tw-bench-quix-{run_id}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
        consumer_extra_config={
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 5,
        },
    )
    source = app.topic(input_topic, value_deserializer="json")
    # Tansu reports no retention.ms unless the topic was created with one (module docstring).
    source.broker_config.extra_config.setdefault("retention.ms", "-1")
    sink = app.topic(output_topic, value_serializer="json")

    def records(message: Any) -> list[Record]:
        progress.input_seen()
        return explode(message)

    def check(record: Record, state: State[str, Any]) -> list[Record]:
        new_state, alerts = step(state.get("code"), record, pack_units)
        state.set("code", new_state)
        if progress.code_done(len(alerts)):
            app.stop()  # the alerts of this record are still produced and flushed
        return alerts

    sdf = app.dataframe(source)
    sdf = sdf.apply(records, expand=True)
    sdf = sdf.group_by(lambda record: record["code"], name="code")
    sdf = sdf.apply(check, stateful=True, expand=True)
    sdf.to_topic(sink)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the peer until the expected codes are handled; write the report."""
    parser = arguments(f"python -m streams.{NAME}", __doc__.split("\n\n")[0] if __doc__ else "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    progress = Progress(args.expect_codes)
    start_watchdog(NAME, args.timeout, progress)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(args.bootstrap, args.input, args.output, args.state_dir, args.run_id,
                    pack_units_of(args.catalog), progress)
    progress.extra["framework"] = "quixstreams"
    app.run()
    if progress.done is None:
        print(f"{NAME}: stopped after {progress.codes} of {progress.expect} codes",
              file=sys.stderr)
        return 1
    progress.write(args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
