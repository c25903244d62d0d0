"""``tracewatch simulate``: reproducible, well-formed traffic whose labels are exactly what the
real rules raise over it."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.codes import CodeKind, gs1_check_digit_ok, normalise
from detectors.messages import parse
from detectors.model import Rule
from streams.cli import main
from streams.evaluate import score
from streams.offline import run_check
from streams.reference import CATALOG_HEADER, rule_config
from streams.settings import load_settings
from streams.simulate import simulate

SMALL = {"days": 3, "institutions": 60, "people": 3000}


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(out, seed=11, **SMALL)
    return out


@pytest.fixture(scope="module")
def messages(run_dir: Path) -> list[dict[str, Any]]:
    return lines(run_dir / "messages.jsonl")


@pytest.fixture(scope="module")
def labels(run_dir: Path) -> list[dict[str, Any]]:
    return lines(run_dir / "labels.jsonl")


def test_same_seed_same_bytes_other_seed_other_bytes(run_dir: Path, tmp_path: Path) -> None:
    simulate(tmp_path / "again", seed=11, **SMALL)
    for name in ("messages.jsonl", "catalog.csv", "labels.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (run_dir / name).read_bytes(), name
    simulate(tmp_path / "other", seed=12, **SMALL)
    other = (tmp_path / "other" / "messages.jsonl").read_bytes()
    assert other != (run_dir / "messages.jsonl").read_bytes()


def test_every_message_is_valid_and_in_arrival_order(messages: list[dict[str, Any]]) -> None:
    assert len(messages) > 1000
    for message in messages:
        parse(message, b"k")  # raises BadInput on anything malformed
    times = [m["inf_time"] for m in messages]
    assert times == sorted(times)
    for message in messages:
        sel = message["input"].get("selinfo")
        if sel is not None:
            assert sel["sel_retn_time"] <= message["inf_time"]
    assert {m["infno"] for m in messages} == {"3501", "3502", "3503", "3504", "3505", "3506",
                                               "3507"}
    regions = {m["mdtrtarea_admvs"] for m in messages}
    assert all(len(r) == 6 and r.isdigit() for r in regions) and "500103" in regions
    codes = {m["fixmedins_code"] for m in messages}
    assert all(c[0] in "PH" and len(c) == 12 and c[1:].isdigit() for c in codes)


def test_legitimate_traffic_has_the_hard_cases(messages: list[dict[str, Any]]) -> None:
    """The key test below only means something if the noise that must stay quiet is there."""
    seen: Counter[str] = Counter()
    ids = Counter(m["msgid"] for m in messages)
    seen["retry"] = sum(1 for n in ids.values() if n > 1)
    records = Counter(
        (m["fixmedins_code"], m["infno"], m["input"]["selinfo"]["fixmedins_bchno"])
        for m in messages if m["infno"] == "3505"
    )
    seen["same record again"] = sum(1 for n in records.values() if n > 1)
    kinds: Counter[CodeKind] = Counter()
    for m in messages:
        section = m["input"].get("selinfo") or m["input"].get("invinfo") or {}
        raws = [item["drug_trac_codg"] for item in section.get("drugtracinfo", [])]
        kinds.update(normalise(raw).kind for raw in raws)
        if m["infno"] == "3505" and section["trdn_flag"] == "1":
            seen["split"] += 1
            seen["split over two boxes"] += len(raws) == 2
        if m["infno"] == "3506":
            seen["return"] += 1
        if m["infno"] == "3507" and m["input"]["data"]["inv_data_type"] == "4":
            seen["delete sale"] += 1
        if m["infno"] == "3502" and section["inv_chg_type"] != "101":
            seen["other change"] += 1
        if any(raw != raw.strip() or raw.startswith("01") for raw in raws):
            seen["unusual spelling"] += 1
    for case in ("retry", "same record again", "split", "split over two boxes", "return",
                 "delete sale", "other change", "unusual spelling"):
        assert seen[case] > 0, case
    assert kinds[CodeKind.CODE20] and kinds[CodeKind.GS1] and kinds[CodeKind.ENTERPRISE]


def test_catalog_is_valid(run_dir: Path) -> None:
    with (run_dir / "catalog.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CATALOG_HEADER
    assert 40 <= len(rows) <= 80
    gtins = 0
    for row in rows:
        key = row["product_key"]
        if len(key) == 14:
            assert gs1_check_digit_ok(key), key
            gtins += 1
        else:
            assert len(key) == 7 and key.startswith("8") and key.isdigit(), key
        assert len(row["med_list_codg"]) == 23
        assert int(row["pack_units"]) in (12, 24, 28, 48, 100)
    assert gtins >= 3
    assert len({row["product_key"] for row in rows}) == len(rows)


def test_labels_name_real_messages_and_normalised_codes(
    messages: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> None:
    msgids = {m["msgid"] for m in messages}
    for label in labels:
        assert set(label) >= {"rule", "trigger_msgid", "drug_trac_codg", "psn_no", "note"}
        assert label["trigger_msgid"] in msgids
        code = label["drug_trac_codg"]
        if label["rule"] == "HOARDING":
            assert code is None and label["psn_no"]
        else:
            assert normalise(code).code == code


def test_every_rule_is_in_the_labels(labels: list[dict[str, Any]]) -> None:
    assert {label["rule"] for label in labels} == {str(rule) for rule in Rule}
    severities = {label["severity"] for label in labels if label["rule"] == "DUPLICATE_SALE"}
    assert severities == {"medium", "high", "critical"}


def test_real_rules_raise_exactly_the_labels(run_dir: Path, labels: list[dict[str, Any]]) -> None:
    settings = dataclasses.replace(load_settings({}), catalog=run_dir / "catalog.csv")
    out = io.BytesIO()
    stats = run_check(run_dir / "messages.jsonl", rule_config(settings), settings.psn_key_bytes,
                      out, err=io.StringIO())
    assert stats.bad == 0
    alerts = [orjson.loads(line) for line in out.getvalue().splitlines()]
    report = score(alerts, labels, settings.psn_key_bytes)
    assert report.misses == [] and report.false_alarms == []
    assert report.overall.precision == report.overall.recall == 1.0
    assert report.severity_mismatches == []


def test_cli_writes_the_three_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["simulate", "--seed", "3", "--days", "1", "--institutions", "20", "--people", "300",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "messages" in capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == {"messages.jsonl", "catalog.csv", "labels.jsonl"}


def test_too_small_a_world_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        simulate(tmp_path, seed=1, days=1, institutions=5, people=10)
