"""The ARAS400k release layout: split folders of image and RGB mask PNGs named
`{tile}_{row:03d}_{col:03d}.png`, a `synth/` folder of synthetic images and their masks, a zip
per folder, class-percentage and caption CSVs, and an MD5 table. Every name of the exchange
format has its home here; zips are written deterministically (fixed timestamps, sorted names)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

from aras_assets.errors import BadInputError
from aras_assets.landcover import CLASS_NAMES

SPLITS = ("train", "val", "test")
SYNTH = "synth"
FOLDERS = (*SPLITS, SYNTH)
IMAGES, MASKS = "images", "masks"
CLASS_CSV = "class_percentages.csv"
CAPTION_CSV = "captions.csv"
SYNTH_CSV = "synthetic.csv"  # per synthetic image: origin, conditioning patch (our addition to the layout)
MD5_TABLE = "MD5.md"  # the release README's table: | file | MD5 |
MD5_SUMS = "md5sums.txt"  # the same for `md5sum -c`
CARD = "README.md"
CROISSANT = "croissant.json"
STAC_DIR = "stac"
STAC_COLLECTION = "collection.json"
STAC_PARQUET = "items.parquet"
PATCHES_CSV = "patches.csv"  # one row per real patch with its lineage (top level, read by Croissant)
SYNTHETIC_CSV = "synthetic_images.csv"
CAPTIONS_CSV = "captions.csv"
PNG = ".png"

# The release names its classes with capitals (the captioners' class_info uses the same).
CLASS_LABELS = tuple(name.capitalize() if name != "built-up" else "Built-up" for name in CLASS_NAMES)
# Caption CSVs: the release captioners' columns first (image, method, model, caption), then the
# caption record's own columns, so an import gets every caption back exactly.
CAPTION_FIELDS = ("image_name", "method", "model", "caption")
CAPTION_RENAMES = {"mode": "method", "text": "caption"}  # caption record column -> CSV column

# Zip entries carry this time, so exporting twice gives the same bytes.
ZIP_DATE = (2025, 1, 1, 0, 0, 0)


class ReleaseError(BadInputError, ValueError):
    """A release folder or export target that cannot be used as it is."""


def zip_name(folder: str) -> str:
    return f"{folder}.zip"


def write_zip(out: Path, entries: Iterable[tuple[str, Path | bytes]]) -> None:
    """A zip of (name, file or bytes) in sorted name order, every entry stamped ZIP_DATE with
    fixed permissions. PNGs are already compressed: they are stored, the CSVs deflated."""
    items = sorted(entries, key=lambda e: e[0])
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in items:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            info.compress_type = zipfile.ZIP_STORED if name.endswith(PNG) else zipfile.ZIP_DEFLATED
            zf.writestr(info, data.read_bytes() if isinstance(data, Path) else data)


class ReleaseFolder:
    """A release folder as it was published (zips) or unzipped: lists and reads the files of each
    of train/val/test/synth by their path inside the folder, e.g. `train/images/X.png`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ReleaseError(f"import folder {self.root} does not exist or is not a folder")
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._files: dict[str, tuple[str, str]] = {}  # inner path -> (zip or "", member or path)
        for folder in FOLDERS:
            zpath = self.root / zip_name(folder)
            if (self.root / folder).is_dir():
                for path in sorted((self.root / folder).rglob("*")):
                    if path.is_file():
                        self._files[path.relative_to(self.root).as_posix()] = ("", str(path))
            elif zpath.is_file():
                try:
                    zf = zipfile.ZipFile(zpath)
                except (zipfile.BadZipFile, OSError) as exc:
                    raise ReleaseError(f"{zpath} is not a readable zip: {exc}") from exc
                self._zips[folder] = zf
                for name in zf.namelist():
                    if not name.endswith("/"):
                        # a zip holds `<folder>/...`; one that holds `images/...` directly gets the prefix
                        inner = name if name.startswith(f"{folder}/") else f"{folder}/{name}"
                        self._files[inner] = (folder, name)
        if not any(f.split("/", 1)[0] in SPLITS for f in self._files):
            raise ReleaseError(f"{self.root} holds no release split: expected train/, val/, test/ folders or "
                               f"{', '.join(zip_name(s) for s in SPLITS)}")

    def close(self) -> None:
        for zf in self._zips.values():
            zf.close()

    def __enter__(self) -> ReleaseFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        return sorted(self._files)

    def where(self, inner: str) -> str:
        """Where a file lies, for messages."""
        folder, member = self._files[inner]
        return f"{self.root / zip_name(folder)}:{member}" if folder else member

    def read(self, inner: str) -> bytes:
        folder, member = self._files[inner]
        if folder:
            return self._zips[folder].read(member)
        return Path(member).read_bytes()

    def has(self, inner: str) -> bool:
        return inner in self._files
