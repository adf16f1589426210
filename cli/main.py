"""The ``chatbot`` command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from cli import REPO
from cli.data import erase_user, retention_app
from cli.messenger_profile import messenger_profile_app
from cli.users import users_app

app = typer.Typer(
    help="Run the chatbot stack locally, play Messenger against it, and operate it.",
    no_args_is_help=True,
    add_completion=False,
)
dead_letters = typer.Typer(help="Inspect and replay messages that failed for good.")
tenants_app = typer.Typer(help="Check the tenants configuration.")
app.add_typer(dead_letters, name="dead-letters")
app.add_typer(users_app, name="users")
app.add_typer(tenants_app, name="tenants")
app.add_typer(messenger_profile_app, name="messenger-profile")
app.add_typer(retention_app, name="retention")
app.command("erase-user")(erase_user)


def _nlu_python() -> str:
    python = os.environ.get("NLU_PYTHON")
    if not python or not Path(python).exists():
        typer.echo(
            "error: NLU_PYTHON must name the NLU environment's python; "
            "`make run` and `make train` set it for you",
            err=True,
        )
        raise typer.Exit(2)
    return python


@app.command()
def run() -> None:
    """Start Redis, NLU, chatlog, dialogue and gateway; Ctrl-C stops them (what `make run` does)."""
    from cli.stack import run_stack

    raise typer.Exit(run_stack(_nlu_python()))


@app.command()
def simulate(
    users: Annotated[int, typer.Option(help="simulated Messenger users")] = 3,
    messages: Annotated[int, typer.Option(help="messages per user")] = 5,
    gateway: Annotated[str, typer.Option(help="the gateway's base URL")] = "http://127.0.0.1:8080",
    app_secret: Annotated[
        str, typer.Option(envvar="MESSENGER_APP_SECRET", help="the app secret that signs webhooks")
    ] = "local-app-secret",
    page_id: Annotated[str, typer.Option(envvar="PAGE_ID", help="the page id")] = "local-page",
    graph_port: Annotated[int, typer.Option(help="port of the local Graph API stand-in")] = 8091,
    duplicates: Annotated[float, typer.Option(help="share of deliveries sent twice")] = 0.3,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the replies")] = 60.0,
    quiet: Annotated[bool, typer.Option(help="print only the summary")] = False,
) -> None:
    """Play Messenger against the running stack and check every reply: once, in order."""
    from cli.simulate import print_summary
    from cli.simulate import simulate as play

    try:
        summary = play(
            gateway,
            app_secret,
            page_id,
            users,
            messages,
            graph_port,
            duplicates,
            timeout,
            not quiet,
        )
    except OSError as exc:
        typer.echo(f"error: {exc} (is the stack running? start it with `make run`)", err=True)
        raise typer.Exit(2) from exc
    print_summary(summary)
    raise typer.Exit(0 if summary.ok else 1)


@app.command()
def train(force: Annotated[bool, typer.Option(help="retrain even if up to date")] = False) -> None:
    """Train the NLU model from services/nlu (cached: only retrains on change)."""
    argv = [_nlu_python(), "-m", "services.nlu", "train", *(["--force"] if force else [])]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'nlu'}"}
    raise typer.Exit(subprocess.call(argv, cwd=REPO, env=env))


@app.command("export-training-data")
def export_training_data(
    tenant: Annotated[str, typer.Option(help="the tenant")] = "default",
    days: Annotated[int, typer.Option(help="messages of the last DAYS days")] = 30,
    intent: Annotated[
        list[str] | None, typer.Option(help="only these predicted intents (repeatable)")
    ] = None,
    max_confidence: Annotated[
        float | None, typer.Option(help="only messages the model was at most this sure of")
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many examples")] = 1000,
    output: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
    address: Annotated[str, typer.Option(envvar="CHATLOG_ADDRESS")] = "127.0.0.1:50053",
) -> None:
    """Export users' messages with their predicted intents as Rasa NLU YAML, least sure first."""
    import time

    import grpc
    from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
    from chatbot.chatlog.v1 import chatlog_service_pb2_grpc

    request = chatlog_pb.ExportTrainingDataRequest(
        tenant_id=tenant, intents=intent or [], limit=limit
    )
    now = int(time.time())
    request.start_time.FromSeconds(now - days * 86400)
    request.end_time.FromSeconds(now + 60)
    if max_confidence is not None:
        request.max_confidence = max_confidence
    with grpc.insecure_channel(address) as channel:
        stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
        try:
            reply = stub.ExportTrainingData(request, timeout=60)
        except grpc.RpcError as exc:
            typer.echo(f"error: {exc.code().name}: {exc.details()}", err=True)
            raise typer.Exit(1) from exc
    if output:
        output.write_text(reply.rasa_nlu_yaml, encoding="utf-8")
        typer.echo(f"{len(reply.examples)} examples written to {output}", err=True)
    else:
        typer.echo(reply.rasa_nlu_yaml, nl=False)


