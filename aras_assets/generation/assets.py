"""Generation assets: uncond_gan and cond_gan (training, MLflow runs, registered versions),
uncond_images per gen_shard with their labels, cond_images per s2_tile, and gan_fid.
Thin wiring only: the science is in the sibling modules."""

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
from aras_assets.errors import BadInputError, step_errors
from aras_assets.evaluation.features import FEATURE_SIZE, image_batches, registered_encoder
from aras_assets.generation.configs import cond_recipe, expected_config, spade_config, style_config, uncond_recipe
from aras_assets.generation.data import GanPatches, GenerationError, endless_batches, resized_image, resized_mask
from aras_assets.generation.fid import (
    PAPER_FID,
    FeatureStats,
    feature_stats,
    fid_from_stats,
    inception_feature_fn,
)
from aras_assets.generation.perceptual import load_vgg_loss
from aras_assets.generation.sampling import (
    GeneratorRun,
    Partition,
    cond_plan,
    generate_cond,
    generate_partition,
    generate_uncond,
    png_bytes,
    precision_name,
    uncond_plan,
)
from aras_assets.generation.training import (
    COND,
    GENERATOR,
    UNCOND,
    CondTrainConfig,
    FitResult,
    GanTrainConfig,
    SpadeTrainer,
    StyleGanTrainer,
    Trainer,
    fit,
    load_generator,
    plan_resume,
)
from aras_assets.landcover import mask_to_rgb
from aras_assets.mlflow_runs import (
    ModelVersionRef,
    RunOrigin,
    download_checkpoint,
    log_dataset,
    log_image,
    log_metrics,
    promote_lowest,
    register_version,
    tracked_run,
)
from aras_assets.partitions import gen_shard_partitions, register_gen_shards, s2_tile_partitions
from aras_assets.previews import markdown_image, markdown_table, picture_rows
from aras_assets.ranged import BACKFILL_POLICY, PartitionResult, over_partitions
from aras_assets.segmentation.data import split_records
from aras_assets.segmentation.labeler_asset import labeler_asset
from aras_assets.settings import Settings, SettingsResource
from aras_assets.sources.records import read_training_data, synthetic_manifests, tile_training_patches
from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.device import TorchRuntime
from resources.storage import read_parquet_checked

MODEL_NAMES = {UNCOND: "aras-gan-uncond", COND: "aras-gan-cond"}
TRAINING_ASSET = {UNCOND: "uncond_gan", COND: "cond_gan"}
GRID_SAMPLES = 8


def train_records(storage: StorageResource) -> tuple[pl.DataFrame, str]:
    manifest, table, data_version = read_training_data(storage)
    return split_records(manifest, table, "train"), data_version


def even_rows(frame: pl.DataFrame, limit: int) -> pl.DataFrame:
    """At most `limit` rows spread evenly over the frame (a deterministic FID subset)."""
    if frame.height <= limit:
        return frame
    return frame[np.linspace(0, frame.height - 1, limit).round().astype(int).tolist()]


def image_stats(storage: StorageResource, picks: pl.DataFrame, resolution: int, fn: Callable, size: int,
                device: torch.device) -> FeatureStats:
    """Features of the picked images (real ones resized to the generator's resolution, which is
    what the GAN learns from)."""
    paths = [storage.inside(p, "row") for p in picks["image_path"]]
    return feature_stats(image_batches(paths, resolution), fn, size, device)


def gan_record(storage: StorageResource, kind: str) -> dict:
    path = storage.path(layout.gan_model_dir(kind), layout.MODEL_RECORD)
    if not path.exists():
        raise GenerationError(f"no trained {kind} generator is registered: materialize {TRAINING_ASSET[kind]} first")
    return json.loads(path.read_text())


def registered_generator(storage: StorageResource, mlflow: MlflowResource, s: Settings,
                         kind: str) -> tuple[torch.nn.Module, ModelVersionRef]:
    """The generator version named by models/gan/<kind>/model.json, checked against the registry
    and against the configured network."""
    record = gan_record(storage, kind)
    ref = ModelVersionRef(record["model_name"], record["model_version"], record["mlflow_run_id"])
    try:
        mlflow.client().get_model_version(ref.name, ref.version)
    except Exception as exc:
        raise GenerationError(f"{ref} is not in the MLflow registry at {mlflow.resolved_tracking_uri}: "
                              f"materialize {TRAINING_ASSET[kind]} again") from exc
    with tempfile.TemporaryDirectory() as scratch:
        model, _ = load_generator(download_checkpoint(mlflow.resolved_tracking_uri, ref, Path(scratch)), kind,
                                  expected_config(s, kind))
    return model, ref


