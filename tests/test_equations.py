"""Each equation of the paper against an independent computation from CLIP's own outputs (not only shapes).

The models here have no visual prompts (`visual_prompt_depth=0`) where the equation under test is not eq. 7, so that
the vision tower is exactly `model.clip.vision_model` and its outputs can be taken from CLIP's own forward.
"""

import math

import torch
import torch.nn.functional as F
from conftest import MPIQEModelTester


def clip_tokens(model, pixel_values):
    """Post-LN CLS and patch tokens of every crop, from CLIP's vision model: `(num_crops_total, 1 + patches, hidden)`."""
    outputs = model.clip.vision_model(pixel_values=pixel_values.flatten(0, 1))
    return model.clip.vision_model.post_layernorm(outputs.last_hidden_state)


def clip_image_features(model, pixel_values):
    features = model.clip.get_image_features(pixel_values=pixel_values.flatten(0, 1))
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def attention(module, queries, keys_values):
    """Multi-head attention written out: softmax(Q K^T / sqrt(d)) V per head, with the module's projections."""
    heads = module.num_heads
    q, k, v = module.q_proj(queries), module.k_proj(keys_values), module.v_proj(keys_values)
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    merged = (weights @ v).transpose(1, 2).reshape(queries.shape[0], queries.shape[1], -1)
    return module.out_proj(merged)


def test_eq6_text_prompts_are_clip_text_features_of_the_prompt_tokens():
    """With the context vectors set to the embeddings of real tokens, a prompt is an ordinary token sequence whose
    CLIP text feature is known: `[SOS] t_1..t_M <class tokens> [EOS]`."""
    tester = MPIQEModelTester()
    model = tester.model(visual_prompt_depth=0)
    learner = model.scene_prompt_learner
    context_ids = torch.arange(3, 3 + model.config.text_prompt_length)
    with torch.no_grad():
        learner.context.copy_(model.clip.text_model.embeddings.token_embedding(context_ids))
        ours = model.get_text_features().scene_features
        for index in range(learner.num_classes):
            eos = int(learner.eos_positions[index])
            ids = learner.token_ids[index, : eos + 1].clone()
            ids[1 : 1 + len(context_ids)] = context_ids
            assert ids[0] == model.config.prompt_bos_token_id and ids[-1] == model.config.prompt_eos_token_id
            reference = model.clip.get_text_features(input_ids=ids[None])
            reference = reference if isinstance(reference, torch.Tensor) else reference.pooler_output
            torch.testing.assert_close(ours[index], F.normalize(reference[0], dim=-1), atol=1e-5, rtol=0)


def test_eq7_without_visual_prompts_the_tokens_are_clips():
    tester = MPIQEModelTester()
    model = tester.model(visual_prompt_depth=0)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(pixel_values.flatten(0, 1)), clip_tokens(model, pixel_values), atol=1e-5, rtol=0
        )


def test_eq8_scene_logits_are_scaled_cosines_of_clips_image_embedding():
    tester = MPIQEModelTester()
    model = tester.model(visual_prompt_depth=0)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        scene = model.get_text_features().scene_features
        image = F.normalize(clip_image_features(model, pixel_values), dim=-1)
        expected = (model.clip.logit_scale.exp() * image @ scene.t()).view(tester.batch_size, tester.num_crops, -1)
        got = model(pixel_values).scene_logits
    torch.testing.assert_close(got, expected.mean(dim=1), atol=1e-4, rtol=0)


def test_eq10_distortion_logits_weight_max_pooled_windows_by_a_tempered_softmax():
    tester = MPIQEModelTester()  # a 15 x 15 patch grid, window_size 3: windows of 5 x 5 patches
    model = tester.model(visual_prompt_depth=0, distortion_window_temperature=0.1)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        distortion = model.get_text_features().distortion_features
        patches = model.clip.visual_projection(clip_tokens(model, pixel_values)[:, 1:])
        crops, _, dim = patches.shape
        grid = patches.view(crops, 15, 15, dim)
        windows = grid.view(crops, 3, 5, 3, 5, dim).amax(dim=(2, 4)).reshape(crops, 9, dim)
        similarity = F.normalize(windows, dim=-1) @ distortion.t()  # (crops, windows, classes)
        weights = torch.softmax(similarity / 0.1, dim=1)
        expected = model.clip.logit_scale.exp() * (weights * similarity).sum(dim=1)
        got = model(pixel_values).distortion_logits
    expected = expected.view(tester.batch_size, tester.num_crops, -1).mean(dim=1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_eq9_eq11_eq15_eq16_losses():
    tester = MPIQEModelTester()
    model = tester.model(distortion_loss_weight=0.7, score_loss_weight=0.3)
    scene = torch.zeros(2, 9)
    scene[0, [1, 4]] = 1.0
    mos = torch.tensor([0.2, 0.9])
    out = model(tester.pixel_values(), mos=mos, scene_labels=scene, distortion_labels=torch.tensor([-100, 5]))
    scene_loss = -(torch.log_softmax(out.scene_logits[0], dim=-1)[[1, 4]]).sum() / 2  # eq. 9, image 1 unlabelled
    distortion_loss = -torch.log_softmax(out.distortion_logits[1], dim=-1)[5]  # eq. 11, image 0 unlabelled
    difference = model.config.score_loss_scale * (out.score - mos).abs()
    score_loss = torch.where(difference < 1, 0.5 * difference**2, difference - 0.5).mean()  # eq. 16 (smooth L1)
    torch.testing.assert_close(out.scene_loss, scene_loss)
    torch.testing.assert_close(out.distortion_loss, distortion_loss)
    torch.testing.assert_close(out.score_loss, score_loss)
    torch.testing.assert_close(out.loss, scene_loss + 0.7 * distortion_loss + 0.3 * score_loss)  # eq. 15


def test_eq12_to_14_decoder_queries_text_and_attends_to_cls_and_patches():
    """The score recomputed with attention written out: Q = concat(V_s, V_d) (eq. 12); per layer
    Q' = MHSA(Norm(Q)) + Q (eq. 13), then MHCA(Norm(Q'), I', I') + Q' and the MLP (eq. 14), with I' the projected
    CLS and patch tokens from CLIP; then the score head on the mean query."""
    tester = MPIQEModelTester()
    model = tester.model(visual_prompt_depth=0, decoder_layers=2)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        text = model.get_text_features()
        image_tokens = model.image_token_projection(clip_tokens(model, pixel_values))
        queries = torch.cat([text.scene_features, text.distortion_features])[None]
        queries = queries.expand(image_tokens.shape[0], -1, -1)
        for layer in model.multimodal_encoder.layers:
            normed = layer.self_attn_norm(queries)
            queries = queries + attention(layer.self_attn, normed, normed)
            queries = queries + attention(layer.cross_attn, layer.cross_attn_norm(queries), image_tokens)
            queries = queries + layer.ffn(layer.ffn_norm(queries))
        states = model.multimodal_encoder.final_norm(queries)
        head = model.score_head
        expected = head.out_proj(head.activation(head.dense(states.mean(dim=1)))).squeeze(-1)
        got = model(pixel_values).crop_scores
    torch.testing.assert_close(got, expected.view(tester.batch_size, tester.num_crops), atol=1e-4, rtol=0)
