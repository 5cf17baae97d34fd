"""Dataset exchange: the ARAS400k release layout in and out, with checksums, STAC, Croissant and
a dataset card.

    release    the layout's names, deterministic zips, reading a release folder (zipped or not)
    checksums  MD5 tables (Markdown and `md5sum -c`), verification
    export     a data root -> the release layout (export_dataset)
    importer   a release folder -> a data root's records, lineage rebuilt (import_release)
    stac       STAC Collection, one Item per real patch, stac-geoparquet
    croissant  croissant.json (mlcroissant) with the Croissant-Geo fields
    card       README dataset card
    assets     the dataset_export asset
"""
