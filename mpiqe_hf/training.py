"""Training helpers shared by `examples/train.py` and `examples/evaluate.py`.

- [`IQATrainingDataset`] wraps a `datasets.Dataset` of the library's layout (see `docs/data.md`) as a torch
  `Dataset` whose items hold the model inputs: `pixel_values` (K crops), `mos` (normalised), `scene_labels`
  (multi-hot) and `distortion_labels` (index or -100), plus the row `index`.
- [`EpochShuffleSampler`] shuffles with a permutation that depends only on `(seed, epoch)`.
- [`collate_iqa_batch`] stacks items and drops the ones that failed to decode (when skipping is on).
- [`predict`] and [`evaluate_model`] score a dataloader, gathering across processes with
  `accelerator.gather_for_metrics`, and compute SRCC/PLCC with [`compute_metrics`].

Random crops are drawn from a `torch.Generator` seeded with `(seed, epoch, row index)`, not from the process-wide
RNG: the crops an image gets do not depend on the number of dataloader workers or processes, on prefetching, or on
where a run was interrupted, which is what makes `--resume_from_checkpoint` continue exactly.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import datasets
import numpy as np
import torch

from .image_processing_mpiqe import MPIQEImageProcessor
from .image_utils_mpiqe import load_image
from .metrics import compute_metrics

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _derived_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 32-bit seed drawn from `(seed, epoch, stream, index)`: stream 0 = crops of row `index`, 1 = shuffling."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch), int(stream), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class IQATrainingDataset(torch.utils.data.Dataset):
    """
    A torch view of an IQA `datasets.Dataset` (columns `image`, `mos_normalized`, `scene`, `distortion`).

    Args:
        dataset (`datasets.Dataset`): rows in the layout of `mpiqe_hf.data.load_iqa_dataset`.
        image_processor ([`MPIQEImageProcessor`]): makes the crops (its `crop_size` and `num_crops`).
        scene_classes, distortion_classes (`Sequence[str]`): the model's vocabularies (`config.scene_classes`, ...).
        indices (`Sequence[int]`, *optional*): rows of `dataset` to use (a split); default all.
        train (`bool`): random crops (training) or the deterministic grid (evaluation).
        seed (`int`): base seed of the random crops; the crops of row `i` in epoch `e` are drawn from a generator
            seeded with `(seed, e, i)`.
        skip_bad_samples (`bool`): return `None` for an image that fails to decode (the collate function drops it
            and logs a warning) instead of raising.

    Items are dicts with `pixel_values` `(K, 3, S, S)`, `mos` `()`, `scene_labels` `(num_scenes,)` float,
    `distortion_labels` `()` long (-100 = no label) and `index` `()` long (the row in `dataset`).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        image_processor: MPIQEImageProcessor,
        scene_classes: Sequence[str],
        distortion_classes: Sequence[str],
        indices: Optional[Sequence[int]] = None,
        train: bool = True,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ):
        missing = {"image", "mos_normalized", "scene", "distortion"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"The dataset lacks the columns {sorted(missing)}; load it with `load_iqa_dataset`.")
        # Undecoded {"path", "bytes"} dicts: decoding goes through `load_image`, whose errors name the file.
        if isinstance(dataset.features["image"], datasets.Image):
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        if not self.indices:
            raise ValueError("The split is empty.")
        self.image_processor = image_processor
        self.scene_classes = list(scene_classes)
        self.distortion_classes = list(distortion_classes)
        self._scene_index = {name: i for i, name in enumerate(self.scene_classes)}
        self._distortion_index = {name: i for i, name in enumerate(self.distortion_classes)}
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.skip_bad_samples = skip_bad_samples

    def set_epoch(self, epoch: int):
        """Selects the random crops of `epoch` (call before iterating, like `DistributedSampler.set_epoch`)."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.indices)

    def image_path(self, position: int) -> str:
        image = self.dataset[self.indices[position]]["image"]
        return (image or {}).get("path") or f"<embedded image, row {self.indices[position]}>"

    def scene_target(self, scenes) -> torch.Tensor:
        target = torch.zeros(len(self.scene_classes), dtype=torch.float32)
        for name in scenes or []:
            if name not in self._scene_index:
                raise ValueError(f"Unknown scene {name!r}; the model knows {self.scene_classes}.")
            target[self._scene_index[name]] = 1.0
        return target

    def distortion_target(self, distortion) -> int:
        if distortion is None or distortion == "":
            return IGNORE_INDEX
        if distortion not in self._distortion_index:
            raise ValueError(f"Unknown distortion {distortion!r}; the model knows {self.distortion_classes}.")
        return self._distortion_index[distortion]

    def __getitem__(self, position: int):
        row_index = self.indices[position]
        row = self.dataset[row_index]
        where = (row["image"] or {}).get("path") or f"row {row_index}"
        try:
            image = load_image(row["image"])
            if self.train:
                pixel_values = self.image_processor.preprocess(
                    image, crop_mode="random", seed=_derived_seed(self.seed, self.epoch, row_index, 0), return_tensors="pt"
                )["pixel_values"][0]
            else:
                pixel_values = self.image_processor.preprocess(image, crop_mode="grid", return_tensors="pt")[
                    "pixel_values"
                ][0]
        except ValueError as err:
            if self.skip_bad_samples:
                logger.warning(f"Skipping dataset row {row_index}: {err}")
                return None
            raise ValueError(f"Dataset row {row_index}: {err}") from err
        mos = row["mos_normalized"]
        if mos is None or not np.isfinite(mos):
            raise ValueError(f"Dataset row {row_index} ({where}): the normalised MOS is {mos!r}.")
        try:
            scene_labels = self.scene_target(self.dataset.features["scene"].feature.int2str(row["scene"]))
            distortion = self.distortion_target(
                self.dataset.features["distortion"].int2str(row["distortion"]) if row["distortion"] >= 0 else None
            )
        except ValueError as err:
            raise ValueError(f"Dataset row {row_index} ({where}): {err}") from err
        return {
            "pixel_values": pixel_values,
            "mos": torch.tensor(float(mos), dtype=torch.float32),
            "scene_labels": scene_labels,
            "distortion_labels": torch.tensor(distortion, dtype=torch.long),
            "index": torch.tensor(row_index, dtype=torch.long),
        }


def collate_iqa_batch(items):
    """Stacks the items of [`IQATrainingDataset`]; `None` items (images skipped by `skip_bad_samples`) are dropped."""
    kept = [item for item in items if item is not None]
    if len(kept) < len(items):
        logger.warning(f"Dropped {len(items) - len(kept)} undecodable image(s) from a batch.")
    if not kept:
        raise ValueError("Every image of a batch failed to decode; check the dataset (e.g. with --verify_images).")
    return {key: torch.stack([item[key] for item in kept]) for key in kept[0]}


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Yields `range(num_samples)` in an order drawn from `(seed, epoch)` only, so a resumed run sees the same order."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.epoch, 0, 1))
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


@torch.no_grad()
def predict(model, dataloader, accelerator=None) -> dict:
    """
    Scores every image of `dataloader` (batches of [`collate_iqa_batch`]).

    Returns a dict of numpy arrays: `index` (rows of the dataset), `score` (predicted, normalised to [0, 1], higher =
    better) and `mos` (the normalised ground truth). With an `accelerator` the results of all processes are gathered
    with `gather_for_metrics` (the samples that padding duplicated are dropped).
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    indices, scores, targets = [], [], []
    for batch in dataloader:
        pixel_values = batch["pixel_values"].to(device)
        outputs = model(pixel_values=pixel_values)
        score, mos, index = outputs.score.float(), batch["mos"].to(device), batch["index"].to(device)
        if accelerator is not None:
            score, mos, index = accelerator.gather_for_metrics((score, mos, index))
        indices.append(index.cpu())
        scores.append(score.cpu())
        targets.append(mos.cpu())
    model.train(was_training)
    if not indices:
        raise ValueError("The evaluation dataloader is empty.")
    return {
        "index": torch.cat(indices).numpy(),
        "score": torch.cat(scores).numpy().astype(np.float64),
        "mos": torch.cat(targets).numpy().astype(np.float64),
    }


def evaluate_model(model, dataloader, accelerator=None) -> dict:
    """
    SRCC, PLCC (raw and after the 4-parameter logistic), KRCC and RMSE of the model's scores against the normalised
    MOS of `dataloader` (RMSE is on the normalised [0, 1] scale), plus `num_samples`. See [`predict`].
    """
    predictions = predict(model, dataloader, accelerator)
    metrics = compute_metrics(predictions["score"], predictions["mos"])
    metrics["num_samples"] = int(len(predictions["score"]))
    return metrics


__all__ = [
    "IQATrainingDataset",
    "EpochShuffleSampler",
    "collate_iqa_batch",
    "predict",
    "evaluate_model",
    "IGNORE_INDEX",
]
