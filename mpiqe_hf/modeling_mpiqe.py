"""PyTorch MP-IQE: multi-modal prompt learning on a frozen CLIP for blind image quality assessment."""

import hashlib
import os
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import load_state_dict
from transformers.utils import ModelOutput, cached_file, logging

from .configuration_mpiqe import ADAPTER_WEIGHTS_NAME, DISTORTION_CLASSES, SCENE_CLASSES, MPIQEConfig
from .quality_map_mpiqe import MPIQEQualityMapOutput, as_crop_batch, compute_quality_maps, distortion_window_weights


logger = logging.get_logger(__name__)


@dataclass
class MPIQEOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `mos` or class labels are given):
        L_scene + lambda_1 * L_dist + lambda_2 * L_score (eq. 15), over the terms whose labels were given.
    scene_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Cross-entropy of the scene alignment (eq. 9), over the images that have a scene label.
    distortion_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Cross-entropy of the windowed distortion alignment (eq. 11), over the images that have a distortion label.
    score_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Smooth L1 between the predicted score and the normalised MOS, both times `config.score_loss_scale` (eq. 16).
    score (`torch.FloatTensor` of shape `(batch_size,)`):
        Predicted quality on the normalised scale (0 = worst of the training set, 1 = best), averaged over crops.
    crop_scores (`torch.FloatTensor` of shape `(batch_size, num_crops)`):
        The score of each crop.
    scene_logits (`torch.FloatTensor` of shape `(batch_size, num_scene_classes)`, *optional*):
        Scaled cosine similarities of the image with the scene prompts (eq. 8), averaged over crops. `None` when the
        model has no scene prompts.
    distortion_logits (`torch.FloatTensor` of shape `(batch_size, num_distortion_classes)`, *optional*):
        Window-weighted similarities of the patches with the distortion prompts (eq. 10), scaled like CLIP logits
        and averaged over crops. `None` when the model has no distortion prompts.
    """

    loss: torch.FloatTensor | None = None
    scene_loss: torch.FloatTensor | None = None
    distortion_loss: torch.FloatTensor | None = None
    score_loss: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    crop_scores: torch.FloatTensor | None = None
    scene_logits: torch.FloatTensor | None = None
    distortion_logits: torch.FloatTensor | None = None


@dataclass
class MPIQETextFeatures(ModelOutput):
    r"""
    The image-independent half of MP-IQE, returned by [`MPIQEModel.get_text_features`] and accepted by
    `MPIQEModel.forward(..., text_features=...)`.

    scene_features (`torch.FloatTensor` of shape `(num_scene_classes, projection_dim)`, *optional*):
        L2-normalised text features of the scene prompts; `None` when the model has no scene prompts.
    distortion_features (`torch.FloatTensor` of shape `(num_distortion_classes, projection_dim)`, *optional*):
        L2-normalised text features of the distortion prompts; `None` when the model has no distortion prompts.
    prepared_queries (`torch.FloatTensor` of shape `(1, num_queries, projection_dim)`):
        The decoder queries (eq. 12) after the first decoder layer's self-attention.
    """

    scene_features: torch.FloatTensor | None = None
    distortion_features: torch.FloatTensor | None = None
    prepared_queries: torch.FloatTensor | None = None


def build_prompt_token_ids(class_token_ids, context_length, bos_token_id, eos_token_id, pad_token_id):
    """
    Lays out `[SOS] [V]_1..[V]_M <class tokens> [EOS]` for every class, padded to the longest prompt rather than to
    CLIP's 77 positions: the text encoder is causal, so positions after EOS never change its output.

    Returns `(token_ids, eos_positions)` of shapes `(num_classes, sequence_length)` and `(num_classes,)`; the `M`
    context positions hold `pad_token_id` and are replaced by the learned vectors.
    """
    rows = [[bos_token_id] + [pad_token_id] * context_length + list(ids) + [eos_token_id] for ids in class_token_ids]
    sequence_length = max(len(row) for row in rows)
    token_ids = torch.full((len(rows), sequence_length), pad_token_id, dtype=torch.long)
    for index, row in enumerate(rows):
        token_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    eos_positions = torch.tensor([len(row) - 1 for row in rows], dtype=torch.long)
    return token_ids, eos_positions


def placeholder_class_token_ids(class_names, vocab_size):
    """
    Stand-in token ids for a model built without a tokenizer (a random CLIP): one id per word plus one for the
    final ".", about as many tokens as CLIP's BPE gives, derived from the words' CRC-32 so that they are the same in
    every process. `from_clip` stores the real tokenisation instead.
    """
    return [
        [zlib.crc32(word.encode("utf-8")) % vocab_size for word in name.replace("_", " ").split()]
        + [zlib.crc32(b".") % vocab_size]
        for name in class_names
    ]


class MPIQEPromptLearner(nn.Module):
    """
    The text prompts of eq. 6, `P = [V]_1 .. [V]_M [class]`: a CoOp context of `M` vectors shared by all classes of
    one family, written in front of each class name's token embeddings.
    """

    def __init__(self, config: MPIQEConfig, class_token_ids):
        super().__init__()
        text_config = config.clip_config.text_config
        for ids in class_token_ids:
            if any(not 0 <= token < text_config.vocab_size for token in ids):
                raise ValueError(f"class token ids {ids} fall outside the text vocabulary ({text_config.vocab_size}).")
        self.context_length = config.text_prompt_length
        self.context = nn.Parameter(torch.empty(config.text_prompt_length, text_config.hidden_size))
        self.prompt_layout = (
            [list(ids) for ids in class_token_ids],
            config.text_prompt_length,
            config.prompt_bos_token_id,
            config.prompt_eos_token_id,
            config.prompt_pad_token_id,
        )
        token_ids, eos_positions = build_prompt_token_ids(*self.prompt_layout)
        if token_ids.shape[1] > text_config.max_position_embeddings:
            raise ValueError(
                f"A prompt of {token_ids.shape[1]} tokens does not fit CLIP's {text_config.max_position_embeddings} "
                "positions: shorten `text_prompt_length` or the class names."
            )
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("eos_positions", eos_positions, persistent=False)

    @property
    def num_classes(self):
        return self.token_ids.shape[0]

    def forward(self, token_embedding: nn.Embedding) -> torch.Tensor:
        """Returns the prompt embeddings of shape `(num_classes, sequence_length, text_hidden_size)`."""
        embeddings = token_embedding(self.token_ids)
        context = self.context.to(embeddings.dtype).unsqueeze(0).expand(self.num_classes, -1, -1)
        return torch.cat(
            [embeddings[:, :1], context, embeddings[:, 1 + self.context_length :]],
            dim=1,
        )


class MPIQEAttention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention`, for the multimodal encoder."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, states):
        batch_size, length, _ = states.shape
        return states.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        """`queries` `(batch_size, num_queries, hidden_size)`, `keys_values` `(batch_size, num_tokens, hidden_size)`."""
        attended = F.scaled_dot_product_attention(
            self._split_heads(self.q_proj(queries)),
            self._split_heads(self.k_proj(keys_values)),
            self._split_heads(self.v_proj(keys_values)),
            dropout_p=self.dropout if self.training else 0.0,
        )
        batch_size, _, num_queries, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch_size, num_queries, -1))


class MPIQEDecoderLayer(nn.Module):
    """
    One pre-LN decoder layer of the multimodal encoder, eq. 13 and eq. 14: `Q' = MHSA(Norm(Q)) + Q` over the text queries,
    then cross-attention from the queries to the image tokens `I'` and a feed-forward block,
    `S = MLP(MHCA(Norm(Q'), I', I') + Q')` (pre-LN residuals on both).
    """

    def __init__(self, config: MPIQEConfig):
        super().__init__()
        hidden_size = config.clip_config.projection_dim
        self.self_attn_norm = nn.LayerNorm(hidden_size)
        self.self_attn = MPIQEAttention(hidden_size, config.decoder_heads, config.decoder_dropout)
        self.cross_attn_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = MPIQEAttention(hidden_size, config.decoder_heads, config.decoder_dropout)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, config.decoder_intermediate_size),
            nn.GELU(),
            nn.Dropout(config.decoder_dropout),
            nn.Linear(config.decoder_intermediate_size, hidden_size),
        )
        self.dropout = nn.Dropout(config.decoder_dropout)

    def self_attend(self, queries: torch.Tensor) -> torch.Tensor:
        normed = self.self_attn_norm(queries)
        return queries + self.dropout(self.self_attn(normed, normed))

    def attend_image(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        if queries.shape[0] != image_tokens.shape[0]:
            queries = queries.expand(image_tokens.shape[0], -1, -1)
        queries = queries + self.dropout(self.cross_attn(self.cross_attn_norm(queries), image_tokens))
        return queries + self.dropout(self.ffn(self.ffn_norm(queries)))

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.attend_image(self.self_attend(queries), image_tokens)


class MPIQEMultimodalEncoder(nn.Module):
    """
    The stack of decoder layers. The first layer's self-attention sees only the text queries, which are the same
    for every image, so callers run it once through `prepare_queries` and pass the result to `forward`.
    """

    def __init__(self, config: MPIQEConfig):
        super().__init__()
        self.layers = nn.ModuleList([MPIQEDecoderLayer(config) for _ in range(config.decoder_layers)])
        self.final_norm = nn.LayerNorm(config.clip_config.projection_dim)

    def prepare_queries(self, scene_features: torch.Tensor | None, distortion_features: torch.Tensor | None):
        """
        The query building, eq. 12, `Q = Concat(V_s, V_d)`: the text features of the families in use as one query sequence, run through
        the first layer's self-attention (image independent).

        Returns `(1, num_queries, hidden_size)`.
        """
        queries = torch.cat([features for features in (scene_features, distortion_features) if features is not None])
        return self.layers[0].self_attend(queries.unsqueeze(0))

    def forward(self, prepared_queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Returns the query states `(batch_size, num_queries, hidden_size)`."""
        states = self.layers[0].attend_image(prepared_queries, image_tokens)
        for layer in self.layers[1:]:
            states = layer(states, image_tokens)
        return self.final_norm(states)


