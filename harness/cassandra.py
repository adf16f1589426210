"""A real Cassandra 5.0 node for tests and benchmarks, through ``scripts/cassandra.py``.

On free ports, with its data in the directory given; ``stop`` and ``start``
again keep the data (the outage tests rely on it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.support import REPO, free_port


class CassandraNode:
    def __init__(self, data_dir: Path, heap: str = "768m") -> None:
        self.data_dir = data_dir
        self.heap = heap
        self.port = free_port()
        self.storage_port = free_port()

    def _script(self, *args: str) -> None:
        out = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "cassandra.py"), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"cassandra.py {args[0]} failed:\n{out.stdout}\n{out.stderr}")

    def start(self) -> None:
        self._script(
            "start",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--storage-port",
            str(self.storage_port),
            "--heap",
            self.heap,
        )

    def stop(self) -> None:
        self._script("stop", "--data-dir", str(self.data_dir))
