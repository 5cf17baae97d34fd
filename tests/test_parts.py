"""The resumable parts writer and the MLflow run lifecycle, without Dagster or a tracking store."""

from pathlib import Path

import polars as pl
import pytest

from aras_assets.layout import PARTS
from aras_assets.mlflow_runs import ModelVersionRef, RunOrigin, move_alias, source_commit, tracked_run
from aras_assets.parts import PartsWriter

SCHEMA = {"row_id": pl.String, "key": pl.String, "value": pl.Int64, "note": pl.String}


def rows(keys: list[str], value: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"row_id": [f"{k}-{value}" for k in keys], "key": keys, "value": [value] * len(keys),
                         "note": ["x"] * len(keys)}, schema=SCHEMA)


def test_parts_writer_resumes_and_combines_in_order_once_each(tmp_path: Path) -> None:
    parts = PartsWriter(tmp_path, SCHEMA)
    assert parts.done("key") == set() and parts.read().height == 0
    parts.write(rows(["b", "c"], 1), "batch-1")
    parts.write(rows(["a", "b"], 0), "batch-0")  # "b" twice: the first part by name wins
    assert sorted(p.name for p in (tmp_path / PARTS).iterdir()) == ["batch-0.parquet", "batch-1.parquet"]
    assert parts.done("key") == {"a", "b", "c"}
    combined = parts.combine(["c", "a", "b"], "key", tmp_path / "all.parquet")
    assert combined["key"].to_list() == ["c", "a", "b"] and combined["value"].to_list() == [1, 0, 0]
    assert combined.columns == list(SCHEMA)
    assert pl.read_parquet(tmp_path / "all.parquet").equals(combined)
    assert parts.combine(["a"], "key", tmp_path / "a.parquet")["key"].to_list() == ["a"]  # keys outside `order` left out
    parts.remove("batch-1")
    assert parts.done("key") == {"a", "b"}


def test_parts_writer_combines_several_rows_per_key_and_reads_older_parts(tmp_path: Path) -> None:
    parts = PartsWriter(tmp_path, SCHEMA)
    parts.write(rows(["a", "b"], 1).drop("note"), "p0")  # written before the column existed
    parts.write(pl.concat([rows(["b"], 0), rows(["a"], 0), rows(["a"], 1)]), "p1")
    combined = parts.combine(["b", "a"], "key", tmp_path / "all.parquet", unique="row_id", then_by=["value"])
    assert combined.select("key", "value").rows() == [("b", 0), ("b", 1), ("a", 0), ("a", 1)]
    assert combined.filter(pl.col("value") == 1)["note"].to_list() == [None, None]  # from the older part


class FakeClient:
    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []
        self.aliases: dict[str, str] = {"aras-a": "1", "aras-b": "2"}

    def create_run(self, experiment_id: str, run_name: str, tags: dict) -> object:
        info = type("Info", (), {"run_id": f"run-{run_name}"})
        return type("Run", (), {"info": info})

    def log_param(self, run_id: str, key: str, value: object) -> None:
        pass

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.ended.append((run_id, status))

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        del self.aliases[name]

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[name] = version


@pytest.mark.parametrize("error", [None, RuntimeError, KeyboardInterrupt])
def test_tracked_run_ends_finished_or_failed(error: type[BaseException] | None) -> None:
    client = FakeClient()
    origin = RunOrigin("dagster-1", "segmentation_model", "splits-v", partition="unet")
    assert origin.run_tags(arch="unet") == {"dagster.run_id": "dagster-1", "dagster.asset_key": "segmentation_model",
                                            "dagster.partition": "unet", "aras.splits_version": "splits-v",
                                            "mlflow.source.git.commit": source_commit(), "aras.arch": "unet"}
    if error is None:
        with tracked_run(client, "0", None, "t", origin.run_tags(), {}) as run_id:
            assert run_id == "run-t"
        assert client.ended == [("run-t", "FINISHED")]
        return
    with pytest.raises(error), tracked_run(client, "0", None, "t", origin.run_tags(), {}):
        raise error()
    assert client.ended == [("run-t", "FAILED")]


def test_move_alias_leaves_only_the_chosen_version() -> None:
    client = FakeClient()
    move_alias(client, "champion", ModelVersionRef("aras-b", "3"), ["aras-a", "aras-b", "aras-c"])
    assert client.aliases == {"aras-b": "3"}
