"""Training helpers shared by `examples/train.py` and `examples/evaluate.py`.

A split is a small `datasets.Dataset` of samples, one row per `(row, visit)`: `row` indexes the IQA dataset (the
layout of `mpiqe_hf.data.load_iqa_dataset`, see `docs/data.md`) and `visit` numbers the times an epoch visits that
image. [`IQATransform`], set with `Dataset.with_transform`, decodes the images of a batch of samples and makes their
crops, so nothing is decoded before it is needed.

- Paper preset (per-crop training): every training image is visited `num_crops` times an epoch; each visit is one
  fresh random crop and its own sample (`pixel_values` `(1, 3, S, S)`), so batches count crops and the losses apply
  per crop, as in the paper's code base. [`ShuffledCropBatches`] decodes each image once an epoch
  (`IQATransform(visits=num_crops)` cuts all its visits' crops) and deals the crops into batches through a shuffle
  buffer, so a batch mixes crops of many images. [`make_samples`] with `visits=num_crops` lists the same samples one
  visit a row (one decode per crop), for inspection and for a plain `DataLoader`.
- Per-image training: `visits=1` and `crops_per_sample=num_crops`: one sample holds an image's `num_crops` random
  crops, whose scores the model averages before the loss.
- Evaluation: `visits=1`, grid crops; the model averages an image's crops.

The random crop (and optional flip) of a sample is drawn from a generator seeded with `(seed, epoch, row, visit)`,
not from the process-wide RNG: a sample's crop does not depend on the number of dataloader workers or processes, on
prefetching, or on where a run was interrupted, which is what makes `--resume_from_checkpoint` continue exactly.
Shuffling is Accelerate's seedable sampler (`DataLoaderConfiguration(use_seedable_sampler=True)`) or, for the
per-crop stream, [`EpochShuffleSampler`] and the buffer's generator, whose orders depend on `(seed, epoch)` (and the
process) only.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np
import torch
from PIL import Image

from .data import liqe_splits, load_iqa_dataset, paper_splits, splits_by_content, subsample
from .data.specs import canonical_dataset_name, default_max_image_size
from .image_processing_mpiqe import MPIQEImageProcessor, downscaled_size
from .image_utils_mpiqe import load_image
from .metrics import compute_metrics

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
REQUIRED_COLUMNS = ("image", "mos_normalized", "scene", "distortion")


def derived_seed(seed: int, epoch: int, row: int, visit: int) -> int:
    """A 32-bit seed drawn from `(seed, epoch, row, visit)`."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch), int(row), int(visit)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def make_samples(indices: Sequence[int], visits: int = 1) -> datasets.Dataset:
    """The samples of a split: columns `row` (each of `indices`, `visits` times in a row) and `visit` (0..visits-1)."""
    indices = np.asarray(list(indices), dtype=np.int64)
    if indices.size == 0:
        raise ValueError("The split is empty.")
    if visits < 1:
        raise ValueError(f"visits must be at least 1, got {visits}.")
    return datasets.Dataset.from_dict(
        {"row": np.repeat(indices, visits), "visit": np.tile(np.arange(visits, dtype=np.int64), indices.size)}
    )


class LabelEncoder:
    """
    Turns a row's `scene` and `distortion` values into the model's targets, by class name.

    The values may be names (strings) or `ClassLabel` ints of the dataset's features; a missing label (None, "", or
    a negative int) becomes an all-zero scene row or `IGNORE_INDEX`, which the model's losses skip.
    """

    def __init__(self, features: datasets.Features, scene_classes: Sequence[str], distortion_classes: Sequence[str]):
        self.scene_classes = list(scene_classes)
        self.scene_index = {name: i for i, name in enumerate(self.scene_classes)}
        self.distortion_index = {name: i for i, name in enumerate(distortion_classes)}
        self.distortion_classes = list(distortion_classes)
        scene = features.get("scene")
        scene = getattr(scene, "feature", None) or (scene[0] if isinstance(scene, list) and scene else None)
        distortion = features.get("distortion")
        self.scene_names = scene.names if isinstance(scene, datasets.ClassLabel) else None
        self.distortion_names = distortion.names if isinstance(distortion, datasets.ClassLabel) else None

    @staticmethod
    def _name(value, names):
        if value is None or value == "":
            return None
        if names is not None and isinstance(value, (int, np.integer)):
            return None if value < 0 else names[value]
        return value

    def scene_target(self, scenes) -> torch.Tensor:
        target = torch.zeros(len(self.scene_classes), dtype=torch.float32)
        for value in scenes or []:
            name = self._name(value, self.scene_names)
            if name is None:
                continue
            if name not in self.scene_index:
                raise ValueError(f"Unknown scene {name!r}; the model knows {self.scene_classes}.")
            target[self.scene_index[name]] = 1.0
        return target

    def distortion_target(self, distortion) -> int:
        name = self._name(distortion, self.distortion_names)
        if name is None:
            return IGNORE_INDEX
        if name not in self.distortion_index:
            raise ValueError(f"Unknown distortion {name!r}; the model knows {self.distortion_classes}.")
        return self.distortion_index[name]


