import logging
import re

import pytest
import torch
from conftest import MPIQEModelTester, clip_tokenizer
from safetensors.torch import load_file
from transformers import CLIPModel, PreTrainedModel

from mpiqe_hf import MPIQEConfig, MPIQEModel


TRAINABLE_PREFIXES = (
    "visual_prompts",
    "scene_prompt_learner.",
    "distortion_prompt_learner.",
    "image_token_projection.",
    "multimodal_encoder.",
    "score_head.",
)


def test_is_a_pretrained_model_around_clip(tester):
    model = tester.model()
    assert isinstance(model, PreTrainedModel)
    assert isinstance(model.clip, CLIPModel)
    assert model.config.model_type == "mpiqe"


@pytest.mark.parametrize("five_d", [True, False])
def test_output_shapes(tester, five_d):
    model = tester.model()
    pixel_values = tester.pixel_values()
    if not five_d:
        pixel_values = pixel_values[:, 0]
    with torch.no_grad():
        out = model(pixel_values)
    num_crops = tester.num_crops if five_d else 1
    assert out.score.shape == (tester.batch_size,)
    assert out.crop_scores.shape == (tester.batch_size, num_crops)
    assert out.scene_logits.shape == (tester.batch_size, 9)
    assert out.distortion_logits.shape == (tester.batch_size, 11)
    assert out.loss is None
    torch.testing.assert_close(out.score, out.crop_scores.mean(dim=1))


def test_crop_scores_are_averaged_per_image(tester):
    model = tester.model()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        together = model(pixel_values)
        alone = model(pixel_values[1:, :1])
    torch.testing.assert_close(together.crop_scores[1, 0], alone.score[0], atol=1e-5, rtol=0)


def test_bad_pixel_values_shape(tester):
    with pytest.raises(ValueError, match="pixel_values"):
        tester.model()(torch.zeros(3, 30, 30))


def test_clip_is_frozen_and_only_new_parts_train(tester):
    model = tester.model()
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert trainable and all(name.startswith(TRAINABLE_PREFIXES) for name in trainable)
    assert all(name.startswith("clip.") for name in frozen)
    assert {name for name, _ in model.clip.named_parameters(prefix="clip")} == frozen
    for prefix in TRAINABLE_PREFIXES:
        assert any(name.startswith(prefix) for name in trainable), prefix


def test_loss_combines_the_three_terms(tester):
    model = tester.model(distortion_loss_weight=0.7, score_loss_weight=0.3)
    scene = torch.zeros(2, 9)
    scene[0, [1, 4]] = 1.0
    out = model(
        tester.pixel_values(),
        mos=torch.tensor([0.2, 0.9]),
        scene_labels=scene,
        distortion_labels=torch.tensor([3, 5]),
    )
    expected = out.scene_loss + 0.7 * out.distortion_loss + 0.3 * out.score_loss
    torch.testing.assert_close(out.loss, expected)
    # The scene target of image 0 is spread over its two scenes; image 1 has no scene label and is skipped.
    log_probs = torch.log_softmax(out.scene_logits[0], dim=-1)
    torch.testing.assert_close(out.scene_loss, -(log_probs[1] + log_probs[4]) / 2)
    torch.testing.assert_close(
        out.distortion_loss, torch.nn.functional.cross_entropy(out.distortion_logits, torch.tensor([3, 5]))
    )
    torch.testing.assert_close(
        out.score_loss, torch.nn.functional.smooth_l1_loss(10.0 * out.score, 10.0 * torch.tensor([0.2, 0.9]))
    )


def test_missing_distortion_labels_are_masked(tester):
    model = tester.model()
    out = model(tester.pixel_values(), distortion_labels=torch.tensor([-100, 2]))
    expected = torch.nn.functional.cross_entropy(out.distortion_logits[1:], torch.tensor([2]))
    torch.testing.assert_close(out.distortion_loss, expected)
    none_labelled = model(tester.pixel_values(), distortion_labels=torch.tensor([-100, -100]))
    assert none_labelled.distortion_loss.item() == 0.0


def test_nan_mos_is_refused(tester):
    with pytest.raises(ValueError, match="NaN"):
        tester.model()(tester.pixel_values(), mos=torch.tensor([0.5, float("nan")]))


def test_backward_reaches_every_prompted_layer_and_only_trainable_parts():
    tester = MPIQEModelTester(vision_layers=4)
    model = tester.model(visual_prompt_depth=3).train()
    out = model(tester.pixel_values(), mos=torch.tensor([0.1, 0.8]))
    out.loss.backward()
    assert model.visual_prompts.shape[0] == 3
    per_layer = model.visual_prompts.grad.abs().sum(dim=(1, 2))
    assert (per_layer > 0).all(), per_layer
    for name, param in model.named_parameters():
        if name.startswith("clip."):
            assert param.grad is None, name
        else:
            assert param.grad is not None, name


