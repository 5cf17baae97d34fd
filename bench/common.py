"""Helpers the benchmarks share: stderr progress, the CPU's name, peak memory. No GIS stack, so
benches that read no rasters run where rasterio is not installed (sample-region crops: region.py)."""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB.

    VmHWM first: on Linux ru_maxrss survives fork+exec, so a child started by a parent that
    once held large arrays would report the parent's peak, not its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
