"""Code normalisation table (SPEC §2)."""

from __future__ import annotations

import pytest

from detectors.codes import CodeKind, box_codes, gs1_check_digit_ok, normalise, product_key_of

GS = "\x1d"

CASES: list[tuple[str, CodeKind, str, str | None]] = [
    ("83857930123456780001", CodeKind.CODE20, "83857930123456780001", "8385793"),
    ("  83857930123456780001\n", CodeKind.CODE20, "83857930123456780001", "8385793"),
    ("(01)06901234567892(21)ABC123", CodeKind.GS1, "(01)06901234567892(21)ABC123",
     "06901234567892"),
    ("(01)06901234567892(17)271231(10)L01(21)ABC123", CodeKind.GS1,
     "(01)06901234567892(21)ABC123", "06901234567892"),
    ("0106901234567892172712311" + "0L01" + GS + "21ABC123", CodeKind.GS1,
     "(01)06901234567892(21)ABC123", "06901234567892"),
    ("010690123456789221ABC123" + GS + "17271231", CodeKind.GS1,
     "(01)06901234567892(21)ABC123", "06901234567892"),
    ("(01)06901234567893(21)ABC123", CodeKind.INVALID, "(01)06901234567893(21)ABC123", None),
    ("(01)06901234567892", CodeKind.INVALID, "(01)06901234567892", None),
    ("6901234567892", CodeKind.BARCODE, "6901234567892", None),
    ("06901234567892", CodeKind.BARCODE, "06901234567892", None),
    ("ENT0001234", CodeKind.ENTERPRISE, "ENT0001234", None),
    ("12345678", CodeKind.ENTERPRISE, "12345678", None),
    ("1234567", CodeKind.INVALID, "1234567", None),
    ("A" * 100, CodeKind.ENTERPRISE, "A" * 100, None),
    ("A" * 101, CodeKind.INVALID, "A" * 101, None),
    ("", CodeKind.INVALID, "", None),
    ("   ", CodeKind.INVALID, "", None),
    ("CODE-1234", CodeKind.INVALID, "CODE-1234", None),
    ("追溯码12345678", CodeKind.INVALID, "追溯码12345678", None),
]


@pytest.mark.parametrize(("raw", "kind", "identity", "product"), CASES)
def test_normalise(raw: str, kind: CodeKind, identity: str, product: str | None) -> None:
    result = normalise(raw)
    assert (result.kind, result.code, result.product_key) == (kind, identity, product)
    if kind is CodeKind.INVALID:
        assert result.problem
    assert result.trackable == (kind in (CodeKind.CODE20, CodeKind.GS1, CodeKind.ENTERPRISE))


def test_product_key_of_canonical_codes() -> None:
    assert product_key_of("83857930123456780001") == "8385793"
    assert product_key_of("(01)06901234567892(21)X") == "06901234567892"
    assert product_key_of("ENT0001234") is None


@pytest.mark.parametrize(("digits", "ok"), [
    ("06901234567892", True), ("06901234567893", False), ("6901234567892", True),
    ("4006381333931", True), ("4006381333932", False), ("x", False),
])
def test_gs1_check_digit(digits: str, ok: bool) -> None:
    assert gs1_check_digit_ok(digits) is ok


def test_box_codes_keep_what_normalise_calls_a_box() -> None:
    raws = [raw for raw, *_ in CASES]
    raws += ["٠" * 20, "83857930123456780001" * 2, "8385793012345678000"]
    expected = [normalise(raw).code for raw in raws if normalise(raw).trackable]
    assert box_codes(raws) == (expected, len(raws) - len(expected))


def test_box_codes_take_canonical_gs1_codes_as_normalise_does() -> None:
    """The shortcut for a GS1 code already canonical agrees with normalise, at its edges."""
    import random

    from detectors.codes import _canonical_gs1

    gtins = ["06912345678906", "06912345678907", "6912345678906", "0691234567890６",
             "00000000000000", "4006381333931X"]
    serials = ["A000123456", "", "a1", "A 1", "A1 ", " A1", "A(1", "A1\x1d", "\x1dA1", "Ａ1",
               "x" * 40, "12345678901234567890", "A-1", "é1", "A1\n"]
    raws = [f"(01){gtin}(21){serial}" for gtin in gtins for serial in serials]
    raws += ["(01)06912345678906(21)A1(17)250101", "(01)06912345678906(10)A1",
             "]d2(01)06912345678906(21)A1", "(01)06912345678906(21)A1 ",
             " (01)06912345678906(21)A1", "(01)06912345678906(22)A1",
             "(01)06912345678906 (21)A1"]
    rng = random.Random(5)
    alphabet = "0123456789ABCxyz()-_ \x1d"
    for _ in range(3000):
        serial = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        gtin = "".join(rng.choice("0123456789") for _ in range(14))
        raws.append(f"(01){gtin}(21){serial}")
    for raw in raws:
        code = normalise(raw)
        assert box_codes([raw]) == (([code.code], 0) if code.trackable else ([], 1)), raw
    assert sum(map(_canonical_gs1, raws)) > 50  # the shortcut was taken, and not always
    assert sum(map(_canonical_gs1, raws)) < len(raws) / 2
