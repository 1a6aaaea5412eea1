"""MP-IQE on a CLIP shaped like the Hub's `openai/clip-vit-base-patch16`: its config's legacy special ids, CLIP's real
BPE tokenizer, the trained checkpoint's logit scale of 100, 224-px crops in 16-px patches and full ViT-B/16 widths.

The reference for every prompt is CLIP's own text feature of the sentence the prompt stands for: with its context
vectors set to the token embeddings of "a photo of a", the prompt of a class must give exactly what
`CLIPModel.get_text_features` gives for "a photo of a <class>." tokenised by CLIP's tokenizer.
"""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import clip_tokenizer, save_tiny_clip
from transformers import CLIPModel
from transformers.utils import logging as transformers_logging

from mpiqe_hf import MPIQEConfig, MPIQEModel
from mpiqe_hf.testing_utils import hub_clip_config


CONTEXT = "a photo of a"


@pytest.fixture(scope="module")
def hub_shaped_clip(tmp_path_factory):
    """A saved random CLIP with the Hub config's values, CLIP's tokenizer and the trained logit scale (ln 100)."""
    return save_tiny_clip(tmp_path_factory.mktemp("hub_clip"), seed=3, logit_scale=math.log(100))


def clip_text_features(clip, tokenizer, sentences):
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    features = clip.get_text_features(**encoded)
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    return F.normalize(features, dim=-1)


def set_context_to(model, tokenizer, words):
    """Writes the token embeddings of `words` into both prompt learners' context vectors."""
    ids = torch.tensor(tokenizer(words, add_special_tokens=False)["input_ids"])
    embeddings = model.clip.text_model.embeddings.token_embedding(ids)
    with torch.no_grad():
        for learner in (model.scene_prompt_learner, model.distortion_prompt_learner):
            learner.context.copy_(embeddings)


def sentences(classes):
    return [f"{CONTEXT} {name.replace('_', ' ')}." for name in classes]


def test_the_fixture_carries_the_hub_configs_legacy_ids_and_clips_real_tokenizer(hub_shaped_clip):
    config = CLIPModel.from_pretrained(hub_shaped_clip).config
    text = config.text_config
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (0, 2, 1)
    assert (text.vocab_size, text.max_position_embeddings, text.hidden_act, config.projection_dim) == (
        49408,
        77,
        "quick_gelu",
        512,
    )
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer(f"{CONTEXT} animal.")["input_ids"] == [49406, 320, 1125, 539, 320, 4668, 269, 49407]
    # ids 0-2 of the vocabulary are characters, not special tokens: what the legacy ids would frame the prompts with
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["!", '"', "#"]


def test_from_clip_frames_prompts_with_the_tokenizers_special_tokens(hub_shaped_clip):
    model = MPIQEModel.from_clip(hub_shaped_clip, text_prompt_length=4, visual_prompt_depth=2, window_size=3)
    assert (model.config.prompt_bos_token_id, model.config.prompt_eos_token_id) == (49406, 49407)
    assert model.config.prompt_pad_token_id == 49407
    for learner in (model.scene_prompt_learner, model.distortion_prompt_learner):
        rows = learner.token_ids
        assert (rows[:, 0] == 49406).all()
        assert (rows[torch.arange(len(rows)), learner.eos_positions] == 49407).all()
        assert not (rows == 2).any() and not (rows == 0).any()


@pytest.mark.parametrize("reload", [False, True], ids=["built", "saved-and-loaded"])
def test_prompts_with_a_photo_of_a_context_give_clips_own_sentence_features(hub_shaped_clip, tmp_path, reload):
    tokenizer = clip_tokenizer()
    clip = CLIPModel.from_pretrained(hub_shaped_clip)
    model = MPIQEModel.from_clip(hub_shaped_clip, text_prompt_length=4, visual_prompt_depth=2, window_size=3)
    set_context_to(model, tokenizer, CONTEXT)
    if reload:
        model.save_pretrained(tmp_path)
        model = MPIQEModel.from_pretrained(tmp_path)
    with torch.no_grad():
        features = model.get_text_features()
        expected_scene = clip_text_features(clip, tokenizer, sentences(model.config.scene_classes))
        expected_distortion = clip_text_features(clip, tokenizer, sentences(model.config.distortion_classes))
    torch.testing.assert_close(features.scene_features, expected_scene, atol=1e-5, rtol=0)
    torch.testing.assert_close(features.distortion_features, expected_distortion, atol=1e-5, rtol=0)


