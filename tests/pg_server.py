"""A throwaway PostgreSQL server on loopback for the Postgres tests (standard library only, so
`.ci/run` can start one before the virtual environment exists).

    python3 tests/pg_server.py start DIR   # prints the server's URL: postgresql://aras@127.0.0.1:PORT
    python3 tests/pg_server.py stop DIR

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user (Debian's
package creates it) or else `nobody`, and DIR is handed to that user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

SUPERUSER = "aras"
INITDB_GLOB = "/usr/lib/postgresql/*/bin/initdb"  # Debian's layout; elsewhere initdb on PATH


def bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl, newest version first; None when PostgreSQL is not installed."""
    found = sorted(glob.glob(INITDB_GLOB), key=lambda p: int(Path(p).parents[1].name) if Path(p).parents[1].name.isdigit()
                   else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", _server_user(), "--", *cmd]


def _server_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


def start(folder: Path) -> str:
    """initdb into folder/pgdata, start on a free loopback port; the URL of its superuser (no password)."""
    bins = bin_dir()
    if bins is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb)")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        user = pwd.getpwnam(_server_user())
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "pgdata", _free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "check": True, "text": True}
    subprocess.run(_as_server_user([str(bins / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
                                    "--no-sync", "-E", "UTF8"]), **quiet)
    # Loopback only, the socket in its own folder, durability off: a test server, thrown away after.
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off -c synchronous_commit=off " \
              "-c full_page_writes=off -c max_connections=200"
    subprocess.run(_as_server_user([str(bins / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                    str(folder / "server.log"), "-w", "-t", "60", "start"]), **quiet)
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}"


def stop(folder: Path) -> None:
    bins = bin_dir()
    if bins is not None and (folder / "pgdata" / "postmaster.pid").exists():
        subprocess.run(_as_server_user([str(bins / "pg_ctl"), "-D", str(folder / "pgdata"), "-m", "immediate", "-w",
                                        "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: pg_server.py start|stop DIR")
    try:
        if sys.argv[1] == "start":
            print(start(Path(sys.argv[2]).resolve()))
        else:
            stop(Path(sys.argv[2]).resolve())
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        sys.exit(f"error: {exc} {detail.strip()}".strip())
