"""Tenants: one bot on one page each.

Read from the YAML file named by ``TENANTS_FILE``::

    tenants:
      - id: acme
        page_id: "1234567890"
        app_secret: ${ACME_APP_SECRET}          # ${NAME}: from the environment
        verify_token_file: /run/secrets/acme-verify   # NAME_file: from a file
        page_access_token: ${ACME_PAGE_TOKEN}
        api_keys: ["${ACME_API_KEY}"]           # for the JSON channel
        domain: domains/acme.yml                # the bot's responses and actions
        nlu_model: models/acme.tar.gz           # optional: the default model otherwise
        handover_target_app_id: "263902037430900"  # optional: who gets hand-offs

or, without that file, one tenant from the environment: ``TENANT_ID``
(``default``), ``PAGE_ID``, ``MESSENGER_APP_SECRET``, ``MESSENGER_VERIFY_TOKEN``,
``MESSENGER_PAGE_ACCESS_TOKEN``, ``API_KEYS`` (comma-separated), ``DOMAIN_FILE``,
``MESSENGER_HANDOVER_TARGET_APP_ID`` (each secret may also come from ``NAME_FILE``).
``handover_target_app_id`` is the app a hand-off to a person passes the Messenger
thread to (Handover Protocol): Meta's Page Inbox unless set. Relative paths are relative
to the tenants file. Secrets never appear in a tenant's repr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh.config import ConfigError, Env

DEFAULT_TENANT_ID = "default"
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRETS = ("app_secret", "verify_token", "page_access_token")
# Meta's Page Inbox, as a Handover Protocol app.
PAGE_INBOX_APP_ID = "263902037430900"


@dataclass(frozen=True)
class Tenant:
    id: str
    page_id: str = ""
    app_secret: str = field(default="", repr=False)
    verify_token: str = field(default="", repr=False)
    page_access_token: str = field(default="", repr=False)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    domain: str = ""
    nlu_model: str = ""
    handover_target_app_id: str = PAGE_INBOX_APP_ID
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)


class Tenants:
    """The known tenants, looked up by id or by page id."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self._by_id: dict[str, Tenant] = {}
        self._by_page: dict[str, Tenant] = {}
        for tenant in tenants:
            if tenant.id in self._by_id:
                raise ConfigError(f"tenant {tenant.id!r} is defined twice")
            self._by_id[tenant.id] = tenant
            if tenant.page_id:
                if tenant.page_id in self._by_page:
                    raise ConfigError(f"page id {tenant.page_id!r} belongs to two tenants")
                self._by_page[tenant.page_id] = tenant

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def by_page(self, page_id: str) -> Tenant | None:
        return self._by_page.get(page_id)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def from_env(cls, env: Env | None = None) -> Tenants:
        env = env or Env()
        path = env.optional("TENANTS_FILE")
        if path:
            return cls.from_file(Path(path), env)
        keys = env.secret("API_KEYS") or ""
        return cls(
            [
                Tenant(
                    id=validate_tenant_id(env.string("TENANT_ID", DEFAULT_TENANT_ID)),
                    page_id=env.string("PAGE_ID", ""),
                    app_secret=env.secret("MESSENGER_APP_SECRET") or "",
                    verify_token=env.secret("MESSENGER_VERIFY_TOKEN") or "",
                    page_access_token=env.secret("MESSENGER_PAGE_ACCESS_TOKEN") or "",
                    api_keys=tuple(k.strip() for k in keys.split(",") if k.strip()),
                    domain=env.string("DOMAIN_FILE", ""),
                    handover_target_app_id=_app_id(
                        env.string("MESSENGER_HANDOVER_TARGET_APP_ID", "") or PAGE_INBOX_APP_ID,
                        "MESSENGER_HANDOVER_TARGET_APP_ID",
                    ),
                )
            ]
        )

    @classmethod
    def from_file(cls, path: Path, env: Env | None = None) -> Tenants:
        environ = os.environ if env is None else env.environ
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"TENANTS_FILE={path} cannot be read: {exc}") from exc
        entries = raw.get("tenants") if isinstance(raw, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{path}: expected a non-empty 'tenants' list")
        return cls([_tenant(path, i, entry, environ) for i, entry in enumerate(entries)])


def _expand(value: str, where: str, environ: Mapping[str, str]) -> str:
    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{where} refers to ${{{name}}}, which is not set")
        return environ[name]

    return _ENV_REF.sub(lookup, value)


def _tenant(path: Path, index: int, entry: Any, environ: Mapping[str, str]) -> Tenant:
    where = f"{path}: tenants[{index}]"
    if not isinstance(entry, dict) or "id" not in entry:
        raise ConfigError(f"{where} needs an 'id'")

    def text(key: str) -> str:
        value = entry.get(key)
        return _expand(str(value), f"{where}.{key}", environ) if value is not None else ""

    def local_path(key: str) -> str:
        value = text(key)
        return str((path.parent / value).resolve()) if value else ""

    secrets: dict[str, str] = {}
    for key in _SECRETS:
        secrets[key] = text(key)
        file_key = f"{key}_file"
        if not secrets[key] and entry.get(file_key):
            secret_path = Path(local_path(file_key))
            try:
                secrets[key] = secret_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{where}.{file_key}: {exc}") from exc
    raw_keys = entry.get("api_keys") or []
    if not isinstance(raw_keys, list):
        raise ConfigError(f"{where}.api_keys must be a list")
    return Tenant(
        id=validate_tenant_id(str(entry["id"])),
        page_id=text("page_id"),
        api_keys=tuple(_expand(str(k), f"{where}.api_keys", environ) for k in raw_keys),
        domain=local_path("domain"),
        nlu_model=local_path("nlu_model"),
        handover_target_app_id=_app_id(
            text("handover_target_app_id") or PAGE_INBOX_APP_ID, f"{where}.handover_target_app_id"
        ),
        settings=dict(entry),
        **secrets,
    )


def _app_id(value: str, where: str) -> str:
    if not value.strip().isdigit():
        raise ConfigError(f"{where} must be a Facebook app id (digits), not {value!r}")
    return value.strip()


def validate_tenant_id(tenant_id: str) -> str:
    if not _TENANT_ID.match(tenant_id):
        raise ConfigError(
            f"tenant id {tenant_id!r} must be 1-63 lowercase letters, digits, '-' or '_'"
        )
    return tenant_id
