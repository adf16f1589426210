"""Every service's command line: help before anything loads, a bad setting in one line, exit 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from harness.support import REPO
from mesh import ConfigError, bootstrap
from tests.nlu_process import nlu_env, nlu_python

SERVICES = ("chatlog", "dialogue", "gateway", "nlu")


def _refuse(args: argparse.Namespace) -> int:
    raise ConfigError("SOME_SETTING='x' is not a number\n(see the README)")


def _fine(args: argparse.Namespace) -> int:
    return 0


COMMANDS = [
    bootstrap.Command("serve", help="serve", description="serve it", run=_refuse),
    bootstrap.Command("check", help="check", description="check it", run=_fine),
]


def test_a_configuration_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bootstrap.main("demo", "A demo.", COMMANDS, ["serve"]) == 2
    err = capsys.readouterr().err
    assert err == "configuration error: SOME_SETTING='x' is not a number (see the README)\n"


def test_a_bad_log_id_key_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_ID_KEY", "k3y-0f-13char")
    # The command would succeed: the refusal comes from configuring the logs,
    # before they replace any handler of this process.
    fine = [bootstrap.Command("serve", help="", description="", run=_fine, logs=True)]
    assert bootstrap.main("demo", "A demo.", fine, ["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: LOG_ID_KEY is too short")
    assert "k3y-0f-13char" not in err


def test_the_command_s_own_exit_code_is_returned() -> None:
    assert bootstrap.main("demo", "A demo.", COMMANDS, ["check"]) == 0


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bootstrap.main("demo", "A demo.", COMMANDS, ["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "python -m services.demo" in out and "serve" in out and "check" in out


def _run(service: str, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    if service == "nlu":
        python, env = nlu_python(), nlu_env(**extra)
    else:
        python = sys.executable
        env = {"PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}", **extra}
    return subprocess.run(
        [python, "-m", f"services.{service}", *argv],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_answers_help(service: str) -> None:
    for argv in (["--help"], ["serve", "--help"]):
        result = _run(service, *argv)
        assert result.returncode == 0, result.stderr
        assert "serve" in result.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_refuses_a_bad_log_id_key_in_one_line(service: str) -> None:
    result = _run(service, "serve", LOG_ID_KEY="too-short")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("configuration error: LOG_ID_KEY is too short"), result.stderr
    assert "too-short" not in result.stderr