class IQATransform:
    """
    The `Dataset.with_transform` function of a split made by [`make_samples`].

    Args:
        dataset (`datasets.Dataset`): the IQA dataset the samples' `row`s index.
        image_processor ([`MPIQEImageProcessor`]): makes the crops (its crop size; its `num_crops` for grid crops).
        scene_classes, distortion_classes (`Sequence[str]`): the model's vocabularies (`config.scene_classes`, ...).
        random_crops (`bool`): random crops (training) or the processor's deterministic grid (evaluation).
        crops_per_sample (`int`): random crops per sample: 1 in per-crop training, `num_crops` in per-image training.
        visits (`int`, *optional*): the sample holds the crops of all `visits` visits of its image, cut from one
            decode: crop `v` is the crop the per-visit sample `(row, v)` would have (same seed, same flip). The input
            of [`ShuffledCropBatches`]; needs `random_crops` and `crops_per_sample=1`.
        seed (`int`): base seed of the random crops and flips; see [`derived_seed`].
        horizontal_flip (`bool`): flip each random crop with probability 1/2.
        skip_bad_samples (`bool`): an image that fails to decode is dropped from its batch with a warning (and
            counted, see [`collate_iqa_batch`]) instead of stopping the run.

    Each sample becomes `pixel_values` `(crops, 3, S, S)` (`crops` = `visits`, else `crops_per_sample` or the grid's
    `num_crops`), `mos` `()` (normalised), `scene_labels`
    `(num_scene_classes,)` multi-hot, `distortion_labels` `()` (`IGNORE_INDEX` = no label) and `index` `()` (the
    row), or, when skipped, `pixel_values=None` and `error` saying why.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        image_processor: MPIQEImageProcessor,
        scene_classes: Sequence[str],
        distortion_classes: Sequence[str],
        *,
        random_crops: bool,
        crops_per_sample: int = 1,
        seed: int = 0,
        horizontal_flip: bool = False,
        skip_bad_samples: bool = False,
        visits: Optional[int] = None,
    ):
        if visits is not None and (visits < 1 or not random_crops or crops_per_sample != 1):
            raise ValueError(f"visits={visits} needs random_crops=True, crops_per_sample=1 and visits >= 1.")
        missing = set(REQUIRED_COLUMNS) - set(dataset.column_names)
        if missing:
            raise ValueError(f"The dataset lacks the columns {sorted(missing)}; load it with `load_iqa_dataset`.")
        self.labels = LabelEncoder(dataset.features, scene_classes, distortion_classes)
        # Undecoded {"path", "bytes"} dicts: `load_image` decodes one image at a time and its errors name the file,
        # so one bad image costs one sample, not the batch that `datasets`' own decoding would fail as a whole.
        if isinstance(dataset.features["image"], datasets.Image):
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        self.dataset = dataset.select_columns(list(REQUIRED_COLUMNS))
        self.image_processor = image_processor
        self.random_crops = random_crops
        self.crops_per_sample = int(crops_per_sample)
        self.seed = int(seed)
        self.horizontal_flip = horizontal_flip
        self.skip_bad_samples = skip_bad_samples
        self.visits = visits
        self.epoch = 0

    def set_epoch(self, epoch: int):
        """Selects the random crops of `epoch` (call before iterating, like `DistributedSampler.set_epoch`)."""
        self.epoch = int(epoch)

    def describe(self, row: int, image) -> str:
        return (image or {}).get("path") or f"row {row}"

    def crops(self, image: Image.Image, row: int, visit: int) -> torch.Tensor:
        # Downscaled once here, as the processor would (the same size and filter), rather than once per visit.
        size = downscaled_size(image.height, image.width, self.image_processor.max_image_size)
        if size != (image.height, image.width):
            image = image.resize(size[::-1], self.image_processor.resample)
        if not self.random_crops:
            return self.image_processor(image, crop_mode="grid", return_tensors="pt")["pixel_values"][0]
        if self.visits is not None:
            # One array for all visits: the processor would convert the PIL image again for every crop. The crops are
            # joined in numpy: torch.cat's threads contend with the training step's when no workers decode.
            pixels = np.asarray(image.convert("RGB"))
            crops = [self.visit_crops(pixels, row, v).numpy() for v in range(self.visits)]
            return torch.from_numpy(np.concatenate(crops))
        return self.visit_crops(image, row, visit)

    def visit_crops(self, image, row: int, visit: int) -> torch.Tensor:
        """The `(crops_per_sample, 3, S, S)` random crops of visit `visit` of dataset row `row` in this epoch."""
        seed = derived_seed(self.seed, self.epoch, row, visit)
        pixel_values = self.image_processor(
            image, num_crops=self.crops_per_sample, crop_mode="random", seed=seed, return_tensors="pt"
        )["pixel_values"][0]
        if self.horizontal_flip:
            flips = torch.rand(self.crops_per_sample, generator=torch.Generator().manual_seed(seed ^ 0x5EED)) < 0.5
            pixel_values[flips] = pixel_values[flips].flip(-1)
        return pixel_values

    def __call__(self, batch: dict) -> dict:
        rows = [int(row) for row in batch["row"]]
        visits = [int(visit) for visit in batch.get("visit", [0] * len(rows))]
        records = self.dataset[rows]
        out = {key: [] for key in ("pixel_values", "mos", "scene_labels", "distortion_labels", "index", "error")}
        for position, (row, visit) in enumerate(zip(rows, visits)):
            image = records["image"][position]
            where = self.describe(row, image)
            try:
                pixel_values = self.crops(load_image(image), row, visit)
                error = None
            except ValueError as err:
                if not self.skip_bad_samples:
                    raise ValueError(f"Dataset row {row}: {err}") from err
                pixel_values, error = None, f"row {row} ({where}): {err}"
            mos = records["mos_normalized"][position]
            if mos is None or not np.isfinite(mos):
                raise ValueError(f"Dataset row {row} ({where}): the normalised MOS is {mos!r}.")
            try:
                scene_labels = self.labels.scene_target(records["scene"][position])
                distortion = self.labels.distortion_target(records["distortion"][position])
            except ValueError as err:
                raise ValueError(f"Dataset row {row} ({where}): {err}") from err
            out["pixel_values"].append(pixel_values)
            out["mos"].append(torch.tensor(float(mos), dtype=torch.float32))
            out["scene_labels"].append(scene_labels)
            out["distortion_labels"].append(torch.tensor(distortion, dtype=torch.long))
            out["index"].append(torch.tensor(row, dtype=torch.long))
            out["error"].append(error)
        return out


def iqa_split(dataset: datasets.Dataset, indices: Sequence[int], transform: IQATransform, visits: int = 1):
    """The samples of `indices` ([`make_samples`]) with `transform` set: a map-style dataset for a `DataLoader`."""
    return make_samples(indices, visits).with_transform(transform)


def collate_iqa_batch(items):
    """
    Stacks the samples of [`IQATransform`]. Samples whose image failed to decode (`skip_bad_samples`) are dropped
    with a warning; their descriptions are in the batch's `skipped` list.
    """
    kept = [item for item in items if item["pixel_values"] is not None]
    skipped = [item["error"] for item in items if item["pixel_values"] is None]
    for error in skipped:
        logger.warning(f"Dropped an undecodable image: {error}")
    if not kept:
        raise ValueError(
            "Every image of a batch failed to decode; check the dataset (load_iqa_dataset(..., verify_images=True) "
            "lists every bad file)."
        )
    batch = {key: torch.stack([item[key] for item in kept]) for key in kept[0] if key != "error"}
    batch["skipped"] = skipped
    return batch


def keep_samples(items):
    """
    The `collate_fn` of an image loader feeding [`ShuffledCropBatches`]: the samples, one per image, each sample's
    `pixel_values` `(V, 3, S, S)` split into a list of `V` crops `(1, 3, S, S)` of their own (`None` stays `None`).
    Split here, in the loader's workers: a crop that shared its image's tensor would keep all of it alive in the
    buffer, and copying it in the training process would take the training step's time.
    """
    for item in items:
        if item["pixel_values"] is not None:
            item["pixel_values"] = [crop.clone() for crop in item["pixel_values"].split(1)]
    return items


class EpochShuffleSampler(torch.utils.data.Sampler):
    """
    Positions `0..num_samples-1` in an order drawn from `(seed, epoch)` alone: iterating twice in an epoch gives the
    same order, which [`ShuffledCropBatches`] relies on to plan an epoch before its images arrive.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, 0x5A3B1E])
        return iter(rng.permutation(self.num_samples).tolist())


