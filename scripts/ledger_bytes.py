"""How many bytes of Redis memory one tracked code costs in the Redis ledger.

Starts its own ``redis-server`` on a free loopback port (no persistence, so ``used_memory`` is
clean), stores N realistic code states through :meth:`RedisLedger.store_codes` in batches,
and prints the ``used_memory`` growth per code, the encoding of the bucket hashes, and store
and load throughput. For comparison it stores a smaller number of the same states one key per
code: as JSON (the naive layout) and as packed bytes (to separate key overhead from value
size). Each state is one standing whole-box sale with person, drug, institution, an NHSA-style
msgid (institution + 14-digit time + 5-digit sequence), a 10-character bchno and the two
fingerprints the sale leaves.

``--sale-sizes one`` (the default) sells every code in a sale of its own, so no two codes
share a state: the ledger's worst case; ``--sale-sizes 3`` sells three boxes a sale; and
``--sale-sizes bench`` sells the codes in sales of 1 to 10 boxes, drawn as ``tracewatch
bench`` draws its whole-box sales (``SALE_SIZES``: mean 3.6, a fifth of them of one box). The
boxes of one sale share one stored state.

    .venv/bin/python scripts/ledger_bytes.py --codes 1000000
    .venv/bin/python scripts/ledger_bytes.py --codes 10000000 --naive-codes 200000
    .venv/bin/python scripts/ledger_bytes.py --codes 10000000 --sale-sizes bench
    .venv/bin/python scripts/ledger_bytes.py --codes 10000000 --sale-sizes bench \
        --serials-used 4294967296

``--serials-used N`` starts the ledger as one that has already given out N shared-state
serials: a reference takes as many bytes as its serial needs (4 bytes up to 2**24 serials,
6 past 2**32), so a ledger that has run for a long time pays up to 2 bytes a code more.

The last line is ``redis_bytes_per_code=N``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis_scratch import scratch_server
from synthetic import Names

from detectors.code_ledger import message_fingerprint, record_fingerprint
from detectors.model import CodeState, SaleRecord
from streams import codec
from streams.bench_workload import SALE_SIZES
from streams.redis_ledger import RedisLedger

START = 1_767_225_600  # 2026-01-01 00:00:00, business time
YEAR = 365 * 86_400


class World(Names):
    """Deterministic realistic states: state ``i`` is always the same."""

    def __init__(self, institutions: int, drugs: int, products: int,
                 sale_sizes: tuple[int, ...] = (1,)) -> None:
        super().__init__(institutions, drugs, products)
        self.sale_sizes = sale_sizes
        self.sale_of: array[int] = array("I")  # the sale of each code handed out so far

    def sale_size(self, sale: int) -> int:
        """How many boxes sale number ``sale`` sells (always the same)."""
        if len(self.sale_sizes) == 1:
            return self.sale_sizes[0]
        digest = hashlib.blake2b(sale.to_bytes(8, "big"), digest_size=4, person=b"size")
        return self.sale_sizes[int.from_bytes(digest.digest(), "big") % len(self.sale_sizes)]

    def state(self, i: int) -> CodeState:
        """The state of every box that sale number ``i`` sold."""
        d = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).digest()
        institution = self.institutions[int.from_bytes(d[0:3], "big") % len(self.institutions)]
        moment = START + int.from_bytes(d[3:7], "big") % YEAR
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(moment + d[7] % 600))
        msgid = f"{institution}{stamp}{int.from_bytes(d[8:11], 'big') % 100_000:05d}"
        bchno = f"XS{i % 10**8:08d}"
        drug = self.drugs[int.from_bytes(d[11:13], "big") % len(self.drugs)]
        amount = (int.from_bytes(d[13:16], "big") % 30_000 + 100) / 100
        sale = SaleRecord(
            fixmedins_code=institution,
            mdtrtarea_admvs=institution[1:7],
            bchno=bchno,
            msgid=msgid,
            time=moment,
            psn_hash=d[16:24].hex(),
            med_list_codg=drug,
            split=False,
            units=1.0,
            amount=amount,
        )
        return CodeState(
            sales=(sale,),
            first_drug=drug,
            first_drug_ref=record_fingerprint(institution, "3505", bchno),
            applied=(message_fingerprint(msgid), record_fingerprint(institution, "3505", bchno)),
            flowback_seen=(),
            last_time=moment,
        )

    def code_state(self, i: int) -> CodeState:
        """The state of code number ``i`` (one of those :meth:`batches` handed out)."""
        return self.state(self.sale_of[i])

    def batches(self, count: int, size: int) -> Iterator[dict[str, CodeState]]:
        """``count`` codes from code 0, their sales whole, in batches of about ``size``
        codes that end with a sale (as a worker's batches end with a message)."""
        sale = 0
        while len(self.sale_of) < count:
            batch: dict[str, CodeState] = {}
            while len(batch) < size and len(self.sale_of) < count:
                state = self.state(sale)
                for _ in range(min(self.sale_size(sale), count - len(self.sale_of))):
                    batch[self.code(len(self.sale_of))] = state
                    self.sale_of.append(sale)
                sale += 1
            yield batch

    def naive_batches(self, count: int, size: int) -> Iterator[dict[str, CodeState]]:
        """``count`` codes, each sold alone, for the one-key-per-code layouts."""
        for start in range(0, count, size):
            yield {self.code(i): self.state(i) for i in range(start, min(start + size, count))}


def as_json(state: CodeState) -> bytes:
    """The state as a plain JSON object, field names and all (the naive layout)."""
    sales = [{name: getattr(sale, name) for name in (
        "fixmedins_code", "mdtrtarea_admvs", "bchno", "msgid", "time", "psn_hash",
        "med_list_codg", "split", "units", "amount")} for sale in state.sales]
    return orjson.dumps({
        "sales": sales, "first_drug": state.first_drug, "first_drug_ref": state.first_drug_ref,
        "applied": list(state.applied), "flowback_seen": list(state.flowback_seen),
        "last_time": state.last_time,
    })


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def naive(client: redis.Redis, world: World, count: int, batch: int,
          packed: bool) -> tuple[float, float]:
    """Bytes per code and codes/s of one key per code (JSON, or packed bytes)."""
    interner = codec.MemoryInterner()
    before = used_memory(client)
    started = time.perf_counter()
    for states in world.naive_batches(count, batch):
        pipe = client.pipeline(transaction=False)
        for code, state in states.items():
            value = codec.pack_code_state(state, interner) if packed else as_json(state)
            pipe.set(f"tw:{'k' if packed else 'j'}:{code}", value, ex=1095 * 86_400)
        pipe.execute()
    seconds = time.perf_counter() - started
    per_code = (used_memory(client) - before) / count
    client.flushdb()
    return per_code, count / seconds


def sale_sizes(text: str) -> str:
    """The --sale-sizes argument: 'one', 'bench' or a positive number of boxes."""
    if text in ("one", "bench") or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: give 'one', 'bench' or a number of boxes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--naive-codes", type=int, default=100_000,
                        help="codes stored one key per code, for comparison (0: skip)")
    parser.add_argument("--load-codes", type=int, default=100_000,
                        help="codes loaded back (and checked) to measure load throughput")
    parser.add_argument("--institutions", type=int, default=20_000)
    parser.add_argument("--drugs", type=int, default=3_000)
    parser.add_argument("--sale-sizes", type=sale_sizes, default="one",
                        help="'one' box per sale (no shared states), N boxes per sale, or "
                             "tracewatch 'bench''s whole-box sale sizes (1 to 10, mean 3.6)")
    parser.add_argument("--serials-used", type=int, default=0,
                        help="shared-state serials the ledger has given out before (their "
                             "size is the size of the references)")
    parser.add_argument("--listpack-value", type=int, default=None,
                        help="CONFIG SET hash-max-listpack-value on the benchmark server")
    args = parser.parse_args(argv)

    sizes = {"one": (1,), "bench": SALE_SIZES}.get(args.sale_sizes) or (int(args.sale_sizes),)
    world = World(args.institutions, args.drugs, products=2_000, sale_sizes=sizes)
    with scratch_server() as (client, port):
        if args.listpack_value is not None:
            client.config_set("hash-max-listpack-value", args.listpack_value)
        print(f"redis-server {client.info('server')['redis_version']} on 127.0.0.1:{port}, "
              f"hash-max-listpack-entries={client.config_get('hash-max-listpack-entries')}, "
              f"hash-max-listpack-value={client.config_get('hash-max-listpack-value')}")

        results: list[tuple[str, int, float, float]] = []
        if args.naive_codes:
            for packed in (False, True):
                per_code, rate = naive(client, world, args.naive_codes, args.batch, packed)
                name = "one key per code, packed value" if packed else "one key per code, JSON"
                results.append((name, args.naive_codes, per_code, rate))

        if args.serials_used:
            client.set("tw:vn", args.serials_used)
        ledger = RedisLedger(client, prefix="tw", expected_codes=args.codes)
        for warning in ledger.warnings:
            print("warning:", warning)
        before = used_memory(client)
        stored = 0
        store_seconds = 0.0
        value_bytes = 0
        interner = codec.MemoryInterner()
        report_every = max(args.batch, args.codes // 10)
        started = time.perf_counter()
        for states in world.batches(args.codes, args.batch):
            if stored < 20_000:
                value_bytes += sum(len(codec.pack_code_state(s, interner))
                                   for s in states.values())
            tick = time.perf_counter()
            ledger.store_codes(states)
            store_seconds += time.perf_counter() - tick
            stored += len(states)
            if stored % report_every < args.batch:
                print(f"  stored {stored:>10,} codes, {stored / store_seconds:>9,.0f} codes/s, "
                      f"{(used_memory(client) - before) / stored:.1f} bytes/code",
                      flush=True)
        total_seconds = time.perf_counter() - started
        per_code = (used_memory(client) - before) / stored
        results.append((f"RedisLedger, sale sizes {args.sale_sizes}", stored, per_code,
                        stored / store_seconds))

        sample = random.Random(2).sample(range(stored), min(args.load_codes, stored))
        load_seconds = 0.0
        for start in range(0, len(sample), args.batch):
            indices = sample[start:start + args.batch]
            codes = {world.code(i): i for i in indices}
            tick = time.perf_counter()
            loaded = ledger.load_codes(set(codes))
            load_seconds += time.perf_counter() - tick
            expected = {code: world.code_state(i) for code, i in codes.items()}
            if loaded != expected:
                raise SystemExit("loaded states differ from the stored ones")
        stats = ledger.stats()
        bucket = ledger.code_slot(world.code(0))[0]
        encoding = client.object("encoding", f"tw:c:{bucket}")

        print()
        print(f"{'layout':<34} {'codes':>11} {'bytes/code':>11} {'store codes/s':>14}")
        for name, count, size, rate in results:
            print(f"{name:<34} {count:>11,} {size:>11.1f} {rate:>14,.0f}")
        print()
        print(f"code buckets: {stats['code_buckets']:,} (~{stored / stats['code_buckets']:.0f} "
              f"codes each); bucket tw:c:{bucket} encoding: {encoding.decode()}; sampled "
              f"encodings: {stats['encodings']}")
        print(f"packed state: {value_bytes / min(stored, 20_000):.1f} bytes on average; field "
              f"{len(ledger.code_slot(world.code(0))[1])} bytes; MEMORY USAGE of sampled "
              f"buckets: {stats['bytes_per_code']:.1f} bytes/code")
        print(f"store: {stored / store_seconds:,.0f} codes/s ({total_seconds:.0f} s with "
              f"generating the states); load: {len(sample) / load_seconds:,.0f} codes/s "
              f"({len(sample):,} codes, batches of {args.batch}, checked)")
        print(f"sales: {world.sale_of[-1] + 1:,} ({stored / (world.sale_of[-1] + 1):.2f} codes "
              f"each); shared states: {stats['shared_states']:,} (sampled)")
        print(f"used_memory: {used_memory(client):,} bytes")
        print(f"redis_bytes_per_code={per_code:.1f}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
