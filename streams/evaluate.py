"""``tracewatch evaluate``: precision and recall of alerts against the labels of a simulation.

An alert matches a label when the rule, the triggering ``msgid`` and the subject agree: the
normalised ``drug_trac_codg`` for code rules, the keyed hash of the label's ``psn_no`` for
``HOARDING`` (whose alerts carry no code). Labels and alerts are multisets: two labels with
the same key need two alerts. ``score`` is pure, so tests call it directly; ``run_evaluate``
reads the files, runs the real rules when no ``--alerts`` file is given, prints the table and
the first misses and false alarms, and fails when any precision or recall is under ``--min``.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from detectors.messages import hash_person
from streams.settings import Settings

HOARDING = "HOARDING"
Key = tuple[str, str, str | None]


@dataclass(slots=True)
class RuleScore:
    """Counts of one rule."""

    expected: int = 0
    raised: int = 0
    matched: int = 0

    @property
    def precision(self) -> float:
        """Share of raised alerts that were expected (1.0 when none were raised)."""
        return self.matched / self.raised if self.raised else 1.0

    @property
    def recall(self) -> float:
        """Share of expected alerts that were raised (1.0 when none were expected)."""
        return self.matched / self.expected if self.expected else 1.0


@dataclass(slots=True)
class Report:
    """The outcome of scoring: per rule, overall, and what did not match."""

    rules: dict[str, RuleScore] = field(default_factory=dict)
    overall: RuleScore = field(default_factory=RuleScore)
    misses: list[Mapping[str, Any]] = field(default_factory=list)
    false_alarms: list[Mapping[str, Any]] = field(default_factory=list)
    severity_mismatches: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = field(
        default_factory=list
    )

    def worst(self) -> float:
        """The lowest precision or recall, overall or of any rule."""
        scores = [self.overall, *self.rules.values()]
        return min(min(s.precision, s.recall) for s in scores)


def label_key(label: Mapping[str, Any], psn_key: bytes) -> Key:
    """(rule, trigger msgid, subject) of a label; the subject of HOARDING is the person hash."""
    rule = str(label["rule"])
    if rule == HOARDING:
        psn = label.get("psn_no")
        subject = hash_person(str(psn), psn_key) if psn else None
    else:
        subject = label.get("drug_trac_codg")
    return rule, str(label["trigger_msgid"]), subject


def alert_key(alert: Mapping[str, Any]) -> Key:
    """(rule, trigger msgid, subject) of an alert."""
    rule = str(alert["rule"])
    subject = alert.get("psn_hash") if rule == HOARDING else alert.get("drug_trac_codg")
    return rule, str(alert["trigger_msgid"]), subject


def score(
    alerts: Iterable[Mapping[str, Any]],
    labels: Iterable[Mapping[str, Any]],
    psn_key: bytes = b"",
) -> Report:
    """Match alerts to labels (see the module docstring) and count per rule."""
    report = Report()
    pending: dict[Key, list[Mapping[str, Any]]] = {}
    for label in labels:
        key = label_key(label, psn_key)
        pending.setdefault(key, []).append(label)
        report.rules.setdefault(key[0], RuleScore()).expected += 1
    for alert in alerts:
        key = alert_key(alert)
        rule = report.rules.setdefault(key[0], RuleScore())
        rule.raised += 1
        waiting = pending.get(key)
        if waiting:
            label = waiting.pop(0)
            rule.matched += 1
            wanted = label.get("severity")
            if wanted and wanted != alert.get("severity"):
                report.severity_mismatches.append((label, alert))
        else:
            report.false_alarms.append(alert)
    for waiting in pending.values():
        report.misses.extend(waiting)
    for rule in report.rules.values():
        report.overall.expected += rule.expected
        report.overall.raised += rule.raised
        report.overall.matched += rule.matched
    report.rules = dict(sorted(report.rules.items()))
    return report


def format_report(report: Report, show: int = 10) -> str:
    """The table, then the first ``show`` misses and false alarms."""
    lines = [f"{'rule':<24}{'expected':>9}{'raised':>8}{'matched':>8}"
             f"{'precision':>11}{'recall':>8}"]
    rows = [*report.rules.items(), ("overall", report.overall)]
    for name, s in rows:
        lines.append(f"{name:<24}{s.expected:>9}{s.raised:>8}{s.matched:>8}"
                     f"{s.precision:>11.4f}{s.recall:>8.4f}")
    if report.severity_mismatches:
        lines.append(f"severity differs on {len(report.severity_mismatches)} matched alerts")
        for label, alert in report.severity_mismatches[:show]:
            lines.append(f"  {label['rule']} {label['trigger_msgid']} "
                         f"{label.get('drug_trac_codg')}: expected {label.get('severity')}, "
                         f"got {alert.get('severity')}")
    if report.misses:
        lines.append(f"misses ({len(report.misses)}), first {min(show, len(report.misses))}:")
        for label in report.misses[:show]:
            lines.append(f"  {label['rule']} {label['trigger_msgid']} "
                         f"{label.get('drug_trac_codg') or label.get('psn_no')}: "
                         f"{label.get('note', '')}")
    if report.false_alarms:
        lines.append(f"false alarms ({len(report.false_alarms)}), "
                     f"first {min(show, len(report.false_alarms))}:")
        for alert in report.false_alarms[:show]:
            lines.append(f"  {alert['rule']} {alert.get('severity')} {alert['trigger_msgid']} "
                         f"{alert.get('drug_trac_codg') or alert.get('psn_hash')}: "
                         f"{alert.get('reason', '')}")
    return "\n".join(lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line of a JSON-lines file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def check_alerts(log: Path, settings: Settings) -> list[dict[str, Any]]:
    """The alerts the real rules raise over ``log`` (what ``tracewatch check`` prints)."""
    from streams.offline import run_check
    from streams.reference import rule_config

    out = io.BytesIO()
    run_check(log, rule_config(settings), settings.psn_key_bytes, out, err=io.StringIO())
    return [orjson.loads(line) for line in out.getvalue().splitlines() if line]


def run_evaluate(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    """``tracewatch evaluate``: 0 when every precision and recall reaches ``--min``, else 1."""
    stream = out or sys.stdout
    for path, what in ((args.log, "log"), (args.labels, "labels")):
        if not path.is_file():
            print(f"tracewatch evaluate: no such {what} file: {path}", file=sys.stderr)
            return 2
    labels = read_jsonl(args.labels)
    if args.alerts is not None:
        if not args.alerts.is_file():
            print(f"tracewatch evaluate: no such alerts file: {args.alerts}", file=sys.stderr)
            return 2
        alerts = read_jsonl(args.alerts)
    else:
        alerts = check_alerts(args.log, settings)
    report = score(alerts, labels, settings.psn_key_bytes)
    print(format_report(report, args.show), file=stream)
    severities = Counter(str(a.get("severity")) for a in alerts)
    print("alerts by severity: " + ", ".join(f"{k} {v}" for k, v in sorted(severities.items())),
          file=stream)
    worst = report.worst()
    if worst < args.min:
        print(f"tracewatch evaluate: lowest precision/recall {worst:.4f} is under {args.min}",
              file=sys.stderr)
        return 1
    return 0
