"""Segmentation assets through dagster.materialize: a tiny model trained on the sample region,
registered in MLflow with the champion alias, evaluated, and used to label a tile."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from aras_assets.segmentation.assets import ASSETS as SEG_ASSETS
from aras_assets.segmentation.assets import real_patch_labels, segmentation_eval, segmentation_model
from aras_assets.segmentation.registry import CHAMPION, NoModelError, model_name, resolve_version
from aras_assets.sources.assets import ASSETS as SOURCE_ASSETS
from aras_assets.sources.assets import real_patches, splits, tile_catalog
from tests.conftest import make_resources

ALL = [*SOURCE_ASSETS, *SEG_ASSETS]
# A bigger validation split than the demo's, so its accuracy is a steady measure on ~50 patches.
TINY = {"split_fractions": "[0.6, 0.3, 0.1]", "seg_epochs": "14", "seg_batch_size": "4", "seg_lr": "0.003"}


def materialize(selection, resources, instance, partition_key=None, raise_on_error=True):
    return dg.materialize(ALL, selection=selection, resources=resources, instance=instance,
                          partition_key=partition_key, raise_on_error=raise_on_error)


@pytest.fixture(scope="module")
def trained(sample_region: Path, tmp_path_factory: pytest.TempPathFactory):
    """Sources plus pan trained 14 epochs and deeplabv3plus trained 1 epoch, on one instance."""
    root = tmp_path_factory.mktemp("seg") / "data"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        mp.setenv("ARAS_DATA_ROOT", str(root))
        resources = make_resources(root, sample_region, **TINY)
        materialize([tile_catalog], resources, instance)
        for tile in instance.get_dynamic_partitions("s2_tile"):
            materialize([real_patches], resources, instance, tile)
        materialize([splits], resources, instance)
        pan = materialize([segmentation_model], resources, instance, "pan")
        quick = make_resources(root, sample_region, **{**TINY, "seg_epochs": "1"})
        deeplab = materialize([segmentation_model], quick, instance, "deeplabv3plus")
        yield {"root": root, "resources": resources, "instance": instance, "pan": pan, "deeplab": deeplab}


def metadata(result, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def val_majority_accuracy(root: Path) -> float:
    table = pl.read_parquet(root / "splits" / "splits.parquet").filter(pl.col("split") == "val")
    manifests = pl.concat([pl.read_parquet(p) for p in root.glob("patches/*/manifest.parquet")])
    counts = manifests.join(table.select("patch_id"), on="patch_id").select(pl.col("^px_.*$")).sum().row(0)
    return max(counts) / sum(counts)


def test_tiny_model_beats_the_majority_class(trained) -> None:
    meta = metadata(trained["pan"], "segmentation_model")
    majority = val_majority_accuracy(trained["root"])
    assert meta["val_accuracy"] > 100 * (majority + 0.1), (meta["val_accuracy"], majority)  # percent
    assert meta["model_version"] == "aras-segmentation-pan/1"
    assert (trained["root"] / "models" / "segmentation" / "pan" / "best.pt").exists()


def test_mlflow_has_run_version_and_champion(trained) -> None:
    client = trained["resources"]["mlflow"].client()
    meta = {arch: metadata(trained[key], "segmentation_model") for arch, key in (("pan", "pan"),
                                                                                ("deeplabv3plus", "deeplab"))}
    run = client.get_run(meta["pan"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster.partition"] == "pan"
    assert run.data.tags["dagster.run_id"] == trained["pan"].run_id
    assert len(run.data.tags["aras.splits_version"]) == 24
    assert run.data.params["train.epochs"] == "14"
    history = client.get_metric_history(run.info.run_id, "epoch/val_f1")
    assert len(history) == meta["pan"]["epochs_run"] and len(history) >= 6
    # The run's summary is the best epoch's, in percent: what was registered, not the last epoch's.
    assert run.data.metrics["val_f1"] == meta["pan"]["val_f1"] == max(h.value for h in history)
    assert run.data.metrics["best_epoch"] == meta["pan"]["best_epoch"] and 1 < meta["pan"]["val_f1"] <= 100
    assert meta["pan"]["mlflow_run"] == f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert meta["pan"]["mlflow_model_version"] == "http://127.0.0.1:5000/#/models/aras-segmentation-pan/versions/1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/val_confusion.png", "plots/val_predictions.png"} <= artifacts
    versions = {arch: client.get_model_version(model_name(arch), "1") for arch in meta}
    assert all(v.run_id == meta[a]["mlflow_run_id"] for a, v in versions.items())
    best = max(meta, key=lambda a: meta[a]["val_f1"])
    holder = client.get_registered_model(model_name(best))
    assert str(holder.aliases.get(CHAMPION)) == "1"
    other = next(a for a in meta if a != best)
    assert CHAMPION not in client.get_registered_model(model_name(other)).aliases
    assert str(resolve_version(client, "champion")) == f"{model_name(best)}/1"
    assert str(resolve_version(client, "deeplabv3plus")) == "aras-segmentation-deeplabv3plus/1"
    assert resolve_version(client, "pan/1").run_id == meta["pan"]["mlflow_run_id"]
    with pytest.raises(NoModelError, match="unet/3"):
        resolve_version(client, "unet/3")
    import mlflow

    mlflow.set_tracking_uri(trained["resources"]["mlflow"].resolved_tracking_uri)
    loaded = mlflow.pytorch.load_model(f"models:/{model_name(best)}@{CHAMPION}")
    assert sum(p.numel() for p in loaded.parameters()) == meta[best]["parameters"]
    # As the MLflow docs describe a model entry: signature, input example, descriptions, source commit, inputs.
    info = mlflow.models.get_model_info(f"models:/{model_name(best)}@{CHAMPION}")
    assert info.signature is not None and list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"][1:]) == [3, 256, 256]
    assert info.saved_input_example_info is not None
    version = client.get_model_version(model_name(best), "1")
    assert "validation macro F1" in version.description and "segmentation" in client.get_registered_model(
        model_name(best)).description
    assert len(version.tags["aras.source_commit"]) in (40, len("unknown"))
    inputs = client.get_run(version.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["splits"]
    assert inputs[0].dataset.digest == run.data.tags["aras.splits_version"][:36]


def test_eval_writes_tables_beside_the_paper(trained) -> None:
    result = materialize([segmentation_eval], trained["resources"], trained["instance"], "pan")
    meta = metadata(result, "segmentation_eval")
    assert 0 < meta["test_f1"] <= 100 and meta["model_version"] == "aras-segmentation-pan/1"
    assert "| PAN | ours |" in meta["table3"]
    assert "|  | paper | 76.20 | 64.10 | 75.29 | 77.60 | 84.62 |" in meta["table3"]
    assert "|  | paper | 90.31 | 46.88 | 84.05 | 86.38 | 71.50 | 60.58 | 93.69 |" in meta["table4"]
    stored = json.loads((trained["root"] / "eval" / "segmentation" / "pan" / "metrics.json").read_text())
    assert np.array(stored["confusion"]).sum() == meta["test_pixels"]
    run = trained["resources"]["mlflow"].client().get_run(meta["mlflow_run_id"])
    assert run.data.metrics["test_f1"] == meta["test_f1"]  # one unit: percent, two decimals
    absent = [k for k, v in meta.items() if k.startswith("test_f1_") and v is None]
    assert all(k not in run.data.metrics for k in absent)  # an absent class is null, never 0


def test_labeler_asset_writes_one_mask_per_image(trained) -> None:
    root, instance = trained["root"], trained["instance"]
    tile = sorted(instance.get_dynamic_partitions("s2_tile"))[0]
    result = materialize([real_patch_labels], trained["resources"], instance, tile)
    meta = metadata(result, "real_patch_labels")
    labels = pl.read_parquet(root / "labels" / "real_patch_labels" / tile / "manifest.parquet")
    patches = pl.read_parquet(root / "patches" / tile / "manifest.parquet")
    assert labels["image_id"].to_list() == patches["patch_id"].to_list() == sorted(labels["image_id"])
    client = trained["resources"]["mlflow"].client()
    champion = next(m for m in client.search_registered_models() if CHAMPION in m.aliases)
    assert set(labels["model_name"]) == {champion.name} and meta["model_version"] == f"{champion.name}/1"
    for row in labels.iter_rows(named=True):
        with Image.open(root / row["mask_path"]) as im:
            assert im.size == (256, 256) and im.mode == "RGB"
    assert labels.select(pl.sum_horizontal(pl.col("^px_.*$"))).to_series().unique().to_list() == [256 * 256]


def test_eval_without_a_trained_model_says_what_to_do(trained) -> None:
    result = materialize([segmentation_eval], trained["resources"], trained["instance"], "unet",
                         raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "materialize segmentation_model for partition unet" in str(failure.event_specific_data.error.message)


def test_training_without_splits_says_what_to_do(sample_region: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with dg.instance_for_test() as instance:
        result = materialize([segmentation_model], make_resources(root, sample_region), instance, "pan",
                             raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "materialize splits first" in str(failure.event_specific_data.error.message)
    assert not (root / "mlflow.db").exists() or not list((root / "models").glob("*/*/last.pt"))


def test_aras_label_command(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from aras_assets.cli import main

    root = trained["root"]
    shard = sorted((root / "patches").glob("*/images"))[0]
    uri = trained["resources"]["mlflow"].resolved_tracking_uri
    assert main(["label", str(shard), "--out", str(tmp_path / "out"), "--model", "pan/1", "--tracking-uri", uri]) == 0
    rows = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert rows.height == len(list(shard.glob("*.png"))) and set(rows["model_version"]) == {"1"}
    assert all((tmp_path / "out" / p).exists() for p in rows["mask_path"])
    assert main(["label", str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--tracking-uri", uri]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_aras_label_writes_georeferenced_masks_for_s2_geotiffs(trained, sample_region: Path, tmp_path: Path) -> None:
    """A 4-band uint16 S2 crop of the sample region in, a mask GeoTIFF with its CRS, transform
    and colour table (and a PNG) out, by the registered model."""
    import rasterio
    from rasterio.windows import Window

    from aras_assets.cli import main
    from aras_assets.landcover import PALETTE

    source = sorted(sample_region.glob("*S2RGBNIR.tif"))[0]
    crops = tmp_path / "crops"
    crops.mkdir()
    with rasterio.open(source) as src:
        window = Window(0, 0, 300, 280)
        profile = {**src.profile, "width": 300, "height": 280, "transform": src.window_transform(window)}
        with rasterio.open(crops / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    uri = trained["resources"]["mlflow"].resolved_tracking_uri
    assert main(["label", str(crops), "--out", str(tmp_path / "out"), "--model", "pan/1", "--tracking-uri", uri]) == 0
    with rasterio.open(crops / "crop.tif") as src, rasterio.open(tmp_path / "out" / "masks" / "crop.tif") as mask:
        assert (mask.crs, mask.transform, mask.shape, mask.dtypes[0]) == (src.crs, src.transform, src.shape, "uint8")
        classes = mask.read(1)
        assert classes.max() < 7 and mask.colormap(1)[1][:3] == tuple(PALETTE[1].tolist())
    row = pl.read_parquet(tmp_path / "out" / "manifest.parquet").row(0, named=True)
    assert sum(v for k, v in row.items() if k.startswith("px_")) == 300 * 280
    assert (tmp_path / "out" / row["mask_path"]).exists()
