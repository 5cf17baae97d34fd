"""Import a folder in the ARAS400k release layout (zipped or unzipped) into a data root.

Every file is checked before anything is written (MD5 table, file names, image/mask pairs, mask
colours), so a bad release imports nothing. The release is then staged under `release/` with an
index, and the records every later stage reads are rebuilt from it: the tile catalog (the
WorldCover tile found by footprint), one `real_patches`-equivalent manifest per tile with the
lineage the file names give (tile, row, column, hence the S2 pixel window, the WorldCover window
and lon/lat bounds), the splits from the folders, synthetic images as records without seeds, and
the captions. The `release` tile source re-materializes the same records through Dagster."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError
from rasterio.transform import from_origin

from aras_assets import layout
from aras_assets.exchange import release as rl
from aras_assets.exchange.checksums import verify
from aras_assets.grid import PIXEL_DEG, S2_TILE_DEG, WC_TILE_DEG, Footprint, grid_offset, parse_tile_id, wc_tile_containing
from aras_assets.ids import PATCH_SIZE, parse_patch_id, parse_synthetic_id, synthetic_id
from aras_assets.landcover import NUM_CLASSES, UnknownLabelError, rgb_to_mask
from aras_assets.sources.catalog import CATALOG_SCHEMA
from aras_assets.sources.patches import CLASS_COUNT_COLUMNS, MANIFEST_SCHEMA, REJECTED_SCHEMA
from aras_assets.sources.splits import splits_version
from resources.storage import staged_directory, write_parquet_atomic

# The release's patch names: `{tile}_{row:03d}_{col:03d}.png`.
_NAME_RE = re.compile(r"^([NS]\d{2}[EW]\d{3})_(\d{3})_(\d{3})\.png$")
IMPORTED = layout.IMPORTED
# Synthetic images whose names are not our ids go to this unconditional shard, outside the
# gen_shard range (0000..9999), so generation never overwrites them.
IMPORT_SHARD = "10000"
_MAX_LISTED = 10

INDEX_SCHEMA = {"patch_id": pl.String, "s2_tile": pl.String, "row": pl.Int32, "col": pl.Int32, "split": pl.String,
                "image_path": pl.String, "mask_path": pl.String, "image_sha256": pl.String, "mask_sha256": pl.String,
                **{c: pl.Int32 for c in CLASS_COUNT_COLUMNS}}
SYNTH_INDEX = layout.RELEASE / "synthetic.parquet"
CAPTIONS_INDEX = layout.RELEASE / "captions.parquet"


class ReleaseImportError(rl.ReleaseError):
    """A release folder whose files cannot be imported (names, pairs, colours)."""


@dataclass
class ReleaseImport:
    index: pl.DataFrame  # one row per real patch
    synthetic: pl.DataFrame  # one row per synthetic image
    captions: pl.DataFrame
    tiles: list[str]


def _problem_error(problems: list[str], folder: Path) -> ReleaseImportError:
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return ReleaseImportError(f"{folder}: {len(problems)} files cannot be imported, nothing was imported: "
                        + "; ".join(problems[:_MAX_LISTED]) + more)


def _mask_counts(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise UnknownLabelError(f"{where} is not a readable PNG ({exc})") from exc
    return np.bincount(rgb_to_mask(rgb, where).ravel(), minlength=NUM_CLASSES)


def _check_image(data: bytes, where: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise UnknownLabelError(f"{where} is not a readable PNG ({exc})") from exc


def _pairs(folder: rl.ReleaseFolder, top: str, problems: list[str]) -> list[str]:
    """File names present as both image and mask in `top`; the rest are problems."""
    names = folder.names()
    images = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"{top}/{rl.IMAGES}/")}
    masks = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"{top}/{rl.MASKS}/")}
    problems += [f"{folder.where(f'{top}/{rl.IMAGES}/{n}')} has no mask {top}/{rl.MASKS}/{n}" for n in sorted(images - masks)]
    problems += [f"{folder.where(f'{top}/{rl.MASKS}/{n}')} has no image {top}/{rl.IMAGES}/{n}" for n in sorted(masks - images)]
    return sorted(images & masks)


def read_release(source: Path, say: Callable[[str], None] = lambda _: None) -> tuple[ReleaseImport, dict[str, str]]:
    """Check a release folder in full, one file at a time; return its records and, for every file
    to stage, its SHA-256 by its path inside the release. Raises ReleaseError listing every bad file."""
    source = Path(source)
    verified = verify(source)  # a zip (or any file) whose MD5 differs from its table
    if verified:
        say(f"MD5 verified: {', '.join(sorted(verified))}")
    files: dict[str, str] = {}
    problems: list[str] = []
    rows = []
    seen: dict[str, str] = {}
    with rl.ReleaseFolder(source) as folder:
        for split in rl.SPLITS:
            for name in _pairs(folder, split, problems):
                image_in, mask_in = f"{split}/{rl.IMAGES}/{name}", f"{split}/{rl.MASKS}/{name}"
                m = _NAME_RE.match(name)
                if not m:
                    problems.append(f"{folder.where(image_in)}: name is not {{tile}}_{{row:03d}}_{{col:03d}}.png")
                    continue
                pid = name[:-len(rl.PNG)]
                if pid in seen:
                    problems.append(f"{folder.where(image_in)}: patch {pid} is also in {seen[pid]}")
                    continue
                seen[pid] = split
                image, mask = folder.read(image_in), folder.read(mask_in)
                try:
                    _check_image(image, folder.where(image_in))
                    counts = _mask_counts(mask, folder.where(mask_in))
                except UnknownLabelError as exc:
                    problems.append(str(exc))
                    continue
                p = parse_patch_id(pid)
                image_rel, mask_rel = (layout.RELEASE / image_in).as_posix(), (layout.RELEASE / mask_in).as_posix()
                files[image_in], files[mask_in] = hashlib.sha256(image).hexdigest(), hashlib.sha256(mask).hexdigest()
                rows.append({"patch_id": pid, "s2_tile": p.tile, "row": p.row, "col": p.col, "split": split,
                             "image_path": image_rel, "mask_path": mask_rel,
                             "image_sha256": files[image_in], "mask_sha256": files[mask_in],
                             **{c: int(n) for c, n in zip(CLASS_COUNT_COLUMNS, counts, strict=True)}})
        synthetic = _read_synth(folder, files, problems)
        captions = _read_captions(folder, problems)
    if problems:
        raise _problem_error(problems, source)
    if not rows:
        raise ReleaseImportError(f"{source} holds no image/mask pairs in train/, val/ or test/")
    index = pl.DataFrame(rows, schema=INDEX_SCHEMA).sort("patch_id")
    say(f"checked {index.height} patches over {index['s2_tile'].n_unique()} tiles, {synthetic.height} synthetic images, "
        f"{captions.height} captions")
    return ReleaseImport(index, synthetic, captions, index["s2_tile"].unique().sort().to_list()), files


SYNTH_SCHEMA = {"image_id": pl.String, "origin": pl.String, "shard": pl.String, "index": pl.Int32,
                "source_name": pl.String, "conditioning_patch_id": pl.String, "image_path": pl.String,
                "mask_path": pl.String, "content_sha256": pl.String}


def _read_synth(folder: rl.ReleaseFolder, files: dict[str, str], problems: list[str]) -> pl.DataFrame:
    """Synthetic images: a name that is one of our ids keeps it (and, for a conditional image, the
    conditioning patch `synthetic.csv` names); any other becomes `uncond_10000_<k>` in name order."""
    names = _pairs(folder, rl.SYNTH, problems)
    meta: dict[str, dict] = {}
    csv_in = f"{rl.SYNTH}/{rl.SYNTH_CSV}"
    if folder.has(csv_in):
        table = pl.read_csv(io.BytesIO(folder.read(csv_in)), infer_schema_length=0)
        meta = {r["image_name"]: r for r in table.iter_rows(named=True)}
    rows = []
    k = 0
    for name in names:
        image_in, mask_in = f"{rl.SYNTH}/{rl.IMAGES}/{name}", f"{rl.SYNTH}/{rl.MASKS}/{name}"
        image, mask = folder.read(image_in), folder.read(mask_in)
        try:
            _check_image(image, folder.where(image_in))
            _mask_counts(mask, folder.where(mask_in))
        except UnknownLabelError as exc:
            problems.append(str(exc))
            continue
        stem = name[:-len(rl.PNG)] if name.endswith(rl.PNG) else name
        try:
            sid = parse_synthetic_id(stem)
            origin, shard, index = sid.origin, sid.shard, sid.index
        except ValueError:
            origin, shard, index = layout.UNCOND, IMPORT_SHARD, k
            k += 1
        image_id = synthetic_id(origin, shard, index)
        cond_patch = (meta.get(name) or {}).get("conditioning_patch_id") or None
        if origin == layout.COND and not cond_patch:
            problems.append(f"{folder.where(image_in)}: a conditional image with no conditioning patch in {csv_in}")
            continue
        folder_rel = layout.synthetic_dir(origin, shard)
        files[image_in], files[mask_in] = hashlib.sha256(image).hexdigest(), hashlib.sha256(mask).hexdigest()
        rows.append({"image_id": image_id, "origin": origin, "shard": shard, "index": index, "source_name": name,
                     "conditioning_patch_id": cond_patch,
                     "image_path": (folder_rel / rl.IMAGES / f"{image_id}{rl.PNG}").as_posix(),
                     "mask_path": (folder_rel / rl.MASKS / f"{image_id}{rl.PNG}").as_posix(),
                     "content_sha256": files[image_in]})
    return pl.DataFrame(rows, schema=SYNTH_SCHEMA)


def _read_captions(folder: rl.ReleaseFolder, problems: list[str]) -> pl.DataFrame:
    """Captions from each folder's captions.csv that carries caption ids (ours); a captioner CSV
    without them is left out (its captions have no index to key them)."""
    frames = []
    back = {v: k for k, v in rl.CAPTION_RENAMES.items()}
    for top in rl.FOLDERS:
        inner = f"{top}/{rl.CAPTION_CSV}"
        if not folder.has(inner):
            continue
        table = pl.read_csv(io.BytesIO(folder.read(inner)), infer_schema_length=0)
        if table.is_empty() or "caption_id" not in table.columns:
            continue
        missing = [c for c in (*rl.CAPTION_FIELDS, "caption_index") if c not in table.columns]
        if missing:
            problems.append(f"{folder.where(inner)} lacks columns {missing}")
            continue
        from aras_assets.captions.captioning import CAPTION_SCHEMA

        image_id = pl.col("image_name").str.strip_suffix(rl.PNG)
        origin = pl.when(image_id.str.starts_with(f"{layout.UNCOND}_")).then(pl.lit(layout.UNCOND)) \
            .when(image_id.str.starts_with(f"{layout.COND}_")).then(pl.lit(layout.COND)).otherwise(pl.lit(layout.REAL))
        frame = table.rename({c: back[c] for c in table.columns if c in back}).with_columns(
            image_id.alias("image_id"), origin.alias("origin")).drop("image_name")
        frames.append(frame.select([pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c)
                                    for c, t in CAPTION_SCHEMA.items()]))
    if not frames:
        return pl.DataFrame(schema={"caption_id": pl.String, "image_id": pl.String, "origin": pl.String})
    return pl.concat(frames).sort("caption_id")


# Records rebuilt from the staged release: what the `release` tile source materializes.

def release_catalog(index: pl.DataFrame, s2_template: str, wc_template: str) -> pl.DataFrame:
    """One catalog row per S2 tile of the release: the WorldCover tile whose footprint covers
    it, URIs from the templates (the public buckets by default), full-size 1-degree tiles."""
    from aras_assets.sources.catalog import _expand

    rows = []
    for tile in index["s2_tile"].unique().sort().to_list():
        fp = Footprint.of_tile(tile, S2_TILE_DEG)
        wc = wc_tile_containing(fp.south + 0.5, fp.west + 0.5)
        wfp = Footprint.of_tile(wc, WC_TILE_DEG)
        row_off, col_off = grid_offset(wfp.west, wfp.north, fp.west, fp.north)
        size = round(S2_TILE_DEG / PIXEL_DEG)
        rows.append({"s2_tile": tile, "s2_uri": _expand(s2_template, tile), "wc_tile": wc, "wc_uri": _expand(wc_template, wc),
                     "west": fp.west, "south": fp.south, "east": fp.east, "north": fp.north, "width": size, "height": size,
                     "wc_row_off": row_off, "wc_col_off": col_off})
    return pl.DataFrame(rows, schema=CATALOG_SCHEMA)


def tile_manifest(index: pl.DataFrame, entry: dict, rel_dir: str) -> pl.DataFrame:
    """A tile's real_patches manifest from the release index: windows and bounds from the names."""
    lat, lon = parse_tile_id(entry["s2_tile"])
    t = from_origin(lon, lat + S2_TILE_DEG, PIXEL_DEG, PIXEL_DEG)  # the S2 tile's grid, as rasterio reads it
    rows = []
    for r in index.filter(pl.col("s2_tile") == entry["s2_tile"]).sort("row", "col").iter_rows(named=True):
        x, y = r["col"] * PATCH_SIZE, r["row"] * PATCH_SIZE
        west, north = t * (x, y)
        east, south = t * (x + PATCH_SIZE, y + PATCH_SIZE)
        rows.append({"patch_id": r["patch_id"], "s2_tile": r["s2_tile"], "wc_tile": entry["wc_tile"],
                     "row": r["row"], "col": r["col"], "x_off": x, "y_off": y, "width": PATCH_SIZE, "height": PATCH_SIZE,
                     "wc_x_off": entry["wc_col_off"] + x, "wc_y_off": entry["wc_row_off"] + y,
                     # the templates name whole WorldCover tiles: file pixels are tile-grid pixels
                     "wc_file_x_off": entry["wc_col_off"] + x, "wc_file_y_off": entry["wc_row_off"] + y,
                     "lon_min": west, "lat_min": south, "lon_max": east, "lat_max": north,
                     "s2_uri": entry["s2_uri"], "wc_uri": entry["wc_uri"],
                     "image_path": f"{rel_dir}/{rl.IMAGES}/{r['patch_id']}{rl.PNG}",
                     "mask_path": f"{rel_dir}/{rl.MASKS}/{r['patch_id']}{rl.PNG}",
                     "image_sha256": r["image_sha256"], "mask_sha256": r["mask_sha256"], "normalization": IMPORTED,
                     **{c: r[c] for c in CLASS_COUNT_COLUMNS}})
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def _link(src: Path, dst: Path) -> None:
    """The staged release file at a record's path: a hard link (no second copy on disk; files are
    only ever replaced, never rewritten in place), or a copy where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def read_index(root: Path) -> pl.DataFrame:
    path = root / layout.RELEASE_INDEX
    if not path.is_file():
        raise ReleaseImportError(f"no imported release at {path}: run `aras import DIR` first")
    return pl.read_parquet(path)


def materialize_release_tile(root: Path, entry: dict) -> pl.DataFrame:
    """patches/<tile>/ from the staged release: the files copied, the manifest rebuilt; swapped in whole."""
    tile = entry["s2_tile"]
    index = read_index(root)
    rel_dir = layout.patches_dir(tile).as_posix()
    manifest = tile_manifest(index, entry, rel_dir)
    if manifest.is_empty():
        raise ReleaseImportError(f"the imported release has no patches of tile {tile}")
    final = root / layout.patches_dir(tile)
    with staged_directory(final) as stage:
        for sub in (rl.IMAGES, rl.MASKS):
            (stage / sub).mkdir()
        for r in index.filter(pl.col("s2_tile") == tile).iter_rows(named=True):
            _link(root / r["image_path"], stage / rl.IMAGES / f"{r['patch_id']}{rl.PNG}")
            _link(root / r["mask_path"], stage / rl.MASKS / f"{r['patch_id']}{rl.PNG}")
        write_parquet_atomic(manifest, stage / layout.MANIFEST)
        write_parquet_atomic(pl.DataFrame(schema=REJECTED_SCHEMA), stage / layout.REJECTED)
    return manifest


def release_splits(root: Path) -> pl.DataFrame:
    """The splits as the release's folders give them (block_id: the patch itself)."""
    index = read_index(root)
    return index.select("patch_id", "s2_tile", pl.col("patch_id").alias("block_id"), "split").sort("patch_id")


