"""Settings and tenants: typed, loud on mistakes, secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import ConfigError, Env
from mesh.tenants import Tenants


def test_env_types_and_errors(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    env = Env(
        {"PORT": "50052", "RATIO": "0.5", "ON": "yes", "BAD": "x", "KEY_FILE": str(secret_file)}
    )
    assert env.integer("PORT", 1) == 50052
    assert env.integer("MISSING", 7) == 7
    assert env.number("RATIO", 1.0) == 0.5
    assert env.boolean("ON", False) is True
    assert env.secret("KEY") == "s3cret"
    assert env.secret("NOPE") is None
    with pytest.raises(ConfigError, match="BAD='x' is not an integer"):
        env.integer("BAD", 1)
    with pytest.raises(ConfigError, match="REQUIRED is required"):
        env.string("REQUIRED")
    with pytest.raises(ConfigError, match="below the minimum"):
        Env({"PORT": "-1"}).integer("PORT", 1, minimum=0)


def test_single_tenant_from_the_environment() -> None:
    tenants = Tenants.from_env(
        Env(
            {
                "MESSENGER_APP_SECRET": "app-secret-41",
                "MESSENGER_VERIFY_TOKEN": "verify-token-42",
                "API_KEYS": "key-one-43, key-two-44",
            }
        )
    )
    (tenant,) = list(tenants)
    assert tenant.id == "default"
    assert tenant.app_secret == "app-secret-41"
    assert tenant.api_keys == ("key-one-43", "key-two-44")
    for secret in ("app-secret-41", "verify-token-42", "key-one-43", "key-two-44"):
        assert secret not in repr(tenant)


def test_tenants_file_expands_references_and_reads_secret_files(tmp_path: Path) -> None:
    (tmp_path / "verify").write_text("from-file\n")
    path = tmp_path / "tenants.yml"
    path.write_text(
        "tenants:\n"
        "  - id: acme\n"
        '    page_id: "111"\n'
        "    app_secret: ${ACME_SECRET}\n"
        "    verify_token_file: verify\n"
        '    api_keys: ["${ACME_KEY}"]\n'
        "    domain: domains/acme.yml\n"
        "  - id: globex\n"
        '    page_id: "222"\n'
    )
    tenants = Tenants.from_file(path, Env({"ACME_SECRET": "s3cr3t-acme", "ACME_KEY": "key"}))
    acme = tenants.get("acme")
    assert acme is not None
    assert acme.app_secret == "s3cr3t-acme"
    assert acme.verify_token == "from-file"
    assert acme.api_keys == ("key",)
    assert acme.domain == str(tmp_path / "domains" / "acme.yml")
    assert tenants.by_page("222") is tenants.get("globex")
    assert "s3cr3t-acme" not in repr(acme)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenants: []\n", "non-empty 'tenants' list"),
        ("tenants:\n  - page_id: '1'\n", "needs an 'id'"),
        ("tenants:\n  - id: Bad Id\n", "must be 1-63 lowercase"),
        ("tenants:\n  - id: a\n  - id: a\n", "defined twice"),
        ("tenants:\n  - id: a\n    page_id: '1'\n  - id: b\n    page_id: '1'\n", "two tenants"),
        ("tenants:\n  - id: a\n    app_secret: ${NOT_SET}\n", "NOT_SET"),
    ],
)
def test_bad_tenants_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tenants.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
        Tenants.from_file(path, Env({}))
