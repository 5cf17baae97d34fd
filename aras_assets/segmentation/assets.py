"""Segmentation assets: segmentation_model and segmentation_eval per architecture, and the
labeler asset factory (real_patch_labels is its first use). Thin wiring only."""

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import torch

from aras_assets import layout
from aras_assets.deploy import GPU_OP_TAGS, GPU_POOL
from aras_assets.errors import step_errors
from aras_assets.landcover import CLASS_NAMES
from aras_assets.mlflow_runs import (
    ModelVersionRef,
    NoModelError,
    RunOrigin,
    download_checkpoint,
    log_dataset,
    log_image,
    log_metrics,
    tracked_run,
)
from aras_assets.partitions import arch_partitions, s2_tile_partitions
from aras_assets.previews import markdown_image, markdown_table
from aras_assets.segmentation.data import PatchDataset, make_loader, read_image, read_mask, split_records
from aras_assets.segmentation.labeler_asset import labeler_asset
from aras_assets.segmentation.metrics import ConfusionMatrix, SegmentationScores, as_percent, scores_from_confusion
from aras_assets.segmentation.models import (
    ModelSpec,
    build_model,
    encoder_weights_path,
    load_model,
)
from aras_assets.segmentation.registry import promote_champion, register_model
from aras_assets.segmentation.report import confusion_png, prediction_grid, table3_markdown, table4_markdown
from aras_assets.segmentation.training import (
    ResumeState,
    TrainConfig,
    TrainResult,
    evaluate,
    plan_resume,
    predict,
    train,
    train_config,
)
from aras_assets.settings import Settings, SettingsResource
from aras_assets.sources.records import read_tile_manifest, read_training_data
from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.device import TorchRuntime
from resources.storage import contained


def sample_predictions(forward: Callable, dataset: PatchDataset, runtime: TorchRuntime, count: int = 6) -> bytes:
    """Image, truth and prediction of the first `count` patches of a split."""
    import torch

    picks = range(min(count, len(dataset)))
    images = [read_image(contained(dataset.root, dataset.images[i], f"patch {dataset.ids[i]}")) for i in picks]
    truths = [read_mask(contained(dataset.root, dataset.masks[i], f"patch {dataset.ids[i]}")) for i in picks]
    with torch.inference_mode():
        batch = runtime.to_device(torch.stack([dataset[i][0] for i in picks]))
        preds = predict(forward, batch, runtime)[1].to(torch.uint8).cpu().numpy()
    return prediction_grid(images, truths, list(preds))


def model_record(storage: StorageResource, arch: str) -> dict:
    path = storage.path(layout.seg_model_dir(arch), layout.MODEL_RECORD)
    if not path.exists():
        raise NoModelError(f"no trained {arch} model: materialize segmentation_model for partition {arch} first")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class SegTraining:
    """One architecture's training, read and checked before its MLflow run starts."""

    arch: str
    spec: ModelSpec
    config: TrainConfig
    train_set: PatchDataset
    val_set: PatchDataset
    folder: Path
    resume: ResumeState | None
    model: torch.nn.Module
    data_version: str
    splits_path: Path  # the splits file the data version digests (an MLflow run input)

    def params(self, s: Settings, device: str) -> dict[str, Any]:
        return {**{f"train.{k}": v for k, v in self.config.__dict__.items()}, "arch": self.arch,
                "encoder": self.spec.encoder, "classes": self.spec.classes, "train_patches": len(self.train_set),
                "val_patches": len(self.val_set), "encoder_weights": s.seg_encoder_weights or "none", "device": device}


def prepare_training(storage: StorageResource, s: Settings, arch: str, log: Callable[[str], None]) -> SegTraining:
    """The architecture's datasets, network and resume point (raises bad-input errors)."""
    spec = ModelSpec(arch, s.seg_encoders[arch])
    config = train_config(s)
    root = storage.root_path
    manifest, split_table, data_version = read_training_data(storage)
    train_set = PatchDataset(root, split_records(manifest, split_table, "train"), s.seg_augment, s.seg_seed)
    val_set = PatchDataset(root, split_records(manifest, split_table, "val"))
    folder = storage.writable_dir(layout.seg_model_dir(arch))
    resume = plan_resume(folder, spec, config, data_version, log=log)
    model = build_model(spec, encoder_weights_path(s.seg_encoder_weights, spec.encoder))
    return SegTraining(arch, spec, config, train_set, val_set, folder, resume, model, data_version,
                       storage.path(layout.SPLITS))


