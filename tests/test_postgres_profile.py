"""The Postgres deployment against a real PostgreSQL server: a real backfill of tiles, shards and
two architectures, run by the daemon of a `dagster dev` with several runs at once, leaves every
run and record exactly once, and MLflow's backend store keeps runs, registered versions and one
champion.

The server: `ARAS_TEST_PG_URL` (`.ci/run` starts one), else a throwaway one started here
(tests/pg_server.py). Without PostgreSQL the tests skip, unless `ARAS_REQUIRE_POSTGRES=1` (CI),
where they fail."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pg_server
import polars as pl
import pytest
import torch
from servers import free_port

from aras_assets import deploy
from aras_assets.instance import ensure_dagster_home, ensure_pools
from aras_assets.sources.assets import tile_catalog
from aras_assets.sources.sample_region import TileRecipe, write_sample_region

TILES = ["N36E030", "N36E031", "N38E028", "N38E029"]


def no_server(why: str) -> None:
    if os.environ.get("ARAS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"ARAS_REQUIRE_POSTGRES=1 but {why}")
    pytest.skip(f"{why}; set ARAS_TEST_PG_URL or install PostgreSQL (Debian: apt-get install postgresql)")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """postgresql://USER@HOST:PORT of a server whose user may create databases."""
    if os.environ.get("ARAS_TEST_PG_URL"):
        yield os.environ["ARAS_TEST_PG_URL"].rstrip("/")
        return
    if pg_server.bin_dir() is None:
        no_server("PostgreSQL is not installed (no initdb)")
    folder = Path(tempfile.mkdtemp(prefix="aras-pg-"))  # under /tmp: the server's user must reach it
    try:
        url = pg_server.start(folder)
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        no_server(f"a throwaway PostgreSQL did not start: {exc} {getattr(exc, 'stderr', '') or ''}".strip())
    yield url
    pg_server.stop(folder)
    shutil.rmtree(folder, ignore_errors=True)


