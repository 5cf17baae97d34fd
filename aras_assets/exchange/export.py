"""Export a data root in the ARAS400k release layout: a zip per split (train, val, test) of
`images/` and RGB `masks/` named `{tile}_{row:03d}_{col:03d}.png` with class-percentage and
caption CSVs, `synth.zip` of the synthetic images and their masks, the MD5 table, STAC,
Croissant and a dataset card. Built in a staging folder and swapped in whole; exporting the
same data twice gives byte-identical files."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from aras_assets import layout
from aras_assets.exchange import release as rl
from aras_assets.exchange.checksums import md5_table, write_md5_files
from aras_assets.landcover import NUM_CLASSES, rgb_to_mask
from aras_assets.operations.lineage.manifests import CAPTION_COLUMNS, PATCH_COLUMNS
from resources.storage import contained, read_parquet_checked, staged_directory

PCT_COLUMNS = [f"pct_{name}" for name in rl.CLASS_LABELS]
PATCH_CSV_COLUMNS = ("image_name", "patch_id", "split", *[c for c in PATCH_COLUMNS if c not in
                                                             ("patch_id", "image_path", "mask_path")],
                     "image", "mask")
SYNTH_CSV_COLUMNS = ("image_name", "image_id", "origin", "conditioning_patch_id", "seed", "model_name",
                     "model_version", "image", "mask", "content_sha256")


@dataclass
class ExportSummary:
    folder: Path
    counts: dict[str, int]  # images per folder (train, val, test, synth)
    origins: dict[str, int]  # images per origin (real, uncond, cond)
    captions: int
    class_shares: dict[str, float]  # share of all real mask pixels per class, percent
    zips: dict[str, str] = field(default_factory=dict)  # zip name -> MD5
    stac_items: int = 0


def _pct_frame(names: list[str], counts: np.ndarray) -> pl.DataFrame:
    totals = counts.sum(axis=1, keepdims=True).clip(min=1)
    pct = np.round(counts / totals * 100, 4)
    return pl.DataFrame({"image_name": names, **{c: pct[:, k] for k, c in enumerate(PCT_COLUMNS)}})


def _csv(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_csv(buf)
    return buf.getvalue()


def read_real(root: Path) -> pl.DataFrame:
    """Every real patch that has a split, with its manifest columns and split, by patch id."""
    manifests = sorted(root.glob(layout.PATCH_MANIFESTS))
    if not manifests:
        raise rl.ReleaseError(f"no patches under {root}: materialize real_patches first")
    splits_path = root / layout.SPLITS
    if not splits_path.is_file():
        raise rl.ReleaseError(f"no splits at {splits_path}: materialize splits first")
    patches = pl.concat([read_parquet_checked(p) for p in manifests], how="diagonal_relaxed")
    splits = read_parquet_checked(splits_path, ["patch_id", "split"])
    return patches.join(splits, on="patch_id", how="inner").sort("patch_id")


def read_synthetic(root: Path) -> pl.DataFrame:
    """Synthetic images that have a mask: conditional ones their conditioning mask, unconditional
    ones the labeler's (or the mask they were imported with)."""
    frames = [read_parquet_checked(p) for p in sorted(root.glob(layout.SYNTHETIC_MANIFESTS))]
    if not frames:
        return pl.DataFrame(schema={c: pl.String for c in ("image_id", "origin", "image_path", "mask_path")})
    images = pl.concat(frames, how="diagonal_relaxed")
    labels = [read_parquet_checked(p, ["image_id", "mask_path"])
              for p in sorted(root.glob(layout.label_manifests("uncond_labels")))]
    if labels:
        labelled = pl.concat(labels).rename({"mask_path": "label_path"})
        images = images.join(labelled, on="image_id", how="left").with_columns(
            pl.coalesce("label_path", "mask_path").alias("mask_path")).drop("label_path")
    return images.filter(pl.col("mask_path").is_not_null()).sort("image_id")