def sample_uncond(G: torch.nn.Module, count: int, runtime: TorchRuntime, seed: int = 12345) -> np.ndarray:
    return generate_uncond(G, [seed + k for k in range(count)], 1.0, runtime)


@dataclass(frozen=True)
class GanTraining:
    """One generator's training, read and checked before its MLflow run starts. `fid` scores a
    generator against the training patches in the features of `encoder_ref`'s encoder."""

    kind: str
    records: pl.DataFrame
    dataset: GanPatches
    config: GanTrainConfig | CondTrainConfig
    trainer: Trainer
    folder: Path
    resume: dict | None
    data_version: str
    encoder_ref: ModelVersionRef
    fid: Callable[[torch.nn.Module], float]
    runtime: TorchRuntime

    @property
    def resume_run_id(self) -> str | None:
        return self.resume.get("extra", {}).get("mlflow_run_id") if self.resume else None

    def params(self) -> dict[str, Any]:
        return {**{f"train.{k}": v for k, v in self.config.__dict__.items()},
                **{f"model.{k}": v for k, v in self.trainer.model_config.to_dict().items()},
                "train_patches": len(self.dataset), "device": str(self.runtime.torch_device)}


def prepare_gan(kind: str, s: Settings, storage: StorageResource, mlflow: MlflowResource, runtime: TorchRuntime,
                log: Callable[[str], None]) -> GanTraining:
    """The training patches, trainer and resume point, and the FID reference (raises bad-input errors)."""
    records, data_version = train_records(storage)
    dataset = GanPatches(storage.root_path, records, s.gan_resolution, mirror=s.gan_mirror and kind == UNCOND)
    if kind == UNCOND:
        config = uncond_recipe(s)
        trainer = StyleGanTrainer(style_config(s), config, runtime)
    else:
        perceptual = load_vgg_loss(s.cond_vgg_weights).to(runtime.torch_device) if s.cond_vgg_weights else None
        config = cond_recipe(s, perceptual is not None)
        trainer = SpadeTrainer(spade_config(s), config, runtime, perceptual)
    folder = storage.writable_dir(layout.gan_model_dir(kind))
    resume = plan_resume(folder, trainer, data_version, log=log)
    features, encoder_ref = registered_encoder(mlflow.client(), mlflow.resolved_tracking_uri, s.label_model)
    fid_records = even_rows(records, s.fid_images)
    reference = image_stats(storage, fid_records, s.gan_resolution, features, FEATURE_SIZE, runtime.torch_device)
    fid_masks = np.stack([resized_mask(storage.inside(p, "row"), s.gan_resolution)
                          for p in fid_records["mask_path"]]) if kind == COND else None

    def fid(G: torch.nn.Module) -> float:
        """FID of the EMA generator (fixed seeds) against the training patches, encoder space."""
        G.eval()
        if kind == UNCOND:
            count = fid_records.height
            batches = (sample_uncond(G, min(32, count - b), runtime, b) for b in range(0, count, 32))
        else:
            batches = (generate_cond(G, fid_masks[b:b + 32], range(b, b + len(fid_masks[b:b + 32])), runtime)
                       for b in range(0, len(fid_masks), 32))
        return fid_from_stats(reference, feature_stats(batches, features, FEATURE_SIZE, runtime.torch_device))

    return GanTraining(kind, records, dataset, config, trainer, folder, resume, data_version, encoder_ref, fid, runtime)


