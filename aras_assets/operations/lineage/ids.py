"""Lineage ids: what kind of record a caption, image or patch id names, and which partition holds it.

Every id names the partition that holds its record, so a lookup never has to search for it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aras_assets.errors import BadInputError
from aras_assets.ids import parse_patch_id, parse_synthetic_id
from aras_assets.layout import CAPTION_MODES, REAL

# <image id>_<method>_<model>_<index>; ids written before the caption plan have no model part.
_CAPTION_RE = re.compile(rf"^(.+?)_({'|'.join(CAPTION_MODES)})(?:_([a-z0-9][a-z0-9.-]*))?_(\d+)$")
_ID_EXAMPLES = ("N36E027_012_034 (patch), uncond_0003_00012 or cond_N36E027_00012 (image), "
                "<image id>_text_qwen3-4b_0 (caption)")


class LineageError(BadInputError, LookupError):
    """An id that is malformed or not on record, or a manifest that is missing or unreadable."""


@dataclass(frozen=True)
class ImageRef:
    """An image (a real patch or a synthetic image) and the partition holding its record."""

    image_id: str
    origin: str  # real | uncond | cond
    partition: str  # s2 tile for real and cond, gen shard for uncond


@dataclass(frozen=True)
class RecordRef:
    """What an id names: a caption (with its mode and index), a synthetic image or a real patch."""

    record_id: str
    kind: str  # caption | image | patch
    image: ImageRef
    mode: str | None = None
    caption_index: int | None = None
    model: str | None = None  # the caption plan pair's model, as in the id


def parse_image_id(value: str) -> ImageRef:
    try:
        pid = parse_patch_id(value)
        return ImageRef(value, REAL, pid.tile)
    except ValueError:
        pass
    try:
        sid = parse_synthetic_id(value)
        return ImageRef(value, sid.origin, sid.shard)
    except ValueError:
        pass
    raise LineageError(f"{value!r} is not a caption, image or patch id (expected e.g. {_ID_EXAMPLES})")


def parse_record_id(value: str) -> RecordRef:
    """What kind of record an id names and where its record lives; LineageError if malformed."""
    value = value.strip()
    if m := _CAPTION_RE.match(value):
        try:
            image = parse_image_id(m.group(1))
        except LineageError:
            raise LineageError(f"{value!r} is not a caption id: {m.group(1)!r} is not an image id "
                               f"(expected e.g. {_ID_EXAMPLES})") from None
        return RecordRef(value, "caption", image, m.group(2), int(m.group(4)), m.group(3))
    image = parse_image_id(value)
    return RecordRef(value, "patch" if image.origin == REAL else "image", image)
