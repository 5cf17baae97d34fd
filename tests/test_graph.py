"""The asset graph as a snapshot (keys, groups, partitions, upstream assets, checks, jobs): an
accidental change to the graph fails here and shows in review. After an intended change,
regenerate with `ARAS_UPDATE_SNAPSHOT=1 pytest tests/test_graph.py` and commit the JSON."""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from aras_assets.graph import ASSET_CHECKS, ASSETS, STAGE_JOBS, Stage, stages, upstream

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_snapshot() -> dict:
    deps = upstream(ASSETS)
    assets = {}
    for a in ASSETS:
        for spec in a.specs:
            stage = next(s for s in stages() if spec.key in s.keys)
            assets[spec.key.to_user_string()] = {
                "group": spec.group_name, "partitions": stage.dimension,
                "code_version": spec.code_version, "kinds": sorted(spec.kinds),
                "upstream": sorted(d.to_user_string() for d in deps[spec.key]),
                "checks": sorted(c.name for c in a.check_specs if c.asset_key == spec.key),
            }
    checks = sorted(f"{key.asset_key.to_user_string()}:{key.name}" for c in ASSET_CHECKS for key in c.check_keys)
    jobs = {name: [k.to_user_string() for k in stage.keys] for name, (stage, _) in STAGE_JOBS.items()}
    return {"assets": assets, "asset_checks": checks, "jobs_in_order": jobs}


def test_graph_matches_snapshot() -> None:
    current = graph_snapshot()
    if os.environ.get("ARAS_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=False) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), "the asset graph changed; see this file's docstring"


def test_definitions_load_with_every_asset_and_stage_job() -> None:
    import definitions

    repo = definitions.defs.get_repository_def()
    external = {"s2_rgbnir_tiles", "worldcover_tiles"}  # inputs upstream of tile_catalog, not materialized here
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == set(graph_snapshot()["assets"]) | external
    assert {d.asset_key.to_user_string() for d in repo.assets_defs_by_key[dg.AssetKey("tile_catalog")].specs_by_key[
        dg.AssetKey("tile_catalog")].deps} == external
    for key in repo.asset_graph.get_all_asset_keys():  # every asset and check says what it is
        assert repo.asset_graph.get(key).description, key
    specs = [s for c in ASSET_CHECKS for s in c.check_specs] + [s for a in ASSETS for s in a.check_specs]
    assert len(specs) >= 7 and [s.name for s in specs if not s.description] == []
    for name in STAGE_JOBS:
        assert repo.get_job(name).name == name


def test_stages_refuse_a_group_that_loops_through_another_partitioning() -> None:
    parts = dg.DynamicPartitionsDefinition(name="p")

    @dg.asset(group_name="g")
    def first() -> None: ...

    @dg.asset(group_name="h", partitions_def=parts, deps=[first])
    def middle() -> None: ...

    @dg.asset(group_name="g", deps=[middle])
    def last() -> None: ...

    with pytest.raises(ValueError, match="loop"):
        stages([first, middle, last])
    ordered = stages([first, middle])
    assert [(s.group, s.dimension) for s in ordered] == [("g", None), ("h", "p")]
    assert isinstance(ordered[0], Stage)


def test_gan_fid_declares_everything_it_reads() -> None:
    """Regression: it read the training patches and the champion encoder without declaring them,
    so changing either did not mark it stale."""
    deps = upstream(ASSETS)[dg.AssetKey("gan_fid")]
    assert {d.to_user_string() for d in deps} == {"uncond_images", "cond_images", "splits", "real_patches",
                                                  "segmentation_model"}
