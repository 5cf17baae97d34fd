"""Maps in asset metadata: tiles and patches land where their footprints say, in their colours."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from aras_assets.maps import BBOX_COLOUR, SPLIT_COLOURS, _Canvas, catalog_map, splits_map


def picture(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_splits_map_paints_each_patch_in_its_split_colour_where_it_lies() -> None:
    patches = [((29.0, 38.0, 29.1, 38.1), "train"), ((29.1, 38.0, 29.2, 38.1), "val"), ((29.0, 38.1, 29.1, 38.2), "test")]
    pixels = picture(splits_map(patches))
    canvas = _Canvas((29.0, 38.0, 29.2, 38.2), len(SPLIT_COLOURS))  # the same projection the map used
    for (west, south, east, north), split in patches:
        x, y = canvas.xy((west + east) / 2, (south + north) / 2)
        assert tuple(pixels[int(y), int(x)]) == SPLIT_COLOURS[split], split
    assert pixels.shape[1] == 720 and pixels.shape[0] > canvas.height  # room for the legend below


def test_catalog_map_outlines_the_bounding_box() -> None:
    bbox = (28.0, 36.0, 31.0, 39.0)
    pixels = picture(catalog_map(bbox, {"N38E029": (29.0, 38.0, 29.2, 38.2)}))
    canvas = _Canvas(bbox, 3)
    x, y = canvas.xy(29.5, 39.0)  # a point on the box's north edge
    assert tuple(pixels[round(y), int(x)]) == BBOX_COLOUR


def test_previews_carry_ids_and_the_class_legend(tmp_path) -> None:
    from aras_assets.landcover import PALETTE
    from aras_assets.previews import pair_grid, picture_rows

    image, mask = tmp_path / "i.png", tmp_path / "m.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(image)
    Image.new("RGB", (8, 8), tuple(PALETTE[0].tolist())).save(mask)
    plain = picture(pair_grid([(image, mask)], thumb=32, legend=False))
    shown = picture(pair_grid([(image, mask)], thumb=32, labels=["N38E029_000_000"]))
    assert shown.shape[0] > plain.shape[0] + 40  # the id row and the legend rows below the pictures
    colours = {tuple(c) for c in shown[plain.shape[0]:].reshape(-1, 3).tolist()}
    assert {tuple(c) for c in PALETTE.tolist()} <= colours  # every class's swatch is in the legend
    rows = picture(picture_rows([[np.zeros((4, 4, 3), np.uint8)]], thumb=16, labels=["uncond_0000_00001"]))
    assert rows.shape[1] >= 6 * len("uncond_0000_00001")  # wide enough for its id
