"""The retention sweep of the Redis ledger (``RedisLedger.sweep`` and ``tracewatch sweep``),
against a real Redis (the shared ``redis_url`` fixture, a fresh key prefix per test).
Skipped when Redis does not answer, unless CI is set."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import pytest
import redis

from detectors.hoarding import PersonState, Purchase
from detectors.messages import parse_time
from detectors.model import DAY_SECONDS, CodeState
from streams.cli import main
from streams.codec import binary_shared_ref, pack_code_state, pack_codes, shared_serial
from streams.redis_ledger import RedisLedger, _digest_slot
from tests.test_codec import typical_state

pytestmark = pytest.mark.integration

NOW = parse_time("2026-11-23 12:00:00", "now")
BIG = replace(typical_state(1), sales=typical_state(1).sales * 6)  # longer than 40 bytes


def aged(days: float, state: CodeState | None = None) -> CodeState:
    """A code state whose last event was ``days`` before NOW."""
    return replace(state or typical_state(1), last_time=NOW - int(days * DAY_SECONDS))


def person(days: float) -> PersonState:
    """A hoarding state whose latest purchase was ``days`` before NOW."""
    moment = NOW - int(days * DAY_SECONDS)
    sale = typical_state(2).sales[0]
    purchase = Purchase("83857930000000000001", sale.fixmedins_code, sale.mdtrtarea_admvs,
                        sale.bchno, sale.msgid, moment, 12.5)
    return PersonState(purchases=(purchase, replace(purchase, time=moment - DAY_SECONDS)))


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of this test's database (flushed by ``redis_url`` afterwards)."""
    connection = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    yield connection
    connection.close()


@pytest.fixture
def prefix() -> str:
    return f"twsweep-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(client: redis.Redis, prefix: str) -> Callable[..., RedisLedger]:
    def build(**kw: object) -> RedisLedger:
        kw.setdefault("buckets", 4)
        kw.setdefault("retention_days", 100)
        kw.setdefault("person_ttl_days", 40)
        ledger = RedisLedger(client, prefix=prefix, **kw)  # type: ignore[arg-type]
        ledger.inline_limit = 40  # BIG goes to the overflow hashes
        return ledger
    return build


def code(n: int) -> str:
    return f"8385793{n:013d}"


# retention 100 days + 1 day of grace: kept up to 101 days old
FRESH = {code(1): aged(0), code(2): aged(100), code(3): aged(101), code(4): aged(3, BIG),
         "ENTERPRISE-CODE-0001": aged(50)}
STALE = {code(11): aged(101.01), code(12): aged(102), code(13): aged(3000),
         code(14): aged(400, BIG), "(01)06901234567892(21)ABC123": aged(200),
         code(15): replace(typical_state(1), last_time=1_000_000_000)}  # before 2020: varint


