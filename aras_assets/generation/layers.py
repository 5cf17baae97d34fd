"""Building blocks of the style-based GAN (Karras et al., StyleGAN2): equalized learning rate,
modulated and demodulated convolution, per-pixel noise.

Equalized learning rate: weights are stored as N(0, 1) and scaled by He's constant
1/sqrt(fan_in) at every forward pass, so Adam's per-parameter step sizes act alike on every
layer. Modulation scales the input channels of a convolution by a style s; demodulation
rescales each output channel so its expected standard deviation is one again:

    w'_ijk = s_i * w_ijk,    w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + eps)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU scaled to keep unit variance (the gain of equalized-learning-rate nets)."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def upsample2x(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """2x upsampling. PyTorch's CPU kernels run about 15x faster on channels_last input than on
    NCHW (measured with torch 2.14), so NCHW input on the CPU is upsampled through a
    channels_last copy; the result stays channels_last, which the next convolution takes as is."""
    if x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None)


class EqualLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return lrelu(x) if self.activate else x


class EqualConv2d(nn.Module):
    """3x3 (or k x k) convolution with equalized learning rate, optional 2x average-pool down."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, bias: bool = True,
                 activate: bool = True, down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.activate = activate
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)
        if self.down:
            x = F.avg_pool2d(x, 2)
        return lrelu(x) if self.activate else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     eps: float = 1e-8, gain: float = 1.0, add: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated convolution applied as scale -> shared convolution -> rescale.

    Equal to convolving each sample with its own modulated (and demodulated) weights, but it
    runs one ordinary convolution over the whole batch, which batches, autocasts and uses
    channels_last better than the grouped form (`modulated_conv2d_grouped`). With demodulation,
    `gain` scales the output and `add` (broadcastable, e.g. per-pixel noise) is added in the
    same pass over the activations: gain * demodulated + add."""
    x = x * styles[:, :, None, None]
    out = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
    if not demodulate:
        if gain != 1.0 or add is not None:
            raise ValueError("gain and add go with demodulation")
        return out
    # sum over input channels and taps of (s_i w_ijk)^2, per sample and output channel
    d = (torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).t() + eps) * gain)[:, :, None, None]
    return out * d if add is None else torch.addcmul(add.to(out.dtype), out, d.to(out.dtype))


def modulated_conv2d_grouped(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                             eps: float = 1e-8) -> torch.Tensor:
    """The defining form: per-sample weights w''_ijk, one group per sample."""
    batch, in_ch, height, width = x.shape
    out_ch, _, k, _ = weight.shape
    w = weight[None] * styles[:, None, :, None, None]  # [B, out, in, k, k]
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    out = F.conv2d(x.reshape(1, batch * in_ch, height, width), w.reshape(batch * out_ch, in_ch, k, k),
                   padding=k // 2, groups=batch)
    return out.reshape(batch, out_ch, height, width)


class ModulatedConv(nn.Module):
    """Style-modulated convolution with an affine map w -> s (bias 1: styles start as identity)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int = 3, demodulate: bool = True,
                 up: bool = False) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.scale = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor, gain: float = 1.0, add: torch.Tensor | None = None) -> torch.Tensor:
        if self.up:
            x = upsample2x(x)
        return modulated_conv2d(x, self.weight * self.scale, self.affine(w), self.demodulate, gain=gain, add=add)


class StyledLayer(nn.Module):
    """Modulated 3x3 convolution, then per-pixel noise with a learned strength, bias and activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """lrelu(conv + noise * strength + bias) * gain, as lrelu(gain * (...)): the leaky ReLU is
        positively homogeneous, so the gain rides on small tensors (demodulation coefficients,
        noise, bias) and the activations are passed over three times after the convolution
        (scale and add noise, add bias, activate) instead of five; they keep the conv's dtype."""
        add = None if noise is None else noise * (self.noise_strength * LRELU_GAIN)
        x = self.conv(x, w, gain=LRELU_GAIN, add=add)
        return F.leaky_relu(x + (self.bias * LRELU_GAIN).to(x.dtype)[None, :, None, None], 0.2)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, w_dim: int, channels: int = 3) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_channels, channels, w_dim, kernel=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]
