"""Small-multiple line plots as PNG (matplotlib, Agg): one panel per series, up to three a row. Shared by
`hubflow report` (training curves, checkpoints) and the web view of `hubflow serve`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_series(
    series: dict[str, list[tuple[float, float]]],
    keys: Sequence[str],
    *,
    title: str,
    xlabel: str,
    path: Path | Any,
    marker: str | None = None,
) -> None:
    """Plot ``series[key]`` for each key into ``path`` (a path or a binary file object)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        xs, ys = zip(*series[key], strict=True)
        ax.plot(xs, ys, marker=marker if marker or len(xs) >= 40 else ".")
        ax.set_title(key)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
