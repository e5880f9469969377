"""Matplotlib figures written straight to PNG files (no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: never needs a screen
import matplotlib.pyplot as plt  # noqa: E402


def plot_genre_distribution(genre_counts: dict, path: str | os.PathLike, title: str = "Genre distribution") -> None:
    """Horizontal bar chart of posters per genre, largest on top (report 000)."""
    names = list(genre_counts)[::-1]
    values = [genre_counts[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    bars = ax.barh(names, values, color="#4C72B0")
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xlabel("posters")
    ax.set_title(title)
    ax.margins(x=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
