"""The Redis ledger against a real Redis (a test database of 127.0.0.1:6379 from the shared
``redis_url`` fixture, and a fresh key prefix per test): it must behave exactly like
MemoryLedger, in one round trip per call, with the documented expiries and encodings.
Skipped when Redis does not answer, unless CI is set."""

from __future__ import annotations

import logging
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from detectors.codes import box_codes
from detectors.hoarding import HoardingLink, PersonState
from detectors.messages import parse
from detectors.model import CodeState, RuleConfig
from streams import codec
from streams.codec import (
    INST,
    CodecError,
    MemoryInterner,
    code_of_slot,
    code_slot,
    narrow_field_size,
    pack_code_state,
    packed_code_slot,
    shared_ref,
)
from streams.ledger import MemoryLedger, record_key, sale_key
from streams.pipeline import Pipeline
from streams.redis_ledger import (
    RUN_LIMIT_MARKERS,
    SHARED_BLOCK,
    LedgerError,
    RedisLedger,
    _digest_slot,
    _ScriptChannel,
)
from streams.reference import load_catalog
from tests import factory
from tests.test_codec import (
    code_state_variant,
    person_state_in_runs,
    random_code,
    random_code_state,
    random_person_state,
    typical_state,
)
from tests.test_sweep import binary_references, overflow_pieces, whole_overflow

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "examples"


class CountingRedis(redis.Redis):
    """A client that counts round trips: commands, and pipelines as one each."""

    round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.round_trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(raise_on_error: bool = True) -> Any:
            self.round_trips += 1
            return execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


@pytest.fixture
def client(redis_url: str) -> Iterator[CountingRedis]:
    """A counting client of this test's database (flushed by ``redis_url`` afterwards)."""
    connection = CountingRedis.from_url(redis_url, socket_connect_timeout=2)
    yield connection
    connection.close()


@pytest.fixture
def prefix() -> str:
    return f"twtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(client: CountingRedis, prefix: str) -> Callable[..., RedisLedger]:
    def build(**kw: Any) -> RedisLedger:
        kw.setdefault("buckets", 16)
        return RedisLedger(client, prefix=prefix, **kw)
    return build


# --------------------------------------------------------------------------- parity


C1, C2, C3, C4 = ("83857930123456780001", "83857930123456780002",
                  "(01)06901234567892(21)ABC123", "ENTERPRISE-CODE-0001")
SMALL = typical_state(1)
SOLD_TWICE = replace(SMALL, sales=SMALL.sales + typical_state(2).sales * 4)  # > 64 bytes
SOLD_TWICE_LATER = replace(SOLD_TWICE, last_time=SOLD_TWICE.last_time + 60)  # not alike it
RK1, RK2, RK3 = (record_key("P51010400011", "3505", "S1"), record_key("P51010400011", "3506", "R1"),
                 record_key("H51010700002", "3505", "S9"))
SK1, SK2, SK3 = (sale_key("P51010400011", "S1"), sale_key("H51010700002", "S9"),
                 sale_key("P50010300077", "S7001"))
MANY_CODES = tuple(f"8385793{n:013d}" for n in range(12))
PK1, PK2 = "0123456789abcdef\x1fXA10BAE054A001010101445", "fedcba9876543210\x1fX"
PERSON = replace(random_person_state(random.Random(1)), last_alert_time=None)
PERSON_BIG = random_person_state(random.Random(2))
LINK = HoardingLink("a" * 24, "P5101040001120261101091245", "P51010400011",
                    "2026-11-01 09:12:45")

OPERATIONS: list[tuple[str, tuple[Any, ...]]] = [
    ("load_codes", ({C1, C2},)),
    ("store_codes", ({C1: SMALL, C2: SMALL, C3: SOLD_TWICE},)),
    ("load_codes", ({C1, C2, C3, C4},)),
    ("store_codes", ({C1: None, C3: SMALL, C4: SOLD_TWICE},)),  # delete; long → short
    ("load_codes", ({C1, C2, C3, C4},)),
    ("store_codes", ({C4: None, "00000000000000000000": None},)),  # long deleted; absent
    ("load_codes", ({C1, C2, C3, C4},)),
    ("seen_messages", ({"EX-0001", "EX-0002"},)),
    ("seen_records", ({RK1, RK2},)),
    ("sale_codes", ({SK1, SK2},)),
    ("commit_routing", ({"EX-0001"}, {RK1, RK2}, set(), {SK1: (C1, C2), SK2: MANY_CODES})),
    ("seen_messages", ({"EX-0001", "EX-0002"},)),
    ("seen_records", ({RK1, RK2, RK3},)),
    ("sale_codes", ({SK1, SK2, SK3},)),
    ("commit_routing", ({"EX-0002"}, {RK3}, {RK1}, {SK1: None, SK2: (C3,), SK3: ()})),
    ("seen_messages", ({"EX-0001", "EX-0002", "EX-0003"},)),
    ("seen_records", ({RK1, RK2, RK3},)),
    ("sale_codes", ({SK1, SK2, SK3},)),
    ("recall_routing", ({"EX-0001", "EX-0009"}, {RK1, RK2, RK3}, {SK1, SK2, SK3})),
    ("recall_routing", (set(), {RK1, RK2, RK3}, {SK2})),
    ("recall_routing", ({"EX-0002"}, set(), {SK3})),
    ("recall_routing", ({"EX-0002"}, {RK2}, set())),
    ("recall_routing", (set(), set(), set())),
    ("commit_routing", (set(), {RK1}, {RK1, RK2}, {})),  # removed and added: added wins
    ("seen_records", ({RK1, RK2, RK3},)),
    ("load_persons", ({PK1, PK2},)),
    ("store_persons", ({PK1: PERSON, PK2: PERSON_BIG},)),
    ("load_persons", ({PK1, PK2},)),
    ("store_persons", ({PK1: None, PK2: PERSON},)),
    ("load_persons", ({PK1, PK2},)),
    ("hoarding_links", ({"0123456789abcdef"},)),
    ("link_hoarding", ({"0123456789abcdef": LINK},)),
    ("hoarding_links", ({"0123456789abcdef", "fedcba9876543210"},)),
]


@pytest.mark.parametrize("inline_limit", [None, 8], ids=["server-limit", "all-overflow"])
def test_every_operation_behaves_like_memory_ledger(
    make: Callable[..., RedisLedger], inline_limit: int | None
) -> None:
    memory = MemoryLedger()
    ledger = make()
    if inline_limit is not None:
        ledger.inline_limit = inline_limit
    assert len(pack_code_state(SOLD_TWICE, MemoryInterner())) > ledger.inline_limit
    for step, (name, args) in enumerate(OPERATIONS):
        expected = getattr(memory, name)(*args)
        got = getattr(ledger, name)(*args)
        assert got == expected, f"step {step}: {name}"


def test_random_states_behave_like_memory_ledger(make: Callable[..., RedisLedger]) -> None:
    rng = random.Random(2026)
    memory, ledger = MemoryLedger(), make(buckets=4)
    codes = list({random_code(rng) for _ in range(400)})
    for _ in range(6):
        batch: dict[str, CodeState | None] = {
            code: random_code_state(rng) if rng.random() < 0.8 else None
            for code in rng.sample(codes, 150)
        }
        memory.store_codes(batch)
        ledger.store_codes(batch)
        wanted = set(rng.sample(codes, 200))
        assert ledger.load_codes(wanted) == memory.load_codes(wanted)
    persons = {f"{rng.randrange(1 << 64):016x}\x1fX{n}": random_person_state(rng)
               for n in range(100)}
    memory.store_persons(persons)
    ledger.store_persons(persons)
    assert ledger.load_persons(set(persons)) == memory.load_persons(set(persons))


def test_runs_of_alike_states_are_stored_for_every_code(make: Callable[..., RedisLedger]) -> None:
    """The writer packs a run of alike states once (the boxes of one message): every code
    of the run, and the near misses between runs, must still read back as stored."""
    rng = random.Random(77)
    memory, ledger = MemoryLedger(), make(buckets=4)
    batch: dict[str, CodeState | None] = {}
    while len(batch) < 600:
        state = random_code_state(rng)
        for _ in range(rng.choice([1, 3, 5])):
            batch[random_code(rng)] = state
            state = code_state_variant(rng, state) if rng.random() < 0.5 else state
        if rng.random() < 0.1:
            batch[random_code(rng)] = None
    memory.store_codes(batch)
    ledger.store_codes(batch)
    loaded = ledger.load_codes(set(batch))
    assert loaded == memory.load_codes(set(batch))
    assert {code: [repr((s.units, s.amount)) for s in state.sales]
            for code, state in loaded.items()} == {
        code: [repr((s.units, s.amount)) for s in state.sales]
        for code, state in batch.items() if state is not None}
    persons = {f"{rng.randrange(1 << 64):016x}\x1fX{n}": person_state_in_runs(rng)
               for n in range(100)}
    ledger.store_persons(persons)
    assert ledger.load_persons(set(persons)) == persons


