"""The workload of ``tracewatch bench`` (issue 5): NHSA sale traffic with planted fraud.

``generate(messages, seed)`` builds, in memory and deterministically from the seed, a log of
3505 sales and 3506 returns in the exact format tracewatch accepts (SPEC §1), with the
catalog (SPEC §3) the rules need:

* whole-box sales (mostly pharmacies) listing 1 to 10 codes, 码上放心 20-digit, GS1 in
  several spellings (bracketed, raw, with expiry and lot, with the GS separator) and
  enterprise codes; boxes returned to a pharmacy are sold again there later;
* split (拆零) sales at hospitals: one open box per hospital and drug, several sales drawing
  units from it, a few split returns giving units back;
* whole-box returns (3506) naming the sale they return, at the institution that sold it;
* retries: a message sent again unchanged (same ``msgid``), a few messages later;
* planted ``DUPLICATE_SALE``: codes of a standing sale sold again without a return, at the
  same or another institution (one alert per such code);
* planted ``SPLIT_OVERDISPENSE``: a split sale that takes more units than the open box has
  left (one alert each; the box is not used again).

Every other rule stays silent: codes are valid, drugs are billed as the catalog says, lots are
far from expiry, returns always match a standing sale, and each person buys at one
institution only (no HOARDING). Every interaction that depends on order (a return and the
resale of the box, split sales of one box, retries) happens at one institution, so it stays
in order on a topic keyed by institution however the consumers interleave partitions; the
only cross-institution interaction is a planted duplicate of a box with no history but its
one sale, whose alert count does not depend on which of the two sales comes first. That is
what lets tracewatch and the peers of the benchmark (``streams.peers_quix``,
``streams.peers_faust``) be checked against exact numbers on any number of partitions.

A planted duplicate code is never touched again, and an over-dispensed box is abandoned, so
each planted case raises exactly one alert.
"""

from __future__ import annotations

import calendar
import datetime
import gc
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.reference import CATALOG_HEADER
from streams.simulate import CHAINS, CLOCK, DAY, DRUG_TABLE, GS, REGIONS, gs1_check

__all__ = ["CatalogRow", "Workload", "generate", "stream", "write_catalog", "write_log"]

START = "2026-11-02"
#: Business seconds between two messages: 0 to 2 (about 1 s on average, so a million messages
#: span about twelve days; the rules' retention is years).
STEP_MAX_S = 2
#: Institutions: a million messages come from 300 pharmacies and 60 hospitals; smaller
#: workloads from fewer, so that boxes still see several sales.
PHARMACIES = (20, 300, 1000)  # at least, at most, one per this many messages
HOSPITALS = (3, 60, 5000)
#: Split drugs one hospital dispenses.
WARD_DRUGS = 3
#: Whole-box sale sizes (codes listed), 1 to 10, mean 3.54; with the one-code split sales and
#: the shorter returns, a message lists about 3 codes on average.
SALE_SIZES = (1,) * 20 + (2,) * 20 + (3,) * 17 + (4,) * 13 + (5,) * 10 + (6,) * 7 + (7,) * 5 \
    + (8,) * 4 + (9,) * 2 + (10,) * 2
