"""The worker's allocator: when it starts itself again under jemalloc, and that it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams import cli
from streams.allocator import (
    STARTED_AGAIN,
    AllocatorError,
    in_use,
    jemalloc_library,
    preload_environment,
)

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


@pytest.mark.parametrize(("choice", "environ", "library", "current", "preload"), [
    # auto: jemalloc when installed and not in use yet, another preload kept after it
    ("auto", {}, LIB, "system", LIB),
    ("auto", {"LD_PRELOAD": "/opt/trace.so"}, LIB, "system", f"{LIB} /opt/trace.so"),
    ("jemalloc", {}, LIB, "system", LIB),
    # nothing to do: not installed (auto), asked for the C library's, already in use
    ("auto", {}, None, "system", None),
    ("system", {}, LIB, "system", None),
    ("auto", {}, LIB, "jemalloc", None),
    ("jemalloc", {"LD_PRELOAD": LIB}, LIB, "jemalloc", None),
    # started again once only, even when the preload did not take (auto goes on without)
    ("auto", {STARTED_AGAIN: "1"}, LIB, "system", None),
])
def test_the_process_starts_again_with_jemalloc_only_when_it_should(
        choice: str, environ: dict[str, str], library: str | None, current: str,
        preload: str | None) -> None:
    environment = preload_environment(choice, environ, library, current)
    if preload is None:
        assert environment is None
    else:
        assert environment is not None
        assert environment["LD_PRELOAD"] == preload
        assert environment[STARTED_AGAIN] == "1"
        assert {k: v for k, v in environment.items()
                if k not in ("LD_PRELOAD", STARTED_AGAIN)} == {
            k: v for k, v in environ.items() if k != "LD_PRELOAD"}


@pytest.mark.parametrize(("choice", "environ", "library", "says"), [
    ("jemalloc", {}, None, "apt-get install libjemalloc2"),
    ("jemalloc", {STARTED_AGAIN: "1", "LD_PRELOAD": "/x.so"}, LIB, "'/x.so' but is not in use"),
    ("tcmalloc", {}, LIB, "must be one of auto, jemalloc, system"),
])
def test_a_missing_or_unknown_allocator_is_a_clear_error(
        choice: str, environ: dict[str, str], library: str | None, says: str) -> None:
    with pytest.raises(AllocatorError, match=says):
        preload_environment(choice, environ, library, "system")


def test_the_library_and_the_allocator_in_use_are_found(tmp_path: Path) -> None:
    there = tmp_path / "libjemalloc.so.2"
    there.write_bytes(b"")
    assert jemalloc_library([str(tmp_path / "absent.so"), str(there)]) == str(there)
    assert jemalloc_library([str(tmp_path / "absent.so")]) is None
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert in_use(maps) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert in_use(maps) == "system"
    assert in_use(tmp_path / "no-such-file") == "system"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("choice", ["auto", "system"])
def test_a_process_started_again_runs_under_jemalloc(choice: str) -> None:
    """The real thing: ``ensure`` runs the same command again (here ``python -c``)."""
    code = ("import sys; from streams import allocator; print('started', flush=True); "
            f"allocator.ensure({choice!r}); print(allocator.in_use())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    expected = "jemalloc" if choice == "auto" and jemalloc_library() else "system"
    assert done.stdout.split() == (["started", "started", expected] if expected == "jemalloc"
                                   else ["started", expected])


@pytest.mark.parametrize(("started_again", "warned"), [(False, True), (True, False)])
def test_the_stale_compiled_warning_is_printed_once_per_worker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], started_again: bool,
    warned: bool,
) -> None:
    """A worker started again under jemalloc has already warned before it was."""
    monkeypatch.setattr(cli, "stale_warning", lambda: "streams/codec.py changed since compiled")
    if started_again:
        monkeypatch.setenv(STARTED_AGAIN, "1")
    else:
        monkeypatch.delenv(STARTED_AGAIN, raising=False)
    assert cli.main(["check", "/nonexistent/messages.jsonl"]) == 2  # after the warning
    assert ("warning: streams/codec.py changed" in capsys.readouterr().err) is warned
