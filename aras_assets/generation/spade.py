"""The mask-conditioned generator (SPADE, Park et al. 2019) and the U-Net discriminator
(Schonfeld et al. 2020).

SPADE: activations are normalized without learned parameters, then modulated per pixel by a
scale and shift predicted from the segmentation mask:  y = norm(x) * (1 + gamma(m)) + beta(m).
Here the modulation input is the one-hot mask concatenated with the noise vector broadcast
over the image, and the generator starts from a linear map of the noise, so one mask yields
many images. Instance normalization keeps every sample independent of the rest of its batch.

U-Net discriminator: the encoder ends in a global real/fake logit, the decoder (with skips from
the encoder) gives a real/fake logit per pixel. It sees the mask beside the image. CutMix
consistency: for x' = M * real + (1 - M) * fake the decoder must predict M and agree with
M * D(real) + (1 - M) * D(fake).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from aras_assets.generation.layers import upsample2x
from aras_assets.landcover import CLASS_NAMES


@dataclass(frozen=True)
class SpadeConfig:
    resolution: int = 32
    classes: int = len(CLASS_NAMES)
    z_dim: int = 32
    channels: int = 32  # the narrowest layer; the widest (4x4) is up to 8x this
    hidden: int = 64  # width of the mask embedding inside each SPADE
    image_channels: int = 3

    def width(self, res: int) -> int:
        return self.channels * min(8, max(1, self.resolution // (2 * res)))

    @property
    def resolutions(self) -> list[int]:
        return [2 ** k for k in range(2, int(math.log2(self.resolution)) + 1)]

    def to_dict(self) -> dict:
        return asdict(self)


def one_hot_mask(mask: torch.Tensor, classes: int) -> torch.Tensor:
    """[B, H, W] class indices -> [B, classes, H, W] float."""
    return F.one_hot(mask.long(), classes).permute(0, 3, 1, 2).float()


def cond_at(cond: torch.Tensor, size: int) -> torch.Tensor:
    """The conditioning map nearest-downsampled to size x size. The sizes are the full size over
    a power of two, so nearest sampling is a stride: the same as F.interpolate(mode="nearest"),
    without its slow NCHW CPU kernel. Made once per resolution and shared by its SPADE layers."""
    step = cond.shape[-1] // size
    return cond if step == 1 else cond[:, :, ::step, ::step].contiguous(memory_format=torch.channels_last)


class Spade(nn.Module):
    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """cond: the conditioning map at x's resolution (see cond_at)."""
        a = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(a)) + self.beta(a)


