"""Instructions the worker's stages execute, counted by valgrind: a speed measure the shared
machine's noise does not move.

Runs ``scripts/stage_speed.py`` under ``valgrind --tool=callgrind`` (10,000 messages by
default: two batches, about a minute) from each source tree given, and prints the
instructions of each stage (the compiled functions the worker calls: parse, route, codes,
persons and the three writes) and their sum. The workload and its generation are the same
in every tree; only the stages are counted. Trees run one after the other; a tree is a
folder with its own compiled modules (``setup.py build_ext --inplace``) and
``scripts/stage_speed.py``, e.g. an older commit from ``git archive``. Needs valgrind
(Debian's ``valgrind``).

    .venv/bin/python scripts/stage_instructions.py . /tmp/tw-old
    .venv/bin/python scripts/stage_instructions.py . --messages 20000 --keep /tmp/cg

Seconds vary by ±15 % from run to run here; these counts by well under 1 %, so a change of
a few percent shows in one run. Instructions are not time (a cache miss costs many), so a
change is confirmed end to end by alternating bench runs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = {
    "parse": "messages___parse",
    "route": "pipeline___Pipeline___route",
    "codes": "pipeline___Pipeline___apply_codes",
    "persons": "pipeline___Pipeline___apply_persons",
    "store persons": "pipeline___Pipeline___store_persons",
    "store codes": "pipeline___Pipeline___store_codes",
    "commit routing": "pipeline___Pipeline___commit_routing",
}
"""Each stage and the end of its compiled function's C name (``CPyDef_...``)."""

LINE = re.compile(r"\s*([\d,]+) \([ \d.]+%\)\s+\S*:CPyDef_(\S+) \[")


def stage_instructions(profile: Path) -> dict[str, int]:
    """Inclusive instructions of each stage's function in a callgrind profile."""
    listing = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(profile)],
        capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    for line in listing.splitlines():
        found = LINE.match(line)
        if found is None:
            continue
        for stage, name in STAGES.items():
            if stage not in counts and found.group(2).endswith(name):
                counts[stage] = int(found.group(1).replace(",", ""))
    return counts


def count_tree(tree: Path, messages: int, out: Path) -> dict[str, int]:
    """Run the tree's own scripts/stage_speed.py (which imports the tree's modules) under
    callgrind; its stage counts."""
    script = tree / "scripts" / "stage_speed.py"
    if not script.is_file():
        raise SystemExit(f"{tree}: no scripts/stage_speed.py; copy this checkout's there")
    log = out.with_suffix(".log")
    with log.open("w") as handle:
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, str(script), "--messages", str(messages)],
                       cwd=tree, stdout=handle, stderr=subprocess.STDOUT, check=True)
    counts = stage_instructions(out)
    if len(counts) != len(STAGES):
        missing = sorted(set(STAGES) - set(counts))
        raise SystemExit(f"{tree}: no count for {', '.join(missing)} in {out}; is the tree "
                         "compiled (setup.py build_ext --inplace)? See " + str(log))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path,
                        help="source trees with compiled modules to run from")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="keep the profiles in this folder")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    folder = args.keep or Path(tempfile.mkdtemp(prefix="stage-instructions-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{'tree':<28} {'stages':>8}  " + "  ".join(STAGES) + "  (millions)")
    for number, tree in enumerate(args.trees):
        counts = count_tree(tree.resolve(), args.messages, folder / f"tree{number}.out")
        print(f"{tree!s:<28} {sum(counts.values()) / 1e6:8,.0f}  "
              + "  ".join(f"{counts[stage] / 1e6:,.0f}" for stage in STAGES))
    if args.keep is None:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
