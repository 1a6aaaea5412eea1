"""Push MP-IQE to the local Hub-protocol server and pull it back: the package's classes, `AutoModel` with remote code
in a child process that cannot import `mpiqe_hf` (full and adapter form, with and without `peft`), the adapter form,
the model card, and the Hub's errors."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import HIDE_PACKAGE, MPIQEModelTester, clip_tokenizer
from hub_server import hub_endpoint  # noqa: F401  (the fixture)
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from transformers import CLIPModel

from mpiqe_hf import MPIQEConfig, MPIQEImageProcessor, MPIQEModel, save_adapter
from mpiqe_hf.configuration_mpiqe import ADAPTER_WEIGHTS_NAME


#: The model files: what a checkpoint carries as remote code, and nothing else of the package.
MODEL_FILES = {
    "configuration_mpiqe.py",
    "modeling_mpiqe.py",
    "image_processing_mpiqe.py",
    "image_utils_mpiqe.py",
    "pipeline_mpiqe.py",
    "quality_map_mpiqe.py",
}
_PEFT = importlib.util.find_spec("peft")
#: Where `peft` is importable from (for the child processes), or None: the adapter is checked with and without it.
PEFT_SITE = os.path.dirname(os.path.dirname(_PEFT.origin)) if _PEFT else None
WITH_AND_WITHOUT_PEFT = pytest.mark.parametrize(
    "peft_site",
    [None, pytest.param(PEFT_SITE, marks=pytest.mark.skipif(PEFT_SITE is None, reason="peft is not installed"))],
    ids=["without-peft", "with-peft"],
)

RESULTS = [
    {"dataset": "Synthetic-IQA", "dataset_id": "user/synthetic-iqa", "split": "test", "srcc": 0.5, "plcc": 0.625}
]


def run_without_package(script, hub_endpoint, tmp_path):
    """Runs `script` (which starts with HIDE_PACKAGE) in an isolated child that talks to the test Hub, and returns
    the JSON it printed after "RESULT "."""
    env = hub_endpoint.subprocess_env()
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "MPIQE_HF_HIDDEN" in out.stdout
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def _scores(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values).score


def _front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture
def tester():
    return MPIQEModelTester()


def test_push_pull_and_remote_code_without_the_package(hub_endpoint, tester, tmp_path):
    model = tester.model(mos_min=1.0, mos_max=5.0)
    processor = MPIQEImageProcessor(crop_size=30, num_crops=2)
    commit = model.push_to_hub(
        "user/mp-iqe-tiny", adapter_only=False, image_processor=processor, evaluation_results=RESULTS
    )
    assert commit.oid == hub_endpoint.head("user/mp-iqe-tiny")

    files = hub_endpoint.files("user/mp-iqe-tiny")
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "handler.py"} <= set(files)
    assert {name for name in files if name.endswith(".py")} == MODEL_FILES | {"handler.py"}
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    config = json.loads(files["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mpiqe.MPIQEConfig",
        "AutoModel": "modeling_mpiqe.MPIQEModel",
    }
    assert config["custom_pipelines"] == {
        "image-classification": {
            "impl": "pipeline_mpiqe.MPIQEImageClassificationPipeline",
            "pt": ["AutoModel"],
            "type": "image",
        }
    }
    preprocessor = json.loads(files["preprocessor_config.json"])
    assert preprocessor["auto_map"] == {"AutoImageProcessor": "image_processing_mpiqe.MPIQEImageProcessor"}
    card = _front_matter(files["README.md"].decode())
    assert card["pipeline_tag"] == "image-classification" and card["library_name"] == "transformers"
    assert card["base_model"] == "openai/clip-vit-base-patch16"  # the tiny model names no base: the default
    metrics = {m["name"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"SRCC": 0.5, "PLCC": 0.625} and card["datasets"] == ["user/synthetic-iqa"]

    pixel_values = tester.pixel_values(batch_size=2, num_crops=2)
    expected = _scores(model, pixel_values)
    pulled = MPIQEModel.from_pretrained("user/mp-iqe-tiny")
    assert torch.allclose(_scores(pulled, pixel_values), expected, atol=1e-5, rtol=0)
    assert MPIQEConfig.from_pretrained("user/mp-iqe-tiny").mos_max == 5.0
    assert MPIQEImageProcessor.from_pretrained("user/mp-iqe-tiny").num_crops == 2

    # A second push without a processor keeps the uploaded one.
    model.push_to_hub("user/mp-iqe-tiny", commit_message="again")
    assert json.loads(hub_endpoint.files("user/mp-iqe-tiny")["preprocessor_config.json"])["num_crops"] == 2

    torch.save(pixel_values, tmp_path / "pixels.pt")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (45, 33), (120, 40, 200)).save(image)
    script = HIDE_PACKAGE + textwrap.dedent(
        f"""
        import json, torch
        from transformers import AutoImageProcessor, AutoModel, pipeline
        model = AutoModel.from_pretrained("user/mp-iqe-tiny", trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            scores = model(torch.load({str(tmp_path / "pixels.pt")!r})).score
        processor = AutoImageProcessor.from_pretrained("user/mp-iqe-tiny", trust_remote_code=True)
        pixels = processor({str(image)!r}, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            native = model.to_native_scale(model(pixels).score)
        widget = pipeline(model="user/mp-iqe-tiny", trust_remote_code=True)
        full = pipeline("image-classification", model="user/mp-iqe-tiny", trust_remote_code=True, output_format="quality")
        print("RESULT", json.dumps({{"scores": scores.tolist(), "native": native.tolist(),
                                    "levels": widget({str(image)!r}), "full": full({str(image)!r})}}))
        assert "mpiqe_hf" not in sys.modules
        """
    )
    child = run_without_package(script, hub_endpoint, tmp_path)
    assert torch.allclose(torch.tensor(child["scores"]), expected, atol=1e-5, rtol=0)

    from transformers import pipeline

    local = pipeline("image-quality-assessment", model="user/mp-iqe-tiny")
    mine = local(str(image))
    assert child["native"][0] == pytest.approx(mine["score"], abs=1e-5)
    assert child["full"]["score"] == pytest.approx(mine["score"], abs=1e-5)
    assert child["full"]["quality"] == mine["quality"] and child["full"]["scene"] == mine["scene"]
    assert [entry["label"] for entry in child["levels"]][0] == mine["quality"]
    assert len(child["levels"]) == 5
    assert hub_endpoint.errors == []


def test_hub_errors_are_the_hubs(hub_endpoint, tester):
    with pytest.raises(OSError, match="is not a local folder and is not a valid model identifier") as info:
        MPIQEModel.from_pretrained("user/not-there")
    assert isinstance(info.value.__cause__, RepositoryNotFoundError)

    tester.model().push_to_hub("user/mp-iqe-errs")
    with pytest.raises(OSError, match="is not a valid git identifier") as info:
        MPIQEModel.from_pretrained("user/mp-iqe-errs", revision="v9")
    assert isinstance(info.value.__cause__, RevisionNotFoundError)

    # a repo with a config but no weights: the missing file is named
    hub_endpoint.api.create_repo("user/config-only")
    hub_endpoint.api.upload_file(
        path_or_fileobj=tester.config().to_json_string().encode(),
        path_in_repo="config.json",
        repo_id="user/config-only",
    )
    with pytest.raises(OSError, match="does not appear to have a file named model.safetensors"):
        MPIQEModel.from_pretrained("user/config-only")


def test_only_safetensors_are_read_unless_asked(tester, tmp_path):
    model = tester.model()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        MPIQEModel.from_pretrained(tmp_path)
    pixel_values = tester.pixel_values()
    for opt_in in (dict(use_safetensors=False), dict(allow_pickle=True)):
        loaded = MPIQEModel.from_pretrained(tmp_path, **opt_in)
        assert torch.equal(_scores(loaded, pixel_values), _scores(model, pixel_values))


def _push_tiny_clip(tester, repo_id, seed, **text_overrides):
    torch.manual_seed(seed)
    clip_config = tester.clip_config()
    for key, value in text_overrides.items():
        setattr(clip_config.vision_config, key, value)
    clip = CLIPModel(clip_config)
    clip.push_to_hub(repo_id)
    clip_tokenizer().push_to_hub(repo_id)
    return clip


def test_save_pretrained_writes_only_the_model_files(tester, tmp_path):
    # the modeling file and what it imports; the pipeline's file comes with the pipeline's saving (`push_to_hub`)
    tester.model().save_pretrained(tmp_path)
    expected = MODEL_FILES - {"pipeline_mpiqe.py"} | {"config.json", "model.safetensors"}
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_push_and_save_make_the_same_checkpoint_and_take_transformers_arguments(hub_endpoint, tester, tmp_path):
    model = tester.model()
    model.save_pretrained(tmp_path)
    model.push_to_hub(
        "user/mp-iqe-same",
        commit_message="transformers' words",
        commit_description="described",
        private=False,
        create_pr=False,
        max_shard_size="1GB",
        tags=["extra-tag"],
    )
    files = hub_endpoint.files("user/mp-iqe-same")
    for path in tmp_path.iterdir():
        if path.name != "config.json":
            assert files[path.name] == path.read_bytes(), path.name
    pushed = json.loads(files["config.json"])
    assert pushed.pop("custom_pipelines")  # the pipeline that the push adds
    assert pushed == json.loads((tmp_path / "config.json").read_text())
    assert "extra-tag" in _front_matter(files["README.md"].decode())["tags"]
    assert hub_endpoint.api.list_repo_commits("user/mp-iqe-same")[0].title == "transformers' words"


@pytest.fixture
def adapter_setup(hub_endpoint, tester):
    _push_tiny_clip(tester, "user/tiny-clip", seed=7)
    base_sha = hub_endpoint.head("user/tiny-clip")
    model = MPIQEModel.from_clip(
        "user/tiny-clip",
        revision=base_sha,
        visual_prompt_depth=2,
        window_size=3,
        decoder_heads=4,
        decoder_intermediate_size=37,
        mos_min=1.0,
        mos_max=5.0,
    ).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(std=0.3)
    return model, base_sha


def test_adapter_checkpoint(hub_endpoint, adapter_setup, tester, tmp_path):
    model, base_sha = adapter_setup
    pixel_values = tester.pixel_values()
    expected = _scores(model, pixel_values)

    # the model files, a config naming the base, and MP-IQE's own weights under a name of the project's own
    save_adapter(model, tmp_path / "adapter")
    expected_files = MODEL_FILES - {"pipeline_mpiqe.py"} | {"config.json", ADAPTER_WEIGHTS_NAME}
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == expected_files
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert (config["base_model_name_or_path"], config["base_model_revision"]) == ("user/tiny-clip", base_sha)
    assert len(config["adapter_base_weights_sha256"]) == 64 and config["visual_prompt_depth"] == 2
    assert model.config.adapter_base_weights_sha256 is None  # the model itself is not changed by saving
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME, "pt") as weights:
        keys = set(weights.keys())
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert keys == trainable and not any(key.startswith("clip.") for key in keys)

    local, info = MPIQEModel.from_pretrained(tmp_path / "adapter", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert torch.allclose(_scores(local, pixel_values), expected, atol=1e-5, rtol=0)
    assert not any(param.requires_grad for param in local.clip.parameters())
    assert local.config.mos_max == 5.0 and local.config.adapter_base_weights_sha256 is None

    # push: the full form by default (as save_pretrained), the adapter on request
    model.push_to_hub("user/mp-iqe-adapter", adapter_only=True, evaluation_results=RESULTS)
    model.push_to_hub("user/mp-iqe-full")
    files = hub_endpoint.files("user/mp-iqe-adapter")
    assert {ADAPTER_WEIGHTS_NAME, "config.json", "preprocessor_config.json", "README.md", "handler.py"} <= set(files)
    assert not {"model.safetensors", "adapter_config.json", "adapter_model.safetensors"} & set(files)
    assert "model.safetensors" in hub_endpoint.files("user/mp-iqe-full")
    clip_bytes = sum(tensor.numel() * tensor.element_size() for tensor in model.clip.state_dict().values())
    full_bytes = len(hub_endpoint.files("user/mp-iqe-full")["model.safetensors"])
    assert full_bytes - len(files[ADAPTER_WEIGHTS_NAME]) >= clip_bytes  # the frozen CLIP stays out of the adapter
    card = _front_matter(files["README.md"].decode())
    assert card["base_model"] == "user/tiny-clip"
    assert {m["name"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]} == {
        "SRCC": 0.5,
        "PLCC": 0.625,
    }
    assert ADAPTER_WEIGHTS_NAME in files["README.md"].decode()
    full = MPIQEModel.from_pretrained("user/mp-iqe-full")
    adapter = MPIQEModel.from_pretrained("user/mp-iqe-adapter")
    assert torch.allclose(_scores(adapter, pixel_values), _scores(full, pixel_values), atol=1e-6, rtol=0)
    assert torch.allclose(_scores(adapter, pixel_values), expected, atol=1e-5, rtol=0)

    # the registered pipeline on the adapter repo and on an adapter folder
    from PIL import Image
    from transformers import pipeline

    image = tmp_path / "image.png"
    Image.new("RGB", (45, 33), (120, 40, 200)).save(image)
    MPIQEImageProcessor.from_pretrained("user/mp-iqe-adapter").save_pretrained(tmp_path / "adapter")
    want = pipeline("image-quality-assessment", model="user/mp-iqe-full")(str(image))["score"]
    for source in ("user/mp-iqe-adapter", str(tmp_path / "adapter")):
        assert pipeline("image-quality-assessment", model=source)(str(image))["score"] == pytest.approx(want, abs=1e-5)

    # Re-saving the rebuilt model gives a full checkpoint again.
    adapter.save_pretrained(tmp_path / "rebuilt")
    assert json.loads((tmp_path / "rebuilt" / "config.json").read_text())["adapter_base_weights_sha256"] is None
    assert torch.allclose(
        _scores(MPIQEModel.from_pretrained(tmp_path / "rebuilt"), pixel_values), expected, atol=1e-5, rtol=0
    )

    # New weights on the base's main branch: an adapter that is not pinned notices.
    unpinned = tmp_path / "unpinned"
    model.config.base_model_revision = None
    save_adapter(model, unpinned)
    assert torch.allclose(_scores(MPIQEModel.from_pretrained(unpinned), pixel_values), expected, atol=1e-5, rtol=0)
    _push_tiny_clip(tester, "user/tiny-clip", seed=8)
    with pytest.raises(ValueError, match="other weights than the CLIP the adapter .*unpinned was trained on"):
        MPIQEModel.from_pretrained(unpinned)

    # A base CLIP of another shape is refused with the settings that differ.
    _push_tiny_clip(tester, "user/other-clip", seed=7, num_hidden_layers=3)
    model.config.base_model_name_or_path = "user/other-clip"
    save_adapter(model, tmp_path / "wrong-base")
    with pytest.raises(ValueError, match="vision_config.num_hidden_layers: adapter 2 vs base 3"):
        MPIQEModel.from_pretrained(tmp_path / "wrong-base")
    assert hub_endpoint.errors == []


@WITH_AND_WITHOUT_PEFT
def test_adapter_repo_through_auto_model_and_pipeline_without_the_package(
    hub_endpoint, adapter_setup, tester, tmp_path, peft_site
):
    model, _ = adapter_setup
    pixel_values = tester.pixel_values()
    expected = _scores(model, pixel_values)
    model.push_to_hub("user/mp-iqe-adapter", adapter_only=True)
    model.push_to_hub("user/mp-iqe-full")
    torch.save(pixel_values, tmp_path / "pixels.pt")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (45, 33), (120, 40, 200)).save(image)
    script = HIDE_PACKAGE + textwrap.dedent(
        f"""
        import importlib.util, json, torch
        if {peft_site!r}:
            sys.path.insert(0, {peft_site!r})
        else:  # peft may be installed beside transformers: this child does not see it
            find_spec = importlib.util.find_spec
            importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "peft" else find_spec(name, *a, **k)
        from transformers import AutoModel, pipeline
        from transformers.utils import is_peft_available
        assert is_peft_available() == bool({peft_site!r})
        result = {{}}
        for repo in ("user/mp-iqe-adapter", "user/mp-iqe-full"):
            model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            assert type(model).__name__ == "MPIQEModel"
            with torch.no_grad():
                result[repo] = model(torch.load({str(tmp_path / "pixels.pt")!r})).score.tolist()
            scorer = pipeline(model=repo, trust_remote_code=True, output_format="quality")
            result[repo + " pipeline"] = scorer({str(image)!r})["score"]
        print("RESULT", json.dumps(result))
        assert "mpiqe_hf" not in sys.modules
        """
    )
    child = run_without_package(script, hub_endpoint, tmp_path)
    for repo in ("user/mp-iqe-adapter", "user/mp-iqe-full"):
        assert torch.allclose(torch.tensor(child[repo]), expected, atol=1e-5, rtol=0), repo
    assert child["user/mp-iqe-adapter pipeline"] == pytest.approx(child["user/mp-iqe-full pipeline"], abs=1e-5)


def test_adapter_needs_a_base_name(tester, tmp_path):
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        save_adapter(tester.model(), tmp_path)


def test_model_card_file_is_the_rendered_template():
    from pathlib import Path

    from mpiqe_hf.model_card import example_card

    text = (Path(__file__).resolve().parent.parent / "MODEL_CARD.md").read_text()
    assert text == example_card(), "MODEL_CARD.md is stale: run `python -m mpiqe_hf.model_card > MODEL_CARD.md`"
    front = _front_matter(text)
    assert front["pipeline_tag"] == "image-classification"
    assert front["base_model"] == "openai/clip-vit-base-patch16"
    assert {"library_name", "license", "tags", "datasets", "metrics", "model-index", "widget"} <= set(front)
    names = {m["name"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert {"SRCC", "PLCC"} <= names
    for section in (
        "## Intended use",
        "## How to load and score",
        "## Training recipe",
        "## Evaluation protocol",
        "## Limitations",
    ):
        assert section in text
