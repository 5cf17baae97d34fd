"""Segmentation networks through segmentation_models_pytorch, and checkpoints that say what
they hold (architecture, encoder, classes) so a wrong one is refused with a clear message."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from aras_assets.errors import BadInputError
from aras_assets.landcover import NUM_CLASSES
from aras_assets.settings import SEG_ARCHS
from resources.storage import atomic_write_bytes

CHECKPOINT_FORMAT = 1


class CheckpointError(BadInputError, ValueError):
    """A checkpoint that is unreadable or holds another model than the one asked for."""


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    encoder: str
    classes: int = NUM_CLASSES
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.arch not in SEG_ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(SEG_ARCHS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(spec: ModelSpec, encoder_weights: Path | None = None) -> torch.nn.Module:
    """A fresh network; the encoder starts from a local weights file when one is given
    (`encoder_weights=None` for smp, so nothing is ever downloaded)."""
    import segmentation_models_pytorch as smp

    model = smp.create_model(spec.arch, encoder_name=spec.encoder, encoder_weights=None,
                             in_channels=spec.in_channels, classes=spec.classes)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    return model


def load_encoder_weights(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"encoder weights {path} do not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    encoder = model.encoder  # type: ignore[attr-defined]
    # ImageNet classifier heads (fc.*, classifier.*) have no place in an encoder.
    own = encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in usable]
    if missing:
        raise CheckpointError(f"encoder weights {path} lack {len(missing)} tensors of the encoder, e.g. {missing[:3]}")
    wrong = [k for k, v in usable.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"encoder weights {path} have other shapes for {wrong[:3]}")
    encoder.load_state_dict(usable)


def encoder_weights_path(folder: str, encoder: str) -> Path | None:
    """`<folder>/<encoder>.pth` when a weights folder is configured; an error if that file is missing."""
    if not folder:
        return None
    path = Path(folder) / f"{encoder}.pth"
    if not path.is_file():
        raise CheckpointError(f"seg_encoder_weights is {folder} but {path.name} is not there")
    return path


def save_checkpoint(path: Path, spec: ModelSpec, model: torch.nn.Module, **extra: Any) -> None:
    """Atomically write the weights with the spec and any extra state (optimizer, epoch, ...)."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "model": model.state_dict(), **extra}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, expect: ModelSpec | None = None, expect_classes: int | None = None) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain data only) and check it holds the expected model."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "spec" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an ARAS segmentation checkpoint (no spec/model entries)")
    spec = ModelSpec(**ckpt["spec"])
    if expect is not None and (spec.arch, spec.encoder) != (expect.arch, expect.encoder):
        raise CheckpointError(f"checkpoint {path} holds {spec.arch} with encoder {spec.encoder}, "
                              f"not the requested {expect.arch} with encoder {expect.encoder}")
    classes = expect.classes if expect is not None else expect_classes
    if classes is not None and spec.classes != classes:
        raise CheckpointError(f"checkpoint {path} predicts {spec.classes} classes, the land-cover schema has {classes}")
    ckpt["spec"] = spec
    return ckpt


def load_model(path: Path, expect: ModelSpec | None = None) -> tuple[torch.nn.Module, ModelSpec, dict[str, Any]]:
    """The network stored in a checkpoint, in eval mode on the CPU."""
    ckpt = load_checkpoint(path, expect, expect_classes=NUM_CLASSES)
    model = build_model(ckpt["spec"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["spec"], ckpt
