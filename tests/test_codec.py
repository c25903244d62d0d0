"""The compact codec of the Redis ledger: exact round trips of random states, small sizes for
typical ones, and codes that map to distinct (bucket, field) slots."""

from __future__ import annotations

import calendar
import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import pytest

from detectors.code_ledger import message_fingerprint, record_fingerprint
from detectors.hoarding import HoardingLink, PersonState, Purchase
from detectors.messages import parse
from detectors.model import CodeState, SaleRecord, fingerprint
from streams import codec
from streams.codec import (
    DAY_STAMP_MAX,
    EPOCH,
    CodecError,
    MemoryInterner,
    code_of_slot,
    code_slot,
    code_slots,
    codes_day,
    day_stamp,
    pack_code_state,
    pack_codes,
    pack_link,
    pack_person_state,
    unpack_code_state,
    unpack_codes,
    unpack_link,
    unpack_person_state,
)
from streams.ledger import MemoryLedger
from streams.pipeline import Pipeline
from tests import factory

NOW = 1_793_524_350  # 2026-11-01 09:12:30, business time
INSTITUTIONS = ("P51010400011", "H51010700002", "P50010300077", "X", "", "药房01")
DRUGS = ("XA10BAE054A001010101445", "XJ01CAA040A001010100001", "", "药")


def _text(rng: random.Random) -> str:
    """Mostly NHSA-like ASCII, sometimes digits only, empty, long or not ASCII at all."""
    return rng.choice([
        lambda: f"XS{rng.randrange(10**8):08d}",
        lambda: f"S{rng.randrange(10**4)}",
        lambda: str(rng.randrange(10**30)).zfill(rng.randrange(1, 35)),
        lambda: "",
        lambda: "R-" + "".join(rng.choice("abcXYZ09") for _ in range(rng.randrange(12))),
        lambda: "单号" + str(rng.randrange(1000)),
        lambda: "\U0001f48a" * rng.randrange(3) + "007",
        lambda: "0" * rng.randrange(1, 25),
    ])()


def _record(rng: random.Random, moment: int) -> str:
    """A record number: often dated near the sale (prefix, ``YYYYmmdd``, sequence), else
    anything :func:`_text` makes, or a date with no sequence, an impossible date, a date far
    from the sale and more digits than a dated form holds."""
    day = moment + 86_400 * rng.choice([0, 0, 0, -1, 1, -40, 400, rng.randrange(-10**4, 10**4)])
    date = codec.time.strftime("%Y%m%d", codec.time.gmtime(max(day, 0)))
    return rng.choice([
        lambda: f"XS{date}{rng.randrange(10**8):08d}",
        lambda: f"{date}{rng.randrange(10**4)}",
        lambda: f"单号{date}" + str(rng.randrange(10**19)).zfill(rng.randrange(1, 20)),
        lambda: f"XS{date}",
        lambda: f"XS{date}" + "9" * rng.randrange(20, 23),
        lambda: "TH20260229" + "0001",  # 2026 is not a leap year: not a date
        lambda: "XS19700101" + "0001",  # before the dated form's first year
        lambda: "XS99991231" + "0001",
        lambda: _text(rng),
    ])()


def _msgid(rng: random.Random, institution: str, moment: int) -> str:
    stamp = codec.time.strftime("%Y%m%d%H%M%S",
                                codec.time.gmtime(moment + rng.randrange(-7200, 86400)))
    return rng.choice([
        lambda: institution + stamp + f"{rng.randrange(10**5):05d}",
        lambda: institution + stamp,
        lambda: institution + stamp + str(rng.randrange(10**19)).zfill(19),
        lambda: stamp + "000",
        lambda: institution + "20261301000000" + "00001",  # not a date
        lambda: institution + "20260229120000",  # 2026 is not a leap year
        lambda: institution + _text(rng),
        lambda: f"M{rng.randrange(10**6):06d}",
        lambda: "EX-0001",
        lambda: "",
    ])()


def _float(rng: random.Random) -> float:
    return rng.choice([
        lambda: 1.0,
        lambda: 0.75,
        lambda: rng.randrange(100_000) / 100,
        lambda: rng.random() * 1000,
        lambda: 10 / 3,
        lambda: 0.0,
        lambda: -0.0,
        lambda: -12.5,
        lambda: 1e300,
        lambda: float(rng.randrange(48)),
    ])()


def _time(rng: random.Random) -> int:
    return rng.choice([
        lambda: NOW + rng.randrange(-86_400 * 400, 3600),
        lambda: EPOCH,
        lambda: 0,
        lambda: EPOCH - 1,
        lambda: EPOCH + (1 << 32),
        lambda: -rng.randrange(10**12),
    ])()


def _psn(rng: random.Random) -> str | None:
    return rng.choice([
        lambda: f"{rng.randrange(1 << 64):016x}",
        lambda: None,
        lambda: "ABCDEF0123456789",  # upper case: not the model's form
        lambda: "not-a-hash",
    ])()


def _print(rng: random.Random) -> str:
    if rng.random() < 0.9:
        return f"{rng.randrange(1 << 48):012x}"
    return rng.choice(["", "xyz", "0123456789AB", "编号"])


def random_sale(rng: random.Random, last_time: int) -> SaleRecord:
    institution = rng.choice(INSTITUTIONS)
    admvs = rng.choice([institution[1:7], "510104", "", "99"])
    moment = last_time - rng.choice([0, 0, 1, 86_400, rng.randrange(10**8), -5])
    return SaleRecord(
        fixmedins_code=institution,
        mdtrtarea_admvs=admvs,
        bchno=_record(rng, moment),
        msgid=_msgid(rng, institution, moment),
        time=moment,
        psn_hash=_psn(rng),
        med_list_codg=rng.choice([*DRUGS, None]),
        split=rng.random() < 0.3,
        units=_float(rng),
        amount=_float(rng),
    )


