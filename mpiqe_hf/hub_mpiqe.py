"""Loading, saving and sharing MP-IQE checkpoints: strict full checkpoints, PEFT-layout adapters, `push_to_hub`.

A full checkpoint is transformers' own (`config.json` + `model.safetensors`). An adapter follows PEFT's layout:
`adapter_config.json` names the base CLIP (id, revision, SHA-256 of its weights) and holds the MP-IQE config, and
`adapter_model.safetensors` holds only the trained weights. Both forms also carry `config.json` with `auto_map` and
the model files, so that `AutoModel.from_pretrained(repo, trust_remote_code=True)` works without `mpiqe_hf`.

This module is imported by `modeling_mpiqe.py` and travels with it as remote code: it imports only torch,
transformers (and safetensors, which transformers requires) and its sibling model files.
"""

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, PreTrainedConfig
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file, logging

from .configuration_mpiqe import MPIQEConfig


logger = logging.get_logger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
#: Keyword arguments of `from_pretrained` that say where and how to fetch files.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
#: Keyword arguments transformers' auto classes add, which an adapter load has no use for.
_AUTO_KWARGS = (
    "trust_remote_code", "_from_auto", "_commit_hash", "code_revision", "adapter_kwargs", "use_safetensors",
)
_REPO_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
#: CLIP settings that must agree between an adapter and the base CLIP it is put on.
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
#: Which config fields decide the shape of each group of weights, to say what to fix when a checkpoint does not fit.
_CONFIG_FIELDS_OF_WEIGHTS = (
    ("visual_prompts", "visual_prompt_depth / visual_prompt_length"),
    ("scene_prompt_learner", "text_prompt_length / use_scene_prompts"),
    ("distortion_prompt_learner", "text_prompt_length / use_distortion_prompts"),
    ("multimodal_encoder", "decoder_layers / decoder_intermediate_size"),
    ("clip.", "clip_config"),
)


