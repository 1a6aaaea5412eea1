"""Image processor of MP-IQE: decodes images robustly and cuts each one into a fixed number of square crops.

Quality assessment must see pixels at their native resolution, so images are never downscaled: an image is only
resized (upwards, aspect ratio kept) when one of its sides is shorter than the crop size. Each image then yields
`num_crops` crops of `crop_size` x `crop_size`, either on a deterministic grid that spans the whole image (evaluation)
or at uniformly random positions (training).

This file is loaded as Hub remote code, so it only depends on torch, transformers, numpy and Pillow.
"""

from __future__ import annotations

import io
import math
import os
from struct import error as struct_error
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = ["MPIQEImageProcessor", "MPIQEImageProcessorKwargs", "load_image", "grid_crop_positions", "grid_layout"]

CROP_MODES = ("grid", "random")

# Settings that make up the saved configuration (preprocessor_config.json), in a stable order.
_CONFIG_KEYS = (
    "crop_size",
    "num_crops",
    "crop_mode",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)

# Keys that transformers itself writes into, or passes through, a processor config and that carry no setting.
_BOOKKEEPING_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type", "_processor_class")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_EXIF_ORIENTATION = 0x0112


class MPIQEImageProcessorKwargs(ImagesKwargs, total=False):
    """The keyword arguments transformers may forward to [`MPIQEImageProcessor`] on top of the generic ones."""

    num_crops: int | None
    crop_mode: str | None


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


