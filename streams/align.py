"""Release input records of several partitions in business-time order.

Kafka keeps order within a partition only. The input topic is partitioned by institution,
and a batch fetched from it holds a run of each partition: replaying a month at full speed,
one partition's run may reach days past another's. The rules judge events in the order they
are applied (the later of two sales of a box is the duplicate), so the worker applies
input in business-time order across partitions as far as it can see:

* each partition's records stay in their own order;
* of the records fetched so far, those with a time up to the *horizon* are released,
  merged by time; the horizon is the smallest, over the partitions holding records, of the
  latest time held — so the partition furthest behind is drained and the others are
  released up to where it stands;
* the rest is held for the next round. Every round drains at least one partition (or
  releases its limit, below), so held records are released within a few rounds, and a
  partition with nothing fetched (caught up, or idle) never holds the others back;
* a round releases at most the worker's batch size, the earliest records first; the others
  wait, in their order, for the next round (which needs no fetch to happen).

Records without a time (bad input, sent to the DLQ) take the time of the record before them.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

P = TypeVar("P")

# A record waiting for release is held as (its business time, what the caller keeps with
# it): a plain tuple, built natively by compiled code, where a NamedTuple's constructor is
# an interpreted lambda (1 % of the worker's time, one per input record).


class TimeAligner(Generic[P]):
    """Holds fetched records per partition and releases them in time order."""

    def __init__(self) -> None:
        self._held: dict[Hashable, deque[tuple[int, P]]] = {}

    def add(self, partition: Hashable, items: Iterable[tuple[int | None, P]]) -> None:
        """Hold a partition's newly fetched records, in their order (time ``None``: unknown)."""
        queue = self._held.setdefault(partition, deque())
        last = queue[-1][0] if queue else 0
        for time, item in items:
            if time is not None:
                last = time
            queue.append((last, item))

    def held(self, partition: Hashable) -> int:
        """How many records of ``partition`` wait for release."""
        queue = self._held.get(partition)
        return len(queue) if queue else 0

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._held.values())

    def drop(self, partitions: Iterable[Hashable]) -> None:
        """Forget the records of partitions this worker no longer owns (they are re-read)."""
        for partition in partitions:
            self._held.pop(partition, None)

    def release(self, behind: Iterable[Hashable] = (),
                limit: int | None = None) -> list[tuple[Hashable, P]]:
        """The records up to the horizon, as (partition, item), merged by time.

        ``behind``: partitions with records in the broker not fetched yet. ``limit``: release
        at most this many, the earliest; the rest wait, in their order, for the next round
        (a batch's memory is bounded by it, however far the partitions drifted apart).
        """
        queues = {p: q for p, q in self._held.items() if q}
        if not queues or any(not self._held.get(partition) for partition in behind):
            return []
        horizon = min(max(moment for moment, _ in queue) for queue in queues.values())
        runs: list[list[tuple[int, Hashable, P]]] = []
        for partition, queue in queues.items():
            run: list[tuple[int, Hashable, P]] = []
            # Stop at the first record past the horizon, even if later ones are earlier:
            # a partition's own order is never changed.
            while queue and queue[0][0] <= horizon:
                moment, item = queue.popleft()
                run.append((moment, partition, item))
            if run:
                runs.append(run)
        if len(runs) == 1:
            merged = runs[0]
        else:
            merged = list(heapq.merge(*runs, key=lambda entry: entry[0]))
        if limit is not None and len(merged) > limit:
            # Back to the front of their queues, latest first, so each keeps its order.
            for moment, partition, item in reversed(merged[limit:]):
                self._held[partition].appendleft((moment, item))
            del merged[limit:]
        return [(partition, item) for _, partition, item in merged]
