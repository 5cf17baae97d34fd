"""Record ids (docs/architecture.md section 4): the id alone names the tile and the pixel window."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aras_assets.layout import COND, UNCOND

PATCH_SIZE = 256

_PATCH_RE = re.compile(r"^([NS]\d{2}[EW]\d{3})_(\d{3})_(\d{3})$")


@dataclass(frozen=True)
class PatchId:
    tile: str
    row: int
    col: int

    def __str__(self) -> str:
        return patch_id(self.tile, self.row, self.col)

    def window(self, size: int = PATCH_SIZE) -> tuple[int, int, int, int]:
        """(x_off, y_off, width, height) of the patch in its S2 tile's pixels."""
        return self.col * size, self.row * size, size, size


def patch_id(tile: str, row: int, col: int) -> str:
    return f"{tile}_{row:03d}_{col:03d}"


def parse_patch_id(value: str) -> PatchId:
    m = _PATCH_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a patch id like N36E027_012_034")
    return PatchId(m.group(1), int(m.group(2)), int(m.group(3)))


_TILE = r"[NS]\d{2}[EW]\d{3}"
_SYNTHETIC_RE = {UNCOND: re.compile(rf"^{UNCOND}_(\d{{4,}})_(\d{{5,}})$"), COND: re.compile(rf"^{COND}_({_TILE})_(\d{{5,}})$")}


@dataclass(frozen=True)
class SyntheticId:
    """A synthetic image: its origin, the partition holding its record (gen shard for uncond,
    s2 tile for cond) and its index there."""

    origin: str
    shard: str
    index: int

    def __str__(self) -> str:
        return synthetic_id(self.origin, self.shard, self.index)


def synthetic_id(origin: str, shard: str, index: int) -> str:
    return f"{origin}_{shard}_{index:05d}"


def parse_synthetic_id(value: str) -> SyntheticId:
    for origin, pattern in _SYNTHETIC_RE.items():
        if m := pattern.match(value):
            return SyntheticId(origin, m.group(1), int(m.group(2)))
    raise ValueError(f"{value!r} is not a synthetic image id like uncond_0003_00012 or cond_N36E027_00012")
