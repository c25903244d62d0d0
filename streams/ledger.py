"""The ledger interface, and its in-memory implementation for ``tracewatch check`` and tests.

A ledger keeps three things, each read and written a whole batch at a time:

* per-code state (:class:`~detectors.model.CodeState`), written only by the code's one
  writer (its partition);
* the router's memory: which ``msgid`` and which records (institution, ``infno``,
  ``fixmedins_bchno``) were applied, and which codes each sale listed (for 3507 deletes);
* per-person hoarding state (:class:`~detectors.hoarding.PersonState`) and the hoarding alert
  each person last raised, written by the person's one writer.

The Redis implementation is :class:`streams.redis_ledger.RedisLedger`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TypeVar

from detectors.hoarding import HoardingLink, PersonState
from detectors.model import CodeState

V = TypeVar("V")

Announcement = Callable[[], tuple[Collection[str], Collection[str]]]
"""What a batch will load, listed on demand: (codes, person keys)."""


def record_key(institution: str, infno: str, bchno: str) -> str:
    """The router's key of one institution record."""
    return f"{institution}\x1f{infno}\x1f{bchno}"


def sale_key(institution: str, bchno: str) -> str:
    """The key under which a sale's codes are remembered for deletes."""
    return f"{institution}\x1f{bchno}"


class Ledger(Protocol):
    """What the pipeline needs from a ledger; every call handles a whole batch."""

    reads_ahead: bool
    """Whether :meth:`expect` is worth calling (the pipeline skips listing what it will load
    when it is not)."""

    def expect(self, announce: Announcement) -> None:
        """``announce()`` lists the codes and (person, drug) keys the batch about to be routed
        will load: a ledger may call it and start looking them up once it has sent the
        routing recall (a hint: the loads return the same either way)."""

    def load_codes(self, codes: Collection[str]) -> dict[str, CodeState]:
        """States of the given codes that exist; absent codes are left out."""

    def store_codes(self, states: Mapping[str, CodeState | None]) -> None:
        """Write states; None deletes the code."""

    def seen_messages(self, msgids: Collection[str]) -> set[str]:
        """Which of these msgids were routed before."""

    def seen_records(self, keys: Collection[str]) -> set[str]:
        """Which of these record keys were routed before."""

    def sale_codes(self, keys: Collection[str]) -> dict[str, tuple[str, ...]]:
        """Codes listed by the sales with these keys."""

    def recall_routing(
        self, msgids: Collection[str], records: Collection[str], sales: Collection[str],
    ) -> tuple[set[str], set[str], dict[str, tuple[str, ...]]]:
        """``seen_messages``, ``seen_records`` and ``sale_codes`` of a batch at once."""

    def commit_routing(
        self,
        msgids: Collection[str],
        records_added: Collection[str],
        records_removed: Collection[str],
        sales: Mapping[str, tuple[str, ...] | None],
    ) -> None:
        """Remember a routed batch: its msgids, records, and sale codes (None forgets)."""

    def load_persons(self, keys: Collection[str]) -> dict[str, PersonState]:
        """Hoarding states of (person, drug) keys that exist."""

    def store_persons(self, states: Mapping[str, PersonState | None]) -> None:
        """Write hoarding states; None deletes."""

    def hoarding_links(self, psn_hashes: Collection[str]) -> dict[str, HoardingLink]:
        """The latest HOARDING alert of each person who has one."""

    def link_hoarding(self, links: Mapping[str, HoardingLink]) -> None:
        """Remember the latest HOARDING alert id per person."""

    def writes_in_flight(self, confirm: bool = True) -> AbstractContextManager[None]:
        """Writes inside may be applied after they return, in order; all are applied (or
        the error raised) when the block ends, or with ``confirm=False`` by
        :meth:`confirm_writes` (or any later call, which sees them)."""

    def confirm_writes(self) -> None:
        """Wait until the writes sent ahead are applied; raise the first error. A failed
        confirmation keeps them: the next one sends them again, so call it until it returns."""


def _apply(table: dict[str, V], changes: Mapping[str, V | None]) -> None:
    """Write changes into a table; None deletes the key."""
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


class MemoryLedger:
    """A ledger in dictionaries: exact, fast, and gone when the process ends."""

    def __init__(self) -> None:
        self.codes: dict[str, CodeState] = {}
        self.messages: set[str] = set()
        self.records: set[str] = set()
        self.sales: dict[str, tuple[str, ...]] = {}
        self.persons: dict[str, PersonState] = {}
        self.links: dict[str, HoardingLink] = {}

    reads_ahead = False
    """Nothing to gain: every lookup is in process."""

    def expect(self, announce: Announcement) -> None:
        """Nothing to do ahead here."""

    def load_codes(self, codes: Collection[str]) -> dict[str, CodeState]:
        """States of the given codes that exist."""
        found = self.codes
        return {code: found[code] for code in codes if code in found}

    def store_codes(self, states: Mapping[str, CodeState | None]) -> None:
        """Write states; None deletes."""
        _apply(self.codes, states)

    def seen_messages(self, msgids: Collection[str]) -> set[str]:
        """Which msgids were routed before."""
        return {msgid for msgid in msgids if msgid in self.messages}

    def seen_records(self, keys: Collection[str]) -> set[str]:
        """Which record keys were routed before."""
        return {key for key in keys if key in self.records}

    def sale_codes(self, keys: Collection[str]) -> dict[str, tuple[str, ...]]:
        """Codes of the given sales."""
        return {key: self.sales[key] for key in keys if key in self.sales}

    def recall_routing(
        self, msgids: Collection[str], records: Collection[str], sales: Collection[str],
    ) -> tuple[set[str], set[str], dict[str, tuple[str, ...]]]:
        """``seen_messages``, ``seen_records`` and ``sale_codes`` at once."""
        return self.seen_messages(msgids), self.seen_records(records), self.sale_codes(sales)

    def commit_routing(
        self,
        msgids: Collection[str],
        records_added: Collection[str],
        records_removed: Collection[str],
        sales: Mapping[str, tuple[str, ...] | None],
    ) -> None:
        """Remember a routed batch."""
        self.messages.update(msgids)
        self.records.difference_update(records_removed)
        self.records.update(records_added)
        _apply(self.sales, sales)

    def load_persons(self, keys: Collection[str]) -> dict[str, PersonState]:
        """Hoarding states that exist."""
        return {key: self.persons[key] for key in keys if key in self.persons}

    def store_persons(self, states: Mapping[str, PersonState | None]) -> None:
        """Write hoarding states."""
        _apply(self.persons, states)

    def hoarding_links(self, psn_hashes: Collection[str]) -> dict[str, HoardingLink]:
        """Latest HOARDING alert per person."""
        return {psn: self.links[psn] for psn in psn_hashes if psn in self.links}

    def link_hoarding(self, links: Mapping[str, HoardingLink]) -> None:
        """Remember HOARDING alerts per person."""
        self.links.update(links)

    @contextmanager
    def writes_in_flight(self, confirm: bool = True) -> Iterator[None]:
        """Writes are applied at once here: nothing is ever in flight."""
        yield

    def confirm_writes(self) -> None:
        """Nothing is ever in flight here."""