def clip_weights_digest(clip: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a CLIP's weights, in name order."""
    digest = hashlib.sha256()
    state = clip.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _check_source(pretrained_model_name_or_path) -> None:
    """A path that is neither an existing folder nor shaped like a Hub repo id names a folder that is not there."""
    source = os.fspath(pretrained_model_name_or_path)
    if not os.path.isdir(source) and (os.path.isabs(source) or source.startswith(".") or not _REPO_ID.match(source)):
        raise OSError(f"{source} does not exist: there is no such local folder, and it is not a Hub repo id.")


def _refuse_other_model_types(source, model_type) -> None:
    if model_type != MPIQEConfig.model_type:
        raise ValueError(
            f"{source} holds a {model_type or 'model without a model_type'!s} model (model_type={model_type!r}), not "
            f"an MP-IQE model (model_type='{MPIQEConfig.model_type}')."
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


def _clip_config_mismatches(expected, found) -> list[str]:
    problems = []
    for sub, fields in _CLIP_FIT_FIELDS.items():
        want = getattr(expected, sub) if sub else expected
        have = getattr(found, sub) if sub else found
        for field in fields:
            if getattr(want, field, None) != getattr(have, field, None):
                problems.append(
                    f"{sub + '.' if sub else ''}{field}: adapter {getattr(want, field, None)!r} vs base "
                    f"{getattr(have, field, None)!r}"
                )
    return problems


def _remove_files(folder, names) -> None:
    """A folder holds one form: the files of the other one, left by an earlier save, would be loaded instead."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)


def _is_not_load_report(record) -> bool:
    return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _without_load_report():
    """transformers logs a "LOAD REPORT" (weights re-initialised) before we can refuse the checkpoint: hold it back.

    A filter drops that record alone; raising the logger's level instead would make transformers list every layer as
    "not sharded" (it checks tensor-parallel plans when its loader logger is at WARNING or above)."""
    report_logger = logging.get_logger("transformers.modeling_utils")
    report_logger.addFilter(_is_not_load_report)
    try:
        yield
    finally:
        report_logger.removeFilter(_is_not_load_report)


def _read_adapter_config(source, hub_kwargs) -> dict | None:
    """The parsed `adapter_config.json` of `source`, or `None` when it is a full checkpoint."""
    path = cached_file(source, ADAPTER_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


class MPIQECheckpointMixin:
    """
    `from_pretrained`, `save_pretrained`, `load_adapter` and `push_to_hub` of [`MPIQEModel`]: transformers' own
    loading made strict and safetensors-only, plus the PEFT-layout adapter form.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """
        [`PreTrainedModel.from_pretrained`] for full checkpoints and adapters alike:

        - a local path that does not exist, or a model whose `model_type` is not `mpiqe`, is refused up front;
        - only safetensors are read: `use_safetensors=True` unless you pass `use_safetensors=False` or `None`
          (`allow_pickle=True` is short for `use_safetensors=None`: pickled `pytorch_model.bin` weights, which can
          run code when loaded, are read where no safetensors exist);
        - weights that do not fit the config (missing, unexpected or differently shaped tensors, e.g. after
          overriding `visual_prompt_length`) raise a `ValueError` naming them and the config fields that decide them;
        - an adapter (`adapter_config.json`) is loaded in one call: its base CLIP is fetched at the recorded revision
          and checked against the adapter (config and weight digest) before the trained weights are put on it.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): Hub repo id or local folder.
            kwargs: as for [`PreTrainedModel.from_pretrained`] (`revision`, `token`, `cache_dir`, `config`, `dtype`,
                config overrides, ...).
        """
        _check_source(pretrained_model_name_or_path)
        if kwargs.pop("allow_pickle", False):
            kwargs.setdefault("use_safetensors", None)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
        adapter = _read_adapter_config(pretrained_model_name_or_path, hub_kwargs)
        if adapter is not None:
            return cls._from_adapter(pretrained_model_name_or_path, adapter, **kwargs)

        config = kwargs.get("config")
        if isinstance(config, PreTrainedConfig):
            model_type = config.model_type
        else:
            config_dict, _ = PreTrainedConfig.get_config_dict(config or pretrained_model_name_or_path, **hub_kwargs)
            model_type = config_dict.get("model_type")
        _refuse_other_model_types(pretrained_model_name_or_path, model_type)

        wants_loading_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("use_safetensors", True)
        kwargs["ignore_mismatched_sizes"] = True
        with _without_load_report():
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
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
    def _from_adapter(cls, source, adapter: dict, **kwargs):
        """One-call adapter loading: the base CLIP it names, then [`load_adapter`]."""
        hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
        wants_loading_info = kwargs.pop("output_loading_info", False)
        dtype = kwargs.pop("dtype", None)
        config = kwargs.pop("config", None)
        for key in _AUTO_KWARGS:
            kwargs.pop(key, None)
        if isinstance(config, MPIQEConfig):
            config = copy.deepcopy(config)
        else:
            config = cls._adapter_mpiqe_config(source, adapter)
        for key, value in kwargs.items():
            if not hasattr(config, key):
                raise TypeError(f"from_pretrained() got an argument {key!r} that an adapter checkpoint does not take.")
            setattr(config, key, value)
        if not adapter.get("base_model_name_or_path"):
            raise ValueError(f"{source} is an MP-IQE adapter but names no base CLIP (`base_model_name_or_path`).")
        base_kwargs = {key: value for key, value in hub_kwargs.items() if key not in ("revision", "subfolder")}
        base = CLIPModel.from_pretrained(
            adapter["base_model_name_or_path"], revision=adapter.get("revision"), use_safetensors=True, **base_kwargs
        )
        config.clip_config = base.config
        model = cls(config)
        model.clip.load_state_dict(base.state_dict())
        del base
        model.load_adapter(source, **hub_kwargs)
        if dtype is not None and dtype != "auto":
            model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        model.eval()
        if wants_loading_info:
            return model, {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
        return model

    @staticmethod
    def _adapter_mpiqe_config(source, adapter: dict) -> MPIQEConfig:
        config_dict = adapter.get("mpiqe_config")
        if not isinstance(config_dict, dict):
            raise ValueError(f"{source}/{ADAPTER_CONFIG_NAME} is not an MP-IQE adapter config (no `mpiqe_config`).")
        _refuse_other_model_types(source, config_dict.get("model_type"))
        return MPIQEConfig.from_dict(config_dict)

    def load_adapter(self, adapter_name_or_path, **hub_kwargs):
        """
        Puts a saved adapter on this model's CLIP, in place, and returns the model: the two-step form
        `MPIQEModel.from_clip(base).load_adapter(adapter)`. The MP-IQE settings (prompt sizes, decoder, MOS range)
        become the adapter's; its trained weights replace this model's. The CLIP must fit the adapter's config and
        have the weights the adapter was trained on (SHA-256 recorded at save time).

        Args:
            adapter_name_or_path (`str` or `os.PathLike`): Hub repo id or local folder of the adapter.
            hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, ... for fetching it.
        """
        _check_source(adapter_name_or_path)
        adapter = _read_adapter_config(adapter_name_or_path, hub_kwargs)
        if adapter is None:
            raise OSError(f"{adapter_name_or_path} has no {ADAPTER_CONFIG_NAME}: it is not an MP-IQE adapter.")
        config = self._adapter_mpiqe_config(adapter_name_or_path, adapter)
        base_name = f"{adapter.get('base_model_name_or_path')!r} (revision {adapter.get('revision') or 'main'})"
        mismatches = _clip_config_mismatches(config.clip_config, self.config.clip_config)
        if mismatches:
            raise ValueError(
                f"The base CLIP does not fit the adapter {adapter_name_or_path}: " + "; ".join(mismatches)
            )
        expected_digest = adapter.get("base_weights_sha256")
        if expected_digest and clip_weights_digest(self.clip) != expected_digest:
            raise ValueError(
                f"This CLIP has other weights than the base CLIP {base_name} the adapter {adapter_name_or_path} was "
                f"trained on (SHA-256 of the weights differs from {expected_digest[:12]}...): load the base at the "
                "revision the adapter records."
            )
        weights = load_file(cached_file(adapter_name_or_path, ADAPTER_WEIGHTS_NAME, **hub_kwargs))

        config.clip_config = self.config.clip_config
        config.base_model_name_or_path = adapter.get("base_model_name_or_path")
        config.base_model_revision = adapter.get("revision")
        parameter = next(self.clip.parameters())
        self.config = config
        self._build_trainable_parts(config)
        own_state = {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("clip.")}
        problems = [
            f"{name}: checkpoint {tuple(weights[name].shape)} vs config {tuple(own_state[name].shape)}"
            for name in sorted(own_state.keys() & weights.keys())
            if weights[name].shape != own_state[name].shape
        ]
        problems += [f"{name}: missing from the checkpoint" for name in sorted(own_state.keys() - weights.keys())]
        problems += [f"{name}: not used by this config" for name in sorted(weights.keys() - own_state.keys())]
        _raise_for_weight_problems(adapter_name_or_path, problems)
        self.load_state_dict(weights, strict=False)
        self.to(device=parameter.device, dtype=parameter.dtype)
        self.clip.requires_grad_(False)
        return self

    def save_pretrained(self, save_directory, *args, adapter_only: bool = False, **kwargs):
        """
        [`PreTrainedModel.save_pretrained`] (`config.json` with `auto_map`, `model.safetensors`, the model files),
        or with `adapter_only=True` the PEFT layout: `adapter_config.json` (base CLIP id = `base_model_name_or_path`,
        `revision` = `base_model_revision`, `base_weights_sha256`, `mpiqe_config`) and `adapter_model.safetensors`
        with only the trained weights (prompts, image-token projection, multimodal encoder, score head), next to
        `config.json` and the model files for remote code.
        """
        if not adapter_only:
            super().save_pretrained(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                _remove_files(save_directory, (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME))
            return None
        if args:
            raise TypeError("save_pretrained(adapter_only=True) takes no positional arguments besides the folder.")
        if not kwargs.pop("is_main_process", True):
            return None
        for key in ("push_to_hub", "state_dict"):
            if kwargs.get(key):
                raise ValueError(f"`{key}` cannot be combined with `adapter_only=True`.")
            kwargs.pop(key, None)
        kwargs.pop("max_shard_size", None)
        kwargs.pop("safe_serialization", None)
        if kwargs:
            raise TypeError(f"save_pretrained(adapter_only=True) got unexpected arguments {sorted(kwargs)}.")
        if not self.config.base_model_name_or_path:
            raise ValueError(
                "An adapter needs the base CLIP's name: set `config.base_model_name_or_path` (and "
                "`config.base_model_revision`), or build the model with `MPIQEModel.from_clip`."
            )
        if os.path.isdir(self.config.base_model_name_or_path):
            logger.warning(
                f"The base CLIP is the local folder {self.config.base_model_name_or_path}: the adapter can only be "
                "loaded where that folder exists. Build the model from a Hub id to share it."
            )
        from transformers.dynamic_module_utils import custom_object_save

        os.makedirs(save_directory, exist_ok=True)
        config = copy.deepcopy(self.config)
        if self._auto_class is not None:
            custom_object_save(self, save_directory, config=config)
        config.save_pretrained(save_directory)
        adapter = {
            "base_model_name_or_path": config.base_model_name_or_path,
            "revision": config.base_model_revision,
            "base_weights_sha256": clip_weights_digest(self.clip),
            "mpiqe_config": config.to_dict(),
        }
        with open(os.path.join(save_directory, ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as file:
            json.dump(adapter, file, indent=2, sort_keys=True)
        state = {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in self.state_dict().items()
            if not name.startswith("clip.")
        }
        save_file(state, os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        _remove_files(save_directory, (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
        return None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        evaluation_results: list[dict] | None = None,
        adapter_only: bool = True,
        image_processor=None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        tags: list[str] | None = None,
        training_recipe: dict | None = None,
    ):
        """
        Uploads the model to the Hub in one commit: the adapter (default) or with `adapter_only=False` the full
        checkpoint, the model and pipeline files for remote code (the `image-quality-assessment` pipeline is
        announced in `config.custom_pipelines` by transformers' pipeline saving), `preprocessor_config.json` and the
        model card (`README.md`, with a `model-index` of the evaluation results), and `handler.py`, the Inference
        Endpoints handler.

        Args:
            repo_id (`str`): `"org/name"`; created if it does not exist.
            evaluation_results (`list[dict]`, *optional*): `{"dataset", "srcc", "plcc"}` each, optionally with
                `dataset_id`, `split`, `krcc`, `rmse`, `source`, `source_url`.
            adapter_only (`bool`, defaults to `True`): upload only the trained weights (tens of MB) and the base
                CLIP's name; `False` uploads the full model.
            image_processor ([`MPIQEImageProcessor`], *optional*): the processor to upload; when `None`, a default
                one with the CLIP's image size is uploaded unless the repo already has a `preprocessor_config.json`.
            commit_message, private, token, revision, create_pr: as for [`huggingface_hub.HfApi.upload_folder`].
            tags (`list[str]`, *optional*): extra tags for the card.
            training_recipe (`dict`, *optional*): how the model was trained (`learning_rate`, `num_train_epochs`,
                `max_train_steps`, `total_train_batch_size`, `crop_sampling`), stated in the card.

        Returns:
            the `CommitInfo` of the commit.
        """
        import tempfile

        from huggingface_hub import HfApi

        from .image_processing_mpiqe import MPIQEImageProcessor
        from .model_card import build_model_card
        from .pipeline_mpiqe import MPIQEImageClassificationPipeline

        api = HfApi(token=token if isinstance(token, str) else None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if image_processor is None and not api.file_exists(repo_id, "preprocessor_config.json", revision=revision):
            image_processor = MPIQEImageProcessor(crop_size=self.config.clip_config.vision_config.image_size)
        if image_processor is not None and getattr(image_processor, "_auto_class", None) is None:
            image_processor.register_for_auto_class("AutoImageProcessor")
        with tempfile.TemporaryDirectory() as work_dir:
            # transformers' pipeline saving writes the model, the processor, the pipeline's code and its
            # `custom_pipelines` entry
            scorer = MPIQEImageClassificationPipeline(model=self, image_processor=image_processor)
            scorer.save_pretrained(work_dir, adapter_only=adapter_only)
            card = build_model_card(
                self.config,
                repo_id=repo_id,
                evaluation_results=evaluation_results,
                tags=tags,
                adapter_only=adapter_only,
                image_processor=image_processor,
                training_recipe=training_recipe,
            )
            card.save(os.path.join(work_dir, "README.md"))
            # Inference Endpoints load `handler.py` from the repository; it ships with the package (not with the
            # remote code, which can push too).
            handler = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handler.py")
            if os.path.isfile(handler):
                shutil.copyfile(handler, os.path.join(work_dir, "handler.py"))
            return api.upload_folder(
                folder_path=work_dir,
                repo_id=repo_id,
                commit_message=commit_message or ("Upload MP-IQE adapter" if adapter_only else "Upload MP-IQE model"),
                revision=revision,
                create_pr=create_pr,
            )


__all__ = ["MPIQECheckpointMixin", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "clip_weights_digest"]
