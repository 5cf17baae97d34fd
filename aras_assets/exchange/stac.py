"""A static STAC Collection of an export: one Item per real patch, written as JSON files
(pystac, self-contained) and as one stac-geoparquet file of the same items for scale.

Why one Item per patch: a patch is the unit people search, train and cite (its footprint, split,
mask and captions), and an Item is where STAC puts a footprint, a split (ml-aoi) and label
statistics. ARAS400k's 100,240 real patches give 100,240 Items (the JSON tree is ~1 GB of
small files; the geoparquet file holds them in one file of a few tens of MB, which is what
pystac-client / DuckDB / TorchGeo users read at that scale). A per-tile Item would hide the
split and the class counts of each patch. The 300,000 synthetic images have no place on Earth:
they are described by the Collection (and the Croissant record sets), not as Items.

Extensions: projection (CRS, shape, transform), label (raster classes and pixel counts), ml-aoi
(split and asset roles), classification (mask colours). Assets point at the image, mask and
caption files as the zips unpack in place; links name the source S2 and WorldCover tiles."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl

from aras_assets import layout
from aras_assets.exchange import release as rl
from aras_assets.grid import CRS, PIXEL_DEG
from aras_assets.ids import PATCH_SIZE
from aras_assets.landcover import CLASSES

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
LABEL = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
ML_AOI = "https://stac-extensions.github.io/ml-aoi/v0.2.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
ITEM_EXTENSIONS = [PROJECTION, LABEL, ML_AOI, CLASSIFICATION]
COLLECTION_ID = "aras"
# WorldCover 2021 v200 and its S2 composite are 2021 products.
START, END = dt.datetime(2021, 1, 1, tzinfo=dt.UTC), dt.datetime(2021, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
PX_COLUMNS = [f"px_{c.name.replace('-', '_')}" for c in CLASSES]
# Where the item JSON files lie relative to the export root (stac/<item>/<item>.json).
TO_ROOT = "../../"


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def classification_classes() -> list[dict]:
    return [{"value": c.index, "name": c.name.replace("-", "_"), "description": c.name,
             "color_hint": "".join(f"{v:02X}" for v in c.colour)} for c in CLASSES]


def item_dict(row: dict, caption_file: str | None) -> dict:
    """The STAC Item of one patch (a plain dict: the same for the JSON tree and the geoparquet)."""
    w, s, e, n = row["lon_min"], row["lat_min"], row["lon_max"], row["lat_max"]
    split = row["split"]
    image, mask = f"{split}/{rl.IMAGES}/{row['patch_id']}{rl.PNG}", f"{split}/{rl.MASKS}/{row['patch_id']}{rl.PNG}"
    counts = [{"name": c.name, "count": int(row[col])} for c, col in zip(CLASSES, PX_COLUMNS, strict=True)]
    assets = {
        "image": {"href": TO_ROOT + image, "type": "image/png", "title": "RGB image (S2 bands 4, 3, 2, 8-bit)",
                  "roles": ["data"], "ml-aoi:role": "feature"},
        "mask": {"href": TO_ROOT + mask, "type": "image/png", "title": "land-cover mask, RGB in the release's colours",
                 "roles": ["labels", "labels-raster"], "ml-aoi:role": "label",
                 "classification:classes": classification_classes()},
    }
    if caption_file:
        assets["captions"] = {"href": TO_ROOT + caption_file, "type": "text/csv", "roles": ["metadata"],
                              "title": f"captions of the {split} split (rows with image_name {row['patch_id']}.png)"}
    return {
        "type": "Feature", "stac_version": "1.1.0", "stac_extensions": ITEM_EXTENSIONS, "id": row["patch_id"],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {
            "datetime": None, "start_datetime": _iso(START), "end_datetime": _iso(END),
            "proj:code": CRS, "proj:shape": [PATCH_SIZE, PATCH_SIZE],
            "proj:transform": [PIXEL_DEG, 0.0, w, 0.0, -PIXEL_DEG, n],
            "label:properties": None, "label:type": "raster", "label:tasks": ["segmentation"],
            "label:methods": ["automated"],
            "label:description": "ESA WorldCover 2021 v200 remapped to 7 classes",
            "label:classes": [{"name": None, "classes": [c.name for c in CLASSES]}],
            "label:overviews": [{"property_key": None, "counts": counts}],
            "ml-aoi:split": split,
            "aras:s2_tile": row["s2_tile"], "aras:wc_tile": row["wc_tile"], "aras:row": row["row"], "aras:col": row["col"],
            "aras:window": [row["x_off"], row["y_off"], row["width"], row["height"]],
            "aras:image_sha256": row["image_sha256"], "aras:mask_sha256": row["mask_sha256"],
        },
        "links": [
            {"rel": "derived_from", "href": row["s2_uri"], "type": "image/tiff; application=geotiff; profile=cloud-optimized",
             "title": f"Sentinel-2 RGBNIR tile {row['s2_tile']}"},
            {"rel": "derived_from", "href": row["wc_uri"], "type": "image/tiff; application=geotiff; profile=cloud-optimized",
             "title": f"WorldCover tile {row['wc_tile']}"},
        ],
        "assets": assets,
    }


def _collection(patches: pl.DataFrame, synthetic: int) -> dict:
    bbox = [patches["lon_min"].min(), patches["lat_min"].min(), patches["lon_max"].max(), patches["lat_max"].max()] \
        if patches.height else [-180.0, -90.0, 180.0, 90.0]
    counts = {s: patches.filter(pl.col("split") == s).height for s in rl.SPLITS}
    return {
        "type": "Collection", "stac_version": "1.1.0", "stac_extensions": [LABEL, CLASSIFICATION],
        "id": COLLECTION_ID, "title": "ARAS synthetic-augmented land-cover dataset",
        "description": (f"256x256 Sentinel-2 RGB patches with 7-class WorldCover masks ({patches.height} real patches: "
                        f"{counts['train']} train, {counts['val']} val, {counts['test']} test) and {synthetic} synthetic "
                        "images with masks (synth.zip, not Items: they have no footprint). One Item per real patch."),
        "license": "CC-BY-4.0",
        "extent": {"spatial": {"bbox": [bbox]},
                   "temporal": {"interval": [[_iso(START), _iso(END)]]}},
        "summaries": {"ml-aoi:split": list(rl.SPLITS), "proj:code": [CRS],
                      "label:classes": [{"name": None, "classes": [c.name for c in CLASSES]}],
                      "classification:classes": classification_classes()},
        "assets": {z: {"href": f"../{z}", "type": "application/zip", "roles": ["data"], "title": f"{z[:-4]} images and masks"}
                   for z in (*(rl.zip_name(s) for s in rl.SPLITS), rl.zip_name(rl.SYNTH))},
        "links": [],
    }


def write_stac(out: Path, root: Path, json_items: bool = True) -> int:
    """stac/collection.json (+ one JSON per item when `json_items`) and stac/items.parquet; returns the item count."""
    import pystac
    import stac_geoparquet.arrow as sga

    patches = pl.read_csv(out / rl.PATCHES_CSV, infer_schema_length=0)
    patches = patches.with_columns([pl.col(c).cast(pl.Float64) for c in ("lon_min", "lat_min", "lon_max", "lat_max")]
                                   + [pl.col(c).cast(pl.Int64) for c in ("row", "col", "x_off", "y_off", "width", "height")])
    px = pl.concat([pl.read_parquet(p, columns=["patch_id", *PX_COLUMNS]) for p in sorted(root.glob(layout.PATCH_MANIFESTS))])
    patches = patches.join(px, on="patch_id", how="left").sort("patch_id")
    synthetic = pl.read_csv(out / rl.SYNTHETIC_CSV, infer_schema_length=0).height
    stac_dir = out / rl.STAC_DIR
    stac_dir.mkdir()
    items = [item_dict(r, f"{r['split']}/{rl.CAPTION_CSV}") for r in patches.iter_rows(named=True)]
    collection = pystac.Collection.from_dict(_collection(patches, synthetic))
    if json_items:
        for d in items:
            collection.add_item(pystac.Item.from_dict(d, preserve_dict=True))
    collection.normalize_hrefs(str(stac_dir))
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, dest_href=str(stac_dir))
    if items:
        table = sga.parse_stac_items_to_arrow([{**d, "collection": COLLECTION_ID} for d in items])
        sga.to_parquet(table, stac_dir / rl.STAC_PARQUET)
    return len(items)


# Offline validation. pystac ships the core STAC 1.1.0 JSON schemas (item, collection, catalog and
# the GeoJSON ones) but not the extensions' schemas, which live on stac-extensions.github.io. So the
# core is validated against pystac's copies with jsonschema, and the extension fields this module
# writes are checked against the constraints below (what each extension's schema requires of them).
_STR_LIST = {"type": "array", "items": {"type": "string"}, "minItems": 1}
EXTENSION_FIELDS: dict[str, dict] = {
    PROJECTION: {"required": ["proj:code", "proj:shape", "proj:transform"], "properties": {
        "proj:code": {"type": "string", "pattern": "^[A-Z]+:[0-9]+$"},
        "proj:shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
        "proj:transform": {"type": "array", "items": {"type": "number"}, "minItems": 6, "maxItems": 9}}},
    LABEL: {"required": ["label:properties", "label:description", "label:type", "label:classes"], "properties": {
        "label:properties": {"type": ["array", "null"]}, "label:description": {"type": "string"},
        "label:type": {"enum": ["vector", "raster"]}, "label:tasks": _STR_LIST, "label:methods": _STR_LIST,
        "label:classes": {"type": "array", "items": {"type": "object", "required": ["name", "classes"], "properties": {
            "name": {"type": ["string", "null"]}, "classes": {"type": "array", "items": {"type": ["string", "integer"]}}}}},
        "label:overviews": {"type": "array", "items": {"type": "object", "properties": {
            "property_key": {"type": ["string", "null"]},
            "counts": {"type": "array", "items": {"type": "object", "required": ["name", "count"], "properties": {
                "name": {"type": "string"}, "count": {"type": "integer", "minimum": 0}}}}}}}}},
    ML_AOI: {"required": ["ml-aoi:split"], "properties": {"ml-aoi:split": {"enum": ["train", "validate", "val", "test"]}}},
}
_ASSET_FIELDS = {
    "ml-aoi:role": {"enum": ["label", "feature"]},
    "classification:classes": {"type": "array", "items": {"type": "object", "required": ["value"], "properties": {
        "value": {"type": "integer"}, "name": {"type": "string", "pattern": "^[0-9A-Za-z-_]+$"},
        "color_hint": {"type": "string", "pattern": "^([0-9A-Fa-f]{6})$"}}}},
}


class StacValidationError(ValueError):
    """A STAC document that breaks the core schema or an extension's field rules."""


