"""Loader for the LIQE label files (`<db>_all_clip.txt` and `splits2/<k>/<db>_{train,val,test}_clip.txt`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import datasets

from .specs import (
    DatasetSpec,
    IQARecords,
    RowProblems,
    build_dataset,
    check_image,
    dataset_metadata,
    distortion_from_name,
    get_dataset_spec,
    make_metadata,
    parse_mos,
    scenes_from_names,
)

LIQE_CLIP_COLUMNS = 6  # path, MOS, distortion, scene1, scene2, scene3
LIQE_MOS_COLUMNS = 3  # path, MOS, std (the `<db>_all.txt` files)
SPLIT_NAMES = ("train", "val", "test")


def content_id_from_path(db: str, rel_path: str, live_refs: Optional[dict] = None) -> str:
    """Reference-content id of an image path of a LIQE label file.

    KADID `images/I02_01_03.png` -> `I02`; CSIQ `dst_imgs/awgn/shroom.AWGN.1.png` -> `shroom`; LIVE
    `jp2k/img55.bmp` -> the reference name when `live_refs` (from `refnames_all.mat` or the `info.txt` files of the
    release) knows it; authentic datasets (and LIVE without that map) -> the path itself.
    """
    base = os.path.basename(rel_path)
    if db == "kadid10k":
        return base.split("_")[0].split(".")[0]
    if db == "csiq":
        return base.split(".")[0]
    if db == "live" and live_refs:
        return live_refs.get(rel_path.replace("\\", "/"), rel_path)
    return rel_path


def resolve_liqe_label_file(label_file: Union[str, os.PathLike], spec: Optional[DatasetSpec]) -> list[Path]:
    """A label file, or a LIQE database folder (or its `splits2/`) -> the file(s) that list every image.

    For folders: `splits2/<db>_all_clip.txt` when present, else the union of `splits2/1/<db>_{train,val,test}_clip.txt`
    (KADID-10k and BID ship no `_all_clip.txt`).
    """
    path = Path(label_file)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"LIQE label file not found: {path}")
    splits = path / "splits2" if (path / "splits2").is_dir() else path
    prefix = spec.liqe_prefix if spec is not None else None
    if prefix is None:
        found = sorted(splits.glob("*_all_clip.txt"))
        if len(found) == 1:
            return found
        raise ValueError(f"Cannot tell which label file of {splits} to read; pass the file itself.")
    all_clip = splits / f"{prefix}_all_clip.txt"
    if all_clip.is_file():
        return [all_clip]
    parts = [splits / "1" / f"{prefix}_{s}_clip.txt" for s in SPLIT_NAMES]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ValueError(f"No {all_clip.name} in {splits} and split files are missing: {missing}")
    return parts


def read_liqe_rows(label_file, problems: RowProblems):
    """Yield `(line_number, fields)` of a LIQE label file, checking the column count."""
    label_file = Path(label_file)
    expected = LIQE_MOS_COLUMNS if label_file.name.endswith("_all.txt") else LIQE_CLIP_COLUMNS
    with open(label_file, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != expected:
                problems.report(
                    label_file, number, "columns", f"expected {expected} tab-separated columns, found {len(fields)}"
                )
                continue
            yield number, fields


def load_liqe_dataset(
    name: str,
    label_file,
    data_dir=None,
    *,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
) -> datasets.Dataset:
    """Load a dataset from LIQE label files; image paths are resolved against `data_dir` (the dataset root)."""
    spec = get_dataset_spec(name)
    files = resolve_liqe_label_file(label_file, spec)
    if data_dir is None:
        if check_files or verify_images:
            raise ValueError(
                f"{spec.name}: `data_dir` (the image root the label paths are relative to) is required unless "
                "check_files=False."
            )
        root = Path(".")
    else:
        root = Path(data_dir)
    live_refs = None
    if spec.name == "live" and data_dir is not None:
        from .official import live_reference_map

        live_refs = live_reference_map(root)
    problems = RowProblems(skip_bad_samples)
    records = IQARecords()
    seen = set()
    for file in files:
        for number, fields in read_liqe_rows(file, problems):
            rel = fields[0].strip()
            if not rel:
                problems.report(file, number, "path", "empty image path")
                continue
            if rel in seen:
                problems.report(file, number, "path", f"image {rel!r} is listed twice")
                continue
            mos = parse_mos(fields[1], problems, file, number, (spec.mos_min, spec.mos_max))
            if mos is None:
                continue
            distortion, scenes = None, []
            if len(fields) == LIQE_CLIP_COLUMNS:
                ok, distortion = distortion_from_name(fields[2], problems, file, number)
                if not ok:
                    continue
                scenes = scenes_from_names(fields[3:6], problems, file, number)
                if scenes is None:
                    continue
            image_path = (root / rel).resolve() if data_dir is not None else Path(rel)
            if not check_image(image_path, problems, file, number, check_files, verify_images):
                continue
            seen.add(rel)
            records.add(image_path, mos, scenes, distortion, content_id_from_path(spec.name, rel, live_refs))
    problems.warn(", ".join(str(f) for f in files))
    meta = make_metadata(
        spec.name,
        spec.mos_min,
        spec.mos_max,
        spec.higher_is_better,
        source="liqe",
        spec=spec,
        skipped=problems.bad,
        label_files=[str(Path(f).resolve()) for f in files],
        data_dir=str(root.resolve()) if data_dir is not None else None,
        live_references_found=bool(live_refs) if spec.name == "live" else None,
    )
    return build_dataset(records, meta)


def _image_keys(ds: datasets.Dataset, data_dir: Optional[str]) -> list[str]:
    paths = [item["path"] for item in ds.cast_column("image", datasets.Image(decode=False))["image"]]
    keys = []
    for p in paths:
        p = str(p)
        if data_dir is not None and os.path.isabs(p):
            try:
                p = os.path.relpath(p, data_dir)
            except ValueError:
                pass
        keys.append(p.replace("\\", "/"))
    return keys


def _split_folder(label_dir_or_db, k: int, meta: dict) -> tuple[Path, str]:
    name = str(label_dir_or_db)
    path = Path(name)
    prefix = None
    try:
        spec = get_dataset_spec(meta.get("name", "")) if meta.get("name") else None
    except ValueError:
        spec = None
    if spec is not None:
        prefix = spec.liqe_prefix
    if not path.exists():
        # a dataset name: find splits2/ next to the label file the dataset was loaded from
        spec = get_dataset_spec(name)
        prefix = spec.liqe_prefix
        label_files = meta.get("label_files") or []
        if not label_files:
            raise ValueError(
                f"{name!r} is not a folder and the dataset was not loaded from LIQE label files; pass the LIQE "
                "database folder (the one holding splits2/)."
            )
        path = Path(label_files[0]).parent
        while path.name != "splits2" and path != path.parent:
            path = path.parent
    if path.name == str(k) and path.parent.name == "splits2":
        folder = path
    elif (path / "splits2").is_dir():
        folder = path / "splits2" / str(k)
    else:
        folder = path / str(k)
    if not folder.is_dir():
        raise ValueError(f"LIQE split folder not found: {folder}")
    if prefix is None:
        found = sorted(folder.glob("*_train_clip.txt"))
        if len(found) != 1:
            raise ValueError(f"Cannot tell the database prefix of the split files in {folder}.")
        prefix = found[0].name[: -len("_train_clip.txt")]
    return folder, prefix


def liqe_splits(label_dir_or_db, k: int = 1, dataset: Optional[datasets.Dataset] = None) -> dict:
    """Indices into `dataset` of LIQE's split number `k` (1..10): `{"train": [...], "val": [...], "test": [...]}`.

    `label_dir_or_db` is the LIQE database folder (holding `splits2/`), `splits2/` itself, `splits2/<k>`, or a dataset
    name such as `"koniq10k"` when `dataset` was loaded from a LIQE label file (its `splits2/` is then found next to
    that file). Rows are matched by image path relative to the dataset root; a listed image that the dataset lacks
    raises a `ValueError` naming the split file and line.
    """
    if dataset is None:
        raise ValueError("liqe_splits needs the loaded `dataset` to turn split paths into indices.")
    if not 1 <= int(k) <= 10:
        raise ValueError(f"LIQE split number k must be in 1..10, got {k}.")
    meta = dataset_metadata(dataset)
    folder, prefix = _split_folder(label_dir_or_db, int(k), meta)
    keys = _image_keys(dataset, meta.get("data_dir"))
    index = {}
    for i, key in enumerate(keys):
        index.setdefault(key, i)
    out = {}
    for split in SPLIT_NAMES:
        file = folder / f"{prefix}_{split}_clip.txt"
        if not file.is_file():
            raise ValueError(f"LIQE split file not found: {file}")
        problems = RowProblems(skip=False)
        indices = []
        for number, fields in read_liqe_rows(file, problems):
            rel = fields[0].strip().replace("\\", "/")
            if rel not in index:
                raise ValueError(f"{file}, line {number}, field 'path': image {rel!r} is not in the dataset.")
            indices.append(index[rel])
        out[split] = indices
    return out

