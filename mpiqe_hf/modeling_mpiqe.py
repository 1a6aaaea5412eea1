"""PyTorch MP-IQE: multi-modal prompt learning on a frozen CLIP for blind image quality assessment."""

import copy
import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_mpiqe import DISTORTION_CLASSES, SCENE_CLASSES, MPIQEConfig


logger = logging.get_logger(__name__)

#: File of the adapter-only checkpoint: every weight except the frozen CLIP's.
ADAPTER_WEIGHTS_NAME = "mpiqe_adapter.safetensors"
#: Key of `config.json` that marks an adapter-only checkpoint (and what it needs to be rebuilt).
ADAPTER_CONFIG_KEY = "mpiqe_adapter"
#: Files of a Hub repo that hold weights as pickles (torch.load), refused unless `allow_pickle=True`.
_PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", ADAPTER_WEIGHTS_NAME)
#: The files the pipeline needs next to the model files when it is loaded as remote code.
_PIPELINE_FILES = ("pipeline_mpiqe.py", "image_processing_mpiqe.py", "image_utils_mpiqe.py")
#: The task under which the saved config announces the remote-code pipeline (the Hub widget's task).
REMOTE_PIPELINE_TASK = "image-classification"
#: Keyword arguments of `from_pretrained` that say where and how to fetch files.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
#: CLIP settings that must agree between an adapter's config and the base CLIP it is put on.
_CLIP_FIT_FIELDS = {
    "vision_config": (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
        "num_channels", "hidden_act", "layer_norm_eps",
    ),
    "text_config": (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
        "max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id",
    ),
    None: ("projection_dim",),
}

# Which config field decides the shape of each group of weights, to say what to fix when a checkpoint does not fit.
_CONFIG_FIELDS_OF_WEIGHTS = (
    ("visual_prompts", "visual_prompt_depth / visual_prompt_length"),
    ("scene_prompt_learner", "text_prompt_length / use_scene_prompts"),
    ("distortion_prompt_learner", "text_prompt_length / use_distortion_prompts"),
    ("multimodal_encoder", "decoder_layers / decoder_intermediate_size"),
    ("clip.", "clip_config"),
)


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
        Smooth L1 between the predicted score and the normalised MOS (eq. 16).
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
    CoOp context learner (eq. 6): `M` vectors shared by all classes of one family, written in front of each class
    name's token embeddings.
    """

    def __init__(self, config: MPIQEConfig, class_token_ids):
        super().__init__()
        text_config = config.clip_config.text_config
        pad_token_id = text_config.pad_token_id if text_config.pad_token_id is not None else text_config.eos_token_id
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(text_config, name)
            if value is None or not 0 <= value < text_config.vocab_size:
                raise ValueError(
                    f"clip_config.text_config.{name} ({value}) must be a token id below vocab_size "
                    f"({text_config.vocab_size}): the prompts are framed by [SOS] and [EOS]."
                )
        for ids in class_token_ids:
            if any(not 0 <= token < text_config.vocab_size for token in ids):
                raise ValueError(f"class token ids {ids} fall outside the text vocabulary ({text_config.vocab_size}).")
        self.context_length = config.text_prompt_length
        self.context = nn.Parameter(torch.empty(config.text_prompt_length, text_config.hidden_size))
        self.prompt_layout = (
            [list(ids) for ids in class_token_ids],
            config.text_prompt_length,
            text_config.bos_token_id,
            text_config.eos_token_id,
            pad_token_id,
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
    One pre-LN layer of the multimodal encoder: self-attention over the text queries (eq. 13), cross-attention from
    the queries to the image tokens (eq. 14) and a feed-forward block.
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

    def prepare_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """`(1, num_queries, hidden_size)` text queries -> after the first self-attention, same shape."""
        return self.layers[0].self_attend(queries)

    def forward(self, prepared_queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Returns the query states `(batch_size, num_queries, hidden_size)`."""
        states = self.layers[0].attend_image(prepared_queries, image_tokens)
        for layer in self.layers[1:]:
            states = layer(states, image_tokens)
        return self.final_norm(states)


