"""The Dagster instance: DAGSTER_HOME defaults to .dagster_home/ in the working directory (beside
./data, the default data root), holding a link to the deployment's dagster.yaml (the project's
embedded one unless ARAS_DEPLOY says otherwise, aras_assets/deploy.py), so the CLI, the tests
and `dagster dev` started there share runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import sqlalchemy.exc

from aras_assets import deploy


def default_dagster_home() -> Path:
    """DAGSTER_HOME, else .dagster_home in the working directory."""
    return Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create the instance folder with the deployment's dagster.yaml and export DAGSTER_HOME. A link
    to another deployment's config is moved to this one; a file of the user's own is left alone.
    For a Postgres-backed deployment the databases must answer first (one line naming them if not).
    The `gpu` pool (deploy.GPU_POOL) gets its limit here, before any run is queued (`ensure_pools`)."""
    name = deploy.current()
    deploy.check_ready(name)
    target = deploy.instance_config(name)
    home = Path(home or default_dagster_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    ours = config.is_symlink() and Path(os.readlink(config)) in deploy.INSTANCE_CONFIGS.values()
    if ours and Path(os.readlink(config)) != target:
        config.unlink()
    if not config.exists() and not config.is_symlink():
        try:
            config.symlink_to(target)
        except OSError:  # file systems without links get a copy
            shutil.copyfile(target, config)
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ensure_pools(instance)
    return home


def ensure_pools(instance: dg.DagsterInstance, pools: Iterable[str] = (deploy.GPU_POOL,)) -> list[str]:
    """Give each pool its limit (dagster.yaml's `default_limit`) now; the pools created or reset.

    Dagster creates a pool's limit in the first queue pass that meets a run naming it, but that
    pass has read the list of limited pools before: two GPU runs queued together on a new instance
    both go through. Under run granularity (the local dagster.yaml) no step claims a slot, so the
    two would train on one GPU at once. A pool that follows the default and no longer equals it is
    made again: Dagster's own update of it fails on Postgres (dagster-io/dagster#33552), while a
    limit the user set (`dagster instance concurrency set`) is left alone."""
    storage = instance.event_log_storage
    default = instance.global_op_concurrency_default_limit
    if not storage.supports_global_concurrency_limits or default is None:
        return []
    limits = {p.name: p for p in storage.get_pool_limits()}
    changed = []
    for pool in pools:
        known = limits.get(pool)
        if known is not None and (not known.from_default or known.limit == default):
            continue
        if known is not None:
            storage.delete_concurrency_limit(pool)
        try:
            storage.initialize_concurrency_limit_to_default(pool)
        except sqlalchemy.exc.DBAPIError:  # another process made it a moment ago (Postgres: the rest of its update fails)
            if pool not in storage.get_concurrency_keys():
                raise
            continue
        changed.append(pool)
    return changed
