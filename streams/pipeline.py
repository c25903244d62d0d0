"""The batch pipeline shared by ``tracewatch check`` and the Kafka worker.

Three stages, each a whole batch against a :class:`~streams.ledger.Ledger`, each calling the
pure detectors:

1. :meth:`Pipeline.route` — message → per-code events and stateless alerts; drops retried
   ``msgid``; remembers records and sale codes (for deletes). Its memory is written by
   :meth:`Pipeline.commit_routing`, which the worker calls only after the batch's output was
   produced, so a crash replays the batch instead of losing it. A ledger that can
   (``reads_ahead``) is first told what the later stages will load, to look it up meanwhile.
   :meth:`Pipeline.prepare_route` works out beforehand what of that takes no ledger state
   (the worker calls it while Redis applies the last batch's writes).
2. :meth:`Pipeline.apply_codes` — per-code events → code alerts and person events; one load
   and one store of ledger entries per batch.
3. :meth:`Pipeline.apply_persons` — person events → HOARDING alerts.

Offline, :meth:`Pipeline.process` runs all three for each message in turn, so alerts come out
in the order they are raised.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, cast

from detectors import hoarding
from detectors.code_ledger import step as code_step
from detectors.codes import box_codes
from detectors.hoarding import HoardingLink, PersonState, person_key
from detectors.messages import CHANGE, COUNT, DELETE, RETURN, SALE
from detectors.model import (
    Alert,
    CodeEvent,
    CodeState,
    Kind,
    Message,
    PersonEvent,
    Rule,
    RuleConfig,
)
from detectors.router import DELETE_SALE_TYPE, route, stock_event
from streams.ledger import Ledger, MemoryLedger, record_key, sale_key

CODE_INFNOS: Final = frozenset({SALE, RETURN, COUNT, CHANGE})


@dataclass(slots=True)
class RoutingCommit:
    """What a routed batch must remember once its output is safely out."""

    msgids: set[str] = field(default_factory=set)
    records_added: set[str] = field(default_factory=set)
    records_removed: set[str] = field(default_factory=set)
    sales: dict[str, tuple[str, ...] | None] = field(default_factory=dict)


@dataclass(init=False, unsafe_hash=True)
class Sighting:
    """The boxes one count or stock-in listed, before any of them becomes an event (offline)."""

    message: Final[Message]
    seq: Final[int]
    codes: Final[tuple[str, ...]]

    def __init__(self, message: Message, seq: int, codes: tuple[str, ...]) -> None:
        self.message = message
        self.seq = seq
        self.codes = codes


@dataclass(slots=True)
class RouteResult:
    """Per-code events and stateless alerts of a batch, and what to commit after.

    Routed for :meth:`Pipeline.process`, the events are in ``work`` instead, in order and
    with stock sightings left as :class:`Sighting`.
    """

    events: list[CodeEvent] = field(default_factory=list)
    work: list[CodeEvent | Sighting] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    commit: RoutingCommit = field(default_factory=RoutingCommit)
    duplicates: int = 0
    codes_listed: int = 0
    codes_rejected: int = 0


@dataclass(slots=True)
class _PreparedRoute:
    """What :meth:`Pipeline.prepare_route` worked out for routing ``messages``: their record
    keys ("" where none), msgids and records to recall, each message's boxes, and the
    loads of the later stages (None for a ledger that does not read ahead)."""

    messages: Sequence[tuple[int, Message]]
    keys: list[str]
    msgids: set[str]
    records: set[str]
    boxes: list[tuple[list[str], int] | None]
    loads: tuple[set[str], set[str]] | None


@dataclass(slots=True)
class CodeResult:
    """Alerts and person events of a batch of code events, and events for other writers."""

    alerts: list[Alert] = field(default_factory=list)
    person_events: list[PersonEvent] = field(default_factory=list)
    forwarded: list[CodeEvent] = field(default_factory=list)
    changed: dict[str, CodeState | None] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0


@dataclass(slots=True)
class PersonResult:
    """HOARDING alerts of a batch of person events, and the state to store after."""

    alerts: list[Alert] = field(default_factory=list)
    changed: dict[str, PersonState | None] = field(default_factory=dict)
    links: dict[str, HoardingLink] = field(default_factory=dict)


def _own_everything(code: str) -> bool:
    return True


class Pipeline:
    """Runs the detectors over batches against one ledger."""

    def __init__(self, ledger: Ledger, config: RuleConfig) -> None:
        self.ledger = ledger
        self.config = config
        self.reads_ahead: bool = getattr(ledger, "reads_ahead", False)
        self._prepare_recall: Callable[[Collection[str], Collection[str]], None] | None = (
            getattr(ledger, "prepare_recall", None))
        self._prepared: _PreparedRoute | None = None

    # ------------------------------------------------------------------ stage 1: route

    def route(
        self,
        messages: Sequence[tuple[int, Message]],
        owns_code: Callable[[str], bool] | None = None,
        owns_person: Callable[[str], bool] | None = None,
    ) -> RouteResult:
        """Route a batch of (sequence number, message).

        A ledger that can is told what the batch's later stages will load, so that it looks
        them up while the batch is routed: the boxes the messages list and the people of
        their whole-box sales, those this writer owns (``owns_code``, ``owns_person``;
        everything by default). What :meth:`prepare_route` worked out for this very list
        is used instead of working it out again (with the ownership given to it then).
        """
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared.messages is messages:
            loads = prepared.loads
            if loads is not None:
                self.ledger.expect(lambda: loads)
            return self._route(messages, sightings=False, boxes=prepared.boxes,
                               prepared=prepared)
        # Each message's boxes, listed for the loads and kept for routing it (a GS1 code
        # normalises in ~2 µs): filled, in the messages' order, during the recall.
        boxes: list[tuple[list[str], int] | None] = []
        if self.reads_ahead:
            # Listed while Redis answers the recall, which it is sent first.
            self.ledger.expect(
                lambda: _expected_loads(messages, owns_code, owns_person, boxes))
        return self._route(messages, sightings=False, boxes=boxes)

    def prepare_route(
        self,
        messages: Sequence[tuple[int, Message]],
        owns_code: Callable[[str], bool] | None = None,
        owns_person: Callable[[str], bool] | None = None,
    ) -> None:
        """Work out what :meth:`route` of these same ``messages`` (the same list) will need
        and takes no ledger state: their boxes and record keys, the loads it announces, and
        the ledger's digests of its recall (``prepare_recall``, where the ledger has one).

        Called while the ledger is busy with the last batch's writes (the worker waits for
        them before routing: a recall must see them), it fills a wait; ``route`` then does
        only what needs the ledger's answers. ``route`` of other messages ignores it.
        """
        keys, msgids, records = _recall_keys(messages)
        boxes: list[tuple[list[str], int] | None] = []
        loads = (_expected_loads(messages, owns_code, owns_person, boxes) if self.reads_ahead
                 else None)
        if self._prepare_recall is not None:
            self._prepare_recall(msgids, records)
        self._prepared = _PreparedRoute(messages, keys, msgids, records, boxes, loads)

    def _route(self, messages: Sequence[tuple[int, Message]], sightings: bool,
               boxes: Sequence[tuple[list[str], int] | None] = (),
               prepared: _PreparedRoute | None = None) -> RouteResult:
        ledger = self.ledger
        config = self.config
        result = RouteResult()
        commit = result.commit
        msgids, records_added, records_removed, sales = (
            commit.msgids, commit.records_added, commit.records_removed, commit.sales)
        events, work, alerts = result.events, result.work, result.alerts
        if prepared is None:
            keys, recalled_msgids, recalled_records = _recall_keys(messages)
        else:
            keys, recalled_msgids, recalled_records = (
                prepared.keys, prepared.msgids, prepared.records)
        seen_msgids, seen_records, known_sales = ledger.recall_routing(
            recalled_msgids,
            recalled_records,
            {sale_key(m.fixmedins_code, m.bchno)
             for _, m in messages if m.infno == DELETE and m.delete_type == DELETE_SALE_TYPE},
        )
        if len(boxes) != len(messages):  # the ledger did not ask for them
            boxes = [None] * len(messages)
        for (seq, message), key, listed in zip(messages, keys, boxes, strict=True):
            msgid = message.msgid
            if msgid in seen_msgids or msgid in msgids:
                result.duplicates += 1
                continue
            msgids.add(msgid)
            if message.infno == DELETE:
                if message.delete_type != DELETE_SALE_TYPE:
                    continue
                skey = sale_key(message.fixmedins_code, message.bchno)
                codes = sales[skey] if skey in sales else known_sales.get(skey)
                routed = route(message, config, deleted_codes=codes or (), seq=seq)
                sale_record = record_key(message.fixmedins_code, SALE, message.bchno)
                records_removed.add(sale_record)
                records_added.discard(sale_record)
                seen_records.discard(sale_record)
                sales[skey] = None
            else:
                record_seen = key in seen_records or key in records_added
                routed = route(message, config, record_seen=record_seen, seq=seq,
                               stock_events=not sightings, boxes=listed)
                if key:
                    records_added.add(key)
                    records_removed.discard(key)
                if routed.sale_codes:
                    skey = sale_key(message.fixmedins_code, message.bchno)
                    before = sales.get(skey) or known_sales.get(skey)
                    sales[skey] = (
                        tuple(dict.fromkeys((*before, *routed.sale_codes))) if before
                        else routed.sale_codes
                    )
            if not sightings:
                events.extend(routed.events)
            elif routed.stock_codes:
                work.append(Sighting(message, seq, routed.stock_codes))
            else:
                work.extend(routed.events)
            if routed.alerts:
                alerts.extend(routed.alerts)
            result.codes_listed += routed.codes_listed
            result.codes_rejected += routed.codes_rejected
        return result

    def commit_routing(self, commit: RoutingCommit) -> None:
        """Remember a routed batch (after its output was produced)."""
        self.ledger.commit_routing(
            commit.msgids, commit.records_added, commit.records_removed, commit.sales
        )

    # ------------------------------------------------------------------ stage 2: codes

    def apply_codes(
        self,
        events: Sequence[CodeEvent],
        owns: Callable[[str], bool] = _own_everything,
        store: bool = True,
    ) -> CodeResult:
        """Apply a batch of per-code events in order.

        A split draw that continues to a code this writer ``owns`` is applied at once;
        otherwise it is returned in ``forwarded`` for the code's own writer. With
        ``store=False`` the new states are left in ``changed`` for the caller to store with
        :meth:`store_codes` once the batch's alerts are out: a crash in between replays the
        batch and raises the same alerts (same ``alert_id``) again rather than losing them.
        """
        result = CodeResult()
        wanted = {event.code for event in events}
        wanted.update(code for event in events for code in event.draw_rest if owns(code))
        states: dict[str, CodeState | None] = dict(self.ledger.load_codes(wanted))
        for event in events:
            self._apply_event(event, states, owns, result)
        result.alerts = self._link(result.alerts)
        if store:
            self.store_codes(result)
        return result

    def _apply_work(self, work: Sequence[CodeEvent | Sighting]) -> CodeResult:
        """:meth:`apply_codes` of routed work, making stock events only for known boxes."""
        result = CodeResult()
        memory = self.ledger if isinstance(self.ledger, MemoryLedger) else None
        states: dict[str, CodeState | None]
        if memory is not None:
            # The in-memory table is the batch's working set: nothing to copy in or out
            # (the copies were ~9 % of check's time by profile). Steps that leave nothing
            # write None, removed below.
            states = cast(dict[str, CodeState | None], memory.codes)
        else:
            wanted: set[str] = set()
            for item in work:
                if isinstance(item, Sighting):
                    wanted.update(item.codes)
                else:
                    wanted.add(item.code)
                    wanted.update(item.draw_rest)
            states = dict(self.ledger.load_codes(wanted))
        for item in work:
            if isinstance(item, Sighting):
                message, seq = item.message, item.seq
                for code in item.codes:
                    if states.get(code) is None:
                        # A box in stock that was never sold: nothing to check or remember.
                        result.applied += 1
                    else:
                        self._apply_event(stock_event(message, code, seq), states,
                                          _own_everything, result)
            else:
                self._apply_event(item, states, _own_everything, result)
        result.alerts = self._link(result.alerts)
        if memory is None:
            self.store_codes(result)
        else:
            for code, state in result.changed.items():
                if state is None:
                    states.pop(code, None)
        return result

    def _apply_event(
        self,
        event: CodeEvent,
        states: dict[str, CodeState | None],
        owns: Callable[[str], bool],
        result: CodeResult,
    ) -> None:
        """One event and its split-draw continuations, against ``states``."""
        config = self.config
        pending: CodeEvent | None = event
        while pending is not None:
            before = states.get(pending.code)
            if before is None and pending.kind is Kind.STOCK:
                # A box in stock that was never sold: nothing to check or remember.
                result.applied += 1
                break
            outcome = code_step(before, pending, config)
            if outcome.duplicate:
                result.duplicates += 1
            else:
                result.applied += 1
            if outcome.state is not before:
                states[pending.code] = outcome.state
                result.changed[pending.code] = outcome.state
            if outcome.alerts:
                result.alerts.extend(outcome.alerts)
            if outcome.person_events:
                result.person_events.extend(outcome.person_events)
            pending = outcome.continuation
            if pending is not None and not owns(pending.code):
                result.forwarded.append(pending)
                pending = None

    def store_codes(self, result: CodeResult) -> None:
        """Write the states a code batch changed."""
        if result.changed:
            self.ledger.store_codes(result.changed)

    def _link(self, alerts: list[Alert]) -> list[Alert]:
        linkable = (Rule.DUPLICATE_SALE, Rule.FLOWBACK)
        people = {
            item.psn_hash
            for alert in alerts if alert.rule in linkable
            for item in alert.evidence if item.psn_hash
        }
        if not people:
            return alerts
        links = self.ledger.hoarding_links(people)
        if not links:
            return alerts
        return [hoarding.link(alert, links) for alert in alerts]

    # ------------------------------------------------------------------ stage 3: persons

    def apply_persons(self, events: Iterable[PersonEvent], store: bool = True) -> PersonResult:
        """Apply a batch of person events; HOARDING alerts in ``alerts``."""
        result = PersonResult()
        events = list(events)
        if not events:
            return result
        keys = [person_key(e.psn_hash, e.med_list_codg) for e in events]
        states: dict[str, PersonState | None] = dict(self.ledger.load_persons(set(keys)))
        config = self.config  # its method called, not bound: compiled, that is a C call
        for event, key in zip(events, keys, strict=True):
            before = states.get(key)
            thresholds = config.hoarding_for(event.med_list_codg)
            after, raised = hoarding.step(before, event, thresholds)
            if after is not before:
                states[key] = after
                result.changed[key] = after
            for alert in raised:
                result.links[event.psn_hash] = HoardingLink(
                    alert.alert_id, alert.trigger_msgid, alert.fixmedins_code, alert.event_time
                )
            result.alerts.extend(raised)
        if store:
            self.store_persons(result)
        return result

    def store_persons(self, result: PersonResult) -> None:
        """Write the states and links a person batch changed."""
        if result.changed:
            self.ledger.store_persons(result.changed)
        if result.links:
            self.ledger.link_hoarding(result.links)

    # ------------------------------------------------------------------ offline

    def process(self, messages: Sequence[tuple[int, Message]]) -> list[Alert]:
        """All three stages over a batch, committing as it goes (offline use).

        The result is what handling the messages one by one would raise, in that order:
        routing depends only on routing memory, and each later stage only on its own state,
        so running each stage over the whole batch changes nothing but the order of the
        alerts, which sorting by the message's sequence number restores. A HOARDING alert
        raised in this batch is linked into the later code alerts of its person here.
        """
        routed = self._route(messages, sightings=True)
        self.commit_routing(routed.commit)
        if not routed.work:
            return routed.alerts
        codes = self._apply_work(routed.work)
        persons = self.apply_persons(codes.person_events)
        code_alerts = codes.alerts
        if persons.alerts and code_alerts:
            raised = {alert.psn_hash: alert for alert in persons.alerts if alert.psn_hash}
            code_alerts = [_link_earlier(alert, raised) for alert in code_alerts]
        alerts = routed.alerts + code_alerts + persons.alerts
        alerts.sort(key=lambda alert: alert.seq)
        return alerts


def _recall_keys(messages: Sequence[tuple[int, Message]],
                 ) -> tuple[list[str], set[str], set[str]]:
    """The record key of each message that lists codes ("" for the others), and the msgids
    and record keys a routing recall looks up."""
    keys = [
        record_key(m.fixmedins_code, m.infno, m.bchno) if m.infno in CODE_INFNOS else ""
        for _, m in messages
    ]
    return keys, {m.msgid for _, m in messages}, {key for key in keys if key}


def _expected_loads(
    messages: Sequence[tuple[int, Message]],
    owns_code: Callable[[str], bool] | None,
    owns_person: Callable[[str], bool] | None,
    boxes: list[tuple[list[str], int] | None],
) -> tuple[set[str], set[str]]:
    """The boxes (normalised) and the (person, drug) keys of whole-box sales the messages'
    later stages will load, those this writer owns; ``boxes`` gets each message's
    ``box_codes`` (None where it lists none), in order."""
    codes: set[str] = set()
    people: set[str] = set()
    boxes.clear()
    for _, message in messages:
        infno = message.infno
        if infno not in CODE_INFNOS:
            boxes.append(None)
            continue
        listed = box_codes(message.raw_codes)
        boxes.append(listed)
        codes.update(listed[0])
        psn_hash, drug = message.psn_hash, message.med_list_codg
        if infno == SALE and not message.split and psn_hash and drug and (
            owns_person is None or owns_person(psn_hash)
        ):
            people.add(person_key(psn_hash, drug))
    if owns_code is not None:
        codes = {code for code in codes if owns_code(code)}
    return codes, people


def _link_earlier(alert: Alert, raised: dict[str, Alert]) -> Alert:
    """Link a code alert to HOARDING alerts raised by earlier messages of the same batch."""
    links = {
        psn: HoardingLink(h.alert_id, h.trigger_msgid, h.fixmedins_code, h.event_time)
        for psn, h in raised.items()
        if h.seq < alert.seq
    }
    linked = hoarding.link(alert, links) if links else alert
    if linked is alert:
        return alert
    already = {item.note for item in alert.evidence}
    fresh = tuple(item for item in linked.evidence[len(alert.evidence):]
                  if item.note not in already)
    return replace(alert, evidence=alert.evidence + fresh)
