"""GAN training: one step of each recipe, checkpoints that carry their configuration, resume.

Unconditional (StyleGAN2): non-saturating logistic loss, lazy R1 on real images every
`r1_interval` discriminator steps (Adam's lr and betas scaled by interval / (interval + 1),
as the lazy-regularization recipe prescribes), style mixing, tracked mean w, an exponential
moving average copy of G (half-life `ema_kimg` thousand images) that is the generator we keep.

Conditional (SPADE + U-Net discriminator): non-saturating loss on the global and per-pixel
outputs, CutMix of real and fake images with the decoder asked to find the mix and to be
consistent with its outputs on the unmixed images, two time-scale learning rates, optional
VGG perceptual loss, an EMA copy of G.

The R1 pass stays eager and fp32 (double backward does not compile); the rest autocasts to
bf16 on CUDA through the runtime.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aras_assets.generation.augment import ada_step, diff_augment
from aras_assets.generation.data import GenerationError
from aras_assets.generation.spade import SpadeConfig, SpadeGenerator, UNetDiscriminator, cutmix_masks
from aras_assets.generation.stylegan import StyleDiscriminator, StyleGanConfig, StyleGenerator
from aras_assets.layout import COND, UNCOND
from resources.device import TorchRuntime
from resources.storage import atomic_write_bytes

LAST, GENERATOR = "last.pt", "generator.pt"


@dataclass(frozen=True)
class GanTrainConfig:
    steps: int = 400
    batch_size: int = 8
    lr: float = 2.5e-3
    r1_gamma: float = 0.2
    r1_interval: int = 16
    style_mixing: float = 0.9
    ema_kimg: float = 0.5
    augment: tuple[str, ...] = ("color", "translation", "cutout")
    checkpoint_every: int = 100
    fid_every: int = 200
    seed: int = 0
    accumulate: int = 1  # micro-batches per step: the gradient of a batch too large for memory, summed
    ada_target: float = 0.0  # > 0: adaptive augmentation probability toward this E[sign(D(real))]; 0: always augment
    ada_kimg: float = 500.0  # thousands of images for the probability to go from 0 to 1


@dataclass(frozen=True)
class CondTrainConfig:
    steps: int = 400
    batch_size: int = 8
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    cutmix_prob: float = 0.5
    consistency_weight: float = 1.0
    vgg_weight: float = 0.0
    ema_kimg: float = 0.5
    augment: tuple[str, ...] = ("color",)
    checkpoint_every: int = 100
    fid_every: int = 200
    seed: int = 0


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, images: int, ema_kimg: float) -> None:
    beta = 0.5 ** (images / max(ema_kimg * 1000.0, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


class StyleGanTrainer:
    kind = UNCOND

    def __init__(self, model_config: StyleGanConfig, config: GanTrainConfig, runtime: TorchRuntime) -> None:
        torch.manual_seed(config.seed)
        self.model_config, self.config, self.runtime = model_config, config, runtime
        self.G = runtime.prepare(StyleGenerator(model_config))
        self.D = runtime.prepare(StyleDiscriminator(model_config))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        ratio = config.r1_interval / (config.r1_interval + 1) if config.r1_gamma > 0 else 1.0
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)
        self.step = 0
        self.carried = {"r1": 0.0}  # the latest lazy penalty, so every record has the same keys
        if config.ada_target > 0:  # the augmentation probability rides in `carried`: logged and resumed
            self.carried["augment_p"] = 0.0

    def _latents(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
        device = self.runtime.torch_device
        z = torch.randn(batch, self.model_config.z_dim, device=device)
        if torch.rand(()) < self.config.style_mixing:
            cutoff = int(torch.randint(1, self.model_config.num_ws, ()))
            return z, torch.randn(batch, self.model_config.z_dim, device=device), cutoff
        return z, None, None

    def _d(self, images: torch.Tensor) -> torch.Tensor:
        return self.D(diff_augment(images, self.config.augment, self.carried.get("augment_p", 1.0))).float()

    def train_step(self, real: torch.Tensor, _masks: torch.Tensor | None = None) -> dict[str, float]:
        real = self.runtime.to_device(real)
        batch = real.shape[0]
        # Gradient accumulation: each loss is a mean over its micro-batch, weighted by its share, so
        # the summed gradient is the full batch's (StyleGAN's --batch with less memory per pass).
        chunks = real.split(-(-batch // max(1, self.config.accumulate)))
        # generator: make D call fakes real
        self.G.train()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g_sum = 0.0
        for chunk in chunks:
            z, mix_z, cutoff = self._latents(chunk.shape[0])
            with self.runtime.autocast():
                ws = self.G.styles(z, 1.0, mix_z, cutoff)
                fake_logits = self._d(self.G.synthesis(ws))
                loss_g = F.softplus(-fake_logits).mean()
            (loss_g * (chunk.shape[0] / batch)).backward()
            loss_g_sum += loss_g.item() * chunk.shape[0]
            self.G.mapping.track_mean(ws[:, 0].detach())
        self.opt_g.step()
        # discriminator: fakes fake, reals real
        self.opt_d.zero_grad(set_to_none=True)
        loss_d_sum = d_real_sum = d_fake_sum = sign_sum = 0.0
        for chunk in chunks:
            z, mix_z, cutoff = self._latents(chunk.shape[0])
            with torch.no_grad(), self.runtime.autocast():
                fake = self.G(z, 1.0, None, mix_z, cutoff)
            with self.runtime.autocast():
                d_fake, d_real = self._d(fake), self._d(chunk)
                loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
            (loss_d * (chunk.shape[0] / batch)).backward()
            loss_d_sum += loss_d.item() * chunk.shape[0]
            d_real_sum += d_real.sum().item()
            d_fake_sum += d_fake.sum().item()
            sign_sum += d_real.sign().sum().item()
        self.opt_d.step()
        if self.config.ada_target > 0:
            self.carried["augment_p"] = ada_step(self.carried["augment_p"], sign_sum / batch, self.config.ada_target,
                                                 batch, self.config.ada_kimg)
        record = {"loss_g": loss_g_sum / batch, "loss_d": loss_d_sum / batch, "d_real": d_real_sum / batch,
                  "d_fake": d_fake_sum / batch}
        # lazy R1 on reals: eager, fp32
        if self.config.r1_gamma > 0 and self.step % self.config.r1_interval == 0:
            self.opt_d.zero_grad(set_to_none=True)
            penalty_sum = 0.0
            for chunk in chunks:
                real_ = chunk.detach().float().requires_grad_(True)
                (grad,) = torch.autograd.grad(self._d(real_).sum(), real_, create_graph=True)
                penalty = grad.square().sum(dim=(1, 2, 3)).mean()
                (penalty * (self.config.r1_gamma / 2) * self.config.r1_interval * (chunk.shape[0] / batch)).backward()
                penalty_sum += penalty.item() * chunk.shape[0]
            self.opt_d.step()
            self.carried["r1"] = penalty_sum / batch
        record.update(self.carried)
        _ema_update(self.G_ema, self.G, batch, self.config.ema_kimg)
        self.step += 1
        return record

    def modules(self) -> dict[str, Any]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema, "opt_g": self.opt_g, "opt_d": self.opt_d}


class SpadeTrainer:
    kind = COND

    def __init__(self, model_config: SpadeConfig, config: CondTrainConfig, runtime: TorchRuntime,
                 perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        torch.manual_seed(config.seed)
        self.model_config, self.config, self.runtime = model_config, config, runtime
        self.G = runtime.prepare(SpadeGenerator(model_config))
        self.D = runtime.prepare(UNetDiscriminator(model_config))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=(0.0, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=(0.0, 0.999))
        self.perceptual = perceptual
        self.step = 0
        self.carried = {"consistency": 0.0}  # the latest CutMix consistency (not every step mixes)

    def _d(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, p = self.D(diff_augment(images, self.config.augment), masks)
        return g.float(), p.float()

    def train_step(self, real: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, float]:
        if masks is None:
            raise GenerationError("the conditional GAN trains on image and mask pairs")
        real, masks = self.runtime.to_device(real), masks.to(self.runtime.torch_device)
        batch = real.shape[0]
        z_dim = self.model_config.z_dim
        # generator: both heads call the fakes real (+ perceptual closeness to the mask's real image)
        self.G.train()
        z = torch.randn(batch, z_dim, device=real.device)
        with self.runtime.autocast():
            fake = self.G(masks, z)
            g_global, g_pixel = self._d(fake, masks)
            loss_g = F.softplus(-g_global).mean() + F.softplus(-g_pixel).mean()
            if self.perceptual is not None and self.config.vgg_weight > 0:
                loss_g = loss_g + self.config.vgg_weight * self.perceptual(fake.float(), real.float())
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        # discriminator
        with torch.no_grad(), self.runtime.autocast():
            fake = self.G(masks, torch.randn(batch, z_dim, device=real.device)).to(real.dtype)
        with self.runtime.autocast():
            r_global, r_pixel = self._d(real, masks)
            f_global, f_pixel = self._d(fake, masks)
            loss_d = (F.softplus(-r_global).mean() + F.softplus(f_global).mean()
                      + F.softplus(-r_pixel).mean() + F.softplus(f_pixel).mean())
            record = {"d_real": r_global.mean().item(), "d_fake": f_global.mean().item()}
            if torch.rand(()) < self.config.cutmix_prob:
                mix = cutmix_masks(batch, *real.shape[-2:]).to(real.device)
                m_global, m_pixel = self._d(mix * real + (1 - mix) * fake, masks)
                target = mix * r_pixel + (1 - mix) * f_pixel
                consistency = (m_pixel - target).square().mean()
                loss_d = loss_d + F.softplus(m_global).mean() \
                    + F.binary_cross_entropy_with_logits(m_pixel, mix) \
                    + self.config.consistency_weight * consistency
                self.carried["consistency"] = consistency.item()
            record.update(self.carried)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        _ema_update(self.G_ema, self.G, batch, self.config.ema_kimg)
        self.step += 1
        return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), **record}

    def modules(self) -> dict[str, Any]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema, "opt_g": self.opt_g, "opt_d": self.opt_d}


Trainer = StyleGanTrainer | SpadeTrainer


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(trainer: Trainer, folder: Path, data_version: str, history: list[dict], extra: dict) -> None:
    """last.pt (everything to resume) and generator.pt (the EMA generator and its config)."""
    state = {name: module.state_dict() for name, module in trainer.modules().items()}
    meta = {"kind": trainer.kind, "model_config": trainer.model_config.to_dict(), "step": trainer.step,
            "train_config": asdict(trainer.config), "data_version": data_version}
    rng = {"rng": torch.get_rng_state(),
           "cuda_rng": torch.cuda.get_rng_state_all() if trainer.runtime.on_cuda else None}  # latents draw on the GPU there
    atomic_write_bytes(folder / LAST, _torch_bytes({**meta, "state": state, "history": history, "extra": extra,
                                                    "carried": dict(trainer.carried), **rng}))
    atomic_write_bytes(folder / GENERATOR, _torch_bytes({**meta, "generator": trainer.G_ema.state_dict()}))


def _resumable_settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("steps", "checkpoint_every", "fid_every")}


def plan_resume(folder: Path, trainer: Trainer, data_version: str, log: Callable[[str], None] = print) -> dict | None:
    """The last checkpoint if it continues this very training (same networks, recipe and data),
    else None with the reason logged (a changed configuration starts a new training)."""
    path = folder / LAST
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file is not worth failing over: train again
        log(f"{path} cannot be read ({exc.__class__.__name__}); training from scratch")
        return None
    reasons = []
    if checkpoint.get("kind") != trainer.kind:
        reasons.append(f"it is a {checkpoint.get('kind')} GAN")
    if checkpoint.get("model_config") != trainer.model_config.to_dict():
        reasons.append("the network configuration changed")
    if _resumable_settings(checkpoint.get("train_config", {})) != _resumable_settings(asdict(trainer.config)):
        reasons.append("the training recipe changed")
    if checkpoint.get("data_version") != data_version:
        reasons.append("the training split changed")
    if reasons:
        log(f"not resuming from {path}: {', '.join(reasons)}; training from scratch")
        return None
    return checkpoint


def restore(trainer: Trainer, checkpoint: dict) -> None:
    for name, module in trainer.modules().items():
        module.load_state_dict(checkpoint["state"][name])
    trainer.step = int(checkpoint["step"])
    trainer.carried.update(checkpoint.get("carried", {}))
    torch.set_rng_state(checkpoint["rng"])
    if checkpoint.get("cuda_rng") is not None and trainer.runtime.on_cuda:
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])


@dataclass
class FitResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    fid: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int | None = None
    images_per_s: float = 0.0


def fit(trainer: Trainer, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
        folder: Path, data_version: str, checkpoint_every: int, fid_every: int,
        fid: Callable[[torch.nn.Module], float] | None = None, resume: dict | None = None, extra: dict | None = None,
        on_log: Callable[[int, dict], None] | None = None, log: Callable[[str], None] = print,
        log_every: int = 50) -> FitResult:
    """Train to `steps`, checkpointing every `checkpoint_every` steps and at the end; FID of the
    EMA generator every `fid_every` steps (0: at the end only). `batches` yields (images, masks)
    without end."""
    folder.mkdir(parents=True, exist_ok=True)
    result = FitResult(steps=steps)
    if resume is not None:
        restore(trainer, resume)
        result.history = list(resume.get("history", []))
        result.resumed_from = trainer.step
        log(f"resuming the {trainer.kind} GAN at step {trainer.step} of {steps}")
    started, images = time.perf_counter(), 0
    while trainer.step < steps:
        real, masks = next(batches)
        record = trainer.train_step(real, masks)
        images += real.shape[0]
        step = trainer.step
        if not all(math.isfinite(v) for v in record.values()):
            raise GenerationError(f"{trainer.kind} GAN training diverged at step {step}: {record}")
        if step % log_every == 0 or step == steps:
            result.history.append({"step": step, **{k: round(v, 5) for k, v in record.items()}})
            if on_log is not None:
                on_log(step, record)
            log(f"{trainer.kind} GAN step {step}/{steps}: " + ", ".join(f"{k} {v:.3f}" for k, v in record.items()))
        if fid is not None and ((fid_every and step % fid_every == 0) or step == steps):
            value = fid(trainer.G_ema)
            result.fid.append((step, value))
            if on_log is not None:
                on_log(step, {"fid_encoder": value})
            log(f"{trainer.kind} GAN step {step}: FID (segmentation-encoder features) {value:.2f}")
        if step % checkpoint_every == 0 or step == steps:
            save_checkpoint(trainer, folder, data_version, result.history, extra or {})
    if fid is not None and (not result.fid or result.fid[-1][0] != trainer.step):  # resumed at the end
        result.fid.append((trainer.step, fid(trainer.G_ema)))
    result.images_per_s = images / max(time.perf_counter() - started, 1e-9)
    return result


def build_generator(kind: str, config: dict) -> torch.nn.Module:
    if kind == UNCOND:
        return StyleGenerator(StyleGanConfig(**config))
    if kind == COND:
        return SpadeGenerator(SpadeConfig(**config))
    raise GenerationError(f"unknown generator kind {kind!r}")


def load_generator(path: Path, kind: str, expected: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The EMA generator of a generator.pt, in eval mode, with the file's metadata. A file of
    the other kind, or one whose network configuration differs from `expected`, is an error
    naming the differences."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GenerationError(f"{path} is not a readable generator checkpoint: {exc}") from exc
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint:
        raise GenerationError(f"{path} holds no generator")
    if checkpoint.get("kind") != kind:
        raise GenerationError(f"{path} holds a {checkpoint.get('kind')} generator, not {kind}")
    config = checkpoint["model_config"]
    if expected is not None and config != expected:
        diff = {k: (config.get(k), expected.get(k)) for k in sorted(set(config) | set(expected))
                if config.get(k) != expected.get(k)}
        raise GenerationError(f"{path} does not match the configured {kind} generator: "
                              + ", ".join(f"{k} is {a} there, {b} in the settings" for k, (a, b) in diff.items()))
    model = build_generator(kind, config)
    model.load_state_dict(checkpoint["generator"])
    return model.eval().requires_grad_(False), {k: v for k, v in checkpoint.items() if k != "generator"}