def random_code_state(rng: random.Random) -> CodeState:
    last_time = _time(rng)
    sales = tuple(random_sale(rng, last_time) for _ in range(rng.choice([0, 1, 1, 2, 3, 9])))
    derived = [p for s in sales for p in (message_fingerprint(s.msgid),
                                          record_fingerprint(s.fixmedins_code, "3505", s.bchno))]
    applied = rng.choice([
        lambda: tuple(derived),
        lambda: (*rng.sample(derived, len(derived)), _print(rng)),
        lambda: tuple(_print(rng) for _ in range(rng.randrange(17))),
        lambda: (),
    ])()
    first_drug, first_ref = rng.choice([
        lambda: (sales[0].med_list_codg, fingerprint(sales[0].fixmedins_code, sales[0].bchno))
        if sales else (None, None),
        lambda: (rng.choice(DRUGS), _print(rng)),
        # A box sold again keeps its first sale's drug and record fingerprint (layout 4).
        lambda: (sales[0].med_list_codg if sales else rng.choice(DRUGS),
                 rng.choice(applied) if applied else None),
        lambda: (rng.choice(DRUGS), applied[-1] if applied else _print(rng)),
        lambda: (rng.choice(DRUGS), None),
        lambda: (None, _print(rng)),
        lambda: (None, None),
    ])()
    return CodeState(
        sales=sales,
        first_drug=first_drug,
        first_drug_ref=first_ref,
        applied=applied,
        flowback_seen=tuple(_print(rng) for _ in range(rng.choice([0, 0, 1, 8]))),
        last_time=last_time,
    )


def random_code(rng: random.Random) -> str:
    return rng.choice([
        lambda: str(rng.randrange(10**20)).zfill(20),
        lambda: f"(01){rng.randrange(10**14):014d}(21){_text(rng) or 'A1'}",
        lambda: "ENT" + str(rng.randrange(10**9)),
        lambda: "Z" * rng.randrange(1, 101),
        lambda: "(01)06901234567892(21)" + "S" * 30,
        lambda: "药品追溯码" + str(rng.randrange(100)),
        lambda: f"(01){rng.randrange(10**14):014d}(21){chr(65 + rng.randrange(26))}"
                f"{rng.randrange(10**9):0{rng.randrange(1, 12)}d}",
        lambda: f"ZY{rng.randrange(100):02d}{rng.randrange(10**rng.randrange(1, 30)):012d}",
        lambda: str(rng.randrange(10**rng.randrange(1, 40))).zfill(rng.randrange(1, 40)),
    ])()


def random_person_state(rng: random.Random) -> PersonState:
    base = _time(rng)
    purchases = []
    for _ in range(rng.choice([0, 1, 3, 12])):
        sale = random_sale(rng, base)
        purchases.append(Purchase(
            code=random_code(rng),
            fixmedins_code=sale.fixmedins_code,
            mdtrtarea_admvs=sale.mdtrtarea_admvs,
            bchno=sale.bchno,
            msgid=sale.msgid,
            time=sale.time,
            amount=sale.amount,
        ))
    alert = rng.choice([None, base, base - 86_400, _time(rng)])
    return PersonState(purchases=tuple(purchases), last_alert_time=alert)


def _fresh(text: str) -> str:
    """An equal string that is another object (states read back or parsed apart share none)."""
    return "".join(list(text)) if len(text) > 1 else text


def _copy_sale(sale: SaleRecord) -> SaleRecord:
    return SaleRecord(_fresh(sale.fixmedins_code), _fresh(sale.mdtrtarea_admvs),
                      _fresh(sale.bchno), _fresh(sale.msgid), sale.time, sale.psn_hash,
                      sale.med_list_codg, sale.split, sale.units, sale.amount)


def _near_sale(rng: random.Random, sale: SaleRecord) -> SaleRecord:
    """The sale with one field changed, or with a float's sign flipped when it is zero."""
    field = rng.choice(["fixmedins_code", "mdtrtarea_admvs", "bchno", "msgid", "time",
                        "psn_hash", "med_list_codg", "split", "units", "amount"])
    value = getattr(sale, field)
    if isinstance(value, bool):
        changed: object = not value
    elif isinstance(value, float):
        changed = -value if value == 0.0 else value + 0.01
    elif isinstance(value, int):
        changed = value + 1
    else:
        changed = (value or "") + "1"
    return replace(sale, **{field: changed})


def code_state_variant(rng: random.Random, state: CodeState) -> CodeState:
    """The same fields in new objects, or one field of the state or of a sale changed."""
    sales = tuple(_copy_sale(sale) for sale in state.sales)
    copy = CodeState(sales, state.first_drug, state.first_drug_ref,
                     tuple(_fresh(p) for p in state.applied), state.flowback_seen,
                     state.last_time)
    choice = rng.randrange(6)
    if choice == 0 or (choice == 1 and not sales):
        return copy
    if choice == 1:
        index = rng.randrange(len(sales))
        return replace(copy, sales=(*sales[:index], _near_sale(rng, sales[index]),
                                    *sales[index + 1:]))
    if choice == 2:
        return replace(copy, last_time=copy.last_time + 1)
    if choice == 3:
        return replace(copy, first_drug_ref=_print(rng), applied=(*copy.applied, _print(rng)))
    if choice == 4:
        return replace(copy, flowback_seen=(*copy.flowback_seen, _print(rng)),
                       first_drug=rng.choice([*DRUGS, None]))
    return replace(copy, sales=sales[:-1]) if sales else copy


