"""The worker's stages without Kafka: where a batch's time goes, in Python and in Redis.

Builds the bench workload (``tracewatch bench``'s, same seed), starts its own ``redis-server``
on a free loopback port, and runs the messages through :class:`streams.pipeline.Pipeline` and
:class:`streams.redis_ledger.RedisLedger` in batches the way the worker does (parse; confirm
the last batch's writes; route, with the batch's loads sent ahead; codes; persons; the writes
sent back to back without waiting; the young generation collected after the batch), on a
ledger sized for the workload like the bench's. It prints the seconds of each stage, its own
CPU and Redis's, and Redis's own time per batch in each load and store script call, by the
family of bucket hashes it touched (SLOWLOG: every script call over 0.5 ms is logged on this
private server).

    .venv/bin/python scripts/stage_speed.py --messages 100000
    .venv/bin/python scripts/stage_speed.py --messages 100000 --listpack-value 128
    .venv/bin/python scripts/stage_speed.py --messages 100000 --breakdown
    .venv/bin/python scripts/stage_speed.py --messages 3400000 --steady --breakdown
    .venv/bin/python scripts/stage_speed.py --messages 5100000 --steady --every 40

No broker, so it isolates the worker's Python and its Redis calls from Kafka; numbers vary
from run to run on a shared machine: compare trees by alternating runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import itertools
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis_scratch import redis_cpu, scratch_server

from detectors.messages import parse
from streams import bench, bench_workload
from streams.pipeline import Pipeline
from streams.redis_ledger import RedisLedger, script_sources
from streams.reference import rule_config
from streams.settings import load_settings

#: The workload whose catalog a --steady run uses: the soak's worker has the throughput
#: round's (tracewatch bench --messages 30000 in the soaks of BENCHMARKS.md).
STEADY_CATALOG_MESSAGES = 30_000
#: Script calls at least this long are logged (inner commands of a script take microseconds).
SLOWLOG_US = 500
#: What a script call with this key family first (streams.redis_ledger KEY_*: the second part
#: of a key) is: the routing commit writes msgid and record markers and the sale index in one
#: call, the routing recall reads each of them.
CALLS = {
    ("load", "c"): "load codes", ("load", "p"): "load persons",
    ("load", "m"): "recall msgids", ("load", "r"): "recall records",
    ("load", "s"): "recall sales", ("store", "c"): "store codes",
    ("store", "v"): "store codes",  # a store of codes writes its shared states first
    ("store", "p"): "store persons", ("store", "m"): "commit routing",
    ("store", "r"): "commit routing", ("store", "s"): "commit routing",
}
STAGES = ("parse", "confirm", "route", "codes", "persons", "write", "gc")


def batched(lines: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """Lists of ``size`` lines (the last one shorter)."""
    iterator = iter(lines)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def script_names() -> dict[str, str]:
    """SHA1 of each ledger script → its short name."""
    return {hashlib.sha1(source.encode()).hexdigest(): name
            for name, source in script_sources().items()}


def script_times(client: redis.Redis, prefix: str,
                 totals: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """(calls, Redis seconds) of each kind of script call in the SLOWLOG since the last call,
    which empties it; added to ``totals`` as well when given."""
    names = script_names()
    times: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    entries: list[dict[str, Any]] = client.slowlog_get(1_000_000)
    client.slowlog_reset()
    for entry in entries:
        # EVALSHA, the script, 0 and the MessagePack of its keys and arguments (cut short by
        # the SLOWLOG), which starts with the first key: the family is the part after prefix.
        argv = bytes(entry["command"]).split(b" ", 3)
        if argv[0].upper() != b"EVALSHA" or len(argv) < 4:
            continue
        script = names.get(argv[1].decode(), "other")
        found = re.search(re.escape(prefix.encode()) + rb":([A-Za-z]+):", argv[3])
        part = found.group(1).decode() if found else ""
        kind = CALLS.get((script, part), f"{script} {part or '-'}")
        times[kind][0] += 1
        times[kind][1] += entry["duration"] / 1e6
    if totals is not None:
        for kind, (calls, spent) in times.items():
            totals[kind][0] += calls
            totals[kind][1] += spent
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000, help="messages per batch")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--expected-codes", type=int, default=0,
                        help="codes the ledger is sized for (default: the workload's, as the "
                             "bench does)")
    parser.add_argument("--steady", action="store_true",
                        help="the soak's traffic instead (tracewatch bench --soak): the "
                             "workload running on for --messages, generated as it goes, on a "
                             "ledger sized as the soak's; to fill a ledger with millions of "
                             "the bench's codes without the broker")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print the Redis memory of every key family (MEMORY USAGE "
                             "of all keys: code buckets c, their overflow cx, shared states v "
                             "and vx, ...) per code held")
    parser.add_argument("--listpack-value", type=int, default=None,
                        help="CONFIG SET hash-max-listpack-value on the private server (the "
                             "stack's docker-compose.yml runs Redis with 128)")
    parser.add_argument("--every", type=int, default=0, metavar="BATCHES",
                        help="also print a line every BATCHES batches: codes so far, the "
                             "window's codes/s and CPU of this process and of Redis, Redis's "
                             "used memory, and each stage's and script call's milliseconds a "
                             "batch (to see where a long --steady run slows down)")
    args = parser.parse_args(argv)

    print(f"building the workload: {args.messages:,} messages …", file=sys.stderr)
    workload = bench_workload.generate(
        min(args.messages, STEADY_CATALOG_MESSAGES) if args.steady else args.messages, args.seed)
    lines: Iterable[bytes] = workload.lines
    expected = args.expected_codes or workload.codes
    if args.steady:  # as tracewatch bench sizes and fills the soak's ledger
        lines = bench.steady_messages(args.messages, args.seed + 2)
        expected = args.expected_codes or args.messages * workload.codes // len(workload.lines)
    settings = load_settings({})
    with tempfile.TemporaryDirectory() as folder:
        catalog = bench_workload.write_catalog(workload.catalog, Path(folder) / "catalog.csv")
        config = rule_config(dataclasses.replace(settings, catalog=catalog))
    psn_key = settings.psn_key_bytes

    with scratch_server() as (client, _):
        client.config_set("slowlog-log-slower-than", SLOWLOG_US)
        client.config_set("slowlog-max-len", 1_000_000)
        if args.listpack_value is not None:
            client.config_set("hash-max-listpack-value", args.listpack_value)
        prefix = "tw"
        ledger = RedisLedger(client, prefix=prefix, expected_codes=expected)
        pipeline = Pipeline(ledger, config)
        client.slowlog_reset()
        cpu_before = redis_cpu(client)
        own_before = time.process_time()
        seconds = dict.fromkeys(STAGES, 0.0)
        codes = batches = 0
        gc.freeze()
        gc.disable()  # the worker collects between batches only (streams.worker.CycleCollector)
        started = time.perf_counter()
        window = Window.begin(client, codes=0, seconds=seconds)
        script_totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for batch in batched(lines, args.batch):
            tick = time.perf_counter()
            messages = [(number, parse(orjson.loads(line), psn_key))
                        for number, line in enumerate(batch)]
            seconds["parse"] += (now := time.perf_counter()) - tick
            ledger.confirm_writes()
            seconds["confirm"] += (tick := time.perf_counter()) - now
            routed = pipeline.route(messages)
            seconds["route"] += (now := time.perf_counter()) - tick
            applied = pipeline.apply_codes(routed.events, store=False)
            seconds["codes"] += (tick := time.perf_counter()) - now
            found = pipeline.apply_persons(applied.person_events, store=False)
            seconds["persons"] += (now := time.perf_counter()) - tick
            with ledger.writes_in_flight(confirm=False):  # later stages first, as the worker
                pipeline.store_persons(found)
                pipeline.store_codes(applied)
                pipeline.commit_routing(routed.commit)
            seconds["write"] += (tick := time.perf_counter()) - now
            codes += routed.codes_listed
            batches += 1
            del messages, routed, applied, found
            gc.collect(0)
            seconds["gc"] += time.perf_counter() - tick
            if args.every and batches % args.every == 0:
                window = window.report(client, codes, batches, seconds,
                                       script_times(client, prefix, script_totals))
        tick = time.perf_counter()
        ledger.confirm_writes()
        seconds["confirm"] += time.perf_counter() - tick
        total = time.perf_counter() - started
        own = time.process_time() - own_before
        gc.enable()
        gc.unfreeze()

        print(f"{args.messages:,} messages, {codes:,} codes in {batches} batches of "
              f"{args.batch:,}: {total:.2f} s, {codes / total:,.0f} codes/s; this process's "
              f"CPU {own:.2f} s ({own / total:.0%}; steadier than the wall time on a busy "
              "machine)")
        print(f"{'stage':<10} {'seconds':>8} {'share':>6}")
        for stage in STAGES:
            print(f"{stage:<10} {seconds[stage]:8.2f} {seconds[stage] / total:6.1%}")
        cpu = redis_cpu(client) - cpu_before
        script_times(client, prefix, script_totals)
        times = script_totals
        print(f"\nRedis's CPU: {cpu:.2f} s, {cpu / total:.0%} of the wall time; its own time "
              f"in the ledger's script calls over {SLOWLOG_US} µs (SLOWLOG):")
        print(f"{'script call':<16} {'calls':>6} {'ms/batch':>9} {'ms/call':>8}")
        for kind, (calls, spent) in sorted(times.items(), key=lambda item: -item[1][1]):
            print(f"{kind:<16} {int(calls):6} {spent * 1000 / batches:9.1f} "
                  f"{spent * 1000 / calls:8.1f}")
        figures = ledger.stats()
        print(f"\nledger: {figures['codes']:,} codes, {figures['shared_states']:,} shared "
              f"states, {figures['bytes_per_code']:.1f} bytes per code (sampled, as the "
              f"bench reports it; hash-max-listpack-value {ledger.inline_limit})")
        if args.breakdown:
            print_breakdown(client, prefix)
    return 0


@dataclasses.dataclass(frozen=True)
class Window:
    """Where a window of batches began: the wall clock, CPU times and codes so far."""

    wall: float
    own_cpu: float
    redis_cpu: float
    codes: int
    batches: int
    seconds: dict[str, float]

    @classmethod
    def begin(cls, client: redis.Redis, codes: int, seconds: dict[str, float],
              batches: int = 0) -> Window:
        return cls(time.perf_counter(), time.process_time(), redis_cpu(client), codes, batches,
                   dict(seconds))

    def report(self, client: redis.Redis, codes: int, batches: int, seconds: dict[str, float],
               scripts: dict[str, list[float]]) -> Window:
        """Print the window that ends here (and its stages' and script calls' milliseconds a
        batch) and return the next one's start."""
        end = Window.begin(client, codes, seconds, batches)
        wall = end.wall - self.wall
        memory: dict[str, Any] = client.info("memory")
        print(f"  batch {batches:5}: {codes:12,} codes, window {(codes - self.codes) / wall:9,.0f}"
              f" codes/s, own CPU {(end.own_cpu - self.own_cpu) / wall:4.0%}, Redis CPU "
              f"{(end.redis_cpu - self.redis_cpu) / wall:4.0%}, Redis "
              f"{int(memory['used_memory']) / 2**20:7,.0f} MiB", flush=True)
        count = max(1, batches - self.batches)
        stages = " ".join(f"{stage} {(seconds[stage] - self.seconds[stage]) * 1000 / count:.0f}"
                          for stage in STAGES)
        calls = " ".join(f"{kind} {spent * 1000 / count:.0f}" for kind, (_, spent)
                         in sorted(scripts.items(), key=lambda item: -item[1][1]))
        print(f"      ms a batch: {stages}; Redis: {calls}", flush=True)
        return end


def print_breakdown(client: redis.Redis, prefix: str) -> None:
    """Keys, entries (a hash's fields, a digest run's digests) and MEMORY USAGE of each key
    family, per code in the code buckets."""
    families: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        family = key.decode().split(":")[1]
        figures = families[family]
        figures[0] += 1
        kind = client.type(key)
        if kind == b"hash":
            figures[1] += client.hlen(key)
        elif family in ("m", "r"):  # digest runs: 8 bytes a marker
            figures[1] += client.strlen(key) // 8
        figures[2] += client.memory_usage(key, samples=0) or 0
    codes = families["c"][1]  # entries of the code buckets: every code held
    print(f"\n{'family':<7} {'keys':>7} {'entries':>9} {'bytes':>12} {'per code':>9}")
    for family, (keys, entries, used) in sorted(families.items(), key=lambda item: -item[1][2]):
        print(f"{family:<7} {keys:7,} {entries:9,} {used:12,} {used / max(1, codes):9.2f}")


if __name__ == "__main__":
    sys.exit(main())
