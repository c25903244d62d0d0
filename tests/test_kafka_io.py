"""Real-broker tests of streams.kafka_io and streams.broker (Tansu, no mocks)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streams.broker import BrokerError, EmbeddedBroker, free_port
from streams.kafka_io import (
    KafkaIOError,
    TopicSpec,
    consume_all,
    count_lines,
    ensure_topics,
    replay,
)

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "examples" / "messages.jsonl"
#: Fallback when the shared examples are not beside the repository (a copy of EX-0001).
_FALLBACK_LINE = (
    b'{"infno": "3505", "msgid": "EX-0001", "fixmedins_code": "P51010400011", '
    b'"mdtrtarea_admvs": "510104", "inf_time": "2026-11-01 09:12:05", "input": '
    b'{"selinfo": {"fixmedins_bchno": "S0001", "drugtracinfo": '
    b'[{"drug_trac_codg": "83857930123456780001"}]}}}'
)


@pytest.fixture
def example_log(tmp_path: Path) -> Path:
    """The shared example log copied to a tmp file, plus a bad line, an array and a blank line."""
    log = tmp_path / "messages.jsonl"
    if EXAMPLES.exists():
        shutil.copyfile(EXAMPLES, log)
    else:
        log.write_bytes(_FALLBACK_LINE + b"\n")
    with log.open("ab") as fh:
        fh.write(b"this is {not json\n")
        fh.write(b"[1, 2, 3]\n")
        fh.write(b"\n")
        fh.write(b"   \r\n")
        fh.write(b'{"infno": "3505", "msgid": "NO-KEY", "fixmedins_code": 42}')  # no newline
    return log


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def _expected_key(line: bytes) -> bytes | None:
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(message, dict) and isinstance(message.get("fixmedins_code"), str):
        return str(message["fixmedins_code"]).encode()
    return None


def test_ensure_topics_is_idempotent(
    broker: EmbeddedBroker, topic_name: Callable[[str], str]
) -> None:
    specs = [
        TopicSpec(topic_name("events"), 4, retention_ms=7 * 86_400_000),
        TopicSpec(topic_name("state"), 2, compact=True),
        TopicSpec(topic_name("dlq"), 1),
    ]
    assert ensure_topics(broker.bootstrap, specs) == sorted(s.name for s in specs)
    assert ensure_topics(broker.bootstrap, specs) == []
    extra = TopicSpec(topic_name("extra"), 3)
    assert ensure_topics(broker.bootstrap, [*specs, extra]) == [extra.name]

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        for spec in [*specs, extra]:
            assert consumer.partitions_for_topic(spec.name) == set(range(spec.partitions))
    finally:
        consumer.close()


def test_topic_spec_validates() -> None:
    with pytest.raises(ValueError):
        TopicSpec("x", 0)
    with pytest.raises(ValueError):
        TopicSpec("", 1)
    assert TopicSpec("x", 1, retention_ms=5, compact=True).configs() == {
        "retention.ms": "5",
        "cleanup.policy": "compact",
    }


def test_replay_then_consume_all_gets_every_line_unchanged(
    broker: EmbeddedBroker, topic_name: Callable[[str], str], example_log: Path
) -> None:
    topic = topic_name("in")
    ensure_topics(broker.bootstrap, [TopicSpec(topic, 4)])
    lines = _lines(example_log)
    assert count_lines(example_log) == len(lines) + 2  # the blank lines are lines too

    stats = replay(example_log, broker.bootstrap, topic, progress=False)

    assert (stats.messages, stats.errors) == (len(lines), 0)
    assert stats.bytes == sum(len(line) for line in lines)
    records = consume_all(broker.bootstrap, topic, timeout_s=3.0, expect=len(lines))
    assert sorted(r.value or b"" for r in records) == sorted(lines)
    for record in records:
        assert record.value is not None
        assert record.key == _expected_key(record.value)
    # one institution, one partition: its messages keep their order
    by_key: dict[bytes, list[int]] = {}
    for record in records:
        if record.key is not None:
            by_key.setdefault(record.key, []).append(record.partition)
    assert all(len(set(parts)) == 1 for parts in by_key.values())
    order = [lines.index(r.value or b"") for r in sorted(records, key=lambda r: r.offset)
             if r.key == b"P51010400011"]
    assert order == sorted(order)


def test_replay_limit_and_speed(
    broker: EmbeddedBroker, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = topic_name("paced")
    ensure_topics(broker.bootstrap, [TopicSpec(topic, 1)])
    log = tmp_path / "paced.jsonl"
    rows = [
        {"infno": "3505", "msgid": f"M{i}", "fixmedins_code": "P1",
         "inf_time": f"2026-11-01 09:00:0{i}"}
        for i in range(4)
    ]
    log.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))

    started = time.monotonic()
    stats = replay(log, broker.bootstrap, topic, speed=10.0, progress=False, limit=3)
    elapsed = time.monotonic() - started

    assert stats.messages == 3
    assert 0.2 - 0.05 <= stats.seconds <= elapsed  # 2 s of business time at 10x
    records = consume_all(broker.bootstrap, topic, timeout_s=2.0, expect=3)
    assert [orjson.loads(r.value or b"")["msgid"] for r in records] == ["M0", "M1", "M2"]


def test_replay_to_missing_topic_says_what_to_do(
    broker: EmbeddedBroker, example_log: Path
) -> None:
    with pytest.raises(KafkaIOError, match="does not exist"):
        replay(example_log, broker.bootstrap, "no.such.topic", progress=False)


def test_unreachable_broker_errors_name_the_fix(tmp_path: Path, example_log: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(KafkaIOError, match="TRACEWATCH_KAFKA"):
        ensure_topics(dead, [TopicSpec("x", 1)], timeout=1.0)
    with pytest.raises(KafkaIOError, match="is the broker running"):
        replay(example_log, dead, "x", progress=False, connect_timeout=1.0)


def test_missing_log_file(broker: EmbeddedBroker, tmp_path: Path) -> None:
    with pytest.raises(KafkaIOError, match="no log file"):
        replay(tmp_path / "nope.jsonl", broker.bootstrap, "x", progress=False)


def test_consume_all_waits_at_most_the_idle_timeout(broker: EmbeddedBroker) -> None:
    started = time.monotonic()
    assert consume_all(broker.bootstrap, "never.created", timeout_s=0.5) == []
    assert time.monotonic() - started < 5


def test_embedded_broker_start_stop_and_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "b.log"
    embedded = EmbeddedBroker(log_path=log_path)
    clash = None
    try:
        embedded.start()
        assert embedded.running
        assert ensure_topics(embedded.bootstrap, [TopicSpec("solo", 1)]) == ["solo"]
        # a second broker on the same, fixed port is refused before it is spawned ...
        clash = EmbeddedBroker(port=embedded.port, log_path=tmp_path / "clash.log")
        with pytest.raises(BrokerError, match="already in use"):
            clash.start(timeout=10)
        # ... and if it were spawned, Tansu's panic (it does not exit) is caught in its log
        import streams.broker as broker_module

        monkeypatch.setattr(broker_module, "_port_free", lambda port: True)
        started = time.monotonic()
        with pytest.raises(BrokerError, match="Address in use"):
            clash.start(timeout=10)
        assert time.monotonic() - started < 5
        assert not clash.running
        monkeypatch.undo()

        embedded.stop()
        assert not embedded.running
        assert log_path.read_text()  # the log is kept when a path was given
        # the port is free again: the same broker object starts, and its old panic in the
        # log (appended to, not truncated) does not count against the new run
        with clash:
            assert clash.running
            assert "Address in use" in (tmp_path / "clash.log").read_text()
            assert ensure_topics(clash.bootstrap, [TopicSpec("again", 1)]) == ["again"]
        assert not clash.running
    finally:
        embedded.stop()
        if clash is not None:
            clash.stop()
