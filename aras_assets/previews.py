"""Small preview pictures for asset metadata and MLflow: image/mask pairs side by side."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def pair_grid(pairs: Sequence[tuple[Path, Path]], thumb: int = 96, columns: int = 4) -> bytes:
    """PNG of image|mask pairs, `columns` pairs per row, each picture `thumb` pixels wide."""
    if not pairs:
        raise ValueError("no pictures to preview")
    rows = (len(pairs) + columns - 1) // columns
    gap = 4
    sheet = Image.new("RGB", (columns * (2 * thumb + 2 * gap), rows * (thumb + gap)), (255, 255, 255))
    for k, (image, mask) in enumerate(pairs):
        x, y = (k % columns) * (2 * thumb + 2 * gap), (k // columns) * (thumb + gap)
        for j, path in enumerate((image, mask)):
            with Image.open(path) as pic:
                sheet.paste(pic.convert("RGB").resize((thumb, thumb), Image.NEAREST), (x + j * (thumb + gap // 2), y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def picture_rows(rows: Sequence[Sequence[np.ndarray]], thumb: int = 96) -> bytes:
    """PNG with one row of pictures (uint8 RGB arrays, any size) per sequence."""
    width = max((len(r) for r in rows), default=0)
    if not width:
        raise ValueError("no pictures to preview")
    gap = 4
    sheet = Image.new("RGB", (width * (thumb + gap), len(rows) * (thumb + gap)), (255, 255, 255))
    for y, row in enumerate(rows):
        for x, picture in enumerate(row):
            sheet.paste(Image.fromarray(picture).resize((thumb, thumb), Image.NEAREST), (x * (thumb + gap), y * (thumb + gap)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows a PNG inline (the Dagster UI renders data URLs in markdown metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def markdown_table(rows: list[dict]) -> str:
    """A markdown table from dict rows (every key of any row is a column, blank where missing)."""
    if not rows:
        return "_empty_"
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
