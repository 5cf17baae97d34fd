"""The evaluation report: sections of text, tables and figures, written once as Markdown (figures
as PNG files beside it) and once as a self-contained HTML page (figures embedded). Every
number comes from the files the evaluation assets wrote; the paper's figures sit beside them."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    heads: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def from_markdown(cls, text: str) -> Table:
        """A pipe table as the stage modules print them (header, rule, rows)."""
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip().startswith("|")]
        cells = [tuple(c.strip() for c in ln.strip("|").split("|")) for ln in lines]
        return cls(cells[0], tuple(r for r in cells[2:]))

    def markdown(self) -> str:
        out = ["| " + " | ".join(self.heads) + " |", "| " + " | ".join("---" for _ in self.heads) + " |"]
        return "\n".join([*out, *("| " + " | ".join(r) + " |" for r in self.rows)])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.heads)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class Figure:
    name: str  # file name under the report's figures folder
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (caption, table)
    figures: list[Figure] = field(default_factory=list)


FIGURES = "figures"
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
         "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}"
         "figure{display:inline-block;margin:0.5em;vertical-align:top}figcaption{font-size:0.85em}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower())


def render_markdown(title: str, sections: Sequence[Section], embed: bool = False) -> str:
    """Figures as files beside the report, or as data URLs (`embed`) where no file can follow."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", "", *(t + "\n" for t in s.text)]
        for caption, table in s.tables:
            out += [f"**{caption}**", "", table.markdown(), ""]
        out += [f"![{f.caption}]({_data_url(f.png) if embed else f'{FIGURES}/{_slug(f.name)}'})\n\n*{f.caption}*\n"
                for f in s.figures]
    return "\n".join(out)


def _data_url(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def render_html(title: str, sections: Sequence[Section]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(t)}</p>" for t in s.text]
        for caption, table in s.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>{table.html()}")
        for f in s.figures:
            parts.append(f"<figure><img alt='{html.escape(f.caption)}' src='{_data_url(f.png)}'>"
                         f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def figure_files(sections: Sequence[Section]) -> dict[str, bytes]:
    """The PNGs the Markdown refers to, by their path relative to it."""
    return {f"{FIGURES}/{_slug(f.name)}": f.png for s in sections for f in s.figures}


def number(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def beside(ours: float | None, paper: float | None, digits: int = 2) -> tuple[str, str, str]:
    """Ours, the paper's and the difference, as table cells."""
    diff = None if ours is None or paper is None else ours - paper
    return number(ours, digits), number(paper, digits), "-" if diff is None else f"{diff:+.{digits}f}"
