"""End-to-end fixtures: a real `dagster dev` (webserver + daemon) on loopback with a temporary
DAGSTER_HOME holding the project's dagster.yaml, serving two code locations: the project's
definitions (on the sample region) and a tiny module with two `gpu`-pool assets."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from aras_assets.instance import ensure_pools

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARAS_LOCATION = "aras"
GPU_LOCATION = "gpu_pool_check"
REPOSITORY = "__repository__"  # the repository name Dagster gives a Definitions object
STARTUP_TIMEOUT_S = 150.0
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests against a real `dagster dev` (webserver + daemon)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GraphQLError(RuntimeError):
    pass


@dataclass
class DagsterDev:
    url: str
    home: Path
    data_root: Path
    log: Path
    process: subprocess.Popen

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # GraphQL errors come back with status 4xx/500 and a JSON body
            raise GraphQLError(f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from exc
        if payload.get("errors"):
            raise GraphQLError(json.dumps(payload["errors"])[:2000])
        return payload["data"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # --- runs ---

    def launch(self, job: str, location: str = ARAS_LOCATION, tags: dict[str, str] | None = None) -> str:
        data = self.graphql(LAUNCH_RUN, {"params": {
            "selector": {"repositoryLocationName": location, "repositoryName": REPOSITORY, "jobName": job},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }})["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launching {job} failed: {json.dumps(data)[:2000]}")
        return data["run"]["runId"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.graphql(RUN, {"runId": run_id})["runOrError"]

    def wait_run(self, run_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(1.0)

    def step_events(self, run_id: str) -> list[dict[str, Any]]:
        events, cursor = [], None
        while True:
            conn = self.graphql(RUN_EVENTS, {"runId": run_id, "cursor": cursor})["runOrError"]["eventConnection"]
            events += conn["events"]
            cursor = conn["cursor"]
            if not conn["hasMore"]:
                return events

    def partition_statuses(self, asset: str) -> dict[str, list[str]]:
        node = self.graphql(PARTITIONS, {"key": {"path": [asset]}})["assetNodeOrError"]
        return {"keys": node["partitionKeys"], **node["assetPartitionStatuses"]}


LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status startTime endTime tags { key value } }
    ... on PythonError { message }
  }
}"""

RUN_EVENTS = """
query($runId: ID!, $cursor: String) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection(afterCursor: $cursor, limit: 1000) {
        cursor hasMore
        events { __typename ... on MessageEvent { message timestamp } ... on StepEvent { stepKey } }
      }
    }
  }
}"""

PARTITIONS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionKeys
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions }
      }
    }
  }
}"""

LOCATIONS = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries { name loadStatus locationOrLoadError { __typename ... on PythonError { message } } }
    }
  }
}"""


def wait_until_loaded(dev: DagsterDev, locations: set[str], timeout: float) -> None:
    """The webserver answers GraphQL and every code location has loaded (a load error fails at once)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {dev.process.returncode}\n{dev.log_tail()}")
        try:
            entries = dev.graphql(LOCATIONS, timeout=10)["workspaceOrError"].get("locationEntries") or []
        except (urllib.error.URLError, ConnectionError, TimeoutError, GraphQLError) as exc:
            last = repr(exc)
        else:
            for entry in entries:
                error = entry.get("locationOrLoadError") or {}
                if error.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location {entry['name']} failed to load: {error['message']}")
            loaded = {e["name"] for e in entries if e["loadStatus"] == "LOADED" and e["locationOrLoadError"]}
            if locations <= loaded:
                return
            last = f"loaded: {sorted(loaded)}"
        time.sleep(1.0)
    raise TimeoutError(f"dagster dev not ready after {timeout:.0f}s ({last})\n{dev.log_tail()}")


def workspace_yaml(folder: Path) -> Path:
    path = folder / "workspace.yaml"
    path.write_text(
        "load_from:\n"
        f"  - python_module:\n      module_name: definitions\n      location_name: {ARAS_LOCATION}\n"
        f"      working_directory: {json.dumps(str(PROJECT_ROOT))}\n"
        f"  - python_file:\n      relative_path: {json.dumps(str(Path(__file__).with_name('gpu_pool_defs.py')))}\n"
        f"      location_name: {GPU_LOCATION}\n      working_directory: {json.dumps(str(PROJECT_ROOT))}\n")
    return path


def dev_environment(home: Path, data_root: Path, tile_source: Path) -> dict[str, str]:
    # Start from a clean slate: no settings file, profile or instance of the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARAS_", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(home),
        "ARAS_PROFILE": "demo",
        "ARAS_DATA_ROOT": str(data_root),
        "ARAS_TILE_SOURCE": str(tile_source),
        "ARAS_BACKFILL_MAX_PARTITIONS": "2",
        "ARAS_BACKFILL_CRON": "* * * * *",  # a dry-run tick at any minute goes through
        "ARAS_WORKERS": "1",  # two cores are shared by the webserver, the daemon and the runs
        "PYTHONUNBUFFERED": "1",
    })
    return env


def stop_group(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGINT to the whole process group (webserver, daemon, code servers), as Ctrl-C in a terminal
    would, then SIGKILL to whatever is left."""
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group outlives its leader while any member is alive
    except ProcessLookupError:
        pass
    process.wait(timeout=5)


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory, sample_region: Path) -> Iterator[DagsterDev]:
    base = tmp_path_factory.mktemp("dagster_dev")
    home, data_root = base / "dagster_home", base / "data"
    home.mkdir()
    data_root.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")  # the pool and queue settings under test
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ensure_pools(instance)  # as `aras ui` prepares its home
    port = free_port()
    log = base / "dagster_dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(workspace_yaml(base)), "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT, env=dev_environment(home, data_root, sample_region), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)  # its own process group, killed as a whole
    dev = DagsterDev(f"http://127.0.0.1:{port}", home, data_root, log, process)
    try:
        wait_until_loaded(dev, {ARAS_LOCATION, GPU_LOCATION}, STARTUP_TIMEOUT_S)
        yield dev
    finally:
        stop_group(process)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where a test keeps files worth looking at: $ARAS_TEST_ARTIFACTS if set, else the test's tmp folder."""
    folder = Path(os.environ["ARAS_TEST_ARTIFACTS"]) if os.environ.get("ARAS_TEST_ARTIFACTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Debian `chromium` binary, installed with apt when missing and apt is usable."""
    found = shutil.which("chromium")
    if found:
        return found
    apt = shutil.which("apt-get")
    if not apt or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get cannot install it here (needs apt-get and root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "chromium"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=300)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"chromium could not be installed with apt-get: {(result.stderr or result.stdout)[-1000:]}")
    return found
