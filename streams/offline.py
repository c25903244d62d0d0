"""``tracewatch check``: the rules over a log file, with an in-memory ledger."""

from __future__ import annotations

import gc
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import orjson

from detectors.messages import BadInput, parse
from detectors.model import Alert, Message, RuleConfig
from streams.ledger import MemoryLedger
from streams.pipeline import Pipeline

CHINA = timezone(timedelta(hours=8))


def now_text() -> str:
    """Wall-clock time for ``detected_at``: ISO 8601 in China time, milliseconds."""
    return datetime.now(CHINA).isoformat(timespec="milliseconds")


def alert_json(alert: Alert, detected_at: str | None = None) -> bytes:
    """One alert as the JSON object of SPEC §6."""
    return orjson.dumps(alert.to_dict(detected_at or now_text()))


@dataclass(slots=True)
class BadLine:
    """A log line that is not a valid message."""

    line: int
    reason: str


@dataclass(slots=True)
class CheckStats:
    """Counts of one offline run."""

    messages: int = 0
    bad: int = 0
    alerts: Counter[str] = field(default_factory=Counter)


#: Lines between two calls of ``read_log``'s progress callback.
PROGRESS_LINES = 5000


def read_log(
    path: Path,
    psn_key: bytes,
    bad: list[BadLine] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, Message]]:
    """(line number, message) for each valid line; bad lines are appended to ``bad``.

    ``progress``, if given, is called with the bytes read so far every
    :data:`PROGRESS_LINES` lines and at the end.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if progress is not None and number % PROGRESS_LINES == 0:
                progress(handle.tell())
            if not raw.strip():
                continue
            try:
                yield number, parse(orjson.loads(raw), psn_key)
            except orjson.JSONDecodeError as error:
                if bad is not None:
                    bad.append(BadLine(number, f"not JSON: {error}"))
            except BadInput as error:
                if bad is not None:
                    bad.append(BadLine(number, error.reason))
        if progress is not None:
            progress(handle.tell())


_KEPT: list[object] = []


def exit_now(code: int) -> None:
    """End the process at once, output flushed, without tearing down what it allocated.

    Python's own exit frees every object and runs a last full garbage collection over them
    all; after a long ``check`` that is a second or more of work whose result nobody sees.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, then restore it as it was.

    The ledger of a long log holds millions of small tuples; every full collection walks
    them all, which took about a third of a run's time. Nothing in the pipeline makes
    reference cycles (a simulated month leaves a few hundred cyclic objects in all), and
    reference counting still frees everything else at once.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # Everything made meanwhile is still in the youngest generation, and the first
        # collection after this would walk it all; move it to the oldest (O(1) list moves).
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def run_check(
    path: Path,
    config: RuleConfig,
    psn_key: bytes,
    out: IO[bytes],
    err: IO[str] | None = None,
    batch: int = 2000,
    keep_ledger: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CheckStats:
    """Run every rule over the log at ``path``; write alerts to ``out`` as JSON lines.

    ``progress`` is called with the bytes of the log read so far (see :func:`read_log`).

    With ``keep_ledger`` the in-memory ledger is not freed on return but kept until the
    process ends, for a command that exits right after (:func:`exit_now`): freeing the
    ledger of a million messages object by object takes seconds the operating system does
    at once.
    """
    errors = err or sys.stderr
    pipeline = Pipeline(MemoryLedger(), config)
    if keep_ledger:
        _KEPT.append(pipeline)
    stats = CheckStats()
    bad: list[BadLine] = []
    pending: list[tuple[int, Message]] = []

    def flush() -> None:
        for alert in pipeline.process(pending):
            stats.alerts[str(alert.rule)] += 1
            out.write(alert_json(alert) + b"\n")
        pending.clear()
        for item in bad:
            errors.write(f"{path}:{item.line}: skipped bad line: {item.reason}\n")
        stats.bad += len(bad)
        bad.clear()

    with cyclic_gc_paused():
        for item in read_log(path, psn_key, bad, progress):
            stats.messages += 1
            pending.append(item)
            if len(pending) >= batch:
                flush()
        flush()
    return stats
