"""SPLIT_OVERDISPENSE (拆零超量): more units dispensed from one box than it holds.

Business rule: a box split (拆零) across several sales may give out at most the box's
``pack_units`` smallest units (catalog). When the standing split units of one code exceed
that, units were billed that never existed in the box. The units of a split sale that lists
several codes are drawn from them in order, each up to what it has left; any excess goes to
the last code.

Key: the normalised trace code. State: the standing split sales and their units (a split
return gives its units back). Threshold: the catalog's ``pack_units`` for the code's product
key; without a catalog entry the rule does not fire.

What to do: compare the dispensing records with the prescription; repeated cases at one
hospital point to billing more units than dispensed.
"""

from __future__ import annotations

from typing import Final

from detectors.evidence import code_alert, sale_evidence
from detectors.model import Alert, CodeEvent, CodeState, Kind, Rule

RULE: Final = Rule.SPLIT_OVERDISPENSE


def units_left(state: CodeState, pack_units: int | None) -> float:
    """Units still in the box, or infinity when the pack size is unknown."""
    if pack_units is None:
        return float("inf")
    return max(0.0, pack_units - state.split_units)


def detect(state_after: CodeState, event: CodeEvent, pack_units: int | None) -> list[Alert]:
    """Alerts for a split sale, judged on the state after the sale has been recorded."""
    if event.kind is not Kind.SALE or not event.split or pack_units is None:
        return []
    dispensed = state_after.split_units
    if dispensed <= pack_units:
        return []
    reason = (
        f"追溯码 {event.code} 一盒 {pack_units} 个最小单位，拆零累计已发 {dispensed:g} 个，"
        f"超出 {dispensed - pack_units:g} 个"
    )
    evidence = tuple(sale_evidence(sale) for sale in state_after.sales if sale.split)
    return [code_alert(RULE, "high", event, reason, evidence)]
