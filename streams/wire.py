"""The wire form of the internal topics: per-code and per-person events as JSON."""

from __future__ import annotations

from typing import Any

import orjson

from detectors.model import CodeEvent, Kind, PersonEvent


def dump_event(event: CodeEvent | PersonEvent) -> bytes:
    """An internal event as JSON bytes."""
    return orjson.dumps(event._asdict())


def load_code_event(data: bytes) -> CodeEvent:
    """A :class:`CodeEvent` from its JSON bytes."""
    fields: dict[str, Any] = orjson.loads(data)
    fields["kind"] = Kind(fields["kind"])
    fields["draw_rest"] = tuple(fields.get("draw_rest") or ())
    return CodeEvent(**fields)


def load_person_event(data: bytes) -> PersonEvent:
    """A :class:`PersonEvent` from its JSON bytes."""
    return PersonEvent(**orjson.loads(data))
