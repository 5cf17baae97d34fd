"""Helpers for tests: tiny hand-made tiles on the real grid, and an HTML page reader."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from aras_assets.grid import s2_filename, wc_filename
from aras_assets.sources.sample_region import wc_offset, write_s2_tile, write_wc_tile


def write_pair(folder: Path, s2_tile: str, codes: np.ndarray, reflectance: np.ndarray | None = None) -> tuple[Path, Path]:
    """An S2 file at the top-left of `s2_tile` and a WorldCover file covering the same ground."""
    if reflectance is None:
        reflectance = np.full((4, *codes.shape), 1000, dtype=np.uint16)
    s2_path = folder / s2_filename(s2_tile)
    write_s2_tile(s2_path, s2_tile, reflectance)
    wc, row, col = wc_offset(s2_tile)
    wc_path = folder / wc_filename(wc)
    write_wc_tile(wc_path, wc, [(row, col, codes)])
    return s2_path, wc_path


class HtmlPage(HTMLParser):
    """What a report page holds: its tables, its images' sources and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables, self.images, self.cells = 0, [], []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tables += tag == "table"
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data: str) -> None:
        self.cells.append(data)