@dataclass(frozen=True)
class SegTrained:
    """A finished training: its result, the best checkpoint's network ready for inference on
    `runtime`, and that network's validation confusion matrix."""

    result: TrainResult
    best: torch.nn.Module
    matrix: ConfusionMatrix
    runtime: TorchRuntime

    @property
    def best_f1(self) -> float:
        """The best epoch's validation macro F1, in percent."""
        return as_percent(self.result.best_scores)["val_f1"]


def train_and_validate(job: SegTraining, client: Any, run_id: str, device: TorchDeviceResource,
                       log: Callable[[str], None]) -> SegTrained:
    """Train (epoch metrics go to the run), then validate the best checkpoint."""

    def on_epoch(record: dict[str, float], scores: SegmentationScores) -> None:
        # curves under epoch/: the run's own val_* are the best epoch's (logged once, at the end)
        log_metrics(client, run_id, {f"epoch/{k}": v for k, v in as_percent(record).items() if k != "epoch"},
                    step=int(record["epoch"]))

    result = train(job.model, job.spec, job.train_set, job.val_set, job.config, device.runtime(), job.folder,
                   job.data_version, job.resume, extra={"mlflow_run_id": run_id}, on_epoch=on_epoch, log=log)
    best, _, _ = load_model(result.best_path, job.spec)
    eval_runtime = device.runtime(inference=True)
    best = eval_runtime.prepare(best)
    matrix, _ = evaluate(best, make_loader(job.val_set, job.config.eval_batch_size), eval_runtime)
    return SegTrained(result, best, matrix, eval_runtime)


@dataclass(frozen=True)
class SegRegistered:
    ref: ModelVersionRef
    champion: ModelVersionRef
    confusion: bytes  # validation figures, PNG
    grid: bytes


def register_trained(job: SegTraining, trained: SegTrained, client: Any, run_id: str, tracking_uri: str,
                     origin: RunOrigin) -> SegRegistered:
    """Validation figures and best scores to the run, the best network as a new registered
    version, and the champion alias moved to the best version across architectures."""
    result = trained.result
    confusion = confusion_png(trained.matrix.counts, f"{job.arch}: validation, epoch {result.best_epoch}")
    grid = sample_predictions(trained.best, job.val_set, trained.runtime)
    with tempfile.TemporaryDirectory() as scratch:
        log_image(client, run_id, confusion, "plots/val_confusion.png", Path(scratch))
        log_image(client, run_id, grid, "plots/val_predictions.png", Path(scratch))
    log_metrics(client, run_id, {**as_percent(result.best_scores), "best_epoch": result.best_epoch})  # the run's summary
    log_dataset(client, run_id, "splits", job.data_version, job.splits_path)
    example = job.val_set[0][0].unsqueeze(0).numpy()  # one normalized patch: the model's signature
    ref = register_model(tracking_uri, run_id, trained.best, result.best_path, job.arch, trained.best_f1,
                         origin.version_tags(encoder=job.spec.encoder, best_epoch=str(result.best_epoch)),
                         description=f"{job.arch} on {job.spec.encoder}, trained on splits {job.data_version} "
                                     f"({len(job.train_set)} patches); best epoch {result.best_epoch} of "
                                     f"{len(result.history)}, validation macro F1 {trained.best_f1:.2f}%.",
                         input_example=example)
    return SegRegistered(ref, promote_champion(client), confusion, grid)


