"""Charts as inline SVG, drawn on the server: no script, no external library.

Each chart is an ``<svg role="img">`` with a title and a description naming
its numbers, so a screen reader says what it shows; the pages put the same
numbers in a table beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    css: str  # a class of admin.css giving its colour


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = float(10.0 ** math.floor(math.log10(value)))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return 10.0 * magnitude


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2f}"


def _frame(chart_id: str, title: str, desc: str, body: list[str], top: float, unit: str) -> Markup:
    plot_h = HEIGHT - TOP - BOTTOM
    grid = []
    for i in range(5):
        y = TOP + plot_h * i / 4
        label = top * (4 - i) / 4
        grid.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt(label))}{escape(unit)}</text>"
        )
    return Markup(
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>'
        + "".join(grid)
        + "".join(body)
        + "</svg>"
    )


def _x_labels(labels: Sequence[str], xs: Sequence[float]) -> list[str]:
    step = max(1, math.ceil(len(labels) / 10))  # at most about ten labels fit
    return [
        f'<text class="axis" x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
        f"{escape(label)}</text>"
        for index, (label, x) in enumerate(zip(labels, xs, strict=True))
        if index % step == 0
    ]


def _describe(labels: Sequence[str], series: Sequence[Series], unit: str) -> str:
    parts = []
    for one in series:
        total_points = ", ".join(
            f"{label}: {_fmt(v)}{unit}" for label, v in zip(labels, one.values, strict=True)
        )
        parts.append(f"{one.name}: {total_points}" if total_points else f"{one.name}: no data")
    return "; ".join(parts)


def stacked_bars(
    chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = ""
) -> Markup:
    count = max(1, len(labels))
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / count
    bar = max(1.0, slot * 0.7)
    body: list[str] = []
    xs = []
    for i, label in enumerate(labels):
        x = LEFT + slot * i + (slot - bar) / 2
        xs.append(x + bar / 2)
        base = float(TOP + plot_h)
        for one in series:
            value = one.values[i]
            h = plot_h * value / top
            base -= h
            if value:
                body.append(
                    f'<rect class="{escape(one.css)}" x="{x:.1f}" y="{base:.1f}" '
                    f'width="{bar:.1f}" height="{h:.1f}"><title>{escape(label)}: '
                    f"{escape(one.name)} {escape(_fmt(value))}{escape(unit)}</title></rect>"
                )
    body += _x_labels(labels, xs)
    body += _legend(series)
    return _frame(chart_id, title, _describe(labels, series, unit), body, top, unit)


def lines(
    chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = ""
) -> Markup:
    count = max(1, len(labels))
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / count
    xs = [LEFT + slot * i + slot / 2 for i in range(len(labels))]
    body: list[str] = []
    for one in series:
        points = [(x, TOP + plot_h - plot_h * v / top) for x, v in zip(xs, one.values, strict=True)]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline class="{escape(one.css)}" points="{path}" fill="none"/>')
            for (x, y), label, value in zip(points, labels, one.values, strict=True):
                body.append(
                    f'<circle class="{escape(one.css)}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                    f"<title>{escape(label)}: {escape(one.name)} "
                    f"{escape(_fmt(value))}{escape(unit)}</title></circle>"
                )
    body += _x_labels(labels, xs)
    body += _legend(series)
    return _frame(chart_id, title, _describe(labels, series, unit), body, top, unit)


def horizontal_bars(
    chart_id: str, title: str, items: Sequence[tuple[str, float]], css: str = "s1"
) -> Markup:
    rows = max(1, len(items))
    row_h = 22
    height = TOP + rows * row_h + 8
    label_w = 180
    top = _nice_max(max((v for _, v in items), default=0))
    plot_w = WIDTH - label_w - RIGHT - 48
    body: list[str] = []
    for i, (label, value) in enumerate(items):
        y = TOP + i * row_h
        w = plot_w * value / top
        body.append(
            f'<text class="axis" x="{label_w - 8}" y="{y + 15}" text-anchor="end">'
            f"{escape(label[:28])}</text>"
            f'<rect class="{escape(css)}" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
            f'height="{row_h - 6}"><title>{escape(label)}: {escape(_fmt(value))}</title></rect>'
            f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 15}">'
            f"{escape(_fmt(value))}</text>"
        )
    desc = ", ".join(f"{label}: {_fmt(v)}" for label, v in items) or "no data"
    return Markup(
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def _legend(series: Sequence[Series]) -> list[str]:
    out = []
    x = LEFT
    for one in series:
        out.append(
            f'<rect class="{escape(one.css)}" x="{x}" y="{HEIGHT - 14}" width="10" height="10"/>'
            f'<text class="axis" x="{x + 14}" y="{HEIGHT - 5}">{escape(one.name)}</text>'
        )
        x += 24 + 7 * len(one.name)
    return out
