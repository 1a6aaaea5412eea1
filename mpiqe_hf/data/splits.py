"""Random train/test splits of the MP-IQE protocol and the data-efficiency subsampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
