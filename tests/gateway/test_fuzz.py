"""Property-based fuzzing of the real webhook: no 5xx for any signed body, 403
for any unsigned or wrongly signed one.

The default runs are sized for CI; the long runs are opt-in by marker:
``pytest -m fuzz tests/gateway/test_fuzz.py``, sized by ``FUZZ_EXAMPLES``
with the gRPC properties (tests/fuzz/budget.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.messenger.events import KINDS
from services.gateway.messenger.signature import sign
from tests.fuzz.budget import LONG_TIMEOUT_S, count, fuzz_settings, long_examples
from tests.gateway.harness import ACME_SECRET, GLOBEX_SECRET, Gateway

CI_EXAMPLES = 300


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Bodies here are signed with acme's secret: ids are mostly acme's pages (111 and
# 333) and users, sometimes odd, never globex's page (222).
odd_ids = (
    st.integers().filter(lambda i: i != 222)
    | st.text(max_size=6).filter(lambda t: t.strip() != "222")
    | json_values.filter(lambda v: v not in ("222", 222))
)


def usually(likely: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """``likely`` nine times in ten: deep paths get reached, odd values still show up."""

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(likely) if draw(st.integers(0, 9)) else draw(odd)

    return pick()


page_ids = usually(st.sampled_from(["111", "333", "999"]), odd_ids)
user_ids = usually(st.sampled_from(["1001", "1002", "1003"]), odd_ids)
mids = usually(st.from_regex(r"m_[a-z0-9]{1,8}", fullmatch=True), odd_ids)
timestamps = usually(
    st.integers(min_value=1_600_000_000_000, max_value=1_800_000_000_000)
    | st.from_regex(r"1[67]\d{11}(\.\d{1,3})?", fullmatch=True),
    st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | json_values,
)
parties = usually(
    st.fixed_dictionaries({"id": user_ids}, optional={"user_ref": odd_ids}),
    st.fixed_dictionaries({}, optional={"user_ref": odd_ids}) | json_values,
)
attachments = st.fixed_dictionaries(
    {
        "type": usually(
            st.sampled_from(
                ["image", "audio", "video", "file", "fallback", "template", "location", "x"]
            ),
            json_values,
        )
    },
    optional={
        "payload": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "url": json_values,
                "sticker_id": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
                "coordinates": st.fixed_dictionaries(
                    {}, optional={"lat": json_values, "long": json_values}
                ),
                "title": json_values,
            },
        )
        | json_values,
        "title": json_values,
        "url": json_values,
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "mid": mids,
        "text": st.text() | json_values,
        "is_echo": st.booleans() | json_values,
        "attachments": st.lists(attachments, max_size=3) | json_values,
        "quick_reply": st.fixed_dictionaries({}, optional={"payload": json_values}),
        "reply_to": st.fixed_dictionaries({}, optional={"mid": mids}),
        "sticker_id": json_values,
        "payload": json_values,
        "title": json_values,
        "referral": st.fixed_dictionaries(
            {}, optional={"ref": json_values, "ad_id": odd_ids, "source": json_values}
        )
        | json_values,
        "watermark": timestamps,
        "mids": st.lists(mids, max_size=3) | json_values,
        "reaction": json_values,
        "emoji": st.text(max_size=3),
        "action": st.sampled_from(["react", "unreact", "x"]) | json_values,
        "ref": json_values,
        "user_ref": odd_ids,
    },
)
kinds = st.sampled_from([*KINDS, "pass_thread_control", "policy_enforcement", "z"])


@st.composite
def event_items(draw: st.DrawFn) -> Any:
    event = draw(
        st.fixed_dictionaries(
            {"sender": parties, "recipient": parties, "timestamp": timestamps},
        )
    )
    for key in ("sender", "recipient", "timestamp"):
        if not draw(st.integers(0, 9)):
            del event[key]
    if draw(st.integers(0, 9)):
        event[draw(kinds)] = draw(usually(bodies, json_values))
    return event


events = usually(event_items(), json_values)
entries = usually(
    st.fixed_dictionaries(
        {"id": page_ids},
        optional={
            "time": timestamps,
            "messaging": usually(st.lists(events, max_size=6), json_values),
            "standby": usually(st.lists(events, max_size=3), json_values),
        },
    ),
    json_values,
)
messenger_docs = st.fixed_dictionaries(
    {
        "object": usually(st.just("page"), json_values),
        "entry": usually(st.lists(entries, max_size=3), json_values),
    }
)


def _encode(doc: Any, ascii_only: bool) -> bytes:
    # Lone surrogates survive as invalid UTF-8: the gateway must say 400, not 500.
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _signed_status(gateway: Gateway, body: bytes) -> int:
    response = gateway.post_webhook(body, secret=ACME_SECRET)
    assert response.status_code < 500, (response.status_code, response.text, body[:500])
    return response.status_code


def _check_messenger_shaped(gateway: Gateway, doc: Any, ascii_only: bool) -> None:
    assert _signed_status(gateway, _encode(doc, ascii_only)) in (200, 400)


def _check_random_json(gateway: Gateway, doc: Any) -> None:
    assert _signed_status(gateway, _encode(doc, True)) in (200, 400)


def _check_random_bytes(gateway: Gateway, body: bytes) -> None:
    assert _signed_status(gateway, body) in (200, 400)


def _check_unsigned(gateway: Gateway, body: bytes, how: int, secret: str, digest: bytes) -> None:
    if how == 0:
        response = gateway.post_webhook(body, secret=None)
    elif how == 1:
        response = gateway.post_webhook(body, signature="sha256=" + digest.hex())
    else:
        response = gateway.post_webhook(body, signature=sign(secret, body))
    assert response.status_code == 403, (how, response.text)


wrong_secrets = st.text(min_size=0, max_size=20).filter(
    lambda s: s not in (ACME_SECRET, GLOBEX_SECRET)
)
any_bodies = st.binary(max_size=2000) | messenger_docs.map(lambda d: _encode(d, True))


@_settings(CI_EXAMPLES)
@given(doc=messenger_docs, ascii_only=st.booleans())
def test_messenger_shaped_signed_bodies_never_5xx(
    gateway: Gateway, doc: Any, ascii_only: bool
) -> None:
    _check_messenger_shaped(gateway, doc, ascii_only)


@_settings(CI_EXAMPLES)
@given(doc=json_values)
def test_random_signed_json_never_5xx(gateway: Gateway, doc: Any) -> None:
    _check_random_json(gateway, doc)


@_settings(CI_EXAMPLES)
@given(body=st.binary(max_size=4000))
def test_random_signed_bytes_never_5xx(gateway: Gateway, body: bytes) -> None:
    _check_random_bytes(gateway, body)


@_settings(CI_EXAMPLES)
@given(
    body=any_bodies,
    how=st.integers(0, 2),
    secret=wrong_secrets,
    digest=st.binary(min_size=32, max_size=32),
)
def test_unsigned_or_wrongly_signed_bodies_are_403(
    gateway: Gateway, body: bytes, how: int, secret: str, digest: bytes
) -> None:
    _check_unsigned(gateway, body, how, secret, digest)


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
@fuzz_settings(long_examples("webhook.messenger_shaped"))
@given(doc=messenger_docs, ascii_only=st.booleans())
def test_long_messenger_shaped(gateway: Gateway, doc: Any, ascii_only: bool) -> None:
    count("webhook.messenger_shaped")
    _check_messenger_shaped(gateway, doc, ascii_only)


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
@fuzz_settings(long_examples("webhook.random_bytes"))
@given(body=st.binary(max_size=20000))
def test_long_random_bytes(gateway: Gateway, body: bytes) -> None:
    count("webhook.random_bytes")
    _check_random_bytes(gateway, body)


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
@fuzz_settings(long_examples("webhook.unsigned"))
@given(
    body=any_bodies,
    how=st.integers(0, 2),
    secret=wrong_secrets,
    digest=st.binary(min_size=32, max_size=32),
)
def test_long_unsigned(gateway: Gateway, body: bytes, how: int, secret: str, digest: bytes) -> None:
    count("webhook.unsigned")
    _check_unsigned(gateway, body, how, secret, digest)