def test_each_layer_receives_its_own_prompts():
    tester = MPIQEModelTester(vision_layers=4)
    model = tester.model(visual_prompt_depth=3)
    num_prompts = model.config.visual_prompt_length
    seen = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs, index=index: seen.__setitem__(index, args[0].detach().clone()),
            with_kwargs=True,
        )
        for index, layer in enumerate(model.clip.vision_model.encoder.layers)
    ]
    with torch.no_grad():
        model(tester.pixel_values())
    for hook in hooks:
        hook.remove()
    num_patches = (tester.image_size // tester.patch_size) ** 2
    for index in range(4):
        assert seen[index].shape[1] == 1 + num_prompts + num_patches
    for index in range(3):
        expected = model.visual_prompts[index].expand_as(seen[index][:, 1 : 1 + num_prompts])
        torch.testing.assert_close(seen[index][:, 1 : 1 + num_prompts], expected, atol=0, rtol=0)
    # Beyond the depth the prompt outputs of the last prompted layer travel on instead of fresh tokens.
    assert not torch.allclose(seen[3][:, 1 : 1 + num_prompts], model.visual_prompts[2].expand(6, -1, -1))


def test_changing_one_layers_prompt_changes_the_score():
    tester = MPIQEModelTester(vision_layers=4)
    model = tester.model(visual_prompt_depth=4)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        reference = model(pixel_values).score
        for layer in range(4):
            original = model.visual_prompts[layer].clone()
            # A random change: a constant shift of a token would vanish in the layer's LayerNorm.
            model.visual_prompts[layer] += torch.randn_like(original)
            changed = model(pixel_values).score
            model.visual_prompts[layer] = original
            assert (changed - reference).abs().max() > 1e-6, f"layer {layer}'s prompts do not reach the score"
        torch.testing.assert_close(model(pixel_values).score, reference, atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(visual_prompt_depth=0),
        dict(visual_prompt_depth=1),
        dict(visual_prompt_depth=12),
        dict(use_scene_prompts=False),
        dict(use_distortion_prompts=False),
    ],
    ids=["no-visual-prompts", "shallow", "deep", "no-scene-prompts", "no-distortion-prompts"],
)
def test_paper_variants_build_and_train(overrides):
    tester = MPIQEModelTester(vision_layers=12)
    model = tester.model(**overrides).train()
    scene = torch.zeros(2, 9)
    scene[:, 0] = 1
    out = model(tester.pixel_values(), mos=torch.rand(2), scene_labels=scene, distortion_labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert out.score.shape == (2,)
    assert (out.scene_logits is None) == (not model.config.use_scene_prompts)
    assert (out.distortion_logits is None) == (not model.config.use_distortion_prompts)
    assert (out.scene_loss is None) == (not model.config.use_scene_prompts)
    num_queries = (9 if model.config.use_scene_prompts else 0) + (11 if model.config.use_distortion_prompts else 0)
    assert model.get_text_features().prepared_queries.shape == (
        1,
        num_queries,
        model.config.clip_config.projection_dim,
    )
    if model.config.visual_prompt_depth == 0:
        assert model.visual_prompts is None
    else:
        assert model.visual_prompts.shape[0] == model.config.visual_prompt_depth
        assert model.visual_prompts.grad.abs().sum(dim=(1, 2)).gt(0).all()


def test_save_and_load_round_trip(tester, tmp_path):
    model = tester.model()
    with torch.no_grad():
        model.visual_prompts.normal_()
        model.scene_prompt_learner.context.normal_()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        expected = model(pixel_values)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    stored = load_file(tmp_path / "model.safetensors")
    torch.testing.assert_close(stored["visual_prompts"], model.visual_prompts.detach())

    reloaded = MPIQEModel.from_pretrained(tmp_path).eval()
    for field in ("visual_prompt_depth", "text_prompt_length", "window_size", "scene_classes", "mos_max"):
        assert getattr(reloaded.config, field) == getattr(model.config, field)
    with torch.no_grad():
        got = reloaded(pixel_values)
    for name in ("score", "crop_scores", "scene_logits", "distortion_logits"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-5, rtol=0)
    assert all(not param.requires_grad for param in reloaded.clip.parameters())


def _save_tiny_clip_with_tokenizer(tester, directory):
    tokenizer = clip_tokenizer()
    torch.manual_seed(7)
    clip = CLIPModel(tester.clip_config())
    clip.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return clip, tokenizer


def test_from_clip_keeps_clip_weights_and_tokenises_class_names(tester, tmp_path):
    clip, tokenizer = _save_tiny_clip_with_tokenizer(tester, tmp_path / "clip")
    model = MPIQEModel.from_clip(str(tmp_path / "clip"), visual_prompt_depth=2, window_size=3, decoder_heads=4)
    assert model.config.clip_config.vision_config.num_hidden_layers == tester.vision_layers
    reference = clip.state_dict()
    for name, tensor in model.clip.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert all(not param.requires_grad for param in model.clip.parameters())
    expected_ids = tokenizer("still life.", add_special_tokens=False)["input_ids"]
    still_life = model.config.scene_classes.index("still_life")
    assert model.config.scene_class_token_ids[still_life] == expected_ids
    row = model.scene_prompt_learner.token_ids[still_life].tolist()
    context = model.config.text_prompt_length
    assert row[0] == tokenizer.bos_token_id == model.config.prompt_bos_token_id
    assert row[1 + context : 1 + context + len(expected_ids)] == expected_ids
    assert row[1 + context + len(expected_ids)] == tokenizer.eos_token_id == model.config.prompt_eos_token_id
    assert model.config.base_model_name_or_path == str(tmp_path / "clip")

    # The saved model carries its tokenised prompts: no tokenizer is needed to load it.
    model.save_pretrained(tmp_path / "mpiqe")
    assert not (tmp_path / "mpiqe" / "tokenizer.json").exists()
    reloaded = MPIQEModel.from_pretrained(tmp_path / "mpiqe")
    assert torch.equal(reloaded.scene_prompt_learner.token_ids, model.scene_prompt_learner.token_ids)
    for name, tensor in reloaded.clip.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_a_fresh_model_starts_from_clips_projection_and_a_constant_score(tester, tmp_path):
    """The keys and values start in CLIP's text-aligned space, and the score starts as 0.5 for every image: what
    depends on the image is learned (one Adam step is enough to make it so)."""
    clip, _ = _save_tiny_clip_with_tokenizer(tester, tmp_path / "clip")
    model = MPIQEModel.from_clip(str(tmp_path / "clip"), visual_prompt_depth=2, window_size=3, decoder_heads=4)
    assert torch.equal(model.image_token_projection.weight, clip.visual_projection.weight)
    assert not model.image_token_projection.bias.any()
    pixel_values = tester.pixel_values(batch_size=3)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values).score, torch.full((3,), 0.5))

    optimizer = torch.optim.Adam([param for param in model.parameters() if param.requires_grad], lr=1e-3)
    model.train()(pixel_values, mos=torch.tensor([0.1, 0.5, 0.9])).loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert model.eval()(pixel_values).score.std() > 1e-4


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(text_prompt_length=-1), "text_prompt_length"),
        (dict(visual_prompt_length=-2), "visual_prompt_length"),
        (dict(visual_prompt_depth=3), "visual_prompt_depth"),
        (dict(use_scene_prompts=False, use_distortion_prompts=False), "use_scene_prompts"),
        (dict(scene_classes=[]), "scene_classes"),
        (dict(distortion_classes=[]), "distortion_classes"),
        (dict(window_size=0), "window_size"),
        (dict(decoder_heads=5), "decoder_heads"),
        (dict(mos_min=5.0, mos_max=1.0), "mos_max"),
        (dict(scene_class_token_ids=[[1, 2]]), "scene_class_token_ids"),
    ],
)
def test_invalid_config_names_the_field(tester, overrides, field):
    with pytest.raises(ValueError, match=field):
        tester.config(**overrides)