def read_captions(root: Path) -> pl.DataFrame:
    """Every caption of the data root with all its record's columns, by caption id."""
    files = sorted(root.glob(layout.CAPTION_FILES))
    if not files:
        return pl.DataFrame(schema=dict.fromkeys(CAPTION_COLUMNS, pl.String))
    return pl.concat([read_parquet_checked(p) for p in files], how="diagonal_relaxed").sort("caption_id")


def caption_csv(captions: pl.DataFrame) -> pl.DataFrame:
    """Captions shaped like the release's captioner outputs (image file, method, model, caption),
    then the rest of each caption's record (ids, index, backend, prompt hash, sampling, seed)."""
    head = [(pl.col("image_id") + rl.PNG).alias("image_name"), pl.col("mode").alias("method"), pl.col("model"),
            pl.col("text").alias("caption")]
    rest = [c for c in captions.columns if c not in ("image_id", "origin", "mode", "model", "text")]
    return captions.select(*head, *rest)


def _mask_counts(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        classes = rgb_to_mask(np.asarray(im.convert("RGB")), str(path))
    return np.bincount(classes.ravel(), minlength=NUM_CLASSES)


def write_release(root: Path, out: Path,
                  say: Callable[[str], None] = lambda _: None) -> tuple[ExportSummary, dict[str, str]]:
    """The release layout (zips, CSVs) of the data root in `out` (an empty folder), and the MD5 of each file."""
    real = read_real(root)
    synth = read_synthetic(root)
    captions = read_captions(root)
    px_cols = [c for c in real.columns if c.startswith("px_")]
    counts: dict[str, int] = {}
    zips: list[str] = []
    for split in rl.SPLITS:
        rows = real.filter(pl.col("split") == split)
        counts[split] = rows.height
        entries: list[tuple[str, Path | bytes]] = []
        for pid, image, mask in rows.select("patch_id", "image_path", "mask_path").iter_rows():
            entries.append((f"{split}/{rl.IMAGES}/{pid}{rl.PNG}", contained(root, image, pid)))
            entries.append((f"{split}/{rl.MASKS}/{pid}{rl.PNG}", contained(root, mask, pid)))
        names = [f"{pid}{rl.PNG}" for pid in rows["patch_id"]]
        pct = _pct_frame(names, rows.select(px_cols).to_numpy().reshape(len(names), len(px_cols)))
        entries.append((f"{split}/{rl.CLASS_CSV}", _csv(pct)))
        split_captions = captions.filter(pl.col("image_id").is_in(rows["patch_id"]))
        entries.append((f"{split}/{rl.CAPTION_CSV}", _csv(caption_csv(split_captions))))
        rl.write_zip(out / rl.zip_name(split), entries)
        zips.append(rl.zip_name(split))
        say(f"{rl.zip_name(split)}: {rows.height} patches")
    entries = []
    synth_counts = []
    for image_id, image, mask in synth.select("image_id", "image_path", "mask_path").iter_rows():
        mask_file = contained(root, mask, image_id)
        entries.append((f"{rl.SYNTH}/{rl.IMAGES}/{image_id}{rl.PNG}", contained(root, image, image_id)))
        entries.append((f"{rl.SYNTH}/{rl.MASKS}/{image_id}{rl.PNG}", mask_file))
        synth_counts.append(_mask_counts(mask_file))
    synth_names = [f"{i}{rl.PNG}" for i in synth["image_id"]]
    pct = _pct_frame(synth_names, np.array(synth_counts).reshape(len(synth_names), NUM_CLASSES))
    entries.append((f"{rl.SYNTH}/{rl.CLASS_CSV}", _csv(pct)))
    entries.append((f"{rl.SYNTH}/{rl.CAPTION_CSV}",
                    _csv(caption_csv(captions.filter(pl.col("image_id").is_in(synth["image_id"]))))))
    synth_table = synth_rows(synth)
    entries.append((f"{rl.SYNTH}/{rl.SYNTH_CSV}", _csv(synth_table)))
    rl.write_zip(out / rl.zip_name(rl.SYNTH), entries)
    zips.append(rl.zip_name(rl.SYNTH))
    counts[rl.SYNTH] = synth.height
    say(f"{rl.zip_name(rl.SYNTH)}: {synth.height} synthetic images")

    # Top-level tables, read by Croissant and by people.
    patch_table = patch_rows(real)
    (out / rl.PATCHES_CSV).write_bytes(_csv(patch_table))
    (out / rl.SYNTHETIC_CSV).write_bytes(_csv(synth_table))
    split_of = dict(real.select("patch_id", "split").iter_rows())
    cap = captions.with_columns(pl.col("image_id").replace_strict(split_of, default=rl.SYNTH).alias("folder"))
    (out / rl.CAPTIONS_CSV).write_bytes(_csv(cap))
    digests = md5_table(out, [*zips, rl.PATCHES_CSV, rl.SYNTHETIC_CSV, rl.CAPTIONS_CSV])

    origin_counts = {layout.REAL: real.height}
    for origin in layout.SYNTHETIC_ORIGINS:
        origin_counts[origin] = synth.filter(pl.col("origin") == origin).height if synth.height else 0
    totals = real.select(px_cols).sum().row(0) if real.height else (0,) * len(px_cols)
    whole = max(sum(totals), 1)
    shares = {name: round(100 * v / whole, 2) for name, v in zip(rl.CLASS_LABELS, totals, strict=True)}
    return ExportSummary(out, counts, origin_counts, captions.height, shares, {z: digests[z] for z in zips}), digests


def patch_rows(real: pl.DataFrame) -> pl.DataFrame:
    return real.with_columns(
        (pl.col("patch_id") + rl.PNG).alias("image_name"),
        (pl.col("split") + f"/{rl.IMAGES}/" + pl.col("patch_id") + rl.PNG).alias("image"),
        (pl.col("split") + f"/{rl.MASKS}/" + pl.col("patch_id") + rl.PNG).alias("mask"),
    ).select(PATCH_CSV_COLUMNS)


def synth_rows(synth: pl.DataFrame) -> pl.DataFrame:
    frame = synth
    for column in ("conditioning_patch_id", "model_name", "model_version", "content_sha256"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    if "seed" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("seed"))
    return frame.with_columns(
        (pl.col("image_id") + rl.PNG).alias("image_name"),
        (pl.lit(f"{rl.SYNTH}/{rl.IMAGES}/") + pl.col("image_id") + rl.PNG).alias("image"),
        (pl.lit(f"{rl.SYNTH}/{rl.MASKS}/") + pl.col("image_id") + rl.PNG).alias("mask"),
    ).select(SYNTH_CSV_COLUMNS)


def check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise rl.ReleaseError(f"export target {out} exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise rl.ReleaseError(f"export target {out} exists and is not empty; choose an empty folder or pass --overwrite")


def export_dataset(root: Path, out: Path, overwrite: bool = False, stac_json_items: bool = True,
                   say: Callable[[str], None] = lambda _: None) -> ExportSummary:
    """The whole export: release layout, MD5 table, STAC, Croissant and dataset card, swapped in at `out`."""
    from aras_assets.exchange.card import write_card
    from aras_assets.exchange.croissant import write_croissant
    from aras_assets.exchange.stac import write_stac

    root, out = Path(root), Path(out)
    check_target(out, overwrite)
    with staged_directory(out) as stage:
        summary, digests = write_release(root, stage, say)
        summary.stac_items = write_stac(stage, root, json_items=stac_json_items)
        write_croissant(stage, digests)
        digests = {**digests, **md5_table(stage, [rl.CROISSANT])}
        write_md5_files(stage, digests)
        write_card(stage, root, summary)
        for leftover in stage.glob(".*"):  # nothing hidden travels with an export
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    summary.folder = out
    say(f"export -> {out}: {json.dumps(summary.counts)}")
    return summary