class MPIQEScoreHead(nn.Module):
    """MLP on the mean of the query states -> one quality score."""

    def __init__(self, config: MPIQEConfig):
        super().__init__()
        hidden_size = config.clip_config.projection_dim
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.decoder_dropout)
        self.out_proj = nn.Linear(hidden_size, 1)

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        pooled = query_states.mean(dim=1)
        return self.out_proj(self.dropout(self.activation(self.dense(pooled)))).squeeze(-1)


def clip_weights_digest(clip: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a CLIP's weights, in name order."""
    digest = hashlib.sha256()
    state = clip.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _clip_config_mismatches(expected, found) -> list[str]:
    problems = []
    for sub, fields in _CLIP_FIT_FIELDS.items():
        want = getattr(expected, sub) if sub else expected
        have = getattr(found, sub) if sub else found
        for field in fields:
            a, b = getattr(want, field, None), getattr(have, field, None)
            if a != b:
                problems.append(f"{sub + '.' if sub else ''}{field}: adapter {a!r} vs base {b!r}")
    return problems


def _adapter_info(pretrained_model_name_or_path, kwargs) -> dict | None:
    """The adapter entry of the checkpoint's config, or `None` for a full checkpoint."""
    config = kwargs.get("config")
    if isinstance(config, PreTrainedConfig):
        return getattr(config, ADAPTER_CONFIG_KEY, None)
    from transformers.utils import cached_file

    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    source = config if isinstance(config, (str, os.PathLike)) else pretrained_model_name_or_path
    config_file = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if config_file is None:
        return None
    with open(config_file, encoding="utf-8") as file:
        return json.load(file).get(ADAPTER_CONFIG_KEY)


def _has_pickle_weights(pretrained_model_name_or_path, kwargs) -> bool:
    from transformers.utils import has_file

    hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "proxies", "cache_dir") if key in kwargs}
    try:
        return any(has_file(pretrained_model_name_or_path, name, **hub_kwargs) for name in _PICKLE_WEIGHT_FILES)
    except Exception:  # the original error says enough
        return False


def _refuse_local_pickle(path, subfolder: str) -> None:
    folder = os.path.join(os.fspath(path), subfolder)
    if not os.path.isdir(folder):
        return
    has_safe = any(os.path.isfile(os.path.join(folder, name)) for name in _SAFE_WEIGHT_FILES)
    pickles = [name for name in _PICKLE_WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if pickles and not has_safe:
        raise OSError(
            f"{folder} holds only pickled weights ({', '.join(pickles)}). MP-IQE does not read pickles by default "
            "because loading one can run arbitrary code; pass `allow_pickle=True` if you trust this checkpoint, or "
            "convert it with `MPIQEModel.from_pretrained(path, allow_pickle=True).save_pretrained(new_path)`."
        )


def _raise_for_weight_problems(source, problems: list[str]) -> None:
    if not problems:
        return
    names = " ".join(problem.split(":")[0] for problem in problems)
    fields = sorted({field for prefix, field in _CONFIG_FIELDS_OF_WEIGHTS if prefix in names})
    raise ValueError(
        f"The weights in {source} do not fit the config (check {', '.join(fields)}): "
        + "; ".join(problems[:10])
        + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    )


def _custom_pipelines() -> dict:
    return {
        REMOTE_PIPELINE_TASK: {
            "impl": "pipeline_mpiqe.MPIQEImageClassificationPipeline",
            "pt": ["AutoModel"],
            "tf": [],
            "type": "image",
        }
    }


def _copy_pipeline_files(save_directory) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _PIPELINE_FILES:
        source = os.path.join(here, name)
        target = os.path.join(save_directory, name)
        if os.path.isfile(source) and os.path.abspath(source) != os.path.abspath(target):
            shutil.copyfile(source, target)


def _remove_files(folder, names) -> None:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)


