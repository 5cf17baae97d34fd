"""The labeler asset factory: an asset that labels each partition's images with a registered
segmentation model (real_patch_labels and uncond_labels are made by it)."""

import tempfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import polars as pl

from aras_assets import layout
from aras_assets.deploy import GPU_OP_TAGS, GPU_POOL
from aras_assets.errors import step_errors
from aras_assets.landcover import CLASS_NAMES
from aras_assets.mlflow_runs import download_checkpoint
from aras_assets.ranged import BACKFILL_POLICY, PartitionResult, over_partitions
from aras_assets.segmentation.labeler import Labeler, label_images
from aras_assets.segmentation.models import load_model
from aras_assets.segmentation.registry import resolve_version
from aras_assets.settings import SettingsResource
from resources import MlflowResource, StorageResource, TorchDeviceResource
from resources.storage import staged_directory

ImagesFor = Callable[[StorageResource, str], pl.DataFrame]


def labeler_asset(name: str, images_for: ImagesFor, partitions_def: dg.PartitionsDefinition,
                  deps: list, description: str, group_name: str = "labels") -> dg.AssetsDefinition:
    """An asset that labels the images of each partition of its run with the configured model version
    (`label_model`: champion by default) and writes masks plus a manifest naming it.
    `images_for(storage, partition)` gives the partition's image_id and image_path."""

    @dg.asset(name=name, group_name=group_name, code_version="1", kinds={"pytorch", "parquet", "png"},
              partitions_def=partitions_def, pool=GPU_POOL, op_tags=GPU_OP_TAGS, description=description,
              backfill_policy=BACKFILL_POLICY,
              deps=[*deps, dg.AssetDep("segmentation_model", partition_mapping=dg.AllPartitionMapping())])
    def _labels(context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource,
                device: TorchDeviceResource, mlflow: MlflowResource) -> dg.MaterializeResult:
        s = settings.get()
        with step_errors(context, s.retry_window_s):  # the model once for every partition of the run
            ref = resolve_version(mlflow.client(), s.label_model)
            with tempfile.TemporaryDirectory() as scratch:
                model, spec, _ = load_model(download_checkpoint(mlflow.resolved_tracking_uri, ref, Path(scratch)))
        labeler = Labeler(model, spec, ref.name, ref.version)
        runtime = device.runtime(inference=True)

        def one(partition: str) -> PartitionResult:
            with step_errors(context, s.retry_window_s):
                images = images_for(storage, partition)
                final = storage.path(layout.labels_dir(name, partition))
                storage.writable_dir(final.parent)

                def progress(done: int, total: int) -> None:
                    context.log.info(f"{name}[{partition}]: {done}/{total} images labelled")

                masks_rel = (layout.labels_dir(name, partition) / layout.MASKS).as_posix()  # as manifests record it
                with staged_directory(final) as stage:
                    rows = label_images(labeler, images, stage / layout.MASKS, masks_rel, runtime, s.label_batch_size,
                                        s.png_compress_level, progress)
                    storage.write_parquet(rows, stage / layout.MANIFEST)
            totals = {c: int(rows[f"px_{c}"].sum()) for c in CLASS_NAMES}
            pixels = max(sum(totals.values()), 1)
            return PartitionResult({
                "images": rows.height, "model_version": str(ref), "model_uri": ref.uri,
                "manifest": dg.MetadataValue.path(str(final / layout.MANIFEST)),
                "class_shares": dg.MetadataValue.json({c: round(v / pixels, 4) for c, v in totals.items()}),
            })

        return over_partitions(context, one)

    return _labels
