"""Segmentation assets: segmentation_model and segmentation_eval per architecture, and the
labeler asset factory (real_patch_labels is its first use). Thin wiring only."""

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from aras_assets import layout
from aras_assets.errors import step_errors
from aras_assets.landcover import CLASS_NAMES
from aras_assets.partitions import arch_partitions, s2_tile_partitions
from aras_assets.previews import markdown_image, markdown_table
from aras_assets.segmentation.data import PatchDataset, make_loader, read_image, read_mask, split_records
from aras_assets.segmentation.labeler_asset import labeler_asset
from aras_assets.segmentation.metrics import SegmentationScores, scores_from_confusion
from aras_assets.segmentation.models import (
    ModelSpec,
    build_model,
    encoder_weights_path,
    load_model,
)
from aras_assets.segmentation.registry import (
    ModelVersionRef,
    NoModelError,
    download_checkpoint,
    log_image,
    log_metrics,
    promote_champion,
    register_model,
    start_run,
)
from aras_assets.segmentation.report import confusion_png, prediction_grid, table3_markdown, table4_markdown
from aras_assets.segmentation.training import TrainConfig, evaluate, plan_resume, predict, train
from aras_assets.settings import Settings, SettingsResource
from aras_assets.sources.records import read_tile_manifest, read_training_data
from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.device import TorchRuntime
from resources.storage import contained


def train_config(s: Settings) -> TrainConfig:
    return TrainConfig(epochs=s.seg_epochs, batch_size=s.seg_batch_size, eval_batch_size=s.seg_eval_batch_size,
                       lr=s.seg_lr, weight_decay=s.seg_weight_decay, grad_clip=s.seg_grad_clip,
                       ce_weight=s.seg_ce_weight, lr_factor=s.seg_lr_factor, lr_patience=s.seg_lr_patience,
                       patience=s.seg_patience, augment=s.seg_augment, seed=s.seg_seed, workers=s.seg_loader_workers)


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


