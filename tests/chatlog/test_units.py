"""The pure parts: page tokens, settings, the stats histogram, the Rasa example writer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from chatbot.common.v1 import nlu_result_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import ConfigError, Env
from mesh.page_tokens import PageTokens
from services.chatlog.errors import InvalidArgument
from services.chatlog.export import _LINE_BREAKS, _STRIP, _read_back, example_line
from services.chatlog.settings import ChatlogSettings
from services.chatlog.stats import bucket_bounds, latency_bucket
from services.chatlog.store.cassandra import ttl_seconds
from services.chatlog.store.cassandra_schema import replication_cql

SECRET = b"0123456789abcdef0123456789abcdef"


def test_tokens_round_trip_and_bind_to_their_request() -> None:
    tokens = PageTokens(SECRET, "sqlite", InvalidArgument)
    token = tokens.issue("ListMessages", ["t1", "c1", 1], ["n", 12, "m1"])
    assert tokens.read(token, "ListMessages", ["t1", "c1", 1]) == ["n", 12, "m1"]
    for kind, binding in [
        ("ListMessages", ["t1", "c2", 1]),
        ("ListMessages", ["t2", "c1", 1]),
        ("SearchMessages", ["t1", "c1", 1]),
    ]:
        with pytest.raises(InvalidArgument):
            tokens.read(token, kind, binding)
    with pytest.raises(InvalidArgument):  # another backend's (or secret's) token
        PageTokens(SECRET, "cassandra", InvalidArgument).read(
            token, "ListMessages", ["t1", "c1", 1]
        )
    with pytest.raises(InvalidArgument):
        PageTokens(SECRET[::-1], "sqlite", InvalidArgument).read(
            token, "ListMessages", ["t1", "c1", 1]
        )
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokens(b"short", "sqlite")


@given(st.text(max_size=200))
def test_any_string_is_rejected_cleanly_as_a_token(garbage: str) -> None:
    with pytest.raises(InvalidArgument):
        PageTokens(SECRET, "sqlite", InvalidArgument).read(garbage, "ListConversations", ["t"])


def test_settings_defaults_and_errors(tmp_path: Path) -> None:
    defaults = ChatlogSettings.from_env(Env({}))
    assert (defaults.port, defaults.metrics_port, defaults.backend) == (50053, 9053, "sqlite")
    assert defaults.sqlite_path.parts[-2:] == (".data", "chatlog.sqlite3")
    assert defaults.cassandra.consistency == "LOCAL_ONE"
    assert "'replication_factor': 1" in defaults.cassandra.replication
    assert defaults.page_token_secret is None
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-long-enough-shared-secret\n")
    configured = ChatlogSettings.from_env(
        Env(
            {
                "CHATLOG_BACKEND": "cassandra",
                "CASSANDRA_HOSTS": "10.0.0.1, 10.0.0.2",
                "CASSANDRA_CONSISTENCY": "local_quorum",
                "CASSANDRA_REPLICATION": "NetworkTopologyStrategy:dc1=3,dc2=3",
                "CHATLOG_PAGE_TOKEN_SECRET_FILE": str(secret_file),
                "CHATLOG_DEFAULT_RETENTION_DAYS": "30",
            }
        )
    )
    assert configured.cassandra.hosts == ("10.0.0.1", "10.0.0.2")
    assert configured.cassandra.consistency == "LOCAL_QUORUM"
    assert configured.page_token_secret == b"a-long-enough-shared-secret"
    assert configured.default_message_ttl_ns == 30 * 86_400 * 10**9
    for bad in (
        {"CHATLOG_BACKEND": "mysql"},
        {"CASSANDRA_CONSISTENCY": "SOME"},
        {"CASSANDRA_KEYSPACE": "bad-name"},
        {"CASSANDRA_REPLICATION": "EverywhereStrategy"},
        {"CHATLOG_PAGE_TOKEN_SECRET": "short"},
        {"CHATLOG_PORT": "http"},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ChatlogSettings.from_env(Env(bad))


def test_replication() -> None:
    assert replication_cql("3") == "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    assert replication_cql("NetworkTopologyStrategy:dc1=3, dc2=2") == (
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
    )
    for bad in ("SimpleStrategy:0", "NetworkTopologyStrategy:dc'1=3", "x:1", ""):
        with pytest.raises(ConfigError):
            replication_cql(bad)


def test_ttls() -> None:
    now = 1_000 * 10**9
    assert ttl_seconds(None, now) == 0  # none
    assert ttl_seconds(now + 90 * 10**9, now) == 90
    assert ttl_seconds(now - 10**9, now) == 1  # expired already: gone in a second
    assert ttl_seconds(now + 10**30, now) == 630_720_000  # Cassandra's maximum


@given(st.integers(min_value=0, max_value=10**14))
def test_latency_buckets_hold_their_values_within_5_percent(ns: int) -> None:
    low, high = bucket_bounds(latency_bucket(ns))
    assert low <= ns < high or math.isclose(ns, high, rel_tol=1e-9)
    if low:
        assert high / low == pytest.approx(1.05)


def entity(start: int, end: int, name: str, value: str) -> nlu_result_pb2.Entity:
    return nlu_result_pb2.Entity(start=start, end=end, entity=name, value=value)


def test_example_lines() -> None:
    assert example_line("fly to Paris", [entity(7, 12, "city", "Paris")]) == "fly to [Paris](city)"
    assert example_line("  hi there ", []) == "hi there"
    # Offsets survive the trimming and line breaks.
    assert example_line("\n to\nParis", [entity(5, 10, "city", "Paris")]) == "to [Paris](city)"
    assert example_line("a [b](c)", []) is None  # would read back as an annotation
    assert example_line("   ", []) is None
    # An entity that would not read back is left plain; overlapping ones are dropped.
    assert example_line("x ] y", [entity(2, 3, "e", "]")]) == "x ] y"
    assert example_line("abc", [entity(0, 2, "e", "ab"), entity(1, 3, "f", "bc")]) == "[ab](e)c"
    assert example_line("abc", [entity(0, 9, "e", "abc")]) == "abc"


_tricky = st.text(
    alphabet=st.sampled_from(list("ab []{}():\"'\n\r\t#|>-é€\u2028\x85")), max_size=30
)


@settings(max_examples=300)
@given(
    _tricky,
    st.lists(
        st.tuples(
            st.integers(0, 30), st.integers(0, 30), st.sampled_from(["city", "a:b", "x\x85"])
        ),
        max_size=3,
    ),
)
def test_example_lines_read_back_as_written(text: str, spans: list[tuple[int, int, str]]) -> None:
    entities = [entity(s, e, name, text[s:e]) for s, e, name in spans]
    line = example_line(text, entities)
    if line is None:
        return
    assert len(line.splitlines()) == 1
    plain, found = _read_back(line)
    # Rasa reads the text back (line breaks as spaces, ends trimmed) ...
    assert plain == _LINE_BREAKS.sub(" ", text).strip(_STRIP)
    # ... and every annotation as an entity the model extracted, at its place.
    extracted = {(e.entity, e.value) for e in entities}
    for start, end, name, value in found:
        assert (name, value) in extracted
        assert plain[start:end] == _LINE_BREAKS.sub(" ", value)


def test_a_bracket_before_an_annotation_leaves_the_line_plain() -> None:
    # ":[" then "[:](city)" would read back as the entity "[:".
    assert example_line(":[:", [entity(2, 3, "city", ":")]) == ":[:"