SPLIT_UNITS = (2, 3, 4, 6, 6, 7, 8, 10, 12, 14, 20, 21, 24, 28, 30)
# What each message is (cumulative thresholds of one roll).
P_RETRY = 0.01
P_RETURN = P_RETRY + 0.04
P_SPLIT_RETURN = P_RETURN + 0.005
P_DUPLICATE = P_SPLIT_RETURN + 0.03
P_SPLIT = P_DUPLICATE + 0.10
#: Share of split sales that take more than the open box has left.
P_OVERDISPENSE = 0.08
#: Share of whole-box duplicates sold again at the institution that sold them first.
P_SAME_PLACE = 0.3
#: How many recent sales returns and planted duplicates choose from.
RECENT = 4096
#: A retry repeats one of the last this many messages.
RETRY_REACH = 8


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One row of the catalog CSV (SPEC §3)."""

    product_key: str
    med_list_codg: str
    drug_name: str
    pack_units: int


@dataclass(slots=True)
class Workload:
    """A generated benchmark workload.

    ``lines`` are the raw JSON messages (no newline), in the order to produce them;
    ``codes`` is the number of codes they list in all (retries included: every listed code
    reaches a per-code stage); ``duplicate_sales`` and ``split_overdispenses`` are the
    planted cases, each of which must raise exactly one alert of its rule.
    """

    seed: int
    lines: list[bytes]
    catalog: list[CatalogRow]
    codes: int
    duplicate_sales: int
    split_overdispenses: int
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def messages(self) -> int:
        """How many messages (lines) the workload has."""
        return len(self.lines)

    @property
    def expected_alerts(self) -> int:
        """Alerts a correct implementation of the two rules raises over the workload."""
        return self.duplicate_sales + self.split_overdispenses

    def write_catalog(self, path: Path) -> Path:
        """Write the catalog CSV to ``path``; return the path."""
        return write_catalog(self.catalog, path)

    def write_log(self, path: Path) -> Path:
        """Write the messages to ``path`` as a ``.jsonl`` event log; return the path."""
        return write_log(self.lines, path)


def write_catalog(rows: list[CatalogRow], path: Path) -> Path:
    """Write catalog rows as tracewatch's catalog CSV (``streams.reference``)."""
    text = [",".join(CATALOG_HEADER)]
    text += [f"{r.product_key},{r.med_list_codg},{r.drug_name},{r.pack_units}" for r in rows]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def write_log(lines: list[bytes], path: Path) -> Path:
    """Write raw messages to ``path``, one a line."""
    with path.open("wb") as handle:
        for start in range(0, len(lines), 65_536):
            handle.write(b"".join(line + b"\n" for line in lines[start : start + 65_536]))
    return path


# ---------------------------------------------------------------------------- the world


@dataclass(slots=True)
class _Product:
    idx: int
    name: str
    med: str
    price: float
    pack: int
    family: str  # c20, gs1 or ent
    key: str | None
    split: bool
    serial: int


@dataclass(slots=True)
class _Inst:
    idx: int
    code: str
    name: str
    admvs: str
    hospital: bool
    ward: list[_Product]  # the split drugs a hospital dispenses
    shelf: dict[int, list[str]] = field(default_factory=dict)  # product → returned boxes


@dataclass(slots=True)
class _Sale:
    """A whole-box sale whose listed boxes (``left``) still stand."""

    inst: _Inst
    product: _Product
    bchno: str
    left: list[str]


@dataclass(slots=True)
class _OpenBox:
    """A box a hospital dispenses split units from; ``sales`` are (bchno, units) standing."""

    code: str
    left: int
    sales: list[list[Any]] = field(default_factory=list)


