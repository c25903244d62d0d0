"""Worker pieces that need no broker: code routing keys, partitions, the live feed."""

from __future__ import annotations

from detectors.codes import normalise
from streams.worker import LiveFeed, code_key, partition_of


def test_boxes_of_one_product_share_a_writer() -> None:
    """A split sale drawing from several boxes of a product must stay on one partition, or a
    delete routed straight to a box can overtake the rest of the draw forwarded to it."""
    first, second = "83857930000000000001", "83857930000000999999"
    assert code_key(first) == code_key(second) == b"8385793"
    gs1 = normalise("(01)06901234567892(21)A1").code
    raw = normalise("010690123456789221B2").code
    assert code_key(gs1) == code_key(raw) == b"06901234567892"
    assert code_key("ENT0001234") == b"ENT0001234"


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    # Values of the JVM client's murmur2-based partitioner for these keys.
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"8385793", b"06901234567892", b"ENT0001234"):
        expected = DefaultPartitioner()(key, list(range(12)), list(range(12)))
        assert partition_of(key, 12) == expected


def test_live_feed_gives_alerts_after_a_serial() -> None:
    feed = LiveFeed(keep=2)
    for n in range(3):
        feed.add({"rule": "DUPLICATE_SALE", "n": n})
    page = feed.since(1)
    assert [a["n"] for a in page["alerts"]] == [1, 2]
    assert page["serial"] == 3
    assert page["by_rule"] == {"DUPLICATE_SALE": 3}
