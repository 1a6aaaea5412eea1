"""From samples to model inputs: the labels ([`LabelEncoder`]), the seeded crops of [`IQATransform`], collation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import datasets
import numpy as np
import torch
from PIL import Image

from ..image_processing_mpiqe import MPIQEImageProcessor, downscaled_size
from ..image_utils_mpiqe import load_image


logger = logging.getLogger(__name__)


IGNORE_INDEX = -100


REQUIRED_COLUMNS = ("image", "mos_normalized", "scene", "distortion")


def derived_seed(seed: int, epoch: int, row: int, visit: int) -> int:
    """A 32-bit seed drawn from `(seed, epoch, row, visit)`."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch), int(row), int(visit)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


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
        visits: int | None = None,
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