def test_the_boxes_of_one_sale_share_one_stored_state(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """A run of codes with alike states (the boxes one message sold) is stored once, each
    code's entry a reference to it, and a state too long for the shared bucket in its
    overflow hash; a lone code keeps its own. Every code reads back as stored, here and in
    another process."""
    ledger = make(buckets=4, retention_days=100)
    boxes = MANY_CODES[:5]
    states: dict[str, CodeState | None] = {
        **dict.fromkeys(boxes, SMALL), C3: typical_state(2), C1: SOLD_TWICE, C2: SOLD_TWICE}
    ledger.store_codes(states)

    shared, shared_big = f"{prefix}:v:0", f"{prefix}:vx:0"
    assert list(client.scan_iter(match=f"{prefix}:v:*")) == [shared.encode()]
    marker, pieces = overflow_pieces(b"1", pack_code_state(SOLD_TWICE, ledger.interner),
                                     ledger.inline_limit)
    assert client.hgetall(shared) == {b"0": pack_code_state(SMALL, ledger.interner), b"1": marker}
    assert client.hgetall(shared_big) == pieces
    assert client.ttl(shared) > 100 * 86_400 and client.ttl(shared_big) > 100 * 86_400
    assert int(client.get(f"{prefix}:vn") or 0) == SHARED_BLOCK

    def entry(code: str) -> bytes | None:
        bucket, field = ledger.code_slot(code)
        return cast(bytes | None, client.hget(f"{prefix}:c:{bucket}", field))

    assert {entry(box) for box in boxes} == {shared_ref(0)}
    assert entry(C3) == pack_code_state(typical_state(2), ledger.interner)
    assert entry(C1) == entry(C2) == shared_ref(1)  # long: in the shared overflow hash
    assert ledger.load_codes(set(states) | {C4}) == states
    assert make(buckets=4).load_codes(set(states)) == states

    # One box sold again and one deleted: the others still read the shared state.
    ledger.store_codes({boxes[0]: SOLD_TWICE, boxes[1]: None})
    expected = {**states, boxes[0]: SOLD_TWICE}
    del expected[boxes[1]]
    assert make(buckets=4).load_codes(set(states)) == expected

    # A shared state past its expiry takes its boxes with it: they read as never seen.
    client.delete(shared, shared_big)
    for code in (*boxes[2:], C1, C2):
        del expected[code]
    assert make(buckets=4).load_codes(set(states)) == expected


def test_shared_serials_cost_one_round_trip_per_block(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL, C2: SMALL, C3: typical_state(2)})  # interns, reserves

    def round_trips() -> int:
        return client.round_trips + ledger.script_round_trips

    before = round_trips()
    ledger.store_codes(dict.fromkeys(MANY_CODES, typical_state(2)))
    assert round_trips() - before == 1
    other = make()  # a second writer reserves a block of its own
    other.store_codes({C4: SMALL})  # caches the interned strings
    before = client.round_trips + other.script_round_trips
    other.store_codes(dict.fromkeys(MANY_CODES[:3], SMALL))
    assert client.round_trips + other.script_round_trips - before == 2
    assert int(client.get(f"{other.prefix}:vn") or 0) == 2 * SHARED_BLOCK
    assert client.hget(f"{other.prefix}:c:{other.code_slot(MANY_CODES[0])[0]}",
                       other.code_slot(MANY_CODES[0])[1]) == shared_ref(SHARED_BLOCK)
    assert other.load_codes(set(MANY_CODES)) == {
        **dict.fromkeys(MANY_CODES, typical_state(2)), **dict.fromkeys(MANY_CODES[:3], SMALL)}


@pytest.mark.parametrize("first,sizes", [(0, {2}), (5, {2, 3}), (250, {4}),
                                         ((1 << 24) - 2, {9}), ((1 << 31) - 2, {11, 5}),
                                         ((1 << 32) - 2, {5, 6})],
                         ids=["1-digit", "crossing-a-digit", "3-digit", "8-digit",
                              "decimal-to-binary", "4-to-5-byte"])
def test_references_of_every_length_read_back(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger], first: int,
    sizes: set[int],
) -> None:
    client.set(f"{prefix}:vn", first)  # serials given out before this writer
    ledger = make(buckets=4)
    runs = [typical_state(n) for n in range(1, 9)]
    batch: dict[str, CodeState | None] = {
        f"8385793{2 * n + box:013d}": state for n, state in enumerate(runs) for box in (0, 1)}
    ledger.store_codes(batch)

    serials = [first + n for n in range(len(runs))]
    assert {len(shared_ref(serial)) for serial in serials} == sizes
    entries = set()
    for code in batch:
        bucket, field = ledger.code_slot(code)
        entries.add(client.hget(f"{prefix}:c:{bucket}", field))
    assert entries == {shared_ref(serial) for serial in serials}
    assert make(buckets=4).load_codes(set(batch)) == batch
    assert ledger.sweep(dry_run=True).codes.removed == 0


