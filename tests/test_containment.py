"""Untrusted inputs stay untrusted: manifest paths and ids cannot leave the data root, checkpoints
load weights only, the captioner key comes from one fixed variable, and broken files (a corrupt
manifest, a truncated PNG, a full disk) are bad inputs naming the file or folder."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from aras_assets import layout
from aras_assets.captions.assets import real_captions, real_compositions
from aras_assets.errors import BadInputError
from aras_assets.generation.assets import uncond_label_images
from aras_assets.generation.data import GenerationError
from aras_assets.generation.manifest import SYNTHETIC_SCHEMA
from aras_assets.generation.regenerate import regenerate
from aras_assets.generation.training import load_generator
from aras_assets.ids import synthetic_id
from aras_assets.landcover import mask_to_rgb
from aras_assets.partitions import S2_TILE_PARTITIONS
from aras_assets.segmentation.data import ImageFileError, read_mask, verified_image_bytes
from aras_assets.segmentation.labeler import Labeler, ShardError, label_images, shard_images
from aras_assets.sources.assets import splits
from resources.captioner import CaptionerResource
from resources.storage import StorageError, StorageResource, contained, read_parquet_checked, write_parquet_atomic
from tests.conftest import make_resources

TILE = "N38E028"


def png(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask_to_rgb(np.zeros((size, size), dtype=np.uint8))).save(buffer, format="PNG")
    return buffer.getvalue()


def test_contained_refuses_paths_leaving_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert contained(root, "a/b.png") == (root / "a" / "b.png").resolve()
    (root / "link").symlink_to(tmp_path)
    for bad in ("../../../x", "/etc/passwd", "link/outside.png"):
        with pytest.raises(BadInputError, match=r"row 7: path .* leaves"):
            contained(root, bad, "row 7")
    with pytest.raises(BadInputError, match="leaves"):
        StorageResource(root=str(root)).inside("../x")


def test_labeler_refuses_ids_and_paths_outside(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(png())
    manifest = tmp_path / "shard.parquet"
    pl.DataFrame({"image_id": ["../../../x"], "image_path": ["img.png"]}).write_parquet(manifest)
    with pytest.raises(ShardError, match=r"'\.\./\.\./\.\./x' is not a plain file name"):
        shard_images(manifest)
    pl.DataFrame({"image_id": ["a"], "image_path": ["../../../../etc/passwd"]}).write_parquet(manifest)
    with pytest.raises(BadInputError, match=r"row a: path '\.\./\.\./\.\./\.\./etc/passwd' leaves"):
        shard_images(manifest)
    # The asset's path: ids come from the synthetic manifest, straight into label_images.
    images = pl.DataFrame({"image_id": ["../../../x"], "image_path": [str(tmp_path / "img.png")]})
    out = tmp_path / "out" / "masks"
    with pytest.raises(ShardError, match="not a plain file name"):
        label_images(Labeler(torch.nn.Identity(), None, "m", "1"), images, out, "masks", None)  # type: ignore[arg-type]
    assert not (tmp_path / "x.png").exists()


def test_uncond_labels_refuse_image_paths_outside(data_root: Path) -> None:
    path = data_root / layout.synthetic_manifest(layout.UNCOND, "0000")
    path.parent.mkdir(parents=True)
    pl.DataFrame({"image_id": ["uncond_0000_00000"], "image_path": ["../../../../etc/passwd"]}).write_parquet(path)
    with pytest.raises(BadInputError, match=r"uncond 0000 image uncond_0000_00000: path .* leaves"):
        uncond_label_images(StorageResource(root=str(data_root)), "0000")


def test_regenerate_refuses_a_mask_outside_before_fetching(data_root: Path) -> None:
    image_id = synthetic_id("cond", TILE, 0)
    row = {"image_id": image_id, "origin": "cond", "shard": TILE, "index": 0, "batch_start": 0, "batch_size": 1,
           "image_path": f"synthetic/cond/{TILE}/images/{image_id}.png", "mask_path": "../../../../etc/passwd",
           "model_name": "m", "model_version": "1", "mlflow_run_id": "r", "device": "cpu", "precision": "fp32"}
    frame = pl.DataFrame([row]).cast({k: SYNTHETIC_SCHEMA[k] for k in row}) \
        .match_to_schema(SYNTHETIC_SCHEMA, missing_columns="insert", extra_columns="ignore")
    path = data_root / layout.synthetic_manifest(layout.COND, TILE)
    path.parent.mkdir(parents=True)
    frame.write_parquet(path)
    with pytest.raises(BadInputError, match=f"{image_id}'s batch image {image_id}: path .* leaves"):
        regenerate(data_root, "file:///nonexistent", image_id)


class _Payload:
    def __reduce__(self):  # what a hostile checkpoint does on load
        return (exec, ("import os; os.environ['ARAS_TEST_UNPICKLED'] = '1'",))


def test_generator_checkpoints_load_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARAS_TEST_UNPICKLED", raising=False)
    path = tmp_path / "generator.pt"
    torch.save({"kind": "uncond", "generator": {}, "model_config": {}, "x": _Payload()}, path)
    with pytest.raises(GenerationError, match="not a readable generator checkpoint"):
        load_generator(path, "uncond")
    assert "ARAS_TEST_UNPICKLED" not in os.environ


def test_captioner_key_env_is_not_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Run config (the launchpad) can set any field: none may name the variable the key is read from.
    assert not [name for name in CaptionerResource.model_fields if "env" in name or "key" in name]
    monkeypatch.setenv("ARAS_CAPTIONER_API_KEY", "the-key")
    client = CaptionerResource(backend="openai", endpoint="http://127.0.0.1:9/v1", model="m").client()
    assert client.api_key == "the-key"  # type: ignore[union-attr]


def _patch_manifest(root: Path, image_path: str, mask_path: str) -> None:
    path = root / layout.patch_manifest(TILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"patch_id": [f"{TILE}_r000_c000"], "s2_tile": [TILE], "row": [0], "col": [0],
                  "image_path": [image_path], "mask_path": [mask_path]}).write_parquet(path)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    return failures[0].step_failure_data.error.message  # type: ignore[union-attr]


def test_assets_refuse_outside_paths_and_broken_files(data_root: Path, tmp_path: Path,
                                                       instance: dg.DagsterInstance) -> None:
    resources = make_resources(data_root, tmp_path / "no_source")
    instance.add_dynamic_partitions(S2_TILE_PARTITIONS, [TILE])
    images = data_root / "patches" / TILE / "images"
    images.mkdir(parents=True)
    (images / "m.png").write_bytes(png())
    (images / "cut.png").write_bytes(png()[:60])  # truncated

    def run(asset: dg.AssetsDefinition) -> str:
        result = dg.materialize([asset], partition_key=TILE if asset is not splits else None, resources=resources,
                                instance=instance, raise_on_error=False)
        assert not result.success
        return _failure(result)

    # real_captions would send /etc/passwd to the endpoint.
    _patch_manifest(data_root, "../../../../etc/passwd", f"patches/{TILE}/images/m.png")
    comps = data_root / layout.compositions_file(layout.REAL, TILE)
    comps.parent.mkdir(parents=True)
    pl.DataFrame({"image_id": [f"{TILE}_r000_c000"], "origin": ["real"], "mask_path": ["x"]}).write_parquet(comps)
    assert "path '../../../../etc/passwd' leaves" in run(real_captions)
    # A truncated mask PNG: a bad input naming it, not a raw OSError.
    _patch_manifest(data_root, f"patches/{TILE}/images/m.png", f"patches/{TILE}/images/cut.png")
    assert "cut.png is corrupt or truncated" in run(real_compositions)
    # A corrupt manifest: named, not a polars ComputeError.
    manifest = data_root / layout.patch_manifest(TILE)
    manifest.write_bytes(manifest.read_bytes()[:40])
    catalog = data_root / layout.CATALOG
    catalog.parent.mkdir(parents=True)
    pl.DataFrame({"s2_tile": [TILE]}).write_parquet(catalog)
    for asset in (real_compositions, real_captions, splits):
        assert f"{manifest} cannot be read as Parquet" in run(asset)


def test_broken_files_are_named(tmp_path: Path) -> None:
    cut = tmp_path / "cut.png"
    cut.write_bytes(png()[:60])
    for read in (read_mask, verified_image_bytes):
        with pytest.raises(ImageFileError, match=r"cut.png is corrupt or truncated"):
            read(cut)
    bad = tmp_path / "m.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(BadInputError, match=r"m.parquet cannot be read as Parquet"):
        read_parquet_checked(bad)


def test_full_disk_names_the_folder_and_keeps_the_previous_version(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "compositions" / "real" / "x.parquet"
    write_parquet_atomic(pl.DataFrame({"a": [1]}), out)

    def full(self: pl.DataFrame, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    with pytest.raises(StorageError, match=f"no space left writing under {out.parent}"):
        write_parquet_atomic(pl.DataFrame({"a": [2]}), out)
    monkeypatch.undo()
    assert pl.read_parquet(out)["a"].to_list() == [1]
    assert [p.name for p in out.parent.iterdir()] == ["x.parquet"]
