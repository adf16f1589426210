"""One image, two halves: intake (the API) and workers (the turns).

Intake answers ``SubmitEvents`` without running turns, so a webhook's
acknowledgement never waits behind NLU calls and sends on a shared event
loop; a worker runs the turns and serves only health and reflection.
"""

from __future__ import annotations

import grpc
import pytest
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc
from grpc_health.v1 import health_pb2

from harness.standins import GraphApi
from harness.support import health_status
from mesh import ConfigError, Env
from services.dialogue.settings import DialogueSettings
from tests.dialogue.conftest import TENANT, Replicas, message_event, submit, wait_for


def _state(stub: dialogue_service_pb2_grpc.DialogueServiceStub, user: str) -> pb.ConversationState:
    ref = event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=user)
    return stub.GetConversationState(pb.GetConversationStateRequest(user=ref)).state


def test_intake_queues_and_a_separate_worker_answers(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    (intake,) = replicas.start(1, DIALOGUE_ROLE="intake")
    stub = replicas.stub_for(intake)
    assert submit(stub, message_event("roles", "roles_1", "hello")) == [pb.SUBMIT_STATUS_ACCEPTED]
    # Queued and acknowledged; intake itself takes no turn.
    state = _state(stub, "roles")
    assert state.queue_length == 1 and not state.lease_holder
    assert graph_api.sent == []

    (worker,) = replicas.start(1, DIALOGUE_ROLE="worker")
    wait_for(lambda: [s.in_reply_to for s in graph_api.sent] == ["roles_1"])
    wait_for(lambda: _state(stub, "roles").queue_length == 0)
    # The worker's port: health and reflection, not the API.
    assert health_status(worker.port) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as refused:
        submit(replicas.stub_for(worker), message_event("roles", "roles_2", "hi"))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_unknown_role_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="DIALOGUE_ROLE must be one of"):
        DialogueSettings.from_env(Env({"DIALOGUE_ROLE": "both"}))
    settings = DialogueSettings.from_env(Env({"DIALOGUE_ROLE": "intake"}))
    assert settings.serves_api and not settings.runs_workers


def test_a_short_page_token_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        DialogueSettings.from_env(Env({"DIALOGUE_PAGE_TOKEN_SECRET": "short"}))
    settings = DialogueSettings.from_env(Env({"DIALOGUE_PAGE_TOKEN_SECRET": "x" * 16}))
    assert settings.page_token_secret == b"x" * 16
