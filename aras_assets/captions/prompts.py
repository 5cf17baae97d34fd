"""The release's Text, Vision and Hybrid prompts (docs/architecture.md section 6), and templates in their
place when configured. `{class_info}` is the only placeholder, built as the release built it:
`f"{name} ({round(p, 2)}%)"` for classes above 0 in class order, joined by ", " ("Tree (8.2%),
Water (89.46%)"; never padded). With no class present, Text says "unidentified land cover" and
Hybrid asks the Vision prompt, as the release did."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import dataclass

from aras_assets.errors import BadInputError
from aras_assets.landcover import CLASS_NAMES

PLACEHOLDERS = frozenset({"class_info"})
UNIDENTIFIED = "unidentified land cover"  # the release's Text fallback for an empty composition
# "release": Python's round to 2 places (8.2%, 100.0%); "two_decimals": always 2 places (8.20%).
PERCENT_FORMATS = ("release", "two_decimals")

TEXT_SYSTEM = "You are a remote sensing expert."
TEXT_USER = "An image shows: {class_info}. Describe the scene in 1 or 2 concise sentences focusing on dominant land use."
VISION_USER = ("Describe this remote sensing image in 1 or 2 concise sentences, focusing on land use and key "
               "geographical features.")
HYBRID_USER = ("This remote sensing image contains the following land cover distribution: {class_info}. Based on this "
               "information, describe the scene in 1 or 2 concise sentences focusing on spatial layout and dominant "
               "land use types.")


class PromptTemplateError(BadInputError, ValueError):
    """A template with a placeholder we cannot fill."""


@dataclass(frozen=True)
class PromptTemplate:
    mode: str
    user: str
    system: str | None = None
    empty_user: str | None = None  # the whole user prompt when no class is present (Hybrid: the Vision prompt)
    percent_format: str = "release"

    @property
    def uses_image(self) -> bool:
        return self.mode in ("vision", "hybrid")

    @property
    def hash(self) -> str:
        """Short content hash recorded with every caption, so a prompt change is visible."""
        key = f"{self.mode}\0{self.system or ''}\0{self.user}\0{self.empty_user or ''}\0{self.percent_format}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def render(self, percents: Sequence[float]) -> str:
        if "{class_info}" not in self.user:
            return self.user
        info = class_info(percents, self.percent_format)
        if not info:
            if self.empty_user is not None:
                return self.empty_user
            info = UNIDENTIFIED
        return self.user.format(class_info=info)


RELEASE_PROMPTS = {
    "text": PromptTemplate("text", TEXT_USER, TEXT_SYSTEM),
    "vision": PromptTemplate("vision", VISION_USER),
    "hybrid": PromptTemplate("hybrid", HYBRID_USER, empty_user=VISION_USER),
}


def display_name(name: str) -> str:
    return name[0].upper() + name[1:]


def percent_text(p: float, percent_format: str = "release") -> str:
    if percent_format == "two_decimals":
        return f"{p:.2f}"
    return f"{round(float(p), 2)}"  # the release: str of Python's round, so 8.2, 89.46, 100.0


def class_info(percents: Sequence[float], percent_format: str = "release") -> str:
    """Classes above 0 in class order; empty when none is."""
    if percent_format not in PERCENT_FORMATS:
        raise PromptTemplateError(f"percent format {percent_format!r}: use one of {', '.join(PERCENT_FORMATS)}")
    return ", ".join(f"{display_name(n)} ({percent_text(p, percent_format)}%)"
                     for n, p in zip(CLASS_NAMES, percents, strict=True) if p > 0)


def check_template(text: str, where: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise PromptTemplateError(f"{where}: malformed template ({exc})") from exc
    unknown = sorted(fields - PLACEHOLDERS)
    if unknown:
        raise PromptTemplateError(f"{where}: unknown placeholder(s) {unknown}; the only one is {{class_info}}")


def prompt_templates(overrides: dict[str, str] | None = None, percent_format: str = "release") -> dict[str, PromptTemplate]:
    """The release's prompts with any of `text`, `text_system`, `vision`, `hybrid` replaced; Hybrid
    falls back to the (possibly replaced) Vision prompt when no class is present."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {"text", "text_system", "vision", "hybrid"})
    if unknown:
        raise PromptTemplateError(f"caption_prompts names {unknown}; use text, text_system, vision or hybrid")
    out = {}
    for mode, base in RELEASE_PROMPTS.items():
        user = overrides.get(mode, base.user)
        system = overrides.get("text_system", base.system) if mode == "text" else None
        empty = overrides.get("vision", VISION_USER) if mode == "hybrid" else None
        check_template(user, f"caption prompt {mode!r}")
        out[mode] = PromptTemplate(mode, user, system, empty, percent_format)
    return out
