"""The per-code ledger step: apply one :class:`CodeEvent` to one code's state.

``step(state, event, config)`` is the only entry point the stream layer calls for the code
rules. It

1. forgets state older than the retention (business time), so expiry is exact and the same
   offline and on Kafka;
2. drops the event when its ``msgid`` or its record (institution, ``infno``,
   ``fixmedins_bchno``) was already applied to this code — retries and re-uploads change
   nothing and raise nothing;
3. runs the rules of SPEC §4 that look at this code (duplicate_sale, substitution,
   return_without_sale, flowback before the change; split_overdispense after it);
4. updates the standing sales, and reports whole-box purchases that start or stop standing as
   :class:`PersonEvent` for the person rules (HOARDING);
5. for a split sale or return listing several codes, returns the continuation event that
   carries the units this code did not take to the next code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from detectors import (
    duplicate_sale,
    flowback,
    return_without_sale,
    split_overdispense,
    substitution,
)
from detectors.codes import product_key_of
from detectors.model import (
    DAY_SECONDS,
    Alert,
    CatalogEntry,
    CodeEvent,
    CodeState,
    Kind,
    PersonEvent,
    RuleConfig,
    SaleRecord,
    fingerprint_text,
    same_float,
)

EMPTY: Final = CodeState()


@dataclass(init=False, unsafe_hash=True)
class StepResult:
    """What one step produced. ``state`` is None when nothing about the code is left."""

    state: Final[CodeState | None]
    alerts: Final[Sequence[Alert]]
    person_events: Final[Sequence[PersonEvent]]
    continuation: Final[CodeEvent | None]
    duplicate: Final[bool]

    def __init__(
        self, state: CodeState | None, alerts: Sequence[Alert] = (),
        person_events: Sequence[PersonEvent] = (), continuation: CodeEvent | None = None,
        duplicate: bool = False,
    ) -> None:
        self.state = state
        self.alerts = alerts
        self.person_events = person_events
        self.continuation = continuation
        self.duplicate = duplicate


# Both fingerprints are kept for the last PRINTS_CACHED keys: every code of a message has the
# same two, and the Redis ledger checks them again when it packs a batch's states, after the
# batch's last event (a batch is up to 5,000 messages by default). In dicts rather than
# behind functools.lru_cache: compiled, a call through lru_cache is a Python call (~2,000
# instructions), a dict lookup a few hundred.
PRINTS_CACHED: Final = 1 << 14
_record_prints: Final[dict[tuple[str, str, str], str]] = {}
_message_prints: Final[dict[str, str]] = {}


def record_fingerprint(institution: str, infno: str, bchno: str) -> str:
    """Fingerprint of one institution record, the re-upload idempotency key
    (:func:`detectors.model.fingerprint` of ``"r"`` and the three)."""
    key = (institution, infno, bchno)
    known = _record_prints.get(key)
    if known is None:
        known = fingerprint_text(f"r\x1f{institution}\x1f{infno}\x1f{bchno}")
        if len(_record_prints) >= PRINTS_CACHED:
            _record_prints.clear()
        _record_prints[key] = known
    return known


def message_fingerprint(msgid: str) -> str:
    """Fingerprint of one upload, the retry idempotency key
    (:func:`detectors.model.fingerprint` of ``"m"`` and the msgid)."""
    known = _message_prints.get(msgid)
    if known is None:
        known = fingerprint_text("m\x1f" + msgid)
        if len(_message_prints) >= PRINTS_CACHED:
            _message_prints.clear()
        _message_prints[msgid] = known
    return known


def _person_event(sale: SaleRecord, code: str, delta: int, event: CodeEvent) -> PersonEvent | None:
    if sale.split or sale.psn_hash is None or sale.med_list_codg is None:
        return None
    return PersonEvent(
        sale.psn_hash, sale.med_list_codg, code, delta, sale.fixmedins_code,
        sale.mdtrtarea_admvs, sale.bchno, sale.msgid, sale.time, sale.amount, event.msgid,
        event.seq,
    )


def _catalog_entry(code: str, config: RuleConfig) -> CatalogEntry | None:
    key = product_key_of(code)
    return config.catalog.get(key) if key is not None else None


def _sale_record(event: CodeEvent, units: float) -> SaleRecord:
    """The standing sale a sale event records, with the units this code gave."""
    return SaleRecord(
        event.fixmedins_code, event.mdtrtarea_admvs, event.bchno, event.msgid, event.time,
        event.psn_hash, event.med_list_codg, event.split, units, event.amount,
    )


def _continue(event: CodeEvent, taken: float) -> CodeEvent | None:
    if not event.draw_rest:
        return None
    return CodeEvent(
        event.draw_rest[0], event.kind, event.infno, event.msgid, event.fixmedins_code,
        event.mdtrtarea_admvs, event.bchno, event.time, event.med_list_codg, event.psn_hash,
        event.split, max(0.0, event.units - taken), event.amount, event.returned_bchno,
        event.draw_rest[1:], event.seq,
    )


def _remember(applied: tuple[str, ...], keep: int, *prints: str) -> tuple[str, ...]:
    merged = tuple(p for p in applied if p not in prints) + prints
    return merged[-keep:]


def step(state: CodeState | None, event: CodeEvent, config: RuleConfig) -> StepResult:
    """Apply one event to one code's state; see the module docstring."""
    current = state or EMPTY
    if state is not None and event.time - state.last_time > config.retention_days * DAY_SECONDS:
        current = EMPTY
    if current is EMPTY:
        if event.kind is Kind.STOCK:
            return StepResult(state)
        if event.kind is Kind.SALE and not event.split:
            return _first_sale(event, config)
    msg_print = message_fingerprint(event.msgid)
    record_print = record_fingerprint(event.fixmedins_code, event.infno, event.bchno)
    if msg_print in current.applied or (
        event.kind is not Kind.DELETE and record_print in current.applied
    ):
        return _duplicate(state, current, event)

    handler = _HANDLERS[event.kind]
    result = handler(current, event, config)
    new_state = result.state
    if event.kind is Kind.STOCK:
        # Stock sightings are not fingerprinted: FLOWBACK keeps its own once-only memory,
        # and a box that was never sold is not worth a ledger entry.
        if new_state is current:
            return StepResult(state, result.alerts)
        return result
    if new_state is not None:
        prints = (msg_print,) if event.kind is Kind.DELETE else (msg_print, record_print)
        new_state = CodeState(
            new_state.sales, new_state.first_drug, new_state.first_drug_ref,
            _remember(new_state.applied, config.fingerprints_kept, *prints),
            new_state.flowback_seen, max(current.last_time, event.time),
        )
    return StepResult(
        new_state, result.alerts, result.person_events, result.continuation, result.duplicate
    )