def test_config_defaults_follow_the_paper():
    config = MPIQEConfig()
    assert config.text_prompt_length == 8
    assert config.visual_prompt_length == 4
    assert config.visual_prompt_depth == 12
    assert len(config.scene_classes) == 9 and len(config.distortion_classes) == 11
    assert config.decoder_layers == 3 and config.decoder_heads == 8
    assert config.distortion_loss_weight == 1.0 and config.score_loss_weight == 0.5
    assert config.clip_config.vision_config.patch_size == 16
    assert config.clip_config.projection_dim == 512


def test_weights_that_do_not_fit_the_config_are_refused(tester, tmp_path, caplog):
    tester.model().save_pretrained(tmp_path)
    # a differently shaped tensor: transformers' own error, after its report naming the tensor and both shapes
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        MPIQEModel.from_pretrained(tmp_path, visual_prompt_length=2)
    assert re.search(r"visual_prompts .*MISMATCH.*\[2, 4, 32\].*\[2, 2, 32\]", caplog.text)
    # missing or unused tensors: the library's error, naming them and the config fields that decide them
    with pytest.raises(ValueError, match=r"decoder_layers.*multimodal_encoder.layers.2.* not used by this config"):
        MPIQEModel.from_pretrained(tmp_path, decoder_layers=2)
    with pytest.raises(ValueError, match="scene_prompt_learner.context: not used"):
        MPIQEModel.from_pretrained(tmp_path, use_scene_prompts=False)
    with pytest.raises(ValueError, match="clip_config.*missing from the checkpoint"):
        MPIQEModel.from_pretrained(
            None,
            config=tester.config(),
            state_dict={
                name: tensor for name, tensor in tester.model().state_dict().items() if "text_projection" not in name
            },
        )
    # a checkpoint that fits loads without a warning
    warnings = logging.Handler(level=logging.WARNING)
    warnings.emit = lambda record: pytest.fail(f"transformers warned: {record.getMessage()[:200]}")
    logging.getLogger("transformers").addHandler(warnings)
    try:
        _, info = MPIQEModel.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        logging.getLogger("transformers").removeHandler(warnings)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_a_missing_local_folder_is_named(tmp_path):
    # transformers' own error (a path that is not a folder is read as a Hub repo id, which it cannot be), naming it
    for path in ("/path/that/does/not/exist", str(tmp_path / "nothing-here"), "./not/a/folder"):
        with pytest.raises((OSError, ValueError), match=re.escape(f"'{path}'")):
            MPIQEModel.from_pretrained(path)


