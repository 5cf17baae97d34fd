"""Image features from a registered segmentation model's encoder (its deepest stage,
global-average-pooled, as the release's visualization script takes them): FID and the feature
projection both read images through here, at one size and normalization."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from aras_assets.generation.data import resized_image
from aras_assets.generation.fid import encoder_feature_fn, imagenet_input
from aras_assets.mlflow_runs import ModelVersionRef, download_checkpoint
from aras_assets.segmentation.models import load_model
from aras_assets.segmentation.registry import resolve_version

FEATURE_SIZE = 256  # the segmentation encoder sees images at the size it was trained on


def registered_encoder(client, tracking_uri: str, reference: str) -> tuple[Callable, ModelVersionRef]:
    """The feature function of a registered segmentation model (`champion`, `<arch>`, ...)."""
    ref = resolve_version(client, reference)
    with tempfile.TemporaryDirectory() as scratch:
        model, _, _ = load_model(download_checkpoint(tracking_uri, ref, Path(scratch)))
    return encoder_feature_fn(model.eval()), ref


def image_batches(paths: list[Path], resolution: int, batch: int = 32) -> Iterator[np.ndarray]:
    """uint8 [B, resolution, resolution, 3] batches (real patches brought to the generator's
    resolution, which is what the GAN learns from, so every set carries the same detail)."""
    for begin in range(0, len(paths), batch):
        yield np.stack([resized_image(p, resolution) for p in paths[begin:begin + batch]])


def features_of(paths: list[Path], fn: Callable, resolution: int, device: torch.device, batch: int = 32,
                size: int = FEATURE_SIZE) -> np.ndarray:
    """[N, D] float32 features of the images, `batch` at a time."""
    out = []
    with torch.inference_mode():
        for images in image_batches(paths, resolution, batch):
            out.append(fn(imagenet_input(images, size, device)).cpu().numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
