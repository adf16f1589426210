"""``chatbot retention`` and ``chatbot erase-user``: a tenant's stored conversations.

Both call the chatlog service's RPCs (GetRetentionPolicy, SetRetentionPolicy,
DeleteUserData), the same ones the admin console's "Retention and erasure"
page uses; the chatlog logs every change. ``erase-user`` also deletes the
customer's name and picture cached by the console (in the Redis it uses).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from chatbot.chatlog.v1.chatlog_service_pb2 import RetentionPolicy
    from chatbot.chatlog.v1.chatlog_service_pb2_grpc import ChatlogServiceStub

_T = TypeVar("_T")
DAY_SECONDS = 86400
CHANNELS = ("messenger", "api")

retention_app = typer.Typer(
    help="Show or set how long a tenant's messages are kept.", no_args_is_help=True
)

Address = Annotated[
    str, typer.Option("--address", envvar="CHATLOG_ADDRESS", help="the chatlog service")
]


def _call(address: str, work: Callable[[ChatlogServiceStub], _T]) -> _T:
    import grpc
    from chatbot.chatlog.v1 import chatlog_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            return work(chatlog_service_pb2_grpc.ChatlogServiceStub(channel))
        except grpc.RpcError as exc:
            code = exc.code()
            typer.echo(f"error: {code.name}: {exc.details()}", err=True)
            raise typer.Exit(2 if code is grpc.StatusCode.INVALID_ARGUMENT else 1) from exc


@retention_app.command("show")
def show(
    tenant: Annotated[str, typer.Option("--tenant", help="the tenant")] = "default",
    address: Address = "127.0.0.1:50053",
) -> None:
    """Print how long the tenant's messages are kept, and since when."""
    from chatbot.chatlog.v1 import chatlog_service_pb2 as pb

    reply = _call(
        address,
        lambda stub: stub.GetRetentionPolicy(
            pb.GetRetentionPolicyRequest(tenant_id=tenant), timeout=10
        ),
    )
    typer.echo(_describe(reply.policy))


@retention_app.command("set")
def set_days(
    days: Annotated[
        int,
        typer.Argument(min=0, help="days a message is kept after it is stored; 0: until deleted"),
    ],
    tenant: Annotated[str, typer.Option("--tenant", help="the tenant")],
    address: Address = "127.0.0.1:50053",
) -> None:
    """Set how long messages stored from now on are kept (stored ones keep their expiry)."""
    from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
    from google.protobuf.duration_pb2 import Duration

    policy = pb.RetentionPolicy(tenant_id=tenant, message_ttl=Duration(seconds=days * DAY_SECONDS))
    reply = _call(
        address,
        lambda stub: stub.SetRetentionPolicy(
            pb.SetRetentionPolicyRequest(policy=policy), timeout=10
        ),
    )
    typer.echo(f"saved. {_describe(reply.policy)}")


def erase_user(
    user_id: Annotated[str, typer.Argument(help="the customer's id on the channel")],
    tenant: Annotated[str, typer.Option("--tenant", help="the tenant")],
    channel: Annotated[
        str | None, typer.Option("--channel", help="messenger or api (default: every channel)")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="do not ask for confirmation (for scripts)")
    ] = False,
    address: Address = "127.0.0.1:50053",
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            envvar="REDIS_URL",
            help="the Redis the gateway uses: its cached name and picture of the customer go too",
        ),
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", envvar="ADMIN_REDIS_PREFIX", help="the console's key prefix")
    ] = "admin:",
) -> None:
    """Erase one customer's messages, the bot's replies and their conversations. No undo."""
    from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
    from chatbot.common.v1 import event_pb2

    if channel is not None and channel not in CHANNELS:
        typer.echo(f"error: --channel must be one of {', '.join(CHANNELS)}", err=True)
        raise typer.Exit(2)
    if not user_id.strip():
        typer.echo("error: the user id is empty", err=True)
        raise typer.Exit(2)
    where = f"on {channel}" if channel else "on every channel"
    if not yes and not typer.confirm(
        f"Erase every message of {user_id} {where} in {tenant}? This cannot be undone."
    ):
        typer.echo("nothing erased", err=True)
        raise typer.Exit(1)
    request = pb.DeleteUserDataRequest(tenant_id=tenant, user_id=user_id)
    if channel == "messenger":
        request.channel = event_pb2.CHANNEL_MESSENGER
    elif channel == "api":
        request.channel = event_pb2.CHANNEL_API
    reply = _call(address, lambda stub: stub.DeleteUserData(request, timeout=60))
    typer.echo(
        f"erased {reply.deleted_message_count} messages in "
        f"{reply.deleted_conversation_count} conversations"
    )
    if channel in (None, "messenger"):
        _forget_profile(redis_url, prefix, tenant, user_id)


def _forget_profile(redis_url: str | None, prefix: str, tenant: str, user_id: str) -> None:
    import asyncio

    from redis.exceptions import RedisError

    from mesh.logging import redact
    from mesh.redis_client import connect
    from services.gateway.admin.profiles import forget_profile

    if not redis_url:
        typer.echo(
            "note: the console's cached name and picture (if any) expire on their own; "
            "give --redis-url (or REDIS_URL) to erase them now",
            err=True,
        )
        return

    async def forget() -> bool:
        redis = await connect(redis_url, timeout=2.0)
        try:
            return await forget_profile(redis, prefix, tenant, user_id)
        finally:
            await redis.aclose()

    try:
        found = asyncio.run(forget())
    except (RedisError, OSError) as exc:
        typer.echo(
            f"error: the cached name and picture are not erased: Redis at {redact(redis_url)} "
            f"cannot be reached ({type(exc).__name__}); run this again",
            err=True,
        )
        raise typer.Exit(1) from exc
    typer.echo("cached name and picture erased" if found else "no cached name and picture")


def _describe(policy: RetentionPolicy) -> str:
    ttl = policy.message_ttl.seconds
    kept = f"kept {ttl // DAY_SECONDS} days after they are stored" if ttl else "kept until deleted"
    stamp = policy.update_time
    since = (
        f" (set {stamp.ToDatetime().strftime('%Y-%m-%d %H:%M')} UTC)"
        if stamp.seconds
        else " (the default)"
    )
    return f"{policy.tenant_id}: messages are {kept}{since}"
