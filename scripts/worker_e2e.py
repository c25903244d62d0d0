"""One log through the real worker, end to end, compared with ``tracewatch check``.

Starts an embedded Tansu broker, loads the log into a P-partition input topic (before timing),
starts ``tracewatch worker`` (Redis ledger at TRACEWATCH_REDIS_URL, a fresh key prefix removed
afterwards), reads ``tracewatch.alerts`` until it holds as many alerts as ``check`` raises,
and prints the wall time from the worker's launch to its last alert, the worker's CPU time,
and how its alerts differ from ``check``'s (by ``alert_id``). Bounded: gives up after
``--timeout`` seconds.

    .venv/bin/tracewatch simulate --seed 7 --days 30 --out /tmp/sim30
    .venv/bin/python scripts/worker_e2e.py /tmp/sim30/messages.jsonl /tmp/sim30/catalog.csv
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.bench import process_cpu_seconds
from streams.broker import EmbeddedBroker, free_port
from streams.kafka_io import TopicSpec, consume_all, ensure_topics, replay
from streams.offline import run_check
from streams.redis_ledger import remove_prefix
from streams.reference import rule_config
from streams.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    env = {**os.environ, "TRACEWATCH_LEDGER": "redis", "TRACEWATCH_KEY_PREFIX": f"e2e{run}",
           "TRACEWATCH_CATALOG": str(args.catalog), "TRACEWATCH_PARTITIONS": str(args.partitions),
           "TRACEWATCH_WEB_PORT": str(free_port()), "TRACEWATCH_LOG_LEVEL": "warning"}
    settings = load_settings(env)
    expected_out = io.BytesIO()
    run_check(args.log, rule_config(settings), settings.psn_key_bytes, expected_out,
              err=io.StringIO())
    expected = {orjson.loads(line)["alert_id"] for line in expected_out.getvalue().splitlines()}
    print(f"check raises {len(expected)} alerts", flush=True)

    with EmbeddedBroker() as broker:
        env["TRACEWATCH_KAFKA"] = broker.bootstrap
        ensure_topics(broker.bootstrap, [TopicSpec(settings.topic_events, args.partitions)])
        stats = replay(args.log, broker.bootstrap, settings.topic_events, progress=False)
        print(f"loaded {stats.messages} messages in {stats.seconds:.1f} s", flush=True)
        started = time.time()
        log = Path(f"/tmp/worker-e2e-{run}.log")
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                  stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            records = consume_all(broker.bootstrap, settings.topic_alerts, timeout_s=60,
                                  expect=len(expected), max_wait_s=args.timeout)
            cpu = process_cpu_seconds(worker.pid)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            remove_prefix(redis.Redis.from_url(settings.redis_url), f"e2e{run}")
    got = {orjson.loads(record.value or b"{}")["alert_id"] for record in records}
    last = max((record.timestamp / 1000 for record in records), default=started)
    print(f"worker: last alert {last - started:.1f} s after launch (group join ~5 s included), "
          f"CPU {cpu:.1f} s; {len(records)} alerts, {len(got - expected)} not raised by check, "
          f"{len(expected - got)} of check's missing (log: {log})")
    return 0 if got == expected else 1


if __name__ == "__main__":
    sys.exit(main())
