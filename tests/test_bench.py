"""``tracewatch bench`` end to end on a tiny workload: every contender runs, the summary holds.

No speed is asserted (BENCHMARKS.md holds the numbers); this checks that the harness loads the
broker, runs the worker and both peers to completion on the same topic, measures latency and
Redis memory, and prints the summary line issue 5 asks for.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streams.compiled import is_compiled

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
         "--timeout", "240", "--rounds", "2", "--soak", "15", "--soak-rate", "40"],
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
    # The paced load ran on a ledger of its own, sized for its codes, and says how it went.
    assert re.search(r"^\(the paced load on a ledger of its own sized for [1-9][\d,]* codes: "
                     r"[1-9][\d,]* batches of [1-9][\d,]* records on average, its Redis "
                     r"\d+\.\d\d s, \d+\.\d µs a code\)$", table, re.MULTILINE), table
    # The worker started itself again under jemalloc where installed; the peers got the same.
    from streams.allocator import jemalloc_library

    allocator = "jemalloc" if jemalloc_library() else "system"
    assert re.search(rf"^tracewatch .*  all rules, Redis ledger, {allocator}$", table,
                     re.MULTILINE), table
    assert re.search(rf"^quixstreams .* only, {allocator}$", table, re.MULTILINE), table
    # Two rounds, each contender's figures from both, each round on its own topic.
    assert "2 rounds (the table gives each contender's median round):" in table
    assert re.search(r"^  quixstreams  [\d,]+ · [\d,]+ codes/s; tracewatch × \d+\.\d\d · "
                     r"\d+\.\d\d; CPU µs a code \d+\.\d · \d+\.\d$", table, re.MULTILINE), table
    # Each contender's CPU a code, and where tracewatch's went (its worker, its Redis).
    assert re.search(r"^tracewatch +[\d,]+ +\d+\.\d\d +[\d,]+ +\d+\.\d ", table,
                     re.MULTILINE), table
    assert re.search(r"^\(tracewatch's worker, seconds by step after its first batch: .*route "
                     r"\d+\.\d\d.*; \d+\.\d\d in all, against \d+\.\d\d s judging; [\d,]+ "
                     r"batches of [\d,]+ records on average\)$", table,
                     re.MULTILINE), table
    assert re.search(r"tracewatch's worker \d+\.\d\d s, its Redis \d+\.\d\d s "
                     r"\(\d+\.\d µs a code\)\)$", table, re.MULTILINE), table
    assert (tmp_path / "bench" / "quixstreams.round2.report.json").is_file()
    # The latency samples are kept for a look at their spread.
    assert (tmp_path / "bench" / "latency.csv").read_text().count("\n") > 1
    # The soak's load was written first, 15 s at 40 messages/s, and all of it judged.
    assert (tmp_path / "bench" / "soak.jsonl").read_bytes().count(b"\n") == 600
    soak = re.search(r"^soak \d+ s at 40 messages/s \(\d+% of the throughput\): worker RSS "
                     r"\d+ → \d+ MB .*; lag max \d+, last 0 records;", table, re.MULTILINE)
    assert soak, table
    assert re.search(r"^soak's Redis: \d+\.\d bytes per tracked code \([1-9][\d,]* codes, "
                     r"sampled at the end\)$", table, re.MULTILINE), table


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


def test_the_latency_phase_gets_a_ledger_sized_for_the_paced_codes() -> None:
    """The last round's ledger, sized for the workload, took 2-6× its codes in the paced
    phase: Redis scanned overfull buckets and p99 tripled (BENCHMARKS.md, twenty-seventh)."""
    from streams.bench import Latency, _latency_load_line, latency_ledger_codes

    assert latency_ledger_codes(9_000.0, 20.0, 3.25) == 585_000
    assert latency_ledger_codes(0.0, 20.0, 3.25) == 1  # a ledger is never sized for none
    line = _latency_load_line(Latency(rate_msgs_per_s=9_000.0, ledger_codes=585_000,
                                      batches=400, records=180_000, redis_cpu_s=9.0,
                                      codes=585_000))
    assert line == ("(the paced load on a ledger of its own sized for 585,000 codes: 400 "
                    "batches of 450 records on average, its Redis 9.00 s, 15.4 µs a code)")
    assert "0 batches of 0 records" in _latency_load_line(Latency())


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


@pytest.mark.parametrize(("share", "fixed", "throughput", "rate"), [
    (0.5, 0.0, 6000.0, 3000.0),
    (0.25, 0.0, 6000.0, 1500.0),
    (0.5, 2000.0, 6000.0, 2000.0),  # a fixed rate, whatever was measured
])
def test_the_soak_rate_is_a_share_of_the_throughput_or_fixed(
        share: float, fixed: float, throughput: float, rate: float) -> None:
    from streams.bench import soak_rate_of

    assert soak_rate_of(share, fixed, throughput) == rate


def test_the_soak_load_is_written_first_and_runs_on_one_world(tmp_path: Path) -> None:
    """The soak's messages are generated before it starts (generating them while it ran took
    the worker's CPU and paused the load), in chunks that continue one another."""
    import orjson

    from streams.bench import write_soak_load

    path = tmp_path / "soak.jsonl"
    assert write_soak_load(path, rate=50.0, seconds=5.0, seed=9, chunk=100) == 250
    lines = path.read_bytes().splitlines()
    assert len(lines) == 250
    messages = [orjson.loads(line) for line in lines]
    msgids = [message["msgid"] for message in messages]
    # Chunks continue one workload: the next chunk does not start it over (only the
    # workload's few retries repeat a msgid).
    assert len(set(msgids[:100]) & set(msgids[100:200])) <= 5
    assert len(set(msgids)) >= 240
    again = tmp_path / "again.jsonl"
    write_soak_load(again, rate=50.0, seconds=5.0, seed=9, chunk=100)
    assert again.read_bytes() == path.read_bytes()


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