def _core_validator(kind: str):  # -> jsonschema.Draft7Validator
    import jsonschema
    from pystac.validation.local_validator import get_local_schema_cache
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    cache = get_local_schema_cache()
    registry = Registry().with_resources((uri, Resource.from_contents(s, default_specification=DRAFT7))
                                         for uri, s in cache.items())
    uri = next(u for u in cache if u.endswith(f"/{kind}-spec/json-schema/{kind}.json"))
    return jsonschema.Draft7Validator(cache[uri], registry=registry)


def _check(validator: object, doc: dict, where: str) -> None:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))  # type: ignore[attr-defined]
    if errors:
        e = errors[0]
        raise StacValidationError(f"{where}: {e.message} at {'/'.join(map(str, e.path)) or 'top level'}")


def validate_stac(stac_dir: Path) -> int:
    """Validate the collection and every item JSON under `stac_dir` offline; returns the item count."""
    import jsonschema

    collection_path = stac_dir / "collection.json"
    _check(_core_validator("collection"), json.loads(collection_path.read_text()), str(collection_path))
    item_core = _core_validator("item")
    ext = {uri: jsonschema.Draft7Validator({"type": "object", **rules}) for uri, rules in EXTENSION_FIELDS.items()}
    assets = jsonschema.Draft7Validator({"type": "object", "properties": _ASSET_FIELDS})
    n = 0
    for path in sorted(stac_dir.glob("*/*.json")):
        doc = json.loads(path.read_text())
        _check(item_core, doc, str(path))
        for uri in doc.get("stac_extensions", []):
            if uri in ext:
                _check(ext[uri], doc["properties"], f"{path} ({uri})")
        for name, asset in doc["assets"].items():
            _check(assets, asset, f"{path} asset {name}")
        n += 1
    return n
