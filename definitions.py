"""The ARAS Dagster definitions: `dagster dev` and `dagster definitions validate` load this."""

import dagster as dg

from aras_assets.captions.assets import ASSETS as CAPTION_ASSETS
from aras_assets.captions.assets import JOBS as CAPTION_JOBS
from aras_assets.generation.assets import ASSETS as GENERATION_ASSETS
from aras_assets.generation.assets import JOBS as GENERATION_JOBS
from aras_assets.operations.checks import CHECKS
from aras_assets.operations.schedules import SCHEDULES, SENSORS
from aras_assets.resources_config import default_resources
from aras_assets.segmentation.assets import ASSETS as SEGMENTATION_ASSETS
from aras_assets.segmentation.assets import JOBS as SEGMENTATION_JOBS
from aras_assets.sources.assets import ASSETS as SOURCE_ASSETS
from aras_assets.sources.assets import JOBS as SOURCE_JOBS

defs = dg.Definitions(
    assets=[*SOURCE_ASSETS, *SEGMENTATION_ASSETS, *GENERATION_ASSETS, *CAPTION_ASSETS],
    asset_checks=CHECKS,
    jobs=[*SOURCE_JOBS, *SEGMENTATION_JOBS, *GENERATION_JOBS, *CAPTION_JOBS],
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=default_resources(),
)
