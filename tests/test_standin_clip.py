"""The pretrained stand-in CLIP builder of `benchmarks/make_standin_clip.py` (a tiny-step smoke run)."""

import sys
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import make_standin_clip  # noqa: E402

from mpiqe_hf import MPIQEModel  # noqa: E402
from mpiqe_hf.data import NO_LABEL, load_iqa_dataset, paper_splits  # noqa: E402


def test_tokenizer_spells_captions_and_class_names_as_words():
    tokenizer = make_standin_clip.build_tokenizer()
    tokens = tokenizer.tokenize("A strongly blurry photo with jpeg2000 compression. Still life.")
    assert tokens == [
        "a</w>",
        "strongly</w>",
        "blurry</w>",
        "photo</w>",
        "with</w>",
        "jpeg</w>",
        "2</w>",
        "0</w>",
        "0</w>",
        "0</w>",
        "compression</w>",
        ".</w>",
        "still</w>",
        "life</w>",
        ".</w>",
    ]


@pytest.mark.slow
def test_builder_saves_a_clip_that_mpiqe_loads_and_is_deterministic(tmp_path):
    settings = dict(steps=2, batch_size=4, num_procedural=1, log_every=0, references=("chelsea",))
    first = make_standin_clip.build_standin_clip(tmp_path / "a", seed=3, **settings)
    second = make_standin_clip.build_standin_clip(tmp_path / "b", seed=3, **settings)
    model = MPIQEModel.from_clip(first, visual_prompt_depth=4)
    other = MPIQEModel.from_clip(second, visual_prompt_depth=4)
    # ViT-B/16's image-text space, the width at which the paper's learning rate moves the decoder (Table R2f)
    assert model.config.clip_config.projection_dim == 512
    for (name, value), (_, value_b) in zip(model.clip.state_dict().items(), other.clip.state_dict().items()):
        torch.testing.assert_close(value, value_b, rtol=0, atol=0, msg=name)
    # One token per word of the class names ("jpeg2000 compression." = jpeg 2 0 0 0 compression .).
    assert [len(ids) for ids in model.config.distortion_class_token_ids][:3] == [7, 3, 2]
    out = model(torch.randn(2, 3, 3, 64, 64), mos=torch.tensor([0.1, 0.9]))
    assert out.score.shape == (2,) and torch.isfinite(out.loss)


def test_procedural_dataset_loads_and_splits_by_content(tmp_path):
    folder = make_standin_clip.write_procedural_dataset(tmp_path / "proc", num_contents=2, min_side=64, max_side=80)
    dataset = load_iqa_dataset(str(folder))
    assert len(dataset) == 2 * 56
    train, test = paper_splits(dataset)[0]
    assert {dataset[i]["content_id"] for i in train}.isdisjoint({dataset[i]["content_id"] for i in test})
    pristine = [row for row in dataset if row["distortion"] == NO_LABEL]
    assert len(pristine) == 2 and all(row["mos_normalized"] == 1.0 for row in pristine)


def test_the_shipped_stand_in_trains_offline_and_says_it_is_not_clip(tmp_path, monkeypatch):
    """`--clip_model_name_or_path mpiqe-standin-clip` finds the stand-in in the package (no download), `from_clip`
    warns that it is not CLIP, and the model card says so instead of naming a base model."""
    from transformers import CLIPModel
    from transformers.utils import logging as transformers_logging

    from mpiqe_hf.model_card import build_model_card
    from mpiqe_hf.model_sources import STANDIN_CLIP_NAME, is_standin_clip, resolve_clip_source, standin_clip_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_clip_source(STANDIN_CLIP_NAME)
    assert folder == standin_clip_path() and Path(folder, "model.safetensors").is_file()
    assert resolve_clip_source("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert "NOT CLIP" in CLIPModel.from_pretrained(folder).config.stand_in_notice

    warned = []
    handler = type("Collect", (transformers_logging.logging.Handler,), {"emit": lambda self, r: warned.append(r)})()
    logger = transformers_logging.get_logger("mpiqe_hf.modeling_mpiqe")
    logger.addHandler(handler)
    try:
        model = MPIQEModel.from_clip(folder, visual_prompt_depth=4)
    finally:
        logger.removeHandler(handler)
    assert any("stand-in, NOT CLIP" in record.getMessage() for record in warned)
    # its own tokenizer's special ids frame the prompts
    assert (model.config.prompt_bos_token_id, model.config.prompt_eos_token_id) == (279, 280)
    assert is_standin_clip(model.config.base_model_name_or_path) and not is_standin_clip(
        "openai/clip-vit-base-patch16"
    )

    card = str(build_model_card(model.config, repo_id="user/mp-iqe-standin"))
    assert "stand-in, NOT CLIP" in card and "the stand-in CLIP shipped with mpiqe_hf (not CLIP)" in card
    assert "base_model:" not in card.split("---")[1]