def model_metadata(job: SegTraining, trained: SegTrained, done: SegRegistered, run_id: str,
                   mlflow_ui: str) -> dict[str, Any]:
    result, ref = trained.result, done.ref
    history = [{k: round(v, 4) if isinstance(v, float) and k in ("train_loss", "val_loss", "lr") else v
                for k, v in as_percent(h).items() if k in ("epoch", "train_loss", "val_loss", "val_f1", "val_accuracy", "lr")}
               for h in result.history]
    return {
        "model_version": f"{ref.name}/{ref.version}",
        "model_uri": ref.uri,
        "mlflow_run_id": run_id,
        "mlflow_ui": mlflow_ui,
        "champion": str(done.champion),
        "val_f1": trained.best_f1,
        "val_accuracy": as_percent(result.best_scores)["val_accuracy"],
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from if result.resumed_from is not None else -1,
        "train_images_per_s": round(result.train_images_per_s, 2),
        "checkpoint": dg.MetadataValue.path(str(result.best_path)),
        "encoder": job.spec.encoder,
        "parameters": sum(p.numel() for p in trained.best.parameters()),
        "splits_version": job.data_version,
        "history": dg.MetadataValue.md(markdown_table(history)),
        "val_confusion": dg.MetadataValue.md(markdown_image(done.confusion, f"{job.arch} validation confusion")),
        "val_predictions": dg.MetadataValue.md(markdown_image(done.grid, f"{job.arch} image / truth / prediction")),
    }


