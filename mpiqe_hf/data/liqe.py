"""Loader for the LIQE label files (`<db>_all_clip.txt` and `splits2/<k>/<db>_{train,val,test}_clip.txt`)."""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from .specs import BadSample, DatasetSpec, IQADatasetInfo, get_dataset_spec, iqa_info
from .validation import finalize_dataset


LIQE_CLIP_COLUMNS = 6  # path, MOS, distortion, scene1, scene2, scene3
LIQE_MOS_COLUMNS = 3  # path, MOS, std (the `<db>_all.txt` files)
SPLIT_NAMES = ("train", "val", "test")


def content_id_from_path(db: str, rel_path: str, live_refs: dict | None = None) -> str:
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


def resolve_liqe_label_file(label_file: str | os.PathLike, spec: DatasetSpec | None) -> list[Path]:
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


def _split_liqe_lines(batch, indices, *, file, expected, db, live_refs):
    """Batched `map` over the lines of a label file: its fields, or the column count found when it is wrong."""
    out = {
        "image": [],
        "mos": [],
        "distortion": [],
        "scene": [],
        "content_id": [],
        "source_line": [],
        "source_file": [],
        "columns": [],
    }
    for index, text in zip(indices, batch["text"]):
        fields = text.rstrip("\r").split("\t") if text.strip() else []
        ok = len(fields) == expected
        rel = fields[0].strip() if ok else None
        out["image"].append(rel)
        out["mos"].append(fields[1] if ok else None)
        out["distortion"].append(fields[2] if ok and expected == LIQE_CLIP_COLUMNS else None)
        out["scene"].append(fields[3:6] if ok and expected == LIQE_CLIP_COLUMNS else [])
        out["content_id"].append(content_id_from_path(db, rel, live_refs) if rel else None)
        out["source_line"].append(index + 1)
        out["source_file"].append(str(file))
        out["columns"].append(len(fields))
    return out


def read_liqe_file(label_file, db: str | None = None, live_refs: dict | None = None):
    """The rows of a LIQE label file as a raw `datasets.Dataset` (see `validation.py`), plus the lines whose column
    count is wrong as [`BadSample`]s. Read with `datasets.load_dataset("text")`: row `i` is line `i + 1`."""
    label_file = Path(label_file)
    expected = LIQE_MOS_COLUMNS if label_file.name.endswith("_all.txt") else LIQE_CLIP_COLUMNS
    lines = datasets.load_dataset("text", data_files=str(label_file), split="train")
    rows = lines.map(
        _split_liqe_lines,
        batched=True,
        with_indices=True,
        remove_columns=["text"],
        fn_kwargs=dict(file=label_file, expected=expected, db=db, live_refs=live_refs),
        features=datasets.Features(
            {
                "image": datasets.Value("string"),
                "mos": datasets.Value("string"),
                "distortion": datasets.Value("string"),
                "scene": datasets.List(datasets.Value("string")),
                "content_id": datasets.Value("string"),
                "source_line": datasets.Value("int64"),
                "source_file": datasets.Value("string"),
                "columns": datasets.Value("int64"),
            }
        ),
        desc="Reading label file",
    )
    wrong = rows.filter(lambda b: [c not in (0, expected) for c in b["columns"]], batched=True)
    problems = [
        BadSample(str(label_file), line, "columns", f"expected {expected} tab-separated columns, found {found}")
        for line, found in zip(wrong["source_line"], wrong["columns"])
    ]
    rows = rows.filter(lambda b: [c == expected for c in b["columns"]], batched=True).remove_columns("columns")
    return rows, problems


def load_liqe_dataset(
    name: str,
    label_file,
    data_dir=None,
    *,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
    num_proc: int | None = None,
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
        # Raises when data_dir holds neither refnames_all.mat nor the info.txt files (see live_reference_map).
        from .official import live_reference_map

        live_refs = live_reference_map(root)
    parts, problems = [], []
    for file in files:
        rows, wrong = read_liqe_file(file, spec.name, live_refs)
        parts.append(rows)
        problems.extend(wrong)
    raw = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if live_refs is not None:
        # A path the release does not list has no reference; as its own content it would leak across a split.
        paths = raw["image"]
        unknown = [i for i, rel in enumerate(paths) if rel is not None and rel.replace("\\", "/") not in live_refs]
        for i in unknown:
            row = raw[i]
            problems.append(
                BadSample(
                    row["source_file"],
                    row["source_line"],
                    "path",
                    f"{row['image']} is not an image of the LIVE release (no reference name)",
                )
            )
        if unknown:
            raw = raw.select(sorted(set(range(len(raw))) - set(unknown)))
    info = IQADatasetInfo.from_spec(
        spec,
        "liqe",
        label_files=tuple(str(Path(f).resolve()) for f in files),
        data_dir=str(root.resolve()),
        live_references_found=bool(live_refs) if spec.name == "live" else None,
    )
    return finalize_dataset(
        raw,
        info,
        source=", ".join(str(f) for f in files),
        root=root,
        mos_range=(spec.mos_min, spec.mos_max),
        check_files=check_files,
        verify_images=verify_images,
        skip_bad_samples=skip_bad_samples,
        num_proc=num_proc,
        earlier_problems=problems,
        description=spec.description,
        path_field="path",
    )


def _image_keys(ds: datasets.Dataset, data_dir: str | None) -> list[str]:
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


def _split_folder(label_dir_or_db, k: int, info: IQADatasetInfo) -> tuple[Path, str]:
    name = str(label_dir_or_db)
    path = Path(name)
    prefix = None
    try:
        spec = get_dataset_spec(info.name)
    except ValueError:
        spec = None
    if spec is not None:
        prefix = spec.liqe_prefix
    if not path.exists():
        # a dataset name: find splits2/ next to the label file the dataset was loaded from
        spec = get_dataset_spec(name)
        prefix = spec.liqe_prefix
        label_files = info.label_files
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


def liqe_splits(label_dir_or_db, k: int = 1, dataset: datasets.Dataset | None = None) -> dict:
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
    info = iqa_info(dataset)
    folder, prefix = _split_folder(label_dir_or_db, int(k), info)
    keys = _image_keys(dataset, info.data_dir)
    index = {}
    for i, key in enumerate(keys):
        index.setdefault(key, i)
    out = {}
    for split in SPLIT_NAMES:
        file = folder / f"{prefix}_{split}_clip.txt"
        if not file.is_file():
            raise ValueError(f"LIQE split file not found: {file}")
        rows, wrong = read_liqe_file(file)
        if wrong:
            raise ValueError("Bad split file:\n" + "\n".join(f"  {b}" for b in wrong))
        indices = []
        for number, rel in zip(rows["source_line"], rows["image"]):
            rel = rel.replace("\\", "/")
            if rel not in index:
                raise ValueError(f"{file}, line {number}, field 'path': image {rel!r} is not in the dataset.")
            indices.append(index[rel])
        out[split] = indices
    return out
