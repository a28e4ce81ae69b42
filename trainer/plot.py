"""Training curves as one dependency-free SVG (OUTPUT_DIR/curves.svg), refreshed every epoch.

A person checking a run wants to *see* the loss fall, z_std stay near 1/sqrt(dim) (collapse shows
as z_std dropping to 0) and the representation get better (kNN top-1), not read metrics.jsonl. SVG
opens in any browser, also from a PVC or a shared filesystem, and needs no plotting package in the
image. Axes carry round values (steps of 1, 2 or 5 times a power of ten); the x axis counts global
steps below each panel and epochs above it. Paddle-free.
"""
from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

# (record type, field, panel title, y axis from 0); a panel is drawn when some record has the field.
# z_std's axis starts at 0 so that collapse (a fall to 0) is not hidden by a zoomed-in axis.
PANELS = [
    ("step", "loss", "training loss", False),
    ("step", "z_std", "z_std (collapse monitor: healthy ≈ 1/√dim, collapsed → 0)", True),
    ("step", "lr", "learning rate", False),
    ("eval", "knn_top1", "representation quality: kNN top-1 on held-out images", False),
    ("eval", "top1", "validation top-1", False),
]
WIDTH, PANEL_HEIGHT, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 640, 190, 70, 20, 40, 30
MAX_TICKS = 7


def read_metrics(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill; the rest is still worth plotting
    return records


def series(records: list[dict], kind: str, field: str) -> list[tuple[float, float]]:
    return [(float(r["global_step"]), float(r[field])) for r in records
            if r.get("type") == kind and _finite(r.get(field)) and "global_step" in r]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def tick_step(low: float, high: float, max_ticks: int = MAX_TICKS) -> float:
    """The smallest of 1, 2, 5 x 10^k that covers [low, high] with at most `max_ticks` ticks."""
    span = (high - low) or abs(high) or 1.0
    step = 10.0 ** math.floor(math.log10(span / max_ticks))
    for factor in (1, 2, 5, 10, 20):
        if math.floor(high / (step * factor)) - math.ceil(low / (step * factor)) + 1 <= max_ticks:
            return step * factor
    return step * 50


def nice_range(low: float, high: float) -> tuple[float, float, float]:
    """(axis low, axis high, tick step): the range widened to whole ticks."""
    if high == low:
        low, high = low - 0.5 * abs(low or 1), high + 0.5 * abs(high or 1)
    step = tick_step(low, high)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    step = tick_step(low, high)   # the widened range may need the next larger step
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def ticks(low: float, high: float, step: float) -> list[float]:
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [i * step for i in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick value with exactly the digits its step needs (0.05 -> "0.05", 2000 -> "2000")."""
    if step < 1e-3 or abs(value) >= 1e6:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def epoch_ends(records: list[dict]) -> list[tuple[int, float]]:
    """(epoch, global step at its end) from the epoch records."""
    ends = {}
    for r in records:
        if r.get("type") == "epoch" and isinstance(r.get("epoch"), int) and _finite(r.get("global_step")):
            ends[r["epoch"]] = float(r["global_step"])
    return sorted(ends.items())


def _panel(points: list[tuple[float, float]], title: str, from_zero: bool, top: float,
           x_axis: tuple[float, float, float], epochs: list[tuple[int, float]]) -> str:
    x0, x1, x_step = x_axis
    ys = [y for _, y in points]
    y0, y1, y_step = nice_range(min([*ys, 0.0] if from_zero else ys), max(ys))
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    plot_top, plot_bottom = top + MARGIN_TOP, top + MARGIN_TOP + plot_h

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def sy(y: float) -> float:
        return plot_top + (y1 - y) / ((y1 - y0) or 1) * plot_h

    parts = [f'<text x="{MARGIN_LEFT}" y="{top + 16}" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{MARGIN_LEFT}" y="{plot_top}" width="{plot_w}" height="{plot_h}" '
             'fill="none" stroke="#999"/>']
    for y in ticks(y0, y1, y_step):
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" '
                     f'y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text class="y-tick" x="{MARGIN_LEFT - 6}" y="{sy(y) + 4:.1f}" '
                     f'text-anchor="end">{tick_label(y, y_step)}</text>')
    for x in ticks(x0, x1, x_step):
        parts.append(f'<text class="x-tick" x="{sx(x):.1f}" y="{plot_bottom + 14}" '
                     f'text-anchor="middle">{tick_label(x, x_step)}</text>')
    if epochs:
        every = max(1, round(tick_step(0, epochs[-1][0])))
        for epoch, step in epochs:
            if x0 <= step <= x1:
                parts.append(f'<line x1="{sx(step):.1f}" x2="{sx(step):.1f}" '
                             f'y1="{plot_top}" y2="{plot_bottom}" stroke="#ddd" stroke-dasharray="3,3"/>')
                if epoch % every == 0:
                    parts.append(f'<text class="epoch-tick" x="{sx(step):.1f}" y="{plot_top - 4}" '
                                 f'text-anchor="middle" fill="#666">{epoch}</text>')
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline class="series" points="{coords}" '
                 'fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    if len(points) <= 20:   # sparse series (evaluations every few epochs): mark each point
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#1f77b4"/>' for x, y in points]
    return "\n".join(parts)


def curves_svg(records: list[dict], title: str = "") -> str | None:
    """The SVG text, or None when there is nothing to plot yet."""
    panels = [(series(records, kind, field), label, from_zero) for kind, field, label, from_zero in PANELS]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        return None
    steps = [x for points, _, _ in panels for x, _ in points]
    x_axis = nice_range(min(0.0, min(steps)), max(steps))
    epochs = epoch_ends(records)
    height = 24 + PANEL_HEIGHT * len(panels)
    body = [_panel(points, label, from_zero, 24 + i * PANEL_HEIGHT, x_axis, epochs)
            for i, (points, label, from_zero) in enumerate(panels)]
    axes = "x: global step below, epoch above" if epochs else "x: global step"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'font-family="sans-serif" font-size="11">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="{MARGIN_LEFT}" y="16" font-size="13">{escape(title)} ({axes})</text>\n'
            + "\n".join(body) + "\n</svg>\n")
