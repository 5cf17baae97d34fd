"""Record ids (DESIGN.md section 3): the id alone names the tile and the pixel window."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