class _Generator:
    """Builds the messages one by one; see the module docstring."""

    def __init__(self, seed: int, messages: int) -> None:
        self.rng = random.Random(seed)
        self.t = calendar.timegm(datetime.date.fromisoformat(START).timetuple()) + 8 * 3600
        self.base = self.t - self.t % DAY
        self.days: list[str] = []
        self.products = self._products()
        self.whole = [p for p in self.products if not p.split]
        self.splittable = [p for p in self.products if p.split]
        self.insts = self._institutions(messages)
        self.pharmacies = [i for i in self.insts if not i.hospital]
        self.hospitals = [i for i in self.insts if i.hospital]
        self.recent: list[_Sale | None] = [None] * RECENT
        self.recent_pos = 0
        self.open: dict[tuple[int, int], _OpenBox] = {}
        self.recycled: set[str] = set()  # boxes that were ever returned
        self.lines: list[bytes] = []
        self.line_codes: list[int] = []
        self.kinds: Counter[str] = Counter()
        self.codes = 0
        self.duplicates = 0
        self.overdispenses = 0
        self.seq = 0

    def _products(self) -> list[_Product]:
        rng = self.rng
        products = []
        for idx, (name, atc, price, pack, cat, family) in enumerate(DRUG_TABLE):
            med = f"X{atc}{chr(65 + idx % 26)}{rng.randrange(1000):03d}A001010{idx:06d}"
            key: str | None = None
            if family == "c20":
                key = f"8{idx:02d}{rng.randrange(10_000):04d}"
            elif family == "gs1":
                body = f"0{rng.choice(('40', '30', '50', '76', '87'))}{rng.randrange(10**10):010d}"
                key = body + gs1_check(body)
            products.append(_Product(idx, name, med, price, pack, family, key,
                                     cat == "H" and key is not None,
                                     rng.randrange(10**6, 10**8)))
        return products

    def _institutions(self, messages: int) -> list[_Inst]:
        rng = self.rng
        pharmacies = max(PHARMACIES[0], min(PHARMACIES[1], messages // PHARMACIES[2]))
        hospitals = max(HOSPITALS[0], min(HOSPITALS[1], messages // HOSPITALS[2]))
        regions = [r[0] for r in REGIONS]
        weights = [r[2] for r in REGIONS]
        names = {r[0]: r[1] for r in REGIONS}
        insts = []
        for n in range(pharmacies + hospitals):
            hospital = n >= pharmacies
            admvs = rng.choices(regions, weights)[0]
            code = f"{'H' if hospital else 'P'}{admvs}{n:05d}"
            district = names[admvs]
            name = (f"{district}第{n - pharmacies + 1}人民医院" if hospital
                    else f"{rng.choice(CHAINS)}（{district[3:]}{n}店）")
            ward = rng.sample(self.splittable, WARD_DRUGS) if hospital else []
            insts.append(_Inst(n, code, name, admvs, hospital, ward))
        return insts

    # ------------------------------------------------------------------ helpers

    def _clock(self) -> str:
        """Advance business time a little; return it as ``YYYY-MM-DD HH:MM:SS``."""
        self.t += self.rng.randint(0, STEP_MAX_S)
        return self._fmt(self.t)

    def _fmt(self, t: int) -> str:
        day, second = divmod(t - self.base, DAY)
        while len(self.days) <= day:
            midnight = self.base + len(self.days) * DAY
            self.days.append(datetime.datetime.fromtimestamp(midnight, datetime.UTC).date()
                             .isoformat())
        return f"{self.days[day]} {CLOCK[second]}"

    def _new_box(self, product: _Product) -> str:
        product.serial += 1
        serial = product.serial
        if product.family == "c20":
            return f"{product.key}{serial:09d}{(serial * 7919 + product.idx * 31) % 10_000:04d}"
        if product.family == "gs1":
            return f"(01){product.key}(21){chr(65 + serial % 26)}{serial:09d}"
        return f"ZY{product.idx:02d}{serial:012d}"

    def _raw(self, code: str) -> str:
        """The code as a scanner uploads it: GS1 in one of its spellings, rarely padded."""
        roll = self.rng.random()
        if code.startswith("(01)"):
            gtin, serial = code[4:18], code[22:]
            if roll < 0.5:
                return code
            if roll < 0.75:
                return f"01{gtin}21{serial}"
            if roll < 0.9:
                return f"(01){gtin}(17)281231(10)L{gtin[-3:]}(21){serial}"
            return f"01{gtin}1728123110L{gtin[-3:]}{GS}21{serial}"
        return f" {code} " if roll < 0.005 else code

    def _person(self, inst: _Inst) -> str:
        """An insured person of this institution (nobody buys anywhere else: no HOARDING)."""
        return f"PSN{inst.idx:04d}{self.rng.randrange(3000):05d}"

    def _emit(self, inst: _Inst, infno: str, product: _Product, codes: list[str], *,
              split: bool = False, units: int | None = None, returns: str | None = None,
              prefix: str = "XS") -> str:
        """Write one 3505/3506 message listing ``codes``; return its record number."""
        self.seq += 1
        seq = self.seq
        when = self._clock()
        arrived = self._fmt(self.t + 5 + seq % 40)
        compact = arrived.replace("-", "").replace(" ", "").replace(":", "")
        bchno = f"{prefix}{when[:4]}{when[5:7]}{when[8:10]}{seq:08d}"
        price = round(product.price / product.pack, 4) if split else product.price
        sel: dict[str, Any] = {
            "med_list_codg": product.med, "fixmedins_hilist_id": f"HL{product.idx:04d}",
            "fixmedins_hilist_name": product.name, "fixmedins_bchno": bchno,
            "setl_id": f"ST{inst.code[1:]}{seq:08d}", "psn_no": self._person(inst),
            "manu_lotnum": f"{product.idx:02d}L2611", "expy_end": "2028-12-31",
            "rx_flag": "1" if inst.hospital else "0", "trdn_flag": "1" if split else "0",
            "finl_trns_pric": price, "sel_retn_cnt": len(codes) if units is None else units,
            "sel_retn_time": when,
            "drugtracinfo": [{"drug_trac_codg": self._raw(c)} for c in codes],
        }
        if returns is not None:
            sel["medins_prod_sel_no"] = returns
        message = {
            "infno": infno, "msgid": f"{inst.code}{compact}{seq:07d}",
            "fixmedins_code": inst.code, "fixmedins_name": inst.name,
            "mdtrtarea_admvs": inst.admvs, "inf_time": arrived, "input": {"selinfo": sel},
        }
        self.lines.append(orjson.dumps(message))
        self.line_codes.append(len(codes))
        self.codes += len(codes)
        return bchno

    def _remember(self, sale: _Sale) -> None:
        self.recent[self.recent_pos % RECENT] = sale
        self.recent_pos += 1

    def _standing_sale(self) -> _Sale | None:
        """A recent whole-box sale with boxes still standing, or None."""
        for _ in range(4):
            sale = self.recent[self.rng.randrange(min(self.recent_pos, RECENT) or 1)]
            if sale is not None and sale.left:
                return sale
        return None

    # ------------------------------------------------------------------ messages

    def whole_sale(self) -> None:
        """A whole-box 3505; returned boxes on the shelf are sold again first."""
        rng = self.rng
        inst = rng.choice(self.pharmacies) if rng.random() < 0.85 else rng.choice(self.hospitals)
        product = rng.choice(self.whole)
        n = rng.choice(SALE_SIZES)
        shelf = inst.shelf.get(product.idx)
        boxes: list[str] = []
        while shelf and len(boxes) < n:
            boxes.append(shelf.pop())
        boxes += [self._new_box(product) for _ in range(n - len(boxes))]
        bchno = self._emit(inst, "3505", product, boxes)
        self._remember(_Sale(inst, product, bchno, boxes))
        self.kinds["sale"] += 1

    def whole_return(self) -> None:
        """A 3506 of some or all standing boxes of a recent sale, where it was sold."""
        sale = self._standing_sale()
        if sale is None:
            self.whole_sale()
            return
        rng = self.rng
        k = len(sale.left) if rng.random() < 0.6 else rng.randint(1, len(sale.left))
        boxes = sale.left[:k]
        del sale.left[:k]
        self._emit(sale.inst, "3506", sale.product, boxes, returns=sale.bchno, prefix="TH")
        sale.inst.shelf.setdefault(sale.product.idx, []).extend(boxes)
        self.recycled.update(boxes)
        self.kinds["return"] += 1

    def duplicate_sale(self) -> None:
        """Planted: standing boxes of a recent sale sold again, maybe with fresh boxes."""
        sale = self._standing_sale()
        if sale is None:
            self.whole_sale()
            return
        rng = self.rng
        inst = sale.inst if rng.random() < P_SAME_PLACE else rng.choice(self.pharmacies)
        # Elsewhere, only a box with no history but this sale: the count must not depend on
        # how the two institutions' messages interleave.
        candidates = sale.left if inst is sale.inst else [
            box for box in sale.left if box not in self.recycled]
        if not candidates:
            inst, candidates = sale.inst, sale.left
        dup = candidates[: rng.randint(1, min(2, len(candidates)))]
        for box in dup:  # never returned, never sold a third time: one alert per code
            sale.left.remove(box)
        fresh = [self._new_box(sale.product) for _ in range(rng.choice((0, 0, 1, 2)))]
        boxes = dup + fresh
        rng.shuffle(boxes)
        bchno = self._emit(inst, "3505", sale.product, boxes)
        self._remember(_Sale(inst, sale.product, bchno, fresh))
        self.duplicates += len(dup)
        self.kinds["duplicate"] += 1

    def split_sale(self) -> None:
        """A hospital dispenses units from its open box of a drug (opening one if needed);
        sometimes, planted, more units than the box has left."""
        rng = self.rng
        inst = rng.choice(self.hospitals)
        product = rng.choice(inst.ward)
        key = (inst.idx, product.idx)
        box = self.open.get(key)
        if box is None:
            box = self.open[key] = _OpenBox(self._new_box(product), product.pack)
        over = box.left < product.pack and rng.random() < P_OVERDISPENSE
        if over:
            units = box.left + rng.randint(1, max(1, product.pack // 4))
        else:
            units = min(rng.choice(SPLIT_UNITS), box.left)
        bchno = self._emit(inst, "3505", product, [box.code], split=True, units=units)
        box.left -= units
        box.sales.append([bchno, units])
        if over:
            self.overdispenses += 1
            self.kinds["overdispense"] += 1
        else:
            self.kinds["split"] += 1
        if box.left <= 0:
            del self.open[key]  # used up (or over-dispensed): never listed again

    def split_return(self) -> None:
        """A split 3506 giving back some units of one split sale of an open box."""
        hospital = self.rng.choice(self.hospitals)
        candidates = []
        for product in hospital.ward:
            open_box = self.open.get((hospital.idx, product.idx))
            if open_box is not None and open_box.sales and open_box.sales[-1][1] > 0:
                candidates.append((product, open_box))
        if not candidates:
            self.split_sale()
            return
        product, box = self.rng.choice(candidates)
        sale = box.sales[-1]
        units = self.rng.randint(1, sale[1])
        self._emit(hospital, "3506", product, [box.code],
                   split=True, units=units, returns=sale[0], prefix="TH")
        sale[1] -= units
        box.left += units
        self.kinds["split_return"] += 1

    def retry(self) -> None:
        """One of the last few messages sent again unchanged (same ``msgid``)."""
        back = self.rng.randint(1, min(RETRY_REACH, len(self.lines)))
        line, codes = self.lines[-back], self.line_codes[-back]
        self.lines.append(line)
        self.line_codes.append(codes)
        self.codes += codes
        self.kinds["retry"] += 1

    def run(self, messages: int) -> None:
        """Generate ``messages`` messages."""
        rng = self.rng
        while len(self.lines) < messages:
            roll = rng.random()
            if roll < P_RETRY:
                if self.lines:
                    self.retry()
                else:
                    self.whole_sale()
            elif roll < P_RETURN:
                self.whole_return()
            elif roll < P_SPLIT_RETURN:
                self.split_return()
            elif roll < P_DUPLICATE:
                self.duplicate_sale()
            elif roll < P_SPLIT:
                self.split_sale()
            else:
                self.whole_sale()

    def catalog(self) -> list[CatalogRow]:
        """Every product with a product key (enterprise codes have none)."""
        return [CatalogRow(p.key, p.med, p.name, p.pack)
                for p in self.products if p.key is not None]


def generate(messages: int, seed: int) -> Workload:
    """A deterministic benchmark workload of ``messages`` messages (see the module docstring)."""
    if messages < 1:
        raise ValueError(f"messages must be at least 1, not {messages}")
    gen = _Generator(seed, messages)
    collecting = gc.isenabled()
    gc.disable()  # millions of small objects that live to the end: no cycles to find
    try:
        gen.run(messages)
    finally:
        if collecting:
            gc.enable()
    return Workload(seed, gen.lines, gen.catalog(), gen.codes, gen.duplicates,
                    gen.overdispenses, gen.kinds)


def stream(messages: int, seed: int) -> Iterator[list[bytes]]:
    """The workload of ``generate(messages, seed)`` and then its continuation, a chunk of
    ``messages`` lines at a time, for ever.

    One world throughout (the same institutions, products and people), with business time,
    record numbers and box serials running on, as a long steady load has them: a fresh
    ``generate`` per chunk would bring new institutions and drugs every chunk and send the
    same msgids and boxes again. Only the last few lines are kept between chunks (retries
    reach back ``RETRY_REACH`` messages), so the caller's memory stays flat too.
    """
    if messages < 1:
        raise ValueError(f"messages must be at least 1, not {messages}")
    gen = _Generator(seed, messages)
    while True:
        del gen.lines[:-RETRY_REACH]
        del gen.line_codes[:-RETRY_REACH]
        start = len(gen.lines)
        gen.run(start + messages)
        yield gen.lines[start:]


def main(argv: list[str] | None = None) -> int:
    """``python -m streams.bench_workload --messages N --seed S --out DIR``: write
    ``messages.jsonl`` and ``catalog.csv`` into DIR and print what was planted."""
    import argparse
    import sys
    import time

    parser = argparse.ArgumentParser(prog="python -m streams.bench_workload",
                                     description=main.__doc__)
    parser.add_argument("--messages", type=int, required=True, help="how many messages")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    workload = generate(args.messages, args.seed)
    seconds = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    workload.write_log(args.out / "messages.jsonl")
    workload.write_catalog(args.out / "catalog.csv")
    print(f"{workload.messages} messages listing {workload.codes} codes, planted "
          f"DUPLICATE_SALE {workload.duplicate_sales}, SPLIT_OVERDISPENSE "
          f"{workload.split_overdispenses}; generated in {seconds:.1f} s; {dict(workload.kinds)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
