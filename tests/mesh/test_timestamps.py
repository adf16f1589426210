"""Timestamps from milliseconds, as every service stamps its messages."""

from __future__ import annotations

from mesh.timestamps import timestamp_ms


def test_milliseconds_become_seconds_and_nanos() -> None:
    stamp = timestamp_ms(1_700_000_000_123)
    assert (stamp.seconds, stamp.nanos) == (1_700_000_000, 123_000_000)
    assert stamp.ToMilliseconds() == 1_700_000_000_123


def test_before_the_epoch_nanos_stay_positive() -> None:
    stamp = timestamp_ms(-1)
    assert (stamp.seconds, stamp.nanos) == (-1, 999_000_000)
