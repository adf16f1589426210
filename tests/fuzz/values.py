"""Field values for fuzzed protos: mostly plausible, often at the limits, sometimes absurd.

``usually(likely, odd)`` keeps most examples plausible, so requests get past
validation and reach the stores and workers, while odd values still show up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
# The services' limits (ids 256, 480 and 512, texts 500 and 2000, agent texts
# 20000, page tokens 4096), each side of the line. Hypothesis keeps what it
# drew in memory for the whole run, so megabytes are left to a plain test.
LIMIT_LENGTHS = [
    255, 256, 257, 479, 480, 481, 499, 500, 501, 510, 511, 512, 513,
    1999, 2000, 2001, 4096, 4097, 19999, 20000, 20001,
]  # fmt: skip


def usually(likely: st.SearchStrategy[_T], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``likely`` nine times in ten."""

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(likely) if draw(st.integers(0, 9)) else draw(odd)

    return pick()


# Any unicode but surrogates (protobuf strings are UTF-8): controls, NUL, RTL marks, emoji.
odd_chars = st.characters(codec="utf-8")
long_texts = st.builds(
    lambda char, length, tail: char * (length - len(tail)) + tail,
    odd_chars,
    st.sampled_from(LIMIT_LENGTHS),
    st.text(odd_chars, max_size=1),
)
texts = st.text(odd_chars, max_size=40) | long_texts
ids = usually(st.from_regex(r"[a-z0-9_.-]{1,12}", fullmatch=True), st.just("") | texts)
enum_values = st.integers(-3, 20) | INT32


def enums(values: Sequence[int]) -> st.SearchStrategy[Any]:
    """A known value, or any int32 (proto3 enums are open: unknown numbers get through)."""
    return usually(st.sampled_from(list(values)), enum_values)


@st.composite
def timestamps(draw: st.DrawFn, now_s: int = 1_780_000_000) -> Timestamp:
    """Around now, or at the edges of Timestamp's range, or beyond them."""
    seconds = draw(
        usually(
            st.integers(now_s - 86_400 * 400, now_s + 86_400),
            st.sampled_from([0, -1, -62_135_596_800, -62_135_596_801, 253_402_300_799,
                             253_402_300_800, 7_258_118_400, 2**63 - 1, -(2**63)])
            | INT64,
        )
    )  # fmt: skip
    nanos = draw(usually(st.integers(0, 999_999_999), INT32))
    return Timestamp(seconds=seconds, nanos=nanos)


@st.composite
def durations(draw: st.DrawFn) -> Duration:
    seconds = draw(usually(st.integers(0, 86_400 * 400), INT64))
    nanos = draw(usually(st.just(0), INT32))
    return Duration(seconds=seconds, nanos=nanos)


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[Message]) -> bytes:
    """A valid message's bytes with a few bytes flipped, inserted or cut off."""
    raw = bytearray(draw(messages).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        how = draw(st.integers(0, 2))
        if how == 0 and raw:
            raw[min(at, len(raw) - 1)] = draw(st.integers(0, 255))
        elif how == 1:
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at:]
    return bytes(raw)


def copies(message: _M, count: int) -> list[_M]:
    """``count`` copies for a batch at its limit; two of a big message, which
    a thousand times over would not fit in memory."""
    return [message] * (count if message.ByteSize() < 4096 else 2)


def raw_bodies(messages: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    """Bytes to send as a serialized request: random, valid, or nearly valid."""
    return (
        st.binary(max_size=300) | messages.map(lambda m: m.SerializeToString()) | mutated(messages)
    )
