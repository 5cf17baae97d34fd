"""Runs that heal: `aras run` executes runs in its own process, so a run whose process is killed
would stay STARTED forever (and hold its concurrency slots). Each such run carries the host and
pid of its process; SIGTERM/SIGINT stop it as failed, and the next `aras run` marks the STARTED
runs of dead processes failed. Runs launched by `dagster dev` are left to run monitoring
(dagster.yaml)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator

import dagster as dg

RUNNER_TAG = "aras/runner"  # "<host>:<pid>" of the process that executes the run in-process


def runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def runner_alive(runner: str) -> bool:
    """False only when the runner was on this host and its process is gone (other hosts: unknown)."""
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _started(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))]


def _mark_failed(instance: dg.DagsterInstance, run: dg.DagsterRun, message: str) -> None:
    instance.report_run_failed(run, message=message)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:  # a dead run's slots would block the pool's next step
        storage.free_concurrency_slots_for_run(run.run_id)


def clean_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs shown STARTED whose `aras` process is gone; their ids."""
    cleaned = []
    for run in _started(instance):
        runner = run.tags.get(RUNNER_TAG)
        if runner is not None and not runner_alive(runner):
            _mark_failed(instance, run, f"the process that ran it ({runner}) is gone: killed or the machine restarted")
            cleaned.append(run.run_id)
    return cleaned


def fail_own_runs(instance: dg.DagsterInstance, why: str) -> list[str]:
    """Mark failed the runs of this process still shown STARTED (after an interrupt); their ids."""
    own = [run for run in _started(instance) if run.tags.get(RUNNER_TAG) == runner_id()]
    for run in own:
        _mark_failed(instance, run, why)
    return [run.run_id for run in own]


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[str]]:
    """SIGTERM and SIGINT interrupt the run in progress (Dagster records it failed); the list
    yielded names the signals received. Outside the main thread, signals cannot be caught."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def interrupt(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