class MPIQEScoreHead(nn.Module):
    """MLP on the mean of the query states -> one quality score, computed in the head's own dtype (float32 when the
    model is loaded in bfloat16: see `MPIQEPreTrainedModel._keep_in_fp32_modules_strict`)."""

    def __init__(self, config: MPIQEConfig):
        super().__init__()
        hidden_size = config.clip_config.projection_dim
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.decoder_dropout)
        self.out_proj = nn.Linear(hidden_size, 1)

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        pooled = query_states.mean(dim=1).to(self.dense.weight.dtype)
        return self.out_proj(self.dropout(self.activation(self.dense(pooled)))).squeeze(-1)


def scene_alignment_logits(cls_embeds: torch.Tensor, scene_features: torch.Tensor, logit_scale: torch.Tensor):
    """
    The scene alignment, eq. 8: `Sim(CLS, V_c^s) / T` with CLIP's learned logit scale as `1 / T`; the softmax of
    eq. 8 is applied by the loss (eq. 9) and by whoever reads the logits.

    Args:
        cls_embeds (`torch.FloatTensor` of shape `(num_crops, projection_dim)`): projected CLS tokens.
        scene_features (`torch.FloatTensor` of shape `(num_scene_classes, projection_dim)`): L2-normalised.
        logit_scale (`torch.FloatTensor` of shape `()`): `exp` of CLIP's `logit_scale`.

    Returns:
        `torch.FloatTensor` of shape `(num_crops, num_scene_classes)`.
    """
    return logit_scale * F.normalize(cls_embeds, dim=-1) @ scene_features.t()


