"""scripts/setup picks the interpreter a new .venv is made from, and says what to do when none fits.

The distribution's /usr/bin/python3 comes first when it can make a venv and has the C headers
mypyc needs: distributions build it with profile-guided and link-time optimisation, pyenv's
default build has neither, and the worker spends about 15 % less CPU on the former
(BENCHMARKS.md, "Sixteenth session"). ``PYTHON=...`` always wins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _setup(*args: str, python: str | None = None, script: Path = SETUP
           ) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def _qualifies(python: str) -> bool:
    """Python 3.11+ with venv, ensurepip and Python.h: what setup prefers."""
    probe = ("import os, sys, sysconfig, venv, ensurepip\n"
             "include = sysconfig.get_paths()['include']\n"
             "sys.exit(sys.version_info < (3, 11) or "
             "not os.path.exists(os.path.join(include, 'Python.h')))")
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=30,
                              check=False).returncode == 0
    except OSError:
        return False


def test_python_named_by_the_user_wins() -> None:
    chosen = _setup("--which-python", python="/opt/some/python3.12")
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip() == "/opt/some/python3.12"


def test_the_chosen_interpreter_can_make_the_venv() -> None:
    chosen = _setup("--which-python")
    assert chosen.returncode == 0, chosen.stderr
    python = chosen.stdout.strip()
    version = subprocess.run(
        [python, "-c", "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))"],
        capture_output=True, text=True, timeout=30, check=False)
    assert version.stdout.strip() == "True", (python, version.stderr)


@pytest.mark.skipif(not _qualifies(str(SYSTEM_PYTHON)),
                    reason="no distribution python3 with venv and headers on this machine")
def test_the_distributions_optimised_build_comes_first() -> None:
    assert _setup("--which-python").stdout.strip() == str(SYSTEM_PYTHON)


def test_an_unusable_interpreter_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "setup"
    shutil.copy(SETUP, script)
    refused = _setup(python=str(tmp_path / "no-such-python"), script=script)
    assert refused.returncode == 1
    assert "is not Python 3.11 or newer with the venv module" in refused.stderr
    assert "PYTHON=/path/to/python3.11 scripts/setup" in refused.stderr
    assert not (tmp_path / ".venv").exists()
