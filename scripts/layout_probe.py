"""What Redis would hold per code if a sale's evidence were kept once per message.

Issue 5 asks for at most 32 bytes of Redis per tracked code at 10 million codes. The ledger
keeps ~49 (``scripts/ledger_bytes.py``), most of it the evidence each standing sale carries —
institution, record number, msgid, time, person, drug, amount — which every box one message
lists shares. Before building a ledger that keeps that evidence once per message, this probe
measures on a private ``redis-server`` what two layouts filled with the same bytes cost,
without building either ledger:

* **per code** (the ledger's layout): each code's entry in its bucket hash holds its whole
  packed state — the states ``ledger_bytes.py`` stores, packed by ``streams.codec``;
* **per message**: each code's entry holds a header byte and a 5-byte message serial, and a
  second table, bucketed by serial (256 messages to a bucket), holds each message's packed
  sale once (the same packed bytes, standing in for a sale plus a count of its boxes).

Fields are a new ledger's (``codec.packed_code_slots`` with the bucket count the ledger would
choose for ``--codes``); every bucket key has an expiry, as the ledger's do. Messages list a fixed
number of codes each, for each ``--per-message`` value (the bench workload's mean is 3.25).

    .venv/bin/python scripts/layout_probe.py --codes 10000000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger_bytes import World, used_memory
from redis_scratch import scratch_server

from streams import codec
from streams.redis_ledger import RedisLedger

POOL = 50_000  # distinct packed states; the values cycle through them
CHUNK = 250_000  # codes written per round of pipelined HSETs
EXPIRY_S = 1095 * 86_400
SALES_PER_BUCKET_BITS = 8
SERIAL_BYTES = 5


def packed_pool(world: World) -> list[bytes]:
    """Packed states of the first POOL codes, as the ledger would store them."""
    interner = codec.MemoryInterner()
    return [codec.pack_code_state(world.state(i), interner) for i in range(POOL)]


def fill(client: redis.Redis, entries: Iterator[tuple[str, dict[bytes, bytes]]]) -> None:
    """HSET each (key, fields) in pipelined rounds, with the ledger's expiry on every key."""
    pipe = client.pipeline(transaction=False)
    queued = 0
    for key, fields in entries:
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, EXPIRY_S)
        queued += 1
        if queued >= 2_000:
            pipe.execute()
            queued = 0
    pipe.execute()


def code_entries(world: World, codes: int, bits: int,
                 value_of: Callable[[int], bytes]) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """The code table's writes, a chunk of codes at a time grouped by bucket."""
    for start in range(0, codes, CHUNK):
        indices = range(start, min(codes, start + CHUNK))
        buckets, fields = codec.packed_code_slots((world.code(i) for i in indices), bits)
        grouped: dict[int, dict[bytes, bytes]] = {}
        for i, bucket, field in zip(indices, buckets, fields, strict=True):
            grouped.setdefault(bucket, {})[field] = value_of(i)
        for bucket, mapping in grouped.items():
            yield f"tw:c:{bucket}", mapping


def sale_entries(messages: int, pool: list[bytes]) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """The message table's writes: serial ``s`` in bucket ``s >> 8`` under field ``s & 255``."""
    size = 1 << SALES_PER_BUCKET_BITS
    for first in range(0, messages, size):
        yield f"tw:m:{first >> SALES_PER_BUCKET_BITS}", {
            str(serial & (size - 1)).encode(): pool[serial % len(pool)]
            for serial in range(first, min(messages, first + size))}


def measure(client: redis.Redis, fill_with: Callable[[], None]) -> tuple[float, float]:
    """(bytes of used_memory added, seconds) by ``fill_with``, on an empty database."""
    client.flushall()
    before = used_memory(client)
    started = time.perf_counter()
    fill_with()
    return used_memory(client) - before, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, default=10_000_000)
    parser.add_argument("--per-message", type=float, nargs="+", default=[1, 2, 3.25, 5],
                        help="codes each message lists (one run of the per-message layout each)")
    args = parser.parse_args(argv)

    world = World(institutions=20_000, drugs=3_000, products=2_000)
    pool = packed_pool(world)
    mean_value = sum(map(len, pool)) / len(pool)
    rows: list[tuple[str, float]] = []
    with scratch_server() as (client, _port):
        # The bucket count a ledger sized for these codes chooses (its keys go at the first
        # flush below).
        bits = RedisLedger(client, prefix="tw", expected_codes=args.codes).code_bits
        print(f"{args.codes:,} codes in {1 << bits:,} buckets (~{args.codes >> bits} codes "
              f"each); packed states {mean_value:.1f} bytes on average; code fields "
              f"{codec.code20_field_size(bits)} bytes")

        def record(name: str, fill_with: Callable[[], None]) -> None:
            added, seconds = measure(client, fill_with)
            rows.append((name, added / args.codes))
            print(f"  {name}: {added / args.codes:.1f} bytes/code ({seconds:.0f} s)", flush=True)

        record("per code (the ledger's)", lambda: fill(client, code_entries(
            world, args.codes, bits, lambda i: pool[i % POOL])))
        for per_message in args.per_message:
            messages = max(1, round(args.codes / per_message))

            def per_message_layout(messages: int = messages, per_message: float = per_message,
                                   ) -> None:
                fill(client, code_entries(
                    world, args.codes, bits,
                    lambda i: b"\x01" + int(i / per_message).to_bytes(SERIAL_BYTES, "big")))
                fill(client, sale_entries(messages, pool))

            record(f"per message, {per_message:g} codes each", per_message_layout)

    print()
    print(f"{'layout':<32} {'bytes/code':>11}")
    for name, per_code in rows:
        print(f"{name:<32} {per_code:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