def test_stale_codes_go_fresh_codes_stay(
    client: redis.Redis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({**FRESH, **STALE})
    big_bucket = ledger.code_slot(code(14))[0]
    assert client.hlen(f"{prefix}:cx:{big_bucket}") >= 1

    result = ledger.sweep(NOW)

    assert ledger.load_codes({*FRESH, *STALE}) == FRESH
    assert (result.codes.entries, result.codes.removed, result.codes.unreadable) == (
        len(FRESH) + len(STALE), len(STALE), 0)
    assert result.codes.cutoff == NOW - 101 * DAY_SECONDS
    assert result.codes.bytes_before > result.codes.bytes_after > 0
    assert result.removed == len(STALE) and not result.dry_run
    assert client.hget(f"{prefix}:cx:{big_bucket}", ledger.code_slot(code(14))[1]) is None
    assert client.hget(f"{prefix}:cx:{ledger.code_slot(code(4))[0]}",
                       ledger.code_slot(code(4))[1]) is not None
    for bucket in {ledger.code_slot(fresh)[0] for fresh in FRESH}:  # buckets left
        assert client.object("encoding", f"{prefix}:c:{bucket}") == b"listpack"
        assert client.ttl(f"{prefix}:c:{bucket}") > 99 * DAY_SECONDS  # expiry untouched
    again = ledger.sweep(NOW)
    assert (again.codes.entries, again.codes.removed) == (len(FRESH), 0)
    assert again.codes.bytes_before == again.codes.bytes_after == 0


def test_dry_run_counts_and_removes_nothing(
    client: redis.Redis, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({**FRESH, **STALE})
    ledger.store_persons({"a": person(10), "b": person(42)})
    dump = {key: client.dump(key) for key in client.scan_iter()}

    dry = ledger.sweep(NOW, dry_run=True)

    assert {key: client.dump(key) for key in client.scan_iter()} == dump
    assert dry.dry_run and (dry.codes.removed, dry.persons.removed) == (len(STALE), 1)
    assert dry.codes.bytes_before == dry.codes.bytes_after and dry.codes.freed == 0
    real = ledger.sweep(NOW)
    assert (real.codes.removed, real.persons.removed) == (len(STALE), 1)


def test_codes_that_share_a_long_state_are_judged_by_it(
    client: redis.Redis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """A shared state too long for its bucket lives in the bucket's overflow hash: its boxes
    are judged by it, and a stale one leaves both hashes."""
    ledger = make()
    ledger.inline_limit = 8  # every state is long
    fresh = {code(n): aged(1) for n in range(1, 4)}
    stale = {code(n): aged(300) for n in range(11, 15)}
    ledger.store_codes({**fresh, **stale})
    marker, pieces = overflow_pieces(b"0", pack_code_state(aged(1), ledger.interner), 8)
    assert client.hgetall(f"{prefix}:v:0") == {b"0": marker, b"1": marker}
    assert client.hlen(f"{prefix}:vx:0") == 2 * len(pieces) > 2

    result = ledger.sweep(NOW)

    assert (result.codes.entries, result.codes.removed) == (7, 4)
    assert (result.shared.entries, result.shared.removed) == (2, 1)
    assert client.hkeys(f"{prefix}:v:0") == [b"0"]
    assert client.hgetall(f"{prefix}:vx:0") == pieces
    assert ledger.load_codes({*fresh, *stale}) == fresh


def test_long_values_kept_whole_by_layout_3_are_judged_and_removed(
    client: redis.Redis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    """Layout 3 kept a long value whole in the overflow hash, under an empty marker: the
    sweep reads such values as it does pieces, and removes a stale one."""
    ledger = make()
    ledger.store_codes({**FRESH, **STALE})
    for big_code in (code(4), code(14)):
        bucket, field = ledger.code_slot(big_code)
        whole_overflow(client, f"{prefix}:c:{bucket}", f"{prefix}:cx:{bucket}", field)

    result = ledger.sweep(NOW)

    assert (result.codes.entries, result.codes.removed, result.codes.unreadable) == (
        len(FRESH) + len(STALE), len(STALE), 0)
    assert ledger.load_codes({*FRESH, *STALE}) == FRESH
    bucket, field = ledger.code_slot(code(14))
    assert client.hget(f"{prefix}:cx:{bucket}", field) is None
    bucket, field = ledger.code_slot(code(4))
    assert client.hget(f"{prefix}:cx:{bucket}", field) == pack_code_state(FRESH[code(4)],
                                                                          ledger.interner)


def test_a_stale_code_written_again_survives(make: Callable[..., RedisLedger]) -> None:
    ledger = make()
    ledger.store_codes({code(1): aged(500), code(2): aged(500)})
    assert ledger.sweep(NOW, dry_run=True).codes.removed == 2
    ledger.store_codes({code(1): aged(0)})  # a new event on the code before the sweep

    result = ledger.sweep(NOW)

    assert result.codes.removed == 1
    assert ledger.load_codes({code(1), code(2)}) == {code(1): aged(0)}


def overflow_pieces(field: bytes, value: bytes, limit: int) -> tuple[bytes, dict[bytes, bytes]]:
    """The bucket's marker and the overflow hash's entries of a long value, as layout 4
    writes them (streams/ledger_overflow.lua): pieces of ``limit`` bytes, the first under the
    field, piece k under byte 255, byte k and the field."""
    count = -(-len(value) // limit)
    names = [field] + [bytes([255, k]) + field for k in range(2, count + 1)]
    return bytes([count]), {name: value[i * limit:(i + 1) * limit]
                            for i, name in enumerate(names)}


def whole_overflow(client: redis.Redis, bucket: str, overflow: str, field: bytes) -> bytes:
    """Rewrite a long value in pieces as layout 3 kept it: whole in the overflow hash under
    the field, an empty marker in the bucket. Returns the value."""
    marker = client.hget(bucket, field)
    assert marker is not None and len(marker) == 1
    names = [field] + [bytes([255, k]) + field for k in range(2, marker[0] + 1)]
    value = b"".join(client.hmget(overflow, names))
    client.hdel(overflow, *names)
    client.hset(overflow, field, value)
    client.hset(bucket, field, b"")
    return value


def binary_references(client: redis.Redis, prefix: str, ledger: RedisLedger,
                      codes: Iterable[str]) -> None:
    """Rewrite the codes' references in layout 2's binary form (0x10 and the serial)."""
    for box in codes:
        bucket, field = ledger.code_slot(box)
        serial = shared_serial(client.hget(f"{prefix}:c:{bucket}", field) or b"")
        assert serial is not None
        client.hset(f"{prefix}:c:{bucket}", field, binary_shared_ref(serial))


@pytest.mark.parametrize("form", ["decimal", "binary"])
def test_codes_that_share_a_state_are_judged_by_it(
    client: redis.Redis, prefix: str, make: Callable[..., RedisLedger], form: str
) -> None:
    """The boxes of one sale refer to one shared state: they go when it is stale, stay when it
    is fresh, and go when it has expired (their references would read as nothing). A stale
    shared state goes too, in the same run (a replayed old log leaves such states behind).
    References of either form (layout 3 writes decimal ones, layout 2 wrote binary) alike."""
    ledger = make()
    fresh = {code(n): aged(1) for n in range(1, 4)}
    stale = {code(n): aged(300) for n in range(11, 15)}
    ledger.store_codes({**fresh, **stale})
    if form == "binary":
        binary_references(client, prefix, ledger, [*fresh, *stale])
    assert client.hlen(f"{prefix}:v:0") == 2
    assert ledger.sweep(NOW, dry_run=True).shared.removed == 1

    result = ledger.sweep(NOW)

    assert (result.codes.entries, result.codes.removed) == (7, 4)
    assert (result.shared.buckets, result.shared.present, result.shared.entries,
            result.shared.removed) == (256, 1, 2, 1)
    assert result.shared.bytes_before > result.shared.bytes_after > 0
    assert client.hlen(f"{prefix}:v:0") == 1
    assert ledger.load_codes({*fresh, *stale}) == fresh
    client.delete(f"{prefix}:v:0")
    assert ledger.sweep(NOW, dry_run=True).codes.removed == 3
    assert ledger.sweep(NOW).codes.removed == 3
    assert ledger.sweep(NOW).codes.entries == 0


def test_now_and_grace_move_the_cutoff(make: Callable[..., RedisLedger]) -> None:
    ledger = make()
    ledger.store_codes({code(1): aged(100.5)})
    assert ledger.sweep(NOW, dry_run=True).codes.removed == 0  # inside the day of grace
    assert ledger.sweep(NOW, grace_days=0, dry_run=True).codes.removed == 1
    assert ledger.sweep(NOW + DAY_SECONDS, dry_run=True).codes.removed == 1
    later = ledger.sweep()  # default now: Redis's clock, after 2026-11-23 12:00 + 100 days
    assert later.now >= NOW
    assert later.codes.removed == (1 if later.now - NOW > DAY_SECONDS // 2 else 0)


def test_stale_person_states_go(make: Callable[..., RedisLedger]) -> None:
    ledger = make()
    fresh = {"psn-a\x1fX1": person(0), "psn-b\x1fX1": person(41)}
    stale = {"psn-c\x1fX1": person(41.5), "psn-d\x1fX1": person(365),
             "psn-e\x1fX1": replace(person(900), last_alert_time=NOW - 900 * DAY_SECONDS)}
    ledger.store_persons({**fresh, **stale})

    result = ledger.sweep(NOW)

    assert ledger.load_persons({*fresh, *stale}) == fresh
    assert (result.persons.entries, result.persons.removed) == (5, 3)
    assert result.persons.cutoff == NOW - 41 * DAY_SECONDS


def test_a_recent_alert_keeps_a_person_state(make: Callable[..., RedisLedger]) -> None:
    ledger = make()
    state = replace(person(300), last_alert_time=NOW - 5 * DAY_SECONDS)
    ledger.store_persons({"psn\x1fX1": state})
    assert ledger.sweep(NOW).persons.removed == 0
    assert ledger.load_persons({"psn\x1fX1"}) == {"psn\x1fX1": state}


def test_router_memory_is_left_to_its_expiry(make: Callable[..., RedisLedger]) -> None:
    ledger = make()
    ledger.commit_routing({"EX-1"}, {"rec-1"}, set(), {"sale-1": (code(11),)})
    ledger.store_codes({code(11): aged(1000)})
    ledger.sweep(ledger.business_now())
    assert ledger.seen_messages({"EX-1"}) == {"EX-1"}
    assert ledger.seen_records({"rec-1"}) == {"rec-1"}
    assert ledger.sale_codes({"sale-1"}) == {"sale-1": (code(11),)}


def test_sale_index_entries_go_a_retention_after_their_last_write(
    client: redis.Redis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    many = tuple(code(n) for n in range(100, 112))  # longer than 40 bytes: overflow
    ledger._clock_offset -= 150 * DAY_SECONDS  # written 150 days ago, by Redis's clock
    ledger.commit_routing(set(), set(), set(), {
        "old": (code(1),), "old-long": many, "again": (code(2),), "old-empty": ()})
    ledger._clock_offset += 150 * DAY_SECONDS
    ledger.commit_routing(set(), set(), set(), {
        "new": (code(3), "ENTERPRISE-CODE-0001"), "again": (code(2), code(4))})
    bucket, field = _digest_slot("legacy", ledger.sale_bits)
    client.hset(f"{prefix}:s:{bucket}", field, pack_codes((code(5),)))  # no day stamp
    keys = {"old", "old-long", "again", "old-empty", "new", "legacy"}

    dry = ledger.sweep(dry_run=True)
    assert (dry.sales.entries, dry.sales.removed, dry.sales.unreadable) == (6, 3, 1)
    assert len(ledger.sale_codes(keys)) == 6
    result = ledger.sweep()

    assert result.sales.removed == 3
    assert ledger.sale_codes(keys) == {"new": (code(3), "ENTERPRISE-CODE-0001"),
                                       "again": (code(2), code(4)), "legacy": (code(5),)}
    assert not any(client.hlen(key) for key in client.scan_iter(match=f"{prefix}:sx:*"))
    for key in client.scan_iter(match=f"{prefix}:s:*"):
        assert client.object("encoding", key) == b"listpack"
    # day stamps: kept while any of its day is within retention + grace
    assert ledger.sweep(ledger.business_now() + 50 * DAY_SECONDS).sales.removed == 0
    assert ledger.sweep(ledger.business_now() + 103 * DAY_SECONDS).sales.removed == 2


def test_unreadable_values_are_counted_and_kept(
    client: redis.Redis, prefix: str, make: Callable[..., RedisLedger]
) -> None:
    ledger = make()
    ledger.store_codes({code(1): aged(500)})
    bucket, _ = ledger.code_slot(code(1))
    client.hset(f"{prefix}:c:{bucket}", mapping={b"\x01junk": b"\x00\x01", b"\x02lost": b""})
    result = ledger.sweep(NOW)
    assert (result.codes.removed, result.codes.unreadable) == (1, 2)
    assert client.hlen(f"{prefix}:c:{bucket}") == 2


def test_progress_is_reported_per_batch(make: Callable[..., RedisLedger]) -> None:
    ledger = make()  # 4 code buckets, 4 person buckets, 4 sale buckets
    calls: list[tuple[int, int]] = []
    result = ledger.sweep(NOW, batch=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 12), (4, 12), (7, 12), (8, 12), (11, 12), (12, 12)]
    assert [(c.family, c.buckets, c.present) for c in result.families] == [
        ("codes", 4, 0), ("shared", 0, 0), ("persons", 4, 0), ("sales", 4, 0)]
    with pytest.raises(ValueError, match="batch"):
        ledger.sweep(NOW, batch=0)


# --------------------------------------------------------------------------- command line


@pytest.fixture
def env(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEWATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("TRACEWATCH_KEY_PREFIX", prefix)
    monkeypatch.setenv("TRACEWATCH_RETENTION_DAYS", "100")


def test_cli_sweeps_end_to_end(
    env: None, make: Callable[..., RedisLedger], capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = make(person_ttl_days=400)
    ledger.store_codes({**FRESH, **STALE})
    ledger.store_persons({"a": person(10), "b": person(402)})
    ledger._clock_offset = NOW - 400 * DAY_SECONDS - ledger.business_now()  # a year before
    ledger.commit_routing(set(), set(), set(), {"sale": (code(11),)})
    args = ["sweep", "--now", "2026-11-23 12:00:00", "--no-progress"]

    assert main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().err
    assert "dry run, nothing removed" in dry
    assert f"{len(STALE)} older than 2026-08-14 12:00:00 would be removed" in dry
    assert ledger.load_codes(set(STALE)).keys() == STALE.keys()

    assert main(args) == 0
    done = capsys.readouterr().err
    assert f"codes: {len(FRESH) + len(STALE)} entries in" in done
    assert f"{len(STALE)} older than 2026-08-14 12:00:00 removed (" in done
    assert "shared: 0 entries in 0 of 0 buckets; 0 older than" in done  # no box shares
    person_buckets = len({_digest_slot(key, ledger.person_bits)[0] for key in ("a", "b")})
    assert f"persons: 2 entries in {person_buckets} of 4 buckets; 1 older than" in done
    assert "sales: 1 entries in 1 of 4 buckets; 1 older than" in done
    assert ledger.sale_codes({"sale"}) == {}
    assert ledger.load_codes({*FRESH, *STALE}) == FRESH
    assert ledger.load_persons({"a", "b"}) == {"a": person(10)}

    assert main([*args, "--grace-days", "0", "--batch", "1"]) == 0
    assert "1 older than 2026-08-15 12:00:00 removed" in capsys.readouterr().err
    assert ledger.load_codes(set(FRESH)).keys() == FRESH.keys() - {code(3)}


def test_cli_refuses_a_prefix_without_a_ledger(
    env: None, client: redis.Redis, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"no tracewatch ledger with key prefix '{prefix}'" in error
    assert "TRACEWATCH_KEY_PREFIX" in error
    assert not list(client.scan_iter())  # and it created nothing


def test_cli_explains_an_unreachable_redis(
    env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", "--redis-url", "redis://user:secret@127.0.0.1:1/0"]) == 2
    error = capsys.readouterr().err
    assert "cannot reach Redis at redis://user:***@127.0.0.1:1/0" in error
    assert "secret" not in error


def test_cli_rejects_a_bad_now(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--now", "23/11/2026"])
    assert stop.value.code == 2
    assert "YYYY-MM-DD HH:MM:SS" in capsys.readouterr().err
