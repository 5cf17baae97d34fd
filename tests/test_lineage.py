"""Lineage audit on hand-made manifests: known-answer chains for real, unconditional and
conditional captions, bad ids and manifests, batch mode, the CLI and the completeness check."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl
import pytest

from aras_assets.captions.captioning import CAPTION_SCHEMA
from aras_assets.cli import main
from aras_assets.generation.manifest import SYNTHETIC_SCHEMA
from aras_assets.operations.checks import CHECKS, lineage_complete
from aras_assets.operations.lineage import LineageError, broken_chains, format_trace, trace, trace_many
from aras_assets.segmentation.labeler import LABEL_COUNT_COLUMNS, LABEL_SCHEMA
from aras_assets.sources.patches import CLASS_COUNT_COLUMNS, MANIFEST_SCHEMA
from resources import MlflowResource, StorageResource

DEG = 12000  # pixels per degree on the S2 / WorldCover grid
S2_URI = "s3://esa-worldcover-s2/rgbnir/2021/N36/ESA_WorldCover_10m_2021_v200_N36E027_S2RGBNIR.tif"
WC_URI = "s3://esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_N36E027_Map.tif"
# Registered versions the hand-made manifests name.
REGISTERED = {"aras-gan-uncond": {"1", "2"}, "aras-gan-cond": {"1"}, "aras-segmentation-pan": {"1", "2", "3"}}


def patch_row(tile: str, row: int, col: int) -> dict:
    # N36E027 and N38E029 both sit in WorldCover tile N36E027 (north edge at 39 N).
    lon0, lat_top = int(tile[4:7]), int(tile[1:3]) + 1
    x, y = col * 256, row * 256
    pid = f"{tile}_{row:03d}_{col:03d}"
    return {
        "patch_id": pid, "s2_tile": tile, "wc_tile": "N36E027", "row": row, "col": col, "x_off": x, "y_off": y,
        "width": 256, "height": 256, "wc_x_off": (lon0 - 27) * DEG + x, "wc_y_off": (39 - lat_top) * DEG + y,
        "lon_min": lon0 + x / DEG, "lat_min": lat_top - (y + 256) / DEG, "lon_max": lon0 + (x + 256) / DEG,
        "lat_max": lat_top - y / DEG, "s2_uri": S2_URI.replace("N36E027", tile).replace("/N36/", f"/{tile[:3]}/"),
        "wc_uri": WC_URI, "image_path": f"patches/{tile}/images/{pid}.png", "mask_path": f"patches/{tile}/masks/{pid}.png",
        "image_sha256": "a" * 64, "mask_sha256": "b" * 64, "normalization": "per_patch_max",
        **{c: 65536 // len(CLASS_COUNT_COLUMNS) for c in CLASS_COUNT_COLUMNS},
    }


def image_row(origin: str, shard: str, index: int, version: str, cond_patch: str | None = None) -> dict:
    image_id = f"{origin}_{shard}_{index:05d}"
    return {
        "image_id": image_id, "origin": origin, "shard": shard, "index": index, "seed": 1000 + index,
        "truncation_psi": 0.7, "model_name": f"aras-gan-{origin}", "model_version": version,
        "mlflow_run_id": f"run-{origin}", "conditioning_patch_id": cond_patch, "variant": index % 2, "batch_start": 0,
        "batch_size": 16, "device": "cuda", "precision": "bf16", "resolution": 256,
        "image_path": f"synthetic/{origin}/{shard}/images/{image_id}.png",
        "mask_path": None if origin == "uncond" else f"patches/N36E027/masks/{cond_patch}.png",
        "content_sha256": "c" * 64, "dagster_run_id": f"dagster-{origin}-{shard}", "generator_code": "0123456789abcdef",
    }


def caption_rows(image_id: str, origin: str) -> list[dict]:
    return [{"caption_id": f"{image_id}_{mode}_{k}", "image_id": image_id, "origin": origin, "mode": mode,
             "caption_index": k, "backend": "offline", "model": "aras-offline", "prompt_hash": f"hash-{mode}",
             "seed": 42 + k, "text": f"A {mode} caption {k} of {image_id}."}
            for mode in ("text", "vision", "hybrid") for k in range(2)]


def write(frame_rows: list[dict], schema: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(frame_rows, schema=schema, orient="row").write_parquet(path)
    return path


def build_dataset(root: Path) -> Path:
    write([patch_row("N36E027", r, c) for r, c in ((0, 0), (0, 1), (1, 0))], MANIFEST_SCHEMA,
          root / "patches/N36E027/manifest.parquet")
    write([patch_row("N38E029", 2, 3)], MANIFEST_SCHEMA, root / "patches/N38E029/manifest.parquet")
    write([image_row("uncond", "0000", i, "2") for i in range(2)], SYNTHETIC_SCHEMA,
          root / "synthetic/uncond/0000/manifest.parquet")
    write([image_row("uncond", "0001", 0, "1")], SYNTHETIC_SCHEMA, root / "synthetic/uncond/0001/manifest.parquet")
    write([image_row("cond", "N36E027", 0, "1", "N36E027_000_001")], SYNTHETIC_SCHEMA,
          root / "synthetic/cond/N36E027/manifest.parquet")
    labels = [{"image_id": f"uncond_0000_{i:05d}", "image_path": f"synthetic/uncond/0000/images/uncond_0000_{i:05d}.png",
               "mask_path": f"labels/uncond_labels/0000/masks/uncond_0000_{i:05d}.png",
               "model_name": "aras-segmentation-pan", "model_version": "3", "arch": "pan", "encoder": "resnet34",
               "height": 256, "width": 256, "mask_sha256": "d" * 64, **{c: 0 for c in LABEL_COUNT_COLUMNS}}
              for i in range(2)]
    write(labels, LABEL_SCHEMA, root / "labels/uncond_labels/0000/manifest.parquet")
    record = root / "models/segmentation/pan/model.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"model_name": "aras-segmentation-pan", "model_version": "3", "mlflow_run_id": "run-seg"}))
    write(caption_rows("N36E027_000_001", "real") + caption_rows("N36E027_001_000", "real"), CAPTION_SCHEMA,
          root / "captions/real/N36E027/captions.parquet")
    write(caption_rows("uncond_0000_00000", "uncond") + caption_rows("uncond_0000_00001", "uncond"), CAPTION_SCHEMA,
          root / "captions/uncond/0000/captions.parquet")
    write(caption_rows("cond_N36E027_00000", "cond"), CAPTION_SCHEMA, root / "captions/cond/N36E027/captions.parquet")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_dataset(tmp_path / "data")


class FakeMlflow:
    """Lists registered versions as MlflowClient.search_model_versions does."""

    def __init__(self, registered: dict[str, set[str]]) -> None:
        self.registered = registered

    def search_model_versions(self, filter_string: str) -> list[SimpleNamespace]:
        name = filter_string.split("'")[1]
        return [SimpleNamespace(name=name, version=v) for v in sorted(self.registered.get(name, ()))]


def test_real_caption_chain(root: Path) -> None:
    t = trace(root, "N36E027_000_001_vision_1")
    assert (t["kind"], t["origin"], t["image_id"], t["image"], t["labels"]) == ("caption", "real", "N36E027_000_001", None, None)
    c = t["caption"]
    assert (c["mode"], c["caption_index"], c["seed"], c["prompt_hash"]) == ("vision", 1, 43, "hash-vision")
    assert (c["backend"], c["model"], c["text"]) == ("offline", "aras-offline", "A vision caption 1 of N36E027_000_001.")
    assert c["manifest"] == "captions/real/N36E027/captions.parquet"
    p = t["patch"]
    assert (p["patch_id"], p["s2_tile"], p["wc_tile"], p["row"], p["col"]) == ("N36E027_000_001", "N36E027", "N36E027", 0, 1)
    assert p["window"] == {"x_off": 256, "y_off": 0, "width": 256, "height": 256}
    assert p["wc_window"] == {"x_off": 256, "y_off": 24000, "width": 256, "height": 256}
    assert p["bounds"] == pytest.approx({"lon_min": 27 + 256 / DEG, "lat_min": 37 - 256 / DEG,
                                         "lon_max": 27 + 512 / DEG, "lat_max": 37.0})
    assert (p["s2_uri"], p["wc_uri"]) == (S2_URI, WC_URI)
    assert p["manifest"] == "patches/N36E027/manifest.parquet"
    assert "dagster_runs" not in t
    text = format_trace(t)
    assert "S2 tile:    N36E027  x 256, y 0, 256x256 px" in text and WC_URI in text


def test_uncond_caption_chain(root: Path) -> None:
    t = trace(root, "uncond_0000_00001_hybrid_0")
    assert (t["origin"], t["image_id"], t["patch"]) == ("uncond", "uncond_0000_00001", None)
    image = t["image"]
    assert image["generator"] == {"model_name": "aras-gan-uncond", "model_version": "2", "mlflow_run_id": "run-uncond"}
    assert (image["seed"], image["truncation_psi"], image["shard"], image["index"]) == (1001, 0.7, "0000", 1)
    assert (image["conditioning_patch_id"], image["dagster_run_id"]) == (None, "dagster-uncond-0000")
    assert t["labels"] == {"mask_path": "labels/uncond_labels/0000/masks/uncond_0000_00001.png", "mask_sha256": "d" * 64,
                           "model_name": "aras-segmentation-pan", "model_version": "3", "mlflow_run_id": "run-seg",
                           "manifest": "labels/uncond_labels/0000/manifest.parquet"}
    assert "labeler aras-segmentation-pan v3 (MLflow run run-seg)" in format_trace(t)


def test_cond_caption_chain(root: Path) -> None:
    t = trace(root, "cond_N36E027_00000_text_1")
    assert (t["origin"], t["labels"]) == ("cond", None)
    assert t["image"]["generator"] == {"model_name": "aras-gan-cond", "model_version": "1", "mlflow_run_id": "run-cond"}
    assert t["image"]["conditioning_patch_id"] == "N36E027_000_001"
    assert t["patch"]["patch_id"] == "N36E027_000_001" and t["patch"]["window"]["x_off"] == 256
    assert "(conditioning mask)" in format_trace(t)


def test_patch_and_image_ids(root: Path) -> None:
    p = trace(root, "N38E029_002_003")
    assert (p["kind"], p["caption"], p["image"]) == ("patch", None, None)
    # N38E029 lies two degrees east and one north of its WorldCover tile's south-west corner.
    assert p["patch"]["wc_window"] == {"x_off": 2 * DEG + 768, "y_off": 512, "width": 256, "height": 256}
    assert p["patch"]["bounds"]["lon_min"] == pytest.approx(29 + 768 / DEG)
    i = trace(root, "uncond_0001_00000")
    assert (i["kind"], i["image"]["generator"]["model_version"], i["labels"]) == ("image", "1", None)  # not labelled yet
    assert "not labelled yet" in format_trace(i)
    c = trace(root, "cond_N36E027_00000")
    assert (c["kind"], c["patch"]["patch_id"]) == ("image", "N36E027_000_001")


def test_window_in_a_cropped_label_file_beside_manifests_without_it(tmp_path: Path) -> None:
    """Manifests now record where reading wc_uri finds the mask; older ones without the columns still trace."""
    root = build_dataset(tmp_path)
    rows = [patch_row("N36E027", r, c) | {"wc_file_x_off": 256 * c + 50, "wc_file_y_off": 256 * r + 7}
            for r, c in ((0, 0), (0, 1), (1, 0))]
    write(rows, MANIFEST_SCHEMA, root / "patches/N36E027/manifest.parquet")
    older = pl.read_parquet(root / "patches/N38E029/manifest.parquet").drop("wc_file_x_off", "wc_file_y_off")
    older.write_parquet(root / "patches/N38E029/manifest.parquet")
    cropped, old = trace_many(root, ["N36E027_001_000", "N38E029_002_003"])
    assert cropped["patch"]["wc_file_window"] == {"x_off": 50, "y_off": 256 + 7, "width": 256, "height": 256}
    assert "(in that file: x 50, y 263)" in format_trace(cropped)
    assert old["patch"]["wc_file_window"] is None and "in that file" not in format_trace(old)
    assert old["patch"]["wc_window"] == {"x_off": 2 * DEG + 768, "y_off": 512, "width": 256, "height": 256}


@pytest.mark.parametrize(("record_id", "message"), [
    ("N36E027_000_001_text_7", "caption N36E027_000_001_text_7 not found in"),
    ("N36E027_005_005", "patch N36E027_005_005 not found in"),
    ("uncond_0000_00009", "image uncond_0000_00009 not found in"),
    ("N37E028_000_000", "materialize real_patches[N37E028] first"),
    ("uncond_0007_00000_text_0", "materialize uncond_captions[0007] first"),
])
def test_unknown_ids(root: Path, record_id: str, message: str) -> None:
    with pytest.raises(LineageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        trace(root, record_id)


def test_unknown_id_names_the_manifest(root: Path) -> None:
    with pytest.raises(LineageError) as info:
        trace(root, "N36E027_005_005")
    assert str(root / "patches/N36E027/manifest.parquet") in str(info.value)


@pytest.mark.parametrize("record_id", ["hello", "N36E027_12_34", "uncond_0000_00000_poem_0", "cond_0000_00001",
                                       "uncond_0000_1", "", "x_text_0"])
def test_malformed_ids(root: Path, record_id: str) -> None:
    with pytest.raises(LineageError, match="is not a caption"):
        trace(root, record_id)


def test_broken_link_in_the_middle(root: Path) -> None:
    # The caption is there but its image's manifest row is gone.
    write([image_row("uncond", "0000", 0, "2")], SYNTHETIC_SCHEMA, root / "synthetic/uncond/0000/manifest.parquet")
    with pytest.raises(LineageError, match=r"image uncond_0000_00001 \(of caption uncond_0000_00001_text_0\) not found"):
        trace(root, "uncond_0000_00001_text_0")


def test_missing_manifest(root: Path) -> None:
    (root / "synthetic/cond/N36E027/manifest.parquet").unlink()
    with pytest.raises(LineageError) as info:
        trace(root, "cond_N36E027_00000_vision_0")
    assert str(root / "synthetic/cond/N36E027/manifest.parquet") in str(info.value)
    assert "does not exist" in str(info.value) and "cond_images[N36E027]" in str(info.value)


def test_corrupt_manifest_is_named(root: Path) -> None:
    bad = root / "patches/N38E029/manifest.parquet"
    bad.write_bytes(b"\x00garbage, not parquet\xff" * 50)
    with pytest.raises(LineageError) as info:
        trace(root, "N38E029_002_003")
    assert str(bad) in str(info.value) and "unreadable" in str(info.value)
    # In a batch scan over several manifests the bad one is still the one named.
    with pytest.raises(LineageError) as info:
        trace_many(root, ["N36E027_000_000", "N38E029_002_003"])
    assert str(bad) in str(info.value) and "N36E027/manifest" not in str(info.value)


def test_manifest_without_needed_column(root: Path) -> None:
    path = root / "patches/N38E029/manifest.parquet"
    pl.read_parquet(path).drop("s2_uri").write_parquet(path)
    with pytest.raises(LineageError, match="lacks column"):
        trace(root, "N38E029_002_003")


def test_batch_order_and_results(root: Path) -> None:
    ids = ["cond_N36E027_00000_hybrid_1", "N38E029_002_003", "uncond_0000_00000_text_0", "N36E027_001_000_vision_0",
           "uncond_0001_00000", "N38E029_002_003"]
    batch = trace_many(root, ids)
    assert [t["id"] for t in batch] == ids
    assert batch == [trace(root, i) for i in ids]
    assert [t["origin"] for t in batch] == ["cond", "real", "uncond", "real", "uncond", "real"]


def test_batch_lists_every_bad_id(root: Path) -> None:
    with pytest.raises(LineageError) as info:
        trace_many(root, ["N36E027_000_000", "nonsense", "N36E027_000_000_text_9", "also-bad"])
    assert "'nonsense'" in str(info.value) and "'also-bad'" in str(info.value)
    with pytest.raises(LineageError) as info:
        trace_many(root, ["N36E027_000_000_text_8", "N36E027_000_000_text_9"])
    assert "2 lineage problems" in str(info.value) and "text_8" in str(info.value) and "text_9" in str(info.value)


def test_dagster_run_ids(root: Path) -> None:
    @dg.asset(name="real_patches", partitions_def=dg.StaticPartitionsDefinition(["N36E027", "N38E029"]))
    def fake_patches() -> None:
        return None

    with dg.instance_for_test() as instance:
        first = dg.materialize([fake_patches], instance=instance, partition_key="N36E027").run_id
        latest = dg.materialize([fake_patches], instance=instance, partition_key="N36E027").run_id
        dg.materialize([fake_patches], instance=instance, partition_key="N38E029")
        t = trace(root, "N36E027_000_001_text_0", instance)
    assert first != latest
    assert t["dagster_runs"] == {"real_captions[N36E027]": None, "real_compositions[N36E027]": None,
                                 "real_patches[N36E027]": latest}
    assert f"real_patches[N36E027]: {latest}" in format_trace(t)


def test_cli_json_text_and_errors(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                  tmp_path: Path) -> None:
    monkeypatch.setenv("ARAS_DATA_ROOT", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance_here"))
    assert main(["lineage", "N36E027_000_001_text_0", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["patch"]["s2_uri"] == S2_URI and one == trace(root, "N36E027_000_001_text_0")
    ids = tmp_path / "ids.txt"
    ids.write_text("# ids to audit\nuncond_0000_00000_text_0\n\ncond_N36E027_00000\n")
    assert main(["lineage", "N38E029_002_003", "--file", str(ids), "--json", "--no-runs"]) == 0
    many = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in many] == ["N38E029_002_003", "uncond_0000_00000_text_0", "cond_N36E027_00000"]
    assert main(["lineage", "uncond_0000_00000_text_0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("caption uncond_0000_00000_text_0") and "generator:  aras-gan-uncond v2" in out
    for bad in ("not-an-id", "N36E027_009_009"):
        assert main(["lineage", bad, "--json"]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
        assert "Traceback" not in captured.err
    assert main(["lineage"]) == 1
    assert "no ids" in capsys.readouterr().err


def test_completeness_on_a_complete_dataset(root: Path) -> None:
    audit = broken_chains(root, FakeMlflow(REGISTERED))
    assert (audit["captions"], audit["synthetic_images"], audit["labelled_images"]) == (30, 4, 2)
    assert audit["broken_total"] == 0


def test_completeness_finds_broken_chains(root: Path) -> None:
    # A caption whose image is gone, a conditional image whose conditioning patch is gone,
    # an image of an unregistered generator version and a mask of an unregistered labeler.
    write([image_row("uncond", "0000", 0, "2")], SYNTHETIC_SCHEMA, root / "synthetic/uncond/0000/manifest.parquet")
    write([patch_row("N36E027", 0, 0), patch_row("N36E027", 1, 0)], MANIFEST_SCHEMA, root / "patches/N36E027/manifest.parquet")
    write([image_row("uncond", "0001", 0, "9")], SYNTHETIC_SCHEMA, root / "synthetic/uncond/0001/manifest.parquet")
    audit = broken_chains(root, FakeMlflow({**REGISTERED, "aras-segmentation-pan": {"1"}}), examples=2)
    broken = audit["broken"]
    # Captions of the missing image (6) and of the missing real patch N36E027_000_001 (6), and the
    # conditional image's captions, whose conditioning patch is that same missing patch (6).
    assert broken["caption_without_image"] == {"count": 12, "examples": [
        "N36E027_000_001_hybrid_0 (image N36E027_000_001)", "N36E027_000_001_hybrid_1 (image N36E027_000_001)"]}
    assert broken["caption_without_tile"]["count"] == 6
    assert broken["caption_without_tile"]["examples"][0] == "cond_N36E027_00000_hybrid_0 (image cond_N36E027_00000)"
    assert broken["image_without_model"] == {"count": 1, "examples": ["uncond_0001_00000 (generator aras-gan-uncond v9)"]}
    assert broken["mask_without_model"] == {"count": 2, "examples": [  # labelled by pan v3, now unregistered
        "uncond_0000_00000 (labeler aras-segmentation-pan v3)", "uncond_0000_00001 (labeler aras-segmentation-pan v3)"]}
    assert audit["broken_total"] == 12 + 6 + 1 + 2


def test_completeness_names_a_corrupt_manifest(root: Path) -> None:
    bad = root / "captions/cond/N36E027/captions.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(LineageError, match="unreadable") as info:
        broken_chains(root, FakeMlflow(REGISTERED))
    assert str(bad) in str(info.value)


def test_lineage_check_through_dagster(root: Path, tmp_path: Path) -> None:
    """The check on caption_eval, run by Dagster against a real MLflow registry (no training needed:
    registered versions only need a name and a source)."""
    assert lineage_complete in CHECKS
    assert dg.AssetCheckKey(dg.AssetKey("caption_eval"), "lineage_complete") in lineage_complete.check_keys
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "mlruns").as_uri())
    client = mlflow.client()
    for name, versions in REGISTERED.items():
        client.create_registered_model(name)
        for _ in versions:
            client.create_model_version(name, source=(tmp_path / "model").as_uri())
    # Break one chain: drop the second unconditional image of shard 0000.
    write([image_row("uncond", "0000", 0, "2")], SYNTHETIC_SCHEMA, root / "synthetic/uncond/0000/manifest.parquet")

    @dg.asset(name="caption_eval")
    def stub_caption_eval() -> None:
        return None

    result = dg.materialize([stub_caption_eval, lineage_complete],
                            resources={"storage": StorageResource(root=str(root)), "mlflow": mlflow})
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert (meta["captions"], meta["caption_without_image_count"], meta["image_without_model_count"]) == (30, 6, 0)
    assert meta["examples"]["caption_without_image"][0] == "uncond_0000_00001_hybrid_0 (image uncond_0000_00001)"
    assert evaluation.description == "6 caption without image"


def test_one_bad_id_among_many_costs_only_itself(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """Regression: one unknown id in a batch used to print nothing and exit 1."""
    monkeypatch.setenv("ARAS_DATA_ROOT", str(root))
    good = ["N36E027_000_001_text_0", "N38E029_002_003", "uncond_0000_00001", "cond_N36E027_00000"]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join([*good[:2], "N36E027_009_009", *good[2:], "not-an-id"]) + "\n")
    assert main(["lineage", "--file", str(ids), "--json", "--no-runs"]) == 1
    captured = capsys.readouterr()
    assert [t["id"] for t in json.loads(captured.out)] == good
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert "N36E027_009_009" in errors[0] and "not-an-id" in errors[1]


def test_rejected_patch_says_why(root: Path) -> None:
    """Regression: a patch dropped when its tile was cut was reported as not found."""
    write([{"patch_id": "N38E029_003_002", "reason": "water"}], {"patch_id": pl.String, "reason": pl.String},
          root / "patches/N38E029/rejected.parquet")
    with pytest.raises(LineageError, match=r"patch N38E029_003_002 was left out when tile N38E029 was cut: water"):
        trace(root, "N38E029_003_002")
    assert trace(root, "N38E029_002_003")["patch"]["patch_id"] == "N38E029_002_003"
