"""Validation of NHSA interface messages (SPEC §1 and §5).

``parse`` takes one decoded JSON value and returns a :class:`~detectors.model.Message`, or
raises :class:`BadInput` whose ``reason`` names the field that is wrong. The raw ``psn_no`` is
replaced here by its keyed hash, so it never travels further.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import hashlib
from typing import Any, Final

from detectors.model import Message

SALE: Final = "3505"
RETURN: Final = "3506"
COUNT: Final = "3501"
CHANGE: Final = "3502"
DELETE: Final = "3507"
PURCHASES: Final = frozenset({"3503", "3504"})
KNOWN_INFNOS: Final = frozenset({SALE, RETURN, COUNT, CHANGE, DELETE}) | PURCHASES


class BadInput(ValueError):
    """A message that cannot be processed; ``reason`` goes into the DLQ header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_DAY_STARTS: Final[dict[str, int]] = {}


def _day_start(day: str) -> int:
    """Seconds at the start of a ``YYYY-MM-DD`` day; ValueError if it is not a real date.

    Cached in a dict (two times a message ask it): compiled, a call through
    ``functools.lru_cache`` is a Python call."""
    start = _DAY_STARTS.get(day)
    if start is None:
        start = calendar.timegm(datetime.date.fromisoformat(day).timetuple())
        if len(_DAY_STARTS) >= 4096:
            _DAY_STARTS.clear()
        _DAY_STARTS[day] = start
    return start


def parse_time(text: object, field: str) -> int:
    """``YYYY-MM-DD HH:MM:SS`` (or a bare date) to business seconds; BadInput if malformed."""
    if not isinstance(text, str):
        raise BadInput(f"{field} is missing or not a string")
    try:
        if len(text) == 10 and text[4] == "-" and text[7] == "-":
            return _day_start(text)
        if len(text) == 19 and text[4] == "-" and text[7] == "-" and text[10] == " " \
                and text[13] == ":" and text[16] == ":":
            hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
            if hour < 24 and minute < 60 and second < 61:
                return _day_start(text[:10]) + hour * 3600 + minute * 60 + second
    except ValueError:
        pass
    raise BadInput(f"{field} is not a time of the form YYYY-MM-DD HH:MM:SS: {text!r}")


_SHA256_BLOCK: Final = 64


@functools.lru_cache(maxsize=1 << 16)
def hash_person(psn_no: str, key: bytes) -> str:
    """Keyed hash of an insured person's number: 16 hex digits, stable for one key.

    HMAC-SHA256 (RFC 2104). Cached: the same people buy again and again.
    """
    inner, outer = _hmac_pads(key)
    digest = inner.copy()
    digest.update(psn_no.encode())
    result = outer.copy()
    result.update(digest.digest())
    text: str = result.hexdigest()
    return text[:16]


