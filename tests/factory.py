"""Builders of NHSA messages for rule tables: short calls, every field of SPEC §1."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from detectors.messages import parse
from detectors.model import Alert, CatalogEntry, RuleConfig
from streams.ledger import MemoryLedger
from streams.pipeline import Pipeline

PSN_KEY = b"test-key"
METFORMIN = "XA10BAE054A001010101445"
AMOXICILLIN = "XJ01CAA040A001010100001"
EXPENSIVE = "XL01XEA001A001010100001"
CATALOG = {
    "8385793": CatalogEntry("8385793", METFORMIN, "二甲双胍片", 48),
    "8600001": CatalogEntry("8600001", AMOXICILLIN, "阿莫西林胶囊", 24),
    "06901234567892": CatalogEntry("06901234567892", EXPENSIVE, "进口靶向药", 30),
}
CONFIG = RuleConfig(catalog=CATALOG)

CHENGDU = ("P51010400011", "510104")
CHENGDU_2 = ("P51010700022", "510107")
CHENGDU_HOSPITAL = ("H51010700002", "510107")
CHONGQING = ("P50010300077", "500103")

_ids = itertools.count(1)


def code(n: int, product: str = "8385793") -> str:
    """A 20-digit 码上放心 code of ``product`` with serial ``n``."""
    return f"{product}{n:013d}"


def _envelope(infno: str, at: tuple[str, str], when: str, msgid: str | None,
              body: dict[str, Any]) -> dict[str, Any]:
    return {
        "infno": infno,
        "msgid": msgid or f"M{next(_ids):06d}",
        "fixmedins_code": at[0],
        "fixmedins_name": "测试机构",
        "mdtrtarea_admvs": at[1],
        "inf_time": when,
        "input": body,
    }


def sale(
    codes: Sequence[str],
    at: tuple[str, str] = CHENGDU,
    when: str = "2026-11-01 09:00:00",
    *,
    bchno: str = "S1",
    msgid: str | None = None,
    drug: str = METFORMIN,
    psn: str = "PSN1",
    split: bool = False,
    count: float | None = None,
    price: float = 10.0,
    expy_end: str = "2028-06-30",
    infno: str = "3505",
    returns: str | None = None,
) -> dict[str, Any]:
    """A 3505 sale (or, with ``infno="3506"``, a return) listing ``codes``."""
    selinfo: dict[str, Any] = {
        "med_list_codg": drug,
        "fixmedins_hilist_id": "HL1",
        "fixmedins_hilist_name": "测试药",
        "fixmedins_bchno": bchno,
        "setl_id": "SET1",
        "psn_no": psn,
        "manu_lotnum": "L1",
        "expy_end": expy_end,
        "rx_flag": "0",
        "trdn_flag": "1" if split else "0",
        "finl_trns_pric": price,
        "sel_retn_cnt": len(codes) if count is None else count,
        "sel_retn_time": when,
        "drugtracinfo": [{"drug_trac_codg": c} for c in codes],
    }
    if returns is not None:
        selinfo["medins_prod_sel_no"] = returns
    return _envelope(infno, at, when, msgid, {"selinfo": selinfo})


def ret(codes: Sequence[str], at: tuple[str, str] = CHENGDU,
        when: str = "2026-11-01 10:00:00", *, returns: str = "S1", bchno: str = "R1",
        **kw: Any) -> dict[str, Any]:
    """A 3506 sale return."""
    return sale(codes, at, when, bchno=bchno, infno="3506", returns=returns, **kw)


def count(codes: Sequence[str], at: tuple[str, str] = CHENGDU,
          when: str = "2026-11-03 20:00:00", *, bchno: str = "I1",
          msgid: str | None = None) -> dict[str, Any]:
    """A 3501 inventory count listing ``codes``."""
    body = {"invinfo": {"med_list_codg": METFORMIN, "fixmedins_bchno": bchno,
                        "invdate": when[:10], "inv_cnt": len(codes),
                        "drugtracinfo": [{"drug_trac_codg": c} for c in codes]}}
    return _envelope("3501", at, when, msgid, body)


def change(codes: Sequence[str], at: tuple[str, str] = CHENGDU,
           when: str = "2026-11-03 20:00:00", *, change_type: str = "101",
           bchno: str = "C1", msgid: str | None = None) -> dict[str, Any]:
    """A 3502 inventory change listing ``codes``."""
    body = {"invinfo": {"med_list_codg": METFORMIN, "fixmedins_bchno": bchno,
                        "inv_chg_type": change_type, "inv_chg_time": when,
                        "cnt": len(codes), "trdn_flag": "0",
                        "drugtracinfo": [{"drug_trac_codg": c} for c in codes]}}
    return _envelope("3502", at, when, msgid, body)


def delete(bchno: str, at: tuple[str, str] = CHENGDU, when: str = "2026-11-01 12:00:00",
           *, data_type: str = "4", msgid: str | None = None) -> dict[str, Any]:
    """A 3507 delete of a record."""
    body = {"data": {"fixmedins_bchno": bchno, "inv_data_type": data_type}}
    return _envelope("3507", at, when, msgid, body)


def run(messages: Iterable[dict[str, Any]], config: RuleConfig = CONFIG) -> list[Alert]:
    """Every alert the pipeline raises over ``messages``, in order."""
    pipeline = Pipeline(MemoryLedger(), config)
    parsed = [(i, parse(m, PSN_KEY)) for i, m in enumerate(messages)]
    return pipeline.process(parsed)


def summary(alerts: Iterable[Alert]) -> list[tuple[str, str, str | None, str]]:
    """(rule, severity, code, trigger msgid) of each alert."""
    return [(str(a.rule), a.severity, a.drug_trac_codg, a.trigger_msgid) for a in alerts]
