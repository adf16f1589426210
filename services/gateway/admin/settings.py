"""The admin console's settings, read once from the environment.

- ``ADMIN_USERNAME``, ``ADMIN_PASSWORD`` (or ``ADMIN_PASSWORD_FILE``): the first
  administrator, created or updated at start and granted every tenant; none by default.
- ``ADMIN_COOKIE_SECURE`` (``auto``): ``true`` makes cookies ``Secure`` (serve over
  https), ``false`` never (local http), ``auto`` when the request came over https.
- ``ADMIN_SESSION_IDLE_SECONDS`` (7200): a session ends after this long without a request,
  and ``ADMIN_SESSION_MAX_SECONDS`` (43200) after login in any case.
- ``ADMIN_LOCKOUT_ATTEMPTS`` (5): sign-in attempts a user name may fail from one client
  address before each further one waits ``ADMIN_LOGIN_DELAY_SECONDS`` (1), doubled per
  failure up to ``ADMIN_LOCKOUT_WINDOW_SECONDS`` (900); failures are forgotten that long
  after the last wait, or at a successful sign-in. Other addresses are not slowed down.
  ``ADMIN_LOCKOUT_IP_ATTEMPTS`` (20) unsuccessful attempts from one address, whatever the
  names, block that address for the window.
- ``ADMIN_RPC_TIMEOUT`` (5 s) for each call to the chatlog and dialogue services;
  ``ADMIN_AGENT_TIMEOUT`` (15 s) for an agent's message to be sent.
- ``ADMIN_LIVE_POLL_SECONDS`` (2): how often an open transcript asks for new messages;
  ``ADMIN_LIVE_STREAM_SECONDS`` (300): one live stream's length (the browser reconnects).
- ``ADMIN_IMG_SRC`` (``https: data:``): where transcripts may load users' images from
  (the Content-Security-Policy's ``img-src``).
- ``ADMIN_REDIS_PREFIX`` (``admin:``): the prefix of the console's Redis keys.
- Customers' names and pictures (``profiles.py``) come from ``MESSENGER_GRAPH_API_URL``
  (Meta's Graph API, v21.0): kept ``ADMIN_PROFILE_TTL_SECONDS`` (86400), a refusal
  ``ADMIN_PROFILE_REFUSED_TTL_SECONDS`` (3600); a page waits ``ADMIN_PROFILE_WAIT_SECONDS``
  (0.5) for them, lookups run ``ADMIN_PROFILE_CONCURRENCY`` (4) at a time, each within
  ``ADMIN_PROFILE_FETCH_TIMEOUT`` (5 s). ``ADMIN_PROFILES=false`` never asks Meta: ids only.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh import ConfigError, Env
from mesh.graph import DEFAULT_GRAPH_API_URL

COOKIE_SECURE_MODES = ("auto", "true", "false")


@dataclass(frozen=True)
class AdminSettings:
    bootstrap_username: str | None = None
    bootstrap_password: str | None = None
    cookie_secure: str = "auto"
    session_idle_seconds: int = 2 * 3600
    session_max_seconds: int = 12 * 3600
    lockout_attempts: int = 5
    lockout_ip_attempts: int = 20
    lockout_window_seconds: int = 15 * 60
    login_delay_seconds: float = 1.0
    rpc_timeout: float = 5.0
    agent_timeout: float = 15.0
    live_poll_seconds: float = 2.0
    live_stream_seconds: float = 300.0
    img_src: str = "https: data:"
    redis_prefix: str = "admin:"
    graph_api_url: str = ""  # empty: no lookups, ids only (from_env: Meta's)
    profile_ttl_seconds: int = 24 * 3600
    profile_refused_ttl_seconds: int = 3600
    profile_wait_seconds: float = 0.5
    profile_fetch_timeout: float = 5.0
    profile_concurrency: int = 4

    def __repr__(self) -> str:  # the password never shows
        return (
            f"AdminSettings(bootstrap_username={self.bootstrap_username!r}, "
            f"cookie_secure={self.cookie_secure!r})"
        )

    @classmethod
    def from_env(cls, env: Env | None = None) -> AdminSettings:
        env = env or Env()
        username = env.optional("ADMIN_USERNAME")
        password = env.secret("ADMIN_PASSWORD")
        if bool(username) != bool(password):
            raise ConfigError("ADMIN_USERNAME and ADMIN_PASSWORD are set together or not at all")
        if password is not None and len(password) < 8:
            raise ConfigError("ADMIN_PASSWORD must have at least 8 characters")
        secure = env.string("ADMIN_COOKIE_SECURE", "auto").strip().lower()
        if secure in {"1", "yes", "on"}:
            secure = "true"
        if secure in {"0", "no", "off"}:
            secure = "false"
        if secure not in COOKIE_SECURE_MODES:
            raise ConfigError(f"ADMIN_COOKIE_SECURE={secure!r}: expected auto, true or false")
        settings = cls(
            bootstrap_username=username,
            bootstrap_password=password,
            cookie_secure=secure,
            session_idle_seconds=env.integer("ADMIN_SESSION_IDLE_SECONDS", 7200, minimum=60),
            session_max_seconds=env.integer("ADMIN_SESSION_MAX_SECONDS", 43200, minimum=60),
            lockout_attempts=env.integer("ADMIN_LOCKOUT_ATTEMPTS", 5, minimum=1),
            lockout_ip_attempts=env.integer("ADMIN_LOCKOUT_IP_ATTEMPTS", 20, minimum=1),
            lockout_window_seconds=env.integer("ADMIN_LOCKOUT_WINDOW_SECONDS", 900, minimum=1),
            login_delay_seconds=_positive(env, "ADMIN_LOGIN_DELAY_SECONDS", 1.0),
            rpc_timeout=_positive(env, "ADMIN_RPC_TIMEOUT", 5.0),
            agent_timeout=_positive(env, "ADMIN_AGENT_TIMEOUT", 15.0),
            live_poll_seconds=_positive(env, "ADMIN_LIVE_POLL_SECONDS", 2.0),
            live_stream_seconds=_positive(env, "ADMIN_LIVE_STREAM_SECONDS", 300.0),
            img_src=env.string("ADMIN_IMG_SRC", "https: data:"),
            redis_prefix=env.string("ADMIN_REDIS_PREFIX", "admin:"),
            graph_api_url=(
                env.string("MESSENGER_GRAPH_API_URL", DEFAULT_GRAPH_API_URL)
                if env.boolean("ADMIN_PROFILES", True)
                else ""
            ),
            profile_ttl_seconds=env.integer("ADMIN_PROFILE_TTL_SECONDS", 86400, minimum=60),
            profile_refused_ttl_seconds=env.integer(
                "ADMIN_PROFILE_REFUSED_TTL_SECONDS", 3600, minimum=60
            ),
            profile_wait_seconds=_positive(env, "ADMIN_PROFILE_WAIT_SECONDS", 0.5),
            profile_fetch_timeout=_positive(env, "ADMIN_PROFILE_FETCH_TIMEOUT", 5.0),
            profile_concurrency=env.integer("ADMIN_PROFILE_CONCURRENCY", 4, minimum=1),
        )
        if ";" in settings.img_src or "\n" in settings.img_src:
            raise ConfigError("ADMIN_IMG_SRC must be a list of CSP sources, without ';'")
        return settings


def _positive(env: Env, name: str, default: float) -> float:
    value = env.number(name, default)
    if value <= 0:
        raise ConfigError(f"{name}={value} must be positive")
    return value
