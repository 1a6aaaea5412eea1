"""The image-independent text work is cached in eval mode and never goes stale."""

import copy

import pytest
import torch

from mpiqe_hf import MPIQEModel


def count_prompt_encodings(model, monkeypatch):
    calls = []
    original = MPIQEModel.encode_prompts

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(MPIQEModel, "encode_prompts", counting)
    return calls


def test_text_features_are_encoded_once_in_eval(tester, monkeypatch):
    model = tester.model()
    calls = count_prompt_encodings(model, monkeypatch)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        first = model(pixel_values).score
        second = model(pixel_values).score
    with torch.inference_mode():
        third = model(pixel_values).score
    assert len(calls) == 1
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first, third, atol=0, rtol=0)


def test_gradients_never_use_the_cache(tester, monkeypatch):
    model = tester.model()
    calls = count_prompt_encodings(model, monkeypatch)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        model(pixel_values)
    model(pixel_values)  # eval, gradients on: prompts must stay in the graph
    model.train()
    model(pixel_values).score.sum().backward()
    assert len(calls) == 3
    assert model.scene_prompt_learner.context.grad is not None


def test_training_mode_without_gradients_caches_only_without_dropout(tester, monkeypatch):
    pixel_values = tester.pixel_values()
    for dropout, expected_calls in ((0.0, 1), (0.1, 2)):
        model = tester.model(decoder_dropout=dropout).train()
        calls = count_prompt_encodings(model, monkeypatch)
        with torch.no_grad():
            model(pixel_values)
            model(pixel_values)
        assert len(calls) == expected_calls, dropout
        monkeypatch.undo()
    model = tester.model()
    with torch.no_grad():
        in_eval = model(pixel_values).score
        in_training = model.train()(pixel_values).score
    torch.testing.assert_close(in_eval, in_training, atol=0, rtol=0)


def test_cache_follows_optimizer_steps(tester):
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        before = model(pixel_values).score
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(pixel_values, mos=torch.tensor([0.0, 1.0])).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        cached_path = model(pixel_values).score
        model._text_cache_key = None
        fresh = model(pixel_values).score
    assert not torch.allclose(before, cached_path)
    torch.testing.assert_close(cached_path, fresh, atol=0, rtol=0)


def test_cache_follows_load_state_dict_and_in_place_edits(tester):
    model = tester.model(seed=0)
    other = tester.model(seed=5)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        model(pixel_values)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(pixel_values).score, other(pixel_values).score, atol=0, rtol=0)
        model.distortion_prompt_learner.context.mul_(3.0)
        edited = model(pixel_values).score
        model._text_cache_key = None
        torch.testing.assert_close(edited, model(pixel_values).score, atol=0, rtol=0)


def test_cache_follows_dtype_changes(tester):
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        model(pixel_values)
        model.to(torch.bfloat16)
        out = model(pixel_values)
        scene, distortion, queries = model._text_features()
    assert out.score.dtype == torch.bfloat16
    assert scene.dtype == distortion.dtype == queries.dtype == torch.bfloat16


def test_truncated_prompts_match_77_position_prompts(tester):
    model = tester.model()
    with torch.no_grad():
        truncated = model.encode_prompts()
        for learner in (model.scene_prompt_learner, model.distortion_prompt_learner):
            assert learner.token_ids.shape[1] < 77
            eos = model.config.clip_config.text_config.eos_token_id
            padded = torch.full((learner.num_classes, 77), eos, dtype=torch.long)
            padded[:, : learner.token_ids.shape[1]] = learner.token_ids
            learner.token_ids = padded
        full_length = model.encode_prompts()
    for short, full in zip(truncated, full_length):
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
