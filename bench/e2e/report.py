"""The tables the bench prints and the capacity picture it draws."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.e2e.sweep import Step, knee

# Where a p99 that never came (not all answered) is drawn on the log scale.
NEVER_MS = 120_000.0


def ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:,.0f}"


def num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def capacity_table(curves: dict[str, list[Step]]) -> str:
    header = (
        "system", "offered msg/s", "sent msg/s", "answered msg/s", "reply p50 ms", "reply p99 ms",
        "ack p50 ms", "ack p99 ms", "CPU ms/msg", "driver CPU ms/msg", "stand-ins CPU ms/msg",
        "peak RSS MB", "Redis cmds/msg", "Redis scripts/msg", "Redis round trips/msg",
        "other work, cores",
    )  # fmt: skip
    rows = [
        (
            name, f"{s.offered:g}", num(s.sent_per_s), num(s.answered_per_s),
            ms(s.reply_p50_ms), ms(s.reply_p99_ms), ms(s.ack_p50_ms), ms(s.ack_p99_ms),
            num(s.cpu_s_per_msg * 1000), num(s.driver_cpu_s_per_msg * 1000),
            num(s.standin_cpu_s_per_msg * 1000), num(s.peak_rss_mb, 0),
            num(s.redis_commands_per_msg), num(s.redis_scripts_per_msg),
            num(s.redis_round_trips_per_msg), num(s.others_cores, 2),
        )
        for name, steps in curves.items()
        for s in steps
    ]  # fmt: skip
    return table(header, rows)


def knee_lines(curves: dict[str, list[Step]], limit_ms: float) -> list[str]:
    knees = {name: knee(steps, limit_ms) for name, steps in curves.items()}
    lines = []
    for name, value in knees.items():
        tested = ", ".join(f"{s.offered:g}" for s in curves[name])
        shown = "below the lowest step" if value is None else f"{value:g} msg/s"
        lines.append(f"knee of {name} (reply p99 < {limit_ms / 1000:g} s): {shown} [{tested}]")
    ours = knees.get("this stack")
    for name, value in knees.items():
        if name != "this stack" and ours and value:
            lines.append(f"knee ratio, this stack / {name}: {ours / value:.2f}x")
    return lines


def draw(curves: dict[str, list[Step]], limit_ms: float, path: Path, title: str) -> None:
    """Throughput and reply p99 against offered load, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    top = max((s.offered for steps in curves.values() for s in steps), default=1.0)
    left.plot([0, top], [0, top], color="0.75", linestyle="--", label="answered = offered")
    for name, steps in curves.items():
        offered = [s.offered for s in steps]
        (line,) = left.plot(offered, [s.answered_per_s for s in steps], marker="o", label=name)
        p99 = [min(s.reply_p99_ms, NEVER_MS) for s in steps]
        right.plot(offered, p99, marker="o", color=line.get_color(), label=name)
        never = [(s.offered, NEVER_MS) for s in steps if math.isinf(s.reply_p99_ms)]
        if never:
            right.scatter(*zip(*never, strict=True), marker="x", s=80, color=line.get_color())
    left.set_xlabel("offered load, msg/s")
    left.set_ylabel("answered, msg/s")
    left.set_title("throughput")
    left.legend(fontsize=8)
    right.axhline(limit_ms, color="0.5", linestyle=":", label=f"{limit_ms / 1000:g} s (knee)")
    right.set_yscale("log")
    right.set_xlabel("offered load, msg/s")
    right.set_ylabel("reply p99, ms (x: not all answered)")
    right.set_title("reply latency p99")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No date in the file: the same run draws the same bytes.
    metadata: dict[str, Any] = {"Date": None} if path.suffix == ".svg" else {}
    fig.savefig(path, metadata=metadata)
    plt.close(fig)
