"""The ARAS Dagster definitions: `dagster dev` and `dagster definitions validate` load this.
The graph is declared once in `aras_assets.graph`; jobs and schedules derive from it."""

import dagster as dg

from aras_assets.graph import ASSET_CHECKS, ASSETS, EXTERNAL_ASSETS, JOBS
from aras_assets.operations.schedules import SENSORS, backfill_schedules
from aras_assets.resources_config import default_resources

defs = dg.Definitions(
    assets=[*EXTERNAL_ASSETS, *ASSETS],
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    schedules=backfill_schedules(ASSETS),
    sensors=SENSORS,
    resources=default_resources(),
)