class ShuffledCropBatches:
    """
    Per-crop training batches from a loader of whole images, each image decoded once an epoch.

    `image_loader` yields lists of samples of `IQATransform(visits=V)` (collated by [`keep_samples`]), in the order
    of a sampler that repeats itself within an epoch ([`EpochShuffleSampler`]; a loader prepared by Accelerate keeps
    it and takes its share of the image batches). Each arriving image puts its `V` crops into a buffer; whenever the
    buffer holds `buffer_size` crops, a batch is drawn from it at random, and the crops left when the images run out
    fill the epoch's last batches. A batch is therefore drawn from the crops of at least `buffer_size / V` images,
    each crop its own sample as in [`make_samples`] with `visits=V`, and every `(image, visit)` crop of the epoch is in
    exactly one batch.

    The epoch's batches are planned from the sampler's order and a generator seeded with `(seed, epoch,
    process_index)` before any image is decoded: they do not depend on the number of dataloader workers, and
    `iterate(start)` resumes at batch `start` decoding only the images whose crops are still to come.

    Args:
        image_loader (`torch.utils.data.DataLoader`): the image loader (plain or prepared by Accelerate).
        sampler ([`EpochShuffleSampler`]): its sampler, told each epoch.
        visits (`int`): crops of each image, `V`.
        batch_size (`int`): crops per batch at most; the epoch's crops are spread evenly over its batches.
        buffer_size (`int`, *optional*): crops in the buffer before a batch is drawn (default `8 * batch_size`).
        seed (`int`), process_index (`int`): seed of the buffer's draws.
        batches_multiple_of (`int`): the epoch's batch count is rounded up to a multiple of this (the gradient
            accumulation steps, so that an epoch ends on an optimizer step).

    Batches are [`collate_iqa_batch`] dicts: `pixel_values` `(n, 1, 3, S, S)`, `mos` `(n,)`, `scene_labels`
    `(n, num_scene_classes)`, `distortion_labels` `(n,)`, `index` `(n,)` (dataset rows) and `skipped` (one entry per
    crop of an image that failed to decode).
    """

    def __init__(self, image_loader, sampler: EpochShuffleSampler, visits: int, batch_size: int,
                 buffer_size: Optional[int] = None, seed: int = 0, process_index: int = 0,
                 batches_multiple_of: int = 1):
        if batch_size < 1 or visits < 1 or batches_multiple_of < 1:
            raise ValueError(f"batch_size ({batch_size}), visits ({visits}) and batches_multiple_of "
                             f"({batches_multiple_of}) must be positive.")
        buffer_size = 8 * batch_size if buffer_size is None else int(buffer_size)
        if buffer_size < batch_size:
            raise ValueError(f"The shuffle buffer ({buffer_size} crops) must hold at least a batch ({batch_size}).")
        self.image_loader = image_loader
        self.sampler = sampler
        self.visits = int(visits)
        self.batch_size = int(batch_size)
        self.buffer_size = buffer_size
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.batches_multiple_of = int(batches_multiple_of)
        self.epoch = 0

    def set_epoch(self, epoch: int):
        """Selects the image order and buffer draws of `epoch` (call before iterating)."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)
        if hasattr(self.image_loader, "set_epoch"):
            self.image_loader.set_epoch(epoch)

    def plan(self) -> tuple[list, list]:
        """
        `(batches, arrivals)` of the current epoch: `batches[t]` lists the `(image batch, position, visit)` crops of
        batch `t`; `arrivals[t]` is the image batch after whose arrival it is drawn.
        """
        sizes = [len(indices) for indices in self.image_loader.batch_sampler]
        total = sum(sizes) * self.visits
        if total == 0:
            raise ValueError("The image loader yields no images.")
        count = math.ceil(total / self.batch_size)
        count = self.batches_multiple_of * math.ceil(count / self.batches_multiple_of)
        if count > total:
            raise ValueError(f"{total} crops cannot fill {count} batches: fewer crops per process than "
                             f"{self.batches_multiple_of} gradient accumulation steps.")
        # Even sizes: rounding the count up to the accumulation steps never leaves a batch nearly empty.
        batch_sizes = [len(part) for part in np.array_split(np.arange(total), count)]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, self.process_index, 0xB0FFE2])
        buffer, batches, arrivals = [], [], []

        def draw(arrival):
            size = batch_sizes[len(batches)]
            picked = set(rng.choice(len(buffer), size=size, replace=False).tolist())
            batches.append([crop for i, crop in enumerate(buffer) if i in picked])
            buffer[:] = [crop for i, crop in enumerate(buffer) if i not in picked]
            arrivals.append(arrival)

        for j, size in enumerate(sizes):
            buffer.extend((j, position, visit) for position in range(size) for visit in range(self.visits))
            while len(batches) < count and len(buffer) >= max(self.buffer_size, batch_sizes[len(batches)]):
                draw(j)
        while len(batches) < count:
            draw(len(sizes) - 1)
        return batches, arrivals

    def __len__(self):
        return len(self.plan()[0])

    def __iter__(self):
        return self.iterate(0)

    def iterate(self, start: int = 0):
        """The epoch's batches from batch `start` on (a resumed run skips the images it no longer needs)."""
        from accelerate.data_loader import skip_first_batches

        batches, arrivals = self.plan()
        if start >= len(batches):
            return
        first = min(j for batch in batches[start:] for j, _, _ in batch)
        loader = skip_first_batches(self.image_loader, first) if first else self.image_loader
        needed = {key for batch in batches[start:] for key in batch}
        lengths = {}  # the fewest samples each image batch must hold
        for j, position, _ in needed:
            lengths[j] = max(lengths.get(j, 0), position + 1)
        images = iter(loader)
        crops, arrived = {}, first - 1
        for t in range(start, len(batches)):
            while arrived < arrivals[t]:
                arrived += 1
                samples = next(images, None)
                if samples is None or len(samples) < lengths.get(arrived, 0):
                    raise ValueError("The image loader yielded other batches than its sampler listed: its sampler "
                                     "must give the same order every time it is iterated in an epoch.")
                for position, sample in enumerate(samples):
                    pixel_values = sample["pixel_values"]
                    for visit in range(self.visits):
                        if (arrived, position, visit) in needed:
                            crop = None if pixel_values is None else pixel_values[visit]
                            crops[(arrived, position, visit)] = {**sample, "pixel_values": crop}
            yield collate_iqa_batch([crops.pop(key) for key in batches[t]])
        # The last batch came with the last image batch: ending the loader's iteration lets Accelerate's prepared
        # loader close it, so that it is no longer counted as the running dataloader.
        for _ in images:
            pass


