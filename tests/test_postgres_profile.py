"""The Postgres deployment against a real PostgreSQL server: the Dagster instance records real
runs, four partition runs at once (four processes) leave every record exactly once, and MLflow's
backend store keeps runs, registered versions and one champion.

The server: `ARAS_TEST_PG_URL` (`.ci/run` starts one), else a throwaway one started here
(tests/pg_server.py). Without PostgreSQL the tests skip, unless `ARAS_REQUIRE_POSTGRES=1` (CI),
where they fail."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import backfill_worker
import dagster as dg
import pg_server
import polars as pl
import pytest
import torch
from servers import free_port

from aras_assets import deploy
from aras_assets.instance import ensure_dagster_home
from aras_assets.sources.assets import ASSETS, tile_catalog

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


def test_real_runs_of_four_partitions_at_once_are_recorded_once(postgres_deploy: Path, resources: dict,
                                                                 data_root: Path, sample_region: Path) -> None:
    """The catalog's run, then four partition runs at once, each in its own process with its own
    instance, on one database and one data root: every run and record is there exactly once."""
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["backfill_worker"])  # imported once, then each worker forks from it
    start, results = context.Barrier(len(TILES) + 1), context.Queue()
    workers = [context.Process(target=backfill_worker.backfill_one,
                               args=(str(postgres_deploy), t, TILES, str(data_root), str(sample_region), start, results))
               for t in TILES]
    try:
        with dg.DagsterInstance.from_config(str(postgres_deploy)) as instance:  # creates the tables, once
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
            for w in workers:  # they start (import, open their instance) while the catalog runs
                w.start()
            catalog = dg.materialize(ASSETS, selection=[tile_catalog], resources=resources, instance=instance)
        start.wait(timeout=120)  # all go together
        finished = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.exitcode is None:
                w.kill()
    assert [w.exitcode for w in workers] == [0] * len(TILES)
    assert sorted(t for t, _, ok in finished if ok) == TILES

    with dg.DagsterInstance.from_config(str(postgres_deploy)) as instance:
        runs = instance.get_run_records(dg.RunsFilter(run_ids=[catalog.run_id, *(run_id for _, run_id, _ in finished)]))
        assert sorted(r.dagster_run.status.value for r in runs) == ["SUCCESS"] * (len(TILES) + 1)
        latest = instance.get_latest_materialization_event(dg.AssetKey("tile_catalog"))
        assert latest is not None and latest.run_id == catalog.run_id
        assert sorted(instance.get_dynamic_partitions("s2_tile")) == TILES  # each registered once
        records = instance.fetch_materializations(dg.AssetKey("real_patches"), limit=100).records
        assert Counter(r.partition_key for r in records) == dict.fromkeys(TILES, 1)
        by_run = {r.partition_key: r.run_id for r in records}
        assert by_run == {t: run_id for t, run_id, _ in finished}
        patches = {r.partition_key: r.asset_materialization.metadata["patches"].value for r in records}
    # the Kubernetes instance config reads the same database (its run launcher needs a cluster: not built here)
    k8s_home = postgres_deploy.parent / "k8s_home"
    k8s_home.mkdir()
    shutil.copyfile(deploy.INSTANCE_CONFIGS["k8s"], k8s_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(k8s_home)) as instance:
        assert instance.get_run_record_by_id(catalog.run_id) is not None
    manifests = pl.concat([pl.read_parquet(data_root / "patches" / t / "manifest.parquet") for t in TILES])
    assert sum(patches.values()) == manifests.height
    assert manifests.height > 40 and manifests["patch_id"].n_unique() == manifests.height
    assert sorted(p.name for p in (data_root / "patches").iterdir()) == TILES  # no staging left


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
