"""Land-cover schema shared by every stage: WorldCover codes, the 7 ARAS classes, the
remap between them and the RGB colours of the mask PNGs (docs/architecture.md section 6)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from aras_assets.errors import BadInputError

# ESA WorldCover 2021 v200 legend.
WORLDCOVER_CLASSES: dict[int, str] = {
    10: "tree",
    20: "shrub",
    30: "grass",
    40: "crop",
    50: "built-up",
    60: "barren",
    70: "snow",
    80: "water",
    90: "wetland",
    95: "mangrove",
    100: "moss",
}
WORLDCOVER_NODATA = 0
WATER_CODE = 80

# The release's remap (its code, not its text: wetland goes to grass).
DEFAULT_REMAP: dict[int, int] = {90: 30, 100: 30, 95: 10, 70: 60}


@dataclass(frozen=True)
class LandCoverClass:
    index: int
    name: str
    worldcover_code: int
    colour: tuple[int, int, int]


CLASSES: tuple[LandCoverClass, ...] = (
    LandCoverClass(0, "tree", 10, (0, 100, 0)),
    LandCoverClass(1, "shrub", 20, (255, 182, 193)),
    LandCoverClass(2, "grass", 30, (154, 205, 50)),
    LandCoverClass(3, "crop", 40, (255, 215, 0)),
    LandCoverClass(4, "built-up", 50, (139, 69, 19)),
    LandCoverClass(5, "barren", 60, (211, 211, 211)),
    LandCoverClass(6, "water", 80, (0, 0, 255)),
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
WATER_INDEX = 6
# Marks label pixels that are nodata (0) in the lookup table; never a class index.
NODATA_INDEX = 255
# Marks codes outside the WorldCover legend, so they can be reported instead of guessed.
UNKNOWN_INDEX = 254

PALETTE = np.array([c.colour for c in CLASSES], dtype=np.uint8)


class UnknownLabelError(BadInputError, ValueError):
    """A label raster holds a value outside the WorldCover legend."""


def validate_remap(remap: Mapping[int, int]) -> dict[int, int]:
    """Check a remap table: sources are legend codes, targets are codes of the 7 classes."""
    targets = {c.worldcover_code for c in CLASSES}
    clean: dict[int, int] = {}
    for src, dst in remap.items():
        src, dst = int(src), int(dst)
        if src not in WORLDCOVER_CLASSES:
            raise ValueError(f"remap source {src} is not a WorldCover code {sorted(WORLDCOVER_CLASSES)}")
        if dst not in targets:
            raise ValueError(f"remap target {dst} for {src} is not one of the kept codes {sorted(targets)}")
        clean[src] = dst
    unmapped = set(WORLDCOVER_CLASSES) - targets - set(clean)
    if unmapped:
        raise ValueError(f"remap leaves WorldCover codes {sorted(unmapped)} without a class")
    return clean


def label_lut(remap: Mapping[int, int] = DEFAULT_REMAP) -> np.ndarray:
    """A 256-entry table from WorldCover code to class index (NODATA_INDEX, UNKNOWN_INDEX)."""
    remap = validate_remap(remap)
    lut = np.full(256, UNKNOWN_INDEX, dtype=np.uint8)
    lut[WORLDCOVER_NODATA] = NODATA_INDEX
    index_of = {c.worldcover_code: c.index for c in CLASSES}
    for code in WORLDCOVER_CLASSES:
        lut[code] = index_of[remap.get(code, code)]
    return lut


def mask_to_rgb(classes: np.ndarray) -> np.ndarray:
    """Class-index mask (H, W) to the release's RGB colours (H, W, 3)."""
    if classes.size and int(classes.max()) >= NUM_CLASSES:
        raise UnknownLabelError(f"mask holds class {int(classes.max())}; valid are 0..{NUM_CLASSES - 1}")
    return PALETTE[classes]


def rgb_to_mask(rgb: np.ndarray, source: str = "mask") -> np.ndarray:
    """RGB mask (H, W, 3) back to class indices; a colour outside the palette is an error."""
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    keys = (PALETTE[:, 0].astype(np.uint32) << 16) | (PALETTE[:, 1].astype(np.uint32) << 8) | PALETTE[:, 2]
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], packed).clip(0, NUM_CLASSES - 1)
    found = keys[order][pos] == packed
    if not found.all():
        y, x = np.argwhere(~found)[0]
        raise UnknownLabelError(f"{source}: colour {tuple(int(v) for v in rgb[y, x])} at pixel (row {y}, col {x}) "
                         f"is not in the land-cover palette ({int((~found).sum())} such pixels)")
    return order[pos].astype(np.uint8)
