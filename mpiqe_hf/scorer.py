"""
MP-IQE as a metric object: scores tensors, files and arrays, serves as a differentiable loss term, and is the callable
of `ray.data.Dataset.map_batches` and `datasets.Dataset.map(batched=True)`.

Not a model file (it is not shipped as Hub remote code); Ray and `datasets` are never imported here: they hand their
batches to [`MPIQEScorer.__call__`].
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image_processing_mpiqe import MPIQEImageProcessor, enlarged_size, grid_crop_positions
from .modeling_mpiqe import MPIQEModel
from .pipeline_mpiqe import quality_result


__all__ = ["MPIQEScorer"]

#: Columns `return_labels=True` adds to a dict batch, beside the score column.
LABEL_COLUMNS = ("quality", "scene", "distortion")


def cast_keeping_fp32_modules(model: MPIQEModel, dtype: torch.dtype) -> MPIQEModel:
    """`model.to(dtype)` that keeps the modules of `_keep_in_fp32_modules_strict` (the score head) in float32, as
    `from_pretrained(..., dtype=...)` keeps them: bfloat16 scores would move in steps of 2**-8."""
    model.to(dtype=dtype)
    for name in model._keep_in_fp32_modules_strict:
        model.get_submodule(name).float()
    return model


class MPIQEScorer:
    r"""
    An MP-IQE model as a metric: images in, scores `(batch_size,)` out, on the model's native MOS scale (as the
    pipeline's `"score"`; e.g. 1-5 for KonIQ-10k).

    Inputs of `scorer(images)`:

    - a float tensor `(batch_size, 3, height, width)` with values in `[0, 1]` (all images of one tensor share a
      size). Cropping, resizing and normalisation run in torch, so the score is differentiable with respect to the
      pixels when `as_loss=True` or when the tensor requires grad; otherwise it runs under `torch.no_grad()` and the
      score holds no graph. Crops are placed as the image processor places them (its `crop_mode`, `num_crops`,
      `crop_size`, `seed`), and normalised with its `rescale_factor`, `image_mean` and `image_std`: the scores are
      the pipeline's for the same pixels and crops (to 1e-5). An image whose size must change first (a side under the
      crop, or longer than the processor's `max_image_size`) is resized with torch's antialiased bicubic filter, which
      follows the Pillow float-mode bicubic that the processor uses for float pixels to about 1e-5 per pixel; the
      processor resizes 8-bit images (files, uint8 arrays) in Pillow's 8-bit mode instead, which rounds, so there
      the pipeline's score of the file and the scorer's of its float tensor differ by more than 1e-5;
    - a path, encoded bytes, a `{"bytes", "path"}` dict, a `PIL.Image.Image` or a numpy array (HWC or HW), or a list
      of them, or a 4-D array `(batch_size, height, width, 3)`: decoded, resized and cropped by the image processor
      exactly as the pipeline does (no gradient);
    - a dict of columns (a Ray Data batch, a `datasets` batch): see "Datasets" below.

    The weights are frozen: the scorer calls `model.requires_grad_(False)` and `model.eval()` on its model. A model
    object you pass is used as it is, not copied, so those calls (and `device`, `dtype`) change your object too; pass
    `copy.deepcopy(model)` to keep yours trainable. The text features are computed once, at construction.

    Datasets: called on a dict batch, the scorer reads the images of `image_column` (decoded arrays, a 4-D array,
    encoded bytes, paths, PIL images or `{"bytes", "path"}` dicts), scores them and adds `score_column` (float32) and,
    with `return_labels=True`, the `quality`, `scene` and `distortion` columns (strings; `None` for a model without
    those prompts), and returns the batch (`map_batches` keeps only the columns returned). `datasets` writes back
    every column a function has read, encoding decoded images again (JPEGs are compressed again): cast the image
    column to `datasets.Image(decode=False)` first, so that the scorer decodes the bytes and the column stays as it
    was.

    ```python
    ds.map_batches(MPIQEScorer, fn_constructor_kwargs={"model": "org/mp-iqe-koniq"}, concurrency=2, batch_size=16)
    dataset.cast_column("image", Image(decode=False)).map(MPIQEScorer("org/mp-iqe-koniq"), batched=True)
    ```

    Args:
        model ([`MPIQEModel`], `str` or `os.PathLike`): a model, a local folder or a Hub repo id.
        processor ([`MPIQEImageProcessor`], *optional*): how images are cropped; defaults to the checkpoint's
            (`preprocessor_config.json` in `model`, or in the folder or repo a model object was loaded from), or to
            [`MPIQEImageProcessor.default_for`] its config where there is none.
        device (`str` or `torch.device`, *optional*): where the model runs; defaults to where it is (a loaded model:
            the CPU).
        dtype (`torch.dtype`, *optional*): the model's dtype (e.g. `torch.bfloat16`, also on the CPU); the score
            head stays float32 and scores are float32.
        revision (`str`, *optional*): the revision of a Hub repo `model`.
        num_crops (`int`, *optional*): crops per image, instead of the processor's.
        image_column (`str`, defaults to `"image"`), score_column (`str`, defaults to `"score"`): the columns a dict
            batch is read from and written to.
        return_labels (`bool`, defaults to `False`): also add the `quality`, `scene` and `distortion` columns to a
            dict batch, as the pipeline names them.

    Attributes:
        lower_better (`bool`): whether a lower score means a better image: `False` for MOS scales, `True` for a model
            trained on a DMOS scale (`config.mos_higher_is_better=False`, e.g. LIVE). Mind it when the score is a
            loss term.
        score_range (`tuple[float, float]`): the training dataset's native MOS range `(mos_min, mos_max)` that scores
            are mapped to.
        text_features ([`MPIQETextFeatures`]): the prompts' features, computed once.
    """

    def __init__(
        self,
        model: MPIQEModel | str | os.PathLike,
        processor: MPIQEImageProcessor | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        num_crops: int | None = None,
        image_column: str = "image",
        score_column: str = "score",
        return_labels: bool = False,
    ):
        if num_crops is not None and (isinstance(num_crops, bool) or not isinstance(num_crops, int) or num_crops < 1):
            raise ValueError(f"num_crops must be a positive int, got {num_crops!r}")
        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
            kwargs = {} if dtype is None else {"dtype": dtype}
            model = MPIQEModel.from_pretrained(source, revision=revision, **kwargs)
        elif isinstance(model, MPIQEModel):
            source = model.name_or_path
            if dtype is not None:
                cast_keeping_fp32_modules(model, dtype)
        else:
            raise TypeError(
                f"model must be an MPIQEModel, a local folder or a Hub repo id, got {type(model).__name__}"
            )
        if device is not None:
            model.to(device)
        self.model = model.eval().requires_grad_(False)
        if processor is None:
            processor = (
                MPIQEImageProcessor.from_pretrained_or_default(source, model.config, revision=revision)
                if source
                else MPIQEImageProcessor.default_for(model.config)
            )
        self.processor = processor
        self.num_crops = num_crops or processor.num_crops
        self.image_column = image_column
        self.score_column = score_column
        self.return_labels = return_labels

        config = model.config
        self.lower_better = not config.mos_higher_is_better
        self.score_range = (config.mos_min, config.mos_max)
        with torch.no_grad():
            self.text_features = model.get_text_features()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def __call__(self, images: Any, as_loss: bool = False) -> torch.Tensor | Mapping:
        """
        Scores `images` (see the class docstring for the accepted inputs).

        Args:
            images: a float tensor `(batch_size, 3, height, width)` in `[0, 1]`, one image or a list of images
                (paths, bytes, PIL images, numpy arrays), or a dict batch of columns.
            as_loss (`bool`, defaults to `False`): keep the graph from the pixels of a tensor to the score, for
                `score.backward()` (also done when the tensor requires grad); the weights get no gradient.

        Returns:
            `torch.FloatTensor` of shape `(batch_size,)` on the model's device, on the native MOS scale; for a dict
            batch, the same batch with the new columns (see the class docstring).
        """
        if isinstance(images, torch.Tensor):
            if as_loss:
                context = torch.enable_grad()
            elif images.requires_grad:
                context = contextlib.nullcontext()
            else:
                context = torch.no_grad()
            with context:
                return self._native_score(self._forward(self._crops(images)))
        if as_loss:
            raise ValueError(
                f"as_loss=True needs the pixels as a float tensor (batch_size, 3, height, width), got "
                f"{type(images).__name__}: load the images into such a tensor"
            )
        if isinstance(images, Mapping):
            return self._score_batch(images)
        if isinstance(images, (list, tuple)) and not images:
            return torch.empty(0, device=self.device)  # as the pipeline answers [] with []
        with torch.no_grad():
            return self._native_score(self._forward(self._processed(images)))

    # -- steps ---------------------------------------------------------------------------------------------------------

    def _crops(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch_size, 3, height, width)` in [0, 1] -> normalised crops `(batch_size, num_crops, 3, crop_height,
        crop_width)`, as the image processor makes them."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor (batch_size, 3, height, width) in [0, 1], got a {images.dtype} "
                f"tensor of shape {tuple(images.shape)}: add a batch axis with images[None], move channels first, "
                "or divide 0..255 values by 255"
            )
        if not torch.isfinite(images).all():
            raise ValueError(
                "images hold NaN or infinite values: find where the pixels came from (a division by zero, an "
                "overflowing half-precision step) and pass finite values in [0, 1]"
            )
        low, high = images.aminmax()
        # the processor's tolerance for float images
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"images must lie in [0, 1], got values in [{low.item():.4g}, {high.item():.4g}]: pass "
                "images.clamp(0, 1), or divide 0..255 values by 255"
            )
        processor = self.processor
        crop_height, crop_width = processor.crop_size["height"], processor.crop_size["width"]
        images = images.to(self.device).clamp(0, 1)
        batch_size, _, height, width = images.shape
        size = enlarged_size(height, width, crop_height, crop_width, processor.max_image_size)
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        crops = torch.stack(
            [
                torch.stack([image[:, top : top + crop_height, left : left + crop_width] for top, left in positions])
                for image, positions in zip(images, self._crop_positions(batch_size, *size))
            ]
        )
        # The processor scales 0..255 values by `rescale_factor`; the tensor holds them divided by 255 already.
        crops = crops * (255 * processor.rescale_factor if processor.do_rescale else 255.0)
        if processor.do_normalize:
            mean = torch.tensor(processor.image_mean, dtype=crops.dtype, device=crops.device).view(-1, 1, 1)
            std = torch.tensor(processor.image_std, dtype=crops.dtype, device=crops.device).view(-1, 1, 1)
            crops = (crops - mean) / std
        return crops

    def _crop_positions(self, batch_size: int, height: int, width: int) -> list[list[tuple[int, int]]]:
        """Each image's crop corners `(top, left)`, drawn as `MPIQEImageProcessor` draws them."""
        processor = self.processor
        crop_height, crop_width = processor.crop_size["height"], processor.crop_size["width"]
        if processor.crop_mode == "grid":
            return [grid_crop_positions(height, width, crop_height, crop_width, self.num_crops)] * batch_size
        seed = processor.seed
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        positions = []
        for _ in range(batch_size):
            tops = torch.randint(0, height - crop_height + 1, (self.num_crops,), generator=generator).tolist()
            lefts = torch.randint(0, width - crop_width + 1, (self.num_crops,), generator=generator).tolist()
            positions.append(list(zip(tops, lefts)))
        return positions

    def _processed(self, images: Any) -> torch.Tensor:
        """Paths, bytes, PIL images or arrays (one or a list) -> the processor's crops."""
        batch = list(images) if isinstance(images, (list, tuple)) else images
        if isinstance(batch, list) and any(isinstance(image, torch.Tensor) for image in batch):
            raise ValueError(
                "a list holding tensors: pass the images as one float tensor (batch_size, 3, height, width) in [0, 1]"
            )
        return self.processor(batch, num_crops=self.num_crops, return_tensors="pt")["pixel_values"]

    def _forward(self, pixel_values: torch.Tensor):
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.model(pixel_values=pixel_values, text_features=self.text_features)

    def _native_score(self, output) -> torch.Tensor:
        return self.model.to_native_scale(output.score.float())

    def _score_batch(self, batch: MutableMapping) -> MutableMapping:
        if self.image_column not in batch:
            raise ValueError(
                f"the batch has no image column {self.image_column!r} (its columns: {', '.join(map(str, batch))}): "
                "pass image_column= naming the column that holds the images"
            )
        images = list(batch[self.image_column])
        with torch.no_grad():
            output = self._forward(self._processed(images))
            normalized = output.score.float()
            native = self.model.to_native_scale(normalized)
        columns = {self.score_column: native.cpu().numpy()}
        if self.return_labels:
            results = [
                quality_result(
                    self.model.config,
                    normalized[index],
                    native[index],
                    None if output.scene_logits is None else output.scene_logits[index],
                    None if output.distortion_logits is None else output.distortion_logits[index],
                )
                for index in range(len(images))
            ]
            for key in LABEL_COLUMNS:
                columns[key] = np.array([result[key] for result in results], dtype=object)
        batch.update(columns)
        return batch
