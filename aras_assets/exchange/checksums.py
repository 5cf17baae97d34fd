"""MD5 tables of a release: the README's Markdown table (| File | MD5 |) and a plain file that
`md5sum -c` reads; verification names every file whose digest differs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from aras_assets.exchange.release import MD5_SUMS, MD5_TABLE, ReleaseError

_SUM_LINE = re.compile(r"^([0-9a-f]{32}) [ *](.+)$")
_TABLE_ROW = re.compile(r"^\|\s*`?([^|`]+?)`?\s*\|\s*`?([0-9a-fA-F]{32})`?\s*\|")


class ChecksumError(ReleaseError):
    """A file whose MD5 is not the one its table records."""


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def md5_table(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: md5_file(folder / name) for name in sorted(names)}


def write_md5_files(folder: Path, digests: dict[str, str]) -> None:
    """MD5.md (the release README's table) and md5sums.txt (`md5sum -c md5sums.txt` in the folder)."""
    rows = "\n".join(f"| {name} | {md5} |" for name, md5 in sorted(digests.items()))
    (folder / MD5_TABLE).write_text(f"| File | MD5 |\n|---|---|\n{rows}\n")
    (folder / MD5_SUMS).write_text("".join(f"{md5}  {name}\n" for name, md5 in sorted(digests.items())))


def read_md5_table(folder: Path) -> dict[str, str]:
    """name -> MD5 from md5sums.txt, or else from the Markdown table; empty when neither exists."""
    sums, table = folder / MD5_SUMS, folder / MD5_TABLE
    if sums.is_file():
        found = {}
        for k, line in enumerate(sums.read_text().splitlines(), 1):
            if not line.strip():
                continue
            m = _SUM_LINE.match(line.strip())
            if not m:
                raise ChecksumError(f"{sums} line {k} is not `<md5>  <file>`: {line!r}")
            found[m.group(2)] = m.group(1)
        return found
    if table.is_file():
        return {m.group(1).strip(): m.group(2).lower() for line in table.read_text().splitlines()
                if (m := _TABLE_ROW.match(line.strip()))}
    return {}


def verify(folder: Path, only_present: bool = True) -> dict[str, str]:
    """Check every file of the folder's MD5 table; raise ChecksumError naming each mismatch (and
    each listed file that is missing, unless `only_present`). Returns the verified digests."""
    expected = read_md5_table(folder)
    problems = []
    verified = {}
    for name, md5 in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            if not only_present:
                problems.append(f"{path} is listed in the MD5 table but missing")
            continue
        got = md5_file(path)
        if got != md5:
            problems.append(f"{path}: MD5 {got} does not match the table's {md5}")
        verified[name] = got
    if problems:
        raise ChecksumError("; ".join(problems) + " (the file is corrupt or was changed: download it again)")
    return verified