@dg.asset(
    group_name="segmentation", code_version="1", kinds={"pytorch", "mlflow"}, partitions_def=arch_partitions,
    pool=GPU_POOL, op_tags=GPU_OP_TAGS,
    deps=["splits", dg.AssetDep("real_patches", partition_mapping=dg.AllPartitionMapping())],
)
def segmentation_model(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
                       device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Train one architecture on the training split (the release's recipe), keep the best
    checkpoint by validation macro F1, register it in MLflow as aras-segmentation-<arch> and
    move the `champion` alias to the best version across architectures. Resumes an
    interrupted training from its last checkpoint."""
    arch = context.partition_key
    s = settings.get()
    with step_errors(context, s.retry_window_s):
        job = prepare_training(storage, s, arch, context.log.info)
    client = mlflow.client()
    origin = RunOrigin(context.run_id, context.asset_key.to_user_string(), job.data_version, partition=arch)
    resume_run_id = job.resume.extra.get("mlflow_run_id") if job.resume else None
    with tracked_run(client, mlflow.experiment_id(), resume_run_id, f"segmentation-{arch}",
                     origin.run_tags(arch=arch, encoder=job.spec.encoder),
                     job.params(s, str(device.torch_device()))) as run_id:
        context.log.info(f"{arch} ({job.spec.encoder}): {len(job.train_set)} train / {len(job.val_set)} val patches; "
                         f"MLflow run {run_id}")
        with step_errors(context, s.retry_window_s):
            trained = train_and_validate(job, client, run_id, device, context.log.info)
        done = register_trained(job, trained, client, run_id, mlflow.resolved_tracking_uri, origin)
    result, ref = trained.result, done.ref
    record = {"arch": arch, "encoder": job.spec.encoder, "model_name": ref.name, "model_version": ref.version,
              "mlflow_run_id": run_id, "best_epoch": result.best_epoch, "val_f1": trained.best_f1,
              "splits_version": job.data_version, "epochs_run": len(result.history), "resumed_from": result.resumed_from}
    storage.write_bytes(job.folder / layout.MODEL_RECORD, json.dumps(record, indent=2).encode())
    context.log.info(f"registered {ref} (val macro F1 {trained.best_f1:.2f}%); champion is {done.champion}")
    return dg.MaterializeResult(data_version=dg.DataVersion(f"{ref.name}/{ref.version}"),
                                metadata={**model_metadata(job, trained, done, run_id, mlflow.ui_command()),
                                          "mlflow_run": mlflow.run_url(run_id),
                                          "mlflow_model_version": mlflow.model_version_url(done.ref.name, done.ref.version)})


def evaluated_results(storage: StorageResource) -> dict[str, SegmentationScores]:
    """Test scores of every architecture evaluated so far, from their stored confusion matrices."""
    results = {}
    for arch in arch_partitions.get_partition_keys():
        path = storage.path(layout.seg_eval_dir(arch), "metrics.json")
        if path.exists():
            results[arch] = scores_from_confusion(np.array(json.loads(path.read_text())["confusion"]))
    return results


@dg.asset(group_name="segmentation", code_version="1", kinds={"pytorch", "mlflow"}, partitions_def=arch_partitions,
          pool=GPU_POOL, op_tags=GPU_OP_TAGS, deps=[segmentation_model, "splits"])
def segmentation_eval(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
                      device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Test-split metrics of the architecture's registered model from one accumulated confusion
    matrix, as rows of the paper's Table 3 (macro) and Table 4 (per-class F1) beside its figures."""
    arch = context.partition_key
    s = settings.get()
    client = mlflow.client()
    with step_errors(context, s.retry_window_s):
        record = model_record(storage, arch)
        ref = ModelVersionRef(record["model_name"], record["model_version"], record["mlflow_run_id"])
        manifest, split_table, data_version = read_training_data(storage)
        test_set = PatchDataset(storage.root_path, split_records(manifest, split_table, "test"))
        with tempfile.TemporaryDirectory() as scratch:
            model, _, _ = load_model(download_checkpoint(mlflow.resolved_tracking_uri, ref, Path(scratch)),
                                        ModelSpec(arch, record["encoder"]))
        runtime = device.runtime(inference=True)
        model = runtime.prepare(model)
        matrix, _ = evaluate(model, make_loader(test_set, s.seg_eval_batch_size, workers=s.seg_loader_workers), runtime)
    if data_version != record["splits_version"]:
        context.log.warning(f"{ref} was trained on splits {record['splits_version']}, the splits are now "
                            f"{data_version}: re-materialize segmentation_model[{arch}]")
    scores = matrix.scores()
    folder = storage.writable_dir(layout.seg_eval_dir(arch))
    confusion = confusion_png(matrix.counts, f"{arch}: test split")
    storage.write_bytes(folder / "confusion.png", confusion)
    storage.write_bytes(folder / "metrics.json", json.dumps({
        "model_version": str(ref), "splits_version": data_version, "test_patches": len(test_set),
        "scores": scores.as_dict(), "confusion": matrix.counts.tolist(), "classes": list(CLASS_NAMES)}, indent=2).encode())
    everything = evaluated_results(storage)
    tables = (f"## Table 3 (macro, %)\n\n{table3_markdown(everything)}\n\n"
              f"## Table 4 (per-class F1, %)\n\n{table4_markdown(everything)}\n")
    storage.write_bytes(storage.path(layout.SEGMENTATION_TABLES), tables.encode())
    log_metrics(client, ref.run_id, as_percent(scores.as_dict("test_")))
    with tempfile.TemporaryDirectory() as scratch:
        log_image(client, ref.run_id, confusion, "plots/test_confusion.png", Path(scratch))
    context.log.info(f"{ref} on {len(test_set)} test patches: macro F1 {100 * scores.f1:.2f}%, "
                     f"accuracy {100 * scores.accuracy:.2f}%")
    return dg.MaterializeResult(metadata={
        "model_version": str(ref),
        "mlflow_run_id": ref.run_id,
        "mlflow_run": mlflow.run_url(ref.run_id),
        "mlflow_model_version": mlflow.model_version_url(ref.name, ref.version),
        "test_patches": len(test_set),
        "test_pixels": matrix.total,
        **as_percent(scores.as_dict("test_")),  # None: a class absent from truth and prediction
        "table3": dg.MetadataValue.md(table3_markdown({arch: scores})),
        "table4": dg.MetadataValue.md(table4_markdown({arch: scores})),
        "all_architectures": dg.MetadataValue.path(str(storage.path(layout.SEGMENTATION_TABLES))),
        "test_confusion": dg.MetadataValue.md(markdown_image(confusion, f"{arch} test confusion")),
    })


def real_patch_images(storage: StorageResource, tile: str) -> pl.DataFrame:
    frame = read_tile_manifest(storage, tile, ["patch_id", "image_path"])
    return frame.select(pl.col("patch_id").alias("image_id"),
                        (pl.lit(f"{storage.root_path}/") + pl.col("image_path")).alias("image_path"))


real_patch_labels = labeler_asset(
    "real_patch_labels", real_patch_images, s2_tile_partitions, deps=["real_patches"],
    description="Predicted masks of a tile's real patches by the champion segmentation model: "
                "an audit of the WorldCover labels and the labeler the synthetic shards use.")

ASSETS = [segmentation_model, segmentation_eval, real_patch_labels]
