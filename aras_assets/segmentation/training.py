"""The release's training recipe as plain functions: Dice (+ optional cross-entropy) loss,
AdamW, gradient clipping, ReduceLROnPlateau and early stopping on validation macro F1, the
best checkpoint kept, and resume from the last checkpoint after an interruption."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aras_assets.landcover import NODATA_INDEX, NUM_CLASSES
from aras_assets.segmentation.data import PatchDataset, make_loader
from aras_assets.segmentation.metrics import ConfusionMatrix, SegmentationScores
from aras_assets.segmentation.models import CheckpointError, ModelSpec, load_checkpoint, save_checkpoint
from resources.device import TorchRuntime

if TYPE_CHECKING:
    from aras_assets.settings import Settings

LAST, BEST = "last.pt", "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 8
    eval_batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    ce_weight: float = 0.0
    lr_factor: float = 0.5
    lr_patience: int = 2
    patience: int = 5
    augment: bool = True
    seed: int = 0
    workers: int = 0


def train_config(s: Settings) -> TrainConfig:
    """The recipe the settings give (segmentation_model and every ablation partition use it)."""
    return TrainConfig(epochs=s.seg_epochs, batch_size=s.seg_batch_size, eval_batch_size=s.seg_eval_batch_size,
                       lr=s.seg_lr, weight_decay=s.seg_weight_decay, grad_clip=s.seg_grad_clip,
                       ce_weight=s.seg_ce_weight, lr_factor=s.seg_lr_factor, lr_patience=s.seg_lr_patience,
                       patience=s.seg_patience, augment=s.seg_augment, seed=s.seg_seed, workers=s.seg_loader_workers)


@dataclass
class ResumeState:
    """What an unfinished training left in its last checkpoint."""

    checkpoint: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.checkpoint["epoch"])

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.checkpoint.get("extra", {}))


@dataclass
class TrainResult:
    spec: ModelSpec
    history: list[dict[str, float]]
    best_epoch: int
    best_scores: dict[str, float]
    stopped_early: bool
    resumed_from: int | None
    best_path: Path
    last_path: Path
    train_images_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loss(ce_weight: float = 0.0, ignore_index: int = NODATA_INDEX) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Multiclass Dice on the logits, plus `ce_weight` x cross-entropy when asked."""
    from segmentation_models_pytorch.losses import DiceLoss

    dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)

    def loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # losses in fp32 under autocast
        value = dice(logits, mask)
        return value + ce_weight * cross_entropy(logits, mask) if ce_weight > 0 else value

    return loss


