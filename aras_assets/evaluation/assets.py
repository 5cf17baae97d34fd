"""Evaluation assets: feature_projection (the paper's Figure 4), ablation per (architecture,
training set) (Tables 3 and 4), ablation_tables, and the report beside the paper. Thin wiring:
the science is in projection, ablation and report."""


import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from aras_assets import layout
from aras_assets.deploy import GPU_OP_TAGS, GPU_POOL
from aras_assets.errors import BadInputError, step_errors
from aras_assets.evaluation.ablation import (
    SOURCE_ASSET,
    TABLE3_HEADS,
    TABLE4_HEADS,
    AblationError,
    TrainSet,
    class_frequency,
    class_gains,
    compose,
    gain_plot_png,
    plan,
    table_markdown,
    table_rows,
)
from aras_assets.evaluation.features import features_of, registered_encoder
from aras_assets.evaluation.projection import project, scatter_png
from aras_assets.evaluation.report import figure_files, render_html, render_markdown
from aras_assets.evaluation.report_sections import build_sections
from aras_assets.ids import PATCH_SIZE
from aras_assets.layout import COND, REAL, UNCOND
from aras_assets.mlflow_runs import RunOrigin, log_dataset, log_image, log_metrics, tracked_run
from aras_assets.partitions import ablation_partitions
from aras_assets.previews import markdown_image, markdown_table
from aras_assets.segmentation.data import PatchDataset, make_loader, split_records
from aras_assets.segmentation.metrics import ConfusionMatrix, SegmentationScores, as_percent, scores_from_confusion
from aras_assets.segmentation.models import ModelSpec, build_model, encoder_weights_path, load_model
from aras_assets.segmentation.training import evaluate, plan_resume, train, train_config
from aras_assets.settings import Settings, SettingsResource
from aras_assets.sources.records import read_splits, read_training_data, synthetic_manifests
from aras_assets.sources.splits import splits_version as version_of_splits
from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.storage import read_parquet_checked

ALL = dg.AllPartitionMapping()


