"""Where the repository and the shared cache are."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Heavy artefacts shared by every checkout (models, environments, jars).

    ``CHATBOT_CACHE`` wins; else ``$XDG_CACHE_HOME/chatbot``; else ``~/.cache/chatbot``.
    """
    explicit = os.environ.get("CHATBOT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "chatbot"
