"""Random train/test splits of the MP-IQE protocol, KonIQ-10k's official split and the data-efficiency subsampling."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from .official import _read_table


#: KonIQ-10k's official split: the `set` column of this file (github.com/subpic/koniq, `metadata/`), whose rows
#: say `training` (7,058 images), `validation` (1,000) or `test` (2,015). Its `MOS` column is on a 0-100 scale, not
#: the 1-5 of koniq10k_scores_and_distributions.csv, so only `image_name` and `set` are read from it.
KONIQ_SETS_FILE = "koniq10k_distributions_sets.csv"
KONIQ_OFFICIAL_SIZES = {"training": 7058, "validation": 1000, "test": 2015}
_KONIQ_PARTS = {"training": "train", "validation": "val", "test": "test"}


def _content_ids(ds) -> list:
    if isinstance(ds, (list, tuple)):
        return [str(c) for c in ds]
    if "content_id" not in ds.column_names:
        raise ValueError("The dataset has no `content_id` column.")
    return [str(c) for c in ds["content_id"]]


def splits_by_content(ds) -> bool:
    """Whether [`paper_splits`] splits `ds` (a dataset or a list of content ids) by content by default: the dataset's
    `iqa_info(ds).split_protocol == "by_content"`, else whether some `content_id` appears more than once."""
    protocol = getattr(getattr(ds, "info", None), "iqa", None)
    if protocol is not None:
        return protocol.split_protocol == "by_content"
    contents = _content_ids(ds)
    return len(set(contents)) < len(contents)


def paper_splits(
    ds,
    num_repetitions: int = 10,
    train_fraction: float = 0.8,
    seed: int = 0,
    by_content: bool | None = None,
) -> list[tuple[list[int], list[int]]]:
    """`num_repetitions` random `(train_indices, test_indices)` splits (the paper: 10 x 80/20, median reported).

    With `by_content` (default: the dataset's `iqa_info(ds).split_protocol == "by_content"`; for a dataset without
    that info, or a list of content ids, True when some `content_id` appears more than once) the reference contents
    are split, so no content is in both parts; `train_fraction` is then the fraction
    of contents. Repetition `r` uses the generator seeded with `(seed, r)`: reproducible and independent of
    `num_repetitions`. Indices are sorted.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    if num_repetitions < 1:
        raise ValueError(f"num_repetitions must be at least 1, got {num_repetitions}.")
    contents = _content_ids(ds)
    n = len(contents)
    if n < 2:
        raise ValueError(f"Need at least 2 samples to split, got {n}.")
    unique = sorted(set(contents))
    by_content = splits_by_content(ds) if by_content is None else by_content
    info = getattr(getattr(ds, "info", None), "iqa", None)
    if by_content and info is not None and info.live_references_found is False:
        # Each image would be its own content: a split by content would silently become a split by image.
        raise ValueError(
            "This LIVE dataset was loaded without its reference names (LIQE labels without data_dir), so a split by "
            "content is impossible; load it with data_dir set to the LIVE folder that holds refnames_all.mat (or "
            "the folders' info.txt files), or pass by_content=False to split by image knowingly."
        )
    splits = []
    for repetition in range(num_repetitions):
        rng = np.random.default_rng([int(seed), repetition])
        if by_content:
            if len(unique) < 2:
                raise ValueError("Only one content_id: a content-disjoint split is impossible.")
            order = rng.permutation(len(unique))
            k = min(max(1, int(round(train_fraction * len(unique)))), len(unique) - 1)
            train_contents = {unique[i] for i in order[:k]}
            train = [i for i, c in enumerate(contents) if c in train_contents]
            test = [i for i, c in enumerate(contents) if c not in train_contents]
        else:
            order = rng.permutation(n)
            k = min(max(1, int(round(train_fraction * n))), n - 1)
            train, test = sorted(order[:k].tolist()), sorted(order[k:].tolist())
        splits.append((train, test))
    return splits


def subsample(indices: Sequence[int], fraction: float, seed: int = 0) -> list[int]:
    """A random `fraction` (e.g. 0.2, 0.4, 0.6) of `indices` for the data-efficiency study; sorted, at least one.

    Nested: for one seed, the 20 % subset is contained in the 40 % subset, which is in the 60 % subset.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    indices = list(indices)
    if not indices:
        raise ValueError("No indices to subsample.")
    order = np.random.default_rng([int(seed), 7919]).permutation(len(indices))
    k = max(1, int(round(fraction * len(indices))))
    return sorted(indices[i] for i in order[:k])


def koniq_official_splits(dataset, sets_file=None) -> dict:
    """`{"train": [...], "val": [...], "test": [...]}` indices of KonIQ-10k's official split into `dataset`.

    Images are matched by file name with the `set` column of `sets_file` (default: `koniq10k_distributions_sets.csv`
    in the dataset's `data_dir`). Every problem of the file (empty name, a name listed twice, an unknown `set`) and
    every image of `dataset` the file does not list are reported together in one `ValueError`. Rows of the file that
    `dataset` lacks (left out as bad samples) are in no part. Indices are sorted.
    """
    if sets_file is None:
        info = getattr(dataset.info, "iqa", None)
        if info is None or info.data_dir is None:
            raise ValueError(f"KonIQ-10k's official split: pass sets_file (the {KONIQ_SETS_FILE} file).")
        sets_file = Path(info.data_dir) / KONIQ_SETS_FILE
    sets_file = Path(sets_file)
    if not sets_file.is_file():
        raise ValueError(
            f"KonIQ-10k's official split file not found: {sets_file}. It is metadata/{KONIQ_SETS_FILE} of "
            "github.com/subpic/koniq; put it in the KonIQ-10k folder (--data_dir)."
        )
    _, rows = _read_table(sets_file, required=("image_name", "set"))
    part_of, first_line, problems = {}, {}, []
    for line, row in rows:
        name = str(row.get("image_name") or "").strip()
        part = str(row.get("set") or "").strip().lower()
        if not name:
            problems.append(f"line {line}, field 'image_name': empty image name")
        elif name in part_of:
            problems.append(
                f"line {line}, field 'image_name': {name!r} is listed twice (first on line {first_line[name]})"
            )
        elif part not in _KONIQ_PARTS:
            problems.append(f"line {line}, field 'set': {row.get('set')!r} is not one of {list(_KONIQ_PARTS)}")
        else:
            part_of[name], first_line[name] = _KONIQ_PARTS[part], line
    images = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))["image"]
    parts = {"train": [], "val": [], "test": []}
    unlisted = []
    for index, image in enumerate(images):
        name = os.path.basename(image["path"] or "")
        if name in part_of:
            parts[part_of[name]].append(index)
        else:
            unlisted.append(name)
    if unlisted:
        problems.append(
            f"{len(unlisted)} image(s) of the dataset are not listed: {', '.join(unlisted[:5])}"
            + (", ..." if len(unlisted) > 5 else "")
        )
    if problems:
        raise ValueError(
            f"{sets_file}: KonIQ-10k's official split cannot be read (use the file of github.com/subpic/koniq, "
            "metadata/, unchanged):\n" + "\n".join(f"  {p}" for p in problems)
        )
    return parts
