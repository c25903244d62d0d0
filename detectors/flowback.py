"""FLOWBACK (回流): a sold box back in an institution's stock.

Business rule: a box sold to a patient (on insurance) does not come back. When a code with a
standing sale shows up in stock — listed in a 3501 inventory count, or in a 3502 inventory
change whose type brings stock in — the box was bought back from the patient to be resold:
回流药. Each (standing sale, institution) pair raises once, so a box counted every day is one
case, not one a day.

Key: the normalised trace code. State: the code's standing sales and the pairs already
reported. Thresholds: the stock-in change types (default ``{"101"}``).

What to do: inspect the institution's stock and its purchase records for the box; the sale
it came from names the patient (by pseudonym) who sold it back.
"""

from __future__ import annotations

from typing import Final

from detectors.evidence import code_alert, sale_evidence
from detectors.model import Alert, CodeEvent, CodeState, Kind, Rule, fingerprint

RULE: Final = Rule.FLOWBACK


def flowback_key(event: CodeEvent, sale_msgid: str) -> str:
    """Identity of one (standing sale, stocking institution) pair."""
    return fingerprint(sale_msgid, event.fixmedins_code)


def detect(state: CodeState, event: CodeEvent) -> list[Alert]:
    """Alerts for a stock sighting against the code's standing sales."""
    if event.kind is not Kind.STOCK or not state.sales:
        return []
    latest = max(state.sales, key=lambda sale: sale.time)
    if flowback_key(event, latest.msgid) in state.flowback_seen:
        return []
    where = "盘存" if event.infno == "3501" else "入库"
    reason = (
        f"追溯码 {event.code} 已于 {sale_evidence(latest).event_time} 在 "
        f"{latest.fixmedins_code}（{latest.mdtrtarea_admvs}）销售且未退货，"
        f"却出现在 {event.fixmedins_code} 的{where}记录中"
    )
    evidence = tuple(sale_evidence(sale) for sale in state.sales)
    alert = code_alert(RULE, "high", event, reason, evidence, amount=latest.amount)
    return [alert]
