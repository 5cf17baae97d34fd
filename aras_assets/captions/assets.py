"""Caption assets per image origin: compositions and captions of real patches (per s2_tile),
unconditional images (per gen_shard, from the labeler's masks) and conditional images (per
s2_tile, from their conditioning masks), and caption_eval over everything captioned."""

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from aras_assets import layout
from aras_assets.captions.captioning import OFFLINE_MODEL, CaptionError, CaptionJob, CaptionPair, caption_partition
from aras_assets.captions.clipscore import clip_scores
from aras_assets.captions.composition import SHARE_COLUMNS, compute_composition
from aras_assets.captions.evaluation import (
    PAPER_REDUNDANCY,
    PAPER_TABLE2,
    consistency_frame,
    malformed,
    redundancy_table,
    table2,
)
from aras_assets.captions.prompts import prompt_templates
from aras_assets.errors import BadInputError, step_errors
from aras_assets.landcover import CLASS_NAMES
from aras_assets.layout import COND, REAL, UNCOND
from aras_assets.partitions import gen_shard_partitions, s2_tile_partitions
from aras_assets.previews import markdown_table
from aras_assets.ranged import BACKFILL_POLICY, PartitionResult, over_partitions
from aras_assets.segmentation.data import read_mask
from aras_assets.settings import Settings, SettingsResource
from aras_assets.sources.records import read_tile_manifest
from resources import StorageResource
from resources.captioner import CaptionerResource, SamplingConfig
from resources.clip import ClipResource
from resources.storage import read_parquet_checked

# Each image origin gives, per partition, its images' masks (image_id, mask_path) and files
# (image_id, image_path, absolute); paths in manifests are relative to the data root.
MasksFor = Callable[[StorageResource, str], pl.DataFrame]
ImagesFor = Callable[[StorageResource, str], pl.DataFrame]


def _read(path: Path, columns: list[str], missing: str) -> pl.DataFrame:
    if not path.exists():
        raise CaptionError(missing)
    return read_parquet_checked(path, columns)


def real_masks(storage: StorageResource, tile: str) -> pl.DataFrame:
    return read_tile_manifest(storage, tile, ["patch_id", "mask_path"]).rename({"patch_id": "image_id"})


def real_images(storage: StorageResource, tile: str) -> pl.DataFrame:
    return read_tile_manifest(storage, tile, ["patch_id", "image_path"]).rename({"patch_id": "image_id"})


def uncond_masks(storage: StorageResource, shard: str) -> pl.DataFrame:
    """The labeler's pseudo-labels of the shard's images."""
    return _read(storage.path(layout.label_manifest("uncond_labels", shard)), ["image_id", "mask_path"],
                 f"shard {shard} has no labels: materialize uncond_labels[{shard}] first")


def synthetic_column(origin: str, column: str) -> ImagesFor:
    """image_id and `column` (image_path, or mask_path: a conditional image's label is its
    conditioning mask) of a partition's synthetic manifest."""
    def read(storage: StorageResource, partition: str) -> pl.DataFrame:
        return _read(storage.path(layout.synthetic_manifest(origin, partition)), ["image_id", column],
                     f"no {origin} images in {partition}: materialize {origin}_images[{partition}] first")
    return read