def _duplicate(state: CodeState | None, current: CodeState, event: CodeEvent) -> StepResult:
    """A retry: nothing changes, but a split draw must still reach the later codes."""
    taken = event.units
    for sale in current.sales:
        if sale.msgid == event.msgid or (
            sale.fixmedins_code == event.fixmedins_code and sale.bchno == event.bchno
        ):
            taken = sale.units
    return StepResult(state=state, continuation=_continue(event, taken), duplicate=True)


def _first_sale(event: CodeEvent, config: RuleConfig) -> StepResult:
    """The common case, kept short: a whole-box sale of a code the ledger does not know.

    Only SUBSTITUTION against the catalog can fire; the result is what ``_sale`` and the
    bookkeeping in ``step`` would give.
    """
    entry = _catalog_entry(event.code, config)
    alerts = substitution.detect(EMPTY, event, entry) if entry is not None else ()
    recent = _recent_first[0] if _recent_first else None
    if recent is not None and _same_sale(recent[0], event):
        state = recent[1]
        record = state.sales[0]
    else:
        record_print = record_fingerprint(event.fixmedins_code, event.infno, event.bchno)
        record = _sale_record(event, 1.0)
        state = CodeState(
            sales=(record,),
            first_drug=event.med_list_codg or None,
            first_drug_ref=record_print if event.med_list_codg else None,
            applied=(message_fingerprint(event.msgid), record_print),
            last_time=event.time,
        )
        _recent_first[:] = [(event, state)]
    person = _person_event(record, event.code, +1, event)
    return StepResult(state, alerts, (person,) if person else ())


# The last first sale's event and the state it gave: the other boxes of its message give the
# same state (nothing of a state names its code), and sharing the object saves building it
# and lets the Redis ledger see at once that they pack alike. States are immutable.
_recent_first: Final[list[tuple[CodeEvent, CodeState]]] = []


def _same_sale(known: CodeEvent, event: CodeEvent) -> bool:
    """Whether two whole-box sales give the same first-sale state (all but the code)."""
    return (
        event.msgid == known.msgid
        and event.bchno == known.bchno
        and event.time == known.time
        and event.fixmedins_code == known.fixmedins_code
        and event.infno == known.infno
        and event.mdtrtarea_admvs == known.mdtrtarea_admvs
        and event.psn_hash == known.psn_hash
        and event.med_list_codg == known.med_list_codg
        and event.split == known.split
        and same_float(event.amount, known.amount)
    )


