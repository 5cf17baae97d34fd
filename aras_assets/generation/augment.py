"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for GANs trained on little data:
the same random colour, translation and cutout transforms are applied to real and generated
images before the discriminator, and gradients flow through them to the generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def color(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean  # contrast


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio x size pixels, filling with zeros."""
    b, c, h, w = x.shape
    sy, sx = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = torch.randint(-sy, sy + 1, (b,), device=x.device)
    dx = torch.randint(-sx, sx + 1, (b,), device=x.device)
    padded = F.pad(x, [sx, sx, sy, sy])
    rows = torch.arange(h, device=x.device)[None] + sy - dy[:, None]  # [B, H]
    cols = torch.arange(w, device=x.device)[None] + sx - dx[:, None]  # [B, W]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * sx))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ratio x size at a random place in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    oy, ox = ys - cy + ch // 2, xs - cx + cw // 2  # position inside the square, if in it
    hole = (oy >= 0) & (oy < ch) & (ox >= 0) & (ox < cw)
    return x * (~hole)[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], p: float = 1.0) -> torch.Tensor:
    """Each op of the policy on every image (p = 1), or on each image with probability p (the
    adaptive probability of ADA, Karras et al. 2020, over these ops)."""
    for name in policy:
        op = {"color": color, "translation": translation, "cutout": cutout}[name]
        if p >= 1:
            x = op(x)
        elif p > 0:
            chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
            x = torch.where(chosen, op(x), x)
    return x


def ada_step(p: float, real_sign: float, target: float, images: int, ada_kimg: float) -> float:
    """ADA's controller: r_t = E[sign(D(real))] above `target` means D overfits, so augment more;
    p moves by images / (ada_kimg * 1000) per step (0 to 1 in ada_kimg thousand images) in [0, 1]."""
    direction = (real_sign > target) - (real_sign < target)
    return min(1.0, max(0.0, p + direction * images / (ada_kimg * 1000.0)))
