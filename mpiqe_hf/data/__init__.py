"""IQA datasets for MP-IQE: one `datasets.Dataset` layout for LIQE label files, official releases, folders, the Hub
and the embedded synthetic set.

Every loader returns columns `image` (`datasets.Image()`, file paths, decoded lazily), `mos` (native scale),
`mos_normalized` (in [0, 1], higher = better), `scene` (a list of `ClassLabel(names=SCENE_CLASSES)` ints, empty for
no scene label), `distortion` (a `ClassLabel(names=DISTORTION_CLASSES)` int, -1 for no label) and `content_id` (the
reference content, for disjoint splits). The native range and the loader's other facts are an [`IQADatasetInfo`],
read with [`iqa_info`] (or [`dataset_mos_range`], [`skipped_samples`]).
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from .folder import METADATA_FILE, convert_dataset, load_hub_dataset, load_metadata_folder
from .liqe import liqe_splits, load_liqe_dataset
from .official import load_official_dataset
from .specs import (
    FINE_TO_DISTORTION,
    IQA_DATASETS,
    NO_LABEL,
    BadSample,
    DatasetSpec,
    IQADatasetInfo,
    MOSRange,
    canonical_dataset_name,
    dataset_mos_range,
    default_max_image_size,
    get_dataset_spec,
    iqa_features,
    iqa_info,
    map_distortion,
    map_scene,
    normalize_mos,
    skipped_samples,
    with_iqa_info,
)
from .splits import KONIQ_OFFICIAL_SIZES, koniq_official_splits, paper_splits, splits_by_content, subsample
from .synthetic import build_synthetic, load_synthetic, pseudo_mos


def load_iqa_dataset(
    name_or_path: str | None = "synthetic",
    data_dir=None,
    label_file=None,
    split: str | None = None,
    cache_dir=None,
    skip_bad_samples: bool = False,
    seed: int = 0,
    *,
    check_files: bool = True,
    verify_images: bool = False,
    num_proc: int | None = None,
    mos_range=None,
    higher_is_better: bool = True,
    image_column: str = "image",
    mos_column: str = "mos",
    **kwargs,
) -> datasets.Dataset:
    """Load an IQA dataset as a `datasets.Dataset` with the library's columns.

    - `"synthetic"` (or None): the embedded set, built on first use under `cache_dir` (default
      `~/.cache/mpiqe_hf`, or `$MPIQE_HF_CACHE`) in `synthetic/<version>-<seed>`. Extra: `include_references=True`.
    - `"koniq10k"`, `"kadid10k"`, `"live"`, `"csiq"`, `"livec"`, `"bid"`, `"spaq"`, `"agiqa3k"`: with `label_file` (a LIQE `*_clip.txt`
      file or a LIQE database folder) the LIQE labels, image paths relative to `data_dir`; without it the official
      layout under `data_dir` (extras: `image_folder=` for KonIQ and AGIQA-3K, `live_realigned=` for LIVE).
    - a folder with `metadata.csv`: `file_name`, `mos`, optional `scene` (`|`-separated), `distortion`,
      `content_id`; range from `mos_range` or the data, direction from `higher_is_better`.
    - a `save_to_disk` folder, another local folder or a Hub id: `datasets.load_dataset(name, split=split)` with
      `image_column` and `mos_column` (extra kwargs go to `load_dataset`).

    `check_files=False` skips the existence check of image files; `verify_images=True` also decodes every image with
    `mpiqe_hf.load_image` (in `num_proc` processes; by default several from 1,000 rows on). Every bad row (with its
    file, line and field) is reported in one `ValueError`, or with `skip_bad_samples=True` left out, warned about and
    listed by [`skipped_samples`]. The facts of the dataset are read with [`iqa_info`].
    """
    if name_or_path is None:
        name_or_path = "synthetic"
    name_or_path = os.fspath(name_or_path)
    canonical = canonical_dataset_name(name_or_path) if not os.path.isdir(name_or_path) else None
    if canonical == "synthetic":
        _no_split(split, canonical)
        return load_synthetic(
            cache_dir,
            seed,
            include_references=kwargs.pop("include_references", True),
            skip_bad_samples=skip_bad_samples,
            verify_images=verify_images,
            num_proc=num_proc,
        )
    if canonical is not None:
        _no_split(split, canonical)
        if label_file is not None:
            if kwargs:
                raise ValueError(f"Unexpected arguments for the LIQE loader: {sorted(kwargs)}")
            return load_liqe_dataset(
                canonical,
                label_file,
                data_dir,
                check_files=check_files,
                verify_images=verify_images,
                skip_bad_samples=skip_bad_samples,
                num_proc=num_proc,
            )
        return load_official_dataset(
            canonical,
            data_dir,
            check_files=check_files,
            verify_images=verify_images,
            skip_bad_samples=skip_bad_samples,
            num_proc=num_proc,
            **kwargs,
        )
    path = Path(name_or_path)
    if path.is_dir() and (path / METADATA_FILE).is_file():
        _no_split(split, str(path))
        return load_metadata_folder(
            path,
            mos_range=mos_range,
            higher_is_better=higher_is_better,
            check_files=check_files,
            verify_images=verify_images,
            skip_bad_samples=skip_bad_samples,
            num_proc=num_proc,
        )
    return load_hub_dataset(
        name_or_path,
        split=split,
        cache_dir=cache_dir,
        image_column=image_column,
        mos_column=mos_column,
        mos_range=mos_range,
        higher_is_better=higher_is_better,
        check_files=check_files,
        verify_images=verify_images,
        skip_bad_samples=skip_bad_samples,
        num_proc=num_proc,
        **kwargs,
    )


def _no_split(split, name):
    if split not in (None, "all", "full"):
        raise ValueError(
            f"{name} is loaded whole; use paper_splits() or liqe_splits() for train/test indices (got split={split!r})."
        )


__all__ = [
    "load_iqa_dataset",
    "IQA_DATASETS",
    "DatasetSpec",
    "get_dataset_spec",
    "default_max_image_size",
    "IQADatasetInfo",
    "iqa_info",
    "with_iqa_info",
    "iqa_features",
    "NO_LABEL",
    "dataset_mos_range",
    "MOSRange",
    "skipped_samples",
    "BadSample",
    "paper_splits",
    "splits_by_content",
    "liqe_splits",
    "koniq_official_splits",
    "KONIQ_OFFICIAL_SIZES",
    "subsample",
    "normalize_mos",
    "map_scene",
    "map_distortion",
    "FINE_TO_DISTORTION",
    "load_liqe_dataset",
    "load_official_dataset",
    "load_metadata_folder",
    "load_hub_dataset",
    "convert_dataset",
    "load_synthetic",
    "build_synthetic",
    "pseudo_mos",
]
