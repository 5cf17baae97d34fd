"""Crops of the embedded sample region for the benches that need real imagery and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window, from_bounds

from aras_assets.grid import s2_filename, wc_filename
from aras_assets.ids import PATCH_SIZE
from aras_assets.landcover import NODATA_INDEX, label_lut
from aras_assets.sources.sample_region import SAMPLE_TILES, wc_offset


def region_crops(region: Path, stride: int) -> list[tuple[str, int, int, np.ndarray, np.ndarray]]:
    """(tile, y, x, (3, H, W) uint16 RGB, (H, W) uint8 classes) of every 256-px crop on a `stride`
    grid of each sample tile, crops with nodata labels left out."""
    lut = label_lut()
    crops = []
    for recipe in SAMPLE_TILES:
        wc_tile = wc_offset(recipe.tile)[0]
        with rasterio.open(region / s2_filename(recipe.tile)) as s2, rasterio.open(region / wc_filename(wc_tile)) as wc:
            rgb = s2.read((1, 2, 3))
            win = from_bounds(*s2.bounds, transform=wc.transform)
            labels = wc.read(1, window=Window(round(win.col_off), round(win.row_off), s2.width, s2.height))
        classes = lut[labels]
        for y in range(0, s2.height - PATCH_SIZE + 1, stride):
            for x in range(0, s2.width - PATCH_SIZE + 1, stride):
                crop = classes[y:y + PATCH_SIZE, x:x + PATCH_SIZE]
                if not (crop == NODATA_INDEX).any():
                    crops.append((recipe.tile, y, x, rgb[:, y:y + PATCH_SIZE, x:x + PATCH_SIZE], np.ascontiguousarray(crop)))
    return crops


def even_picks(available: int, count: int, hint: str) -> np.ndarray:
    """`count` indices spread evenly over `available` crops; exits with `hint` when there are too few."""
    if count > available:
        raise SystemExit(f"the sample region gives {available} distinct crops, fewer than the {count} asked for; {hint}")
    return np.linspace(0, available - 1, count).round().astype(int)
