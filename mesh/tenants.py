"""Tenants: one bot on one page each.

Read from the YAML file named by ``TENANTS_FILE``::

    tenants:
      - id: acme
        page_id: "1234567890"
        nlu_model: /models/acme.tar.gz   # optional: the default model otherwise

or, without that file, one tenant named by ``TENANT_ID`` (``default``) from the
environment. Each service reads the keys it needs and ignores the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh.config import ConfigError, Env

DEFAULT_TENANT_ID = "default"
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Tenant:
    id: str
    page_id: str = ""
    nlu_model: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)


class Tenants:
    """The known tenants, looked up by id."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self._by_id: dict[str, Tenant] = {}
        for tenant in tenants:
            if tenant.id in self._by_id:
                raise ConfigError(f"tenant {tenant.id!r} is defined twice")
            self._by_id[tenant.id] = tenant

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def from_env(cls, env: Env | None = None) -> Tenants:
        env = env or Env()
        path = env.optional("TENANTS_FILE")
        if path:
            return cls.from_file(Path(path))
        tenant_id = env.string("TENANT_ID", DEFAULT_TENANT_ID)
        return cls([Tenant(id=validate_tenant_id(tenant_id), page_id=env.string("PAGE_ID", ""))])

    @classmethod
    def from_file(cls, path: Path) -> Tenants:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"TENANTS_FILE={path} cannot be read: {exc}") from exc
        entries = raw.get("tenants") if isinstance(raw, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{path}: expected a non-empty 'tenants' list")
        tenants = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry:
                raise ConfigError(f"{path}: tenants[{index}] needs an 'id'")
            model = str(entry.get("nlu_model") or "")
            if model and not Path(model).is_absolute():
                model = str((path.parent / model).resolve())
            tenants.append(
                Tenant(
                    id=validate_tenant_id(str(entry["id"])),
                    page_id=str(entry.get("page_id") or ""),
                    nlu_model=model,
                    settings=dict(entry),
                )
            )
        return cls(tenants)


def validate_tenant_id(tenant_id: str) -> str:
    if not _TENANT_ID.match(tenant_id):
        raise ConfigError(
            f"tenant id {tenant_id!r} must be 1-63 lowercase letters, digits, '-' or '_'"
        )
    return tenant_id
