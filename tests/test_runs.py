"""Runs that heal: run monitoring is on, a SIGTERM stops an in-process run as failed within
seconds, and a run left STARTED by a killed process is marked failed at the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from aras_assets.runs import RUNNER_TAG, clean_dead_runs

ROOT = Path(__file__).resolve().parents[1]
# A run executed in-process the way `aras run` does: tagged with its process, under its signal handlers.
WORKER = """
import sys, time
import dagster as dg
from aras_assets.runs import RUNNER_TAG, fail_own_runs, runner_id, stop_on_signals

@dg.asset
def slow() -> None:
    print("started", flush=True)
    time.sleep(120)

instance = dg.DagsterInstance.get()
with stop_on_signals() as received:
    try:
        # Dagster turns SIGTERM into an interrupt of the step; between steps the handler raises.
        result = dg.materialize([slow], instance=instance, raise_on_error=False, tags={RUNNER_TAG: runner_id()})
        print("result", result.success, result.dagster_run.status, flush=True)
        if received or not result.success:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        fail_own_runs(instance, f"interrupted by {received}")
        print("stopped", received, flush=True)
        sys.exit(1)
"""


def test_run_monitoring_is_on(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_cancel_timeout_seconds == 180


def _start(home: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "DAGSTER_HOME": str(home)}, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the asset's body runs: the run is STARTED
        if proc.stdout.readline().strip() == "started":
            return proc
    raise AssertionError("the worker run never started")


def _statuses(home: Path) -> list[dg.DagsterRunStatus]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [r.dagster_run.status for r in instance.get_run_records()]


def test_sigterm_fails_the_run_and_dead_runs_are_cleaned(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = _start(home)
    proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert proc.wait(timeout=30) == 1, proc.stdout.read()  # type: ignore[union-attr]
    assert time.monotonic() - stopped < 15
    assert _statuses(home) == [dg.DagsterRunStatus.FAILURE]
    # A kill leaves the run STARTED; the next start marks it failed and says which.
    proc = _start(home)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (started,) = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))]
        assert started.tags[RUNNER_TAG].endswith(f":{proc.pid}")
        assert clean_dead_runs(instance) == [started.run_id]
        assert instance.get_run_by_id(started.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        assert clean_dead_runs(instance) == []
