"""The platform through a real `dagster dev` (webserver + daemon), driven over its GraphQL API
like the UI drives it: a partition run, a partition backfill, a schedule evaluation, the new-tile
sensor, the `gpu` pool of dagster.yaml, and the asset graph rendered in headless Chromium."""

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest

from aras_assets.launcher import RunLauncher, partition_tags
from tests.e2e.conftest import ARAS_LOCATION, GPU_LOCATION, REPOSITORY, DagsterDev

pytestmark = pytest.mark.e2e

TILES = ["N36E030", "N36E031", "N38E028", "N38E029"]
BACKFILL_LIMIT = 2  # ARAS_BACKFILL_MAX_PARTITIONS of the dagster dev process


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""

BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status partitionNames }
    ... on PythonError { message }
  }
}"""

BACKFILL_TILES = ["N36E030", "N36E031"]


@pytest.fixture(scope="module")
def catalogued(dagster_dev: DagsterDev) -> DagsterDev:
    """tile_catalog materialized once: it registers the s2_tile partitions the other tests use."""
    run = dagster_dev.wait_run(dagster_dev.launch("catalog_job"))
    assert run["status"] == "SUCCESS", dagster_dev.log_tail()
    assert dagster_dev.partition_statuses("real_patches")["keys"] == TILES
    return dagster_dev


@pytest.fixture(scope="module")
def backfill_id(catalogued: DagsterDev) -> str:
    """A partition backfill of real_patches, launched by the first test that asks for it: the
    backfill daemon wakes every 30 s, so its passes overlap the tests that run meanwhile."""
    launched = catalogued.graphql(LAUNCH_BACKFILL, {"params": {
        "partitionNames": BACKFILL_TILES, "assetSelection": [{"path": ["real_patches"]}]}})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def wait_backfill(dev: DagsterDev, backfill: str, timeout: float = 150.0) -> str:
    deadline = time.monotonic() + timeout
    while (status := dev.graphql(BACKFILL, {"id": backfill})["partitionBackfillOrError"]["status"]) in (
            "REQUESTED", "CANCELING", "FAILING"):
        assert time.monotonic() < deadline, f"backfill still {status} after {timeout:.0f}s\n{dev.log_tail()}"
        time.sleep(2.0)
    return status


@pytest.mark.usefixtures("backfill_id")  # started now, checked by test_partition_backfill_completes
def test_materialize_one_partition(catalogued: DagsterDev):
    run = catalogued.wait_run(catalogued.launch("patches_job", tags={"dagster/partition": "N38E028"}))
    assert run["status"] == "SUCCESS", catalogued.log_tail()
    assert {"key": "dagster/partition", "value": "N38E028"} in run["tags"]
    assert "N38E028" in catalogued.partition_statuses("real_patches")["materializedPartitions"]
    assert (catalogued.data_root / "patches" / "N38E028" / "manifest.parquet").exists()


def step_window(dev: DagsterDev, run_id: str, step: str) -> tuple[float, float]:
    events = [e for e in dev.step_events(run_id) if e.get("stepKey") == step]
    start = next(float(e["timestamp"]) for e in events if e["__typename"] == "ExecutionStepStartEvent")
    end = next(float(e["timestamp"]) for e in events if e["__typename"] == "ExecutionStepSuccessEvent")
    return start / 1000, end / 1000


def test_gpu_pool_keeps_gpu_steps_apart(dagster_dev: DagsterDev):
    """Two runs launched at once, each with one step in the `gpu` pool (limit 1 in dagster.yaml).
    Without the pool their steps overlap (the assets sleep 4 s each). Regression: on a new instance
    the queue's first pass let both through unless the pool was limited beforehand (ensure_pools)."""
    with ThreadPoolExecutor(2) as pool:  # both queued within one pass of the queue (read every second)
        run_ids = list(pool.map(lambda job: dagster_dev.launch(job, location=GPU_LOCATION), ("gpu_a_job", "gpu_b_job")))
    runs = [dagster_dev.wait_run(r) for r in run_ids]
    assert [r["status"] for r in runs] == ["SUCCESS", "SUCCESS"], dagster_dev.log_tail()
    windows = sorted(step_window(dagster_dev, r, s) for r, s in zip(run_ids, ("gpu_step_a", "gpu_step_b"), strict=True))
    (_, first_end), (second_start, _) = windows
    assert second_start >= first_end, f"gpu steps overlapped: {windows}"


def test_asset_graph_renders_in_headless_chromium(dagster_dev: DagsterDev, chromium: str, artifacts: Path,
                                                 tmp_path: Path):
    """The lineage graphs of the first three groups (catalog, patches, splits), rendered by the UI's
    JavaScript: each group's asset name in the DOM, and a screenshot kept as an artifact."""
    dagster_dev.graphql("mutation { setNuxSeen }")  # no first-visit community dialog over the graph
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1600,1000", "--virtual-time-budget=20000"]
    for group, name in (("catalog", "tile_catalog"), ("patches", "real_patches"), ("splits", "splits")):
        url = f"{dagster_dev.url}/locations/{REPOSITORY}@{ARAS_LOCATION}/asset-groups/{group}"
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        (artifacts / f"asset_graph_{group}.html").write_text(dom.stdout)
        assert f">{name}<" in dom.stdout, f"{name} not in the rendered {group} graph (DOM saved in {artifacts})"
    shot = artifacts / "asset_graph.png"
    result = subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_partition_backfill_completes(catalogued: DagsterDev, backfill_id: str):
    # One daemon pass submits a run per partition, a later one sees them finish.
    assert wait_backfill(catalogued, backfill_id) == "COMPLETED_SUCCESS", catalogued.log_tail()
    assert set(BACKFILL_TILES) <= set(catalogued.partition_statuses("real_patches")["materializedPartitions"])


