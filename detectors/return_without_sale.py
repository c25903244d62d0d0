"""RETURN_WITHOUT_SALE (无销售退货): a return of a box the institution never sold.

Business rule: a 3506 sale return must undo a standing sale of the same institution. A
return listing a code with no standing sale there refunds a sale that does not exist (or was
already returned or deleted): a data error at best, a way to reverse stock records at worst.

Key: the normalised trace code. State: the code's standing sales. Thresholds: none.

What to do: ask the institution for the original sale record.
"""

from __future__ import annotations

from typing import Final

from detectors.evidence import code_alert, sale_evidence
from detectors.model import Alert, CodeEvent, CodeState, Kind, Rule

RULE: Final = Rule.RETURN_WITHOUT_SALE


def detect(state: CodeState, event: CodeEvent) -> list[Alert]:
    """Alerts for a return against the code's state before the return is applied."""
    if event.kind is not Kind.RETURN:
        return []
    if any(sale.fixmedins_code == event.fixmedins_code for sale in state.sales):
        return []
    reason = f"追溯码 {event.code} 在 {event.fixmedins_code} 没有有效的销售记录，却被退货"
    evidence = tuple(sale_evidence(sale, note="其他机构的有效销售") for sale in state.sales)
    return [code_alert(RULE, "medium", event, reason, evidence)]
