"""What ``check``'s reading process hands to the process that applies the rules: parsed messages.

With ``tracewatch check --jobs 2`` a forked process reads the log, decodes and validates each
line (a fifth of ``check``'s time) and sends the valid messages of each batch, with the batch's
bad lines and how far it has read, to the process running the rules (:mod:`streams.offline`).

Pickle cannot carry the compiled ``Message`` (no ``__dict__``; fields only through
``__init__``), so a message travels as the tuple of its fields and is rebuilt field by field;
:mod:`marshal` turns those plain tuples into bytes in C. Building, sending and rebuilding cost
the applying process about a third of what parsing did.
"""

from __future__ import annotations

import marshal
from typing import Any

from detectors.model import Message


def _row(m: Message) -> tuple[Any, ...]:
    return (m.infno, m.msgid, m.fixmedins_code, m.mdtrtarea_admvs, m.time, m.bchno,
            m.raw_codes, m.med_list_codg, m.psn_hash, m.split, m.quantity, m.price,
            m.expy_end, m.returned_bchno, m.inv_chg_type, m.delete_type)


def _message(r: tuple[Any, ...]) -> Message:
    return Message(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
                   r[12], r[13], r[14], r[15])


def pack_batch(
    messages: list[tuple[int, Message]], bad: list[tuple[int, str]], read_bytes: int
) -> bytes:
    """A batch of (line number, message), its bad lines and the bytes read so far."""
    return marshal.dumps(([(number, _row(m)) for number, m in messages], bad, read_bytes))


def unpack_batch(
    data: bytes,
) -> tuple[list[tuple[int, Message]], list[tuple[int, str]], int]:
    """What :func:`pack_batch` packed."""
    rows, bad, read_bytes = marshal.loads(data)
    messages = [(number, _message(row)) for number, row in rows]
    return messages, list(bad), int(read_bytes)
