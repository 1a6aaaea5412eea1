"""Tests of MPIQEImageProcessor and of the decoding in image_utils_mpiqe."""

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import HIDE_PACKAGE
from huggingface_hub.errors import StrictDataclassFieldValidationError
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

import mpiqe_hf
from mpiqe_hf.image_processing_mpiqe import MPIQEImageProcessor, enlarged_size, grid_crop_positions, grid_layout
from mpiqe_hf.image_utils_mpiqe import load_image


CROP = 224


def coordinate_image(height, width):
    """uint8 RGB image whose pixels encode their own coordinates (for images up to 4096 pixels a side)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([ys % 256, xs % 256, (ys // 256) * 16 + xs // 256], axis=-1).astype(np.uint8)


def decode_position(crop_chw):
    """Top-left coordinates of a crop cut from `coordinate_image` (raw 0..255 values, CHW)."""
    c0, c1, c2 = (int(round(float(v))) for v in crop_chw[:, 0, 0])
    return (c2 // 16) * 256 + c0, (c2 % 16) * 256 + c1


@pytest.fixture(scope="module")
def raw_processor():
    return MPIQEImageProcessor(do_rescale=False, do_normalize=False)


@pytest.fixture(scope="module")
def processor():
    return MPIQEImageProcessor()


# ---------------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(225, 301), (301, 225), (224, 224), (1000, 230), (230, 1000), (768, 1024)])
def test_grid_positions_cover_both_corners(raw_processor, height, width):
    image = coordinate_image(height, width)
    pixels = raw_processor(image)["pixel_values"]
    assert pixels.shape == (1, 8, 3, CROP, CROP) and pixels.dtype == np.float32
    found = [decode_position(crop) for crop in pixels[0]]
    assert found == grid_crop_positions(height, width, CROP, CROP, 8)
    assert found[0] == (0, 0)
    assert found[-1] == (height - CROP, width - CROP)
    # the crops really are slices of the image
    top, left = found[-1]
    np.testing.assert_array_equal(pixels[0, -1].transpose(1, 2, 0), image[top : top + CROP, left : left + CROP])


def test_grid_is_deterministic(processor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    first = processor(image)["pixel_values"]
    second = processor(image)["pixel_values"]
    np.testing.assert_array_equal(first, second)


def test_grid_layout_follows_aspect():
    assert grid_layout(8, 768, 1024, CROP, CROP) == (2, 4)
    assert grid_layout(8, 1024, 768, CROP, CROP) == (4, 2)
    assert grid_layout(8, 1000, 230, CROP, CROP) == (4, 2)
    assert grid_layout(8, 280, 224, CROP, CROP) == (8, 1)  # one crop wide: all crops stacked vertically
    assert grid_layout(8, 224, 112000, CROP, CROP) == (1, 8)
    assert grid_layout(7, 500, 1500, CROP, CROP) == (1, 7)  # prime count: strip along the long side
    assert grid_layout(7, 1500, 500, CROP, CROP) == (7, 1)
    assert grid_layout(1, 500, 500, CROP, CROP) == (1, 1)
    positions = grid_crop_positions(1000, 1000, CROP, CROP, 4)
    assert positions == [(0, 0), (0, 776), (776, 0), (776, 776)]


@pytest.mark.parametrize("height,width", [(100, 80), (80, 100), (1, 500), (500, 1), (224, 100)])
def test_small_images_are_enlarged_keeping_aspect(processor, height, width):
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels = processor(image)["pixel_values"]
    assert pixels.shape == (1, 8, 3, CROP, CROP)
    enlarged = processor._fit(image.transpose(2, 0, 1), processor.crop_size, None, processor.resample)
    assert min(enlarged.shape[1:]) == CROP
    expected_long = round(max(height, width) * CROP / min(height, width))
    assert max(enlarged.shape[1:]) == expected_long
    assert (enlarged.shape[1] >= enlarged.shape[2]) == (height >= width)
    # a flat image stays flat through resizing, rescaling and normalisation
    expected = (128 / 255 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    np.testing.assert_allclose(pixels[0, :, :, 5, 5], np.broadcast_to(expected, (8, 3)), atol=2e-2)


def test_large_images_are_not_resized(raw_processor):
    image = coordinate_image(400, 600)
    pixels = raw_processor(image, num_crops=1)["pixel_values"]
    np.testing.assert_array_equal(pixels[0, 0].transpose(1, 2, 0), image[:CROP, :CROP])


def test_num_crops_and_crop_size_overrides(raw_processor):
    image = coordinate_image(300, 400)
    pixels = raw_processor([image, image], num_crops=6, crop_size=100)["pixel_values"]
    assert pixels.shape == (2, 6, 3, 100, 100)
    found = [decode_position(crop) for crop in pixels[1]]
    assert found == grid_crop_positions(300, 400, 100, 100, 6)
    assert found[0] == (0, 0) and found[-1] == (200, 300)
    # None keeps the processor's setting, as the pipeline passes it
    defaults = raw_processor(image, num_crops=None, crop_size=None, crop_mode=None, seed=None)["pixel_values"]
    np.testing.assert_array_equal(defaults, raw_processor(image)["pixel_values"])


# ---------------------------------------------------------------------------------------------------------------------
# Random crops
# ---------------------------------------------------------------------------------------------------------------------


def test_random_crops_reproducible_with_seed(raw_processor):
    image = coordinate_image(600, 800)
    first = raw_processor(image, crop_mode="random", seed=123)["pixel_values"]
    again = raw_processor(image, crop_mode="random", seed=123)["pixel_values"]
    other = raw_processor(image, crop_mode="random", seed=124)["pixel_values"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    positions = [decode_position(crop) for crop in first[0]]
    assert all(0 <= top <= 600 - CROP and 0 <= left <= 800 - CROP for top, left in positions)
    assert len(set(positions)) > 1
    assert positions != grid_crop_positions(600, 800, CROP, CROP, 8)


def test_random_crops_use_torch_global_rng_when_unseeded():
    processor = MPIQEImageProcessor(crop_mode="random", do_rescale=False, do_normalize=False)
    image = coordinate_image(600, 800)
    torch.manual_seed(7)
    first = processor(image)["pixel_values"]
    second = processor(image)["pixel_values"]
    torch.manual_seed(7)
    replay = processor(image)["pixel_values"]
    np.testing.assert_array_equal(first, replay)
    assert not np.array_equal(first, second)


def test_seeded_call_leaves_global_rng_alone(raw_processor):
    image = coordinate_image(300, 300)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    raw_processor(image, crop_mode="random", seed=5)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_grid_mode_overrides_random_config():
    processor = MPIQEImageProcessor(crop_mode="random", do_rescale=False, do_normalize=False)
    image = coordinate_image(500, 700)
    pixels = processor(image, crop_mode="grid")["pixel_values"]
    assert [decode_position(c) for c in pixels[0]] == grid_crop_positions(500, 700, CROP, CROP, 8)


# ---------------------------------------------------------------------------------------------------------------------
# Rescaling, normalisation, output types
# ---------------------------------------------------------------------------------------------------------------------


def test_normalisation_uses_config_statistics():
    image = np.full((240, 240, 3), 51, dtype=np.uint8)  # 0.2 after rescaling
    default = MPIQEImageProcessor()(image)["pixel_values"]
    expected = (0.2 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    np.testing.assert_allclose(default[0, 0, :, 0, 0], expected, rtol=1e-5)

    custom = MPIQEImageProcessor(image_mean=[0.5, 0.1, 0.0], image_std=[0.5, 0.2, 1.0])
    pixels = custom(image)["pixel_values"]
    np.testing.assert_allclose(pixels[0, 0, :, 0, 0], [-0.6, 0.5, 0.2], rtol=1e-5)
    # per-call overrides work too
    pixels = custom(image, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])["pixel_values"]
    np.testing.assert_allclose(pixels[0, 0, :, 0, 0], [0.2, 0.2, 0.2], rtol=1e-5)

    unnormalised = MPIQEImageProcessor(do_normalize=False)(image)["pixel_values"]
    np.testing.assert_allclose(unnormalised[0, 0, :, 0, 0], [0.2, 0.2, 0.2], rtol=1e-5)


def test_return_tensors(processor):
    image = np.zeros((230, 250, 3), dtype=np.uint8)
    as_numpy = processor([image, image])["pixel_values"]
    as_torch = processor([image, image], return_tensors="pt")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32
    assert tuple(as_torch.shape) == (2, 8, 3, CROP, CROP)
    np.testing.assert_array_equal(as_torch.numpy(), as_numpy)
    assert processor.model_input_names == ["pixel_values"]


def test_in_memory_input_types_agree(tmp_path, raw_processor):
    image = np.random.default_rng(1).integers(0, 256, (230, 260, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    reference = raw_processor(image)["pixel_values"]
    variants = [
        Image.fromarray(image),
        str(path),
        path,
        path.read_bytes(),
        {"bytes": None, "path": str(path)},
        torch.from_numpy(image).permute(2, 0, 1),  # CHW uint8 tensor
        torch.from_numpy(image).permute(2, 0, 1).float() / 255,  # CHW float tensor in [0, 1]
        image.astype(np.float32) / 255,  # HWC float array in [0, 1]
    ]
    for variant in variants:
        np.testing.assert_allclose(raw_processor(variant)["pixel_values"], reference, atol=1e-3)
    # a 4-D tensor is a batch
    batch = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2)
    assert raw_processor(batch)["pixel_values"].shape == (2, 8, 3, CROP, CROP)


def test_grayscale_and_alpha_arrays(raw_processor):
    gray = np.random.default_rng(2).integers(0, 256, (230, 230), dtype=np.uint8)
    pixels = raw_processor(gray)["pixel_values"]
    np.testing.assert_array_equal(pixels[0, 0, 0], pixels[0, 0, 2])
    np.testing.assert_array_equal(pixels[0, 0, 0], gray[:CROP, :CROP])
    gray_tensor = torch.from_numpy(gray)
    np.testing.assert_array_equal(raw_processor(gray_tensor)["pixel_values"], pixels)

    rgba = np.zeros((230, 230, 4), dtype=np.uint8)  # fully transparent black
    assert (raw_processor(rgba)["pixel_values"] == 255).all()


def test_bad_arrays_raise_value_error(raw_processor):
    with pytest.raises(ValueError, match="index 1"):
        raw_processor([np.zeros((230, 230, 3), np.uint8), np.full((230, 230, 3), 3.0, np.float32)])
    with pytest.raises(ValueError, match="zero"):
        raw_processor(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        raw_processor(np.zeros((230, 230, 7), np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# Decoding of files and PIL modes
# ---------------------------------------------------------------------------------------------------------------------


def test_sixteen_bit_png_scales_to_eight_bit(tmp_path):
    values = np.array([[0, 257 * 128, 65535, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb)[0, :, 0], [0, 128, 255, 255])


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_modes(mode):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values).convert(mode) if mode != "I;16" else Image.fromarray(values)
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    assert image.mode == mode
    np.testing.assert_array_equal(np.asarray(load_image(image))[0, :, 1], [0, 128, 255])


def test_float_mode():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(np.asarray(load_image(unit))[0, :, 0], [0, 128, 255])
    wide = Image.fromarray(np.array([[-10.0, 0.0, 1000.0]], dtype=np.float32), mode="F")
    out = np.asarray(load_image(wide))[0, :, 0]
    assert out[0] == 0 and out[-1] == 255 and 0 < out[1] < 10


def test_transparency_composites_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = np.asarray(load_image(rgba))
    assert tuple(out[1, 1]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert 120 <= out[0, 1, 0] <= 135

    la = Image.new("LA", (2, 2), (0, 0))
    assert (np.asarray(load_image(la)) == 255).all()

    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.putpixel((1, 1), 1)
    path = tmp_path / "pal.png"
    palette.save(path, transparency=0)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (200, 0, 0)

    gif = tmp_path / "pal.gif"
    palette.save(gif, transparency=0)
    assert tuple(np.asarray(load_image(gif))[0, 0]) == (255, 255, 255)


def test_other_modes_convert_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # pure red
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=100)
    out = np.asarray(load_image(path))
    assert out[1, 1, 0] > 240 and out[1, 1, 1] < 15 and out[1, 1, 2] < 15

    bilevel = Image.new("1", (3, 3), 1)
    bilevel.putpixel((0, 0), 0)
    out = np.asarray(load_image(bilevel))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[2, 2]) == (255, 255, 255)

    gray = Image.new("L", (3, 3), 77)
    assert tuple(np.asarray(load_image(gray))[0, 0]) == (77, 77, 77)
    ycbcr = Image.new("RGB", (3, 3), (50, 100, 150)).convert("YCbCr")
    np.testing.assert_allclose(np.asarray(load_image(ycbcr))[0, 0], (50, 100, 150), atol=3)
    for image in (cmyk, bilevel, gray, ycbcr):
        assert load_image(image).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    upright = load_image(path)
    assert upright.size == (20, 40)
    red = np.asarray(upright)[..., 0] > 200
    assert red[:10, -10:].mean() > 0.9  # the block moved to the top-right corner
    # a PIL image that still carries the tag is transposed too, and its shape drives the grid
    with Image.open(path) as opened:
        assert load_image(opened).size == (20, 40)


def test_load_image_returns_independent_copy():
    original = Image.new("RGB", (5, 5), (1, 2, 3))
    loaded = load_image(original)
    assert loaded is not original
    loaded.putpixel((0, 0), (9, 9, 9))
    assert original.getpixel((0, 0)) == (1, 2, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------------------------------


def _jpeg_bytes(size=(256, 256)):
    noise = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _bad_files(tmp_path):
    jpeg = _jpeg_bytes()
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    png = bytearray(png.getvalue())
    middle = len(png) // 2
    png[middle : middle + 40] = bytes(40)  # clobber part of the compressed data
    files = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "corrupt.png": bytes(png),
        "header_only.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        "empty.jpg": b"",
        "notes.txt": b"this is not an image\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    paths["missing.png"] = tmp_path / "missing.png"
    paths["a_directory"] = tmp_path
    return paths


def test_bad_files_raise_value_error_naming_the_path(tmp_path, processor):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(ValueError) as info:
            load_image(path)
        assert str(path) in str(info.value), name
        with pytest.raises(ValueError) as info:
            processor(str(path))
        assert str(path) in str(info.value), name
    with pytest.raises(ValueError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="truncated"):
        load_image(tmp_path / "truncated.jpg")


def test_bad_bytes_raise_value_error():
    jpeg = _jpeg_bytes()
    for data in (jpeg[: len(jpeg) // 2], b"", b"not an image"):
        with pytest.raises(ValueError, match="in-memory image"):
            load_image(data)
    with pytest.raises(ValueError, match="unsupported input type"):
        load_image(12345)


def test_list_with_bad_element_names_index_and_path(tmp_path, processor):
    good = Image.new("RGB", (230, 230))
    missing = tmp_path / "nope.png"
    with pytest.raises(ValueError) as info:
        processor([good, good, str(missing)])
    assert "index 2" in str(info.value) and str(missing) in str(info.value)
    with pytest.raises(ValueError) as info:
        processor([good, b"garbage"])
    assert "index 1" in str(info.value)


def test_decompression_bomb_raises_value_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="decompression bomb") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_zero_size_pil_image_raises():
    with pytest.raises(ValueError, match="zero"):
        load_image(Image.new("RGB", (0, 5)))


# ---------------------------------------------------------------------------------------------------------------------
# Settings, per-call overrides, saving and loading
# ---------------------------------------------------------------------------------------------------------------------


def test_default_config():
    processor = MPIQEImageProcessor()
    assert dict(processor.crop_size) == {"height": CROP, "width": CROP}
    assert processor.num_crops == 8 and processor.crop_mode == "grid" and processor.seed is None
    assert processor.resample == PILImageResampling.BICUBIC
    assert processor.do_rescale and processor.do_normalize
    assert processor.rescale_factor == pytest.approx(1 / 255)
    assert list(processor.image_mean) == list(OPENAI_CLIP_MEAN) and list(processor.image_std) == list(OPENAI_CLIP_STD)
    # an int crop size means a square
    assert dict(MPIQEImageProcessor(crop_size=30).crop_size) == {"height": 30, "width": 30}


def test_one_random_training_crop_per_call(raw_processor):
    """What training asks for: `num_crops=1, crop_mode="random", seed=...` on a grid-mode processor."""
    image = coordinate_image(600, 800)
    positions = set()
    for seed in range(6):
        pixels = raw_processor(image, num_crops=1, crop_mode="random", seed=seed, return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape) == (1, 1, 3, CROP, CROP)
        again = raw_processor(image, num_crops=1, crop_mode="random", seed=seed)["pixel_values"]
        np.testing.assert_array_equal(pixels.numpy(), again)
        positions.add(decode_position(again[0, 0]))
    assert len(positions) == 6
    assert raw_processor.num_crops == 8 and raw_processor.crop_mode == "grid"  # the call changed no setting


def test_rectangular_crops(raw_processor):
    image = coordinate_image(300, 400)
    pixels = raw_processor(image, crop_size={"height": 100, "width": 150}, num_crops=4)["pixel_values"]
    assert pixels.shape == (1, 4, 3, 100, 150)
    found = [decode_position(crop) for crop in pixels[0]]
    assert found == grid_crop_positions(300, 400, 100, 150, 4) == [(0, 0), (0, 250), (200, 0), (200, 250)]
    small = raw_processor(coordinate_image(50, 300), crop_size={"height": 100, "width": 150}, num_crops=2)
    assert small["pixel_values"].shape == (1, 2, 3, 100, 150)


def test_save_and_load_round_trip(tmp_path):
    processor = MPIQEImageProcessor(
        crop_size={"height": 112, "width": 96},
        num_crops=6,
        crop_mode="random",
        seed=11,
        resample=PILImageResampling.BILINEAR,
        rescale_factor=1 / 127.5,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.5, 1.0],
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["crop_size"] == {"height": 112, "width": 96}
    for key in ("num_crops", "crop_mode", "seed", "resample", "do_rescale", "rescale_factor", "do_normalize"):
        assert saved[key] == getattr(processor, key), key
    assert saved["image_mean"] == [0.5, 0.5, 0.5] and saved["image_std"] == [0.25, 0.5, 1.0]
    assert saved["image_processor_type"] == "MPIQEImageProcessor"
    assert "random_crops" not in saved

    for reloaded in (MPIQEImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(reloaded) is MPIQEImageProcessor
        assert reloaded.to_dict() == processor.to_dict()
        image = coordinate_image(100, 300)  # smaller than the crop: exercises the resampling filter too
        np.testing.assert_array_equal(reloaded(image)["pixel_values"], processor(image)["pixel_values"])
    overridden = AutoImageProcessor.from_pretrained(tmp_path, num_crops=4, crop_mode="grid")
    assert overridden.num_crops == 4 and overridden.crop_mode == "grid"


def test_default_round_trip_through_auto_image_processor(tmp_path):
    processor = MPIQEImageProcessor()
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["crop_size"] == {"height": CROP, "width": CROP} and saved["num_crops"] == 8
    assert saved["image_mean"] == list(OPENAI_CLIP_MEAN) and saved["image_std"] == list(OPENAI_CLIP_STD)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is MPIQEImageProcessor and reloaded.to_dict() == processor.to_dict()
    image = np.random.default_rng(5).integers(0, 256, (240, 330, 3), dtype=np.uint8)
    np.testing.assert_array_equal(reloaded(image)["pixel_values"], processor(image)["pixel_values"])


def test_invalid_settings_rejected(processor):
    for settings in ({"crop_mode": "center"}, {"num_crops": 0}, {"seed": "7"}):
        with pytest.raises(StrictDataclassFieldValidationError, match=next(iter(settings))):
            MPIQEImageProcessor(**settings)
        with pytest.raises(StrictDataclassFieldValidationError, match=next(iter(settings))):
            processor(np.zeros((230, 230, 3), np.uint8), **settings)
    with pytest.raises(TypeError, match="random_crops"):  # the one switch is `crop_mode`
        processor(np.zeros((230, 230, 3), np.uint8), random_crops=True)
    with pytest.raises(ValueError, match="crop_size"):
        processor(np.zeros((230, 230, 3), np.uint8), crop_size={"shortest_edge": 224})


def test_saved_config_with_a_bad_setting_fails_on_loading(tmp_path):
    MPIQEImageProcessor().save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(path.read_text().replace('"grid"', '"centre"'))
    with pytest.raises(StrictDataclassFieldValidationError, match="crop_mode"):
        AutoImageProcessor.from_pretrained(tmp_path)


def test_load_image_is_exported_from_the_package():
    assert mpiqe_hf.load_image is load_image


# ---------------------------------------------------------------------------------------------------------------------
# Remote code
# ---------------------------------------------------------------------------------------------------------------------


def test_model_files_import_only_what_remote_code_has():
    """The processor and its decoding ship as Hub remote code: no import of `mpiqe_hf` or of anything that a
    `transformers` install may lack; the processor's one relative import is the decoding module."""
    import ast

    allowed = {"numpy", "torch", "transformers", "huggingface_hub", "PIL"} | set(sys.stdlib_module_names)
    package = pathlib.Path(mpiqe_hf.__file__).parent
    relative = {}
    for name in ("image_processing_mpiqe.py", "image_utils_mpiqe.py"):
        for node in ast.walk(ast.parse((package / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                relative.setdefault(name, set()).add(node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(module.split(".")[0] in allowed for module in modules), (name, modules)
    assert relative == {"image_processing_mpiqe.py": {"image_utils_mpiqe"}}


def test_saved_processor_loads_as_remote_code_without_the_package(tmp_path):
    folder = tmp_path / "checkpoint"
    processor = MPIQEImageProcessor(crop_size=40, num_crops=3)
    processor.save_pretrained(folder)
    assert {"image_processing_mpiqe.py", "image_utils_mpiqe.py"} <= {path.name for path in folder.iterdir()}
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_mpiqe.MPIQEImageProcessor"}

    image = tmp_path / "image.png"
    rgba = np.random.default_rng(6).integers(0, 256, (30, 70, 4), dtype=np.uint8)  # small, with alpha
    Image.fromarray(rgba).save(image)
    script = HIDE_PACKAGE + textwrap.dedent(
        f"""
        import numpy as np
        from transformers import AutoImageProcessor
        processor = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        np.save({str(tmp_path / "child.npy")!r}, processor({str(image)!r})["pixel_values"])
        try:
            processor({str(tmp_path / "missing.png")!r})
        except ValueError as err:
            print("ERROR", err)
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-4000:]
    np.testing.assert_array_equal(np.load(tmp_path / "child.npy"), processor(str(image))["pixel_values"])
    assert f"ERROR Cannot load image file '{tmp_path / 'missing.png'}': no such file" in out.stdout


def test_max_image_size_downscales_large_images_before_cropping(tmp_path):
    """A model trained on downscaled copies (KonIQ-10k at 512 px) scores at that scale: the bound is a processor
    setting, saved with it, and the crops are those of the downscaled image."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 600, 3), dtype=np.uint8))
    assert enlarged_size(300, 600, 224, 224, max_image_size=512) == (256, 512)
    assert enlarged_size(300, 600, 224, 224, max_image_size=300) == (224, 448)  # then enlarged to hold the crop
    assert enlarged_size(300, 600, 224, 224, max_image_size=800) == (300, 600)
    processor = MPIQEImageProcessor(max_image_size=512)
    smaller = image.resize((512, 256), Image.Resampling.BICUBIC)
    expected = MPIQEImageProcessor()(smaller, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor(image, return_tensors="pt")["pixel_values"], expected, atol=1e-6, rtol=0)
    native = MPIQEImageProcessor()(image, return_tensors="pt")["pixel_values"]
    assert not torch.allclose(native, expected)

    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["max_image_size"] == 512
    assert MPIQEImageProcessor.from_pretrained(tmp_path).max_image_size == 512
    with pytest.raises(Exception, match="max_image_size"):
        MPIQEImageProcessor(max_image_size=0)


def test_the_checkpoints_processor_or_the_default_for_its_clip(tmp_path):
    from conftest import MPIQEModelTester

    from mpiqe_hf import MPIQEImageProcessor

    config = MPIQEModelTester().config()  # a 30-px CLIP
    default = MPIQEImageProcessor.default_for(config)
    assert (default.crop_size.height, default.crop_size.width, default.num_crops) == (30, 30, 8)
    assert MPIQEImageProcessor.from_pretrained_or_default(tmp_path, config).to_dict() == default.to_dict()
    MPIQEImageProcessor(crop_size=30, num_crops=3, max_image_size=64).save_pretrained(tmp_path)
    saved = MPIQEImageProcessor.from_pretrained_or_default(tmp_path, config)
    assert (saved.num_crops, saved.max_image_size) == (3, 64)
