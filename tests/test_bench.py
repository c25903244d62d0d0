"""``tracewatch bench`` end to end on a tiny workload: every contender runs, the summary holds.

No speed is asserted (BENCHMARKS.md holds the numbers); this checks that the harness loads the
broker, runs the worker and both peers to completion on the same topic, measures latency and
Redis memory, and prints the summary line issue 5 asks for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SUMMARY = re.compile(
    r"^codes_per_s=(\d+) vs_quixstreams=(\d+\.\d\d) vs_naive_faust=(\d+\.\d\d) "
    r"p99_ms=(\d+) redis_bytes_per_code=(\d+)$"
)


def test_bench_runs_every_contender_and_prints_the_summary(redis_url: str,
                                                           tmp_path: Path) -> None:
    env = {**os.environ, "TRACEWATCH_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "bench", "--messages", "400",
         "--paced-seconds", "3", "--partitions", "2", "--keep", str(tmp_path / "bench"),
         "--timeout", "240"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = SUMMARY.match(lines[-1])
    assert match, lines[-1]
    codes_per_s, vs_quix, vs_faust, _p99, bytes_per_code = match.groups()
    assert int(codes_per_s) > 0 and float(vs_quix) > 0 and float(vs_faust) > 0
    assert int(bytes_per_code) > 0
    table = "\n".join(lines)
    for name in ("tracewatch", "quixstreams", "naive-faust"):
        assert re.search(rf"^{name}\s+[\d,]+\s", table, re.MULTILINE), table
    assert "one alert after idling: " in table and "not seen" not in table
    # The latency samples are kept for a look at their spread.
    assert (tmp_path / "bench" / "latency.csv").read_text().count("\n") > 1


def test_the_soak_gets_a_ledger_of_its_own_sized_for_its_codes(tmp_path: Path) -> None:
    """A soak writes many times the workload's codes: on the throughput run's ledger its
    buckets overfilled (Redis made them hash tables, 124 bytes a code) and Redis slowed."""
    from streams.bench import WorkerUnderTest
    from streams.settings import load_settings

    worker = WorkerUnderTest("127.0.0.1:9", "events", tmp_path / "catalog.csv",
                             load_settings({}), "r1", 2, tmp_path, 98_010)
    assert (worker.prefix, worker.env["TRACEWATCH_EXPECTED_CODES"]) == ("twbenchr1", "98010")
    worker.use_ledger("soak", 9_000_000)
    assert worker.prefix == "twbenchr1soak"
    assert worker.env["TRACEWATCH_KEY_PREFIX"] == "twbenchr1soak"
    assert worker.env["TRACEWATCH_EXPECTED_CODES"] == "9000000"


def test_soak_reads_the_first_stage_batches_from_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from streams.bench import _batch_trend, _route_batches
    from streams.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for size in (100, 300):
        metrics.batch_size.labels("route").observe(size)
    metrics.batch_size.labels("codes").observe(5000)
    assert _route_batches(generate_latest(registry).decode()) == (2.0, 400.0)
    assert _route_batches("# nothing here\n") is None

    totals = [(10.0, 0.0, 0.0), (40.0, 30.0, 3000.0), (70.0, 60.0, 6000.0),
              (130.0, 80.0, 16000.0), (190.0, 90.0, 26000.0)]
    assert _batch_trend(totals) == (
        "batches of 100 records on average in the first minute, 1,000 in the last")
    assert _batch_trend(totals[:1]) == "batch sizes not sampled"


@pytest.mark.parametrize(("samples", "said"), [
    ([(10.0, 100.0, 0), (300.0, 150.0, 0), (420.0, 160.0, 0), (600.0, 160.0, 0)],
     "second half +10 MB, +2.0 MB/min"),
    ([(10.0, 120.0, 0), (20.0, 117.0, 0)], "second half -3 MB, -18.0 MB/min"),
    ([(10.0, 120.0, 0)], "second half too short to tell"),
])
def test_soak_reports_the_growth_once_warm(samples: list[tuple[float, float, int]],
                                           said: str) -> None:
    from streams.bench import _second_half

    assert _second_half(samples) == said
