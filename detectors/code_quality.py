"""Stateless rules on one message: INVALID_CODE, BARCODE_AS_TRACE_CODE and EXPIRED_SALE.

INVALID_CODE (无效追溯码), severity ``low``: a listed code is empty, has characters other than
letters and digits, is shorter than 8 or longer than 100, or is a GS1 string with a wrong
GTIN check digit (SPEC §2). It never enters the ledger. What to do: a data-quality finding
for the institution's scanner or HIS.

BARCODE_AS_TRACE_CODE (商品条码冒充追溯码), severity ``low``: a bare 13-digit number starting
69 or a bare 14-digit GTIN — the product barcode, identical on every box — was scanned in
place of the box's trace code. It never enters the ledger. What to do: retrain the counter
staff; repeated cases hide which box was sold.

EXPIRED_SALE (过期销售), severity ``medium``: a sale's ``sel_retn_time`` falls on a day after
its ``expy_end``. What to do: check the batch (``manu_lotnum``) in stock.

Key: the message; state: none (a retried message is filtered before, by its ``msgid`` and
record number).
"""

from __future__ import annotations

from detectors.codes import CodeKind, NormalisedCode
from detectors.model import Alert, Message, Rule, format_day, format_time


def _alert(
    rule: Rule, severity: str, message: Message, code: str, amount: float, reason: str, seq: int
) -> Alert:
    return Alert(
        rule=rule,
        severity=severity,
        drug_trac_codg=code,
        psn_hash=message.psn_hash,
        med_list_codg=message.med_list_codg,
        fixmedins_code=message.fixmedins_code,
        mdtrtarea_admvs=message.mdtrtarea_admvs,
        trigger_msgid=message.msgid,
        event_time=format_time(message.time),
        evidence=(),
        amount=amount,
        reason=reason,
        seq=seq,
    )


def expired(message: Message) -> bool:
    """True for a sale on a day after its ``expy_end``."""
    return (
        message.infno == "3505"
        and message.expy_end is not None
        and format_day(message.time) > message.expy_end[:10]
    )


def may_raise(message: Message, rejected: int) -> bool:
    """False when :func:`detect` raises nothing for sure: every listed code names a box
    (``rejected`` is how many do not) and the message is not an expired sale."""
    return rejected > 0 or expired(message)


def detect(
    message: Message, codes: list[NormalisedCode], share: float, seq: int = 0
) -> list[Alert]:
    """Alerts for the codes of one message; ``share`` is the amount each code stands for."""
    alerts: list[Alert] = []
    past_expiry = expired(message)
    for code in codes:
        if code.kind is CodeKind.INVALID:
            reason = f"上传的追溯码 {code.code!r} 无效：{code.problem}"
            alerts.append(_alert(Rule.INVALID_CODE, "low", message, code.code, share, reason, seq))
        elif code.kind is CodeKind.BARCODE:
            reason = f"上传的 {code.code} 是商品条码（每盒相同），不是药品追溯码"
            alerts.append(
                _alert(Rule.BARCODE_AS_TRACE_CODE, "low", message, code.code, share, reason, seq)
            )
        elif past_expiry:
            reason = (
                f"追溯码 {code.code} 的药品有效期至 {message.expy_end}，"
                f"却于 {format_time(message.time)[:10]} 销售"
            )
            alerts.append(
                _alert(Rule.EXPIRED_SALE, "medium", message, code.code, share, reason, seq)
            )
    return alerts
