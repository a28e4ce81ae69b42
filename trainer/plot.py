"""Training curves as one dependency-free SVG (OUTPUT_DIR/curves.svg), refreshed every epoch.

A person checking a run wants to *see* the loss fall and z_std stay near 1/sqrt(dim) (collapse shows
as z_std dropping to 0), not read metrics.jsonl. SVG opens in any browser, also from a PVC or a
shared filesystem, and needs no plotting package in the image. Paddle-free.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

# (record type, field, panel title, y axis from 0); a panel is drawn when some record has the field.
# z_std's axis starts at 0 so that collapse (a fall to 0) is not hidden by a zoomed-in axis.
PANELS = [
    ("step", "loss", "training loss", False),
    ("step", "z_std", "z_std (collapse monitor: healthy ≈ 1/√dim, collapsed → 0)", True),
    ("step", "lr", "learning rate", False),
    ("eval", "top1", "validation top-1", False),
]
WIDTH, PANEL_HEIGHT, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 640, 180, 70, 20, 28, 30


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
            if r.get("type") == kind and isinstance(r.get(field), (int, float)) and "global_step" in r]


def _ticks(low: float, high: float) -> list[float]:
    return [low + (high - low) * i / 4 for i in range(5)]


def _panel(points: list[tuple[float, float]], title: str, from_zero: bool, top: float,
           x_range: tuple[float, float]) -> str:
    x0, x1 = x_range
    ys = [y for _, y in points]
    y0, y1 = min([*ys, 0.0] if from_zero else ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5 * abs(y0 or 1), y1 + 0.5 * abs(y1 or 1)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def sy(y: float) -> float:
        return top + MARGIN_TOP + (y1 - y) / (y1 - y0) * plot_h

    parts = [f'<text x="{MARGIN_LEFT}" y="{top + 18}" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{MARGIN_LEFT}" y="{top + MARGIN_TOP}" width="{plot_w}" height="{plot_h}" '
             'fill="none" stroke="#999"/>']
    for y in _ticks(y0, y1):
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>')
    for x in _ticks(x0, x1):
        parts.append(f'<text x="{sx(x):.1f}" y="{top + PANEL_HEIGHT - 12}" text-anchor="middle">{x:.0f}</text>')
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline class="series" points="{coords}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    if len(points) == 1:
        parts.append(f'<circle cx="{sx(points[0][0]):.1f}" cy="{sy(points[0][1]):.1f}" r="3" fill="#1f77b4"/>')
    return "\n".join(parts)


def curves_svg(records: list[dict], title: str = "") -> str | None:
    """The SVG text, or None when there is nothing to plot yet."""
    panels = [(series(records, kind, field), label, from_zero) for kind, field, label, from_zero in PANELS]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        return None
    steps = [x for points, _, _ in panels for x, _ in points]
    x_range = (min(steps), max(steps))
    height = 24 + PANEL_HEIGHT * len(panels)
    body = [_panel(points, label, from_zero, 24 + i * PANEL_HEIGHT, x_range)
            for i, (points, label, from_zero) in enumerate(panels)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'font-family="sans-serif" font-size="11">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="{MARGIN_LEFT}" y="16" font-size="13">{escape(title)} (x: global step)</text>\n'
            + "\n".join(body) + "\n</svg>\n")
