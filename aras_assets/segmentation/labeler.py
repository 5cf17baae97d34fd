"""Label any image shard with a trained segmentation model: masks in the release's RGB
palette and manifest rows naming the model version that drew them, batch by batch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from aras_assets.errors import BadInputError
from aras_assets.ids import PATCH_SIZE
from aras_assets.landcover import CLASS_NAMES, NUM_CLASSES, mask_to_rgb
from aras_assets.segmentation.data import normalize, read_image
from aras_assets.segmentation.models import ModelSpec
from aras_assets.segmentation.training import predict
from resources.device import TorchRuntime
from resources.storage import atomic_write_bytes, contained

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABEL_COUNT_COLUMNS = [f"px_{name}" for name in CLASS_NAMES]
LABEL_SCHEMA = {
    "image_id": pl.String, "image_path": pl.String, "mask_path": pl.String, "model_name": pl.String,
    "model_version": pl.String, "arch": pl.String, "encoder": pl.String, "height": pl.Int32, "width": pl.Int32,
    "mask_sha256": pl.String, **{c: pl.Int64 for c in LABEL_COUNT_COLUMNS},
}


class ShardError(BadInputError, ValueError):
    """An image shard that cannot be labelled (missing, empty, unreadable images)."""


@dataclass(frozen=True)
class Labeler:
    """A model ready to label, and the name and version it is recorded under."""

    model: torch.nn.Module
    spec: ModelSpec
    model_name: str
    model_version: str


def shard_images(source: Path, root: Path | None = None) -> pl.DataFrame:
    """image_id, image_path of a shard given as a folder of images or a Parquet manifest with
    `image_path` (and `image_id`, else the file stem; relative paths are under `root`)."""
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        frame = pl.DataFrame({"image_id": [p.stem for p in paths], "image_path": [str(p) for p in paths]},
                             schema={"image_id": pl.String, "image_path": pl.String})
    elif source.is_file():
        try:
            frame = pl.read_parquet(source)
        except Exception as exc:
            raise ShardError(f"shard manifest {source} cannot be read: {exc}") from exc
        if "image_path" not in frame.columns:
            raise ShardError(f"shard manifest {source} has no image_path column")
        if "image_id" not in frame.columns:
            frame = frame.with_columns(pl.col("image_path").map_elements(lambda p: Path(p).stem,
                                                                          return_dtype=pl.String).alias("image_id"))
        base = root or source.parent
        # Every row's image stays under the root (or the manifest's folder): no row reads elsewhere.
        paths = [str(contained(base, p, f"shard manifest {source} row {i}"))
                 for i, p in frame.select("image_id", "image_path").iter_rows()]
        frame = frame.select("image_id").with_columns(pl.Series("image_path", paths, dtype=pl.String))
    else:
        raise ShardError(f"image shard {source} does not exist")
    if frame.is_empty():
        raise ShardError(f"image shard {source} holds no images")
    for image_id in frame["image_id"].to_list():
        mask_name(image_id, source)
    dupes = frame.filter(pl.col("image_id").is_duplicated())["image_id"].unique().to_list()
    if dupes:
        raise ShardError(f"image shard {source} repeats image ids, e.g. {dupes[:3]}")
    return frame


def mask_name(image_id: str, where: Path | str) -> str:
    """The mask file name of an image id; an id that is not a plain file name (`../x`, `a/b`,
    a hidden name) would write elsewhere, so it is a bad input naming the row."""
    name = f"{image_id}.png"
    if not image_id or image_id != Path(image_id).name or image_id.startswith(".") or "\\" in image_id:
        raise ShardError(f"{where}: image id {image_id!r} is not a plain file name; ids name mask files")
    return name


def _batches(n: int, size: int) -> Iterator[range]:
    for begin in range(0, n, size):
        yield range(begin, min(begin + size, n))


def _read(path: str) -> np.ndarray:
    try:
        return read_image(Path(path))
    except FileNotFoundError as exc:
        raise ShardError(f"image {path} does not exist") from exc
    except OSError as exc:
        raise ShardError(f"image {path} cannot be read: {exc}") from exc


def _encode(mask: np.ndarray, level: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(mask_to_rgb(mask)).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def predict_at_scale(model: torch.nn.Module, batch: torch.Tensor, runtime: TorchRuntime, min_size: int) -> torch.Tensor:
    """Class indices [B, H, W]. Images smaller than `min_size` (e.g. 32-px synthetic images of
    a 256-px patch's ground) are upsampled to it, so the model sees them at the scale it was
    trained on, and the prediction is brought back to the image's size by nearest neighbour."""
    height, width = batch.shape[-2:]
    if min(height, width) >= min_size:
        return predict(model, batch, runtime)[1]
    scale = min_size / min(height, width)
    size = (round(height * scale), round(width * scale))
    big = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False)
    pred = predict(model, big, runtime)[1]
    return torch.nn.functional.interpolate(pred[:, None].float(), size=(height, width), mode="nearest")[:, 0].long()


def label_images(labeler: Labeler, images: pl.DataFrame, out_dir: Path, rel_dir: str, runtime: TorchRuntime,
                 batch_size: int = 16, png_compress_level: int = 1,
                 progress: Callable[[int, int], None] | None = None, min_size: int = PATCH_SIZE) -> pl.DataFrame:
    """Predict a mask for every image (batched; images of one size per batch) and write
    `<out_dir>/<image_id>.png`; returns one manifest row per image in input order. Images
    smaller than `min_size` are labelled at that scale (see predict_at_scale)."""
    ids: list[str] = images["image_id"].to_list()
    for image_id in ids:  # before any work: an id that is not a plain name would write outside out_dir
        mask_name(image_id, out_dir)
    model = runtime.prepare(labeler.model).eval()
    paths: list[str] = images["image_path"].to_list()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=2) as pool, torch.inference_mode():
        pending = pool.map(lambda r: [_read(paths[i]) for i in r], _batches(len(ids), batch_size))
        for batch, arrays in zip(_batches(len(ids), batch_size), pending, strict=True):
            for shape in dict.fromkeys(a.shape for a in arrays):  # group by size, keep order
                members = [k for k, a in enumerate(arrays) if a.shape == shape]
                tensor = runtime.to_device(torch.stack([normalize(arrays[k]) for k in members]))
                masks = predict_at_scale(model, tensor, runtime, min_size).to(torch.uint8).cpu().numpy()
                encoded = list(pool.map(lambda m: _encode(m, png_compress_level), masks))
                for k, mask, png in zip(members, masks, encoded, strict=True):
                    index = batch[k]
                    name = mask_name(ids[index], out_dir)
                    atomic_write_bytes(contained(out_dir, name, f"image {ids[index]}"), png)
                    counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
                    rows.append({"order": index, "image_id": ids[index], "image_path": paths[index],
                                 "mask_path": f"{rel_dir}/{name}", "model_name": labeler.model_name,
                                 "model_version": labeler.model_version, "arch": labeler.spec.arch,
                                 "encoder": labeler.spec.encoder, "height": mask.shape[0], "width": mask.shape[1],
                                 "mask_sha256": hashlib.sha256(png).hexdigest(),
                                 **{c: int(v) for c, v in zip(LABEL_COUNT_COLUMNS, counts, strict=True)}})
            if progress is not None:
                progress(batch.stop, len(ids))
    rows.sort(key=lambda r: r.pop("order"))
    return pl.DataFrame(rows, schema=LABEL_SCHEMA)
