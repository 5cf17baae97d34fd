"""The WorldCover 1/12000-degree grid: tile names, footprints and pixel offsets.

S2 RGBNIR composites are 1x1-degree tiles and WorldCover maps 3x3-degree tiles, both on the
same grid in EPSG:4326, named by their south-west corner (docs/architecture.md section 6)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

PIXELS_PER_DEGREE = 12000
PIXEL_DEG = 1.0 / PIXELS_PER_DEGREE
S2_TILE_DEG = 1
WC_TILE_DEG = 3
CRS = "EPSG:4326"

_TILE_RE = re.compile(r"^([NS])(\d{2})([EW])(\d{3})$")
S2_NAME_RE = re.compile(r"^ESA_WorldCover_10m_2021_v200_([NS]\d{2}[EW]\d{3})_S2RGBNIR\.tif$")
WC_NAME_RE = re.compile(r"^ESA_WorldCover_10m_2021_v200_([NS]\d{2}[EW]\d{3})_Map\.tif$")


def tile_id(lat: int, lon: int) -> str:
    """Name of the tile whose south-west corner is (lat, lon), e.g. N36E027."""
    return f"{'N' if lat >= 0 else 'S'}{abs(lat):02d}{'E' if lon >= 0 else 'W'}{abs(lon):03d}"


def parse_tile_id(tile: str) -> tuple[int, int]:
    """(lat, lon) of a tile's south-west corner from its name."""
    m = _TILE_RE.match(tile)
    if not m:
        raise ValueError(f"{tile!r} is not a tile id like N36E027")
    lat = int(m.group(2)) * (1 if m.group(1) == "N" else -1)
    lon = int(m.group(4)) * (1 if m.group(3) == "E" else -1)
    return lat, lon


def s2_filename(tile: str) -> str:
    return f"ESA_WorldCover_10m_2021_v200_{tile}_S2RGBNIR.tif"


def wc_filename(tile: str) -> str:
    return f"ESA_WorldCover_10m_2021_v200_{tile}_Map.tif"


def lat_band(tile: str) -> str:
    """The S2 bucket's folder for a tile, e.g. N37 for N37E028."""
    return tile[:3]


def wc_tile_containing(lat: float, lon: float) -> str:
    """The 3-degree WorldCover tile holding a point (corners at multiples of 3)."""
    return tile_id(int(math.floor(lat / WC_TILE_DEG) * WC_TILE_DEG), int(math.floor(lon / WC_TILE_DEG) * WC_TILE_DEG))


@dataclass(frozen=True)
class Footprint:
    """A lon/lat rectangle: west <= lon <= east, south <= lat <= north."""

    west: float
    south: float
    east: float
    north: float

    def intersects(self, other: Footprint) -> bool:
        """Overlap of positive area (touching edges do not count)."""
        return (min(self.east, other.east) - max(self.west, other.west) > PIXEL_DEG / 2
                and min(self.north, other.north) - max(self.south, other.south) > PIXEL_DEG / 2)

    def contains(self, other: Footprint) -> bool:
        tol = PIXEL_DEG / 2
        return (other.west >= self.west - tol and other.east <= self.east + tol
                and other.south >= self.south - tol and other.north <= self.north + tol)

    @classmethod
    def of_tile(cls, tile: str, size_deg: int) -> Footprint:
        lat, lon = parse_tile_id(tile)
        return cls(lon, lat, lon + size_deg, lat + size_deg)


def tiles_in_bbox(bbox: Footprint, size_deg: int) -> list[str]:
    """Tiles of a given size (corners at multiples of it) that overlap a bounding box."""
    tol = PIXEL_DEG / 2
    lat0 = math.floor((bbox.south + tol) / size_deg) * size_deg
    lon0 = math.floor((bbox.west + tol) / size_deg) * size_deg
    tiles = []
    lat = lat0
    while lat < bbox.north - tol:
        lon = lon0
        while lon < bbox.east - tol:
            tiles.append(tile_id(lat, lon))
            lon += size_deg
        lat += size_deg
    return tiles


def grid_offset(outer_west: float, outer_north: float, inner_west: float, inner_north: float) -> tuple[int, int]:
    """(row, col) of the inner raster's top-left pixel in the outer raster, both on the grid.

    Raises ValueError when the two are not on the same 1/12000-degree grid."""
    col = (inner_west - outer_west) * PIXELS_PER_DEGREE
    row = (outer_north - inner_north) * PIXELS_PER_DEGREE
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        raise ValueError(f"rasters are not pixel-aligned: offset ({row:.4f}, {col:.4f}) pixels is not whole")
    return round(row), round(col)


def on_grid(value_deg: float) -> bool:
    """Whether a coordinate falls on a pixel edge of the 1/12000-degree grid."""
    px = value_deg * PIXELS_PER_DEGREE
    return abs(px - round(px)) < 1e-3
