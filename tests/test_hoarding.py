"""HOARDING rule table (SPEC §4, issue 4): thresholds, window, returns, once per window,
per-drug overrides, and the link from a later DUPLICATE_SALE back to the hoarding alert."""

from __future__ import annotations

import random
from typing import Any

import pytest

from detectors.hoarding import PersonState, _first_reached, _purchase, step
from detectors.model import DAY_SECONDS, HoardingThresholds, PersonEvent, RuleConfig
from tests.factory import CONFIG, METFORMIN, code, count, delete, ret, run, sale, summary

PHARMACIES = [(f"P5101040000{i}", "510104") for i in range(1, 6)]


def buys(n: int, institutions: int, *, start_day: int = 1, step_days: float = 1.0,
         psn: str = "HOARDER", first_serial: int = 100, drug: str = METFORMIN,
         prefix: str = "h") -> list[dict[str, Any]]:
    """``n`` one-box purchases by one person spread over ``institutions`` pharmacies."""
    messages = []
    for i in range(n):
        day = start_day + i * step_days
        when = f"2026-11-{int(day):02d} {10 + (i % 8):02d}:00:00" if day < 31 else (
            f"2026-12-{int(day) - 30:02d} {10 + (i % 8):02d}:00:00")
        messages.append(sale([code(first_serial + i)], PHARMACIES[i % institutions], when,
                             psn=psn, drug=drug, bchno=f"{prefix}{i}", msgid=f"{prefix}{i}"))
    return messages


def hoarding(alerts: list[Any]) -> list[tuple[str, str, str | None, str]]:
    return [s for s in summary(alerts) if s[0] == "HOARDING"]


