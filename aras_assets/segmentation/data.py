"""Patch pairs for training and evaluation, read lazily from the manifests' PNG paths, with
augmentation applied to image and mask together."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from aras_assets.errors import BadInputError
from aras_assets.landcover import rgb_to_mask
from resources.storage import contained

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class SplitError(BadInputError, ValueError):
    """Splits that are missing, empty or do not match the patches."""


def split_records(manifest: pl.DataFrame, splits: pl.DataFrame, split: str) -> pl.DataFrame:
    """patch_id, image_path, mask_path of one split, in patch-id order (so runs are repeatable)."""
    if splits.is_empty():
        raise SplitError("the splits table is empty: materialize real_patches for some tiles, then splits")
    chosen = splits.filter(pl.col("split") == split).select("patch_id")
    if chosen.is_empty():
        raise SplitError(f"the {split!r} split has no patches; materialize more tiles or change split_fractions")
    records = chosen.join(manifest.select("patch_id", "image_path", "mask_path"), on="patch_id", how="left")
    lost = records.filter(pl.col("image_path").is_null())["patch_id"]
    if len(lost):
        raise SplitError(f"{len(lost)} patches of the {split!r} split are in no manifest (e.g. {lost[0]}); "
                         "re-materialize splits after real_patches")
    return records.sort("patch_id")


class ImageFileError(BadInputError, OSError):
    """An image or mask file that is corrupt or truncated."""


def _decoded(source: Path | io.BytesIO, name: Path) -> np.ndarray:
    # A full decode: a truncated or corrupt file is a bad input naming it, never a raw OSError.
    try:
        with Image.open(source) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageFileError(f"image {name} is corrupt or truncated ({exc}); rebuild or remove it") from exc


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    return _decoded(path, path)


def read_mask(path: Path) -> np.ndarray:
    """(H, W) class indices; a colour outside the palette is an error naming the file."""
    return rgb_to_mask(_decoded(path, path), source=str(path))


def verified_image_bytes(path: Path) -> bytes:
    """The file's bytes once they decode in full, so a truncated image is never sent anywhere."""
    data = path.read_bytes()
    _decoded(io.BytesIO(data), path)
    return data


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 or [0, 1] float (H, W, 3) -> ImageNet-normalised float (3, H, W)."""
    scaled = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(((scaled - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)))


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            brightness: float = 0.2, contrast: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and quarter turns on both, brightness/contrast on the image only.
    Returns a [0, 1] float image and the moved mask."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    scaled = image.astype(np.float32) / 255.0
    alpha = 1.0 + rng.uniform(-contrast, contrast)
    beta = rng.uniform(-brightness, brightness)
    scaled = np.clip(scaled * alpha + beta, 0.0, 1.0)
    return scaled, np.ascontiguousarray(mask)


def resized_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A (size x size) image (bicubic) and mask (nearest: no class is invented at edges)."""
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST))
    return image, mask


class PatchDataset(torch.utils.data.Dataset):
    """(image, mask) pairs; files are opened on access so memory does not grow with the split.
    Augmentation draws from (seed, epoch, index), so it is the same with any worker count."""

    def __init__(self, root: Path, records: pl.DataFrame, augment: bool = False, seed: int = 0,
                 size: int | None = None) -> None:
        self.root = Path(root)
        self.size = size  # pairs of another size are brought to it: image bicubic, mask nearest
        self.ids: list[str] = records["patch_id"].to_list()
        self.images: list[str] = records["image_path"].to_list()
        self.masks: list[str] = records["mask_path"].to_list()
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(contained(self.root, self.images[index], f"patch {self.ids[index]}"))
        mask = read_mask(contained(self.root, self.masks[index], f"patch {self.ids[index]}"))
        if self.size is not None:
            image, mask = resized_pair(image, mask, self.size)
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, mask = augment(image, mask, rng)
        return normalize(image), torch.from_numpy(mask.astype(np.int64))


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool = False, workers: int = 0,
                seed: int = 0, drop_last: bool = False) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=generator, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                                       persistent_workers=False)  # fresh workers see set_epoch
