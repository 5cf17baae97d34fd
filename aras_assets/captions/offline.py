"""The offline captioner: fluent, varied sentences built only from facts of the mask
(percentages, where classes lie, fragmentation, borders, river or lake), so every caption is
true to its mask. No weights; deterministic from a seed; n distinct captions per image.

Text mode speaks of the composition, Vision mode of what the layout looks like (no numbers),
Hybrid of both, mirroring what the release's prompts give each model."""

from __future__ import annotations

import random
import re

from aras_assets.captions.composition import ClassLayout, Composition

NOUNS = {
    "tree": ("forest", "tree cover", "woodland", "dense trees", "wooded land"),
    "shrub": ("shrubland", "scrub", "low shrubs", "bushland"),
    "grass": ("grassland", "open grass", "meadows", "pasture"),
    "crop": ("cropland", "farmland", "cultivated fields", "agricultural fields", "crop fields"),
    "built-up": ("built-up land", "buildings", "a settlement", "urban fabric", "houses and roads"),
    "barren": ("barren ground", "bare land", "bare soil and rock", "sparse, barren terrain"),
    "water": ("open water", "water", "a body of water"),
}
WATER_FORMS = {"river": ("a river", "a winding river", "a river channel"), "lake": ("a lake", "a still lake", "a body of water")}
OPENINGS = ("An aerial view of", "A satellite image of", "This scene shows", "The image shows", "A remote sensing view of",
            "Seen from above, the area holds", "The tile captures", "Overhead, we see")
PATTERN_WORDS = {"continuous": ("in one continuous stretch", "as a single block", "in one large area"),
                 "a few patches": ("in a few patches", "in several separate patches", "in a handful of patches"),
                 "scattered": ("in scattered fragments", "scattered across the scene", "in many small pieces")}
REGION_WORDS = ("in the {r}", "toward the {r}", "along the {r} side", "across the {r}")
MIN_MENTION = 1.0  # percent: smaller classes are not named (they would be hard to see or check)


def noun(layout: ClassLayout, rng: random.Random) -> str:
    if layout.name == "water" and layout.form:
        return rng.choice(WATER_FORMS[layout.form])
    return rng.choice(NOUNS[layout.name])


def amount(percent: float, rng: random.Random) -> str:
    """Words for a share that are true of it."""
    if percent >= 90:
        options = ("almost all of", "nearly the whole of", "virtually all of")
    elif percent >= 70:
        options = ("most of", "the bulk of", "a large majority of")
    elif percent >= 50:
        options = ("more than half of", "over half of", "the greater part of")
    elif percent >= 40:
        options = ("nearly half of", "a large share of", "close to half of")
    elif 28 <= percent <= 38:
        options = ("about a third of", "a sizeable part of", "roughly a third of")
    elif percent >= 25:
        options = ("a sizeable part of", "a good part of", "a substantial part of")
    elif percent >= 10:
        options = ("a smaller part of", "some of", "a modest part of")
    else:
        options = ("a little of", "a small corner of", "a sliver of")
    return rng.choice(options)


def where(layout: ClassLayout, rng: random.Random) -> str:
    if layout.region == "throughout":
        return rng.choice(("throughout the scene", "all over the image", "spread across the area"))
    if layout.region == "centre":
        return rng.choice(("in the centre", "at the centre of the scene", "in the middle"))
    return rng.choice(REGION_WORDS).format(r=layout.region)


def numeric(layout: ClassLayout, rng: random.Random) -> str:
    pct = f"{layout.percent:.1f}%" if rng.random() < 0.5 else f"{layout.percent:.2f}%"
    return rng.choice(("{n} ({p})", "{n} covering {p}", "{n} at {p}", "{n}, about {p},")).format(n=noun(layout, rng), p=pct)


def caption(composition: Composition, mode: str, rng: random.Random) -> str:
    named = [c for c in composition.layouts if c.percent >= MIN_MENTION]
    if not named:
        named = [composition.dominant]
    main, others = named[0], named[1:]
    picks = rng.sample(others, k=min(len(others), rng.choice((1, 2, 2, 3)))) if others else []
    picks.sort(key=lambda c: -c.percent)
    opening = rng.choice(OPENINGS)
    if mode == "text":
        first = f"{opening} {numeric(main, rng)}" if rng.random() < 0.6 else \
            f"{opening} {noun(main, rng)} over {amount(main.percent, rng)} the scene"
        rest = [numeric(c, rng) for c in picks]
        tail = rng.choice((" alongside ", " together with ", " and ", ", with ")) + _join(rest, rng) if rest else ""
        return _sentence(first + tail)
    first = f"{opening} {noun(main, rng)} covering {amount(main.percent, rng)} the area"
    if mode == "vision" or rng.random() < 0.4:
        first += f" {rng.choice(PATTERN_WORDS[main.pattern])}"
    if mode == "hybrid":
        first = f"{opening} {numeric(main, rng)} {where(main, rng)}"
    parts = [_sentence(first)]
    if picks:
        described = [f"{numeric(c, rng) if mode == 'hybrid' else noun(c, rng)} {where(c, rng)}" for c in picks]
        lead = rng.choice(("There is also", "It also contains", "Elsewhere lies", "Beside it lies", "The rest shows"))
        parts.append(_sentence(f"{lead} {_join(described, rng)}"))
    if composition.borders and rng.random() < 0.5:
        a, b, _ = composition.borders[0]
        la, lb = composition.layout_of(a), composition.layout_of(b)
        if la and lb and la.percent >= MIN_MENTION and lb.percent >= MIN_MENTION:
            parts.append(_sentence(rng.choice(("{a} borders {b}", "{a} meets {b} along a shared edge",
                                               "{a} gives way to {b}")).format(a=noun(la, rng), b=noun(lb, rng))))
    return " ".join(parts[: rng.choice((2, 2, 3))])


def _join(items: list[str], rng: random.Random) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + rng.choice((" and ", ", and ")) + items[-1]


def _sentence(text: str) -> str:
    # A phrase that ends in a comma ("shrubs, about 40.8%,") followed by a joiner that starts with
    # one (", with ...") would read ",,": keep one.
    text = re.sub(r",(\s*,)+", ",", text.strip()).rstrip(",")
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def offline_captions(composition: Composition, mode: str, seed: int, n: int = 5) -> list[str]:
    """n distinct captions (fewer only if the scene allows no more), the same for the same seed."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(20 * n):
        text = caption(composition, mode, rng)
        if text not in out:
            out.append(text)
            if len(out) == n:
                break
    return out
