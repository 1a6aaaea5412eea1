"""The data arguments shared by `examples/train.py` and `examples/evaluate.py` (through `HfArgumentParser`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..data.specs import default_max_image_size


SPLIT_PROTOCOLS = ("paper", "liqe", "official", "none")
# What makes a folder data: a metadata.csv table, or a `datasets` `save_to_disk` (Dataset / DatasetDict).
DATA_FOLDER_FILES = ("metadata.csv", "state.json", "dataset_dict.json")


def check_number(option: str, value, *, at_least=None, above=None):
    """Raises a ValueError naming `--option` unless `value` is None or a finite number `>= at_least` / `> above`
    (argparse takes "nan" and "inf" for a float option, and any sign for an int)."""
    if value is None:
        return
    if (
        not math.isfinite(value)
        or (at_least is not None and value < at_least)
        or (above is not None and value <= above)
    ):
        bound = f"at least {at_least}" if at_least is not None else f"above {above}" if above is not None else "finite"
        raise ValueError(f"--{option} must be a finite number {bound}, got {value}.")


@dataclass
class DataArguments:
    """Where the images and scores come from and which split is used; `training_args.json` records them."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": (
                "Built-in name (koniq10k, kadid10k, live, csiq, livec, bid, spaq, agiqa3k, synthetic), a folder with "
                "metadata.csv, a "
                "save_to_disk folder or a Hub dataset. Default: synthetic (the embedded set)."
            )
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: str | None = field(default=None, metadata={"help": "Split of a Hub dataset (e.g. train)."})
    data_dir: str | None = field(default=None, metadata={"help": "Image root of a built-in dataset."})
    label_file: str | None = field(
        default=None,
        metadata={
            "help": (
                "A LIQE label file (*_clip.txt) or LIQE database folder: LIQE's MOS, scene and distortion labels. It does "
                "not change the split; --split_protocol liqe selects LIQE's splits2/<k>."
            )
        },
    )
    train_dir: str | None = field(default=None, metadata={"help": "Folder with metadata.csv and training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "Folder with metadata.csv for validation."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache of the synthetic set and Hub downloads."})
    split_protocol: str | None = field(
        default=None,
        metadata={
            "choices": list(SPLIT_PROTOCOLS),
            "help": (
                "paper (default): the paper's random 80/20 split, 10 repetitions (content-disjoint for synthetic datasets); "
                "liqe: LIQE's splits2/<k> 70/10/20 train/val/test (needs --label_file); official: KonIQ-10k's own "
                "training/validation/test split (koniq10k_distributions_sets.csv in --data_dir); none: train on all of --train_dir, "
                "validate on --validation_dir (the default when --validation_dir is given)."
            ),
        },
    )
    split_index: int = field(default=1, metadata={"help": "Which of the 10 splits (1..10)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the paper splits (see paper_splits)."})
    split_by_image: bool = field(
        default=False,
        metadata={
            "help": (
                "Paper splits at random over images even for synthetic datasets, whose splits are otherwise disjoint by "
                "reference content."
            )
        },
    )
    train_fraction: float = field(
        default=1.0,
        metadata={"help": ("Use this fraction of the training part (0.2/0.4/0.6: Table 5's data-efficiency study).")},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training part."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluated part."})
    mos_range: list[float] | None = field(
        default=None,
        metadata={
            "help": ("LO HI: native MOS range of --train_dir/--validation_dir folders (default: from the data).")
        },
    )
    lower_is_better: bool = field(default=False, metadata={"help": "Folder MOS are DMOS (lower = better)."})
    skip_bad_samples: bool = field(
        default=False,
        metadata={
            "help": (
                "Leave out bad rows (missing or undecodable images, bad MOS, unknown labels), report them and go on."
            )
        },
    )
    verify_images: bool = field(
        default=True,
        metadata={
            "help": (
                "Decode every image once before starting, so that all bad files are reported together (--no_verify_images "
                "to skip). An image that still fails later is dropped with a warning and counted."
            )
        },
    )
    max_image_size: int | None = field(
        default=None,
        metadata={
            "help": (
                "Downscale images whose longer side exceeds this (px) before cropping, in training and evaluation. Default: "
                "the dataset's, as the authors' code does (KonIQ-10k 512 as DEIQT's 512x384, BID 1024 as LIQE's shorter "
                "side of 768; others keep their pixels). 0: never downscale."
            )
        },
    )
    dataloader_num_workers: int = field(default=min(4, os.cpu_count() or 1))

    def __post_init__(self):
        if self.train_dir is not None and self.dataset_name is not None:
            raise ValueError("Give either --dataset_name or --train_dir, not both.")
        if not 1 <= self.split_index <= 10:
            raise ValueError(f"--split_index must be in 1..10, got {self.split_index}.")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"--train_fraction must be in (0, 1], got {self.train_fraction}.")
        if self.mos_range is not None and (
            len(self.mos_range) != 2
            or not all(math.isfinite(value) for value in self.mos_range)
            or self.mos_range[0] >= self.mos_range[1]
        ):
            raise ValueError(f"--mos_range takes two finite numbers LO HI with LO < HI, got {self.mos_range}.")
        check_number("max_train_samples", self.max_train_samples, at_least=1)
        check_number("max_eval_samples", self.max_eval_samples, at_least=1)
        check_number("dataloader_num_workers", self.dataloader_num_workers, at_least=0)
        if self.max_image_size is not None and self.max_image_size < 0:
            raise ValueError(f"--max_image_size must be a number of pixels or 0 (never), got {self.max_image_size}.")

    def check_folders(self):
        """Names a --train_dir / --validation_dir that is not a folder with metadata.csv (or a `save_to_disk` folder),
        and a --dataset_name path that does not exist, before anything is loaded."""
        for option in ("train_dir", "validation_dir"):
            folder = getattr(self, option)
            if folder is None:
                continue
            if not os.path.isdir(folder):
                raise ValueError(f"--{option} {folder}: no such folder.")
            if not any(os.path.isfile(os.path.join(folder, name)) for name in DATA_FOLDER_FILES):
                raise ValueError(
                    f"--{option} {folder}: no metadata.csv in it; write one with a row per image (file_name,mos; "
                    "docs/data.md) or pass the folder that holds it."
                )
        name = self.dataset_name
        if name is not None and name.startswith((os.sep, ".", "~")) and not os.path.exists(os.path.expanduser(name)):
            raise ValueError(f"--dataset_name {name}: no such folder.")

    @property
    def resolved_max_image_size(self) -> int | None:
        """The longer-side bound (px) the transforms get, None for native pixels: `max_image_size` when given (0 is
        None), else the named dataset's default (`DatasetSpec.max_image_size`), else None (folders, Hub datasets)."""
        if self.max_image_size is not None:
            return self.max_image_size or None
        if self.dataset_name is None and self.train_dir is not None:
            return None
        return default_max_image_size(self.dataset_name)

    @property
    def resolved_split_protocol(self) -> str:
        """The protocol in force: `split_protocol`, else `none` with a --validation_dir for training, else `paper`."""
        if self.split_protocol is not None:
            return self.split_protocol
        return "none" if self.train_dir is not None and self.validation_dir is not None else "paper"
