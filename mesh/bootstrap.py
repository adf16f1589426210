"""``python -m services.<name>``: the command line every service shares.

The arguments are parsed first, so ``--help`` answers before anything heavy
loads. Then the chosen command runs; a ``ConfigError`` raised while logging is
configured, settings are read or the service starts becomes one line on
standard error and exit code 2, never a traceback: an operator reads the
setting to fix, and an orchestrator sees a configuration failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh.config import ConfigError
from mesh.logging import configure_logging
from mesh.tracing import setup_tracing, shutdown_tracing

CONFIG_EXIT = 2


@dataclass(frozen=True)
class Command:
    """One subcommand: ``run`` gets the parsed arguments and returns the exit code.

    ``logs`` configures the JSON logs before it runs; ``traces`` also exports
    spans while it runs (when an OTLP endpoint is configured).
    """

    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    logs: bool = False
    traces: bool = False


def parser(service: str, description: str, commands: Sequence[Command]) -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(prog=f"python -m services.{service}", description=description)
    subparsers = parsed.add_subparsers(dest="command", required=True)
    for command in commands:
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description
        )
        if command.arguments is not None:
            command.arguments(sub)
    return parsed


def main(
    service: str,
    description: str,
    commands: Sequence[Command],
    argv: Sequence[str] | None = None,
) -> int:
    """Parses ``argv``, runs the chosen command and returns its exit code."""
    args = parser(service, description, commands).parse_args(argv)
    command = next(c for c in commands if c.name == args.command)
    traced = False
    try:
        if command.logs or command.traces:
            configure_logging(service)
        if command.traces:
            traced = setup_tracing(service)
        return command.run(args)
    except ConfigError as exc:
        one_line = " ".join(str(exc).split())
        print(f"configuration error: {one_line}", file=sys.stderr)
        return CONFIG_EXIT
    finally:
        if traced:
            shutdown_tracing()