def test_binary_references_of_layout_2_read_back(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """A ledger upgraded from layout 2 holds references in binary (0x10 and the serial) for
    serials that layout 3 writes in decimal: both read as the shared state."""
    ledger = make(buckets=4)
    batch: dict[str, CodeState | None] = {f"8385793{n:013d}": typical_state(n // 2 + 1)
                                          for n in range(600)}  # serials 0 to 299
    ledger.store_codes(batch)
    binary_references(client, prefix, ledger, list(batch)[::3])
    entries = {client.hget(f"{prefix}:c:{bucket}", field)
               for bucket, field in map(ledger.code_slot, batch)}
    assert {entry[:1] for entry in entries if entry} == {b"-", b"\x10"}
    assert make(buckets=4).load_codes(set(batch)) == batch
    assert ledger.sweep(dry_run=True).codes.removed == 0


@pytest.mark.parametrize("serials_used", [0, 1 << 32, 3 * SHARED_BLOCK],
                         ids=["new", "past-2**32", "early-blocks-expired"])
def test_stats_count_the_shared_states_memory(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger], serials_used: int
) -> None:
    """Only the range of shared buckets that can still exist is sampled: after 2**32 serials,
    or once the first blocks' buckets have expired, sampling from serial 0 would miss them."""
    client.set(f"{prefix}:vn", serials_used)
    if serials_used == 3 * SHARED_BLOCK:  # blocks 0 and 1 have expired, block 2 not yet
        packed = pack_code_state(SMALL, MemoryInterner())
        client.hset(f"{prefix}:v:{2 * SHARED_BLOCK >> 8}", "0", packed)
    ledger = make(buckets=4)
    rng = random.Random(3)
    batch: dict[str, CodeState | None] = {}
    for n in range(300):
        state = random_code_state(rng)
        for _ in range(1 + n % 4):
            batch[random_code(rng)] = state
    ledger.store_codes(batch)
    figures = ledger.stats(sample=4096)  # every bucket: the figures are exact
    memory = sum(int(client.memory_usage(key, samples=0) or 0)
                 for family in ("c", "cx", "v", "vx")
                 for key in client.scan_iter(match=f"{prefix}:{family}:*"))
    shared = sum(client.hlen(key) for key in client.scan_iter(match=f"{prefix}:v:*"))
    assert figures["codes"] == len(batch)
    assert figures["shared_states"] == shared > 0
    assert figures["bytes_per_code"] == pytest.approx(memory / len(batch))


def test_stats_report_redis_memory_and_its_limit(redis_server: Callable[..., Any]) -> None:
    """The worker exports these for the Grafana panel and the TracewatchRedisMemoryHigh alert:
    with noeviction, Redis at maxmemory refuses the ledger's writes."""
    client = redis.Redis.from_url(redis_server().url)
    client.config_set("maxmemory", 64 << 20)
    ledger = RedisLedger(client, prefix="tw", buckets=16)
    ledger.store_codes({C1: SMALL})
    figures = ledger.stats()
    assert figures["maxmemory"] == 64 << 20
    assert 0 < figures["used_memory"] < figures["maxmemory"]
    client.config_set("maxmemory", 0)
    assert ledger.stats()["maxmemory"] == 0
    client.close()


def test_a_cold_process_reads_what_another_wrote(make: Callable[..., RedisLedger]) -> None:
    rng = random.Random(9)
    states: dict[str, CodeState | None] = {
        random_code(rng): random_code_state(rng) for _ in range(200)}
    make().store_codes(states)
    assert make().load_codes(set(states)) == states


# --------------------------------------------------------------------------- the pipeline


def _logs() -> list[tuple[Path, Path]]:
    logs = [(log, DATA / "catalog.csv") for log in sorted(DATA.glob("*/*.jsonl"))
            if not log.name.endswith(".expected.jsonl")]
    if SHARED.is_dir():
        logs.insert(0, (SHARED / "messages.jsonl", SHARED / "catalog.csv"))
    return logs


LOGS = _logs()


def _alerts(pipeline: Pipeline, messages: list[Any], one_by_one: bool) -> list[Any]:
    if one_by_one:
        alerts = [alert for item in messages for alert in pipeline.process([item])]
    else:
        alerts = pipeline.process(messages)
    return [alert.to_dict("x") for alert in alerts]


@pytest.mark.parametrize("one_by_one", [True, False], ids=["by-message", "one-batch"])
@pytest.mark.parametrize("log,catalog", LOGS, ids=[f"{p.parent.name}/{p.stem}" for p, _ in LOGS])
def test_pipeline_raises_the_same_alerts_as_with_memory_ledger(
    make: Callable[..., RedisLedger], log: Path, catalog: Path, one_by_one: bool
) -> None:
    config = RuleConfig(catalog=load_catalog(catalog))
    messages = []
    for number, line in enumerate(log.read_bytes().splitlines(), start=1):
        if line.strip():
            messages.append((number, parse(orjson.loads(line), b"k")))
    expected = _alerts(Pipeline(MemoryLedger(), config), messages, one_by_one)
    ledger = make()
    assert _alerts(Pipeline(ledger, config), messages, one_by_one) == expected
    if log.parent == SHARED:
        assert [(a["rule"], a["trigger_msgid"]) for a in expected] == [
            ("DUPLICATE_SALE", "EX-0004")]
    assert _alerts(Pipeline(ledger, config), messages, one_by_one) == []


def _in_stages(pipeline: Pipeline, messages: list[Any], size: int,
               prepare: str = "no") -> list[Any]:
    """The worker's order: route, codes and persons of a batch, then its writes. With
    ``prepare`` "yes", each batch's routing is prepared while the last batch's writes are in
    flight, as the worker does; "other": a copy of the batch is (which routing ignores)."""
    alerts = []
    batches = [messages[start:start + size] for start in range(0, len(messages), size)]
    ledger = pipeline.ledger
    in_flight = prepare != "no" and isinstance(ledger, RedisLedger)
    for batch in batches:
        if prepare != "no":
            pipeline.prepare_route(batch if prepare == "yes" else list(batch))
        if in_flight:
            cast(RedisLedger, ledger).confirm_writes()
        routed = pipeline.route(batch)
        codes = pipeline.apply_codes(routed.events, store=False)
        persons = pipeline.apply_persons(codes.person_events, store=False)
        alerts += routed.alerts + codes.alerts + persons.alerts
        with (cast(RedisLedger, ledger).writes_in_flight(confirm=False) if in_flight
              else nullcontext()):
            pipeline.store_persons(persons)
            pipeline.store_codes(codes)
            pipeline.commit_routing(routed.commit)
    if in_flight:
        cast(RedisLedger, ledger).confirm_writes()
    return sorted((alert.to_dict("x") for alert in alerts), key=lambda a: a["alert_id"])


@pytest.mark.parametrize("prepare", ["no", "yes", "other"])
@pytest.mark.parametrize("size", [1, 5, 1000], ids=["by-message", "batches-of-5", "one-batch"])
@pytest.mark.parametrize("log,catalog", LOGS, ids=[f"{p.parent.name}/{p.stem}" for p, _ in LOGS])
def test_the_workers_stages_with_loads_sent_ahead_raise_what_memory_raises(
    make: Callable[..., RedisLedger], log: Path, catalog: Path, size: int, prepare: str
) -> None:
    """Routing tells the Redis ledger what the batch will load, and its loads are answered
    from what was read ahead; prepared ahead (or a routing prepared for other messages) or
    not, the alerts are those of the memory ledger."""
    config = RuleConfig(catalog=load_catalog(catalog))
    messages = [(number, parse(orjson.loads(line), b"k"))
                for number, line in enumerate(log.read_bytes().splitlines(), start=1)
                if line.strip()]
    expected = _in_stages(Pipeline(MemoryLedger(), config), messages, size)
    assert _in_stages(Pipeline(MemoryLedger(), config), messages, size, prepare) == expected
    ledger = make()
    assert _in_stages(Pipeline(ledger, config), messages, size, prepare) == expected


def test_a_prepared_recall_finds_what_an_unprepared_one_finds(
        make: Callable[..., RedisLedger]) -> None:
    """Digests worked out ahead serve the recall of the texts they were worked out for;
    texts not prepared are worked out then; a recall uses a preparation once."""
    ledger = make()
    ledger.commit_routing({"M1", "M2"}, {"R1"}, set(), {})
    ledger.prepare_recall({"M1", "M3"}, {"R1", "R2"})
    assert ledger.recall_routing({"M1", "M2", "M4"}, {"R1", "R3"}, set())[:2] == (
        {"M1", "M2"}, {"R1"})
    ledger.prepare_recall({"M9"}, set())
    assert ledger.recall_routing({"M2"}, {"R1"}, set())[:2] == ({"M2"}, {"R1"})
    assert ledger.recall_routing({"M3", "M9"}, {"R2"}, set())[:2] == (set(), set())


def test_routing_announces_the_boxes_and_people_the_batch_will_load() -> None:
    """What a batch's code and person stages load was announced before its routing recall,
    but for the boxes of a deleted sale (known from the recall) and the buyers of returned
    boxes (from the boxes' states)."""

    class Announced:
        """A memory ledger that records what it is told and asked (wraps it: compiled
        classes take no subclass)."""

        reads_ahead = True

        def __init__(self) -> None:
            self.memory = MemoryLedger()
            self.expected: list[tuple[set[str], set[str]]] = []
            self.loaded_codes: set[str] = set()
            self.loaded_persons: set[str] = set()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.memory, name)

        def expect(self, announce: Callable[[], tuple[set[str], set[str]]]) -> None:
            codes, person_keys = announce()
            self.expected.append((set(codes), set(person_keys)))

        def load_codes(self, codes: set[str]) -> Any:
            self.loaded_codes.update(codes)
            return self.memory.load_codes(codes)

        def load_persons(self, keys: set[str]) -> Any:
            self.loaded_persons.update(keys)
            return self.memory.load_persons(keys)

    log = DATA / "DUPLICATE_SALE" / "retries_and_reuploads.jsonl"
    messages = [(n, parse(orjson.loads(line), b"k"))
                for n, line in enumerate(log.read_bytes().splitlines()) if line.strip()]
    ledger = Announced()
    pipeline = Pipeline(cast(Any, ledger), RuleConfig())
    routed = pipeline.route(messages)
    codes = pipeline.apply_codes(routed.events)
    pipeline.apply_persons(codes.person_events)
    [(expected_codes, expected_people)] = ledger.expected
    deleted = {e.code for e in routed.events if e.kind.name == "DELETE"}
    assert ledger.loaded_codes - deleted <= expected_codes
    assert expected_codes <= {code for _, m in messages for code in box_codes(m.raw_codes)[0]}
    assert ledger.loaded_persons and ledger.loaded_persons <= expected_people

    ledger.expected.clear()
    pipeline.route(messages, owns_code=lambda code: False, owns_person=lambda psn: False)
    assert ledger.expected == [(set(), set())]  # other writers' boxes and people


# --------------------------------------------------------------------------- round trips


def test_each_call_is_one_round_trip(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL, C2: SOLD_TWICE})  # interns the strings
    ledger.store_persons({PK1: PERSON})
    # C3's GTIN gets its id the first time it is seen, in a round trip of its own: once.
    assert ledger.load_codes({C3}) == {}
    assert ledger.interner.to_id("gtin", C3[4:18]) > 0
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("load_codes", ({C1, C2, C3, *MANY_CODES},)),
        ("store_codes", ({C1: SOLD_TWICE, C2: SMALL, C3: None},)),
        ("seen_messages", ({f"M{n}" for n in range(100)},)),
        ("seen_records", ({RK1, RK2, RK3},)),
        ("sale_codes", ({SK1, SK2},)),
        ("recall_routing", ({"M1", "M9"}, {RK1, RK2}, {SK1})),
        ("commit_routing", ({"M1", "M2"}, {RK1}, {RK2}, {SK1: (C1,), SK2: None})),
        ("load_persons", ({PK1, PK2},)),
        ("store_persons", ({PK1: PERSON_BIG, PK2: None},)),
        ("hoarding_links", ({"0123456789abcdef"},)),
        ("link_hoarding", ({"0123456789abcdef": LINK},)),
    ]
    def round_trips() -> int:
        return client.round_trips + ledger.script_round_trips

    for name, args in calls:
        before = round_trips()
        getattr(ledger, name)(*args)
        assert round_trips() - before == 1, name
    before = round_trips()
    ledger.load_codes(set())
    ledger.store_codes({})
    ledger.seen_messages(set())
    ledger.hoarding_links(set())
    ledger.link_hoarding({})
    assert round_trips() == before


