"""Georeferenced labels: S2 GeoTIFFs in, mask GeoTIFFs with the input's CRS, transform and the
class colour table out, labelled window by window with overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from aras_assets.landcover import PALETTE
from aras_assets.segmentation.geotiff_labels import GeoTiffLabelError, label_geotiff, windows
from resources.device import TorchRuntime

CPU = TorchRuntime("cpu")


class RedOrGreen(torch.nn.Module):
    """Class 0 (tree) where red beats green, class 2 (grass) elsewhere: scale-free, so the
    per-window normalization cannot change the answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 7, *x.shape[2:])
        red_wins = (x[:, 0] > x[:, 1]).float()
        logits[:, 0] = red_wins
        logits[:, 2] = 1 - red_wins
        return logits


def write_s2(path: Path, height: int, width: int, bands: int = 4, dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.integers(100, 1500, (bands, height, width)).astype(dtype)
    if bands >= 2:  # red clearly above or below green, so 8-bit rounding cannot tie them
        data[0] = np.where(rng.random((height, width)) < 0.5, data[1] * 2, data[1] // 2)
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=bands, dtype=dtype,
                       crs="EPSG:4326", transform=from_origin(29.0, 39.0, 1 / 12000, 1 / 12000)) as ds:
        ds.write(data)
    return data


@pytest.mark.parametrize(("height", "width", "overlap"), [(600, 420, 32), (256, 256, 0), (100, 300, 64), (1000, 257, 16)])
def test_windows_keep_every_pixel_exactly_once(height, width, overlap) -> None:
    cover = np.zeros((height, width), dtype=int)
    for w in windows(height, width, 256, overlap):
        assert w.read.width <= 256 and w.read.height <= 256
        k = w.keep
        assert w.read.col_off <= k.col_off and k.col_off + k.width <= w.read.col_off + w.read.width
        assert w.read.row_off <= k.row_off and k.row_off + k.height <= w.read.row_off + w.read.height
        cover[k.row_off:k.row_off + k.height, k.col_off:k.col_off + k.width] += 1
    assert (cover == 1).all()


def test_a_tile_is_labelled_into_a_georeferenced_mask(tmp_path: Path) -> None:
    data = write_s2(tmp_path / "s2.tif", 600, 420)
    counts = label_geotiff(RedOrGreen(), tmp_path / "s2.tif", tmp_path / "mask.tif", CPU, overlap=32)
    with rasterio.open(tmp_path / "s2.tif") as src, rasterio.open(tmp_path / "mask.tif") as out:
        assert (out.crs, out.transform, out.shape, out.count, out.dtypes[0]) == (src.crs, src.transform, src.shape, 1, "uint8")
        mask = out.read(1)
        colours = out.colormap(1)
    expected = np.where(data[0] > data[1], 0, 2)
    assert (mask == expected).all()
    assert counts.sum() == 600 * 420 and counts[0] == (expected == 0).sum()
    assert all(colours[k][:3] == tuple(PALETTE[k].tolist()) for k in range(7))
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_geotiffs_are_named(tmp_path: Path) -> None:
    write_s2(tmp_path / "one_band.tif", 64, 64, bands=1)
    with pytest.raises(GeoTiffLabelError, match=r"one_band.tif has 1 band\(s\) of uint16; expected a 4-band uint16"):
        label_geotiff(RedOrGreen(), tmp_path / "one_band.tif", tmp_path / "m.tif", CPU)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(GeoTiffLabelError, match=r"broken\.tif cannot be read as a GeoTIFF"):
        label_geotiff(RedOrGreen(), tmp_path / "broken.tif", tmp_path / "m.tif", CPU)
    assert not (tmp_path / "m.tif").exists()