def new_database(server: str, prefix: str) -> str:
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    connection = psycopg2.connect(f"{server}/postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return f"{server.replace('postgresql://', deploy.PG_SCHEME + '://', 1)}/{name}"


@pytest.fixture
def postgres_deploy(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ARAS_DEPLOY=postgres with fresh Dagster and MLflow databases; the instance's home."""
    monkeypatch.setenv(deploy.DEPLOY_ENV, "postgres")
    monkeypatch.setenv(deploy.DAGSTER_PG_URL_ENV, new_database(server, "dagster"))
    monkeypatch.setenv(deploy.MLFLOW_URI_ENV, new_database(server, "mlflow"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = ensure_dagster_home()
    assert (home / "dagster.yaml").resolve() == deploy.INSTANCE_CONFIGS["postgres"]
    return home


# Eight 512 px tiles in the default bounding box (two WorldCover tiles): 8 real_patches partitions.
EIGHT_TILES = tuple(TileRecipe(t) for t in ("N36E028", "N36E029", "N37E028", "N37E029", "N38E028", "N38E029",
                                             "N36E030", "N36E031"))
# The deployment's settings, from the environment as a cluster gives them: tiny training, 4 shards of 4.
TINY_ENV = {"ARAS_PROFILE": "demo", "ARAS_SEG_EPOCHS": "1", "ARAS_SEG_ARCHS": '["pan", "fpn"]', "ARAS_GAN_STEPS": "4",
            "ARAS_GAN_CHECKPOINT_EVERY": "2", "ARAS_GAN_FID_EVERY": "0", "ARAS_FID_IMAGES": "8",
            "ARAS_GEN_SHARDS": "4", "ARAS_GEN_SHARD_SIZE": "4", "ARAS_GEN_BATCH_SIZE": "4"}
LAUNCH_BACKFILL = """mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""


def graphql(url: str, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def most_at_once(runs: list[dg.RunRecord]) -> int:
    """The most runs in progress at one time, from when each started and ended."""
    edges = sorted([(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_the_gpu_pool_is_limited_at_once_and_follows_a_changed_default(postgres_deploy: Path) -> None:
    """Regression: the pool must exist before runs are queued, and a changed default_limit must
    reach a pool made from the old one; Dagster's own update fails on Postgres (dagster#33552)."""
    config = postgres_deploy / "dagster.yaml"
    with dg.DagsterInstance.from_config(str(postgres_deploy)) as instance:
        assert instance.event_log_storage.get_concurrency_info(deploy.GPU_POOL).slot_count == 1
    config.unlink()
    config.write_text(deploy.INSTANCE_CONFIGS["postgres"].read_text().replace("default_limit: 1", "default_limit: 3"))
    ensure_dagster_home(postgres_deploy)
    with dg.DagsterInstance.from_config(str(postgres_deploy)) as instance:
        assert instance.event_log_storage.get_concurrency_info(deploy.GPU_POOL).slot_count == 3
        assert ensure_pools(instance) == []  # made once


def test_a_backfill_of_tiles_shards_and_architectures_runs_at_once(postgres_deploy: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A real backfill, launched through a webserver and run by the daemon on the Postgres
    instance: 8 real_patches tiles (2 per run, their backfill policy), 4 uncond_images shards
    and the pan and fpn segmentation models, 8 runs of which at least 4 run at once, the two
    architectures training at the same time. Every run
    and record is there exactly once, each architecture's versions are whole, one holds the
    champion alias, and it is the best."""
    from aras_assets.generation.assets import uncond_gan
    from aras_assets.graph import ASSETS as ALL
    from aras_assets.launcher import dagster_dev
    from aras_assets.ranged import range_tags
    from aras_assets.resources_config import default_resources
    from aras_assets.segmentation.assets import segmentation_model
    from aras_assets.segmentation.registry import CHAMPION, SELECTION_METRIC, model_name, segmentation_versions
    from aras_assets.sources.assets import real_patches, splits
    from resources import MlflowResource

    region, data_root = tmp_path / "region", tmp_path / "data"
    write_sample_region(region, seed=7, tile_px=512, recipes=EIGHT_TILES)
    env = {**TINY_ENV, "ARAS_DATA_ROOT": str(data_root), "ARAS_TILE_SOURCE": str(region), "ARAS_PARTITIONS_PER_RUN": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # a machine with two GPUs: two GPU steps at once
    config = postgres_deploy / "dagster.yaml"
    config.unlink()
    config.write_text(deploy.INSTANCE_CONFIGS["postgres"].read_text().replace("default_limit: 1", "default_limit: 2"))
    ensure_dagster_home(postgres_deploy)  # as the next `aras` command would: the gpu pool follows to 2

    def here(asset: dg.AssetsDefinition, **kwargs: object) -> None:
        assert dg.materialize(ALL, selection=[asset], resources=default_resources(), instance=instance, **kwargs).success

    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.from_config(str(postgres_deploy)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        def prepare() -> None:  # what the generator needs first: patches, splits, a champion to score it, the generator
            try:
                here(tile_catalog)
                here(real_patches, tags=range_tags(instance.get_dynamic_partitions("s2_tile")))
                here(splits)
                here(segmentation_model, partition_key="pan")
                here(uncond_gan)
            except BaseException as exc:  # raised again below, in the test's thread
                problems.append(exc)

        problems: list[BaseException] = []
        preparing = threading.Thread(target=prepare)
        preparing.start()  # while the webserver and daemon start
        with dagster_dev(postgres_deploy, {**os.environ, **env}) as url:
            preparing.join()
            if problems:
                raise problems[0]
            tiles, shards = instance.get_dynamic_partitions("s2_tile"), instance.get_dynamic_partitions("gen_shard")
            assert sorted(tiles) == sorted(r.tile for r in EIGHT_TILES) and shards == ["0000", "0001", "0002", "0003"]
            launched = graphql(url, LAUNCH_BACKFILL, {"params": {"partitionsByAssets": [
                {"assetKey": {"path": ["real_patches"]}, "partitions": {"range": {"start": tiles[0], "end": tiles[-1]}}},
                {"assetKey": {"path": ["uncond_images"]}, "partitions": {"range": {"start": shards[0], "end": shards[-1]}}},
                {"assetKey": {"path": ["segmentation_model"]},
                 "partitions": {"ranges": [{"start": "pan", "end": "pan"}, {"start": "fpn", "end": "fpn"}]}}]}})
            answer = launched["launchPartitionBackfill"]
            assert answer["__typename"] == "LaunchBackfillSuccess", answer
            backfill = answer["backfillId"]
            # the daemon requests every run at its next tick (every 30 s); done when all 8 have ended
            deadline = time.monotonic() + 600
            while True:
                runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill}))
                if len(runs) == 8 and all(r.dagster_run.is_finished for r in runs):
                    break
                assert time.monotonic() < deadline, f"backfill {backfill}: {[r.dagster_run.status for r in runs]}"
                time.sleep(1)
        failed = [r.dagster_run.run_id for r in runs if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
        assert not failed, failed
        # 4 runs of 2 tiles and 2 of 2 shards at once, then one per architecture (they read the patches)
        t0 = min(r.create_timestamp.timestamp() for r in runs)
        timeline = sorted((round(r.create_timestamp.timestamp() - t0, 1), round(r.start_time - t0, 1),
                           round(r.end_time - t0, 1), r.dagster_run.tags.get("dagster/asset_partition_range_start")
                           or r.dagster_run.tags.get("dagster/partition")) for r in runs)
        assert len(runs) == 8 and most_at_once(runs) >= 4, timeline
        trained = [r for r in runs if r.dagster_run.tags.get("dagster/partition") in ("pan", "fpn")]
        assert most_at_once(trained) == 2  # the gpu pool has two slots: both train at once
        ids = {r.dagster_run.run_id for r in runs}
        for key, partitions in (("real_patches", tiles), ("uncond_images", shards), ("segmentation_model", ["pan", "fpn"])):
            records = [r for r in instance.fetch_materializations(dg.AssetKey(key), limit=100).records if r.run_id in ids]
            assert Counter(r.partition_key for r in records) == dict.fromkeys(partitions, 1), key

    # the Kubernetes instance config reads the same database (its run launcher needs a cluster: not built here)
    k8s_home = postgres_deploy.parent / "k8s_home"
    k8s_home.mkdir()
    shutil.copyfile(deploy.INSTANCE_CONFIGS["k8s"], k8s_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(k8s_home)) as instance:
        assert instance.get_run_record_by_id(next(iter(ids))) is not None

    manifests = pl.concat([pl.read_parquet(data_root / "patches" / t / "manifest.parquet") for t in tiles])
    assert manifests.height >= 8 and manifests["patch_id"].n_unique() == manifests.height
    synthetic = pl.concat([pl.read_parquet(data_root / "synthetic" / "uncond" / s / "manifest.parquet") for s in shards])
    assert synthetic.height == 16 and synthetic["image_id"].n_unique() == 16
    assert all((data_root / p).exists() for p in synthetic["image_path"])
    # the models: pan's two versions and fpn's one, each from a finished run; one champion, the best
    client = MlflowResource().client()
    versions = segmentation_versions(client)
    assert sorted((v.name, v.version) for v in versions) == [
        (model_name("fpn"), "1"), (model_name("pan"), "1"), (model_name("pan"), "2")]
    assert all(client.get_run(v.run_id).info.status == "FINISHED" for v in versions)
    holders = [n for n in (model_name("pan"), model_name("fpn")) if CHAMPION in client.get_registered_model(n).aliases]
    assert len(holders) == 1
    champion = client.get_model_version_by_alias(holders[0], CHAMPION)
    best = max(versions, key=lambda v: (v.score, v.name, int(v.version)))
    assert (holders[0], str(champion.version)) == (best.name, best.version)
    assert float(champion.tags[SELECTION_METRIC]) == best.score


def test_mlflow_keeps_runs_and_model_versions_in_postgres(postgres_deploy: Path, tmp_path: Path) -> None:
    """Two architectures trained and registered: runs, metrics, versions and one champion, in the
    Postgres backend store the deployment names."""
    import psycopg2

    from aras_assets.mlflow_runs import log_metrics, tracked_run
    from aras_assets.segmentation.registry import find_champion, promote_champion, register_model
    from resources import MlflowResource

    tracking = MlflowResource(artifact_root=(tmp_path / "artifacts").as_uri())
    uri = os.environ[deploy.MLFLOW_URI_ENV]
    assert tracking.resolved_tracking_uri == uri
    assert f'--backend-store-uri "${deploy.MLFLOW_URI_ENV}"' in tracking.ui_command()  # never the password
    client = tracking.client()
    experiment = tracking.experiment_id()
    checkpoint = tmp_path / "best.pt"
    torch.save({"w": torch.zeros(1)}, checkpoint)
    for arch, f1 in (("pan", 41.5), ("fpn", 57.25)):
        with tracked_run(client, experiment, None, f"segmentation {arch}", {"aras.arch": arch}, {"epochs": 1}) as run_id:
            log_metrics(client, run_id, {"val_f1_pct": f1, "absent_class_f1": None})
            register_model(uri, run_id, torch.nn.Conv2d(3, 7, 1), checkpoint, arch, f1, {"aras.arch": arch})
    champion = promote_champion(client)
    assert (champion.name, champion.version) == ("aras-segmentation-fpn", "1")
    assert find_champion(client).name == "aras-segmentation-fpn"

    runs = client.search_runs([experiment], order_by=["attributes.start_time"])
    assert [(r.data.tags["aras.arch"], r.info.status, r.data.metrics) for r in runs] == [
        ("pan", "FINISHED", {"val_f1_pct": 41.5}), ("fpn", "FINISHED", {"val_f1_pct": 57.25})]
    with psycopg2.connect(uri.replace(deploy.PG_SCHEME, "postgresql", 1)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name, version FROM model_versions ORDER BY name")
        assert cursor.fetchall() == [("aras-segmentation-fpn", 1), ("aras-segmentation-pan", 1)]
        cursor.execute("SELECT name, alias FROM registered_model_aliases")
        assert cursor.fetchall() == [("aras-segmentation-fpn", "champion")]


def test_a_database_that_is_down_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                             tmp_path: Path) -> None:
    from aras_assets import cli

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(deploy.DEPLOY_ENV, "postgress")
    assert cli.main(["settings"]) == 1
    assert capsys.readouterr().err == "error: ARAS_DEPLOY='postgress' is not a deployment; use one of local, postgres, k8s\n"

    monkeypatch.setenv(deploy.DEPLOY_ENV, "postgres")
    monkeypatch.delenv(deploy.DAGSTER_PG_URL_ENV, raising=False)
    assert cli.main(["run", "--profile", "demo"]) == 1
    assert capsys.readouterr().err.startswith("error: ARAS_DEPLOY=postgres needs ARAS_DAGSTER_PG_URL (e.g. postgresql+psycopg2://")

    monkeypatch.setenv(deploy.DAGSTER_PG_URL_ENV, "postgresql://aras@db.internal/dagster")
    assert cli.main(["run", "--profile", "demo"]) == 1
    assert capsys.readouterr().err == ("error: ARAS_DAGSTER_PG_URL must be postgresql+psycopg2://USER:PASSWORD@HOST:PORT/"
                                       "DATABASE (the PostgreSQL driver installed), not postgresql://\n")

    port = free_port()  # nothing listens there
    monkeypatch.setenv(deploy.DAGSTER_PG_URL_ENV, f"postgresql+psycopg2://aras:secret@127.0.0.1:{port}/dagster")
    monkeypatch.setenv(deploy.MLFLOW_URI_ENV, f"postgresql+psycopg2://aras:secret@127.0.0.1:{port}/mlflow")
    assert cli.main(["settings"]) == 0  # says where things are without connecting, password hidden
    out = capsys.readouterr().out
    assert ["deployment", "postgres", "[environment", "ARAS_DEPLOY]"] in [line.split() for line in out.splitlines()]
    assert "[deploy/postgres/dagster.yaml]" in out and "aras:***@127.0.0.1" in out and "secret" not in out
    assert cli.main(["run", "--profile", "demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: PostgreSQL at 127.0.0.1:{port} (ARAS_DAGSTER_PG_URL) is unreachable or refused")
    assert err.count("\n") == 1 and "secret" not in err and not (tmp_path / "home").exists()
