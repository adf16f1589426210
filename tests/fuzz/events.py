"""Fuzzed ``chatbot.common.v1`` messages: users, events, replies."""

from __future__ import annotations

from typing import Any

from chatbot.common.v1 import event_pb2, nlu_result_pb2
from hypothesis import strategies as st

from tests.fuzz.values import (
    INT64,
    enums,
    ids,
    odd_chars,
    texts,
    timestamps,
    usually,
)

CHANNELS = list(event_pb2.Channel.values())
# A handful of users per run, so their queues get long and busy.
FUZZ_USERS = [f"fz{n}" for n in range(24)]


def tenants(known: list[str]) -> st.SearchStrategy[str]:
    return usually(st.sampled_from(known), st.sampled_from(["", "t001", "nope", "Default"]) | texts)


def user_refs(known_tenants: list[str], users: list[str] = FUZZ_USERS) -> Any:
    return st.builds(
        event_pb2.UserRef,
        tenant_id=tenants(known_tenants),
        channel=usually(st.sampled_from([1, 2]), enums(CHANNELS)),
        user_id=usually(st.sampled_from(users), ids),
    )


payloads = usually(
    st.sampled_from(["/greet", "/order_status", '/weather{"city": "Oslo"}', "GET_STARTED", ""]),
    st.builds(lambda name, rest: f"/{name}{{{rest}", texts, texts) | texts,
)
attachments = st.builds(
    event_pb2.Attachment,
    type=enums(list(event_pb2.AttachmentType.values())),
    url=texts,
    title=texts,
    sticker_id=INT64,
    coordinates=st.builds(event_pb2.Coordinates, latitude=st.floats(), longitude=st.floats()),
    payload_json=texts,
)
messages = st.builds(
    event_pb2.Message,
    mid=ids,
    text=usually(
        st.sampled_from(["hello", "where is my order 12345", "weather in Paris", "human", "?"]),
        texts,
    ),
    quick_reply_payload=usually(st.just(""), payloads),
    attachments=st.lists(attachments, max_size=2),
    reply_to_mid=ids,
    is_echo=usually(st.just(False), st.booleans()),
    metadata=usually(st.just(""), st.just('{"in_reply_to": "m_1"}') | texts),
    app_id=texts,
)
referrals = st.builds(event_pb2.Referral, ref=texts, source=texts, type=texts, ad_id=ids)
kinds: dict[str, st.SearchStrategy[Any]] = {
    "message": messages,
    "postback": st.builds(
        event_pb2.Postback, mid=ids, title=texts, payload=payloads, referral=referrals
    ),
    "reaction": st.builds(
        event_pb2.Reaction,
        mid=ids,
        reaction=texts,
        emoji=st.text(odd_chars, max_size=2),
        action=enums(list(event_pb2.ReactionAction.values())),
    ),
    "delivery": st.builds(
        event_pb2.Delivery, mids=st.lists(ids, max_size=3), watermark_time=timestamps()
    ),
    "read": st.builds(event_pb2.Read, watermark_time=timestamps()),
    "optin": st.builds(event_pb2.Optin, ref=texts, user_ref=texts, payload_json=texts),
    "referral": referrals,
    "unknown": st.builds(event_pb2.UnknownEvent, kind=texts, raw_json=texts),
}


@st.composite
def chat_events(
    draw: st.DrawFn, known_tenants: list[str], users: list[str] = FUZZ_USERS
) -> event_pb2.ChatEvent:
    event = event_pb2.ChatEvent(
        event_id=draw(usually(st.from_regex(r"fz_[a-z0-9]{1,10}", fullmatch=True), ids)),
        recipient_id=draw(ids),
        standby=draw(usually(st.just(False), st.booleans())),
    )
    if draw(usually(st.just(True), st.booleans())):
        event.user.CopyFrom(draw(user_refs(known_tenants, users)))
    for name in ("event_time", "receive_time"):
        if draw(usually(st.just(True), st.booleans())):
            getattr(event, name).CopyFrom(draw(timestamps()))
    kind = draw(usually(st.sampled_from(["message", "message", "postback"]), st.sampled_from(
        [*kinds, None]
    )))  # fmt: skip
    if kind is not None:
        getattr(event, kind).CopyFrom(draw(kinds[kind]))
    return event


intents = st.builds(
    nlu_result_pb2.Intent,
    name=usually(st.sampled_from(["greet", "order_status", "nlu_fallback"]), texts),
    confidence=usually(st.floats(0, 1, width=32), st.floats(width=32)),
)
entities = st.builds(
    nlu_result_pb2.Entity,
    entity=texts,
    value=texts,
    start=st.integers(-(2**31), 2**31 - 1),
    end=st.integers(-(2**31), 2**31 - 1),
    confidence=st.floats(width=32),
    extractor=texts,
    role=texts,
    group=texts,
)
quick_replies = st.builds(event_pb2.QuickReply, title=texts, payload=texts, image_url=texts)
