"""``tracewatch check``: the rules over a log file, with an in-memory ledger."""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Final

import orjson

from detectors.messages import BadInput, parse
from detectors.model import Alert, Message, RuleConfig
from streams.handoff import pack_batch, unpack_batch
from streams.ledger import MemoryLedger
from streams.pipeline import Pipeline

CHINA: Final = timezone(timedelta(hours=8))


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
PROGRESS_LINES: Final = 1000


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


_KEPT: Final[list[object]] = []


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


class CheckFailed(Exception):
    """The reading process of ``check --jobs 2`` failed; the message says why."""


def default_jobs() -> int:
    """2 where this process may use two cores and can fork, else 1."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cores or 1) >= 2 else 1


def run_check(
    path: Path,
    config: RuleConfig,
    psn_key: bytes,
    out: IO[bytes],
    err: IO[str] | None = None,
    batch: int = 2000,
    keep_ledger: bool = False,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
) -> CheckStats:
    """Run every rule over the log at ``path``; write alerts to ``out`` as JSON lines.

    With ``jobs=2`` a forked process reads, decodes and validates the log while this one
    applies the rules (:func:`_forked_batches`); the output is the same either way.
    ``progress`` is called after each batch with the bytes of the log read so far.

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
    batches = (_forked_batches(path, psn_key, batch, errors) if jobs > 1
               else _batches(path, psn_key, batch))
    try:
        with cyclic_gc_paused():
            for messages, bad, read_bytes in batches:
                stats.messages += len(messages)
                for alert in pipeline.process(messages):
                    stats.alerts[str(alert.rule)] += 1
                    out.write(alert_json(alert) + b"\n")
                for line, reason in bad:
                    errors.write(f"{path}:{line}: skipped bad line: {reason}\n")
                stats.bad += len(bad)
                if progress is not None:
                    progress(read_bytes)
    finally:
        # At once, not when the traceback lets go of it: stops the reading process.
        batches.close()
    return stats


Batch = tuple[list[tuple[int, Message]], list[tuple[int, str]], int]


def _batches(path: Path, psn_key: bytes, batch: int) -> Generator[Batch, None, None]:
    """The log as batches: ``batch`` valid messages, the bad lines among them, bytes read."""
    bad: list[BadLine] = []
    pending: list[tuple[int, Message]] = []
    read_bytes = [0]

    def note(done: int) -> None:
        read_bytes[0] = done

    for item in read_log(path, psn_key, bad, note):
        pending.append(item)
        if len(pending) >= batch:
            yield pending, [(b.line, b.reason) for b in bad], read_bytes[0]
            pending = []
            bad.clear()  # read_log appends to this very list
    yield pending, [(b.line, b.reason) for b in bad], read_bytes[0]


def _send_batches(path: Path, psn_key: bytes, batch: int, conn: Connection) -> None:
    """The reading process of :func:`_forked_batches`: each batch, then an empty record.

    A failure is sent as ``b"!"`` and what went wrong, for the other process to report.
    """
    try:
        with cyclic_gc_paused():
            for messages, bad, read_bytes in _batches(path, psn_key, batch):
                conn.send_bytes(pack_batch(messages, bad, read_bytes))
        conn.send_bytes(b"")
    except BaseException as error:
        # Reported by the applying process; a traceback here would interleave with its output.
        with suppress(OSError):
            conn.send_bytes(b"!" + f"{type(error).__name__}: {error}".encode())
        sys.exit(1)
    finally:
        conn.close()


def _forked_batches(
    path: Path, psn_key: bytes, batch: int, errors: IO[str]
) -> Generator[Batch, None, None]:
    """:func:`_batches`, read, decoded and validated by a forked process.

    Batches cross in order through a pipe, whose buffer bounds how far the reader runs ahead.
    Closing this generator (an error here, Ctrl-C) stops the reader.
    """
    # The child inherits unflushed buffers and would flush them a second time as it ends.
    errors.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    reader = context.Process(target=_send_batches, args=(path, psn_key, batch, sending),
                             name="tracewatch-check-reader", daemon=True)
    reader.start()
    sending.close()
    try:
        while True:
            try:
                data = receiving.recv_bytes()
            except EOFError:
                reader.join()
                raise CheckFailed(
                    f"the process reading {path} ended without finishing (exit code "
                    f"{reader.exitcode}); run with --jobs 1 to read it in this process"
                ) from None
            if not data:
                break
            if data[:1] == b"!":
                raise CheckFailed(f"reading {path} failed: {data[1:].decode()}")
            yield unpack_batch(data)
        reader.join()
    finally:
        receiving.close()
        if reader.is_alive():
            reader.kill()
            reader.join()