def person_state_in_runs(rng: random.Random) -> PersonState:
    """Purchases as the person ledger holds them: the boxes of one message in a row, with
    the same origin and amount, now and then a neighbour that differs in one of them."""
    base = _time(rng)
    purchases: list[Purchase] = []
    for _ in range(rng.choice([1, 2, 4])):
        sale = random_sale(rng, base)
        if rng.random() < 0.2:
            sale = replace(sale, amount=rng.choice([0.0, -0.0]))
        for box in range(rng.choice([1, 2, 3, 6])):
            origin = _near_sale(rng, sale) if box and rng.random() < 0.3 else _copy_sale(sale)
            purchases.append(Purchase(random_code(rng), origin.fixmedins_code,
                                      origin.mdtrtarea_admvs, origin.bchno, origin.msgid,
                                      origin.time, origin.amount))
    return PersonState(tuple(purchases), rng.choice([None, base]))


def typical_state(serial: int = 1) -> CodeState:
    """One standing whole-box sale, as the ledger holds most codes."""
    institution = "P51010400011"
    bchno = f"XS{serial:08d}"
    msgid = f"{institution}20261101091245{serial % 100_000:05d}"
    sale = SaleRecord(institution, "510104", bchno, msgid, NOW, "0123456789abcdef",
                      "XA10BAE054A001010101445", False, 1.0, 12.5)
    return CodeState(
        sales=(sale,),
        first_drug=sale.med_list_codg,
        first_drug_ref=fingerprint(institution, bchno),
        applied=(message_fingerprint(msgid), record_fingerprint(institution, "3505", bchno)),
        last_time=NOW,
    )


# --------------------------------------------------------------------------- round trips


def test_random_code_states_round_trip_exactly() -> None:
    rng = random.Random(20261101)
    interner = MemoryInterner()
    for _ in range(3000):
        state = random_code_state(rng)
        packed = pack_code_state(state, interner)
        assert packed
        assert unpack_code_state(packed, interner) == state


def test_a_shared_state_reference_is_never_a_packed_state() -> None:
    """The Redis ledger tells a code's reference to a shared state from its own packed state
    by the first byte alone: no packed state may start with it, and reading one as a state
    must fail rather than invent one."""
    rng = random.Random(5)
    interner = MemoryInterner()
    states = [random_code_state(rng) for _ in range(3000)]
    states += [CodeState(sales=(), first_drug=None, first_drug_ref=None, applied=(),
                         flowback_seen=(), last_time=0),
               typical_state(1), typical_state(2)]
    assert all(pack_code_state(state, interner)[0] != codec.SHARED_REF for state in states)
    short = [packed for packed in map(lambda state: pack_code_state(state, interner), states)
             if len(packed) <= codec.SHARED_DECIMAL_SIZE]
    assert short and all(packed[:1] != b"-" for packed in short)
    # The shortest state whose header byte is "-": five sales of nothing, a first drug.
    bare = SaleRecord("", "", "", "", codec.EPOCH, None, None, False, 1.0, 0.0)
    five = CodeState(sales=(bare,) * 5, first_drug="X", first_drug_ref=None,
                     applied=tuple(codec._sale_prints((bare,) * 5)), flowback_seen=(),
                     last_time=codec.EPOCH)
    packed_five = pack_code_state(five, interner)
    assert packed_five[:1] == b"-" and len(packed_five) >= 33 > codec.SHARED_DECIMAL_SIZE
    for serial in (0, 1, 9, 10, 255, 256, 65_535, (1 << 23) - 1, (1 << 31) - 1, 1 << 31,
                   1 << 32, (1 << codec.SHARED_SERIAL_BITS) - 1):
        reference = codec.shared_ref(serial)
        if serial < 1 << 31:
            assert reference == b"-" + str(serial).encode()
            assert len(reference) <= codec.SHARED_DECIMAL_SIZE
        else:
            assert len(reference) == 1 + -(-serial.bit_length() // 8) <= codec.SHARED_REF_SIZE
        assert codec.shared_serial(reference) == serial
        with pytest.raises(CodecError):
            unpack_code_state(reference, interner)
    assert codec.shared_serial(pack_code_state(typical_state(1), interner)) is None


def test_packed_bytes_are_those_of_the_layout() -> None:
    """Speed-ups of the codec must not change a byte: the digest of many packed values and
    code slots (all four forms of fields), as the codec of layout 5 writes them."""
    rng = random.Random(77)
    interner = MemoryInterner()
    digest = hashlib.sha256()
    for serial in range(300):
        digest.update(pack_code_state(random_code_state(rng), interner))
        digest.update(pack_code_state(typical_state(serial), interner))
    for _ in range(100):
        digest.update(pack_person_state(random_person_state(rng), interner))
    for _ in range(100):
        digest.update(pack_person_state(person_state_in_runs(rng), interner))
    codes = [random_code(rng) for _ in range(300)]
    digest.update(pack_codes(codes, 1234))
    gtin_ids = gtin_ids_of(codes)
    for bits in (4, 16):
        for code in codes:
            for packed in (False, True):
                bucket, field = code_slot(code, bits, packed)
                digest.update(bucket.to_bytes(4, "big") + field)
            bucket, field = codec.narrow_code_slot(code, bits)
            digest.update(bucket.to_bytes(4, "big") + field)
            bucket, field = codec.interned_code_slot(code, bits, gtin_ids)
            digest.update(bucket.to_bytes(4, "big") + field)
    assert digest.hexdigest() == (
        "cde08ff30fec03537bffeb02d1946a1a751c3bcbc6b9a7973945a9b088943d8d")


@pytest.mark.parametrize(("record", "days_after", "size"), [
    ("XS2026110200014375", 0, 6),  # prefix, the sale's day, an 8-digit sequence: text took 11
    ("XS2026110200014375", 1, 7),  # sold the day after the record was opened
    ("2026110200000001", 0, 2),  # text took 9
    ("XS20261102", 0, 7),  # a date and no sequence: as text, the digits a number
    ("XS2026110200000000000000000001", 0, 14),  # 22 digits after the date: as text
    ("XS2026023000014375", 0, 11),  # not a date: as text
    ("ABC-14375", 0, 8),
])
def test_record_numbers_with_the_sale_date_are_short(
    record: str, days_after: int, size: int
) -> None:
    """A record number of a prefix, the date and a sequence stores the date as its distance
    from the sale's day: 6 bytes for the bench's 18 characters, where text with a digit run
    took 11."""
    from librt.strings import BytesWriter

    from streams.codec import _dated_record, _put_record, _Reader

    moment = calendar.timegm((2026, 11, 2, 15, 30, 0)) + days_after * 86_400
    out = BytesWriter()
    _put_record(out, record, moment)
    assert len(out) == size
    text, packed, offset = _Reader(out.getvalue()).record()
    assert (text if packed < 0 else _dated_record(text, packed, moment, offset)) == record


def _record_by_characters(out: Any, text: str, moment: int) -> None:
    """_put_record written plainly, by characters, with the calendar's own day counts: what
    it packed before ASCII record numbers were read as bytes."""
    from datetime import date

    from streams.codec import _put_text, _svarint, _uvarint

    head = text.rstrip("0123456789")
    start = len(head)
    after = len(text) - start - 8
    if 1 <= after <= 19:
        year, month, day = (int(text[start:start + 4]), int(text[start + 4:start + 6]),
                            int(text[start + 6:start + 8]))
        if 1971 <= year and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]:
            offset = date(year, month, day).toordinal() - date(1970, 1, 1).toordinal()
            offset -= moment // 86_400
            raw = head.encode("utf-8", "surrogatepass")
            _uvarint(out, len(raw) * 40 + 1)
            out.write(raw)
            _uvarint(out, (int(text[start + 8:]) * 20 + after) * 2 + (offset != 0))
            if offset:
                _svarint(out, offset)
            return
    _put_text(out, text)


