"""Whether the hot path runs compiled (mypyc, see ``setup.py``), and whether that is stale.

Python imports an extension module in place of the ``.py`` file beside it, so in a source
tree an edited module keeps running its old compiled copy until it is rebuilt. The command
line warns about that, the test suite refuses to start, and ``python -m streams.compiled
--stale`` lists such modules for ``scripts/setup``, which rebuilds them.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def is_compiled() -> bool:
    """True when the detectors run as compiled extension modules."""
    import detectors.model

    return Path(detectors.model.__file__ or "").suffix in (".so", ".pyd")


def hot_path_kind() -> str:
    """How the hot path runs, as `tracewatch --version` and the bench report say it."""
    return "compiled (mypyc)" if is_compiled() else "plain Python"


def compiled_sources() -> list[Path]:
    """The sources of the compiled modules (``[tool.tracewatch] compiled`` in pyproject.toml);
    none in an installed wheel."""
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        return []  # an installed wheel: sources and extensions were built together
    with pyproject.open("rb") as handle:
        names: list[str] = tomllib.load(handle).get("tool", {}).get("tracewatch", {}).get(
            "compiled", [])
    return [ROOT / name for name in names]


def _extension_of(source: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def stale_modules(*, missing_too: bool = False) -> list[str]:
    """Compiled modules of this source tree whose ``.py`` changed after they were built.

    With ``missing_too``, also the modules that have no compiled copy at all.
    """
    # mypyc puts the code of all modules in one shared library at the top of the tree; each
    # module's own extension is a small shim that is not rebuilt when only its code changes.
    shared = [path.stat().st_mtime for path in ROOT.glob("*__mypyc.*")]
    shared_built = max(shared, default=0.0)
    stale: list[str] = []
    for source in compiled_sources():
        extension = _extension_of(source)
        if extension is None:
            if missing_too:
                stale.append(str(source.relative_to(ROOT)))
        elif source.stat().st_mtime > max(extension.stat().st_mtime, shared_built):
            stale.append(str(source.relative_to(ROOT)))
    return stale


def stale_warning() -> str | None:
    """A warning for the user when edited sources run as their old compiled copies."""
    stale = stale_modules()
    if not stale:
        return None
    return (
        f"{', '.join(stale)} changed after it was compiled, and the old compiled copy is what "
        "runs; run scripts/setup to rebuild (or TRACEWATCH_PURE=1 scripts/setup for plain "
        "Python)"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m streams.compiled [--stale]``."""
    parser = argparse.ArgumentParser(description="compiled hot path: status")
    parser.add_argument("--stale", action="store_true",
                        help="list modules to (re)build, one per line; exit 1 if any")
    args = parser.parse_args(argv)
    if args.stale:
        stale = stale_modules(missing_too=True)
        for name in stale:
            print(name)
        return 1 if stale else 0
    print(hot_path_kind())
    return 0


if __name__ == "__main__":
    sys.exit(main())
