"""Cutting one S2 tile and its WorldCover tile into 256x256 image/mask patches.

Each file is opened once and read in block-aligned strips that span several patch rows; the
labels come from the same strip of the WorldCover file at the whole-pixel offset between the
two grids. Patches in a strip are remapped, filtered, normalized and PNG-encoded by a thread
pool (GDAL, numpy and zlib release the GIL) while the next strip is read. Memory holds two
strips at most, however large the tile or the region."""

from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image
from rasterio.windows import Window

from aras_assets import layout
from aras_assets.grid import WC_TILE_DEG, Footprint, grid_offset
from aras_assets.ids import PATCH_SIZE, patch_id
from aras_assets.landcover import (
    CLASS_NAMES,
    NODATA_INDEX,
    NUM_CLASSES,
    UNKNOWN_INDEX,
    WATER_INDEX,
    UnknownLabelError,
    mask_to_rgb,
)
from aras_assets.sources.rasters import S2_KIND, WC_KIND, RasterReader, TileError, footprint
from resources.storage import staged_directory, write_parquet_atomic

REJECT_REASONS = ("all_zero_image", "nodata_label", "too_much_water")
CLASS_COUNT_COLUMNS = tuple(f"px_{name.replace('-', '_')}" for name in CLASS_NAMES)


@dataclass(frozen=True)
class TileSource:
    """One S2 tile and the WorldCover file that covers it, as the catalog lists them."""

    s2_tile: str
    s2_uri: str
    wc_tile: str
    wc_uri: str


@dataclass(frozen=True)
class PatchOptions:
    lut: np.ndarray  # WorldCover code -> class index, see landcover.label_lut
    normalization: str = "per_patch_max"
    stretch_max: int = 3000
    water_max_share: float = 0.9
    workers: int = 2
    png_compress_level: int = 1
    remote_options: tuple[tuple[str, str], ...] = ()  # GDAL options for remote tiles (settings' remote_options)


@dataclass
class TileResult:
    manifest: pl.DataFrame
    rejected: pl.DataFrame

    @property
    def reject_counts(self) -> dict[str, int]:
        counts = Counter(self.rejected["reason"].to_list())
        return {reason: counts.get(reason, 0) for reason in REJECT_REASONS}


