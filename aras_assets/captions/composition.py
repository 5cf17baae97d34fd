"""What a mask says about its scene: class percentages, where each class lies, how fragmented
it is, which classes border each other, and whether water is a river (elongated) or a lake."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from aras_assets.errors import BadInputError
from aras_assets.landcover import CLASS_NAMES, NUM_CLASSES, WATER_INDEX

REGIONS = (("north-west", "north", "north-east"), ("west", "centre", "east"), ("south-west", "south", "south-east"))
SHARE_COLUMNS = [f"pct_{name}" for name in CLASS_NAMES]


class CompositionError(BadInputError, ValueError):
    """A mask that cannot be described (empty, wrong shape, unknown class)."""


@dataclass(frozen=True)
class ClassLayout:
    name: str
    percent: float
    region: str  # the ninth of the scene holding most of the class, or "throughout"
    components: int  # connected patches of at least `min_component_px`
    largest_share: float  # share of the class's pixels in its largest patch
    form: str = ""  # water only: "river" (elongated or crossing the scene) or "lake"

    @property
    def pattern(self) -> str:
        if self.components <= 1 or self.largest_share >= 0.85:
            return "continuous"
        return "a few patches" if self.components <= 4 else "scattered"


@dataclass(frozen=True)
class Composition:
    percents: tuple[float, ...]  # per class, sums to 100
    layouts: tuple[ClassLayout, ...]  # classes present, largest first
    borders: tuple[tuple[str, str, float], ...] = field(default=())  # class pairs and their share of all class edges

    @property
    def dominant(self) -> ClassLayout:
        return self.layouts[0]

    def layout_of(self, name: str) -> ClassLayout | None:
        return next((c for c in self.layouts if c.name == name), None)

    def to_json(self) -> str:
        return json.dumps({"layouts": [asdict(c) for c in self.layouts], "borders": [list(b) for b in self.borders]})

    @classmethod
    def from_row(cls, percents: tuple[float, ...], layout_json: str) -> Composition:
        data = json.loads(layout_json)
        return cls(tuple(percents), tuple(ClassLayout(**c) for c in data["layouts"]),
                   tuple((a, b, s) for a, b, s in data["borders"]))


def _region(mask: np.ndarray) -> str:
    """The 3x3 cell holding most of the class; 'throughout' when no cell holds a third of it."""
    h, w = mask.shape
    rows, cols = np.array_split(np.arange(h), 3), np.array_split(np.arange(w), 3)
    counts = np.array([[mask[r[0]:r[-1] + 1, c[0]:c[-1] + 1].sum() for c in cols] for r in rows], dtype=np.float64)
    total = counts.sum()
    i, j = np.unravel_index(int(counts.argmax()), counts.shape)
    if counts[i, j] < total / 3 and (counts > 0).sum() >= 6:
        return "throughout"
    return REGIONS[i][j]


def _water_form(component: np.ndarray) -> str:
    """River when the largest water body is long and thin or runs from edge to opposite edge."""
    ys, xs = np.nonzero(component)
    h, w = component.shape
    crosses = (ys.min() == 0 and ys.max() == h - 1) or (xs.min() == 0 and xs.max() == w - 1)
    if len(ys) < 3:
        return "lake"
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    eig = np.sort(np.linalg.eigvalsh(cov))
    elongation = float(np.sqrt(eig[1] / max(eig[0], 1e-9)))
    return "river" if elongation > 3.0 or (crosses and elongation > 1.8) else "lake"


def compute_composition(mask: np.ndarray, min_component_px: int = 64) -> Composition:
    if mask.ndim != 2 or mask.size == 0:
        raise CompositionError(f"a mask must be a non-empty 2-D array of classes, got shape {mask.shape}")
    if int(mask.max()) >= NUM_CLASSES:
        raise CompositionError(f"mask holds class {int(mask.max())}; classes are 0..{NUM_CLASSES - 1}")
    counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
    percents = tuple(float(v) for v in 100.0 * counts / mask.size)
    layouts = []
    for index in np.argsort(-counts, kind="stable"):
        if counts[index] == 0:
            break
        present = mask == index
        labels, _ = ndimage.label(present)
        sizes = np.bincount(labels.ravel())[1:]
        big = int((sizes >= min_component_px).sum()) or 1
        largest = int(sizes.argmax()) + 1
        form = _water_form(labels == largest) if index == WATER_INDEX else ""
        layouts.append(ClassLayout(CLASS_NAMES[index], percents[index], _region(present), big,
                                   float(sizes.max() / counts[index]), form))
    return Composition(percents, tuple(layouts), _borders(mask))


def _borders(mask: np.ndarray, top: int = 3) -> tuple[tuple[str, str, float], ...]:
    """Class pairs that touch (4-neighbourhood), by their share of all edges between classes."""
    a = np.concatenate([mask[:, :-1].ravel(), mask[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([mask[:, 1:].ravel(), mask[1:, :].ravel()]).astype(np.int64)
    diff = a != b
    if not diff.any():
        return ()
    lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
    pairs = np.bincount(lo * NUM_CLASSES + hi, minlength=NUM_CLASSES * NUM_CLASSES)
    total = pairs.sum()
    order = np.argsort(-pairs, kind="stable")[:top]
    return tuple((CLASS_NAMES[k // NUM_CLASSES], CLASS_NAMES[k % NUM_CLASSES], round(float(pairs[k] / total), 4))
                 for k in order if pairs[k] > 0)