def distortion_alignment_logits(
    patch_embeds: torch.Tensor,
    distortion_features: torch.Tensor,
    logit_scale: torch.Tensor,
    window_size: int,
    temperature: float,
) -> torch.Tensor:
    """
    The windowed distortion alignment, eq. 10. The projected patch grid is max-pooled into `w x w` windows `P_i`;
    for each class `c` a softmax over the windows of `Sim(P_i, V_c^d) / T-bar` weights the windows' similarities,
    `sum_i softmax_i(Sim / T-bar) * Sim(P_i, V_c^d)`. The result is scaled by CLIP's logit scale like eq. 8's.

    Args:
        patch_embeds (`torch.FloatTensor` of shape `(num_crops, num_patches, projection_dim)`): a square patch grid.
        distortion_features (`torch.FloatTensor` of shape `(num_distortion_classes, projection_dim)`): L2-normalised.
        logit_scale (`torch.FloatTensor` of shape `()`): `exp` of CLIP's `logit_scale`.
        window_size (`int`): `w`. temperature (`float`): `T-bar`.

    Returns:
        `torch.FloatTensor` of shape `(num_crops, num_distortion_classes)`.
    """
    weights, similarity = distortion_window_weights(patch_embeds, distortion_features, window_size, temperature)
    return logit_scale * (weights * similarity).sum(dim=-1)


def scene_alignment_loss(scene_logits: torch.Tensor, scene_labels: torch.Tensor) -> torch.Tensor:
    """
    The scene loss, eq. 9: cross-entropy of the scene alignment against the scene targets, over the images that have a label.

    Args:
        scene_logits (`torch.FloatTensor` of shape `(batch_size, num_scene_classes)`).
        scene_labels (`torch.Tensor` of shape `(batch_size, num_scene_classes)` or `(batch_size,)`): multi-hot rows
            (the target is spread evenly over the marked scenes; an all-zero row has no label) or class indices
            (-100 = no label).
    """
    num_classes = scene_logits.shape[-1]
    if (
        scene_labels.dim() == 1
        and scene_labels.shape == scene_logits.shape[:1]
        and not scene_labels.is_floating_point()
    ):
        labelled = scene_labels != -100
        if ((scene_labels[labelled] < 0) | (scene_labels[labelled] >= num_classes)).any():
            raise ValueError(
                f"`scene_labels` indices must be in [0, {num_classes}) or -100, got {scene_labels.tolist()}."
            )
        scene_labels = F.one_hot(scene_labels.clamp_min(0), num_classes) * labelled.unsqueeze(-1)
    elif scene_labels.shape != scene_logits.shape:
        raise ValueError(
            f"`scene_labels` must be class indices of shape ({scene_logits.shape[0]},) or multi-hot rows of shape "
            f"{tuple(scene_logits.shape)}, got {tuple(scene_labels.shape)}."
        )
    targets = scene_labels.to(torch.float32)
    totals = targets.sum(dim=-1, keepdim=True)
    labelled = totals.squeeze(-1) > 0
    log_probs = F.log_softmax(scene_logits.float(), dim=-1)
    per_image = -(targets / totals.clamp_min(1e-12) * log_probs).sum(dim=-1)
    return (per_image * labelled).sum() / labelled.sum().clamp_min(1)


def distortion_alignment_loss(distortion_logits: torch.Tensor, distortion_labels: torch.Tensor) -> torch.Tensor:
    """
    The distortion loss, eq. 11: cross-entropy of the distortion alignment, over the images that have a label.

    Args:
        distortion_logits (`torch.FloatTensor` of shape `(batch_size, num_distortion_classes)`).
        distortion_labels (`torch.LongTensor` of shape `(batch_size,)`): class indices, -100 = no label.
    """
    if distortion_labels.shape != distortion_logits.shape[:1]:
        raise ValueError(
            f"`distortion_labels` must have shape ({distortion_logits.shape[0]},), "
            f"got {tuple(distortion_labels.shape)}."
        )
    labelled = distortion_labels != -100
    if not labelled.any():
        return distortion_logits.sum() * 0.0
    return F.cross_entropy(distortion_logits.float()[labelled], distortion_labels[labelled])


