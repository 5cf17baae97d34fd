"""VGG perceptual loss for the conditional generator (SPADE's feature-matching term): L1
between VGG-19 activations of the generated image and the real image of the same mask, at
relu1_1 .. relu5_1 with weights 1/32 .. 1. The weights come from a local file, never a download."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from aras_assets.generation.data import GenerationError
from aras_assets.segmentation.data import IMAGENET_MEAN, IMAGENET_STD

# indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in torchvision's vgg19().features
SLICES = (2, 7, 12, 21, 30)
WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


class PerceptualLoss(torch.nn.Module):
    def __init__(self, features: torch.nn.Sequential, slices: tuple[int, ...] = SLICES,
                 weights: tuple[float, ...] = WEIGHTS) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.slices, self.weights = slices, weights
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None])
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None])

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std  # [-1, 1] -> ImageNet-normalized
        out, begin = [], 0
        for end in self.slices:
            x = self.features[begin:end](x)
            out.append(x)
            begin = end
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        pairs = zip(self._activations(fake), self._activations(real), strict=True)
        return sum(w * F.l1_loss(a, b.detach()) for w, (a, b) in zip(self.weights, pairs, strict=False))


def load_vgg_loss(weights_path: str | Path) -> PerceptualLoss:
    """VGG-19 perceptual loss from a local torchvision state dict (setting cond_vgg_weights)."""
    from torchvision.models import vgg19

    path = Path(weights_path)
    if not path.is_file():
        raise GenerationError(f"VGG-19 weights {path} not found (setting cond_vgg_weights); leave it empty to train without")
    net = vgg19(weights=None)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise GenerationError(f"{path} is not a torchvision VGG-19 state dict: {str(exc).splitlines()[0]}") from exc
    return PerceptualLoss(net.features[: SLICES[-1]])
