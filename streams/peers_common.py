"""What the two benchmark peers (``streams.peers_quix``, ``streams.peers_faust``) share.

Issue 5 compares tracewatch's worker with two straightforward stream applications that apply
the same two rules, ``DUPLICATE_SALE`` and ``SPLIT_OVERDISPENSE``, the way a Python user of
each framework would write them: explode each sale or return into per-code records, re-key
them by code (one writer per code), and keep a small state per code. This module holds the
parts that are the same in both, so that the comparison measures the frameworks and not two
versions of the rules:

* :func:`explode`: one decoded NHSA message → per-code records (plain dicts), codes
  normalised with :func:`detectors.codes.normalise`;
* :func:`step`: one per-code record against the code's state (a JSON-able dict) → the new
  state and the alerts, as SPEC §4 words the two rules;
* the command line, the catalog's pack sizes, the completion report and the watchdog.

The rules, simply:

* a sale of a code while an earlier sale of it stands (no return in between), unless both are
  split (拆零) sales, raises ``DUPLICATE_SALE``; a message whose ``msgid`` this code has seen
  already (a retried upload) changes nothing and raises nothing;
* the standing split units of a code above the catalog's ``pack_units`` for its product raise
  ``SPLIT_OVERDISPENSE``; a split return gives units back, a whole return undoes the sale it
  names (else the latest of that institution).

A split sale that lists several codes shares its units evenly among them (tracewatch draws
them in order; the benchmark workload lists one code per split sale, so both agree there).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from detectors.codes import normalise
from streams.reference import load_catalog

SALE = "3505"
RETURN = "3506"
DUPLICATE_SALE = "DUPLICATE_SALE"
SPLIT_OVERDISPENSE = "SPLIT_OVERDISPENSE"
#: Exit code of a peer that ran out of time.
EXIT_TIMEOUT = 3

Record = dict[str, Any]
State = dict[str, Any]


def explode(message: object) -> list[Record]:
    """Per-code records of one decoded 3505/3506 message; anything else gives none.

    Each record: ``code`` (normalised), ``pk`` (product key or None), ``infno``, ``msgid``,
    ``inst``, ``bchno``, ``split``, ``units`` (this code's share), ``returns`` (the record
    number a return names). Codes that are not trace codes (invalid, barcodes) are left out.
    """
    if not isinstance(message, dict):
        return []
    infno = message.get("infno")
    if infno not in (SALE, RETURN):
        return []
    payload = message.get("input")
    sel = payload.get("selinfo") if isinstance(payload, dict) else None
    if not isinstance(sel, dict):
        return []
    codes: dict[str, str | None] = {}
    for item in sel.get("drugtracinfo") or ():
        raw = item.get("drug_trac_codg") if isinstance(item, dict) else None
        if isinstance(raw, str):
            code = normalise(raw)
            if code.trackable:
                codes[code.code] = code.product_key
    if not codes:
        return []
    split = sel.get("trdn_flag") == "1"
    units = float(sel.get("sel_retn_cnt") or 0) / len(codes) if split else 1.0
    common = {
        "infno": infno,
        "msgid": message.get("msgid"),
        "inst": message.get("fixmedins_code"),
        "bchno": sel.get("fixmedins_bchno"),
        "split": split,
        "units": units,
        "returns": sel.get("medins_prod_sel_no"),
    }
    return [{"code": code, "pk": key, **common} for code, key in codes.items()]


def step(state: State | None, record: Record, pack_units: Mapping[str, int]
         ) -> tuple[State, list[Record]]:
    """Apply one per-code record to the code's state; return (new state, alerts).

    The state: ``m`` the msgids applied to this code, ``s`` the standing sales as
    ``[institution, record number, split, units]`` in arrival order.
    """
    current: State = state if state is not None else {"m": [], "s": []}
    msgid = record["msgid"]
    if msgid in current["m"]:
        return current, []  # a retried upload
    current["m"].append(msgid)
    sales: list[list[Any]] = current["s"]
    alerts: list[Record] = []
    split = bool(record["split"])
    inst = record["inst"]
    if record["infno"] == SALE:
        if any(not (sale[2] and split) for sale in sales):
            alerts.append(_alert(DUPLICATE_SALE, record))
        sales.append([inst, record["bchno"], split, record["units"] if split else 1.0])
        pack = pack_units.get(record["pk"]) if split and record["pk"] else None
        if pack is not None:
            dispensed = sum(sale[3] for sale in sales if sale[2])
            if dispensed > pack:
                alerts.append(_alert(SPLIT_OVERDISPENSE, record, dispensed=dispensed,
                                     pack_units=pack))
        return current, alerts
    here = [sale for sale in sales if sale[0] == inst]
    named = [sale for sale in here if sale[1] == record["returns"]] or here
    if not named:
        return current, alerts
    if not split:
        sales.remove(named[-1])
        return current, alerts
    budget = float(record["units"])
    for sale in reversed([sale for sale in named if sale[2]]):
        if budget <= 0:
            break
        given = min(sale[3], budget)
        sale[3] -= given
        budget -= given
    current["s"] = [sale for sale in sales if not (sale[2] and sale[3] <= 0)]
    return current, alerts


def _alert(rule: str, record: Record, **extra: Any) -> Record:
    return {
        "rule": rule,
        "drug_trac_codg": record["code"],
        "trigger_msgid": record["msgid"],
        "fixmedins_code": record["inst"],
        "fixmedins_bchno": record["bchno"],
        **extra,
        "detected_at": time.time(),
    }


def pack_units_of(catalog: Path | None) -> dict[str, int]:
    """Product key → units per box, from tracewatch's catalog CSV (empty without one)."""
    if catalog is None:
        return {}
    return {key: entry.pack_units for key, entry in load_catalog(catalog).items()}