def mpiqe_loss(config: MPIQEConfig, score, scene_logits, distortion_logits, mos, scene_labels, distortion_labels):
    """
    The total loss, eq. 15 and eq. 16: `L = L_scene + lambda_1 * L_dist + lambda_2 * L_score`, `L_score` a smooth L1 between the score and
    the normalised MOS, both multiplied by `config.score_loss_scale`; each term only for the labels given. Returns a dict of the losses computed (`loss` = total).
    """
    losses = {}
    if scene_labels is not None and scene_logits is not None:
        losses["scene_loss"] = scene_alignment_loss(scene_logits, scene_labels)
    if distortion_labels is not None and distortion_logits is not None:
        losses["distortion_loss"] = distortion_alignment_loss(distortion_logits, distortion_labels)
    if mos is not None:
        if mos.shape != score.shape:
            raise ValueError(f"`mos` must have shape {tuple(score.shape)}, got {tuple(mos.shape)}.")
        if torch.isnan(mos).any():
            raise ValueError("`mos` contains NaN: every image needs a score.")
        scale = config.score_loss_scale
        losses["score_loss"] = F.smooth_l1_loss(scale * score.float(), scale * mos.to(torch.float32))
    weights = {
        "scene_loss": 1.0,
        "distortion_loss": config.distortion_loss_weight,
        "score_loss": config.score_loss_weight,
    }
    terms = [weights[name] * value for name, value in losses.items()]
    if terms:
        losses["loss"] = sum(terms[1:], terms[0])
    return losses


class MPIQEPreTrainedModel(PreTrainedModel):
    config_class = MPIQEConfig
    config: MPIQEConfig
    base_model_prefix = "mpiqe"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPTextEmbeddings", "CLIPVisionEmbeddings", "MPIQEDecoderLayer"]
    # A bfloat16 score carries 8 significant bits: on [0.5, 1) it moves in steps of 2^-8, so a large collection
    # scored in bfloat16 would be full of ties. The head is tiny; loading in bfloat16 keeps it in float32.
    _keep_in_fp32_modules_strict = ["score_head"]

    def _init_weights(self, module):
        """Initialises the modules MP-IQE adds; CLIP's own modules are initialised (or loaded) by CLIP."""
        std = self.config.prompt_init_std
        if isinstance(module, MPIQEPromptLearner):
            init.normal_(module.context, mean=0.0, std=std)
            # Non-persistent buffers are not in the checkpoint: rebuild them from the config after a meta-device load.
            token_ids, eos_positions = build_prompt_token_ids(*module.prompt_layout)
            init.copy_(module.token_ids, token_ids)
            init.copy_(module.eos_positions, eos_positions)
        elif isinstance(module, MPIQEModel):
            if module.visual_prompts is not None:
                init.normal_(module.visual_prompts, mean=0.0, std=std)
        elif module is self.image_token_projection:
            # CLIP's own map from the vision width into the space of the text features ("768 to 512 to match the
            # text encoder"), trained from there: the keys and values start where the text queries live.
            init.copy_(module.weight, self.clip.visual_projection.weight)
            init.zeros_(module.bias)
        elif module is self.score_head.out_proj:
            # The score starts as the constant 0.5, the centre of the normalised MOS range, so that every image
            # dependence it has is learned rather than a random function of the image that training must first undo.
            init.zeros_(module.weight)
            init.constant_(module.bias, 0.5)
        elif isinstance(module, nn.Linear):
            # Xavier, as torch's own multi-head attention: with N(0, 0.02) the value and output projections in
            # series start so small that the score ignores the image for hundreds of steps.
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


#: Keyword arguments of `from_pretrained` that say where and how to fetch files.
_FETCH_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
#: CLIP settings that must agree between an adapter and the base CLIP it is put on.
_CLIP_FIT_FIELDS = {
    "vision_config": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "num_channels",
        "hidden_act",
        "layer_norm_eps",
    ),
    "text_config": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
    ),
    None: ("projection_dim",),
}
#: Which config fields decide the shape of each group of weights, to say what to fix when a checkpoint does not fit.
_CONFIG_FIELDS_OF_WEIGHTS = (
    ("visual_prompts", "visual_prompt_depth / visual_prompt_length"),
    ("scene_prompt_learner", "text_prompt_length / use_scene_prompts"),
    ("distortion_prompt_learner", "text_prompt_length / use_distortion_prompts"),
    ("multimodal_encoder", "decoder_layers / decoder_intermediate_size"),
    ("clip.", "clip_config"),
)


def _refuse_other_model_types(source, model_type) -> None:
    if model_type == MPIQEConfig.model_type:
        return
    held = f"a {model_type} model (model_type={model_type!r})" if model_type else "a config.json without a model_type"
    raise ValueError(
        f"{source} holds {held}, not an MP-IQE model: expected a folder or repo whose config.json has "
        f"model_type='{MPIQEConfig.model_type}', as `MPIQEModel.save_pretrained` or `mpiqe_hf.save_adapter` write it "
        "(train one with examples/train.py, or build one with `MPIQEModel.from_clip`)."
    )


