"""The wire form of the internal topics: batches of per-code and per-person events as JSON.

One record carries many events (a batch of the stage that produced it, for one partition),
so a Kafka hop costs a record per batch and partition, not per code. The value is
``{"arrived": MS, "events": [[field, ...], ...]}``: each event as the array of its fields
in declaration order, and ``arrived`` the Kafka timestamp (ms) of the oldest input message
behind the batch, so alert latency is measured from the message's arrival, not from the hop.
A record holding one event as an object (the form before batching) is read too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson

from detectors.model import CodeEvent, Kind, PersonEvent

#: A dict lookup is several times cheaper than calling the enum.
_KINDS: Final = {kind.value: kind for kind in Kind}


@dataclass(init=False, unsafe_hash=True)
class Batch:
    """The events of one internal record and when their oldest message arrived (ms)."""

    arrived_ms: Final[int]
    events: Final[list[Any]]

    def __init__(self, arrived_ms: int, events: list[Any]) -> None:
        self.arrived_ms = arrived_ms
        self.events = events


def dump_event(event: CodeEvent | PersonEvent) -> bytes:
    """One internal event as a JSON object (tests and tools; the worker sends batches)."""
    return orjson.dumps(asdict(event))


def code_event_row(e: CodeEvent) -> tuple[Any, ...]:
    """A code event's fields in declaration order (its array on the wire)."""
    return (e.code, e.kind.value, e.infno, e.msgid, e.fixmedins_code, e.mdtrtarea_admvs,
            e.bchno, e.time, e.med_list_codg, e.psn_hash, e.split, e.units, e.amount,
            e.returned_bchno, e.draw_rest, e.seq)


def person_event_row(e: PersonEvent) -> tuple[Any, ...]:
    """A person event's fields in declaration order (its array on the wire)."""
    return (e.psn_hash, e.med_list_codg, e.code, e.delta, e.fixmedins_code, e.mdtrtarea_admvs,
            e.bchno, e.msgid, e.time, e.amount, e.trigger_msgid, e.seq)


def dump_batch(events: Sequence[CodeEvent] | Sequence[PersonEvent], arrived_ms: int) -> bytes:
    """A batch of events as one record value."""
    rows = [code_event_row(e) if isinstance(e, CodeEvent) else person_event_row(e)
            for e in events]
    return orjson.dumps({"arrived": arrived_ms, "events": rows})


def _code_event(row: Any) -> CodeEvent:
    if isinstance(row, dict):
        row["kind"] = Kind(row["kind"])
        row["draw_rest"] = tuple(row.get("draw_rest") or ())
        return CodeEvent(**row)
    draw_rest = row[14]
    return CodeEvent(
        row[0], _KINDS[row[1]], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
        row[9], row[10], row[11], row[12], row[13], tuple(draw_rest) if draw_rest else (),
        row[15],
    )


def _person_event(row: Any) -> PersonEvent:
    if isinstance(row, dict):
        return PersonEvent(**row)
    return PersonEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                       row[9], row[10], row[11])


def load_code_batch(data: bytes) -> Batch:
    """The code events of one record of the codes topic."""
    body = orjson.loads(data)
    if "events" not in body:
        return Batch(0, [_code_event(body)])
    return Batch(int(body["arrived"]), [_code_event(row) for row in body["events"]])


def load_person_batch(data: bytes) -> Batch:
    """The person events of one record of the persons topic."""
    body = orjson.loads(data)
    if "events" not in body:
        return Batch(0, [_person_event(body)])
    return Batch(int(body["arrived"]), [_person_event(row) for row in body["events"]])


def load_code_event(data: bytes) -> CodeEvent:
    """A :class:`CodeEvent` from its JSON object."""
    return _code_event(orjson.loads(data))


def load_person_event(data: bytes) -> PersonEvent:
    """A :class:`PersonEvent` from its JSON object."""
    return _person_event(orjson.loads(data))
