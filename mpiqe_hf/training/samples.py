"""The samples of a split (one row per `(row, visit)`) and the per-crop batches of an epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets
import numpy as np
import torch

from .transforms import IQATransform, collate_iqa_batch


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


def iqa_split(dataset: datasets.Dataset, indices: Sequence[int], transform: IQATransform, visits: int = 1):
    """The samples of `indices` ([`make_samples`]) with `transform` set: a map-style dataset for a `DataLoader`."""
    return make_samples(indices, visits).with_transform(transform)


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

    def __init__(
        self,
        image_loader,
        sampler: EpochShuffleSampler,
        visits: int,
        batch_size: int,
        buffer_size: int | None = None,
        seed: int = 0,
        process_index: int = 0,
        batches_multiple_of: int = 1,
    ):
        if batch_size < 1 or visits < 1 or batches_multiple_of < 1:
            raise ValueError(
                f"batch_size ({batch_size}), visits ({visits}) and batches_multiple_of "
                f"({batches_multiple_of}) must be positive."
            )
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
            raise ValueError(
                f"{total} crops cannot fill {count} batches: fewer crops per process than "
                f"{self.batches_multiple_of} gradient accumulation steps."
            )
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
                    raise ValueError(
                        "The image loader yielded other batches than its sampler listed: its sampler "
                        "must give the same order every time it is iterated in an epoch."
                    )
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