def _raise_for_weight_problems(source, loading_info: dict) -> None:
    """Missing or unused weights (transformers' loading info) are an error naming them and the config fields."""
    problems = [f"{name}: missing from the checkpoint" for name in sorted(loading_info["missing_keys"])]
    problems += [f"{name}: not used by this config" for name in sorted(loading_info["unexpected_keys"])]
    if not problems:
        return
    names = " ".join(problem.split(":")[0] for problem in problems)
    fields = sorted({field for prefix, field in _CONFIG_FIELDS_OF_WEIGHTS if prefix in names})
    raise ValueError(
        f"The weights in {source or 'the state dict'} do not fit the config (check {', '.join(fields)}): "
        + "; ".join(problems[:10])
        + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    )


def _clip_config_mismatches(adapter_config: CLIPConfig, base_config: CLIPConfig) -> list[str]:
    problems = []
    for sub, fields in _CLIP_FIT_FIELDS.items():
        want = getattr(adapter_config, sub) if sub else adapter_config
        have = getattr(base_config, sub) if sub else base_config
        for field in fields:
            if getattr(want, field, None) != getattr(have, field, None):
                problems.append(
                    f"{sub + '.' if sub else ''}{field}: adapter {getattr(want, field, None)!r} vs base "
                    f"{getattr(have, field, None)!r}"
                )
    return problems


