"""A CLIP model from local weights only: open_clip architecture by config name, state dict from a file.

Nothing here downloads: the model is built with `pretrained=None` (random init, no tower base weights)
and the weights come from `weights_path`, read with `torch.load(weights_only=True)` (or safetensors)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from aras_assets.errors import BadInputError


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns on the root logger that a model built with pretrained=None is randomly initialised;
    load_clip loads the weights right after, so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


class ClipWeightsError(BadInputError, ValueError):
    """The weights file is missing, unreadable, or holds the weights of another model."""


@dataclass
class ClipModel:
    """A loaded model (eval mode) with its inference image transform and its tokenizer."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    model_name: str
    weights: str

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


def _config_name(model_name: str) -> str:
    """The open_clip config name (`ViT-B/32` spelled as `ViT-B-32`), or ClipWeightsError for an unknown one."""
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise ClipWeightsError(f"CLIP model_name {model_name!r}: only open_clip config names are accepted here "
                         "(weights come from a local file, never from a hub or a model folder)")
    name = model_name.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        raise ClipWeightsError(f"unknown open_clip model config {model_name!r}; known: {', '.join(open_clip.list_models())}")
    return name


def _read_state_dict(path: Path, model_name: str) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise ClipWeightsError(f"CLIP weights file {path} for model {model_name!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ClipWeightsError(f"CLIP weights file {path} for model {model_name!r} is unreadable as a plain state dict "
                               f"(torch.load weights_only=True): {type(exc).__name__}: {exc}") from exc
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise ClipWeightsError(f"CLIP weights file {path} for model {model_name!r} holds no state dict of tensors "
                               f"(found {type(checkpoint).__name__}); expected a state dict or {{'state_dict': ...}}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in checkpoint.items()}


def _adapt_layout(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """open_clip's own layout shims: old-format text tower keys for custom-text models, scalar vs 1-d logit params."""
    from open_clip.model import convert_to_custom_text_state_dict

    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and target is not None and state[key].numel() == target.numel():
            state[key] = state[key].reshape(target.shape)
    return state


def _mismatch(model: Any, state: dict[str, Any]) -> str:
    """What stops a strict load, briefly: missing and unexpected keys, shape mismatches (a few of each)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def load_clip(model_name: str, weights_path: str | Path, device: str = "cpu") -> ClipModel:
    """Build open_clip `model_name` (a config name, e.g. `ViT-B-32`) with `pretrained=None`, then load the
    local state dict at `weights_path` strictly. The file may hold a plain state dict or `{"state_dict": ...}`,
    keys may carry a `module.` prefix; `.safetensors` files are read with safetensors, others with
    `torch.load(weights_only=True)`. A file for another architecture raises ClipWeightsError naming both."""
    import open_clip
    import torch

    name = _config_name(model_name)
    path = Path(weights_path).expanduser()
    state = _read_state_dict(path, name)
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, pretrained_image=False, pretrained_text=False, device="cpu")
    finally:
        logging.getLogger().removeFilter(quiet)
    state = _adapt_layout(model, state)
    problems = _mismatch(model, state)
    if problems:
        raise ClipWeightsError(f"CLIP weights file {path} does not match open_clip model {name!r} "
                               f"(weights for another model?): {problems}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ClipWeightsError(f"CLIP weights file {path} does not load into open_clip model {name!r}: {exc}") from exc
    model = model.to(torch.device(device)).eval()
    return ClipModel(model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(name),
                     model_name=name, weights=str(path))


class ClipResource(dg.ConfigurableResource):
    """The CLIP model for CLIPScore: an open_clip config name and a local weights file. With no
    `weights_path` the resource is unconfigured and CLIPScore is skipped (the caption-eval asset says so)."""

    model_name: str = "ViT-B-32"
    weights_path: str = ""
    batch_size: int = 64

    @property
    def configured(self) -> bool:
        return bool(self.weights_path.strip())

    def load(self, device: str = "cpu") -> ClipModel:
        if not self.configured:
            raise ClipWeightsError(f"ClipResource.weights_path is empty: set it to a local open_clip state dict for "
                             f"{self.model_name!r} to compute CLIPScore")
        return load_clip(self.model_name, self.weights_path.strip(), device=device)
