"""DUPLICATE_SALE (重复销售): one box, one sale.

Business rule: a box's trace code may stand in one sale at a time. When a sale lists a code
that already has a standing sale (not returned, not deleted), the box was sold twice: a cloned
or fake code, a 回流 box bought back and resold, or a pharmacy billing one box twice. Two
split (拆零) sales of the same box are normal and do not count.

Key: the normalised trace code. State: the code's standing sales. Thresholds: severity is
graded against the latest comparable standing sale — ``medium`` at the same institution,
``high`` at another institution, ``critical`` in another city (first four digits of the
region code) within ``cross_city_hours`` (default 24) of business time, since one box
cannot physically be in two cities that fast.

What to do: pull both sale records, check the box's physical location and the second
buyer's settlement; a critical case points to cloned codes.
"""

from __future__ import annotations

from typing import Final

from detectors.evidence import code_alert, hours_between, sale_evidence
from detectors.model import Alert, CodeEvent, CodeState, Kind, Rule, RuleConfig, city_of

RULE: Final = Rule.DUPLICATE_SALE


def detect(state: CodeState, event: CodeEvent, config: RuleConfig) -> list[Alert]:
    """Alerts for ``event`` against the code's state before the event is applied."""
    if event.kind is not Kind.SALE:
        return []
    comparable = [sale for sale in state.sales if not (sale.split and event.split)]
    if not comparable:
        return []
    latest = max(comparable, key=lambda sale: sale.time)
    hours = hours_between(event.time, latest.time)
    if latest.fixmedins_code == event.fixmedins_code:
        severity, where = "medium", "同一机构"
    elif (
        city_of(latest.mdtrtarea_admvs) != city_of(event.mdtrtarea_admvs)
        and hours <= config.cross_city_hours
    ):
        severity, where = "critical", f"另一城市（{config.cross_city_hours} 小时内）"
    else:
        severity, where = "high", "另一机构"
    reason = (
        f"追溯码 {event.code} 已于 {sale_evidence(latest).event_time} 在 "
        f"{latest.fixmedins_code}（{latest.mdtrtarea_admvs}）销售且未退货，"
        f"{hours:.1f} 小时后又在{where}的 {event.fixmedins_code}（{event.mdtrtarea_admvs}）销售"
    )
    evidence = tuple(sale_evidence(sale) for sale in comparable)
    return [code_alert(RULE, severity, event, reason, evidence)]