def test_record_numbers_pack_as_read_by_characters() -> None:
    """A record number is read as bytes (its head by characters when not ASCII); what it
    packs to is what the plain reading by characters packs it to."""
    from librt.strings import BytesWriter

    from streams.codec import _put_record

    rng = random.Random(11)
    records = ["XS2026110200014375", "2026110200000001", "XS20261102", "ABC-14375", "", "7",
               "XS2026023000014375", "XS2026110200000000000000000001", "销售2026110200014375",
               "XS19700101000001", "XS2026022900001", "XS2024022900001", "AB12345678901234567"]
    for _ in range(5000):
        prefix = "".join(rng.choice("XSAB-_/销0") for _ in range(rng.randint(0, 4)))
        date = f"{rng.randint(1960, 2100)}{rng.randint(0, 13):02d}{rng.randint(0, 32):02d}"
        tail = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 22)))
        records.append(prefix + rng.choice([date, date[:rng.randint(0, 8)], ""]) + tail)
    for record in records:
        moment = rng.randint(0, 4_000_000_000)
        by_bytes, by_characters = BytesWriter(), BytesWriter()
        _put_record(by_bytes, record, moment)
        _record_by_characters(by_characters, record, moment)
        assert by_bytes.getvalue() == by_characters.getvalue(), record


def test_round_trip_keeps_float_bits() -> None:
    """-0.0 == 0.0, so compare the floats' representations as well."""
    rng = random.Random(7)
    interner = MemoryInterner()
    for _ in range(500):
        state = random_code_state(rng)
        back = unpack_code_state(pack_code_state(state, interner), interner)
        for before, after in zip(state.sales, back.sales, strict=True):
            assert (repr(before.units), repr(before.amount)) == (
                repr(after.units), repr(after.amount))


def test_states_alike_are_those_that_pack_alike() -> None:
    """``packs_alike`` (the writer packs a run of alike states once) holds exactly when the
    packed bytes are the same: equal fields in other objects are alike; one field changed,
    or a zero's sign, is not."""
    rng = random.Random(29)
    interner = MemoryInterner()
    verdicts = {True: 0, False: 0}
    for _ in range(3000):
        state = random_code_state(rng)
        other = code_state_variant(rng, state)
        alike = codec.packs_alike(state, other)
        assert alike == (pack_code_state(state, interner) == pack_code_state(other, interner))
        assert codec.packs_alike(other, state) == alike
        verdicts[alike] += 1
    assert min(verdicts.values()) > 500


def test_person_states_with_runs_of_one_origin_round_trip_exactly() -> None:
    """Alike purchases in a row share their packing; neighbours that differ in one field
    (or only in the sign of a zero amount) must keep it."""
    rng = random.Random(31)
    interner = MemoryInterner()
    for _ in range(1500):
        state = person_state_in_runs(rng)
        back = unpack_person_state(pack_person_state(state, interner), interner)
        assert back == state
        assert [repr(p.amount) for p in back.purchases] == [
            repr(p.amount) for p in state.purchases]


def test_random_person_states_round_trip_exactly() -> None:
    rng = random.Random(3)
    interner = MemoryInterner()
    for _ in range(1500):
        state = random_person_state(rng)
        assert unpack_person_state(pack_person_state(state, interner), interner) == state