def fit_gan(job: GanTraining, client: Any, run_id: str, log: Callable[[str], None]) -> FitResult:
    """Train to the recipe's step count (losses go to the run), resuming where the checkpoint left off."""
    config = job.config
    return fit(job.trainer, endless_batches(job.dataset, config.batch_size, config.seed), config.steps, job.folder,
               job.data_version, config.checkpoint_every, config.fid_every, fid=job.fid, resume=job.resume,
               extra={"mlflow_run_id": run_id}, on_log=lambda step, rec: log_metrics(client, run_id, rec, step),
               log=log, log_every=max(1, min(50, config.steps // 8)))


@dataclass(frozen=True)
class GanRegistered:
    ref: ModelVersionRef
    final_fid: float
    grid: bytes  # sample figure, PNG


def register_generator(job: GanTraining, result: FitResult, client: Any, run_id: str, storage: StorageResource,
                       resolution: int, tracking_uri: str, origin: RunOrigin) -> GanRegistered:
    """Samples to the run and the EMA generator as a new version of aras-gan-<kind>."""
    grid = sample_grid(job.kind, job.trainer.G_ema, job.records, storage, resolution, job.runtime)
    with tempfile.TemporaryDirectory() as scratch:
        log_image(client, run_id, grid, f"plots/{job.kind}_samples.png", Path(scratch))
    final_fid = result.fid[-1][1] if result.fid else float("nan")
    ref = register_version(tracking_uri, run_id, job.trainer.G_ema, job.folder / GENERATOR, MODEL_NAMES[job.kind],
                           origin.version_tags(steps=str(job.trainer.step), fid_encoder=f"{final_fid:.4f}"),
                           requirements=("torch",), score=final_fid,
                           description=f"{job.kind} generator (EMA) after {job.trainer.step} steps on splits "
                                       f"{job.data_version}; FID {final_fid:.4f} in the features of {job.encoder_ref}.",
                           model_description=f"ARAS {'unconditional' if job.kind == UNCOND else 'mask-conditional'} "
                                             "generator of 7-class land-cover scenes; the champion alias holds the "
                                             "version with the lowest FID.")
    log_dataset(client, run_id, "splits", job.data_version, storage.path(layout.SPLITS))
    promote_lowest(client, MODEL_NAMES[job.kind], "aras.fid_encoder")
    return GanRegistered(ref, final_fid, grid)


def gan_metadata(job: GanTraining, result: FitResult, done: GanRegistered, run_id: str, mlflow_ui: str,
                 resolution: int) -> dict[str, Any]:
    ref, kind = done.ref, job.kind
    return {
        "model_version": str(ref), "model_uri": ref.uri, "mlflow_run_id": run_id, "mlflow_ui": mlflow_ui,
        "steps": job.trainer.step, "resumed_from_step": result.resumed_from if result.resumed_from is not None else -1,
        "train_images_per_s": round(result.images_per_s, 2), "resolution": resolution,
        "fid_encoder": round(done.final_fid, 4), "fid_features": f"segmentation encoder of {job.encoder_ref}",
        "paper_fid_inception": PAPER_FID[kind],  # another scale: see fid_note
        "fid_note": FID_NOTE,
        "fid_history": dg.MetadataValue.md(markdown_table([{"step": st, "fid_encoder": round(v, 4)}
                                                           for st, v in result.fid])),
        "losses": dg.MetadataValue.md(markdown_table(result.history[-10:])),
        "checkpoint": dg.MetadataValue.path(str(job.folder / GENERATOR)),
        "samples": dg.MetadataValue.md(markdown_image(done.grid, "real (top) and synthetic (bottom)" if kind == UNCOND
                                                      else "mask, synthetic, real")),
    }


def train_gan(kind: str, context: dg.AssetExecutionContext, s: Settings, storage: StorageResource,
              device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Shared body of uncond_gan and cond_gan."""
    runtime = device.runtime()
    with step_errors(context, s.retry_window_s):
        job = prepare_gan(kind, s, storage, mlflow, runtime, context.log.info)
    client = mlflow.client()
    origin = RunOrigin(context.run_id, context.asset_key.to_user_string(), job.data_version)
    with tracked_run(client, mlflow.experiment_id(), job.resume_run_id, f"gan-{kind}",
                     origin.run_tags(fid_features=f"encoder of {job.encoder_ref}"), job.params()) as run_id:
        context.log.info(f"{kind} GAN: {len(job.dataset)} training patches at {s.gan_resolution}px; MLflow run {run_id}")
        with step_errors(context, s.retry_window_s):
            result = fit_gan(job, client, run_id, context.log.info)
        done = register_generator(job, result, client, run_id, storage, s.gan_resolution,
                                  mlflow.resolved_tracking_uri, origin)
    ref = done.ref
    record = {"kind": kind, "model_name": ref.name, "model_version": ref.version, "mlflow_run_id": run_id,
              "steps": job.trainer.step, "fid_encoder": done.final_fid, "splits_version": job.data_version,
              "model_config": job.trainer.model_config.to_dict(), "fid_features": f"encoder of {job.encoder_ref}"}
    storage.write_bytes(job.folder / layout.MODEL_RECORD, json.dumps(record, indent=2).encode())
    context.log.info(f"registered {ref}; FID (segmentation-encoder features) {done.final_fid:.3f}")
    return dg.MaterializeResult(data_version=dg.DataVersion(str(ref)),
                                metadata={**gan_metadata(job, result, done, run_id, mlflow.ui_command(), s.gan_resolution),
                                          "mlflow_run": mlflow.run_url(run_id),
                                          "mlflow_model_version": mlflow.model_version_url(done.ref.name, done.ref.version)})


def sample_grid(kind: str, G: torch.nn.Module, records: pl.DataFrame, storage: StorageResource, size: int,
                runtime: TorchRuntime) -> bytes:
    """Real beside synthetic (unconditional) or mask | synthetic | real of that mask (conditional)."""
    picks = even_rows(records, GRID_SAMPLES)
    real = [resized_image(storage.inside(p, "row"), size) for p in picks["image_path"]]
    if kind == UNCOND:
        return picture_rows([real, list(sample_uncond(G.eval(), len(real), runtime))])
    masks = np.stack([resized_mask(storage.inside(p, "row"), size) for p in picks["mask_path"]])
    fake = generate_cond(G.eval(), masks, range(len(masks)), runtime)
    return picture_rows([[mask_to_rgb(m) for m in masks], list(fake), real])


GAN_DEPS = ["splits", dg.AssetDep("real_patches", partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep("segmentation_model", partition_mapping=dg.AllPartitionMapping())]


@dg.asset(group_name="generation", code_version="1", kinds={"pytorch", "mlflow"}, pool=GPU_POOL, op_tags=GPU_OP_TAGS,
          deps=GAN_DEPS)
def uncond_gan(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
               device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Train the style-based unconditional GAN on the training split's images (resumes from its
    last checkpoint), FID in segmentation-encoder space along the way, and register the EMA
    generator as a version of aras-gan-uncond. Registers the gen_shard partitions 0000.. of the
    run's `gen_shards`, which uncond_images fills."""
    s = settings.get()
    result = train_gan(UNCOND, context, s, storage, device, mlflow)
    new = register_gen_shards(context.instance, s.gen_shards)
    context.log.info(f"gen_shard partitions: {s.gen_shards} wanted, {len(new)} new")
    return result


@dg.asset(group_name="generation", code_version="1", kinds={"pytorch", "mlflow"}, pool=GPU_POOL, op_tags=GPU_OP_TAGS,
          deps=GAN_DEPS)
def cond_gan(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
             device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Train the SPADE generator against the U-Net discriminator on the training split's image
    and mask pairs, and register its EMA generator as a version of aras-gan-cond."""
    return train_gan(COND, context, settings.get(), storage, device, mlflow)


def generator_run(ref: ModelVersionRef, runtime: TorchRuntime, s: Settings, context: dg.AssetExecutionContext) -> GeneratorRun:
    return GeneratorRun(ref.name, ref.version, ref.run_id, str(runtime.torch_device), precision_name(runtime),
                        s.gan_resolution, context.run_id)


def generation_metadata(manifest: pl.DataFrame, new: int, ref: ModelVersionRef, partition: Partition,
                        grid: bytes, alt: str) -> dict:
    return {"images": manifest.height, "generated_now": new, "done_before": manifest.height - new,
            "model_version": str(ref), "model_uri": ref.uri, "mlflow_run_id": ref.run_id,
            "manifest": dg.MetadataValue.path(str(partition.folder / layout.MANIFEST)),
            "samples": dg.MetadataValue.md(markdown_image(grid, alt))}


@dg.asset(group_name="generation", code_version="1", kinds={"pytorch", "parquet", "png"},
          partitions_def=gen_shard_partitions, pool=GPU_POOL, op_tags=GPU_OP_TAGS, deps=[uncond_gan],
          backfill_policy=BACKFILL_POLICY)
def uncond_images(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
                  device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """gen_shard_size images of each shard of the run from the registered unconditional
    generator, each from a seed derived from the shard and its index; the manifest row records
    seed, truncation psi, model version, device, precision and content hash (`aras regenerate
    <image_id>` rebuilds it). Resumable: a re-run writes only the images a crash left undone."""
    s = settings.get()
    runtime = device.runtime(inference=True)
    with step_errors(context, s.retry_window_s):  # the generator once for every shard of the run
        G, ref = registered_generator(storage, mlflow, s, UNCOND)
        G = runtime.prepare(G)

    def render(rows: pl.DataFrame) -> np.ndarray:
        return generate_uncond(G, rows["seed"].to_list(), float(rows["truncation_psi"][0]), runtime)

    def one(shard: str) -> PartitionResult:
        with step_errors(context, s.retry_window_s):
            plan = uncond_plan(shard, s.gen_shard_size, s.gen_seed, s.gen_truncation_psi,
                               generator_run(ref, runtime, s, context))
            partition = Partition(storage.root_path, layout.synthetic_dir(UNCOND, shard).as_posix())

            def progress(done: int, total: int) -> None:
                context.log.info(f"uncond_images[{shard}]: {done}/{total} images")

            manifest, new = generate_partition(plan, render, partition, s.gen_batch_size, progress)
        grid = picture_rows([[resized_image(storage.inside(p, "row"), s.gan_resolution)
                              for p in manifest["image_path"][:GRID_SAMPLES]]],
                            labels=manifest["image_id"][:GRID_SAMPLES].to_list())
        return PartitionResult(generation_metadata(manifest, new, ref, partition, grid, f"shard {shard} samples"))

    return over_partitions(context, one)


def uncond_label_images(storage: StorageResource, shard: str) -> pl.DataFrame:
    path = storage.path(layout.synthetic_manifest(UNCOND, shard))
    if not path.exists():
        raise GenerationError(f"no unconditional images in shard {shard}: materialize uncond_images[{shard}] first")
    frame = read_parquet_checked(path, columns=["image_id", "image_path"])
    paths = [str(storage.inside(p, f"uncond {shard} image {i}")) for i, p in frame.iter_rows()]
    return frame.with_columns(pl.Series("image_path", paths, dtype=pl.String))


uncond_labels = labeler_asset(
    "uncond_labels", uncond_label_images, gen_shard_partitions, deps=[uncond_images],
    description="Pseudo-label masks of a shard's unconditional images by the champion segmentation model "
                "(its version is in every manifest row).")


@dg.asset(group_name="generation", code_version="1", kinds={"pytorch", "parquet", "png"},
          partitions_def=s2_tile_partitions, pool=GPU_POOL, op_tags=GPU_OP_TAGS, deps=[cond_gan, "splits", "real_patches"],
          backfill_policy=BACKFILL_POLICY)
def cond_images(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
                device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """cond_images_per_mask images for every training patch of each tile of the run, conditioned
    on its mask; the manifest names the conditioning patch and the label is that mask at the
    generator's resolution. Resumable like uncond_images."""
    s = settings.get()
    runtime = device.runtime(inference=True)
    with step_errors(context, s.retry_window_s):  # the generator once for every tile of the run
        G, ref = registered_generator(storage, mlflow, s, COND)
        G = runtime.prepare(G)

    def render(rows: pl.DataFrame) -> np.ndarray:
        masks = np.stack([resized_mask(storage.inside(p, "row"), s.gan_resolution) for p in rows["source_mask_path"]])
        for path, mask in zip(rows["mask_path"], masks, strict=True):  # the label, before the image
            storage.write_bytes(storage.inside(path, "row"), png_bytes(mask_to_rgb(mask)))
        return generate_cond(G, masks, rows["seed"].to_list(), runtime)

    def one(tile: str) -> PartitionResult:
        with step_errors(context, s.retry_window_s):
            tile_patches = tile_training_patches(storage, tile)
            plan = cond_plan(tile, tile_patches, s.cond_images_per_mask, s.gen_seed,
                             generator_run(ref, runtime, s, context))
            partition = Partition(storage.root_path, layout.synthetic_dir(COND, tile).as_posix())

            def progress(done: int, total: int) -> None:
                context.log.info(f"cond_images[{tile}]: {done}/{total} images")

            manifest, new = generate_partition(plan, render, partition, s.gen_batch_size, progress)
        picks = manifest.head(GRID_SAMPLES)
        if not picks.height:
            return PartitionResult({"images": 0, "model_version": str(ref), "note": f"tile {tile} has no training patches"})
        grid = picture_rows([[resized_image(storage.inside(p, "row"), s.gan_resolution) for p in picks["mask_path"]],
                             [resized_image(storage.inside(p, "row"), s.gan_resolution) for p in picks["image_path"]]],
                            labels=picks["image_id"].to_list(), legend=True)
        return PartitionResult(generation_metadata(manifest, new, ref, partition, grid, "mask above its synthetic image"))

    return over_partitions(context, one)


FID_NOTE = ("Encoder-space FID is not on the Inception scale of the paper's 16 / 72 (set fid_inception_weights for "
            "that); compare runs with each other. It differs from the training-time FID of the same model because that "
            "one samples the EMA generator with fixed seeds and no truncation at training time, while this one scores the "
            "published images (their seeds and truncation_psi), evenly sampled up to fid_images.")


@dg.asset(group_name="evaluation", code_version="1", kinds={"pytorch", "mlflow"}, pool=GPU_POOL, op_tags=GPU_OP_TAGS,
          deps=[dg.AssetDep(uncond_images, partition_mapping=dg.AllPartitionMapping()),
                dg.AssetDep(cond_images, partition_mapping=dg.AllPartitionMapping()),
                # what it also reads: the training patches (the reference) and the labeler's encoder
                dg.AssetDep("splits"), dg.AssetDep("real_patches", partition_mapping=dg.AllPartitionMapping()),
                dg.AssetDep("segmentation_model", partition_mapping=dg.AllPartitionMapping())])
def gan_fid(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
            device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """FID of the unconditional and conditional images against the training patches, in the
    segmentation encoder's feature space (and Inception's when fid_inception_weights is set),
    beside the paper's 16 and 72. Written to eval/generation/fid.json and the generators' runs."""
    s = settings.get()
    runtime = device.runtime(inference=True)
    rows = []
    with step_errors(context, s.retry_window_s):
        real_picks = even_rows(train_records(storage)[0], s.fid_images)
        sets = {}
        for origin in (UNCOND, COND):
            manifest = synthetic_manifests(storage, origin)
            if manifest.height < 2:
                context.log.warning(f"FID of {origin}: fewer than 2 images; materialize {origin}_images first")
            else:
                sets[origin] = even_rows(manifest, s.fid_images)
        features, encoder_ref = registered_encoder(mlflow.client(), mlflow.resolved_tracking_uri, s.label_model)
        spaces = {f"encoder ({encoder_ref})": (features, FEATURE_SIZE)}
        if s.fid_inception_weights:
            spaces["inception-v3 pool3"] = (inception_feature_fn(storage.resolve(s.fid_inception_weights)), 299)
        client = mlflow.client()
        for space, (fn, size) in spaces.items():
            reference = image_stats(storage, real_picks, s.gan_resolution, fn, size, runtime.torch_device)
            for origin, picks in sets.items():
                synthetic = image_stats(storage, picks, s.gan_resolution, fn, size, runtime.torch_device)
                value = fid_from_stats(reference, synthetic)
                inception = not space.startswith("encoder")  # only Inception FID is on the paper's scale
                rows.append({"set": origin, "features": space, "fid": round(value, 4), "real_images": reference.count,
                             "synthetic_images": synthetic.count,
                             "paper_fid (Inception)": PAPER_FID[origin] if inception else None,
                             "model_version": f"{picks['model_name'][0]}/{picks['model_version'][0]}"})
                log_metrics(client, picks["mlflow_run_id"][0],
                            {f"fid_{'encoder' if space.startswith('encoder') else 'inception'}_{origin}_set": value})
        if not rows:
            raise BadInputError("no synthetic images yet: materialize uncond_images and cond_images first")
    out = storage.path(layout.FID_REPORT)
    storage.writable_dir(out.parent)
    storage.write_bytes(out, json.dumps(rows, indent=2).encode())
    context.log.info("FID: " + "; ".join(f"{r['set']} {r['fid']:.3f} ({r['features']})" for r in rows))
    return dg.MaterializeResult(metadata={
        "fid": dg.MetadataValue.md(markdown_table(rows)),
        **{f"fid_encoder_{r['set']}": r["fid"] for r in rows if r["features"].startswith("encoder")},
        "note": FID_NOTE,
        "path": dg.MetadataValue.path(str(out)),
    })


ASSETS = [uncond_gan, cond_gan, uncond_images, uncond_labels, cond_images, gan_fid]
