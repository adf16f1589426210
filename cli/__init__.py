"""The ``chatbot`` command: run the stack locally, play with it, operate it."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The generated stubs live in the checkout (build/gen/py), not in site-packages.
_GEN = REPO / "build" / "gen" / "py"
if _GEN.is_dir() and str(_GEN) not in sys.path:
    sys.path.append(str(_GEN))