def _sale(state: CodeState, event: CodeEvent, config: RuleConfig) -> StepResult:
    entry = _catalog_entry(event.code, config)
    pack_units = entry.pack_units if entry is not None else None
    alerts = duplicate_sale.detect(state, event, config)
    alerts += substitution.detect(state, event, entry)
    if event.split:
        left = split_overdispense.units_left(state, pack_units)
        taken = event.units if not event.draw_rest else min(event.units, left)
    else:
        taken = 1.0
    record = _sale_record(event, taken)
    first_drug, first_ref = state.first_drug, state.first_drug_ref
    if first_drug is None and event.med_list_codg:
        first_drug = event.med_list_codg
        first_ref = record_fingerprint(event.fixmedins_code, event.infno, event.bchno)
    new_state = CodeState(
        (*state.sales, record), first_drug, first_ref, state.applied, state.flowback_seen,
        state.last_time,
    )
    alerts += split_overdispense.detect(new_state, event, pack_units)
    person = _person_event(record, event.code, +1, event)
    return StepResult(
        state=new_state,
        alerts=alerts,
        person_events=[person] if person else [],
        continuation=_continue(event, taken),
    )


def _return(state: CodeState, event: CodeEvent, config: RuleConfig) -> StepResult:
    alerts = return_without_sale.detect(state, event)
    here = [s for s in state.sales if s.fixmedins_code == event.fixmedins_code]
    if not here:
        return StepResult(state=state, alerts=alerts, continuation=_continue(event, 0.0))
    named = [s for s in here if s.bchno == event.returned_bchno]
    candidates = named or here
    if not event.split:
        # A whole-box return undoes one sale: the one it names, else the latest here.
        target = max(candidates, key=lambda sale: sale.time)
        sales = tuple(s for s in state.sales if s is not target)
        person = _person_event(target, event.code, -1, event)
        return StepResult(
            state=state.with_sales(sales),
            alerts=alerts,
            person_events=[person] if person else [],
            continuation=_continue(event, 1.0),
        )
    # A split return gives its units back, latest split sale first.
    budget = event.units
    if event.draw_rest:
        budget = min(budget, sum(s.units for s in candidates if s.split))
    remaining = budget
    updated: dict[int, SaleRecord | None] = {}
    for sale in sorted((s for s in candidates if s.split), key=lambda s: s.time, reverse=True):
        if remaining <= 0:
            break
        give_back = min(sale.units, remaining)
        remaining -= give_back
        left = sale.units - give_back
        updated[id(sale)] = sale.with_units(left) if left > 0 else None
    sales_list: list[SaleRecord] = []
    for sale in state.sales:
        if id(sale) in updated:
            changed = updated[id(sale)]
            if changed is not None:
                sales_list.append(changed)
        else:
            sales_list.append(sale)
    return StepResult(
        state=state.with_sales(tuple(sales_list)),
        alerts=alerts,
        continuation=_continue(event, budget),
    )


def _stock(state: CodeState, event: CodeEvent, config: RuleConfig) -> StepResult:
    alerts = flowback.detect(state, event)
    if not alerts:
        return StepResult(state=state)
    latest = max(state.sales, key=lambda sale: sale.time)
    seen = (*state.flowback_seen, flowback.flowback_key(event, latest.msgid))
    return StepResult(
        state=CodeState(state.sales, state.first_drug, state.first_drug_ref, state.applied,
                        seen[-8:], state.last_time),
        alerts=alerts,
    )


def _delete(state: CodeState, event: CodeEvent, config: RuleConfig) -> StepResult:
    """3507 of a sale: as if that sale of this institution had never been recorded."""
    gone = [
        s for s in state.sales
        if s.fixmedins_code == event.fixmedins_code and s.bchno == event.bchno
    ]
    sale_print = record_fingerprint(event.fixmedins_code, "3505", event.bchno)
    applied = tuple(p for p in state.applied if p != sale_print)
    sales = tuple(s for s in state.sales if s not in gone)
    first_drug, first_ref = state.first_drug, state.first_drug_ref
    if first_ref == sale_print:
        earliest = min(sales, key=lambda sale: sale.time) if sales else None
        first_drug = earliest.med_list_codg if earliest else None
        first_ref = (
            record_fingerprint(earliest.fixmedins_code, "3505", earliest.bchno)
            if earliest else None
        )
    persons = [p for s in gone if (p := _person_event(s, event.code, -1, event)) is not None]
    new_state = CodeState(
        sales, first_drug, first_ref, applied, state.flowback_seen, state.last_time
    )
    return StepResult(state=new_state, person_events=persons)


_HANDLERS: Final = {
    Kind.SALE: _sale,
    Kind.RETURN: _return,
    Kind.STOCK: _stock,
    Kind.DELETE: _delete,
}