class _MissingFirst:
    """An interner that knows no text until it is resolved: a miss is id 0, as the Redis
    ledger's interner answers before its round trip."""

    def __init__(self) -> None:
        self.known = MemoryInterner()
        self.resolved = False

    def to_id(self, table: str, text: str) -> int:
        return self.known.to_id(table, text) if self.resolved else 0

    def to_text(self, table: str, ident: int) -> str:
        return self.known.to_text(table, ident)


def test_packed_origins_are_kept_per_interner_and_only_when_complete() -> None:
    """The packed parts of an origin are reused, but never across interners (their ids
    differ) nor when an id was still unknown (packed with 0, to be packed again)."""
    rng = random.Random(41)
    states = [random_code_state(rng) for _ in range(200)]
    persons = [random_person_state(rng) for _ in range(200)]
    first, other = MemoryInterner(), MemoryInterner()
    for table in codec.TABLES:  # other ids for the same texts in `other`
        for number in range(7):
            other.to_id(table, f"unrelated {number}")
    for interner in (first, other, first):
        for state in states:
            assert unpack_code_state(pack_code_state(state, interner), interner) == state
        for person in persons:
            assert unpack_person_state(pack_person_state(person, interner), interner) == person
    late = _MissingFirst()
    for state in states:
        pack_code_state(state, late)
    late.resolved = True
    for state in states:
        assert unpack_code_state(pack_code_state(state, late), late) == state


def test_codes_and_links_round_trip() -> None:
    rng = random.Random(5)
    for _ in range(500):
        codes = tuple(random_code(rng) for _ in range(rng.randrange(6)))
        assert unpack_codes(pack_codes(codes)) == codes
        day = rng.randrange(DAY_STAMP_MAX + 1)
        stamped = pack_codes(codes, day)
        assert len(stamped) == len(pack_codes(codes)) + 2
        assert (unpack_codes(stamped), codes_day(stamped)) == (codes, day)
        assert codes_day(pack_codes(codes)) is None
    link = HoardingLink("a" * 24, "P5101040001120261101091245", "P51010400011",
                        "2026-11-01 09:12:45")
    assert unpack_link(pack_link(link)) == link
    odd = HoardingLink("", "编号", "", "")
    assert unpack_link(pack_link(odd)) == odd


def test_day_stamps() -> None:
    assert day_stamp(EPOCH) == day_stamp(EPOCH + 86_399) == 0
    assert day_stamp(EPOCH + 86_400) == 1
    assert day_stamp(EPOCH - 1) == 0 and day_stamp(EPOCH + 10**10) == DAY_STAMP_MAX
    with pytest.raises(CodecError):
        unpack_codes(pack_codes(("83857930000000000001",)) + b"\x00")


def test_truncated_or_padded_bytes_are_refused() -> None:
    interner = MemoryInterner()
    rng = random.Random(11)
    for _ in range(100):
        state = random_code_state(rng)
        packed = pack_code_state(state, interner)
        for end in range(len(packed)):
            with pytest.raises(ValueError):
                unpack_code_state(packed[:end], interner)
        with pytest.raises(CodecError):
            unpack_code_state(packed + b"\x00", interner)


def test_unknown_interned_id_is_an_error() -> None:
    packed = pack_code_state(typical_state(), MemoryInterner())
    with pytest.raises(CodecError, match="unknown"):
        unpack_code_state(packed, MemoryInterner())


# --------------------------------------------------------------------------- sizes


def test_typical_states_are_small() -> None:
    """One whole-box sale with person, drug, institution, NHSA msgid (31 characters),
    10-character bchno and its fingerprints: measured 25 to 31 bytes (the JSON of the same
    sale is about 420)."""
    interner = MemoryInterner()
    sizes = [len(pack_code_state(typical_state(serial), interner))
             for serial in (1, 12_345, 99_999_999)]
    print("typical whole-box state:", sizes, "bytes")
    assert max(sizes) <= 31
    sold_twice = replace(typical_state(1), sales=typical_state(1).sales + typical_state(2).sales)
    assert len(pack_code_state(sold_twice, interner)) <= 64


def test_states_the_code_ledger_builds_refer_to_their_first_sale() -> None:
    """The code ledger notes the sale that set a code's first drug by its record fingerprint:
    packed, that is a reference to the sale (no bytes), and such states are as small as the
    typical ones above."""
    ledger = MemoryLedger()
    pipeline = Pipeline(ledger, factory.CONFIG)
    codes = [factory.code(n) for n in range(1, 4)]
    for n, listed in enumerate(codes, start=1):
        message = parse(factory.sale([listed], bchno=f"XS{n:08d}",
                                     msgid=f"P5101040001120261101091245{n:05d}"),
                        factory.PSN_KEY)
        pipeline.process([(n, message)])
    interner = MemoryInterner()
    for listed in codes:
        state = ledger.codes[listed]
        first = state.sales[0]
        assert state.first_drug_ref == record_fingerprint(first.fixmedins_code, "3505",
                                                          first.bchno)
        packed = pack_code_state(state, interner)
        assert packed[0] >> 4 & 0b11 == 3  # first drug: from the first sale's record
        assert len(packed) <= 31
        assert unpack_code_state(packed, interner) == state
        # A later sale does not move the reference (the state keeps its first sale).
        twice = replace(state, sales=(*state.sales, typical_state(9).sales[0]))
        assert unpack_code_state(pack_code_state(twice, interner), interner) == twice
    # States written before, with the two-part reference, still read and write as they did.
    legacy = typical_state(5)
    assert pack_code_state(legacy, interner)[0] >> 4 & 0b11 == 1
    assert unpack_code_state(pack_code_state(legacy, interner), interner) == legacy


