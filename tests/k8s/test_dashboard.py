"""The Grafana dashboard only charts metrics the services really export."""

from __future__ import annotations

import json
import re

from harness.support import REPO

DASHBOARD = REPO / "k8s" / "components" / "grafana-dashboard" / "dashboard.json"
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def _defined_metrics() -> str:
    sources = [*REPO.glob("services/**/*.py"), *REPO.glob("mesh/*.py")]
    return "\n".join(path.read_text(encoding="utf-8") for path in sources)


def test_every_charted_metric_is_exported() -> None:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    code = _defined_metrics()
    names = set()
    for panel in panels:
        for target in panel["targets"]:
            names |= set(
                re.findall(r"\b((?:dialogue|nlu|gateway|grpc|chatlog)_[a-z_]+)", target["expr"])
            )
    assert names
    for name in sorted(names):
        base = name
        for suffix in SUFFIXES:
            base = base.removesuffix(suffix)
        # prometheus_client counters may be declared with or without "_total".
        declared = f'"{base}"' in code or f'"{base}_total"' in code
        assert declared, f"{name} is charted but no service exports {base}"
