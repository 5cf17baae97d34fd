"""Generation plain functions: networks, modulated convolution, augmentation, FID, seeds,
sharded generation with crash and resume, GAN training, checkpoints and the perceptual loss.

Every network here is tiny (16 px, a few dozen channels), so the file runs in well under a
minute on two CPU cores."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from aras_assets.generation.augment import POLICIES, cutout, diff_augment, translation
from aras_assets.generation.data import GenerationError, to_uint8
from aras_assets.generation.fid import FeatureStats, FidError, feature_stats, fid_from_stats, frechet_distance
from aras_assets.generation.layers import StyledLayer, modulated_conv2d, modulated_conv2d_grouped, upsample2x
from aras_assets.generation.perceptual import PerceptualLoss, load_vgg_loss
from aras_assets.generation.regenerate import Regenerated
from aras_assets.generation.sampling import (
    GeneratorRun,
    Partition,
    generate_cond,
    generate_partition,
    generate_uncond,
    generator_code,
    image_seed,
    uncond_inputs,
    uncond_plan,
)
from aras_assets.generation.spade import SpadeConfig, SpadeGenerator, UNetDiscriminator, cond_at, cutmix_masks
from aras_assets.generation.stylegan import StyleDiscriminator, StyleGanConfig, StyleGenerator, minibatch_stddev
from aras_assets.generation.training import (
    GENERATOR,
    LAST,
    CondTrainConfig,
    GanTrainConfig,
    SpadeTrainer,
    StyleGanTrainer,
    fit,
    load_generator,
    plan_resume,
)
from aras_assets.layout import MANIFEST, PARTS
from resources.device import TorchRuntime

CPU = TorchRuntime("cpu")
RES = 16
TINY_STYLE = StyleGanConfig(resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
TINY_SPADE = SpadeConfig(resolution=RES, z_dim=8, channels=4, hidden=8)
CLASSES = TINY_SPADE.classes  # 7 land-cover classes


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny networks gain nothing from intra-op threads, and on a busy machine idle-spinning
    worker threads make small ops many times slower: one thread here, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quiet(_message: str) -> None:
    pass


def tiny_style_generator(seed: int = 0) -> StyleGenerator:
    torch.manual_seed(seed)
    return StyleGenerator(TINY_STYLE).eval()


def tiny_spade_generator(seed: int = 0) -> SpadeGenerator:
    torch.manual_seed(seed)
    return SpadeGenerator(TINY_SPADE).eval()


def class_maps(count: int, size: int = RES, seed: int = 0) -> np.ndarray:
    """[count, size, size] class indices: a few axis-aligned regions of random classes each."""
    rng = np.random.default_rng(seed)
    masks = np.empty((count, size, size), np.int64)
    for k in range(count):
        masks[k] = rng.integers(0, CLASSES)
        for _ in range(3):
            y0, x0 = rng.integers(0, size - 2, 2)
            h, w = rng.integers(2, size // 2 + 1, 2)
            masks[k, y0:y0 + h, x0:x0 + w] = rng.integers(0, CLASSES)
    return masks


def assert_grads(module: torch.nn.Module, min_nonzero: float = 0.9) -> None:
    """Every trainable parameter got a finite gradient, and most a non-zero one."""
    params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    assert params
    nonzero = 0
    for name, p in params:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        nonzero += bool(p.grad.abs().sum() > 0)
    assert nonzero >= min_nonzero * len(params), f"only {nonzero} of {len(params)} parameters have non-zero gradients"


# --- networks: shapes and gradient flow -------------------------------------------------------


def test_style_generator_shapes_and_gradients() -> None:
    G = tiny_style_generator().train()
    z = torch.randn(3, TINY_STYLE.z_dim)
    images = G(z)
    assert images.shape == (3, 3, RES, RES)
    assert G.styles(z).shape == (3, TINY_STYLE.num_ws, TINY_STYLE.w_dim)
    assert len(G.synthesis.noise_shapes()) == 2 * len(TINY_STYLE.block_resolutions) - 1  # one per styled layer
    (images.square().mean() + images.mean()).backward()
    assert_grads(G)
    strengths = [(name, p) for name, p in G.named_parameters() if name.endswith("noise_strength")]
    assert len(strengths) == len(G.synthesis.layers)
    for name, p in strengths:
        assert float(p) == 0.0  # noise starts switched off...
        assert p.grad is not None and float(p.grad) != 0.0, name  # ...and still learns


def test_style_discriminator_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    D = StyleDiscriminator(TINY_STYLE)
    images = torch.randn(4, 3, RES, RES, requires_grad=True)
    logits = D(images)
    assert logits.shape == (4,)
    logits.square().sum().backward()
    assert_grads(D)
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_spade_generator_shapes_and_gradients() -> None:
    G = tiny_spade_generator().train()
    masks = torch.from_numpy(class_maps(3))
    images = G(masks, torch.randn(3, TINY_SPADE.z_dim))
    assert images.shape == (3, 3, RES, RES)
    assert images.abs().max() <= 1.0
    (images.square().mean() + images.mean()).backward()
    assert_grads(G)


def test_unet_discriminator_global_and_pixel_outputs_with_gradients() -> None:
    torch.manual_seed(0)
    D = UNetDiscriminator(TINY_SPADE)
    images = torch.randn(2, 3, RES, RES, requires_grad=True)
    global_logits, pixel_logits = D(images, torch.from_numpy(class_maps(2)))
    assert global_logits.shape == (2,)
    assert pixel_logits.shape == (2, 1, RES, RES)
    (global_logits.square().sum() + pixel_logits.square().mean()).backward()
    assert_grads(D)
    assert images.grad is not None and images.grad.abs().sum() > 0


# --- modulated convolution --------------------------------------------------------------------


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize(("batch", "kernel"), [(1, 3), (3, 3), (5, 1), (8, 3)])
def test_modulated_conv_equals_grouped_form(batch: int, kernel: int, demodulate: bool) -> None:
    gen = torch.Generator().manual_seed(batch * 10 + kernel)
    x = torch.randn(batch, 6, 9, 7, generator=gen)
    weight = torch.randn(5, 6, kernel, kernel, generator=gen) / math.sqrt(6 * kernel * kernel)
    styles = torch.randn(batch, 6, generator=gen) + 1.0
    shared = modulated_conv2d(x, weight, styles, demodulate)
    grouped = modulated_conv2d_grouped(x, weight, styles, demodulate)
    assert shared.shape == grouped.shape == (batch, 5, 9, 7)
    torch.testing.assert_close(shared, grouped, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("batch", [1, 4])
def test_upsample2x_equals_interpolate_in_either_layout(mode: str, batch: int) -> None:
    x = torch.randn(batch, 6, 5, 7, generator=torch.Generator().manual_seed(batch))
    expected = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = upsample2x(x.contiguous(memory_format=layout), mode)
        assert out.shape == (batch, 6, 10, 14)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("size", [32, 16, 8, 4])
def test_cond_at_equals_nearest_interpolation(size: int) -> None:
    cond = torch.randn(3, 9, 32, 32, generator=torch.Generator().manual_seed(size))
    expected = F.interpolate(cond, size=(size, size), mode="nearest")
    assert torch.equal(cond_at(cond, size), expected)


@pytest.mark.parametrize("with_noise", [True, False])
def test_styled_layer_is_lrelu_of_conv_noise_and_bias_times_gain(with_noise: bool) -> None:
    """The fused form (gain on the coefficients, one multiply-add) equals the textbook order."""
    torch.manual_seed(0)
    layer = StyledLayer(6, 5, 8, up=True)
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
        layer.bias.normal_()
    x, w = torch.randn(3, 6, 4, 4), torch.randn(3, 8)
    noise = torch.randn(3, 1, 8, 8) if with_noise else None
    conv = layer.conv
    plain = modulated_conv2d(upsample2x(x), conv.weight * conv.scale, conv.affine(w))
    if noise is not None:
        plain = plain + noise * layer.noise_strength
    expected = F.leaky_relu(plain + layer.bias[None, :, None, None], 0.2) * math.sqrt(2)
    torch.testing.assert_close(layer(x, w, noise), expected, atol=1e-5, rtol=1e-5)


def test_demodulation_gives_unit_output_std() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 40, 40, generator=gen)  # unit variance input
    weight = torch.randn(16, 64, 3, 3, generator=gen) * 5.0  # any scale: demodulation undoes it
    styles = torch.rand(4, 64, generator=gen) * 3 + 0.1  # any per-sample scale too
    out = modulated_conv2d(x, weight, styles, demodulate=True)[..., 1:-1, 1:-1]  # borders see zero padding
    per_map = out.std(dim=(2, 3))  # [batch, channel]
    assert abs(float(out.std()) - 1.0) < 0.05
    assert per_map.min() > 0.85 and per_map.max() < 1.15
    raw = modulated_conv2d(x, weight, styles, demodulate=False)
    assert float(raw.std()) > 5.0  # without demodulation the scale passes through


# --- styles: truncation and mixing ------------------------------------------------------------


def test_truncation_psi_zero_gives_the_tracked_mean_w() -> None:
    G = tiny_style_generator()
    G.mapping.track_mean(torch.randn(64, TINY_STYLE.w_dim), beta=0.0)  # a non-trivial tracked mean
    w_avg = G.mapping.w_avg.clone()
    assert w_avg.abs().sum() > 0
    z = torch.randn(5, TINY_STYLE.z_dim)
    ws = G.styles(z, psi=0.0)
    torch.testing.assert_close(ws, w_avg.expand(5, TINY_STYLE.num_ws, -1), atol=1e-6, rtol=0)
    noise = [torch.zeros(5, *shape) for shape in G.synthesis.noise_shapes()]
    images = G(z, 0.0, noise)
    torch.testing.assert_close(images, images[:1].expand_as(images), atol=1e-5, rtol=1e-5)  # every z: one image
    half = G.styles(z, psi=0.5)
    torch.testing.assert_close(half, w_avg + 0.5 * (G.styles(z) - w_avg), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cutoff", [1, 3, 5])
def test_style_mixing_switches_at_the_cutoff(cutoff: int) -> None:
    G = tiny_style_generator()
    z, mix_z = torch.randn(3, TINY_STYLE.z_dim), torch.randn(3, TINY_STYLE.z_dim)
    ws = G.styles(z, 1.0, mix_z, cutoff)
    w, w_mix = G.mapping(z), G.mapping(mix_z)
    for layer in range(TINY_STYLE.num_ws):
        torch.testing.assert_close(ws[:, layer], w if layer < cutoff else w_mix, atol=0, rtol=0)
    assert not torch.allclose(w, w_mix)


# --- discriminator helpers and augmentation ---------------------------------------------------


@pytest.mark.parametrize("batch", [3, 5, 6, 8])
def test_minibatch_stddev_any_batch(batch: int) -> None:
    x = torch.randn(batch, 4, 4, 4)
    out = minibatch_stddev(x)
    assert out.shape == (batch, 5, 4, 4)
    torch.testing.assert_close(out[:, :4], x)
    g = math.gcd(min(4, batch), batch)
    groups = batch // g  # sample i belongs to group i mod groups, as in StyleGAN
    for i in range(batch):
        members = x[i % groups::groups]
        expected = (members.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(out[i, 4], expected.expand(4, 4))
    torch.manual_seed(0)
    assert StyleDiscriminator(TINY_STYLE)(torch.randn(batch, 3, RES, RES)).shape == (batch,)


def test_diff_augment_keeps_shape_and_passes_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 3, RES, RES, requires_grad=True)
    for policy in [(), ("color",), ("translation",), ("cutout",), POLICIES]:
        out = diff_augment(x, policy)
        assert out.shape == x.shape
    out = diff_augment(x, POLICIES)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.testing.assert_close(diff_augment(x, ()), x)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image [C, H, W] moved down dy and right dx, zeros coming in."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[:, max(-dy, 0):h - max(dy, 0),
                                                                         max(-dx, 0):w - max(dx, 0)]
    return out


def test_translation_gives_zero_filled_shifted_copies() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 2, RES, RES) + 1.0  # no zeros in the input: zeros are fill
    out = translation(x, ratio=0.125)
    limit = max(1, int(RES * 0.125 + 0.5))
    seen = set()
    for b in range(len(x)):
        matches = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
                   if torch.equal(out[b], shifted(x[b], dy, dx))]
        assert len(matches) == 1, f"sample {b} is no shifted copy of its input"
        seen.add(matches[0])
    assert (0, 0) in seen and len(seen) > 15  # the shifts are spread over the whole range


def test_cutout_zeroes_one_clipped_square() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, RES, RES) + 1.0
    out = cutout(x, ratio=0.5)
    holes = out == 0
    torch.testing.assert_close(out[~holes], x[~holes])
    assert (holes.all(dim=1) == holes.any(dim=1)).all()  # the same hole on every channel
    for b in range(len(x)):
        hole = holes[b, 0]
        rows, cols = hole.any(dim=1).nonzero()[:, 0], hole.any(dim=0).nonzero()[:, 0]
        assert 1 <= len(rows) <= RES // 2 and 1 <= len(cols) <= RES // 2
        assert hole[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a rectangle
        assert int(hole.sum()) == len(rows) * len(cols)


@pytest.mark.parametrize(("height", "width"), [(RES, RES), (12, 20)])
def test_cutmix_masks_hold_one_zero_box_each(height: int, width: int) -> None:
    masks = cutmix_masks(32, height, width, torch.Generator().manual_seed(3))
    assert masks.shape == (32, 1, height, width)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    for mask in masks[:, 0]:
        zero = mask == 0
        rows, cols = zero.any(dim=1).nonzero()[:, 0], zero.any(dim=0).nonzero()[:, 0]
        assert len(rows) >= 1
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()  # one connected span per axis
        assert zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
        assert int(zero.sum()) == len(rows) * len(cols)  # nothing outside the box


# --- FID --------------------------------------------------------------------------------------


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_fid_of_identical_sets_is_zero() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 12)) * 3 + 1
    a, b = FeatureStats(), FeatureStats()
    a.add(features)
    b.add(features[:250])
    b.add(features[250:])
    assert abs(fid_from_stats(a, b)) < 1e-6
    mu, sigma = np.zeros(4), random_spd(rng, 4)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_of_diagonal_gaussians_has_the_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    a, b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(6.0 + 4.0 + 1.0 + 0.0 + 0.5)


def scipy_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_fid_of_non_commuting_covariances_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(1)
    for dim in (2, 5, 16):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        s1, s2 = random_spd(rng, dim), random_spd(rng, dim)
        assert not np.allclose(s1 @ s2, s2 @ s1)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-8)


def test_feature_stats_in_batches_equal_numpy_cov() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(333, 10)) * rng.uniform(0.5, 3, 10) + rng.uniform(-2, 2, 10)
    stats = FeatureStats()
    for begin, end in itertools.pairwise([0, 1, 7, 100, 101, 250, 333]):  # uneven batches, one of a single image
        stats.add(features[begin:end])
    assert stats.count == 333
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov, np.cov(features, rowvar=False), rtol=0, atol=1e-10)


def test_fid_needs_two_images_and_matching_shapes() -> None:
    one, two, empty = FeatureStats(), FeatureStats(), FeatureStats()
    one.add(np.ones((1, 3)))
    two.add(np.random.default_rng(0).normal(size=(2, 3)))
    with pytest.raises(FidError, match="at least 2"):
        one.mean_cov()
    with pytest.raises(FidError):
        empty.mean_cov()
    with pytest.raises(FidError):
        fid_from_stats(one, two)
    other = FeatureStats()
    other.add(np.random.default_rng(1).normal(size=(5, 4)))
    with pytest.raises(FidError, match="do not match"):
        fid_from_stats(two, other)
    with pytest.raises(FidError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(FidError):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(4))


def test_fid_from_samples_approaches_the_closed_form() -> None:
    rng = np.random.default_rng(3)
    dim = 6
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim) + 1.0
    s1, s2 = random_spd(rng, dim) * 2, random_spd(rng, dim)
    truth = frechet_distance(mu1, s1, mu2, s2)
    assert truth == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-8)
    a, b = FeatureStats(), FeatureStats()
    for _ in range(4):  # 20000 draws each, in batches
        a.add(rng.multivariate_normal(mu1, s1, size=5000))
        b.add(rng.multivariate_normal(mu2, s2, size=5000))
    assert fid_from_stats(a, b) == pytest.approx(truth, rel=0.05)


# --- seeds and reproducible generation --------------------------------------------------------


def test_image_seed_is_stable_and_unrelated_between_neighbours() -> None:
    assert image_seed(0, "uncond", "0000", 0) == 4896311679782620448  # fixed forever: regenerations depend on it
    seeds = [image_seed(0, "uncond", "0000", k) for k in range(200)]
    others = [image_seed(1, "uncond", "0000", 0), image_seed(0, "cond", "0000", 0), image_seed(0, "uncond", "0001", 0)]
    assert len(set(seeds + others)) == len(seeds) + len(others)
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_generate_uncond_depends_on_the_seed_only() -> None:
    G = tiny_style_generator()
    seeds = [11, 22, 33, 44]
    first = generate_uncond(G, seeds, 0.7, CPU)
    assert first.shape == (4, RES, RES, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, generate_uncond(G, seeds, 0.7, CPU))
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first, generate_uncond(G, [12, 23, 34, 45], 0.7, CPU))
    # the image of seed 33 whatever the rest of its batch
    for batch, where in (([33], 0), ([5, 33], 1), ([33, 7, 8, 9, 10, 1], 0)):
        alone = generate_uncond(G, batch, 0.7, CPU)[where]
        assert np.abs(alone.astype(int) - first[2].astype(int)).max() <= 1
        z, noise = uncond_inputs(G, batch)
        z_ref, noise_ref = uncond_inputs(G, seeds)
        assert torch.equal(z[where], z_ref[2])
        assert len(noise) == len(noise_ref)
        for n, n_ref in zip(noise, noise_ref, strict=True):
            assert torch.equal(n[where], n_ref[2])


def test_generate_cond_depends_on_seed_and_mask_only() -> None:
    G = tiny_spade_generator()
    masks = class_maps(4)
    seeds = [1, 2, 3, 4]
    first = generate_cond(G, masks, seeds, CPU)
    assert first.shape == (4, RES, RES, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, generate_cond(G, masks, seeds, CPU))
    assert not np.array_equal(first, generate_cond(G, masks, [5, 6, 7, 8], CPU))  # new seeds, new images
    assert not np.array_equal(first, generate_cond(G, masks[::-1].copy(), seeds, CPU))  # new masks, new images
    for batch, where in (([3], 0), ([9, 3], 1)):
        mask_batch = np.stack([masks[2] if s == 3 else masks[0] for s in batch])
        alone = generate_cond(G, mask_batch, batch, CPU)[where]
        assert np.abs(alone.astype(int) - first[2].astype(int)).max() <= 1


def test_generate_cond_rejects_unknown_classes_and_wrong_sizes() -> None:
    G = tiny_spade_generator()
    masks = class_maps(2)
    bad = masks.copy()
    bad[1, 3, 3] = CLASSES  # 7
    with pytest.raises(GenerationError, match="class 7"):
        generate_cond(G, bad, [0, 1], CPU)
    bad[1, 3, 3] = 255
    with pytest.raises(GenerationError):
        generate_cond(G, bad, [0, 1], CPU)
    with pytest.raises(GenerationError, match="16x16"):
        generate_cond(G, masks[:, :8, :8].copy(), [0, 1], CPU)


# --- sharded generation: crash and resume -----------------------------------------------------


def generator_run(version: str = "1") -> GeneratorRun:
    return GeneratorRun("aras-gan-uncond", version, "run-abc", "cpu", "fp32", RES, "dagster-run-1")


class Renderer:
    """Renders plan rows with a tiny generator, counting calls and rows; can fail on call `fail_on`."""

    def __init__(self, G: StyleGenerator, fail_on: int | None = None) -> None:
        self.G, self.fail_on = G, fail_on
        self.calls, self.rows = 0, []

    def __call__(self, rows: pl.DataFrame) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("renderer crashed")
        self.rows += rows["image_id"].to_list()
        return generate_uncond(self.G, rows["seed"].to_list(), float(rows["truncation_psi"][0]), CPU)


def check_manifest(manifest: pl.DataFrame, plan: pl.DataFrame, partition: Partition) -> None:
    assert manifest["image_id"].to_list() == plan["image_id"].to_list()  # plan order, no duplicates
    assert manifest["image_id"].n_unique() == plan.height
    for path, digest in manifest.select("image_path", "content_sha256").iter_rows():
        assert hashlib.sha256((partition.root / path).read_bytes()).hexdigest() == digest
    on_disk = pl.read_parquet(partition.folder / MANIFEST)
    assert on_disk["image_id"].to_list() == manifest["image_id"].to_list()


def test_generate_partition_writes_images_and_manifest(tmp_path: Path) -> None:
    G = tiny_style_generator()
    plan = uncond_plan("0000", 10, 0, 1.0, generator_run())
    partition = Partition(tmp_path, "synthetic/uncond/0000")
    render = Renderer(G)
    progress: list[tuple[int, int]] = []
    manifest, made = generate_partition(plan, render, partition, 4, lambda done, total: progress.append((done, total)))
    assert made == 10 and render.calls == 3
    assert progress == [(4, 10), (8, 10), (10, 10)]
    assert len(list((tmp_path / "synthetic/uncond/0000/images").glob("*.png"))) == 10
    check_manifest(manifest, plan, partition)
    assert manifest["batch_start"].to_list() == [0] * 4 + [4] * 4 + [8] * 2
    assert manifest["batch_size"].to_list() == [4] * 8 + [2] * 2
    assert manifest["seed"].to_list() == plan["seed"].to_list()
    assert set(manifest["model_version"]) == {"1"}
    assert set(manifest["generator_code"]) == {generator_code()}


def test_generator_code_is_a_digest_of_the_pixel_modules_and_explains_a_replay_mismatch(tmp_path: Path) -> None:
    code = generator_code()
    assert len(code) == 16 and int(code, 16) >= 0
    made = Regenerated("uncond-0000-000000", b"png", "0" * 64, tmp_path / "x.png", code)
    assert not made.code_changed
    assert replace(made, recorded_code="0123456789abcdef").code_changed
    assert not replace(made, recorded_code=None).code_changed  # not recorded: nothing to say


def test_generate_partition_resumes_over_parts_without_the_generator_code(tmp_path: Path) -> None:
    """Parts written before manifests had the generator_code column still count as done."""
    G = tiny_style_generator()
    plan = uncond_plan("0000", 10, 0, 1.0, generator_run())
    partition = Partition(tmp_path, "p")
    generate_partition(plan, Renderer(G), partition, 4)
    first = partition.folder / PARTS / "batch-00000.parquet"
    pl.read_parquet(first).drop("generator_code").write_parquet(first)
    for later in ("batch-00004.parquet", "batch-00008.parquet"):
        (partition.folder / PARTS / later).unlink()
    resumed = Renderer(G)
    manifest, made = generate_partition(plan, resumed, partition, 4)
    assert made == 6 and resumed.rows == plan["image_id"][4:].to_list()
    check_manifest(manifest, plan, partition)
    assert manifest["generator_code"].to_list() == [None] * 4 + [generator_code()] * 6


def test_generate_partition_resumes_after_a_crash(tmp_path: Path) -> None:
    G = tiny_style_generator()
    plan = uncond_plan("0000", 10, 0, 1.0, generator_run())
    clean, _ = generate_partition(plan, Renderer(G), Partition(tmp_path / "clean", "p"), 4)

    partition = Partition(tmp_path / "crashed", "p")
    crashing = Renderer(G, fail_on=2)
    with pytest.raises(RuntimeError, match="crashed"):
        generate_partition(plan, crashing, partition, 4)
    parts = sorted(p.name for p in (partition.folder / PARTS).glob("*.parquet"))
    assert parts == ["batch-00000.parquet"]
    written = {p for p in plan["image_path"] if (partition.root / p).exists()}
    assert written == set(plan["image_path"][:4])
    assert not (partition.folder / MANIFEST).exists()

    resumed = Renderer(G)
    manifest, made = generate_partition(plan, resumed, partition, 4)
    assert made == 6 and resumed.rows == plan["image_id"][4:].to_list()
    check_manifest(manifest, plan, partition)
    assert manifest["content_sha256"].to_list() == clean["content_sha256"].to_list()  # same batches, same bytes

    idle = Renderer(G)
    again, made = generate_partition(plan, idle, partition, 4)
    assert made == 0 and idle.calls == 0
    assert again.equals(manifest)


def test_generate_partition_reports_a_failed_write_and_keeps_the_batches_before(tmp_path: Path) -> None:
    """PNGs are written by threads while the next batch renders: a write that fails surfaces,
    its batch gets no manifest part, the batches before keep theirs, and a re-run does the rest."""
    G = tiny_style_generator()
    plan = uncond_plan("0000", 10, 0, 1.0, generator_run())
    partition = Partition(tmp_path, "p")
    blocker = partition.root / plan["image_path"][5]
    blocker.mkdir(parents=True)  # a folder where image 5 should go: its write fails
    with pytest.raises(OSError):
        generate_partition(plan, Renderer(G), partition, 4, workers=3)
    parts = sorted(p.name for p in (partition.folder / PARTS).glob("*.parquet"))
    assert parts == ["batch-00000.parquet"]
    assert not (partition.folder / MANIFEST).exists()
    blocker.rmdir()
    resumed = Renderer(G)
    manifest, made = generate_partition(plan, resumed, partition, 4, workers=3)
    assert made == 6 and resumed.rows == plan["image_id"][4:].to_list()
    check_manifest(manifest, plan, partition)


def test_generate_partition_redoes_everything_for_another_model_version(tmp_path: Path) -> None:
    partition = Partition(tmp_path, "p")
    old_plan = uncond_plan("0000", 10, 0, 1.0, generator_run("1"))
    generate_partition(old_plan, Renderer(tiny_style_generator(0)), partition, 4)
    new_plan = uncond_plan("0000", 10, 0, 1.0, generator_run("2"))
    render = Renderer(tiny_style_generator(1))
    manifest, made = generate_partition(new_plan, render, partition, 4)
    assert made == 10 and len(render.rows) == 10
    assert set(manifest["model_version"]) == {"2"}
    check_manifest(manifest, new_plan, partition)
    parts = sorted((partition.folder / PARTS).glob("*.parquet"))
    assert len(parts) == 3
    assert all(set(pl.read_parquet(part)["model_version"]) == {"2"} for part in parts)  # no part of version 1 left


# --- training ---------------------------------------------------------------------------------


def structured_images(count: int = 64, size: int = RES, seed: int = 0) -> torch.Tensor:
    """[count, 3, size, size] in [-1, 1]: half coloured discs on a dark ground, half two-colour stripes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((count, 3, size, size), np.float32)
    for k in range(count):
        a, b = rng.uniform(-1, 1, (2, 3, 1, 1))
        if k % 2:
            width = int(rng.integers(2, 4))
            coord = xx if rng.random() < 0.5 else yy
            stripe = ((coord + rng.integers(0, width)) // width) % 2
            out[k] = np.where(stripe[None] > 0, a, b)
        else:
            cy, cx = rng.uniform(4, size - 4, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(2.5, 5) ** 2
            out[k] = np.where(disc[None], a, -0.8)
    return torch.from_numpy(out)


def endless(images: torch.Tensor, masks: torch.Tensor | None, batch: int, seed: int = 0) -> Iterator:
    order = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(images), generator=order)
        for begin in range(0, len(images) - batch + 1, batch):
            idx = perm[begin:begin + batch]
            yield images[idx], None if masks is None else masks[idx]


TRAIN_STYLE = StyleGanConfig(resolution=RES, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)


def tiny_feature_fn():
    """A fixed random conv net (seeded): channel means and spreads of two stages."""
    torch.manual_seed(1234)
    stage1 = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.LeakyReLU(0.2)).eval()
    stage2 = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, stride=2, padding=1), torch.nn.LeakyReLU(0.2)).eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        a = stage1(x)
        b = stage2(a)
        return torch.cat([a.mean(dim=(2, 3)), a.std(dim=(2, 3)), b.mean(dim=(2, 3)), b.std(dim=(2, 3))], dim=1)

    return features