def test_a_box_sold_returned_and_sold_again_stays_within_a_listpack_value() -> None:
    """Its state keeps the fingerprints of all three messages and the first sale's drug and
    record fingerprint; layout 4 writes those as the standing sale's drug and an index into
    ``applied``, which keeps the state within Redis's default 64-byte listpack value (it took
    71 bytes, and an overflow hash's ~230)."""
    ledger = MemoryLedger()
    pipeline = Pipeline(ledger, factory.CONFIG)
    boxes = [factory.code(n) for n in range(1, 4)]
    messages = [
        factory.sale(boxes, bchno="XS2026110100000001",
                     msgid="P5101040001120261101090000000001"),
        factory.ret(boxes, returns="XS2026110100000001", bchno="XT2026110100000002",
                    msgid="P5101040001120261101100000000002"),
        factory.sale(boxes, when="2026-11-01 11:00:00", bchno="XS2026110100000003",
                     msgid="P5101040001120261101110000000003"),
    ]
    for n, message in enumerate(messages):
        pipeline.process([(n, parse(message, factory.PSN_KEY))])
    interner = MemoryInterner()
    for box in boxes:
        state = ledger.codes[box]
        assert len(state.sales) == 1 and len(state.applied) == 6
        assert state.first_drug_ref == state.applied[1] != record_fingerprint(
            state.sales[0].fixmedins_code, "3505", state.sales[0].bchno)
        packed = pack_code_state(state, interner)
        assert packed[0] >> 4 & 0b11 == 2  # an explicit first drug
        assert packed[-2:] == bytes([codec._FD_DRUG_OF_SALE | codec._FD_REF_APPLIED, 1])
        assert len(packed) <= 64
        assert unpack_code_state(packed, interner) == state


def test_an_explicit_first_drug_refers_only_to_what_is_there() -> None:
    interner = MemoryInterner()
    state = replace(typical_state(1), first_drug_ref="0123456789ab",
                    applied=("0123456789ab", *typical_state(1).applied))
    packed = pack_code_state(state, interner)
    assert packed[-2:] == bytes([codec._FD_DRUG_OF_SALE | codec._FD_REF_APPLIED, 0])
    assert unpack_code_state(packed, interner) == state
    with pytest.raises(CodecError, match="beyond the applied list"):
        unpack_code_state(packed[:-1] + bytes([3]), interner)
    no_sales = replace(state, sales=(), first_drug="X", last_time=state.last_time)
    packed = pack_code_state(no_sales, interner)
    assert unpack_code_state(packed, interner) == no_sales
    first_drug_byte = packed.rindex(bytes([codec._FD_DRUG | codec._FD_REF_APPLIED]))
    forged = bytearray(packed)
    forged[first_drug_byte] = codec._FD_DRUG_OF_SALE | codec._FD_REF_APPLIED
    del forged[first_drug_byte + 1]  # the drug's id
    with pytest.raises(CodecError, match="sale that is not there"):
        unpack_code_state(bytes(forged), interner)


def test_person_state_is_small() -> None:
    interner = MemoryInterner()
    sale = typical_state().sales[0]
    purchase = Purchase("83857930123456780001", sale.fixmedins_code, sale.mdtrtarea_admvs,
                        sale.bchno, sale.msgid, sale.time, sale.amount)
    one = len(pack_person_state(PersonState((purchase,), None), interner))
    ten = len(pack_person_state(PersonState((purchase,) * 10, NOW), interner))
    print("person state: one purchase", one, "bytes; ten", ten)
    assert one <= 32
    assert ten <= 10 * 26 + 8


# --------------------------------------------------------------------------- code slots


def gtin_ids_of(codes: Iterable[str], step: int = 1) -> dict[str, int]:
    """Ids for the GTINs of the GS1 codes among ``codes``, as a ledger's dictionary gives
    them out (from 1, in the order seen; ``step`` apart, for larger ids)."""
    ids: dict[str, int] = {}
    for code in codes:
        gtin = codec.gs1_gtin(code)
        if gtin is not None:
            ids.setdefault(gtin, len(ids) * step + 1)
    return ids


@pytest.mark.parametrize("form", ["fields", "packed-fields", "narrow-fields",
                                  "interned-fields"])
@pytest.mark.parametrize("bits", [0, 4, 11, 12, 16, 18, 24])
def test_code_slots_are_distinct_and_invertible(bits: int, form: str) -> None:
    rng = random.Random(bits)
    codes = {random_code(rng) for _ in range(3000)}
    codes |= {"00000000000000000000", "99999999999999999999", "83857930123456780001",
              "80000000000000000000", "89999999999999999999", "79999999999999999999"}
    codes |= {f"8385793{serial:013d}" for serial in range(500)}
    # Digit runs that differ only in their zeros, and one longer than a number holds.
    codes |= {"A1", "A01", "A001", "A10", "1", "01", "001", "0", "00", "ZY01" + "9" * 25}
    codes |= {"(01)06901234567892(21)" + serial for serial in ("7", "07", "A7", "A07", "70")}
    # Codes whose field in another form has the narrow field's length (6 or 7 bytes).
    codes |= {"ENT-A", "ENT-AB", "ENT-ABC", "ZY" + "1" * 9, "0" * 19}
    # Enough GTINs for ids of one, two and three bytes.
    codes |= {f"(01){product:014d}(21)A{product:06d}" for product in range(0, 40_000, 7)}
    narrow = form in ("narrow-fields", "interned-fields")
    ids = gtin_ids_of(sorted(codes), step=5)
    assert max(ids.values()) > 1 << 14
    slots = {code: codec.interned_code_slot(code, bits, ids) if form == "interned-fields"
             else codec.narrow_code_slot(code, bits) if narrow
             else code_slot(code, bits, form == "packed-fields") for code in codes}
    assert len(set(slots.values())) == len(codes)
    gtins = {ident: gtin for gtin, ident in ids.items()}
    for code, (bucket, field) in slots.items():
        assert 0 <= bucket < 1 << bits
        assert field[0] != 0xFF  # the Redis ledger's pieces of long values start with it
        back = code_of_slot(bucket, field, bits, narrow, gtins)
        assert back == code or (back is None and len(code.encode()) > 40)
    if narrow:
        size = codec.narrow_field_size(bits)
        code20 = [code for code in codes if len(code) == 20 and code.isdigit()]
        assert all((len(slots[code][1]) == size) == code.startswith("8") for code in code20)
        # A narrow field may start with any byte: its length alone tells it.
        padded = [field for _, field in slots.values()
                  if len(field) != size and field[0] == codec._FIELD_PADDED]
        assert padded and all(len(field) == size + 1 for field in padded)


