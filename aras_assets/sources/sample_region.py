"""The embedded sample region: Sentinel-2-like RGBNIR tiles and WorldCover-like label tiles.

Nothing can be downloaded where the platform is built and tested, so this writes realistic
stand-ins on the real grid: real file names, EPSG:4326, 1/12000-degree pixels, real tile
origins, tiled and compressed GeoTIFFs with overviews (COG layout). Each S2 file covers the
top-left part of its real tile; each WorldCover file covers the same ground, pixel-aligned on
its own 3-degree tile's grid (sparse between the S2 parts, so it stays small).

The landscapes come from smooth noise fields: an elevation model decides farmland, grassland,
shrub, forest, barren land and snow; towns grow around centres; rivers meander across; one
tile holds a large lake, one a coast whose open sea is nodata. Reflectance is drawn per class
with texture, shading and sensor noise, so the classes are learnable but not trivial."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage

from aras_assets.grid import (
    CRS,
    PIXEL_DEG,
    PIXELS_PER_DEGREE,
    WC_TILE_DEG,
    parse_tile_id,
    s2_filename,
    wc_filename,
    wc_tile_containing,
)

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class TileRecipe:
    """Which features a sample tile must hold, so every filter and remap path is exercised."""

    tile: str
    lake: bool = False
    coast: bool = False
    mountains: bool = False
    towns: int = 1
    rivers: int = 1


# Two S2 tiles in each of two WorldCover tiles. N38E029 lies two degrees from the corner of
# its WorldCover tile N36E027: the release's +-1 degree matching never found such tiles.
SAMPLE_TILES: tuple[TileRecipe, ...] = (
    TileRecipe("N38E028", towns=2, rivers=1),
    TileRecipe("N38E029", lake=True, towns=1, rivers=1),
    TileRecipe("N36E030", coast=True, towns=1, rivers=1),
    TileRecipe("N36E031", mountains=True, towns=1, rivers=1),
)

# Mean reflectance x 10000 in S2 band order red (B04), green (B03), blue (B02), NIR (B08).
REFLECTANCE: dict[int, tuple[int, int, int, int]] = {
    10: (260, 460, 260, 2800),   # tree
    20: (620, 720, 470, 2300),   # shrub
    30: (720, 960, 560, 3000),   # grass
    40: (480, 860, 420, 3700),   # crop (green); ripe and bare fields are varied per parcel
    50: (1500, 1420, 1320, 2000),  # built-up
    60: (2300, 2020, 1720, 2700),  # barren
    70: (8400, 8550, 8800, 7400),  # snow
    80: (210, 360, 560, 130),    # water
    90: (460, 660, 460, 1750),   # wetland
    95: (260, 520, 320, 2500),   # mangrove
    100: (900, 1000, 800, 2050),  # moss
}
RIPE_FIELD = np.array((1500, 1300, 1000, 2400), dtype=np.float32)


def tile_seed(seed: int, tile: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(tile.encode())])


def smooth_noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about `scale` pixels wide."""
    cells = max(2, math.ceil(n / scale) + 3)
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = ndimage.zoom(coarse, n / (cells - 3), order=3, prefilter=False)[:n, :n]
    field -= field.mean()
    return field / (field.std() + 1e-6)


def fbm(rng: np.random.Generator, n: int, scales: Iterable[float], gain: float = 0.55) -> np.ndarray:
    out = np.zeros((n, n), dtype=np.float32)
    weight = 1.0
    for scale in scales:
        out += weight * smooth_noise(rng, n, scale)
        weight *= gain
    return out / (out.std() + 1e-6)


def _disk_distance(mask: np.ndarray) -> np.ndarray:
    """Distance in pixels from every pixel to the nearest True pixel of `mask`."""
    return ndimage.distance_transform_edt(~mask).astype(np.float32)


