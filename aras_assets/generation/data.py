"""Training images for the GANs: real training patches resized to the generator's resolution
(area filter for images, nearest for masks), as [-1, 1] tensors, batch after batch forever."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from aras_assets.errors import BadInputError
from aras_assets.segmentation.data import read_image, read_mask


class GenerationError(BadInputError, ValueError):
    """Generation cannot go on: no generator, a mismatching checkpoint, an unusable mask."""


def resized_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8, box-filtered (every source pixel counts)."""
    image = read_image(path)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


def resized_mask(path: Path, size: int) -> np.ndarray:
    """(size, size) class indices, nearest neighbour (labels are never blended)."""
    mask = read_mask(path)
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def to_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # a writable copy


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [B, 3, H, W] -> uint8 [B, H, W, 3], rounded and clipped."""
    scaled = (images.detach().float().clamp(-1, 1) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class GanPatches(torch.utils.data.Dataset):
    """(image [3, r, r] in [-1, 1], mask [r, r] long) per training patch. With `mirror`, the set is
    doubled by x-flips as StyleGAN's `--mirror=1`: index n + i is patch i flipped left to right."""

    def __init__(self, root: Path, records: pl.DataFrame, resolution: int, mirror: bool = False) -> None:
        self.root = root
        self.images = records["image_path"].to_list()
        self.masks = records["mask_path"].to_list()
        self.resolution = resolution
        self.mirror = mirror

    def __len__(self) -> int:
        return len(self.images) * (2 if self.mirror else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        flip, index = divmod(index, len(self.images))
        image = resized_image(self.root / self.images[index], self.resolution)
        mask = resized_mask(self.root / self.masks[index], self.resolution)
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return to_signed(image[None])[0], torch.from_numpy(mask.astype(np.int64))


def endless_batches(dataset: GanPatches, batch_size: int, seed: int, start_epoch: int = 0,
                    workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches epoch after epoch (each epoch's order fixed by seed and epoch)."""
    if len(dataset) == 0:
        raise GenerationError("no training patches: the training split is empty")
    epoch = start_epoch
    while True:
        order = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                             generator=order, drop_last=True, num_workers=workers)
        yield from loader
        epoch += 1
