"""Labels for remote-sensing users: a 4-band uint16 Sentinel-2 GeoTIFF (a crop, or a whole tile)
in, a georeferenced mask GeoTIFF out, with the input's CRS and transform, one uint8 class index
per pixel and the land-cover colour table.

Every window the model sees is normalized the way patches are (the release's per-patch rule
over a 256-px window), so a crop labels as its patch would. A large raster is read and written
window by window: windows overlap by `overlap` pixels and each keeps only its centre, so the
seams fall where the model saw context on both sides, and memory stays flat."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError
from rasterio.windows import Window

from aras_assets.errors import BadInputError
from aras_assets.ids import PATCH_SIZE
from aras_assets.landcover import CLASS_NAMES, PALETTE
from aras_assets.segmentation.data import normalize
from aras_assets.segmentation.labeler import predict_at_scale
from aras_assets.sources.patches import to_8bit
from resources.device import TorchRuntime

GEOTIFF_SUFFIXES = (".tif", ".tiff")


class GeoTiffLabelError(BadInputError, ValueError):
    """A GeoTIFF that cannot be labelled: unreadable, truncated, or not a 4-band uint16 S2 raster."""


@dataclass(frozen=True)
class Window2D:
    """A window read for the model (`read`) and the part of it written out (`keep`), in pixels."""

    read: Window
    keep: Window


def is_geotiff(path: Path) -> bool:
    return path.suffix.lower() in GEOTIFF_SUFFIXES


def windows(height: int, width: int, size: int = PATCH_SIZE, overlap: int = 32) -> Iterator[Window2D]:
    """Windows of `size` (smaller only where the raster is) stepping by size - overlap, each
    keeping its centre: half the overlap is dropped on every side that has a neighbour."""
    if overlap < 0 or overlap >= size:
        raise ValueError(f"overlap {overlap} must be in [0, {size})")
    step = size - overlap

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        found = list(range(0, n - size, step))
        return [*found, n - size]  # the last window ends at the edge

    def kept(begins: list[int], n: int) -> list[tuple[int, int]]:
        # neighbours split their overlap in the middle; the outer edges keep everything
        cuts = [(min(a + size, n) + b) // 2 for a, b in itertools.pairwise(begins)]
        return list(zip([0, *cuts], [*cuts, n], strict=True))

    rows, cols = starts(height), starts(width)
    for r, (top, bottom) in zip(rows, kept(rows, height), strict=True):
        for c, (left, right) in zip(cols, kept(cols, width), strict=True):
            yield Window2D(Window(c, r, min(size, width - c), min(size, height - r)),
                           Window(left, top, right - left, bottom - top))


def _check(ds: rasterio.io.DatasetReader, path: Path) -> None:
    if ds.count < 3 or ds.dtypes[0] != "uint16":
        raise GeoTiffLabelError(f"{path} has {ds.count} band(s) of {ds.dtypes[0]}; expected a 4-band uint16 "
                                "Sentinel-2 RGBNIR raster (bands 1-3 are red, green, blue)")
    if ds.crs is None:
        raise GeoTiffLabelError(f"{path} has no CRS; a mask could not be georeferenced")


def label_geotiff(model: torch.nn.Module, path: Path, out: Path, runtime: TorchRuntime, size: int = PATCH_SIZE,
                  overlap: int = 32, normalization: str = "per_patch_max", stretch_max: int = 3000,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Label `path` window by window into the mask GeoTIFF `out` (written atomically). Returns
    the pixel count of each class."""
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with rasterio.open(path) as src:
            _check(src, path)
            profile = {"driver": "GTiff", "height": src.height, "width": src.width, "count": 1, "dtype": "uint8",
                       "crs": src.crs, "transform": src.transform, "compress": "deflate", "tiled": True,
                       "blockxsize": PATCH_SIZE, "blockysize": PATCH_SIZE}
            todo = list(windows(src.height, src.width, size, overlap))
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write_colormap(1, {k: (*map(int, rgb), 255) for k, rgb in enumerate(PALETTE.tolist())})
                dst.update_tags(1, classes=",".join(f"{k}={n}" for k, n in enumerate(CLASS_NAMES)))
                for done, w in enumerate(todo, 1):
                    rgb = to_8bit(src.read((1, 2, 3), window=w.read), normalization, stretch_max)
                    with torch.inference_mode():  # a window smaller than a patch is seen at patch scale
                        mask = predict_at_scale(model, runtime.to_device(normalize(rgb)[None]), runtime, size)[0]
                    mask = mask.to(torch.uint8).cpu().numpy()
                    top, left = w.keep.row_off - w.read.row_off, w.keep.col_off - w.read.col_off
                    kept = mask[top:top + w.keep.height, left:left + w.keep.width]
                    dst.write(kept[None], window=w.keep)
                    counts += np.bincount(kept.ravel(), minlength=len(CLASS_NAMES))
                    if progress is not None:
                        progress(done, len(todo))
        os.replace(tmp, out)
    except RasterioError as exc:
        raise GeoTiffLabelError(f"{path} cannot be read as a GeoTIFF (missing, truncated or corrupt?): {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return counts
