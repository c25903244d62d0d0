"""The message step: turn one validated message into per-code events and stateless alerts.

``route`` is pure. What it needs to know about the past is passed in by the caller, who
keeps it: whether this record (institution, ``infno``, ``fixmedins_bchno``) was applied before
— a re-upload under a new ``msgid`` raises no stateless alert again — and, for a 3507 delete
of a sale, which codes that sale listed. (A message whose ``msgid`` was applied before never
reaches ``route``.)

Codes are normalised here (SPEC §2). Invalid codes and product barcodes raise their alert and
stop here; they never enter the ledger. A code listed twice in one message counts once. For a
split (拆零) sale or return listing several codes, one event goes to the first code carrying
the other codes in ``draw_rest``: the units are drawn from the codes in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from detectors import code_quality
from detectors.codes import box_codes, normalise
from detectors.messages import CHANGE, COUNT, DELETE, RETURN, SALE
from detectors.model import Alert, CodeEvent, Kind, Message, RuleConfig

DELETE_SALE_TYPE: Final = "4"


@dataclass(init=False, unsafe_hash=True)
class Routed:
    """The outcome of routing one message.

    ``sale_codes`` are the codes of a 3505 sale, to be remembered under (institution,
    ``fixmedins_bchno``) so a later 3507 delete can find them. ``stock_codes`` are the boxes
    of a count or stock-in routed with ``stock_events=False``: the caller makes a
    :func:`stock_event` only for those the ledger knows.
    """

    events: Final[Sequence[CodeEvent]]
    alerts: Final[Sequence[Alert]]
    sale_codes: Final[tuple[str, ...]]
    stock_codes: Final[tuple[str, ...]]
    codes_listed: Final[int]
    codes_rejected: Final[int]

    def __init__(
        self, events: Sequence[CodeEvent] = (), alerts: Sequence[Alert] = (),
        sale_codes: tuple[str, ...] = (), stock_codes: tuple[str, ...] = (),
        codes_listed: int = 0, codes_rejected: int = 0,
    ) -> None:
        self.events = events
        self.alerts = alerts
        self.sale_codes = sale_codes
        self.stock_codes = stock_codes
        self.codes_listed = codes_listed
        self.codes_rejected = codes_rejected


def route(
    message: Message,
    config: RuleConfig,
    *,
    record_seen: bool = False,
    deleted_codes: tuple[str, ...] = (),
    seq: int = 0,
    stock_events: bool = True,
    boxes: tuple[list[str], int] | None = None,
) -> Routed:
    """Per-code events and stateless alerts for one message (see the module docstring).

    With ``stock_events=False`` the boxes a 3501 count or 3502 stock-in lists come back in
    ``stock_codes`` instead of as events: most of them were never sold, and a box the ledger
    does not know needs no event at all. ``boxes`` is ``box_codes(message.raw_codes)`` when
    the caller has it already.
    """
    infno = message.infno
    if infno == DELETE:
        if message.delete_type != DELETE_SALE_TYPE:
            return Routed()
        events = [_event(message, code, Kind.DELETE, seq) for code in deleted_codes]
        return Routed(events=events)
    if infno not in (SALE, RETURN, COUNT, CHANGE):
        return Routed()

    raws = message.raw_codes
    listed, rejected = box_codes(raws) if boxes is None else boxes
    share = (
        message.price * message.quantity / len(raws)
        if raws and infno in (SALE, RETURN)
        else 0.0
    )
    if record_seen or not code_quality.may_raise(message, rejected):
        alerts: list[Alert] = []
    else:
        alerts = code_quality.detect(message, [normalise(raw) for raw in raws], share, seq)
    codes = list(dict.fromkeys(listed))

    if infno in (COUNT, CHANGE):
        if infno == CHANGE and message.inv_chg_type not in config.stock_in_change_types:
            return Routed(alerts=alerts, codes_listed=len(raws), codes_rejected=rejected)
        if not stock_events:
            return Routed(alerts=alerts, stock_codes=tuple(codes), codes_listed=len(raws),
                          codes_rejected=rejected)
        events = [_event(message, code, Kind.STOCK, seq) for code in codes]
        return Routed(events=events, alerts=alerts, codes_listed=len(raws),
                      codes_rejected=rejected)

    kind = Kind.SALE if infno == SALE else Kind.RETURN
    if message.split and codes:
        events = [
            _event(message, codes[0], kind, seq, units=message.quantity, amount=share,
                   draw_rest=tuple(codes[1:]))
        ]
    else:
        events = [_event(message, code, kind, seq, amount=share) for code in codes]
    return Routed(
        events=events,
        alerts=alerts,
        sale_codes=tuple(codes) if infno == SALE else (),
        codes_listed=len(raws),
        codes_rejected=rejected,
    )


def stock_event(message: Message, code: str, seq: int = 0) -> CodeEvent:
    """The event of one box a count or stock-in listed (see ``stock_events`` of :func:`route`)."""
    return _event(message, code, Kind.STOCK, seq)


def _event(
    message: Message,
    code: str,
    kind: Kind,
    seq: int,
    *,
    units: float = 1.0,
    amount: float = 0.0,
    draw_rest: tuple[str, ...] = (),
) -> CodeEvent:
    # Positional: this runs once per listed code, the hottest line of routing.
    return CodeEvent(
        code, kind, message.infno, message.msgid, message.fixmedins_code,
        message.mdtrtarea_admvs, message.bchno, message.time, message.med_list_codg,
        message.psn_hash, message.split, units, amount, message.returned_bchno, draw_rest, seq,
    )
