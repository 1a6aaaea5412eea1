"""The image-quality-assessment pipeline on a tiny model."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from mpiqe_hf import PIPELINE_TASK, ImageQualityAssessmentPipeline, MPIQEImageProcessor, load_image
from mpiqe_hf.pipeline_mpiqe import quality_level_index, quality_level_weights


KEYS = {"score", "quality", "scene", "distortion"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("pipe-model")
    MPIQEModelTester().model(mos_min=0.0, mos_max=100.0, mos_higher_is_better=False).save_pretrained(folder)
    MPIQEImageProcessor(crop_size=30, num_crops=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe-images")
    rng = np.random.default_rng(3)
    paths = []
    for index, size in enumerate([(40, 30), (64, 48), (30, 90)]):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_inputs_batching_and_native_scale(checkpoint, images):
    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint))
    assert isinstance(scorer, ImageQualityAssessmentPipeline)
    one = scorer(images[0], return_normalized_score=True)
    assert set(one) == KEYS | {"normalized_score"}
    assert one["score"] == pytest.approx(100.0 - 100.0 * one["normalized_score"], abs=1e-4)  # a DMOS scale
    assert one["quality"] == scorer.model.config.quality_levels[quality_level_index(one["normalized_score"], 5)]
    assert one["scene"] in scorer.model.config.scene_classes
    assert one["distortion"] in scorer.model.config.distortion_classes

    # paths, PIL images and a list, batched or not: the same numbers
    pil = [load_image(path) for path in images]
    batched = scorer(pil, batch_size=2)
    single = [scorer(image) for image in images]
    assert [set(item) for item in batched] == [KEYS] * 3
    assert [item["score"] for item in batched] == pytest.approx([item["score"] for item in single], rel=1e-6, abs=1e-5)

    # the same as the model
    processor = MPIQEImageProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        expected = scorer.model.to_native_scale(
            scorer.model(processor(pil, return_tensors="pt")["pixel_values"]).score
        )
    assert [item["score"] for item in batched] == pytest.approx(expected.tolist(), rel=1e-6, abs=1e-5)


def test_top_k_and_classification_form(checkpoint, images):
    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint), top_k=3)
    result = scorer(images[1])
    assert set(result) == KEYS | {"scene_scores", "distortion_scores", "quality_scores"}
    for key in ("scene_scores", "distortion_scores", "quality_scores"):
        scores = [item["score"] for item in result[key]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert result["scene_scores"][0]["label"] == result["scene"]
    assert result["quality_scores"][0]["label"] == result["quality"]

    labels = scorer([images[1], images[2]], output_format="classification", top_k=5)
    assert len(labels) == 2
    for item in labels:
        assert [set(entry) for entry in item] == [{"label", "score"}] * 5
        assert sum(entry["score"] for entry in item) == pytest.approx(1.0)
    assert labels[0][0]["label"] == result["quality"]
    with pytest.raises(ValueError, match="output_format"):
        scorer(images[0], output_format="json")
    with pytest.raises(ValueError, match="top_k"):
        scorer(images[0], top_k=0)


def test_num_crops_and_bad_input(checkpoint, images):
    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint))
    assert scorer(images[2], num_crops=1)["score"] != pytest.approx(scorer(images[2], num_crops=3)["score"], abs=1e-7)
    with pytest.raises(ValueError, match="no such file"):
        scorer("/nonexistent/picture.png")


def test_url_inputs_go_through_transformers_loader(checkpoint, images, monkeypatch):
    import transformers.image_utils

    seen = []

    def fake_load(url, timeout=None):
        seen.append((url, timeout))
        return Image.open(images[0])

    monkeypatch.setattr(transformers.image_utils, "load_image", fake_load)
    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint))
    from_url = scorer("https://example.invalid/a.png", timeout=3.0)
    assert seen == [("https://example.invalid/a.png", 3.0)]
    assert from_url["score"] == pytest.approx(scorer(images[0])["score"], abs=1e-6)


@pytest.mark.parametrize(
    "score, level", [(-0.3, 0), (0.0, 0), (0.19, 0), (0.2, 1), (0.5, 2), (0.79, 3), (0.8, 4), (1.0, 4), (7.0, 4)]
)
def test_quality_bands(score, level):
    assert quality_level_index(score, 5) == level
    weights = quality_level_weights(score, 5)
    assert sum(weights) == pytest.approx(1.0)
    assert max(range(5), key=lambda index: weights[index]) == level or weights[level] == pytest.approx(max(weights))


def test_text_features_are_computed_once_per_pipeline(checkpoint, images, monkeypatch):
    from mpiqe_hf import MPIQEModel

    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint))
    calls = []
    original = MPIQEModel.get_text_features
    monkeypatch.setattr(MPIQEModel, "get_text_features", lambda self: calls.append(1) or original(self))
    first = scorer(images, batch_size=2)
    second = scorer(images[0])
    assert len(calls) == 1
    assert second["score"] == pytest.approx(first[0]["score"], rel=1e-6)


def test_a_model_that_is_not_mpiqe_is_refused_naming_its_type(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    ViTForImageClassification(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=30,
            patch_size=6,
        )
    ).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 30, "width": 30}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs an MP-IQE model.*model_type='vit'"):
        pipeline(PIPELINE_TASK, model=str(tmp_path))


def test_a_bad_item_raises_naming_it_or_gets_an_error_entry(checkpoint, images, tmp_path):
    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a jpeg")
    inputs = [images[0], str(corrupt), images[1]]
    with pytest.raises(ValueError, match=r"input 1: Cannot load image file '.*corrupt\.jpg'"):
        scorer(inputs)
    with pytest.raises(ValueError, match=r"^Cannot load in-memory image \(3 bytes\)"):
        scorer(b"abc")

    good = scorer([images[0], images[1]])
    for batch_size in (1, 2, 3):
        entries = scorer(inputs, errors="return", batch_size=batch_size)
        assert entries[1] == {
            "score": None,
            "quality": None,
            "scene": None,
            "distortion": None,
            "error": entries[1]["error"],
        }
        assert "input 1: Cannot load image file" in entries[1]["error"]
        assert [entries[0]["score"], entries[2]["score"]] == pytest.approx(
            [g["score"] for g in good], rel=1e-6, abs=1e-5
        )
        assert entries[0]["error"] is None and entries[0]["quality"] == good[0]["quality"]
    assert scorer(inputs, errors="return", output_format="classification")[1] == {"error": entries[1]["error"]}
    with pytest.raises(ValueError, match="`errors` must be one of"):
        scorer(images[0], errors="ignore")


def test_a_batch_answers_as_its_images_do(checkpoint):
    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint))
    rng = np.random.default_rng(11)
    hwc = rng.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    alone = [scorer(image, top_k=2, return_normalized_score=True) for image in hwc]
    tensor = torch.from_numpy(hwc).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) on [0, 1]
    for batch in (hwc, hwc.transpose(0, 3, 1, 2), tensor, list(hwc)):
        answers = scorer(batch, top_k=2, return_normalized_score=True, batch_size=2)  # a batch of 2, then 1
        assert isinstance(answers, list) and len(answers) == 3
        for answer, expected in zip(answers, alone):
            assert answer.keys() == expected.keys() and answer["scene"] == expected["scene"]
            assert answer["normalized_score"] == pytest.approx(expected["normalized_score"], abs=1e-5)
            assert answer["score"] == pytest.approx(expected["score"], rel=1e-6)  # on the 0-100 scale
    assert scorer([]) == [] and scorer(hwc[:0]) == []
    assert isinstance(scorer(hwc[0]), dict)  # a 3-D array is one image


def test_an_adapter_folder_loads_with_its_configs_default_processor(tmp_path, tiny_clip):
    from mpiqe_hf import MPIQEModel, save_adapter

    model = MPIQEModel.from_clip(
        tiny_clip, visual_prompt_depth=2, window_size=3, decoder_heads=4, decoder_intermediate_size=37
    )
    save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "preprocessor_config.json").exists()
    scorer = pipeline(PIPELINE_TASK, model=str(tmp_path / "adapter"))
    assert scorer.model.config.name_or_path == str(tmp_path / "adapter")
    assert scorer.image_processor.to_dict() == MPIQEImageProcessor.default_for(model.config).to_dict()
    image = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    direct = ImageQualityAssessmentPipeline(model=model, image_processor=scorer.image_processor)
    assert scorer(image)["score"] == pytest.approx(direct(image)["score"], abs=1e-5)


def test_an_unreachable_url_is_named_and_can_be_an_error_entry(checkpoint, images):
    scorer = pipeline(PIPELINE_TASK, model=str(checkpoint))
    url = "http://127.0.0.1:9/photo.png"  # the discard port: the connection is refused at once
    with pytest.raises(ValueError, match=r"^Cannot load image URL 'http://127\.0\.0\.1:9/photo\.png': \w+"):
        scorer(url, timeout=5)
    entries = scorer([images[0], url], errors="return", timeout=5)
    assert entries[0]["error"] is None and entries[0]["score"] is not None
    assert entries[1]["score"] is None and entries[1]["error"].startswith("input 1: Cannot load image URL")
