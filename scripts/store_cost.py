"""Redis's own CPU for a batch of code writes: the ledger's store script against plain HSETs.

Starts its own ``redis-server``, fills 2,048 bucket hashes with 150 codes each (7-byte fields,
31-byte values: a production bucket at its expected size), then writes batches of 16,000 new
codes into random buckets, alternating two ways: the path of :meth:`RedisLedger.store_codes`
(its ``_Writes``: one ``ledger_store.lua`` call per batch; the first batch also pushes each
bucket's expiry, once a day) and one plain ``HSET key f1 v1 f2 v2 …`` per bucket, pipelined.
Redis's CPU per batch is read from ``INFO cpu`` (its main thread does nothing else). This is
what the store script costs Redis beyond the hash writes themselves. The buckets grow by the
codes written (a batch of 16,000 adds ~8 to each), so compare the two ways turn by turn.

    .venv/bin/python scripts/store_cost.py
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, cast

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis_scratch import redis_cpu, scratch_server

from streams.redis_ledger import RedisLedger

Batch = tuple[list[int], list[bytes], list[bytes]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buckets", type=int, default=2048)
    parser.add_argument("--per-bucket", type=int, default=150)
    parser.add_argument("--writes", type=int, default=16_000, help="codes per batch")
    parser.add_argument("--batches", type=int, default=5, help="batches per turn")
    parser.add_argument("--turns", type=int, default=3, help="turns of each way")
    args = parser.parse_args(argv)
    rng = random.Random(1)

    def batch() -> Batch:
        buckets = [rng.randrange(args.buckets) for _ in range(args.writes)]
        return buckets, [rng.randbytes(7) for _ in buckets], [rng.randbytes(31) for _ in buckets]

    with scratch_server() as (client, port):
        ledger = RedisLedger(client, prefix="tw", buckets=args.buckets)
        table = "tw:c:"
        for bucket in range(args.buckets):
            client.hset(f"{table}{bucket}", mapping={
                rng.randbytes(7): rng.randbytes(31) for _ in range(args.per_bucket)})
        print(f"redis-server on 127.0.0.1:{port}: {args.buckets:,} buckets of "
              f"{args.per_bucket} codes; batches of {args.writes:,} new codes")

        def by_script(buckets: list[int], fields: list[bytes], values: list[bytes]) -> None:
            writes = ledger._writes()
            writes.run(table, "tw:cx:", ledger.retention_seconds, buckets, fields, values,
                       [True] * len(fields))
            ledger._write(writes)

        def by_hset(buckets: list[int], fields: list[bytes], values: list[bytes]) -> None:
            pairs: dict[int, list[bytes]] = {}
            for bucket, field, value in zip(buckets, fields, values, strict=True):
                pairs.setdefault(bucket, []).extend((field, value))
            # (hiredis's stub types the argument as a 1-tuple.)
            commands = [hiredis.pack_command(cast(Any, (b"HSET", f"{table}{bucket}",
                                                        *fields_values)))
                        for bucket, fields_values in pairs.items()]
            connection: Any = client.connection_pool.get_connection()
            try:
                connection.send_packed_command(commands, check_health=False)
                for _ in commands:
                    connection.read_response()
            finally:
                client.connection_pool.release(connection)

        ways = {"store script": by_script, "plain HSETs": by_hset}
        spent: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.turns):
            for name, write in ways.items():
                batches = [batch() for _ in range(args.batches)]
                before = redis_cpu(client)
                for buckets, fields, values in batches:
                    write(buckets, fields, values)
                time.sleep(0.05)  # let INFO's CPU reading include the last call
                spent[name].append((redis_cpu(client) - before) / args.batches * 1000)
        for name, turns in spent.items():
            print(f"{name:<13} Redis CPU per batch: "
                  + " · ".join(f"{ms:.1f}" for ms in turns) + " ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
