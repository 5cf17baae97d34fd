"""Small preview pictures for asset metadata and MLflow: image/mask pairs side by side, each
with its id, and the land-cover legend where masks are shown."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABEL_ROW = 14  # pixels under a picture for its id
CHAR_PX = 6  # width of a character of PIL's default font


def _encode(sheet: Image.Image) -> bytes:
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _legend(sheet: Image.Image) -> Image.Image:
    """The sheet with the land-cover classes' colours and names below it."""
    from aras_assets.landcover import CLASS_NAMES, PALETTE

    swatch, per_row = 12, max(1, sheet.width // 110)
    rows = (len(CLASS_NAMES) + per_row - 1) // per_row
    out = Image.new("RGB", (max(sheet.width, 110), sheet.height + rows * (swatch + 6) + 6), (255, 255, 255))
    out.paste(sheet, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (name, colour) in enumerate(zip(CLASS_NAMES, PALETTE.tolist(), strict=True)):
        x, y = (k % per_row) * 110 + 4, sheet.height + 6 + (k // per_row) * (swatch + 6)
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + swatch + 4, y), name, fill=(0, 0, 0))
    return out


def pair_grid(pairs: Sequence[tuple[Path, Path]], thumb: int = 96, columns: int = 4,
              labels: Sequence[str] | None = None, legend: bool = True) -> bytes:
    """PNG of image|mask pairs, `columns` pairs per row, each picture `thumb` pixels wide, each
    pair's id (`labels`) under it and the class-colour legend below (`legend`)."""
    if not pairs:
        raise ValueError("no pictures to preview")
    rows = (len(pairs) + columns - 1) // columns
    gap = 4
    label_h = LABEL_ROW if labels else 0
    cell_w = max(2 * thumb + 2 * gap, max((CHAR_PX * len(s) + gap for s in labels), default=0) if labels else 0)
    sheet = Image.new("RGB", (columns * cell_w, rows * (thumb + gap + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (image, mask) in enumerate(pairs):
        x, y = (k % columns) * cell_w, (k // columns) * (thumb + gap + label_h)
        for j, path in enumerate((image, mask)):
            with Image.open(path) as pic:
                sheet.paste(pic.convert("RGB").resize((thumb, thumb), Image.NEAREST), (x + j * (thumb + gap // 2), y))
        if labels:
            draw.text((x, y + thumb + 1), labels[k], fill=(0, 0, 0))
    return _encode(_legend(sheet) if legend else sheet)


def picture_rows(rows: Sequence[Sequence[np.ndarray]], thumb: int = 96, labels: Sequence[str] | None = None,
                 legend: bool = False) -> bytes:
    """PNG with one row of pictures (uint8 RGB arrays, any size) per sequence; `labels` names
    each column under the last row, `legend` adds the class colours (for rows of masks)."""
    width = max((len(r) for r in rows), default=0)
    if not width:
        raise ValueError("no pictures to preview")
    gap = 4
    cell_w = max(thumb + gap, max((CHAR_PX * len(s) + gap for s in labels), default=0) if labels else 0)
    label_h = LABEL_ROW if labels else 0
    sheet = Image.new("RGB", (width * cell_w, len(rows) * (thumb + gap) + label_h), (255, 255, 255))
    for y, row in enumerate(rows):
        for x, picture in enumerate(row):
            sheet.paste(Image.fromarray(picture).resize((thumb, thumb), Image.NEAREST), (x * cell_w, y * (thumb + gap)))
    if labels:
        draw = ImageDraw.Draw(sheet)
        for x, text in enumerate(labels):
            draw.text((x * cell_w, len(rows) * (thumb + gap)), text, fill=(0, 0, 0))
    return _encode(_legend(sheet) if legend else sheet)


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