def test_stylegan_training_lowers_fid(tmp_path: Path) -> None:
    images = structured_images()
    fn = tiny_feature_fn()
    device = torch.device("cpu")
    real = feature_stats([to_uint8(images)], fn, RES, device)

    def fid(G: torch.nn.Module) -> float:
        return fid_from_stats(real, feature_stats([generate_uncond(G, range(256), 1.0, CPU)], fn, RES, device))

    trainer = StyleGanTrainer(TRAIN_STYLE, GanTrainConfig(steps=300, batch_size=8), CPU)
    initial = fid(trainer.G_ema)
    result = fit(trainer, endless(images, None, 8), 300, tmp_path, "v1", checkpoint_every=1000, fid_every=0, fid=fid,
                 log=quiet, log_every=50)
    assert trainer.step == 300 and [s for s, _ in result.fid] == [300]
    assert len(result.history) == 6
    for record in result.history:
        assert all(math.isfinite(v) for v in record.values())
    final = result.fid[-1][1]
    assert math.isfinite(final) and final < 0.7 * initial, f"FID {initial:.3f} -> {final:.3f}"


def spade_batches(count: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images painted from class maps: one colour per class plus a little noise."""
    masks = torch.from_numpy(class_maps(count, seed=seed))
    gen = torch.Generator().manual_seed(seed)
    palette = torch.linspace(-0.9, 0.9, CLASSES * 3).reshape(CLASSES, 3)[torch.randperm(CLASSES, generator=gen)]
    images = palette[masks].permute(0, 3, 1, 2) + 0.05 * torch.randn(count, 3, RES, RES, generator=gen)
    return images.clamp(-1, 1), masks


def tiny_perceptual() -> PerceptualLoss:
    torch.manual_seed(5)
    stack = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.ReLU())
    return PerceptualLoss(stack, slices=(2, 4, 6), weights=(0.25, 0.5, 1.0))


@pytest.mark.parametrize("perceptual", [False, True])
def test_spade_training_runs_with_finite_losses(tmp_path: Path, perceptual: bool) -> None:
    images, masks = spade_batches()
    config = CondTrainConfig(steps=20, batch_size=4, cutmix_prob=0.5, vgg_weight=1.0 if perceptual else 0.0)
    trainer = SpadeTrainer(TINY_SPADE, config, CPU, tiny_perceptual() if perceptual else None)
    result = fit(trainer, endless(images, masks, 4), 20, tmp_path, "v1", checkpoint_every=10, fid_every=0, log=quiet,
                 log_every=5)
    assert trainer.step == 20 and len(result.history) == 4
    for record in result.history:
        assert {"loss_g", "loss_d", "d_real", "d_fake", "consistency"} <= set(record)
        assert all(math.isfinite(v) for v in record.values())
    with pytest.raises(GenerationError, match="mask"):
        trainer.train_step(images[:4], None)
    out = generate_cond(trainer.G_ema, masks[:4].numpy(), [0, 1, 2, 3], CPU)
    assert out.shape == (4, RES, RES, 3)


# --- checkpoints and resume -------------------------------------------------------------------


SMALL_RECIPE = GanTrainConfig(steps=8, batch_size=4, r1_interval=2)


def same_batch_forever(batch: int = 4) -> Iterator:
    images = structured_images(batch, seed=9)
    while True:
        yield images, None


def test_fit_writes_checkpoints_and_resume_checks_the_setup(tmp_path: Path) -> None:
    trainer = StyleGanTrainer(TINY_STYLE, SMALL_RECIPE, CPU)
    fit(trainer, same_batch_forever(), 4, tmp_path, "data-v1", checkpoint_every=2, fid_every=0, log=quiet)
    assert (tmp_path / LAST).is_file() and (tmp_path / GENERATOR).is_file()

    same = StyleGanTrainer(TINY_STYLE, replace(SMALL_RECIPE, steps=100, checkpoint_every=7), CPU)
    checkpoint = plan_resume(tmp_path, same, "data-v1", log=quiet)
    assert checkpoint is not None and checkpoint["step"] == 4  # steps and checkpointing are not the recipe

    cases = {
        "network configuration": (StyleGanTrainer(replace(TINY_STYLE, channel_max=8),
                                                  SMALL_RECIPE, CPU), "data-v1"),
        "recipe": (StyleGanTrainer(TINY_STYLE, replace(SMALL_RECIPE, lr=1e-3), CPU), "data-v1"),
        "training split": (StyleGanTrainer(TINY_STYLE, SMALL_RECIPE, CPU), "data-v2"),
        "cond GAN": (SpadeTrainer(TINY_SPADE, CondTrainConfig(), CPU), "data-v1"),
    }
    for reason, (other, data_version) in cases.items():
        messages: list[str] = []
        assert plan_resume(tmp_path, other, data_version, log=messages.append) is None, reason
        assert len(messages) == 1 and "not resuming" in messages[0], messages
        if reason != "cond GAN":
            assert reason.split()[-1] in messages[0], messages
        else:
            assert "uncond" in messages[0]
    assert plan_resume(tmp_path / "nowhere", same, "data-v1", log=quiet) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / LAST).write_bytes(b"not a checkpoint")
    messages = []
    assert plan_resume(tmp_path / "broken", same, "data-v1", log=messages.append) is None
    assert "cannot be read" in messages[0]


def test_interrupted_training_continues_where_it_stopped(tmp_path: Path) -> None:
    straight = StyleGanTrainer(TINY_STYLE, SMALL_RECIPE, CPU)
    fit(straight, same_batch_forever(), 8, tmp_path / "straight", "v1", checkpoint_every=100, fid_every=0, log=quiet,
        log_every=2)

    first = StyleGanTrainer(TINY_STYLE, SMALL_RECIPE, CPU)
    fit(first, same_batch_forever(), 4, tmp_path / "split", "v1", checkpoint_every=100, fid_every=0, log=quiet,
        log_every=2)
    second = StyleGanTrainer(TINY_STYLE, SMALL_RECIPE, CPU)
    messages: list[str] = []
    resume = plan_resume(tmp_path / "split", second, "v1", log=messages.append)
    assert resume is not None and resume["step"] == 4
    result = fit(second, same_batch_forever(), 8, tmp_path / "split", "v1", checkpoint_every=100, fid_every=0,
                 resume=resume, log=messages.append, log_every=2)
    assert result.resumed_from == 4 and second.step == 8
    assert any("resuming" in m and "step 4" in m for m in messages)
    assert [r["step"] for r in result.history] == [2, 4, 6, 8]
    # resumed = uninterrupted: same weights, optimizer state and random draws
    for (name, a), b in zip(straight.G_ema.state_dict().items(), second.G_ema.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    for a, b in zip(straight.D.parameters(), second.D.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # resuming a finished training does nothing more
    done = StyleGanTrainer(TINY_STYLE, SMALL_RECIPE, CPU)
    again = fit(done, same_batch_forever(), 8, tmp_path / "split", "v1", checkpoint_every=100, fid_every=0,
                resume=plan_resume(tmp_path / "split", done, "v1", log=quiet), log=quiet)
    assert again.resumed_from == 8 and done.step == 8


def test_load_generator_checks_kind_and_configuration(tmp_path: Path) -> None:
    trainer = StyleGanTrainer(TINY_STYLE, SMALL_RECIPE, CPU)
    fit(trainer, same_batch_forever(), 2, tmp_path, "v1", checkpoint_every=100, fid_every=0, log=quiet)
    G, meta = load_generator(tmp_path / GENERATOR, "uncond", TINY_STYLE.to_dict())
    assert meta["kind"] == "uncond" and meta["step"] == 2 and meta["data_version"] == "v1"
    assert not any(p.requires_grad for p in G.parameters()) and not G.training
    np.testing.assert_array_equal(generate_uncond(G, [1, 2], 1.0, CPU), generate_uncond(trainer.G_ema, [1, 2], 1.0, CPU))
    load_generator(tmp_path / GENERATOR, "uncond")  # no expectation: anything of the kind

    expected = {**TINY_STYLE.to_dict(), "channel_max": 64}
    with pytest.raises(GenerationError, match="channel_max is 16 there, 64 in the settings") as err:
        load_generator(tmp_path / GENERATOR, "uncond", expected)
    assert "z_dim" not in str(err.value)
    with pytest.raises(GenerationError, match="uncond"):
        load_generator(tmp_path / GENERATOR, "cond")
    with pytest.raises(GenerationError, match="no generator"):
        load_generator(tmp_path / LAST, "uncond")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(GenerationError, match="readable"):
        load_generator(tmp_path / "junk.pt", "uncond")


# --- perceptual loss --------------------------------------------------------------------------


def test_perceptual_loss_is_zero_only_for_identical_images(tmp_path: Path) -> None:
    loss = tiny_perceptual()
    torch.manual_seed(0)
    real = torch.rand(2, 3, RES, RES) * 2 - 1
    assert float(loss(real, real.clone())) == 0.0
    fake = (real + 0.1 * torch.randn_like(real)).requires_grad_(True)
    value = loss(fake, real)
    assert float(value) > 0
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())  # the feature stack is frozen
    with pytest.raises(GenerationError, match="not found"):
        load_vgg_loss(tmp_path / "missing-vgg19.pth")