def _sample(frame: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
    return frame if frame.height <= limit else frame.sample(n=limit, seed=seed).sort("image_id")


def projection_sets(storage: StorageResource, s: Settings) -> tuple[dict[str, pl.DataFrame], str]:
    """image_id and image_path of up to projection_images images per set, drawn with
    projection_seed, and the version of the splits the real ones come from."""
    manifest, table, splits_version = read_training_data(storage)
    real = split_records(manifest, table, "train").select(pl.col("patch_id").alias("image_id"), "image_path")
    sets = {REAL: real}
    for origin in (UNCOND, COND):
        found = synthetic_manifests(storage, origin)
        if found.height:
            sets[origin] = found.select("image_id", "image_path")
    if len(sets) < 2:
        raise BadInputError("the projection needs synthetic images beside the real ones: "
                            "materialize uncond_images or cond_images first")
    return {origin: _sample(frame, s.projection_images, s.projection_seed) for origin, frame in sets.items()}, splits_version


@dg.asset(group_name="evaluation", code_version="1", kinds={"pytorch", "mlflow", "parquet"}, pool=GPU_POOL,
          op_tags=GPU_OP_TAGS, deps=[dg.AssetDep("splits"), dg.AssetDep("real_patches", partition_mapping=ALL),
                                     dg.AssetDep("uncond_images", partition_mapping=ALL),
                                     dg.AssetDep("cond_images", partition_mapping=ALL),
                                     dg.AssetDep("segmentation_model", partition_mapping=ALL)])
def feature_projection(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
                       device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Real, unconditional and conditional images in the label model's feature space (its last
    encoder stage, average-pooled; every image at the generator's resolution, then 256 px):
    standardized, t-SNE and UMAP in 2-D, silhouettes of the sets overall and pairwise. Points
    to eval/projection/points.parquet, scatter plots to the metadata and an MLflow run."""
    s = settings.get()
    runtime = device.runtime(inference=True)
    client = mlflow.client()
    with step_errors(context, s.retry_window_s):
        sets, splits_version = projection_sets(storage, s)
        fn, ref = registered_encoder(client, mlflow.resolved_tracking_uri, s.label_model)
        features, labels, ids = [], [], []
        for origin, frame in sets.items():
            paths = [storage.inside(p, f"{origin} image {i}") for i, p in frame.iter_rows()]
            features.append(features_of(paths, fn, s.gan_resolution, runtime.torch_device, s.label_batch_size))
            labels += [origin] * frame.height
            ids += frame["image_id"].to_list()
            context.log.info(f"feature_projection: {frame.height} {origin} images through {ref}")
        result = project(np.concatenate(features), labels, s.projection_seed, s.silhouette_sample, s.projection_pca)
    points = pl.DataFrame({"image_id": ids, "set": labels, "tsne_x": result.tsne[:, 0], "tsne_y": result.tsne[:, 1],
                           "umap_x": result.umap[:, 0], "umap_y": result.umap[:, 1]})
    folder = storage.writable_dir(layout.PROJECTION)
    storage.write_parquet(points, storage.path(layout.PROJECTION_POINTS))
    plots = {name: scatter_png(coords, labels, f"{name.upper()} of segmentation-encoder features ({ref})")
             for name, coords in (("tsne", result.tsne), ("umap", result.umap))}
    for name, png in plots.items():
        storage.write_bytes(folder / f"{name}.png", png)
    storage.write_bytes(storage.path(layout.PROJECTION_SILHOUETTES), json.dumps(result.silhouette, indent=2).encode())
    silhouettes = [{"space": space, **{k: round(v, 4) for k, v in scores.items()}} for space, scores in result.silhouette.items()]
    origin = RunOrigin(context.run_id, context.asset_key.to_user_string(), splits_version)
    with tracked_run(client, mlflow.experiment_id(), None, "feature-projection", origin.run_tags(label_model=str(ref)),
                     {"images_per_set": s.projection_images, "seed": s.projection_seed, "label_model": str(ref),
                      **{f"{k}_images": v.height for k, v in sets.items()}}) as run_id:
        log_metrics(client, run_id, {f"silhouette_{space}_{pair.replace('~', '_vs_')}": v
                                     for space, scores in result.silhouette.items() for pair, v in scores.items()})
        with tempfile.TemporaryDirectory() as scratch:
            for name, png in plots.items():
                log_image(client, run_id, png, f"plots/{name}.png", Path(scratch))
            client.log_artifact(run_id, str(storage.path(layout.PROJECTION_POINTS)), "projection")
    return dg.MaterializeResult(metadata={
        **{f"{k}_images": v.height for k, v in sets.items()},
        "label_model": str(ref),
        "silhouette_umap": round(result.silhouette["umap"]["overall"], 4),
        "silhouettes": dg.MetadataValue.md(markdown_table(silhouettes)),
        "tsne": dg.MetadataValue.md(markdown_image(plots["tsne"], "t-SNE of real and synthetic images")),
        "umap": dg.MetadataValue.md(markdown_image(plots["umap"], "UMAP of real and synthetic images")),
        "points": dg.MetadataValue.path(str(storage.path(layout.PROJECTION_POINTS))),
        "mlflow_run": mlflow.run_url(run_id),
    })


def synthetic_training_records(storage: StorageResource, origin: str) -> pl.DataFrame:
    """image_id, image_path, mask_path of every synthetic image of an origin with its mask:
    unconditional images with their labeler masks, conditional ones with their conditioning masks."""
    images = synthetic_manifests(storage, origin)
    if images.is_empty():
        return pl.DataFrame(schema={"image_id": pl.String, "image_path": pl.String, "mask_path": pl.String})
    if origin == COND:
        return images.select("image_id", "image_path", "mask_path")
    labels = [read_parquet_checked(p, columns=["image_id", "mask_path"])
              for p in sorted(storage.root_path.glob(layout.label_manifests(SOURCE_ASSET[UNCOND])))]
    if not labels:
        raise AblationError(f"{origin} images have no masks yet: materialize {SOURCE_ASSET[origin]} first")
    return images.select("image_id", "image_path").join(pl.concat(labels), on="image_id", how="inner", maintain_order="left")


@dataclasses.dataclass(frozen=True)
class AblationJob:
    train_set: TrainSet
    arch: str
    splits_version: str
    train_data: PatchDataset
    val_data: PatchDataset
    test_data: PatchDataset
    folder: Path

    @property
    def data_version(self) -> str:
        return f"{self.splits_version}:{self.train_set.version}"


def prepare_ablation(storage: StorageResource, s: Settings, train_set: str, arch: str) -> AblationJob:
    manifest, table, splits_version = read_training_data(storage)
    real = split_records(manifest, table, "train")
    wanted = plan(train_set, s.ablation_uncond_multiple)
    synthetic = {origin: synthetic_training_records(storage, origin)
                 for origin, needed in ((UNCOND, wanted.uncond_per_real > 0), (COND, wanted.cond)) if needed}
    composed = compose(train_set, real, synthetic, s.ablation_uncond_multiple)
    root = storage.root_path
    return AblationJob(composed, arch, splits_version,
                       PatchDataset(root, composed.records, s.seg_augment, s.seg_seed, size=PATCH_SIZE),
                       PatchDataset(root, split_records(manifest, table, "val")),
                       PatchDataset(root, split_records(manifest, table, "test")),
                       storage.writable_dir(layout.ablation_model_dir(train_set, arch)))


def train_ablation(job: AblationJob, s: Settings, device: TorchDeviceResource, client: Any, run_id: str,
                   log: Callable[[str], None]) -> tuple[ConfusionMatrix, dict[str, float], int]:
    """The segmentation recipe with ablation_epochs on the training set; the best checkpoint by
    real validation F1, scored on the real test split."""
    spec = ModelSpec(job.arch, s.seg_encoders[job.arch])
    config = dataclasses.replace(train_config(s), epochs=s.ablation_epochs)
    resume = plan_resume(job.folder, spec, config, job.data_version, log=log)
    model = build_model(spec, encoder_weights_path(s.seg_encoder_weights, spec.encoder))

    def on_epoch(record: dict[str, float], _: SegmentationScores) -> None:
        log_metrics(client, run_id, {f"epoch/{k}": v for k, v in as_percent(record).items() if k != "epoch"},
                    step=int(record["epoch"]))

    result = train(model, spec, job.train_data, job.val_data, config, device.runtime(), job.folder, job.data_version,
                   resume, extra={"mlflow_run_id": run_id}, on_epoch=on_epoch, log=log)
    best, _, _ = load_model(result.best_path, spec)
    runtime = device.runtime(inference=True)
    matrix, _ = evaluate(runtime.prepare(best), make_loader(job.test_data, s.seg_eval_batch_size), runtime)
    return matrix, result.best_scores, result.best_epoch


@dg.asset(group_name="ablation", code_version="1", kinds={"pytorch", "mlflow"}, partitions_def=ablation_partitions,
          pool=GPU_POOL, op_tags=GPU_OP_TAGS,
          deps=[dg.AssetDep("splits"), dg.AssetDep("real_patches", partition_mapping=ALL),
                dg.AssetDep("uncond_labels", partition_mapping=ALL), dg.AssetDep("cond_images", partition_mapping=ALL)])
def ablation(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
             device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """One cell of the paper's augmentation study: an architecture trained on one training set
    (real, synthetic alone, or real plus synthetic in the paper's proportions) with the
    segmentation recipe for ablation_epochs, scored on the real test split only. Synthetic
    images (gan_resolution px) are brought to the patch size, bicubic for the image and nearest
    for the mask. One MLflow run per partition, tagged with the training set and the versions of
    its inputs; the test confusion matrix to eval/ablation/<train_set>/<arch>/metrics.json."""
    keys = context.partition_key.keys_by_dimension
    train_set, arch = keys["train_set"], keys["arch"]
    s = settings.get()
    client = mlflow.client()
    with step_errors(context, s.retry_window_s):
        job = prepare_ablation(storage, s, train_set, arch)
    composed = job.train_set
    for origin, missing in composed.shortfall.items():
        context.log.warning(f"{train_set}: {missing} fewer {origin} images than the paper's proportion asks "
                            f"({composed.counts[origin]} used); generate more shards for the full count")
    origin = RunOrigin(context.run_id, context.asset_key.to_user_string(), job.splits_version,
                       partition=str(context.partition_key))
    tags = origin.run_tags(arch=arch, train_set=train_set, train_set_version=composed.version,
                           **{f"{o}_version": v for o, v in composed.origin_versions().items()})
    params = {"arch": arch, "train_set": train_set, "epochs": s.ablation_epochs, "patch_size": PATCH_SIZE,
              "synthetic_resize": "bicubic image, nearest mask", **{f"{o}_images": n for o, n in composed.counts.items()}}
    previous = json.loads(storage.path(layout.ablation_metrics(train_set, arch)).read_text()) \
        if storage.path(layout.ablation_metrics(train_set, arch)).exists() else {}
    resume_run = previous.get("mlflow_run_id") if previous.get("data_version") == job.data_version else None
    with tracked_run(client, mlflow.experiment_id(), resume_run, f"ablation-{train_set}-{arch}", tags, params) as run_id:
        context.log.info(f"ablation {train_set} x {arch}: {composed.counts} training images; MLflow run {run_id}")
        log_dataset(client, run_id, "splits", job.splits_version, storage.path(layout.SPLITS))
        for name, version in composed.origin_versions().items():
            if name != REAL:
                log_dataset(client, run_id, f"{name}_images", version, storage.root_path / layout.synthetic_manifests(name))
        with step_errors(context, s.retry_window_s):
            matrix, best_val, best_epoch = train_ablation(job, s, device, client, run_id, context.log.info)
        scores = matrix.scores()
        log_metrics(client, run_id, {**as_percent(best_val), **as_percent(scores.as_dict("test_")), "best_epoch": best_epoch})
    record = {"train_set": train_set, "arch": arch, "counts": composed.counts, "shortfall": composed.shortfall,
              "data_version": job.data_version, "splits_version": job.splits_version, "mlflow_run_id": run_id,
              "best_epoch": best_epoch, "test_patches": len(job.test_data), "confusion": matrix.counts.tolist(),
              "scores": scores.as_dict()}
    out = storage.path(layout.ablation_metrics(train_set, arch))
    storage.writable_dir(out.parent)
    storage.write_bytes(out, json.dumps(record, indent=2).encode())
    context.log.info(f"ablation {train_set} x {arch}: test macro F1 {100 * scores.f1:.2f}%")
    return dg.MaterializeResult(data_version=dg.DataVersion(job.data_version), metadata={
        "train_set": train_set, "arch": arch, **{f"{o}_images": n for o, n in composed.counts.items()},
        **{f"{o}_shortfall": n for o, n in composed.shortfall.items()},
        "synthetic_resize": f"{s.gan_resolution} px -> {PATCH_SIZE} px: bicubic image, nearest mask",
        **as_percent(scores.as_dict("test_")), "best_epoch": best_epoch,
        "metrics": dg.MetadataValue.path(str(out)), "mlflow_run": mlflow.run_url(run_id)})


def ablation_results(storage: StorageResource) -> dict[tuple[str, str], SegmentationScores]:
    """Test scores of every (training set, architecture) trained so far, from their confusion matrices."""
    results = {}
    for path in sorted(storage.root_path.glob(layout.ABLATION_METRICS)):
        record = json.loads(path.read_text())
        results[(record["train_set"], record["arch"])] = scores_from_confusion(np.array(record["confusion"]))
    return results


@dg.asset(group_name="report", code_version="1", kinds={"markdown", "png"},
          deps=[dg.AssetDep(ablation, partition_mapping=ALL)])
def ablation_tables(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """The paper's Tables 3 (macro scores) and 4 (per-class F1) for every ablation partition
    trained so far, ours beside the paper's with the difference, and the per-class F1 gain of
    each training set over real against the class's share of test pixels."""
    results = ablation_results(storage)
    with step_errors(context):
        if not results:
            raise BadInputError("no ablation partition is trained yet: materialize ablation for some partitions first")
    table3 = table_markdown(table_rows(results, per_class=False), TABLE3_HEADS)
    table4 = table_markdown(table_rows(results, per_class=True), TABLE4_HEADS)
    gains = class_gains(results)
    plot = gain_plot_png(gains, class_frequency(results))
    storage.writable_dir(layout.ABLATION_TABLES.parent)
    storage.write_bytes(storage.path(layout.ABLATION_TABLES),
                        f"## Table 3 (macro, %)\n\n{table3}\n\n## Table 4 (per-class F1, %)\n\n{table4}\n".encode())
    storage.write_bytes(storage.path(layout.ABLATION_GAIN_PLOT), plot)
    context.log.info(f"ablation tables over {len(results)} partitions: {sorted(results)}")
    return dg.MaterializeResult(metadata={
        "partitions": len(results), "table3": dg.MetadataValue.md(table3), "table4": dg.MetadataValue.md(table4),
        "gain_over_real": dg.MetadataValue.md(markdown_image(plot, "per-class F1 gain over real")),
        "path": dg.MetadataValue.path(str(storage.path(layout.ABLATION_TABLES)))})


@dg.asset(group_name="report", code_version="1", kinds={"markdown", "html"},
          deps=[ablation_tables, dg.AssetDep("feature_projection"), dg.AssetDep("gan_fid"), dg.AssetDep("caption_eval"),
                dg.AssetDep("segmentation_eval", partition_mapping=ALL)])
def report(context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """The paper's studies rerun on this region, beside the paper: Tables 1 to 4, FID, the feature
    projections, sample grids and caption examples, every number ours then the paper's with the
    difference. report/report.md (figures beside it) and report/report.html (self-contained),
    logged to MLflow."""
    with step_errors(context):
        title, sections = build_sections(storage, ablation_results(storage))
    markdown, page = render_markdown(title, sections), render_html(title, sections)
    shown = render_markdown(title, sections, embed=True)  # the UI shows figures inline
    folder = storage.writable_dir(layout.REPORT)
    for name, png in figure_files(sections).items():
        storage.writable_dir(folder / Path(name).parent)
        storage.write_bytes(folder / name, png)
    storage.write_bytes(storage.path(layout.REPORT_MARKDOWN), markdown.encode())
    storage.write_bytes(storage.path(layout.REPORT_HTML), page.encode())
    client = mlflow.client()
    origin = RunOrigin(context.run_id, context.asset_key.to_user_string(), version_of_splits(read_splits(storage)))
    with tracked_run(client, mlflow.experiment_id(), None, "report", origin.run_tags(), {"sections": len(sections)}) as run_id:
        client.log_artifact(run_id, str(storage.path(layout.REPORT_MARKDOWN)), "report")
        client.log_artifact(run_id, str(storage.path(layout.REPORT_HTML)), "report")
        client.log_artifacts(run_id, str(folder / "figures"), "report/figures")
    context.log.info(f"report: {storage.path(layout.REPORT_HTML)}")
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(shown), "html": dg.MetadataValue.path(str(storage.path(layout.REPORT_HTML))),
        "markdown": dg.MetadataValue.path(str(storage.path(layout.REPORT_MARKDOWN))),
        "sections": [s.title for s in sections], "mlflow_run": mlflow.run_url(run_id)})


ASSETS = [feature_projection, ablation, ablation_tables, report]
