"""The ledger in Redis: :class:`RedisLedger`, behaving as :class:`~streams.ledger.MemoryLedger`.

Layout
======

Every key starts with the configured prefix (``TRACEWATCH_KEY_PREFIX``, default ``tw``); the
key templates are the ``KEY_*`` constants below, and nothing else is written.

Per-code state lives in *bucket hashes* small enough for Redis's compact ``listpack``
encoding, where one entry costs its bytes plus about 4 (one key per code costs ~100 bytes
of overhead alone). A 20-digit code picks one of ``2**code_bits`` buckets and keeps the
remaining bits as a 7-byte field (:func:`streams.codec.code_slot`), 6 bytes on a prefix
created by layout 4 when it starts with 8, as they do (the meta's ``code_fields``,
:func:`streams.codec.narrow_code_slot`); another code goes to the bucket of its hash under
its own bytes, and on a prefix created by layout 3 or later with a trailing digit run as a
number (``ZY01000000001234`` in 10 bytes, not 17; a GS1 identity's serial likewise); on a
prefix created by layout 5 a GS1 code's GTIN is its id in the GTIN dictionary
(``{prefix}:dict:gtin``, :func:`streams.codec.interned_code_slot`): 7 to 9 bytes, not 12 or
13. The value is the state
packed by :mod:`streams.codec` (~31 bytes for a code with one whole-box sale). The bucket
count is chosen for 128 to 256 codes per bucket at the expected number of codes (65,536
buckets, ~150 codes each, for the default 10 million) and recorded in ``{prefix}:meta``; it
cannot change without rebuilding the ledger. Measured with ``scripts/ledger_bytes.py`` (Redis
7.0, 10 million codes with one whole-box sale each): 48.7 bytes of ``used_memory`` per code
(47.7 of them the buckets themselves: 31 value, 7 field, 4 listpack entry, ~6 allocator and
key overhead), against 181 for one key per code with the same packed value and 581 with JSON.

Shared states. The boxes one message sells have the same state, evidence and all, and a sale
lists 3 to 4 boxes on average (issue 5's workload). A run of at least two codes with alike
states in one store (:data:`SHARE_FROM_CODES`; the boxes of one message, mostly) is packed
once into a *shared bucket* ``{prefix}:v:{serial >> 8}`` under the low byte of a serial, and
each code's entry is a reference (:func:`streams.codec.shared_ref`): ``-`` and the serial in
decimal, which a listpack keeps as an integer (5 bytes of listpack until 2**23 serials, 6
until 2**31; no short packed state starts with ``-``), or past 2**31 byte 0x10 (never the
header of a packed state) and the serial in binary, as layout 2 wrote them all (a byte more
below 2**31). A writer reserves serials 65,536 at a time (``INCRBY`` of ``{prefix}:vn``: one
round trip per block), so a shared bucket is written by one writer within minutes and
expires ``retention_days`` and a day after. The load and sweep scripts look references up
(the keys are not declared, so the ledger wants one Redis, not a cluster); Python sees the
state itself. A code sold again, returned or deleted gets an entry
of its own and leaves the shared state to its boxes still standing, or to its expiry; a
reference whose shared state has expired reads as absent, which the rules would make of a
state that old anyway, and the sweep removes it. A lone code keeps its own entry. A shared
state too long for its bucket (a box sold, returned and sold again carries the fingerprints
of all three messages) goes to the shared bucket's overflow hash ``{prefix}:vx:…``, with an
empty marker in the bucket, as a code's does (layout 3; layout 2 kept such runs' states in
each code's entry). Measured with ``scripts/ledger_bytes.py --codes 10000000 --sale-sizes
bench``: see BENCHMARKS.md "Eighteenth session" and "Twentieth session".

Redis keeps a hash in listpack form only while it has at most ``hash-max-listpack-entries``
fields (default 512) and every field and value is at most ``hash-max-listpack-value`` bytes
(default 64). The ledger reads both at start and warns when they are too small; it never
changes them. A value longer than ``hash-max-listpack-value`` (a code with several standing
sales, a big sale) goes to the bucket's *overflow hash* and the bucket keeps a marker, so one
long value never converts its whole bucket. Since layout 4 the value goes there in pieces of
at most ``hash-max-listpack-value`` bytes, so that the overflow hash is a listpack too (an
entry of the hash-table encoding costs ~150 bytes beside its value), and the marker is the
number of pieces, one byte (streams/ledger_overflow.lua); layout 3 and before kept it whole
under an empty marker, which is still read, and is still how a person's state overflows (most
are long, and in pieces they took as much memory for more of Redis's time). Raising
``hash-max-listpack-value`` to 128 (``CONFIG SET`` or redis.conf) keeps codes with two or
three sales inline.

Retention. Bucket keys expire ``retention_days`` and a day after their last write: a writer
pushes a bucket's expiry with its first write of the day to it (an EXPIRE per write was a
third of a code write's Redis time), so a bucket nobody writes to disappears; but a live
bucket keeps codes that went quiet. (A bucket emptied and written again later the same day
waits for the next day's push, or the sweep, to expire.) A write looks for an overflow copy
to remove only when the writer's load saw the value long, or did not load it.
The pure detectors already treat state whose ``last_time`` is older than the retention (in
business time) as absent, so an old entry behaves exactly like a missing one; it only costs
memory. :meth:`RedisLedger.sweep` (``tracewatch sweep``) reclaims it: a Lua script per batch
of buckets deletes the entries whose packed time is older than the cutoff (a packed code state
is a header byte and, unless its top bit is set, 4 big-endian bytes of ``last_time`` in seconds
since :data:`streams.codec.EPOCH`; a person state likewise with its latest purchase or alert,
header bit 0x02; a sale index entry ends in a 2-byte day stamp, :func:`streams.codec.day_stamp`,
of its last write by Redis's clock).

Router memory: ``msgid`` and record markers are 8-byte digests in buckets of the current
*slice* of ``dedupe_days`` of wall-clock time (Redis's clock); lookups check the current and the
previous slice, and a slice key expires a day after it stops being checked, so a marker is
remembered at least ``dedupe_days`` and at most twice that and a day. Since layout 6 a bucket
is a *digest run*, a string of the digests end to end: a batch appends to it with one APPEND,
and a lookup is a plain search of the string (from a digest's boundary), where a bucket hash
took an insert and a field-by-field listpack scan per marker, and turned into a hash table
(~50 bytes a marker more) once it held 512. Its memory is the digests' 8 bytes each and the
room Redis keeps to grow the string (10.5 bytes a marker in the bench). A run that passes
4,096 markers, where searching it would cost more than a hash table's lookup, moves them to
one (its spill hash) and starts again, so a ledger sized for far fewer messages than it gets
slows down no more than layout 5 did; the worker warns. A prefix created before keeps bucket
hashes (its meta has no ``router``). The sale index
(institution + bchno → codes, for 3507 deletes) is bucketed like the codes, keyed by a digest,
with expiry ``retention_days`` (one key per sale would cost ~100 bytes of key overhead per
sale, more than the codes); each entry carries the day it was last written, for the sweep.
Person hoarding states are bucketed the same way with expiry ``person_ttl_days``; the hoarding
link of a person is one small string key each (few people have one).

Interned strings (institutions, drugs, regions) are ids in ``{prefix}:dict:{table}`` (text →
id) and ``{prefix}:dict:{table}:rev`` (id → text; field ``0`` counts ids), allocated by a Lua
script (atomic, so writers never race) and cached in the process. They never expire: packed
states refer to them. Use ``maxmemory-policy noeviction`` or a ``volatile-*`` policy.

Round trips: each ledger call is one Redis command (a Lua script call, ``MGET``, or one
pipeline), plus one more when the batch names strings this process has not cached yet. The
load and store scripts (``ledger_load.lua``, ``ledger_store.lua``) take a batch flat, as
Python has it: every bucket hash the batch touches once in KEYS (with its overflow hash),
one ARGV string of 4-byte bucket numbers, one per field, and the fields (and values) in the
batch's order; the script groups them by bucket. Building that costs no object per bucket
(``scripts/ledger_speed.py`` times it). Those two scripts go over a connection of the
ledger's own (:class:`_ScriptChannel`), their keys and arguments packed as one MessagePack
argument that the script unpacks first (``ledger_args.lua``, with Redis's own cmsgpack);
inside :meth:`RedisLedger.writes_in_flight` a batch's writes are sent back to back and
confirmed once, so Redis applies one while Python packs the next.

Loads sent ahead: a batch announces (:meth:`RedisLedger.expect`) the codes and (person, drug)
keys its stages will load, and the routing recall sends those loads on a second connection
of the ledger's own right after its own lookups, so Redis answers them while the batch is
routed; the loads read those answers and ask only for what was not announced. A write
forgets what was read ahead (it may be stale after it). In the bench this took the worker's
waits for code and person loads from ~9 % of its time to under 1 % (BENCHMARKS.md).

Fields and values are binary; the client must not decode responses.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from itertools import chain
from typing import Any, Final, TypeVar, cast

import hiredis
import msgpack
import redis
from librt.strings import read_i32_be
from redis.commands.core import Script

from detectors.hoarding import HoardingLink, PersonState
from detectors.model import DAY_SECONDS, CodeState
from streams import codec
from streams.codec import TABLES, Interner
from streams.ledger import Announcement

log = logging.getLogger(__name__)

LAYOUT_VERSION: Final = "6"
COMPATIBLE_LAYOUTS: Final = ("1", "2", "3", "4", "5")
"""Layouts this tracewatch reads as its own and upgrades in place: layout 2 only added shared
states (:data:`KEY_SHARED`), which layout 1 never wrote; layout 3 added dated record numbers
to packed states (:func:`streams.codec._put_record`), references in decimal, the shared
overflow hashes (:data:`KEY_SHARED_BIG`) and, on prefixes it created, packed code fields
(:data:`CODE_FIELDS_PACKED`); layout 4 adds shorter first-drug references to packed states
(``streams.codec._FD_REF_APPLIED``), long values in pieces in the overflow hashes
(ledger_overflow.lua) and, on prefixes it creates, narrow code fields
(:data:`CODE_FIELDS_NARROW`); layout 5 gives the prefixes it creates as many person buckets as
code buckets (the meta's ``person_bits``) and interned code fields
(:data:`CODE_FIELDS_INTERNED`); layout 6 keeps the router memory of the prefixes it creates in
digest runs (:data:`ROUTER_RUNS`). Recording the new number keeps an older tracewatch from
misreading what it cannot read."""

CODE_FIELDS_PACKED: Final = "packed"
"""The meta's ``code_fields`` of a prefix created by layout 3: codes that end in digits have
packed fields (:func:`streams.codec.code_slot`). A prefix of an older layout has none and
keeps its fields as they were written."""
CODE_FIELDS_NARROW: Final = "narrow"
"""The meta's ``code_fields`` of a prefix created by layout 4: packed fields, and a 20-digit
code that starts with 8 in a byte less (:func:`streams.codec.narrow_code_slot`)."""
CODE_FIELDS_INTERNED: Final = "interned"
"""The meta's ``code_fields`` of a prefix created by layout 5: narrow fields, and a GS1 code's
GTIN by its id in the GTIN dictionary (:func:`streams.codec.interned_code_slot`)."""

ROUTER_RUNS: Final = "runs"
"""The meta's ``router`` of a prefix created by layout 6: msgid and record markers are digest
runs (:data:`KEY_MSGIDS`), not bucket hashes."""

_META_SCRIPT: Final = """
local fresh = redis.call('EXISTS', KEYS[1]) == 0
for i = 4, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
if fresh then
  redis.call('HSET', KEYS[1], 'code_fields', ARGV[1], 'person_bits', ARGV[2],
             'router', ARGV[3])
end
return redis.call('HGETALL', KEYS[1])
"""

# --------------------------------------------------------------------------- key layout
# {prefix}: TRACEWATCH_KEY_PREFIX. {bucket}: a decimal bucket number. {slice}: the number of
# the dedupe_days-long period of wall-clock time since 1970 (Redis's clock).

KEY_META: Final = "{prefix}:meta"
"""Hash: layout version, bucket counts and the form of code fields (``code_fields``:
:data:`CODE_FIELDS_INTERNED`, :data:`CODE_FIELDS_NARROW`, :data:`CODE_FIELDS_PACKED`, or
absent) of this prefix. Never expires."""
KEY_DICT: Final = "{prefix}:dict:{table}"
"""Hash: interned text → id, for table inst, drug, admvs or gtin. Never expires."""
KEY_DICT_REV: Final = "{prefix}:dict:{table}:rev"
"""Hash: id → interned text; field "0" is the last id given out. Never expires."""
KEY_CODES: Final = "{prefix}:c:{bucket}"
"""Hash: code field (codec.code_slot) → packed CodeState, or "" when in the overflow.
Expires retention_days (and a day) after its last write; older states in it are removed by
the sweep."""
KEY_CODES_BIG: Final = "{prefix}:cx:{bucket}"
"""Hash: code field → packed CodeState too long for the bucket, in pieces (the second
and later under byte 255, the piece's number and the field) or, from layout 3 and before,
whole. Expiry as the bucket's."""
KEY_SHARED: Final = "{prefix}:v:{bucket}"
"""Hash: the low byte of a shared state's serial, in decimal (a listpack keeps it as a small
integer) → the packed CodeState that several codes of the bucket hashes refer to
(codec.shared_ref), or a marker when in the overflow; {bucket} is the serial without that
byte.
Expires retention_days (and a day) after its last write."""
KEY_SHARED_BIG: Final = "{prefix}:vx:{bucket}"
"""Hash: serial's low byte → shared CodeState too long for the shared bucket (a box sold,
returned and sold again, say), in pieces as in :data:`KEY_CODES_BIG`. Expiry as the
bucket's. The scripts name it from the shared bucket's key (":v:" becomes ":vx:")."""
KEY_SHARED_SERIAL: Final = "{prefix}:vn"
"""String: the shared-state serials given out so far (writers take SHARED_BLOCK at a time).
Never expires."""
KEY_MSGIDS: Final = "{prefix}:m:{slice}:{bucket}"
"""String: the 8-byte digests of routed msgids end to end, a *digest run* (a digest may be
there twice); past :data:`RUN_LIMIT_MARKERS` they move to the hash ``…:{bucket}:h`` (digest →
"") and the run keeps a sentinel byte before the digests appended since
(streams/ledger_overflow.lua). Expires a day after the next slice ends. A prefix created
before layout 6 (no ``router`` in its meta) keeps them in a hash instead: digest → ""."""
KEY_RECORDS: Final = "{prefix}:r:{slice}:{bucket}"
"""String: the digest run of routed records (institution, infno, bchno). As msgids."""
KEY_SALES: Final = "{prefix}:s:{bucket}"
"""Hash: 8-byte digest of institution + bchno → the sale's codes and the day of the write
(codec.pack_codes), or a marker when in the overflow. Expires retention_days (and a day) after its
last write; entries older than that are removed by the sweep."""
KEY_SALES_BIG: Final = "{prefix}:sx:{bucket}"
"""Hash: sale digest → codes too long for the bucket, in pieces as in
:data:`KEY_CODES_BIG`."""
KEY_PERSONS: Final = "{prefix}:p:{bucket}"
"""Hash: 8-byte digest of person + drug → packed PersonState, or a marker when in the
overflow. As many buckets as code buckets (the meta's ``person_bits``; a prefix created before
layout 5: its ``aux_bits``). Expires person_ttl_days (and a day) after its last write; older
states in it are removed by the sweep."""
KEY_PERSONS_BIG: Final = "{prefix}:px:{bucket}"
"""Hash: person digest → packed PersonState too long for the bucket, whole (an empty marker in
the bucket)."""
KEY_LINK: Final = "{prefix}:hl:{psn_hash}"
"""String: the person's latest HOARDING alert (codec.pack_link). Expires person_ttl_days
after it was raised."""

# --------------------------------------------------------------------------- sizing

DEFAULT_EXPECTED_CODES: Final = 10_000_000
CODES_PER_BUCKET: Final = 256
"""Bucket counts are the power of two that gives at most this many codes per bucket at the
expected count (so about 128 to 256, well inside the default 512-entry listpack limit)."""
MAX_BUCKET_BITS: Final = 24
ROUTER_BUCKET_SHIFT: Final = 2
"""msgid and record buckets are 2**2 times fewer than code buckets in a new prefix (the meta's
``aux_bits``; a prefix keeps the count it was created with). 2**4 until the twenty-seventh
session: a recall copies each run it searches into Lua, and in a ledger of millions of codes a
batch of ~1,000 messages touches each run once, so the runs' length is the recall's cost: at
9.7 million codes, 4 times as many runs took the recalls from 16 and 15 ms a batch to 10 and 8
and the stages from 27,170 to 30,054 codes/s, Redis's memory 1,087 → 1,079 MiB; on the bench's
small ledger, where a batch of 3,000 searches each run many times, the routing commit cost
3 ms more a batch (BENCHMARKS.md "Twenty-seventh session"). Person buckets were routing
buckets before layout 5: a prefix created before keeps them so."""
DEFAULT_PERSON_TTL_DAYS: Final = 400
"""Hoarding state is worth keeping as long as the longest hoarding window (400 days cover
any override up to a year)."""
MIN_INLINE_VALUE: Final = 48
"""Below this hash-max-listpack-value most code states would go to the overflow hashes."""
ADVISED_INLINE_VALUE: Final = 128
"""The hash-max-listpack-value of the stack's Redis (docker-compose.yml): codes with two or
three standing sales stay inline, 3–4 % less memory than Redis's default 64 on the bench's
states at 10 million codes (BENCHMARKS.md "Twenty-first session")."""
RUN_LIMIT_MARKERS: Final = 4096
"""A digest run past this many markers (ledger_overflow.lua's RUN_LIMIT, 32 KiB) moves them
to a hash table: searching it would cost more than a hash's lookup (BENCHMARKS.md
"Twenty-third session"), and the ledger warns that its routing buckets are too few."""
SHARED_BLOCK: Final = 1 << 16
"""Shared-state serials a writer reserves with one INCRBY (a round trip per 65,536 shared
states; a block is a whole number of shared buckets, so writers never share one)."""
SHARED_BUCKET_BITS: Final = 8
"""A shared bucket holds the states of 256 consecutive serials (a listpack)."""
SHARE_FROM_CODES: Final = 2
"""A run of codes with the same state is stored once when it has at least this many codes:
two codes' 6-byte references and one shared entry already cost less than two states."""

_SCRIPTS: Final = {
    "load": ("ledger_args.lua", "ledger_overflow.lua", "ledger_reference.lua", "ledger_load.lua"),
    "store": ("ledger_args.lua", "ledger_overflow.lua", "ledger_store.lua"),
    "intern": ("ledger_intern.lua",),
    "sweep": ("ledger_overflow.lua", "ledger_reference.lua", "ledger_sweep.lua"),
}
"""Each script and the files it is made of, in order: the scripts that read or write
overflow hashes take their pieces' names from ledger_overflow.lua, and both scripts that
follow references to shared states take ``shared_slot`` from ledger_reference.lua."""


def script_sources() -> dict[str, str]:
    """Each ledger script's name → its Lua source, as Redis is given it."""
    root = resources.files("streams")
    return {name: "".join(root.joinpath(path).read_text() for path in paths)
            for name, paths in _SCRIPTS.items()}

T = TypeVar("T")


CHINA_SECONDS: Final = 8 * 3600
"""Business time is China time (UTC+8) counted as if it were UTC: wall-clock seconds + this."""
SWEEP_BATCH: Final = 64
"""Buckets per sweep script call: ~10,000 codes at the default sizing, about 10 ms of Redis
time (scripts/sweep_speed.py)."""


@dataclass(frozen=True, slots=True)
class SweepCount:
    """What one sweep did to one family of bucket hashes: ``codes`` (code states),
    ``shared`` (states shared by the boxes of one sale), ``persons`` (hoarding states) or
    ``sales`` (the sale index).

    ``buckets`` is the number of bucket keys of the family, ``present`` how many exist;
    ``entries`` counts their fields and ``removed`` those older than ``cutoff`` (business
    seconds; in a dry run: that would be removed). ``bytes_before`` and ``bytes_after`` are
    the ``MEMORY USAGE`` of the buckets that had such entries (with their overflow hashes),
    before and after; equal in a dry run. ``unreadable`` entries, whose time cannot be read
    (a sale index entry written before entries carried a day stamp), are kept and counted.
    """

    family: str
    cutoff: int
    buckets: int
    present: int
    entries: int
    removed: int
    unreadable: int
    bytes_before: int
    bytes_after: int

    @property
    def freed(self) -> int:
        """Bytes the removal gave back (0 in a dry run)."""
        return self.bytes_before - self.bytes_after


@dataclass(frozen=True, slots=True)
class SweepResult:
    """The outcome of :meth:`RedisLedger.sweep`: ``now`` and the cutoffs are business seconds."""

    now: int
    dry_run: bool
    codes: SweepCount
    shared: SweepCount
    """The states shared by the boxes of one sale (``family`` "shared")."""
    persons: SweepCount
    sales: SweepCount
    seconds: float

    @property
    def families(self) -> tuple[SweepCount, ...]:
        """The counts of code states, shared states, person states and the sale index."""
        return (self.codes, self.shared, self.persons, self.sales)

    @property
    def removed(self) -> int:
        """Entries removed (or, in a dry run, that would be) in all families."""
        return sum(count.removed for count in self.families)


class LedgerError(Exception):
    """The Redis ledger cannot work: Redis unreachable, layout mismatch, missing dictionary."""


def _redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


_BLAKE2B_12: Final = hashlib.blake2b(digest_size=12)
"""An empty 12-byte BLAKE2b, copied for each key hashed: a copy costs less than a new hash
given its size by keyword (in compiled code, a call with a keyword builds a dict)."""


def _digest(text: str) -> bytes:
    """The 12-byte digest a key is stored under: 8 bytes of field, 4 of bucket."""
    hasher = _BLAKE2B_12.copy()
    hasher.update(text.encode("utf-8", "surrogatepass"))
    return hasher.digest()


def _digest_slot(text: str, bits: int) -> tuple[int, bytes]:
    """(bucket, 8-byte field) of a key stored under its digest (96 bits in all)."""
    digest = _digest(text)
    return (int(read_i32_be(digest, 8)) & 0xFFFF_FFFF) >> (32 - bits), digest[:8]


def _digest_slots(texts: Iterable[str], bits: int) -> tuple[list[int], list[bytes]]:
    """The buckets and fields of keys stored under their digests, as :func:`_digest_slot`."""
    buckets: list[int] = []
    fields: list[bytes] = []
    shift = 32 - bits
    for text in texts:
        digest = _digest(text)
        # librt's reader is native when compiled; int.from_bytes is a Python call there.
        buckets.append((int(read_i32_be(digest, 8)) & 0xFFFF_FFFF) >> shift)
        fields.append(digest[:8])
    return buckets, fields


Slot = tuple[int, bytes]
"""(bucket, field) of a key in a bucketed table."""

SlotsOf = Callable[[Iterable[str], int], tuple[list[int], list[bytes]]]
"""The buckets and fields of many keys in ``2**bits`` buckets (``codec.code_slots``,
:func:`_digest_slots`)."""


@dataclass(slots=True)
class _Loaded:
    """What a load looked up, for the write that follows it: each item's slot, and the
    items found absent or inline (their write needs no look for an overflow copy)."""

    slots: dict[str, Slot]
    inline: set[str]


def _slots_of(keys: Iterable[str], known: dict[str, Slot],
              slot_of: Callable[[str, int], Slot], bits: int) -> tuple[list[int], list[bytes]]:
    """The buckets and fields of keys: from ``known`` (a load's, for the store that follows
    it: a slot is a function of its key, so a key not there is only computed), else
    ``slot_of(key, bits)``."""
    buckets: list[int] = []
    fields: list[bytes] = []
    for key in keys:
        slot = known.get(key)
        if slot is None:
            slot = slot_of(key, bits)
        buckets.append(slot[0])
        fields.append(slot[1])
    return buckets, fields


def _bits_for(count: int) -> int:
    """Bucket bits for ``count`` codes at most CODES_PER_BUCKET each."""
    buckets = max(1, -(-count // CODES_PER_BUCKET))
    return min(MAX_BUCKET_BITS, (buckets - 1).bit_length())


def remove_prefix(client: redis.Redis, prefix: str) -> int:
    """Unlink every key under ``prefix`` (a demo's or a bench run's ledger); how many.

    For a throw-away ledger only: the interned dictionaries go too, so nothing written under
    the prefix can be read again. Other prefixes are not touched.
    """
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            removed += int(client.unlink(*batch))
            batch.clear()
    if batch:
        removed += int(client.unlink(*batch))
    return removed


# --------------------------------------------------------------------------- interner


class RedisInterner:
    """The shared two-way dictionaries, cached in the process.

    :meth:`to_id` and :meth:`to_text` answer from the cache only: on a miss they note what is
    wanted, count a miss and return a placeholder (id 0, text ""). The ledger then calls
    :meth:`resolve` — one round trip that allocates or fetches everything noted — and packs
    or unpacks the affected values again.
    """

    def __init__(self, client: redis.Redis, prefix: str, intern: Script) -> None:
        self._client = client
        self._intern = intern
        self._forward = {t: KEY_DICT.format(prefix=prefix, table=t) for t in TABLES}
        self._reverse = {t: KEY_DICT_REV.format(prefix=prefix, table=t) for t in TABLES}
        self._ids: dict[str, dict[str, int]] = {t: {} for t in TABLES}
        self._texts: dict[str, dict[int, str]] = {t: {} for t in TABLES}
        self._want_ids: dict[str, set[str]] = {t: set() for t in TABLES}
        self._want_texts: dict[str, set[int]] = {t: set() for t in TABLES}
        self.misses = 0

    def to_id(self, table: str, text: str) -> int:
        """The cached id, or 0 (and a noted miss)."""
        ident = self._ids[table].get(text)
        if ident is None:
            self._want_ids[table].add(text)
            self.misses += 1
            return 0
        return ident

    def to_text(self, table: str, ident: int) -> str:
        """The cached text, or "" (and a noted miss)."""
        text = self._texts[table].get(ident)
        if text is None:
            self._want_texts[table].add(ident)
            self.misses += 1
            return ""
        return text

    def _remember(self, table: str, text: str, ident: int) -> None:
        self._ids[table][text] = ident
        self._texts[table][ident] = text

    def resolve(self) -> None:
        """Allocate or fetch everything noted since the last call, in one round trip."""
        asked: list[tuple[bool, str, list[Any]]] = []
        for table in TABLES:
            if self._want_ids[table]:
                asked.append((True, table, sorted(self._want_ids[table])))
            if self._want_texts[table]:
                asked.append((False, table, sorted(self._want_texts[table])))
            self._want_ids[table].clear()
            self._want_texts[table].clear()
        if not asked:
            return
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for allocate, table, wanted in asked:
                if allocate:
                    pipe.evalsha(self._intern.sha, 2, self._forward[table],
                                 self._reverse[table], *wanted)
                else:
                    pipe.hmget(self._reverse[table], wanted)
            try:
                answers = pipe.execute()
                break
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self._client.script_load(self._intern.script)  # Redis lost its scripts
        for (allocate, table, wanted), answer in zip(asked, answers, strict=True):
            for item, got in zip(wanted, answer, strict=True):
                if allocate:
                    self._remember(table, item, int(got))
                elif got is None:
                    raise LedgerError(
                        f"interned {table} id {item} is missing from "
                        f"{self._reverse[table]}: the dictionaries must never expire or be "
                        "evicted (use maxmemory-policy noeviction or volatile-*)"
                    )
                else:
                    self._remember(table, bytes(got).decode("utf-8", "surrogatepass"), item)


# --------------------------------------------------------------------------- bucketed maps


_INDEX_TYPE: Final = next(code for code in "IL" if array(code).itemsize == 4)


def _index_bytes(numbers: list[int]) -> bytes:
    """``numbers`` as 4-byte little-endian unsigned integers, as the Lua scripts read them."""
    packed = array(_INDEX_TYPE, numbers)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _numbered(buckets: Iterable[int]) -> tuple[list[int], dict[int, int]]:
    """For each bucket, its number (from 0) among the distinct buckets in order of first
    appearance; and those buckets → their numbers."""
    numbers: dict[int, int] = {}
    number = numbers.setdefault
    return [number(bucket, len(numbers)) for bucket in buckets], numbers


@dataclass(frozen=True, slots=True)
class _Map:
    """One family of bucket hashes and their overflow hashes: the key prefixes of both."""

    bucket: str
    overflow: str
    shared: str = ""
    """Key prefix of the shared states its entries may refer to (codes only)."""

    @classmethod
    def of(cls, template: str, overflow: str, prefix: str, shared: str = "") -> _Map:
        """The family whose keys are ``template`` and ``overflow`` with a bucket number (and
        whose entries may refer to the shared states ``shared`` with one)."""
        return cls(template.format(prefix=prefix, bucket=""),
                   overflow.format(prefix=prefix, bucket=""),
                   shared.format(prefix=prefix, bucket=""))


def _present(items: Sequence[str], values: Sequence[bytes | None]) -> dict[str, bytes]:
    """Each item with its looked-up value, leaving out those with none."""
    return {item: value for item, value in zip(items, values, strict=True) if value is not None}


def _seen_of(texts: Sequence[str], values: Sequence[bytes | None]) -> set[str]:
    """The texts with a marker, from a lookup of the current then the previous slice."""
    half = len(texts)
    return {text for text, here, there in zip(texts, values[:half], values[half:], strict=True)
            if here is not None or there is not None}


class _ScriptChannel:
    """The ledger's own connection for its load and store scripts.

    A call's keys and arguments travel as one MessagePack argument, unpacked by the script
    (``ledger_args.lua``): a batch has two or three per code, and hiredis packing each as an
    argument of its own took 6 % of the worker's CPU (three allocations per argument; one
    long argument costs a quarter of that). Redis parses less, too. A write can be *sent
    ahead*: its reply is read later, by :meth:`settle` or by the next call, since Redis runs
    the commands of one connection in order. Meanwhile this process packs the next write
    while Redis applies the previous one on the other core.

    When Redis answers NOSCRIPT (it restarted, or its scripts were flushed) the scripts are
    loaded again and everything of the round is sent again, in order: the ledger's writes
    set whole values, so repeating one changes nothing. A connection error drops the
    connection and what was in flight; the caller retries the whole round.
    """

    def __init__(self, client: redis.Redis, scripts: Iterable[Script]) -> None:
        self._client = client
        self._scripts = list(scripts)
        self._connection: Any = None  # a redis.connection.Connection of our own
        self._sent: list[bytes] = []
        #: Waits for replies: one per call or settle, however many writes were in flight.
        self.round_trips = 0

    def send(self, script: Script, keys: Sequence[str | bytes],
             args: Sequence[str | bytes]) -> None:
        """Send a script call without reading its reply."""
        # (hiredis's stub types the argument as a 1-tuple.) Redis's cmsgpack reads no bin
        # type: bytes go as MessagePack's raw strings, which Lua holds the same.
        command = hiredis.pack_command(cast(Any, (
            b"EVALSHA", script.sha, 0, msgpack.packb((keys, args), use_bin_type=False))))
        self._sent.append(command)
        self._transmit(command)

    def call(self, script: Script, keys: Sequence[str | bytes],
             args: Sequence[str | bytes]) -> Any:
        """A script call's reply (after those of the writes sent before it)."""
        self.send(script, keys, args)
        return self.settle()[-1]

    def settle(self, count: int = -1) -> list[Any]:
        """Read the replies of everything sent, in order, or of the ``count`` sent first
        (the later ones stay in flight); raise the first error."""
        if not self._sent:
            return []
        wanted = len(self._sent) if count < 0 else min(count, len(self._sent))
        replies = self._replies(wanted)
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            self._replies(len(self._sent) - wanted)  # the rest, to send everything again
            for script in self._scripts:
                self._client.script_load(script.script)
            for command in self._sent:
                self._transmit(command)
            replies = self._replies(wanted)
        del self._sent[:wanted]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def confirm(self) -> None:
        """Read the replies of the writes sent ahead; raise the first error. A failure keeps
        them, with the connection dropped, and the next ``confirm`` sends them all again on a
        new one (each sets whole values: repeating one changes nothing), so a caller that
        retries until one succeeds has every write applied."""
        sent = list(self._sent)
        if not sent:
            return
        try:
            if self._connection is None:  # an earlier confirmation failed: the round again
                for command in sent:
                    self._transmit(command)
            self.settle()
        except BaseException:
            self.reset()
            self._sent.extend(sent)
            raise

    def reset(self) -> None:
        """Forget what is in flight and drop the connection (after a failure)."""
        self._sent.clear()
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None

    def _transmit(self, command: bytes) -> None:
        if self._connection is None:
            self._connection = self._client.connection_pool.make_connection()
        try:
            self._connection.send_packed_command([command], check_health=False)
        except BaseException:
            self.reset()
            raise

    def _replies(self, count: int) -> list[Any]:
        connection = self._connection
        assert connection is not None
        replies: list[Any] = []
        if not count:
            return replies
        self.round_trips += 1
        try:
            for _ in range(count):
                try:
                    replies.append(connection.read_response())
                except redis.exceptions.ResponseError as error:
                    replies.append(error)
        except BaseException:
            self.reset()
            raise
        return replies


EXPIRY_SPARE: Final = DAY_SECONDS
"""Bucket hashes get their expiry pushed by their first write of a day only, so each is set
this much further out than the retention needs: the writes after it that day are covered."""


class _Expiries:
    """Which bucket hashes this process pushed the expiry of today, per family of keys.

    An EXPIRE is a call of its own in the store script, and one per written bucket was a
    third of a code write's Redis time; a bucket's expiry only needs pushing once a day (with
    :data:`EXPIRY_SPARE` to spare). Forgotten when a write round fails, since Redis may not
    have applied it: the next writes push again.
    """

    __slots__ = ("_days",)

    def __init__(self) -> None:
        self._days: dict[str, array[int]] = {}

    def due(self, table: str, buckets: Sequence[int], values: Sequence[bytes | None],
            day: int) -> list[bool]:
        """For each write of ``values[i]`` to ``buckets[i]`` of ``table``, whether it is to
        push the bucket's expiry: the first set of the day to the bucket, in this process (a
        delete pushes nothing, so it does not count)."""
        days = self._days.get(table)
        if days is None:
            if len(self._days) >= 16:  # router slices come and go
                self._days.clear()
            days = self._days[table] = array("l")
        if buckets and max(buckets) >= len(days):
            days.extend(bytes(array("l").itemsize * (max(buckets) + 1 - len(days))))
        due: list[bool] = []
        for bucket, value in zip(buckets, values, strict=True):
            if value is None or days[bucket] == day:
                due.append(False)
            else:
                days[bucket] = day
                due.append(True)
        return due

    def forget(self) -> None:
        self._days.clear()


class _Writes:
    """KEYS and ARGV of one call of ``ledger_store.lua``, built straight from a batch.

    Each :meth:`run` adds the bucket hashes one family touches (with their overflow hashes,
    and one expiry), one 4-byte entry per write (the bucket's number among all runs, whether
    it may have an overflow copy to remove, whether it pushes the bucket's expiry — the
    first set of the ``day`` to the bucket, by ``expiries`` —, whether it sets or deletes)
    and the write's field and value. A bucket met twice in one batch is one key; no
    per-bucket object is built.
    """

    __slots__ = ("args", "day", "entries", "expiries", "keys", "runs", "size")

    def __init__(self, limit: int, expiries: _Expiries, day: int) -> None:
        self.expiries = expiries
        self.day = day
        self.keys: list[str] = []
        self.runs: list[bytes] = [b"%d" % limit]
        self.entries: list[int] = []
        self.args: list[bytes] = [b"", b""]  # the header and the entries, filled in by call
        self.size = 0

    def run(self, table: str, overflow: str | None, ttl: int, buckets: Sequence[int],
            names: Sequence[bytes], values: Sequence[bytes | None],
            inline: Sequence[bool] | None = None, push_always: bool = False,
            pieces: bool = True) -> None:
        """Write ``values[i]`` under ``names[i]`` in bucket ``buckets[i]`` of the family
        whose keys are ``table`` (and ``overflow``, None when it has none) with a bucket
        number; None deletes. Within a bucket, deletes run before sets; runs run in order.
        A long value goes to the overflow hash in pieces (``pieces``: keeping that hash a
        listpack where it holds few; ledger_overflow.lua), else whole.

        A bucket's expiry is pushed to ``ttl`` and :data:`EXPIRY_SPARE` by its first set of
        the day (``push_always``: by every batch that sets in it). ``inline[i]``: the field is
        known to have no copy in the overflow hash (its value was read back short), so the
        script need not look (default: none is)."""
        if not names:
            return
        numbers: dict[int, int] = {}
        number = numbers.setdefault
        base = self.size
        if push_always:
            pushes = [value is not None for value in values]
        else:
            pushes = self.expiries.due(table, buckets, values, self.day)
        known = [False] * len(names) if inline is None else inline
        self.entries += [
            (base + number(bucket, len(numbers))) * 8 + (0 if short else 4)
            + (2 if push else 0) + (value is not None)
            for bucket, value, push, short in zip(buckets, values, pushes, known, strict=True)]
        self.args += chain.from_iterable(
            zip(names, [b"" if value is None else value for value in values], strict=True))
        self.keys += [table + str(bucket) for bucket in numbers]
        if overflow is not None:
            self.keys += [overflow + str(bucket) for bucket in numbers]
        self.runs.append(b"%d %d %d" % (len(numbers),
                                        0 if overflow is None else 2 if pieces else 1,
                                        ttl + EXPIRY_SPARE))
        self.size += len(numbers)

    def run_digests(self, table: str, ttl: int, buckets: Sequence[int],
                    digests: Sequence[bytes], remove: bool = False) -> None:
        """Append ``digests[i]`` to the digest run ``buckets[i]`` of the family whose keys
        are ``table`` and a bucket number (``remove``: take every copy of it out instead):
        one write a bucket, its digests end to end. Within a run, removals come first; the
        expiry is pushed as :meth:`run`'s, and always on a run the write creates."""
        if not digests:
            return
        grouped: dict[int, list[bytes]] = {}
        for bucket, digest in zip(buckets, digests, strict=True):
            found = grouped.get(bucket)
            if found is None:
                grouped[bucket] = [digest]
            else:
                found.append(digest)
        distinct = list(grouped)
        joined = [b"".join(group) for group in grouped.values()]
        base = self.size
        pushes = self.expiries.due(
            table, distinct, [None] * len(joined) if remove else joined, self.day)
        kind = 0 if remove else 1
        self.entries += [(base + number) * 8 + (2 if push else 0) + kind
                         for number, push in enumerate(pushes)]
        self.args += chain.from_iterable((b"", value) for value in joined)
        self.keys += [table + str(bucket) for bucket in distinct]
        self.runs.append(b"%d 3 %d" % (len(distinct), ttl + EXPIRY_SPARE))
        self.size += len(distinct)

    def send(self, channel: _ScriptChannel, script: Script) -> bool:
        """Send the writes, as one script call (none when there are none); True if sent."""
        if not self.entries:
            return False
        self.args[0] = b" ".join(self.runs)
        self.args[1] = _index_bytes(self.entries)
        channel.send(script, self.keys, self.args)
        return True


@dataclass(slots=True)
class _AheadLoad:
    """A load sent ahead on the second connection: the items it asked for and their slots."""

    family: str
    items: list[str]
    buckets: list[int]
    fields: list[bytes]


class RedisLedger:
    """A :class:`~streams.ledger.Ledger` in Redis; see the module docstring for the layout.

    ``buckets`` (a power of two) fixes the number of code buckets of a new prefix; None
    derives it from ``expected_codes`` (default 10 million). A prefix that already has data
    keeps its own count, and a different explicit ``buckets`` is an error. The hoarding state
    of a person is kept ``person_ttl_days`` after its last write.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "tw",
        retention_days: int = 1095,
        dedupe_days: int = 30,
        buckets: int | None = None,
        *,
        person_ttl_days: int = DEFAULT_PERSON_TTL_DAYS,
        expected_codes: int | None = None,
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisLedger needs a client with decode_responses=False")
        if buckets is not None and (buckets < 1 or buckets & (buckets - 1)
                                    or buckets > 1 << MAX_BUCKET_BITS):
            raise ValueError(f"buckets must be a power of two up to 2**{MAX_BUCKET_BITS}")
        for name, days in (("retention_days", retention_days), ("dedupe_days", dedupe_days),
                           ("person_ttl_days", person_ttl_days)):
            if days <= 0:
                raise ValueError(f"{name} must be positive, not {days}")
        self.client = client
        self.prefix = prefix
        self.retention_seconds = retention_days * DAY_SECONDS
        self.dedupe_seconds = dedupe_days * DAY_SECONDS
        self.person_seconds = person_ttl_days * DAY_SECONDS
        self.warnings: list[str] = []

        scripts = {name: client.register_script(source)
                   for name, source in script_sources().items()}
        for script in scripts.values():
            client.script_load(script.script)  # no NOSCRIPT retry inside a batch
        self._load_script = scripts["load"]
        self._store_script = scripts["store"]
        self._channel = _ScriptChannel(client, (self._load_script, self._store_script))
        # Loads a batch announced (``expect``) go out on a second connection right after the
        # routing recall, and Redis answers them while this process routes the batch.
        self._ahead = _ScriptChannel(client, (self._load_script,))
        self._expected: Announcement | None = None
        self._ahead_sent: list[_AheadLoad] = []
        self._in_flight = False
        self._expiries = _Expiries()
        # The slots of the codes and person keys the last load looked up, not to compute them
        # again for the write that follows (a digest or a GS1 code's slot costs a hash), and
        # those it found absent or inline: their writes need not look for an overflow copy
        # (each writer loads before it stores). The routing keys of the last recall, for its
        # commit.
        self._loaded_codes: _Loaded = _Loaded({}, set())
        self._loaded_persons: _Loaded = _Loaded({}, set())
        self._routing_slots: dict[str, Slot] = {}
        self._prepared_slots: dict[str, Slot] = {}  # of the next recall (prepare_recall)
        self._sale_slots: dict[str, Slot] = {}
        self._warned_spills: set[str] = set()
        self._sweep_script = scripts["sweep"]
        self.interner = RedisInterner(client, prefix, scripts["intern"])

        requested = None if buckets is None else buckets.bit_length() - 1
        layout = self._layout(requested, _bits_for(expected_codes or DEFAULT_EXPECTED_CODES))
        self.code_bits = int(layout["code_bits"])
        self.sale_bits = int(layout["sale_bits"])
        self.aux_bits = int(layout["aux_bits"])
        # A prefix created before layout 5 keeps its persons in the routing buckets.
        self.person_bits = int(layout.get("person_bits", layout["aux_bits"]))
        self.code_fields = layout.get("code_fields", "")
        self.router_runs = layout.get("router") == ROUTER_RUNS
        self.interned_fields = self.code_fields == CODE_FIELDS_INTERNED
        self.narrow_fields = self.code_fields in (CODE_FIELDS_NARROW, CODE_FIELDS_INTERNED)
        self.packed_fields = self.narrow_fields or self.code_fields == CODE_FIELDS_PACKED
        self._code_slot: Callable[[str, int], Slot] = (
            self._interned_code_slot if self.interned_fields
            else codec.narrow_code_slot if self.narrow_fields
            else codec.packed_code_slot if self.packed_fields else codec.code_slot)
        self._code_slots: SlotsOf = (
            self._interned_code_slots if self.interned_fields
            else codec.narrow_code_slots if self.narrow_fields
            else codec.packed_code_slots if self.packed_fields else codec.code_slots)
        self._codes = _Map.of(KEY_CODES, KEY_CODES_BIG, prefix, KEY_SHARED)
        self._shared = KEY_SHARED.format(prefix=prefix, bucket="")
        self._shared_big = KEY_SHARED_BIG.format(prefix=prefix, bucket="")
        self._serial_key = KEY_SHARED_SERIAL.format(prefix=prefix)
        self._serial_next = self._serial_end = 0
        self._sales = _Map.of(KEY_SALES, KEY_SALES_BIG, prefix)
        self._persons = _Map.of(KEY_PERSONS, KEY_PERSONS_BIG, prefix)
        seconds, micros = client.time()
        self._clock_offset = seconds + micros / 1e6 - time.time()
        self.inline_limit = self._check_config(
            None if expected_codes is None else expected_codes >> self.code_bits)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisLedger:
        """A ledger on the Redis at ``url``; LedgerError naming it when it does not answer."""
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            raise LedgerError(
                f"cannot reach Redis at URL: {_redact(url)} ({error}); "
                "start redis-server or set TRACEWATCH_REDIS_URL"
            ) from None
        return cls(client, **kw)

    # ------------------------------------------------------------------ start-up

    def _layout(self, requested: int | None, derived: int) -> dict[str, str]:
        """The layout of this prefix, recording it when the prefix is new (race-free)."""
        key = KEY_META.format(prefix=self.prefix)
        code_bits = derived if requested is None else requested
        wanted = {
            "layout": LAYOUT_VERSION,
            "code_bits": str(code_bits),
            "sale_bits": str(code_bits),
            "aux_bits": str(max(0, code_bits - ROUTER_BUCKET_SHIFT)),
            "epoch": str(codec.EPOCH),
        }
        # One script, so that only the writer that creates the prefix records its form of code
        # fields, its person buckets and its router memory's form: an older ledger keeps
        # those it was written with.
        answer = self.client.eval(_META_SCRIPT, 1, key, CODE_FIELDS_INTERNED, str(code_bits),
                                  ROUTER_RUNS,
                                  *(item for pair in wanted.items() for item in pair))
        stored = {answer[i].decode(): answer[i + 1].decode() for i in range(0, len(answer), 2)}
        if stored.get("layout") in COMPATIBLE_LAYOUTS:
            log.info("%s: layout %s upgraded in place to %s", key, stored["layout"],
                     LAYOUT_VERSION)
            self.client.hset(key, "layout", LAYOUT_VERSION)
            stored["layout"] = LAYOUT_VERSION
        if stored.get("layout") != LAYOUT_VERSION or stored.get("epoch") != str(codec.EPOCH):
            raise LedgerError(
                f"{key} records layout {stored.get('layout')!r}, this tracewatch writes "
                f"layout {LAYOUT_VERSION!r}: use another TRACEWATCH_KEY_PREFIX or migrate"
            )
        if requested is not None and stored["code_bits"] != str(requested):
            raise LedgerError(
                f"prefix {self.prefix!r} already uses {1 << int(stored['code_bits'])} code "
                f"buckets, not {1 << requested}; the count cannot change in place"
            )
        return stored

    def _config(self, *names: str) -> str | None:
        for name in names:
            try:
                found = self.client.config_get(name)
            except redis.ResponseError:
                return None
            for value in found.values():
                return value.decode() if isinstance(value, bytes) else str(value)
        return None

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        log.warning("%s", text)

    def _check_config(self, per_bucket: int | None) -> int:
        """Warn about Redis settings that waste memory or endanger the dictionaries; returns
        the longest value a bucket hash keeps in listpack form. ``per_bucket`` is the expected
        number of codes per bucket, when known."""
        entries = self._config("hash-max-listpack-entries", "hash-max-ziplist-entries")
        value = self._config("hash-max-listpack-value", "hash-max-ziplist-value")
        policy = self._config("maxmemory-policy")
        if value is None or entries is None:
            self._warn("CONFIG GET is not allowed: assuming hash-max-listpack-value 64 and "
                       "hash-max-listpack-entries 512")
            entries, value = "512", "64"
        if per_bucket is not None and int(entries) < 2 * per_bucket:
            self._warn(
                f"hash-max-listpack-entries is {entries} but code buckets will hold about "
                f"{per_bucket} codes: buckets will leave the compact encoding (raise it to "
                f"{4 * per_bucket} or more)"
            )
        if int(value) < MIN_INLINE_VALUE:
            self._warn(
                f"hash-max-listpack-value is {value}: most code states (about 31 bytes "
                "and up) will go to the overflow hashes; raise it to 64 or more"
            )
        elif int(value) < ADVISED_INLINE_VALUE:
            # Not a warning: Redis's default works, it only costs memory.
            log.info("hash-max-listpack-value is %s: codes with two or three standing sales "
                     "go to the overflow hashes; %d, as in the stack's docker-compose.yml, "
                     "keeps them inline and the ledger 3 to 4 %% smaller", value,
                     ADVISED_INLINE_VALUE)
        if policy is not None and policy.startswith("allkeys"):
            self._warn(f"maxmemory-policy is {policy}: Redis may evict the interned "
                       "dictionaries, which the packed states need; use noeviction or volatile-*")
        return int(value)

    # ------------------------------------------------------------------ plumbing

    def _slice(self) -> tuple[int, int]:
        """(current dedupe slice, seconds until its successor ends) by Redis's clock."""
        now = time.time() + self._clock_offset
        current = int(now // self.dedupe_seconds)
        return current, int((current + 2) * self.dedupe_seconds - now) + 1

    def _writes(self) -> _Writes:
        """An empty store-script call, pushing expiries once a day by Redis's clock."""
        day = int((time.time() + self._clock_offset) // DAY_SECONDS)
        return _Writes(self.inline_limit, self._expiries, day)

    def _note_slots(self, loaded: _Loaded, items: Sequence[str], raw: dict[str, bytes],
                    buckets: Sequence[int], fields: Sequence[bytes]) -> None:
        """Add the slots of looked-up items to ``loaded``, and to its inline ones those
        whose value was absent or short enough for its bucket."""
        limit = self.inline_limit
        slots, inline = loaded.slots, loaded.inline
        for item, bucket, field in zip(items, buckets, fields, strict=True):
            slots[item] = (bucket, field)
            value = raw.get(item)
            if value is None or len(value) <= limit:
                inline.add(item)

    def _send_load(self, keys: list[str], overflow: bool, numbers: list[int],
                   fields: list[bytes], channel: _ScriptChannel | None = None,
                   shared: str = "", runs: bool = False) -> int:
        """Send the lookup of ``fields[i]`` in bucket hash ``keys[numbers[i]]`` as one script
        call (its reply, read by :meth:`_replies`, holds None where absent). With
        ``overflow``, ``keys`` ends with the buckets' overflow hashes, in the same order.
        ``shared``: the key prefix of the shared states that entries may refer to; the reply
        holds the state referred to instead. ``runs``: the keys are digest runs, and the
        reply holds b"" where a run has the field. Returns the calls sent: 0 when there is
        nothing to look up. ``channel``: the connection (the ledger's first by default)."""
        if not fields:
            return 0
        flags = b"2" if runs else b"1" if overflow else b"0"
        if shared:
            flags += b" " + shared.encode()
        (channel or self._channel).send(
            self._load_script, keys, [flags, _index_bytes(numbers), *fields])
        return 1

    def _replies(self, sent: int) -> list[list[bytes | None]]:
        """The replies of the last ``sent`` lookups, after one wait for all of them."""
        if not sent:
            return []
        return cast(list[list[bytes | None]], self._channel.settle()[-sent:])

    def _send_map(self, table: _Map, buckets: Sequence[int], fields: Sequence[bytes],
                  channel: _ScriptChannel | None = None) -> int:
        """Send the lookup of the values stored under ``(buckets[i], fields[i])``."""
        numbers, distinct = _numbered(buckets)
        keys = [table.bucket + str(bucket) for bucket in distinct]
        keys += [table.overflow + str(bucket) for bucket in distinct]
        return self._send_load(keys, True, numbers, list(fields), channel, table.shared)

    def _load_map(self, table: _Map, items: Sequence[str], buckets: Sequence[int],
                  fields: Sequence[bytes]) -> dict[str, bytes]:
        """Values of the items stored under ``(buckets[i], fields[i])``; absent ones left out."""
        sent = self._send_map(table, buckets, fields)
        return _present(items, self._replies(sent)[0]) if sent else {}

    def _with_dictionary(self, items: Iterable[tuple[str, T]],
                         work: Callable[[T, Interner], Any]) -> dict[str, Any]:
        """``work(item, interner)`` for each item. Items that met strings or ids this process
        has not cached are done again after one round trip that allocates or fetches them."""
        interner = self.interner
        done: dict[str, Any] = {}
        again: list[tuple[str, T]] = []
        for key, item in items:
            misses = interner.misses
            result = work(item, interner)
            if interner.misses == misses:
                done[key] = result
            else:
                again.append((key, item))
        if again:
            interner.resolve()
            for key, item in again:
                misses = interner.misses
                done[key] = work(item, interner)
                if interner.misses != misses:
                    raise LedgerError("interned strings still unknown after fetching them")
        return done

    @property
    def script_round_trips(self) -> int:
        """Round trips of the load and store scripts so far (they bypass the client)."""
        return self._channel.round_trips

    def _write(self, writes: _Writes) -> None:
        """Send a batch of writes; wait for Redis unless inside :meth:`writes_in_flight`."""
        self._drop_ahead()
        try:
            if writes.send(self._channel, self._store_script) and not self._in_flight:
                self._channel.settle()
        except BaseException:
            self._expiries.forget()
            raise

    @contextmanager
    def writes_in_flight(self, confirm: bool = True) -> Iterator[None]:
        """Writes inside are sent without waiting for Redis, in order, and confirmed on the
        way out (where their errors are raised): Redis applies one while the next is packed.
        With ``confirm=False`` they are left in flight for :meth:`confirm_writes`, which
        keeps them for sending again if it fails (the worker parses its next batch
        meanwhile). Confirm before any other call: another call waits for them too, but a
        failure there forgets them.

        Leaving by an exception drops what is in flight (Redis may or may not have applied
        it: the caller must repeat the whole round, as the worker's retry does).
        """
        self._in_flight = True
        try:
            try:
                yield
            except BaseException:
                self._channel.reset()
                raise
            finally:
                self._in_flight = False
            if confirm:
                self._channel.settle()
        except BaseException:
            self._expiries.forget()  # Redis may not have applied the round: push again
            raise

    def confirm_writes(self) -> None:
        """Wait for the writes left in flight and raise the first error; they are kept, and
        the next call sends them again (:meth:`_ScriptChannel.confirm`): call it until it
        returns."""
        try:
            self._channel.confirm()
        except BaseException:
            self._expiries.forget()  # Redis may not have applied the round: push again
            raise

    # ------------------------------------------------------------------ codes

    def code_slot(self, code: str) -> tuple[int, bytes]:
        """(bucket, field) of a code."""
        return self._code_slot(code, self.code_bits)

    def _gtin_ids(self, codes: Iterable[str]) -> dict[str, int]:
        """The ids of the GTINs of the GS1 codes among ``codes``, given out when new: from the
        cache, else in one round trip. A load gives them out too (a GTIN names a product;
        a lookup that found no id would need a round trip of its own)."""
        interner = self.interner
        ids: dict[str, int] = {}
        for code in codes:
            if code[:4] == "(01)":
                gtin = codec.gs1_gtin(code)
                if gtin is not None and gtin not in ids:
                    ids[gtin] = interner.to_id(codec.GTIN, gtin)
        if 0 in ids.values():
            interner.resolve()
            ids = {gtin: interner.to_id(codec.GTIN, gtin) for gtin in ids}
        return ids

    def _interned_code_slot(self, code: str, bits: int) -> Slot:
        return codec.interned_code_slot(code, bits, self._gtin_ids((code,)))

    def _interned_code_slots(self, codes: Iterable[str], bits: int,
                             ) -> tuple[list[int], list[bytes]]:
        listed = codes if isinstance(codes, list) else list(codes)
        return codec.interned_code_slots(listed, bits, self._gtin_ids(listed))

    def load_codes(self, codes: Collection[str]) -> dict[str, CodeState]:
        """States of the given codes that exist; absent codes are left out."""
        raw, self._loaded_codes = self._load_family(KEY_CODES, list(codes))
        states = self._with_dictionary(raw.items(), codec.unpack_code_state)
        return {code: states[code] for code in raw}

    # ------------------------------------------------------------------ loads sent ahead

    reads_ahead = True
    """This ledger can send a batch's loads ahead (:meth:`expect`)."""

    def expect(self, announce: Announcement) -> None:
        """``announce()`` lists the codes and person keys this batch will load: it is called
        once the next :meth:`recall_routing` is sent (while Redis answers the recall), and
        they are looked up on a second connection, answered while the batch is routed. A
        load of others is looked up then; a write forgets what was read ahead (it may be
        stale after it)."""
        self._drop_ahead()
        self._expected = announce

    def _family(self, family: str) -> tuple[_Map, SlotsOf, int]:
        """The table of a family that loads can be sent ahead for, its slot function and
        bucket bits."""
        if family == KEY_CODES:
            return self._codes, self._code_slots, self.code_bits
        return self._persons, _digest_slots, self.person_bits

    def _load_family(self, family: str, wanted: list[str],
                     ) -> tuple[dict[str, bytes], _Loaded]:
        """The values present of ``wanted`` items of ``family`` (codes or person keys), and
        their slots: from a load sent ahead, else asked now."""
        raw, loaded, rest = self._read_ahead(family, wanted)
        if rest:
            table, slots_of, bits = self._family(family)
            buckets, fields = slots_of(rest, bits)
            found = self._load_map(table, rest, buckets, fields)
            raw.update(found)
            self._note_slots(loaded, rest, found, buckets, fields)
        return raw, loaded

    def _send_ahead(self) -> None:
        """Send the expected loads (after the recall, so as not to delay it)."""
        announce, self._expected = self._expected, None
        if announce is None:
            return
        listed_codes, listed_keys = announce()
        codes, person_keys = list(listed_codes), list(listed_keys)
        try:
            for family, items in ((KEY_CODES, codes), (KEY_PERSONS, person_keys)):
                if items:
                    table, slots_of, bits = self._family(family)
                    buckets, fields = slots_of(items, bits)
                    self._send_map(table, buckets, fields, self._ahead)
                    self._ahead_sent.append(_AheadLoad(family, items, buckets, fields))
        except Exception as error:  # the loads themselves will go the usual way
            log.debug("loads sent ahead failed (%s); loading when asked", error)
            self._ahead.reset()
            self._ahead_sent.clear()

    def _read_ahead(self, family: str, wanted: list[str],
                    ) -> tuple[dict[str, bytes], _Loaded, list[str]]:
        """What a load sent ahead found of ``wanted``: the values present, the slots, and
        the wanted items it did not ask for (all of them when no load of ``family`` is in
        flight)."""
        raw: dict[str, bytes] = {}
        loaded = _Loaded({}, set())
        slots, inline = loaded.slots, loaded.inline
        load: _AheadLoad | None = None
        values: list[bytes | None] = []
        try:
            while self._ahead_sent:
                sent = self._ahead_sent.pop(0)
                reply = self._ahead.settle(1)[0]
                if sent.family == family:
                    load, values = sent, cast(list[bytes | None], reply)
                    break
        except Exception as error:  # then this load goes the usual way
            log.debug("reading loads sent ahead failed (%s); loading again", error)
            self._ahead.reset()
            self._ahead_sent.clear()
            return raw, loaded, wanted
        if load is None:
            return raw, loaded, wanted
        limit = self.inline_limit
        found: dict[str, tuple[int, bytes, bytes | None]] = {
            item: (bucket, field, value)
            for item, bucket, field, value in zip(load.items, load.buckets, load.fields,
                                                  values, strict=True)}
        rest: list[str] = []
        for item in wanted:
            hit = found.get(item)
            if hit is None:
                rest.append(item)
                continue
            slots[item] = (hit[0], hit[1])
            value = hit[2]
            if value is None:
                inline.add(item)
            else:
                raw[item] = value
                if len(value) <= limit:
                    inline.add(item)
        return raw, loaded, rest

    def _drop_ahead(self) -> None:
        """Forget the loads sent ahead (their replies are read and dropped)."""
        self._expected = None
        if self._ahead_sent:
            self._ahead_sent.clear()
            try:
                self._ahead.settle()
            except Exception:  # nothing depends on them
                self._ahead.reset()

    def _next_serial(self) -> int:
        """A shared-state serial no writer has used, from a block this process reserved."""
        if self._serial_next >= self._serial_end:
            end = int(self.client.incrby(self._serial_key, SHARED_BLOCK))
            if end > 1 << codec.SHARED_SERIAL_BITS:
                raise LedgerError(f"{self._serial_key}: shared-state serials are used up; "
                                  "start a new TRACEWATCH_KEY_PREFIX")
            self._serial_next, self._serial_end = end - SHARED_BLOCK, end
        serial = self._serial_next
        self._serial_next += 1
        return serial

    def store_codes(self, states: Mapping[str, CodeState | None]) -> None:
        """Write states; None deletes the code.

        A run of codes with alike states (the boxes of one message, mostly) is packed once,
        and when it has :data:`SHARE_FROM_CODES` codes or more, stored once as a shared state
        that each code's entry refers to (module docstring); a state too long for a shared
        bucket goes to its overflow hash, as a code's does."""
        distinct: list[tuple[str, CodeState]] = []
        runs: dict[str, list[str]] = {}  # the first code of a run → the run's codes
        run: list[str] = []
        previous: CodeState | None = None
        for code, state in states.items():
            if state is None:
                continue
            if previous is not None and codec.packs_alike(state, previous):
                run.append(code)
            else:
                distinct.append((code, state))
                run = runs[code] = [code]
                previous = state
        packed = self._with_dictionary(distinct, codec.pack_code_state)
        writes = self._writes()
        serials: list[int] = []
        shared: list[bytes] = []
        for first, run in runs.items():
            if len(run) < SHARE_FROM_CODES:
                continue
            serial = self._next_serial()
            serials.append(serial)
            shared.append(packed[first])
            reference = codec.shared_ref(serial)
            for code in run:
                packed[code] = reference
        if serials:  # new serials: no overflow copy to look for
            writes.run(self._shared, self._shared_big, self.retention_seconds,
                       [serial >> SHARED_BUCKET_BITS for serial in serials],
                       [b"%d" % (serial & 0xFF) for serial in serials], shared,
                       [True] * len(serials), push_always=True)
        codes = list(states)
        loaded = self._loaded_codes
        inline = loaded.inline
        writes.run(self._codes.bucket, self._codes.overflow, self.retention_seconds,
                   *_slots_of(codes, loaded.slots, self._code_slot, self.code_bits),
                   [packed.get(code) for code in codes], [code in inline for code in codes])
        self._write(writes)

    # ------------------------------------------------------------------ router memory

    def _router_table(self, template: str, period: int) -> str:
        """The start of the keys of one slice's buckets (a bucket number completes them)."""
        return template.format(prefix=self.prefix, slice=period, bucket="")

    def _send_seen(self, template: str, texts: Sequence[str]) -> int:
        """Send the lookup of which texts have a marker in the current or the previous
        slice (read back by :func:`_seen_of`)."""
        if not texts:
            return 0
        current, _ = self._slice()
        prepared = self._prepared_slots
        buckets, digests = (_slots_of(texts, prepared, _digest_slot, self.aux_bits) if prepared
                            else _digest_slots(texts, self.aux_bits))
        self._routing_slots.update(zip(texts, zip(buckets, digests, strict=True), strict=True))
        numbers, distinct = _numbered(buckets)
        count = len(distinct)
        now, before = (self._router_table(template, period) for period in (current, current - 1))
        table_keys = [now + str(bucket) for bucket in distinct]
        table_keys += [before + str(bucket) for bucket in distinct]
        return self._send_load(table_keys, False, numbers + [n + count for n in numbers],
                               digests + digests, runs=self.router_runs)

    def seen_messages(self, msgids: Collection[str]) -> set[str]:
        """Which of these msgids were routed before (in the last dedupe_days or more)."""
        return self.recall_routing(msgids, (), ())[0]

    def seen_records(self, keys: Collection[str]) -> set[str]:
        """Which of these record keys were routed before (in the last dedupe_days or more)."""
        return self.recall_routing((), keys, ())[1]

    def sale_codes(self, keys: Collection[str]) -> dict[str, tuple[str, ...]]:
        """Codes listed by the sales with these keys."""
        return self.recall_routing((), (), keys)[2]

    def prepare_recall(self, msgids: Collection[str], records: Collection[str]) -> None:
        """Work out the digests of the msgids and record keys of the next
        :meth:`recall_routing` (texts it does not name are worked out then), so that it sends
        its lookups at once: the worker calls this while Redis applies the last batch's
        writes, which it waits for before recalling."""
        buckets, digests = _digest_slots(chain(msgids, records), self.aux_bits)
        self._prepared_slots = dict(zip(chain(msgids, records),
                                        zip(buckets, digests, strict=True), strict=True))

    def recall_routing(
        self, msgids: Collection[str], records: Collection[str], sales: Collection[str],
    ) -> tuple[set[str], set[str], dict[str, tuple[str, ...]]]:
        """``seen_messages``, ``seen_records`` and ``sale_codes`` in one round trip."""
        msgid_list, record_list, sale_list = list(msgids), list(records), list(sales)
        self._routing_slots = {}
        try:
            sent_msgids = self._send_seen(KEY_MSGIDS, msgid_list)
            sent_records = self._send_seen(KEY_RECORDS, record_list)
        finally:
            self._prepared_slots = {}
        sale_buckets, sale_fields = _digest_slots(sale_list, self.sale_bits)
        self._sale_slots = dict(zip(sale_list, zip(sale_buckets, sale_fields, strict=True),
                                    strict=True))
        sent_sales = self._send_map(self._sales, sale_buckets, sale_fields)
        self._send_ahead()
        replies = self._replies(sent_msgids + sent_records + sent_sales)
        if self.router_runs:
            families = ["msgid"] * sent_msgids + ["record"] * sent_records
            for family, reply in zip(families, replies, strict=False):
                # The script's last element is an integer: the spilled runs it met.
                self._check_run(family, cast(int, cast(list[object], reply).pop()))
        seen_msgids = _seen_of(msgid_list, replies[0]) if sent_msgids else set()
        seen_records = _seen_of(record_list, replies[sent_msgids]) if sent_records else set()
        known_sales = ({key: codec.unpack_codes(value) for key, value in
                        _present(sale_list, replies[sent_msgids + sent_records]).items()}
                       if sent_sales else {})
        return seen_msgids, seen_records, known_sales

    def _check_run(self, family: str, spilled: int) -> None:
        """Warn, once a family, when a recall met buckets whose markers outgrew their run."""
        if not spilled or family in self._warned_spills:
            return
        self._warned_spills.add(family)
        count = 1 << self.aux_bits
        buckets = f"{count:,} routing bucket" + ("s" if count != 1 else "")
        self._warn(
            f"{family} markers: dedupe buckets of prefix {self.prefix!r} hold more than "
            f"{RUN_LIMIT_MARKERS:,} of them and keep them in hash tables (~60 bytes a "
            f"marker instead of ~10): its {buckets}, sized by TRACEWATCH_EXPECTED_CODES, "
            f"{'are' if count != 1 else 'is'} too few for the messages of a dedupe window; "
            "start a new prefix sized for more codes, or lower TRACEWATCH_DEDUPE_DAYS")

    def commit_routing(
        self,
        msgids: Collection[str],
        records_added: Collection[str],
        records_removed: Collection[str],
        sales: Mapping[str, tuple[str, ...] | None],
    ) -> None:
        """Remember a routed batch: its msgids, records, and sale codes (None forgets)."""
        current, ttl = self._slice()
        bits = self.aux_bits
        known = self._routing_slots  # the recall's, if it was this batch's
        writes = self._writes()
        runs = self.router_runs
        if records_removed:  # from the current and the previous slice, before any sets
            buckets, digests = _slots_of(records_removed, known, _digest_slot, bits)
            nothing: list[bytes | None] = [None] * len(digests)
            for period in (current, current - 1):
                table = self._router_table(KEY_RECORDS, period)
                if runs:
                    writes.run_digests(table, ttl, buckets, digests, remove=True)
                else:
                    writes.run(table, None, ttl, buckets, digests, nothing)
        for template, keys in ((KEY_MSGIDS, msgids), (KEY_RECORDS, records_added)):
            buckets, digests = _slots_of(keys, known, _digest_slot, bits)
            table = self._router_table(template, current)
            if runs:
                writes.run_digests(table, ttl, buckets, digests)
            else:
                writes.run(table, None, ttl, buckets, digests, [b""] * len(digests))
        day = codec.day_stamp(self.business_now())
        writes.run(self._sales.bucket, self._sales.overflow, self.retention_seconds,
                   *_slots_of(sales, self._sale_slots, _digest_slot, self.sale_bits),
                   [None if codes is None else codec.pack_codes(codes, day)
                    for codes in sales.values()])
        self._write(writes)

    # ------------------------------------------------------------------ persons

    def load_persons(self, keys: Collection[str]) -> dict[str, PersonState]:
        """Hoarding states of (person, drug) keys that exist."""
        raw, self._loaded_persons = self._load_family(KEY_PERSONS, list(keys))
        states = self._with_dictionary(raw.items(), codec.unpack_person_state)
        return {key: states[key] for key in raw}

    def store_persons(self, states: Mapping[str, PersonState | None]) -> None:
        """Write hoarding states; None deletes."""
        packed = self._with_dictionary(
            ((key, state) for key, state in states.items() if state is not None),
            codec.pack_person_state,
        )
        keys = list(states)
        loaded = self._loaded_persons
        inline = loaded.inline
        writes = self._writes()
        # Whole: most person states are long (a purchase each, ~260 bytes in the bench), and
        # in pieces they took as much memory in a listpack as whole in the hash-table encoding
        # (0.9 % less at 10 million codes) for 40 % more of Redis's time in this call
        # (BENCHMARKS.md "Twenty-first session").
        writes.run(self._persons.bucket, self._persons.overflow, self.person_seconds,
                   *_slots_of(keys, loaded.slots, _digest_slot, self.person_bits),
                   [packed.get(key) for key in keys], [key in inline for key in keys],
                   pieces=False)
        self._write(writes)

    def _link_key(self, psn_hash: str) -> str:
        return KEY_LINK.format(prefix=self.prefix, psn_hash=psn_hash)

    def hoarding_links(self, psn_hashes: Collection[str]) -> dict[str, HoardingLink]:
        """The latest HOARDING alert of each person who has one."""
        people = list(psn_hashes)
        if not people:
            return {}
        values = cast(list[bytes | None],
                      self.client.mget([self._link_key(psn) for psn in people]))
        return {psn: codec.unpack_link(value)
                for psn, value in zip(people, values, strict=True) if value is not None}

    def link_hoarding(self, links: Mapping[str, HoardingLink]) -> None:
        """Remember the latest HOARDING alert id per person."""
        if not links:
            return
        self._drop_ahead()
        pipe = self.client.pipeline(transaction=False)
        for psn, link in links.items():
            pipe.set(self._link_key(psn), codec.pack_link(link), ex=self.person_seconds)
        pipe.execute()

    # ------------------------------------------------------------------ retention sweep

    def business_now(self) -> int:
        """Now by Redis's clock, in business seconds (the time base of the messages)."""
        return int(time.time() + self._clock_offset) + CHINA_SECONDS

    def sweep(
        self,
        now: int | None = None,
        *,
        grace_days: int = 1,
        dry_run: bool = False,
        batch: int = SWEEP_BATCH,
        progress: Callable[[int, int], None] | None = None,
    ) -> SweepResult:
        """Remove code states, person states and sale index entries past their retention.

        A code state whose ``last_time`` is more than ``retention_days`` + ``grace_days``
        before ``now`` is deleted, as is a person's hoarding state whose latest purchase or
        alert is more than ``person_ttl_days`` + ``grace_days`` before it, and a sale index
        entry (the codes of a sale, for 3507 deletes) whose day stamp (the day it was last
        written, by Redis's clock) is wholly more than ``retention_days`` + ``grace_days``
        before it. ``now`` is in
        business seconds (China time as the messages give it, see
        :func:`detectors.messages.parse_time`); None means now by Redis's clock. The rules
        already treat such a code state as absent, so removing it changes no result; the
        grace keeps states that a message up to ``grace_days`` late (a replay after a
        crash, a retried upload) may still see.

        The work is done in Redis, ``batch`` buckets per script call (atomic, so it never
        races the worker; a value rewritten between calls is judged on its new time); only
        counts come back. Entries are deleted, never rewritten, so listpack buckets stay
        listpack. ``dry_run`` counts without removing. ``progress(done, total)`` is called
        after each call with bucket counts. Safe to call again at any time; a second run
        removes nothing new. The router memory (msgids, record markers) and the hoarding links
        expire as whole keys and need no sweep. A code whose entry refers to a shared state
        is judged by that state's time (and removed when the state has expired); the shared
        states themselves are swept after the codes, by the same cutoff, over the shared
        buckets that may still exist. Those expire a retention after they were written, so
        their sweep matters for a replay of a log much older than the clock.

        From a periodic timer, once a day is plenty: ``ledger.sweep(now)`` with ``now`` the
        latest business time the worker has processed (or None for the clock). With the
        clock, states written by a replay of a log older than the retention are swept as
        soon as they are written, while the rules, reckoning from the log's time, would
        still see them.
        """
        if batch < 1:
            raise ValueError(f"batch must be positive, not {batch}")
        if grace_days < 0:
            raise ValueError(f"grace_days must not be negative, not {grace_days}")
        started = time.perf_counter()
        moment = self.business_now() if now is None else now
        grace = grace_days * DAY_SECONDS
        # Shared states after the codes: a code is judged by its shared state's time, so
        # codes and the stale states they refer to go in the same run.
        shared = _Map(self._shared, self._shared_big)
        families = (
            ("codes", "code", self._codes, (0, 1 << self.code_bits), self.retention_seconds),
            ("shared", "code", shared, self._shared_range(), self.retention_seconds),
            ("persons", "person", self._persons, (0, 1 << self.person_bits),
             self.person_seconds),
            ("sales", "sale", self._sales, (0, 1 << self.sale_bits), self.retention_seconds),
        )
        total = sum(end - first for _, _, _, (first, end), _ in families)
        done = 0
        counts: list[SweepCount] = []
        for family, mode, table, (first, end), keep in families:
            cutoff = moment - keep - grace
            sums = [0] * 6
            for start in range(first, end, batch):
                keys: list[str] = []
                for bucket in range(start, min(start + batch, end)):
                    keys += (table.bucket + str(bucket), table.overflow + str(bucket))
                answer = cast(list[int], self._sweep_script(
                    keys=keys, args=[cutoff - codec.EPOCH, mode, int(dry_run), table.shared]))
                sums = [total_ + int(part) for total_, part in zip(sums, answer, strict=True)]
                done += len(keys) // 2
                if progress is not None:
                    progress(done, total)
            counts.append(SweepCount(family, cutoff, end - first, *sums))
        codes, shared_states, persons, sales = counts  # in the order of ``families``
        return SweepResult(moment, dry_run, codes, shared_states, persons, sales,
                           time.perf_counter() - started)

    # ------------------------------------------------------------------ observability

    def _shared_range(self) -> tuple[int, int]:
        """(first, end) of the shared buckets that may exist, about: from the first block of
        serials whose first bucket still exists to the last serial given out. The first
        serial of a block is the first one its writer used, so that bucket exists until it
        expires, and blocks expire about in the order they were reserved (a binary search
        of ~log2(blocks) EXISTS calls)."""
        end = -(-int(self.client.get(self._serial_key) or 0) >> SHARED_BUCKET_BITS)
        per_block = SHARED_BLOCK >> SHARED_BUCKET_BITS
        low, high = 0, -(-end // per_block)
        while low < high:
            middle = (low + high) // 2
            if self.client.exists(self._shared + str(middle * per_block)):
                high = middle
            else:
                low = middle + 1
        return min(low * per_block, end), end

    def stats(self, sample: int = 256) -> dict[str, Any]:
        """Codes held, Redis memory and bytes per code, from up to ``sample`` code buckets.

        ``codes`` is extrapolated from the sampled buckets' HLEN; ``bytes_per_code`` is their
        ``MEMORY USAGE`` (bucket and overflow hash), extrapolated to all buckets, plus that of
        the shared states (extrapolated from up to ``sample`` of their buckets), over the
        codes; ``shared_states`` is extrapolated likewise, and ``encodings`` counts how the
        sampled code buckets are encoded (listpack expected).
        """
        total = 1 << self.code_bits
        step = max(1, total // max(1, sample))
        sampled = list(range(0, total, step))
        floor, top = self._shared_range()
        shared_total = top - floor
        shared_sampled = list(range(floor, top, max(1, shared_total // max(1, sample))))
        pipe = self.client.pipeline(transaction=False)
        for bucket in sampled:
            key = self._codes.bucket + str(bucket)
            pipe.hlen(key)
            pipe.memory_usage(key, samples=0)
            pipe.memory_usage(self._codes.overflow + str(bucket), samples=0)
            pipe.object("encoding", key)
        for bucket in shared_sampled:
            pipe.hlen(self._shared + str(bucket))
            pipe.memory_usage(self._shared + str(bucket), samples=0)
            pipe.memory_usage(self._shared_big + str(bucket), samples=0)
        pipe.info("memory")
        answers = pipe.execute()
        info = answers.pop()
        shared_answers = answers[4 * len(sampled):]
        shared_states = sum(shared_answers[0::3])
        shared_memory = sum(used or 0 for used in shared_answers[1::3] + shared_answers[2::3])
        if shared_sampled:
            shared_states = shared_states * shared_total // len(shared_sampled)
            shared_memory = shared_memory * shared_total // len(shared_sampled)
        held = memory = 0
        encodings: dict[str, int] = {}
        for index in range(len(sampled)):
            count, used, used_big, encoding = answers[4 * index: 4 * index + 4]
            held += count
            memory += (used or 0) + (used_big or 0)
            if encoding is not None:
                name = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
                encodings[name] = encodings.get(name, 0) + 1
        codes = held * total // len(sampled)
        return {
            "codes": codes,
            "code_buckets": total,
            "sampled_buckets": len(sampled),
            "bytes_per_code": (memory * total / len(sampled) + shared_memory) / codes
            if codes else None,
            "shared_states": shared_states,
            "encodings": encodings,
            "used_memory": int(info["used_memory"]),
            "maxmemory": int(info.get("maxmemory", 0)),
            "inline_limit": self.inline_limit,
        }
