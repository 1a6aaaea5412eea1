"""Quality-map overlays: the image with a map blended over it and a colour bar, as a `PIL.Image` (for the CLI's
`--save-maps` and the demo app)."""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont


__all__ = ["colorize", "render_overlay", "save_map_overlays", "map_file_stem"]

# Anchors of a perceptually ordered dark-to-bright colour scale (black, purple, red, orange, pale yellow).
_ANCHORS = np.array(
    [[0, 0, 4], [60, 9, 101], [137, 34, 106], [211, 67, 72], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)
_LUT = (
    np.stack(
        [
            np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, channel])
            for channel in range(3)
        ],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)

#: Images are shown at least this tall, so that the colour bar's labels stay readable next to small images.
_MIN_DISPLAY_HEIGHT = 320


def colorize(values: np.ndarray) -> np.ndarray:
    """`(height, width)` values in `[0, 1]` -> `(height, width, 3)` uint8 colours of the map's colour scale."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    return _LUT[np.clip(np.rint(values * 255), 0, 255).astype(np.intp)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def render_overlay(
    image: Image.Image,
    quality_map,
    title: str | None = None,
    alpha: float = 0.55,
    label: str = "degradation",
    coverage: float | None = None,
) -> Image.Image:
    """
    The image with `quality_map` blended over it (`alpha` = opacity of the map) and a labelled colour bar on the
    right.

    Args:
        image (`PIL.Image.Image`): the scored image.
        quality_map (`(height, width)` array or tensor in `[0, 1]`): a map of the image's own size, e.g. a
            `quality_map` of the pipeline's output.
        title (`str`, *optional*): a line written above the image (e.g. the score).
        label (`str`): what the bright end of the colour bar means.
        coverage (`float`, *optional*): the fraction of the image the map's crops cover (`map_coverage` of the
            pipeline, `coverage` of `MPIQEModel.quality_map`); below 1 the title says so, as the map is 0 elsewhere.
    """
    values = np.asarray(
        quality_map.detach().cpu() if hasattr(quality_map, "detach") else quality_map, dtype=np.float64
    )
    if values.ndim != 2:
        raise ValueError(f"A quality map has shape (height, width), got {values.shape}.")
    image = image.convert("RGB")
    if values.shape != (image.height, image.width):
        raise ValueError(f"The map's size {values.shape} is not the image's ({image.height}, {image.width}).")
    if coverage is not None and coverage < 1:
        note = f"the map covers {coverage:.0%} of the image (more crops cover more)"
        title = f"{title}; {note}" if title else note

    # The map's opacity grows with its value, so that the image shows through where the map is low.
    opacity = alpha * (0.2 + 0.8 * np.clip(np.nan_to_num(values), 0.0, 1.0))[..., None]
    blended = Image.fromarray(
        np.rint(np.asarray(image, dtype=np.float64) * (1.0 - opacity) + colorize(values) * opacity).astype(np.uint8)
    )
    scale = max(1.0, _MIN_DISPLAY_HEIGHT / blended.height)
    if scale > 1.0:
        blended = blended.resize(
            (round(blended.width * scale), round(blended.height * scale)), Image.Resampling.BILINEAR
        )

    height = blended.height
    font_size = max(12, min(24, height // 20))
    font = _font(font_size)
    margin = font_size
    bar_width = max(12, font_size)
    label_width = round(font_size * 0.62 * max(len(label) - 2, 4))
    canvas = Image.new("RGB", (blended.width + 2 * margin + label_width + bar_width, height + 4 * font_size), "white")
    draw = ImageDraw.Draw(canvas)
    top = 3 * font_size
    if title:
        draw.text((margin, font_size // 2), title, fill=(20, 20, 20), font=font)
    canvas.paste(blended, (margin, top))

    bar_left = blended.width + margin + font_size // 2
    bar = colorize(np.linspace(1.0, 0.0, height)[:, None].repeat(bar_width, axis=1))
    canvas.paste(Image.fromarray(bar), (bar_left, top))
    draw.rectangle((bar_left, top, bar_left + bar_width - 1, top + height - 1), outline=(80, 80, 80))
    text_left = bar_left + bar_width + font_size // 3
    for fraction in (1.0, 0.5, 0.0):
        y = top + round((1.0 - fraction) * (height - 1))
        draw.line((bar_left + bar_width, y, text_left - 2, y), fill=(80, 80, 80))
        ty = min(max(y - font_size // 2, top), top + height - font_size)
        draw.text((text_left, ty), f"{fraction:.1f}", fill=(20, 20, 20), font=font)
    draw.text((bar_left, top - font_size - font_size // 3), label, fill=(20, 20, 20), font=font)
    return canvas


def map_file_stem(key) -> str:
    """A file-name stem for the maps of the input `key` (a path or an id): `photos/a.jpg` -> `photos__a`."""
    text = os.path.splitext(os.path.normpath(str(key)))[0].lstrip(os.sep + ".")
    return re.sub(r"[^A-Za-z0-9._-]+", "__", text.replace(os.sep, "__")) or "image"


def save_map_overlays(
    folder, key, image: Image.Image, quality_map, distortion_map=None, title=None, coverage=None
) -> list[str]:
    """
    Writes `<stem>.quality_map.png` (Grad-CAM) and, when given, `<stem>.distortion_map.png` (eq. 10 windows) into
    `folder` (created), `stem` from [`map_file_stem`]; returns the paths written. `title` and `coverage` as for
    [`render_overlay`].
    """
    os.makedirs(folder, exist_ok=True)
    stem = map_file_stem(key)
    paths = [os.path.join(folder, f"{stem}.quality_map.png")]
    render_overlay(image, quality_map, title=title, label="degradation", coverage=coverage).save(paths[0])
    if distortion_map is not None:
        paths.append(os.path.join(folder, f"{stem}.distortion_map.png"))
        render_overlay(image, distortion_map, title=title, label="distortion windows", coverage=coverage).save(
            paths[1]
        )
    return paths
