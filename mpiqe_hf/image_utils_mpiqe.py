"""Robust image decoding for MP-IQE: any image a user may hand over becomes RGB pixels, or a `ValueError` naming it.

Used by the image processor, the pipeline, the data loaders, training and the CLI. It is shipped as Hub remote code
next to `image_processing_mpiqe.py`, so it only depends on numpy and Pillow.
"""

from __future__ import annotations

import io
import os
from struct import error as struct_error
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


__all__ = ["load_image", "to_rgb_array"]

_EXIF_ORIENTATION = 0x0112
_CHANNEL_COUNTS = (1, 3, 4)


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"image file '{os.fspath(source)}'"
    if isinstance(source, dict) and source.get("path"):
        return f"image file '{source['path']}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"in-memory image ({len(source)} bytes)"
    if isinstance(source, dict):
        return "in-memory image"
    if isinstance(source, Image.Image):
        return "PIL image"
    return f"image of type {type(source).__name__}"


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Integer images deeper than 8 bits and float images -> 8-bit RGB, by scaling, never by clipping."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            values = values * 255.0
        elif not (low >= 0.0 and high <= 255.0):
            values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    else:
        # "I;16*" images hold 16-bit samples; Pillow often opens 16-bit PNG/TIFF data as 32-bit "I", so those are
        # read on the 16-bit scale too, unless their data exceed it.
        values = np.clip(values, 0.0, None)
        values = values * (255.0 / max(65535.0, float(values.max()) if image.mode == "I" else 0.0))
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")


def _upright_rgb(image: Image.Image) -> Image.Image:
    """A decoded image -> an upright RGB copy that shares no pixels with `image`."""
    if image.width == 0 or image.height == 0:
        raise ValueError("the image has zero width or height")
    original = image
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1):
            image = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF data must not cost the pixels: keep the stored orientation
        image = original
    if image.mode == "F" or image.mode.startswith("I"):
        image = _high_depth_to_rgb(image)
    elif image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return image.copy() if image is original else image


def _decode(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        source.load()
        return _upright_rgb(source)
    if isinstance(source, dict):  # `datasets.Image(decode=False)` rows: {"bytes": ..., "path": ...}
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise ValueError(
                f"a dict with keys {sorted(map(str, source))} holds neither 'bytes' nor 'path' (the form of a `datasets` "
                "Image column): pass the image itself (a path, bytes or a PIL image), or {'bytes': ..., 'path': ...}"
            )
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        if path.startswith(("http://", "https://")):
            raise ValueError("URLs are not supported; download the image and pass its path or bytes")
        if not os.path.exists(path):
            raise ValueError("no such file")
        if os.path.isdir(path):
            raise ValueError("the path is a directory, not an image file")
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ValueError("the data are empty (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif not hasattr(source, "read"):
        raise ValueError(
            f"unsupported input type {type(source).__name__}; expected a path, bytes, a file object or a PIL image"
        )
    with Image.open(source) as image:
        image.load()  # decodes every pixel, so a truncated or corrupt file fails here
        return _upright_rgb(image)


def load_image(source: Any) -> Image.Image:
    """
    Decode an image fully and return it as an upright RGB `PIL.Image.Image`.

    `source` may be a file path (`str` or `os.PathLike`), encoded bytes, an open binary file object, a dict with
    `"bytes"` or `"path"` (the undecoded form of a `datasets.Image` column) or a `PIL.Image.Image`; any format Pillow
    reads. The EXIF orientation is applied. Transparent pixels (RGBA, LA, palette transparency) are composited over
    white; CMYK, YCbCr, bilevel and grayscale images are converted; 16-bit and 32-bit integer images are scaled from
    the 16-bit range (`"I"` images whose data exceed it, from their maximum); float (`"F"`) images are scaled from
    [0, 1] if they lie in it, kept if they lie in [0, 255], otherwise stretched from their minimum and maximum.
    The result never shares pixels with a given PIL image.

    Raises:
        `ValueError`: `"Cannot load <source>: <reason>"` for any failure (missing, empty or unreadable file, not an
        image, truncated or corrupt data, zero-size image, decompression bomb); `<source>` names the file path or the
        kind of in-memory input.
    """
    try:
        return _decode(source)
    # Pillow's decoders raise all of these for broken data.
    except (
        Image.DecompressionBombError,
        ValueError,
        OSError,
        SyntaxError,
        EOFError,
        MemoryError,
        TypeError,
        KeyError,
        IndexError,
        struct_error,
    ) as err:
        if isinstance(err, Image.DecompressionBombError):
            reason = f"decompression bomb refused ({err})"
        elif isinstance(err, UnidentifiedImageError):
            reason = "not a recognised image format"
        else:
            reason = str(err) or type(err).__name__
        raise ValueError(f"Cannot load {_describe(source)}: {reason}") from err


def to_rgb_array(image: Any, channels_first: bool = False) -> np.ndarray:
    """
    Turn one image into a `(3, height, width)` array on the 0..255 scale: uint8, or float32 for float and 16-bit data.

    Arrays may be `(height, width)` or have 1, 3 or 4 channels, last (preferred when `channels_first` is False) or
    first; uint8 holds 0..255, uint16 16-bit data, bool black and white, floats [0, 1]. A fourth channel is alpha,
    composited over white. Anything else goes through [`load_image`].

    Raises:
        `ValueError`: naming the file, or the array's shape, dtype or value range.
    """
    if not isinstance(image, np.ndarray):
        return np.asarray(load_image(image)).transpose(2, 0, 1)
    if image.ndim == 2:
        image = image[None]
    elif image.ndim != 3 or (image.shape[0] not in _CHANNEL_COUNTS and image.shape[-1] not in _CHANNEL_COUNTS):
        raise ValueError(
            "expected one image as an (H, W) array or one with 1, 3 or 4 channels first or last (a batch: a list, or "
            f"a 4-D array to the pipeline), got shape {image.shape}"
        )
    elif image.shape[-1] in _CHANNEL_COUNTS and not (channels_first and image.shape[0] in _CHANNEL_COUNTS):
        image = np.moveaxis(image, -1, 0)
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"the image has zero width or height (shape {image.shape})")

    if image.dtype == np.uint8:
        values = image
    elif image.dtype == np.bool_:
        values = image.astype(np.uint8) * np.uint8(255)
    elif image.dtype == np.uint16:
        values = image.astype(np.float32) * np.float32(255 / 65535)
    elif np.issubdtype(image.dtype, np.integer):
        if image.min() < 0 or image.max() > 255:
            raise ValueError(
                f"integer image of dtype {image.dtype} has values in [{image.min()}, {image.max()}]; "
                "expected 0..255 (or uint16 data)"
            )
        values = image.astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        values = image.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("float image contains NaN or infinite values")
        if values.min() < -1e-3 or values.max() > 1 + 1e-3:
            raise ValueError(
                f"float image has values in [{values.min():.4g}, {values.max():.4g}]; float inputs must "
                "lie in [0, 1] (pass uint8 arrays for 0..255 data)"
            )
        values = np.clip(values, 0.0, 1.0) * np.float32(255)
    else:
        raise ValueError(f"unsupported array dtype {image.dtype}")

    if values.shape[0] == 1:
        return np.repeat(values, 3, axis=0)
    if values.shape[0] == 4:
        alpha = values[3:].astype(np.float32) / 255
        blended = values[:3].astype(np.float32) * alpha + 255 * (1 - alpha)
        return np.rint(blended).astype(np.uint8) if values.dtype == np.uint8 else blended
    return values