def clip_weights_digest(clip: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a CLIP's weights, in name order: what an adapter
    checkpoint records of the base CLIP it was trained on."""
    digest = hashlib.sha256()
    state = clip.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def adapter_state_dict(source, config_dict: dict, **fetch_kwargs) -> dict[str, torch.Tensor]:
    """
    The full state dict of an adapter checkpoint: the base CLIP its config names (`base_model_name_or_path` at
    `base_model_revision`, safetensors only), checked against the adapter's `clip_config` and the SHA-256 it recorded
    (`adapter_base_weights_sha256`), under `clip.`, and the adapter's own weights from `ADAPTER_WEIGHTS_NAME`.
    """
    base_name = config_dict.get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{source} is an MP-IQE adapter but names no base CLIP (`base_model_name_or_path`).")
    base_revision = config_dict.get("base_model_revision")
    base_fetch = {key: value for key, value in fetch_kwargs.items() if key not in ("revision", "subfolder")}
    base = CLIPModel.from_pretrained(base_name, revision=base_revision, use_safetensors=True, **base_fetch)
    mismatches = _clip_config_mismatches(CLIPConfig.from_dict(config_dict["clip_config"]), base.config)
    if mismatches:
        raise ValueError(f"The base CLIP {base_name} does not fit the adapter {source}: " + "; ".join(mismatches))
    if clip_weights_digest(base) != config_dict["adapter_base_weights_sha256"]:
        raise ValueError(
            f"The base CLIP {base_name!r} (revision {base_revision or 'main'}) has other weights than the CLIP the "
            f"adapter {source} was trained on (SHA-256 {config_dict['adapter_base_weights_sha256'][:12]}...): pin "
            "`base_model_revision` in its config.json to the revision it was trained on."
        )
    weights = load_state_dict(cached_file(source, ADAPTER_WEIGHTS_NAME, **fetch_kwargs))
    return {**{f"clip.{name}": tensor for name, tensor in base.state_dict().items()}, **weights}


class MPIQEModel(MPIQEPreTrainedModel):
    r"""
    MP-IQE: a frozen CLIP whose text branch carries learned scene and distortion prompts and whose vision branch
    carries learned prompt tokens in every layer up to `visual_prompt_depth`; scene prompts are aligned with the CLS
    token, distortion prompts with windows of patch tokens, and a multimodal encoder with the text features as
    queries and the image tokens as keys/values regresses the quality score.

    Only the prompts, the image-token projection, the multimodal encoder and the score head are trainable.
    `from_pretrained` loads full checkpoints and adapter checkpoints (MP-IQE's own weights in
    `mpiqe_adapter.safetensors`, the frozen CLIP fetched from the base its config names).
    """

    def __init__(self, config: MPIQEConfig):
        super().__init__(config)
        self.clip = CLIPModel(config.clip_config)
        self.clip.requires_grad_(False)
        self._build_trainable_parts(config)
        self.post_init()

    def _build_trainable_parts(self, config: MPIQEConfig):
        """Creates every module MP-IQE adds to CLIP, sized by `config`."""
        vision_config = config.clip_config.vision_config
        vocab_size = config.clip_config.text_config.vocab_size
        self.scene_prompt_learner = None
        self.distortion_prompt_learner = None
        if config.use_scene_prompts:
            token_ids = config.scene_class_token_ids or placeholder_class_token_ids(config.scene_classes, vocab_size)
            self.scene_prompt_learner = MPIQEPromptLearner(config, token_ids)
        if config.use_distortion_prompts:
            token_ids = config.distortion_class_token_ids or placeholder_class_token_ids(
                config.distortion_classes, vocab_size
            )
            self.distortion_prompt_learner = MPIQEPromptLearner(config, token_ids)
        self.visual_prompts = None
        if config.visual_prompt_depth > 0:
            self.visual_prompts = nn.Parameter(
                torch.empty(config.visual_prompt_depth, config.visual_prompt_length, vision_config.hidden_size)
            )
        self.image_token_projection = nn.Linear(vision_config.hidden_size, config.clip_config.projection_dim)
        self.multimodal_encoder = MPIQEMultimodalEncoder(config)
        # float32 whatever dtype the model is built in (`from_config(config, dtype=torch.bfloat16)`), as
        # `_keep_in_fp32_modules_strict` keeps it when loading
        self.score_head = MPIQEScoreHead(config).to(torch.float32)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """
        [`PreTrainedModel.from_pretrained`], strict and safetensors-first, for full and adapter checkpoints:

        - a checkpoint whose `model_type` is not `mpiqe` is refused before any weight is read;
        - only safetensors are read unless you pass `use_safetensors=False` or `None` (`allow_pickle=True` is short
          for `use_safetensors=None`: pickled `pytorch_model.bin` weights, which can run code when loaded, are read
          where no safetensors exist);
        - weights missing from the checkpoint or not used by the config (e.g. after overriding `decoder_layers`)
          raise a `ValueError` naming them and the config fields that decide them; differently shaped ones raise
          transformers' own error;
        - an adapter checkpoint (its config has `adapter_base_weights_sha256`; its weights are in
          `mpiqe_adapter.safetensors`) is loaded in the same call: the base CLIP its config names is fetched at the
          recorded revision and checked against it (see [`adapter_state_dict`]), and the model is built from the
          two through transformers' `state_dict` loading. The loaded model holds every weight, so it saves in full.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`, *optional*): Hub repo id or local folder;
                `None` with `state_dict=` and `config=`.
            kwargs: as for [`PreTrainedModel.from_pretrained`] (`revision`, `token`, `cache_dir`, `config`, `dtype`,
                `output_loading_info`, config overrides, ...).
        """
        if kwargs.pop("allow_pickle", False):
            kwargs.setdefault("use_safetensors", None)
        wants_loading_info = kwargs.pop("output_loading_info", False)
        source = pretrained_model_name_or_path
        if source is not None:
            fetch_kwargs = {key: kwargs[key] for key in _FETCH_KWARGS if kwargs.get(key) is not None}
            config = kwargs.get("config")
            if isinstance(config, PreTrainedConfig):
                config_dict = config.to_dict()
            elif config is None and os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
                raise ValueError(
                    f"{source} holds no config.json, so no model: pass the folder that `MPIQEModel.save_pretrained`, "
                    "`mpiqe_hf.save_adapter` or examples/train.py wrote, or a Hub repo id."
                )
            else:
                config_dict, _ = PreTrainedConfig.get_config_dict(config or source, **fetch_kwargs)
            _refuse_other_model_types(source, config_dict.get("model_type"))
            if config_dict.get("adapter_base_weights_sha256"):
                kwargs["state_dict"] = adapter_state_dict(source, config_dict, **fetch_kwargs)
                kwargs["config"] = config if config is not None else source
                source = None
            else:
                kwargs.setdefault("use_safetensors", True)
        model, loading_info = super().from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
        _raise_for_weight_problems(pretrained_model_name_or_path, loading_info)
        model.config.adapter_base_weights_sha256 = None
        if source is None and pretrained_model_name_or_path is not None:
            # An adapter is built from a state dict, which transformers names "None": name it after its folder or
            # repo, as a full checkpoint is, so that its processor is looked for there (the pipeline does).
            model.config.name_or_path = str(pretrained_model_name_or_path)
        # Loading swaps in new parameter objects, which would be trainable again.
        model.clip.requires_grad_(False)
        return (model, loading_info) if wants_loading_info else model

    #: What `push_to_hub` does: `None` is transformers' own `push_to_hub`; importing `mpiqe_hf` sets
    #: `mpiqe_hf.publishing.push_to_hub`, called as `publisher(model, repo_id, **kwargs)`.
    publisher = None

    def push_to_hub(self, repo_id: str, **kwargs):
        """
        [`MPIQEModel.publisher`] where one is set (`mpiqe_hf.publishing.push_to_hub` once `mpiqe_hf` is imported: one
        commit with the checkpoint, its image processor, the pipeline, a model card with the evaluation results and
        the Inference Endpoints handler), else transformers' own.
        """
        if self.publisher is None:
            return super().push_to_hub(repo_id, **kwargs)
        return self.publisher(repo_id, **kwargs)

    @classmethod
    def from_clip(cls, clip_name_or_path, revision=None, tokenizer=None, **config_kwargs):
        """
        Builds a fresh MP-IQE (new prompts, encoder and head) around a pretrained CLIP, e.g.
        `openai/clip-vit-base-patch16` as in the paper, or a local folder holding a `CLIPModel` and its tokenizer.
        The class names are tokenised once and stored in the config, with the tokenizer's start, end and padding
        ids that frame each prompt, so the saved model needs no tokenizer.

        Args:
            clip_name_or_path (`str` or `os.PathLike`): Hub id or local folder of the CLIP model.
            revision (`str`, *optional*): Hub revision of the CLIP model.
            tokenizer (*optional*): a tokenizer to use instead of loading the one stored with the CLIP model.
            config_kwargs: overrides of [`MPIQEConfig`] fields.
        """
        from transformers import AutoTokenizer

        clip = CLIPModel.from_pretrained(clip_name_or_path, revision=revision, use_safetensors=True)
        if getattr(clip.config, "stand_in_notice", None):
            logger.warning(clip.config.stand_in_notice)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(clip_name_or_path, revision=revision)
        scene_classes = config_kwargs.get("scene_classes", SCENE_CLASSES)
        distortion_classes = config_kwargs.get("distortion_classes", DISTORTION_CLASSES)

        def tokenize(names):
            return [tokenizer(f"{name.replace('_', ' ')}.", add_special_tokens=False)["input_ids"] for name in names]

        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(
                f"The tokenizer of {clip_name_or_path} has no start or end token (bos_token_id "
                f"{tokenizer.bos_token_id}, eos_token_id {tokenizer.eos_token_id}): MP-IQE frames each prompt with them."
            )
        # The tokenizer, not the CLIP config, names the special tokens: the Hub's openai configs still say 0 and 2.
        special_ids = dict(
            prompt_bos_token_id=tokenizer.bos_token_id,
            prompt_eos_token_id=tokenizer.eos_token_id,
            prompt_pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        )
        # CLIP's architecture, not the dtype it was stored in: a `dtype` in the CLIP configs would keep the towers in
        # float32 when the model is loaded with `dtype=torch.bfloat16`, beside bfloat16 projections
        clip_config = CLIPConfig.from_dict(clip.config.to_dict())
        for sub_config in (clip_config, clip_config.text_config, clip_config.vision_config):
            sub_config.dtype = None
        config = MPIQEConfig(
            clip_config=clip_config,
            scene_class_token_ids=tokenize(scene_classes),
            distortion_class_token_ids=tokenize(distortion_classes),
            **{**special_ids, **config_kwargs},
            base_model_name_or_path=str(clip_name_or_path),
            base_model_revision=revision,
        )
        model = cls(config)
        model.clip.load_state_dict(clip.state_dict())
        model._init_weights(model.image_token_projection)  # again: it starts from the pretrained projection
        return model

    def get_text_features(self) -> MPIQETextFeatures:
        """
        Everything MP-IQE computes from the learned prompts alone, independent of the image: the prompts of eq. 6
        through the frozen text encoder in one batch (text projection of EOS, L2-normalised), and the decoder
        queries of eq. 12 after the first self-attention. Compute it once and pass it to every `forward` call that
        scores with the same weights: `model(pixel_values, text_features=model.get_text_features())`.

        The prompts are cut after the longest class prompt instead of CLIP's 77 positions: the text encoder is
        causal, so the positions after EOS never change the features.
        """
        text_model = self.clip.text_model
        learners = [learner for learner in (self.scene_prompt_learner, self.distortion_prompt_learner) if learner]
        prompt_embeddings = [learner(text_model.embeddings.token_embedding) for learner in learners]
        sequence_length = max(embeddings.shape[1] for embeddings in prompt_embeddings)
        padded = torch.cat(
            [F.pad(embeddings, (0, 0, 0, sequence_length - embeddings.shape[1])) for embeddings in prompt_embeddings]
        )
        eos_positions = torch.cat([learner.eos_positions for learner in learners])

        hidden_states = text_model.embeddings(inputs_embeds=padded)
        causal_mask = torch.full(
            (sequence_length, sequence_length), torch.finfo(hidden_states.dtype).min, device=hidden_states.device
        )
        causal_mask = torch.triu(causal_mask, diagonal=1).to(hidden_states.dtype)[None, None]
        hidden_states = text_model.encoder(inputs_embeds=hidden_states, attention_mask=causal_mask).last_hidden_state
        hidden_states = text_model.final_layer_norm(hidden_states)
        eos_states = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), eos_positions]
        features = F.normalize(self.clip.text_projection(eos_states), dim=-1)

        split = features.split([learner.num_classes for learner in learners])
        scene = split[0] if self.scene_prompt_learner is not None else None
        distortion = split[-1] if self.distortion_prompt_learner is not None else None
        return MPIQETextFeatures(
            scene_features=scene,
            distortion_features=distortion,
            prepared_queries=self.multimodal_encoder.prepare_queries(scene, distortion),
        )

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        The deep visual prompts, eq. 7: the frozen vision tower with `n` learned prompt tokens between CLS and the
        patches; at every layer below `visual_prompt_depth` the previous layer's prompt outputs are dropped and that
        layer's own prompts inserted, `[CLS_i, _, E_i] = L_i([CLS_{i-1}, P_{i-1}, E_{i-1}])`.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, 3, height, width)`)

        Returns:
            `torch.FloatTensor` of shape `(num_images, 1 + num_patches, vision_hidden_size)`: post-LN CLS and patch
            tokens, prompt outputs removed.
        """
        vision_model = self.clip.vision_model
        hidden_states = vision_model.pre_layrnorm(vision_model.embeddings(pixel_values))
        num_images = hidden_states.shape[0]
        num_prompts = 0 if self.visual_prompts is None else self.visual_prompts.shape[1]
        for index, layer in enumerate(vision_model.encoder.layers):
            if index < self.config.visual_prompt_depth:
                prompts = self.visual_prompts[index].to(hidden_states.dtype).expand(num_images, -1, -1)
                skip = 1 if index == 0 else 1 + num_prompts
                hidden_states = torch.cat([hidden_states[:, :1], prompts, hidden_states[:, skip:]], dim=1)
            hidden_states = layer(hidden_states, attention_mask=None)
        tokens = torch.cat([hidden_states[:, :1], hidden_states[:, 1 + num_prompts :]], dim=1)
        return vision_model.post_layernorm(tokens)

    def forward(
        self,
        pixel_values: torch.Tensor,
        mos: torch.Tensor | None = None,
        scene_labels: torch.Tensor | None = None,
        distortion_labels: torch.Tensor | None = None,
        text_features: MPIQETextFeatures | None = None,
        return_dict: bool | None = None,
    ) -> MPIQEOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_crops, 3, 224, 224)` or `(batch_size, 3, 224, 224)`):
                Crops made by [`MPIQEImageProcessor`]; the scores of an image's crops are averaged.
            mos (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
                Ground-truth MOS normalised to [0, 1], higher = better.
            scene_labels (`torch.LongTensor` of shape `(batch_size,)` or `(batch_size, num_scene_classes)`, *optional*):
                Scene targets: class indices (-100 = no label), or multi-hot rows spread evenly over their scenes
                (LIQE gives up to three; an all-zero row = no label). Unlabelled images are skipped by the scene loss.
            distortion_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Index of the dominant distortion; -100 marks an image without a distortion label.
            text_features ([`MPIQETextFeatures`], *optional*):
                The output of [`get_text_features`] for the current weights; computed here when not given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pixel_values = as_crop_batch(pixel_values)
        batch_size, num_crops = pixel_values.shape[:2]
        size = self.config.clip_config.vision_config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"`pixel_values` holds {pixel_values.shape[-2]}x{pixel_values.shape[-1]} crops, but this model's CLIP "
                f"takes {size}x{size}: cut them with the checkpoint's MPIQEImageProcessor (crop_size={size})."
            )
        if text_features is None:
            text_features = self.get_text_features()

        tokens = self.encode_image(pixel_values.flatten(0, 1))
        logit_scale = self.clip.logit_scale.exp()
        scene_logits = distortion_logits = None
        if text_features.scene_features is not None:
            cls_embeds = self.clip.visual_projection(tokens[:, 0])
            scene_features = text_features.scene_features.to(cls_embeds.dtype)
            scene_logits = scene_alignment_logits(cls_embeds, scene_features, logit_scale)
            scene_logits = scene_logits.view(batch_size, num_crops, -1).mean(dim=1)
        if text_features.distortion_features is not None:
            patch_embeds = self.clip.visual_projection(tokens[:, 1:])
            distortion_logits = distortion_alignment_logits(
                patch_embeds,
                text_features.distortion_features.to(patch_embeds.dtype),
                logit_scale,
                self.config.window_size,
                self.config.distortion_window_temperature,
            )
            distortion_logits = distortion_logits.view(batch_size, num_crops, -1).mean(dim=1)

        image_tokens = self.image_token_projection(tokens)
        query_states = self.multimodal_encoder(text_features.prepared_queries.to(image_tokens.dtype), image_tokens)
        crop_scores = self.score_head(query_states).view(batch_size, num_crops)
        score = crop_scores.mean(dim=1)

        losses = mpiqe_loss(self.config, score, scene_logits, distortion_logits, mos, scene_labels, distortion_labels)
        output = MPIQEOutput(
            **losses,
            score=score,
            crop_scores=crop_scores,
            scene_logits=scene_logits,
            distortion_logits=distortion_logits,
        )
        return output if return_dict else output.to_tuple()

    def to_native_scale(self, score: torch.Tensor) -> torch.Tensor:
        """Maps normalised scores `(batch_size,)` to the training dataset's MOS scale (e.g. 1-5 for KonIQ)."""
        span = self.config.mos_max - self.config.mos_min
        if self.config.mos_higher_is_better:
            return self.config.mos_min + score * span
        return self.config.mos_max - score * span

    def quality_map(
        self,
        pixel_values: torch.Tensor,
        image_sizes,
        text_features: MPIQETextFeatures | None = None,
        max_image_size: int | None = None,
    ) -> MPIQEQualityMapOutput:
        r"""
        Where the model sees degradation, at each image's own size: Grad-CAM of the lowered score over the last vision
        layer's patch tokens (the paper's Fig. 3) and the eq. 10 window weights of the predicted distortion, each
        computed per crop and merged over the processor's crop grid (see `quality_map_mpiqe`). Deterministic in eval
        mode.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_crops, 3, 224, 224)`):
                Grid crops made by [`MPIQEImageProcessor`] (`crop_mode="grid"`, the default).
            image_sizes (sequence of `(height, width)`): the size of each image before processing.
            text_features ([`MPIQETextFeatures`], *optional*): reused when given.
            max_image_size (`int`, *optional*): the `max_image_size` of the processor that cut the crops.

        Returns:
            [`MPIQEQualityMapOutput`] with `gradcam_maps` and `distortion_maps`, one `(height, width)` tensor in
            `[0, 1]` per image, the fraction of each image the crops cover (`coverage`; the maps are 0 outside the
            crops, so cut [`covering_num_crops`] crops for a map of the whole image), and the score and logits of the
            same forward pass (the mean over these crops).
        """
        return compute_quality_maps(
            self, pixel_values, image_sizes, text_features=text_features, max_image_size=max_image_size
        )


__all__ = [
    "MPIQEModel",
    "MPIQEPreTrainedModel",
    "MPIQEOutput",
    "MPIQETextFeatures",
    "adapter_state_dict",
    "clip_weights_digest",
]