# ---------------------------------------------------------------------------- running


def arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line both peers take."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap HOST:PORT")
    parser.add_argument("--input", required=True, help="topic of NHSA messages (read from the "
                        "earliest offset)")
    parser.add_argument("--output", required=True, help="topic for the alerts (JSON)")
    parser.add_argument("--catalog", type=Path, help="catalog CSV (SPEC §3) for pack sizes")
    parser.add_argument("--expect-codes", type=int, required=True, metavar="N",
                        help="stop after the per-code stage has handled N code records")
    parser.add_argument("--report", type=Path, required=True, help="where to write the JSON "
                        "report: first, done (wall times), cpu_s (this process's CPU seconds "
                        "between them), codes, alerts, rss_mb")
    parser.add_argument("--state-dir", type=Path, required=True, help="folder for local state")
    parser.add_argument("--partitions", type=int, help="partitions of the internal topics "
                        "(default: as many as the input topic has)")
    parser.add_argument("--run-id", default=f"r{os.getpid()}-{int(time.time())}",
                        help="makes app ids, consumer groups and internal topic names unique")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="give up (exit code 3) after this many seconds (default 600)")
    return parser


PEERS = ("peers_quix", "peers_faust")


def peer_command(peer: str, *, bootstrap: str, input_topic: str, output_topic: str,
                 expect_codes: int, report: Path, state_dir: Path, run_id: str,
                 catalog: Path | None = None, partitions: int | None = None,
                 timeout: float = 600.0) -> list[str]:
    """The command line that runs one peer (``peers_quix`` or ``peers_faust``) as a process."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")
    argv = [sys.executable, "-m", f"streams.{peer}", "--bootstrap", bootstrap,
            "--input", input_topic, "--output", output_topic,
            "--expect-codes", str(expect_codes), "--report", str(report),
            "--state-dir", str(state_dir), "--run-id", run_id, "--timeout", f"{timeout:g}"]
    if catalog is not None:
        argv += ["--catalog", str(catalog)]
    if partitions is not None:
        argv += ["--partitions", str(partitions)]
    return argv


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(slots=True)
class Progress:
    """What a peer counts; :meth:`code_done` says when the last expected code was handled."""

    expect: int
    first: float | None = None
    done: float | None = None
    first_cpu: float | None = None
    """This process's CPU seconds (all threads) at ``first``, and at ``done``."""
    done_cpu: float | None = None
    codes: int = 0
    alerts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def input_seen(self) -> None:
        """Note the wall time of the first input record."""
        if self.first is None:
            self.first = time.time()
            self.first_cpu = time.process_time()

    def code_done(self, alerts: int) -> bool:
        """Count one code record and its alerts; True exactly when it was the N-th."""
        self.codes += 1
        self.alerts += alerts
        if self.codes == self.expect:
            self.done = time.time()
            self.done_cpu = time.process_time()
            return True
        return False

    def report(self) -> dict[str, Any]:
        """The report of issue 5."""
        cpu = (None if self.first_cpu is None or self.done_cpu is None
               else self.done_cpu - self.first_cpu)
        return {"first": self.first, "done": self.done, "cpu_s": cpu, "codes": self.codes,
                "alerts": self.alerts, "rss_mb": round(peak_rss_mb(), 1), **self.extra}

    def write(self, path: Path) -> None:
        """Write the report as JSON (atomically: a reader never sees half of it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(orjson.dumps(self.report(), option=orjson.OPT_INDENT_2))
        partial.replace(path)


def start_watchdog(name: str, timeout: float, progress: Progress,
                   exit_now: Callable[[int], None] = os._exit) -> threading.Timer:
    """After ``timeout`` s, say how far the peer got and end the process (exit code 3).

    The frameworks' loops may be blocked in native code or waiting for a broker, so the
    watchdog ends the process from its own thread rather than asking them to stop.
    """

    def expire() -> None:
        print(f"{name}: timed out after {timeout:g} s with {progress.codes} of "
              f"{progress.expect} codes handled ({progress.alerts} alerts); "
              "is the broker up and the input topic loaded?", file=sys.stderr, flush=True)
        exit_now(EXIT_TIMEOUT)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    return timer
