"""Replayed logs under tests/data/<RULE>/ with the alerts they must raise, and the shared
example story, through the real ``tracewatch check`` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.cli import main

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "examples"
LOGS = sorted(p for p in DATA.glob("*/*.jsonl") if not p.name.endswith(".expected.jsonl"))


def check(log: Path, catalog: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["check", str(log), "--catalog", str(catalog)]) == 0
    out = capsys.readouterr().out
    return [orjson.loads(line) for line in out.splitlines() if line]


@pytest.mark.parametrize("log", LOGS, ids=[f"{p.parent.name}/{p.stem}" for p in LOGS])
def test_log_raises_its_expected_alerts(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected_file = log.with_name(log.stem + ".expected.jsonl")
    expected = [orjson.loads(line) for line in expected_file.read_bytes().splitlines() if line]
    alerts = check(log, DATA / "catalog.csv", capsys)
    got = [[a["rule"], a["severity"], a["drug_trac_codg"], a["trigger_msgid"]] for a in alerts]
    assert got == expected
    assert log.parent.name in {a["rule"] for a in alerts}


def test_every_rule_has_a_replayed_log() -> None:
    from detectors.model import Rule

    assert {p.parent.name for p in LOGS} == {str(rule) for rule in Rule}


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/examples is not beside the repo")
def test_shared_example_story(capsys: pytest.CaptureFixture[str]) -> None:
    alerts = check(SHARED / "messages.jsonl", SHARED / "catalog.csv", capsys)
    assert [(a["rule"], a["severity"], a["drug_trac_codg"], a["trigger_msgid"])
            for a in alerts] == [
        ("DUPLICATE_SALE", "critical", "83857930123456780001", "EX-0004")]


def test_bad_lines_are_reported_with_line_numbers_and_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", str(DATA / "bad_input.jsonl")]) == 0
    captured = capsys.readouterr()
    alerts = [orjson.loads(line) for line in captured.out.splitlines()]
    assert [a["trigger_msgid"] for a in alerts] == ["ok2"]
    for line in (2, 3, 4, 5, 6):
        assert f"bad_input.jsonl:{line}: skipped bad line" in captured.err
    assert "bad_input.jsonl:1:" not in captured.err
    assert "5 bad lines skipped" in captured.err


def test_missing_log_and_wrong_setting_give_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["check", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such log file" in capsys.readouterr().err
    monkeypatch.setenv("TRACEWATCH_CROSS_CITY_HOURS", "soon")
    assert main(["check", str(DATA / "bad_input.jsonl")]) == 2
    assert "TRACEWATCH_CROSS_CITY_HOURS" in capsys.readouterr().err


def test_bad_catalog_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("product_key,med_list_codg,drug_name,pack_units\n8385793,X,药,many\n")
    assert main(["check", str(DATA / "bad_input.jsonl"), "--catalog", str(catalog)]) == 2
    assert "catalog.csv:2: pack_units" in capsys.readouterr().err


def test_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "check", str(DATA / "INVALID_CODE/bad_codes.jsonl")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert done.stdout.count("INVALID_CODE") == 2


def run_on_a_terminal(*args: str) -> str:
    """What ``tracewatch`` writes to a terminal (a pseudo-terminal 120 columns wide)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.execv(sys.executable, [sys.executable, "-m", "streams.cli", *args])
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize(("flags", "bar"), [((), True), (("--no-progress",), False)])
def test_check_shows_a_progress_bar_on_a_terminal(flags: tuple[str, ...], bar: bool) -> None:
    shown = run_on_a_terminal("check", str(DATA / "DUPLICATE_SALE/cross_city_clone.jsonl"),
                              *flags)
    assert ("check:" in shown and "B/s" in shown) is bar
    assert "tracewatch check: " in shown


def test_check_stops_quietly_when_its_reader_goes_away() -> None:
    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "check", str(DATA / "INVALID_CODE/bad_codes.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert reader_gone.stdout is not None and reader_gone.stderr is not None
    reader_gone.stdout.close()  # like `| head` that has read enough
    err = reader_gone.stderr.read().decode()
    assert reader_gone.wait(timeout=60) == 141
    assert "Traceback" not in err


def test_version_says_whether_the_hot_path_is_compiled(capsys: pytest.CaptureFixture[str]) -> None:
    from streams.compiled import is_compiled

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("tracewatch ")
    assert ("compiled (mypyc)" if is_compiled() else "plain Python") in shown
