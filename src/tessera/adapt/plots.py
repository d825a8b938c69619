"""Robustness pictures: a heat map (corruption x severity, one panel per method), a per-corruption
bar chart (mean accuracy over severities, one bar per method), in the style of the ImageNet-C
tables (Hendrycks and Dietterich, ICLR 2019), and a heat map of each method's gain over frozen.
Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# cells[method][corruption][severity] = accuracy
Cells = dict[str, dict[str, dict[str, float]]]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(cells: Cells, path: str | Path, title: str = "accuracy under corruption") -> Path:
    """One panel per method: rows corruptions, columns severities, colour and text = accuracy."""
    plt = _pyplot()
    methods = list(cells)
    corruptions = sorted({c for m in methods for c in cells[m]})
    severities = sorted({s for m in methods for c in cells[m] for s in cells[m][c]}, key=_sev)
    fig, axes = plt.subplots(
        1,
        len(methods),
        figsize=(1.0 + 0.55 * len(severities) * len(methods) + 1.6, 1.2 + 0.32 * len(corruptions)),
        squeeze=False,
    )
    image = None
    for ax, m in zip(axes[0], methods, strict=True):
        grid = np.array([[cells[m].get(c, {}).get(s, np.nan) for s in severities] for c in corruptions])
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v < 0.6 else "black",
                )
        ax.set_title(m, fontsize=8)
        ax.set_xticks(range(len(severities)), severities, fontsize=7)
        ax.set_xlabel("severity", fontsize=7)
        ax.set_yticks(range(len(corruptions)), corruptions if ax is axes[0][0] else [], fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(title, fontsize=9, y=1.06)
    return _save(fig, path)


def bar_chart(cells: Cells, path: str | Path, title: str = "mean accuracy over severities") -> Path:
    """Grouped bars: one group per corruption, one bar per method (mean over severities)."""
    plt = _pyplot()
    methods = list(cells)
    corruptions = sorted({c for m in methods for c in cells[m]})
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(corruptions) * max(1, len(methods) / 3)), 3.6))
    x = np.arange(len(corruptions))
    for k, m in enumerate(methods):
        means = [np.mean(list(cells[m][c].values())) if cells[m].get(c) else np.nan for c in corruptions]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, means, width, label=m)
    ax.set_xticks(x, corruptions, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=min(len(methods), 4))
    fig.tight_layout()
    return _save(fig, path)


def gain_heatmap(
    gains: dict[str, dict[str, float]],
    path: str | Path,
    intervals: dict[str, tuple[float, float]] | None = None,
    title: str = "accuracy gain over frozen (paired; mean over severities)",
) -> Path:
    """Rows methods, columns corruptions, colour and text = gain over frozen (red hurts, blue helps);
    ``intervals`` (method -> (low, high) of the mean gain) label the rows."""
    plt = _pyplot()
    methods = list(gains)
    corruptions = sorted({c for m in methods for c in gains[m]})
    grid = np.array([[gains[m].get(c, np.nan) for c in corruptions] for m in methods])
    span = max(0.05, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.05)
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * len(corruptions), 0.9 + 0.38 * len(methods)))
    image = ax.imshow(grid, vmin=-span, vmax=span, cmap="RdBu", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
    labels = [
        f"{m} [{intervals[m][0]:+.3f}, {intervals[m][1]:+.3f}]" if intervals and m in intervals else m
        for m in methods
    ]
    ax.set_yticks(range(len(methods)), labels, fontsize=7)
    ax.set_xticks(range(len(corruptions)), corruptions, rotation=45, ha="right", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8, label="gain")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _sev(s: str) -> tuple[int, str]:
    return (int(s), s) if s.isdigit() else (10**9, s)
