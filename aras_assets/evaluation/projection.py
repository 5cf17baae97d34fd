"""The paper's Figure 4 as plain functions: segmentation-encoder features of real and synthetic
images, standardized (and reduced to their first principal components), projected to 2-D by
t-SNE (perplexity 30, PCA init) and UMAP (15 neighbours, min_dist 0.1), with silhouette scores
that say how far apart the sets lie (near 0: mixed, as the paper finds; near 1: separate)."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aras_assets.errors import BadInputError

TSNE_PERPLEXITY = 30.0
UMAP_NEIGHBOURS = 15
UMAP_MIN_DIST = 0.1
SET_COLOURS = {"real": "#1f77b4", "uncond": "#ff7f0e", "cond": "#2ca02c"}


class ProjectionError(BadInputError, ValueError):
    """Too few images to project or score."""


def standardize(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature (StandardScaler); constant features stay 0."""
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(np.asarray(features, np.float64)).astype(np.float32)


def tsne_2d(features: np.ndarray, seed: int, perplexity: float = TSNE_PERPLEXITY) -> np.ndarray:
    """t-SNE with PCA init; the perplexity is lowered to fit fewer than 3 x perplexity points."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        raise ProjectionError(f"t-SNE needs at least 3 images, got {n}")
    fitted = TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=seed,
                  n_jobs=1)  # one thread: the same points on every machine
    return fitted.fit_transform(features).astype(np.float32)


def umap_2d(features: np.ndarray, seed: int, neighbours: int = UMAP_NEIGHBOURS, min_dist: float = UMAP_MIN_DIST) -> np.ndarray:
    """UMAP through umap-learn; a fixed seed makes it single-threaded and reproducible."""
    import umap

    n = len(features)
    if n < 4:
        raise ProjectionError(f"UMAP needs at least 4 images, got {n}")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(neighbours, n - 1), min_dist=min_dist, random_state=seed)
    return np.asarray(reducer.fit_transform(features), np.float32)


def _sample(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `limit` points, each set keeping its share (so cost stays bounded)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    picks = [rng.choice(np.flatnonzero(labels == s), max(2, round(limit * np.mean(labels == s))), replace=False)
             for s in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def silhouettes(points: np.ndarray, labels: Sequence[str], sample: int, seed: int) -> dict[str, float]:
    """Overall silhouette of the sets and each pair's ("real~uncond"), on at most `sample` points
    (drawn per set with `seed`): silhouette cost grows with the square of the points."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    names = sorted(set(labels.tolist()))
    if len(names) < 2:
        raise ProjectionError(f"silhouettes need two sets of images, got {names}")
    rng = np.random.default_rng(seed)
    keep = _sample(labels, sample, rng)
    scores = {"overall": float(silhouette_score(points[keep], labels[keep]))}
    for a, b in itertools.combinations(names, 2):
        pair = np.flatnonzero(np.isin(labels, (a, b)))
        keep = pair[_sample(labels[pair], sample, rng)]
        scores[f"{a}~{b}"] = float(silhouette_score(points[keep], labels[keep]))
    return scores


@dataclass(frozen=True)
class Projection:
    """2-D coordinates of every image by both methods, and the silhouettes in each space."""

    tsne: np.ndarray
    umap: np.ndarray
    silhouette: dict[str, dict[str, float]]  # space (features, tsne, umap) -> pair -> score


def principal_components(features: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The first `count` principal components (0: the features as they are). Neighbour searches
    in 50 dimensions instead of 512 keep UMAP of 50k images within two minutes on 2 cores."""
    from sklearn.decomposition import PCA

    keep = min(count, features.shape[1], len(features))
    if count <= 0 or keep >= features.shape[1]:
        return features
    return PCA(keep, random_state=seed).fit_transform(features).astype(np.float32)


def project(features: np.ndarray, labels: Sequence[str], seed: int, silhouette_sample: int, pca: int = 50) -> Projection:
    scaled = standardize(features)
    reduced = principal_components(scaled, pca, seed)
    tsne, mapped = tsne_2d(reduced, seed), umap_2d(reduced, seed)
    return Projection(tsne, mapped, {space: silhouettes(points, labels, silhouette_sample, seed)
                                     for space, points in (("features", scaled), ("tsne", tsne), ("umap", mapped))})


def scatter_png(points: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """One colour per set, drawn in set order so the smaller synthetic sets stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(5.6, 5.0), dpi=100)
    for name in dict.fromkeys(labels.tolist()):
        chosen = labels == name
        ax.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.6, label=f"{name} ({int(chosen.sum())})",
                   color=SET_COLOURS.get(name))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", markerscale=2, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
