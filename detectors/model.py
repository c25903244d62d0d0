"""The one home of tracewatch's domain types: configuration, parsed messages, per-code events,
ledger state and alerts. Standard library only; everything is frozen.

Times are whole seconds of China time (UTC+8) counted as if it were UTC, so that calendar
arithmetic on them gives back the same wall-clock strings the platform uploads.

The types made once per message, code, sale or alert (``Message``, ``CodeEvent``,
``SaleRecord``, ``CodeState``, ``PersonEvent``, ``Evidence``, ``Alert``, and a few beside the
detectors that use them) spell out their
``__init__`` and mark their fields ``Final`` instead of ``@dataclass(frozen=True)``: compiled by
mypyc, such a class is built by native code in ~50 ns, where a frozen dataclass's generated
``__init__`` (or a NamedTuple's ``__new__``) is interpreted Python and costs ~1 µs — a fifth of
``check``'s time. ``@dataclass(init=False, unsafe_hash=True)`` still gives them ``==``, a hash,
a ``repr`` and :func:`dataclasses.replace`; ``Final`` keeps them read-only (mypy checks it, and
compiled attributes refuse assignment).
"""

from __future__ import annotations

import enum
import hashlib
import math
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

Severity = str  # "low" | "medium" | "high" | "critical"

DAY_SECONDS: Final = 86_400


class Rule(enum.StrEnum):
    """Rule identifiers of SPEC §4, as they appear in alerts."""

    DUPLICATE_SALE = "DUPLICATE_SALE"
    SPLIT_OVERDISPENSE = "SPLIT_OVERDISPENSE"
    SUBSTITUTION = "SUBSTITUTION"
    FLOWBACK = "FLOWBACK"
    RETURN_WITHOUT_SALE = "RETURN_WITHOUT_SALE"
    EXPIRED_SALE = "EXPIRED_SALE"
    HOARDING = "HOARDING"
    INVALID_CODE = "INVALID_CODE"
    BARCODE_AS_TRACE_CODE = "BARCODE_AS_TRACE_CODE"


