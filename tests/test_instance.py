"""The instance folder `aras` prepares: the project's dagster.yaml linked in, and the `gpu` pool
limited before any run is queued."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from aras_assets import deploy
from aras_assets.instance import ensure_dagster_home, ensure_pools


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored after the test
    monkeypatch.delenv("ARAS_DEPLOY", raising=False)
    return ensure_dagster_home(tmp_path / "dagster_home")


def test_a_new_home_limits_the_gpu_pool_before_any_run(home: Path):
    """Regression: the queue met the `gpu` pool first in a pass that had already read the limited
    pools, so two GPU runs queued together on a new instance both started (run granularity)."""
    assert (home / "dagster.yaml").resolve() == deploy.instance_config().resolve()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []
        storage = instance.event_log_storage
        assert deploy.GPU_POOL in storage.get_concurrency_keys()
        assert storage.get_concurrency_info(deploy.GPU_POOL).slot_count == 1  # dagster.yaml's default_limit


def test_pools_are_created_once_and_a_users_limit_is_kept(home: Path):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert ensure_pools(instance) == []  # already there
        instance.event_log_storage.set_concurrency_slots(deploy.GPU_POOL, 3)  # `dagster instance concurrency set`
        assert ensure_pools(instance) == []
        assert instance.event_log_storage.get_concurrency_info(deploy.GPU_POOL).slot_count == 3
        assert ensure_pools(instance, ["other"]) == ["other"]


def test_a_pool_that_follows_the_default_follows_its_change(home: Path):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.get_concurrency_info(deploy.GPU_POOL).slot_count == 1
    config = home / "dagster.yaml"
    text = config.read_text()
    config.unlink()  # the link to the project's file, replaced by the user's own
    config.write_text(text.replace("default_limit: 1", "default_limit: 2"))
    ensure_dagster_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.get_concurrency_info(deploy.GPU_POOL).slot_count == 2
