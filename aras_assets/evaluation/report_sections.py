"""What the report holds, read from the files the stages wrote: Tables 1 and 2 (captions), the
FID table, the segmentation tables per architecture, Tables 3 and 4 (the ablation) with the
gain plot, the feature projections, sample grids and caption examples. A study that has not
run yet is a line saying which asset to materialize, not a failure."""

from __future__ import annotations

import json
from collections.abc import Mapping

import polars as pl

from aras_assets import layout
from aras_assets.captions.evaluation import redundancy
from aras_assets.evaluation.ablation import TABLE3_HEADS, TABLE4_HEADS, table_markdown, table_rows
from aras_assets.evaluation.paper import PAPER_TABLE1, TABLE1_NAMES
from aras_assets.evaluation.report import Figure, Section, Table, beside, number
from aras_assets.generation.data import resized_image
from aras_assets.layout import COND, REAL, UNCOND
from aras_assets.previews import picture_rows
from aras_assets.segmentation.metrics import SegmentationScores
from aras_assets.sources.records import read_training_data, synthetic_manifests
from resources.storage import StorageResource, read_parquet_checked

GRID = 8  # images per sample row
THUMB = 128


def _missing(asset: str) -> str:
    return f"Not computed yet: materialize {asset}."


def _captions(storage: StorageResource) -> pl.DataFrame | None:
    paths = sorted(storage.root_path.glob(layout.CAPTION_FILES))
    return pl.concat([read_parquet_checked(p, columns=["image_id", "origin", "model", "mode", "text"]) for p in paths]) \
        if paths else None


def caption_tables(storage: StorageResource) -> Section:
    section = Section("Captions (Tables 1 and 2)")
    captions = _captions(storage)
    if captions is None or not storage.path(layout.CAPTION_TABLE2).exists():
        section.text.append(_missing("the caption assets and caption_eval"))
        return section
    table2 = read_parquet_checked(storage.path(layout.CAPTION_TABLE2))
    captions = captions.with_columns(
        pl.when(pl.col("origin") == REAL).then(pl.lit("real")).otherwise(pl.lit("synthetic")).alias("subset"))
    rows = []
    for key in PAPER_TABLE1:
        frame = captions if key == "all" else captions.filter(pl.col("subset") == key)
        if frame.is_empty():
            continue
        clip = table2.filter((pl.col("subset") == key) & pl.col("clipscore").is_not_null())
        clipscore = float((clip["clipscore"] * clip["captions"]).sum() / clip["captions"].sum()) if clip.height else None
        rows.append((key, (frame["image_id"].n_unique(), frame.height, 100 * redundancy(frame["text"]), clipscore),
                     PAPER_TABLE1[key]))
    cells = []
    for key, ours, paper in rows:
        cells.append((TABLE1_NAMES[key], "ours", *(number(v) for v in ours)))
        cells.append(("", "paper", *(number(v) for v in paper)))
        cells.append(("", "difference", "-", "-", beside(ours[2], paper[2])[2], beside(ours[3], paper[3])[2]))
    section.tables.append(("Table 1: volume, redundancy (%) and CLIPScore",
                           Table(("Dataset", "", "Images", "Captions", "Redundancy", "CLIPScore"), tuple(cells))))
    t2 = []
    for r in table2.iter_rows(named=True):
        red = beside(r["redundancy_pct"], r["paper_redundancy_pct"])
        clip = beside(r["clipscore"], r["paper_clipscore"])
        t2.append((r["subset"], r["model"], r["mode"], number(r["captions"]), number(r["unique"]), number(r["paper_unique"]),
                   *red, *clip))
    section.tables.append(("Table 2: per (model, method); CLIPScore '-' without local CLIP weights",
                           Table(("Subset", "Model", "Method", "Captions", "Unique", "Paper unique", "Redundancy",
                                  "Paper", "Diff.", "CLIPScore", "Paper", "Diff."), tuple(t2))))
    examples = captions.group_by("origin", "mode", maintain_order=True).first().sort("origin", "mode")
    section.tables.append(("Caption examples, one per origin and method",
                           Table(("Origin", "Method", "Model", "Image", "Caption"),
                                 tuple((r["origin"], r["mode"], r["model"], r["image_id"], r["text"])
                                       for r in examples.iter_rows(named=True)))))
    return section


