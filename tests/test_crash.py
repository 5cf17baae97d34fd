"""Killed runs leave nothing half-written: patch extraction is SIGKILLed at seeded random points
in a subprocess, and after each kill the partition is absent or a complete earlier version; the
next run removes the leftovers and writes exactly what a clean run writes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from aras_assets import layout
from aras_assets.captions.captioning import caption_partition
from aras_assets.landcover import label_lut
from aras_assets.sources.patches import PatchOptions, materialize_tile
from resources.storage import StorageError, partition_lock, resumable_folder, staged_directory
from tests.caption_fixtures import caption_images, slow_job
from tests.generation_fixtures import generate_shard
from tests.test_bad_inputs import source_of, write_region

TILE = "N38E028"  # 1024 x 512 px: two read strips, 8 patches
KILLS = 5
PROJECT = Path(__file__).resolve().parents[1]
WORKER = """
import sys
from pathlib import Path
from aras_assets.landcover import label_lut
from aras_assets.sources.patches import PatchOptions, TileSource, materialize_tile
s2, wc, final = sys.argv[1:4]
print("ready", flush=True)
materialize_tile(TileSource(sys.argv[4], s2, sys.argv[5], wc), PatchOptions(label_lut(), workers=2), Path(final), sys.argv[6])
print("done", flush=True)
"""


def run_tile(tiles: Path, root: Path) -> Path:
    final = root / layout.patches_dir(TILE)
    materialize_tile(source_of(tiles, TILE), PatchOptions(label_lut(), workers=2), final,
                     layout.patches_dir(TILE).as_posix())
    return final


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_as(folder: Path, clean: Path) -> None:
    got, want = files_of(folder), files_of(clean)
    assert sorted(got) == sorted(want)
    for name, data in want.items():
        if name.endswith(".parquet"):
            assert_frame_equal(pl.read_parquet(folder / name), pl.read_parquet(clean / name))
        else:
            assert got[name] == data, name
    manifest = pl.read_parquet(folder / layout.MANIFEST)
    assert manifest["patch_id"].is_unique().all()


def kill_at(tiles: Path, root: Path, delay: float) -> bool:
    """Start a run, SIGKILL its process group `delay` s after it is ready; True when it died
    before finishing."""
    final = root / layout.patches_dir(TILE)
    source = source_of(tiles, TILE)  # the worker imports only what a run needs: it starts faster
    args = [source.s2_uri, source.wc_uri, str(final), TILE, source.wc_tile, layout.patches_dir(TILE).as_posix()]
    proc = subprocess.Popen([sys.executable, "-c", WORKER, *args], cwd=PROJECT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return not finished and proc.returncode == -signal.SIGKILL


def kill_worker_repeatedly(worker: str, arg: Path, duration: float, seed: int, earliest: float,
                           table: Path, clean: pl.DataFrame) -> tuple[int, int]:
    """Start `worker` on `arg` and SIGKILL it at a random moment until KILLS runs died before
    they finished; after each, the table is absent or whole (equal to the clean run's)."""
    rng = np.random.default_rng(seed)
    kills, attempts = 0, 0
    while kills < KILLS and attempts < 4 * KILLS:
        attempts += 1
        proc = subprocess.Popen([sys.executable, "-c", worker, str(arg)], cwd=PROJECT, stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(earliest, 1.2 * duration)))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills += proc.returncode == -signal.SIGKILL
        if table.exists():  # never a half-written table
            assert_frame_equal(pl.read_parquet(table), clean)
    assert kills >= KILLS, f"only {kills} of {attempts} runs were killed before they finished"
    return kills, attempts