def _river_mask(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """A meandering river from one edge to the opposite one."""
    horizontal = rng.random() < 0.5
    pos = np.array([rng.uniform(0.2, 0.8) * n, 0.0])
    heading = rng.normal(0, 0.3)
    turn = 0.0
    points = []
    while 0 <= pos[1] < n and -0.2 * n < pos[0] < 1.2 * n:
        points.append(pos.copy())
        turn = 0.9 * turn + rng.normal(0, 0.05)
        heading = float(np.clip(heading + turn, -1.1, 1.1))
        pos += 2.0 * np.array([math.sin(heading), math.cos(heading)])
    line = np.zeros((n, n), dtype=bool)
    pts = np.array(points).round().astype(int)
    pts = pts[((pts >= 0) & (pts < n)).all(axis=1)]
    if horizontal:
        line[pts[:, 0], pts[:, 1]] = True
    else:
        line[pts[:, 1], pts[:, 0]] = True
    return _disk_distance(line) <= width / 2


def _fields(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Parcel ids and a per-parcel ripeness in a rotated grid of rectangular fields."""
    angle = rng.uniform(0, math.pi / 2)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    width, height = rng.uniform(45, 90), rng.uniform(30, 70)
    strip = np.floor(v / height).astype(np.int64)
    # Fields in one strip have their own length, so boundaries do not line up like a chessboard.
    shift = (np.sin(strip * 12.9898) * 43758.5453) % 1.0 * width
    parcel = strip * 100003 + np.floor((u + shift) / width).astype(np.int64)
    _, parcel = np.unique(parcel, return_inverse=True)
    parcel = parcel.reshape(n, n)
    ripeness = rng.random(parcel.max() + 1).astype(np.float32)
    return parcel, ripeness


def landscape(recipe: TileRecipe, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """WorldCover codes (n, n) uint8 and S2 reflectance (4, n, n) uint16 for one sample tile."""
    rng = tile_seed(seed, recipe.tile)
    elevation = fbm(rng, n, (900, 350, 120, 40))
    if recipe.mountains:
        elevation += np.linspace(-0.6, 1.4, n, dtype=np.float32)[None, :]
    moisture = fbm(rng, n, (500, 150, 50))
    q = np.quantile(elevation, [0.38, 0.6, 0.82, 0.96, 0.995])

    codes = np.full((n, n), 30, dtype=np.uint8)
    codes[elevation <= q[0]] = 40
    codes[(elevation > q[0]) & (elevation <= q[1])] = np.where(moisture[(elevation > q[0]) & (elevation <= q[1])] > 0.3, 20, 30)
    hills = (elevation > q[1]) & (elevation <= q[2])
    codes[hills] = np.where(moisture[hills] > -0.2, 10, 20)
    codes[elevation > q[2]] = 60
    high = elevation > q[3]
    codes[high & (moisture > 0.8)] = 100  # moss on wet summits
    if recipe.mountains:
        codes[elevation > q[4]] = 70

    parcel, ripeness = _fields(rng, n)
    farmland = codes == 40
    # Some parcels in the lowland lie fallow as grass.
    fallow = (ripeness[parcel] > 0.85) & farmland
    codes[fallow] = 30

    towns = np.zeros((n, n), dtype=bool)
    lowland = np.argwhere(elevation <= q[1])
    for _ in range(recipe.towns):
        cy, cx = lowland[rng.integers(len(lowland))]
        yy, xx = np.ogrid[0:n, 0:n]
        radius = rng.uniform(0.06, 0.1) * n
        towns |= np.hypot(yy - cy, xx - cx) / radius + 0.35 * fbm(rng, n, (60, 20)) < 1
    codes[towns] = 50

    water = np.zeros((n, n), dtype=bool)
    for _ in range(recipe.rivers):
        water |= _river_mask(rng, n, width=rng.uniform(7, 14))
    if recipe.lake:
        # Centred on a patch cell, wide enough that whole patches are open water (>90%).
        cells = n // 256
        cy = (cells // 2 + 0.5) * 256
        cx = (max(cells // 2 - 1, 0) + 0.5) * 256
        radius = max(0.22 * n, 240.0)
        yy, xx = np.ogrid[0:n, 0:n]
        lake_d = np.hypot(yy - cy, xx - cx) / radius + 0.06 * fbm(rng, n, (120, 40))
        water |= lake_d < 1
        codes[(lake_d >= 1) & (lake_d < 1.08) & (moisture > -0.5)] = 90  # reed belt
    near_water = (_disk_distance(water) < 4) & ~water & (moisture > 0.9)
    codes[near_water] = 90
    codes[water] = 80

    sea = np.zeros((n, n), dtype=bool)
    far_sea = np.zeros((n, n), dtype=bool)
    if recipe.coast:
        # The open sea in the bottom third; the composite has data only near the shore.
        shore = 0.62 * n + 0.08 * n * smooth_noise(rng, n, 300)[0]
        yy = np.arange(n, dtype=np.float32)[:, None]
        sea = yy > shore[None, :]
        dist_sea = yy - shore[None, :]
        far_sea = dist_sea > 0.2 * n
        land_edge = (dist_sea > -6) & ~sea
        beach_kind = smooth_noise(rng, n, 200)[1][None, :]
        codes[land_edge & (beach_kind > 0.9)] = 95  # a mangrove fringe
        codes[land_edge & (beach_kind < -0.5)] = 60  # sand
        codes[sea] = 0

    reflectance = _reflectance(rng, codes, elevation, parcel, ripeness, farmland)
    if recipe.coast:
        reflectance[:, sea] = np.asarray(REFLECTANCE[80], dtype=np.float32)[:, None] * \
            (1 + 0.05 * smooth_noise(rng, n, 80)[sea])[None, :]
        reflectance[:, far_sea] = 0
    return codes, reflectance


def _reflectance(rng: np.random.Generator, codes: np.ndarray, elevation: np.ndarray,
                 parcel: np.ndarray, ripeness: np.ndarray, farmland: np.ndarray) -> np.ndarray:
    n = codes.shape[0]
    lut = np.zeros((256, 4), dtype=np.float32)
    for code, mean in REFLECTANCE.items():
        lut[code] = mean
    refl = lut[codes].transpose(2, 0, 1).copy()
    # Crop fields range from green to ripe and ploughed, each field its own shade.
    crop = (codes == 40) & farmland
    mix = ripeness[parcel][crop]
    refl[:, crop] = refl[:, crop] * (1 - mix) + RIPE_FIELD[:, None] * mix
    # Roofs, streets and shadows: a blocky texture in towns.
    built = codes == 50
    blocks = ndimage.zoom(rng.random((n // 6 + 2, n // 6 + 2)).astype(np.float32), 6, order=0)[:n, :n]
    refl[:, built] *= (0.65 + 0.7 * blocks[built])[None, :]
    texture = 1 + 0.08 * fbm(rng, n, (30, 8, 3))
    gy, gx = np.gradient(elevation * 40)
    shade = np.clip(1 + 0.5 * (gx - gy) / math.sqrt(2), 0.75, 1.25)
    refl *= (texture * shade)[None]
    refl *= 1 + 0.03 * rng.standard_normal(refl.shape, dtype=np.float32)
    refl = ndimage.gaussian_filter(refl, sigma=(0, 0.6, 0.6))  # the sensor's blur
    return np.clip(refl, 1, 10000).astype(np.uint16)


# --- writing GeoTIFFs --------------------------------------------------------------------

COG_OPTIONS = {"compress": "deflate", "predictor": 2, "blocksize": 512, "overview_resampling": "nearest",
               "sparse_ok": True}


def _write_cog(path: Path, profile: dict, write: Callable[[rasterio.io.DatasetWriter], None]) -> None:
    """Write through a sparse tiled GeoTIFF, then copy to COG layout; atomic on `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.src.tif")
    out = path.with_name(f".{path.name}.tmp")
    try:
        with rasterio.open(tmp, "w", driver="GTiff", tiled=True, blockxsize=512, blockysize=512,
                           compress="deflate", sparse_ok=True, **profile) as dst:
            write(dst)
        rasterio.shutil.copy(tmp, out, driver="COG", **COG_OPTIONS)
        out.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def s2_origin(tile: str) -> tuple[float, float]:
    """(west, north) of an S2 tile: its top-left corner."""
    lat, lon = parse_tile_id(tile)
    return float(lon), float(lat + 1)


def write_s2_tile(path: Path, tile: str, reflectance: np.ndarray, origin: tuple[float, float] | None = None) -> None:
    """A 4-band uint16 RGBNIR raster at the top-left of `tile` (or at `origin`)."""
    west, north = origin or s2_origin(tile)
    bands, height, width = reflectance.shape
    profile = {"width": width, "height": height, "count": bands, "dtype": "uint16", "nodata": 0,
               "crs": CRS, "transform": from_origin(west, north, PIXEL_DEG, PIXEL_DEG)}
    _write_cog(path, profile, lambda dst: dst.write(reflectance))


def write_wc_tile(path: Path, wc_tile: str, parts: list[tuple[int, int, np.ndarray]]) -> None:
    """A WorldCover map covering the parts given as (row, col, codes) in the 3-degree tile's
    pixels; the file spans their bounding box and stays sparse (nodata) in between."""
    lat, lon = parse_tile_id(wc_tile)
    row0 = min(r for r, _, _ in parts)
    col0 = min(c for _, c, _ in parts)
    row1 = max(r + a.shape[0] for r, _, a in parts)
    col1 = max(c + a.shape[1] for _, c, a in parts)
    west = lon + col0 / PIXELS_PER_DEGREE
    north = lat + WC_TILE_DEG - row0 / PIXELS_PER_DEGREE
    profile = {"width": col1 - col0, "height": row1 - row0, "count": 1, "dtype": "uint8", "nodata": 0,
               "crs": CRS, "transform": from_origin(west, north, PIXEL_DEG, PIXEL_DEG)}

    def write(dst: rasterio.io.DatasetWriter) -> None:
        for r, c, codes in parts:
            dst.write(codes[None], window=Window(c - col0, r - row0, codes.shape[1], codes.shape[0]))

    _write_cog(path, profile, write)


def wc_offset(s2_tile: str) -> tuple[str, int, int]:
    """The WorldCover tile holding an S2 tile and the (row, col) of the S2 tile's top-left there."""
    lat, lon = parse_tile_id(s2_tile)
    wc = wc_tile_containing(lat + 0.5, lon + 0.5)
    wlat, wlon = parse_tile_id(wc)
    return wc, (wlat + WC_TILE_DEG - (lat + 1)) * PIXELS_PER_DEGREE, (lon - wlon) * PIXELS_PER_DEGREE


@dataclass(frozen=True)
class SampleRegionSpec:
    seed: int
    tile_px: int
    tiles: tuple[str, ...]
    version: int = GENERATOR_VERSION


def write_sample_region(folder: Path, seed: int = 7, tile_px: int = 1600,
                        recipes: tuple[TileRecipe, ...] = SAMPLE_TILES,
                        progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write the sample region to `folder` (skipped when the same spec is already there)."""
    if tile_px < 512:
        raise ValueError(f"tile_px {tile_px} is too small for the sample landscapes; use 512 or more")
    folder = Path(folder)
    spec = SampleRegionSpec(seed, tile_px, tuple(r.tile for r in recipes))
    spec_file = folder / "sample_region.json"
    wc_parts: dict[str, list[tuple[int, int, np.ndarray]]] = {wc_offset(r.tile)[0]: [] for r in recipes}
    wanted = [folder / s2_filename(r.tile) for r in recipes] + [folder / wc_filename(wc) for wc in wc_parts]
    spec_json = json.dumps(asdict(spec), indent=2)
    if spec_file.exists() and spec_file.read_text() == spec_json and all(p.exists() for p in wanted):
        return wanted
    folder.mkdir(parents=True, exist_ok=True)
    for recipe in recipes:
        if progress:
            progress(f"sample region: drawing {recipe.tile} ({tile_px}x{tile_px} px)")
        codes, reflectance = landscape(recipe, tile_px, seed)
        write_s2_tile(folder / s2_filename(recipe.tile), recipe.tile, reflectance)
        wc, row, col = wc_offset(recipe.tile)
        wc_parts[wc].append((row, col, codes))
    for wc, parts in wc_parts.items():
        if progress:
            progress(f"sample region: writing WorldCover {wc}")
        write_wc_tile(folder / wc_filename(wc), wc, parts)
    spec_file.write_text(spec_json)
    return wanted
