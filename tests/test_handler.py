"""`handler.py` called the way Inference Endpoints' serving toolkit does, in a process without `mpiqe_hf`."""

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import HIDE_PACKAGE
from hub_server import hub_endpoint  # noqa: F401  (the fixture)
from PIL import Image

import mpiqe_hf
from mpiqe_hf import MPIQEImageProcessor
from mpiqe_hf.handler import decode_inputs


HANDLER_SOURCE = os.path.join(os.path.dirname(mpiqe_hf.__file__), "handler.py")

# The toolkit imports handler.py from the repository folder, builds the handler once and calls it per request; the
# body of an image request arrives as a PIL image, an octet-stream body as bytes, a JSON body as its dict.
SERVE = HIDE_PACKAGE + textwrap.dedent(
    """
    import base64, io, json, os, sys
    from PIL import Image

    repository = sys.argv[1]
    spec = importlib.util.spec_from_file_location("handler", os.path.join(repository, "handler.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(repository)

    body = open(sys.argv[2], "rb").read()
    encoded = base64.b64encode(body).decode()
    answers = {
        "bytes": handler({"inputs": body}),
        "pil": handler({"inputs": Image.open(io.BytesIO(body)), "parameters": {}}),
        "base64": handler(json.loads(json.dumps({"inputs": encoded}))),
        "data_uri": handler({"inputs": "data:image/png;base64," + encoded, "parameters": {"top_k": 2}}),
        "full": handler({"inputs": encoded, "parameters": {"output_format": "quality", "top_k": 3,
                                                           "return_normalized_score": True}}),
    }
    for request in ({"inputs": "not an image"}, {"inputs": b"GIF89a broken"}, {"image": encoded},
                    {"inputs": encoded, "parameters": {"colour": "red"}}):
        try:
            handler(request)
        except ValueError as err:
            answers.setdefault("errors", []).append(str(err))
    print("ANSWERS" + json.dumps(answers))
    """
)


@pytest.fixture
def repository(hub_endpoint, tmp_path):
    """A repository as `push_to_hub` writes it (through the project's Hub server), downloaded like an endpoint does."""
    from conftest import MPIQEModelTester
    from huggingface_hub import snapshot_download

    model = MPIQEModelTester().model(mos_min=1.0, mos_max=5.0)
    model.push_to_hub(
        "user/mp-iqe-endpoint", adapter_only=False, image_processor=MPIQEImageProcessor(crop_size=30, num_crops=2)
    )
    folder = snapshot_download("user/mp-iqe-endpoint", local_dir=tmp_path / "repository")
    with open(os.path.join(folder, "handler.py"), "rb") as pushed, open(HANDLER_SOURCE, "rb") as source:
        assert pushed.read() == source.read()
    return Path(folder), model


def test_endpoint_contract_in_a_process_without_the_package(repository, tmp_path):
    folder, model = repository
    rng = np.random.default_rng(5)
    image_path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image_path)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    out = subprocess.run(
        [sys.executable, "-I", "-c", SERVE, str(folder), str(image_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answers = json.loads(out.stdout.split("ANSWERS", 1)[1])

    from mpiqe_hf.pipeline_mpiqe import ImageQualityAssessmentPipeline

    pipe = ImageQualityAssessmentPipeline(model=model, image_processor=MPIQEImageProcessor.from_pretrained(folder))
    widget = pipe(str(image_path), output_format="classification")
    full = pipe(str(image_path), top_k=3, return_normalized_score=True)
    for key in ("bytes", "pil", "base64"):
        assert [item["label"] for item in answers[key]] == [item["label"] for item in widget]
        np.testing.assert_allclose(
            [item["score"] for item in answers[key]], [item["score"] for item in widget], atol=1e-6
        )
    assert len(answers["data_uri"]) == 2 and answers["data_uri"][0]["label"] == widget[0]["label"]
    assert set(answers["full"]) == set(full)
    assert answers["full"]["score"] == pytest.approx(full["score"], abs=1e-5)
    assert answers["full"]["quality"] == full["quality"]
    assert [item["label"] for item in answers["full"]["distortion_scores"]] == [
        item["label"] for item in full["distortion_scores"]
    ]
    errors = answers["errors"]
    assert len(errors) == 4
    assert "base64" in errors[0]
    assert "Cannot load" in errors[1]
    assert '{"inputs"' in errors[2]
    assert "colour" in errors[3]


def test_decode_inputs():
    image = Image.new("RGB", (4, 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    body = buffer.getvalue()
    assert decode_inputs(body) == body
    assert decode_inputs(bytearray(body)) == body
    assert decode_inputs(base64.b64encode(body).decode()) == body
    # as the `base64` command prints it: a line break every 76 characters
    wrapped = "\n".join(base64.encodebytes(body * 3).decode().splitlines())
    assert "\n" in wrapped and decode_inputs(wrapped) == body * 3
    with pytest.raises(ValueError, match="neither an http.s. URL nor a base64-encoded image"):
        decode_inputs(wrapped + "\n%%")
    assert decode_inputs("data:image/png;base64," + base64.b64encode(body).decode()) == body
    assert decode_inputs({"image": base64.b64encode(body).decode()}) == body
    assert decode_inputs(image) is image
    assert decode_inputs("https://example.com/a.png") == "https://example.com/a.png"
    with pytest.raises(ValueError, match="base64"):
        decode_inputs("photo.jpg")
    with pytest.raises(ValueError, match="must be"):
        decode_inputs(3)