def test_patch_extraction_survives_kills(tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    write_region(tiles, (TILE,))
    started = time.perf_counter()
    clean = run_tile(tiles, tmp_path / "clean")
    duration = time.perf_counter() - started
    root = tmp_path / "data"
    final = root / layout.patches_dir(TILE)
    rng = np.random.default_rng(7)
    kills, attempts = 0, 0
    while kills < KILLS and attempts < 4 * KILLS:
        attempts += 1
        if kills == KILLS // 2 and not final.exists():  # the later kills replace a finished version
            run_tile(tiles, root)
        kills += kill_at(tiles, root, float(rng.uniform(0.0, 1.2 * duration)))
        if final.exists():  # never half of a folder: absent, or a complete version
            assert_same_as(final, clean)
    assert kills >= KILLS, f"only {kills} of {attempts} runs were killed before they finished"
    run_tile(tiles, root)
    assert_same_as(final, clean)
    assert [p.name for p in final.parent.iterdir()] == [TILE]  # no leftovers
    print(f"{kills} kills in {attempts} runs; a clean run takes {duration:.2f} s")


def test_second_writer_of_a_partition_fails_clearly(tmp_path: Path) -> None:
    final = tmp_path / "patches" / TILE
    with staged_directory(final) as stage:
        (stage / "a").write_text("1")
        with pytest.raises(StorageError, match=f"another run is writing {final}"), partition_lock(final):
            pass
    assert (final / "a").read_text() == "1"


def test_leftovers_of_dead_runs_are_removed(tmp_path: Path) -> None:
    final = tmp_path / "patches" / TILE
    (tmp_path / "patches" / f".{TILE}.abc.staging" / "images").mkdir(parents=True)
    (tmp_path / "patches" / f".{TILE}.def.old").mkdir()
    (tmp_path / "patches" / f".{TILE}.0123.tmp").write_bytes(b"half")
    other = tmp_path / "patches" / ".N38E029.abc.staging"  # another partition's: not ours to remove
    other.mkdir()
    with staged_directory(final) as stage:
        (stage / "a").write_text("1")
    assert sorted(p.name for p in final.parent.iterdir()) == sorted([TILE, other.name])


def test_resumable_partitions_lock_and_drop_dead_temporary_files(tmp_path: Path) -> None:
    folder = tmp_path / "synthetic" / "uncond" / "0000"
    (folder / "parts").mkdir(parents=True)
    (folder / "parts" / "batch-00000.parquet").write_bytes(b"kept")
    (folder / "parts" / ".batch-00016.parquet.0a1b.tmp").write_bytes(b"half")
    (folder / "images").mkdir()
    (folder / "images" / ".uncond_0000_00003.png.0a1b.tmp").write_bytes(b"half")
    with resumable_folder(folder):
        with pytest.raises(StorageError, match="another run is writing"), resumable_folder(folder):
            pass
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["parts/batch-00000.parquet"]


CAPTION_WORKER = """
import sys, time
from pathlib import Path
from tests.caption_fixtures import caption_images, slow_job
from tests.generation_fixtures import generate_shard
from aras_assets.captions.captioning import caption_partition
print("ready", flush=True)
caption_partition(caption_images(), "real", slow_job(), Path(sys.argv[1]), batch_size=4)
print("done", flush=True)
"""


def test_captioning_survives_kills(tmp_path: Path) -> None:
    started = time.perf_counter()
    clean, _ = caption_partition(caption_images(), "real", slow_job(), tmp_path / "clean", batch_size=4)
    duration = time.perf_counter() - started
    folder = tmp_path / "data" / "captions" / "real" / "t"
    kills, attempts = kill_worker_repeatedly(CAPTION_WORKER, folder, duration, 11, 0.0, folder / layout.CAPTIONS, clean)
    captions, _ = caption_partition(caption_images(), "real", slow_job(), folder, batch_size=4)
    assert_frame_equal(captions, clean)
    assert captions["caption_id"].is_unique().all()
    assert not [p for p in folder.rglob(".*.tmp")]
    print(f"captions: {kills} kills in {attempts} runs; a clean run takes {duration:.2f} s")


GENERATION_WORKER = """
import sys
from pathlib import Path
from tests.generation_fixtures import generate_shard
print("ready", flush=True)
generate_shard(Path(sys.argv[1]))
print("done", flush=True)
"""


def test_unconditional_generation_survives_kills(tmp_path: Path) -> None:
    """Kills inside and between batches: the manifest is absent or complete, and the re-run
    writes the images and manifest a clean run writes, byte for byte, with no temp files left."""
    started = time.perf_counter()
    clean, _ = generate_shard(tmp_path / "clean")
    duration = time.perf_counter() - started
    root = tmp_path / "data"
    folder = root / "synthetic" / "uncond" / "0000"
    # Not before 0.2 s: the worker builds its generator first.
    kills, attempts = kill_worker_repeatedly(GENERATION_WORKER, root, duration, 13, 0.2, folder / layout.MANIFEST, clean)
    manifest, _ = generate_shard(root)
    assert_frame_equal(manifest, clean)
    assert manifest["image_id"].is_unique().all()
    assert files_of(folder / "images") == files_of(tmp_path / "clean" / "synthetic" / "uncond" / "0000" / "images")
    for path, digest in manifest.select("image_path", "content_sha256").iter_rows():  # the manifest agrees with the disk
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == digest
    assert not [p for p in folder.rglob("*.tmp")] and not [p for p in folder.rglob(".*lock*")]
    print(f"generation: {kills} kills in {attempts} runs; a clean run takes {duration:.2f} s")
