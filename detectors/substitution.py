"""SUBSTITUTION (串换): a box billed as another drug.

Business rule: the trace code's product (its 7-digit product key or GTIN) belongs to one
drug in the catalog; a sale that bills it under another ``med_list_codg`` charges the fund
for a drug that was not dispensed — usually a cheap drug billed as an expensive one. Without
a catalog entry, the code's first billed drug is the reference: a box cannot change drug.

Key: the normalised trace code. State: the drug the code was first billed as. Thresholds:
none; any difference fires.

What to do: compare the two drugs' prices; check the pharmacy's stock of the billed drug.
"""

from __future__ import annotations

from typing import Final

from detectors.evidence import code_alert
from detectors.model import Alert, CatalogEntry, CodeEvent, CodeState, Kind, Rule

RULE: Final = Rule.SUBSTITUTION


def detect(state: CodeState, event: CodeEvent, entry: CatalogEntry | None) -> list[Alert]:
    """Alerts for ``event`` against the catalog entry and the code's first billed drug."""
    if event.kind is not Kind.SALE or not event.med_list_codg:
        return []
    billed = event.med_list_codg
    if entry is not None and entry.med_list_codg != billed:
        reason = (
            f"追溯码 {event.code} 属于 {entry.drug_name}（{entry.med_list_codg}），"
            f"却按 {billed} 结算"
        )
        return [code_alert(RULE, "high", event, reason)]
    if entry is None and state.first_drug is not None and state.first_drug != billed:
        reason = f"追溯码 {event.code} 首次按 {state.first_drug} 结算，此次却按 {billed} 结算"
        return [code_alert(RULE, "high", event, reason)]
    return []