@pytest.mark.parametrize("bits", [0, 4, 12, 16, 24])
def test_code_slots_of_a_batch_are_each_code_slot(bits: int) -> None:
    rng = random.Random(bits + 100)
    codes = [random_code(rng) for _ in range(2000)] + ["８３８５７９３０１２３４５６７８０００１"]
    buckets, fields = code_slots(codes, bits)
    assert list(zip(buckets, fields, strict=True)) == [code_slot(code, bits) for code in codes]
    assert code_slots([], bits) == ([], [])
    packed = list(zip(*codec.packed_code_slots(codes, bits), strict=True))
    assert packed == [codec.packed_code_slot(code, bits) for code in codes]
    assert packed == [code_slot(code, bits, True) for code in codes]
    narrow = list(zip(*codec.narrow_code_slots(codes, bits), strict=True))
    assert narrow == [codec.narrow_code_slot(code, bits) for code in codes]
    ids = gtin_ids_of(codes)
    interned = list(zip(*codec.interned_code_slots(codes, bits, ids), strict=True))
    assert interned == [codec.interned_code_slot(code, bits, ids) for code in codes]
    assert [slot for code, slot in zip(codes, interned, strict=True)
            if codec.gs1_gtin(code) is None] == [
        codec.narrow_code_slot(code, bits) for code in codes if codec.gs1_gtin(code) is None]


def test_packed_fields_keep_trailing_digits_as_a_number() -> None:
    """The field sizes a ledger with packed fields pays: codes of the bench's three forms."""
    sizes = {
        code: (len(code_slot(code, 16)[1]), len(code_slot(code, 16, True)[1]))
        for code in ("83857930123456780001", "(01)06901234567892(21)A000123456",
                     "ZY01000000001234", "(01)06901234567892(21)LOT-X", "ENT-A")
    }
    assert sizes == {
        "83857930123456780001": (7, 7),  # a number already
        "(01)06901234567892(21)A000123456": (17, 12),
        "ZY01000000001234": (17, 10),
        "(01)06901234567892(21)LOT-X": (12, 12),  # no trailing digits: the same form
        "ENT-A": (6, 6),
    }


def test_code20_field_is_seven_bytes_for_usual_bucket_counts() -> None:
    for bits in range(12, 19):
        assert len(code_slot("83857930123456780001", bits)[1]) == 7


def test_interned_fields_name_a_gs1_codes_gtin_by_its_id() -> None:
    """A ledger created by layout 5: a GS1 code's field holds its GTIN's id in the GTIN
    dictionary, not the GTIN's 6 bytes; the bucket is the same."""
    code = "(01)06901234567892(21)A000123456"
    for ident, size in ((1, 7), (127, 7), (128, 8), (16_384, 9)):
        bucket, field = codec.interned_code_slot(code, 16, {"06901234567892": ident})
        assert (bucket, len(field), field[0]) == (code_slot(code, 16)[0], size, 0x86)
    assert len(code_slot(code, 16, True)[1]) == 12
    # Where the field would have a narrow field's length, it is padded, as the others.
    bucket, field = codec.interned_code_slot("(01)06901234567892(21)ABC", 16,
                                             {"06901234567892": 1})
    assert field[:2] == bytes([0x85, 0x86]) and len(field) == 7
    assert code_of_slot(bucket, field, 16, True, {1: "06901234567892"}) \
        == "(01)06901234567892(21)ABC"
    with pytest.raises(CodecError, match="not in the dictionary"):
        code_of_slot(bucket, field, 16, True, {2: "06901234567892"})
    with pytest.raises(KeyError):  # the ledger gives every GTIN its id first
        codec.interned_code_slot(code, 16, {})


def test_narrow_fields_are_a_byte_shorter_from_65536_buckets() -> None:
    """A ledger sized for 10 million codes has 65,536 buckets: 6 bytes, not 7, a 码上放心
    code; the other forms as packed fields have them, a byte more where that would be 6."""
    code = "83857930123456780001"
    assert [len(codec.narrow_code_slot(code, bits)[1]) for bits in (11, 15, 16, 18, 23, 24)] \
        == [7, 7, 6, 6, 6, 5]
    assert codec.narrow_code_slot("ZY01000000001234", 16) == code_slot("ZY01000000001234", 16,
                                                                       True)
    bucket, field = code_slot("ENT-A", 16, True)
    assert codec.narrow_code_slot("ENT-A", 16) == (bucket, bytes([0x85]) + field)


