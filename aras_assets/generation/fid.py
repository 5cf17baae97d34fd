"""Frechet distance between two sets of image features (FID), in float64.

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2),
a symmetric positive semi-definite matrix: two symmetric eigendecompositions instead of a
general matrix square root, so no complex parts or failures on singular covariances (fewer
images than feature dimensions).

Features: always the segmentation encoder's deepest stage, global-average-pooled (labelled
"encoder"); Inception-v3 pool features when a local torchvision state dict is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aras_assets.errors import BadInputError
from aras_assets.segmentation.data import IMAGENET_MEAN, IMAGENET_STD

PAPER_FID = {"uncond": 16.0, "cond": 72.0}


class FidError(BadInputError, ValueError):
    """Too few images, or feature weights that cannot be used."""


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise FidError(f"feature statistics do not match: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / {s2.shape}")
    root1 = _psd_sqrt((s1 + s1.T) / 2)
    inner = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


@dataclass
class FeatureStats:
    """Running mean and covariance of features, accumulated batch by batch in float64 (memory
    stays at one dim x dim matrix however many images pass)."""

    count: int = 0
    total: np.ndarray | None = None
    outer: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float64).reshape(len(features), -1)
        if self.total is None:
            self.total = np.zeros(f.shape[1])
            self.outer = np.zeros((f.shape[1], f.shape[1]))
        self.count += len(f)
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2 or self.total is None or self.outer is None:
            raise FidError(f"FID needs at least 2 images per set, got {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, cov


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(*a.mean_cov(), *b.mean_cov())


FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def imagenet_input(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> ImageNet-normalized float [B, 3, size, size] (bilinear resize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[None, :, None, None]
    return (x - mean) / std


def encoder_feature_fn(model: torch.nn.Module) -> FeatureFn:
    """The segmentation model's deepest encoder stage, global-average-pooled."""
    encoder = model.encoder.eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        return encoder(x)[-1].float().mean(dim=(2, 3))

    return features


def inception_feature_fn(weights_path: str | Path) -> FeatureFn:
    """torchvision Inception-v3 2048-d pool features from a local state dict."""
    from torchvision.models import inception_v3

    path = Path(weights_path)
    if not path.is_file():
        raise FidError(f"Inception weights {path} not found (setting fid_inception_weights)")
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except Exception as exc:
        raise FidError(f"{path} is not a torchvision Inception-v3 state dict: {str(exc).splitlines()[0]}") from exc
    net.fc = torch.nn.Identity()
    net.eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        return net.to(x.device)(x).float()

    return features


def feature_stats(batches: Iterable[np.ndarray], fn: FeatureFn, size: int, device: torch.device) -> FeatureStats:
    """Accumulate the features of uint8 image batches [B, H, W, 3]."""
    stats = FeatureStats()
    with torch.inference_mode():
        for batch in batches:
            if len(batch):
                stats.add(fn(imagenet_input(batch, size, device)).cpu().numpy())
    return stats
