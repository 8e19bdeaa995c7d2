"""Artifacts an analyst looks at in MLflow: metric-vs-k, score distribution, popularity of what is
recommended vs the catalog, and a sample of recommendations with item titles."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CURVE_METRICS = ("ndcg", "recall", "precision", "map")
CURVE_KS = (1, 5, 10, 20, 50, 100)  # the ks every holdout evaluation reports


def metric_vs_k(metrics: dict[str, float], ks: tuple[int, ...], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in CURVE_METRICS:
        ax.plot(ks, [metrics[f"{name}_at_{k}"] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def metric_over_nights(series: dict[str, list[tuple[int, float, float, float]]], metric: str, title: str,
                       path: Path) -> Path:
    """One line per variant: (night, value, low, high), the interval as error bars."""
    fig, ax = plt.subplots(figsize=(7, 4))
    nights = set()
    for offset, (name, points) in enumerate(sorted(series.items())):
        x, values, lows, highs = (np.asarray(column, dtype=float) for column in zip(*points))
        shift = 0.08 * (offset - (len(series) - 1) / 2)  # side by side, so the bars don't hide each other
        ax.errorbar(x + shift, values, yerr=[values - lows, highs - values], marker="o", capsize=4, label=name)
        nights |= set(x.astype(int).tolist())
    if nights:  # none before the first impressions: an empty chart
        ax.set_xticks(sorted(nights))
        ax.set_xlim(min(nights) - 0.5, max(nights) + 0.5)
    ax.set_xlabel("night of the experiment")
    ax.set_ylabel(metric)
    ax.set_title(title)
    if series:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def score_distribution(scores: np.ndarray, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores[np.isfinite(scores)], bins=50)
    ax.set_xlabel("score of recommended items")
    ax.set_ylabel("count")
    ax.set_title(title)
    return _save(fig, path)


def popularity_vs_catalog(recommended: np.ndarray, catalog: np.ndarray, title: str, path: Path) -> Path:
    """Histograms of log10(1 + users who took the item): recommended items vs every catalog item."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, np.log10(1 + max(catalog.max(initial=0), recommended.max(initial=0))) + 0.1, 40)
    ax.hist(np.log10(1 + catalog), bins=bins, alpha=0.5, density=True, label="catalog")
    ax.hist(np.log10(1 + recommended), bins=bins, alpha=0.5, density=True, label="recommended")
    ax.set_xlabel("log10(1 + users who took the item)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def sample_json(sample: list[dict], path: Path) -> Path:
    path.write_text(json.dumps(sample, indent=2, ensure_ascii=False))
    return path


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
