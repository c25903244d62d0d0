"""``tracewatch simulate``: realistic NHSA traffic of one province, with labelled fraud.

The world is a mid-size province (Sichuan, plus a district of Chongqing next door): pharmacies
(``P`` + 11 digits) and hospitals (``H`` + 11 digits) with opening hours and sizes, a catalog of
about sixty drugs (20-digit 码上放心 codes, imported drugs with GS1 codes, a few enterprise
codes), and insured people with habits: chronic patients refill 1–3 boxes a month at their
usual pharmacy, others buy now and then; hospitals dispense split (拆零) from open boxes.

Everything is an *action* at a business time, run in time order from one heap, so the state
of every box (in stock, sold, returned, open) is always right when a message lists it. Each
message arrives (``inf_time``) seconds to minutes after its business time; a box touched by a
message is not touched again before that message has arrived (``Box.ready``), so arrival order
never contradicts business order for one box.

Legitimate traffic raises nothing: boxes enter stock by 3502 ``"101"`` before they are sold;
returns, resale of returned boxes, deletes and re-sends, retried uploads (same ``msgid``),
re-uploads (new ``msgid``, same record number), periodic 3501 counts of unsold stock, other
3502 types, purchases (3503/3504), split sales that span two boxes, sales on the expiry day.

Fraud is injected as short, separate *arcs*, each of which writes the labels of the alerts
it must raise (``labels.jsonl``): resale rings and cloned codes (DUPLICATE_SALE), bought-back
boxes in stock (FLOWBACK), cheap boxes billed as dear drugs (SUBSTITUTION), split sales beyond
the box (SPLIT_OVERDISPENSE), one person buying at many pharmacies (HOARDING), expired lots
(EXPIRED_SALE), product barcodes and mis-scans (BARCODE_AS_TRACE_CODE, INVALID_CODE) and
returns of boxes never sold (RETURN_WITHOUT_SALE).

Output is reproducible from the seed alone (``random.Random(seed)``; no wall clock, no
hash-ordered iteration) and written day by day.
"""

from __future__ import annotations

import argparse
import calendar
import datetime
import heapq
import itertools
import random
import sys
import time as _time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

