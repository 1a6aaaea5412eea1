"""Loaders for a folder with `metadata.csv` and for any `datasets` dataset (Hub id or `save_to_disk` folder)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional

import datasets

from .specs import (
    DatasetSpec,
    IQARecords,
    RowProblems,
    build_dataset,
    check_image,
    distortion_from_name,
    iqa_features,
    make_metadata,
    metadata_description,
    normalize_mos,
    parse_mos,
    scenes_from_names,
    split_scene_field,
)

METADATA_FILE = "metadata.csv"
REQUIRED_COLUMNS = ("file_name", "mos")


def _resolve_range(values, mos_range, source):
    if mos_range is not None:
        lo, hi = float(mos_range[0]), float(mos_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise ValueError(f"{source}: mos_range must be (low, high) with low < high, got {mos_range!r}")
        return lo, hi
    if not values:
        raise ValueError(f"{source}: no valid rows, cannot infer the MOS range.")
    lo, hi = min(values), max(values)
    if hi <= lo:
        raise ValueError(f"{source}: every MOS equals {lo}; pass mos_range=(low, high) to set the native range.")
    return lo, hi


def load_metadata_folder(
    folder,
    *,
    mos_range=None,
    higher_is_better: bool = True,
    name: Optional[str] = None,
    spec: Optional[DatasetSpec] = None,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
    source: str = "folder",
    extra_metadata: Optional[dict] = None,
) -> datasets.Dataset:
    """Load a folder holding `metadata.csv` (`file_name`, `mos`, optional `scene`, `distortion`, `content_id`).

    `file_name` is relative to the folder. `scene` holds zero or more scene names separated by `|` (`;` is accepted
    too). `distortion` is a class of `DISTORTION_CLASSES` or a LIQE fine-grained name, empty for none. The native
    MOS range is `mos_range` when given (rows outside it are bad), else the min and max of the data.
    """
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise ValueError(f"No {METADATA_FILE} in {folder}.")
    if spec is not None:
        mos_range = (spec.mos_min, spec.mos_max) if mos_range is None else mos_range
        higher_is_better = spec.higher_is_better
    if mos_range is not None:
        mos_range = _resolve_range(None, mos_range, meta_path)
    problems = RowProblems(skip_bad_samples)
    records = IQARecords()
    with open(meta_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        for required in REQUIRED_COLUMNS:
            if required not in columns:
                raise ValueError(f"{meta_path}, line 1, field '{required}': required column missing (found {columns}).")
        reader.fieldnames = columns
        for row in reader:
            line = reader.line_num
            if None in row:
                problems.report(meta_path, line, "columns", f"more values than the {len(columns)} header columns")
                continue
            file_name = (row.get("file_name") or "").strip()
            if not file_name:
                problems.report(meta_path, line, "file_name", "empty file name")
                continue
            mos = parse_mos(row.get("mos"), problems, meta_path, line, mos_range)
            if mos is None:
                continue
            scenes = scenes_from_names(split_scene_field(row.get("scene")), problems, meta_path, line, ignore=("",))
            if scenes is None:
                continue
            ok, distortion = distortion_from_name(row.get("distortion"), problems, meta_path, line)
            if not ok:
                continue
            path = (folder / file_name).resolve()
            if not check_image(path, problems, meta_path, line, check_files, verify_images):
                continue
            content = (row.get("content_id") or "").strip() or file_name
            records.add(path, mos, scenes, distortion, content)
    problems.warn(meta_path)
    lo, hi = _resolve_range(records.mos, mos_range, meta_path)
    meta = make_metadata(
        name or (spec.name if spec else folder.name), lo, hi, higher_is_better,
        source=source, spec=spec, skipped=problems.bad, data_dir=str(folder.resolve()),
        mos_range_from_data=mos_range is None, **(extra_metadata or {}),
    )
    if spec is None:
        meta["synthetic"] = None
    return build_dataset(records, meta)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def _column_paths(ds: datasets.Dataset, column: str) -> list:
    table = ds.with_format("arrow")[:]
    col = table.column(column).combine_chunks()
    import pyarrow as pa

    if pa.types.is_struct(col.type):
        return col.field("path").to_pylist()
    return [str(v) if v is not None else None for v in col.to_pylist()]


def load_hub_dataset(
    name_or_path,
    *,
    split: Optional[str] = None,
    cache_dir=None,
    image_column: str = "image",
    mos_column: str = "mos",
    mos_range=None,
    higher_is_better: bool = True,
    skip_bad_samples: bool = False,
    **load_kwargs,
) -> datasets.Dataset:
    """Any dataset with an image column and a MOS column: a `save_to_disk` folder or `datasets.load_dataset(name)`.

    Optional columns `scene` (list of names or a `|`-separated string), `distortion` and `content_id` are mapped and
    checked like the other loaders; missing ones become `[]`, `None` and the image path (or row number).
    """
    source = str(name_or_path)
    path = Path(source)
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(source, split=split, cache_dir=cache_dir, **load_kwargs)
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise ValueError(f"{source} has splits {list(loaded)}; pass split=.")
            split = next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{source} has no split {split!r}; available: {list(loaded)}.")
        loaded = loaded[split]
    if not isinstance(loaded, datasets.Dataset):
        raise ValueError(f"{source}: expected a map-style datasets.Dataset, got {type(loaded).__name__}.")
    return convert_dataset(
        loaded, source=source, image_column=image_column, mos_column=mos_column, mos_range=mos_range,
        higher_is_better=higher_is_better, skip_bad_samples=skip_bad_samples,
    )


def convert_dataset(
    ds: datasets.Dataset,
    *,
    source: str,
    image_column: str = "image",
    mos_column: str = "mos",
    mos_range=None,
    higher_is_better: bool = True,
    skip_bad_samples: bool = False,
) -> datasets.Dataset:
    """Turn a `datasets.Dataset` with image and MOS columns into the library's column layout."""
    for column in (image_column, mos_column):
        if column not in ds.column_names:
            raise ValueError(f"{source}, line 1, field '{column}': required column missing (found {ds.column_names}).")
    if mos_range is not None:
        mos_range = _resolve_range(None, mos_range, source)
    problems = RowProblems(skip_bad_samples)
    mos_values = ds[mos_column]
    scenes_col = ds["scene"] if "scene" in ds.column_names else None
    dist_col = ds["distortion"] if "distortion" in ds.column_names else None
    content_col = ds["content_id"] if "content_id" in ds.column_names else None
    paths = _column_paths(ds, image_column) if content_col is None else None
    keep, mos_out, scenes_out, dist_out, content_out = [], [], [], [], []
    for i, value in enumerate(mos_values):
        line = i + 1
        mos = parse_mos(value, problems, source, line, mos_range)
        if mos is None:
            continue
        scenes = []
        if scenes_col is not None and scenes_col[i] is not None:
            raw = scenes_col[i]
            names = split_scene_field(raw) if isinstance(raw, str) else [str(s) for s in raw]
            scenes = scenes_from_names(names, problems, source, line, ignore=("", "invalid"))
            if scenes is None:
                continue
        distortion = None
        if dist_col is not None:
            ok, distortion = distortion_from_name(dist_col[i], problems, source, line)
            if not ok:
                continue
        if content_col is not None and content_col[i] not in (None, ""):
            content = str(content_col[i])
        else:
            content = (paths[i] if paths is not None and paths[i] else None) or f"row-{i}"
        keep.append(i)
        mos_out.append(mos)
        scenes_out.append(scenes)
        dist_out.append(distortion)
        content_out.append(content)
    problems.warn(source)
    lo, hi = _resolve_range(mos_out, mos_range, source)
    base = ds.select_columns([image_column])
    if image_column != "image":
        base = base.rename_column(image_column, "image")
    if not isinstance(base.features["image"], datasets.Image):
        base = base.cast_column("image", datasets.Image())
    elif not base.features["image"].decode:
        base = base.cast_column("image", datasets.Image())
    if len(keep) != len(ds):
        base = base.select(keep)
    base = base.flatten_indices()
    features = iqa_features()
    extra = datasets.Dataset.from_dict(
        {
            "mos": mos_out,
            "mos_normalized": [normalize_mos(m, lo, hi, higher_is_better) for m in mos_out],
            "scene": scenes_out,
            "distortion": dist_out,
            "content_id": content_out,
        },
        features=datasets.Features({k: v for k, v in features.items() if k != "image"}),
    )
    out = datasets.concatenate_datasets([base, extra], axis=1)
    meta = make_metadata(
        Path(source).name if os.path.isdir(source) else source, lo, hi, higher_is_better,
        source="datasets", skipped=problems.bad, dataset=source, mos_range_from_data=mos_range is None,
    )
    meta["synthetic"] = None
    out.info.description = metadata_description(meta)
    return out
