"""Helpers of the domain model that are written out by hand for the compiled hot path."""

from __future__ import annotations

import random
import time

from detectors.model import DAY_SECONDS, format_day, format_time


def test_times_are_formatted_as_strftime_does() -> None:
    """format_time builds the text from a cached day and a table of two-digit numbers; it
    gives what time.strftime of time.gmtime gives, before 1970, across days and at random."""
    rng = random.Random(5)
    moments = [0, -1, 59, 60, 3599, 3600, DAY_SECONDS - 1, DAY_SECONDS, -DAY_SECONDS,
               1_793_600_000, 1_793_635_199, 253_402_300_799]
    moments += [rng.randrange(-2 * 10**9, 10**10) for _ in range(20_000)]
    for moment in moments:
        expected = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment))
        assert format_time(moment) == expected, moment
        assert format_day(moment) == expected[:10], moment