SCHEDULE_DRY_RUN = """
mutation($selector: ScheduleSelector!, $timestamp: Float!) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick {
      evaluationResult { skipReason runRequests { runKey jobName tags { key value } } error { message stack } }
    }
    ... on PythonError { message stack }
    ... on ScheduleNotFoundError { message }
  }
}"""

SENSOR_DRY_RUN = """
mutation($selector: SensorSelector!) {
  sensorDryRun(selectorData: $selector, cursor: null) {
    __typename
    ... on DryRunInstigationTick {
      evaluationResult { skipReason cursor runRequests { runKey } dynamicPartitionsRequests { partitionKeys } error { message } }
    }
    ... on PythonError { message stack }
    ... on SensorNotFoundError { message }
  }
}"""


def test_schedule_tick_requests_only_missing_partitions(catalogued: DagsterDev, backfill_id: str):
    """The code server evaluates the real schedule against the instance, as the daemon's tick would."""
    wait_backfill(catalogued, backfill_id)  # no run in flight: the state read below is the schedule's
    statuses = catalogued.partition_statuses("real_patches")
    assert not statuses["materializingPartitions"]
    done = set(statuses["materializedPartitions"])
    expected = [t for t in statuses["keys"] if t not in done][:BACKFILL_LIMIT]
    tick = catalogued.graphql(SCHEDULE_DRY_RUN, {"selector": {
        "repositoryLocationName": ARAS_LOCATION, "repositoryName": REPOSITORY,
        "scheduleName": "real_patches_backfill"}, "timestamp": time.time()})["scheduleDryRun"]
    assert tick["__typename"] == "DryRunInstigationTick", tick
    result = tick["evaluationResult"]
    assert result["error"] is None, result["error"]
    if not expected:
        assert "nothing to request" in result["skipReason"]
        return
    requests = result["runRequests"]
    partitions = [next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in requests]
    assert partitions == expected and not set(partitions) & done
    assert len({r["runKey"] for r in requests}) == len(requests)
    assert all(r["runKey"] == f"real_patches:{p}:1:missing" for r, p in zip(requests, partitions, strict=True))


def test_new_tile_sensor_sees_no_new_tiles(catalogued: DagsterDev):
    """Every tile of the folder is a partition already (tile_catalog registered them)."""
    tick = catalogued.graphql(SENSOR_DRY_RUN, {"selector": {
        "repositoryLocationName": ARAS_LOCATION, "repositoryName": REPOSITORY,
        "sensorName": "new_tile_sensor"}})["sensorDryRun"]
    assert tick["__typename"] == "DryRunInstigationTick", tick
    result = tick["evaluationResult"]
    assert result["error"] is None, result["error"]
    assert not result["runRequests"] and not result["dynamicPartitionsRequests"]
    assert result["skipReason"] == f"no new tiles among the {len(TILES)} in the folder"


JOB_RUNS = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  name location { name } jobs { name runs(limit: 50) { runId status tags { key value } } } } } } }"""
REEXECUTE = """mutation($parent: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: ALL_STEPS}) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def test_aras_run_launches_runs_listed_under_their_jobs(catalogued: DagsterDev):
    """What `aras run` does with each stage (aras_assets/launcher.py): its runs go through the
    webserver, so the UI lists them under their jobs, and they re-execute as their jobs."""
    with dg.DagsterInstance.from_config(str(catalogued.home)) as instance:
        runs = RunLauncher(catalogued.url, instance)
        tags = {"aras/command": "aras run", "aras/profile": "demo"}
        run_ids = [runs.submit("patches_job", {}, {**tags, **partition_tags(tile)}) for tile in ("N38E028", "N38E029")]
        assert all(runs.wait(r).status == dg.DagsterRunStatus.SUCCESS for r in run_ids), catalogued.log_tail()
        jobs = {(repo["location"]["name"], job["name"]): job["runs"]
                for repo in catalogued.graphql(JOB_RUNS)["repositoriesOrError"]["nodes"] for job in repo["jobs"]}
        listed = {r["runId"]: r for r in jobs[(ARAS_LOCATION, "patches_job")]}
        assert set(run_ids) <= set(listed)
        assert {"key": "aras/command", "value": "aras run"} in listed[run_ids[0]]["tags"]
        assert {"key": "dagster/partition", "value": "N38E028"} in listed[run_ids[0]]["tags"]
        again = catalogued.graphql(REEXECUTE, {"parent": run_ids[1]})["launchRunReexecution"]
        assert again["__typename"] == "LaunchRunSuccess", again
        rerun = runs.wait(again["run"]["runId"])
        assert rerun.status == dg.DagsterRunStatus.SUCCESS and rerun.job_name == "patches_job"
        assert rerun.tags["dagster/partition"] == "N38E029"
        bad = {"resources": {"settings": {"config": {"overrides": {"split_fractions": "[0.5, 0.5, 0.5]"}}}}}
        failed = runs.submit("splits_job", bad, tags)
        assert runs.wait(failed).status == dg.DagsterRunStatus.FAILURE and "split_fractions" in runs.failure(failed)