def _describe_source(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"image file '{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"in-memory image ({len(source)} bytes)"
    if isinstance(source, dict):
        if source.get("path"):
            return f"image file '{source['path']}'"
        return "in-memory image"
    if isinstance(source, Image.Image):
        return "PIL image"
    return f"image of type {type(source).__name__}"


def _composite_over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Map integer images deeper than 8 bits and float images to 8-bit RGB by scaling, never by clipping."""
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:
            scaled = np.zeros_like(values)
    else:
        # "I;16*" modes hold 16-bit samples; "I" (32-bit) is how Pillow often represents 16-bit PNG/TIFF data, so
        # it is read on the 16-bit scale unless the data exceed it, in which case the actual maximum is used.
        values = values.astype(np.float64)
        values = np.clip(values, 0.0, None)
        full_scale = 65535.0
        if image.mode == "I" and values.size and values.max() > full_scale:
            full_scale = float(values.max())
        scaled = values * (255.0 / full_scale)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "F" or mode.startswith("I"):  # any transparency of such rare images is ignored
        return _high_depth_to_rgb(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_over_white(image)
    if mode == "1":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")


def _open_and_decode(source: Any) -> Image.Image:
    """Open `source`, decode every pixel and return an RGB image; lets Pillow/OS errors propagate."""
    if isinstance(source, Image.Image):
        image = source
        image.load()
        if image.width == 0 or image.height == 0:
            raise ValueError("the image has zero width or height")
        return _finish(image)

    if isinstance(source, dict):  # `datasets.Image(decode=False)` rows: {"bytes": ..., "path": ...}
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise ValueError("the dict holds neither 'bytes' nor 'path'")

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path.startswith(("http://", "https://")):
            raise ValueError("URLs are not supported; download the image and pass its path or bytes")
        if not os.path.exists(path):
            raise ValueError("no such file")
        if os.path.isdir(path):
            raise ValueError("the path is a directory, not an image file")
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty")
        with Image.open(path) as image:
            image.load()
            return _finish(image)

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ValueError("the data are empty (0 bytes)")
        with Image.open(io.BytesIO(bytes(source))) as image:
            image.load()
            return _finish(image)

    if hasattr(source, "read"):  # an open binary file object
        with Image.open(source) as image:
            image.load()
            return _finish(image)

    raise ValueError(
        f"unsupported input type {type(source).__name__}; expected a path, bytes, a file object or a PIL image"
    )


def _finish(image: Image.Image) -> Image.Image:
    """Decoded image -> upright RGB image that shares nothing with `image` (a file about to close, or the caller's)."""
    if image.width == 0 or image.height == 0:
        raise ValueError("the image has zero width or height")
    original = image
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF data must not cost the pixels: keep the stored orientation
        image = original
    rgb = _to_rgb(image)
    if rgb is original:
        rgb = rgb.copy()
    return rgb


def load_image(source: Any) -> Image.Image:
    """
    Decode an image fully and return it as an RGB `PIL.Image.Image`.

    `source` may be a file path (`str` or `os.PathLike`), encoded bytes, an open binary file object, a dict with
    `"bytes"` or `"path"` (the undecoded form of a `datasets.Image` column) or a `PIL.Image.Image`. Any format Pillow
    can read is accepted. The EXIF orientation is applied. Transparent pixels are composited over white; 16-bit and
    32-bit integer images are scaled from the 16-bit range (`"I"` images whose data exceed it, from their maximum);
    float (`"F"`) images are scaled from [0, 1] if they lie in it, kept if they lie in [0, 255], otherwise stretched
    from their minimum and maximum. The whole image is decoded here, so a truncated or corrupt file fails at once.

    Raises:
        `ValueError`: for any failure (missing, empty or unreadable file, not an image, truncated or corrupt data,
        zero-size image, decompression bomb). The message names the file path (or the kind of in-memory input) and
        the reason.
    """
    try:
        return _open_and_decode(source)
    except ValueError as err:
        raise ValueError(f"Cannot load {_describe_source(source)}: {err}") from err
    except Image.DecompressionBombError as err:
        raise ValueError(f"Cannot load {_describe_source(source)}: decompression bomb refused ({err})") from err
    except UnidentifiedImageError as err:
        raise ValueError(f"Cannot load {_describe_source(source)}: not a recognised image format") from err
    except (OSError, SyntaxError, EOFError, MemoryError, TypeError, KeyError, IndexError, struct_error) as err:
        reason = str(err) or type(err).__name__
        raise ValueError(f"Cannot load {_describe_source(source)}: {reason}") from err


# --------------------------------------------------------------------------------------------------------------------
# Crop geometry
# --------------------------------------------------------------------------------------------------------------------


def grid_layout(num_crops: int, height: int, width: int, crop_size: int) -> tuple[int, int]:
    """
    Choose `(rows, cols)` with `rows * cols == num_crops` for the grid of crops over a `height` x `width` image.

    The crop's top-left corner can move over `height - crop_size` rows and `width - crop_size` columns. Rule:

    1. Keep the factor pairs that reach every border of the image, i.e. have at least two rows when the image is
       taller than the crop and at least two columns when it is wider (so the grid runs from the top-left to the
       bottom-right corner). If no pair qualifies (a prime count on an image larger than the crop both ways), keep
       all pairs.
    2. Among those, take the pair whose smallest gap between neighbouring crop positions is largest, i.e. the
       layout whose shape best follows the image's: 8 crops give 2 x 4 on a landscape image, 4 x 2 on a portrait
       one, 8 x 1 on an image exactly one crop wide; a prime count gives a 1 x K strip along the longer side.
    3. Ties go to the most balanced layout, then to the one with fewer rows.
    """
    if num_crops < 1:
        raise ValueError(f"num_crops must be at least 1, got {num_crops}")
    span_y = max(height - crop_size, 0)
    span_x = max(width - crop_size, 0)
    pairs = [(rows, num_crops // rows) for rows in range(1, num_crops + 1) if num_crops % rows == 0]
    covering = [(r, c) for r, c in pairs if (r > 1 or span_y == 0) and (c > 1 or span_x == 0)]

    def rank(pair: tuple[int, int]) -> tuple[float, int, int]:
        rows, cols = pair
        gap_y = span_y / (rows - 1) if rows > 1 else math.inf
        gap_x = span_x / (cols - 1) if cols > 1 else math.inf
        return (-min(gap_y, gap_x), abs(rows - cols), rows)

    return min(covering or pairs, key=rank)


def grid_crop_positions(height: int, width: int, crop_size: int, num_crops: int) -> list[tuple[int, int]]:
    """
    Top-left corners `(top, left)` of the deterministic grid of `num_crops` crops, row by row.

    With the layout of [`grid_layout`], rows sit at `round(linspace(0, height - crop_size, rows))` and columns at
    `round(linspace(0, width - crop_size, cols))`, so the first crop touches the top-left corner and (for more than
    one row and column) the last touches the bottom-right one. The image must be at least `crop_size` on both sides.
    """
    if height < crop_size or width < crop_size:
        raise ValueError(f"a {height}x{width} image is smaller than the {crop_size}x{crop_size} crop")
    rows, cols = grid_layout(num_crops, height, width, crop_size)
    tops = np.rint(np.linspace(0, height - crop_size, rows)).astype(int)
    lefts = np.rint(np.linspace(0, width - crop_size, cols)).astype(int)
    return [(int(top), int(left)) for top in tops for left in lefts]


# --------------------------------------------------------------------------------------------------------------------
# Conversion of in-memory inputs to one HWC array on the 0..255 scale
# --------------------------------------------------------------------------------------------------------------------


def _array_to_hwc(array: np.ndarray, channels_first_preferred: bool) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"expected a 2-D (H, W) or 3-D image array, got shape {tuple(array.shape)}")
    first, last = array.shape[0], array.shape[-1]
    channel_counts = (1, 3, 4)
    if channels_first_preferred:
        if first in channel_counts:
            return np.moveaxis(array, 0, -1)
        if last in channel_counts:
            return array
    else:
        if last in channel_counts:
            return array
        if first in channel_counts:
            return np.moveaxis(array, 0, -1)
    raise ValueError(f"cannot find a channel axis of size 1, 3 or 4 in shape {tuple(array.shape)}")


def _array_to_working(array: np.ndarray) -> np.ndarray:
    """HWC array of any supported dtype -> HWC RGB array, uint8 or float32 on the 0..255 scale."""
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image has zero width or height (shape {tuple(array.shape)})")
    dtype = array.dtype
    if dtype == np.uint8:
        values = array
    elif dtype == np.bool_:
        values = array.astype(np.uint8) * 255
    elif dtype == np.uint16:
        values = array.astype(np.float32) * np.float32(255.0 / 65535.0)
    elif np.issubdtype(dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"integer image of dtype {dtype} has values in [{low}, {high}]; expected 0..255 (or uint16 data)"
            )
        values = array.astype(np.uint8)
    elif np.issubdtype(dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("float image contains NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise ValueError(
                f"float image has values in [{low:.4g}, {high:.4g}]; float inputs must lie in [0, 1] "
                "(pass uint8 arrays for 0..255 data)"
            )
        values = np.clip(values, 0.0, 1.0) * np.float32(255.0)
    else:
        raise ValueError(f"unsupported array dtype {dtype}")

    channels = values.shape[2]
    if channels == 1:
        values = np.repeat(values, 3, axis=2)
    elif channels == 4:
        color = values[:, :, :3].astype(np.float32)
        alpha = values[:, :, 3:].astype(np.float32) / np.float32(255.0)
        blended = color * alpha + np.float32(255.0) * (1.0 - alpha)
        values = np.rint(blended).astype(np.uint8) if values.dtype == np.uint8 else blended.astype(np.float32)
    return values


def _resize_hwc(array: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((width, height), resample=resample))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(array[:, :, c]), mode="F").resize((width, height), resample))
        for c in range(array.shape[2])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------------------------------------


class MPIQEImageProcessor(BaseImageProcessor):
    r"""
    Turns images into the `(batch_size, num_crops, 3, crop_size, crop_size)` `pixel_values` that MP-IQE scores.

    Images keep their native resolution (quality depends on it); an image is resized up, aspect ratio kept, only
    when a side is shorter than `crop_size`, so that its short side equals `crop_size`. Each image then gives
    `num_crops` square crops, on a deterministic grid covering the whole image (`crop_mode="grid"`, see
    [`grid_crop_positions`]) or at uniformly random positions (`crop_mode="random"`). Crops are rescaled and
    normalised with the CLIP statistics.

    Args:
        crop_size (`int`, *optional*, defaults to 224):
            Side of the square crops (CLIP's input resolution). A `{"height": s, "width": s}` dict is also accepted.
        num_crops (`int`, *optional*, defaults to 8):
            Number of crops per image.
        crop_mode (`str`, *optional*, defaults to `"grid"`):
            `"grid"` (deterministic) or `"random"` (uniform top-left corners, for training).
        resample (`PIL.Image.Resampling` or `int`, *optional*, defaults to `Resampling.BICUBIC`):
            Filter used when an image has to be enlarged.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply the 0..255 pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Factor used by `do_rescale`.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to subtract `image_mean` and divide by `image_std` per channel.
        image_mean (`list[float]`, *optional*, defaults to `OPENAI_CLIP_MEAN`):
            Per-channel mean used for normalisation.
        image_std (`list[float]`, *optional*, defaults to `OPENAI_CLIP_STD`):
            Per-channel standard deviation used for normalisation.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = MPIQEImageProcessorKwargs

    def __init__(
        self,
        crop_size: int | dict[str, int] = 224,
        num_crops: int = 8,
        crop_mode: str = "grid",
        resample: Image.Resampling | int = Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: list[float] | tuple[float, ...] | None = None,
        image_std: list[float] | tuple[float, ...] | None = None,
        **kwargs,
    ):
        auto_map = kwargs.pop("auto_map", None)
        for key in _BOOKKEEPING_KEYS:
            kwargs.pop(key, None)
        if kwargs:
            logger.warning(f"MPIQEImageProcessor ignores the unknown settings {sorted(kwargs)}.")
        # BaseImageProcessor.__init__ would store arbitrary kwargs as attributes; nothing is left to store.
        super().__init__()
        if auto_map is not None:
            self.auto_map = auto_map
        self.crop_size = self._check_crop_size(crop_size)
        self.num_crops = self._check_num_crops(num_crops)
        self.crop_mode = self._check_crop_mode(crop_mode)
        self.resample = int(Image.Resampling(resample))
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = self._check_stats(OPENAI_CLIP_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = self._check_stats(OPENAI_CLIP_STD if image_std is None else image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain zeros, got {self.image_std}")

    # -- validation helpers ------------------------------------------------------------------------------------------

    @staticmethod
    def _check_crop_size(crop_size: Any) -> int:
        if isinstance(crop_size, dict):
            height, width = crop_size.get("height"), crop_size.get("width")
            if height is None or height != width:
                raise ValueError(f"crop_size must be square, got {crop_size}")
            crop_size = height
        if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
            raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")
        return int(crop_size)

    @staticmethod
    def _check_num_crops(num_crops: Any) -> int:
        if isinstance(num_crops, bool) or not isinstance(num_crops, (int, np.integer)) or num_crops < 1:
            raise ValueError(f"num_crops must be a positive int, got {num_crops!r}")
        return int(num_crops)

    @staticmethod
    def _check_crop_mode(crop_mode: Any) -> str:
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
        return crop_mode

    @staticmethod
    def _check_stats(values: Any, name: str) -> list[float]:
        if isinstance(values, (int, float)):
            values = [values] * 3
        values = [float(v) for v in values]
        if len(values) != 3:
            raise ValueError(f"{name} needs 3 values (one per RGB channel), got {values}")
        return values

    # -- serialisation -------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The settings saved in `preprocessor_config.json`."""
        output = {key: getattr(self, key) for key in _CONFIG_KEYS}
        output["image_mean"] = list(output["image_mean"])
        output["image_std"] = list(output["image_std"])
        if getattr(self, "auto_map", None) is not None:
            output["auto_map"] = dict(self.auto_map)
        output["image_processor_type"] = type(self).__name__
        return output

    # -- input handling ------------------------------------------------------------------------------------------------

    @staticmethod
    def _split_batch(images: Any) -> list[Any]:
        """One input or a batch -> a list of single-image inputs."""
        if isinstance(images, (list, tuple)):
            return list(images)
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return list(images.unbind(0))
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images)
        return [images]

    @staticmethod
    def _to_working_array(image: Any) -> np.ndarray:
        """A single input -> HWC RGB array, uint8 or float32 on the 0..255 scale."""
        if isinstance(image, torch.Tensor):
            array = image.detach().cpu()
            if array.dtype == torch.bfloat16 or array.dtype == torch.float16:
                array = array.float()
            return _array_to_working(_array_to_hwc(array.numpy(), channels_first_preferred=True))
        if isinstance(image, np.ndarray):
            return _array_to_working(_array_to_hwc(image, channels_first_preferred=False))
        return np.asarray(load_image(image))

    def _resize_if_small(self, array: np.ndarray, crop_size: int, resample: int) -> np.ndarray:
        height, width = array.shape[:2]
        short = min(height, width)
        if short >= crop_size:
            return array
        scale = crop_size / short
        new_height = crop_size if height == short else max(crop_size, round(height * scale))
        new_width = crop_size if width == short else max(crop_size, round(width * scale))
        if new_height * new_width > 4 * (Image.MAX_IMAGE_PIXELS or 1 << 62):
            raise ValueError(
                f"enlarging this {height}x{width} image to a {crop_size}-pixel short side would need "
                f"{new_height}x{new_width} pixels, beyond the decompression-bomb limit"
            )
        return _resize_hwc(array, new_height, new_width, Image.Resampling(resample))

    @staticmethod
    def _random_positions(height: int, width: int, crop_size: int, num_crops: int, generator) -> list[tuple[int, int]]:
        tops = torch.randint(0, height - crop_size + 1, (num_crops,), generator=generator)
        lefts = torch.randint(0, width - crop_size + 1, (num_crops,), generator=generator)
        return list(zip(tops.tolist(), lefts.tolist()))

    # -- main entry points ---------------------------------------------------------------------------------------------

    def __call__(self, images: Any, *args, **kwargs) -> BatchFeature:
        """Same as [`~MPIQEImageProcessor.preprocess`]."""
        return self.preprocess(images, *args, **kwargs)

    def preprocess(
        self,
        images: Any,
        num_crops: int | None = None,
        random_crops: bool | None = None,
        seed: int | None = None,
        return_tensors: str | None = None,
        *,
        crop_size: int | None = None,
        crop_mode: str | None = None,
        resample: Image.Resampling | int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Crop, rescale and normalise one image or a batch of images.

        Args:
            images:
                One image or a list/tuple of images. Each may be a `PIL.Image.Image`, a path (`str` or
                `pathlib.Path`), encoded `bytes`, a `datasets`-style `{"bytes", "path"}` dict, a numpy array (HWC or
                HW; uint8 for 0..255 data, uint16 for 16-bit data, float in [0, 1]) or a torch tensor (CHW or HW,
                same dtype rules). A 4-D array or tensor is read as a batch (NHWC for numpy, NCHW for torch).
            num_crops (`int`, *optional*): crops per image; defaults to `self.num_crops`.
            random_crops (`bool`, *optional*): `True` for random crops, `False` for the grid; defaults to
                `self.crop_mode == "random"` (the `crop_mode` keyword may be given instead).
            seed (`int`, *optional*): makes random crops reproducible with a `torch.Generator` private to this call.
                When `None`, torch's global RNG is used, so `torch.manual_seed`, `accelerate.utils.set_seed` and the
                per-worker seeding of `DataLoader` govern it. Ignored for grid crops.
            return_tensors (`str`, *optional*): `"pt"` for torch tensors, `None` or `"np"` for numpy arrays.
            crop_size, crop_mode, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std:
                per-call overrides of the settings of the same names.

        Returns:
            [`BatchFeature`] with `pixel_values` of shape `(batch_size, num_crops, 3, crop_size, crop_size)`, float32.

        Raises:
            `ValueError`: when an image cannot be decoded or is not a valid image array; for a batch the message
            names the index (and the path) of the offending element.
        """
        for key, value in kwargs.items():
            if value is not None and key not in ("do_convert_rgb",):
                logger.warning_once(f"MPIQEImageProcessor.preprocess ignores the argument {key!r}.")

        crop_size = self.crop_size if crop_size is None else self._check_crop_size(crop_size)
        num_crops = self.num_crops if num_crops is None else self._check_num_crops(num_crops)
        if random_crops is None:
            mode = self.crop_mode if crop_mode is None else self._check_crop_mode(crop_mode)
            random_crops = mode == "random"
        resample = self.resample if resample is None else int(Image.Resampling(resample))
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else float(rescale_factor)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = self._check_stats(self.image_mean if image_mean is None else image_mean, "image_mean")
        std = self._check_stats(self.image_std if image_std is None else image_std, "image_std")
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")

        generator = None
        if random_crops and seed is not None:
            generator = torch.Generator()
            generator.manual_seed(int(seed))

        items = self._split_batch(images)
        if not items:
            raise ValueError("no images were given")
        is_batch = isinstance(images, (list, tuple)) or (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        )

        # Per-channel affine map applied in one pass: value * gain + offset.
        gain = np.full(3, rescale_factor if do_rescale else 1.0, dtype=np.float64)
        offset = np.zeros(3, dtype=np.float64)
        if do_normalize:
            std_arr, mean_arr = np.asarray(std, dtype=np.float64), np.asarray(mean, dtype=np.float64)
            gain, offset = gain / std_arr, -mean_arr / std_arr
        gain = gain.astype(np.float32)[:, None, None]
        offset = offset.astype(np.float32)[:, None, None]

        output = np.empty((len(items), num_crops, 3, crop_size, crop_size), dtype=np.float32)
        for index, item in enumerate(items):
            try:
                array = self._to_working_array(item)
                array = self._resize_if_small(array, crop_size, resample)
            except ValueError as err:
                if not is_batch:
                    raise
                # for paths, the message of `load_image` already names the file
                raise ValueError(f"image at index {index}: {err}") from err
            height, width = array.shape[:2]
            if random_crops:
                positions = self._random_positions(height, width, crop_size, num_crops, generator)
            else:
                positions = grid_crop_positions(height, width, crop_size, num_crops)
            crops = np.stack([array[top : top + crop_size, left : left + crop_size] for top, left in positions])
            # (K, S, S, 3) -> (K, 3, S, S), converted to float32 straight into the output buffer.
            target = output[index]
            target[...] = crops.transpose(0, 3, 1, 2)
            target *= gain
            target += offset

        return BatchFeature(data={"pixel_values": output}, tensor_type=return_tensors)