def test_rounds_give_each_contender_its_median_run_and_the_median_of_their_ratios() -> None:
    """A shared machine's speed swings ±15 % within minutes: a single pair of runs can put
    the ratio anywhere in that band, the rounds' median ratio pairs runs a minute apart."""
    import argparse

    from streams.bench import Latency, Throughput, _report, median_run, round_ratios

    def runs(mine: float, quix: float | None) -> list[Throughput]:
        # Codes per second = codes / seconds: 100 codes over 100/rate seconds.
        return [Throughput("tracewatch", 100, 100 / mine),
                Throughput("quixstreams", 100, 100 / quix) if quix else
                Throughput("quixstreams", note="failed (exit 1)")]

    rounds = [runs(30.0, 10.0), runs(24.0, 16.0), runs(33.0, None), runs(27.0, 15.0)]
    assert median_run([r[0] for r in rounds]).codes_per_s == pytest.approx(27.0)
    assert median_run([r[1] for r in rounds]).codes_per_s == pytest.approx(15.0)
    assert median_run([Throughput("quixstreams", note="failed")]).note == "failed"
    assert round_ratios(rounds, "quixstreams") == pytest.approx([3.0, 1.5, 1.8])
    assert round_ratios(rounds, "naive-faust") == []

    args = argparse.Namespace(partitions=4, soak_share=0.5)
    report = _report(rounds, Latency(samples_ms=[5.0]), [], 60.0, 1000, 10, 100, 1, args)
    lines = report.splitlines()
    # Which interpreter ran it: an optimised build is ~15 % faster than pyenv's default.
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    hot_path = "compiled (mypyc)" if is_compiled() else "plain Python"
    assert lines[1].endswith(f", 4 partitions, Tansu, {os.cpu_count()} CPUs, CPython "
                             f"{platform.python_version()} ({base}, hot path {hot_path})"
                             ), lines[1]
    assert lines[-1] == ("codes_per_s=27 vs_quixstreams=1.80 vs_naive_faust=nan p99_ms=5 "
                         "redis_bytes_per_code=60")
    assert "4 rounds (the table gives each contender's median round):" in lines
    assert "  tracewatch   30 · 24 · 33 · 27 codes/s" in lines
    assert ("  quixstreams  10 · 16 · failed · 15 codes/s; tracewatch × 3.00 · 1.50 · 1.80"
            in lines)
    # A soak's line names its rate and its share of the throughput (10 messages of 100 codes
    # at 27 codes/s: 2.7 messages/s).
    soak = [(10.0, 100.0, 5), (300.0, 110.0, 0), (600.0, 112.0, 0)]
    with_soak = _report(rounds, Latency(samples_ms=[5.0]), soak, 60.0, 1000, 10, 100, 1, args,
                        soak_rate=0.675, soak_ledger=(30.46, 12_345_678)).splitlines()
    # The soak's ledger holds millions of codes: its bytes per code are the ledger's real size.
    assert with_soak[-2] == ("soak's Redis: 30.5 bytes per tracked code (12,345,678 codes, "
                             "sampled at the end)")
    assert with_soak[-3].startswith("soak 600 s at 1 messages/s (25% of the throughput): "
                                    "worker RSS 100 → 112 MB (min 100, max 112; second half "
                                    "+2 MB, +0.4 MB/min); lag max 5, last 0 records"), with_soak[-3]
    one_round = _report(rounds[:1], Latency(), [], 60.0, 1000, 10, 100, 1, args)
    assert "rounds" not in one_round
    assert one_round.splitlines()[-1].startswith("codes_per_s=30 vs_quixstreams=3.00 ")


@pytest.mark.parametrize(("option", "value"), [
    ("--rounds", "-1"), ("--soak-rate", "-5"), ("--soak-share", "0")])
def test_bench_refuses_a_count_or_rate_it_cannot_use(option: str, value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "streams.cli", "bench", option, value],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert f"tracewatch bench: {option}" in done.stderr, done.stderr
