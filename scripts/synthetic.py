"""Deterministic synthetic names for the benchmark scripts (no tracewatch imports, so a script
timing another source tree can use it)."""

from __future__ import annotations

import random


class Names:
    """Institutions, drugs and products drawn once from a fixed seed; code ``i`` is always the
    same 20-digit code."""

    def __init__(self, institutions: int, drugs: int, products: int) -> None:
        rng = random.Random(1)
        regions = [f"{p:02d}{c:02d}{d:02d}" for p in (11, 31, 44, 50, 51)
                   for c in range(1, 11) for d in range(1, 6)]
        self.institutions = [f"{rng.choice('PPPH')}{rng.choice(regions)}{n:05d}"
                             for n in range(institutions)]
        self.drugs = [f"X{rng.choice('ABCJLN')}{n:02d}BAE{n % 997:03d}A00101010{n % 9999:04d}"
                      for n in range(drugs)]
        self.products = [f"{rng.randrange(8_000_000, 9_000_000)}" for _ in range(products)]

    def code(self, i: int) -> str:
        """The ``i``-th code: a product key and a 13-digit serial."""
        serial = i * 1_000_003 % 10**13  # distinct for distinct i
        return self.products[i % len(self.products)] + f"{serial:013d}"
