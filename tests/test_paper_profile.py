"""The paper profile follows the release's recipe: the StyleGAN2 command line, the Segformer encoder,
x-flip mirroring and gradient accumulation."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from aras_assets.cli import main
from aras_assets.generation.augment import ada_step, diff_augment
from aras_assets.generation.configs import uncond_recipe
from aras_assets.generation.data import GanPatches
from aras_assets.generation.stylegan import StyleGanConfig
from aras_assets.generation.training import GanTrainConfig, StyleGanTrainer
from aras_assets.landcover import mask_to_rgb
from aras_assets.settings import load_settings
from resources.device import TorchRuntime

# The release's README: --cfg=stylegan2 --batch=256 --gamma=0.01 --mirror=1 --aug=ada --kimg 5000 --cbase 16384
RELEASE_STYLEGAN = {"batch": 256, "gamma": 0.01, "mirror": True, "kimg": 5000, "cbase": 16384}


def printed_settings(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["settings", *args]) == 0
    out = capsys.readouterr().out
    lines = out.split("\n\n")[0].splitlines()  # the settings; the places in effect follow a blank line
    return {name: ast.literal_eval(value.rsplit("  [", 1)[0]) for name, value in (line.split(None, 1) for line in lines)}


def test_aras_settings_paper_prints_the_release_recipe(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    for name in [k for k in __import__("os").environ if k.startswith("ARAS_")]:
        monkeypatch.delenv(name)
    s = printed_settings(capsys, "--profile", "paper")
    assert s["gan_batch_size"] == RELEASE_STYLEGAN["batch"]
    assert s["gan_batch_size"] % s["gan_accumulate"] == 0  # equal micro-batches
    assert s["gan_r1_gamma"] == RELEASE_STYLEGAN["gamma"]
    assert s["gan_mirror"] is RELEASE_STYLEGAN["mirror"]
    assert s["gan_channel_base"] == RELEASE_STYLEGAN["cbase"]
    kimg = s["gan_steps"] * s["gan_batch_size"] / 1000
    assert RELEASE_STYLEGAN["kimg"] <= kimg < RELEASE_STYLEGAN["kimg"] + s["gan_batch_size"] / 1000  # 19,532 steps
    assert s["gan_resolution"] == 256 and s["gan_z_dim"] == s["gan_w_dim"] == 512 and s["gan_mapping_layers"] == 8
    assert s["gan_ada_target"] == 0.6  # --aug=ada: ADA's target of E[sign(D(real))]
    assert s["seg_encoders"]["segformer"] == "efficientnet-b7"
    # captions: the release's prompts and sampling, one caption per (mode, model)
    assert s["caption_percent_format"] == "release" and s["caption_max_tokens"] == 100
    assert s["caption_temperature"] == {"text": 0.7, "hybrid": 0.0} and s["caption_top_p"] == {"text": 0.8}
    assert s["captions_per_image"] == 1
    recipe = uncond_recipe(load_settings("paper", environ={}))
    assert (recipe.batch_size, recipe.accumulate, recipe.r1_gamma, recipe.ada_target) == (256, s["gan_accumulate"], 0.01, 0.6)
    demo = printed_settings(capsys, "--profile", "demo")
    assert demo["gan_mirror"] is False and demo["gan_accumulate"] == 1


def test_mirror_doubles_the_training_set_with_x_flips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = rng.integers(0, 7, (8, 8), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(mask_to_rgb(mask)).save(tmp_path / "m.png")
    records = pl.DataFrame({"image_path": ["i.png"], "mask_path": ["m.png"]})
    plain, mirrored = GanPatches(tmp_path, records, 8), GanPatches(tmp_path, records, 8, mirror=True)
    assert len(plain) == 1 and len(mirrored) == 2
    (x0, m0), (x1, m1) = mirrored[0], mirrored[1]
    assert torch.equal(x0, plain[0][0]) and torch.equal(m0, torch.from_numpy(mask.astype(np.int64)))
    assert torch.equal(x1, x0.flip(-1)) and torch.equal(m1, m0.flip(-1))


@pytest.fixture
def one_thread():
    """Tiny networks run ~10x faster on one thread than on threads that contend for shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gradient_accumulation_gives_the_full_batch_gradient(monkeypatch, one_thread) -> None:
    """Two micro-batches of 2 give the gradients of one batch of 4 (G, D and the R1 step). The
    discriminator's minibatch-stddev groups stay inside a micro-batch (as inside StyleGAN's per-GPU
    batch), so it is replaced by a per-image stand-in here."""
    from aras_assets.generation import stylegan

    monkeypatch.setattr(stylegan, "minibatch_stddev", lambda x: torch.cat([x, x[:, :1] * 0], dim=1))
    config = StyleGanConfig(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=32, channel_max=8)
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    z_g, z_d = torch.randn(4, 8), torch.randn(4, 8)

    def gradients(accumulate: int) -> list[torch.Tensor]:
        recipe = GanTrainConfig(batch_size=4, augment=(), r1_interval=1, r1_gamma=1.0, accumulate=accumulate)
        trainer = StyleGanTrainer(config, recipe, TorchRuntime("cpu"))
        pieces = iter([*z_g.split(4 // accumulate), *z_d.split(4 // accumulate)])
        monkeypatch.setattr(trainer, "_latents", lambda batch: (next(pieces), None, None))
        captured: list[torch.Tensor] = []
        for opt, module in ((trainer.opt_g, trainer.G), (trainer.opt_d, trainer.D)):
            monkeypatch.setattr(opt, "step", lambda m=module: captured.extend(p.grad.clone() for p in m.parameters()
                                                                              if p.grad is not None))
        with monkeypatch.context() as m:  # no per-pixel noise, so both runs see the same generator
            m.setattr(torch, "randn", lambda *size, **kw: torch.zeros(*size, **kw))
            record = trainer.train_step(real)
        return [*captured, torch.tensor([record[k] for k in ("loss_g", "loss_d", "d_real", "d_fake", "r1")])]

    whole, split = gradients(1), gradients(2)
    assert len(whole) == len(split)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_ada_controller_moves_the_augmentation_probability() -> None:
    # D sure of the reals (r_t above the target): augment more; unsure: less; within [0, 1]
    assert ada_step(0.0, 0.9, 0.6, 256, 500) == pytest.approx(256 / 500_000)
    assert ada_step(0.5, 0.2, 0.6, 256, 500) == pytest.approx(0.5 - 256 / 500_000)
    assert ada_step(0.0, 0.2, 0.6, 256, 500) == 0.0 and ada_step(1.0, 1.0, 0.6, 256, 0.1) == 1.0
    assert ada_step(0.3, 0.6, 0.6, 256, 500) == 0.3
    x = torch.rand(6, 3, 8, 8)
    assert torch.equal(diff_augment(x, ("color", "translation", "cutout"), 0.0), x)
    torch.manual_seed(1)
    some = diff_augment(x, ("cutout",), 0.5)
    changed = [not torch.equal(a, b) for a, b in zip(some, x, strict=True)]
    assert any(changed) and not all(changed)  # per image, with probability p


def test_trainer_logs_and_carries_the_ada_probability(monkeypatch, one_thread) -> None:
    config = StyleGanConfig(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=32, channel_max=8)
    trainer = StyleGanTrainer(config, GanTrainConfig(batch_size=4, r1_interval=4, ada_target=0.6, ada_kimg=0.01),
                              TorchRuntime("cpu"))
    discriminator = trainer.D
    monkeypatch.setattr(trainer, "D", lambda images: discriminator(images) * 0 + 1)  # sure of everything: r_t = 1
    monkeypatch.setattr(trainer.opt_d, "step", lambda: None)
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    first = trainer.train_step(real)
    # 4 images at ada_kimg 0.01: p rises by 0.4 a step; `carried` is what checkpoints save and restore
    assert first["augment_p"] == pytest.approx(0.4) and trainer.carried["augment_p"] == pytest.approx(0.4)
    assert trainer.train_step(real)["augment_p"] == pytest.approx(0.8)
    assert "augment_p" not in StyleGanTrainer(config, GanTrainConfig(batch_size=4), TorchRuntime("cpu")).carried
