"""HOARDING (囤药/倒卖): one person buying far more of one drug than they could use.

Business rule: the NHSA's monitoring notices single out people who buy large amounts of one
drug at several institutions in a short time: the fund pays, and the boxes are resold (倒卖),
often coming back as 回流药. The rule fires when one person's *standing* whole-box purchases of
one ``med_list_codg`` — each listed code counting as one box — reach ``min_boxes`` (default 10)
from ``min_institutions`` (default 3) or more institutions within ``window_days`` (default 30)
of business time. A return or a delete takes a box back out of the count. It fires at most
once per person and drug in any ``window_days``. Per-drug overrides tighten the thresholds for
high-value drugs or loosen them for chronic-disease drugs.

Key: (``psn_hash``, ``med_list_codg``) — one writer per person. State: the standing whole-box
purchases inside the window, and when the last alert was raised. Input: :class:`PersonEvent`,
+1 when a whole-box purchase starts standing and -1 when it stops (the code ledger emits them).

What to do: review the person's prescriptions and settlements; follow the listed codes —
when one of them is later sold again or shows up in stock, that DUPLICATE_SALE or FLOWBACK
alert names this one in its evidence (the chain from 套药 to 回流).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from detectors.model import (
    DAY_SECONDS,
    Alert,
    Evidence,
    HoardingThresholds,
    PersonEvent,
    Rule,
    format_time,
)

RULE: Final = Rule.HOARDING


@dataclass(init=False, unsafe_hash=True)
class Purchase:
    """One standing whole-box purchase counted for a person and drug."""

    code: Final[str]
    fixmedins_code: Final[str]
    mdtrtarea_admvs: Final[str]
    bchno: Final[str]
    msgid: Final[str]
    time: Final[int]
    amount: Final[float]

    def __init__(
        self, code: str, fixmedins_code: str, mdtrtarea_admvs: str, bchno: str, msgid: str,
        time: int, amount: float,
    ) -> None:
        self.code = code
        self.fixmedins_code = fixmedins_code
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.bchno = bchno
        self.msgid = msgid
        self.time = time
        self.amount = amount


@dataclass(init=False, unsafe_hash=True)
class PersonState:
    """A person's standing purchases of one drug inside the window, and the last alert."""

    purchases: Final[tuple[Purchase, ...]]
    last_alert_time: Final[int | None]

    def __init__(
        self, purchases: tuple[Purchase, ...] = (), last_alert_time: int | None = None,
    ) -> None:
        self.purchases = purchases
        self.last_alert_time = last_alert_time


@dataclass(frozen=True, slots=True)
class HoardingLink:
    """The HOARDING alert a person last raised, for the evidence of later code alerts."""

    alert_id: str
    trigger_msgid: str
    fixmedins_code: str
    event_time: str

    def as_evidence(self) -> Evidence:
        """The link as an evidence record of a DUPLICATE_SALE or FLOWBACK alert."""
        return Evidence(
            msgid=self.trigger_msgid,
            infno="3505",
            fixmedins_code=self.fixmedins_code,
            fixmedins_bchno="",
            event_time=self.event_time,
            note=f"该人员此前触发囤药预警 HOARDING {self.alert_id}",
        )


def person_key(psn_hash: str, med_list_codg: str) -> str:
    """The state key of one person and drug."""
    return f"{psn_hash}\x1f{med_list_codg}"


def step(
    state: PersonState | None, event: PersonEvent, thresholds: HoardingThresholds
) -> tuple[PersonState | None, list[Alert]]:
    """Apply one purchase change; returns the new state (None when empty) and alerts."""
    if state is None and event.delta > 0 and thresholds.min_boxes > 1:
        # The common case, kept short: a first purchase cannot reach any threshold.
        return PersonState((_purchase(event),), None), []
    current = state or PersonState()
    window = thresholds.window_days * DAY_SECONDS
    code, msgid = event.code, event.msgid
    standing = current.purchases
    if event.delta < 0:
        kept = tuple(p for p in standing if p.code != code or p.msgid != msgid)
        return _settle(PersonState(kept, current.last_alert_time), event.time, window), []
    for known in standing:
        if known.code == code and known.msgid == msgid:
            return state, []
    added = _purchase(event)
    if not standing or _in_order(standing[-1], added):
        # Purchases are kept in time order, and most arrive in it: no sort needed.
        purchases = (*standing, added)
    else:
        purchases = tuple(sorted((*standing, added), key=_order))
    updated = PersonState(purchases, current.last_alert_time)
    reached = _first_reached(purchases, window, thresholds, current.last_alert_time)
    if reached is None:
        return _settle(updated, event.time, window), []
    trigger, counted = reached
    alert = _alert(event, trigger, counted, thresholds)
    return _settle(PersonState(purchases, trigger.time), event.time, window), [alert]


