"""The embedded synthetic IQA dataset: bundled pristine photos x 11 distortion families x 5 levels.

The photos are the colour natural images that ship inside the scikit-image wheel (`skimage/data/`, no download).
Everything is built with numpy and Pillow, deterministically from `seed`, into a cache folder that is written to a
temporary sibling first and renamed into place, so an interrupted build never leaves a half-built cache.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ..configuration_mpiqe import DISTORTION_CLASSES


SYNTHETIC_VERSION = "v1"
SHORT_SIDE = 256
NUM_LEVELS = 5

# reference name -> (file inside skimage/data, scene labels)
REFERENCES = {
    "astronaut": ("astronaut.png", ["human"]),
    "chelsea": ("chelsea.png", ["animal"]),
    "coffee": ("coffee.png", ["still_life"]),
    "rocket": ("rocket.jpg", ["others", "landscape"]),
    "motorcycle": ("motorcycle_left.png", ["still_life", "indoor"]),
    "hubble": ("hubble_deep_field.jpg", ["night"]),
}

# Per-family severity weight w_f of the pseudo-MOS (1 = the full 1..5 span is used over the levels).
FAMILY_WEIGHTS = {
    "jpeg2000 compression": 1.0,
    "jpeg compression": 1.0,
    "noise": 1.0,
    "blur": 1.0,
    "color": 0.6,
    "contrast": 0.8,
    "overexposure": 0.9,
    "underexposure": 0.9,
    "spatial": 1.0,
    "quantization": 0.8,
    "other": 0.7,
}


def pseudo_mos(family, level: int) -> float:
    """Pseudo-MOS on 1..5: `1 + 4 * (1 - w_f * level / 6)`; the pristine reference (level 0) scores 5."""
    weight = FAMILY_WEIGHTS[family] if family is not None else 0.0
    return round(1.0 + 4.0 * (1.0 - weight * level / 6.0), 6)


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("The synthetic dataset needs scikit-image (its bundled photos): `pip install scikit-image`.")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_reference(name: str) -> Image.Image:
    file, _ = REFERENCES[name]
    path = _skimage_data_dir() / file
    if not path.is_file():
        raise ValueError(f"Bundled photo {path} is missing from the scikit-image installation.")
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = SHORT_SIDE / min(w, h)
        size = (max(SHORT_SIDE, round(w * scale)), max(SHORT_SIDE, round(h * scale)))
        return im.resize(size, Image.Resampling.LANCZOS)


def _rng(seed: int, *keys) -> np.random.Generator:
    digest = hashlib.sha256(("|".join([str(seed), *map(str, keys)])).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _to_image(array) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "RGB")


def _encode_decode(im: Image.Image, fmt: str, **kwargs) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kwargs)
    buffer.seek(0)
    with Image.open(buffer) as out:
        return out.convert("RGB")


def distort(im: Image.Image, family: str, level: int, rng: np.random.Generator) -> Image.Image:
    """Apply `family` at `level` (1..5) to an RGB image."""
    i = level - 1
    x = np.asarray(im, dtype=np.float64)
    if family == "jpeg2000 compression":
        rate = (24, 48, 96, 192, 400)[i]
        return _encode_decode(im, "JPEG2000", quality_mode="rates", quality_layers=[rate], irreversible=True)
    if family == "jpeg compression":
        return _encode_decode(im, "JPEG", quality=(40, 22, 12, 7, 3)[i], subsampling=2)
    if family == "noise":
        sigma = (6, 12, 22, 36, 55)[i]
        return _to_image(x + rng.normal(0.0, sigma, size=x.shape))
    if family == "blur":
        return im.filter(ImageFilter.GaussianBlur((0.8, 1.5, 2.5, 4.0, 6.5)[i]))
    if family == "color":
        if rng.random() < 0.5:
            return ImageEnhance.Color(im).enhance((0.6, 0.4, 0.25, 0.1, 0.0)[i])
        return ImageEnhance.Color(im).enhance((1.6, 2.2, 3.0, 4.0, 5.5)[i])
    if family == "contrast":
        return ImageEnhance.Contrast(im).enhance((0.7, 0.5, 0.35, 0.22, 0.12)[i])
    if family == "overexposure":
        gain, gamma = (1.25, 1.5, 1.85, 2.3, 3.0)[i], (0.9, 0.8, 0.7, 0.6, 0.5)[i]
        return _to_image(255.0 * np.clip(gain * (x / 255.0) ** gamma, 0, 1))
    if family == "underexposure":
        gain, gamma = (0.75, 0.55, 0.4, 0.28, 0.18)[i], (1.1, 1.25, 1.4, 1.6, 1.8)[i]
        return _to_image(255.0 * gain * (x / 255.0) ** gamma)
    if family == "spatial":
        factor = (2, 3, 5, 8, 12)[i]
        w, h = im.size
        small = im.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
        return small.resize((w, h), Image.Resampling.NEAREST)
    if family == "quantization":
        steps = (12, 8, 6, 4, 3)[i]  # uniform levels per channel
        q = np.floor(x / 256.0 * steps)
        return _to_image((q + 0.5) * (256.0 / steps))
    if family == "other":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        return _to_image(x + sign * (15, 30, 50, 75, 100)[i])
    raise ValueError(f"Unknown distortion family {family!r}.")


def default_cache_root() -> Path:
    env = os.environ.get("MPIQE_HF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mpiqe_hf"


def synthetic_dir(cache_dir=None, seed: int = 0) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / "synthetic" / f"{SYNTHETIC_VERSION}-{seed}"


def _write_png(im: Image.Image, path: Path):
    im.save(path, format="PNG", compress_level=1)


def _build_into(folder: Path, seed: int, include_references: bool):
    images = folder / "images"
    images.mkdir(parents=True)
    rows = []
    for ref in REFERENCES:
        scenes = REFERENCES[ref][1]
        pristine = load_reference(ref)
        if include_references:
            name = f"images/{ref}.png"
            _write_png(pristine, folder / name)
            rows.append((name, pseudo_mos(None, 0), "|".join(scenes), "", ref))
        for f_index, family in enumerate(DISTORTION_CLASSES, start=1):
            for level in range(1, NUM_LEVELS + 1):
                rng = _rng(seed, ref, family, level)
                out = distort(pristine, family, level, rng)
                name = f"images/{ref}_{f_index:02d}_{level}.png"
                _write_png(out, folder / name)
                rows.append((name, pseudo_mos(family, level), "|".join(scenes), family, ref))
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file_name", "mos", "scene", "distortion", "content_id"])
        writer.writerows(rows)


def build_synthetic(cache_dir=None, seed: int = 0, include_references: bool = True, force: bool = False) -> Path:
    """Build (once) the synthetic set and return its folder (`<cache>/synthetic/<version>-<seed>`)."""
    target = synthetic_dir(cache_dir, seed)
    if not include_references:
        target = target.with_name(target.name + "-norefs")
    if (target / "metadata.csv").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _build_into(tmp, seed, include_references)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / "metadata.csv").is_file():  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_synthetic(
    cache_dir=None,
    seed: int = 0,
    include_references: bool = True,
    skip_bad_samples=False,
    verify_images=False,
    num_proc=None,
):
    from .folder import load_metadata_folder
    from .specs import get_dataset_spec

    folder = build_synthetic(cache_dir, seed, include_references)
    return load_metadata_folder(
        folder,
        spec=get_dataset_spec("synthetic"),
        name="synthetic",
        source="synthetic",
        skip_bad_samples=skip_bad_samples,
        verify_images=verify_images,
        num_proc=num_proc,
        seed=seed,
    )
