"""``tracewatch evaluate``: matching alerts to labels, the table, and the exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.messages import hash_person
from streams.cli import main
from streams.evaluate import format_report, score
from tests.factory import CHENGDU, CHONGQING, sale

KEY = b"k"


def alert(rule: str, msgid: str, code: str | None = None, psn_hash: str | None = None,
          severity: str = "high") -> dict[str, Any]:
    return {"rule": rule, "trigger_msgid": msgid, "drug_trac_codg": code, "psn_hash": psn_hash,
            "severity": severity, "reason": f"{rule} 原因"}


def label(rule: str, msgid: str, code: str | None = None, psn: str | None = None,
          severity: str = "high") -> dict[str, Any]:
    return {"rule": rule, "trigger_msgid": msgid, "drug_trac_codg": code, "psn_no": psn,
            "severity": severity, "note": "n"}


def test_perfect() -> None:
    report = score([alert("FLOWBACK", "m1", "c1")], [label("FLOWBACK", "m1", "c1")], KEY)
    assert report.overall.precision == report.overall.recall == 1.0
    assert report.misses == [] and report.false_alarms == []
    assert report.worst() == 1.0


def test_miss_and_false_alarm_are_counted_per_rule() -> None:
    alerts = [alert("DUPLICATE_SALE", "m1", "c1"), alert("DUPLICATE_SALE", "m2", "c2"),
              alert("INVALID_CODE", "m3", "x")]
    labels = [label("DUPLICATE_SALE", "m1", "c1"), label("DUPLICATE_SALE", "m2", "other"),
              label("EXPIRED_SALE", "m4", "c4")]
    report = score(alerts, labels, KEY)
    dup = report.rules["DUPLICATE_SALE"]
    assert (dup.expected, dup.raised, dup.matched) == (2, 2, 1)
    assert dup.precision == dup.recall == 0.5
    assert report.rules["INVALID_CODE"].precision == 0.0
    assert report.rules["INVALID_CODE"].recall == 1.0
    assert report.rules["EXPIRED_SALE"].recall == 0.0
    assert report.overall.matched == 1 and report.overall.expected == 3
    assert [m["trigger_msgid"] for m in report.misses] == ["m2", "m4"]
    assert [a["trigger_msgid"] for a in report.false_alarms] == ["m2", "m3"]
    assert report.worst() == 0.0


def test_hoarding_matches_on_the_hashed_person() -> None:
    psn_hash = hash_person("PSN1", KEY)
    report = score([alert("HOARDING", "m9", None, psn_hash)], [label("HOARDING", "m9", None,
                                                                     "PSN1")], KEY)
    assert report.overall.matched == 1
    wrong_key = score([alert("HOARDING", "m9", None, psn_hash)],
                      [label("HOARDING", "m9", None, "PSN1")], b"other")
    assert wrong_key.overall.matched == 0


def test_labels_and_alerts_are_multisets() -> None:
    report = score([alert("BARCODE_AS_TRACE_CODE", "m1", "6901234567892")] * 2,
                   [label("BARCODE_AS_TRACE_CODE", "m1", "6901234567892")], KEY)
    assert report.overall.matched == 1 and len(report.false_alarms) == 1


def test_severity_differences_are_reported_but_still_match() -> None:
    report = score([alert("DUPLICATE_SALE", "m1", "c1", severity="high")],
                   [label("DUPLICATE_SALE", "m1", "c1", severity="critical")], KEY)
    assert report.overall.matched == 1 and len(report.severity_mismatches) == 1
    assert "expected critical, got high" in format_report(report)


def test_nothing_expected_nothing_raised_is_perfect() -> None:
    assert score([], [], KEY).worst() == 1.0


def test_report_lists_misses_and_false_alarms_with_reasons() -> None:
    report = score([alert("FLOWBACK", "m1", "c1")], [label("SUBSTITUTION", "m2", "c2")], KEY)
    text = format_report(report, show=5)
    assert "FLOWBACK" in text and "SUBSTITUTION" in text and "overall" in text
    assert "FLOWBACK 原因" in text and "misses (1)" in text and "false alarms (1)" in text
    assert "misses" not in format_report(score([], [], KEY))


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


@pytest.fixture
def story(tmp_path: Path) -> tuple[Path, Path]:
    """A box sold in Chengdu, then in Chongqing two hours later: one critical duplicate."""
    code = "83857930000000000001"
    log = write(tmp_path / "log.jsonl", [
        sale([code], CHENGDU, "2026-11-01 09:00:00", msgid="A", bchno="S1", psn="PSN1"),
        sale([code], CHONGQING, "2026-11-01 11:00:00", msgid="B", bchno="S2", psn="PSN2"),
    ])
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("product_key,med_list_codg,drug_name,pack_units\n"
                       "8385793,XA10BAE054A001010101445,二甲双胍片,48\n", encoding="utf-8")
    return log, catalog


def test_cli_runs_the_rules_and_exits_0_when_all_match(
    story: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, catalog = story
    labels = write(tmp_path / "labels.jsonl",
                   [label("DUPLICATE_SALE", "B", "83857930000000000001", "PSN2", "critical")])
    assert main(["evaluate", str(log), str(labels), "--catalog", str(catalog)]) == 0
    out = capsys.readouterr().out
    assert "DUPLICATE_SALE" in out and "1.0000" in out


def test_cli_exits_1_under_min_and_0_when_min_is_lowered(
    story: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, catalog = story
    labels = write(tmp_path / "labels.jsonl", [
        label("DUPLICATE_SALE", "B", "83857930000000000001", "PSN2", "critical"),
        label("DUPLICATE_SALE", "A", "83857930000000000001", "PSN1", "high"),
    ])
    assert main(["evaluate", str(log), str(labels), "--catalog", str(catalog)]) == 1
    assert "misses (1)" in capsys.readouterr().out
    assert main(["evaluate", str(log), str(labels), "--catalog", str(catalog),
                 "--min", "0.5"]) == 0
    assert main(["evaluate", str(log), str(labels), "--catalog", str(catalog),
                 "--min", "0.6"]) == 1


def test_cli_judges_an_alerts_file(
    story: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, _ = story
    labels = write(tmp_path / "labels.jsonl", [label("FLOWBACK", "A", "c")])
    alerts = write(tmp_path / "alerts.jsonl", [alert("FLOWBACK", "A", "c"),
                                               alert("FLOWBACK", "B", "c")])
    assert main(["evaluate", str(log), str(labels), "--alerts", str(alerts)]) == 1
    assert "false alarms (1)" in capsys.readouterr().out
    assert main(["evaluate", str(log), str(labels), "--alerts", str(alerts), "--min", "0.5"]) == 0


def test_cli_exits_2_on_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["evaluate", str(missing), str(missing)]) == 2
