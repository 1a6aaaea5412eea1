"""Explicit text features: `get_text_features()` once, `forward(..., text_features=...)` for every batch."""

import copy

import pytest
import torch

from mpiqe_hf import MPIQEModel, MPIQETextFeatures


def test_get_text_features_and_reuse_agree_with_computing_them_in_forward(tester):
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        features = model.get_text_features()
        inline = model(pixel_values)
        reused = model(pixel_values, text_features=features)
    assert isinstance(features, MPIQETextFeatures)
    assert features.scene_features.shape == (9, 512) and features.distortion_features.shape == (11, 512)
    assert features.prepared_queries.shape == (1, 20, 512)
    torch.testing.assert_close(features.scene_features.norm(dim=-1), torch.ones(9))
    for name in ("score", "crop_scores", "scene_logits", "distortion_logits"):
        torch.testing.assert_close(getattr(reused, name), getattr(inline, name), atol=1e-6, rtol=0)


def test_forward_uses_the_features_it_is_given(tester, monkeypatch):
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        features = model.get_text_features()
        calls = []
        monkeypatch.setattr(MPIQEModel, "get_text_features", lambda self: calls.append(1) or features)
        model(pixel_values, text_features=features)
        assert calls == []
        other = MPIQETextFeatures(
            scene_features=features.scene_features.flip(0),
            distortion_features=features.distortion_features,
            prepared_queries=features.prepared_queries,
        )
        flipped = model(pixel_values, text_features=other).scene_logits
        torch.testing.assert_close(flipped, model(pixel_values, text_features=features).scene_logits.flip(-1))
        model(pixel_values)
    assert calls == [1]


def test_autocast_then_full_precision(tester):
    """No state survives a call: a bfloat16 autocast call does not poison the next float32 one."""
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        reference = model(pixel_values).score
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(pixel_values)
        after = model(pixel_values).score
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.get_text_features()
        mixed = model(pixel_values, text_features=features).score
    torch.testing.assert_close(after, reference, atol=0, rtol=0)
    assert mixed.dtype == torch.float32 and (mixed - reference).abs().max() < 0.05


def test_optimizer_steps_and_load_state_dict_are_seen(tester):
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        before = model(pixel_values).score
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(pixel_values, mos=torch.tensor([0.0, 1.0])).loss.backward()
    assert model.scene_prompt_learner.context.grad is not None
    optimizer.step()
    model.eval()
    with torch.no_grad():
        stepped = model(pixel_values).score
        other = tester.model(seed=5)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(pixel_values).score, other(pixel_values).score, atol=0, rtol=0)
    assert not torch.allclose(before, stepped)


def test_dtype_moves(tester):
    model = tester.model().to(torch.bfloat16)
    with torch.no_grad():
        features = model.get_text_features()
        out = model(tester.pixel_values().to(torch.bfloat16), text_features=features)
    assert out.score.dtype == torch.bfloat16
    assert features.scene_features.dtype == features.prepared_queries.dtype == torch.bfloat16


def test_loading_in_bfloat16_keeps_the_score_head_in_float32(tester, tmp_path):
    tester.model().save_pretrained(tmp_path)
    model = MPIQEModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.clip.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.score_head.parameters()} == {torch.float32}
    with torch.no_grad():
        out = model(tester.pixel_values().to(torch.bfloat16))
    assert out.score.dtype == torch.float32


def test_truncated_prompts_match_77_position_prompts(tester):
    model = tester.model()
    with torch.no_grad():
        truncated = model.get_text_features()
        for learner in (model.scene_prompt_learner, model.distortion_prompt_learner):
            assert learner.token_ids.shape[1] < 77
            eos = model.config.prompt_pad_token_id
            padded = torch.full((learner.num_classes, 77), eos, dtype=torch.long)
            padded[:, : learner.token_ids.shape[1]] = learner.token_ids
            learner.token_ids = padded
        full_length = model.get_text_features()
    for short, full in zip(truncated.to_tuple(), full_length.to_tuple()):
        torch.testing.assert_close(short, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_bfloat16_scores_agree_with_float32(tester, batch_size):
    model = tester.model()
    pixel_values = tester.pixel_values(batch_size=batch_size, seed=3)
    with torch.no_grad():
        reference = model(pixel_values).score
        model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
        low_precision = model_bf16(pixel_values.to(torch.bfloat16)).score.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(pixel_values).score.float()
    spread = reference.abs().max().clamp_min(1.0)
    assert (low_precision - reference).abs().max() < 0.05 * spread
    assert (autocast - reference).abs().max() < 0.05 * spread
