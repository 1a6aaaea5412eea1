"""Which rows train, validate and test: the split protocols (paper, LIQE, official, none) over the loaded sources."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from ..data import (
    iqa_info,
    koniq_official_splits,
    liqe_splits,
    load_iqa_dataset,
    paper_splits,
    splits_by_content,
    subsample,
)
from ..data.specs import canonical_dataset_name
from .arguments import SPLIT_PROTOCOLS, DataArguments
from .transforms import LabelEncoder


@dataclass
class SplitPlan:
    """The parts of a split: training, validation (model selection) and, with LIQE's and KonIQ's official splits,
    test."""

    protocol: str
    description: str
    train_ds: datasets.Dataset
    train_idx: list
    eval_ds: datasets.Dataset
    eval_idx: list
    test_ds: datasets.Dataset | None = None
    test_idx: list | None = None

    @property
    def held_out(self):
        """`(dataset, indices, name)` of the part a trained model is scored on: the test part of LIQE's and KonIQ's
        official splits, else validation."""
        if self.test_idx is not None:
            return self.test_ds, self.test_idx, "test"
        return self.eval_ds, self.eval_idx, "validation" if self.protocol == "none" else "held-out 20 %"


def load_source(name, data_args: DataArguments, verify_images: bool | None = None, **extra):
    """`load_iqa_dataset` with the options of `data_args` (folder options only for metadata.csv folders)."""
    kwargs = dict(
        cache_dir=data_args.cache_dir,
        skip_bad_samples=data_args.skip_bad_samples,
        verify_images=data_args.verify_images if verify_images is None else verify_images,
    )
    if name is not None and os.path.isdir(name) and os.path.isfile(os.path.join(name, "metadata.csv")):
        kwargs.update(mos_range=data_args.mos_range, higher_is_better=not data_args.lower_is_better)
    else:
        kwargs.update(data_dir=data_args.data_dir, label_file=data_args.label_file, split=data_args.dataset_split)
        if data_args.dataset_config_name is not None:
            kwargs["name"] = data_args.dataset_config_name
    kwargs.update(extra)
    with warnings.catch_warnings():
        # The scripts report the skipped rows themselves (`skipped_samples`), once for every source they load.
        warnings.filterwarnings("ignore", message="Skipped .* bad sample", category=UserWarning)
        return load_iqa_dataset(name, **kwargs)


def _truncate(indices, limit, seed):
    if limit is None or limit >= len(indices):
        return list(indices)
    rng = np.random.default_rng([int(seed), 104729])
    return sorted(rng.choice(np.asarray(indices), size=limit, replace=False).tolist())


def _liqe_parts(data_args: DataArguments, name: str, dataset):
    if data_args.label_file is None:
        raise ValueError("--split_protocol liqe needs --label_file (LIQE's splits2/<k> files).")
    label_path = Path(data_args.label_file)
    source = label_path if label_path.is_dir() else label_path.parent
    source = canonical_dataset_name(name) if source.name == "splits2" else source
    return liqe_splits(source, data_args.split_index, dataset=dataset)


def load_split_sources(data_args: DataArguments, verify_images: bool | None = None):
    """`(dataset, validation dataset or None)`: the data `plan_split` splits (load once, split many times)."""
    name = data_args.train_dir or data_args.dataset_name or "synthetic"
    validation = None
    if data_args.resolved_split_protocol == "none":
        if data_args.validation_dir is None:
            raise ValueError("--split_protocol none needs --train_dir and --validation_dir.")
        validation = load_source(data_args.validation_dir, data_args, verify_images)
    return load_source(name, data_args, verify_images), validation


def plan_split(data_args: DataArguments, seed: int = 0, loaded=None) -> SplitPlan:
    """Splits the data of `data_args` (loaded here, or `loaded` from [`load_split_sources`]) by the protocol in force
    (see `DataArguments.split_protocol`); `seed` draws the `--max_*_samples` truncations."""
    protocol = data_args.resolved_split_protocol
    name = data_args.train_dir or data_args.dataset_name or "synthetic"
    train_ds, validation_ds = loaded if loaded is not None else load_split_sources(data_args)
    eval_ds, test_ds, test_idx = train_ds, None, None
    k = data_args.split_index
    if protocol == "none":
        eval_ds = validation_ds
        train_idx, eval_idx = list(range(len(train_ds))), list(range(len(eval_ds)))
        description = f"none: all of {name} for training, all of {data_args.validation_dir} for validation"
    elif protocol == "liqe":
        parts = _liqe_parts(data_args, name, train_ds)
        train_idx, eval_idx, test_ds, test_idx = parts["train"], parts["val"], train_ds, parts["test"]
        description = f"liqe: LIQE's splits2/{k} of {name} (train/val/test 70/10/20)"
    elif protocol == "official":
        if iqa_info(train_ds).name != "koniq10k":
            raise ValueError(
                f"--split_protocol official is KonIQ-10k's own split; {name} has none (use --split_protocol paper)."
            )
        parts = koniq_official_splits(train_ds)
        train_idx, eval_idx, test_ds, test_idx = parts["train"], parts["val"], train_ds, parts["test"]
        description = "official: KonIQ-10k's training/validation/test split (koniq10k_distributions_sets.csv)"
    elif protocol == "paper":
        if data_args.validation_dir is not None and data_args.train_dir is not None:
            raise ValueError("--validation_dir is only used with --split_protocol none; drop one of them.")
        by_content = not data_args.split_by_image and splits_by_content(train_ds)
        train_idx, eval_idx = paper_splits(train_ds, seed=data_args.split_seed, by_content=by_content)[k - 1]
        description = (
            f"paper: random 80/20 split {k} of 10 of {name} (seed {data_args.split_seed}, "
            + ("by content" if by_content else "by image")
            + ")"
        )
    else:
        raise ValueError(f"Unknown split protocol {protocol!r}; choose from {SPLIT_PROTOCOLS}.")
    if data_args.train_fraction < 1.0:
        train_idx = subsample(train_idx, data_args.train_fraction, seed=data_args.split_seed)
        description += f", {data_args.train_fraction:.0%} of the training part"
    train_idx = _truncate(train_idx, data_args.max_train_samples, seed)
    eval_idx = _truncate(eval_idx, data_args.max_eval_samples, seed)
    if test_idx is not None:
        test_idx = _truncate(test_idx, data_args.max_eval_samples, seed)
    return SplitPlan(protocol, description, train_ds, train_idx, eval_ds, eval_idx, test_ds, test_idx)


def label_coverage(dataset: datasets.Dataset, indices: Sequence[int]) -> dict:
    """How many rows of `indices` carry a scene label and a distortion label: `{"scene": n, "distortion": m}`."""
    columns = dataset.select_columns(["scene", "distortion"]).select(list(indices))
    encoder = LabelEncoder(dataset.features, [], [])
    scene = sum(
        any(encoder._name(v, encoder.scene_names) is not None for v in scenes or []) for scenes in columns["scene"]
    )
    distortion = sum(encoder._name(v, encoder.distortion_names) is not None for v in columns["distortion"])
    return {"scene": int(scene), "distortion": int(distortion)}