def test_loads_sent_ahead_answer_as_loads_would_without_a_round_trip(
    make: Callable[..., RedisLedger]
) -> None:
    """``expect`` before the routing recall: the recall sends the loads on a second
    connection, and the loads that follow read their answers instead of asking."""
    ledger, memory = make(), MemoryLedger()
    for target in (ledger, memory):
        target.store_codes({C1: SMALL, C3: SOLD_TWICE})  # C3 long: in the overflow hash
        target.store_persons({PK1: PERSON_BIG})
    ledger.expect(lambda: ([C1, C2, C3], [PK1, PK2]))
    before = ledger.script_round_trips
    assert ledger.recall_routing({"M1"}, {RK1}, {SK1}) == memory.recall_routing(
        {"M1"}, {RK1}, {SK1})
    assert ledger.load_codes({C1, C2, C3}) == memory.load_codes({C1, C2, C3})
    assert ledger.load_persons({PK1, PK2}) == memory.load_persons({PK1, PK2})
    assert ledger.script_round_trips == before + 1  # the recall's only
    # What was read ahead is read once: a second load asks Redis.
    assert ledger.load_codes({C1, C4}) == memory.load_codes({C1, C4})
    assert ledger.script_round_trips == before + 2
    # The store after loads read ahead moves C3 out of the overflow hash and C2 into it.
    ledger.expect(lambda: ([C2, C3], []))
    ledger.recall_routing(set(), set(), set())
    assert ledger.load_codes({C2, C3}) == memory.load_codes({C2, C3})
    for target in (ledger, memory):
        target.store_codes({C3: SMALL, C2: SOLD_TWICE})
    assert make().load_codes({C1, C2, C3, C4}) == memory.load_codes({C1, C2, C3, C4})


def test_a_load_of_more_than_was_announced_asks_only_for_the_rest(
    make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL, C4: SOLD_TWICE})
    ledger.store_persons({PK2: PERSON})
    ledger.expect(lambda: ([C1], []))
    ledger.recall_routing({"M1"}, set(), set())
    before = ledger.script_round_trips
    assert ledger.load_codes({C1, C4, C2}) == {C1: SMALL, C4: SOLD_TWICE}
    assert ledger.script_round_trips == before + 1
    assert ledger.load_persons({PK2}) == {PK2: PERSON}  # nothing announced: asked


def test_a_write_forgets_what_was_read_ahead(make: Callable[..., RedisLedger]) -> None:
    """A batch whose stages did not load what it announced writes; a later load must see
    the write, not the answer read ahead before it."""
    ledger = make()
    ledger.store_codes({C1: SMALL})
    ledger.store_persons({PK1: PERSON})
    ledger.expect(lambda: ([C1], [PK1]))
    ledger.recall_routing({"M1"}, set(), set())
    ledger.store_codes({C1: SOLD_TWICE})
    assert ledger.load_codes({C1}) == {C1: SOLD_TWICE}
    ledger.expect(lambda: ([C1], [PK1]))
    ledger.recall_routing({"M1"}, set(), set())
    with ledger.writes_in_flight():
        ledger.store_persons({PK1: PERSON_BIG})
    assert ledger.load_persons({PK1}) == {PK1: PERSON_BIG}
    ledger.expect(lambda: ([C1], [PK1]))
    ledger.recall_routing({"M1"}, set(), set())
    ledger.link_hoarding({"0123456789abcdef": LINK})
    assert ledger.hoarding_links({"0123456789abcdef"}) == {"0123456789abcdef": LINK}
    ledger.expect(lambda: ([C1], [PK1]))  # no recall sent it: nothing was read ahead
    ledger.store_codes({C1: SMALL})
    ledger.recall_routing({"M2"}, set(), set())
    assert ledger.load_codes({C1}) == {C1: SMALL}


def test_loads_sent_ahead_survive_lost_scripts_and_a_dropped_connection(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL})
    ledger.store_persons({PK1: PERSON})
    client.script_flush()  # both loads sent ahead get NOSCRIPT: loaded again, sent again
    ledger.expect(lambda: ([C1], [PK1]))
    ledger.recall_routing({"M1"}, set(), set())
    assert ledger.load_codes({C1}) == {C1: SMALL}
    assert ledger.load_persons({PK1}) == {PK1: PERSON}

    ledger.expect(lambda: ([C1], [PK1]))
    ledger.recall_routing({"M1"}, set(), set())
    client.client_kill_filter(_type="normal", skipme=True)  # both of the ledger's
    try:
        got = ledger.load_codes({C1})
    except redis.ConnectionError:
        got = ledger.load_codes({C1})  # the worker retries like this
    assert got == {C1: SMALL}
    assert ledger.load_persons({PK1}) == {PK1: PERSON}


def test_new_strings_cost_one_more_round_trip(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    writer, reader = make(), make()
    states = {f"8385793{n:013d}": typical_state(n) for n in range(50)}
    def round_trips() -> int:
        return client.round_trips + writer.script_round_trips + reader.script_round_trips

    before = round_trips()
    writer.store_codes(states)
    assert round_trips() - before == 2  # allocate the ids, then store
    before = round_trips()
    assert reader.load_codes(set(states)) == states
    assert round_trips() - before == 2  # load, then fetch the texts of the ids


def test_writes_in_flight_are_sent_ahead_and_confirmed_once(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL})  # interns the strings
    ledger.store_persons({PK1: PERSON})
    before = ledger.script_round_trips
    with ledger.writes_in_flight():
        ledger.store_persons({PK1: PERSON_BIG})
        ledger.store_codes({C1: SOLD_TWICE, C2: SMALL})
        ledger.commit_routing({"M1"}, {RK1}, set(), {SK1: (C1,)})
        assert ledger.script_round_trips == before  # nothing waited for yet
    assert ledger.script_round_trips == before + 1
    assert ledger.load_codes({C1, C2}) == {C1: SOLD_TWICE, C2: SMALL}
    assert ledger.load_persons({PK1}) == {PK1: PERSON_BIG}
    assert ledger.seen_messages({"M1", "M2"}) == {"M1"}
    assert ledger.sale_codes({SK1}) == {SK1: (C1,)}


def test_writes_left_in_flight_are_confirmed_later(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    """The worker leaves a batch's writes in flight and parses its next fetch meanwhile:
    nothing is waited for on the way out, ``confirm_writes`` waits once, and a load sent
    before confirming sees the writes anyway (one connection: Redis answers in order)."""
    ledger = make()
    ledger.store_codes({C1: SMALL})
    before = ledger.script_round_trips
    with ledger.writes_in_flight(confirm=False):
        ledger.store_codes({C1: SOLD_TWICE, C2: SMALL})
        ledger.commit_routing({"M1"}, {RK1}, set(), {SK1: (C1,)})
    assert ledger.script_round_trips == before
    ledger.confirm_writes()
    assert ledger.script_round_trips == before + 1
    ledger.confirm_writes()  # nothing left: no wait
    assert ledger.script_round_trips == before + 1
    with ledger.writes_in_flight(confirm=False):
        ledger.store_codes({C3: SMALL})
    assert ledger.load_codes({C1, C2, C3}) == {C1: SOLD_TWICE, C2: SMALL, C3: SMALL}
    assert ledger.seen_messages({"M1", "M2"}) == {"M1"}


def test_a_failed_confirmation_is_raised_and_the_next_sends_the_writes_again(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL})
    client.client_kill_filter(_type="normal", skipme=True)  # drops the writes' connection
    sent = True
    with ledger.writes_in_flight(confirm=False):
        try:
            ledger.store_codes({C2: SOLD_TWICE})
        except redis.ConnectionError:
            sent = False  # seen on sending already (the kernel usually takes the bytes)
    if sent:
        with pytest.raises(redis.ConnectionError):
            ledger.confirm_writes()
        ledger.confirm_writes()  # what the worker does: again, and the writes are sent again
    else:
        with ledger.writes_in_flight(confirm=False):  # what the worker does: the round again
            ledger.store_codes({C2: SOLD_TWICE})
        ledger.confirm_writes()
    assert ledger.load_codes({C1, C2}) == {C1: SMALL, C2: SOLD_TWICE}


