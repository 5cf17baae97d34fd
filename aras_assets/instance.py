"""The Dagster instance: DAGSTER_HOME defaults to .dagster_home/ in the working directory (beside
./data, the default data root), holding a link to the project's dagster.yaml, so the CLI, the
tests and `dagster dev` started there share runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INSTANCE_CONFIG = PROJECT_ROOT / "dagster.yaml"


def default_dagster_home() -> Path:
    """DAGSTER_HOME, else .dagster_home in the working directory."""
    return Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create the instance folder with the project's dagster.yaml and export DAGSTER_HOME."""
    home = Path(home or default_dagster_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and not config.is_symlink():
        try:
            config.symlink_to(INSTANCE_CONFIG)
        except OSError:  # file systems without links get a copy
            shutil.copyfile(INSTANCE_CONFIG, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
