"""The ARAS Dagster definitions: `dagster dev` and `dagster definitions validate` load this.
The graph is declared once in `aras_assets.graph`; jobs and schedules derive from it. The
deployment (ARAS_DEPLOY, aras_assets/deploy.py) picks the executor and resources."""

import dagster as dg

from aras_assets import deploy
from aras_assets.graph import ASSET_CHECKS, ASSETS, EXTERNAL_ASSETS, JOBS
from aras_assets.operations.schedules import SENSORS, backfill_schedules

defs = dg.Definitions(
    assets=[*EXTERNAL_ASSETS, *ASSETS],
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    schedules=backfill_schedules(ASSETS),
    sensors=SENSORS,
    resources=deploy.resources(),
    executor=deploy.executor(),
)
