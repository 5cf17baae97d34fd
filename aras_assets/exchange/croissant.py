"""croissant.json of an export (mlcroissant): the files with their MD5s (zips, CSVs), the image
and mask file sets inside the zips, and three record sets read from the top-level CSVs: real
patches with their lineage, synthetic images, captions. The geospatial facts follow the
Croissant-Geo extension's vocabulary (`geocr:`): CRS, spatial resolution, spectral bands and
bounding box."""

from __future__ import annotations

import json
from pathlib import Path

import mlcroissant as mlc
import polars as pl

from aras_assets.exchange import release as rl
from aras_assets.grid import CRS

GEOCR = "http://mlcommons.org/croissant/geocr/"
BANDS = [{"name": "B04", "description": "red", "centralWavelength": "665 nm"},
         {"name": "B03", "description": "green", "centralWavelength": "560 nm"},
         {"name": "B02", "description": "blue", "centralWavelength": "490 nm"}]
TEXT, INT, FLOAT = mlc.DataType.TEXT, mlc.DataType.INTEGER, mlc.DataType.FLOAT
# Column types of the top-level CSVs (others are text).
_INTS = {"row", "col", "x_off", "y_off", "width", "height", "wc_x_off", "wc_y_off", "wc_file_x_off", "wc_file_y_off",
         "seed", "caption_index"}
_FLOATS = {"lon_min", "lat_min", "lon_max", "lat_max"}


def _fields(record_set: str, csv: str, columns: list[str], key: str) -> list[mlc.Field]:
    def kind(c: str) -> object:
        return INT if c in _INTS else FLOAT if c in _FLOATS else TEXT

    return [mlc.Field(id=f"{record_set}/{c}", name=c, data_types=[kind(c)],
                      description=f"{c} (the record's key)" if c == key else None,
                      source=mlc.Source(file_object=csv, extract=mlc.Extract(column=c))) for c in columns]


def metadata(out: Path, digests: dict[str, str]) -> mlc.Metadata:
    files = [mlc.FileObject(id=name, name=name, content_url=name, md5=digests[name],
                            encoding_formats=["application/zip"] if name.endswith(".zip") else ["text/csv"])
             for name in sorted(digests)]
    sets = []
    for folder in rl.FOLDERS:
        for sub in (rl.IMAGES, rl.MASKS):
            sets.append(mlc.FileSet(id=f"{folder}-{sub}", name=f"{folder}-{sub}", contained_in=[rl.zip_name(folder)],
                                    includes=[f"{folder}/{sub}/*{rl.PNG}"], encoding_formats=["image/png"],
                                    description=f"{sub} of {folder}" + (" (RGB masks in the release's colours)"
                                                                       if sub == rl.MASKS else "")))
    tables = {"patches": (rl.PATCHES_CSV, "patch_id"), "synthetic_images": (rl.SYNTHETIC_CSV, "image_id"),
              "captions": (rl.CAPTIONS_CSV, "caption_id")}
    record_sets = []
    for rs, (csv, key) in tables.items():
        columns = pl.read_csv(out / csv, n_rows=0).columns
        record_sets.append(mlc.RecordSet(id=rs, name=rs, key=[f"{rs}/{key}"], fields=_fields(rs, csv, columns, key),
                                         description=f"one record per row of {csv}"))
    return mlc.Metadata(
        name="ARAS", description=("Synthetic-augmented land-cover dataset: 256x256 Sentinel-2 RGB patches with 7-class "
                                  "WorldCover masks, synthetic images with masks and captions, in the ARAS400k release layout."),
        url="https://esa-worldcover.org", license=["https://creativecommons.org/licenses/by/4.0/"], version="1.0.0",
        cite_as="ESA WorldCover 2021 v200; ARAS400k", distribution=[*files, *sets], record_sets=record_sets,
        keywords=["remote sensing", "Sentinel-2", "land cover", "segmentation", "captions", "synthetic"])


def geo_properties(out: Path) -> dict:
    patches = pl.read_csv(out / rl.PATCHES_CSV, columns=["lon_min", "lat_min", "lon_max", "lat_max"])
    bbox = [patches["lon_min"].min(), patches["lat_min"].min(), patches["lon_max"].max(), patches["lat_max"].max()] \
        if patches.height else None
    return {"geocr:coordinateReferenceSystem": CRS, "geocr:spatialResolution": "1/12000 degree (about 10 m)",
            "geocr:spectralBandMetadata": BANDS, "geocr:BoundingBox": bbox,
            "geocr:temporalExtent": {"startDate": "2021-01-01", "endDate": "2021-12-31"}}


def write_croissant(out: Path, digests: dict[str, str]) -> None:
    doc = metadata(out, digests).to_json()
    doc["@context"] = {**doc["@context"], "geocr": GEOCR}
    doc.update(geo_properties(out))
    (out / rl.CROISSANT).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