def fid_section(storage: StorageResource) -> Section:
    section = Section("Image quality (FID)")
    path = storage.path(layout.FID_REPORT)
    if not path.exists():
        section.text.append(_missing("gan_fid"))
        return section
    rows = json.loads(path.read_text())
    section.text.append("Encoder-space FID is on another scale than the paper's Inception FID (16 unconditional, "
                        "72 conditional): the paper's figure and a difference appear only beside Inception rows.")
    cells = tuple((r["set"], r["features"], number(r["real_images"]), number(r["synthetic_images"]),
                   *beside(r["fid"], r.get("paper_fid (Inception)"))) for r in rows)
    section.tables.append(("FID against the training patches",
                           Table(("Set", "Features", "Real images", "Synthetic images", "FID", "Paper", "Diff."), cells)))
    return section


def segmentation_section(storage: StorageResource, results: Mapping[tuple[str, str], SegmentationScores]) -> Section:
    section = Section("Segmentation (Tables 3 and 4)")
    path = storage.path(layout.SEGMENTATION_TABLES)
    if path.exists():
        text = path.read_text()
        for caption, block in zip(("Real data, per architecture: macro scores (%)", "Real data: per-class F1 (%)"),
                                  text.split("## Table 4")[:2], strict=False):
            section.tables.append((caption, Table.from_markdown(block)))
    else:
        section.text.append(_missing("segmentation_eval"))
    if not results:
        section.text.append(_missing("ablation partitions, then ablation_tables"))
        return section
    section.tables.append(("Table 3: the augmentation ablation, macro scores on the real test split (%)",
                           Table.from_markdown(table_markdown(table_rows(results, per_class=False), TABLE3_HEADS))))
    section.tables.append(("Table 4: the augmentation ablation, per-class F1 (%)",
                           Table.from_markdown(table_markdown(table_rows(results, per_class=True), TABLE4_HEADS))))
    gain = storage.path(layout.ABLATION_GAIN_PLOT)
    if gain.exists():
        section.figures.append(Figure("gain.png", "Per-class F1 gain over real against class frequency", gain.read_bytes()))
    return section


def projection_section(storage: StorageResource) -> Section:
    section = Section("Real and synthetic images in feature space (Figure 4)")
    path = storage.path(layout.PROJECTION_SILHOUETTES)
    if not path.exists():
        section.text.append(_missing("feature_projection"))
        return section
    scores = json.loads(path.read_text())
    section.text.append("Silhouette near 0: the sets overlap (the paper's finding); near 1: they lie apart.")
    pairs = list(next(iter(scores.values())))
    section.tables.append(("Silhouette scores", Table(("Space", *pairs), tuple(
        (space, *(number(values.get(p), 4) for p in pairs)) for space, values in scores.items()))))
    for name in ("tsne", "umap"):
        png = storage.path(layout.PROJECTION) / f"{name}.png"
        if png.exists():
            section.figures.append(Figure(f"{name}.png", f"{name.upper()} of real and synthetic images", png.read_bytes()))
    return section


def samples_section(storage: StorageResource, resolution: int = THUMB) -> Section:
    section = Section("Samples")
    manifest, table, _ = read_training_data(storage)
    real = manifest.join(table.filter(pl.col("split") == "train").select("patch_id"), on="patch_id").sort("patch_id").head(GRID)
    if real.height:
        section.figures.append(Figure("real.png", "Real training patches", picture_rows(
            [[resized_image(storage.inside(p, "row"), resolution) for p in real["image_path"]]],
            thumb=THUMB, labels=real["patch_id"].to_list())))
    uncond = synthetic_manifests(storage, UNCOND).head(GRID)
    if uncond.height:
        section.figures.append(Figure("uncond.png", "Unconditional synthetic images", picture_rows(
            [[resized_image(storage.inside(p, "row"), resolution) for p in uncond["image_path"]]],
            thumb=THUMB, labels=uncond["image_id"].to_list())))
    cond = synthetic_manifests(storage, COND).head(GRID)
    if cond.height:
        section.figures.append(Figure("cond.png", "Conditional synthetic images (top) and their masks", picture_rows(
            [[resized_image(storage.inside(p, "row"), resolution) for p in cond["image_path"]],
             [resized_image(storage.inside(p, "row"), resolution) for p in cond["mask_path"]]],
            thumb=THUMB, labels=cond["image_id"].to_list(), legend=True)))
    if not section.figures:
        section.text.append(_missing("real_patches and the generation assets"))
    return section


def build_sections(storage: StorageResource,
                   results: Mapping[tuple[str, str], SegmentationScores]) -> tuple[str, list[Section]]:
    title = "ARAS evaluation beside the ARAS400k paper"
    return title, [segmentation_section(storage, results), fid_section(storage), caption_tables(storage),
                   projection_section(storage), samples_section(storage)]
