"""The workload of ``tracewatch bench`` and its two peers (issue 5).

* The generator: deterministic for a seed, realistic shape, every line a valid message, and
  tracewatch's own offline check raises exactly the planted DUPLICATE_SALE and
  SPLIT_OVERDISPENSE cases — also when the messages of different institutions interleave in
  the worst way a consumer of several partitions could see them.
* The peers' shared rule functions (no broker): the same exact counts.
* Each peer as its own process on the session's Tansu broker: it counts every code, stops
  by itself, and its alerts on the output topic are exactly the planted cases.
"""

from __future__ import annotations

import io
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.messages import parse
from detectors.model import RuleConfig
from streams.bench_workload import Workload, generate, stream, write_log
from streams.offline import run_check
from streams.peers_common import (
    DUPLICATE_SALE,
    EXIT_TIMEOUT,
    PEERS,
    SPLIT_OVERDISPENSE,
    Progress,
    explode,
    pack_units_of,
    peer_command,
    start_watchdog,
    step,
)
from streams.reference import load_catalog

SEED = 3
SMALL = 400  # messages in the peer runs: a few seconds of work, most of the time is startup


@pytest.fixture(scope="module")
def workload() -> Workload:
    """A workload of a few thousand messages."""
    return generate(4000, 21)


def interleaved(lines: list[bytes], partitions: int = 4) -> list[bytes]:
    """The messages as a consumer of ``partitions`` partitions (keyed by institution) might
    see them at worst: each partition in order, one partition after the other."""
    groups: list[list[bytes]] = [[] for _ in range(partitions)]
    for line in lines:
        key = orjson.loads(line)["fixmedins_code"].encode()
        groups[zlib.crc32(key) % partitions].append(line)
    return [line for group in reversed(groups) for line in group]


def expected(workload: Workload) -> Counter[str]:
    """The alerts the planted cases must raise, by rule."""
    return Counter({DUPLICATE_SALE: workload.duplicate_sales,
                    SPLIT_OVERDISPENSE: workload.split_overdispenses})


# ---------------------------------------------------------------------------- the generator


def test_workload_is_deterministic_for_a_seed() -> None:
    first, again, other = generate(1500, 7), generate(1500, 7), generate(1500, 8)
    assert first.lines == again.lines and first.catalog == again.catalog
    assert (first.codes, first.duplicate_sales, first.split_overdispenses) == (
        again.codes, again.duplicate_sales, again.split_overdispenses)
    assert first.lines != other.lines


def test_stream_runs_one_workload_on() -> None:
    # At this size generate() has the same institutions for 1,000 and 3,000 messages, so the
    # stream's chunks are exactly the longer workload, cut (the soak's steady traffic).
    minutes = stream(1000, 7)
    chunks = [next(minutes) for _ in range(3)]
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 1000]
    assert [line for chunk in chunks for line in chunk] == generate(3000, 7).lines
    # Later chunks go on: new msgids (a retry repeats one a few messages back at most).
    seen = {orjson.loads(line)["msgid"] for line in chunks[0]}
    again = [line for line in chunks[2] if orjson.loads(line)["msgid"] in seen]
    assert again == []


def test_workload_shape(workload: Workload) -> None:
    assert workload.messages == 4000
    sizes: list[int] = []
    infnos: Counter[str] = Counter()
    split = 0
    for line in workload.lines:
        message = parse(orjson.loads(line), b"test-key")  # raises on anything invalid
        infnos[message.infno] += 1
        split += message.split
        sizes.append(len(message.raw_codes))
    assert min(sizes) == 1 and max(sizes) == 10
    assert 2.5 <= sum(sizes) / len(sizes) <= 3.5
    assert sum(sizes) == workload.codes
    assert infnos["3505"] > 0.85 * workload.messages and infnos["3506"] > 0
    assert set(infnos) == {"3505", "3506"}
    assert split > 0.05 * workload.messages
    retries = workload.messages - len(set(workload.lines))
    assert 0 < retries < 0.03 * workload.messages
    assert workload.kinds["retry"] == retries
    assert workload.duplicate_sales > 0 and workload.split_overdispenses > 0
    assert workload.duplicate_sales < 0.05 * workload.codes
    assert workload.expected_alerts == workload.duplicate_sales + workload.split_overdispenses
    # the code forms of SPEC §2, GS1 in more than one spelling
    raw = [c["drug_trac_codg"] for line in workload.lines
           for c in orjson.loads(line)["input"]["selinfo"]["drugtracinfo"]]
    assert any(len(c) == 20 and c.isdigit() for c in raw)
    assert any(c.startswith("(01)") for c in raw) and any(c.startswith("01") for c in raw)
    assert any(c.startswith("ZY") for c in raw)