class Kind(enum.StrEnum):
    """What a message does to one code in the ledger."""

    SALE = "sale"
    RETURN = "return"
    STOCK = "stock"
    DELETE = "delete"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One catalog row (SPEC §3): a product key and the drug it must be billed as."""

    product_key: str
    med_list_codg: str
    drug_name: str
    pack_units: int


@dataclass(frozen=True, slots=True)
class HoardingThresholds:
    """When one person's purchases of one drug count as hoarding (SPEC §4 HOARDING)."""

    min_boxes: int = 10
    min_institutions: int = 3
    window_days: int = 30


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Everything the rules read besides the ledger and the message.

    ``catalog`` maps a product key to its entry. ``stock_in_change_types`` are the 3502
    ``inv_chg_type`` values that bring codes into stock. ``retention_days`` is how long a
    code is remembered after its last event; older state is treated as absent.
    """

    catalog: Mapping[str, CatalogEntry] = field(default_factory=dict)
    stock_in_change_types: frozenset[str] = frozenset({"101"})
    cross_city_hours: int = 24
    retention_days: int = 3 * 365
    fingerprints_kept: int = 16
    hoarding: HoardingThresholds = HoardingThresholds()
    hoarding_overrides: Mapping[str, HoardingThresholds] = field(default_factory=dict)

    def hoarding_for(self, med_list_codg: str) -> HoardingThresholds:
        """The hoarding thresholds for one drug: its override, else the default."""
        return self.hoarding_overrides.get(med_list_codg, self.hoarding)


# --------------------------------------------------------------------------- input


@dataclass(init=False, unsafe_hash=True)
class Message:
    """One validated NHSA message, reduced to what the rules need.

    ``raw_codes`` are the ``drug_trac_codg`` strings as uploaded; ``psn_hash`` is already the
    keyed hash, the raw ``psn_no`` never gets this far. ``time`` is the business time.
    """

    infno: Final[str]
    msgid: Final[str]
    fixmedins_code: Final[str]
    mdtrtarea_admvs: Final[str]
    time: Final[int]
    bchno: Final[str]
    raw_codes: Final[tuple[str, ...]]
    med_list_codg: Final[str | None]
    psn_hash: Final[str | None]
    split: Final[bool]
    quantity: Final[float]
    price: Final[float]
    expy_end: Final[str | None]
    returned_bchno: Final[str | None]
    inv_chg_type: Final[str | None]
    delete_type: Final[str | None]

    def __init__(
        self, infno: str, msgid: str, fixmedins_code: str, mdtrtarea_admvs: str, time: int,
        bchno: str, raw_codes: tuple[str, ...] = (), med_list_codg: str | None = None,
        psn_hash: str | None = None, split: bool = False, quantity: float = 0.0,
        price: float = 0.0, expy_end: str | None = None, returned_bchno: str | None = None,
        inv_chg_type: str | None = None, delete_type: str | None = None,
    ) -> None:
        self.infno = infno
        self.msgid = msgid
        self.fixmedins_code = fixmedins_code
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.time = time
        self.bchno = bchno
        self.raw_codes = raw_codes
        self.med_list_codg = med_list_codg
        self.psn_hash = psn_hash
        self.split = split
        self.quantity = quantity
        self.price = price
        self.expy_end = expy_end
        self.returned_bchno = returned_bchno
        self.inv_chg_type = inv_chg_type
        self.delete_type = delete_type


@dataclass(init=False, unsafe_hash=True)
class CodeEvent:
    """What one message does to one code: the unit of work of the per-code ledger.

    For a split (拆零) sale or return listing several codes, ``units`` are the units still to
    be drawn and ``draw_rest`` the codes after this one, in message order; each code takes up
    to what it has left and passes the rest on (SPEC §4 SPLIT_OVERDISPENSE).
    """

    code: Final[str]
    kind: Final[Kind]
    infno: Final[str]
    msgid: Final[str]
    fixmedins_code: Final[str]
    mdtrtarea_admvs: Final[str]
    bchno: Final[str]
    time: Final[int]
    med_list_codg: Final[str | None]
    psn_hash: Final[str | None]
    split: Final[bool]
    units: Final[float]
    amount: Final[float]
    returned_bchno: Final[str | None]
    draw_rest: Final[tuple[str, ...]]
    seq: Final[int]

    def __init__(
        self, code: str, kind: Kind, infno: str, msgid: str, fixmedins_code: str,
        mdtrtarea_admvs: str, bchno: str, time: int, med_list_codg: str | None = None,
        psn_hash: str | None = None, split: bool = False, units: float = 1.0, amount: float = 0.0,
        returned_bchno: str | None = None, draw_rest: tuple[str, ...] = (), seq: int = 0,
    ) -> None:
        self.code = code
        self.kind = kind
        self.infno = infno
        self.msgid = msgid
        self.fixmedins_code = fixmedins_code
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.bchno = bchno
        self.time = time
        self.med_list_codg = med_list_codg
        self.psn_hash = psn_hash
        self.split = split
        self.units = units
        self.amount = amount
        self.returned_bchno = returned_bchno
        self.draw_rest = draw_rest
        self.seq = seq


# --------------------------------------------------------------------------- ledger state


@dataclass(init=False, unsafe_hash=True)
class SaleRecord:
    """A sale of one code that still stands: not returned, not deleted."""

    fixmedins_code: Final[str]
    mdtrtarea_admvs: Final[str]
    bchno: Final[str]
    msgid: Final[str]
    time: Final[int]
    psn_hash: Final[str | None]
    med_list_codg: Final[str | None]
    split: Final[bool]
    units: Final[float]
    amount: Final[float]

    def __init__(
        self, fixmedins_code: str, mdtrtarea_admvs: str, bchno: str, msgid: str, time: int,
        psn_hash: str | None, med_list_codg: str | None, split: bool, units: float, amount: float,
    ) -> None:
        self.fixmedins_code = fixmedins_code
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.bchno = bchno
        self.msgid = msgid
        self.time = time
        self.psn_hash = psn_hash
        self.med_list_codg = med_list_codg
        self.split = split
        self.units = units
        self.amount = amount

    def with_units(self, units: float) -> SaleRecord:
        """This sale with another number of units (a split return gave some back)."""
        return SaleRecord(self.fixmedins_code, self.mdtrtarea_admvs, self.bchno, self.msgid,
                          self.time, self.psn_hash, self.med_list_codg, self.split, units,
                          self.amount)


@dataclass(init=False, unsafe_hash=True)
class CodeState:
    """All the ledger remembers about one code.

    ``sales`` are the standing sales, oldest first. ``first_drug`` is the drug the code was
    first billed as, and ``first_drug_ref`` the fingerprint of the sale record that set it, so
    a delete of that record can forget it. ``applied`` holds short fingerprints of the messages
    and records already applied (idempotency), newest last. ``flowback_seen`` remembers which
    (standing sale, institution) pairs already raised FLOWBACK, so a box counted in stock every
    day raises one alert, not one a day. ``last_time`` drives retention.
    """

    sales: Final[tuple[SaleRecord, ...]]
    first_drug: Final[str | None]
    first_drug_ref: Final[str | None]
    applied: Final[tuple[str, ...]]
    flowback_seen: Final[tuple[str, ...]]
    last_time: Final[int]

    def __init__(
        self, sales: tuple[SaleRecord, ...] = (), first_drug: str | None = None,
        first_drug_ref: str | None = None, applied: tuple[str, ...] = (),
        flowback_seen: tuple[str, ...] = (), last_time: int = 0,
    ) -> None:
        self.sales = sales
        self.first_drug = first_drug
        self.first_drug_ref = first_drug_ref
        self.applied = applied
        self.flowback_seen = flowback_seen
        self.last_time = last_time

    def with_sales(self, sales: tuple[SaleRecord, ...]) -> CodeState:
        """This state with other standing sales."""
        return CodeState(sales, self.first_drug, self.first_drug_ref, self.applied,
                         self.flowback_seen, self.last_time)

    @property
    def split_units(self) -> float:
        """Smallest units dispensed from this box by standing split sales."""
        return sum(sale.units for sale in self.sales if sale.split)


@dataclass(init=False, unsafe_hash=True)
class PersonEvent:
    """A whole-box purchase starting (+1) or ceasing (-1) to stand, for the person rules."""

    psn_hash: Final[str]
    med_list_codg: Final[str]
    code: Final[str]
    delta: Final[int]
    fixmedins_code: Final[str]
    mdtrtarea_admvs: Final[str]
    bchno: Final[str]
    msgid: Final[str]
    time: Final[int]
    amount: Final[float]
    trigger_msgid: Final[str]
    seq: Final[int]

    def __init__(
        self, psn_hash: str, med_list_codg: str, code: str, delta: int, fixmedins_code: str,
        mdtrtarea_admvs: str, bchno: str, msgid: str, time: int, amount: float,
        trigger_msgid: str, seq: int = 0,
    ) -> None:
        self.psn_hash = psn_hash
        self.med_list_codg = med_list_codg
        self.code = code
        self.delta = delta
        self.fixmedins_code = fixmedins_code
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.bchno = bchno
        self.msgid = msgid
        self.time = time
        self.amount = amount
        self.trigger_msgid = trigger_msgid
        self.seq = seq


# --------------------------------------------------------------------------- output


@dataclass(init=False, unsafe_hash=True)
class Evidence:
    """One earlier record that makes the case (SPEC §6 ``evidence``)."""

    msgid: Final[str]
    infno: Final[str]
    fixmedins_code: Final[str]
    fixmedins_bchno: Final[str]
    event_time: Final[str]
    mdtrtarea_admvs: Final[str | None]
    psn_hash: Final[str | None]
    amount: Final[float | None]
    drug_trac_codg: Final[str | None]
    note: Final[str | None]

    def __init__(
        self, msgid: str, infno: str, fixmedins_code: str, fixmedins_bchno: str,
        event_time: str, mdtrtarea_admvs: str | None = None, psn_hash: str | None = None,
        amount: float | None = None, drug_trac_codg: str | None = None,
        note: str | None = None,
    ) -> None:
        self.msgid = msgid
        self.infno = infno
        self.fixmedins_code = fixmedins_code
        self.fixmedins_bchno = fixmedins_bchno
        self.event_time = event_time
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.psn_hash = psn_hash
        self.amount = amount
        self.drug_trac_codg = drug_trac_codg
        self.note = note

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping, leaving out fields that are not known."""
        out: dict[str, object] = {
            "msgid": self.msgid,
            "infno": self.infno,
            "fixmedins_code": self.fixmedins_code,
            "fixmedins_bchno": self.fixmedins_bchno,
            "event_time": self.event_time,
        }
        for name in ("mdtrtarea_admvs", "psn_hash", "amount", "drug_trac_codg", "note"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(init=False, unsafe_hash=True)
class Alert:
    """One alert (SPEC §6) as the rules raise it; ``detected_at`` is added on the way out."""

    rule: Final[Rule]
    severity: Final[Severity]
    drug_trac_codg: Final[str | None]
    psn_hash: Final[str | None]
    med_list_codg: Final[str | None]
    fixmedins_code: Final[str]
    mdtrtarea_admvs: Final[str]
    trigger_msgid: Final[str]
    event_time: Final[str]
    evidence: Final[tuple[Evidence, ...]]
    amount: Final[float]
    reason: Final[str]
    subject: Final[str]
    seq: Final[int]

    def __init__(
        self, rule: Rule, severity: Severity, drug_trac_codg: str | None,
        psn_hash: str | None, med_list_codg: str | None, fixmedins_code: str,
        mdtrtarea_admvs: str, trigger_msgid: str, event_time: str,
        evidence: tuple[Evidence, ...], amount: float, reason: str, subject: str = "",
        seq: int = 0,
    ) -> None:
        self.rule = rule
        self.severity = severity
        self.drug_trac_codg = drug_trac_codg
        self.psn_hash = psn_hash
        self.med_list_codg = med_list_codg
        self.fixmedins_code = fixmedins_code
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.trigger_msgid = trigger_msgid
        self.event_time = event_time
        self.evidence = evidence
        self.amount = amount
        self.reason = reason
        self.subject = subject
        self.seq = seq

    @property
    def alert_id(self) -> str:
        """Deterministic: the same rule, subject and triggering message give the same id."""
        subject = self.subject or self.drug_trac_codg or ""
        digest = hashlib.blake2b(
            f"{self.rule}\x1f{subject}\x1f{self.trigger_msgid}".encode(), digest_size=12
        )
        return digest.hexdigest()

    def to_dict(self, detected_at: str) -> dict[str, object]:
        """The alert as the JSON object of SPEC §6."""
        return {
            "alert_id": self.alert_id,
            "rule": str(self.rule),
            "severity": self.severity,
            "drug_trac_codg": self.drug_trac_codg,
            "psn_hash": self.psn_hash,
            "med_list_codg": self.med_list_codg,
            "fixmedins_code": self.fixmedins_code,
            "mdtrtarea_admvs": self.mdtrtarea_admvs,
            "trigger_msgid": self.trigger_msgid,
            "event_time": self.event_time,
            "evidence": [item.to_dict() for item in self.evidence],
            "amount": round(self.amount, 2),
            "reason": self.reason,
            "detected_at": detected_at,
        }


# --------------------------------------------------------------------------- helpers


def decimal_text(number: object) -> str:
    """``str(number)`` for an ``int`` of any size, in compiled code too.

    mypyc keeps an ``int`` below 2**62 unboxed and boxes a larger one; its ``str()`` of a
    boxed ``int`` (``CPyTagged_Str``, mypyc 2.4) takes a new reference to the box and never
    gives it back, so each call leaked an object: a 20-digit code read back from the ledger,
    a long digit run of a record number. Taking ``object`` makes the call box the value with
    its reference counted and ``str`` the plain Python one.
    """
    return str(number)


def format_time(seconds: int) -> str:
    """Business time back to the platform's ``YYYY-MM-DD HH:MM:SS``: what
    ``time.strftime`` of ``time.gmtime`` gives, its day cached (every alert and evidence
    record formats one; compiled, ``strftime`` and ``gmtime`` are Python calls)."""
    of_day = seconds % DAY_SECONDS
    minutes = of_day // 60
    return (f"{format_day(seconds)} {_TWO_DIGITS[minutes // 60]}:{_TWO_DIGITS[minutes % 60]}"
            f":{_TWO_DIGITS[of_day % 60]}")


_TWO_DIGITS: Final = [f"{number:02d}" for number in range(60)]
_DAY_TEXTS: Final[dict[int, str]] = {}


def format_day(seconds: int) -> str:
    """The ``YYYY-MM-DD`` of a business time: ``format_time(seconds)[:10]``, cached by day."""
    day = seconds // DAY_SECONDS
    text = _DAY_TEXTS.get(day)
    if text is None:
        text = _time.strftime("%Y-%m-%d", _time.gmtime(day * DAY_SECONDS))
        if len(_DAY_TEXTS) >= 4096:
            _DAY_TEXTS.clear()
        _DAY_TEXTS[day] = text
    return text


def same_float(first: float, second: float) -> bool:
    """Equal and of the same sign: -0.0 == 0.0, but they pack differently. NaN is never the
    same (its value is packed again)."""
    return first == second and math.copysign(1.0, first) == math.copysign(1.0, second)


def fingerprint(*parts: str) -> str:
    """A 48-bit fingerprint of a record identity, for the bounded idempotency list."""
    return fingerprint_text("\x1f".join(parts))


def fingerprint_text(joined: str) -> str:
    """:func:`fingerprint` of parts already joined by the unit separator (U+001F)."""
    hasher = _BLAKE2B_6.copy()  # cheaper than a new hash given its size by keyword
    hasher.update(joined.encode())
    text: str = hasher.hexdigest()
    return text


_BLAKE2B_6: Final = hashlib.blake2b(digest_size=6)
"""An empty 6-byte BLAKE2b, copied for each fingerprint."""


def city_of(admvs: str) -> str:
    """The city part (first four digits) of a 6-digit region code."""
    return admvs[:4]
