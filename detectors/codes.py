"""Trace-code normalisation (SPEC §2).

A code read off a box comes in one of three families. This module turns the raw string a
pharmacy uploaded into one canonical identity, so that the same box written two ways is one
ledger entry, and classifies what cannot be a trace code at all:

* 码上放心 20-digit codes: identity is the 20 digits, product key the first 7.
* GS1 element strings, with parentheses ``(01)GTIN(21)SERIAL…`` or raw ``01GTIN…21SERIAL<GS>…``:
  identity is ``(01)GTIN(21)SERIAL`` (other AIs such as expiry and lot are dropped), product key
  the 14-digit GTIN, whose check digit must be right.
* Enterprise codes: any other string of letters and digits, 8 to 100 long; no product key.

A bare 13-digit number starting ``69`` or a bare 14-digit GTIN is a product barcode scanned in
place of a trace code; anything else (empty, bad characters, wrong length, bad GS1 check digit,
GS1 without a serial) is invalid. Neither ever enters the ledger.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

GS: Final = "\x1d"
MIN_LEN: Final = 8
MAX_LEN: Final = 100

# Fixed-length GS1 application identifiers that may appear between (01) and (21) in a raw
# element string (GS1 General Specifications, figure 5.10.2-1 "predefined length" table).
_FIXED_AI_LENGTHS: Final[dict[str, int]] = {
    "00": 18, "01": 14, "02": 14, "11": 6, "12": 6, "13": 6, "15": 6, "16": 6, "17": 6,
    "20": 2,
}


class CodeKind(enum.Enum):
    """What a raw uploaded string turned out to be."""

    CODE20 = "code20"
    GS1 = "gs1"
    ENTERPRISE = "enterprise"
    BARCODE = "barcode"
    INVALID = "invalid"


@dataclass(init=False, unsafe_hash=True)
class NormalisedCode:
    """The outcome of normalising one raw code.

    ``code`` is the canonical identity for ledger codes, and the stripped raw string for
    barcodes and invalid codes (so an alert can show what was scanned). ``problem`` says in
    Chinese what is wrong with an invalid code. ``trackable`` is true when the code
    identifies one box and belongs in the ledger.
    """

    kind: Final[CodeKind]
    code: Final[str]
    product_key: Final[str | None]
    problem: Final[str | None]
    trackable: Final[bool]

    def __init__(
        self, kind: CodeKind, code: str, product_key: str | None = None,
        problem: str | None = None, trackable: bool = False,
    ) -> None:
        self.kind = kind
        self.code = code
        self.product_key = product_key
        self.problem = problem
        self.trackable = trackable


@functools.lru_cache(maxsize=4096)
def gs1_check_digit_ok(digits: str) -> bool:
    """True when the last digit of a GS1 key (GTIN-8/12/13/14) is its mod-10 check digit.

    Cached: a GTIN names a product, and the boxes of one product share it.
    """
    if not digits.isascii() or not digits.isdigit() or len(digits) < 2:
        return False
    body = digits[:-1]
    total = 0
    for position, char in enumerate(reversed(body)):
        total += int(char) * (3 if position % 2 == 0 else 1)
    return (10 - total % 10) % 10 == int(digits[-1])


def product_key_of(code: str) -> str | None:
    """The catalog product key of a canonical code (7 digits, a GTIN, or None)."""
    if len(code) == 20 and code.isascii() and code.isdigit():
        return code[:7]
    if code.startswith("(01)") and code[18:22] == "(21)":
        return code[4:18]
    return None


def _invalid(raw: str, problem: str) -> NormalisedCode:
    return NormalisedCode(CodeKind.INVALID, raw, None, problem)


def _box(kind: CodeKind, code: str, product_key: str | None) -> NormalisedCode:
    return NormalisedCode(kind, code, product_key, None, True)


def _gs1(gtin: str, serial: str, raw: str) -> NormalisedCode:
    if not gs1_check_digit_ok(gtin):
        return _invalid(raw, f"GS1 码的 GTIN {gtin} 校验位错误")
    if not serial:
        return _invalid(raw, "GS1 码缺少序列号 (21)")
    if not serial.isascii() or not serial.isprintable():
        return _invalid(raw, "GS1 码序列号含非法字符")
    return _box(CodeKind.GS1, f"(01){gtin}(21){serial}", gtin)


def _parse_bracketed(raw: str) -> dict[str, str] | None:
    """Split ``(01)…(21)…`` into AI → value; None when the string is not of that shape."""
    fields: dict[str, str] = {}
    rest = raw
    while rest:
        if not rest.startswith("("):
            return None
        close = rest.find(")")
        if close < 3:
            return None
        ai = rest[1:close]
        if not ai.isdigit():
            return None
        nxt = rest.find("(", close)
        value = rest[close + 1 :] if nxt < 0 else rest[close + 1 : nxt]
        fields[ai] = value.strip(GS)
        rest = "" if nxt < 0 else rest[nxt:]
    return fields


def _parse_raw_gs1(raw: str) -> dict[str, str] | None:
    """Split a raw element string ``01GTIN…21SERIAL`` into AI → value.

    Fixed-length AIs are read by their length; variable-length ones run to the GS separator
    or to the end. Unknown two-digit AIs end the walk, which is fine because only 01 and 21
    matter for identity.
    """
    fields: dict[str, str] = {}
    position = 0
    while position < len(raw):
        ai = raw[position : position + 2]
        position += 2
        length = _FIXED_AI_LENGTHS.get(ai)
        if length is not None:
            fields[ai] = raw[position : position + length]
            position += length
            if position < len(raw) and raw[position] == GS:
                position += 1
            continue
        if ai.isdigit():
            end = raw.find(GS, position)
            end = len(raw) if end < 0 else end
            fields[ai] = raw[position:end]
            position = end + 1
            continue
        return None
    return fields


def normalise(raw: str) -> NormalisedCode:
    """Classify and canonicalise one raw ``drug_trac_codg`` (SPEC §2).

    Not cached: compiled, a GS1 code normalises in ~1.8 µs, while a miss of an LRU cache
    large enough for a province's boxes cost ~4 µs, and counts and stock-ins repeat too few
    raw strings within its reach (37 % hits on a million messages; BENCHMARKS.md).
    """
    text = raw.strip()
    if not text:
        return _invalid(text, "追溯码为空")
    if text.startswith("(01)") or text.startswith("]d2(01)"):
        fields = _parse_bracketed(text.removeprefix("]d2"))
        if fields is None or len(fields.get("01", "")) != 14:
            return _invalid(text, "GS1 码格式错误")
        return _gs1(fields["01"], fields.get("21", ""), text)
    if text.isascii() and text.isdigit():
        if len(text) == 20:
            return _box(CodeKind.CODE20, text, text[:7])
        if len(text) == 13 and text.startswith("69"):
            return NormalisedCode(CodeKind.BARCODE, text)
        if len(text) == 14:
            return NormalisedCode(CodeKind.BARCODE, text)
    if text.startswith("01") and len(text) > 16 and text[2:16].isdigit() and "21" in text[16:]:
        fields = _parse_raw_gs1(text)
        if fields is not None and "21" in fields:
            return _gs1(fields["01"], fields["21"], text)
    if GS in text:
        return _invalid(text, "含分隔符但不是有效的 GS1 码")
    if not (text.isascii() and text.isalnum()):
        return _invalid(text, "追溯码含非法字符")
    if len(text) < MIN_LEN:
        return _invalid(text, f"追溯码长度 {len(text)} 不足 {MIN_LEN} 位")
    if len(text) > MAX_LEN:
        return _invalid(text, f"追溯码长度 {len(text)} 超过 {MAX_LEN} 位")
    return _box(CodeKind.ENTERPRISE, text, None)


def _canonical_gs1(raw: str) -> bool:
    """Whether ``raw`` is ``(01)GTIN(21)SERIAL`` as :func:`normalise` writes a GS1 code, so
    that it normalises to itself: a valid GTIN-14, and a serial of ASCII letters and digits
    (nothing to strip, no other bracketed element). A third of the cost of ``normalise``."""
    return (len(raw) > 22 and raw[:4] == "(01)" and raw[18:22] == "(21)" and raw.isascii()
            and raw[4:18].isdigit() and raw[22:].isalnum() and gs1_check_digit_ok(raw[4:18]))


def box_codes(raws: Sequence[str]) -> tuple[list[str], int]:
    """The identities of the raw codes that name a box, in order, and how many do not.

    The same as keeping ``normalise(raw).code`` of the trackable ones. A bare 20-digit
    码上放心 code — two thirds of what pharmacies upload — is its own identity and is taken
    as it is, without a call; so is a GS1 code already in its canonical form (see
    :func:`_canonical_gs1`).
    """
    codes: list[str] = []
    rejected = 0
    for raw in raws:
        if len(raw) == 20 and raw.isascii() and raw.isdigit():
            codes.append(raw)
            continue
        if _canonical_gs1(raw):
            codes.append(raw)
            continue
        code = normalise(raw)
        if code.trackable:
            codes.append(code.code)
        else:
            rejected += 1
    return codes, rejected