def test_a_write_refused_by_redis_is_sent_again_by_the_next_confirmation(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL})
    bucket_key = ledger._codes.bucket + str(ledger.code_slot(C2)[0])
    client.set(bucket_key, b"not a hash")  # HSET there fails: WRONGTYPE
    with ledger.writes_in_flight(confirm=False):
        ledger.store_codes({C2: SOLD_TWICE})
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        ledger.confirm_writes()
    client.delete(bucket_key)  # what an operator's fix, or a passing condition, would do
    ledger.confirm_writes()
    assert ledger.load_codes({C1, C2}) == {C1: SMALL, C2: SOLD_TWICE}


def test_a_failure_inside_writes_in_flight_leaves_the_ledger_usable(
    make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL})
    with pytest.raises(RuntimeError), ledger.writes_in_flight():
        ledger.store_codes({C2: SMALL})
        raise RuntimeError("packing failed")
    # Nothing of the abandoned round is read as the answer of a later call.
    assert ledger.load_codes({C1, C3}) == {C1: SMALL}
    ledger.store_codes({C2: SOLD_TWICE})
    assert ledger.load_codes({C2}) == {C2: SOLD_TWICE}


def test_scripts_lost_by_redis_are_loaded_again_for_writes_in_flight(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL})
    client.script_flush()
    with ledger.writes_in_flight():
        ledger.store_codes({C1: SOLD_TWICE})
        ledger.store_persons({PK1: PERSON})
    assert ledger.load_codes({C1}) == {C1: SOLD_TWICE}
    assert ledger.load_persons({PK1}) == {PK1: PERSON}


def test_a_dropped_connection_fails_one_call_and_the_next_reconnects(
    client: CountingRedis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({C1: SMALL})
    client.client_kill_filter(_type="normal", skipme=True)  # the ledger's own connection too
    try:
        got = ledger.load_codes({C1})
    except redis.ConnectionError:
        got = ledger.load_codes({C1})  # the worker retries like this
    assert got == {C1: SMALL}


def test_writers_allocate_the_same_ids_concurrently(make: Callable[..., RedisLedger]) -> None:
    ledgers = [make() for _ in range(4)]
    texts = [f"P{n:011d}" for n in range(200)]
    got: list[dict[str, int]] = []

    def allocate(ledger: RedisLedger, order: list[str]) -> None:
        for text in order:
            ledger.interner.to_id(INST, text)
        ledger.interner.resolve()
        got.append({text: ledger.interner.to_id(INST, text) for text in texts})

    threads = [threading.Thread(target=allocate, args=(ledger, random.sample(texts, len(texts))))
               for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 4
    assert all(ids == got[0] for ids in got)
    assert sorted(got[0].values()) == list(range(1, 201))


# --------------------------------------------------------------------------- layout


def test_expiries(client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]) -> None:
    ledger = make(retention_days=100, dedupe_days=10, person_ttl_days=40)
    ledger.inline_limit = 40
    ledger.store_codes({C1: SMALL, C2: SOLD_TWICE, C3: SMALL, C4: SMALL})  # C3, C4 share
    ledger.commit_routing({"EX-0001"}, {RK1}, set(), {SK1: MANY_CODES})
    ledger.store_persons({PK1: PERSON})
    ledger.link_hoarding({"0123456789abcdef": LINK})
    day = 86_400
    ttls: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}:*"):
        ttls[key.decode()[len(prefix) + 1:]] = client.ttl(key)
    kinds: dict[str, set[int]] = {}
    for key, ttl in ttls.items():
        kinds.setdefault(key.split(":")[0], set()).add(ttl)
    # Bucket hashes get a day to spare: their expiry is pushed once a day, not every write.
    for kind in ("c", "cx", "v", "s", "sx"):
        assert kinds[kind] and all(101 * day - 5 <= t <= 101 * day for t in kinds[kind]), kind
    for kind in ("m", "r"):
        assert kinds[kind] and all(11 * day <= t <= 21 * day + 1 for t in kinds[kind]), kind
    assert kinds["p"] and all(41 * day - 5 <= t <= 41 * day for t in kinds["p"])
    assert kinds["hl"] and all(40 * day - 5 <= t <= 40 * day for t in kinds["hl"])
    assert kinds["meta"] == kinds["vn"] == {-1}
    assert kinds["dict"] == {-1}  # dict:inst, dict:inst:rev, … never expire