def _order(purchase: Purchase) -> tuple[int, str, str]:
    return purchase.time, purchase.msgid, purchase.code


def _in_order(first: Purchase, second: Purchase) -> bool:
    """``_order(first) <= _order(second)`` without building the tuples (every purchase
    added asks it)."""
    if first.time != second.time:
        return first.time < second.time
    if first.msgid != second.msgid:
        return first.msgid < second.msgid
    return first.code <= second.code


def _first_reached(
    purchases: tuple[Purchase, ...],
    window: int,
    thresholds: HoardingThresholds,
    last_alert_time: int | None,
) -> tuple[Purchase, list[Purchase]] | None:
    """The purchase at which, in business-time order, the thresholds are first reached.

    Judged on the time order, not the arrival order, so that the alert (its trigger and its
    evidence) is the same however the person's purchases interleave on their way here: on
    Kafka they come from several code partitions. A trigger less than a window after the
    last alert does not count (once per person and drug in any window).
    """
    if len(purchases) < thresholds.min_boxes:
        return None
    start = 0
    for end, trigger in enumerate(purchases):
        if last_alert_time is not None and trigger.time - last_alert_time < window:
            continue
        while purchases[start].time <= trigger.time - window:
            start += 1
        if end + 1 - start < thresholds.min_boxes:
            continue
        counted = list(purchases[start : end + 1])
        if len({p.fixmedins_code for p in counted}) >= thresholds.min_institutions:
            return trigger, counted
    return None


def _purchase(event: PersonEvent) -> Purchase:
    return Purchase(
        event.code, event.fixmedins_code, event.mdtrtarea_admvs, event.bchno, event.msgid,
        event.time, event.amount,
    )


def _settle(state: PersonState, now: int, window: int) -> PersonState | None:
    """Drop purchases that can no longer count; None when nothing is worth keeping."""
    purchases = state.purchases  # in time order: the ones to drop come first
    latest = purchases[-1].time if purchases else now
    horizon = (now if now > latest else latest) - window
    if purchases and purchases[0].time <= horizon:
        purchases = tuple(p for p in purchases if p.time > horizon)
    alert_time = state.last_alert_time
    if alert_time is not None and alert_time <= horizon:
        alert_time = None
    if not purchases and alert_time is None:
        return None
    return PersonState(purchases, alert_time)


def _span_text(seconds: int) -> str:
    """How long the counted purchases took, rounded up: "5 小时" under a day, else "3 天"."""
    if seconds < DAY_SECONDS:
        return f"{max(1, -(-seconds // 3600))} 小时"
    return f"{-(-seconds // DAY_SECONDS)} 天"


def _alert(
    event: PersonEvent, trigger: Purchase, counted: list[Purchase],
    thresholds: HoardingThresholds,
) -> Alert:
    institutions = len({p.fixmedins_code for p in counted})
    reason = (
        f"参保人 {event.psn_hash} 在 {_span_text(counted[-1].time - counted[0].time)}内于 "
        f"{institutions} 家机构购买 "
        f"{event.med_list_codg} 共 {len(counted)} 盒且均未退货，达到囤药阈值"
        f"（{thresholds.window_days} 天内 {thresholds.min_institutions} 家机构 "
        f"{thresholds.min_boxes} 盒）"
    )
    evidence = tuple(
        Evidence(
            msgid=p.msgid,
            infno="3505",
            fixmedins_code=p.fixmedins_code,
            fixmedins_bchno=p.bchno,
            event_time=format_time(p.time),
            mdtrtarea_admvs=p.mdtrtarea_admvs,
            amount=round(p.amount, 2),
            drug_trac_codg=p.code,
        )
        for p in counted
    )
    return Alert(
        rule=RULE,
        severity="high",
        drug_trac_codg=None,
        psn_hash=event.psn_hash,
        med_list_codg=event.med_list_codg,
        fixmedins_code=trigger.fixmedins_code,
        mdtrtarea_admvs=trigger.mdtrtarea_admvs,
        trigger_msgid=trigger.msgid,
        event_time=format_time(trigger.time),
        evidence=evidence,
        amount=sum(p.amount for p in counted),
        reason=reason,
        subject=person_key(event.psn_hash, event.med_list_codg),
        seq=event.seq,
    )


def link(alert: Alert, links: dict[str, HoardingLink]) -> Alert:
    """Name earlier HOARDING alerts of the people in a DUPLICATE_SALE or FLOWBACK's evidence."""
    if alert.rule not in (Rule.DUPLICATE_SALE, Rule.FLOWBACK):
        return alert
    people = {item.psn_hash for item in alert.evidence if item.psn_hash}
    extra = tuple(links[psn].as_evidence() for psn in sorted(people) if psn in links)
    if not extra:
        return alert
    return replace(alert, evidence=alert.evidence + extra)
