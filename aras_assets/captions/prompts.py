"""The release's Text, Vision and Hybrid prompts (docs/architecture.md section 6), and templates in their
place when configured. `{class_info}` is the only placeholder: "Tree (45.12%), Grass (30.00%)",
classes above 0% in class order, two decimals."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import dataclass

from aras_assets.errors import BadInputError
from aras_assets.landcover import CLASS_NAMES

PLACEHOLDERS = frozenset({"class_info"})

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

    @property
    def uses_image(self) -> bool:
        return self.mode in ("vision", "hybrid")

    @property
    def hash(self) -> str:
        """Short content hash recorded with every caption, so a prompt change is visible."""
        return hashlib.sha256(f"{self.mode}\0{self.system or ''}\0{self.user}".encode()).hexdigest()[:12]

    def render(self, percents: Sequence[float]) -> str:
        return self.user.format(class_info=class_info(percents)) if "{class_info}" in self.user else self.user


RELEASE_PROMPTS = {
    "text": PromptTemplate("text", TEXT_USER, TEXT_SYSTEM),
    "vision": PromptTemplate("vision", VISION_USER),
    "hybrid": PromptTemplate("hybrid", HYBRID_USER),
}


def display_name(name: str) -> str:
    return name[0].upper() + name[1:]


def class_info(percents: Sequence[float]) -> str:
    return ", ".join(f"{display_name(n)} ({p:.2f}%)" for n, p in zip(CLASS_NAMES, percents, strict=True) if p > 0)


def check_template(text: str, where: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise PromptTemplateError(f"{where}: malformed template ({exc})") from exc
    unknown = sorted(fields - PLACEHOLDERS)
    if unknown:
        raise PromptTemplateError(f"{where}: unknown placeholder(s) {unknown}; the only one is {{class_info}}")


def prompt_templates(overrides: dict[str, str] | None = None) -> dict[str, PromptTemplate]:
    """The release's prompts with any of `text`, `text_system`, `vision`, `hybrid` replaced."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {"text", "text_system", "vision", "hybrid"})
    if unknown:
        raise PromptTemplateError(f"caption_prompts names {unknown}; use text, text_system, vision or hybrid")
    out = {}
    for mode, base in RELEASE_PROMPTS.items():
        user = overrides.get(mode, base.user)
        system = overrides.get("text_system", base.system) if mode == "text" else None
        check_template(user, f"caption prompt {mode!r}")
        out[mode] = PromptTemplate(mode, user, system)
    return out
