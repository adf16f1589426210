"""``chatbot users``: the admin console's users, kept in Redis.

Register it in ``cli/main.py`` with ``app.add_typer(users_app, name="users")``.
Passwords are read from a hidden prompt (typed twice) or, for scripts, from
standard input with ``--password-stdin``; never from an argument, which other
users of the machine could see in the process list.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from services.gateway.admin.users import RedisClient

_T = TypeVar("_T")
MIN_PASSWORD = 8

users_app = typer.Typer(
    help="Manage who may sign in to the admin console (users live in Redis).",
    no_args_is_help=True,
)

RedisUrl = Annotated[
    str, typer.Option("--redis-url", envvar="REDIS_URL", help="the Redis the gateway uses")
]
Prefix = Annotated[
    str, typer.Option("--prefix", envvar="ADMIN_REDIS_PREFIX", help="the console's key prefix")
]


def _run(redis_url: str, work: Callable[[RedisClient], Awaitable[_T]]) -> _T:
    from redis.exceptions import RedisError

    from mesh.redis_client import connect

    async def main() -> _T:
        redis = await connect(redis_url, timeout=2.0)
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(main())
    except (RedisError, OSError) as exc:
        typer.echo(f"error: Redis at {redis_url} cannot be reached: {exc}", err=True)
        raise typer.Exit(1) from exc


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        typer.echo(f"error: the password needs at least {MIN_PASSWORD} characters", err=True)
        raise typer.Exit(2)
    return password


def _check_tenants(tenants: list[str]) -> None:
    """Warns about grants naming no configured tenant (a typo grants nothing)."""
    from mesh.config import ConfigError
    from mesh.tenants import Tenants

    try:
        known = {t.id for t in Tenants.from_env()}
    except ConfigError:
        return
    unknown = sorted(set(tenants) - known - {"*"})
    if unknown:
        typer.echo(
            f"warning: {', '.join(unknown)} is not a configured tenant here "
            f"(known: {', '.join(sorted(known))})",
            err=True,
        )


@users_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="the user name (lowercase letters, digits, ._@-)")],
    role: Annotated[
        str, typer.Option("--role", help="viewer (reads) or admin (also acts)")
    ] = "viewer",
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", help="a tenant granted (repeat it; '*' for all)"),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
    update: Annotated[
        bool, typer.Option("--update", help="replace an existing user's password, role and grants")
    ] = False,
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    prefix: Prefix = "admin:",
) -> None:
    """Add a user who may sign in to the admin console (or update one with --update)."""
    from services.gateway.admin.users import ROLES, InvalidUser, UserStore, normalize_name

    if role not in ROLES:
        typer.echo(f"error: --role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    if not tenant:
        typer.echo("error: grant at least one --tenant ('*' for all)", err=True)
        raise typer.Exit(2)
    try:
        name = normalize_name(name)
    except InvalidUser as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _check_tenants(tenant)

    async def exists(redis: RedisClient) -> bool:
        store = UserStore(redis, prefix)
        return await store.get(name) is not None

    if _run(redis_url, exists) and not update:
        typer.echo(f"error: user {name!r} exists; use --update to change it", err=True)
        raise typer.Exit(1)
    password = _read_password(password_stdin)

    async def put(redis: RedisClient) -> str:
        store = UserStore(redis, prefix)
        user = await store.put(name, role=role, tenants=tenant or [], password=password)
        return f"{user.name}: {user.role} of {', '.join(user.tenants)}"

    try:
        summary = _run(redis_url, put)
    except InvalidUser as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"saved {summary}")


@users_app.command("list")
def list_users(redis_url: RedisUrl = "redis://127.0.0.1:6379/0", prefix: Prefix = "admin:") -> None:
    """List the console's users with their roles and tenants."""
    from services.gateway.admin.users import UserStore

    async def read(redis: RedisClient) -> list[str]:
        store = UserStore(redis, prefix)
        lines = []
        for name in await store.names():
            user = await store.get(name)
            if user is not None:
                lines.append(f"{user.name}  {user.role}  {','.join(user.tenants)}")
        return lines

    lines = _run(redis_url, read)
    typer.echo("\n".join(lines) if lines else "no users")


@users_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="the user name")],
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    prefix: Prefix = "admin:",
) -> None:
    """Remove a user; their sessions end at their next request."""
    from services.gateway.admin.users import InvalidUser, UserStore

    async def delete(redis: RedisClient) -> bool:
        return await UserStore(redis, prefix).delete(name)

    try:
        removed = _run(redis_url, delete)
    except InvalidUser as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not removed:
        typer.echo(f"error: no user {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed {name}")


@users_app.command("unlock")
def unlock(
    name: Annotated[str, typer.Argument(help="the user name")],
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    prefix: Prefix = "admin:",
) -> None:
    """Clear a user name's failed logins from every address (an address's own limit expires)."""
    from services.gateway.admin.lockout import LoginThrottle

    async def clear(redis: RedisClient) -> None:
        throttle = LoginThrottle(redis, free_attempts=1, ip_limit=1, window=1, prefix=prefix)
        await throttle.clear(name)

    _run(redis_url, clear)
    typer.echo(f"{name} can sign in again")
