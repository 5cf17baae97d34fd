"""Checks on written patches and splits, reading back what is on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from aras_assets.ids import PATCH_SIZE
from aras_assets.landcover import WATER_INDEX, rgb_to_mask
from aras_assets.sources.patches import CLASS_COUNT_COLUMNS
from resources.storage import contained


def check_patches(root: Path, manifest: pl.DataFrame, water_max_share: float) -> dict[str, list[str]]:
    """Problems per check name (an empty list means passed) for a partition's patches."""
    problems: dict[str, list[str]] = {"no_nodata_labels": [], "water_share": [], "patch_shape": [], "unique_ids": []}
    dup = manifest.filter(pl.col("patch_id").is_duplicated())["patch_id"].unique().to_list()
    problems["unique_ids"] = [f"duplicate id {d}" for d in dup]
    for row in manifest.iter_rows(named=True):
        pid = row["patch_id"]
        with Image.open(contained(root, row["image_path"], pid)) as im:
            if im.size != (PATCH_SIZE, PATCH_SIZE) or im.mode != "RGB":
                problems["patch_shape"].append(f"{pid} image is {im.mode} {im.size}")
        with Image.open(contained(root, row["mask_path"], pid)) as im:
            rgb = np.asarray(im.convert("RGB"))
        if rgb.shape[:2] != (PATCH_SIZE, PATCH_SIZE):
            problems["patch_shape"].append(f"{pid} mask is {rgb.shape}")
            continue
        try:
            classes = rgb_to_mask(rgb, source=row["mask_path"])
        except ValueError as exc:  # a colour outside the palette: nodata or corruption
            problems["no_nodata_labels"].append(str(exc))
            continue
        counts = np.bincount(classes.ravel(), minlength=len(CLASS_COUNT_COLUMNS))
        if counts.tolist() != [row[c] for c in CLASS_COUNT_COLUMNS]:
            problems["no_nodata_labels"].append(f"{pid} mask disagrees with its manifest class counts")
        if counts[WATER_INDEX] / classes.size > water_max_share:
            problems["water_share"].append(f"{pid} is {counts[WATER_INDEX] / classes.size:.1%} water")
    return problems


def check_splits(splits: pl.DataFrame, patch_ids: pl.Series, wanted: tuple[float, float, float]) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {"splits_disjoint": [], "splits_complete": []}
    dup = splits.filter(pl.col("patch_id").is_duplicated())["patch_id"].unique().to_list()
    problems["splits_disjoint"] = [f"{p} is in more than one split" for p in dup[:20]]
    have = set(splits["patch_id"].to_list())
    known = set(patch_ids.to_list())
    problems["splits_complete"] += [f"{p} has no split" for p in sorted(known - have)[:20]]
    problems["splits_complete"] += [f"{p} is split but not in any manifest" for p in sorted(have - known)[:20]]
    present = set(splits["split"].to_list())
    for name, frac in zip(("train", "val", "test"), wanted, strict=True):
        if frac > 0 and name not in present:
            problems["splits_complete"].append(f"split {name} is empty")
    return problems