def test_the_legacy_ids_would_give_other_features(hub_shaped_clip):
    """What the defect looked like: the same prompts framed by ids 0 and 2 (`!` ... `#`) are not CLIP's sentences."""
    tokenizer = clip_tokenizer()
    clip = CLIPModel.from_pretrained(hub_shaped_clip)
    model = MPIQEModel.from_clip(
        hub_shaped_clip,
        text_prompt_length=4,
        visual_prompt_depth=2,
        window_size=3,
        prompt_bos_token_id=0,
        prompt_eos_token_id=2,
        prompt_pad_token_id=1,
    )
    set_context_to(model, tokenizer, CONTEXT)
    with torch.no_grad():
        wrong = model.get_text_features().scene_features
        expected = clip_text_features(clip, tokenizer, sentences(model.config.scene_classes))
    assert (wrong - expected).abs().max() > 1e-2


def test_class_names_go_through_clips_bpe(hub_shaped_clip):
    tokenizer = clip_tokenizer()
    model = MPIQEModel.from_clip(hub_shaped_clip, visual_prompt_depth=2, window_size=3)
    config = model.config
    still_life = config.scene_class_token_ids[config.scene_classes.index("still_life")]
    jpeg2000 = config.distortion_class_token_ids[config.distortion_classes.index("jpeg2000 compression")]
    assert tokenizer.convert_ids_to_tokens(still_life) == ["still</w>", "life</w>", ".</w>"]
    assert tokenizer.convert_ids_to_tokens(jpeg2000) == [
        "j",
        "peg</w>",
        "2</w>",
        "0</w>",
        "0</w>",
        "0</w>",
        "compression</w>",
        ".</w>",
    ]
    # The longest prompt: [SOS], 8 context vectors, the 8 tokens of "jpeg2000 compression." and [EOS].
    learner = model.distortion_prompt_learner
    assert learner.token_ids.shape[1] == 1 + config.text_prompt_length + len(jpeg2000) + 1 == 18
    assert learner.eos_positions.tolist() == [
        1 + config.text_prompt_length + len(ids) for ids in config.distortion_class_token_ids
    ]


def test_a_prompt_longer_than_clips_77_positions_is_refused(hub_shaped_clip):
    with pytest.raises(ValueError, match="77 positions"):
        MPIQEModel.from_clip(hub_shaped_clip, text_prompt_length=70, visual_prompt_depth=2, window_size=3)


@pytest.fixture
def transformers_logs(caplog):
    """transformers' log records, which its library logger does not pass on to the root logger by default."""
    transformers_logging.enable_propagation()
    caplog.set_level(logging.WARNING)
    yield caplog
    transformers_logging.disable_propagation()


def test_a_model_built_without_a_tokenizer_says_which_ids_it_uses(transformers_logs):
    caplog = transformers_logs
    config = MPIQEConfig(clip_config=hub_clip_config().to_dict(), visual_prompt_depth=2, window_size=3)
    assert (config.prompt_bos_token_id, config.prompt_eos_token_id, config.prompt_pad_token_id) == (
        49406,
        49407,
        49407,
    )
    assert "[SOS] = 49406 and [EOS] = 49407" in caplog.text and "legacy ids 0 and 2" in caplog.text
    # Stored, so the saved config reloads with the same ids and without a word.
    caplog.clear()
    reloaded = MPIQEConfig.from_dict(config.to_dict())
    assert (reloaded.prompt_bos_token_id, reloaded.prompt_eos_token_id) == (49406, 49407)
    assert "[SOS]" not in caplog.text


@pytest.mark.parametrize("field", ["prompt_bos_token_id", "prompt_eos_token_id", "prompt_pad_token_id"])
def test_prompt_ids_outside_the_vocabulary_are_refused(field):
    with pytest.raises(ValueError, match=field):
        MPIQEConfig(clip_config=hub_clip_config().to_dict(), visual_prompt_depth=2, window_size=3, **{field: 49408})


