"""The worker's memory allocator: jemalloc when the machine has it.

The worker allocates and frees millions of small and middle-sized blocks a minute (records,
events, states, packed values). With jemalloc preloaded its CPU for the same 100,000 bench
messages fell 6-10 % in each of four alternating pairs of runs, and its throughput rose 3-8 %
(BENCHMARKS.md "Tenth session"). A process cannot change its allocator once running, so
``tracewatch worker`` starts itself again with ``LD_PRELOAD`` set, before importing anything
heavy, when ``TRACEWATCH_ALLOCATOR`` says so:

* ``auto`` (default): jemalloc when its library is installed (Debian/Ubuntu: ``libjemalloc2``),
  else the C library's malloc, as before;
* ``jemalloc``: refuse to start without it;
* ``system``: the C library's malloc.

The process keeps its PID (``exec``); ``/healthz`` says which allocator is in use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Where distributions put the library (Debian and Ubuntu per architecture, Fedora, source).
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
#: Set in the environment of the process started again, so that it never starts a third.
STARTED_AGAIN = "TRACEWATCH_ALLOCATOR_PRELOADED"
CHOICES = ("auto", "jemalloc", "system")


class AllocatorError(RuntimeError):
    """The allocator asked for is not installed; the message says what to do."""


def jemalloc_library(paths: Sequence[str] = JEMALLOC_PATHS) -> str | None:
    """The first of ``paths`` that exists, or None."""
    return next((path for path in paths if Path(path).is_file()), None)


def in_use(maps: Path = Path("/proc/self/maps")) -> str:
    """``jemalloc`` when this process has it mapped, else ``system``."""
    try:
        mapped = maps.read_text(errors="replace")
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in mapped else "system"


def preload_environment(choice: str, environ: Mapping[str, str], library: str | None,
                        current: str) -> dict[str, str] | None:
    """The environment to start this process again with, to get the allocator ``choice``
    asks for; None to go on as it is. ``current`` is the allocator in use now."""
    if choice not in CHOICES:
        raise AllocatorError(f"TRACEWATCH_ALLOCATOR must be one of {', '.join(CHOICES)}, "
                             f"not {choice!r}")
    if choice == "system" or current == "jemalloc" or STARTED_AGAIN in environ:
        if choice == "jemalloc" and current != "jemalloc":
            raise AllocatorError(f"jemalloc was preloaded from {environ.get('LD_PRELOAD')!r} "
                                 "but is not in use; check that library, or set "
                                 "TRACEWATCH_ALLOCATOR=system")
        return None
    if library is None:
        if choice == "jemalloc":
            raise AllocatorError(
                "TRACEWATCH_ALLOCATOR=jemalloc but no libjemalloc.so.2 was found in "
                f"{', '.join(JEMALLOC_PATHS)}: install it (Debian/Ubuntu: apt-get install "
                "libjemalloc2) or set TRACEWATCH_ALLOCATOR=auto or system")
        return None
    preload = " ".join(filter(None, (library, environ.get("LD_PRELOAD", ""))))
    return {**environ, "LD_PRELOAD": preload, STARTED_AGAIN: "1"}


def ensure(choice: str) -> None:
    """Start this process again under jemalloc when ``choice`` asks for it and it is not in
    use yet (does not return then); else return. Call before importing anything heavy."""
    environment = preload_environment(choice, os.environ, jemalloc_library(), in_use())
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps "-m streams.cli" (argv would not): the same command, run again.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
