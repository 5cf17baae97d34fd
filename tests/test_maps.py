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
    assert tuple(pixels[int(round(y)), int(x)]) == BBOX_COLOUR
