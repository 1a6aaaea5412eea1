"""Issue 19, "nothing lost, nothing silent": what a new user gets wrong with the pipeline, the model, the image
processor, the quality maps, the Inference Endpoints handler and the demo. Each misuse gets one error, on one line,
naming the input and the way out; never an error from deep inside (IndexError, RuntimeError, ...) or a silent
answer."""

import base64
import functools
import importlib.util
import io
import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.handler import EndpointHandler
from mpiqe_hf.model_sources import ModelSourceUnavailable, check_model_source
from mpiqe_hf.pipeline_mpiqe import ImageQualityAssessmentPipeline, MPIQEImageClassificationPipeline


APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "app.py")
RGB = np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8)


def _png(array=RGB) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("misuse")
    model = MPIQEModelTester().model()
    processor = MPIQEImageProcessor(crop_size=30, num_crops=2)
    truncated = folder / "truncated.png"
    truncated.write_bytes(_png()[:200])
    text = folder / "notes.png"
    text.write_text("not an image")
    (folder / "no_model_type").mkdir()
    (folder / "no_model_type" / "config.json").write_text("{}")
    # The handler as Inference Endpoints build it, on the repository's pipeline: here the same pipeline in-process.
    handler = EndpointHandler.__new__(EndpointHandler)
    handler.pipeline = MPIQEImageClassificationPipeline(model=model, image_processor=processor)
    return types.SimpleNamespace(
        model=model,
        processor=processor,
        pipe=ImageQualityAssessmentPipeline(model=model, image_processor=processor),
        handler=handler,
        folder=folder,
        truncated=str(truncated),
        text=str(text),
        crops=torch.zeros(1, 2, 3, 30, 30),
    )


def _small_bomb(env):
    env.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # a 40 x 40 PNG is then over twice the limit
    return env.pipe(_png())


