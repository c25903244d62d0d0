"""How fast the Redis ledger's batch calls run, side by side for two versions of tracewatch.

Starts its own ``redis-server`` on a free loopback port (no persistence), fills a ledger of N
codes (default 1 million, realistic states: one whole-box sale each, one in 20 with three sales,
too long for the bucket's listpack and kept in the overflow hash), then times, in child
processes, the calls a batch of the Kafka worker makes: ``load_codes`` (20,000 codes, half of
them known), ``store_codes`` (20,000 states, 1 % deletes), ``seen_messages`` and
``seen_records`` (5,000 keys each, half routed before) and ``commit_routing`` (5,000 msgids,
records and sales of 4 codes). Each child imports tracewatch from one source tree; with
``--old DIR`` the old tree and this one alternate, ``--rounds`` times, on the same server, so
both see the same machine in the same minute. Per call: the best batch, as codes/s (the
20,000 codes of the batch over its time; for the router calls too, as they serve that batch).

    git archive <commit> | (mkdir -p /tmp/tw-old && tar -x -C /tmp/tw-old)
    .venv/bin/python scripts/ledger_speed.py --old /tmp/tw-old
    .venv/bin/python scripts/ledger_speed.py --codes 200000 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis_scratch import scratch_server
from synthetic import Names

HERE = Path(__file__).resolve().parents[1]
START = 1_767_225_600  # 2026-01-01 00:00:00, business time
YEAR = 365 * 86_400
OPERATIONS = ("load_codes", "store_codes", "seen_messages", "seen_records", "commit_routing")


class World(Names):
    """Deterministic realistic codes, states and routing keys: item ``i`` is always the same."""

    def __init__(self, institutions: int = 20_000, drugs: int = 3_000,
                 products: int = 2_000) -> None:
        super().__init__(institutions, drugs, products)

    def institution(self, i: int) -> str:
        return self.institutions[i * 7919 % len(self.institutions)]

    def state(self, i: int) -> Any:
        from detectors.code_ledger import message_fingerprint, record_fingerprint
        from detectors.model import CodeState, SaleRecord

        sales = []
        for part in range(3 if i % 20 == 7 else 1):
            d = hashlib.blake2b((i * 4 + part).to_bytes(8, "big"), digest_size=32).digest()
            institution = self.institutions[int.from_bytes(d[0:3], "big")
                                            % len(self.institutions)]
            moment = START + int.from_bytes(d[3:7], "big") % YEAR
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(moment + d[7] % 600))
            sales.append(SaleRecord(
                fixmedins_code=institution,
                mdtrtarea_admvs=institution[1:7],
                bchno=f"XS{(i * 4 + part) % 10**8:08d}",
                msgid=f"{institution}{stamp}{int.from_bytes(d[8:11], 'big') % 100_000:05d}",
                time=moment,
                psn_hash=d[16:24].hex(),
                med_list_codg=self.drugs[int.from_bytes(d[11:13], "big") % len(self.drugs)],
                split=False,
                units=1.0,
                amount=(int.from_bytes(d[13:16], "big") % 30_000 + 100) / 100,
            ))
        last = max(sale.time for sale in sales)
        applied: list[str] = []
        for sale in sales:
            applied += (message_fingerprint(sale.msgid),
                        record_fingerprint(sale.fixmedins_code, "3505", sale.bchno))
        return CodeState(
            sales=tuple(sales),
            first_drug=sales[0].med_list_codg,
            first_drug_ref=record_fingerprint(sales[0].fixmedins_code, "3505", sales[0].bchno),
            applied=tuple(applied),
            flowback_seen=(),
            last_time=last,
        )


# --------------------------------------------------------------------------- child


def batch_args(world: World, codes: int, batch: int, messages: int, per_message: int,
               known: float) -> dict[str, tuple[Any, ...]]:
    """The arguments of each timed call for batch number ``batch`` (the same in every child)."""
    from streams.ledger import record_key, sale_key

    rng = random.Random(batch)
    size = messages * per_message
    known_count = int(size * known)
    indices = rng.sample(range(codes), known_count)
    indices += [codes + rng.randrange(10 * codes) for _ in range(size - known_count)]
    load = {world.code(i) for i in indices}
    stored = rng.sample(range(codes), size)
    states: dict[str, Any] = {world.code(i): world.state(i) for i in stored[:-size // 100]}
    for i in stored[-size // 100:]:
        states[world.code(codes + 10 * codes + i)] = None  # absent codes: deletes do nothing
    # Half of the routing keys were committed in setup (numbers below messages * 50).
    numbers = [rng.randrange(messages * 50) if n % 2 else messages * 50 + rng.randrange(10**9)
               for n in range(messages)]
    msgids = {f"{world.institution(n)}20260301{n % 10**6:06d}{n % 10**5:05d}" for n in numbers}
    records = {record_key(world.institution(n), "3505", f"XS{n:08d}") for n in numbers}
    sales = {sale_key(world.institution(n), f"XS{n:08d}"):
             tuple(world.code(n * per_message + k) for k in range(per_message)) for n in numbers}
    removed = set(list(records)[: messages // 100])
    return {
        "load_codes": (load,),
        "store_codes": (states,),
        "seen_messages": (msgids,),
        "seen_records": (records,),
        "commit_routing": (msgids, records, removed, sales),
    }


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(args.root).resolve()))
    import redis

    module = importlib.import_module("streams.redis_ledger")
    assert Path(module.__file__ or "").resolve().is_relative_to(Path(args.root).resolve())
    world = World()
    client = redis.Redis(port=args.port)
    ledger = module.RedisLedger(client, prefix="tw", expected_codes=args.expected)
    for table, texts in (("inst", world.institutions), ("drug", world.drugs),
                         ("admvs", {inst[1:7] for inst in world.institutions})):
        for text in texts:
            ledger.interner.to_id(table, text)
    ledger.interner.resolve()  # a worker that has run a while has these cached
    times: dict[str, list[float]] = {name: [] for name in OPERATIONS}
    inside: dict[str, list[float]] = {name: [] for name in OPERATIONS}  # Redis's own time
    profile = None
    if args.profile:
        import cProfile
        profile = cProfile.Profile()
    for batch in range(args.batches + 1):  # batch 0 warms up
        calls = batch_args(world, args.codes, batch, args.messages, args.per_message,
                           args.known)
        for name in OPERATIONS:
            method = getattr(ledger, name)
            client.config_resetstat()
            if profile is not None and batch:
                profile.enable()
            started = time.perf_counter()
            method(*calls[name])
            seconds = time.perf_counter() - started
            if profile is not None:
                profile.disable()
            if batch:
                times[name].append(seconds)
                stats = client.info("commandstats")
                inside[name].append(sum(int(value["usec"]) for key, value in stats.items()
                                        if key.startswith("cmdstat_evalsha")) / 1e6)
    if profile is not None:
        import pstats
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(120)
    print(json.dumps({"times": times, "inside": inside}))


# --------------------------------------------------------------------------- parent


def fill(port: int, codes: int, expected: int, world: World, messages: int,
         per_message: int) -> None:
    """N codes through this tree's ledger, and the routing keys the calls find known."""
    sys.path.insert(0, str(HERE))
    import redis

    from streams.ledger import record_key, sale_key
    from streams.redis_ledger import RedisLedger

    ledger = RedisLedger(redis.Redis(port=port), prefix="tw", expected_codes=expected)
    started = time.perf_counter()
    for start in range(0, codes, 5000):
        ledger.store_codes({world.code(i): world.state(i)
                            for i in range(start, min(start + 5000, codes))})
    for start in range(0, messages * 50, 5000):
        numbers = range(start, min(start + 5000, messages * 50))
        ledger.commit_routing(
            {f"{world.institution(n)}20260301{n % 10**6:06d}{n % 10**5:05d}" for n in numbers},
            {record_key(world.institution(n), "3505", f"XS{n:08d}") for n in numbers},
            set(),
            {sale_key(world.institution(n), f"XS{n:08d}"):
             tuple(world.code(n * per_message + k) for k in range(per_message))
             for n in numbers},
        )
    print(f"filled {codes:,} codes and {messages * 50:,} routed messages in "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--codes", type=int, default=1_000_000, help="codes in the ledger")
    parser.add_argument("--expected", type=int, default=10_000_000,
                        help="expected codes, which fix the bucket count (65,536 for 10M)")
    parser.add_argument("--messages", type=int, default=5000, help="messages per batch")
    parser.add_argument("--per-message", type=int, default=4, help="codes per message")
    parser.add_argument("--known", type=float, default=0.5,
                        help="share of the loaded codes that the ledger holds")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per child")
    parser.add_argument("--rounds", type=int, default=2, help="children per tree")
    parser.add_argument("--old", help="source tree of the version to compare with")
    parser.add_argument("--profile", action="store_true", help="cProfile the children")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    trees = {"new": str(HERE)}
    if args.old:
        trees = {"old": str(Path(args.old).resolve()), **trees}
    results: dict[str, dict[str, list[float]]] = {
        tree: {name: [] for name in OPERATIONS} for tree in trees}
    redis_time: dict[str, dict[str, list[float]]] = {
        tree: {name: [] for name in OPERATIONS} for tree in trees}
    with scratch_server() as (_, port):
        fill(port, args.codes, args.expected, World(), args.messages, args.per_message)
        for round_ in range(args.rounds):
            for tree, root in trees.items():
                command = [sys.executable, __file__, "--child", "--port", str(port),
                           "--root", root, "--codes", str(args.codes),
                           "--expected", str(args.expected),
                           "--messages", str(args.messages),
                           "--per-message", str(args.per_message),
                           "--known", str(args.known), "--batches", str(args.batches)]
                if args.profile:
                    command.append("--profile")
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                if args.profile:
                    print(f"--- profile of {tree}, round {round_ + 1}\n{done.stderr}")
                answer = json.loads(done.stdout.splitlines()[-1])
                for name in OPERATIONS:
                    results[tree][name] += answer["times"][name]
                    redis_time[tree][name] += answer["inside"][name]
                print(f"round {round_ + 1}: {tree} done", flush=True)

    size = args.messages * args.per_message
    print(f"\nledger of {args.codes:,} codes in buckets for {args.expected:,}; batches of "
          f"{args.messages:,} messages, {size:,} codes ({args.known:.0%} of the loaded ones "
          f"known); {args.rounds * args.batches} batches per call and tree.\ncodes/s: of the "
          "best batch (of the median one); client ms: the least of a batch's time less "
          "Redis's own time in EVALSHA (INFO commandstats), i.e. Python and the socket; "
          "Redis ms: the median of Redis's own time")
    print(f"{'call':<16}" + "".join(f"{tree + ' codes/s':>22}{'client ms':>10}{'Redis ms':>9}"
                                    for tree in trees)
          + ("  new/old" if len(trees) == 2 else ""))
    for name in OPERATIONS:
        line = f"{name:<16}"
        best = []
        for tree in trees:
            seconds = results[tree][name]
            inside = redis_time[tree][name]
            client = min(total - own for total, own in zip(seconds, inside, strict=True))
            best.append(min(seconds))
            line += (f"{size / min(seconds):>11,.0f} ({size / statistics.median(seconds):>7,.0f})"
                     f"{client * 1e3:>10.0f}{statistics.median(inside) * 1e3:>9.0f}")
        if len(best) == 2:
            line += f"  {best[0] / best[1]:.2f}×"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