def train_epoch(model: torch.nn.Module, forward: Callable, loader: torch.utils.data.DataLoader, loss_fn: Callable,
                optimizer: torch.optim.Optimizer, runtime: TorchRuntime, grad_clip: float,
                scaler: torch.amp.GradScaler | None = None) -> tuple[float, int, float]:
    """One pass over the loader: mean loss, images seen and seconds taken."""
    model.train()
    total, images, start = 0.0, 0, time.perf_counter()
    for image, mask in loader:
        image, mask = runtime.to_device(image), mask.to(runtime.torch_device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            logits = forward(image)
        loss = loss_fn(logits, mask)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total += float(loss.detach()) * image.shape[0]
        images += image.shape[0]
    return total / max(images, 1), images, time.perf_counter() - start


def predict(forward: Callable, image: torch.Tensor, runtime: TorchRuntime,
            fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-pixel class of one batch already on the device; under the runtime's autocast
    (bf16 labels faster) unless `fp32`."""
    with contextlib.nullcontext() if fp32 else runtime.autocast():
        logits = forward(image)
    return logits, logits.argmax(1)


def evaluate(forward: Callable, loader: torch.utils.data.DataLoader, runtime: TorchRuntime,
             loss_fn: Callable | None = None, num_classes: int = NUM_CLASSES,
             fp32: bool = True) -> tuple[ConfusionMatrix, float]:
    """Accumulate one confusion matrix over the loader (and the mean loss when given). In fp32 by
    default: reported scores must not move with the autocast precision (a few argmax ties flip in bf16)."""
    matrix = ConfusionMatrix(num_classes)
    total, images = 0.0, 0
    if isinstance(forward, torch.nn.Module):
        forward.eval()  # running BatchNorm statistics, no dropout (and they stay untouched)
    with torch.inference_mode():
        for image, mask in loader:
            image, mask = runtime.to_device(image), mask.to(runtime.torch_device, non_blocking=True)
            logits, pred = predict(forward, image, runtime, fp32)
            matrix.update(mask, pred)
            if loss_fn is not None:
                total += float(loss_fn(logits, mask)) * image.shape[0]
            images += image.shape[0]
    return matrix, total / max(images, 1)


def plan_resume(checkpoint_dir: Path, spec: ModelSpec, config: TrainConfig, data_version: str,
                log: Callable[[str], None] = print) -> ResumeState | None:
    """The unfinished training to continue, if the last checkpoint is one for this model,
    recipe and data. A checkpoint for another architecture or class count is an error; one
    from a finished training, another encoder, recipe or data version is started over."""
    path = checkpoint_dir / LAST
    if not path.exists():
        return None
    ckpt = load_checkpoint(path, expect_classes=spec.classes)
    found: ModelSpec = ckpt["spec"]
    if found.arch != spec.arch:
        raise CheckpointError(f"{path} is a {found.arch} checkpoint in the folder of {spec.arch}; "
                              "move or delete it to train here")
    if ckpt.get("finished"):
        return None
    reason = ("encoder" if found.encoder != spec.encoder else
              "training settings" if ckpt.get("config") != dataclasses.asdict(config) else
              "splits" if ckpt.get("data_version") != data_version else None)
    if reason:
        log(f"an unfinished training in {path} used other {reason}; starting over")
        return None
    return ResumeState(ckpt)


def train(model: torch.nn.Module, spec: ModelSpec, train_set: PatchDataset, val_set: PatchDataset,
          config: TrainConfig, runtime: TorchRuntime, checkpoint_dir: Path, data_version: str,
          resume: ResumeState | None = None, extra: dict[str, Any] | None = None,
          on_epoch: Callable[[dict[str, float], SegmentationScores], None] | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train until `config.epochs` or early stopping; `last.pt` after every epoch (resume point),
    `best.pt` whenever validation macro F1 improves. `extra` rides along in both checkpoints."""
    seed_everything(config.seed)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    model = runtime.prepare(model)
    forward = runtime.compiled(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_factor,
                                                           patience=config.lr_patience)
    fp16 = runtime.autocast_dtype == torch.float16
    scaler = torch.amp.GradScaler(runtime.torch_device.type) if fp16 else None
    loss_fn = make_loss(config.ce_weight)
    history: list[dict[str, float]] = []
    best_f1, best_epoch, bad_epochs, start = -1.0, 0, 0, 1
    best_scores: dict[str, float] = {}
    if resume is not None:
        saved = resume.checkpoint
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        history = list(saved["history"])
        best_f1, best_epoch, bad_epochs = saved["best_f1"], saved["best_epoch"], saved["bad_epochs"]
        best_scores = dict(saved["best_scores"])
        start = resume.epoch + 1
        log(f"{spec.arch}: resuming after epoch {resume.epoch} (best F1 {best_f1:.4f} at epoch {best_epoch})")
    extra = {**(resume.extra if resume else {}), **(extra or {})}

    train_loader = make_loader(train_set, config.batch_size, shuffle=True, workers=config.workers,
                               seed=config.seed, drop_last=len(train_set) > config.batch_size)
    val_loader = make_loader(val_set, config.eval_batch_size, workers=config.workers)
    stopped_early, seen, busy = False, 0, 0.0

    def state(epoch: int, finished: bool) -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                "history": history, "best_f1": best_f1, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "best_scores": best_scores, "config": dataclasses.asdict(config), "data_version": data_version,
                "torch_rng": torch.get_rng_state(), "finished": finished, "extra": extra}

    for epoch in range(start, config.epochs + 1):
        train_set.set_epoch(epoch)
        train_loader.generator.manual_seed(config.seed * 100_003 + epoch)  # same order whether resumed or not
        train_loss, images, seconds = train_epoch(model, forward, train_loader, loss_fn, optimizer, runtime,
                                                  config.grad_clip, scaler)
        seen, busy = seen + images, busy + seconds
        matrix, val_loss = evaluate(forward, val_loader, runtime, loss_fn)
        scores = matrix.scores()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(scores.f1)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                  "train_images_per_s": images / max(seconds, 1e-9), **scores.as_dict("val_")}
        history.append(record)
        if scores.f1 > best_f1:
            best_f1, best_epoch, bad_epochs = scores.f1, epoch, 0
            best_scores = scores.as_dict("val_")
            save_checkpoint(checkpoint_dir / BEST, spec, model, epoch=epoch, scores=best_scores,
                            config=dataclasses.asdict(config), data_version=data_version, extra=extra)
        else:
            bad_epochs += 1
        stop = bad_epochs >= config.patience
        save_checkpoint(checkpoint_dir / LAST, spec, model, **state(epoch, finished=stop or epoch == config.epochs))
        log(f"{spec.arch} epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
            f"val F1 {scores.f1:.4f}, acc {scores.accuracy:.4f}, lr {lr:.2e}, {record['train_images_per_s']:.1f} img/s")
        if on_epoch is not None:
            on_epoch(record, scores)
        if stop:
            stopped_early = True
            log(f"{spec.arch}: early stop after {config.patience} epochs without a better validation F1")
            break
    else:
        if start > config.epochs:  # resumed a run whose epochs were all done
            save_checkpoint(checkpoint_dir / LAST, spec, model, **state(config.epochs, finished=True))
    return TrainResult(spec, history, best_epoch, best_scores, stopped_early, resume.epoch if resume else None,
                       checkpoint_dir / BEST, checkpoint_dir / LAST, seen / busy if busy else 0.0, extra)
