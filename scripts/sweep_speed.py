"""How fast the retention sweep (:meth:`RedisLedger.sweep`) goes through the Redis ledger.

Starts its own ``redis-server`` (as ``scripts/ledger_bytes.py``, whose realistic states it
reuses: one whole-box sale each, last events spread over 2026), stores N codes, then sweeps
three times: with nothing to remove (the cost of a routine run), as a dry run that finds half
of them stale, and for real. Prints codes/s, buckets/s, the longest single script call (how
long Redis is blocked at most, from its slow log) and the memory given back (``MEMORY USAGE``
of the buckets that lost codes).

    .venv/bin/python scripts/sweep_speed.py --codes 1000000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ledger_bytes import START, YEAR, World, used_memory
from redis_scratch import scratch_server

from streams.redis_ledger import SWEEP_BATCH, RedisLedger, SweepResult

DAY = 86_400


def timed_sweep(ledger: RedisLedger, now: int, dry_run: bool,
                batch: int) -> tuple[SweepResult, float]:
    """The sweep's result and its longest script call, in seconds, by Redis's slow log."""
    client = ledger.client
    client.slowlog_reset()
    result = ledger.sweep(now, grace_days=0, dry_run=dry_run, batch=batch)
    entries = client.slowlog_get(1_000_000)
    longest = max((int(e["duration"]) for e in entries
                   if bytes(e["command"]).upper().startswith(b"EVALSHA")), default=0)
    return result, longest / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=SWEEP_BATCH, help="buckets per call")
    parser.add_argument("--store-batch", type=int, default=5000)
    args = parser.parse_args(argv)

    world = World(20_000, 3_000, products=2_000)
    with scratch_server() as (client, _):
        ledger = RedisLedger(client, prefix="tw", expected_codes=args.codes)
        for states in world.batches(args.codes, args.store_batch):
            ledger.store_codes(states)
        retention = ledger.retention_seconds
        client.config_set("slowlog-log-slower-than", 0)  # every script call, with its time
        client.config_set("slowlog-max-len", 1_000_000)
        print(f"redis-server {client.info('server')['redis_version']}, {args.codes:,} codes "
              f"in {1 << ledger.code_bits:,} buckets, {args.batch} buckets per script call, "
              f"used_memory {used_memory(client):,}")
        runs = (
            ("nothing to remove", START + retention, False),
            ("dry run, half stale", START + YEAR // 2 + retention, True),
            ("half stale, removed", START + YEAR // 2 + retention, False),
        )
        for name, now, dry_run in runs:
            result, longest = timed_sweep(ledger, now, dry_run, args.batch)
            codes = result.codes
            buckets = codes.buckets + result.persons.buckets
            print(f"{name:<20} {codes.entries:>10,} codes {codes.removed:>10,} old  "
                  f"{result.seconds:6.2f} s  {codes.entries / result.seconds:>10,.0f} codes/s  "
                  f"{buckets / result.seconds:>8,.0f} buckets/s  longest call "
                  f"{longest * 1000:5.1f} ms  {codes.freed:,} bytes freed")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
