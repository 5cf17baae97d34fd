"""Segmentation plain functions: networks, checkpoints, data, training with resume, labeler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from aras_assets.landcover import NUM_CLASSES, PALETTE, mask_to_rgb
from aras_assets.segmentation.data import PatchDataset, SplitError, augment, read_mask, split_records
from aras_assets.segmentation.labeler import LABEL_COUNT_COLUMNS, Labeler, ShardError, label_images, shard_images
from aras_assets.segmentation.models import (
    CheckpointError,
    ModelSpec,
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from aras_assets.segmentation.registry import NoModelError, find_champion
from aras_assets.segmentation.training import TrainConfig, plan_resume, train
from aras_assets.settings import DEMO_ENCODERS, SEG_ARCHS
from resources.device import TorchRuntime

CPU = TorchRuntime("cpu")
TINY_SPEC = ModelSpec("pan", DEMO_ENCODERS["pan"])


@pytest.mark.parametrize("arch", SEG_ARCHS)
def test_every_architecture_runs_forward_and_backward(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, DEMO_ENCODERS[arch]))
    logits = model(torch.randn(2, 3, 128, 128))  # PAN pools its deepest map 8x further: 128 px at least
    assert logits.shape == (2, NUM_CLASSES, 128, 128)
    logits.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def write_pairs(folder: Path, count: int, size: int = 128, seed: int = 0) -> pl.DataFrame:
    """Image/mask PNG pairs where each class has its own colour plus noise (learnable fast)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        mask = np.zeros((size, size), dtype=np.uint8)
        for _ in range(4):
            c, y, x = rng.integers(NUM_CLASSES), *rng.integers(0, size - 16, 2)
            mask[y:y + int(rng.integers(16, 40)), x:x + int(rng.integers(16, 40))] = c
        image = np.clip(PALETTE[mask].astype(np.int16) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        pid = f"P_{i:03d}"
        Image.fromarray(image).save(folder / "images" / f"{pid}.png")
        Image.fromarray(mask_to_rgb(mask)).save(folder / "masks" / f"{pid}.png")
        rows.append({"patch_id": pid, "image_path": f"images/{pid}.png", "mask_path": f"masks/{pid}.png"})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("pairs")
    return root, write_pairs(root, 12)


def datasets(pairs: tuple[Path, pl.DataFrame]) -> tuple[PatchDataset, PatchDataset]:
    root, records = pairs
    return PatchDataset(root, records[:8], augment=True, seed=1), PatchDataset(root, records[8:])


CONFIG = TrainConfig(epochs=4, batch_size=4, eval_batch_size=4, lr=3e-3, ce_weight=1.0, patience=10)


def test_checkpoint_round_trip_and_mismatches(tmp_path: Path) -> None:
    model = build_model(TINY_SPEC)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, TINY_SPEC, model, epoch=3)
    loaded, spec, ckpt = load_model(path, TINY_SPEC)
    assert spec == TINY_SPEC and ckpt["epoch"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))
    with pytest.raises(CheckpointError, match=r"holds pan .* not the requested fpn"):
        load_checkpoint(path, ModelSpec("fpn", TINY_SPEC.encoder))
    save_checkpoint(path, ModelSpec("pan", TINY_SPEC.encoder, classes=5), build_model(ModelSpec("pan", TINY_SPEC.encoder, 5)))
    with pytest.raises(CheckpointError, match="predicts 5 classes, the land-cover schema has 7"):
        load_model(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{path.name} cannot be read"):
        load_checkpoint(path)


def test_mask_outside_the_palette_is_an_error_naming_the_file(tmp_path: Path) -> None:
    mask = np.zeros((8, 8, 3), dtype=np.uint8)
    mask[...] = PALETTE[2]
    mask[3, 5] = (1, 2, 3)
    Image.fromarray(mask).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad\.png: colour \(1, 2, 3\) at pixel \(row 3, col 5\)"):
        read_mask(tmp_path / "bad.png")
    records = pl.DataFrame({"patch_id": ["a"], "image_path": ["bad.png"], "mask_path": ["bad.png"]})
    with pytest.raises(ValueError, match=r"bad\.png"):
        PatchDataset(tmp_path, records)[0]


def test_split_records_refuse_missing_or_empty_splits() -> None:
    manifest = pl.DataFrame({"patch_id": ["a", "b"], "image_path": ["a.png", "b.png"], "mask_path": ["am", "bm"]})
    table = pl.DataFrame({"patch_id": ["a", "b"], "split": ["train", "test"]})
    assert split_records(manifest, table, "train")["patch_id"].to_list() == ["a"]
    with pytest.raises(SplitError, match="'val' split has no patches"):
        split_records(manifest, table, "val")
    with pytest.raises(SplitError, match="splits table is empty"):
        split_records(manifest, table.clear(), "train")
    with pytest.raises(SplitError, match="in no manifest"):
        split_records(manifest[:1], table, "test")


def test_augmentation_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, NUM_CLASSES, (32, 32)).astype(np.uint8)
    for seed in range(8):
        image, moved = augment(PALETTE[mask], mask, np.random.default_rng(seed), brightness=0, contrast=0)
        assert np.array_equal(np.rint(image * 255).astype(np.uint8), PALETTE[moved])


