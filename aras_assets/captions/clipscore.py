"""CLIPScore (Hessel et al. 2021, without their w=2.5 rescale): 100 * max(cos(image, caption), 0) per pair.

Plain functions over a loaded `ClipModel`; captions past the text context length (77 tokens) are truncated
by open_clip's tokenizer (last kept token replaced by end-of-text), never rejected."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from resources.clip import ClipModel

ImageLike = Image.Image | str | Path


def _image_key(image: ImageLike) -> Hashable:
    """Pairs share an image when they hold the same PIL object or the same file path."""
    if isinstance(image, str | Path):
        return ("path", str(Path(image)))
    return ("object", id(image))


def _as_rgb(image: ImageLike) -> Image.Image:
    if isinstance(image, str | Path):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _unique_images(images: Sequence[ImageLike], n_captions: int,
                   image_index: Sequence[int] | None) -> tuple[list[ImageLike], np.ndarray]:
    """The distinct images to encode and, per caption, the row of its image among them."""
    if image_index is None:
        if len(images) != n_captions:
            raise ValueError(f"{len(images)} images for {n_captions} captions: without image_index, images[i] pairs "
                             "with captions[i]")
        pairs = list(range(n_captions))
    else:
        if len(image_index) != n_captions:
            raise ValueError(f"image_index has {len(image_index)} entries for {n_captions} captions")
        pairs = [int(i) for i in image_index]
        bad = [i for i in pairs if not 0 <= i < len(images)]
        if bad:
            raise ValueError(f"image_index {bad[0]} out of range for {len(images)} images")
    rows: dict[Hashable, int] = {}
    unique: list[ImageLike] = []
    index = np.empty(n_captions, dtype=np.int64)
    for k, i in enumerate(pairs):
        key = _image_key(images[i])
        if key not in rows:
            rows[key] = len(unique)
            unique.append(images[i])
        index[k] = rows[key]
    return unique, index


def _encode_images(clip: ClipModel, images: Sequence[ImageLike], batch_size: int, device: Any) -> Any:
    import torch

    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([clip.preprocess(_as_rgb(im)) for im in images[start:start + batch_size]]).to(device)
        out.append(clip.model.encode_image(batch).float())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _encode_texts(clip: ClipModel, captions: Sequence[str], batch_size: int, device: Any) -> Any:
    import torch

    out = []
    for start in range(0, len(captions), batch_size):
        tokens = clip.tokenizer(list(captions[start:start + batch_size])).to(device)
        out.append(clip.model.encode_text(tokens).float())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def clip_scores(clip: ClipModel, images: Sequence[ImageLike], captions: Sequence[str],
                image_index: Sequence[int] | None = None, batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """CLIPScore per caption: float64 array of 100 * max(cos(image, caption), 0), len(captions).

    Pairing: without `image_index`, `images[i]` pairs with `captions[i]`; with it, `images` is a list of
    images and caption i pairs with `images[image_index[i]]` (e.g. 2 images, 10 captions, index [0]*5 + [1]*5).
    Either way each distinct image (same PIL object, or same file path) is preprocessed and encoded once.
    Images are PIL images or file paths (opened and converted to RGB), transformed by `clip.preprocess`.
    Images and texts are encoded in batches of `batch_size` under `torch.inference_mode`, in fp32; the
    embeddings are L2-normalised and the cosine taken in float64. `device`: None runs where the model is;
    a device name moves `clip.model` there first."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of strings, not one string")
    captions = list(captions)
    unique, index = _unique_images(images, len(captions), image_index)
    if not captions:
        return np.zeros(0, dtype=np.float64)
    if device is not None:
        clip.model.to(torch.device(device))
    target = clip.device
    clip.model.eval()
    with torch.inference_mode():
        image_emb = _encode_images(clip, unique, batch_size, target).double().cpu().numpy()
        text_emb = _encode_texts(clip, captions, batch_size, target).double().cpu().numpy()
    cosine = np.einsum("ij,ij->i", image_emb[index], text_emb)
    return 100.0 * np.maximum(cosine, 0.0)


def clipscore_mean(scores: np.ndarray) -> float:
    """The mean CLIPScore over pairs (the paper's corpus-level number, ~30 for matching captions); NaN when empty."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores.mean()) if scores.size else float("nan")