def synthetic_manifest(rows: pl.DataFrame) -> pl.DataFrame:
    """Synthetic-image manifest rows of imported images: no seed, no generator run (lineage says so)."""
    from aras_assets.generation.manifest import SYNTHETIC_SCHEMA

    return rows.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("seed"), pl.lit(None, dtype=pl.Float64).alias("truncation_psi"),
        pl.lit(IMPORTED).alias("model_name"), pl.lit(None, dtype=pl.String).alias("model_version"),
        pl.lit(None, dtype=pl.String).alias("mlflow_run_id"), pl.lit(0, dtype=pl.Int32).alias("variant"),
        pl.col("index").alias("batch_start"), pl.lit(1, dtype=pl.Int32).alias("batch_size"),
        pl.lit(None, dtype=pl.String).alias("device"), pl.lit(None, dtype=pl.String).alias("precision"),
        pl.lit(None, dtype=pl.Int32).alias("resolution"), pl.lit(None, dtype=pl.String).alias("dagster_run_id"),
        pl.lit(IMPORTED).alias("generator_code"),
    ).select([pl.col(c).cast(t) for c, t in SYNTHETIC_SCHEMA.items()])


def import_release(source: Path, root: Path, s2_template: str, wc_template: str,
                   say: Callable[[str], None] = lambda _: None) -> ReleaseImport:
    """Check, stage and rebuild every record of a release folder under the data root."""
    found, files = read_release(source, say)
    root = Path(root)
    with staged_directory(root / layout.RELEASE) as stage, rl.ReleaseFolder(Path(source)) as folder:
        for inner, sha in files.items():
            data = folder.read(inner)
            if hashlib.sha256(data).hexdigest() != sha:
                raise ReleaseImportError(f"{folder.where(inner)} changed while it was imported; import again")
            path = stage / inner
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        write_parquet_atomic(found.index, stage / layout.RELEASE_INDEX.name)
        write_parquet_atomic(found.synthetic, stage / SYNTH_INDEX.name)
        write_parquet_atomic(found.captions, stage / CAPTIONS_INDEX.name)
    catalog = release_catalog(found.index, s2_template, wc_template)
    write_parquet_atomic(catalog, root / layout.CATALOG)
    for entry in catalog.iter_rows(named=True):
        materialize_release_tile(root, entry)
    write_parquet_atomic(release_splits(root), root / layout.SPLITS)
    _write_synthetic(root, found.synthetic)
    _write_captions(root, found.captions)
    say(f"imported {found.index.height} patches of {len(found.tiles)} tiles (splits version "
        f"{splits_version(release_splits(root))}), {found.synthetic.height} synthetic images, "
        f"{found.captions.height} captions into {root}")
    return found


