"""Small preview pictures for asset metadata and MLflow: image/mask pairs side by side."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

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


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows a PNG inline (the Dagster UI renders data URLs in markdown metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def markdown_table(rows: list[dict]) -> str:
    """A markdown table from dict rows (columns from the first row)."""
    if not rows:
        return "_empty_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
