"""Worker pieces that need no broker: routing keys, partitions, input order, wire, live feed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest

from detectors.codes import normalise
from detectors.model import CodeEvent, Kind, PersonEvent
from streams.align import TimeAligner
from streams.ledger import MemoryLedger
from streams.partitioner import murmur2, partition_of
from streams.wire import dump_batch, dump_event, load_code_batch, load_person_batch
from streams.worker import LiveFeed, code_key, partitions_to_hold_back


class WrappedMemoryLedger:
    """A memory ledger that a test gives one method of its own (a wrapper, not a subclass:
    compiled classes take none)."""

    def __init__(self) -> None:
        self.memory = MemoryLedger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.memory, name)


def test_boxes_of_one_product_share_a_writer() -> None:
    """A split sale drawing from several boxes of a product must stay on one partition, or a
    delete routed straight to a box can overtake the rest of the draw forwarded to it."""
    first, second = "83857930000000000001", "83857930000000999999"
    assert code_key(first) == code_key(second) == b"8385793"
    gs1 = normalise("(01)06901234567892(21)A1").code
    raw = normalise("010690123456789221B2").code
    assert code_key(gs1) == code_key(raw) == b"06901234567892"
    assert code_key("ENT0001234") == b"ENT0001234"


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    # Values of the JVM client's murmur2-based partitioner for these keys.
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"8385793", b"06901234567892", b"ENT0001234"):
        expected = DefaultPartitioner()(key, list(range(12)), list(range(12)))
        assert partition_of(key, 12) == expected


def test_murmur2_is_the_java_clients() -> None:
    import random

    from aiokafka.partitioner import murmur2 as reference

    # Utils.murmur2 of the JVM client (as a signed int) for these keys, then any length.
    assert murmur2(b"21") & 0xFFFFFFFF == -973932308 & 0xFFFFFFFF
    assert murmur2(b"") == 275646681
    rng = random.Random(5)
    for _ in range(5_000):
        key = rng.randbytes(rng.randrange(0, 40))
        assert murmur2(key) == reference(key), key


def test_live_feed_gives_alerts_after_a_serial() -> None:
    feed = LiveFeed(keep=2)
    for n in range(3):
        feed.add({"rule": "DUPLICATE_SALE", "n": n})
    page = feed.since(1)
    assert [a["n"] for a in page["alerts"]] == [1, 2]
    assert page["serial"] == 3
    assert page["by_rule"] == {"DUPLICATE_SALE": 3}


def _times(released: list[tuple[object, str]]) -> list[str]:
    return [item for _, item in released]


def test_aligner_releases_partitions_merged_by_time_up_to_the_slowest() -> None:
    aligner: TimeAligner[str] = TimeAligner()
    aligner.add("p0", [(1, "a1"), (5, "a5"), (9, "a9")])
    aligner.add("p1", [(2, "b2"), (3, "b3")])
    # p1 is furthest behind (3): it drains; p0 gives only what is not later than 3.
    assert _times(aligner.release()) == ["a1", "b2", "b3"]
    assert aligner.held("p0") == 2
    # Nothing else holds records: p0 drains.
    assert _times(aligner.release()) == ["a5", "a9"]
    assert len(aligner) == 0 and aligner.release() == []


def test_aligner_waits_for_a_partition_behind_that_holds_nothing() -> None:
    aligner: TimeAligner[str] = TimeAligner()
    aligner.add("p0", [(10, "a10")])
    assert aligner.release(behind=["p1"]) == []
    aligner.add("p1", [(4, "b4")])
    assert _times(aligner.release(behind=["p1"])) == ["b4"]
    assert _times(aligner.release()) == ["a10"]


@pytest.mark.parametrize("first", [[(7, "a7"), (None, "bad"), (2, "a2")]])
def test_aligner_keeps_a_partitions_own_order(first: list[tuple[int | None, str]]) -> None:
    """An earlier record after a later one waits for it; bad input takes the time before it."""
    aligner: TimeAligner[str] = TimeAligner()
    aligner.add("p0", first)
    aligner.add("p1", [(6, "b6"), (8, "b8")])
    assert _times(aligner.release()) == ["b6", "a7", "bad", "a2"]
    assert _times(aligner.release()) == ["b8"]


@pytest.mark.parametrize(("held", "held_back"), [
    # batches of 100: nothing held back while the partitions hold 200 or fewer in all
    ({"p0": 150, "p1": 50, "p2": 0}, set()),
    # one partition far ahead is held back alone
    ({"p0": 201, "p1": 0, "p2": 0}, {"p0"}),
    # several backlogged partitions: every one that holds records, none that holds nothing
    ({"p0": 120, "p1": 90, "p2": 0}, {"p0", "p1"}),
    ({"p0": 70, "p1": 70, "p2": 70, "p3": 0}, {"p0", "p1", "p2"}),
])
def test_partitions_to_hold_back_bound_what_the_worker_holds_in_all(
        held: dict[str, int], held_back: set[str]) -> None:
    assert partitions_to_hold_back(held, batch_size=100) == held_back


def test_holding_back_never_stops_release() -> None:
    """Partitions held back still release: the one that holds nothing is fetched, then all go on."""
    aligner: TimeAligner[str] = TimeAligner()
    aligner.add("p0", [(t, f"a{t}") for t in range(1, 160)])
    aligner.add("p1", [(t, f"b{t}") for t in range(1, 100)])
    held = {"p0": aligner.held("p0"), "p1": aligner.held("p1"), "p2": 0}
    assert partitions_to_hold_back(held, batch_size=100) == {"p0", "p1"}
    assert aligner.release(behind=["p2"], limit=100) == []  # p2 still fetches
    aligner.add("p2", [(50, "c50")])
    released = _times(aligner.release(behind=[], limit=100))
    assert len(released) == 100 and released[0] == "a1"
    held = {p: aligner.held(p) for p in ("p0", "p1", "p2")}
    assert sum(held.values()) == 159 + 99 + 1 - 100
    assert partitions_to_hold_back(held, batch_size=100) == set()


def test_aligner_releases_at_most_its_limit_earliest_first() -> None:
    """A batch is bounded however far the partitions drifted apart; nothing is reordered."""
    aligner: TimeAligner[str] = TimeAligner()
    aligner.add("p0", [(1, "a1"), (4, "a4"), (6, "a6"), (9, "a9")])
    aligner.add("p1", [(2, "b2"), (3, "b3"), (5, "b5"), (9, "b9")])
    aligner.add("p2", [(7, "c7"), (8, "c8")])
    assert _times(aligner.release(limit=3)) == ["a1", "b2", "b3"]
    assert (aligner.held("p0"), aligner.held("p1"), aligner.held("p2")) == (3, 2, 2)
    assert _times(aligner.release(limit=3)) == ["a4", "b5", "a6"]
    assert _times(aligner.release(limit=3)) == ["c7", "c8"]  # p2 drained: up to 8 only
    assert _times(aligner.release(limit=3)) == ["a9", "b9"]
    assert len(aligner) == 0


def test_aligner_forgets_revoked_partitions() -> None:
    aligner: TimeAligner[str] = TimeAligner()
    aligner.add("p0", [(1, "a1")])
    aligner.add("p1", [(2, "b2")])
    aligner.drop(["p0"])
    assert _times(aligner.release()) == ["b2"]


def test_wire_batches_round_trip_and_old_single_events_still_read() -> None:
    code = CodeEvent("83857930000000000001", Kind.SALE, "3505", "M1", "H1", "510104", "B1",
                     1_700_000_000, "XA01", "p" * 16, True, 0.5, 12.0, None, ("c2", "c3"), 7)
    person = PersonEvent("p" * 16, "XA01", code.code, 1, "H1", "510104", "B1", "M1",
                         1_700_000_000, 12.0, "M1", 7)
    batch = load_code_batch(dump_batch([code, replace(code, code="c2")], 1234))
    assert batch.arrived_ms == 1234 and batch.events == [code, replace(code, code="c2")]
    assert load_person_batch(dump_batch([person], 99)).events == [person]
    assert load_code_batch(dump_event(code)).events == [code]
    assert load_person_batch(dump_event(person)).events == [person]


def test_the_worker_sweeps_by_the_latest_business_time_it_applied() -> None:
    import asyncio

    from streams.ledger import Ledger
    from streams.settings import load_settings
    from streams.worker import Worker

    class SweptLedger(WrappedMemoryLedger):
        """A memory ledger that records sweeps."""

        def __init__(self) -> None:
            super().__init__()
            self.swept: list[int] = []

        def sweep(self, now: int) -> object:
            self.swept.append(now)
            return type("Result", (), {"removed": 0})()

    ledger = SweptLedger()
    worker = Worker(load_settings({}), ledger=cast(Ledger, ledger))
    asyncio.run(worker._sweep())
    assert ledger.swept == []  # nothing applied yet: no time to judge by
    worker.latest_time = 1_700_000_000
    asyncio.run(worker._sweep())
    assert ledger.swept == [1_700_000_000]


def test_ledger_gauges_are_sampled_off_the_event_loop() -> None:
    """The ledger's figures wait for Redis behind a backlog's batch scripts: sampled on the
    event loop they stalled the pipeline every 5 s. The loop must stay free meanwhile."""
    import asyncio
    import threading

    from streams.ledger import Ledger
    from streams.settings import load_settings
    from streams.worker import Worker

    loop_free = threading.Event()

    class SlowStatsLedger(WrappedMemoryLedger):
        """A memory ledger whose stats wait for Redis."""

        def stats(self) -> dict[str, Any]:
            # Answers only once the event loop has run something else meanwhile.
            assert loop_free.wait(timeout=10), "the event loop was blocked while sampling"
            return {"codes": 1234, "bytes_per_code": 48.5, "used_memory": 5 << 20,
                    "maxmemory": 8 << 20}

    worker = Worker(load_settings({}), ledger=cast(Ledger, SlowStatsLedger()))

    async def sample_while_the_loop_runs() -> None:
        sampling = asyncio.ensure_future(worker._sample_gauges())
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        loop_free.set()
        await sampling

    asyncio.run(sample_while_the_loop_runs())
    exposition = worker.metrics.exposition().decode()
    assert "tracewatch_ledger_codes 1234.0" in exposition
    assert "tracewatch_ledger_bytes_per_code 48.5" in exposition
    assert "tracewatch_redis_used_memory_bytes 5.24288e+06" in exposition
    assert "tracewatch_redis_maxmemory_bytes 8.388608e+06" in exposition


def test_a_batchs_offsets_are_committed_only_once_its_writes_are_confirmed() -> None:
    """The worker sends a batch's ledger writes ahead and confirms them while it parses the
    next fetch; the offsets wait for that. A confirmation that fails (Redis dropped the
    connection: the ledger sends the writes again) is tried again before committing."""
    import asyncio

    import redis

    from streams.ledger import Ledger
    from streams.settings import load_settings
    from streams.worker import Worker

    journal: list[str] = []

    class FlakyLedger(WrappedMemoryLedger):
        """A memory ledger whose first confirmation fails."""

        def __init__(self) -> None:
            super().__init__()
            self.fail = True

        def confirm_writes(self) -> None:
            journal.append("confirm")
            if self.fail:
                self.fail = False
                raise redis.ConnectionError("connection reset by peer")

    class Consumer:
        async def commit(self, offsets: dict[Any, int]) -> None:
            journal.append(f"commit {sorted(offsets.values())}")

    worker = Worker(load_settings({}), ledger=cast(Ledger, FlakyLedger()))
    worker.consumer = cast(Any, Consumer())
    asyncio.run(worker._settle())
    assert journal == []  # nothing in flight: nothing to wait for or commit
    worker._unconfirmed = {cast(Any, "tp"): 42}
    asyncio.run(worker._settle())
    assert journal == ["confirm", "confirm", "commit [42]"]
    assert worker._unconfirmed is None
    asyncio.run(worker._settle())
    assert len(journal) == 3


def test_the_faust_worker_logs_at_the_level_asked_not_debug() -> None:
    import logging

    from streams.settings import load_settings
    from streams.worker import Worker, faust_worker_for

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        # A memory ledger: the default one would be made in database 0 of the shared Redis,
        # which the tests leave to people.
        app = Worker(load_settings({}), ledger=MemoryLedger()).app
        faust_worker_for(app, "warning")._setup_logging()
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def test_cycle_collector_frees_cycles_between_batches_not_during_them() -> None:
    import gc
    import weakref

    from streams.worker import CycleCollector

    class Node:
        partner: Node | None = None

    observed: list[float] = []
    collector = CycleCollector(observed.append, middle_every=2, full_every_s=3600)
    enabled = gc.isenabled()
    collector.start()
    try:
        assert not gc.isenabled()
        node = Node()
        node.partner = node  # a cycle: reference counting alone never frees it
        gone = weakref.ref(node)
        del node
        kept: list[list[int]] = [[] for _ in range(50_000)]  # sets off an automatic pass
        del kept
        assert gone() is not None
        collector.after_batch()  # few young objects left alive: no pass yet
        assert gone() is not None and not observed
        collector.after_batch()  # the middle generation's turn, the young one's with it
        assert gone() is None
        collector.idle()  # within a second of the last pass: nothing to do
        assert len(observed) == 1 and observed[0] >= 0
    finally:
        collector.stop()
    assert gc.isenabled() == enabled


def test_cycle_collector_passes_over_the_young_generation_once_it_is_large() -> None:
    import weakref

    from streams.worker import CycleCollector

    class Node:
        partner: Node | None = None

    observed: list[float] = []
    collector = CycleCollector(observed.append, middle_every=1000, full_every_s=3600,
                               young_limit=20_000)
    collector.start()
    try:
        node = Node()
        node.partner = node
        gone = weakref.ref(node)
        del node
        alive: list[list[int]] = [[] for _ in range(30_000)]  # what a batch leaves alive
        collector.after_batch()
        assert gone() is None and len(observed) == 1
        collector.after_batch()  # the young generation was emptied by that pass
        assert len(observed) == 1
        del alive
    finally:
        collector.stop()


_MAPPED_PROBE = """
import ctypes, sys
from streams.worker import GlibcHeap
heap = GlibcHeap(mmap_threshold=256 * 1024)
if sys.argv[1] == "start":
    assert heap.start()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
mapped = []
for size in (8 << 20, 8 << 20, 8 << 20):  # more than the top of the heap keeps free
    pointer = libc.malloc(size)
    # glibc marks a chunk it mapped by itself with bit 2 of the size word before it.
    mapped.append(bool(ctypes.c_size_t.from_address(pointer - 8).value & 2))
    libc.free(pointer)
assert isinstance(heap.trim(), bool)
print(mapped)
"""


@pytest.mark.parametrize(("how", "mapped"), [
    # By itself glibc maps the first large block, and freeing it raises the threshold past
    # its size: the next ones grow the heap, which keeps their pages.
    ("default", "[True, False, False]"),
    ("start", "[True, True, True]"),
])
def test_glibc_heap_maps_batch_sized_blocks(how: str, mapped: str) -> None:
    import subprocess
    import sys

    from streams.worker import GlibcHeap

    if not GlibcHeap().present:
        pytest.skip("not glibc's malloc")
    # A fresh process: in this one, earlier tests left free heap space a block fits in.
    done = subprocess.run([sys.executable, "-c", _MAPPED_PROBE, how], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == mapped