@dg.asset(
    group_name="segmentation", code_version="1", kinds={"pytorch", "mlflow"}, partitions_def=arch_partitions,
    pool="gpu",
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
    spec = ModelSpec(arch, s.seg_encoders[arch])
    config = train_config(s)
    root = storage.root_path
    with step_errors(context, s.retry_window_s):
        manifest, split_table, data_version = read_training_data(storage)
        train_set = PatchDataset(root, split_records(manifest, split_table, "train"), s.seg_augment, s.seg_seed)
        val_set = PatchDataset(root, split_records(manifest, split_table, "val"))
        folder = storage.writable_dir(layout.seg_model_dir(arch))
        resume = plan_resume(folder, spec, config, data_version, log=context.log.info)
        model = build_model(spec, encoder_weights_path(s.seg_encoder_weights, spec.encoder))
    client = mlflow.client()
    tags = {"dagster.run_id": context.run_id, "dagster.asset_key": context.asset_key.to_user_string(),
            "dagster.partition": arch, "aras.splits_version": data_version, "aras.arch": arch,
            "aras.encoder": spec.encoder}
    params = {**{f"train.{k}": v for k, v in config.__dict__.items()}, "arch": arch, "encoder": spec.encoder,
              "classes": spec.classes, "train_patches": len(train_set), "val_patches": len(val_set),
              "encoder_weights": s.seg_encoder_weights or "none", "device": str(device.torch_device())}
    run_id = start_run(client, mlflow.experiment_id(), resume.extra.get("mlflow_run_id") if resume else None,
                       f"segmentation-{arch}", tags, params)
    context.log.info(f"{arch} ({spec.encoder}): {len(train_set)} train / {len(val_set)} val patches; MLflow run {run_id}")
    runtime = device.runtime()

    def on_epoch(record: dict[str, float], scores: SegmentationScores) -> None:
        log_metrics(client, run_id, record, step=int(record["epoch"]))

    try:
        with step_errors(context, s.retry_window_s):
            result = train(model, spec, train_set, val_set, config, runtime, folder, data_version, resume,
                           extra={"mlflow_run_id": run_id}, on_epoch=on_epoch, log=context.log.info)
            best, _, _ = load_model(result.best_path, spec)
            eval_runtime = device.runtime(inference=True)
            best = eval_runtime.prepare(best)
            matrix, _ = evaluate(best, make_loader(val_set, config.eval_batch_size), eval_runtime)
        with tempfile.TemporaryDirectory() as scratch:
            confusion = confusion_png(matrix.counts, f"{arch}: validation, epoch {result.best_epoch}")
            grid = sample_predictions(best, val_set, eval_runtime)
            log_image(client, run_id, confusion, "plots/val_confusion.png", Path(scratch))
            log_image(client, run_id, grid, "plots/val_predictions.png", Path(scratch))
        best_f1 = result.best_scores["val_f1"]
        log_metrics(client, run_id, {"best_val_f1": best_f1, "best_epoch": result.best_epoch})
        ref = register_model(mlflow.resolved_tracking_uri, run_id, best, result.best_path, arch, best_f1,
                             {"dagster.run_id": context.run_id, "aras.splits_version": data_version,
                              "aras.encoder": spec.encoder, "aras.best_epoch": str(result.best_epoch)})
        champion = promote_champion(client)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    record = {"arch": arch, "encoder": spec.encoder, "model_name": ref.name, "model_version": ref.version,
              "mlflow_run_id": run_id, "best_epoch": result.best_epoch, "val_f1": best_f1,
              "splits_version": data_version, "epochs_run": len(result.history), "resumed_from": result.resumed_from}
    storage.write_bytes(folder / layout.MODEL_RECORD, json.dumps(record, indent=2).encode())
    context.log.info(f"registered {ref} (val macro F1 {best_f1:.4f}); champion is {champion}")
    history = [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()
                if k in ("epoch", "train_loss", "val_loss", "val_f1", "val_accuracy", "lr")} for h in result.history]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(f"{ref.name}/{ref.version}"),
        metadata={
            "model_version": f"{ref.name}/{ref.version}",
            "model_uri": ref.uri,
            "mlflow_run_id": run_id,
            "mlflow_ui": mlflow.ui_command(),
            "champion": str(champion),
            "val_f1": best_f1,
            "val_accuracy": result.best_scores["val_accuracy"],
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": result.resumed_from if result.resumed_from is not None else -1,
            "train_images_per_s": round(result.train_images_per_s, 2),
            "checkpoint": dg.MetadataValue.path(str(result.best_path)),
            "encoder": spec.encoder,
            "parameters": sum(p.numel() for p in best.parameters()),
            "splits_version": data_version,
            "history": dg.MetadataValue.md(markdown_table(history)),
            "val_confusion": dg.MetadataValue.md(markdown_image(confusion, f"{arch} validation confusion")),
            "val_predictions": dg.MetadataValue.md(markdown_image(grid, f"{arch} image / truth / prediction")),
        },
    )


def evaluated_results(storage: StorageResource) -> dict[str, SegmentationScores]:
    """Test scores of every architecture evaluated so far, from their stored confusion matrices."""
    results = {}
    for arch in arch_partitions.get_partition_keys():
        path = storage.path(layout.seg_eval_dir(arch), "metrics.json")
        if path.exists():
            results[arch] = scores_from_confusion(np.array(json.loads(path.read_text())["confusion"]))
    return results


@dg.asset(group_name="segmentation", code_version="1", kinds={"pytorch", "mlflow"}, partitions_def=arch_partitions,
          pool="gpu", deps=[segmentation_model, "splits"])
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
    log_metrics(client, ref.run_id, scores.as_dict("test_"))
    with tempfile.TemporaryDirectory() as scratch:
        log_image(client, ref.run_id, confusion, "plots/test_confusion.png", Path(scratch))
    context.log.info(f"{ref} on {len(test_set)} test patches: macro F1 {scores.f1:.4f}, accuracy {scores.accuracy:.4f}")
    return dg.MaterializeResult(metadata={
        "model_version": str(ref),
        "mlflow_run_id": ref.run_id,
        "test_patches": len(test_set),
        "test_pixels": matrix.total,
        **{k: round(100 * v, 2) for k, v in scores.as_dict("test_").items()},
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
