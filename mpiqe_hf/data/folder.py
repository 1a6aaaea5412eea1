"""Loaders for a folder with `metadata.csv` (`datasets`' imagefolder convention) and for any `datasets` dataset (Hub id
or `save_to_disk` folder)."""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import datasets

from .specs import DatasetSpec, IQADatasetInfo, with_iqa_info
from .validation import finalize_dataset, resolve_mos_range


METADATA_FILE = "metadata.csv"
REQUIRED_COLUMNS = ("file_name", "mos")


def metadata_record_lines(path: Path) -> tuple[list[str], list[int]]:
    """The header of a CSV file and the line on which each data record starts (header = line 1).

    `datasets` (pandas) reports rows, not lines; blank lines are skipped and quoted fields may span lines, so the
    line of row `i` is read from the file itself (the csv module agrees with pandas on both).
    """
    data = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8; save the file as UTF-8 (from Latin-1, "
            f"say: iconv -f latin1 -t utf-8 {Path(path).name} > utf8.csv, then replace it)."
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    starts = []
    start = reader.line_num + 1
    for record in reader:
        if record:
            starts.append(start)
        start = reader.line_num + 1
    return header, starts


def load_metadata_folder(
    folder,
    *,
    mos_range=None,
    higher_is_better: bool = True,
    name: str | None = None,
    spec: DatasetSpec | None = None,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
    num_proc: int | None = None,
    source: str = "folder",
    seed: int | None = None,
) -> datasets.Dataset:
    """Load a folder holding `metadata.csv` (`file_name`, `mos`, optional `scene`, `distortion`, `content_id`).

    The table is read by `datasets.load_dataset("imagefolder", data_files=<folder>/metadata.csv)` (every column as
    text, so that a bad value is reported instead of changing the column's type); `file_name` is relative to the folder and must
    stay inside it. `scene` holds zero or more scene names separated by `|` (`;` is accepted too). `distortion` is a
    class of `DISTORTION_CLASSES` or a LIQE fine-grained name, empty for none. The native MOS range is `mos_range`
    when given (rows outside it are bad), else inferred from the data (see docs/data.md for the implausible-MOS rule).
    """
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise ValueError(f"No {METADATA_FILE} in {folder}.")
    if spec is not None:
        mos_range = (spec.mos_min, spec.mos_max) if mos_range is None else mos_range
        higher_is_better = spec.higher_is_better
    mos_range = resolve_mos_range(mos_range, meta_path)
    header, lines = metadata_record_lines(meta_path)
    columns = {name: name.strip() for name in header if name.strip()}
    for required in REQUIRED_COLUMNS:
        if required not in columns.values():
            raise ValueError(
                f"{meta_path}, line 1, field '{required}': required column missing (found {list(columns.values())})."
            )
    if not lines:
        raise ValueError(f"{meta_path}: no rows after the header (line 1); add one row per image: file_name,mos,...")
    text = datasets.Features({name: datasets.Value("string") for name in columns})
    # data_files, not data_dir: imagefolder would read `train/`, `test/` subfolders as splits of their own.
    raw = datasets.load_dataset("imagefolder", data_files={"train": str(meta_path)}, features=text, split="train")
    if len(raw) != len(lines):
        raise ValueError(f"{meta_path}: {len(raw)} rows read but {len(lines)} records found; check the CSV quoting.")
    raw = raw.rename_columns({name: stripped for name, stripped in columns.items() if name != stripped})
    raw = raw.rename_column("file_name", "image")
    raw = raw.add_column("source_line", lines).add_column("source_file", [str(meta_path)] * len(raw))
    content_repeats = "content_id" in columns.values() and len(raw.unique("content_id")) < len(raw)
    info = IQADatasetInfo(
        name=name or (spec.name if spec else folder.name),
        mos_min=mos_range[0] if mos_range else float("nan"),
        mos_max=mos_range[1] if mos_range else float("nan"),
        higher_is_better=higher_is_better,
        source=source,
        split_protocol="by_content" if (spec.synthetic if spec else content_repeats) else "by_image",
        mos_range_from_data=mos_range is None,
        score_loss_weight=spec.score_loss_weight if spec else None,
        batch_size=spec.batch_size if spec else None,
        data_dir=str(folder.resolve()),
        seed=seed,
    )
    return finalize_dataset(
        raw,
        info,
        source=str(meta_path),
        root=folder,
        mos_range=mos_range,
        check_files=check_files,
        verify_images=verify_images,
        skip_bad_samples=skip_bad_samples,
        num_proc=num_proc,
        description=spec.description if spec else "",
    )


def _saved_dataset_kind(path: Path) -> str | None:
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file():
        return "dataset"
    return None


def _saved_iqa_info(folder: Path) -> IQADatasetInfo | None:
    """The facts a `save_to_disk` of an IQA dataset wrote into its `dataset_info.json`, or None."""
    try:
        values = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8")).get("iqa")
    except (OSError, ValueError):
        return None
    return IQADatasetInfo.from_dict(values) if isinstance(values, dict) else None


def load_hub_dataset(
    name_or_path,
    *,
    split: str | None = None,
    cache_dir=None,
    image_column: str = "image",
    mos_column: str = "mos",
    mos_range=None,
    higher_is_better: bool = True,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
    num_proc: int | None = None,
    **load_kwargs,
) -> datasets.Dataset:
    """Any dataset with an image column and a MOS column: a `save_to_disk` folder or `datasets.load_dataset(name)`.

    A `save_to_disk` folder of a dataset this library loaded is returned as saved, with its [`IQADatasetInfo`] read
    back from `dataset_info.json`. Otherwise optional columns `scene` (list of names or a `|`-separated string),
    `distortion` and `content_id` are mapped and checked like the other loaders (the "line" of a message is the row
    number + 1); missing ones become `[]`, no label and the image path.
    """
    source = str(name_or_path)
    path = Path(source)
    kind = _saved_dataset_kind(path)
    if kind is not None:
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(source, split=split, cache_dir=cache_dir, **load_kwargs)
    saved_folder = path if kind == "dataset" else None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise ValueError(f"{source} has splits {list(loaded)}; pass split=.")
            split = next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{source} has no split {split!r}; available: {list(loaded)}.")
        loaded = loaded[split]
        saved_folder = path / split if kind == "dict" else None
    if not isinstance(loaded, datasets.Dataset):
        raise ValueError(f"{source}: expected a map-style datasets.Dataset, got {type(loaded).__name__}.")
    saved = _saved_iqa_info(saved_folder) if saved_folder is not None else None
    if saved is not None and mos_range is None:
        return with_iqa_info(loaded, saved)
    return convert_dataset(
        loaded,
        source=source,
        image_column=image_column,
        mos_column=mos_column,
        mos_range=mos_range,
        higher_is_better=higher_is_better,
        check_files=check_files,
        verify_images=verify_images,
        skip_bad_samples=skip_bad_samples,
        num_proc=num_proc,
    )


def convert_dataset(
    ds: datasets.Dataset,
    *,
    source: str,
    image_column: str = "image",
    mos_column: str = "mos",
    mos_range=None,
    higher_is_better: bool = True,
    check_files: bool = True,
    verify_images: bool = False,
    skip_bad_samples: bool = False,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Turn a `datasets.Dataset` with image and MOS columns into the library's column layout."""
    for column in (image_column, mos_column):
        if column not in ds.column_names:
            raise ValueError(f"{source}, line 1, field '{column}': required column missing (found {ds.column_names}).")
    mos_range = resolve_mos_range(mos_range, source)
    keep = [
        c
        for c in ("scene", "distortion", "content_id")
        if c in ds.column_names and c not in (image_column, mos_column)
    ]
    raw = ds.select_columns([image_column, mos_column, *keep])
    raw = raw.rename_columns({k: v for k, v in {image_column: "image", mos_column: "mos"}.items() if k != v})
    if not isinstance(raw.features["image"], datasets.Image):
        raw = raw.cast_column("image", datasets.Image(decode=False))
    raw = raw.add_column("source_line", list(range(1, len(raw) + 1))).add_column("source_file", [source] * len(raw))
    name = path.name if (path := Path(source)).is_dir() else source
    info = IQADatasetInfo(
        name=name,
        mos_min=mos_range[0] if mos_range else float("nan"),
        mos_max=mos_range[1] if mos_range else float("nan"),
        higher_is_better=higher_is_better,
        source="datasets",
        mos_range_from_data=mos_range is None,
    )
    content_repeats = "content_id" in keep and len(raw.unique("content_id")) < len(raw)
    info = replace(info, split_protocol="by_content" if content_repeats else "by_image")
    return finalize_dataset(
        raw,
        info,
        source=source,
        root=None,
        mos_range=mos_range,
        check_files=check_files,
        verify_images=verify_images,
        skip_bad_samples=skip_bad_samples,
        num_proc=num_proc,
        path_field=image_column,
    )
