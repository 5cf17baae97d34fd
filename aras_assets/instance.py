"""The Dagster instance: DAGSTER_HOME defaults to .dagster_home/ in the working directory (beside
./data, the default data root), holding a link to the deployment's dagster.yaml (the project's
embedded one unless ARAS_DEPLOY says otherwise, aras_assets/deploy.py), so the CLI, the tests
and `dagster dev` started there share runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from aras_assets import deploy


def default_dagster_home() -> Path:
    """DAGSTER_HOME, else .dagster_home in the working directory."""
    return Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create the instance folder with the deployment's dagster.yaml and export DAGSTER_HOME. A link
    to another deployment's config is moved to this one; a file of the user's own is left alone.
    For a Postgres-backed deployment the databases must answer first (one line naming them if not)."""
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
    return home