@functools.cache
def _demo_app():
    pytest.importorskip("gradio")
    spec = importlib.util.spec_from_file_location("mpiqe_demo_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


def _demo_score(env, upload):
    return _demo_app().score_upload(env.pipe, upload, 2)


def _gradio_error():
    return pytest.importorskip("gradio").Error


# (case id, call, expected exception type, fragment of its message)
def _with_unreachable_hub(env, call):
    """Nothing listens on port 9 of this machine: the connection is refused at once, as offline."""
    from huggingface_hub import constants

    env.monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    env.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return call()


CASES = [
    # pipeline: pixels
    ("int64 beyond 255", lambda e: e.pipe(np.full((40, 40, 3), 300)), ValueError, "expected 0..255"),
    ("float on 0..255", lambda e: e.pipe(RGB.astype(float)), ValueError, "float inputs must lie in [0, 1]"),
    ("NaN pixels", lambda e: e.pipe(np.full((40, 40, 3), np.nan)), ValueError, "NaN"),
    ("2 channels", lambda e: e.pipe(np.zeros((40, 40, 2), np.uint8)), ValueError, "1, 3 or 4 channels"),
    ("complex dtype", lambda e: e.pipe(np.zeros((40, 40, 3), np.complex64)), ValueError, "unsupported array dtype"),
    ("1-D array", lambda e: e.pipe(np.zeros(10)), ValueError, "got shape (10,)"),
    ("5-D array", lambda e: e.pipe(np.zeros((1, 1, 40, 40, 3))), ValueError, "a batch: a list, or a 4-D array"),
    ("1-D tensor", lambda e: e.pipe(torch.rand(40)), ValueError, "got shape (40,)"),
    ("zero-size image", lambda e: e.pipe(np.zeros((0, 40, 3), np.uint8)), ValueError, "zero width or height"),
    ("numpy scalar", lambda e: e.pipe(np.float32(1)), ValueError, "input of type float32: pass a path"),
    ("an int", lambda e: e.pipe(7), ValueError, "input of type int: pass a path"),
    ("no image", lambda e: e.pipe(None), ValueError, "No image was given: pass a path"),
    ("nested list", lambda e: e.pipe([[RGB]]), ValueError, "input 0: Cannot score an input of type list"),
    ("None in a list", lambda e: e.pipe([RGB, None]), ValueError, "input 1: Cannot score an input of type NoneType"),
    ("bad array in a list", lambda e: e.pipe([RGB, RGB * 0.0 + 2]), ValueError, "input 1: float image"),
    ("4-D array in a list", lambda e: e.pipe([np.stack([RGB, RGB])]), ValueError, "input 0: a 4-D ndarray"),
    # pipeline: files, bytes, URLs
    ("truncated bytes", lambda e: e.pipe(_png()[:200]), ValueError, "in-memory image (200 bytes)"),
    ("truncated file", lambda e: e.pipe(e.truncated), ValueError, "truncated.png': image file is truncated"),
    ("text file", lambda e: e.pipe(e.text), ValueError, "notes.png': not a recognised image format"),
    ("missing file", lambda e: e.pipe("/no/such/photo.jpg"), ValueError, "'/no/such/photo.jpg': no such file"),
    ("a directory", lambda e: e.pipe(str(e.folder)), ValueError, "is a directory, not an image file"),
    ("decompression bomb", _small_bomb, ValueError, "decompression bomb refused"),
    ("unreachable URL", lambda e: e.pipe("http://127.0.0.1:9/a.png"), ValueError, "URL 'http://127.0.0.1:9/a.png'"),
    # pipeline: arguments
    ("num_crops=0", lambda e: e.pipe(RGB, num_crops=0), ValueError, "`num_crops` must be a positive int, got 0"),
    ("num_crops=2.0", lambda e: e.pipe(RGB, num_crops=2.0), ValueError, "`num_crops` must be a positive int"),
    ("top_k as text", lambda e: e.pipe(RGB, top_k="3"), ValueError, "`top_k` must be a positive int, got '3'"),
    ("negative timeout", lambda e: e.pipe(RGB, timeout=-1), ValueError, "`timeout` must be a positive number"),
    ("timeout as text", lambda e: e.pipe(RGB, timeout="5s"), ValueError, "`timeout` must be a positive number"),
    ("flag as text", lambda e: e.pipe(RGB, return_normalized_score="no"), ValueError, "must be True or False"),
    ("return_map=1", lambda e: e.pipe(RGB, return_map=1), ValueError, "`return_map` must be True or False"),
    ("unknown argument", lambda e: e.pipe(RGB, crops=3), TypeError, "unexpected arguments ['crops']"),
    ("errors='ignore'", lambda e: e.pipe(RGB, errors="ignore"), ValueError, "`errors` must be one of"),
    ("output_format", lambda e: e.pipe(RGB, output_format="json"), ValueError, "`output_format` must be one of"),
    (
        "map in classification form",
        lambda e: e.pipe(RGB, return_map=True, output_format="classification"),
        ValueError,
        "needs output_format='quality'",
    ),
    # model forward and quality maps
    ("numpy pixel_values", lambda e: e.model(e.crops.numpy()), TypeError, "must be a torch tensor, got ndarray"),
    ("uint8 pixel_values", lambda e: e.model(e.crops.to(torch.uint8)), TypeError, "got dtype torch.uint8"),
    ("no images", lambda e: e.model(torch.rand(0, 2, 3, 30, 30)), ValueError, "(0, 2, 3, 30, 30) holds no crops"),
    ("no crops", lambda e: e.model(torch.rand(1, 0, 3, 30, 30)), ValueError, "(1, 0, 3, 30, 30) holds no crops"),
    ("1-channel crops", lambda e: e.model(torch.rand(1, 2, 1, 30, 30)), ValueError, "RGB crops (3 channels), got 1"),
    ("crops of another size", lambda e: e.model(torch.rand(1, 2, 3, 64, 64)), ValueError, "CLIP takes 30x30"),
    ("3-D pixel_values", lambda e: e.model(torch.rand(3, 30, 30)), ValueError, "got (3, 30, 30): cut images"),
    ("map without sizes", lambda e: e.model.quality_map(e.crops, None), ValueError, "`image_sizes` must give one"),
    ("map size as text", lambda e: e.model.quality_map(e.crops, "30x30"), ValueError, "(height, width) of positive"),
    ("fractional map size", lambda e: e.model.quality_map(e.crops, [(30.5, 30)]), ValueError, "got [(30.5, 30)]"),
    ("map sizes miscounted", lambda e: e.model.quality_map(e.crops, [(30, 30)] * 2), ValueError, "per image (1)"),
    # image processor and loading
    ("crop_size 0", lambda e: MPIQEImageProcessor(crop_size=0)(RGB), ValueError, "positive 'height' and 'width'"),
    ("processor on []", lambda e: e.processor([]), ValueError, "no images were given"),
    ("bad image in a batch", lambda e: e.processor([RGB, "/no/a.png"]), ValueError, "image at index 1: Cannot load"),
    (
        "folder without model_type",
        lambda e: MPIQEModel.from_pretrained(e.folder / "no_model_type"),
        ValueError,
        "holds a config.json without a model_type, not an MP-IQE model: expected a folder or repo",
    ),
    (
        "from_pretrained on a folder without config.json",
        lambda e: MPIQEModel.from_pretrained(e.folder),
        ValueError,
        "holds no config.json, so no model: pass the folder",
    ),
    (
        "a dict that is no datasets Image",
        lambda e: e.pipe({"image": "a.png"}),
        ValueError,
        "holds neither 'bytes' nor 'path' (the form of a `datasets` Image column): pass the image itself",
    ),
    (
        "demo on a missing model",
        lambda e: _demo_app().main(["--model", str(e.folder / "nowhere")]),
        ModelSourceUnavailable,
        "nowhere': no such folder",
    ),
    (
        "model folder without config.json",
        lambda e: check_model_source(str(e.folder), "the model"),
        ModelSourceUnavailable,
        "holds no config.json: pass the folder that `save_pretrained`",
    ),
    (
        "Hub unreachable for a model id",
        lambda e: _with_unreachable_hub(e, lambda: check_model_source("org/not-cached-anywhere", "the model")),
        ModelSourceUnavailable,
        "the Hub at http://127.0.0.1:9 cannot be reached (",
    ),
    # Inference Endpoints handler
    ("body not a dict", lambda e: e.handler(["inputs"]), ValueError, 'must be {"inputs": <image'),
    ("no inputs", lambda e: e.handler({"image": "abc"}), ValueError, "got a dict with keys ['image']"),
    ("parameters a list", lambda e: e.handler({"inputs": "", "parameters": [1, 2]}), ValueError, "got a list"),
    ("unknown parameter", lambda e: e.handler({"inputs": "", "parameters": {"crops": 3}}), ValueError, "allowed:"),
    (
        "parameter of wrong type",
        lambda e: e.handler({"inputs": base64.b64encode(_png()).decode(), "parameters": {"top_k": "2"}}),
        ValueError,
        "`top_k` must be a positive int",
    ),
    ("garbage base64", lambda e: e.handler({"inputs": "%%not base64%%"}), ValueError, "send the image's bytes as"),
    (
        "base64 of a non-image",
        lambda e: e.handler({"inputs": base64.b64encode(b"hello world!").decode()}),
        ValueError,
        "Cannot load in-memory image (12 bytes): not a recognised image format",
    ),
    ("inputs a number", lambda e: e.handler({"inputs": 3}), ValueError, "`inputs` must be image bytes"),
    # the demo: messages shown in the page by gr.Error
    ("demo without upload", lambda e: _demo_score(e, None), _gradio_error, "Upload or paste an image first."),
    (
        "demo truncated upload",
        lambda e: _demo_score(e, {"path": e.truncated, "orig_name": "holiday.png"}),
        _gradio_error,
        "Cannot score holiday.png: Cannot load image file",
    ),
    (
        "demo text upload",
        lambda e: _demo_score(e, {"path": e.text, "orig_name": "notes.png"}),
        _gradio_error,
        "not a recognised image format",
    ),
]


@pytest.mark.parametrize("case, call, error, fragment", CASES, ids=[case[0] for case in CASES])
def test_misuse_gets_one_clear_line(env, monkeypatch, case, call, error, fragment):
    env.monkeypatch = monkeypatch
    error = error() if error is _gradio_error else error
    with pytest.raises(error) as info:
        call(env)
    message = getattr(info.value, "message", None) or str(info.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "odd, plain",
    [
        ((RGB.astype(np.uint16) * 257), RGB),  # 16-bit
        (np.dstack([RGB, np.full((40, 40), 255, np.uint8)]), RGB),  # opaque alpha
        (RGB[..., :1], np.repeat(RGB[..., :1], 3, axis=-1)),  # one channel
        (RGB[..., 0], np.repeat(RGB[..., :1], 3, axis=-1)),  # (H, W)
        (np.ones((1, 1, 3), np.uint8) * 90, np.full((30, 30, 3), 90, np.uint8)),  # 1 x 1, enlarged to the crop
    ],
    ids=["uint16", "rgba", "1-channel", "2-D", "1x1"],
)
def test_odd_but_valid_images_score_as_their_plain_rgb(env, odd, plain):
    assert env.pipe(odd)["score"] == pytest.approx(env.pipe(plain)["score"], abs=1e-5)


def test_handler_takes_base64_wrapped_as_the_base64_command_prints_it(env):
    encoded = base64.b64encode(_png()).decode()
    wrapped = "\n".join(encoded[start : start + 76] for start in range(0, len(encoded), 76)) + "\n"
    assert "\n" in wrapped.strip()
    request = json.loads(json.dumps({"inputs": wrapped, "parameters": {"output_format": "quality"}}))
    assert env.handler(request) == env.pipe(RGB)


def test_demo_refuses_a_device_that_is_none_in_one_line(env, capsys):
    with pytest.raises(SystemExit) as info:
        _demo_app().parse_args(["--model", str(env.folder), "--device", "banana"])
    assert info.value.code == 2
    assert "error: --device banana: not a device; use cpu, cuda or cuda:N" in capsys.readouterr().err