def test_catalog_is_tracewatchs_format(workload: Workload, tmp_path: Path) -> None:
    catalog = load_catalog(workload.write_catalog(tmp_path / "catalog.csv"))
    assert len(catalog) == len(workload.catalog)
    for row in workload.catalog:
        entry = catalog[row.product_key]
        assert (entry.med_list_codg, entry.pack_units) == (row.med_list_codg, row.pack_units)


@pytest.mark.parametrize("order", ["as generated", "partitions interleaved"])
def test_tracewatch_raises_exactly_the_planted_cases(
    workload: Workload, tmp_path: Path, order: str
) -> None:
    lines = workload.lines if order == "as generated" else interleaved(workload.lines)
    log = write_log(lines, tmp_path / "messages.jsonl")
    config = RuleConfig(catalog=load_catalog(workload.write_catalog(tmp_path / "catalog.csv")))
    errors = io.StringIO()
    stats = run_check(log, config, b"test-key", io.BytesIO(), errors)
    assert errors.getvalue() == "" and stats.bad == 0
    assert stats.alerts == expected(workload)


@pytest.mark.parametrize("order", ["as generated", "partitions interleaved"])
def test_peer_rules_raise_exactly_the_planted_cases(
    workload: Workload, tmp_path: Path, order: str
) -> None:
    lines = workload.lines if order == "as generated" else interleaved(workload.lines)
    pack_units = pack_units_of(workload.write_catalog(tmp_path / "catalog.csv"))
    states: dict[str, Any] = {}
    alerts: Counter[str] = Counter()
    codes = 0
    for line in lines:
        for record in explode(orjson.loads(line)):
            codes += 1
            states[record["code"]], raised = step(states.get(record["code"]), record,
                                                  pack_units)
            alerts.update(alert["rule"] for alert in raised)
    assert codes == workload.codes
    assert alerts == expected(workload)


def test_watchdog_reports_how_far_it_got(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(expect=10)
    progress.code_done(2)
    codes: list[int] = []
    timer = start_watchdog("peer", 0.05, progress, exit_now=codes.append)
    timer.join(5)
    assert codes == [EXIT_TIMEOUT]
    assert "timed out after 0.05 s with 1 of 10 codes handled (2 alerts)" in (
        capsys.readouterr().err)


# ---------------------------------------------------------------------------- the peers


@pytest.mark.integration
@pytest.mark.parametrize("peer", PEERS)
def test_peer_handles_every_code_and_raises_the_planted_alerts(
    broker: Any, topic_name: Callable[[str], str], tmp_path: Path, peer: str
) -> None:
    from streams.kafka_io import TopicSpec, consume_all, ensure_topics, replay

    work = generate(SMALL, SEED)
    assert work.duplicate_sales > 0 and work.split_overdispenses > 0
    source, output = topic_name("in"), topic_name("alerts")
    # No retention.ms: Tansu then reports none, which Quix needs for its internal topics.
    ensure_topics(broker.bootstrap, [TopicSpec(source, 4)])
    stats = replay(work.write_log(tmp_path / "messages.jsonl"), broker.bootstrap, source,
                   progress=False)
    assert stats.errors == 0 and stats.messages == SMALL
    report = tmp_path / "report.json"
    run_id = source.rsplit(".", 1)[-1]
    started = time.monotonic()
    command = peer_command(
        peer, bootstrap=broker.bootstrap, input_topic=source, output_topic=output,
        expect_codes=work.codes, report=report, state_dir=tmp_path / "state",
        run_id=f"{peer}-{run_id}", catalog=work.write_catalog(tmp_path / "catalog.csv"),
        timeout=90,
    )
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=150, check=False)
    took = time.monotonic() - started
    log = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
    assert done.returncode == 0, log
    result = orjson.loads(report.read_bytes())
    assert result["codes"] == work.codes, log
    assert result["alerts"] == work.expected_alerts, log
    assert 0 < result["first"] <= result["done"] and result["rss_mb"] > 0
    assert result["cpu_s"] > 0  # the bench's CPU a code
    alerts = consume_all(broker.bootstrap, output, timeout_s=5.0, expect=work.expected_alerts)
    rules = Counter(orjson.loads(record.value or b"{}")["rule"] for record in alerts)
    assert rules == expected(work)
    print(f"\n[{peer}] {work.codes} codes in {result['done'] - result['first']:.2f} s "
          f"after the first record; process {took:.1f} s; peak RSS {result['rss_mb']} MB")
