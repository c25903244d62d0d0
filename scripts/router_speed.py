"""Redis's cost of the router memory (msgid and record markers), on a private Redis.

``families``: batches of new msgids and records recalled and committed through the ledger,
as digest runs (layout 6) and as the bucket hashes a prefix created before keeps, side by
side; Redis's CPU a batch and its memory after. ``--expected-codes`` sizes the routing
buckets (one per 2**2 code buckets, ``ROUTER_BUCKET_SHIFT``): the bench's 100,000 messages
give 512.

``lengths``: lookups of absent digests in runs of growing length, with the ledger's own
search in Redis's Lua.

    .venv/bin/python scripts/router_speed.py families
    .venv/bin/python scripts/router_speed.py families --expected-codes 4096
    .venv/bin/python scripts/router_speed.py lengths
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from importlib import resources
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis_scratch import redis_cpu, scratch_server

from streams.redis_ledger import RedisLedger

SEARCH = r"""
local found = 0
for i = 1, #ARGV do
  if run_find(run, ARGV[i]) then found = found + 1 end
end
return found
"""
"""The lookups, with the ledger's own search (``run_find``, streams/ledger_overflow.lua, which
comes first) of the run in KEYS[1]."""


def search_script() -> str:
    overflow = resources.files("streams").joinpath("ledger_overflow.lua").read_text()
    return overflow + "\nlocal run = redis.call('GET', KEYS[1])\n" + SEARCH


def families(client: redis.Redis, batches: int, batch: int, expected_codes: int) -> None:
    for form in ("digest runs", "bucket hashes"):
        client.flushall()
        prefix = "tw"
        ledger = RedisLedger(client, prefix=prefix, expected_codes=expected_codes)
        if form == "bucket hashes":  # the meta of a prefix created before layout 6
            client.hdel(f"{prefix}:meta", "router")
            ledger = RedisLedger(client, prefix=prefix)
        rng = random.Random(7)
        before, started = redis_cpu(client), time.perf_counter()
        for _ in range(batches):
            msgids = {f"M{rng.getrandbits(64)}" for _ in range(batch)}
            records = {f"R{rng.getrandbits(64)}" for _ in range(batch)}
            ledger.recall_routing(msgids, records, ())
            ledger.commit_routing(msgids, records, (), {})
        cpu, wall = redis_cpu(client) - before, time.perf_counter() - started
        memory = int(client.info("memory")["used_memory"])
        print(f"{form:<14} {1 << ledger.aux_bits:,} buckets a family: Redis CPU "
              f"{cpu * 1000 / batches:6.1f} ms a batch, wall {wall:5.2f} s, used_memory "
              f"{memory / 1e6:5.1f} MB", flush=True)


def lengths(client: redis.Redis, probes: int) -> None:
    search = client.register_script(search_script())
    for digests in (100, 1_000, 4_000, 16_000, 64_000, 256_000):
        client.set("run", os.urandom(8 * digests))
        absent = [os.urandom(8) for _ in range(probes)]
        before = redis_cpu(client)
        for _ in range(5):
            search(keys=["run"], args=absent)
        spent = redis_cpu(client) - before
        print(f"{digests:>8,} digests ({8 * digests / 1024:6,.0f} KiB): "
              f"{spent / (5 * probes) * 1e6:7.2f} µs a lookup", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("families", "lengths"))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=5_000,
                        help="msgids (and as many records) a batch")
    parser.add_argument("--expected-codes", type=int, default=321_784,
                        help="codes the ledger is sized for (default: the bench's 100,000 "
                             "messages)")
    parser.add_argument("--probes", type=int, default=2_000,
                        help="lookups per run length (lengths)")
    args = parser.parse_args()
    with scratch_server() as (client, _):
        if args.what == "families":
            families(client, args.batches, args.batch, args.expected_codes)
        else:
            lengths(client, args.probes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