CASES: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
    "exactly at the threshold: 10 boxes, 3 institutions, 10 days": (buys(10, 3), ["h9"]),
    "one box under": (buys(9, 3), []),
    "two institutions only": (buys(12, 2), []),
    "spread past the window": (buys(10, 3, step_days=3.5), []),
    "a return brings the count back under": (
        [*buys(9, 3)[:-1], ret([code(100)], PHARMACIES[0], "2026-11-08 12:00:00",
                               returns="h0", psn="HOARDER"), *buys(9, 3)[-1:],
         *buys(1, 1, start_day=10, first_serial=200, prefix="x")],
        [],
    ),
    "a delete takes the box out of the count": (
        [*buys(9, 3), delete("h0", PHARMACIES[0], "2026-11-09 23:00:00"),
         *buys(1, 1, start_day=10, first_serial=200, prefix="x")],
        [],
    ),
    "once per window, again after it": (
        [*buys(15, 3), *buys(10, 3, start_day=45, first_serial=300, prefix="y")],
        ["h9", "y9"],
    ),
    "split sales do not count": (
        [sale([code(100 + i)], PHARMACIES[i % 3], f"2026-11-{i + 1:02d} 10:00:00",
              psn="HOARDER", split=True, count=1, bchno=f"s{i}") for i in range(12)],
        [],
    ),
    "other people and drugs are counted apart": (
        [*buys(5, 3), *buys(5, 3, psn="OTHER", first_serial=500, prefix="o")],
        [],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hoarding_table(name: str) -> None:
    messages, triggers = CASES[name]
    assert [s[3] for s in hoarding(run(messages))] == triggers


def test_second_alert_after_the_window() -> None:
    story = [*buys(10, 3), *buys(10, 3, start_day=1, first_serial=300, prefix="y")]
    story[10:] = [sale([code(300 + i)], PHARMACIES[i % 3], f"2026-12-{15 + i:02d} 10:00:00",
                       psn="HOARDER", bchno=f"y{i}", msgid=f"y{i}") for i in range(10)]
    assert [s[3] for s in hoarding(run(story))] == ["h9", "y9"]


@pytest.mark.parametrize(("step_days", "span"), [
    (0.0, "在 7 小时内于 3 家机构"),  # all on 1 November, 10:00 to 17:00
    (1.0, "在 10 天内于 3 家机构"),  # 1 November 10:00 to 10 November 11:00, rounded up
    (2.5, "在 23 天内于 3 家机构"),
])
def test_reason_says_how_long_the_purchases_took(step_days: float, span: str) -> None:
    (alert,) = [a for a in run(buys(10, 3, step_days=step_days)) if str(a.rule) == "HOARDING"]
    assert span in alert.reason


def test_alert_names_the_person_by_hash_and_lists_the_sales() -> None:
    alerts = [a for a in run(buys(10, 3)) if str(a.rule) == "HOARDING"]
    (alert,) = alerts
    body = alert.to_dict("now")
    assert body["drug_trac_codg"] is None
    assert body["psn_hash"] and "HOARDER" not in str(body)
    assert len(body["evidence"]) == 10  # type: ignore[arg-type]
    assert {e["drug_trac_codg"] for e in body["evidence"]} == {  # type: ignore[attr-defined]
        code(100 + i) for i in range(10)}
    assert body["amount"] == 100.0
    assert body["med_list_codg"] == METFORMIN


def test_per_drug_override() -> None:
    strict = RuleConfig(catalog=CONFIG.catalog,
                        hoarding_overrides={METFORMIN: HoardingThresholds(4, 2, 7)})
    assert [s[3] for s in hoarding(run(buys(4, 2), strict))] == ["h3"]
    loose = RuleConfig(catalog=CONFIG.catalog,
                       hoarding_overrides={METFORMIN: HoardingThresholds(20, 3, 30)})
    assert hoarding(run(buys(12, 3), loose)) == []


def test_later_duplicate_sale_names_the_hoarding_alert() -> None:
    story = [*buys(10, 3),
             sale([code(105)], ("P50010300077", "500103"), "2026-11-20 09:00:00",
                  psn="BUYER", bchno="R1", msgid="resale"),
             count([code(106)], ("P50010300077", "500103"), msgid="stock")]
    alerts = run(story)
    hoard = next(a for a in alerts if str(a.rule) == "HOARDING")
    for rule in ("DUPLICATE_SALE", "FLOWBACK"):
        later = next(a for a in alerts if str(a.rule) == rule)
        notes = [e.note or "" for e in later.evidence]
        assert any(hoard.alert_id in note for note in notes), rule



def test_a_late_earlier_purchase_after_the_alert_does_not_alert_again() -> None:
    story = buys(12, 3)
    late = story.pop(3)
    alerts = [a for a in run([*story, late]) if str(a.rule) == "HOARDING"]
    assert [a.trigger_msgid for a in alerts] == ["h10"]


def _reference_step(state: PersonState | None, event: PersonEvent,
                    thresholds: HoardingThresholds) -> tuple[PersonState | None, list[Any]]:
    """The rule written plainly (re-sorted and re-scanned on every event), to hold the
    detector's shortcuts to: purchases appended when they come in time order, the window
    trimmed only when its oldest purchase has left it."""
    current = state or PersonState()
    window = thresholds.window_days * DAY_SECONDS
    identity = (event.code, event.msgid)
    if event.delta < 0:
        kept = tuple(p for p in current.purchases if (p.code, p.msgid) != identity)
        return _reference_settle(PersonState(kept, current.last_alert_time), event.time,
                                 window), []
    if any((p.code, p.msgid) == identity for p in current.purchases):
        return state, []
    purchases = tuple(sorted((*current.purchases, _purchase(event)),
                             key=lambda p: (p.time, p.msgid, p.code)))
    reached = _first_reached(purchases, window, thresholds, current.last_alert_time)
    if reached is None:
        return _reference_settle(PersonState(purchases, current.last_alert_time), event.time,
                                 window), []
    trigger, _ = reached
    return _reference_settle(PersonState(purchases, trigger.time), event.time,
                             window), [trigger.msgid]


def _reference_settle(state: PersonState, now: int, window: int) -> PersonState | None:
    horizon = max([now, *(p.time for p in state.purchases)]) - window
    purchases = tuple(p for p in state.purchases if p.time > horizon)
    alert_time = state.last_alert_time if (
        state.last_alert_time is not None and state.last_alert_time > horizon) else None
    return PersonState(purchases, alert_time) if purchases or alert_time is not None else None


def test_step_matches_the_plain_rule_on_random_histories() -> None:
    """Purchases out of time order, repeats, returns and long gaps: the same states and the
    same alerts as the plain rule, event by event."""
    rng = random.Random(4)
    thresholds = HoardingThresholds(4, 2, 3)
    alerts = 0
    for _ in range(400):
        state: PersonState | None = None
        expected: PersonState | None = None
        clock = 1_793_500_000
        bought: list[tuple[str, str, int]] = []
        for _ in range(rng.randrange(1, 30)):
            clock += rng.choice([0, 60, 3600, DAY_SECONDS, 4 * DAY_SECONDS])
            if bought and rng.random() < 0.25:
                box, msgid, when = rng.choice(bought)
                delta = rng.choice([-1, 1])
            else:
                box, msgid = f"{rng.randrange(40):020d}", f"m{rng.randrange(10**6)}"
                when = clock - rng.choice([0, 0, 0, 7200, 2 * DAY_SECONDS])
                bought.append((box, msgid, when))
                delta = 1
            event = PersonEvent("P", "D", box, delta, f"H{rng.randrange(3)}", "510104",
                                msgid, msgid, when, 12.5, msgid)
            state, raised = step(state, event, thresholds)
            expected, expected_raised = _reference_step(expected, event, thresholds)
            assert state == expected
            assert [alert.trigger_msgid for alert in raised] == expected_raised
            alerts += len(raised)
    assert alerts > 20
