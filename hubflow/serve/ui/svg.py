"""A manifest's DAG as inline SVG, laid out in layers (a stage one column right of its deepest input).

Hand-written on purpose: a few dozen lines give an SVG whose boxes are links and carry their stage's name
and state as text, so a browser (and a test) finds them by role and text; no script, works offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Protocol

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 170, 46, 60, 18, 12
COLORS = {
    "up to date": ("#e6f4ea", "#34a853"),
    "stale": ("#fef7e0", "#f9ab00"),
    "never run": ("#f1f3f4", "#9aa0a6"),
}


class Node(Protocol):
    name: str
    kind: str
    state: str
    upstream: list[str]


def layers(nodes: Sequence[Node]) -> dict[str, tuple[int, int]]:
    """Stage -> (column, row); ``nodes`` in topological order."""
    depth: dict[str, int] = {}
    for n in nodes:
        depth[n.name] = 1 + max((depth[u] for u in n.upstream if u in depth), default=-1)
    rows: dict[int, int] = {}
    pos = {}
    for n in nodes:
        col = depth[n.name]
        pos[n.name] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    return pos


def dag_svg(nodes: Sequence[Node], *, link: str = "#stage-{name}") -> str:
    pos = layers(nodes)
    if not pos:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" role="img"></svg>'
    cols = max(c for c, _ in pos.values()) + 1
    rows = max(r for _, r in pos.values()) + 1
    width = PAD * 2 + cols * BOX_W + (cols - 1) * GAP_X
    height = PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y

    def xy(name: str) -> tuple[int, int]:
        c, r = pos[name]
        return PAD + c * (BOX_W + GAP_X), PAD + r * (BOX_H + GAP_Y)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="stage graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker></defs>',
    ]
    for n in nodes:
        x1, y1 = xy(n.name)
        for up in n.upstream:
            if up not in pos:
                continue
            x0, y0 = xy(up)
            out.append(
                f'<line x1="{x0 + BOX_W}" y1="{y0 + BOX_H // 2}" x2="{x1}" y2="{y1 + BOX_H // 2}" '
                'stroke="#888" stroke-width="1.2" marker-end="url(#arrow)"/>'
            )
    for n in nodes:
        x, y = xy(n.name)
        fill, stroke = COLORS.get(n.state, COLORS["never run"])
        name, kind, state = escape(n.name), escape(n.kind), escape(n.state)
        href = escape(link.format(name=n.name))
        out.append(
            f'<a href="{href}" class="stage" data-stage="{name}" data-state="{state}">'
            f"<title>{name} ({kind}): {state}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="{stroke}" '
            'stroke-width="1.5"/>'
            f'<text x="{x + BOX_W // 2}" y="{y + 19}" text-anchor="middle" font-size="13" '
            f'font-family="sans-serif">{escape(_clip(n.name))}</text>'
            f'<text x="{x + BOX_W // 2}" y="{y + 36}" text-anchor="middle" font-size="11" fill="#555" '
            f'font-family="sans-serif">{kind} · {state}</text></a>'
        )
    out.append("</svg>")
    return "".join(out)


def _clip(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