def _dialogue_stub(address: str):  # type: ignore[no-untyped-def]
    import grpc
    from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

    return dialogue_service_pb2_grpc.DialogueServiceStub(grpc.insecure_channel(address))


@dead_letters.command("list")
def dead_letters_list(
    tenant: Annotated[str, typer.Option(help="the tenant")] = "default",
    address: Annotated[str, typer.Option(envvar="DIALOGUE_ADDRESS")] = "127.0.0.1:50051",
) -> None:
    """List a tenant's dead letters, latest first."""
    import grpc
    from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

    try:
        reply = _dialogue_stub(address).ListDeadLetters(
            pb.ListDeadLettersRequest(tenant_id=tenant, page_size=100), timeout=10
        )
    except grpc.RpcError as exc:
        typer.echo(f"error: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from exc
    if not reply.dead_letters:
        typer.echo("no dead letters")
    for dead in reply.dead_letters:
        typer.echo(
            f"{dead.dead_letter_id}  user {dead.event.user.user_id}  "
            f"{dead.attempt_count} attempts  {dead.last_error[:80]}"
        )


@dead_letters.command("replay")
def dead_letters_replay(
    dead_letter_id: Annotated[str, typer.Argument(help="the id `chatbot dead-letters list` shows")],
    tenant: Annotated[str, typer.Option(help="the tenant")] = "default",
    address: Annotated[str, typer.Option(envvar="DIALOGUE_ADDRESS")] = "127.0.0.1:50051",
) -> None:
    """Queue a dead letter again at the tail of its user's queue."""
    import grpc
    from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

    try:
        reply = _dialogue_stub(address).ReplayDeadLetter(
            pb.ReplayDeadLetterRequest(tenant_id=tenant, dead_letter_id=dead_letter_id), timeout=10
        )
    except grpc.RpcError as exc:
        typer.echo(f"error: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"queued again; the user's queue now holds {reply.queue_length}")


@tenants_app.command("check")
def tenants_check(
    file: Annotated[
        Path | None,
        typer.Option(envvar="TENANTS_FILE", help="the tenants file (else the environment)"),
    ] = None,
) -> None:
    """Validate the tenants file and every tenant's domain; print what each bot has."""
    from mesh.config import ConfigError
    from mesh.tenants import Tenants
    from services.dialogue.domain import load_domains

    try:
        tenants = Tenants.from_file(file) if file else Tenants.from_env()
        domains = load_domains(tenants)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for tenant in tenants:
        missing = [
            name
            for name, value in (
                ("app_secret", tenant.app_secret),
                ("verify_token", tenant.verify_token),
                ("page_access_token", tenant.page_access_token),
            )
            if not value
        ]
        domain = domains[tenant.id]
        typer.echo(
            f"{tenant.id}: page {tenant.page_id or '-'}, {len(domain.responses)} responses, "
            f"{len(domain.actions)} actions, {len(tenant.api_keys)} API keys"
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