def to_8bit(rgb: np.ndarray, normalization: str = "per_patch_max", stretch_max: int = 3000) -> np.ndarray:
    """(3, H, W) uint16 reflectance to (H, W, 3) uint8.

    per_patch_max is the release's rule, patch / patch.max() * 255 truncated, computed in
    float64 as it did; stretch maps reflectance 0..stretch_max linearly onto 0..255."""
    if normalization == "per_patch_max":
        peak = rgb.max()
        scaled = rgb / peak * 255 if peak else np.zeros(rgb.shape)
        out = scaled.astype(np.uint8)
    elif normalization == "stretch":
        out = (np.minimum(rgb, stretch_max).astype(np.uint32) * 255 // stretch_max).astype(np.uint8)
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def classify(labels: np.ndarray, lut: np.ndarray, where: str) -> np.ndarray:
    """WorldCover codes to class indices; codes outside the legend are an error, not a class."""
    classes = lut[labels]
    if (classes == UNKNOWN_INDEX).any():
        bad = np.unique(labels[classes == UNKNOWN_INDEX]).tolist()
        raise UnknownLabelError(f"{where}: label value(s) {bad} are not WorldCover codes")
    return classes


def reject_reason(rgb: np.ndarray, classes: np.ndarray, water_max_share: float) -> str | None:
    """The release's filters, in its order: empty image, any nodata label, mostly water."""
    if not rgb.any():
        return "all_zero_image"
    if (classes == NODATA_INDEX).any():
        return "nodata_label"
    if np.count_nonzero(classes == WATER_INDEX) / classes.size > water_max_share:
        return "too_much_water"
    return None


def _process_patch(tile: TileSource, row: int, col: int, rgb: np.ndarray, labels: np.ndarray,
                   opts: PatchOptions, out_dir: Path, rel_dir: str, bounds: tuple[float, float, float, float],
                   wc_window: tuple[int, int], wc_file_window: tuple[int, int]) -> dict | tuple[str, str]:
    pid = patch_id(tile.s2_tile, row, col)
    classes = classify(labels, opts.lut, f"WorldCover tile {tile.wc_uri}, patch {pid}")
    reason = reject_reason(rgb, classes, opts.water_max_share)
    if reason:
        return pid, reason
    image_png = encode_png(to_8bit(rgb, opts.normalization, opts.stretch_max), opts.png_compress_level)
    mask_png = encode_png(mask_to_rgb(classes), opts.png_compress_level)
    (out_dir / "images" / f"{pid}.png").write_bytes(image_png)
    (out_dir / "masks" / f"{pid}.png").write_bytes(mask_png)
    counts = np.bincount(classes.ravel(), minlength=NUM_CLASSES)
    west, south, east, north = bounds
    return {
        "patch_id": pid, "s2_tile": tile.s2_tile, "wc_tile": tile.wc_tile, "row": row, "col": col,
        "x_off": col * PATCH_SIZE, "y_off": row * PATCH_SIZE, "width": PATCH_SIZE, "height": PATCH_SIZE,
        "wc_x_off": wc_window[1], "wc_y_off": wc_window[0],
        "wc_file_x_off": wc_file_window[1], "wc_file_y_off": wc_file_window[0],
        "lon_min": west, "lat_min": south, "lon_max": east, "lat_max": north,
        "s2_uri": tile.s2_uri, "wc_uri": tile.wc_uri,
        "image_path": f"{rel_dir}/images/{pid}.png", "mask_path": f"{rel_dir}/masks/{pid}.png",
        "image_sha256": hashlib.sha256(image_png).hexdigest(), "mask_sha256": hashlib.sha256(mask_png).hexdigest(),
        "normalization": opts.normalization,
        **{name: int(c) for name, c in zip(CLASS_COUNT_COLUMNS, counts, strict=True)},
    }


MANIFEST_SCHEMA = {
    "patch_id": pl.String, "s2_tile": pl.String, "wc_tile": pl.String, "row": pl.Int32, "col": pl.Int32,
    "x_off": pl.Int32, "y_off": pl.Int32, "width": pl.Int32, "height": pl.Int32,
    "wc_x_off": pl.Int32, "wc_y_off": pl.Int32,  # the window on WorldCover's 3-degree tile grid
    "wc_file_x_off": pl.Int32, "wc_file_y_off": pl.Int32,  # the same window in wc_uri's own pixels
    "lon_min": pl.Float64, "lat_min": pl.Float64, "lon_max": pl.Float64, "lat_max": pl.Float64,
    "s2_uri": pl.String, "wc_uri": pl.String, "image_path": pl.String, "mask_path": pl.String,
    "image_sha256": pl.String, "mask_sha256": pl.String, "normalization": pl.String,
    **{name: pl.Int32 for name in CLASS_COUNT_COLUMNS},
}
REJECTED_SCHEMA = {"patch_id": pl.String, "reason": pl.String}


def strip_height(block_height: int) -> int:
    """Rows per read: whole patch rows and whole blocks, so no block is decoded twice."""
    return block_height * PATCH_SIZE // math.gcd(block_height, PATCH_SIZE)


def extract_tile(tile: TileSource, opts: PatchOptions, out_dir: Path, rel_dir: str,
                 progress: Callable[[int, int], None] | None = None) -> TileResult:
    """Write a tile's kept patches to out_dir/images and out_dir/masks; return the manifest rows
    (sorted by row, col) and the rejected patch ids with their reason."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    rows_out: list[dict] = []
    rejected: list[tuple[str, str]] = []
    remote = dict(opts.remote_options)
    with RasterReader(tile.s2_uri, S2_KIND, remote) as s2_reader, RasterReader(tile.wc_uri, WC_KIND, remote) as wc_reader:
        s2, wc = s2_reader.dataset, wc_reader.dataset
        s2_fp, wc_fp = footprint(s2), footprint(wc)
        if not wc_fp.contains(s2_fp):
            raise TileError(f"WorldCover tile {tile.wc_uri} {wc_fp} does not cover S2 tile {tile.s2_tile} {s2_fp}")
        off_row, off_col = grid_offset(wc_fp.west, wc_fp.north, s2_fp.west, s2_fp.north)
        # Lineage records the window on the 3-degree tile's own grid, whatever part a file holds.
        wc_tile_fp = Footprint.of_tile(tile.wc_tile, WC_TILE_DEG)
        file_row, file_col = grid_offset(wc_tile_fp.west, wc_tile_fp.north, wc_fp.west, wc_fp.north)
        n_rows, n_cols = s2.height // PATCH_SIZE, s2.width // PATCH_SIZE
        if n_rows == 0 or n_cols == 0:
            raise TileError(f"S2 tile {tile.s2_uri} is {s2.width}x{s2.height} px, smaller than one patch")
        step = strip_height(s2.block_shapes[0][0]) // PATCH_SIZE
        t = s2.transform
        done = 0

        def read_strip(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
            y0, height, width = r0 * PATCH_SIZE, (r1 - r0) * PATCH_SIZE, n_cols * PATCH_SIZE
            rgb = s2_reader.read((1, 2, 3), Window(0, y0, width, height), f"rows {y0}..{y0 + height}")
            labels = wc_reader.read(1, Window(off_col, off_row + y0, width, height),
                                    f"rows {off_row + y0}..{off_row + y0 + height}")
            return rgb, labels

        def submit_strip(pool: ThreadPoolExecutor, r0: int, strip: tuple[np.ndarray, np.ndarray]) -> list[Future]:
            rgb, labels = strip
            futures = []
            for i in range(rgb.shape[1] // PATCH_SIZE):
                row = r0 + i
                ys = slice(i * PATCH_SIZE, (i + 1) * PATCH_SIZE)
                for col in range(n_cols):
                    xs = slice(col * PATCH_SIZE, (col + 1) * PATCH_SIZE)
                    west, north = t @ (col * PATCH_SIZE, row * PATCH_SIZE)
                    east, south = t @ ((col + 1) * PATCH_SIZE, (row + 1) * PATCH_SIZE)
                    # A WorldCover file may be a crop of its tile: the window in the file's own pixels
                    # is what reading wc_uri needs; the one on the tile grid is what the release names.
                    wc_file_window = (off_row + row * PATCH_SIZE, off_col + col * PATCH_SIZE)
                    wc_window = (file_row + wc_file_window[0], file_col + wc_file_window[1])
                    futures.append(pool.submit(_process_patch, tile, row, col, rgb[:, ys, xs], labels[ys, xs],
                                               opts, out_dir, rel_dir, (west, south, east, north), wc_window,
                                               wc_file_window))
            return futures

        with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
            pending: list[Future] = []
            for r0 in range(0, n_rows, step):
                strip = read_strip(r0, min(r0 + step, n_rows))  # read while the last strip encodes
                for fut in pending:
                    _collect(fut.result(), rows_out, rejected)
                done += len(pending)
                if progress and pending:
                    progress(done, n_rows * n_cols)
                pending = submit_strip(pool, r0, strip)
            for fut in pending:
                _collect(fut.result(), rows_out, rejected)
            done += len(pending)
            if progress:
                progress(done, n_rows * n_cols)

    manifest = pl.DataFrame(rows_out, schema=MANIFEST_SCHEMA).sort("row", "col")
    rejects = pl.DataFrame(rejected, schema=REJECTED_SCHEMA, orient="row").sort("patch_id")
    return TileResult(manifest, rejects)


def _collect(result: dict | tuple[str, str], rows: list[dict], rejected: list[tuple[str, str]]) -> None:
    if isinstance(result, dict):
        rows.append(result)
    else:
        rejected.append(result)


def materialize_tile(tile: TileSource, opts: PatchOptions, final: Path, rel_dir: str,
                     progress: Callable[[int, int], None] | None = None) -> TileResult:
    """A tile's patches, manifest and rejected list in `final`, whole or not at all: built in a
    staging folder under the partition's lock and swapped in atomically (a killed run leaves the
    previous version, and its leftovers are removed by the next run)."""
    with staged_directory(final) as stage:
        result = extract_tile(tile, opts, stage, rel_dir, progress)
        write_parquet_atomic(result.manifest, stage / layout.MANIFEST)
        write_parquet_atomic(result.rejected, stage / layout.REJECTED)
    return result