@functools.lru_cache(maxsize=8)
def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states that have absorbed HMAC's inner and outer key pads.

    Copying them per person is twice as fast as ``hmac.new``, which derives the pads anew.
    """
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
    return inner, outer


def _text(obj: dict[str, Any], name: str, where: str, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise BadInput(f"missing field {where}.{name}")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise BadInput(f"{where}.{name} is not a string")


def _number(obj: dict[str, Any], name: str, where: str, required: bool = True) -> float:
    value = obj.get(name)
    if value is None and not required:
        return 0.0
    if isinstance(value, bool) or value is None:
        raise BadInput(f"{where}.{name} is missing or not a number")
    # Two checks, not isinstance(value, int | float): compiled, these are C type tests,
    # while ``int | float`` builds a union object on every call.
    if isinstance(value, float) or isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise BadInput(f"{where}.{name} is not a number: {value!r}")


def _codes(obj: dict[str, Any], where: str) -> tuple[str, ...]:
    items = obj.get("drugtracinfo")
    if items is None:
        return ()
    if not isinstance(items, list):
        raise BadInput(f"{where}.drugtracinfo is not a list")
    try:
        codes = [item["drug_trac_codg"] for item in items]
    except (TypeError, KeyError):
        pass
    else:
        if all(type(code) is str for code in codes):
            return tuple(codes)
    # Something is wrong: walk the list again to say what.
    codes = []
    for item in items:
        if not isinstance(item, dict):
            raise BadInput(f"{where}.drugtracinfo has an entry that is not an object")
        code = item.get("drug_trac_codg")
        if not isinstance(code, str):
            raise BadInput(f"{where}.drugtracinfo entry lacks a string drug_trac_codg")
        codes.append(code)
    return tuple(codes)


def _section(payload: dict[str, Any], name: str) -> dict[str, Any]:
    section = payload.get(name)
    if not isinstance(section, dict):
        raise BadInput(f"input.{name} is missing or not an object")
    return section


def parse(obj: object, psn_key: bytes) -> Message:
    """Validate one decoded message and reduce it to a :class:`Message`."""
    if not isinstance(obj, dict):
        raise BadInput("message is not a JSON object")
    for name in ("infno", "msgid", "fixmedins_code"):
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            raise BadInput(f"missing field {name}")
    infno: str = obj["infno"]
    if infno not in KNOWN_INFNOS:
        raise BadInput(f"unknown infno {infno!r}")
    msgid: str = obj["msgid"]
    institution: str = obj["fixmedins_code"]
    admvs = obj.get("mdtrtarea_admvs") or ""
    if not isinstance(admvs, str):
        raise BadInput("mdtrtarea_admvs is not a string")
    payload = obj.get("input")
    if not isinstance(payload, dict):
        raise BadInput("input is missing or not an object")
    inf_time = obj.get("inf_time")

    if infno in PURCHASES:
        time = parse_time(inf_time, "inf_time") if inf_time is not None else 0
        return Message(infno, msgid, institution, admvs, time, "")

    if infno in (SALE, RETURN):
        sel = _section(payload, "selinfo")
        where = "input.selinfo"
        bchno = _text(sel, "fixmedins_bchno", where) or ""
        flag = _text(sel, "trdn_flag", where, required=False) or "0"
        if flag not in ("0", "1"):
            raise BadInput(f"{where}.trdn_flag must be \"0\" or \"1\", not {flag!r}")
        expy_end = _text(sel, "expy_end", where, required=False) or None
        if expy_end is not None:
            parse_time(expy_end, f"{where}.expy_end")
        psn_no = _text(sel, "psn_no", where, required=False)
        return Message(
            infno=infno,
            msgid=msgid,
            fixmedins_code=institution,
            mdtrtarea_admvs=admvs,
            time=parse_time(sel.get("sel_retn_time"), f"{where}.sel_retn_time"),
            bchno=bchno,
            raw_codes=_codes(sel, where),
            med_list_codg=_text(sel, "med_list_codg", where),
            psn_hash=hash_person(psn_no, psn_key) if psn_no else None,
            split=flag == "1",
            quantity=_number(sel, "sel_retn_cnt", where),
            price=_number(sel, "finl_trns_pric", where, required=False),
            expy_end=expy_end,
            returned_bchno=_text(sel, "medins_prod_sel_no", where, required=False),
        )

    if infno in (COUNT, CHANGE):
        inv = _section(payload, "invinfo")
        where = "input.invinfo"
        change_type = None
        if infno == CHANGE:
            change_type = _text(inv, "inv_chg_type", where)
            chg_time = inv.get("inv_chg_time")
            time = parse_time(chg_time if chg_time else inf_time, f"{where}.inv_chg_time")
        else:
            time = parse_time(inf_time, "inf_time")
        return Message(
            infno=infno,
            msgid=msgid,
            fixmedins_code=institution,
            mdtrtarea_admvs=admvs,
            time=time,
            bchno=_text(inv, "fixmedins_bchno", where, required=False) or "",
            raw_codes=_codes(inv, where),
            med_list_codg=_text(inv, "med_list_codg", where, required=False),
            inv_chg_type=change_type,
        )

    data = _section(payload, "data")
    where = "input.data"
    return Message(
        infno=infno,
        msgid=msgid,
        fixmedins_code=institution,
        mdtrtarea_admvs=admvs,
        time=parse_time(inf_time, "inf_time"),
        bchno=_text(data, "fixmedins_bchno", where) or "",
        delete_type=_text(data, "inv_data_type", where),
    )
