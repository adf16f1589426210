"""How every service reaches Redis: credentials and TLS beside ``REDIS_URL``.

``REDIS_URL`` names the server or a cluster seed: ``redis://host:6379/0``,
``rediss://`` for TLS. Secrets are best kept out of it, in mounted files:

- ``REDIS_USERNAME``: an ACL user (``default`` without it).
- ``REDIS_PASSWORD`` or ``REDIS_PASSWORD_FILE``: its password.
- ``REDIS_TLS_CA``: the CA bundle that signs the server's certificate (the
  system's roots without it); the host name is checked.
- ``REDIS_TLS_CERT``, ``REDIS_TLS_KEY``: a client certificate, for servers
  that ask for one (``tls-auth-clients yes``).

The same options go to a standalone client and to every node of a cluster.
This module needs ``redis`` only in the caller: the NLU environment, which
never talks to Redis, does not import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mesh.config import ConfigError, Env


def _readable(name: str, path: str) -> str:
    try:
        Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}={path} cannot be read: {exc.strerror or exc}") from None
    return path


def redis_options(url: str, env: Env | None = None) -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url(url, ...)`` and ``RedisCluster.from_url``.

    Raises ``ConfigError`` on a missing file, TLS files for a ``redis://`` URL,
    or credentials given both in the URL and in the variables.
    """
    env = env or Env()
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    username = env.optional("REDIS_USERNAME")
    password = env.secret("REDIS_PASSWORD")
    if (username or password) and (parts.username or parts.password):
        raise ConfigError(
            "REDIS_URL holds credentials and REDIS_USERNAME/REDIS_PASSWORD are set too: "
            "keep them in one place (better the variables, with REDIS_PASSWORD_FILE)"
        )
    if username:
        options["username"] = username
    if password:
        options["password"] = password
    tls = {
        "ssl_ca_certs": ("REDIS_TLS_CA", env.optional("REDIS_TLS_CA")),
        "ssl_certfile": ("REDIS_TLS_CERT", env.optional("REDIS_TLS_CERT")),
        "ssl_keyfile": ("REDIS_TLS_KEY", env.optional("REDIS_TLS_KEY")),
    }
    given = {key: (name, path) for key, (name, path) in tls.items() if path}
    if given and parts.scheme != "rediss":
        names = ", ".join(name for name, _ in given.values())
        raise ConfigError(f"{names} set but REDIS_URL is not a rediss:// URL")
    if ("ssl_certfile" in given) != ("ssl_keyfile" in given):
        raise ConfigError("REDIS_TLS_CERT and REDIS_TLS_KEY are set together or not at all")
    for key, (name, path) in given.items():
        options[key] = _readable(name, path)
    return options