def test_training_learns_and_resume_continues_from_the_saved_epoch(pairs, tmp_path: Path) -> None:
    train_set, val_set = datasets(pairs)
    torch.manual_seed(0)
    straight = train(build_model(TINY_SPEC), TINY_SPEC, train_set, val_set, CONFIG, CPU, tmp_path / "a", "v1",
                     log=lambda _: None)
    assert [h["epoch"] for h in straight.history] == [1, 2, 3, 4]
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"]

    class Interrupted(Exception):
        pass

    def crash_after_two(record, scores):
        if record["epoch"] == 2:
            raise Interrupted

    folder = tmp_path / "b"
    with pytest.raises(Interrupted):
        train(build_model(TINY_SPEC), TINY_SPEC, train_set, val_set, CONFIG, CPU, folder, "v1",
              extra={"mlflow_run_id": "r1"}, on_epoch=crash_after_two, log=lambda _: None)
    resume = plan_resume(folder, TINY_SPEC, CONFIG, "v1")
    assert resume is not None and resume.epoch == 2 and resume.extra == {"mlflow_run_id": "r1"}
    resumed = train(build_model(TINY_SPEC), TINY_SPEC, train_set, val_set, CONFIG, CPU, folder, "v1", resume,
                    log=lambda _: None)
    assert resumed.resumed_from == 2 and resumed.extra["mlflow_run_id"] == "r1"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    # Same seeds, same batches: the resumed training ends where the uninterrupted one did.
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert resumed.best_epoch == straight.best_epoch
    assert plan_resume(folder, TINY_SPEC, CONFIG, "v1") is None  # finished: the next training starts over


def test_resume_refuses_another_architecture_and_restarts_on_changed_settings(pairs, tmp_path: Path) -> None:
    train_set, val_set = datasets(pairs)
    one = TrainConfig(**{**CONFIG.__dict__, "epochs": 2})

    def stop(record, scores):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(build_model(TINY_SPEC), TINY_SPEC, train_set, val_set, one, CPU, tmp_path, "v1", on_epoch=stop,
              log=lambda _: None)
    assert plan_resume(tmp_path, TINY_SPEC, one, "v1") is not None
    messages: list[str] = []
    assert plan_resume(tmp_path, TINY_SPEC, one, "v2", log=messages.append) is None
    assert "other splits" in messages[0]
    assert plan_resume(tmp_path, TINY_SPEC, TrainConfig(**{**one.__dict__, "lr": 0.1}), "v1") is None
    with pytest.raises(CheckpointError, match="pan checkpoint in the folder of fpn"):
        plan_resume(tmp_path, ModelSpec("fpn", TINY_SPEC.encoder), one, "v1")


def test_labeler_writes_one_mask_per_image(pairs, tmp_path: Path) -> None:
    root, records = pairs
    shard = tmp_path / "shard"
    shard.mkdir()
    for i, path in enumerate(records["image_path"][:5]):
        image = Image.open(root / path)
        (image if i < 3 else image.resize((160, 160))).save(shard / f"img_{i}.png")  # two sizes in one shard
    images = shard_images(shard)
    assert images["image_id"].to_list() == [f"img_{i}" for i in range(5)]
    labeler = Labeler(build_model(TINY_SPEC).eval(), TINY_SPEC, "aras-segmentation-pan", "7")
    seen: list[int] = []
    rows = label_images(labeler, images, tmp_path / "out", "out", CPU, batch_size=4,
                        progress=lambda done, total: seen.append(done))
    assert rows["image_id"].to_list() == images["image_id"].to_list() and seen == [4, 5]
    assert set(rows["model_version"]) == {"7"} and set(rows["model_name"]) == {"aras-segmentation-pan"}
    for row in rows.iter_rows(named=True):
        mask = read_mask(tmp_path / row["mask_path"])
        size = 128 if row["image_id"] < "img_3" else 160
        assert mask.shape == (size, size) == (row["height"], row["width"])
        assert sum(row[c] for c in LABEL_COUNT_COLUMNS) == size * size


def test_labeler_shard_errors(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="does not exist"):
        shard_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="holds no images"):
        shard_images(tmp_path / "empty")
    manifest = tmp_path / "m.parquet"
    pl.DataFrame({"image_path": ["a.png"]}).write_parquet(manifest)
    images = shard_images(manifest)
    assert images.row(0) == ("a", str(tmp_path / "a.png"))
    labeler = Labeler(build_model(TINY_SPEC).eval(), TINY_SPEC, "m", "1")
    with pytest.raises(ShardError, match=r"a\.png does not exist"):
        label_images(labeler, images, tmp_path / "out", "out", CPU)


def test_no_champion_is_a_clear_error(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(NoModelError, match="materialize segmentation_model"):
        find_champion(MlflowClient(uri, uri))


def test_evaluate_runs_in_eval_mode_and_leaves_batchnorm_alone(pairs) -> None:
    from aras_assets.segmentation.data import make_loader
    from aras_assets.segmentation.training import evaluate

    model = build_model(TINY_SPEC).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, make_loader(datasets(pairs)[1], 4), CPU)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
