"""Image processor of MP-IQE: cuts each image, at its native resolution, into a fixed number of CLIP-sized crops.

Quality depends on the pixels as they are, so by default images are never downscaled: an image is only enlarged
(aspect ratio kept) when a side is shorter than the crop. A model trained on downscaled copies (`max_image_size`, e.g.
KonIQ-10k at 512 px as DEIQT trains it) saves that bound in its processor, so that it scores images at the scale it
learned. Each image then gives `num_crops` crops, on a deterministic grid spanning the whole image (evaluation) or at
random positions (training).

Shipped as Hub remote code together with `image_utils_mpiqe.py` (its decoding).
"""

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from huggingface_hub.dataclasses import validate_typed_dict
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageInput, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_utils_mpiqe import to_rgb_array


__all__ = [
    "MPIQEImageProcessor",
    "MPIQEImageProcessorKwargs",
    "covering_num_crops",
    "downscaled_size",
    "enlarged_size",
    "grid_crop_positions",
    "grid_layout",
]


def _at_least_one(value: int | None = None):
    if isinstance(value, int) and value < 1:
        raise ValueError(f"must be at least 1, got {value}")


class MPIQEImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    num_crops (`int`, *optional*, defaults to `self.num_crops`):
        Number of crops per image.
    crop_mode (`str`, *optional*, defaults to `self.crop_mode`):
        `"grid"`: a deterministic grid spanning the image (see [`grid_crop_positions`]); `"random"`: uniformly
        random top-left corners.
    seed (`int`, *optional*, defaults to `self.seed`):
        Makes random crops reproducible with a `torch.Generator` private to the call. Unset, random crops draw from
        torch's global RNG, so `torch.manual_seed`, `accelerate.utils.set_seed` and the `DataLoader`'s per-worker
        seeding govern them. Grid crops ignore it.
    max_image_size (`int`, *optional*, defaults to `self.max_image_size`):
        Images whose longer side exceeds this many pixels are first downscaled to it (aspect ratio kept, with
        `resample`); `None` keeps the native resolution.
    """

    num_crops: Annotated[int | None, _at_least_one]
    crop_mode: Literal["grid", "random"] | None
    seed: int | None
    max_image_size: Annotated[int | None, _at_least_one]


def grid_layout(num_crops: int, height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int]:
    """
    Choose `(rows, cols)` with `rows * cols == num_crops` for the grid of crops over a `height` x `width` image.

    1. Keep the factor pairs whose grid reaches every border of the image: at least two rows when the image is taller
       than the crop, two columns when it is wider. If none does (a prime count on an image larger than the crop both
       ways), keep all pairs.
    2. Among those, take the pair whose smallest gap between neighbouring crop positions is largest, so the layout
       follows the image's shape: 8 crops give 2 x 4 on a landscape image, 4 x 2 on a portrait one, 8 x 1 on an image
       exactly one crop wide; a prime count gives a strip along the longer side.
    3. Ties go to the most balanced layout, then to the one with fewer rows.
    """
    span_y, span_x = max(height - crop_height, 0), max(width - crop_width, 0)
    pairs = [(rows, num_crops // rows) for rows in range(1, num_crops + 1) if num_crops % rows == 0]
    covering = [(rows, cols) for rows, cols in pairs if (rows > 1 or span_y == 0) and (cols > 1 or span_x == 0)]

    def rank(pair: tuple[int, int]) -> tuple[float, int, int]:
        rows, cols = pair
        gap_y = span_y / (rows - 1) if rows > 1 else math.inf
        gap_x = span_x / (cols - 1) if cols > 1 else math.inf
        return -min(gap_y, gap_x), abs(rows - cols), rows

    return min(covering or pairs, key=rank)


def downscaled_size(height: int, width: int, max_image_size: int | None) -> tuple[int, int]:
    """`(height, width)` with the longer side cut to `max_image_size` when it exceeds it (aspect ratio kept)."""
    if max_image_size is None or max(height, width) <= max_image_size:
        return height, width
    shrink = max_image_size / max(height, width)
    return max(1, round(height * shrink)), max(1, round(width * shrink))


def enlarged_size(
    height: int, width: int, crop_height: int, crop_width: int, max_image_size: int | None = None
) -> tuple[int, int]:
    """
    The size `(height, width)` an image is brought to before it is cut into crops: [`downscaled_size`] when
    `max_image_size` is given, then, if it no longer holds the crop, enlarged until it does (aspect ratio kept).
    """
    height, width = downscaled_size(height, width, max_image_size)
    scale = max(crop_height / height, crop_width / width)
    if scale <= 1:
        return height, width
    return max(crop_height, round(height * scale)), max(crop_width, round(width * scale))


def grid_crop_positions(
    height: int, width: int, crop_height: int, crop_width: int, num_crops: int
) -> list[tuple[int, int]]:
    """
    Top-left corners `(top, left)` of the deterministic grid of `num_crops` crops, row by row.

    With the layout of [`grid_layout`], rows sit at `round(linspace(0, height - crop_height, rows))` and columns at
    `round(linspace(0, width - crop_width, cols))`: the first crop touches the top-left corner and (with more than
    one row and column) the last one the bottom-right corner. The image must be at least as large as the crop.
    """
    if height < crop_height or width < crop_width:
        raise ValueError(f"a {height}x{width} image is smaller than the {crop_height}x{crop_width} crop")
    rows, cols = grid_layout(num_crops, height, width, crop_height, crop_width)
    tops = np.rint(np.linspace(0, height - crop_height, rows)).astype(int)
    lefts = np.rint(np.linspace(0, width - crop_width, cols)).astype(int)
    return [(int(top), int(left)) for top in tops for left in lefts]


def _spans_every_pixel(starts: list[int], crop: int, size: int) -> bool:
    """Whether crops of length `crop` starting at `starts` leave no gap on `0 .. size - 1`."""
    starts = sorted(set(starts))
    return starts[0] == 0 and starts[-1] + crop >= size and all(b - a <= crop for a, b in zip(starts, starts[1:]))


def covering_num_crops(
    height: int, width: int, crop_height: int, crop_width: int, max_image_size: int | None = None
) -> int:
    """
    The fewest crops whose grid ([`grid_crop_positions`]) covers every pixel of a `height` x `width` image, as the
    processor cuts it (after [`enlarged_size`]): what a quality map of the whole image needs.

    At least `ceil(height / crop_height) * ceil(width / crop_width)` crops; [`grid_layout`] may lay that count out in
    a way that leaves a gap (it spreads crops by their smallest gap), so larger counts are tried. Over every size up
    to 12 crops a side, at most 1.25 times the least count covers; should none up to twice it, the least count is
    returned, and the map reports how much it covers.
    """
    height, width = enlarged_size(height, width, crop_height, crop_width, max_image_size)
    least = math.ceil(height / crop_height) * math.ceil(width / crop_width)
    for num_crops in range(least, 2 * least + 1):
        positions = grid_crop_positions(height, width, crop_height, crop_width, num_crops)
        if _spans_every_pixel([top for top, _ in positions], crop_height, height) and _spans_every_pixel(
            [left for _, left in positions], crop_width, width
        ):
            return num_crops
    return least


class MPIQEImageProcessor(PilBackend):
    r"""
    Turns images into the `(batch_size, num_crops, 3, crop_height, crop_width)` `pixel_values` that MP-IQE scores.

    Each image is decoded robustly (see `image_utils_mpiqe.load_image`), enlarged with `resample` (aspect ratio kept)
    only when it is smaller than `crop_size`, and cut into `num_crops` crops: a deterministic grid
    (`crop_mode="grid"`: the same image always gives the same pixels) or random positions (`crop_mode="random"`,
    reproducible with `seed`). Crops are rescaled by `rescale_factor` and normalised with the CLIP statistics.

    Every setting below is a constructor argument, a key of `preprocessor_config.json` and a per-call override, e.g.
    `processor(image, num_crops=1, crop_mode="random", seed=step)` for one random training crop.

    Args:
        crop_size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Size of the crops, CLIP's input resolution (an int means a square).
        num_crops (`int`, *optional*, defaults to 8):
            Crops per image.
        crop_mode (`str`, *optional*, defaults to `"grid"`):
            `"grid"` or `"random"`.
        seed (`int`, *optional*):
            Seed of random crops; unset, they draw from torch's global RNG.
        max_image_size (`int`, *optional*):
            Longer side (px) above which images are downscaled before cropping; unset, never (the native pixels).
            Training writes the bound it trained with (`--max_image_size`, the dataset's default) into the saved
            processor.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Filter that resizes images (downscaling to `max_image_size`, enlarging to the crop).
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply the 0..255 pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Factor applied by `do_rescale`.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to subtract `image_mean` and divide by `image_std`, per channel.
        image_mean (`list[float]`, *optional*, defaults to `OPENAI_CLIP_MEAN`):
            Per-channel mean.
        image_std (`list[float]`, *optional*, defaults to `OPENAI_CLIP_STD`):
            Per-channel standard deviation.

    Images may be `PIL.Image.Image`s, paths, encoded bytes, `{"bytes", "path"}` dicts (undecoded `datasets.Image`
    rows), numpy arrays (HWC or HW: uint8 0..255, uint16 16-bit, float [0, 1]) or torch tensors (CHW or HW, same
    dtypes); a list, or a 4-D array (NHWC) or tensor (NCHW), is a batch. An image that cannot be used raises a
    `ValueError` naming its file, and in a batch its index.
    """

    valid_kwargs = MPIQEImageProcessorKwargs
    crop_size = {"height": 224, "width": 224}
    num_crops = 8
    crop_mode = "grid"
    seed = None
    max_image_size = None
    resample = PILImageResampling.BICUBIC
    do_rescale = True
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD

    def __init__(self, **kwargs: Unpack[MPIQEImageProcessorKwargs]):
        # transformers checks the settings of a call, not the stored ones: a bad saved or given setting fails here.
        settings = {key: value for key, value in kwargs.items() if key in self.valid_kwargs.__annotations__}
        validate_typed_dict(self.valid_kwargs, settings)
        super().__init__(**kwargs)

    @classmethod
    def default_for(cls, config) -> "MPIQEImageProcessor":
        """The processor of a checkpoint saved without one: square crops of its CLIP's input size (`config`, an
        [`MPIQEConfig`]), every other setting the default."""
        size = config.clip_config.vision_config.image_size
        return cls(crop_size={"height": size, "width": size})

    @classmethod
    def from_pretrained_or_default(cls, pretrained_model_name_or_path, config, **kwargs) -> "MPIQEImageProcessor":
        """The checkpoint's processor (its `preprocessor_config.json`), or [`default_for`] `config` where it has
        none. `kwargs` go to `from_pretrained` (`revision`, `token`, ...)."""
        try:
            return cls.from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError:
            return cls.default_for(config)

    def preprocess(self, images: ImageInput, **kwargs: Unpack[MPIQEImageProcessorKwargs]) -> BatchFeature:
        """
        Cut one image or a batch into crops; any setting may be overridden for the call, `None` keeping the
        processor's own (as in the constructor).

        Returns:
            [`BatchFeature`] with `pixel_values` of shape `(batch_size, num_crops, 3, crop_height, crop_width)`,
            float32 (`return_tensors="pt"` for a torch tensor, else a numpy array).
        """
        return super().preprocess(images, **{key: value for key, value in kwargs.items() if value is not None})

    def process_image(self, image: Any, **kwargs) -> np.ndarray:
        """One image -> a `(3, height, width)` RGB array on the 0..255 scale (uint8, or float32 for float/16-bit)."""
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            image = (image.float() if image.dtype in (torch.bfloat16, torch.float16) else image).numpy()
            return to_rgb_array(image, channels_first=True)
        return to_rgb_array(image)

    def _prepare_image_like_inputs(
        self,
        images: ImageInput,
        crop_size: SizeDict,
        resample: PILImageResampling,
        max_image_size: int | None = None,
        **kwargs,
    ) -> list[np.ndarray]:
        """Decode each image of the batch and bring it to [`enlarged_size`]; a failure names the image's index."""
        if crop_size.height is None or crop_size.width is None or min(crop_size.height, crop_size.width) < 1:
            raise ValueError(
                f"crop_size must have a positive 'height' and 'width' (the CLIP's input size), got {dict(crop_size)}"
            )
        is_batch = isinstance(images, (list, tuple)) or (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        )
        batch = list(images) if is_batch else [images]
        if not batch:
            raise ValueError("no images were given")
        prepared = []
        for index, image in enumerate(batch):
            try:
                prepared.append(self._fit(self.process_image(image), crop_size, max_image_size, resample))
            except ValueError as err:
                if not is_batch:
                    raise
                raise ValueError(f"image at index {index}: {err}") from err
        return prepared

    @staticmethod
    def _fit(
        image: np.ndarray, crop_size: SizeDict, max_image_size: int | None, resample: PILImageResampling
    ) -> np.ndarray:
        _, height, width = image.shape
        new_height, new_width = enlarged_size(height, width, crop_size.height, crop_size.width, max_image_size)
        if (new_height, new_width) == (height, width):
            return image
        if new_height * new_width > 4 * (Image.MAX_IMAGE_PIXELS or math.inf):
            raise ValueError(
                f"enlarging this {height}x{width} image to the {crop_size.height}x{crop_size.width} crop would need "
                f"{new_height}x{new_width} pixels, beyond the decompression-bomb limit"
            )
        size = (new_width, new_height)
        if image.dtype == np.uint8:
            return np.asarray(Image.fromarray(image.transpose(1, 2, 0)).resize(size, resample)).transpose(2, 0, 1)
        # Float and 16-bit inputs keep their precision: channel by channel as float ("F") images.
        channels = [
            np.asarray(Image.fromarray(channel.astype(np.float32)).resize(size, resample)) for channel in image
        ]
        return np.clip(np.stack(channels), 0, 255)

    def _preprocess(
        self,
        images: list[np.ndarray],
        crop_size: SizeDict,
        num_crops: int,
        crop_mode: str,
        seed: int | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        return_tensors: str | None,
        **kwargs,
    ) -> BatchFeature:
        crop_height, crop_width = crop_size.height, crop_size.width
        generator = torch.Generator().manual_seed(seed) if crop_mode == "random" and seed is not None else None
        pixel_values = np.empty((len(images), num_crops, 3, crop_height, crop_width), dtype=np.float32)
        for image, crops in zip(images, pixel_values):
            _, height, width = image.shape
            if crop_mode == "random":
                tops = torch.randint(0, height - crop_height + 1, (num_crops,), generator=generator).tolist()
                lefts = torch.randint(0, width - crop_width + 1, (num_crops,), generator=generator).tolist()
                positions = zip(tops, lefts)
            else:
                positions = grid_crop_positions(height, width, crop_height, crop_width, num_crops)
            for crop, (top, left) in zip(crops, positions):
                crop[...] = image[:, top : top + crop_height, left : left + crop_width]
        if do_rescale:
            pixel_values *= np.float32(rescale_factor)
        if do_normalize:
            pixel_values -= np.reshape(np.asarray(image_mean, dtype=np.float32), (-1, 1, 1))
            pixel_values /= np.reshape(np.asarray(image_std, dtype=np.float32), (-1, 1, 1))
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)
