"""Settings: read once from ``TRACEWATCH_*`` environment variables, frozen, shown in ``--help``.

Every setting is declared once in ``SETTINGS`` with its variable, default and meaning; a
wrong value stops start-up with :class:`SettingsError` naming the variable and what it
expects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from streams.allocator import CHOICES as ALLOCATORS


class SettingsError(ValueError):
    """A ``TRACEWATCH_*`` variable has a value tracewatch cannot use."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared setting: attribute name, environment variable, default and meaning."""

    name: str
    default: str
    help: str
    kind: str = "str"

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return "TRACEWATCH_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("kafka", "127.0.0.1:9092", "Kafka bootstrap servers, comma-separated"),
    Setting("redis_url", "redis://127.0.0.1:6379/0", "Redis URL of the ledger"),
    Setting("ledger", "redis",
            "worker ledger: redis, memory (lost on exit), or auto (redis if it answers)",
            "ledger"),
    Setting("key_prefix", "tw", "prefix of every Redis key tracewatch writes"),
    Setting("topic_events", "tracewatch.events", "input topic of NHSA messages"),
    Setting("topic_codes", "tracewatch.codes", "internal topic: per-code events, keyed by code"),
    Setting("topic_persons", "tracewatch.persons",
            "internal topic: per-person events, keyed by person hash"),
    Setting("topic_alerts", "tracewatch.alerts", "output topic of alerts, keyed by alert_id"),
    Setting("topic_dlq", "tracewatch.events.dlq", "dead-letter topic for bad input"),
    Setting("partitions", "4", "partitions of the topics tracewatch creates", "int"),
    Setting("catalog", "", "catalog CSV (SPEC §3); empty: no catalog", "path"),
    Setting("psn_key", "", "secret key of the psn_no hash; must be set in production"),
    Setting("stock_in_types", "101",
            "3502 inv_chg_type values that bring stock in, comma-separated", "set"),
    Setting("cross_city_hours", "24",
            "DUPLICATE_SALE is critical across cities within this many hours", "int"),
    Setting("retention_days", "1095", "days a code is kept after its last event", "int"),
    Setting("dedupe_days", "30", "days a msgid or record number is remembered for retries", "int"),
    Setting("expected_codes", "10000000",
            "codes a new Redis ledger is sized for (its bucket count; fixed once created)",
            "int"),
    Setting("sweep_hours", "24",
            "hours between the worker's sweeps of Redis entries past their retention", "int"),
    Setting("hoarding_min_boxes", "10", "HOARDING: standing boxes of one drug", "int"),
    Setting("hoarding_min_institutions", "3", "HOARDING: from at least this many institutions",
            "int"),
    Setting("hoarding_window_days", "30", "HOARDING: within this many days", "int"),
    Setting("hoarding_overrides", "",
            "HOARDING per-drug thresholds CSV: med_list_codg,min_boxes,min_institutions,"
            "window_days", "path"),
    Setting("batch_size", "5000", "most messages handled in one batch", "int"),
    Setting("batch_wait", "0.1", "seconds a batch waits to fill; never longer", "float"),
    Setting("web_port", "6066", "port of the worker's web page and /metrics", "int"),
    Setting("web_host", "127.0.0.1",
            "address the web page binds to (0.0.0.0 to serve other hosts, e.g. in a container)"),
    Setting("log_level", "info", "worker log level"),
    Setting("allocator", "auto",
            "worker memory allocator: auto (jemalloc when libjemalloc2 is installed), "
            "jemalloc, or system (the C library's malloc)", "allocator"),
)

DEV_PSN_KEY = "tracewatch-development-key-not-secret"


@dataclass(frozen=True, slots=True)
class Settings:
    """All of tracewatch's settings, typed."""

    kafka: str
    redis_url: str
    ledger: str
    key_prefix: str
    topic_events: str
    topic_codes: str
    topic_persons: str
    topic_alerts: str
    topic_dlq: str
    partitions: int
    catalog: Path | None
    psn_key: str
    stock_in_types: frozenset[str]
    cross_city_hours: int
    retention_days: int
    dedupe_days: int
    expected_codes: int
    sweep_hours: int
    hoarding_min_boxes: int
    hoarding_min_institutions: int
    hoarding_window_days: int
    hoarding_overrides: Path | None
    batch_size: int
    batch_wait: float
    web_port: int
    web_host: str
    log_level: str
    allocator: str

    @property
    def psn_key_bytes(self) -> bytes:
        """The hash key, or the development key when none is set."""
        return (self.psn_key or DEV_PSN_KEY).encode()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _path(text: str) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def _ledger(text: str) -> str:
    if text not in ("redis", "memory", "auto"):
        raise ValueError("must be redis, memory or auto")
    return text


def _allocator(text: str) -> str:
    if text not in ALLOCATORS:
        raise ValueError(f"must be {', '.join(ALLOCATORS[:-1])} or {ALLOCATORS[-1]}")
    return text


def _set(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": _positive_int,
    "float": _positive_float,
    "path": _path,
    "set": _set,
    "ledger": _ledger,
    "allocator": _allocator,
}

_EXPECTS = {
    "int": "a positive whole number",
    "float": "a positive number",
    "path": "the path of an existing file, or empty",
    "set": "comma-separated values",
    "str": "text",
    "ledger": "one of redis, memory, auto",
    "allocator": f"one of {', '.join(ALLOCATORS)}",
}


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> Settings:
    """Read every setting from ``environ`` (default: the process environment).

    ``overrides`` (setting name → text) win over the environment; the CLI passes its
    options this way. Raises :class:`SettingsError` naming the first wrong variable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        text = (overrides or {}).get(setting.name)
        if text is None:
            text = env.get(setting.env, setting.default)
        try:
            values[setting.name] = _CONVERTERS[setting.kind](text.strip())
        except ValueError as error:
            raise SettingsError(
                f"{setting.env}={text!r} is not usable: {error}; "
                f"it should be {_EXPECTS[setting.kind]} ({setting.help})"
            ) from None
    known = {f.name for f in fields(Settings)}
    assert known == set(values), "SETTINGS and Settings disagree"
    return Settings(**values)


def settings_help() -> str:
    """The settings table for ``--help``."""
    lines = ["settings (environment variables):"]
    for setting in SETTINGS:
        default = setting.default or "(empty)"
        lines.append(f"  {setting.env:<36} {setting.help} [default: {default}]")
    return "\n".join(lines)
