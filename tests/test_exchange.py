"""Dataset exchange: export in the ARAS400k release layout and import it back (lineage rebuilt),
MD5 tables, STAC and Croissant metadata, the dataset card, and each bad input refused."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from aras_assets import layout
from aras_assets.exchange import release as rl
from aras_assets.exchange.checksums import ChecksumError, md5_file, verify
from aras_assets.exchange.export import export_dataset
from aras_assets.exchange.importer import import_release, read_release
from aras_assets.grid import PIXEL_DEG, Footprint
from aras_assets.landcover import PALETTE, label_lut
from aras_assets.operations.lineage import format_trace, trace, trace_many
from aras_assets.sources.catalog import build_catalog
from aras_assets.sources.patches import PatchOptions, TileSource, materialize_tile
from aras_assets.sources.splits import assign_splits
from tests.helpers import write_pair

TILES = ("N38E029", "N40E031")  # in the WorldCover tiles N36E027 and N39E030
S2_TEMPLATE = "https://example.org/s2/{lat_band}/{tile}.tif"
WC_TEMPLATE = "https://example.org/wc/{tile}.tif"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _captions(image_ids: list[str], origin: str) -> pl.DataFrame:
    from aras_assets.captions.captioning import CAPTION_SCHEMA

    pairs = (("text", "Qwen3-4B-Instruct", "qwen3-4b-instruct"), ("hybrid", "Gemma3-4B-it", "gemma3-4b-it"))
    rows = [{"caption_id": f"{i}_{mode}_{slug}_0", "image_id": i, "origin": origin, "mode": mode, "model": model,
             "caption_index": 0, "backend": "openai", "served_model": f"org/{model}", "prompt_hash": "abc123",
             "sampling": '{"n": 1, "temperature": 0.7}', "seed": 7,
             "text": f"A scene, {i}, \"quoted\", with commas,\nin {mode} mode."}
            for i in image_ids for mode, model, slug in pairs]
    return pl.DataFrame(rows, schema=CAPTION_SCHEMA)


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root cut from two tiny tile pairs (4 patches each), with splits, captions and synthetic images."""
    base = tmp_path_factory.mktemp("exchange")
    tiles, root = base / "tiles", base / "data"
    tiles.mkdir()
    rng = np.random.default_rng(0)
    for k, tile in enumerate(TILES):
        codes = rng.choice(np.array([10, 20, 30, 40, 50, 60, 80], dtype=np.uint8), size=(512, 512))
        codes[:, : 200 + 50 * k] = 30
        refl = rng.integers(1, 4000, size=(4, 512, 512), dtype=np.uint16)
        write_pair(tiles, tile, codes, refl)
    catalog = build_catalog(Footprint(27.0, 36.0, 33.0, 42.0), str(tiles), tiles, "", "")
    opts = PatchOptions(label_lut(), workers=1)
    for entry in catalog.iter_rows(named=True):
        source = TileSource(entry["s2_tile"], entry["s2_uri"], entry["wc_tile"], entry["wc_uri"])
        rel = layout.patches_dir(entry["s2_tile"])
        materialize_tile(source, opts, root / rel, rel.as_posix())
    manifests = pl.concat([pl.read_parquet(root / layout.patch_manifest(t)) for t in TILES])
    splits = assign_splits(manifests, "random", (0.5, 0.25, 0.25), 1, 3)
    assert set(splits["split"]) == set(rl.SPLITS)
    (root / "splits").mkdir()
    splits.write_parquet(root / layout.SPLITS)
    for tile in TILES:
        ids = pl.read_parquet(root / layout.patch_manifest(tile))["patch_id"].to_list()
        folder = root / layout.captions_dir(layout.REAL, tile)
        folder.mkdir(parents=True)
        _captions(ids, layout.REAL).write_parquet(folder / layout.CAPTIONS)
    # two unconditional images (32 px) with their masks, one conditional image
    from aras_assets.generation.manifest import SYNTHETIC_SCHEMA

    for origin, shard, cond in ((layout.UNCOND, "0000", None), (layout.COND, TILES[0], manifests["patch_id"][0])):
        folder = root / layout.synthetic_dir(origin, shard)
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        rows = []
        for index in range(2 if origin == layout.UNCOND else 1):
            image_id = f"{origin}_{shard}_{index:05d}"
            image = _png(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8))
            (folder / "images" / f"{image_id}.png").write_bytes(image)
            (folder / "masks" / f"{image_id}.png").write_bytes(_png(PALETTE[rng.integers(0, 7, size=(32, 32))]))
            rows.append({"image_id": image_id, "origin": origin, "shard": shard, "index": index, "seed": 100 + index,
                         "model_name": f"aras-gan-{origin}", "model_version": "1", "conditioning_patch_id": cond,
                         "image_path": f"{layout.synthetic_dir(origin, shard).as_posix()}/images/{image_id}.png",
                         "mask_path": f"{layout.synthetic_dir(origin, shard).as_posix()}/masks/{image_id}.png",
                         "content_sha256": hashlib.sha256(image).hexdigest()})
        frame = pl.DataFrame(rows, schema={k: SYNTHETIC_SCHEMA[k] for k in rows[0]})
        frame.match_to_schema(SYNTHETIC_SCHEMA, missing_columns="insert").write_parquet(folder / layout.MANIFEST)
    folder = root / layout.captions_dir(layout.UNCOND, "0000")
    folder.mkdir(parents=True)
    _captions(["uncond_0000_00000"], layout.UNCOND).write_parquet(folder / layout.CAPTIONS)
    return root


