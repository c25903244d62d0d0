"""Prometheus metrics, declared once on an explicit registry.

Labels come from small fixed sets (infno, outcome, rule, severity, reason, stage, op,
topic): never a code, an institution or a person.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the worker exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.messages = Counter("tracewatch_messages", "NHSA messages by interface and outcome",
                                ["infno", "outcome"], registry=r)
        self.codes = Counter("tracewatch_codes", "trace codes by outcome", ["outcome"],
                             registry=r)
        self.alerts = Counter("tracewatch_alerts", "alerts raised", ["rule", "severity"],
                              registry=r)
        self.dlq = Counter("tracewatch_dlq", "bad input sent to the dead-letter topic",
                           ["reason"], registry=r)
        self.alert_latency = Histogram(
            "tracewatch_alert_latency_seconds",
            "from the message's arrival in Kafka to its alert being sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "tracewatch_batch_seconds",
            "time one batch spends in each step: fetch (waiting in getmany), parse (the "
            "input's JSON, checked, into time order), route, codes, "
            "persons (the rules), acks (the broker acknowledging the output), write (the "
            "ledger, sent), confirm (waiting for the last batch's writes, applied by Redis "
            "while this batch's fetch was parsed), commit (the input offsets, once their "
            "batch's writes are confirmed), gc (Python's cycle collector between "
            "batches, and glibc's malloc_trim after the full pass once a minute)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tracewatch_batch_size", "records in one batch", ["stage"],
                                    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
                                    registry=r)
        self.ledger_roundtrips = Counter("tracewatch_ledger_roundtrips",
                                         "ledger round trips", ["op"], registry=r)
        self.ledger_codes = Gauge("tracewatch_ledger_codes", "codes tracked in the ledger",
                                  registry=r)
        self.ledger_bytes_per_code = Gauge("tracewatch_ledger_bytes_per_code",
                                           "Redis memory per tracked code", registry=r)
        self.redis_used_memory = Gauge(
            "tracewatch_redis_used_memory_bytes",
            "the ledger's Redis: used_memory (INFO memory), all its keys", registry=r)
        self.redis_maxmemory = Gauge(
            "tracewatch_redis_maxmemory_bytes",
            "the ledger's Redis: maxmemory, past which it refuses writes (0: no limit)",
            registry=r)
        self.consumer_lag = Gauge("tracewatch_consumer_lag", "records not yet read",
                                  ["topic"], registry=r)
        self.worker_up = Gauge("tracewatch_worker_up", "1 while the worker runs", registry=r)

    def exposition(self) -> bytes:
        """The text format served at /metrics."""
        return generate_latest(self.registry)


METRIC_NAMES: frozenset[str] = frozenset({
    "tracewatch_messages_total",
    "tracewatch_codes_total",
    "tracewatch_alerts_total",
    "tracewatch_dlq_total",
    "tracewatch_alert_latency_seconds",
    "tracewatch_batch_seconds",
    "tracewatch_batch_size",
    "tracewatch_ledger_roundtrips_total",
    "tracewatch_ledger_codes",
    "tracewatch_ledger_bytes_per_code",
    "tracewatch_redis_used_memory_bytes",
    "tracewatch_redis_maxmemory_bytes",
    "tracewatch_consumer_lag",
    "tracewatch_worker_up",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
})