def predict_per_image(dataloader, device, accelerator, score_of) -> dict:
    """
    `score_of(pixel_values (batch, crops, 3, S, S)) -> (batch, ...)` over the batches of `dataloader` (of
    [`collate_iqa_batch`]), in the dict of [`predict`]: the loop that MP-IQE and the baselines share.
    """
    indices, scores, targets, skipped = [], [], [], []
    for batch in dataloader:
        skipped.extend(batch["skipped"])
        score = score_of(batch["pixel_values"].to(device))
        mos, index = batch["mos"].to(device), batch["index"].to(device)
        if accelerator is not None:
            score, mos, index = accelerator.gather_for_metrics((score, mos, index))
        indices.append(index.cpu())
        scores.append(score.cpu())
        targets.append(mos.cpu())
    if not indices:
        raise ValueError("The evaluation dataloader is empty.")
    return {
        "index": torch.cat(indices).numpy(),
        "score": torch.cat(scores).numpy().astype(np.float64),
        "mos": torch.cat(targets).numpy().astype(np.float64),
        "skipped": skipped,
    }


@torch.no_grad()
def predict(model, dataloader, accelerator=None) -> dict:
    """
    Scores every image of `dataloader` (batches of [`collate_iqa_batch`]).

    Returns a dict: `index` (rows of the dataset), `score` (predicted, normalised to [0, 1], higher = better) and
    `mos` (the normalised ground truth) as numpy arrays, and `skipped` (descriptions of the images that failed to
    decode). With an `accelerator` the results of all processes are gathered with `gather_for_metrics` (the samples
    that padding duplicated are dropped).
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    # The text side does not depend on the image: computed once for the whole evaluation.
    text_features = (accelerator.unwrap_model(model) if accelerator is not None else model).get_text_features()
    try:
        return predict_per_image(
            dataloader,
            device,
            accelerator,
            lambda pixel_values: model(pixel_values=pixel_values, text_features=text_features).score.float(),
        )
    finally:
        model.train(was_training)


def evaluate_model(model, dataloader, accelerator=None) -> dict:
    """
    SRCC, PLCC (raw and after the 4-parameter logistic), KRCC and RMSE of the model's scores against the normalised
    MOS of `dataloader` (RMSE is on the normalised [0, 1] scale), plus `num_samples`. See [`predict`].
    """
    predictions = predict(model, dataloader, accelerator)
    metrics = compute_metrics(predictions["score"], predictions["mos"])
    metrics["num_samples"] = int(len(predictions["score"]))
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Data arguments and splits (shared by examples/train.py and examples/evaluate.py)
# ---------------------------------------------------------------------------------------------------------------------

SPLIT_PROTOCOLS = ("paper", "liqe", "none")


@dataclass
class DataArguments:
    """Where the images and scores come from and which split is used; `training_args.json` records them."""

    dataset_name: Optional[str] = field(default=None, metadata={"help": (
        "Built-in name (koniq10k, kadid10k, live, csiq, livec, bid, synthetic), a folder with metadata.csv, a "
        "save_to_disk folder or a Hub dataset. Default: synthetic (the embedded set).")})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: Optional[str] = field(default=None, metadata={"help": "Split of a Hub dataset (e.g. train)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Image root of a built-in dataset."})
    label_file: Optional[str] = field(default=None, metadata={"help": (
        "A LIQE label file (*_clip.txt) or LIQE database folder: LIQE's MOS, scene and distortion labels. It does "
        "not change the split; --split_protocol liqe selects LIQE's splits2/<k>.")})
    train_dir: Optional[str] = field(default=None, metadata={"help": "Folder with metadata.csv and training images."})
    validation_dir: Optional[str] = field(default=None, metadata={"help": "Folder with metadata.csv for validation."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Cache of the synthetic set and Hub downloads."})
    split_protocol: Optional[str] = field(default=None, metadata={"choices": list(SPLIT_PROTOCOLS), "help": (
        "paper (default): the paper's random 80/20 split, 10 repetitions (content-disjoint for synthetic datasets); "
        "liqe: LIQE's splits2/<k> 70/10/20 train/val/test (needs --label_file); none: train on all of --train_dir, "
        "validate on --validation_dir (the default when --validation_dir is given).")})
    split_index: int = field(default=1, metadata={"help": "Which of the 10 splits (1..10)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the paper splits (see paper_splits)."})
    split_by_image: bool = field(default=False, metadata={"help": (
        "Paper splits at random over images even for synthetic datasets, whose splits are otherwise disjoint by "
        "reference content.")})
    train_fraction: float = field(default=1.0, metadata={"help": (
        "Use this fraction of the training part (0.2/0.4/0.6: Table 5's data-efficiency study).")})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training part."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluated part."})
    mos_range: Optional[list[float]] = field(default=None, metadata={"help": (
        "LO HI: native MOS range of --train_dir/--validation_dir folders (default: from the data).")})
    lower_is_better: bool = field(default=False, metadata={"help": "Folder MOS are DMOS (lower = better)."})
    skip_bad_samples: bool = field(default=False, metadata={"help": (
        "Leave out bad rows (missing or undecodable images, bad MOS, unknown labels), report them and go on.")})
    verify_images: bool = field(default=True, metadata={"help": (
        "Decode every image once before starting, so that all bad files are reported together (--no_verify_images "
        "to skip). An image that still fails later is dropped with a warning and counted.")})
    max_image_size: Optional[int] = field(default=None, metadata={"help": (
        "Downscale images whose longer side exceeds this (px) before cropping, in training and evaluation. Default: "
        "the dataset's, as the authors' code does (KonIQ-10k 512 as DEIQT's 512x384, BID 1024 as LIQE's shorter "
        "side of 768; others keep their pixels). 0: never downscale.")})
    dataloader_num_workers: int = field(default=min(4, os.cpu_count() or 1))

    def __post_init__(self):
        if self.train_dir is not None and self.dataset_name is not None:
            raise ValueError("Give either --dataset_name or --train_dir, not both.")
        if not 1 <= self.split_index <= 10:
            raise ValueError(f"--split_index must be in 1..10, got {self.split_index}.")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"--train_fraction must be in (0, 1], got {self.train_fraction}.")
        if self.mos_range is not None and len(self.mos_range) != 2:
            raise ValueError(f"--mos_range takes two numbers LO HI, got {self.mos_range}.")
        if self.max_image_size is not None and self.max_image_size < 0:
            raise ValueError(f"--max_image_size must be a number of pixels or 0 (never), got {self.max_image_size}.")

    @property
    def resolved_max_image_size(self) -> Optional[int]:
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


@dataclass
class SplitPlan:
    """The parts of a split: training, validation (model selection) and, with LIQE's splits, test."""

    protocol: str
    description: str
    train_ds: datasets.Dataset
    train_idx: list
    eval_ds: datasets.Dataset
    eval_idx: list
    test_ds: Optional[datasets.Dataset] = None
    test_idx: Optional[list] = None

    @property
    def held_out(self):
        """`(dataset, indices, name)` of the part a trained model is scored on: LIQE's test part, else validation."""
        if self.test_idx is not None:
            return self.test_ds, self.test_idx, "test"
        return self.eval_ds, self.eval_idx, "validation" if self.protocol == "none" else "held-out 20 %"


