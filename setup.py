"""Build hook: compile the per-message hot path to C with mypyc (it ships with mypy).

Everything else about the package is in ``pyproject.toml``, including the list of compiled
modules (``[tool.tracewatch] compiled``). Those modules stay plain, type-checked Python; mypyc
turns each into an extension module that Python imports in place of the ``.py`` file beside
it (BENCHMARKS.md has what it bought). ``TRACEWATCH_PURE=1`` at install time, or a machine
without a C compiler, gives the same package uncompiled.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """The source files to compile, from ``pyproject.toml``."""
    with (HERE / "pyproject.toml").open("rb") as handle:
        modules: list[str] = tomllib.load(handle)["tool"]["tracewatch"]["compiled"]
    return modules


def _can_compile() -> bool:
    if os.environ.get("TRACEWATCH_PURE", "").strip() not in ("", "0"):
        return False
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(f"setup.py: no C compiler ({compiler}); installing tracewatch uncompiled",
              file=sys.stderr)
        return False
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        print("setup.py: mypyc is not importable; installing tracewatch uncompiled",
              file=sys.stderr)
        return False
    return True


def _extensions() -> list[object]:
    if not _can_compile():
        return []
    from mypyc.build import mypycify

    try:
        return list(mypycify(compiled_modules(), opt_level="3"))
    except (Exception, SystemExit) as error:  # mypyc exits on type errors
        print(f"setup.py: mypyc could not compile the hot path ({error!r}); installing "
              "tracewatch uncompiled", file=sys.stderr)
        return []


setup(ext_modules=_extensions())