def _write_synthetic(root: Path, synthetic: pl.DataFrame) -> None:
    for (origin, shard), rows in synthetic.group_by("origin", "shard", maintain_order=True):
        final = root / layout.synthetic_dir(origin, shard)
        with staged_directory(final) as stage:
            for sub in (rl.IMAGES, rl.MASKS):
                (stage / sub).mkdir()
            src = root / layout.RELEASE / rl.SYNTH
            for r in rows.iter_rows(named=True):
                _link(src / rl.IMAGES / r["source_name"], stage / rl.IMAGES / f"{r['image_id']}{rl.PNG}")
                _link(src / rl.MASKS / r["source_name"], stage / rl.MASKS / f"{r['image_id']}{rl.PNG}")
            write_parquet_atomic(synthetic_manifest(rows.sort("index")), stage / layout.MANIFEST)


def _write_captions(root: Path, captions: pl.DataFrame) -> None:
    """Imported captions as a finished part of each partition's caption stage: a re-run of
    <origin>_captions keeps them where its plan has the same pair and configuration, and
    otherwise captions the images anew beside them."""
    if captions.is_empty():
        return
    from aras_assets.operations.lineage.ids import parse_image_id

    partition = [parse_image_id(i).partition for i in captions["image_id"]]
    frame = captions.with_columns(pl.Series("_partition", partition, dtype=pl.String))
    for (origin, part), rows in frame.group_by("origin", "_partition", maintain_order=True):
        folder = root / layout.captions_dir(origin, part)
        rows = rows.drop("_partition").sort("caption_id")
        write_parquet_atomic(rows, folder / layout.PARTS / "part-imported.parquet")
        write_parquet_atomic(rows, folder / layout.CAPTIONS)
