"""Launching `aras run`'s runs against the project's code location, as the Dagster UI does: each
run is submitted through the webserver's GraphQL API (dagster-graphql's client), queued and
started by the daemon in its own process, so it carries the location's origin, is listed
under its job and on the timeline, and can be re-executed from the UI.

The webserver is the one ARAS_DAGSTER_URL names (a running `aras ui`, or a deployment's), or a
`dagster dev` this module starts on a free loopback port against the same DAGSTER_HOME and
stops when the run is over."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from aras_assets.errors import TransientError

URL_ENV = "ARAS_DAGSTER_URL"
STARTUP_TIMEOUT_S = 240.0
POLL_S = 0.5
ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class LauncherError(TransientError, RuntimeError):
    """The webserver did not come up, or refused a run."""


def partition_tags(partition_key: str | None) -> dict[str, str]:
    """The tags a run of one partition carries (a multi-partition key also per dimension)."""
    if partition_key is None:
        return {}
    tags = {"dagster/partition": str(partition_key)}
    if isinstance(partition_key, dg.MultiPartitionKey):
        tags |= {f"dagster/partition/{dim}": key for dim, key in partition_key.keys_by_dimension.items()}
    return tags


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def dagster_dev(home: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A `dagster dev` (webserver + daemon) on the instance in `home`, with `env` (default: this
    process's environment); its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="aras-dagster-dev-", suffix=".log", delete=False)
    env = {**(os.environ if env is None else env), "DAGSTER_HOME": str(home)}
    process = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-m", "definitions", "-h", "127.0.0.1",
                                "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text(errors="replace")[-1500:]
                raise LauncherError(f"dagster dev did not start on {url} (log {log.name}):\n{tail}")
            time.sleep(POLL_S)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        log.close()
        Path(log.name).unlink(missing_ok=True)


@dataclass
class RunLauncher:
    """Submits runs of the location's jobs and waits for each to end."""

    url: str
    instance: dg.DagsterInstance

    def client(self) -> Any:
        from dagster_graphql import DagsterGraphQLClient

        parts = urlsplit(self.url)
        return DagsterGraphQLClient(parts.hostname or "127.0.0.1", port_number=parts.port,
                                    use_https=parts.scheme == "https", path_prefix=parts.path.rstrip("/"))

    def submit(self, job: str, run_config: Mapping, tags: Mapping[str, str]) -> str:
        """The new run's id; retried while the code location is still loading."""
        from dagster_graphql import DagsterGraphQLClientError

        client = self.client()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                return client.submit_job_execution(job, run_config=dict(run_config), tags=dict(tags))
            except DagsterGraphQLClientError as exc:  # the location not loaded yet: no such job
                if time.monotonic() > deadline:
                    raise LauncherError(f"{self.url} refused a run of {job}: {exc}") from exc
                time.sleep(1.0)

    def wait(self, run_id: str) -> dg.DagsterRun:
        while True:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.status in ENDED:
                return run
            time.sleep(POLL_S)

    def terminate(self, run_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client().terminate_run(run_id)

    def failure(self, run_id: str) -> str:
        """The first failure message the run logged."""
        for entry in self.instance.all_logs(run_id):
            event = entry.dagster_event
            if event is not None and event.is_failure and event.event_specific_data is not None:
                error = getattr(event.event_specific_data, "error", None)
                while error is not None and error.cause is not None and "DagsterExecutionStepExecutionError" in error.message:
                    error = error.cause  # the user code's error, not Dagster's wrapper
                if error is not None:
                    return error.message.strip()
        return "see the run in the Dagster UI"


@contextlib.contextmanager
def launcher(home: Path, instance: dg.DagsterInstance) -> Iterator[RunLauncher]:
    given = os.environ.get(URL_ENV)
    if given:
        if not _answers(given.rstrip("/")):
            raise LauncherError(f"{URL_ENV}={given} does not answer; start `aras ui` there or unset it")
        yield RunLauncher(given.rstrip("/"), instance)
        return
    with dagster_dev(home) as url:
        yield RunLauncher(url, instance)