def compositions_asset(origin: str, masks_for: MasksFor, partitions_def: dg.PartitionsDefinition,
                       deps: list) -> dg.AssetsDefinition:
    @dg.asset(name=f"{origin}_compositions", group_name="captions", code_version="1", kinds={"parquet"},
              partitions_def=partitions_def, deps=deps, backfill_policy=BACKFILL_POLICY,
              description=f"Class percentages and spatial layout (where each class lies, fragmentation, borders, "
                          f"river or lake) of every {origin} image of a partition, from its mask.")
    def _compositions(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        def one(partition: str) -> PartitionResult:
            with step_errors(context):
                masks = masks_for(storage, partition)
                rows = []
                for image_id, mask_path in masks.select("image_id", "mask_path").iter_rows():
                    mask = read_mask(storage.inside(mask_path, f"{origin} {partition} image {image_id}"))
                    comp = compute_composition(mask)
                    rows.append({"image_id": image_id, "origin": origin, "mask_path": mask_path,
                                 **dict(zip(SHARE_COLUMNS, comp.percents, strict=True)), "layout_json": comp.to_json(),
                                 "dominant": comp.dominant.name})
                frame = pl.DataFrame(rows, schema={"image_id": pl.String, "origin": pl.String, "mask_path": pl.String,
                                                   **{c: pl.Float64 for c in SHARE_COLUMNS}, "layout_json": pl.String,
                                                   "dominant": pl.String})
                out = storage.path(layout.compositions_file(origin, partition))
                storage.writable_dir(out.parent)
                storage.write_parquet(frame, out)
            return PartitionResult({
                "images": frame.height, "path": dg.MetadataValue.path(str(out)),
                "dominant_classes": dg.MetadataValue.json(dict(frame["dominant"].value_counts().iter_rows())),
                "mean_percent": dg.MetadataValue.json({n: round(float(frame[c].mean() or 0), 2)
                                                       for n, c in zip(CLASS_NAMES, SHARE_COLUMNS, strict=True)}),
            })

        return over_partitions(context, one)

    return _compositions


def caption_plan(s: Settings, captioner: CaptionerResource) -> tuple[CaptionPair, ...]:
    """The pairs of the settings' caption plan whose methods caption_modes keeps, each with its
    backend (the pair's model's in caption_backends, else the captioner resource's), what that
    backend is asked for (the resource's `model` when set, else the model's caption_models entry),
    its sampling (per pair, else per method) and its server (caption_endpoints, else the resource's)."""
    pairs = []
    for name in s.caption_plan:
        mode, model = name.split(":", 1)
        if mode not in s.caption_modes:
            continue
        backend = s.caption_backends.get(model, captioner.backend)
        served = OFFLINE_MODEL if backend == "offline" else captioner.model or s.caption_models[model]
        sampling = SamplingConfig(n=s.captions_per_image, seed=s.caption_seed, max_tokens=s.caption_max_tokens,
                                  temperature=s.caption_temperature.get(name, s.caption_temperature.get(mode)),
                                  top_p=s.caption_top_p.get(name, s.caption_top_p.get(mode)))
        pairs.append(CaptionPair(mode, model, backend, served, sampling, s.caption_endpoints.get(model, "")))
    return tuple(pairs)


def caption_job(settings: SettingsResource, captioner: CaptionerResource) -> CaptionJob:
    s = settings.get()
    return CaptionJob(caption_plan(s, captioner), prompt_templates(s.caption_prompts, s.caption_percent_format),
                      lambda pair: captioner.client(pair.backend, pair.served_model, pair.endpoint or None))


def captions_asset(origin: str, images_for: ImagesFor, compositions: dg.AssetsDefinition,
                   partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name=f"{origin}_captions", group_name="captions", code_version="1", kinds={"parquet"},
              partitions_def=partitions_def, deps=[compositions], backfill_policy=BACKFILL_POLICY,
              description=f"Captions of every {origin} image, one per (method, model) pair of the caption plan (the "
                          "paper's five by default), from the configured captioner (offline by default). Resumable: a "
                          "re-run captions only what is not yet done for the same pair and configuration.")
    def _captions(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
                  captioner: CaptionerResource) -> dg.MaterializeResult:
        s = settings.get()
        with step_errors(context, s.retry_window_s):
            job = caption_job(settings, captioner)

        def one(partition: str) -> PartitionResult:
            with step_errors(context, s.retry_window_s):
                comp_path = storage.path(layout.compositions_file(origin, partition))
                if not comp_path.exists():
                    raise CaptionError(f"no compositions for {origin} {partition}: materialize "
                                       f"{origin}_compositions[{partition}] first")
                listed = images_for(storage, partition)
                paths = [str(storage.inside(p, f"{origin} {partition} image {i}"))  # no row may point outside the root
                         for i, p in listed.select("image_id", "image_path").iter_rows()]
                images = listed.select("image_id").with_columns(pl.Series("image_path", paths, dtype=pl.String)) \
                    .join(read_parquet_checked(comp_path).drop("origin", "mask_path"), on="image_id", how="left")
                folder = storage.writable_dir(layout.captions_dir(origin, partition))

                def progress(done: int, total: int) -> None:
                    context.log.info(f"{origin} {partition}: {done}/{total} images captioned")

                captions, new = caption_partition(images, origin, job, folder, s.caption_batch_size, progress)
            context.log.info(f"{origin} {partition}: {captions.height} captions, {new} images captioned now, "
                             f"{images.height - new} were done before")
            sample = captions.group_by("mode", "model", maintain_order=True).head(1).select(
                "image_id", "mode", "model", "text").to_dicts()
            return PartitionResult({
                "captions": captions.height, "images": images.height, "captioned_now": new,
                "pairs": ", ".join(f"{p.name} ({p.backend} {p.served_model})" for p in job.pairs),
                "unique_captions": captions["text"].n_unique(),
                "path": dg.MetadataValue.path(str(folder / layout.CAPTIONS)),
                "examples": dg.MetadataValue.md(markdown_table(sample)),
            })

        return over_partitions(context, one)

    return _captions


real_compositions = compositions_asset(REAL, real_masks, s2_tile_partitions, ["real_patches"])
real_captions = captions_asset(REAL, real_images, real_compositions, s2_tile_partitions)
uncond_compositions = compositions_asset(UNCOND, uncond_masks, gen_shard_partitions, ["uncond_labels"])
uncond_captions = captions_asset(UNCOND, synthetic_column(UNCOND, "image_path"), uncond_compositions, gen_shard_partitions)
cond_compositions = compositions_asset(COND, synthetic_column(COND, "mask_path"), s2_tile_partitions, ["cond_images"])
cond_captions = captions_asset(COND, synthetic_column(COND, "image_path"), cond_compositions, s2_tile_partitions)
CAPTION_ASSETS = [real_captions, uncond_captions, cond_captions]


@dg.asset(group_name="evaluation", code_version="1", kinds={"parquet"},
          deps=[dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in CAPTION_ASSETS])
def caption_eval(context: dg.AssetExecutionContext, storage: StorageResource, clip: ClipResource) -> dg.MaterializeResult:
    """The paper's Table 2 for our captions (per subset and (model, method) pair: unique,
    redundancy, CLIPScore when local CLIP weights are set, the paper's figures beside), redundancy
    and caption-mask consistency per origin and pair, with contradicting and malformed captions listed."""
    paths = sorted(storage.root_path.glob(layout.CAPTION_FILES))
    with step_errors(context):
        if not paths:
            raise BadInputError("no captions yet: materialize real_captions (or uncond_ / cond_captions) first")
    captions = pl.concat([read_parquet_checked(p) for p in paths])
    compositions = pl.concat([read_parquet_checked(p) for p in sorted(storage.root_path.glob(layout.COMPOSITION_FILES))])
    table = redundancy_table(captions, ("origin", "model", "mode"))
    paper = [PAPER_REDUNDANCY["overall"] if (o, m) == ("all", "all") else
             PAPER_TABLE2.get(("real" if o == "real" else "synthetic", model, m), (None, None, None))[1]
             for o, model, m in table.select("origin", "model", "mode").iter_rows()]
    table = table.with_columns(pl.Series("paper_redundancy_pct", paper, dtype=pl.Float64))
    consistency = consistency_frame(captions, compositions)
    broken = captions.filter(malformed(captions["text"]))
    by_pair = consistency.group_by("origin", "model", "mode").agg(
        pl.len().alias("captions"), pl.col("precision").mean(), pl.col("recall").mean(),
        pl.col("percent_error").mean().alias("mean_percent_error"),
        (pl.col("contradictions") != "").sum().alias("contradicting")).sort("origin", "model", "mode")
    contradicting = consistency.filter(pl.col("contradictions") != "").join(
        captions.select("caption_id", "text"), on="caption_id")
    scores = None
    if clip.configured:
        with step_errors(context):
            scores = captions_clipscore(clip, captions, storage)
    else:
        context.log.info("CLIPScore skipped: no local CLIP weights configured")
    paper_table = table2(captions, scores)
    storage.writable_dir(layout.CAPTION_EVAL)
    storage.write_parquet(table, storage.path(layout.CAPTION_REDUNDANCY))
    storage.write_parquet(paper_table, storage.path(layout.CAPTION_TABLE2))
    storage.write_parquet(consistency, storage.path(layout.CAPTION_CONSISTENCY))
    overall = table.filter((pl.col("origin") == "all") & (pl.col("mode") == "all")).row(0, named=True)
    metadata: dict[str, object] = {
        "captions": captions.height,
        "redundancy_pct": round(overall["redundancy_pct"], 3),
        "redundancy_norm_pct": round(overall["redundancy_norm_pct"], 3),
        "paper_redundancy_pct": PAPER_REDUNDANCY["overall"],
        "table2": dg.MetadataValue.md(markdown_table(_rounded(paper_table))),
        "redundancy": dg.MetadataValue.md(markdown_table(_rounded(table))),
        "consistency": dg.MetadataValue.md(markdown_table(_rounded(by_pair))),
        "contradicting_captions": contradicting.height,
        "malformed_captions": broken.height,  # doubled or stray punctuation and spaces
        "malformed_examples": dg.MetadataValue.md(markdown_table(broken.head(10).select("caption_id", "text").to_dicts())
                                                  if broken.height else "none"),
        "contradictions": dg.MetadataValue.md(markdown_table(contradicting.head(20).select(
            "caption_id", "text", "contradictions").to_dicts()) if contradicting.height else "none"),
    }
    if scores is None:
        metadata["clipscore"] = "not computed: no CLIP weights configured (set the clip resource's weights_path)"
    else:
        metadata["clipscore"] = round(float(np.mean(scores)), 3)
        metadata["clip_model"] = clip.model_name
        metadata["paper_clipscore"] = 29.66
    return dg.MaterializeResult(metadata=metadata)


def captions_clipscore(clip: ClipResource, captions: pl.DataFrame, storage: StorageResource) -> np.ndarray:
    """CLIPScore of every caption against its image, each image encoded once."""
    frames = [read_parquet_checked(p, columns=["patch_id", "image_path"]).rename({"patch_id": "image_id"})
              for p in sorted(storage.root_path.glob(layout.PATCH_MANIFESTS))]
    frames += [read_parquet_checked(p, columns=["image_id", "image_path"])
               for p in sorted(storage.root_path.glob(layout.SYNTHETIC_MANIFESTS))]
    paths = dict(pl.concat(frames).iter_rows()) if frames else {}
    image_ids = captions["image_id"].unique(maintain_order=True).to_list()
    lost = [i for i in image_ids if i not in paths]
    if lost:
        raise CaptionError(f"{len(lost)} captioned images have no image file on record (e.g. {lost[0]})")
    position = {image_id: k for k, image_id in enumerate(image_ids)}
    return clip_scores(clip.load(), [storage.inside(paths[i], i) for i in image_ids], captions["text"].to_list(),
                       [position[i] for i in captions["image_id"]], batch_size=clip.batch_size)


def _rounded(frame: pl.DataFrame) -> list[dict]:
    return [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in frame.to_dicts()]


ASSETS = [real_compositions, real_captions, uncond_compositions, uncond_captions, cond_compositions, cond_captions,
          caption_eval]
