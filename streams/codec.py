"""Compact binary packing of ledger states, for the Redis ledger.

Every value round-trips exactly: ``unpack_code_state(pack_code_state(s, i), i) == s`` for any
state, including ``None`` fields, non-ASCII text and floats that are not whole fen. The
compact forms below are used when a value fits them, and a plain form otherwise; a flag says
which. What makes a typical state small:

* integers are unsigned LEB128 varints (signed ones zigzag-encoded first);
* the code's ``last_time`` is 4 bytes of seconds since :data:`EPOCH` (2020-01-01, business
  time); every other time is a varint of its distance from it (a sale at ``last_time``: 1 byte);
* ``fixmedins_code``, ``med_list_codg`` and ``mdtrtarea_admvs`` are small integer ids from an
  :class:`Interner` (a two-way dictionary shared by all writers); ``mdtrtarea_admvs`` costs
  nothing when it is the region inside the institution code (``P510104…`` → ``510104``);
* ``psn_hash`` (16 hex digits) is 8 raw bytes, a fingerprint (12 hex digits) 6 raw bytes;
* fingerprints that can be recomputed from a standing sale (the ``msgid`` and record
  fingerprints in ``applied``, the sale behind ``first_drug_ref``) are stored as a reference
  to that sale, or as one flag when ``applied`` is exactly the sales' own fingerprints; a
  ``first_drug_ref`` that is in ``applied`` as its index there;
* money is whole fen (×100) and units hundredths when that is exact, else a float64; a whole
  box (1 unit) costs nothing;
* a ``msgid`` that starts with the institution code is stored without it, and a rest of the
  NHSA form ``YYYYmmddHHMMSS`` + sequence digits as its distance from the sale time plus the
  sequence number; a record number (``fixmedins_bchno``) of a prefix, a date and a sequence
  as the date's distance in days from the sale (nothing: the same day) plus the sequence,
  other text keeps a trailing digit run as a number.

The format has no version byte: the Redis ledger records its layout version in its meta key
and refuses data of another one. (Within layout 1, first-drug mode 3 came later: versions
before it refuse such a state with a CodecError rather than misread it.) Layout 2 packs states
the same way and adds the ledger's references to a state shared by the boxes of one sale
(:func:`shared_ref`), entries that start with a byte no packed state starts with. Layout 3
adds the dated form of record numbers (:func:`_put_record`), references in decimal, and, for
prefixes it creates, packed code fields (:func:`code_slot`). Layout 4 adds an explicit first
drug that is the standing first sale's drug, or whose reference is one of ``applied``
(``_FD_DRUG_OF_SALE``, ``_FD_REF_APPLIED``: a box sold, returned and sold again, 71 → 64
bytes), and, for prefixes it creates, narrow code fields (:func:`narrow_code_slot`). Layout 5
gives the prefixes it creates interned code fields: a GS1 code's GTIN by its id in the
ledger's GTIN dictionary (:func:`interned_code_slot`). The derived
fingerprints rely on :func:`detectors.code_ledger.message_fingerprint` and
``record_fingerprint``; changing those means a new layout version.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

from librt.strings import BytesWriter, read_i32_be, write_f64_be

from detectors.code_ledger import message_fingerprint, record_fingerprint
from detectors.hoarding import HoardingLink, PersonState, Purchase
from detectors.messages import SALE
from detectors.model import CodeState, SaleRecord, decimal_text, fingerprint, same_float

EPOCH: Final = 1_577_836_800
"""2020-01-01 00:00:00 in business seconds: the zero of packed times."""

INST: Final = "inst"
DRUG: Final = "drug"
ADMVS: Final = "admvs"
GTIN: Final = "gtin"
TABLES: Final = (INST, DRUG, ADMVS, GTIN)
"""The interned vocabularies: institutions, billed drugs, region codes, and the GTINs of GS1
codes in code fields (a ledger that records code_fields=interned, :func:`interned_code_slot`)."""


class CodecError(ValueError):
    """Bytes that are not a packed value of this format."""


class Interner(Protocol):
    """A two-way dictionary of short strings to small integer ids (from 1), per table."""

    def to_id(self, table: str, text: str) -> int:
        """The id of ``text`` in ``table``, allocating one when it is new."""
        ...

    def to_text(self, table: str, ident: int) -> str:
        """The text of an id of ``table``."""
        ...


class MemoryInterner:
    """An :class:`Interner` in process memory, for tests and offline use."""

    def __init__(self) -> None:
        self.ids: dict[str, dict[str, int]] = {table: {} for table in TABLES}
        self.texts: dict[str, list[str]] = {table: [""] for table in TABLES}

    def to_id(self, table: str, text: str) -> int:
        """The id of ``text``; new texts get the next id."""
        ids = self.ids[table]
        ident = ids.get(text)
        if ident is None:
            texts = self.texts[table]
            ident = ids[text] = len(texts)
            texts.append(text)
        return ident

    def to_text(self, table: str, ident: int) -> str:
        """The text of ``ident``; CodecError when it was never allocated."""
        texts = self.texts[table]
        if not 0 < ident < len(texts):
            raise CodecError(f"unknown {table} id {ident}")
        return texts[ident]


# --------------------------------------------------------------------------- primitives

_DIGITS: Final = "0123456789"
_F64: Final = struct.Struct(">d")
_U32_LIMIT: Final = 1 << 32
_MAX_TAIL_DIGITS: Final = 19
_NHSA_SEQUENCE_DIGITS: Final = 5  # msgid = institution + YYYYmmddHHMMSS + 5-digit sequence


def _uvarint(out: BytesWriter, value: int) -> None:
    # A BytesWriter, not a bytearray: compiled, its append is a few C instructions where
    # bytearray.append is a method call (~270 instructions; a packed state has dozens).
    if 0 <= value < 0x80:
        out.append(value)
        return
    if value < 0:
        raise ValueError(f"varint of a negative number: {value}")
    if value < 0x4000:
        out.append((value & 0x7F) | 0x80)
        out.append(value >> 7)
        return
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _svarint(out: BytesWriter, value: int) -> None:
    _uvarint(out, value * 2 if value >= 0 else -value * 2 - 1)


def _hex_bytes(text: str, size: int) -> bytes | None:
    """``text`` as raw bytes when it is exactly ``2 * size`` lowercase hex digits."""
    if len(text) != 2 * size:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if raw.hex() == text else None


def _centi(value: float) -> int | None:
    """``value`` in hundredths when that is an exact, non-negative whole number."""
    scaled = value * 100
    # isinf/isnan and floor rather than isfinite and round(): compiled, these are C calls,
    # those Python calls (every amount and units packed takes this). round()'s nearest
    # whole number, ties to even (``scaled - cents`` is exact: Sterbenz's lemma).
    if math.isinf(scaled) or math.isnan(scaled):
        return None
    cents = math.floor(scaled)
    fraction = scaled - cents
    if fraction > 0.5 or (fraction == 0.5 and cents % 2 == 1):
        cents += 1
    if cents < 0 or cents / 100 != value or (cents == 0 and math.copysign(1.0, value) < 0):
        return None
    return cents


def _put_str(out: BytesWriter, text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    _uvarint(out, len(raw))
    out.write(raw)


def _put_text(out: BytesWriter, text: str) -> None:
    """Text with its trailing ASCII digit run (up to 19 digits) stored as a number."""
    head = text.rstrip(_DIGITS)
    digits = len(text) - len(head)
    if digits > _MAX_TAIL_DIGITS:
        head = text[: len(text) - _MAX_TAIL_DIGITS]
        digits = _MAX_TAIL_DIGITS
    if digits:
        raw = head.encode("utf-8", "surrogatepass")
        _uvarint(out, (len(raw) * 20 + digits) * 2 + 1)
        out.write(raw)
        _uvarint(out, int(text[len(head):]))
    else:
        raw = text.encode("utf-8", "surrogatepass")
        _uvarint(out, len(raw) * 2)
        out.write(raw)


def _put_record(out: BytesWriter, text: str, moment: int) -> None:
    """A record number (``fixmedins_bchno``) of a sale or purchase at ``moment``.

    Hospital and pharmacy systems number records as a prefix, the day's date and a sequence
    (``XS20261102`` + ``00014375``). When the trailing digit run starts with a valid
    ``YYYYmmdd`` followed by 1 to 19 more digits, the date is stored as its distance in days
    from ``moment``'s (nothing when it is that day) and the rest as a number: 5 to 6 bytes
    where :func:`_put_text` took 11. The form is :func:`_put_text`'s digit-run header with no
    digits (which that function never writes), then one varint of the sequence, its digit
    count and whether a day distance follows. Anything else is :func:`_put_text`'s.
    """
    if text.isascii():
        # Read as bytes, the digits are numbers to compiled code, where ``str.rstrip`` and a
        # string per character took half the time; most record numbers are ASCII.
        raw = text.encode("ascii")
        start = len(raw)
        while start > 0 and 48 <= raw[start - 1] <= 57:
            start -= 1
        head, digits = raw[:start], raw[start:]
    else:
        head_text = text.rstrip(_DIGITS)
        head = head_text.encode("utf-8", "surrogatepass")
        digits = text[len(head_text):].encode("ascii")  # what rstrip took: ASCII digits
    after = len(digits) - 8  # digits after the date
    if 1 <= after <= _MAX_TAIL_DIGITS:
        year, month, day = _number(digits, 0, 4), _number(digits, 4, 6), _number(digits, 6, 8)
        if _DATED_FIRST_YEAR <= year and 1 <= month <= 12 and 1 <= day <= _days_in(year, month):
            offset = _civil_days(year, month, day) - moment // 86_400
            _uvarint(out, len(head) * 40 + 1)
            out.write(head)
            _uvarint(out, (_number(digits, 8, len(digits)) * 20 + after) * 2 + (offset != 0))
            if offset:
                _svarint(out, offset)
            return
    _put_text(out, text)


_DATED_FIRST_YEAR: Final = 1971  # gmtime formats every year from here to 9999 in four digits
_DAY_TEXTS: Final[dict[int, str]] = {}


def _dated_record(head: str, packed: int, moment: int, offset: int) -> str:
    """The record number :func:`_put_record` stored dated, given the sale's ``moment``."""
    day = moment // 86_400 + offset
    date = _DAY_TEXTS.get(day)
    if date is None:
        date = time.strftime("%Y%m%d", time.gmtime(day * 86_400))
        if len(_DAY_TEXTS) < 4096:
            _DAY_TEXTS[day] = date
    packed >>= 1
    return head + date + decimal_text(packed // 20).zfill(packed % 20)


def _put_time(out: BytesWriter, seconds: int) -> bool:
    """4-byte time since EPOCH; returns False (and writes a zigzag varint) when out of range."""
    offset = seconds - EPOCH
    if 0 <= offset < _U32_LIMIT:
        out.write(offset.to_bytes(4, "big"))
        return True
    _svarint(out, offset)
    return False


def _put_print(out: BytesWriter, value: str) -> None:
    """A fingerprint as token 0 + 6 raw bytes, or token 1 + text when it is not 12 hex."""
    raw = _hex_bytes(value, 6)
    if raw is None:
        out.append(1)
        _put_str(out, value)
    else:
        out.append(0)
        out.write(raw)


# Bytes, not a tuple: compiled, a Final tuple of ints is a C struct that indexing by a
# variable first boxes into a new 13-item tuple (~780 instructions a lookup).
_MONTH_DAYS: Final = bytes((0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31))


def _days_in(year: int, month: int) -> int:
    if month == 2 and calendar.isleap(year):
        return 29
    return _MONTH_DAYS[month]


def _civil_days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a valid proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _nhsa_stamp(rest: str) -> tuple[int, int, int] | None:
    """(time, sequence, sequence digits) of ``YYYYmmddHHMMSS`` + up to 19 digits, else None."""
    size = len(rest)
    if not 14 <= size <= 14 + _MAX_TAIL_DIGITS or not rest.isascii() or not rest.isdigit():
        return None
    # Digit by digit rather than int() of slices or of the whole: compiled, this is 3-4x
    # faster, and every sale and purchase packed reads one.
    digits = rest.encode("ascii")
    year, month, day = _number(digits, 0, 4), _number(digits, 4, 6), _number(digits, 6, 8)
    hour, minute, second = (_number(digits, 8, 10), _number(digits, 10, 12),
                            _number(digits, 12, 14))
    if not (
        1971 <= year
        and 1 <= month <= 12
        and 1 <= day <= _days_in(year, month)
        and hour < 24
        and minute < 60
        and second < 60
    ):
        return None
    moment = _civil_days(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    return moment, _number(digits, 14, size), size - 14


def _number(digits: bytes, start: int, end: int) -> int:
    """The decimal number ``digits[start:end]`` (ASCII digits, checked by the caller): of
    bytes, whose items compiled code reads as numbers."""
    value = 0
    for index in range(start, end):
        value = value * 10 + (digits[index] - 48)
    return value


class _Reader:
    """A cursor over packed bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        pos = self.pos
        if pos >= len(self.data):
            raise CodecError("packed value ends early")
        self.pos = pos + 1
        return self.data[pos]

    def uvarint(self) -> int:
        data, pos = self.data, self.pos
        if pos + 1 < len(data):  # the common one- and two-byte cases
            first = data[pos]
            if first < 0x80:
                self.pos = pos + 1
                return first
            second = data[pos + 1]
            if second < 0x80:
                self.pos = pos + 2
                return (first & 0x7F) | second << 7
        result = shift = 0
        while True:
            if pos >= len(data):
                raise CodecError("packed value ends inside a varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return result
            shift += 7

    def svarint(self) -> int:
        value = self.uvarint()
        return value >> 1 if not value & 1 else -(value >> 1) - 1

    def take(self, size: int) -> bytes:
        pos = self.pos
        end = pos + size
        if end > len(self.data):
            raise CodecError("packed value ends early")
        self.pos = end
        return self.data[pos:end]

    def string(self) -> str:
        return self.take(self.uvarint()).decode("utf-8", "surrogatepass")

    def text(self) -> str:
        header = self.uvarint()
        if not header & 1:
            return self.take(header >> 1).decode("utf-8", "surrogatepass")
        size, digits = divmod(header >> 1, 20)
        head = self.take(size).decode("utf-8", "surrogatepass")
        return head + decimal_text(self.uvarint()).zfill(digits)

    def record(self) -> tuple[str, int, int]:
        """A record number as (text, -1, 0), or dated (head, packed, day offset): see
        :func:`_put_record`; :func:`_dated_record` finishes it once the time is read."""
        header = self.uvarint()
        if not header & 1:
            return self.take(header >> 1).decode("utf-8", "surrogatepass"), -1, 0
        size, digits = divmod(header >> 1, 20)
        head = self.take(size).decode("utf-8", "surrogatepass")
        if digits:
            return head + decimal_text(self.uvarint()).zfill(digits), -1, 0
        packed = self.uvarint()
        return head, packed, self.svarint() if packed & 1 else 0

    def moment(self, fixed: bool) -> int:
        if fixed:
            return EPOCH + int.from_bytes(self.take(4), "big")
        return EPOCH + self.svarint()

    def f64(self) -> float:
        value: float = _F64.unpack(self.take(8))[0]
        return value

    def fingerprint(self) -> str:
        token = self.byte()
        if token == 0:
            return self.take(6).hex()
        if token == 1:
            return self.string()
        raise CodecError(f"bad fingerprint token {token}")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise CodecError(f"{len(self.data) - self.pos} bytes left after the packed value")


# --------------------------------------------------------------------------- shared record part

# Flag bits of a packed sale or purchase (one varint: the common ones below 128).
_ADMVS_OWN: Final = 1 << 0  # mdtrtarea_admvs == fixmedins_code[1:7]
_MSG_PREFIX: Final = 1 << 1  # msgid starts with fixmedins_code, which is not stored again
_MSG_STAMP: Final = 1 << 2  # the rest of msgid is YYYYmmddHHMMSS + sequence digits
_SPLIT: Final = 1 << 3
_PSN_RAW: Final = 1 << 4  # psn_hash as 8 raw bytes
_DRUG: Final = 1 << 5  # med_list_codg present (interned)
_UNITS_CENTI: Final = 1 << 6  # units in hundredths (absent flag and this one: units == 1)
_UNITS_F64: Final = 1 << 7
_AMOUNT_F64: Final = 1 << 8  # else amount in fen
_PSN_TEXT: Final = 1 << 9  # psn_hash that is not 16 hex digits


def _origin_flags(
    institution: str, admvs: str, msgid: str
) -> tuple[int, str, tuple[int, int, int] | None]:
    """Flags of an origin's parts, with the msgid's rest and its NHSA stamp."""
    flags = 0
    if admvs == institution[1:7]:
        flags |= _ADMVS_OWN
    rest = msgid
    if institution and msgid.startswith(institution):
        flags |= _MSG_PREFIX
        rest = msgid[len(institution):]
    stamp = _nhsa_stamp(rest)
    if stamp is not None:
        flags |= _MSG_STAMP
    return flags, rest, stamp


ORIGINS_CACHED: Final = 1 << 16
"""Origins whose packed parts :func:`_origin` keeps (then it starts again): a batch's."""

_origins: Final[dict[tuple[str, str, str, str, int], tuple[int, bytes, bytes]]] = {}
_origins_interner: Final[list[Interner]] = []


def _origin(
    institution: str, admvs: str, bchno: str, msgid: str, moment: int, interner: Interner
) -> tuple[int, bytes, bytes]:
    """The origin of a sale or purchase (institution, region, record number, msgid and time)
    packed around its time, which is written relative to the state's: (flags but the
    amount's, the bytes before the time, the bytes after). :func:`_read_origin` reads it.

    Each origin is packed several times a batch (in its boxes' states, its buyer's, and
    again in later states of both): the parts are kept for the last :data:`ORIGINS_CACHED`
    origins of one interner, when its ids were all known (a miss is id 0, packed again)."""
    key = (institution, admvs, bchno, msgid, moment)
    if _origins_interner and _origins_interner[0] is interner:
        known = _origins.get(key)
        if known is not None:
            return known
    else:
        _origins.clear()
        _origins_interner[:] = [interner]
    flags, rest, stamp = _origin_flags(institution, admvs, msgid)
    head = BytesWriter()
    ident = interner.to_id(INST, institution)
    complete = ident != 0
    _uvarint(head, ident)
    if not flags & _ADMVS_OWN:
        ident = interner.to_id(ADMVS, admvs)
        complete = complete and ident != 0
        _uvarint(head, ident)
    _put_record(head, bchno, moment)
    tail = BytesWriter()
    if stamp is None:
        _put_text(tail, rest)
    else:
        stamped, sequence, digits = stamp
        _svarint(tail, stamped - moment)
        _uvarint(tail, sequence * 2 + (digits != _NHSA_SEQUENCE_DIGITS))
        if digits != _NHSA_SEQUENCE_DIGITS:
            _uvarint(tail, digits)
    parts = (flags, head.getvalue(), tail.getvalue())
    if complete:
        if len(_origins) >= ORIGINS_CACHED:
            _origins.clear()
        _origins[key] = parts
    return parts


def _put_origin(out: BytesWriter, head: bytes, tail: bytes, moment: int, base: int) -> None:
    """An origin's parts (:func:`_origin`) around its time, relative to the state's."""
    out.write(head)
    _svarint(out, base - moment)
    out.write(tail)


def _read_origin(
    reader: _Reader, flags: int, base: int, interner: Interner
) -> tuple[str, str, str, str, int]:
    """(institution, region, bchno, msgid, time) as :func:`_origin` packs them."""
    institution = interner.to_text(INST, reader.uvarint())
    if flags & _ADMVS_OWN:
        admvs = institution[1:7]
    else:
        admvs = interner.to_text(ADMVS, reader.uvarint())
    bchno, dated, offset = reader.record()
    moment = base - reader.svarint()
    if dated >= 0:
        bchno = _dated_record(bchno, dated, moment, offset)
    if flags & _MSG_STAMP:
        stamped = time.strftime("%Y%m%d%H%M%S", time.gmtime(moment + reader.svarint()))
        packed = reader.uvarint()
        digits = reader.uvarint() if packed & 1 else _NHSA_SEQUENCE_DIGITS
        rest = stamped + (decimal_text(packed >> 1).zfill(digits) if digits else "")
    else:
        rest = reader.text()
    msgid = institution + rest if flags & _MSG_PREFIX else rest
    return institution, admvs, bchno, msgid, moment


def _put_amount(out: BytesWriter, flags: int, amount: float, fen: int | None) -> None:
    if flags & _AMOUNT_F64:
        write_f64_be(out, amount)
    else:
        assert fen is not None
        _uvarint(out, fen)


def _read_amount(reader: _Reader, flags: int) -> float:
    return reader.f64() if flags & _AMOUNT_F64 else reader.uvarint() / 100


# --------------------------------------------------------------------------- code state

# Header byte of a packed CodeState.
_SALES_MASK: Final = 0b111  # number of sales; 7: a varint count follows
_APPLIED_CANONICAL: Final = 1 << 3  # applied == each sale's (msgid, record) fingerprints, in order
_FIRST_SHIFT: Final = 4  # two bits: 0 none, 1 and 3 from sales[0], 2 explicit
_FIRST_FROM_SALE: Final = 1  # first_drug_ref = fingerprint(institution, bchno) of sales[0]
_FIRST_EXPLICIT: Final = 2
_FIRST_FROM_SALE_RECORD: Final = 3  # first_drug_ref = record_fingerprint(.., SALE, ..) of sales[0]
_FLOWBACK: Final = 1 << 6  # flowback_seen follows
_TIME_VARINT: Final = 1 << 7  # last_time does not fit 4 bytes

# Sub-flags of an explicit first drug.
_FD_DRUG: Final = 1
_FD_REF: Final = 2
# Layout 4: a first drug that is the standing first sale's drug, and a first drug reference
# that is one of ``applied`` (a box sold, returned and sold again keeps the first sale's
# record fingerprint in both), as that sale or that index rather than an interned id or a
# 7-byte fingerprint. This keeps the commonest resold box's state within 64 bytes, inside a
# listpack (Redis's default ``hash-max-listpack-value``) rather than an overflow hash.
_FD_DRUG_OF_SALE: Final = 4
_FD_REF_APPLIED: Final = 8


def _sale_prints(sales: Sequence[SaleRecord]) -> list[str]:
    """The fingerprints applying each sale leaves in ``applied``, in order."""
    prints: list[str] = []
    for sale in sales:
        prints.append(message_fingerprint(sale.msgid))
        prints.append(record_fingerprint(sale.fixmedins_code, SALE, sale.bchno))
    return prints


def _pack_sale(out: BytesWriter, sale: SaleRecord, base: int, interner: Interner) -> None:
    """A sale: flags, then :func:`_origin`'s fields, person, drug, units and amount."""
    institution, admvs, bchno, msgid = (
        sale.fixmedins_code, sale.mdtrtarea_admvs, sale.bchno, sale.msgid)
    moment, psn, drug, split, units, amount = (
        sale.time, sale.psn_hash, sale.med_list_codg, sale.split, sale.units, sale.amount)
    flags, head, tail = _origin(institution, admvs, bchno, msgid, moment, interner)
    fen = _centi(amount)
    if fen is None:
        flags |= _AMOUNT_F64
    if split:
        flags |= _SPLIT
    psn_raw = None
    if psn is not None:
        psn_raw = _hex_bytes(psn, 8)
        flags |= _PSN_TEXT if psn_raw is None else _PSN_RAW
    if drug is not None:
        flags |= _DRUG
    centi_units = None
    if units != 1.0 or math.copysign(1.0, units) < 0:
        centi_units = _centi(units)
        flags |= _UNITS_F64 if centi_units is None else _UNITS_CENTI
    _uvarint(out, flags)
    _put_origin(out, head, tail, moment, base)
    if psn_raw is not None:
        out.write(psn_raw)
    elif psn is not None:
        _put_str(out, psn)
    if drug is not None:
        _uvarint(out, interner.to_id(DRUG, drug))
    if centi_units is not None:
        _uvarint(out, centi_units)
    elif flags & _UNITS_F64:
        write_f64_be(out, units)
    _put_amount(out, flags, amount, fen)


def _read_sale(reader: _Reader, base: int, interner: Interner) -> SaleRecord:
    """A sale as written by :func:`_pack_sale` (:func:`_read_origin` inlined: the hot path)."""
    uvarint = reader.uvarint
    flags = uvarint()
    institution = interner.to_text(INST, uvarint())
    if flags & _ADMVS_OWN:
        admvs = institution[1:7]
    else:
        admvs = interner.to_text(ADMVS, uvarint())
    bchno, dated, offset = reader.record()
    moment = base - reader.svarint()
    if dated >= 0:
        bchno = _dated_record(bchno, dated, moment, offset)
    if flags & _MSG_STAMP:
        stamped = time.strftime("%Y%m%d%H%M%S", time.gmtime(moment + reader.svarint()))
        packed = uvarint()
        digits = uvarint() if packed & 1 else _NHSA_SEQUENCE_DIGITS
        rest = stamped + (decimal_text(packed >> 1).zfill(digits) if digits else "")
    else:
        rest = reader.text()
    if flags & _PSN_RAW:
        psn: str | None = reader.take(8).hex()
    elif flags & _PSN_TEXT:
        psn = reader.string()
    else:
        psn = None
    drug = interner.to_text(DRUG, uvarint()) if flags & _DRUG else None
    if flags & _UNITS_CENTI:
        units = uvarint() / 100
    elif flags & _UNITS_F64:
        units = reader.f64()
    else:
        units = 1.0
    return SaleRecord(
        institution,
        admvs,
        bchno,
        institution + rest if flags & _MSG_PREFIX else rest,
        moment,
        psn,
        drug,
        bool(flags & _SPLIT),
        units,
        reader.f64() if flags & _AMOUNT_F64 else uvarint() / 100,
    )


def pack_code_state(state: CodeState, interner: Interner) -> bytes:
    """The state of one code as compact bytes (never empty); see the module docstring."""
    sales = state.sales
    out = BytesWriter()
    out.append(0)  # the header, written last
    header = len(sales) if len(sales) < _SALES_MASK else _SALES_MASK
    if not _put_time(out, state.last_time):
        header |= _TIME_VARINT
    if header & _SALES_MASK == _SALES_MASK:
        _uvarint(out, len(sales))
    for sale in sales:
        _pack_sale(out, sale, state.last_time, interner)

    applied = state.applied
    derived = _sale_prints(sales) if sales else []
    if list(applied) == derived:
        header |= _APPLIED_CANONICAL
    else:
        slots = {value: index for index, value in enumerate(derived)}
        _uvarint(out, len(applied))
        for value in applied:
            index = slots.get(value)
            if index is None:
                _put_print(out, value)
            else:
                _uvarint(out, index + 2)

    first_drug, first_ref = state.first_drug, state.first_drug_ref
    if first_drug is not None or first_ref is not None:
        mode = _FIRST_EXPLICIT
        if sales and first_drug is not None and first_drug == sales[0].med_list_codg:
            # The code ledger refers to the sale that set the first drug by its record
            # fingerprint, which ``derived`` already holds; states of older versions used
            # the two-part fingerprint.
            if first_ref == derived[1]:
                mode = _FIRST_FROM_SALE_RECORD
            elif first_ref == fingerprint(sales[0].fixmedins_code, sales[0].bchno):
                mode = _FIRST_FROM_SALE
        header |= mode << _FIRST_SHIFT
        if mode == _FIRST_EXPLICIT:
            present = 0
            if first_drug is not None:
                drug_of_sale = bool(sales) and first_drug == sales[0].med_list_codg
                present |= _FD_DRUG_OF_SALE if drug_of_sale else _FD_DRUG
            ref_index = -1
            if first_ref is not None:
                for index, value in enumerate(applied):
                    if value == first_ref:
                        ref_index = index
                        break
                present |= _FD_REF if ref_index < 0 else _FD_REF_APPLIED
            out.append(present)
            if present & _FD_DRUG and first_drug is not None:
                _uvarint(out, interner.to_id(DRUG, first_drug))
            if present & _FD_REF and first_ref is not None:
                _put_print(out, first_ref)
            elif ref_index >= 0:
                _uvarint(out, ref_index)

    if state.flowback_seen:
        header |= _FLOWBACK
        _uvarint(out, len(state.flowback_seen))
        for value in state.flowback_seen:
            _put_print(out, value)
    out[0] = header
    return out.getvalue()


SHARED_REF: Final = 0x10
"""First byte of a code's entry in the Redis ledger that refers to a state kept once for all
the boxes one message sold (``streams.redis_ledger``: the entry is this byte and the state's
serial, :func:`shared_ref`). No packed CodeState starts with it: that header would say no
sales and a first drug taken from the first sale (mode 1), which :func:`pack_code_state`
never writes and :func:`unpack_code_state` refuses."""
SHARED_REF_SIZE: Final = 6
"""The longest reference in binary: the byte and a 5-byte serial."""
SHARED_SERIAL_BITS: Final = 40
SHARED_DECIMAL_BELOW: Final = 1 << 31
"""Serials below this are referred to in decimal, as their negative (``-123456``): a listpack
keeps an entry that reads as an integer as that integer, 5 bytes of listpack below 2**23
serials and 6 below 2**31, where the binary form takes 6 and 7 (layout 3; layout 2 wrote only
the binary form, which stays readable)."""
SHARED_DECIMAL_SIZE: Final = 12
"""References in decimal are at most this long. No packed CodeState this short starts with
``-`` (0x2D): that header says five sales, and a packed state with five takes 33 bytes or
more (each sale at least 6, :func:`_pack_sale`)."""


def shared_ref(serial: int) -> bytes:
    """The entry of a code whose state is the shared state number ``serial``: below
    :data:`SHARED_DECIMAL_BELOW`, ``-`` and the serial in decimal; past it :data:`SHARED_REF`
    and the serial big-endian in as few bytes as it needs (4 or 5)."""
    if serial < SHARED_DECIMAL_BELOW:
        return b"-%d" % serial
    return binary_shared_ref(serial)


def binary_shared_ref(serial: int) -> bytes:
    """A reference in binary: :data:`SHARED_REF` and the serial big-endian in as few bytes as
    it needs (layout 2 wrote every reference so)."""
    return bytes((SHARED_REF,)) + serial.to_bytes(max(1, (serial.bit_length() + 7) >> 3), "big")


def shared_serial(entry: bytes) -> int | None:
    """The serial of a reference (either form, :func:`shared_ref`); None for a packed state."""
    size = len(entry)
    if 2 <= size <= SHARED_DECIMAL_SIZE and entry[0] == 0x2D:
        return int(entry[1:])
    if 2 <= size <= SHARED_REF_SIZE and entry[0] == SHARED_REF:
        return int.from_bytes(entry[1:], "big")
    return None


def _sales_alike(first: SaleRecord, second: SaleRecord) -> bool:
    return (
        first.msgid == second.msgid
        and first.bchno == second.bchno
        and first.time == second.time
        and first.fixmedins_code == second.fixmedins_code
        and first.mdtrtarea_admvs == second.mdtrtarea_admvs
        and first.psn_hash == second.psn_hash
        and first.med_list_codg == second.med_list_codg
        and first.split == second.split
        and same_float(first.units, second.units)
        and same_float(first.amount, second.amount)
    )


def packs_alike(state: CodeState, other: CodeState) -> bool:
    """Whether two states pack to the same bytes (by their fields, without packing).

    The boxes of one message are sold together, so most states a batch stores are field for
    field those of the code before them: the writer packs such a run once.
    """
    if state is other:
        return True
    sales, others = state.sales, other.sales
    if (
        state.last_time != other.last_time
        or len(sales) != len(others)
        or state.first_drug != other.first_drug
        or state.first_drug_ref != other.first_drug_ref
        or state.applied != other.applied
        or state.flowback_seen != other.flowback_seen
    ):
        return False
    for sale, other_sale in zip(sales, others, strict=True):
        if not _sales_alike(sale, other_sale):
            return False
    return True


def unpack_code_state(data: bytes, interner: Interner) -> CodeState:
    """The inverse of :func:`pack_code_state`; CodecError on bytes it did not write."""
    reader = _Reader(data)
    header = reader.byte()
    last_time = reader.moment(not header & _TIME_VARINT)
    count = header & _SALES_MASK
    if count == _SALES_MASK:
        count = reader.uvarint()
    if count == 1:
        sales: tuple[SaleRecord, ...] = (_read_sale(reader, last_time, interner),)
    else:
        sales = tuple([_read_sale(reader, last_time, interner) for _ in range(count)])

    if header & _APPLIED_CANONICAL:
        applied = tuple(_sale_prints(sales)) if sales else ()
    else:
        derived: list[str] | None = None
        values: list[str] = []
        for _ in range(reader.uvarint()):
            token = reader.uvarint()
            if token == 0:
                values.append(reader.take(6).hex())
            elif token == 1:
                values.append(reader.string())
            else:
                if derived is None:
                    derived = _sale_prints(sales)
                if token - 2 >= len(derived):
                    raise CodecError(f"fingerprint reference {token} beyond the sales")
                values.append(derived[token - 2])
        applied = tuple(values)

    first_mode = header >> _FIRST_SHIFT & 0b11
    first_drug: str | None = None
    first_ref: str | None = None
    if first_mode == _FIRST_FROM_SALE or first_mode == _FIRST_FROM_SALE_RECORD:
        if not sales:
            raise CodecError("first drug refers to a sale that is not there")
        first = sales[0]
        first_drug = first.med_list_codg
        if first_mode == _FIRST_FROM_SALE:
            first_ref = fingerprint(first.fixmedins_code, first.bchno)
        elif header & _APPLIED_CANONICAL:
            first_ref = applied[1]  # the first sale's record fingerprint
        else:
            first_ref = record_fingerprint(first.fixmedins_code, SALE, first.bchno)
    elif first_mode == _FIRST_EXPLICIT:
        present = reader.byte()
        if present & _FD_DRUG:
            first_drug = interner.to_text(DRUG, reader.uvarint())
        elif present & _FD_DRUG_OF_SALE:
            if not sales:
                raise CodecError("first drug refers to a sale that is not there")
            first_drug = sales[0].med_list_codg
        if present & _FD_REF:
            first_ref = reader.fingerprint()
        elif present & _FD_REF_APPLIED:
            index = reader.uvarint()
            if index >= len(applied):
                raise CodecError(f"first drug reference {index} beyond the applied list")
            first_ref = applied[index]

    flowback: tuple[str, ...] = ()
    if header & _FLOWBACK:
        flowback = tuple(reader.fingerprint() for _ in range(reader.uvarint()))
    reader.end()
    return CodeState(
        sales=sales,
        first_drug=first_drug,
        first_drug_ref=first_ref,
        applied=applied,
        flowback_seen=flowback,
        last_time=last_time,
    )


# --------------------------------------------------------------------------- person state

_PERSON_ALERT: Final = 1  # last_alert_time present
_PERSON_TIME_VARINT: Final = 2  # the base time does not fit 4 bytes


def _origins_alike(purchase: Purchase, other: Purchase) -> bool:
    """Whether two purchases of one state pack the same bytes after their codes."""
    return (
        purchase.msgid == other.msgid
        and purchase.bchno == other.bchno
        and purchase.time == other.time
        and purchase.fixmedins_code == other.fixmedins_code
        and purchase.mdtrtarea_admvs == other.mdtrtarea_admvs
        and same_float(purchase.amount, other.amount)
    )


def pack_person_state(state: PersonState, interner: Interner) -> bytes:
    """One person's hoarding state for one drug as compact bytes (never empty)."""
    purchases = state.purchases
    alert_time = state.last_alert_time
    times = [p.time for p in purchases]
    if alert_time is not None:
        times.append(alert_time)
    base = max(times) if times else EPOCH
    out = BytesWriter()
    out.append(0)  # the header, written last
    header = 0 if alert_time is None else _PERSON_ALERT
    if not _put_time(out, base):
        header |= _PERSON_TIME_VARINT
    if alert_time is not None:
        _svarint(out, base - alert_time)
    _uvarint(out, len(purchases))
    # The boxes of one message are consecutive purchases with the same origin and amount:
    # their bytes after the code are those of the purchase before, copied, not packed again.
    previous: Purchase | None = None
    flags = 0
    origin = b""
    for purchase in purchases:
        if previous is not None and _origins_alike(purchase, previous):
            _uvarint(out, flags)
            _put_code(out, purchase.code)
            out.write(origin)
            continue
        moment = purchase.time
        flags, head, tail = _origin(purchase.fixmedins_code, purchase.mdtrtarea_admvs,
                                    purchase.bchno, purchase.msgid, moment, interner)
        fen = _centi(purchase.amount)
        if fen is None:
            flags |= _AMOUNT_F64
        _uvarint(out, flags)
        _put_code(out, purchase.code)
        after_code = BytesWriter()
        _put_origin(after_code, head, tail, moment, base)
        _put_amount(after_code, flags, purchase.amount, fen)
        origin = after_code.getvalue()
        out.write(origin)
        previous = purchase
    out[0] = header
    return out.getvalue()


def unpack_person_state(data: bytes, interner: Interner) -> PersonState:
    """The inverse of :func:`pack_person_state`."""
    reader = _Reader(data)
    header = reader.byte()
    base = reader.moment(not header & _PERSON_TIME_VARINT)
    alert_time = base - reader.svarint() if header & _PERSON_ALERT else None
    purchases: list[Purchase] = []
    for _ in range(reader.uvarint()):
        flags = reader.uvarint()
        code = _read_code(reader)
        institution, admvs, bchno, msgid, moment = _read_origin(reader, flags, base, interner)
        purchases.append(Purchase(
            code=code,
            fixmedins_code=institution,
            mdtrtarea_admvs=admvs,
            bchno=bchno,
            msgid=msgid,
            time=moment,
            amount=_read_amount(reader, flags),
        ))
    reader.end()
    return PersonState(purchases=tuple(purchases), last_alert_time=alert_time)


# --------------------------------------------------------------------------- codes

_CODE20_BITS: Final = 67  # 10**20 < 2**67
_CODE20_MASK: Final = (1 << _CODE20_BITS) - 1
_MIX: Final = 91_205_718_554_585_587_887  # odd, about 2**67 / golden ratio: a bijection mod 2**67
_UNMIX: Final = pow(_MIX, -1, 1 << _CODE20_BITS)
_FIELD_TEXT: Final = 0x80  # field of another code: this byte + its UTF-8 bytes
_FIELD_GS1: Final = 0x81  # field of (01)GTIN(21)SERIAL: this byte + GTIN in 6 bytes + serial
_FIELD_DIGEST: Final = 0x82  # field of a long code: this byte + 16-byte digest
# Packed fields (a ledger that records code_fields=packed): a code or GS1 serial that ends in
# digits keeps them as a number (_put_text's form), which costs 4 to 7 bytes less.
_FIELD_GS1_PACKED: Final = 0x83  # this byte + GTIN in 6 bytes + the serial as _put_text writes it
_FIELD_TEXT_PACKED: Final = 0x84  # this byte + the code as _put_text writes it
_FIELD_TEXT_MAX: Final = 40  # longer codes are stored under a digest (fields stay small)
_GS1_SERIAL_MAX: Final = 20
# Narrow fields (a ledger that records code_fields=narrow, layout 4): a 码上放心 code starts
# with 8 (DOMAIN.md), so its other 19 digits are a number below 10**19, mixed by a bijection
# modulo 10**19; its top part chooses the bucket (divided by _narrow_span_of: the low bits
# would keep a serial's own powers of two, 10**19 being a multiple of 2**19) and the rest is
# the field, with no flag bit:
# a 20-digit field is told from the others by its length alone (narrow_field_size), and a
# field of another form that would have that length gets _FIELD_PADDED before it.
_NARROW_FIRST: Final = 8 * 10**19
_NARROW_SPAN: Final = 10**19
_NARROW_MIX: Final = 6_180_339_887_498_948_483  # about 10**19 / golden ratio, prime to 10
_NARROW_UNMIX: Final = pow(_NARROW_MIX, -1, _NARROW_SPAN)
_FIELD_PADDED: Final = 0x85  # this byte + a field of another form as code_slot(packed) makes it
_PADDED_PREFIX: Final = bytes((_FIELD_PADDED,))  # built once: bytes(...) is a Python call
# Interned fields (code_fields=interned, layout 5): narrow fields, and a GS1 code's GTIN (6
# bytes) by its id in the ledger's GTIN dictionary (1 to 3 bytes: a GTIN names a product,
# of which there are tens of thousands, against billions of boxes).
# This byte + the GTIN's id (uvarint) + the serial as _put_text writes it.
_FIELD_GS1_INTERNED: Final = 0x86
# No field of any form starts with byte 0xFF (a 20-digit field's first byte is at most 0x8A):
# the Redis ledger names the pieces of long values with it (streams/ledger_overflow.lua).


def _is_code20(code: str) -> bool:
    return len(code) == 20 and code.isascii() and code.isdigit()


def code20_field_size(bucket_bits: int) -> int:
    """Bytes of the field of a 20-digit code: the bits the bucket does not hold, plus a zero
    top bit that tells it from the fields of other codes (whose first byte is 0x80 or more)."""
    return (_CODE20_BITS - bucket_bits + 8) // 8


def gs1_gtin(code: str) -> str | None:
    """The GTIN of a GS1 code that code fields keep apart from its serial
    (``(01)GTIN(21)SERIAL``, serial of at most 20 bytes), else None."""
    if len(code) <= 22 or not code.startswith("(01)") or code[18:22] != "(21)":
        return None
    gtin = code[4:18]
    if not (gtin.isascii() and gtin.isdigit()):
        return None
    # An ASCII code has as many bytes as characters: no need to encode it to count them.
    size = len(code) if code.isascii() else len(code.encode("utf-8", "surrogatepass"))
    return gtin if size - 22 <= _GS1_SERIAL_MAX else None


def code_slot(code: str, bucket_bits: int, packed_fields: bool = False) -> tuple[int, bytes]:
    """(bucket, field) of a code in ``2**bucket_bits`` hash buckets.

    A 20-digit code is a number below 2**67; multiplied by an odd constant modulo 2**67 (a
    bijection that spreads neighbouring serial numbers over all buckets), its top
    ``bucket_bits`` bits choose the bucket and the other bits are the field: 7 bytes for 4096
    to 262144 buckets. Other codes go to the bucket of their hash, under their own bytes
    (GS1 identities with the GTIN packed), or a 16-byte digest when longer than 40 bytes.
    With ``packed_fields`` (the ledger's meta records which) a code or GS1 serial ending in
    digits keeps them as a number: ``ZY01000000001234`` in 10 bytes rather than 17.
    Distinct codes always get distinct (bucket, field) pairs, digests aside, and a field
    tells its form by its first byte (:func:`code_of_slot` reads them all).
    """
    if _is_code20(code):
        mixed = (int(code) * _MIX) & _CODE20_MASK
        rest_bits = _CODE20_BITS - bucket_bits
        field = (mixed & ((1 << rest_bits) - 1)).to_bytes(code20_field_size(bucket_bits), "big")
        return mixed >> rest_bits, field
    raw = code.encode("utf-8", "surrogatepass")
    bucket = _hash_bucket(raw, bucket_bits)
    if gs1_gtin(code) is not None:
        gtin = int(code[4:18]).to_bytes(6, "big")
        if packed_fields and "0" <= code[-1] <= "9":
            out = BytesWriter()
            out.append(_FIELD_GS1_PACKED)
            out.write(gtin)
            _put_text(out, code[22:])
            return bucket, out.getvalue()
        return bucket, bytes([_FIELD_GS1]) + gtin + raw[22:]
    if len(raw) <= _FIELD_TEXT_MAX:
        if packed_fields and code and "0" <= code[-1] <= "9":
            out = BytesWriter()
            out.append(_FIELD_TEXT_PACKED)
            _put_text(out, code)
            return bucket, out.getvalue()
        return bucket, bytes([_FIELD_TEXT]) + raw
    return bucket, bytes([_FIELD_DIGEST]) + hashlib.blake2b(raw, digest_size=16).digest()


_BLAKE2B_8: Final = hashlib.blake2b(digest_size=8)
"""An empty 8-byte BLAKE2b, copied for each code hashed (see :func:`_hash_bucket`)."""


def _hash_bucket(raw: bytes, bucket_bits: int) -> int:
    """The bucket of a code that is not 20 digits: the top bits of its hash."""
    hasher = _BLAKE2B_8.copy()  # a copy: cheaper than a new hash given its size by keyword
    hasher.update(raw)
    digest = hasher.digest()
    if bucket_bits <= 32:  # always, but for ledgers of billions of buckets
        # librt's reader is native when compiled; int.from_bytes is a Python call there.
        return (int(read_i32_be(digest, 0)) & 0xFFFF_FFFF) >> (32 - bucket_bits)
    return int.from_bytes(digest, "big") >> (64 - bucket_bits)


def code_slots(codes: Iterable[str], bucket_bits: int, packed_fields: bool = False,
               ) -> tuple[list[int], list[bytes]]:
    """The buckets and the fields of many codes: ``code_slot`` of each, in order."""
    buckets: list[int] = []
    fields: list[bytes] = []
    rest_bits = _CODE20_BITS - bucket_bits
    rest_mask = (1 << rest_bits) - 1
    size = code20_field_size(bucket_bits)
    for code in codes:
        if len(code) == 20 and code.isascii() and code.isdigit():
            mixed = (int(code) * _MIX) & _CODE20_MASK
            buckets.append(mixed >> rest_bits)
            fields.append((mixed & rest_mask).to_bytes(size, "big"))
        else:
            bucket, field = code_slot(code, bucket_bits, packed_fields)
            buckets.append(bucket)
            fields.append(field)
    return buckets, fields


def packed_code_slots(codes: Iterable[str], bucket_bits: int,
                      ) -> tuple[list[int], list[bytes]]:
    """:func:`code_slots` with packed fields."""
    return code_slots(codes, bucket_bits, True)


def packed_code_slot(code: str, bucket_bits: int) -> tuple[int, bytes]:
    """:func:`code_slot` with packed fields."""
    return code_slot(code, bucket_bits, True)


def _narrow_span_of(bucket_bits: int) -> int:
    """How many mixed numbers one bucket holds: 10**19 over the buckets, rounded up."""
    return (_NARROW_SPAN + (1 << bucket_bits) - 1) >> bucket_bits


def _narrow_field_size_of(bucket_bits: int) -> int:
    return ((_narrow_span_of(bucket_bits) - 1).bit_length() + 7) // 8


_NARROW_FIELD_SIZES: Final = bytes(_narrow_field_size_of(bits) for bits in range(64))
"""The sizes worked out once: it takes arithmetic on numbers past 2**63, and every code
field of another form than a narrow one asks for it (:func:`_apart_from_narrow`)."""


def narrow_field_size(bucket_bits: int) -> int:
    """Bytes of the narrow field of a 20-digit code that starts with 8: what of its other
    19 digits the bucket does not hold (6 bytes for 2**16 to 2**23 buckets)."""
    if 0 <= bucket_bits < 64:
        return _NARROW_FIELD_SIZES[bucket_bits]
    return _narrow_field_size_of(bucket_bits)


def narrow_code_slot(code: str, bucket_bits: int) -> tuple[int, bytes]:
    """(bucket, field) of a code in narrow fields: a 20-digit code that starts with 8 in
    :func:`narrow_field_size` bytes, a byte less than :func:`code_slot` at 10 million codes;
    any other code as :func:`code_slot` with packed fields places it, behind
    ``_FIELD_PADDED`` when its field would have the narrow field's length."""
    if len(code) == 20 and code[0] == "8" and code.isascii() and code.isdigit():
        bucket, rest = divmod((int(code) - _NARROW_FIRST) * _NARROW_MIX % _NARROW_SPAN,
                              _narrow_span_of(bucket_bits))
        return bucket, rest.to_bytes(narrow_field_size(bucket_bits), "big")
    bucket, field = code_slot(code, bucket_bits, True)
    return bucket, _apart_from_narrow(field, bucket_bits)


def _apart_from_narrow(field: bytes, bucket_bits: int) -> bytes:
    """A field of another form than a 20-digit code's narrow field, behind
    ``_FIELD_PADDED`` where it has the narrow field's length (which alone tells those)."""
    if len(field) == narrow_field_size(bucket_bits):
        return _PADDED_PREFIX + field
    return field


def narrow_code_slots(codes: Iterable[str], bucket_bits: int,
                      gtin_ids: Mapping[str, int] | None = None,
                      ) -> tuple[list[int], list[bytes]]:
    """The buckets and the fields of many codes: ``narrow_code_slot`` of each, in order
    (``interned_code_slot`` with ``gtin_ids``)."""
    buckets: list[int] = []
    fields: list[bytes] = []
    span = _narrow_span_of(bucket_bits)
    size = narrow_field_size(bucket_bits)
    for code in codes:
        if len(code) == 20 and code[0] == "8" and code.isascii() and code.isdigit():
            bucket, rest = divmod((int(code) - _NARROW_FIRST) * _NARROW_MIX % _NARROW_SPAN,
                                  span)
            buckets.append(bucket)
            fields.append(rest.to_bytes(size, "big"))
        else:
            bucket, field = (narrow_code_slot(code, bucket_bits) if gtin_ids is None
                             else interned_code_slot(code, bucket_bits, gtin_ids))
            buckets.append(bucket)
            fields.append(field)
    return buckets, fields


def interned_code_slot(code: str, bucket_bits: int,
                       gtin_ids: Mapping[str, int]) -> tuple[int, bytes]:
    """(bucket, field) of a code in interned fields: :func:`narrow_code_slot`'s, but a GS1
    code's GTIN by its id in ``gtin_ids`` (which must hold it): ``(01)06912345678906(21)
    A000123456`` in 8 bytes rather than 13. The bucket is :func:`code_slot`'s."""
    gtin = gs1_gtin(code) if code[:4] == "(01)" else None
    if gtin is None:
        return narrow_code_slot(code, bucket_bits)
    out = BytesWriter()
    out.append(_FIELD_GS1_INTERNED)
    _uvarint(out, gtin_ids[gtin])
    _put_text(out, code[22:])
    return (_hash_bucket(code.encode("utf-8", "surrogatepass"), bucket_bits),
            _apart_from_narrow(out.getvalue(), bucket_bits))


def interned_code_slots(codes: Iterable[str], bucket_bits: int, gtin_ids: Mapping[str, int],
                        ) -> tuple[list[int], list[bytes]]:
    """The buckets and the fields of many codes: ``interned_code_slot`` of each, in order."""
    return narrow_code_slots(codes, bucket_bits, gtin_ids)


def code_of_slot(bucket: int, field: bytes, bucket_bits: int, narrow: bool = False,
                 gtins: Mapping[int, str] | None = None) -> str | None:
    """The code of a (bucket, field) pair, in any form of fields (``narrow`` when the
    ledger's are narrow or interned; ``gtins``, id → GTIN, to read interned GS1 fields);
    None for a long code stored under its digest."""
    if not field:
        raise CodecError("empty code field")
    if narrow:
        if len(field) == narrow_field_size(bucket_bits):
            span = _narrow_span_of(bucket_bits)
            rest = int.from_bytes(field, "big")
            mixed = bucket * span + rest
            if rest >= span or mixed >= _NARROW_SPAN:
                raise CodecError("narrow code field out of range")
            return decimal_text(mixed * _NARROW_UNMIX % _NARROW_SPAN + _NARROW_FIRST)
        if field[0] == _FIELD_PADDED:
            field = field[1:]
            if not field:
                raise CodecError("empty padded code field")
    tag = field[0]
    if tag < 0x80:
        rest_bits = _CODE20_BITS - bucket_bits
        mixed = bucket << rest_bits | int.from_bytes(field, "big")
        return decimal_text((mixed * _UNMIX) & _CODE20_MASK).zfill(20)
    if tag == _FIELD_GS1:
        gtin = decimal_text(int.from_bytes(field[1:7], "big")).zfill(14)
        return f"(01){gtin}(21)" + field[7:].decode("utf-8", "surrogatepass")
    if tag == _FIELD_TEXT:
        return field[1:].decode("utf-8", "surrogatepass")
    if tag == _FIELD_DIGEST:
        return None
    if tag == _FIELD_GS1_INTERNED:
        if gtins is None:
            raise CodecError("an interned GS1 field needs the ledger's GTIN dictionary")
        reader = _Reader(field)
        reader.pos = 1
        ident = reader.uvarint()
        text = reader.text()
        reader.end()
        if ident not in gtins:
            raise CodecError(f"GTIN id {ident} is not in the dictionary")
        return f"(01){gtins[ident]}(21){text}"
    if tag == _FIELD_GS1_PACKED or tag == _FIELD_TEXT_PACKED:
        reader = _Reader(field)
        reader.pos = 7 if tag == _FIELD_GS1_PACKED else 1
        if len(field) < reader.pos:
            raise CodecError("packed value ends early")
        text = reader.text()
        reader.end()
        if tag == _FIELD_TEXT_PACKED:
            return text
        gtin = decimal_text(int.from_bytes(field[1:7], "big")).zfill(14)
        return f"(01){gtin}(21){text}"
    raise CodecError(f"bad code field tag {tag:#x}")


def _put_code(out: BytesWriter, code: str) -> None:
    """A code in a value: 0 + 9 bytes for 20 digits, else length + 1 and UTF-8 bytes."""
    if _is_code20(code):
        out.append(0)
        out.write(int(code).to_bytes(9, "big"))
    else:
        raw = code.encode("utf-8", "surrogatepass")
        _uvarint(out, len(raw) + 1)
        out.write(raw)


def _read_code(reader: _Reader) -> str:
    header = reader.uvarint()
    if header == 0:
        return decimal_text(int.from_bytes(reader.take(9), "big")).zfill(20)
    return reader.take(header - 1).decode("utf-8", "surrogatepass")


DAY_STAMP_MAX: Final = 0xFFFF


def day_stamp(seconds: int) -> int:
    """The day of a business time, counted from :data:`EPOCH` and kept within 2 bytes."""
    return min(DAY_STAMP_MAX, max(0, (seconds - EPOCH) // 86_400))


def pack_codes(codes: Sequence[str], day: int | None = None) -> bytes:
    """The codes a sale listed (the sale index, for 3507 deletes), and the day the index
    last wrote them (:func:`day_stamp`, 2 bytes big-endian after the codes, for the retention
    sweep) when given."""
    out = BytesWriter()
    _uvarint(out, len(codes))
    for code in codes:
        _put_code(out, code)
    if day is not None:
        out.write(day.to_bytes(2, "big"))
    return out.getvalue()


def _read_codes(data: bytes) -> tuple[tuple[str, ...], int | None]:
    reader = _Reader(data)
    codes = tuple(_read_code(reader) for _ in range(reader.uvarint()))
    day = None
    if len(data) - reader.pos == 2:
        day = int.from_bytes(reader.take(2), "big")
    reader.end()
    return codes, day


def unpack_codes(data: bytes) -> tuple[str, ...]:
    """The codes of :func:`pack_codes` (with or without a day)."""
    return _read_codes(data)[0]


def codes_day(data: bytes) -> int | None:
    """The day stamp of :func:`pack_codes`, or None when it was packed without one."""
    return _read_codes(data)[1]


# --------------------------------------------------------------------------- hoarding link


def pack_link(link: HoardingLink) -> bytes:
    """A person's latest HOARDING alert (rare: plain length-prefixed texts)."""
    out = BytesWriter()
    for text in (link.alert_id, link.trigger_msgid, link.fixmedins_code, link.event_time):
        _put_str(out, text)
    return out.getvalue()


def unpack_link(data: bytes) -> HoardingLink:
    """The inverse of :func:`pack_link`."""
    reader = _Reader(data)
    link = HoardingLink(reader.string(), reader.string(), reader.string(), reader.string())
    reader.end()
    return link