def load_source(name, data_args: DataArguments, verify_images: Optional[bool] = None, **extra):
    """`load_iqa_dataset` with the options of `data_args` (folder options only for metadata.csv folders)."""
    kwargs = dict(cache_dir=data_args.cache_dir, skip_bad_samples=data_args.skip_bad_samples,
                  verify_images=data_args.verify_images if verify_images is None else verify_images)
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


def load_split_sources(data_args: DataArguments, verify_images: Optional[bool] = None):
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
    elif protocol == "paper":
        if data_args.validation_dir is not None and data_args.train_dir is not None:
            raise ValueError("--validation_dir is only used with --split_protocol none; drop one of them.")
        by_content = not data_args.split_by_image and splits_by_content(train_ds)
        train_idx, eval_idx = paper_splits(train_ds, seed=data_args.split_seed, by_content=by_content)[k - 1]
        description = (f"paper: random 80/20 split {k} of 10 of {name} (seed {data_args.split_seed}, "
                       + ("by content" if by_content else "by image") + ")")
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
    scene = sum(any(encoder._name(v, encoder.scene_names) is not None for v in scenes or [])
                for scenes in columns["scene"])
    distortion = sum(encoder._name(v, encoder.distortion_names) is not None for v in columns["distortion"])
    return {"scene": int(scene), "distortion": int(distortion)}


__all__ = [
    "DataArguments",
    "SplitPlan",
    "plan_split",
    "load_split_sources",
    "load_source",
    "label_coverage",
    "IGNORE_INDEX",
    "LabelEncoder",
    "IQATransform",
    "make_samples",
    "iqa_split",
    "derived_seed",
    "collate_iqa_batch",
    "keep_samples",
    "EpochShuffleSampler",
    "ShuffledCropBatches",
    "predict_per_image",
    "predict",
    "evaluate_model",
]
