"""A second code location for the end-to-end tests: two cheap assets in the `gpu` pool, so the
pool limit of dagster.yaml can be checked without trained models."""

import time

import dagster as dg

# Long enough that two runs launched together would overlap without the pool.
STEP_SECONDS = 4.0


@dg.asset(pool="gpu", group_name="gpu_pool_check")
def gpu_step_a() -> dg.MaterializeResult:
    time.sleep(STEP_SECONDS)
    return dg.MaterializeResult(metadata={"slept_s": STEP_SECONDS})


@dg.asset(pool="gpu", group_name="gpu_pool_check")
def gpu_step_b() -> dg.MaterializeResult:
    time.sleep(STEP_SECONDS)
    return dg.MaterializeResult(metadata={"slept_s": STEP_SECONDS})


defs = dg.Definitions(
    assets=[gpu_step_a, gpu_step_b],
    jobs=[dg.define_asset_job("gpu_a_job", selection=[gpu_step_a]),
          dg.define_asset_job("gpu_b_job", selection=[gpu_step_b])],
)
