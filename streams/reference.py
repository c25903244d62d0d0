"""Reference data: the drug catalog (SPEC §3) and per-drug HOARDING thresholds, as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from detectors.model import CatalogEntry, HoardingThresholds, RuleConfig
from streams.settings import Settings

CATALOG_HEADER = ("product_key", "med_list_codg", "drug_name", "pack_units")
OVERRIDES_HEADER = ("med_list_codg", "min_boxes", "min_institutions", "window_days")


class ReferenceError(ValueError):
    """A reference CSV cannot be read; the message names the file and line."""


def _rows(path: Path, header: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in header if name not in (reader.fieldnames or [])]
            if missing:
                raise ReferenceError(
                    f"{path}: the header must name {','.join(header)}; missing {missing}"
                )
            return [(number + 2, row) for number, row in enumerate(reader)]
    except OSError as error:
        raise ReferenceError(f"{path}: cannot read: {error.strerror}") from None


def _whole(value: str | None, path: Path, line: int, name: str) -> int:
    try:
        number = int((value or "").strip())
    except ValueError:
        number = 0
    if number <= 0:
        raise ReferenceError(f"{path}:{line}: {name} must be a positive whole number: {value!r}")
    return number


def load_catalog(path: Path) -> dict[str, CatalogEntry]:
    """Product key → catalog entry."""
    catalog: dict[str, CatalogEntry] = {}
    for line, row in _rows(path, CATALOG_HEADER):
        key = (row["product_key"] or "").strip()
        code = (row["med_list_codg"] or "").strip()
        if not key or not code:
            raise ReferenceError(f"{path}:{line}: product_key and med_list_codg must not be empty")
        units = _whole(row["pack_units"], path, line, "pack_units")
        catalog[key] = CatalogEntry(key, code, (row["drug_name"] or "").strip(), units)
    return catalog


def load_hoarding_overrides(path: Path) -> dict[str, HoardingThresholds]:
    """med_list_codg → HOARDING thresholds for that drug."""
    overrides: dict[str, HoardingThresholds] = {}
    for line, row in _rows(path, OVERRIDES_HEADER):
        code = (row["med_list_codg"] or "").strip()
        if not code:
            raise ReferenceError(f"{path}:{line}: med_list_codg must not be empty")
        overrides[code] = HoardingThresholds(
            _whole(row["min_boxes"], path, line, "min_boxes"),
            _whole(row["min_institutions"], path, line, "min_institutions"),
            _whole(row["window_days"], path, line, "window_days"),
        )
    return overrides


def rule_config(settings: Settings) -> RuleConfig:
    """The rules' configuration from the settings, with the reference files loaded."""
    return RuleConfig(
        catalog=load_catalog(settings.catalog) if settings.catalog else {},
        stock_in_change_types=settings.stock_in_types,
        cross_city_hours=settings.cross_city_hours,
        retention_days=settings.retention_days,
        hoarding=HoardingThresholds(
            settings.hoarding_min_boxes,
            settings.hoarding_min_institutions,
            settings.hoarding_window_days,
        ),
        hoarding_overrides=(
            load_hoarding_overrides(settings.hoarding_overrides)
            if settings.hoarding_overrides
            else {}
        ),
    )
