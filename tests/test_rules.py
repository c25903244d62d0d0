"""Rule tables: every line of SPEC §4 for the code rules, including the tricky cases.

Each case is a short story of NHSA messages and the exact alerts it must raise, as
(rule, severity, code, triggering msgid).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from detectors.messages import hash_person
from detectors.model import CatalogEntry, RuleConfig
from tests.factory import (
    AMOXICILLIN,
    CHENGDU,
    CHENGDU_2,
    CHENGDU_HOSPITAL,
    CHONGQING,
    CONFIG,
    EXPENSIVE,
    METFORMIN,
    change,
    code,
    count,
    delete,
    ret,
    run,
    sale,
    summary,
)

A, B, C = code(1), code(2), code(3)
PILL = "8600001"  # amoxicillin, 24 capsules a box
P1, P2, P3 = code(1, PILL), code(2, PILL), code(3, PILL)
GS1_BRACKETS = "(01)06901234567892(17)271231(10)L01(21)SER123"
GS1_RAW = "0106901234567892172712311" + "0L01\x1d21SER123"
GS1_CANONICAL = "(01)06901234567892(21)SER123"

Case = tuple[list[dict[str, Any]], list[tuple[str, str, str | None, str]]]

CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- DUPLICATE_SALE
    "one sale raises nothing": ([sale([A, B], msgid="m1")], []),
    "same institution sells the box twice: medium": (
        [sale([A], msgid="m1"), sale([A], msgid="m2", bchno="S2", when="2026-11-02 09:00:00")],
        [("DUPLICATE_SALE", "medium", A, "m2")],
    ),
    "another institution, same city: high": (
        [sale([A], msgid="m1"),
         sale([A], CHENGDU_2, "2026-11-01 10:00:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", A, "m2")],
    ),
    "another city within 24 h: critical": (
        [sale([A], msgid="m1"),
         sale([A], CHONGQING, "2026-11-01 17:30:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "critical", A, "m2")],
    ),
    "another city after 24 h: high": (
        [sale([A], msgid="m1"),
         sale([A], CHONGQING, "2026-11-02 09:00:01", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", A, "m2")],
    ),
    "another city exactly 24 h later: critical": (
        [sale([A], msgid="m1"),
         sale([A], CHONGQING, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "critical", A, "m2")],
    ),
    "severity against the latest standing sale": (
        [sale([A], msgid="m1"),
         sale([A], CHENGDU_2, "2026-11-05 09:00:00", msgid="m2", bchno="X1"),
         sale([A], CHENGDU_2, "2026-11-06 09:00:00", msgid="m3", bchno="X2")],
        [("DUPLICATE_SALE", "high", A, "m2"), ("DUPLICATE_SALE", "medium", A, "m3")],
    ),
    "only the listed code that was sold raises": (
        [sale([A], msgid="m1"),
         sale([A, B], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", A, "m2")],
    ),
    "return then resale: nothing": (
        [sale([A], msgid="m1"), ret([A], msgid="r1"),
         sale([A], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [],
    ),
    "return at another institution does not undo the sale": (
        [sale([A], msgid="m1"), ret([A], CHENGDU_2, msgid="r1"),
         sale([A], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [("RETURN_WITHOUT_SALE", "medium", A, "r1"), ("DUPLICATE_SALE", "high", A, "m2")],
    ),
    "delete then resale: nothing": (
        [sale([A], msgid="m1"), delete("S1", msgid="d1"),
         sale([A], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [],
    ),
    "delete then re-send of the same record number: nothing": (
        [sale([A], msgid="m1"), delete("S1", msgid="d1"),
         sale([A], msgid="m1b", when="2026-11-01 12:05:00")],
        [],
    ),
    "delete of another institution's record number does nothing": (
        [sale([A], msgid="m1"), delete("S1", CHENGDU_2, msgid="d1"),
         sale([A], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", A, "m2")],
    ),
    "delete of a count record (type 1) does not undo a sale": (
        [sale([A], msgid="m1"), delete("S1", data_type="1", msgid="d1"),
         sale([A], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", A, "m2")],
    ),
    "retry under the same msgid: nothing": (
        [sale([A, B], msgid="m1"), sale([A, B], msgid="m1")],
        [],
    ),
    "re-upload under a new msgid, same record number: nothing": (
        [sale([A, B], msgid="m1"), sale([A, B], msgid="m1-again", when="2026-11-01 09:00:05")],
        [],
    ),
    "example story: alert stays raised after the delete": (
        [sale([A, B], msgid="EX1"), ret([B], msgid="EX2"),
         sale([A], CHONGQING, "2026-11-01 17:30:00", msgid="EX4", bchno="S7001"),
         count([B], msgid="EX5"), delete("S7001", CHONGQING, msgid="EX6")],
        [("DUPLICATE_SALE", "critical", A, "EX4")],
    ),
    "GS1 code written two ways is one box": (
        [sale([GS1_BRACKETS], drug=EXPENSIVE, msgid="m1"),
         sale([GS1_RAW], CHENGDU_2, "2026-11-02 09:00:00", drug=EXPENSIVE, msgid="m2",
              bchno="X1")],
        [("DUPLICATE_SALE", "high", GS1_CANONICAL, "m2")],
    ),
    "whitespace around a code is stripped": (
        [sale([A], msgid="m1"),
         sale([f"  {A}\t"], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", A, "m2")],
    ),
    "enterprise codes are tracked too": (
        [sale(["ENT0001234"], msgid="m1"),
         sale(["ENT0001234"], CHENGDU_2, "2026-11-02 09:00:00", msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", "ENT0001234", "m2")],
    ),
    # ---------------------------------------------------------------- split sales
    "split across three sales within the box: nothing": (
        [sale([P1], CHENGDU_HOSPITAL, "2026-11-02 15:00:00", split=True, count=8, bchno="H1",
              drug=AMOXICILLIN),
         sale([P1], CHENGDU_HOSPITAL, "2026-11-03 15:00:00", split=True, count=8, bchno="H2",
              drug=AMOXICILLIN),
         sale([P1], CHENGDU_HOSPITAL, "2026-11-04 15:00:00", split=True, count=8, bchno="H3",
              drug=AMOXICILLIN)],
        [],
    ),
    "split across three sales past the box: SPLIT_OVERDISPENSE": (
        [sale([P1], CHENGDU_HOSPITAL, "2026-11-02 15:00:00", split=True, count=10, bchno="H1",
              drug=AMOXICILLIN),
         sale([P1], CHENGDU_HOSPITAL, "2026-11-03 15:00:00", split=True, count=10, bchno="H2",
              drug=AMOXICILLIN),
         sale([P1], CHENGDU_HOSPITAL, "2026-11-04 15:00:00", split=True, count=10, bchno="H3",
              drug=AMOXICILLIN, msgid="h3")],
        [("SPLIT_OVERDISPENSE", "high", P1, "h3")],
    ),
    "split return gives units back": (
        [sale([P1], CHENGDU_HOSPITAL, "2026-11-02 15:00:00", split=True, count=20, bchno="H1",
              drug=AMOXICILLIN),
         ret([P1], CHENGDU_HOSPITAL, "2026-11-02 16:00:00", split=True, count=10, returns="H1",
             drug=AMOXICILLIN),
         sale([P1], CHENGDU_HOSPITAL, "2026-11-03 15:00:00", split=True, count=14, bchno="H2",
              drug=AMOXICILLIN)],
        [],
    ),
    "multi-code split draws in order, excess on the last code": (
        [sale([P1], CHENGDU_HOSPITAL, "2026-11-02 15:00:00", split=True, count=20, bchno="H1",
              drug=AMOXICILLIN),
         # P1 has 4 left, P2 24: 40 units → P1 4, P2 36 (excess on the last) → over.
         sale([P1, P2], CHENGDU_HOSPITAL, "2026-11-03 15:00:00", split=True, count=40,
              bchno="H2", drug=AMOXICILLIN, msgid="h2")],
        [("SPLIT_OVERDISPENSE", "high", P2, "h2")],
    ),
    "multi-code split that fits raises nothing": (
        [sale([P1, P2, P3], CHENGDU_HOSPITAL, "2026-11-02 15:00:00", split=True, count=60,
              bchno="H1", drug=AMOXICILLIN),
         sale([P3], CHENGDU_HOSPITAL, "2026-11-03 15:00:00", split=True, count=12, bchno="H2",
              drug=AMOXICILLIN)],
        [],
    ),
    "whole-box sale of a split box: DUPLICATE_SALE": (
        [sale([P1], CHENGDU_HOSPITAL, "2026-11-02 15:00:00", split=True, count=6, bchno="H1",
              drug=AMOXICILLIN),
         sale([P1], CHENGDU, "2026-11-05 09:00:00", drug=AMOXICILLIN, msgid="m2", bchno="X1")],
        [("DUPLICATE_SALE", "high", P1, "m2")],
    ),
    "split sale without a catalog entry never over-dispenses": (
        [sale([code(9, "8111111")], CHENGDU_HOSPITAL, split=True, count=500, bchno="H1"),
         sale([code(9, "8111111")], CHENGDU_HOSPITAL, split=True, count=500, bchno="H2")],
        [],
    ),
    # ---------------------------------------------------------------- SUBSTITUTION
    "billed as another drug than the catalog's: SUBSTITUTION": (
        [sale([A], drug=EXPENSIVE, msgid="m1")],
        [("SUBSTITUTION", "high", A, "m1")],
    ),
    "no catalog entry: first billed drug is the reference": (
        [sale(["ENT0001234"], drug=METFORMIN, msgid="m1"),
         ret(["ENT0001234"], msgid="r1"),
         sale(["ENT0001234"], drug=EXPENSIVE, msgid="m2", bchno="S2",
              when="2026-11-02 09:00:00")],
        [("SUBSTITUTION", "high", "ENT0001234", "m2")],
    ),
    # ---------------------------------------------------------------- FLOWBACK
    "sold box in a count: FLOWBACK, once per institution": (
        [sale([A], msgid="m1"), count([A], CHENGDU_2, msgid="c1"),
         count([A], CHENGDU_2, "2026-11-04 20:00:00", bchno="I2", msgid="c2")],
        [("FLOWBACK", "high", A, "c1")],
    ),
    "sold box brought into stock (3502 type 101): FLOWBACK": (
        [sale([A], msgid="m1"), change([A], CHENGDU_2, msgid="c1")],
        [("FLOWBACK", "high", A, "c1")],
    ),
    "other change types only update counters": (
        [sale([A], msgid="m1"), change([A], CHENGDU_2, change_type="102", msgid="c1")],
        [],
    ),
    "returned box in a count: nothing": (
        [sale([A], msgid="m1"), ret([A]), count([A])],
        [],
    ),
    "stock never sold: nothing": (
        [change([A, B, C]), count([A, B, C]), sale([A], when="2026-11-04 09:00:00")],
        [],
    ),
    "flowed-back box resold: FLOWBACK then DUPLICATE_SALE": (
        [sale([A], msgid="m1"), count([A], CHENGDU_2, msgid="c1"),
         sale([A], CHENGDU_2, "2026-11-05 09:00:00", msgid="m2", bchno="X1")],
        [("FLOWBACK", "high", A, "c1"), ("DUPLICATE_SALE", "high", A, "m2")],
    ),
    # ---------------------------------------------------------------- RETURN_WITHOUT_SALE
    "return of a box never sold: RETURN_WITHOUT_SALE": (
        [ret([A], msgid="r1")],
        [("RETURN_WITHOUT_SALE", "medium", A, "r1")],
    ),
    "return twice: second one has no standing sale": (
        [sale([A]), ret([A], msgid="r1"), ret([A], msgid="r2", bchno="R2")],
        [("RETURN_WITHOUT_SALE", "medium", A, "r2")],
    ),
    "retried return raises nothing more": (
        [ret([A], msgid="r1"), ret([A], msgid="r1")],
        [("RETURN_WITHOUT_SALE", "medium", A, "r1")],
    ),
    # ---------------------------------------------------------------- EXPIRED_SALE
    "sale on the day after expiry: EXPIRED_SALE": (
        [sale([A], when="2026-07-01 09:00:00", expy_end="2026-06-30", msgid="m1")],
        [("EXPIRED_SALE", "medium", A, "m1")],
    ),
    "sale on the expiry day: nothing": (
        [sale([A], when="2026-06-30 23:59:59", expy_end="2026-06-30")],
        [],
    ),
    "expired sale re-uploaded under a new msgid raises once": (
        [sale([A], when="2026-07-01 09:00:00", expy_end="2026-06-30", msgid="m1"),
         sale([A], when="2026-07-01 09:00:00", expy_end="2026-06-30", msgid="m1b")],
        [("EXPIRED_SALE", "medium", A, "m1")],
    ),
    # ---------------------------------------------------------------- code quality
    "69 barcode scanned: BARCODE_AS_TRACE_CODE, not in the ledger": (
        [sale(["6901234567892"], msgid="m1"),
         sale(["6901234567892"], CHENGDU_2, msgid="m2", bchno="X1")],
        [("BARCODE_AS_TRACE_CODE", "low", "6901234567892", "m1"),
         ("BARCODE_AS_TRACE_CODE", "low", "6901234567892", "m2")],
    ),
    "bare GTIN scanned: BARCODE_AS_TRACE_CODE": (
        [sale(["06901234567892"], msgid="m1")],
        [("BARCODE_AS_TRACE_CODE", "low", "06901234567892", "m1")],
    ),
    "invalid codes: INVALID_CODE, valid codes still checked": (
        [sale(["(01)06901234567893(21)X1", "SHORT1", "BAD-CODE-!", "", A], msgid="m1")],
        [("INVALID_CODE", "low", "(01)06901234567893(21)X1", "m1"),
         ("INVALID_CODE", "low", "SHORT1", "m1"),
         ("INVALID_CODE", "low", "BAD-CODE-!", "m1"),
         ("INVALID_CODE", "low", "", "m1")],
    ),
    "invalid code in a retried message raises once": (
        [sale(["SHORT1"], msgid="m1"), sale(["SHORT1"], msgid="m1")],
        [("INVALID_CODE", "low", "SHORT1", "m1")],
    ),
    # ---------------------------------------------------------------- retention
    "a sale older than the retention is forgotten": (
        [sale([A], when="2020-01-01 09:00:00", expy_end="2030-01-01"),
         sale([A], CHENGDU_2, "2026-11-01 09:00:00", bchno="X1")],
        [],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rule_table(name: str) -> None:
    messages, expected = CASES[name]
    assert summary(run(messages)) == expected


def test_duplicate_sale_evidence_names_the_earlier_sale() -> None:
    alerts = run([sale([A, B], msgid="m1", price=12.5),
                  sale([A], CHONGQING, "2026-11-01 17:30:00", msgid="m2", bchno="S7001",
                       price=12.5)])
    (alert,) = alerts
    body = alert.to_dict("2026-11-23T00:00:00+08:00")
    assert body["evidence"] == [{
        "msgid": "m1", "infno": "3505", "fixmedins_code": CHENGDU[0],
        "fixmedins_bchno": "S1", "event_time": "2026-11-01 09:00:00",
        "mdtrtarea_admvs": CHENGDU[1], "psn_hash": alert.evidence[0].psn_hash, "amount": 12.5,
    }]
    assert body["amount"] == 12.5
    assert body["psn_hash"] and body["psn_hash"] != "PSN1"
    assert "PSN1" not in str(body)
    assert "重复" in str(body["reason"]) or "又在" in str(body["reason"])
    for name in ("alert_id", "rule", "severity", "drug_trac_codg", "psn_hash", "med_list_codg",
                 "fixmedins_code", "mdtrtarea_admvs", "trigger_msgid", "event_time",
                 "evidence", "amount", "reason", "detected_at"):
        assert name in body


@pytest.mark.parametrize("key", [b"", b"k", b"a-deployment-secret", bytes(range(64)),
                                 b"x" * 65, bytes(range(200))])
def test_person_hash_is_hmac_sha256_cut_to_16_hex(key: bytes) -> None:
    for psn_no in ("PSN1", "510104199001011234", "患者"):
        expected = hmac.new(key, psn_no.encode(), hashlib.sha256).hexdigest()[:16]
        assert hash_person(psn_no, key) == expected


def test_amount_is_shared_evenly_among_the_codes() -> None:
    alerts = run([sale([A], msgid="m1"),
                  sale([A, B, C, "SHORT1"], CHENGDU_2, msgid="m2", bchno="X1", price=10.0,
                       count=4)])
    by_rule = {str(a.rule): a.amount for a in alerts}
    assert by_rule == {"DUPLICATE_SALE": 10.0, "INVALID_CODE": 10.0}


def test_alert_id_is_deterministic_and_distinct() -> None:
    story = [sale([A], msgid="m1"), sale([A], CHENGDU_2, msgid="m2", bchno="X1"),
             sale([A], CHENGDU_2, msgid="m3", bchno="X2")]
    first, second = run(story), run(story)
    assert [a.alert_id for a in first] == [a.alert_id for a in second]
    assert len({a.alert_id for a in first}) == len(first) == 2


def test_processing_the_same_log_twice_raises_nothing_new() -> None:
    from detectors.messages import parse
    from streams.ledger import MemoryLedger
    from streams.pipeline import Pipeline
    from tests.factory import PSN_KEY

    story = [sale([A], msgid="m1"), sale([A], CHENGDU_2, msgid="m2", bchno="X1"),
             sale(["SHORT1"], msgid="m3", bchno="Q"), count([A], CHONGQING, msgid="c1")]
    pipeline = Pipeline(MemoryLedger(), CONFIG)
    parsed = [(i, parse(m, PSN_KEY)) for i, m in enumerate(story)]
    assert len(pipeline.process(parsed)) == 3
    assert pipeline.process(parsed) == []


def test_cross_city_window_is_configuration() -> None:
    config = RuleConfig(catalog=CONFIG.catalog, cross_city_hours=6)
    alerts = run([sale([A]), sale([A], CHONGQING, "2026-11-01 17:30:00", bchno="X")], config)
    assert alerts[0].severity == "high"


def test_stock_in_types_are_configuration() -> None:
    config = RuleConfig(catalog=CONFIG.catalog, stock_in_change_types=frozenset({"105"}))
    story = [sale([A]), change([A], CHENGDU_2, change_type="101"),
             change([A], CHENGDU_2, change_type="105", bchno="C2", msgid="c2")]
    assert summary(run(story, config)) == [("FLOWBACK", "high", A, "c2")]


def test_substitution_against_catalog_of_gtin() -> None:
    catalog = dict(CONFIG.catalog)
    catalog["06901234567892"] = CatalogEntry("06901234567892", AMOXICILLIN, "药", 10)
    config = RuleConfig(catalog=catalog)
    assert summary(run([sale([GS1_BRACKETS], drug=EXPENSIVE, msgid="g1")], config)) == [
        ("SUBSTITUTION", "high", GS1_CANONICAL, "g1")
    ]
