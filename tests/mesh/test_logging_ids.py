"""User ids in logs: keyed hashes that only the key's holder can recompute.

The services' logging set-up runs in processes of its own here, as a service
would start it, with ``LOG_ID_KEY`` or ``LOG_ID_KEY_FILE`` set or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.support import REPO
from mesh.logging import hashed

KEY = "log-id-key-for-tests-3f9a81c2d4"
USER = "alice@example.com"

# Sets logging up twice (some commands do), hashes, and logs a line as a service does.
_SCRIPT = """
import logging, sys
from mesh.logging import configure_logging, hashed
configure_logging("probe")
configure_logging("probe")
log = logging.getLogger("probe")
for user in sys.argv[1:]:
    log.info("turn done", extra={"user": hashed(user)})
    log.debug("debug line", extra={"user": hashed(user)})
print(",".join(hashed(user) for user in sys.argv[1:]))
"""


def run_probe(*users: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOG_ID_KEY")}
    environ.update(PYTHONPATH=str(REPO), LOG_LEVEL="DEBUG", **env)
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *users],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def log_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_one_key_one_hash_another_key_another() -> None:
    key, other = KEY.encode(), b"another-key-for-tests-0b7e55"
    assert hashed(USER, key=key) == hashed(USER, key=key)
    assert hashed(USER, key=key) != hashed(USER, key=other)
    assert hashed(USER, key=key) != hashed("bob@example.com", key=key)


def test_the_hash_is_not_a_plain_sha256() -> None:
    digest = hashlib.sha256(USER.encode()).hexdigest()
    value = hashed(USER, key=KEY.encode())
    assert len(value) == 16
    assert value not in digest and digest[:12] not in value


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    expected = hashed(USER, key=KEY.encode())
    from_env = run_probe(USER, LOG_ID_KEY=KEY)
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout.strip() == expected
    key_file = tmp_path / "log-id-key"
    key_file.write_text(KEY + "\n", encoding="utf-8")  # as `echo` writes it
    from_file = run_probe(USER, LOG_ID_KEY_FILE=str(key_file))
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.strip() == expected
    # The lines carry the keyed hash, never the id or the key.
    for probe in (from_env, from_file):
        assert [line["user"] for line in log_lines(probe.stderr)] == [expected, expected]
        assert USER not in probe.stderr and KEY not in probe.stderr
        assert not [line for line in log_lines(probe.stderr) if line["level"] == "warning"]


def test_without_a_key_each_process_draws_its_own_and_says_so_once() -> None:
    first, second = run_probe(USER, "bob"), run_probe(USER, "bob")
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout != second.stdout  # nothing to correlate across processes
    mine = first.stdout.strip().split(",")
    assert len(set(mine)) == 2 and hashed(USER) not in mine
    for probe in (first, second):
        warnings = [line for line in log_lines(probe.stderr) if line["level"] == "warning"]
        assert len(warnings) == 1, probe.stderr
        assert "LOG_ID_KEY" in str(warnings[0]["message"])


@pytest.mark.parametrize("short", ["short-key-1", "k3y!"])
def test_a_short_key_fails_loudly_without_showing_it(short: str) -> None:
    probe = run_probe(USER, LOG_ID_KEY=short)
    assert probe.returncode != 0
    assert "LOG_ID_KEY is too short" in probe.stderr
    assert f"={short}" not in probe.stderr and repr(short) not in probe.stderr
    assert probe.stdout == ""


def test_an_unreadable_key_file_fails_loudly(tmp_path: Path) -> None:
    probe = run_probe(USER, LOG_ID_KEY_FILE=str(tmp_path / "missing"))
    assert probe.returncode != 0
    assert "LOG_ID_KEY_FILE=" in probe.stderr and "cannot be read" in probe.stderr
    assert probe.stdout == ""
