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
from typing import Any, NamedTuple

import orjson

from detectors.model import CodeEvent, Kind, PersonEvent

_KIND = CodeEvent._fields.index("kind")
_DRAW_REST = CodeEvent._fields.index("draw_rest")
#: A dict lookup is several times cheaper than calling the enum.
_KINDS = {kind.value: kind for kind in Kind}


class Batch(NamedTuple):
    """The events of one internal record and when their oldest message arrived (ms)."""

    arrived_ms: int
    events: list[Any]


def dump_event(event: CodeEvent | PersonEvent) -> bytes:
    """One internal event as a JSON object (tests and tools; the worker sends batches)."""
    return orjson.dumps(event._asdict())


def dump_batch(events: Sequence[CodeEvent] | Sequence[PersonEvent], arrived_ms: int) -> bytes:
    """A batch of events as one record value."""
    return orjson.dumps({"arrived": arrived_ms, "events": [tuple(e) for e in events]})


def _code_event(row: Any) -> CodeEvent:
    if isinstance(row, dict):
        row["kind"] = Kind(row["kind"])
        row["draw_rest"] = tuple(row.get("draw_rest") or ())
        return CodeEvent(**row)
    row[_KIND] = _KINDS[row[_KIND]]
    if row[_DRAW_REST]:
        row[_DRAW_REST] = tuple(row[_DRAW_REST])
    else:
        row[_DRAW_REST] = ()
    return CodeEvent._make(row)


def _person_event(row: Any) -> PersonEvent:
    return PersonEvent(**row) if isinstance(row, dict) else PersonEvent._make(row)


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