@pytest.fixture(scope="module")
def exported(source_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "aras"
    export_dataset(source_root, out)
    return out


def test_export_layout_and_determinism(source_root: Path, exported: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted([*(rl.zip_name(f) for f in rl.FOLDERS), rl.MD5_TABLE, rl.MD5_SUMS, rl.CARD, rl.CROISSANT,
                            rl.STAC_DIR, rl.PATCHES_CSV, rl.SYNTHETIC_CSV, rl.CAPTIONS_CSV])
    splits = pl.read_parquet(source_root / layout.SPLITS)
    with zipfile.ZipFile(exported / "train.zip") as zf:
        listed = zf.namelist()
        assert all(i.date_time == rl.ZIP_DATE for i in zf.infolist())
        pct = pl.read_csv(io.BytesIO(zf.read("train/class_percentages.csv")))
    train = splits.filter(pl.col("split") == "train")["patch_id"].sort().to_list()
    assert [n for n in listed if n.startswith("train/images/")] == [f"train/images/{p}.png" for p in train]
    assert pct.columns[0] == "image_name" and pct.height == len(train)
    assert np.allclose(pct.drop("image_name").sum_horizontal().to_numpy(), 100.0, atol=0.01)
    again = tmp_path / "again"
    export_dataset(source_root, again)
    for name in (*(rl.zip_name(f) for f in rl.FOLDERS), rl.CROISSANT, rl.MD5_SUMS, rl.CARD):
        assert (again / name).read_bytes() == (exported / name).read_bytes(), name


def test_round_trip_ids_pixels_splits_captions_and_lineage(source_root: Path, exported: Path, tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    import_release(exported, root, S2_TEMPLATE, WC_TEMPLATE)
    for tile in TILES:
        before = pl.read_parquet(source_root / layout.patch_manifest(tile))
        after = pl.read_parquet(root / layout.patch_manifest(tile))
        assert after["patch_id"].to_list() == before["patch_id"].to_list()
        same = ["row", "col", "x_off", "y_off", "width", "height", "wc_tile", "wc_x_off", "wc_y_off", "image_sha256",
                "mask_sha256", *[c for c in before.columns if c.startswith("px_")]]
        assert after.select(same).equals(before.select(same))
        for c in ("lon_min", "lat_min", "lon_max", "lat_max"):
            assert np.allclose(after[c].to_numpy(), before[c].to_numpy(), atol=1e-12, rtol=0)
        for rel in after["image_path"]:
            assert (root / rel).read_bytes() == (source_root / rel).read_bytes()
    assert pl.read_parquet(root / layout.SPLITS).select("patch_id", "split").sort("patch_id").equals(
        pl.read_parquet(source_root / layout.SPLITS).select("patch_id", "split").sort("patch_id"))
    def captions(r: Path) -> pl.DataFrame:
        return pl.concat([pl.read_parquet(p) for p in sorted(r.glob(layout.CAPTION_FILES))]).sort("caption_id")
    assert captions(root).equals(captions(source_root))
    # lineage traces imported records: a caption to its patch, window and tiles; a synthetic image without seed
    pid = pl.read_parquet(root / layout.patch_manifest(TILES[0]))["patch_id"][0]
    record = trace(root, f"{pid}_text_qwen3-4b-instruct_0")
    assert record["patch"]["s2_uri"] == S2_TEMPLATE.format(lat_band=pid[:3], tile=pid[:7])
    assert record["patch"]["wc_tile"] == "N36E027" and record["patch"]["normalization"] == layout.IMPORTED
    uncond, cond = trace_many(root, ["uncond_0000_00001", "cond_N38E029_00000"])
    assert uncond["image"]["seed"] is None and "no seed" in format_trace(uncond)
    assert cond["patch"]["patch_id"] == pl.read_parquet(source_root / layout.synthetic_manifest("cond", TILES[0]))[
        "conditioning_patch_id"][0]


def test_release_named_folder_imports_with_windows_and_bounds(tmp_path: Path) -> None:
    """Files named as the release's patch script names them: {tile}_{i:03d}_{j:03d}.png, unzipped."""
    rel = tmp_path / "ARAS400k"
    rng = np.random.default_rng(1)
    placed = {"train": [("N37E028", 0, 0), ("N37E028", 45, 12)], "val": [("S01W002", 3, 7)], "test": [("N37E028", 2, 1)]}
    for split, names in placed.items():
        for tile, i, j in names:
            for sub, arr in (("images", rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)),
                             ("masks", PALETTE[rng.integers(0, 7, (256, 256))])):
                (rel / split / sub).mkdir(parents=True, exist_ok=True)
                (rel / split / sub / f"{tile}_{i:03d}_{j:03d}.png").write_bytes(_png(arr))
    root = tmp_path / "data"
    import_release(rel, root, S2_TEMPLATE, WC_TEMPLATE)
    m = pl.read_parquet(root / layout.patch_manifest("N37E028")).sort("patch_id")
    row = m.filter(pl.col("patch_id") == "N37E028_045_012").row(0, named=True)
    assert (row["x_off"], row["y_off"], row["width"], row["height"]) == (12 * 256, 45 * 256, 256, 256)
    assert row["lon_min"] == pytest.approx(28 + 12 * 256 * PIXEL_DEG, abs=1e-12)
    assert row["lat_max"] == pytest.approx(38 - 45 * 256 * PIXEL_DEG, abs=1e-12)
    assert row["lat_min"] == pytest.approx(38 - 46 * 256 * PIXEL_DEG, abs=1e-12)
    # N37E028 lies in the WorldCover tile N36E027: one degree from its west edge, one from its north
    assert row["wc_tile"] == "N36E027" and (row["wc_x_off"], row["wc_y_off"]) == (12000 + 12 * 256, 12000 + 45 * 256)
    south = pl.read_parquet(root / layout.patch_manifest("S01W002")).row(0, named=True)
    assert south["wc_tile"] == "S03W003" and south["lon_min"] == pytest.approx(-2 + 7 * 256 * PIXEL_DEG, abs=1e-12)
    splits = dict(pl.read_parquet(root / layout.SPLITS).select("patch_id", "split").iter_rows())
    assert splits == {f"{t}_{i:03d}_{j:03d}": s for s, names in placed.items() for t, i, j in names}


def test_checksums_verify_and_a_flipped_byte_is_caught(exported: Path, tmp_path: Path) -> None:
    assert set(verify(exported)) >= {rl.zip_name(f) for f in rl.FOLDERS}
    if shutil.which("md5sum"):
        subprocess.run(["md5sum", "--quiet", "-c", rl.MD5_SUMS], cwd=exported, check=True)
    table = (exported / rl.MD5_TABLE).read_text()
    assert f"| train.zip | {md5_file(exported / 'train.zip')} |" in table
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    data = bytearray((copy / "val.zip").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "val.zip").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"val\.zip: MD5 [0-9a-f]{32} does not match"):
        read_release(copy)
    with pytest.raises(ChecksumError):
        import_release(copy, tmp_path / "never", S2_TEMPLATE, WC_TEMPLATE)
    assert not (tmp_path / "never").exists()


def test_stac_validates_offline_and_pystac_finds_every_item(source_root: Path, exported: Path) -> None:
    import pyarrow.parquet as pq
    import pystac
    import stac_geoparquet.arrow as sga

    from aras_assets.exchange.stac import validate_stac

    count = validate_stac(exported / rl.STAC_DIR)
    patches = pl.read_csv(exported / rl.PATCHES_CSV)
    assert count == patches.height
    collection = pystac.Collection.from_file(str(exported / rl.STAC_DIR / rl.STAC_COLLECTION))
    items = {i.id: i for i in collection.get_items(recursive=True)}
    assert sorted(items) == sorted(patches["patch_id"])
    item = items[patches["patch_id"][0]]
    assert item.properties["ml-aoi:split"] == patches["split"][0]
    assert Path(item.assets["mask"].get_absolute_href()).relative_to(exported.resolve()).as_posix() == patches["mask"][0]
    table = pq.read_table(exported / rl.STAC_DIR / rl.STAC_PARQUET)
    from_parquet = {d["id"]: d for d in sga.stac_table_to_items(table)}
    assert sorted(from_parquet) == sorted(items)
    assert from_parquet[item.id]["properties"]["ml-aoi:split"] == item.properties["ml-aoi:split"]


def test_croissant_validates_and_reads_back(exported: Path) -> None:
    import mlcroissant as mlc

    doc = json.loads((exported / rl.CROISSANT).read_text())
    assert doc["geocr:coordinateReferenceSystem"] == "EPSG:4326"
    md5 = {d["name"]: d.get("md5") for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    assert md5["train.zip"] == md5_file(exported / "train.zip")
    dataset = mlc.Dataset(jsonld=exported / rl.CROISSANT)
    record = next(iter(dataset.records(record_set="patches")))
    first = pl.read_csv(exported / rl.PATCHES_CSV).row(0, named=True)
    assert record["patches/patch_id"].decode() == first["patch_id"]
    assert record["patches/row"] == first["row"]


def test_card_front_matter_and_numbers(exported: Path) -> None:
    card = (exported / rl.CARD).read_text()
    front = card.split("---")[1]
    assert "license: cc-by-4.0" in front and "- image-segmentation" in front and "- n<1K" in front
    assert "| train | " in card and "lon_min" in card


def test_export_refuses_a_folder_that_is_not_empty(source_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(rl.ReleaseError, match=r"not empty.*--overwrite"):
        export_dataset(source_root, out)
    assert (out / "keep.txt").exists()
    export_dataset(source_root, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "train.zip").exists()


def _release(tmp_path: Path) -> Path:
    rel = tmp_path / "rel"
    for split, sub in (("train", "images"), ("train", "masks")):
        (rel / split / sub).mkdir(parents=True)
    image, mask = _png(np.zeros((256, 256, 3), np.uint8)), _png(PALETTE[np.zeros((256, 256), int)])
    for name in ("N37E028_000_000.png", "N37E028_000_001.png"):
        (rel / "train" / "images" / name).write_bytes(image)
        (rel / "train" / "masks" / name).write_bytes(mask)
    return rel


def _refused(rel: Path, root: Path, match: str) -> None:
    with pytest.raises(rl.ReleaseError, match=match):
        import_release(rel, root, S2_TEMPLATE, WC_TEMPLATE)
    assert not root.exists() or not any(root.rglob("*.parquet")), "a refused import wrote records"


def test_import_refuses_unpaired_files(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    (rel / "train" / "masks" / "N37E028_000_001.png").unlink()
    (rel / "train" / "masks" / "N37E028_004_004.png").write_bytes((rel / "train" / "masks" / "N37E028_000_000.png").read_bytes())
    _refused(rel, tmp_path / "data", r"2 files.*N37E028_000_001\.png has no mask.*N37E028_004_004\.png has no image")


def test_import_refuses_a_mask_colour_outside_the_palette(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    bad = PALETTE[np.zeros((256, 256), int)].copy()
    bad[5, 9] = (1, 2, 3)
    (rel / "train" / "masks" / "N37E028_000_001.png").write_bytes(_png(bad))
    _refused(rel, tmp_path / "data", r"N37E028_000_001\.png: colour \(1, 2, 3\) at pixel \(row 5, col 9\)")


def test_import_refuses_names_that_are_not_tile_row_col(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    for sub in ("images", "masks"):
        shutil.copy(rel / "train" / sub / "N37E028_000_000.png", rel / "train" / sub / "patch_17.png")
        shutil.copy(rel / "train" / sub / "N37E028_000_000.png", rel / "train" / sub / "N37E028_1_2.png")
    _refused(rel, tmp_path / "data", r"2 files.*N37E028_1_2\.png: name is not.*patch_17\.png: name is not")


def test_cli_export_and_import(source_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    from aras_assets.cli import main

    monkeypatch.setenv("ARAS_DATA_ROOT", str(source_root))
    out = tmp_path / "cli_export"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["export", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: export target {out} exists and is not empty")
    assert main(["export", str(out), "--overwrite"]) == 0
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("ARAS_DATA_ROOT", str(fresh))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["import", str(out), "--set", f"s2_uri_template={S2_TEMPLATE}"]) == 0
    assert sorted(p.parent.name for p in fresh.glob(layout.PATCH_MANIFESTS)) == sorted(TILES)
    capsys.readouterr()
    assert main(["lineage", "--no-runs", "N38E029_000_000_text_qwen3-4b-instruct_0", "uncond_0000_00000"]) == 0
    text = capsys.readouterr().out
    assert "S2 tile:    N38E029  x 0, y 0, 256x256 px  https://example.org/s2/N38/N38E029.tif" in text
    assert "imported from a release (imported); no seed" in text
    assert main(["import", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_release_tile_source_runs_the_later_stages_in_dagster(exported: Path, tmp_path: Path) -> None:
    """An imported export, re-materialized through Dagster with tile_source=release, then captioned,
    evaluated and exported again."""
    import dagster as dg

    from aras_assets.captions.assets import ASSETS as CAPTION_ASSETS
    from aras_assets.captions.assets import caption_eval, real_captions, real_compositions
    from aras_assets.exchange.assets import ASSETS as EXCHANGE_ASSETS
    from aras_assets.exchange.assets import dataset_export
    from aras_assets.sources.assets import ASSETS as SOURCE_ASSETS
    from aras_assets.sources.assets import real_patches, splits, tile_catalog
    from tests.conftest import make_resources

    root = tmp_path / "data"
    import_release(exported, root, S2_TEMPLATE, WC_TEMPLATE)
    before = {t: pl.read_parquet(root / layout.patch_manifest(t)) for t in TILES}
    resources = make_resources(root, Path(layout.RELEASE_SOURCE), s2_uri_template=S2_TEMPLATE, wc_uri_template=WC_TEMPLATE)
    with dg.instance_for_test() as instance:
        def run(selection: list, key: str | None = None) -> dg.ExecuteInProcessResult:
            return dg.materialize([*SOURCE_ASSETS, *CAPTION_ASSETS, *EXCHANGE_ASSETS], selection=selection,
                                  resources=resources, instance=instance, partition_key=key)

        run([tile_catalog])
        assert sorted(instance.get_dynamic_partitions("s2_tile")) == sorted(TILES)
        for tile in TILES:
            result = run([real_patches], tile)
            assert all(c.passed for c in result.get_asset_check_evaluations())
            assert pl.read_parquet(root / layout.patch_manifest(tile)).equals(before[tile])
        result = run([splits])
        assert all(c.passed for c in result.get_asset_check_evaluations())
        for tile in TILES:
            run([real_compositions, real_captions], tile)
        result = run([caption_eval, dataset_export])
    # the plan's captioner captions every imported patch (5 pairs x 1); the imported captions of another
    # configuration stay as a finished part beside them
    fresh = [pl.read_parquet(root / layout.captions_file(layout.REAL, t)) for t in TILES]
    assert [f.height for f in fresh] == [5 * before[t].height for t in TILES]
    assert set(pl.concat(fresh)["backend"]) == {"offline"}
    kept = pl.read_parquet(root / layout.captions_dir(layout.REAL, TILES[0]) / layout.PARTS / "part-imported.parquet")
    assert kept.height == 2 * before[TILES[0]].height and set(kept["backend"]) == {"openai"}
    meta = result.asset_materializations_for_node("caption_eval")[0].metadata
    assert meta["captions"].value == sum(f.height for f in fresh) + 2  # + the imported synthetic image's two
    assert (root / layout.EXPORT / "train.zip").is_file()