def test_scene_logits_at_the_trained_logit_scale_are_clips_own_logits(hub_shaped_clip):
    """With the trained checkpoint's scale of 100 (not the random init's 14.3) and no visual prompts, eq. 8 is CLIP's
    `logits_per_image` for the sentences the prompts stand for."""
    tokenizer = clip_tokenizer()
    clip = CLIPModel.from_pretrained(hub_shaped_clip)
    model = MPIQEModel.from_clip(hub_shaped_clip, text_prompt_length=4, visual_prompt_depth=0, window_size=3).eval()
    assert model.clip.logit_scale.exp().item() == pytest.approx(100.0)
    set_context_to(model, tokenizer, CONTEXT)
    pixel_values = torch.randn(2, 1, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(pixel_values).scene_logits
        encoded = tokenizer(sentences(model.config.scene_classes), padding=True, return_tensors="pt")
        expected = clip(pixel_values=pixel_values[:, 0], **encoded).logits_per_image
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # Losses stay finite at that sharpness.
    out = model(
        pixel_values,
        mos=torch.tensor([0.2, 0.8]),
        scene_labels=torch.tensor([0, 3]),
        distortion_labels=torch.tensor([1, 2]),
    )
    assert torch.isfinite(out.loss)


def test_eq10_windows_on_vit_b16s_14_by_14_grid(hub_shaped_clip):
    """224-px crops in 16-px patches make a 14 x 14 grid, which the paper's w = 4 windows do not divide: adaptive max
    pooling takes rows and columns [0, 4), [3, 7), [7, 11), [10, 14) (overlapping by one)."""
    config = MPIQEConfig(clip_config=hub_clip_config(image_size=224, patch_size=16).to_dict(), visual_prompt_depth=0)
    assert config.window_size == 4
    torch.manual_seed(0)
    model = MPIQEModel(config).eval()
    pixel_values = torch.randn(1, 2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        distortion = model.get_text_features().distortion_features
        tokens = model.clip.vision_model.post_layernorm(
            model.clip.vision_model(pixel_values=pixel_values[0]).last_hidden_state
        )
        assert tokens.shape[1] == 1 + 14 * 14
        grid = model.clip.visual_projection(tokens[:, 1:]).view(2, 14, 14, -1)
        bounds = [(math.floor(i * 14 / 4), math.ceil((i + 1) * 14 / 4)) for i in range(4)]
        assert bounds == [(0, 4), (3, 7), (7, 11), (10, 14)]
        windows = torch.stack(
            [grid[:, r0:r1, c0:c1].amax(dim=(1, 2)) for r0, r1 in bounds for c0, c1 in bounds], dim=1
        )
        similarity = F.normalize(windows, dim=-1) @ distortion.t()
        weights = torch.softmax(similarity / config.distortion_window_temperature, dim=1)
        expected = model.clip.logit_scale.exp() * (weights * similarity).sum(dim=1)
        got = model(pixel_values).distortion_logits
    torch.testing.assert_close(got[0], expected.mean(dim=0), atol=1e-4, rtol=0)


def test_a_forward_at_vit_b16s_full_size():
    """Random weights at ViT-B/16's own widths and depths (768 / 512, 12 layers each, 224 px, 16-px patches) with the
    paper's defaults: deep prompts in all 12 layers, 20 queries in the 512-wide decoder."""
    torch.manual_seed(0)
    model = MPIQEModel(MPIQEConfig(clip_config=hub_clip_config(full_size=True).to_dict())).eval()
    assert sum(param.numel() for param in model.clip.parameters()) > 149_000_000
    assert model.visual_prompts.shape == (12, 4, 768)
    pixel_values = torch.randn(1, 1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values)
    assert out.score.shape == (1,) and out.scene_logits.shape == (1, 9) and out.distortion_logits.shape == (1, 11)
    assert torch.isfinite(out.score).all()
    assert torch.allclose(out.score, torch.tensor([0.5]))  # a fresh model's score head starts at the constant 0.5
