"""The code ledger's step on a box it does not know yet: the boxes of one sale share a state."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from detectors.code_ledger import step
from detectors.model import CodeEvent, CodeState, Kind
from tests.factory import CONFIG

SALE = CodeEvent("83857930000000000001", Kind.SALE, "3505", "H1202611020000100001", "H1",
                 "510104", "XS2026110200014375", 1_793_600_000, "XA01", "a" * 16, False, 1.0,
                 12.5, None, (), 3)
OTHER = replace(SALE, code="83857930000000000009", msgid="H2", fixmedins_code="H2", time=5)


def _first_state(event: CodeEvent) -> CodeState | None:
    return step(None, event, CONFIG).state


def _fresh_state(event: CodeEvent) -> CodeState | None:
    """The state of ``event`` right after a sale of another message."""
    _first_state(OTHER)
    return _first_state(event)


def test_the_boxes_of_one_sale_share_their_first_state() -> None:
    first = _fresh_state(SALE)
    second = _first_state(replace(SALE, code="83857930000000000002"))
    assert second is first
    assert first == _fresh_state(replace(SALE, code="83857930000000000003"))
    people = step(None, replace(SALE, code="83857930000000000004"), CONFIG).person_events
    assert [person.code for person in people] == ["83857930000000000004"]


@pytest.mark.parametrize("change", [
    {"msgid": "H1202611020000100002"}, {"bchno": "XS2026110200014376"},
    {"time": SALE.time + 1}, {"fixmedins_code": "H9"}, {"infno": "3506"},
    {"mdtrtarea_admvs": "510105"}, {"psn_hash": "b" * 16}, {"psn_hash": None},
    {"med_list_codg": "XA02"}, {"med_list_codg": None}, {"amount": 12.51}, {"amount": 0.0},
])
def test_a_sale_that_differs_in_anything_but_its_code_gets_its_own_state(
    change: dict[str, Any],
) -> None:
    variant = replace(SALE, code="83857930000000000005", **change)
    shared = _fresh_state(SALE)
    own = _first_state(variant)
    assert own is not shared
    assert own == _fresh_state(variant)


def test_a_negative_zero_amount_is_not_taken_for_zero() -> None:
    zero = replace(SALE, amount=0.0)
    _fresh_state(zero)
    negative = _first_state(replace(SALE, code="83857930000000000006", amount=-0.0))
    assert negative is not None and str(negative.sales[0].amount) == "-0.0"