def test_a_model_of_another_type_is_refused_naming_it(tester, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

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
    with pytest.raises(ValueError, match="model_type='vit'.*not an MP-IQE model"):
        MPIQEModel.from_pretrained(tmp_path)


def test_scene_labels_as_indices_equal_one_hot_rows(tester):
    model = tester.model()
    pixel_values = tester.pixel_values()
    one_hot = torch.zeros(2, 9)
    one_hot[1, 3] = 1.0
    with torch.no_grad():
        by_index = model(pixel_values, scene_labels=torch.tensor([-100, 3]))
        by_row = model(pixel_values, scene_labels=one_hot)
    torch.testing.assert_close(by_index.scene_loss, by_row.scene_loss, atol=0, rtol=0)
    expected = -torch.log_softmax(by_index.scene_logits[1], dim=-1)[3]
    torch.testing.assert_close(by_index.scene_loss, expected)
    with pytest.raises(ValueError, match="scene_labels"):
        model(pixel_values, scene_labels=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="scene_labels"):
        model(pixel_values, scene_labels=torch.zeros(2, 4))


def test_activation_checkpointing_recomputes_the_vision_layers(tester):
    """Checkpointing must recompute every vision layer in the backward pass and give the same gradients."""
    grads, forwards = [], []
    for checkpointing in (False, True):
        model = tester.model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        calls = []
        # transformers checkpoints the layers' `forward`, so hooks on the layer itself run once; its first norm runs
        # again when backward recomputes the layer (torch stops recomputing once it has the tensors it needs)
        for layer in model.clip.vision_model.encoder.layers:
            layer.layer_norm1.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        out = model(tester.pixel_values(), mos=torch.tensor([0.3, 0.6]))
        in_forward = len(calls)
        out.loss.backward()
        forwards.append((in_forward, len(calls)))
        grads.append(model.visual_prompts.grad.clone())
    layers = tester.vision_layers
    assert forwards[0] == (layers, layers), "without checkpointing nothing is recomputed"
    assert forwards[1] == (layers, 2 * layers), "with checkpointing every vision layer runs again in backward"
    torch.testing.assert_close(grads[0], grads[1])


def test_from_pretrained_takes_a_state_dict_instead_of_a_path(tester):
    model = tester.model().eval()
    loaded = MPIQEModel.from_pretrained(None, config=model.config, state_dict=model.state_dict()).eval()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).score, model(pixel_values).score, atol=1e-6, rtol=0)


def test_a_model_built_in_bfloat16_keeps_its_score_head_in_float32(tester):
    from transformers import AutoModel

    model = AutoModel.from_config(tester.config(), dtype=torch.bfloat16).eval()
    assert model.clip.visual_projection.weight.dtype == torch.bfloat16
    assert {param.dtype for param in model.score_head.parameters()} == {torch.float32}
    with torch.no_grad():
        assert model(tester.pixel_values().to(torch.bfloat16)).score.dtype == torch.float32


def test_a_model_from_clip_loads_in_bfloat16_throughout(tester, tmp_path):
    # CLIPModel.from_pretrained records float32 in CLIP's configs; MP-IQE's config keeps CLIP's architecture only, or
    # the towers would stay float32 under dtype=bfloat16 beside bfloat16 projections
    from mpiqe_hf.testing_utils import save_tiny_clip

    model = MPIQEModel.from_clip(
        save_tiny_clip(tmp_path / "clip", seed=7),
        visual_prompt_depth=2,
        window_size=3,
        decoder_heads=4,
        decoder_intermediate_size=37,
    )
    model.save_pretrained(tmp_path / "mpiqe")
    loaded = MPIQEModel.from_pretrained(tmp_path / "mpiqe", dtype=torch.bfloat16).eval()
    assert {param.dtype for param in loaded.clip.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert loaded(tester.pixel_values().to(torch.bfloat16)).score.dtype == torch.float32
