"""Dataset storage: one root folder, atomic writes, Parquet manifests through polars."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from aras_assets.errors import BadInputError


def default_data_root() -> str:
    """ARAS_DATA_ROOT, else ./data in the working directory (not beside the installed package,
    which two checkouts sharing one environment would silently share)."""
    return os.environ.get("ARAS_DATA_ROOT") or "data"


class StorageError(BadInputError, OSError):
    """The dataset root cannot be used (missing permissions, not a folder)."""


def contained(root: Path, relative: str | Path, what: str = "") -> Path:
    """`relative` (a manifest path, an id made a file name, a setting) resolved under `root`; a path
    that leaves it (`..`, an absolute path, a link pointing out) is a bad input naming `what`,
    so no manifest row can make a stage read or write elsewhere on the machine."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise BadInputError(f"{what + ': ' if what else ''}path {str(relative)!r} leaves {base}; "
                            "paths in manifests and ids must stay under it")
    return target


def read_parquet_checked(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A Parquet file, with a corrupt or truncated one (or one lacking `columns`) a bad input
    naming the file rather than a raw polars error."""
    try:
        return pl.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BadInputError(f"{path} cannot be read as Parquet ({_first_line(exc)}); "
                            "re-materialize the asset that writes it") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


@contextlib.contextmanager
def disk_errors(folder: Path) -> Iterator[None]:
    """Turn a full disk (or quota) while writing under `folder` into one line naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"no space left writing under {folder}; free space and re-run "
                               "(the previous version is intact)") from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so readers see the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with disk_errors(path.parent):
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with disk_errors(path.parent):
            frame.write_parquet(tmp, compression="zstd", statistics=True)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE). False where
    the system or file system cannot; the caller then falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(stage: Path, final: Path) -> None:
    """Put `stage` at `final`: readers, and a kill at any point, see the old folder or the new."""
    if not final.exists():
        os.replace(stage, final)
    elif exchange_paths(stage, final):
        shutil.rmtree(stage, ignore_errors=True)  # now the old folder
    else:  # no atomic exchange here: two renames, the old one kept until the new is in place
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
        os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(folder: Path, name: str) -> list[Path]:
    """Staging folders, old folders and temporary files of `name` in `folder` that dead runs left
    (call under the partition's lock, so no live run owns them)."""
    gone: list[Path] = []
    for pattern in (f".{name}.*.staging", f".{name}.*.old", f".{name}.*.tmp"):
        for path in folder.glob(pattern):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            gone.append(path)
    return gone


@contextlib.contextmanager
def partition_lock(final: Path) -> Iterator[None]:
    """An exclusive lock on one output (a lock file beside it, removed on release); a second run of
    the same partition fails at once with a message instead of interleaving writes. The lock dies
    with its process; a killed run's lock file is taken over by the next run."""
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.with_name(f".{final.name}.lock")
    busy = f"another run is writing {final}; wait for it to finish, then re-run"
    with open(lock, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StorageError(busy) from exc
        owned = False
        try:
            # the file we locked may have been released and removed meanwhile: only the one at the path counts
            if not lock.exists() or os.stat(lock).st_ino != os.fstat(fh.fileno()).st_ino:
                raise StorageError(busy)
            owned = True
            yield
        finally:
            if owned:
                lock.unlink(missing_ok=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def resumable_folder(folder: Path) -> Iterator[Path]:
    """A resumable partition's folder (parts kept across runs), under the partition's lock, with
    the temporary files that killed runs left inside it removed first."""
    with partition_lock(folder):
        for tmp in folder.rglob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)
        yield folder


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Build a folder in a staging place, then swap it in for `final` in one atomic step, holding
    the partition's lock throughout; what killed runs left behind is removed first.

    If the body raises, the staging folder is removed and `final` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_dir():
        raise StorageError(f"output folder {final} exists and is not a folder; move it away and re-run")
    with partition_lock(final):
        remove_leftovers(final.parent, final.name)
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".staging", dir=final.parent))
        try:
            yield stage
            with disk_errors(final.parent):
                _swap_in(stage, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def check_writable(folder: Path) -> None:
    """Fail early, naming the folder, when outputs cannot be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"output folder {folder} is not writable: {exc.strerror or exc}") from exc


class StorageResource(dg.ConfigurableResource):
    """The dataset root (config `root`, else env ARAS_DATA_ROOT, else ./data in the working directory)."""

    root: str = ""

    @property
    def root_path(self) -> Path:
        return Path(self.root or default_data_root()).expanduser().resolve()

    def path(self, *parts: str | Path) -> Path:
        return self.root_path.joinpath(*parts)

    def inside(self, relative: str | Path, what: str = "") -> Path:
        """A path from a manifest row or id, resolved and checked to stay under the root."""
        return contained(self.root_path, relative, what)

    def resolve(self, location: str) -> Path:
        """A path from config: absolute as given, relative ones under the dataset root."""
        p = Path(location).expanduser()
        return p if p.is_absolute() else self.root_path / p

    def writable_dir(self, *parts: str | Path) -> Path:
        folder = self.path(*parts)
        check_writable(folder)
        return folder

    def write_bytes(self, path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data)

    def write_parquet(self, frame: pl.DataFrame, path: Path) -> None:
        write_parquet_atomic(frame, path)

    def scan_parquet(self, pattern: str) -> pl.LazyFrame:
        return pl.scan_parquet(str(self.path(pattern)))