@pytest.mark.parametrize("pattern", [
    "8385793{serial:09d}0000",  # neighbouring serials, one product, check digits alike
    "8385793{serial:09d}{check:04d}",
    "8{serial:015d}0000",
    "812345678{serial:07d}0000",
    "8{product:06d}{serial:09d}{check:04d}",
])
@pytest.mark.parametrize("form", ["fields", "narrow-fields"])
def test_neighbouring_serials_spread_over_buckets(pattern: str, form: str) -> None:
    bits = 10
    rng = random.Random(3)
    slot = codec.narrow_code_slot if form == "narrow-fields" else code_slot
    counts = [0] * (1 << bits)
    for serial in range(100_000):
        code = pattern.format(serial=serial, check=rng.randrange(10_000),
                              product=rng.randrange(1_000_000))
        counts[slot(code, bits)[0]] += 1
    assert max(counts) <= 2 * 100_000 // (1 << bits)
    assert min(counts) >= 100_000 // (1 << bits) // 2


def _stamp_by_datetime(rest: str) -> tuple[int, int, int] | None:
    """What ``_nhsa_stamp`` must give, the slow and obvious way."""
    import calendar as cal
    from datetime import datetime

    if not 14 <= len(rest) <= 33 or not (rest.isascii() and rest.isdigit()):
        return None
    try:
        moment = datetime.strptime(rest[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if moment.year < 1971 or moment.second > 59:
        return None
    tail = rest[14:]
    return cal.timegm(moment.timetuple()), int(tail) if tail else 0, len(tail)


@pytest.mark.parametrize("rest", [
    "2026110112000000001", "20261101120000", "20240229235959" + "9" * 19, "20250229120000",
    "20261301120000", "20261100120000", "20261101240000", "19700101000000", "1971010100000",
    "２0261101120000", "2026110112000x", "2026110112000000001" + "0" * 15,
])
def test_nhsa_stamp_reads_time_and_sequence(rest: str) -> None:
    from streams.codec import _nhsa_stamp

    assert _nhsa_stamp(rest) == _stamp_by_datetime(rest)


def test_nhsa_stamp_matches_datetime_on_random_times() -> None:
    from streams.codec import _nhsa_stamp

    rng = random.Random(3)
    for _ in range(2000):
        rest = f"{rng.randint(1960, 2100)}{rng.randint(0, 13):02d}{rng.randint(0, 32):02d}" \
               f"{rng.randint(0, 25):02d}{rng.randint(0, 61):02d}{rng.randint(0, 61):02d}" \
               f"{rng.randint(0, 10**rng.randint(0, 19)):0{rng.randint(0, 19)}d}"
        assert _nhsa_stamp(rest) == _stamp_by_datetime(rest), rest


def _blocks_left_by(action: Callable[[], object], times: int = 4000) -> int:
    """Python's allocated blocks after calling ``action`` ``times`` times, less before."""
    import gc
    import sys

    action()
    gc.collect()
    before = sys.getallocatedblocks()
    for _ in range(times):
        action()
    gc.collect()
    return sys.getallocatedblocks() - before


def test_reading_values_back_leaks_nothing() -> None:
    # Integers of 63 bits and more (20-digit codes, long digit runs) once leaked an object
    # per str() in the compiled codec: ~5 MB a minute in a worker at half its throughput.
    interner = MemoryInterner()
    code = "81012345678901234567"  # above 2**62 as a number
    purchase = Purchase(code=code, fixmedins_code="P51010400011", mdtrtarea_admvs="510104",
                        bchno="XS9223372036854775807", msgid="P5101040001120261101080000001234",
                        time=1_762_000_000, amount=12.5)
    person = codec.pack_person_state(PersonState(purchases=(purchase,) * 3), interner)
    index = codec.pack_codes([code, "99999999999999999999"], 3)
    bucket, field = codec.code_slot(code, 16)
    line = factory.sale([code])
    line["input"]["selinfo"]["fixmedins_bchno"] = 98765432109876543210  # a JSON number
    actions: list[Callable[[], object]] = [
        lambda: codec.unpack_person_state(person, interner),
        lambda: codec.unpack_codes(index),
        lambda: codec.code_of_slot(bucket, field, 16),
        lambda: parse(line, b"key"),
    ]
    assert codec.unpack_person_state(person, interner).purchases[0] == purchase
    assert codec.code_of_slot(bucket, field, 16) == code
    for action in actions:
        assert _blocks_left_by(action) < 100


def _centi_by_round(value: float) -> int | None:
    """What codec._centi computed with isfinite and round() before it was made native."""
    scaled = value * 100
    if not math.isfinite(scaled):
        return None
    cents = round(scaled)
    if cents < 0 or cents / 100 != value or (cents == 0 and math.copysign(1.0, value) < 0):
        return None
    return cents


def test_amounts_in_fen_are_decided_as_round_did() -> None:
    """_centi rounds by math.floor and a tie test, not round(): states must pack to the same
    bytes as before, so it agrees with the old form on ties (which at 10**13 yuan can be
    whole fen), huge and tiny values, signs, non-finite ones, and random amounts of every
    magnitude."""
    from streams.codec import _centi

    rng = random.Random(11)
    values = [0.0, -0.0, 0.005, 0.015, 0.125, 12.345, 12.35, 0.1 + 0.2, 1e-300, 5e-324,
              0.49999999999999994, 2.5e13, 4.5e13, 2**51 / 100, 2**52 / 100, 2**53 / 100,
              1e300, math.inf, -math.inf, math.nan, -12.35]
    values += [rng.randrange(0, 10**9) / 100 for _ in range(20_000)]
    values += [rng.randrange(0, 10**17) / 100 + rng.choice((0.0, 0.005, 0.5)) for _ in range(5_000)]
    values += [rng.uniform(-1, 1) * 10 ** rng.randrange(-8, 20) for _ in range(20_000)]
    values += [(rng.randrange(0, 10**6) + 0.5) / 100 for _ in range(5_000)]
    for value in values:
        assert _centi(value) == _centi_by_round(value), value