class SpadeResBlock(nn.Module):
    def __init__(self, fin: int, fout: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        mid = min(fin, fout)
        self.norm0 = Spade(fin, cond_channels, hidden)
        self.conv0 = nn.Conv2d(fin, mid, 3, padding=1)
        self.norm1 = Spade(mid, cond_channels, hidden)
        self.conv1 = nn.Conv2d(mid, fout, 3, padding=1)
        self.learned_skip = fin != fout
        if self.learned_skip:
            self.norm_s = Spade(fin, cond_channels, hidden)
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        skip = self.conv_s(self.norm_s(x, cond)) if self.learned_skip else x
        dx = self.conv0(F.leaky_relu(self.norm0(x, cond), 0.2))
        dx = self.conv1(F.leaky_relu(self.norm1(dx, cond), 0.2))
        return skip + dx


class SpadeGenerator(nn.Module):
    def __init__(self, config: SpadeConfig) -> None:
        super().__init__()
        self.config = config
        cond_ch = config.classes + config.z_dim
        res = config.resolutions
        self.fc = nn.Linear(config.z_dim, config.width(4) * 16)
        self.blocks = nn.ModuleList()
        for k, r in enumerate(res):
            fin = config.width(res[k - 1]) if k else config.width(4)
            self.blocks.append(SpadeResBlock(fin, config.width(r), cond_ch, config.hidden))
        self.to_rgb = nn.Conv2d(config.width(config.resolution), config.image_channels, 3, padding=1)

    def forward(self, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """mask: [B, H, W] class indices at the output resolution; z: [B, z_dim]. Returns [-1, 1] images."""
        onehot = one_hot_mask(mask, self.config.classes).to(z.dtype)
        cond = torch.cat([onehot, z[:, :, None, None].expand(-1, -1, *onehot.shape[-2:])], dim=1)
        x = self.fc(z).view(z.shape[0], -1, 4, 4)
        for k, block in enumerate(self.blocks):
            if k:
                x = upsample2x(x, "nearest")
            x = block(x, cond_at(cond, x.shape[-1]))
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


def _sn_conv(fin: int, fout: int, kernel: int = 3) -> nn.Module:
    return spectral_norm(nn.Conv2d(fin, fout, kernel, padding=kernel // 2))


class DownBlock(nn.Module):
    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        self.conv0 = _sn_conv(fin, fout)
        self.conv1 = _sn_conv(fout, fout)
        self.skip = _sn_conv(fin, fout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.conv1(F.leaky_relu(self.conv0(F.leaky_relu(x, 0.2)), 0.2))
        return F.avg_pool2d(main + self.skip(x), 2)


class UpBlock(nn.Module):
    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        self.conv0 = _sn_conv(fin, fout)
        self.conv1 = _sn_conv(fout, fout)
        self.skip = _sn_conv(fin, fout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample2x(x, "nearest")
        return self.skip(x) + self.conv1(F.leaky_relu(self.conv0(F.leaky_relu(x, 0.2)), 0.2))


class UNetDiscriminator(nn.Module):
    def __init__(self, config: SpadeConfig) -> None:
        super().__init__()
        self.config = config
        res = config.resolutions[::-1]  # R, R/2, ..., 4

        def width(r: int) -> int:
            return config.channels * min(8, config.resolution // r)

        self.stem = _sn_conv(config.image_channels + config.classes, width(res[0]))
        self.down = nn.ModuleList([DownBlock(width(r), width(r // 2)) for r in res[:-1]])
        self.global_head = spectral_norm(nn.Linear(width(4), 1))
        # decoder: up from 4x4, each step concatenating the encoder features of that size
        self.up = nn.ModuleList()
        for r in res[::-1][1:]:  # 8, 16, ..., R
            fin = width(r // 2) if r // 2 == 4 else 2 * width(r // 2)
            self.up.append(UpBlock(fin, width(r)))
        self.pixel_head = _sn_conv(2 * width(res[0]) if len(res) > 1 else width(res[0]), 1, 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (global logits [B], per-pixel logits [B, 1, H, W])."""
        x = self.stem(torch.cat([image, one_hot_mask(mask, self.config.classes).to(image.dtype)], dim=1))
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        global_logit = self.global_head(F.leaky_relu(x, 0.2).sum(dim=(2, 3))).squeeze(1)
        y = x
        for k, block in enumerate(self.up):
            y = block(y if k == 0 else torch.cat([y, skips[-1 - k]], dim=1))
        if self.up:
            y = torch.cat([y, skips[0]], dim=1)
        return global_logit, self.pixel_head(F.leaky_relu(y, 0.2))


def cutmix_masks(batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, 1, H, W] with 1 where the real image is kept and 0 in one random box of fake pixels
    (box area a uniform fraction of the image, as in CutMix)."""
    masks = torch.ones(batch, 1, height, width)
    draws = torch.rand(batch, 3, generator=generator)
    for b, (area, cy, cx) in enumerate(draws.tolist()):
        h, w = max(1, round(height * math.sqrt(area))), max(1, round(width * math.sqrt(area)))
        y0 = min(height - h, int(cy * (height - h + 1)))
        x0 = min(width - w, int(cx * (width - w + 1)))
        masks[b, :, y0:y0 + h, x0:x0 + w] = 0
    return masks