def _calls(client: redis.Redis, command: str) -> int:
    """How many times Redis ran ``command`` so far (scripts' calls included)."""
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_bucket_expiry_is_pushed_by_its_first_write_of_the_day(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    ledger = make(buckets=1, retention_days=100)
    bucket = f"{prefix}:c:0"
    ledger.store_codes({C1: SMALL})
    assert client.ttl(bucket) > 100 * 86_400
    client.expire(bucket, 1000)
    expires = _calls(client, "expire")
    ledger.store_codes({C2: SMALL})  # the same bucket, the same day: not pushed again
    assert _calls(client, "expire") == expires
    assert client.ttl(bucket) <= 1000
    make(buckets=1, retention_days=100).store_codes({C3: SMALL})  # another process pushes
    assert client.ttl(bucket) > 100 * 86_400

    client.expire(bucket, 1000)
    with pytest.raises(RuntimeError), ledger.writes_in_flight():
        ledger.store_codes({C4: SMALL})
        raise RuntimeError("the round fails")  # Redis may or may not have applied it
    ledger.store_codes({C4: SMALL})  # so the repeat pushes the expiry again
    assert client.ttl(bucket) > 100 * 86_400

    # A delete pushes nothing, so it does not stand for the day's push of a later set.
    other = make(buckets=1, retention_days=100)
    client.expire(bucket, 1000)
    other.store_codes({C1: None})
    other.store_codes({C1: SMALL})
    assert client.ttl(bucket) > 100 * 86_400

    # Several writes to the bucket in one batch push it as one does; long values' overflow
    # hashes get the expiry with every write.
    client.expire(bucket, 1000)
    make(buckets=1, retention_days=100).store_codes({C2: SMALL, C3: SMALL, C4: None})
    assert client.ttl(bucket) > 100 * 86_400
    ledger.inline_limit = 40
    ledger.store_codes({C1: SOLD_TWICE, C2: SOLD_TWICE_LATER})
    assert client.ttl(f"{prefix}:cx:0") > 100 * 86_400


def test_overflow_copies_are_looked_for_only_where_a_load_saw_a_long_value(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    ledger = make(buckets=2)
    ledger.inline_limit = 40
    ledger.store_codes({C1: SOLD_TWICE, C2: SMALL})
    overflow = f"{prefix}:cx:{ledger.code_slot(C1)[0]}"
    assert client.hexists(overflow, ledger.code_slot(C1)[1])

    assert ledger.load_codes({C1, C2, C3}) == {C1: SOLD_TWICE, C2: SMALL}
    exists = _calls(client, "exists")
    ledger.store_codes({C2: replace(SMALL, last_time=SMALL.last_time + 1), C3: SMALL})
    assert _calls(client, "exists") == exists  # read back short or absent: nothing to look for
    ledger.store_codes({C1: SMALL})  # read back long: its copy is found and removed
    assert not client.hexists(overflow, ledger.code_slot(C1)[1])

    # A process that did not load the code first looks, as every write used to.
    ledger.store_codes({C1: SOLD_TWICE})
    make(buckets=2).store_codes({C1: None})
    assert not client.hexists(overflow, ledger.code_slot(C1)[1])
    assert ledger.load_codes({C1, C2, C3}) == {
        C2: replace(SMALL, last_time=SMALL.last_time + 1), C3: SMALL}


def test_markers_are_remembered_for_one_to_two_dedupe_windows(
    make: Callable[..., RedisLedger]
) -> None:
    ledger = make(dedupe_days=30)
    ledger.commit_routing({"EX-0001"}, {RK1}, set(), {})
    ledger._clock_offset += ledger.dedupe_seconds  # next slice: still remembered
    assert ledger.seen_messages({"EX-0001"}) == {"EX-0001"}
    assert ledger.seen_records({RK1}) == {RK1}
    ledger.commit_routing(set(), set(), {RK1}, {})  # removal reaches the previous slice
    assert ledger.seen_records({RK1}) == set()
    ledger._clock_offset += ledger.dedupe_seconds  # two slices on: forgotten
    assert ledger.seen_messages({"EX-0001"}) == set()


def test_markers_are_digest_runs_searched_on_digest_boundaries(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """A new prefix keeps msgid and record markers as strings of 8-byte digests: a batch
    appends, a lookup matches only a whole digest, a removal takes out every copy of it (a
    re-uploaded record is appended again) and nothing else, and a run is never left without
    an expiry."""
    ledger = make(buckets=4)  # one routing bucket: every marker in one run
    assert ledger.router_runs and ledger.aux_bits == 0
    current, _ = ledger._slice()
    msgids, records = f"{prefix}:m:{current}:0", f"{prefix}:r:{current}:0"
    ledger.commit_routing({"M1", "M2"}, {RK1, RK2}, set(), {})
    ledger.commit_routing({"M3"}, {RK1}, set(), {})  # RK1 again: a re-upload
    digest = {text: _digest_slot(text, 0)[1] for text in ("M1", "M2", "M3", "M4", RK1, RK2)}
    assert client.type(msgids) == b"string" and client.strlen(msgids) == 24
    assert sorted(client.get(records)[i:i + 8] for i in range(0, 24, 8)) == sorted(
        [digest[RK1], digest[RK1], digest[RK2]])

    # M4's digest straddling two others' is no marker of M4.
    client.append(msgids, b"\x00" * 3 + digest["M4"] + b"\x00" * 5)
    assert ledger.seen_messages({"M1", "M3", "M4", "M5"}) == {"M1", "M3"}

    ledger.commit_routing(set(), set(), {RK1}, {})
    assert ledger.seen_records({RK1, RK2}) == {RK2}
    assert client.get(records) == digest[RK2]
    assert client.ttl(records) > 0

    ledger.commit_routing(set(), set(), {RK2}, {})  # the run emptied: gone
    assert not client.exists(records)
    ledger.commit_routing(set(), {RK2}, set(), {})  # the same day: created with its expiry
    assert client.ttl(records) > ledger.dedupe_seconds
    assert make(buckets=4).seen_records({RK1, RK2}) == {RK2}


def test_a_prefix_keeps_the_routing_buckets_it_was_created_with(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """A new prefix gets a routing bucket per 2**2 code buckets (shorter runs for a recall to
    copy); one created when it was 2**4 keeps its count, and its markers where they were."""
    assert make(buckets=64).aux_bits == 4
    client.hset(f"{prefix}:meta", "aux_bits", "2")  # as a prefix from before recorded it
    older = make(buckets=64)
    assert older.aux_bits == 2
    older.commit_routing({"M1"}, {RK1}, set(), {})
    current, _ = older._slice()
    bucket, _ = _digest_slot("M1", 2)
    assert client.exists(f"{prefix}:m:{current}:{bucket}")
    assert make(buckets=64).seen_messages({"M1", "M2"}) == {"M1"}


def test_a_run_past_its_limit_spills_to_a_hash_and_is_warned_of_once(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More markers in a bucket than its search does cheaply (a ledger sized for far fewer
    messages than it gets): they move to a hash table, every marker is still found and
    removable, and the operator is told, once, that the routing buckets are too few."""
    ledger = make(buckets=4)  # one routing bucket
    current, _ = ledger._slice()
    run, spill = f"{prefix}:m:{current}:0", f"{prefix}:m:{current}:0:h"
    records = f"{prefix}:r:{current}:0"
    first = [f"M{n}" for n in range(RUN_LIMIT_MARKERS + 100)]
    old_records = [record_key("P51010400011", "3505", f"S{n}") for n in range(len(first))]
    half = len(first) // 2
    ledger.commit_routing(set(first[:half]), set(old_records[:half]), set(), {})
    assert client.strlen(run) == 8 * half and not client.exists(spill)
    assert ledger.warnings == []
    ledger.commit_routing(set(first[half:]), set(old_records[half:]), set(), {})
    assert client.get(run) == b"\0" and client.hlen(spill) == len(first)
    assert client.ttl(spill) > ledger.dedupe_seconds

    later = ["L1", "L2"]
    new_record = record_key("P51010400011", "3505", "NEW")
    ledger.commit_routing(set(later), {new_record}, set(), {})
    assert client.strlen(run) == 1 + 16
    # A digest straddling two in a spilled run (its digests start after the sentinel) is no
    # marker.
    client.append(run, b"\1" * 7 + _digest_slot("M-ABSENT", 0)[1] + b"\1")
    with caplog.at_level(logging.WARNING):
        assert ledger.seen_messages({"M0", first[-1], "L2", "M-ABSENT", "L3"}) == {
            "M0", first[-1], "L2"}
        assert ledger.seen_records({old_records[0], new_record}) == {old_records[0],
                                                                       new_record}
    assert len(ledger.warnings) == 2  # once for msgids, once for records
    assert ledger.warnings[0].startswith(
        f"msgid markers: dedupe buckets of prefix {prefix!r} hold more than 4,096")
    assert "start a new prefix sized for more codes" in ledger.warnings[0]
    assert caplog.text.count("dedupe buckets of prefix") == 2

    # Removals reach the spill hash and the run alike.
    ledger.commit_routing(set(), set(), {old_records[0], new_record}, {})
    assert ledger.seen_records({old_records[0], old_records[1], new_record}) == {
        old_records[1]}
    assert client.get(records) == b"\0"
    assert make(buckets=4).seen_messages({"M1", "L1"}) == {"M1", "L1"}
    assert ledger.seen_messages({"M1"}) == {"M1"} and len(ledger.warnings) == 2


def test_the_run_limit_is_the_scripts_own() -> None:
    """Python's figure for the warning and the scripts' limit are one number."""
    lua = resources.files("streams").joinpath("ledger_overflow.lua").read_text()
    limit = re.search(r"^local RUN_LIMIT = (\d+)$", lua, re.MULTILINE)
    assert limit is not None and int(limit.group(1)) == 8 * RUN_LIMIT_MARKERS


def test_buckets_stay_listpack_and_long_values_overflow(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    ledger = make(buckets=2)
    states: dict[str, CodeState | None] = {
        f"8385793{n:013d}": typical_state(n) for n in range(300)}
    states[C3] = replace(SOLD_TWICE, sales=SOLD_TWICE.sales * 10)
    ledger.store_codes(states)
    for bucket in (0, 1):
        assert client.object("encoding", f"{prefix}:c:{bucket}") == b"listpack"
    bucket, field = ledger.code_slot(C3)
    packed = pack_code_state(states[C3], ledger.interner)  # type: ignore[arg-type]
    pieces = -(-len(packed) // ledger.inline_limit)
    assert pieces >= 3 and client.hget(f"{prefix}:c:{bucket}", field) == bytes([pieces])
    assert client.hlen(f"{prefix}:cx:{bucket}") == pieces  # in pieces: a listpack too
    assert client.object("encoding", f"{prefix}:cx:{bucket}") == b"listpack"
    assert b"".join(client.hmget(f"{prefix}:cx:{bucket}", [field] + [
        bytes([255, k]) + field for k in range(2, pieces + 1)])) == packed
    stats = ledger.stats()
    assert stats["codes"] == 301
    assert stats["encodings"] == {"listpack": 2}
    assert 30 < stats["bytes_per_code"] < 60
    assert ledger.load_codes(set(states)) == states
    ledger.store_codes({C3: SMALL})  # short again: the overflow copy goes
    assert not client.exists(f"{prefix}:cx:{bucket}")
    ledger.store_codes({C3: SOLD_TWICE})
    ledger.store_codes({C3: None})  # deleted: both go
    assert not client.exists(f"{prefix}:cx:{bucket}")
    assert client.hget(f"{prefix}:c:{bucket}", ledger.code_slot(C3)[1]) is None


def test_long_values_kept_whole_by_layout_3_read_and_are_replaced_by_pieces(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """Layout 3 kept a long value whole in the overflow hash, under an empty marker (a
    code's and a shared state's): read as it is; written again or deleted, nothing of it is
    left over."""
    ledger = make(buckets=1)
    states: dict[str, CodeState | None] = {C1: SOLD_TWICE, C2: SOLD_TWICE, C3: SOLD_TWICE_LATER,
                                           C4: SOLD_TWICE_LATER}
    ledger.store_codes({C1: SOLD_TWICE, C2: SOLD_TWICE, C3: SOLD_TWICE_LATER})
    ledger.store_codes({C4: SOLD_TWICE_LATER})  # a lone code: its own entry
    whole_overflow(client, f"{prefix}:v:0", f"{prefix}:vx:0", b"0")  # C1 and C2's
    for code in (C3, C4):
        whole_overflow(client, f"{prefix}:c:0", f"{prefix}:cx:0", ledger.code_slot(code)[1])
    ledger = make(buckets=1)
    assert ledger.load_codes(set(states)) == states
    ledger.store_codes({C3: SOLD_TWICE, C4: None})
    assert make(buckets=1).load_codes(set(states)) == {C1: SOLD_TWICE, C2: SOLD_TWICE,
                                                       C3: SOLD_TWICE}
    marker, pieces = overflow_pieces(ledger.code_slot(C3)[1],
                                     pack_code_state(SOLD_TWICE, ledger.interner),
                                     ledger.inline_limit)
    assert client.hget(f"{prefix}:c:0", ledger.code_slot(C3)[1]) == marker
    assert client.hgetall(f"{prefix}:cx:0") == pieces  # C3's old value and C4's are gone
    assert client.object("encoding", f"{prefix}:cx:0") == b"listpack"


def long_person() -> PersonState:
    return next(state for state in map(random_person_state, map(random.Random, range(50)))
                if len(state.purchases) >= 3)


def test_long_person_states_overflow_whole_and_sales_in_pieces(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """Layout 5 gives persons as many buckets as codes (so that a bucket stays a listpack).
    Most person states are long: one goes to the overflow hash whole, under an empty marker
    (in pieces they took as much memory for more of Redis's time); the sale index's long
    values go in pieces, as the codes' do."""
    ledger = make(buckets=64)
    assert (ledger.person_bits, ledger.aux_bits) == (6, 4)
    ledger.inline_limit = 16
    person = long_person()
    ledger.store_persons({PK2: person})
    bucket, field = _digest_slot(PK2, ledger.person_bits)
    assert client.hget(f"{prefix}:p:{bucket}", field) == b""
    assert client.hgetall(f"{prefix}:px:{bucket}") == {
        field: codec.pack_person_state(person, ledger.interner)}
    assert make(buckets=64).load_persons({PK2}) == {PK2: person}
    ledger.store_persons({PK2: None})
    assert not client.exists(f"{prefix}:p:{bucket}", f"{prefix}:px:{bucket}")
    boxes = MANY_CODES[:6]
    pipeline = Pipeline(ledger, factory.CONFIG)
    pipeline.process([(0, parse(factory.sale(boxes), factory.PSN_KEY))])
    markers = [value for key in client.scan_iter(match=f"{prefix}:s:*")
               for value in client.hvals(key)]
    assert markers and all(len(value) == 1 and value[0] >= 2 for value in markers)
    assert make(buckets=64).load_codes(set(boxes)).keys() == set(boxes)


def test_one_batch_moves_values_between_bucket_and_overflow(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """Sets, deletes, long and short values of one bucket in one batch, each way round."""
    ledger = make(buckets=1)
    long = SOLD_TWICE
    codes = [f"8385793{n:013d}" for n in range(8)]
    first: dict[str, CodeState | None] = {
        codes[0]: long, codes[1]: SMALL, codes[2]: long, codes[3]: SMALL, codes[4]: long}
    second: dict[str, CodeState | None] = {
        codes[0]: SMALL,  # long → short: the overflow copy goes
        codes[1]: long,  # short → long
        codes[2]: None,  # long deleted: both go
        codes[3]: None,
        codes[5]: SOLD_TWICE_LATER,  # new, long (not alike codes[1]'s: not shared)
        codes[6]: SMALL,
        codes[7]: None,  # absent, deleted
    }
    memory = MemoryLedger()
    for batch in (first, second):
        ledger.store_codes(batch)
        memory.store_codes(batch)
        assert ledger.load_codes(set(codes)) == memory.load_codes(set(codes))
    bucket = f"{prefix}:c:0"
    overflow = {ledger.code_slot(code)[1] for code in (codes[1], codes[4], codes[5])}
    markers = {name: value for name, value in client.hgetall(bucket).items() if len(value) == 1}
    pieces = -(-len(pack_code_state(long, MemoryInterner())) // ledger.inline_limit)
    assert set(markers) == overflow and set(markers.values()) == {bytes([pieces])}
    assert set(client.hkeys(f"{prefix}:cx:0")) == overflow | {  # nothing left over
        bytes([255, k]) + name for name in overflow for k in range(2, pieces + 1)}
    assert client.hlen(bucket) == 5
    assert client.object("encoding", bucket) == b"listpack"


def test_batches_larger_than_one_lua_unpack_per_bucket(make: Callable[..., RedisLedger]) -> None:
    """One bucket hash getting thousands of fields in one call (the scripts split their
    HMGET/HSET/HDEL calls), long values among them, and as many router keys."""
    rng = random.Random(4)
    ledger, memory = make(buckets=1), MemoryLedger()  # one code bucket, one router bucket
    ledger.inline_limit = 40
    codes = [f"8385793{n:013d}" for n in range(9000)]
    states = [typical_state(n) for n in range(50)] + [SOLD_TWICE]
    batch: dict[str, CodeState | None] = {code: rng.choice(states) for code in codes}
    for round_ in range(2):
        ledger.store_codes(batch)
        memory.store_codes(batch)
        assert ledger.load_codes(set(codes)) == memory.load_codes(set(codes)), round_
        batch = {code: None if rng.random() < 0.3 else rng.choice(states) for code in codes}
    msgids = {f"M{n}" for n in range(9000)}
    records = {record_key("P51010400011", "3505", f"S{n}") for n in range(4500)}
    for one in (ledger, memory):
        one.commit_routing(msgids, records, set(), {})
        one.commit_routing(set(), set(), set(list(records)[:100]), {})
    asked = msgids | {f"M{n}" for n in range(9000, 10_000)}
    assert ledger.seen_messages(asked) == memory.seen_messages(asked) == msgids
    asked = records | {record_key("P51010400011", "3505", "S-1")}
    assert ledger.seen_records(asked) == memory.seen_records(asked)


def test_layout_is_recorded_and_kept(make: Callable[..., RedisLedger]) -> None:
    first = make(buckets=64)
    assert make(buckets=None).code_bits == first.code_bits == 6
    with pytest.raises(LedgerError, match="already uses 64 code buckets"):
        make(buckets=128)
    with pytest.raises(ValueError, match="power of two"):
        make(buckets=100)


def test_a_prefix_older_than_layout_5_keeps_its_person_buckets(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """A prefix created before layout 5 has its persons in the 16 times fewer routing buckets:
    there they stay, read, written and swept."""
    meta = f"{prefix}:meta"
    make(buckets=64)
    client.hdel(meta, "person_bits")  # the meta as layout 4 wrote it
    client.hset(meta, "layout", "4")
    client.hset(meta, "aux_bits", "2")  # 16 times fewer routing buckets then
    ledger = make(buckets=64)
    assert ledger.person_bits == 2
    assert client.hget(meta, "layout") == b"6" and not client.hexists(meta, "person_bits")
    ledger.inline_limit = 16
    person = long_person()
    ledger.store_persons({PK2: person})
    bucket, field = _digest_slot(PK2, 2)
    assert client.hget(f"{prefix}:p:{bucket}", field) == b""
    assert client.hgetall(f"{prefix}:px:{bucket}") == {
        field: codec.pack_person_state(person, ledger.interner)}
    assert make(buckets=64).load_persons({PK2}) == {PK2: person}
    stale = person.purchases[-1].time + 500 * 86_400
    assert ledger.sweep(stale).persons.removed == 1
    assert make(buckets=64).load_persons({PK2}) == {}


@pytest.mark.parametrize(("older", "fields"),
                         [("1", None), ("2", None), ("3", b"packed"), ("4", b"narrow"),
                          ("5", b"interned")])
def test_an_older_layout_is_upgraded_in_place(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger], older: str,
    fields: bytes | None,
) -> None:
    """Layouts 2 to 6 only add forms older ones never wrote (shared states, dated record
    numbers, first drugs by index, pieces): an older ledger is read as it is, and recorded as
    layout 6 so that an older tracewatch refuses what it could not read. Packed, narrow and
    interned code fields, person buckets of their own and digest runs for the router memory
    are for new prefixes only: an older ledger keeps the fields, buckets and hashes its codes,
    persons and markers were written under."""
    meta = f"{prefix}:meta"
    assert make().interned_fields and client.hget(meta, "code_fields") == b"interned"
    assert client.hget(meta, "router") == b"runs"
    # the meta as an older tracewatch wrote it
    client.hdel(meta, "code_fields", "person_bits", "router")
    if fields is not None:
        client.hset(meta, "code_fields", fields)
    if older == "5":
        client.hset(meta, "person_bits", "6")
    client.hset(meta, "layout", older)
    written = make()
    assert written.narrow_fields == (fields in (b"narrow", b"interned"))
    assert client.hget(meta, "layout") == b"6"
    assert written.person_bits == (6 if older == "5" else written.aux_bits)
    assert not written.router_runs
    written.store_codes({C1: SMALL, C3: SOLD_TWICE, C4: SOLD_TWICE_LATER})
    written.commit_routing({"EX-0001"}, {RK1, RK2}, set(), {})
    written.commit_routing(set(), set(), {RK2}, {})
    ledger = make()
    assert ledger.narrow_fields == (fields in (b"narrow", b"interned"))
    assert client.hget(meta, "code_fields") == fields
    assert ledger.packed_fields == (fields is not None)
    if fields not in (b"narrow", b"interned"):
        assert ledger.code_slot(C1) == code_slot(C1, ledger.code_bits)  # 7 bytes, not narrow
    if fields is None:
        assert ledger.code_slot(C4)[1] == b"\x80" + C4.encode()  # not packed
    assert ledger.load_codes({C1, C3, C4}) == {C1: SMALL, C3: SOLD_TWICE, C4: SOLD_TWICE_LATER}
    assert ledger.recall_routing({"EX-0001", "EX-0002"}, {RK1, RK2, RK3}, ()) == (
        {"EX-0001"}, {RK1}, {})
    markers = {client.type(key) for key in client.scan_iter(match=f"{prefix}:[mr]:*")}
    assert markers == {b"hash"}
    client.hset(meta, "layout", "7")
    with pytest.raises(LedgerError, match="records layout '7', this tracewatch writes layout '6'"):
        make()


def test_a_new_ledger_keeps_trailing_digits_of_codes_as_numbers(
    client: CountingRedis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """A new prefix packs the fields of codes that end in digits (4 to 7 bytes fewer), keeps
    a 20-digit code in a narrow field (a byte fewer from 65,536 buckets), and a GS1 code's
    GTIN by its id in the ledger's GTIN dictionary (6 bytes → 1 here)."""
    ledger = make()
    ledger.store_codes({C1: SMALL, C3: SMALL, C4: SOLD_TWICE})
    gtin = C3[4:18]
    gtins = {ledger.interner.to_id("gtin", gtin): gtin}
    assert list(gtins) == [1] and client.hget(f"{prefix}:dict:gtin", gtin) == b"1"
    for code, tag, before in ((C3, 0x86, packed_code_slot), (C4, 0x84, code_slot)):
        bucket, field = ledger.code_slot(code)
        assert field[0] == tag and len(field) < len(before(code, ledger.code_bits)[1])
        assert bucket == code_slot(code, ledger.code_bits)[0]
        assert code_of_slot(bucket, field, ledger.code_bits, True, gtins) == code
        assert client.hexists(f"{prefix}:c:{bucket}", field)
    assert len(ledger.code_slot(C3)[1]) == len(packed_code_slot(C3, ledger.code_bits)[1]) - 5
    with pytest.raises(CodecError, match="GTIN dictionary"):
        code_of_slot(*ledger.code_slot(C3), ledger.code_bits, True)
    bucket, field = ledger.code_slot(C1)
    assert len(field) == narrow_field_size(ledger.code_bits)
    assert code_of_slot(bucket, field, ledger.code_bits, True) == C1
    assert client.hexists(f"{prefix}:c:{bucket}", field)
    assert make().load_codes({C1, C3, C4}) == {C1: SMALL, C3: SMALL, C4: SOLD_TWICE}


def test_decoding_client_is_refused(redis_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        RedisLedger(redis.Redis.from_url(redis_url, decode_responses=True), prefix=prefix)


def test_warns_when_buckets_would_outgrow_listpack(make: Callable[..., RedisLedger]) -> None:
    assert not [w for w in make().warnings if "listpack" in w]
    crowded = make(expected_codes=100_000)  # 16 buckets of 6250 codes
    assert any("hash-max-listpack-entries" in w for w in crowded.warnings)
    empty = crowded.stats()
    assert (empty["codes"], empty["bytes_per_code"]) == (0, None)


def test_advises_the_stacks_listpack_value(redis_server: Callable[..., Any],
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Redis's default hash-max-listpack-value (64) works, with a note that the stack's 128
    keeps the ledger smaller; at 128 there is nothing to say."""
    client = redis.Redis.from_url(redis_server().url)
    with caplog.at_level(logging.INFO, logger="streams.redis_ledger"):
        default = RedisLedger(client, prefix="tw", buckets=16)
    advice = [r.getMessage() for r in caplog.records
              if "hash-max-listpack-value" in r.getMessage()]
    assert default.inline_limit == 64 and not default.warnings
    assert len(advice) == 1 and "is 64" in advice[0] and "128" in advice[0]
    caplog.clear()
    client.config_set("hash-max-listpack-value", 128)
    with caplog.at_level(logging.INFO, logger="streams.redis_ledger"):
        RedisLedger(client, prefix="tw", buckets=16)
    assert not [r for r in caplog.records if "hash-max-listpack-value" in r.getMessage()]
    client.close()


def test_unreachable_redis_is_a_clear_error() -> None:
    with pytest.raises(LedgerError) as error:
        RedisLedger.from_url("redis://user:secret@127.0.0.1:1/0")
    text = str(error.value)
    assert "cannot reach Redis at URL: redis://user:***@127.0.0.1:1/0" in text
    assert "TRACEWATCH_REDIS_URL" in text and "secret" not in text


def test_script_calls_carry_keys_and_arguments_of_any_bytes(client: CountingRedis) -> None:
    """The load and store scripts get their keys and arguments as one MessagePack argument
    (ledger_args.lua): every byte value, empty arguments, long ones and many of them arrive
    as sent, in order, and as strings (Redis's cmsgpack has no bin type)."""
    echo = client.register_script(
        resources.files("streams").joinpath("ledger_args.lua").read_text()
        + "return {#KEYS, #ARGV, KEYS[1], KEYS[#KEYS], ARGV[1], ARGV[2], ARGV[3],"
          " type(ARGV[4]), table.concat(ARGV, '', 5)}")
    channel = _ScriptChannel(client, [echo])
    keys = [f"tw:c:{number}" for number in range(70_000)]
    every_byte, long = bytes(range(256)), b"\x00\xc4\xd9" * 30_000
    many = [number.to_bytes(3, "little") for number in range(70_000)]
    reply = channel.call(echo, keys, [every_byte, b"", long, "text", *many])
    assert reply == [70_000, 70_004, b"tw:c:0", b"tw:c:69999", every_byte, b"", long,
                     b"string", b"".join(many)]


def test_scripts_lost_by_redis_are_loaded_again(redis_server: Callable[..., Any]) -> None:
    """A restarted Redis (or SCRIPT FLUSH) forgets the Lua scripts: calls load them again."""
    client = redis.Redis.from_url(redis_server().url)
    ledger = RedisLedger(client, prefix="tw", buckets=16)
    ledger.store_codes({C1: SMALL})
    elsewhere = replace(SMALL, sales=(replace(SMALL.sales[0], fixmedins_code="P99999900001"),))
    client.script_flush()
    ledger.store_codes({C2: elsewhere})  # a new institution: the intern script runs too
    client.script_flush()
    assert ledger.load_codes({C1, C2, C3}) == {C1: SMALL, C2: elsewhere}
    client.close()


def test_the_deployed_listpack_value_keeps_two_sales_compact(
    redis_server: Callable[..., Any]
) -> None:
    """docker-compose.yml runs Redis with hash-max-listpack-value 128: the ledger reads it, and
    a code with three standing sales (68 bytes; the default 64 sends it to the overflow hash),
    and the boxes of a sale whose state is that long, stay compact."""
    client = redis.Redis.from_url(redis_server().url)
    client.config_set("hash-max-listpack-value", 128)
    ledger = RedisLedger(client, prefix="tw", buckets=1)
    sold_thrice = replace(SMALL, sales=(*SMALL.sales, *typical_state(2).sales,
                                        *typical_state(3).sales))
    assert 64 < len(pack_code_state(sold_thrice, MemoryInterner())) <= 128 == ledger.inline_limit
    ledger.store_codes({C1: sold_thrice, C2: SMALL, **dict.fromkeys(MANY_CODES[:3], sold_thrice)})
    assert not list(client.scan_iter(match="tw:cx:*"))
    assert client.object("encoding", "tw:c:0") == client.object("encoding", "tw:v:0") == b"listpack"
    assert RedisLedger(client, prefix="tw", buckets=1).load_codes({C1, C2, *MANY_CODES}) == {
        C1: sold_thrice, C2: SMALL, **dict.fromkeys(MANY_CODES[:3], sold_thrice)}
    client.close()


def test_a_throw_away_prefix_is_removed_whole(
    make: Callable[..., RedisLedger], client: CountingRedis, prefix: str, redis_url: str
) -> None:
    from streams.demo import _leave_ledger
    from streams.redis_ledger import remove_prefix

    ledger = make(buckets=4096)
    ledger.store_codes({random_code(random.Random(n)): typical_state() for n in range(2500)})
    client.set(f"{prefix}x:kept", b"another prefix")  # shares the first letters only
    ours = list(client.scan_iter(match=f"{prefix}:*"))
    assert len(ours) > 1000  # more than one UNLINK's worth of keys

    _leave_ledger(redis_url, prefix, keep=True)  # the demo's --keep-ledger
    assert len(list(client.scan_iter(match=f"{prefix}:*"))) == len(ours)
    _leave_ledger(redis_url, prefix, keep=False)
    assert list(client.scan_iter(match=f"{prefix}:*")) == []
    assert client.get(f"{prefix}x:kept") == b"another prefix"
    assert remove_prefix(client, prefix) == 0
