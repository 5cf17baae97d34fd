"""The unconditional style-based generator and its residual discriminator (StyleGAN2).

Generator: z -> normalized -> mapping MLP (equalized lr, lr multiplier 0.01) -> w; w is
broadcast to one style per layer (two latents mixed at a random layer during training), pulled
toward the tracked mean w by the truncation psi, and drives a synthesis network that starts
from a learned constant and doubles resolution per block with modulated convolutions,
per-pixel noise and skip connections through ToRGB layers.

Discriminator: FromRGB, residual blocks halving resolution ((skip + main) / sqrt 2), the
minibatch standard deviation as an extra channel at 4x4, a convolution and two linear layers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from aras_assets.generation.layers import EqualConv2d, EqualLinear, StyledLayer, ToRGB, upsample2x


@dataclass(frozen=True)
class StyleGanConfig:
    resolution: int = 32
    z_dim: int = 64
    w_dim: int = 64
    mapping_layers: int = 2
    channel_base: int = 1024
    channel_max: int = 64
    image_channels: int = 3

    def channels(self, res: int) -> int:
        return max(1, min(self.channel_base // res, self.channel_max))

    @property
    def block_resolutions(self) -> list[int]:
        return [2 ** k for k in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * len(self.block_resolutions)

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    def __init__(self, config: StyleGanConfig, lr_mul: float = 0.01) -> None:
        super().__init__()
        dims = [config.z_dim] + [config.w_dim] * config.mapping_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, activate=True) for a, b in itertools.pairwise(dims)])
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(normalize_2nd_moment(z))

    @torch.no_grad()
    def track_mean(self, w: torch.Tensor, beta: float = 0.995) -> None:
        self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, beta))


class SynthesisNetwork(nn.Module):
    def __init__(self, config: StyleGanConfig) -> None:
        super().__init__()
        self.config = config
        res = config.block_resolutions
        self.const = nn.Parameter(torch.randn(config.channels(4), 4, 4))
        self.layers = nn.ModuleList()
        self.torgbs = nn.ModuleList()
        self.layer_res: list[int] = []
        for k, r in enumerate(res):
            if k == 0:
                self.layers.append(StyledLayer(config.channels(4), config.channels(4), config.w_dim))
                self.layer_res.append(4)
            else:
                self.layers.append(StyledLayer(config.channels(r // 2), config.channels(r), config.w_dim, up=True))
                self.layers.append(StyledLayer(config.channels(r), config.channels(r), config.w_dim))
                self.layer_res += [r, r]
            self.torgbs.append(ToRGB(config.channels(r), config.w_dim, config.image_channels))

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        return [(1, r, r) for r in self.layer_res]

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        if noise is None:  # training: fresh noise every call
            noise = [torch.randn(ws.shape[0], *shape, device=ws.device, dtype=ws.dtype) for shape in self.noise_shapes()]
        x = self.const[None].expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        img = None
        layer = 0
        for block, torgb in enumerate(self.torgbs):
            # styles: block 0 uses w[0] (conv) and w[1] (rgb); block b uses w[2b-1], w[2b], w[2b+1]
            first = 0 if block == 0 else 2 * block - 1
            convs = 1 if block == 0 else 2
            for k in range(convs):
                x = self.layers[layer](x, ws[:, first + k], noise[layer])
                layer += 1
            rgb = torgb(x, ws[:, first + convs])
            img = rgb if img is None else upsample2x(img) + rgb
        return img


class StyleGenerator(nn.Module):
    def __init__(self, config: StyleGanConfig) -> None:
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)

    def styles(self, z: torch.Tensor, psi: float = 1.0, mix_z: torch.Tensor | None = None,
               mix_cutoff: int | None = None) -> torch.Tensor:
        """Per-layer styles [B, num_ws, w_dim]: mapped z, optionally mixed with mix_z from layer
        `mix_cutoff` on, then truncated toward the tracked mean by psi."""
        w = self.mapping(z)
        ws = w[:, None].repeat(1, self.config.num_ws, 1)
        if mix_z is not None and mix_cutoff is not None:
            ws[:, mix_cutoff:] = self.mapping(mix_z)[:, None]
        if psi != 1.0:
            avg = self.mapping.w_avg.to(ws.dtype)
            ws = avg + psi * (ws - avg)
        return ws

    def forward(self, z: torch.Tensor, psi: float = 1.0, noise: list[torch.Tensor | None] | None = None,
                mix_z: torch.Tensor | None = None, mix_cutoff: int | None = None) -> torch.Tensor:
        return self.synthesis(self.styles(z, psi, mix_z, mix_cutoff), noise)


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append the mean over channels and pixels of the per-group standard deviation."""
    batch, ch, h, w = x.shape
    g = math.gcd(min(group, batch), batch)
    y = x.reshape(g, -1, ch, h, w).float()
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [batch / g]
    y = y.to(x.dtype).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class ResidualDown(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels)
        self.conv1 = EqualConv2d(in_channels, out_channels, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, kernel=1, bias=False, activate=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) / math.sqrt(2.0)


class StyleDiscriminator(nn.Module):
    def __init__(self, config: StyleGanConfig, in_channels: int | None = None) -> None:
        super().__init__()
        c = config.channels
        r = config.resolution
        self.from_rgb = EqualConv2d(in_channels or config.image_channels, c(r), kernel=1)
        blocks = []
        while r > 4:
            blocks.append(ResidualDown(c(r), c(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.conv = EqualConv2d(c(4) + 1, c(4))
        self.fc = EqualLinear(c(4) * 16, c(4), activate=True)
        self.out = EqualLinear(c(4), 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(img))
        x = self.conv(minibatch_stddev(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)