class MPIQEPreTrainedModel(PreTrainedModel):
    config_class = MPIQEConfig
    config: MPIQEConfig
    base_model_prefix = "mpiqe"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPTextEmbeddings", "CLIPVisionEmbeddings", "MPIQEDecoderLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, allow_pickle: bool = False, **kwargs):
        """
        [`PreTrainedModel.from_pretrained`], made strict and safe:

        - a checkpoint whose weights do not fit the config (missing, unexpected or differently shaped tensors, e.g.
          after overriding `visual_prompt_length`) raises a `ValueError` that names the weights and the config fields
          that decide them, instead of silently re-initialising them;
        - only safetensors weights are read: a checkpoint that has only pickled weights (`pytorch_model.bin`) is
          refused with an `OSError`, unless `allow_pickle=True` says that its source is trusted;
        - an adapter-only checkpoint (see `save_pretrained(..., adapter_only=True)`) is recognised from its
          `config.json`: its base CLIP is fetched from `config.base_model_name_or_path` at
          `config.base_model_revision` and checked against the adapter before the learned weights are put on it.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): Hub repo id or local folder.
            allow_pickle (`bool`, *optional*, defaults to `False`): also accept pickled (`torch.load`) weights.
            kwargs: as for [`PreTrainedModel.from_pretrained`] (`revision`, `token`, `cache_dir`, `config`,
                config overrides, ...).
        """
        adapter_info = _adapter_info(pretrained_model_name_or_path, kwargs)
        if adapter_info is not None:
            return cls._from_adapter(pretrained_model_name_or_path, adapter_info, allow_pickle=allow_pickle, **kwargs)

        wants_loading_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)
        if allow_pickle:
            kwargs.setdefault("use_safetensors", None)
        else:
            if kwargs.get("use_safetensors") is False:
                raise ValueError("`use_safetensors=False` reads pickled weights: pass `allow_pickle=True` as well.")
            kwargs["use_safetensors"] = True
            _refuse_local_pickle(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except OSError as err:
            if not allow_pickle and "cannot be loaded with `safetensors`" in str(err) and _has_pickle_weights(
                pretrained_model_name_or_path, kwargs
            ):
                raise OSError(
                    f"{pretrained_model_name_or_path} has no safetensors weights (model.safetensors). MP-IQE does not "
                    "read pickled weights (pytorch_model.bin) by default because loading a pickle can run arbitrary "
                    "code; pass `allow_pickle=True` if you trust this checkpoint."
                ) from err
            raise
        problems = [
            f"{name}: checkpoint {tuple(stored)} vs config {tuple(expected)}"
            for name, stored, expected in sorted(loading_info["mismatched_keys"])
        ]
        problems += [f"{name}: missing from the checkpoint" for name in sorted(loading_info["missing_keys"])]
        problems += [f"{name}: not used by this config" for name in sorted(loading_info["unexpected_keys"])]
        _raise_for_weight_problems(pretrained_model_name_or_path, problems)
        # Loading swaps in new parameter objects, which would be trainable again.
        model.clip.requires_grad_(False)
        return (model, loading_info) if wants_loading_info else model

    @classmethod
    def _from_adapter(cls, pretrained_model_name_or_path, adapter_info, *, allow_pickle=False, **kwargs):
        """Rebuilds a full model from an adapter-only checkpoint and the base CLIP it names."""
        from safetensors.torch import load_file
        from transformers.utils import cached_file

        wants_loading_info = kwargs.pop("output_loading_info", False)
        hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        config = kwargs.pop("config", None)
        for key in ("trust_remote_code", "_from_auto", "_commit_hash", "ignore_mismatched_sizes", "use_safetensors"):
            kwargs.pop(key, None)
        if not isinstance(config, PreTrainedConfig):
            config, kwargs = cls.config_class.from_pretrained(
                config or pretrained_model_name_or_path, return_unused_kwargs=True, **hub_kwargs, **kwargs
            )
        else:
            config = copy.deepcopy(config)
        if kwargs:
            logger.warning(f"Ignoring arguments that do not apply to an adapter-only checkpoint: {sorted(kwargs)}.")
        if hasattr(config, ADAPTER_CONFIG_KEY):
            delattr(config, ADAPTER_CONFIG_KEY)
        base_name = config.base_model_name_or_path
        if not base_name:
            raise ValueError(
                f"{pretrained_model_name_or_path} is an adapter-only MP-IQE checkpoint but its config names no base "
                "CLIP (`base_model_name_or_path`)."
            )
        base_kwargs = {key: hub_kwargs[key] for key in ("cache_dir", "force_download", "local_files_only", "token", "proxies") if key in hub_kwargs}
        base = CLIPModel.from_pretrained(
            base_name,
            revision=config.base_model_revision,
            use_safetensors=None if allow_pickle else True,
            **base_kwargs,
        )
        mismatches = _clip_config_mismatches(config.clip_config, base.config)
        if mismatches:
            raise ValueError(
                f"The base CLIP {base_name!r} (revision {config.base_model_revision or 'main'}) does not fit the "
                f"adapter {pretrained_model_name_or_path}: " + "; ".join(mismatches)
            )

        model = cls(config)
        model.clip.load_state_dict(base.state_dict())
        del base
        expected_digest = adapter_info.get("base_weights_sha256")
        if expected_digest and clip_weights_digest(model.clip) != expected_digest:
            raise ValueError(
                f"The base CLIP {base_name!r} (revision {config.base_model_revision or 'main'}) has other weights "
                f"than the CLIP the adapter {pretrained_model_name_or_path} was trained on (SHA-256 of the weights "
                f"differs from {expected_digest[:12]}...): pin `base_model_revision` to the revision it was built on."
            )

        weights_name = adapter_info.get("weights_name", ADAPTER_WEIGHTS_NAME)
        weights_file = cached_file(pretrained_model_name_or_path, weights_name, **hub_kwargs)
        adapter_state = load_file(weights_file)
        expected = {name for name in model.state_dict() if not name.startswith("clip.")}
        own_state = model.state_dict()
        problems = [
            f"{name}: checkpoint {tuple(adapter_state[name].shape)} vs config {tuple(own_state[name].shape)}"
            for name in sorted(expected & set(adapter_state))
            if adapter_state[name].shape != own_state[name].shape
        ]
        problems += [f"{name}: missing from the checkpoint" for name in sorted(expected - set(adapter_state))]
        problems += [f"{name}: not used by this config" for name in sorted(set(adapter_state) - expected)]
        _raise_for_weight_problems(pretrained_model_name_or_path, problems)
        model.load_state_dict(adapter_state, strict=False)
        model.clip.requires_grad_(False)
        if dtype is not None and dtype != "auto":
            model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        model.eval()
        if wants_loading_info:
            return model, {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
        return model

    def save_pretrained(self, save_directory, *args, adapter_only: bool = False, **kwargs):
        """
        [`PreTrainedModel.save_pretrained`], plus:

        - next to `config.json` (with `auto_map`) and the model files, the pipeline's files are written and the
          config announces the pipeline in `custom_pipelines`, so that `pipeline(model=repo, trust_remote_code=True)`
          works where `mpiqe_hf` is not installed;
        - `adapter_only=True` writes only the learned weights (prompts, image-token projection, multimodal encoder,
          score head) to `mpiqe_adapter.safetensors`, and a `config.json` that names the base CLIP
          (`base_model_name_or_path`, `base_model_revision`) and the SHA-256 of its weights. `from_pretrained`
          fetches that CLIP and rebuilds the same model.
        """
        if not adapter_only:
            if kwargs.get("safe_serialization") is False:
                raise ValueError("MP-IQE checkpoints are written as safetensors only.")
            kwargs.pop("safe_serialization", None)
            self._announce_pipeline()
            super().save_pretrained(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                _remove_files(save_directory, (ADAPTER_WEIGHTS_NAME,))
                _copy_pipeline_files(save_directory)
            return None

        if args or kwargs.pop("push_to_hub", False):
            raise ValueError("`adapter_only=True` takes no positional arguments and no `push_to_hub`; use `push_to_hub(..., adapter_only=True)`.")
        is_main_process = kwargs.pop("is_main_process", True)
        for key in ("max_shard_size", "safe_serialization", "variant", "token", "state_dict"):
            if key == "state_dict" and kwargs.get(key) is not None:
                raise ValueError("`state_dict` cannot be combined with `adapter_only=True`.")
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"save_pretrained(adapter_only=True) got unexpected arguments {sorted(kwargs)}.")
        if not self.config.base_model_name_or_path:
            raise ValueError(
                "An adapter-only checkpoint needs the base CLIP's name: set `config.base_model_name_or_path` (and "
                "`config.base_model_revision`), or build the model with `MPIQEModel.from_clip`."
            )
        if os.path.isdir(self.config.base_model_name_or_path):
            logger.warning(
                f"The base CLIP is the local folder {self.config.base_model_name_or_path}: the adapter can only be "
                "loaded where that folder exists. Build the model from a Hub id to share it."
            )
        if not is_main_process:
            return None
        from safetensors.torch import save_file
        from transformers.dynamic_module_utils import custom_object_save

        os.makedirs(save_directory, exist_ok=True)
        config = copy.deepcopy(self.config)
        setattr(
            config,
            ADAPTER_CONFIG_KEY,
            {"weights_name": ADAPTER_WEIGHTS_NAME, "base_weights_sha256": clip_weights_digest(self.clip)},
        )
        config.custom_pipelines = _custom_pipelines()
        if self._auto_class is not None:
            custom_object_save(self, save_directory, config=config)
        config.save_pretrained(save_directory)
        state = {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in self.state_dict().items()
            if not name.startswith("clip.")
        }
        _remove_files(save_directory, _SAFE_WEIGHT_FILES + _PICKLE_WEIGHT_FILES)
        save_file(state, os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        _copy_pipeline_files(save_directory)
        return None

    def _announce_pipeline(self):
        if os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), _PIPELINE_FILES[0])):
            self.config.custom_pipelines = _custom_pipelines()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        adapter_only: bool = False,
        image_processor=None,
        evaluation_results: list[dict] | None = None,
        model_card: bool = True,
    ):
        """
        Uploads the model to the Hub in one commit: weights (`model.safetensors`, or `mpiqe_adapter.safetensors`
        with `adapter_only=True`), `config.json` with `auto_map` and `custom_pipelines`, the remote-code files, a
        `preprocessor_config.json` and a model card (`README.md`) filled with this model's settings and results.

        Args:
            repo_id (`str`): `"org/name"`; created if it does not exist.
            image_processor ([`MPIQEImageProcessor`], *optional*): the processor to upload. When `None`, one with
                default settings and `crop_size` = the CLIP image size is uploaded unless the repo already has a
                `preprocessor_config.json`.
            evaluation_results (`list[dict]`, *optional*): results for the card's `model-index`, each
                `{"dataset": name, "dataset_id": hub id (optional), "split": (optional), "srcc": float,
                "plcc": float, "krcc": (optional), "rmse": (optional)}`. Defaults to `config.evaluation_results`.
            model_card (`bool`, defaults to `True`): write the card (needs the `mpiqe_hf` package installed).
            the rest: as for [`PushToHubMixin.push_to_hub`].

        Returns:
            the `CommitInfo` of the commit.
        """
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token if isinstance(token, str) else None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            if adapter_only:
                self.save_pretrained(work_dir, adapter_only=True)
            else:
                self.save_pretrained(work_dir, max_shard_size=max_shard_size)
            if image_processor is None:
                try:
                    has_processor = api.file_exists(repo_id, "preprocessor_config.json", revision=revision)
                except Exception:  # a new branch, an unreachable file: write the default
                    has_processor = False
                if not has_processor:
                    from .image_processing_mpiqe import MPIQEImageProcessor

                    image_processor = MPIQEImageProcessor(crop_size=self.config.clip_config.vision_config.image_size)
            if image_processor is not None:
                if getattr(image_processor, "_auto_class", None) is None:
                    image_processor.register_for_auto_class("AutoImageProcessor")
                image_processor.save_pretrained(work_dir)
            if model_card:
                try:
                    from mpiqe_hf.model_card import render_model_card
                except ImportError:
                    logger.warning("The model card is only written where the `mpiqe_hf` package is installed.")
                else:
                    card = render_model_card(
                        self.config,
                        repo_id=repo_id,
                        evaluation_results=evaluation_results,
                        tags=tags,
                        adapter_only=adapter_only,
                        image_processor=image_processor,
                    )
                    with open(os.path.join(work_dir, "README.md"), "w", encoding="utf-8") as file:
                        file.write(card)
            return api.upload_folder(
                folder_path=work_dir,
                repo_id=repo_id,
                commit_message=commit_message or ("Upload MP-IQE adapter" if adapter_only else "Upload MP-IQE model"),
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )

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
        elif isinstance(module, nn.Linear):
            # Xavier, as torch's own multi-head attention: with N(0, 0.02) the value and output projections in
            # series start so small that the score ignores the image for hundreds of steps.
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class MPIQEModel(MPIQEPreTrainedModel):
    r"""
    MP-IQE: a frozen CLIP whose text branch carries learned scene and distortion prompts and whose vision branch
    carries learned prompt tokens in every layer up to `visual_prompt_depth`; scene prompts are aligned with the CLS
    token, distortion prompts with windows of patch tokens, and a multimodal encoder with the text features as
    queries and the image tokens as keys/values regresses the quality score.

    Only the prompts, the image-token projection, the multimodal encoder and the score head are trainable.
    """

    def __init__(self, config: MPIQEConfig):
        super().__init__(config)
        self.clip = CLIPModel(config.clip_config)
        self.clip.requires_grad_(False)
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
        self.score_head = MPIQEScoreHead(config)

        self._text_cache_key = None
        self._text_cache = None
        self.post_init()

    @classmethod
    def from_clip(cls, clip_name_or_path, revision=None, tokenizer=None, **config_kwargs):
        """
        Builds a fresh MP-IQE (new prompts, encoder and head) around a pretrained CLIP, e.g.
        `openai/clip-vit-base-patch16` as in the paper, or a local folder holding a `CLIPModel` and its tokenizer.
        The class names are tokenised once and stored in the config, so the saved model needs no tokenizer.

        Args:
            clip_name_or_path (`str` or `os.PathLike`): Hub id or local folder of the CLIP model.
            revision (`str`, *optional*): Hub revision of the CLIP model.
            tokenizer (*optional*): a tokenizer to use instead of loading the one stored with the CLIP model.
            config_kwargs: overrides of [`MPIQEConfig`] fields.
        """
        from transformers import AutoTokenizer

        clip = CLIPModel.from_pretrained(clip_name_or_path, revision=revision)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(clip_name_or_path, revision=revision)
        scene_classes = config_kwargs.get("scene_classes", SCENE_CLASSES)
        distortion_classes = config_kwargs.get("distortion_classes", DISTORTION_CLASSES)

        def tokenize(names):
            return [tokenizer(f"{name.replace('_', ' ')}.", add_special_tokens=False)["input_ids"] for name in names]

        config = MPIQEConfig(
            clip_config=clip.config,
            scene_class_token_ids=tokenize(scene_classes),
            distortion_class_token_ids=tokenize(distortion_classes),
            base_model_name_or_path=str(clip_name_or_path),
            base_model_revision=revision,
            **config_kwargs,
        )
        model = cls(config)
        model.clip.load_state_dict(clip.state_dict())
        return model

    # ----------------------------------------------------------------------------------------------------------------
    # Text branch

    def _prompt_learners(self):
        return [learner for learner in (self.scene_prompt_learner, self.distortion_prompt_learner) if learner]

    def encode_prompts(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """
        Runs all learned prompts through the frozen text encoder in one batch (eq. 1-2).

        Returns the L2-normalised scene features `(num_scene_classes, projection_dim)` and distortion features
        `(num_distortion_classes, projection_dim)`; `None` for a family that is switched off.
        """
        text_model = self.clip.text_model
        learners = self._prompt_learners()
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
        return scene, distortion

    def _text_state_key(self):
        """Identifies the current prompts and text weights: in-place updates bump `_version`, `.to()` moves data."""
        modules = [*self._prompt_learners(), self.clip.text_model, self.clip.text_projection]
        modules += [self.multimodal_encoder.layers[0].self_attn_norm, self.multimodal_encoder.layers[0].self_attn]
        return tuple(
            (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device)
            for module in modules
            for tensor in (*module.parameters(), *module.buffers())
        )

    def _text_features(self):
        """
        Scene features, distortion features and the prepared decoder queries. They depend on the prompts only, so
        without gradients they are computed once and reused until any of their weights change: in eval mode, and in
        training mode too when no dropout acts on them (then both modes compute the same values).
        """
        text_dropout = self.config.clip_config.text_config.attention_dropout or self.config.decoder_dropout
        cacheable = not torch.is_grad_enabled() and (not self.training or not text_dropout)
        if cacheable:
            key = self._text_state_key()
            if key == self._text_cache_key:
                return self._text_cache
        scene, distortion = self.encode_prompts()
        queries = torch.cat([features for features in (scene, distortion) if features is not None])
        prepared_queries = self.multimodal_encoder.prepare_queries(queries.unsqueeze(0))
        result = (scene, distortion, prepared_queries)
        if cacheable:
            self._text_cache_key, self._text_cache = key, result
        else:
            self._text_cache_key, self._text_cache = None, None
        return result

    # ----------------------------------------------------------------------------------------------------------------
    # Vision branch

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        The frozen vision tower with deep visual prompts (eq. 7): `n` prompt tokens sit between CLS and the patches;
        at every layer below `visual_prompt_depth` the previous layer's prompt outputs are dropped and that layer's
        own prompts inserted.

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

    def _distortion_similarity(self, patch_embeds: torch.Tensor, distortion_features: torch.Tensor) -> torch.Tensor:
        """
        Eq. 10: patch embeddings `(num_images, num_patches, projection_dim)` are max-pooled into `w x w` windows;
        for each class a softmax over windows of sim / T-bar weights the windows' similarities.
        Returns `(num_images, num_distortion_classes)`.
        """
        num_images, num_patches, dim = patch_embeds.shape
        grid = int(num_patches**0.5)
        assert grid * grid == num_patches, "the vision tower's patch grid is square"
        grid_embeds = patch_embeds.transpose(1, 2).reshape(num_images, dim, grid, grid)
        windows = F.adaptive_max_pool2d(grid_embeds, self.config.window_size).flatten(2).transpose(1, 2)
        windows = F.normalize(windows, dim=-1)
        similarity = torch.einsum("nwd,cd->ncw", windows, distortion_features)
        weights = torch.softmax(similarity / self.config.distortion_window_temperature, dim=-1)
        return (weights * similarity).sum(dim=-1)

    # ----------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        mos: torch.Tensor | None = None,
        scene_labels: torch.Tensor | None = None,
        distortion_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MPIQEOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_crops, 3, 224, 224)` or `(batch_size, 3, 224, 224)`):
                Crops made by [`MPIQEImageProcessor`]; the scores of an image's crops are averaged.
            mos (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
                Ground-truth MOS normalised to [0, 1], higher = better.
            scene_labels (`torch.FloatTensor` of shape `(batch_size, num_scene_classes)`, *optional*):
                Scene targets: a multi-hot row is spread evenly over its scenes (LIQE gives up to three); an all-zero
                row marks an image without a scene label, which the scene loss skips.
            distortion_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Index of the dominant distortion; -100 marks an image without a distortion label.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.dim() != 5:
            raise ValueError(
                "`pixel_values` must have shape (batch_size, num_crops, 3, height, width) or "
                f"(batch_size, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        batch_size, num_crops = pixel_values.shape[:2]
        scene_features, distortion_features, prepared_queries = self._text_features()

        tokens = self.encode_image(pixel_values.flatten(0, 1))
        logit_scale = self.clip.logit_scale.exp()
        scene_logits = distortion_logits = None
        if scene_features is not None:
            cls_embeds = F.normalize(self.clip.visual_projection(tokens[:, 0]), dim=-1)
            scene_logits = logit_scale * cls_embeds @ scene_features.t()
            scene_logits = scene_logits.view(batch_size, num_crops, -1).mean(dim=1)
        if distortion_features is not None:
            patch_embeds = self.clip.visual_projection(tokens[:, 1:])
            distortion_logits = logit_scale * self._distortion_similarity(patch_embeds, distortion_features)
            distortion_logits = distortion_logits.view(batch_size, num_crops, -1).mean(dim=1)

        image_tokens = self.image_token_projection(tokens)
        query_states = self.multimodal_encoder(prepared_queries, image_tokens)
        crop_scores = self.score_head(query_states).view(batch_size, num_crops)
        score = crop_scores.mean(dim=1)

        losses = self._losses(score, scene_logits, distortion_logits, mos, scene_labels, distortion_labels)
        output = MPIQEOutput(
            **losses,
            score=score,
            crop_scores=crop_scores,
            scene_logits=scene_logits,
            distortion_logits=distortion_logits,
        )
        return output if return_dict else output.to_tuple()

    def _losses(self, score, scene_logits, distortion_logits, mos, scene_labels, distortion_labels):
        """Eq. 15-16; each term only for the labels given, each class term only over the images that have a label."""
        losses = {}
        total = None
        if scene_labels is not None and scene_logits is not None:
            if scene_labels.shape != scene_logits.shape:
                raise ValueError(
                    f"`scene_labels` must have shape {tuple(scene_logits.shape)} (multi-hot over "
                    f"{self.config.scene_classes}), got {tuple(scene_labels.shape)}."
                )
            targets = scene_labels.to(torch.float32)
            totals = targets.sum(dim=-1, keepdim=True)
            labelled = totals.squeeze(-1) > 0
            log_probs = F.log_softmax(scene_logits.float(), dim=-1)
            per_image = -(targets / totals.clamp_min(1e-12) * log_probs).sum(dim=-1)
            losses["scene_loss"] = (per_image * labelled).sum() / labelled.sum().clamp_min(1)
            total = losses["scene_loss"]
        if distortion_labels is not None and distortion_logits is not None:
            if distortion_labels.shape != distortion_logits.shape[:1]:
                raise ValueError(
                    f"`distortion_labels` must have shape ({distortion_logits.shape[0]},), "
                    f"got {tuple(distortion_labels.shape)}."
                )
            labelled = distortion_labels != -100
            if labelled.any():
                loss = F.cross_entropy(distortion_logits.float()[labelled], distortion_labels[labelled])
            else:
                loss = distortion_logits.sum() * 0.0
            losses["distortion_loss"] = loss
            weighted = self.config.distortion_loss_weight * loss
            total = weighted if total is None else total + weighted
        if mos is not None:
            if mos.shape != score.shape:
                raise ValueError(f"`mos` must have shape {tuple(score.shape)}, got {tuple(mos.shape)}.")
            if torch.isnan(mos).any():
                raise ValueError("`mos` contains NaN: every image needs a score.")
            losses["score_loss"] = F.smooth_l1_loss(score.float(), mos.to(torch.float32))
            weighted = self.config.score_loss_weight * losses["score_loss"]
            total = weighted if total is None else total + weighted
        if total is not None:
            losses["loss"] = total
        return losses

    def to_native_scale(self, score: torch.Tensor) -> torch.Tensor:
        """Maps normalised scores `(batch_size,)` to the training dataset's MOS scale (e.g. 1-5 for KonIQ)."""
        span = self.config.mos_max - self.config.mos_min
        if self.config.mos_higher_is_better:
            return self.config.mos_min + score * span
        return self.config.mos_max - score * span


__all__ = ["MPIQEModel", "MPIQEPreTrainedModel", "MPIQEOutput", "ADAPTER_WEIGHTS_NAME", "clip_weights_digest"]
