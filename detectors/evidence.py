"""Shared pieces for building alerts: evidence records and the alert constructor."""

from __future__ import annotations

from detectors.model import (
    Alert,
    CodeEvent,
    Evidence,
    Rule,
    SaleRecord,
    Severity,
    format_time,
)


def sale_evidence(sale: SaleRecord, note: str | None = None) -> Evidence:
    """A standing sale as evidence."""
    return Evidence(
        msgid=sale.msgid,
        infno="3505",
        fixmedins_code=sale.fixmedins_code,
        fixmedins_bchno=sale.bchno,
        event_time=format_time(sale.time),
        mdtrtarea_admvs=sale.mdtrtarea_admvs,
        psn_hash=sale.psn_hash,
        amount=round(sale.amount, 2),
        note=note,
    )


def code_alert(
    rule: Rule,
    severity: Severity,
    event: CodeEvent,
    reason: str,
    evidence: tuple[Evidence, ...] = (),
    amount: float | None = None,
) -> Alert:
    """An alert about one code, triggered by ``event``."""
    return Alert(
        rule=rule,
        severity=severity,
        drug_trac_codg=event.code,
        psn_hash=event.psn_hash,
        med_list_codg=event.med_list_codg,
        fixmedins_code=event.fixmedins_code,
        mdtrtarea_admvs=event.mdtrtarea_admvs,
        trigger_msgid=event.msgid,
        event_time=format_time(event.time),
        evidence=evidence,
        amount=event.amount if amount is None else amount,
        reason=reason,
        seq=event.seq,
    )


def hours_between(a: int, b: int) -> float:
    """Absolute distance between two business times, in hours."""
    return abs(a - b) / 3600
