"""Maps for asset metadata: where the catalog's tiles lie in the bounding box, and where each
split's patches lie, drawn from the footprints and bounds on record (lon/lat, plate carree)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]  # west, south, east, north in degrees

SPLIT_COLOURS = {"train": (46, 125, 50), "val": (249, 168, 37), "test": (21, 101, 192)}
BBOX_COLOUR = (198, 40, 40)
TILE_COLOUR = (90, 90, 90)
WIDTH = 720
MARGIN = 40
LEGEND_ROW = 18


class _Canvas:
    """Degrees to pixels over `extent`, north up, with room for a legend below."""

    def __init__(self, extent: Box, legend_rows: int) -> None:
        west, south, east, north = extent
        pad = 0.03 * max(east - west, north - south, 1e-6)
        self.west, self.south, self.east, self.north = west - pad, south - pad, east + pad, north + pad
        self.scale = (WIDTH - 2 * MARGIN) / (self.east - self.west)
        self.height = int((self.north - self.south) * self.scale) + 2 * MARGIN
        self.image = Image.new("RGB", (WIDTH, self.height + legend_rows * LEGEND_ROW + 10), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        return MARGIN + (lon - self.west) * self.scale, MARGIN + (self.north - lat) * self.scale

    def box(self, box: Box, **style: object) -> None:
        west, south, east, north = box
        (x0, y0), (x1, y1) = self.xy(west, north), self.xy(east, south)
        self.draw.rectangle((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), **style)

    def frame(self, extent: Box) -> None:
        """Corner coordinates, so a reader can place the map."""
        west, south, east, north = extent
        self.draw.text((MARGIN, 8), f"{north:.3f}N {west:.3f}E", fill=(0, 0, 0))
        self.draw.text((WIDTH - MARGIN - 110, self.height - MARGIN + 8), f"{south:.3f}N {east:.3f}E", fill=(0, 0, 0))

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int], bool]]) -> None:
        """One row per entry: a swatch (filled, or an outline) and its text."""
        for k, (text, colour, filled) in enumerate(entries):
            y = self.height + k * LEGEND_ROW
            self.draw.rectangle((MARGIN, y, MARGIN + 12, y + 12), fill=colour if filled else None, outline=colour, width=2)
            self.draw.text((MARGIN + 20, y), text, fill=(0, 0, 0))

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", optimize=True)
        return buf.getvalue()


def _union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def catalog_map(bbox: Box, tiles: Mapping[str, Box], skipped: Mapping[str, Box] | None = None) -> bytes:
    """PNG: the bounding box, each catalog tile's footprint with its id, and cells without a tile."""
    skipped = dict(skipped or {})
    canvas = _Canvas(_union([bbox, *tiles.values(), *skipped.values()]), 3)
    for box in skipped.values():
        canvas.box(box, outline=(180, 180, 180), width=1)
    for name, box in tiles.items():
        canvas.box(box, fill=(225, 225, 225), outline=TILE_COLOUR, width=2)
        x, y = canvas.xy(box[0], box[3])
        canvas.draw.text((x + 4, y + 4), name, fill=(0, 0, 0))
    canvas.box(bbox, outline=BBOX_COLOUR, width=2)
    canvas.frame(_union([bbox, *tiles.values()]))
    canvas.legend([("bounding box (bbox setting)", BBOX_COLOUR, False),
                   (f"S2 tile in the catalog ({len(tiles)})", TILE_COLOUR, False),
                   (f"cell without a tile ({len(skipped)})", (180, 180, 180), False)])
    return canvas.png()


def splits_map(patches: Sequence[tuple[Box, str]], tiles: Mapping[str, Box] | None = None) -> bytes:
    """PNG: every patch's footprint filled with its split's colour, over the tiles' outlines."""
    if not patches:
        raise ValueError("no patches to map")
    tiles = dict(tiles or {})
    canvas = _Canvas(_union([b for b, _ in patches] + list(tiles.values())), len(SPLIT_COLOURS))
    for name, box in tiles.items():
        canvas.box(box, outline=TILE_COLOUR, width=1)
        x, y = canvas.xy(box[0], box[3])
        canvas.draw.text((x + 4, y - 14), name, fill=(0, 0, 0))
    counts = dict.fromkeys(SPLIT_COLOURS, 0)
    for box, split in patches:
        canvas.box(box, fill=SPLIT_COLOURS[split], outline=(255, 255, 255))
        counts[split] += 1
    canvas.frame(_union([b for b, _ in patches]))
    canvas.legend([(f"{name} ({counts[name]} patches)", colour, True) for name, colour in SPLIT_COLOURS.items()])
    return canvas.png()