DAY = 86_400
HOUR = 3_600
WINDOW = 30 * DAY  # HOARDING window (default configuration)
GS = "\x1d"
CLOCK = [f"{s // HOUR:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(DAY)]

# Region code, name, weight (how many institutions and people live there).
REGIONS: tuple[tuple[str, str, int], ...] = (
    ("510104", "成都市锦江区", 6), ("510105", "成都市青羊区", 6), ("510107", "成都市武侯区", 7),
    ("510108", "成都市成华区", 6), ("510302", "自贡市自流井区", 3), ("510504", "泸州市龙马潭区", 3),
    ("510603", "德阳市旌阳区", 3), ("510703", "绵阳市涪城区", 4), ("500103", "重庆市渝中区", 4),
)
CHAINS = ("老百姓大药房", "一心堂", "太极大药房", "海王星辰", "健之佳", "德仁堂", "桐君阁大药房")

# One drug a row: name, ATC (5), price per box (yuan), pack_units, category, code family.
# Category: C chronic, A acute, H hospital split (拆零), X expensive; family: c20 (码上放心),
# gs1 (imported, GS1 DataMatrix), ent (enterprise codes, no catalog entry).
DRUG_TEXT = """
二甲双胍片 A10BA 12.5 48 C c20 | 格列美脲片 A10BB 26 24 C c20 | 阿卡波糖片 A10BF 38 28 C c20
硝苯地平控释片 C08CA 32 12 C c20 | 苯磺酸氨氯地平片 C08CA 18 28 C c20 | 缬沙坦胶囊 C09CA 29 28 C c20
厄贝沙坦片 C09CA 24 28 C c20 | 氯沙坦钾片 C09CA 35 28 C gs1 | 酒石酸美托洛尔片 C07AB 9.8 48 C c20
阿托伐他汀钙片 C10AA 45 28 C gs1 | 瑞舒伐他汀钙片 C10AA 39 28 C c20
阿司匹林肠溶片 B01AC 15 100 C gs1 | 硫酸氢氯吡格雷片 B01AC 98 28 C gs1
左甲状腺素钠片 H03AA 29 100 C gs1 | 奥美拉唑肠溶胶囊 A02BC 19 28 C c20
雷贝拉唑钠肠溶片 A02BC 42 12 C c20 | 盐酸坦索罗辛缓释胶囊 G04CA 58 12 C c20
非那雄胺片 G04CB 68 28 C c20 | 孟鲁司特钠片 R03DC 48 12 C gs1 | 甲钴胺片 B03BA 22 24 C c20
复方丹参滴丸 C01EB 26 100 C ent | 血塞通软胶囊 C01EB 33 24 C ent | 六味地黄丸 A16AX 16 100 C ent
银杏叶片 N06DX 27 24 C ent | 阿莫西林胶囊 J01CA 12 24 A c20 | 头孢克肟胶囊 J01DD 28 12 A c20
左氧氟沙星片 J01MA 22 12 A c20 | 阿奇霉素片 J01FA 25 12 A c20 | 布洛芬缓释胶囊 M01AE 15 24 A c20
对乙酰氨基酚片 N02BE 8 12 A c20 | 氯雷他定片 R06AX 18 12 A gs1 | 蒙脱石散 A07BC 16 12 A c20
连花清瘟胶囊 R05X0 24 24 A c20 | 盐酸氨溴索片 R05CB 14 24 A c20 | 复方甘草片 R05DA 6.5 100 A c20
维生素C片 A11GA 4.5 100 A c20 | 双氯芬酸钠缓释片 M01AB 11 24 A c20 | 西替利嗪片 R06AE 21 12 A gs1
头孢呋辛酯片 J01DC 36 12 H c20 | 甲硝唑片 P01AB 6 100 H c20 | 醋酸泼尼松片 H02AB 8 100 H c20
硝酸甘油片 C01DA 12 100 H c20 | 地西泮片 N05BA 5 100 H c20 | 盐酸二甲双胍缓释片 A10BA 24 48 H c20
呋塞米片 C03CA 7 100 H c20 | 螺内酯片 C03DA 9 100 H c20 | 阿莫西林克拉维酸钾片 J01CR 32 12 H c20
多潘立酮片 A03FA 14 48 H gs1 | 奥希替尼片 L01EB 5100 28 X gs1 | 吉非替尼片 L01EB 1250 28 X gs1
甲磺酸伊马替尼片 L01EA 2980 48 X gs1 | 恩替卡韦分散片 J05AF 160 28 X c20
富马酸替诺福韦二吡呋酯片 J05AF 150 28 X c20 | 利伐沙班片 B01AF 210 28 X gs1
达格列净片 A10BK 150 28 X gs1 | 磷酸西格列汀片 A10BH 180 28 X gs1
阿法骨化醇软胶囊 A11CC 118 24 X c20 | 依折麦布片 C10AX 132 28 X c20
沙库巴曲缬沙坦钠片 C09DX 198 28 X gs1 | 托法替布片 L04AA 1680 28 X gs1
"""
DRUG_TABLE: tuple[tuple[str, str, float, int, str, str], ...] = tuple(
    (f[0], f[1], float(f[2]), int(f[3]), f[4], f[5])
    for f in (row.split() for row in DRUG_TEXT.replace("|", "\n").splitlines() if row.strip())
)

# Per day at 200 institutions; a run gets at least one arc of each kind.
ARC_RATES: tuple[tuple[str, float], ...] = (
    ("ring", 1.6), ("clone", 0.8), ("twice", 0.6), ("flowback", 1.0), ("substitution", 1.0),
    ("split", 0.8), ("hoarding", 0.6), ("expired", 1.0), ("barcode", 1.8), ("invalid", 1.5),
    ("return", 0.25), ("edge", 0.4),
)
LONG_ARCS = ("ring", "flowback", "hoarding", "substitution", "return", "twice", "split")
ACUTE_RATE = 0.035   # acute purchase visits per person and day
CHRONIC_SHARE = 0.4  # people with chronic refills
SPLIT_RATE = 12      # split dispensings per hospital size unit and day
HOSP_WHOLE_RATE = 4  # whole-box dispensings per hospital size unit and day
P_RETRY, P_REUPLOAD = 0.004, 0.004
P_RETURN, P_DELETE = 0.015, 0.004
BOXES = (1,) * 22 + (2,) * 20 + (3,) * 18 + (4,) * 13 + (5,) * 9 + (6,) * 7 + (7,) * 5 \
    + (8,) * 3 + (9,) * 2 + (10,)  # whole-box sale sizes, mean ≈ 3.3


def gs1_check(body: str) -> str:
    """The GS1 mod-10 check digit of ``body`` (GTIN or EAN without its check digit)."""
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


@dataclass(slots=True)
class Drug:
    """One catalog drug and how its boxes are coded."""

    idx: int
    name: str
    med: str
    price: float
    pack: int
    cat: str
    family: str
    key: str | None  # catalog product key (7 digits or GTIN); None for enterprise codes
    barcode: str     # the retail barcode on every box (69… EAN-13, or the bare GTIN)
    serial: int = 0


class Box:
    """One physical box and its trace code."""

    __slots__ = ("code", "drug", "expy", "last", "left", "lot", "ready", "serial", "text")

    def __init__(self, drug: Drug, serial: int, lot: str, expy: str) -> None:
        self.drug = drug
        self.serial = serial
        self.lot = lot
        self.expy = expy
        self.ready = 0   # arrival time of the last message that listed this box
        self.left = drug.pack
        self.last: tuple[Inst, int] | None = None  # latest standing (fraud) sale: where, when
        if drug.family == "c20":
            self.code = f"{drug.key}{serial:09d}{(serial * 7919 + drug.idx * 31) % 10000:04d}"
        elif drug.family == "gs1":
            self.text = _serial_text(serial)
            self.code = f"(01){drug.key}(21){self.text}"
        else:
            self.code = f"ZY{drug.idx:02d}{serial:012d}"

    def raw(self, rng: random.Random) -> str:
        """The code as a scanner would upload it; GS1 in one of its spellings."""
        drug = self.drug
        if drug.family != "gs1":
            return self.code if rng.random() > 0.005 else f" {self.code}\n"
        serial = self.text
        form = rng.random()
        if form < 0.4:
            return self.code
        yymmdd = self.expy[2:4] + self.expy[5:7] + self.expy[8:10]
        if form < 0.6:
            return f"(01){drug.key}(17){yymmdd}(10){self.lot}(21){serial}"
        if form < 0.8:
            return f"01{drug.key}21{serial}"
        return f"01{drug.key}17{yymmdd}10{self.lot}{GS}21{serial}"


def _serial_text(serial: int) -> str:
    return f"{chr(65 + serial % 26)}{chr(65 + serial // 26 % 26)}{serial:09d}"


@dataclass(eq=False, slots=True)
class Inst:
    """A designated pharmacy or hospital."""

    code: str
    name: str
    admvs: str
    hospital: bool
    open: int
    close: int
    size: float
    count_day: int
    stock: dict[int, list[Box]] = field(default_factory=dict)
    opened: dict[int, Box] = field(default_factory=dict)
    pending: dict[int, bool] = field(default_factory=dict)
    msgs: int = 0
    records: int = 0

    @property
    def city(self) -> str:
        """First four digits of the region code."""
        return self.admvs[:4]


@dataclass(eq=False, slots=True)
class Person:
    """An insured person and their habits."""

    psn: str
    city: str
    pharmacy: Inst
    hospital: Inst | None
    chronic: list[tuple[Drug, int]]


@dataclass(slots=True)
class SimulationSummary:
    """What one simulation wrote."""

    out_dir: Path
    days: int
    messages: int = 0
    boxes: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    arcs: Counter[str] = field(default_factory=Counter)


Action = tuple[int, int, Callable[..., None], tuple[Any, ...]]


class World:
    """The simulated province: drugs, institutions, people, and the action heap."""

    def __init__(self, rng: random.Random, start: str, days: int, institutions: int,
                 people: int) -> None:
        if institutions < 20 or people < 100 or days < 1:
            raise ValueError("simulate needs at least 20 institutions, 100 people and 1 day")
        self.rng = rng
        self.base = calendar.timegm(datetime.date.fromisoformat(start).timetuple())
        self.days = days
        self.end = self.base + days * DAY
        self.scale = institutions / 200
        self.pace = min(1.0, days / 10)  # a short run squeezes the gaps inside fraud arcs
        self.heap: list[Action] = []
        self.seq = 0
        self.out: list[tuple[int, int, bytes]] = []
        self.labels: list[tuple[int, int, dict[str, Any]]] = []
        self.summary_boxes = 0
        self.arcs: Counter[str] = Counter()
        self.hoard: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.fraud_people = 0
        self.last_key = (0, 0)
        self._day_text: dict[int, str] = {}
        self.drugs = self._drugs()
        self.insts = self._institutions(institutions)
        self.pharmacies = [i for i in self.insts if not i.hospital]
        self.hospitals = [i for i in self.insts if i.hospital]
        self.by_city: dict[str, list[Inst]] = {}
        for inst in self.pharmacies:
            self.by_city.setdefault(inst.city, []).append(inst)
        self.cities = list(self.by_city)
        self.people = self._people(people)
        self.people_by_city: dict[str, list[Person]] = {}
        for person in self.people:
            self.people_by_city.setdefault(person.city, []).append(person)
        self.refills: dict[int, list[tuple[Person, Drug, int]]] = {}
        for person in self.people:
            for drug, boxes in person.chronic:
                day = rng.randrange(30)
                while day < days:
                    self.refills.setdefault(day, []).append((person, drug, boxes))
                    day += rng.randint(28, 31)

    # ------------------------------------------------------------------ the world

    def _drugs(self) -> list[Drug]:
        rng = self.rng
        drugs: list[Drug] = []
        keys: list[str] = []
        for idx, (name, atc, price, pack, cat, family) in enumerate(DRUG_TABLE):
            if idx == 0:
                med, key = "XA10BAE054A001010101445", "8385793"
            elif idx == 24:
                med, key = "XJ01CAA040A001010100001", "8600001"
            else:
                med = f"X{atc}{chr(65 + idx % 26)}{rng.randrange(1000):03d}A001010{idx:06d}"
                key = f"8{rng.randrange(100000, 1000000)}"
                while key in keys or key in ("8385793", "8600001"):
                    key = f"8{rng.randrange(100000, 1000000)}"
            keys.append(key)
            ean = "69" + f"{rng.randrange(10**10):010d}"
            barcode = ean + gs1_check(ean)
            if family == "gs1":
                body = f"0{rng.choice(('40', '30', '50', '76', '87'))}{rng.randrange(10**10):010d}"
                key = body + gs1_check(body)
                barcode = key
            drugs.append(Drug(idx, name, med, price, pack, cat, family,
                              None if family == "ent" else key, barcode,
                              rng.randrange(10**6, 10**8)))
        self.chronic = [d for d in drugs if d.cat == "C"]
        self.acute = [d for d in drugs if d.cat in "AC"]
        self.splittable = [d for d in drugs if d.cat == "H"]
        self.hosp_whole = [d for d in drugs if d.cat in "HCX"]
        self.catalogued = [d for d in drugs if d.key is not None and d.cat != "X"]
        self.expensive = [d for d in drugs if d.cat == "X"]
        self.enterprise = [d for d in drugs if d.family == "ent"]
        return drugs

    def _institutions(self, count: int) -> list[Inst]:
        rng = self.rng
        hospitals = max(2, count // 5)
        regions = [r[0] for r in REGIONS]
        weights = [r[2] for r in REGIONS]
        names = {r[0]: r[1] for r in REGIONS}
        # Every city gets three pharmacies first, so HOARDING and resale rings can be built.
        places = ["510104", "510302", "510504", "510603", "510703", "500103"] * 3
        while len(places) < count - hospitals:
            places.append(rng.choices(regions, weights)[0])
        places += rng.choices(regions, weights, k=hospitals)
        insts: list[Inst] = []
        serial = Counter[str]()
        for n, admvs in enumerate(places):
            hospital = n >= count - hospitals
            serial[admvs] += 1
            kind = "H" if hospital else "P"
            code = f"{kind}{admvs}{serial[admvs] * 37 + rng.randrange(37):05d}"
            district = names[admvs]
            if hospital:
                name = f"{district}{rng.choice(('第一', '第二', '中医', '妇幼', '第三'))}人民医院"
                open_, close, size = 8 * HOUR, 17 * HOUR + 1800, rng.choice((1.0, 1.5, 2.0, 3.0))
            else:
                name = f"{rng.choice(CHAINS)}（{district[3:]}{serial[admvs]}店）"
                if rng.random() < 0.08:
                    open_, close = 0, DAY
                else:
                    open_ = int(rng.choice((7.5, 8, 8, 8.5, 9)) * HOUR)
                    close = rng.choice((20 * HOUR, 21 * HOUR, 21 * HOUR, 22 * HOUR))
                size = rng.choice((0.5, 1.0, 1.0, 1.5, 2.0))
            insts.append(Inst(code, name, admvs, hospital, open_, close, size, rng.randrange(7)))
        return insts

    def _people(self, count: int) -> list[Person]:
        rng = self.rng
        people: list[Person] = []
        hospitals_by_city: dict[str, list[Inst]] = {}
        for h in self.hospitals:
            hospitals_by_city.setdefault(h.city, []).append(h)
        weights = list(itertools.accumulate(p.size for p in self.pharmacies))
        for n in range(count):
            pharmacy = rng.choices(self.pharmacies, cum_weights=weights)[0]
            city = pharmacy.city
            near = hospitals_by_city.get(city)
            hospital = rng.choice(near) if near and rng.random() < 0.5 else None
            chronic: list[tuple[Drug, int]] = []
            if rng.random() < CHRONIC_SHARE:
                for drug in rng.sample(self.chronic, rng.choice((1, 1, 1, 2, 2, 3))):
                    chronic.append((drug, rng.choice((1, 1, 2, 2, 3))))
            people.append(Person(f"PSN51{n:08d}", city, pharmacy, hospital, chronic))
        return people

    # ------------------------------------------------------------------ time and output

    def fmt(self, t: int) -> str:
        """Seconds to ``YYYY-MM-DD HH:MM:SS``."""
        return f"{self.date(t)} {CLOCK[t % DAY]}"

    def date(self, t: int) -> str:
        """Seconds to ``YYYY-MM-DD``."""
        day = t // DAY
        text = self._day_text.get(day)
        if text is None:
            text = self._day_text[day] = _time.strftime("%Y-%m-%d", _time.gmtime(day * DAY))
        return text

    def schedule(self, t: int, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(t, *args)`` at business time ``t``, if that is inside the run."""
        if t < self.end:
            self.seq += 1
            heapq.heappush(self.heap, (t, self.seq, fn, args))

    def opening(self, inst: Inst, t: int) -> int:
        """``t`` moved into the institution's opening hours (same or next day)."""
        day = t - t % DAY
        if inst.close == DAY:
            return t
        if t < day + inst.open:
            return day + inst.open + self.rng.randint(60, 3600)
        if t > day + inst.close - 1800:
            return day + DAY + inst.open + self.rng.randint(60, 3600)
        return t

    def in_hours(self, inst: Inst, day0: int) -> int:
        """A random business time in the institution's opening hours on ``day0``."""
        rng = self.rng
        if inst.close == DAY and rng.random() < 0.85:
            return day0 + rng.randint(8 * HOUR, 22 * HOUR)
        return day0 + rng.randint(inst.open, inst.close - 900)

    def after(self, boxes: list[Box], t: int) -> int:
        """A business time not before ``t`` and after every listed box's last arrival."""
        ready = max((b.ready for b in boxes), default=0)
        return t if t > ready else ready + self.rng.randint(5, 120)

    def emit(self, inst: Inst, infno: str, t: int, body: dict[str, Any], boxes: list[Box],
             noise: str = "all") -> str:
        """Write one message at business time ``t``; maybe retried or re-uploaded."""
        rng = self.rng
        inf = t + (rng.randint(2, 90) if rng.random() < 0.9 else rng.randint(90, 600))
        text = self.fmt(inf)
        msgid = self._msgid(inst, text)
        env: dict[str, Any] = {
            "infno": infno, "msgid": msgid, "fixmedins_code": inst.code,
            "fixmedins_name": inst.name, "mdtrtarea_admvs": inst.admvs,
            "inf_time": text, "input": body,
        }
        raw = orjson.dumps(env)
        self.seq += 1
        self.out.append((inf, self.seq, raw))
        self.last_key = (inf, self.seq)
        ready = inf
        if noise != "none":
            roll = rng.random()
            if roll < P_RETRY:
                self.seq += 1
                self.out.append((inf, self.seq, raw))
            elif roll < P_RETRY + P_REUPLOAD and noise == "all":
                inf2 = inf + rng.randint(60, 900)
                env["inf_time"] = text2 = self.fmt(inf2)
                env["msgid"] = self._msgid(inst, text2)
                self.seq += 1
                self.out.append((inf2, self.seq, orjson.dumps(env)))
                ready = inf2
        for box in boxes:
            if box.ready < ready:
                box.ready = ready
        return msgid

    def _msgid(self, inst: Inst, text: str) -> str:
        inst.msgs += 1
        compact = text[:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
        return f"{inst.code}{compact}{inst.msgs % 100000:05d}"

    def bchno(self, inst: Inst, prefix: str, t: int) -> str:
        """A new record number of the institution."""
        inst.records += 1
        return f"{prefix}{self.date(t).replace('-', '')}{inst.records:07d}"

    def label(self, rule: str, msgid: str, code: str | None, psn: str | None, note: str,
              severity: str) -> None:
        """Expect one alert, raised by the message just emitted."""
        self.labels.append((*self.last_key, {
            "rule": rule, "trigger_msgid": msgid, "drug_trac_codg": code, "psn_no": psn,
            "severity": severity, "note": note,
        }))

    def fraud_person(self) -> str:
        """A fresh insured person for a fraud arc (never reused, so never hoarding by accident)."""
        self.fraud_people += 1
        return f"PSN59{self.fraud_people:08d}"

    # ------------------------------------------------------------------ stock

    def new_boxes(self, drug: Drug, n: int, t: int, lot: str | None = None,
                  expy: str | None = None) -> list[Box]:
        """``n`` boxes fresh from the maker; lots change every ten days."""
        batch = (t - self.base) // (10 * DAY) + 100
        if lot is None:
            lot = f"{drug.idx:02d}{batch:04d}"
        if expy is None:
            shelf_life = 730 + (drug.idx * 37 + batch * 11) % 365
            expy = self.date(t - t % (10 * DAY) + shelf_life * DAY)
        boxes = []
        for _ in range(n):
            drug.serial += 1
            boxes.append(Box(drug, drug.serial, lot, expy))
        self.summary_boxes += n
        return boxes

    def stock_in(self, t: int, inst: Inst, drug: Drug, boxes: list[Box],
                 extra: tuple[str, ...] = (), noise: str = "all") -> str:
        """A 3502 ``"101"`` listing ``boxes`` (and ``extra`` raw codes); maybe a 3503 too."""
        rng = self.rng
        if rng.random() < 0.4:
            body = {"purinfo": {
                "med_list_codg": drug.med, "fixmedins_hilist_id": f"HL{drug.idx:04d}",
                "fixmedins_hilist_name": drug.name, "fixmedins_bchno": self.bchno(inst, "CG", t),
                "spler_name": "四川省医药有限公司", "manu_lotnum": boxes[0].lot if boxes else "",
                "expy_end": boxes[0].expy if boxes else "", "purc_retn_cnt": len(boxes),
                "purc_retn_stoin_time": self.fmt(t)}}
            self.emit(inst, "3503", t - 30, body, [], "retry")
        codes = [{"drug_trac_codg": b.raw(rng)} for b in boxes]
        codes += [{"drug_trac_codg": c} for c in extra]
        body = {"invinfo": {
            "med_list_codg": drug.med, "fixmedins_bchno": self.bchno(inst, "KC", t),
            "inv_chg_type": "101", "inv_chg_time": self.fmt(t), "cnt": len(codes),
            "trdn_flag": "0", "drugtracinfo": codes}}
        return self.emit(inst, "3502", t, body, boxes, noise)

    def deliver(self, t: int, inst: Inst, drug: Drug, n: int) -> None:
        """A delivery of ``n`` new boxes into the institution's stock."""
        inst.pending[drug.idx] = False
        boxes = self.new_boxes(drug, n, t)
        self.stock_in(t, inst, drug, boxes)
        inst.stock.setdefault(drug.idx, []).extend(boxes)

    def take(self, t: int, inst: Inst, drug: Drug, n: int) -> list[Box]:
        """``n`` boxes out of stock (first in, first out), delivering at once if short."""
        stock = inst.stock.get(drug.idx)
        if stock is None or len(stock) < n:
            self.deliver(t, inst, drug, n + self.rng.randint(4, 12))
            stock = inst.stock[drug.idx]
        boxes = stock[:n]
        del stock[:n]
        if len(stock) < 3 and not inst.pending.get(drug.idx):
            inst.pending[drug.idx] = True
            day = t - t % DAY + DAY
            opens = 6 * HOUR if inst.close == DAY else inst.open
            when = day + opens - self.rng.randint(1800, 5400)
            self.schedule(when, self.deliver, inst, drug, self.rng.randint(6, 16))
        return boxes

    # ------------------------------------------------------------------ messages

    def sale_body(self, t: int, inst: Inst, drug: Drug, bch: str, psn: str, raws: list[str],
                  boxes: list[Box], *, split: bool = False, count: int | None = None,
                  med: Drug | None = None, returns: str | None = None,
                  expy: str | None = None) -> dict[str, Any]:
        """The ``selinfo`` of a 3505 sale or 3506 return."""
        billed = med or drug
        first = boxes[0] if boxes else None
        price = round(billed.price / billed.pack, 4) if split else billed.price
        sel: dict[str, Any] = {
            "med_list_codg": billed.med, "fixmedins_hilist_id": f"HL{billed.idx:04d}",
            "fixmedins_hilist_name": billed.name, "fixmedins_bchno": bch,
            "setl_id": f"ST{inst.code[1:]}{bch[2:]}", "psn_no": psn,
            "manu_lotnum": first.lot if first else "",
            "expy_end": expy or (first.expy if first else ""),
            "rx_flag": "1" if drug.cat in "HX" else "0", "trdn_flag": "1" if split else "0",
            "finl_trns_pric": price, "sel_retn_cnt": len(raws) if count is None else count,
            "sel_retn_time": self.fmt(t), "drugtracinfo": [{"drug_trac_codg": r} for r in raws],
        }
        if returns is not None:
            sel["medins_prod_sel_no"] = returns
        return {"selinfo": sel}

    def sell(self, t: int, inst: Inst, drug: Drug, boxes: list[Box], psn: str, *,
             raws: list[str] | None = None, med: Drug | None = None, expy: str | None = None,
             noise: str = "all") -> tuple[str, str, int]:
        """A whole-box 3505 of ``boxes``; returns (msgid, record number, business time)."""
        t = self.after(boxes, t)
        bch = self.bchno(inst, "XS", t)
        if raws is None:
            raws = [b.raw(self.rng) for b in boxes]
        body = self.sale_body(t, inst, drug, bch, psn, raws, boxes, med=med, expy=expy)
        msgid = self.emit(inst, "3505", t, body, boxes, noise)
        for box in boxes:
            box.last = (inst, t)
        return msgid, bch, t

    def count_stock(self, t: int, inst: Inst, drug: Drug, extra: list[Box]) -> str:
        """A 3501 count of the institution's unopened stock of ``drug`` (plus ``extra``)."""
        boxes = inst.stock.get(drug.idx, []) + extra
        t = self.after(boxes, t)
        body = {"invinfo": {
            "med_list_codg": drug.med, "fixmedins_bchno": self.bchno(inst, "PD", t),
            "invdate": self.date(t), "inv_cnt": len(boxes),
            "drugtracinfo": [{"drug_trac_codg": b.raw(self.rng)} for b in boxes]}}
        return self.emit(inst, "3501", t, body, boxes)

    # ------------------------------------------------------------------ legitimate traffic

    def allowed(self, psn: str, drug: Drug, n: int, t: int) -> int:
        """How many of ``n`` boxes a legitimate buyer takes: always under the HOARDING line."""
        history = self.hoard.setdefault((psn, drug.idx), [])
        recent = [(when, k) for when, k in history if when > t - WINDOW - DAY]
        history[:] = recent
        n = min(n, 8 - sum(k for _, k in recent))
        if n > 0:
            history.append((t, n))
        return n

    def legit_sale(self, t: int, inst: Inst, person: Person, drug: Drug, n: int) -> None:
        """A whole-box sale; sometimes returned later, or deleted (and maybe re-sent)."""
        n = self.allowed(person.psn, drug, n, t)
        if n <= 0:
            return
        boxes = self.take(t, inst, drug, n)
        msgid, bch, t = self.sell(t, inst, drug, boxes, person.psn)
        roll = self.rng.random()
        if roll < P_RETURN:
            later = self.opening(inst, t + self.rng.randint(HOUR, 3 * DAY))
            self.schedule(later, self.legit_return, inst, person, drug, boxes, bch)
        elif roll < P_RETURN + P_DELETE:
            self.schedule(t + self.rng.randint(600, 3 * HOUR), self.legit_delete,
                          inst, person, drug, boxes, bch, msgid)

    def legit_return(self, t: int, inst: Inst, person: Person, drug: Drug, boxes: list[Box],
                     bch: str) -> None:
        """The buyer brings back some boxes; they go back on the shelf and are sold again."""
        back = boxes[: self.rng.randint(1, len(boxes))]
        _, t = self.send_return(t, inst, drug, back, person.psn, bch)
        if self.rng.random() < 0.3:
            self.stock_in(self.after(back, t + 300), inst, drug, back)
        self.shelve(t, inst, drug, back)

    def send_return(self, t: int, inst: Inst, drug: Drug, boxes: list[Box], psn: str,
                    returns: str) -> tuple[str, int]:
        """A whole-box 3506 naming the sale ``returns``; (msgid, business time)."""
        t = self.after(boxes, t)
        body = self.sale_body(t, inst, drug, self.bchno(inst, "TH", t), psn,
                              [b.raw(self.rng) for b in boxes], boxes, returns=returns)
        return self.emit(inst, "3506", t, body, boxes), t

    def legit_delete(self, t: int, inst: Inst, person: Person, drug: Drug, boxes: list[Box],
                     bch: str, msgid: str) -> None:
        """3507 of a sale; usually the corrected sale is sent again under the same number."""
        t = self.after(boxes, t)
        body = {"data": {"fixmedins_bchno": bch, "inv_data_type": "4"}}
        self.emit(inst, "3507", t, body, boxes, "retry")
        rng = self.rng
        if rng.random() < 0.7:
            t2 = self.after(boxes, t + rng.randint(60, 1800))
            sel = self.sale_body(t2, inst, drug, bch, person.psn, [b.raw(rng) for b in boxes],
                                 boxes)
            self.emit(inst, "3505", t2, sel, boxes, "retry")
        else:
            self.schedule(self.after(boxes, t + 60), self.shelve, inst, drug, boxes)

    def shelve(self, t: int, inst: Inst, drug: Drug, boxes: list[Box]) -> None:
        """Boxes back on the shelf, first in line to be sold again."""
        inst.stock.setdefault(drug.idx, [])[:0] = boxes

    def split_sale(self, t: int, inst: Inst, person: Person, drug: Drug) -> None:
        """A hospital dispenses units from its open box, opening a new one when it runs out."""
        rng = self.rng
        units = rng.choice((2, 3, 4, 6, 6, 7, 8, 10, 12, 14, 14, 20, 21, 24, 28, 30))
        units = min(units, drug.pack)
        box = inst.opened.get(drug.idx)
        if box is None:
            box = self.take(t, inst, drug, 1)[0]
            box.left = drug.pack
        boxes = [box]
        if units > box.left:
            fresh = self.take(t, inst, drug, 1)[0]
            fresh.left = drug.pack - (units - box.left)
            box.left = 0
            boxes.append(fresh)
        else:
            box.left -= units
        last = boxes[-1]
        if last.left > 0:
            inst.opened[drug.idx] = last
        else:
            inst.opened.pop(drug.idx, None)
        t = self.after(boxes, t)
        body = self.sale_body(t, inst, drug, self.bchno(inst, "XS", t), person.psn,
                              [b.raw(rng) for b in boxes], boxes, split=True, count=units)
        self.emit(inst, "3505", t, body, boxes)

    def count_all(self, t: int, inst: Inst) -> None:
        """The weekly 3501 counts: one message per drug in stock (open boxes excluded)."""
        for idx in list(inst.stock):
            if inst.stock[idx]:
                self.count_stock(t, inst, self.drugs[idx], [])
                t += self.rng.randint(3, 30)

    def housekeeping(self, t: int, inst: Inst) -> None:
        """Other changes: boxes sent back to the supplier (3502 "102"), purchase returns,
        deletes of count records — counted by the platform, ignored by the rules."""
        rng = self.rng
        drugs = [idx for idx in inst.stock if inst.stock[idx]]
        if not drugs:
            return
        drug = self.drugs[rng.choice(drugs)]
        stock = inst.stock[drug.idx]
        boxes = stock[: rng.randint(1, 2)]
        del stock[: len(boxes)]
        t = self.after(boxes, t)
        kind = rng.choice(("102", "102", "103", "104"))
        body = {"invinfo": {
            "med_list_codg": drug.med, "fixmedins_bchno": self.bchno(inst, "KC", t),
            "inv_chg_type": kind, "inv_chg_time": self.fmt(t), "cnt": len(boxes),
            "trdn_flag": "0", "drugtracinfo": [{"drug_trac_codg": b.raw(rng)} for b in boxes]}}
        self.emit(inst, "3502", t, body, boxes)
        if kind == "102":  # sent back to the supplier: a purchase return too
            body = {"purinfo": {"med_list_codg": drug.med, "purc_retn_cnt": len(boxes),
                                "fixmedins_bchno": self.bchno(inst, "CT", t)}}
            self.emit(inst, "3504", t + 20, body, [])
        if rng.random() < 0.2:  # a count record withdrawn
            body = {"data": {"fixmedins_bchno": self.bchno(inst, "PD", t), "inv_data_type": "1"}}
            self.emit(inst, "3507", t + 60, body, [], "retry")

    def plan_day(self, day: int) -> None:
        """Push the day's legitimate actions."""
        rng = self.rng
        day0 = self.base + day * DAY
        for person, drug, n in self.refills.get(day, ()):
            where = person.pharmacy
            if person.hospital is not None and rng.random() < 0.2:
                where = person.hospital
            elif rng.random() < 0.1:
                where = rng.choice(self.by_city[person.city])
            self.schedule(self.in_hours(where, day0), self.legit_sale, where, person, drug, n)
        visits = int(len(self.people) * ACUTE_RATE * rng.uniform(0.85, 1.15))
        for _ in range(visits):
            person = rng.choice(self.people)
            where = person.pharmacy if rng.random() < 0.6 else rng.choice(self.by_city[person.city])
            t = self.in_hours(where, day0)
            for line in range(1 if rng.random() < 0.8 else 2):
                self.schedule(t + line * 7, self.legit_sale, where, person, rng.choice(self.acute),
                              rng.choice(BOXES))
        for hospital in self.hospitals:
            patients = self.people_by_city.get(hospital.city) or self.people
            for _ in range(int(hospital.size * SPLIT_RATE * rng.uniform(0.8, 1.2))):
                self.schedule(self.in_hours(hospital, day0), self.split_sale, hospital,
                              rng.choice(patients), rng.choice(self.splittable))
            for _ in range(int(hospital.size * HOSP_WHOLE_RATE * rng.uniform(0.8, 1.2))):
                self.schedule(self.in_hours(hospital, day0), self.legit_sale, hospital,
                              rng.choice(patients), rng.choice(self.hosp_whole), rng.randint(1, 3))
        for inst in self.insts:
            if inst.count_day == day % 7:
                late = 3 * HOUR if inst.close == DAY else inst.close + rng.randint(900, 3600)
                when = day0 + late
                self.schedule(when, self.count_all, inst)
            if rng.random() < 0.05:
                self.schedule(self.in_hours(inst, day0), self.housekeeping, inst)

    # ------------------------------------------------------------------ fraud arcs

    def plan_arcs(self) -> None:
        """Spread each kind of arc over the run: rate × days × scale, at least one."""
        rng = self.rng
        for kind, rate in ARC_RATES:
            n = max(1, round(rate * self.scale * self.days))
            # Arcs that take days start early enough to finish inside the run.
            last = self.days - 6 if kind in LONG_ARCS else self.days
            for _ in range(n):
                day0 = self.base + rng.randrange(max(1, last)) * DAY
                self.schedule(day0 + rng.randint(9 * HOUR, 11 * HOUR), getattr(self, f"arc_{kind}"))
                self.arcs[kind] += 1

    def pick(self, city: str | None = None, exclude: tuple[Inst, ...] = ()) -> Inst:
        """A pharmacy (in ``city``), not one of ``exclude``."""
        choices = [p for p in self.by_city[city] if p not in exclude] if city else self.pharmacies
        return self.rng.choice(choices or self.pharmacies)

    def later(self, t: int, low: int, high: int) -> int:
        """``t`` plus a gap in [low, high], squeezed to fit the run (may still fall outside)."""
        gap = int(self.rng.randint(low, high) * self.pace)
        room = self.end - 3 * HOUR - t
        if gap > room:
            gap = max(low // 4, room)
        return t + gap

    def dup_severity(self, box: Box, inst: Inst, t: int) -> str:
        """SPEC §4 grading against the box's latest standing sale."""
        assert box.last is not None
        prev, when = box.last
        if prev is inst:
            return "medium"
        if prev.city != inst.city and t - when <= 24 * HOUR:
            return "critical"
        return "high"

    def resell(self, t: int, inst: Inst, drug: Drug, boxes: list[Box], note: str) -> None:
        """A second sale of boxes whose first sale stands: one DUPLICATE_SALE per box."""
        t = self.opening(inst, self.after(boxes, t))
        grades = [self.dup_severity(b, inst, t) for b in boxes]
        psn = self.fraud_person()
        msgid, _, t = self.sell(t, inst, drug, boxes, psn)
        for box, grade in zip(boxes, grades, strict=True):
            self.label("DUPLICATE_SALE", msgid, box.code, psn, note, grade)

    def first_sale(self, t: int, drugs: list[Drug], n: int) -> tuple[Inst, Drug, list[Box], int]:
        """The honest-looking sale an arc starts from: (pharmacy, drug, boxes, time)."""
        seller = self.pick()
        drug = self.rng.choice(drugs)
        t = self.opening(seller, t)
        boxes = self.take(t, seller, drug, n)
        _, _, t = self.sell(t, seller, drug, boxes, self.fraud_person())
        return seller, drug, boxes, t

    def arc_ring(self, t: int) -> None:
        """回流: bought at one pharmacy, resold days later at another in the same city."""
        rng = self.rng
        seller, drug, boxes, t = self.first_sale(t, self.acute + self.expensive, rng.randint(1, 3))
        buyer = self.pick(seller.city, (seller,))
        when = self.opening(buyer, self.later(t, 2 * DAY, 8 * DAY))
        if rng.random() < 0.5:
            self.schedule(when, self.flowback_in, buyer, drug, boxes, True, "回流药混入到货后再售")
        else:
            self.schedule(when, self.resell, buyer, drug, boxes, "回流：同城另一药店再次销售")

    def flowback_in(self, t: int, inst: Inst, drug: Drug, boxes: list[Box], resale: bool,
                    note: str) -> None:
        """Sold boxes show up in stock: a delivery (3502 "101") or a count (3501)."""
        rng = self.rng
        if rng.random() < 0.5:
            fresh = self.new_boxes(drug, rng.randint(4, 12), t)
            mixed = fresh + boxes
            rng.shuffle(mixed)
            t = self.after(mixed, t)
            msgid = self.stock_in(t, inst, drug, mixed)
            inst.stock.setdefault(drug.idx, []).extend(fresh)
        else:
            t = self.after(boxes + inst.stock.get(drug.idx, []), t)
            msgid = self.count_stock(t, inst, drug, boxes)
        for box in boxes:
            self.label("FLOWBACK", msgid, box.code, None, note, "high")
        if resale:
            when = self.opening(inst, self.later(t, 3 * HOUR, 2 * DAY))
            self.schedule(when, self.resell, inst, drug, boxes, note + "（入库后再售）")

    def arc_clone(self, t: int) -> None:
        """克隆码: the same code sold in two cities within hours."""
        rng = self.rng
        seller, drug, boxes, t = self.first_sale(t, self.acute + self.chronic, 1)
        city = rng.choice([c for c in self.cities if c != seller.city])
        other = self.pick(city)
        when = min(t + rng.randint(2 * HOUR, 9 * HOUR), t - t % DAY + 20 * HOUR + 1800)
        self.schedule(max(when, t + HOUR), self.resell, other, drug, boxes,
                      "克隆码：异地 24 小时内再次销售")

    def arc_twice(self, t: int) -> None:
        """One pharmacy sells one box twice."""
        seller, drug, boxes, t = self.first_sale(t, self.acute + self.chronic, 1)
        when = self.opening(seller, self.later(t, HOUR, 3 * DAY))
        self.schedule(when, self.resell, seller, drug, boxes, "同一药店重复销售同一盒")

    def arc_flowback(self, t: int) -> None:
        """A sold box is counted in stock later (at the seller or another pharmacy)."""
        rng = self.rng
        drugs = self.acute + self.chronic + self.expensive
        seller, drug, boxes, t = self.first_sale(t, drugs, rng.randint(1, 2))
        where = seller if rng.random() < 0.3 else self.pick(seller.city, (seller,))
        when = self.opening(where, self.later(t, DAY, 5 * DAY))
        self.schedule(when, self.flowback_in, where, drug, boxes, rng.random() < 0.4,
                      "已售药品重新出现在库存中")

    def arc_substitution(self, t: int) -> None:
        """串换: a cheap box billed as a dear drug (catalog), or an enterprise-coded box
        rebilled as another drug after a return (first billed drug)."""
        rng = self.rng
        seller = self.pick()
        t = self.opening(seller, t)
        if rng.random() < 0.75:
            cheap = rng.choice(self.catalogued)
            dear = rng.choice([d for d in self.expensive if d.med != cheap.med])
            boxes = self.take(t, seller, cheap, rng.randint(1, 2))
            psn = self.fraud_person()
            msgid, _, _ = self.sell(t, seller, cheap, boxes, psn, med=dear)
            for box in boxes:
                self.label("SUBSTITUTION", msgid, box.code, psn,
                           f"{cheap.name}按{dear.name}结算", "high")
            return
        first = rng.choice(self.enterprise)
        boxes = self.take(t, seller, first, 1)
        psn = self.fraud_person()
        _, bch, t = self.sell(t, seller, first, boxes, psn)
        back = self.opening(seller, self.later(t, 2 * HOUR, DAY))
        self.schedule(back, self.rebill_return, seller, first, boxes, psn, bch)

    def rebill_return(self, t: int, inst: Inst, drug: Drug, boxes: list[Box], psn: str,
                      bch: str) -> None:
        """The enterprise-coded box comes back, then is sold again under another drug."""
        _, t = self.send_return(t, inst, drug, boxes, psn, bch)
        other = self.rng.choice([d for d in self.enterprise + self.expensive if d is not drug])
        self.schedule(self.opening(inst, self.later(t, 2 * HOUR, 2 * DAY)), self.rebill,
                      inst, drug, other, boxes)

    def rebill(self, t: int, inst: Inst, drug: Drug, other: Drug, boxes: list[Box]) -> None:
        """Second sale of a returned enterprise-coded box, billed as ``other``."""
        psn = self.fraud_person()
        msgid, _, _ = self.sell(t, inst, drug, boxes, psn, med=other)
        self.label("SUBSTITUTION", msgid, boxes[0].code, psn,
                   f"退货后改按{other.name}结算（首次按{drug.name}）", "high")

    def arc_split(self, t: int) -> None:
        """拆零超量: split sales of one box adding up to more than the box holds."""
        rng = self.rng
        hospital = rng.choice(self.hospitals)
        drug = rng.choice(self.splittable)
        box = self.take(t, hospital, drug, 1)[0]
        pack = drug.pack
        first = rng.randint(pack // 3, pack // 2)
        second = rng.randint(1, pack - first)
        rest = pack - first - second
        plan = [first, second, rng.randint(rest + 1, rest + pack // 2)]
        self.schedule(self.opening(hospital, t), self.split_step, hospital, drug, box, plan, 0)

    def split_step(self, t: int, inst: Inst, drug: Drug, box: Box, plan: list[int],
                   step: int) -> None:
        """One split sale of the overdispense arc; the last one crosses the box."""
        t = self.after([box], t)
        psn = self.fraud_person()
        body = self.sale_body(t, inst, drug, self.bchno(inst, "XS", t), psn, [box.raw(self.rng)],
                              [box], split=True, count=plan[step])
        msgid = self.emit(inst, "3505", t, body, [box])
        if step == len(plan) - 1:
            self.label("SPLIT_OVERDISPENSE", msgid, box.code, psn,
                       f"一盒{drug.pack}单位，拆零累计{sum(plan)}单位", "high")
            return
        when = self.opening(inst, self.later(t, HOUR, 20 * HOUR))
        self.schedule(when, self.split_step, inst, drug, box, plan, step + 1)

    def arc_hoarding(self, t: int) -> None:
        """囤药: one person buys one drug at several pharmacies until the threshold."""
        rng = self.rng
        city = rng.choice([c for c in self.cities if len(self.by_city[c]) >= 3])
        shops = rng.sample(self.by_city[city], min(4, len(self.by_city[city])))
        drug = rng.choice(self.chronic + self.expensive)
        plan = {"psn": self.fraud_person(), "shops": shops, "boxes": 0, "seen": [],
                "visit": 0, "done": False, "bought": []}
        self.schedule(self.opening(shops[0], t), self.hoard_visit, drug, plan)

    def hoard_visit(self, t: int, drug: Drug, plan: dict[str, Any]) -> None:
        """One purchase of the hoarding arc."""
        rng = self.rng
        shops: list[Inst] = plan["shops"]
        shop = shops[plan["visit"] % len(shops)]
        boxes = self.take(t, shop, drug, rng.randint(2, 5))
        msgid, _, t = self.sell(self.opening(shop, t), shop, drug, boxes, plan["psn"])
        plan["visit"] += 1
        plan["boxes"] += len(boxes)
        plan["bought"].extend(boxes)
        if shop not in plan["seen"]:
            plan["seen"].append(shop)
        if plan["done"]:
            return  # one more purchase after the alert: no second alert within 30 days
        if plan["boxes"] >= 10 and len(plan["seen"]) >= 3:
            plan["done"] = True
            self.label("HOARDING", msgid, None, plan["psn"],
                       f"{len(plan['seen'])} 家药店共 {plan['boxes']} 盒 {drug.name}", "high")
            if rng.random() < 0.5:
                self.schedule(self.later(t, DAY, 3 * DAY), self.hoard_visit, drug, plan)
            if rng.random() < 0.4:
                dealer = self.pick(shop.city)
                resold = plan["bought"][:2]
                when = self.opening(dealer, self.later(t, 2 * DAY, 5 * DAY))
                self.schedule(when, self.flowback_in, dealer, drug, resold, True, "囤药后倒卖回流")
            return
        self.schedule(self.opening(shops[plan["visit"] % len(shops)],
                                   self.later(t, 4 * HOUR, 3 * DAY)),
                      self.hoard_visit, drug, plan)

    def arc_expired(self, t: int, edge: bool = False) -> None:
        """Boxes of an expired lot enter stock in the morning and are sold that day; with
        ``edge``, sold on the expiry day itself, which is fine (no label)."""
        rng = self.rng
        seller = self.pick()
        drug = rng.choice(self.acute + self.chronic)
        t = self.opening(seller, t)
        expy = self.date(t - (0 if edge else rng.randint(1, 120) * DAY))
        lot = f"{drug.idx:02d}OLD{rng.randrange(99):02d}"
        boxes = self.new_boxes(drug, rng.randint(1, 2), t, lot, expy)
        self.stock_in(t - HOUR, seller, drug, boxes)
        psn = self.fraud_person()
        msgid, _, _ = self.sell(t + rng.randint(600, 2 * HOUR), seller, drug, boxes, psn)
        for box in [] if edge else boxes:
            self.label("EXPIRED_SALE", msgid, box.code, psn, f"有效期至 {expy}", "medium")

    def arc_edge(self, t: int) -> None:
        """Not fraud: boxes sold on their expiry day itself (no alert expected)."""
        self.arc_expired(t, edge=True)

    def arc_barcode(self, t: int) -> None:
        """The product barcode scanned in place of one box's trace code."""
        rng = self.rng
        seller = self.pick()
        drug = rng.choice(self.acute + self.chronic)
        t = self.opening(seller, t)
        boxes = self.take(t, seller, drug, rng.randint(1, 3))
        raws = [b.raw(rng) for b in boxes]
        raws[rng.randrange(len(raws))] = drug.barcode
        if rng.random() < 0.2:
            msgid = self.stock_in(self.after(boxes, t), seller, drug, boxes[1:], (drug.barcode,))
            self.label("BARCODE_AS_TRACE_CODE", msgid, drug.barcode, None, "入库扫了商品条码",
                       "low")
            inst_stock = seller.stock.setdefault(drug.idx, [])
            inst_stock.extend(boxes[1:])
            return
        psn = self.fraud_person()
        msgid, _, _ = self.sell(t, seller, drug, boxes, psn, raws=raws)
        self.label("BARCODE_AS_TRACE_CODE", msgid, drug.barcode, psn, "销售扫了商品条码", "low")

    def arc_invalid(self, t: int) -> None:
        """A mis-scanned code: wrong GS1 check digit, truncated, or illegal characters."""
        rng = self.rng
        seller = self.pick()
        drug = rng.choice(self.drugs[:48])
        t = self.opening(seller, t)
        boxes = self.take(t, seller, drug, rng.randint(1, 2))
        box = boxes[0]
        if drug.family == "gs1":
            assert drug.key is not None
            wrong = drug.key[:-1] + str((int(drug.key[-1]) + rng.randint(1, 9)) % 10)
            serial = _serial_text(box.serial)
            bad = f"(01){wrong}(21){serial}" if rng.random() < 0.5 else f"01{wrong}21{serial}"
            note = "GS1 校验位错误"
        elif rng.random() < 0.5:
            bad, note = box.code[: rng.randint(4, 7)], "扫码截断"
        else:
            cut = rng.randint(3, len(box.code) - 3)
            bad = box.code[:cut] + rng.choice(("-", "?", "＊", "O-", "码")) + box.code[cut:]
            note = "含非法字符"
        raws = [bad] + [b.raw(rng) for b in boxes[1:]]
        psn = self.fraud_person()
        msgid, _, _ = self.sell(t, seller, drug, boxes, psn, raws=raws)
        self.label("INVALID_CODE", msgid, bad.strip(), psn, note, "low")

    def arc_return(self, t: int) -> None:
        """A return of a box this pharmacy never sold (from its shelf, or sold elsewhere)."""
        rng = self.rng
        inst = self.pick()
        drug = rng.choice(self.acute + self.chronic)
        t = self.opening(inst, t)
        boxes = self.take(t, inst, drug, 1)
        note = "退货的药品在本店没有销售记录"
        if rng.random() < 0.4:
            other = self.pick(inst.city, (inst,))
            _, _, t = self.sell(self.opening(other, t), other, drug, boxes, self.fraud_person())
            t = self.opening(inst, self.later(t, 2 * HOUR, 2 * DAY))
            note = "在别的药店售出的药品到本店退货"
        self.schedule(t, self.fake_return, inst, drug, boxes, note)

    def fake_return(self, t: int, inst: Inst, drug: Drug, boxes: list[Box], note: str) -> None:
        """The 3506 of the return-without-sale arc."""
        psn = self.fraud_person()
        fake = f"XS{self.date(t - 3 * DAY).replace('-', '')}{self.rng.randrange(10**7):07d}"
        msgid, _ = self.send_return(t, inst, drug, boxes, psn, fake)
        self.label("RETURN_WITHOUT_SALE", msgid, boxes[0].code, psn, note, "medium")

    # ------------------------------------------------------------------ the run

    def run_until(self, t_end: int) -> None:
        """Run every action before ``t_end``."""
        heap = self.heap
        while heap and heap[0][0] < t_end:
            t, _, fn, args = heapq.heappop(heap)
            fn(t, *args)

    def flush(self, handle: Any, before: int | None) -> int:
        """Write the messages that arrived before ``before`` (all when None), in order."""
        self.out.sort()
        cut = len(self.out)
        if before is not None:
            cut = next((i for i, item in enumerate(self.out) if item[0] >= before), cut)
        handle.write(b"".join(raw + b"\n" for _, _, raw in self.out[:cut]))
        del self.out[:cut]
        return cut


def write_catalog(path: Path, drugs: list[Drug]) -> None:
    """The catalog CSV of SPEC §3 (enterprise-coded drugs have no product key)."""
    lines = ["product_key,med_list_codg,drug_name,pack_units"]
    lines += [f"{d.key},{d.med},{d.name},{d.pack}" for d in drugs if d.key is not None]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def simulate(out_dir: Path, *, seed: int, days: int, institutions: int = 200,
             people: int = 20000, start: str = "2026-11-01",
             progress: bool = False) -> SimulationSummary:
    """Write ``messages.jsonl``, ``catalog.csv`` and ``labels.jsonl`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    world = World(random.Random(seed), start, days, institutions, people)
    write_catalog(out_dir / "catalog.csv", world.drugs)
    world.plan_arcs()
    summary = SimulationSummary(out_dir, days)
    with (out_dir / "messages.jsonl").open("wb") as handle:
        for day in range(days):
            world.plan_day(day)
            day_end = world.base + (day + 1) * DAY
            world.run_until(day_end)
            summary.messages += world.flush(handle, None if day == days - 1 else day_end)
            if progress:
                print(f"tracewatch simulate: day {day + 1}/{days}, {summary.messages} messages",
                      file=sys.stderr)
        summary.messages += world.flush(handle, None)
    world.labels.sort(key=lambda item: (item[0], item[1]))
    with (out_dir / "labels.jsonl").open("wb") as handle:
        handle.write(b"".join(orjson.dumps(item[2]) + b"\n" for item in world.labels))
    summary.labels = Counter(item[2]["rule"] for item in world.labels)
    summary.boxes = world.summary_boxes
    summary.arcs = world.arcs
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tracewatch simulate`` options."""
    parser.add_argument("--seed", type=int, required=True,
                        help="random seed (the same seed writes the same files)")
    parser.add_argument("--days", type=int, default=1, help="simulated days (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--institutions", type=int, default=200, help="pharmacies and hospitals")
    parser.add_argument("--people", type=int, default=20000, help="insured people")
    parser.add_argument("--start", default="2026-11-01", help="first day, YYYY-MM-DD")
    parser.add_argument("--no-progress", action="store_true", help="no per-day progress lines")


def run(args: argparse.Namespace) -> int:
    """``tracewatch simulate``: write the files, print a summary to stderr."""
    began = _time.perf_counter()
    summary = simulate(args.out, seed=args.seed, days=args.days, institutions=args.institutions,
                       people=args.people, start=args.start, progress=not args.no_progress)
    seconds = _time.perf_counter() - began
    rules = ", ".join(f"{rule} {n}" for rule, n in sorted(summary.labels.items()))
    print(
        f"tracewatch simulate: {summary.messages} messages, {summary.boxes} boxes, "
        f"{sum(summary.labels.values())} labelled alerts ({rules}) in {args.out} "
        f"in {seconds:.1f} s ({summary.messages / max(seconds, 1e-9):,.0f} messages/s)",
        file=sys.stderr,
    )
    return 0
