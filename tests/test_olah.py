"""Downloads from a Hub server this project did not write: `olah` serving local git repositories on 127.0.0.1."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import HIDE_PACKAGE, MPIQEModelTester, clip_tokenizer
from PIL import Image

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.publishing import write_repository


if shutil.which("olah-cli", path=os.path.dirname(sys.executable)) is None:
    pytest.skip("olah is not installed (pip install olah)", allow_module_level=True)

from olah_server import OlahMirror  # noqa: E402


# Downloads through the package of this checkout: full and adapter-only checkpoints, and the registered pipeline.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITH_PACKAGE = f"import sys; sys.path.insert(0, {CHECKOUT!r})" + textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import pipeline
    from mpiqe_hf import PIPELINE_TASK, MPIQEModel
    crops = torch.from_numpy(np.load(sys.argv[1]))
    scores = {}
    with torch.no_grad():
        scores["full"] = MPIQEModel.from_pretrained("test/mpiqe-full")(crops).score.tolist()
        scores["adapter"] = MPIQEModel.from_pretrained("test/mpiqe-adapter")(crops).score.tolist()
    scorer = pipeline(PIPELINE_TASK, model="test/mpiqe-full")
    scores["pipeline"] = scorer(sys.argv[2], return_normalized_score=True)["normalized_score"]
    scorer = pipeline(PIPELINE_TASK, model="test/mpiqe-adapter")
    scores["adapter pipeline"] = scorer(sys.argv[2], return_normalized_score=True)["normalized_score"]
    print("SCORES" + json.dumps(scores))
    """
)

# The same repositories as remote code, where the package cannot be imported.
WITHOUT_PACKAGE = HIDE_PACKAGE + textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    from transformers import AutoModel, pipeline
    crops = torch.from_numpy(np.load(sys.argv[1]))
    scores = {}
    with torch.no_grad():
        full = AutoModel.from_pretrained("test/mpiqe-full", trust_remote_code=True).eval()
        adapter = AutoModel.from_pretrained("test/mpiqe-adapter", trust_remote_code=True).eval()
        scores["full"] = full(crops).score.tolist()
        scores["adapter"] = adapter(crops).score.tolist()
        scores["module"] = type(full).__module__
    scorer = pipeline(model="test/mpiqe-full", trust_remote_code=True)
    scores["pipeline"] = scorer(sys.argv[2], output_format="quality", return_normalized_score=True)["normalized_score"]
    scores["widget"] = scorer(sys.argv[2])
    scorer = pipeline(model="test/mpiqe-adapter", trust_remote_code=True)
    scores["adapter pipeline"] = scorer(sys.argv[2], output_format="quality", return_normalized_score=True)[
        "normalized_score"]
    print("SCORES" + json.dumps(scores))
    """
)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    from transformers import CLIPModel

    root = tmp_path_factory.mktemp("olah")
    tester = MPIQEModelTester()
    with OlahMirror(root) as server:
        clip_dir = root / "clip"
        torch.manual_seed(11)
        CLIPModel(tester.clip_config()).save_pretrained(clip_dir)
        clip_tokenizer().save_pretrained(clip_dir)
        server.add_repo("test/clip-tiny", clip_dir)

        processor = MPIQEImageProcessor(crop_size=30, num_crops=3)
        full = tester.model(seed=3)
        # the files `push_to_hub` uploads: model, processor, pipeline code, card and handler
        write_repository(full, root / "full", image_processor=processor)
        server.add_repo("test/mpiqe-full", root / "full")

        adapter = MPIQEModel.from_clip(
            str(clip_dir), visual_prompt_depth=2, window_size=3, decoder_heads=4, decoder_intermediate_size=37
        ).eval()
        with torch.no_grad():
            for name, param in adapter.named_parameters():
                if param.requires_grad and not name.endswith("norm.weight"):
                    param.normal_(std=0.3)
        adapter.config.base_model_name_or_path = "test/clip-tiny"
        write_repository(adapter, root / "adapter", adapter_only=True, image_processor=processor)
        server.add_repo("test/mpiqe-adapter", root / "adapter")
        yield server, full, adapter, processor


def _run(script, mirror_server, tmp_path, *args):
    out = subprocess.run(
        [sys.executable, "-I", "-c", script, *map(str, args)],
        cwd=tmp_path,
        env=mirror_server.env(tmp_path / "hf-cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("SCORES", 1)[1])


@pytest.mark.parametrize("script", ["with_package", "without_package"])
def test_models_and_pipeline_download_from_olah(mirror, tmp_path, script):
    server, full, adapter, processor = mirror
    crops = MPIQEModelTester().pixel_values(seed=4)
    np.save(tmp_path / "crops.npy", crops.numpy())
    image_path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(image_path)

    scores = _run(
        WITH_PACKAGE if script == "with_package" else WITHOUT_PACKAGE,
        server,
        tmp_path,
        tmp_path / "crops.npy",
        image_path,
    )
    with torch.no_grad():
        np.testing.assert_allclose(scores["full"], full(crops).score.numpy(), atol=1e-6)
        np.testing.assert_allclose(scores["adapter"], adapter(crops).score.numpy(), atol=1e-6)
        expected = full(processor(str(image_path), return_tensors="pt")["pixel_values"]).score.item()
    assert scores["pipeline"] == pytest.approx(expected, abs=1e-6)
    with torch.no_grad():
        expected = adapter(processor(str(image_path), return_tensors="pt")["pixel_values"]).score.item()
    assert scores["adapter pipeline"] == pytest.approx(expected, abs=1e-6)
    if script == "without_package":
        assert scores["module"].startswith("transformers_modules.")
        assert {item["label"] for item in scores["widget"]} == set(full.config.quality_levels)

    with open(os.path.join(server.root, "olah.log")) as log:
        served = log.read()
    for repo in ("test/mpiqe-full", "test/mpiqe-adapter", "test/clip-tiny"):
        assert f"GET /{repo}/resolve/main/" in served
