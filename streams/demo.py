"""``tracewatch demo``: the main job end to end on embedded defaults.

1. simulate a day of a province's traffic (``tracewatch simulate``) into ``--out``;
2. start the embedded Tansu broker on a free loopback port;
3. start ``tracewatch worker`` against it (Redis ledger when Redis answers, else in memory; a
   fresh key prefix per run, so earlier runs do not count as retries, removed afterwards
   unless ``--keep-ledger``);
4. replay the day into ``tracewatch.events`` (one partition, so the order is the log's);
5. print the alerts as they arrive on ``tracewatch.alerts``, then compare them with
   ``tracewatch check`` on the same log.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson

from streams.broker import EmbeddedBroker, free_port
from streams.offline import run_check
from streams.reference import rule_config
from streams.settings import Settings

SEVERITY_MARK = {"critical": "!!!", "high": "!! ", "medium": "!  ", "low": ".  "}


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def _leave_ledger(url: str, prefix: str, keep: bool) -> None:
    """Remove the run's keys from Redis, or say where they are."""
    if keep:
        print(f"the ledger stays in Redis under {prefix}:* (TRACEWATCH_KEY_PREFIX={prefix})",
              file=sys.stderr)
        return
    import redis

    from streams.redis_ledger import remove_prefix

    try:
        remove_prefix(redis.Redis.from_url(url, socket_connect_timeout=2), prefix)
    except (redis.RedisError, OSError) as error:
        print(f"could not remove the demo's keys {prefix}:* from Redis ({error}); "
              f"remove them with: redis-cli --scan --pattern '{prefix}:*' | xargs redis-cli unlink",
              file=sys.stderr)


def _alert_line(alert: dict[str, object]) -> str:
    mark = SEVERITY_MARK.get(str(alert["severity"]), "   ")
    subject = alert["drug_trac_codg"] or f"参保人 {alert['psn_hash']}"
    return (f"{mark} {alert['severity']:<8} {alert['rule']:<22} {subject}  "
            f"{alert['fixmedins_code']} {alert['event_time']}  {alert['reason']}")


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo; 0 when the worker's alerts equal ``check``'s."""
    from streams import simulate
    from streams.kafka_io import TopicSpec, ensure_topics, replay

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/5] simulating {args.days} day(s) of traffic into {out}/ …", file=sys.stderr)
    simulate.simulate(out, seed=args.seed, days=args.days, institutions=args.institutions,
                      people=args.people, progress=True)
    log, catalog = out / "messages.jsonl", out / "catalog.csv"

    settings = replace(settings, catalog=catalog)
    expected_buffer = io.BytesIO()
    run_check(log, rule_config(settings), settings.psn_key_bytes, expected_buffer,
              err=io.StringIO())
    expected = {orjson.loads(line)["alert_id"]
                for line in expected_buffer.getvalue().splitlines()}

    print("[2/5] starting the embedded broker …", file=sys.stderr)
    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        ensure_topics(broker.bootstrap, [TopicSpec(settings.topic_events, 1)])
        use_redis = _redis_answers(settings.redis_url)
        prefix = f"twdemo{int(time.time())}"
        web_port = free_port()
        env = dict(os.environ)
        env.update({
            "TRACEWATCH_KAFKA": broker.bootstrap,
            "TRACEWATCH_CATALOG": str(catalog.resolve()),
            "TRACEWATCH_LEDGER": "redis" if use_redis else "memory",
            "TRACEWATCH_KEY_PREFIX": prefix,
            "TRACEWATCH_WEB_PORT": str(web_port),
            "TRACEWATCH_LOG_LEVEL": "warning",
        })
        ledger = f"Redis at {settings.redis_url}" if use_redis else "in memory (no Redis answers)"
        print(f"[3/5] starting the worker, ledger {ledger}; live page: "
              f"http://127.0.0.1:{web_port}/live", file=sys.stderr)
        worker_log = (out / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT,
        )
        try:
            print(f"[4/5] replaying {log} …", file=sys.stderr)
            replay(log, broker.bootstrap, settings.topic_events, progress=True)
            print(f"[5/5] alerts as they arrive (expecting {len(expected)}):", file=sys.stderr)
            got = _follow_alerts(broker.bootstrap, settings.topic_alerts, expected,
                                 args.timeout, worker, out / "alerts.jsonl")
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
            worker_log.close()
            if use_redis:
                _leave_ledger(settings.redis_url, prefix, args.keep_ledger)
    missing, extra = expected - got, got - expected
    print(f"\nworker raised {len(got)} alerts; tracewatch check raised {len(expected)}; "
          f"missing {len(missing)}, extra {len(extra)}. Alerts: {out / 'alerts.jsonl'}",
          file=sys.stderr)
    if missing or extra:
        print(f"the worker and check disagree; see {out / 'worker.log'}", file=sys.stderr)
        return 1
    return 0


def _follow_alerts(bootstrap: str, topic: str, expected: set[str], timeout: float,
                   worker: subprocess.Popen[bytes], sink: Path) -> set[str]:
    """Print alerts from ``topic`` until every expected one arrived, or time is up."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    got: set[str] = set()
    deadline = time.monotonic() + timeout
    assigned = False
    with sink.open("wb") as out:
        while time.monotonic() < deadline and not expected <= got:
            if worker.poll() is not None:
                print(f"the worker stopped with exit code {worker.returncode}", file=sys.stderr)
                break
            if not assigned:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    time.sleep(0.5)
                    continue
                tps = [TopicPartition(topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                consumer.seek_to_beginning(*tps)
                assigned = True
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    alert = orjson.loads(record.value)
                    if alert["alert_id"] in got:
                        continue
                    got.add(alert["alert_id"])
                    out.write(record.value + b"\n")
                    print(_alert_line(alert))
    consumer.close()
    return got
