"""Publishing MP-IQE checkpoints: the adapter form, the repository a Hub upload holds, and `push_to_hub`.

A layer above the model: nothing here ships with a checkpoint. The model files (configuration, modeling, image
processing, pipeline) load both forms on their own; this module writes them and uploads them.

- The full form is transformers' own `save_pretrained` (`config.json` with `auto_map`, `model.safetensors`, the
  model files).
- The adapter form is the same with MP-IQE's own weights only, in `mpiqe_adapter.safetensors` (a name of the
  project's own: no tool takes it for PEFT's format), and a `config.json` that names the base CLIP
  (`base_model_name_or_path`, `base_model_revision`) and the SHA-256 of its weights (`adapter_base_weights_sha256`).
  `MPIQEModel.from_pretrained`, `AutoModel.from_pretrained(..., trust_remote_code=True)` and the pipeline load it
  like a full checkpoint.
"""

import contextlib
import os
import shutil
import tempfile

from huggingface_hub import HfApi
from transformers.utils import SAFE_WEIGHTS_NAME, logging

from .configuration_mpiqe import ADAPTER_WEIGHTS_NAME
from .image_processing_mpiqe import MPIQEImageProcessor
from .model_card import build_model_card
from .modeling_mpiqe import clip_weights_digest
from .pipeline_mpiqe import MPIQEImageClassificationPipeline


logger = logging.get_logger(__name__)


__all__ = ["save_adapter", "write_repository", "push_to_hub", "ADAPTER_WEIGHTS_NAME"]


@contextlib.contextmanager
def _adapter_form(model):
    """While inside, `model.config` describes an adapter checkpoint; yields the weights an adapter holds (all but
    the frozen CLIP's)."""
    base = model.config.base_model_name_or_path
    if not base:
        raise ValueError(
            "An adapter needs the base CLIP's name: set `config.base_model_name_or_path` (and "
            "`config.base_model_revision`), or build the model with `MPIQEModel.from_clip`."
        )
    if os.path.isdir(base):
        logger.warning(
            f"The base CLIP is the local folder {base}: the adapter loads only where that folder exists. Build the "
            "model from a Hub id to share it."
        )
    model.config.adapter_base_weights_sha256 = clip_weights_digest(model.clip)
    try:
        yield {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("clip.")}
    finally:
        model.config.adapter_base_weights_sha256 = None


def save_adapter(model, save_directory, **save_kwargs) -> None:
    """
    Saves `model` ([`MPIQEModel`]) as an adapter checkpoint: transformers' `save_pretrained` (`config.json` with
    `auto_map`, the model files) with MP-IQE's own weights only, in `mpiqe_adapter.safetensors`; the config names
    the base CLIP and the SHA-256 of its weights. Load it with `MPIQEModel.from_pretrained` or `AutoModel`.

    Args:
        model ([`MPIQEModel`]): a model whose config names its base CLIP (as `MPIQEModel.from_clip` records it).
        save_directory (`str` or `os.PathLike`): the folder.
        save_kwargs: transformers' `save_pretrained` arguments (`is_main_process`, `save_function`, ...), except
            `state_dict` and `max_shard_size`: an adapter is one file of the model's own trained weights.
    """
    for key in ("state_dict", "max_shard_size"):
        if save_kwargs.get(key) is not None:
            raise ValueError(f"`{key}` cannot be given when saving an adapter: it holds the model's own weights.")
        save_kwargs.pop(key, None)
    with _adapter_form(model) as state:
        model.save_pretrained(save_directory, state_dict=state, **save_kwargs)
    if save_kwargs.get("is_main_process", True):
        os.replace(os.path.join(save_directory, SAFE_WEIGHTS_NAME), os.path.join(save_directory, ADAPTER_WEIGHTS_NAME))


def write_repository(
    model,
    folder,
    *,
    repo_id: str = "org/mp-iqe",
    adapter_only: bool = False,
    image_processor=None,
    evaluation_results: list[dict] | None = None,
    tags: list[str] | None = None,
    training_recipe: dict | None = None,
    max_shard_size: int | str | None = "50GB",
) -> None:
    """
    Writes into `folder` what [`push_to_hub`] uploads: the checkpoint (full, or with `adapter_only=True` the adapter
    form of [`save_adapter`]), the image processor, the remote-code pipeline (transformers' pipeline saving writes
    its code and announces it in `config.custom_pipelines` under the Hub widget's `image-classification` task), the
    model card (`README.md`, with a `model-index` of the evaluation results) and `handler.py`, the Inference
    Endpoints handler. Arguments as for [`push_to_hub`].
    """
    if image_processor is not None and getattr(image_processor, "_auto_class", None) is None:
        image_processor.register_for_auto_class("AutoImageProcessor")
    scorer = MPIQEImageClassificationPipeline(model=model, image_processor=image_processor)
    # The pipeline falls back on a default processor to score with; saving it would replace the repo's own.
    scorer.image_processor = image_processor
    if adapter_only:
        with _adapter_form(model) as state:
            scorer.save_pretrained(folder, state_dict=state)
        os.replace(os.path.join(folder, SAFE_WEIGHTS_NAME), os.path.join(folder, ADAPTER_WEIGHTS_NAME))
    else:
        scorer.save_pretrained(folder, max_shard_size=max_shard_size)
    card = build_model_card(
        model.config,
        repo_id=repo_id,
        evaluation_results=evaluation_results,
        tags=tags,
        adapter_only=adapter_only,
        image_processor=image_processor,
        training_recipe=training_recipe,
    )
    card.save(os.path.join(folder, "README.md"))
    shutil.copyfile(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "handler.py"), os.path.join(folder, "handler.py")
    )


def push_to_hub(
    model,
    repo_id: str,
    *,
    evaluation_results: list[dict] | None = None,
    adapter_only: bool = False,
    image_processor=None,
    training_recipe: dict | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
):
    """
    Uploads an [`MPIQEModel`] to the Hub in one commit (what `model.push_to_hub` does where `mpiqe_hf` is
    installed): the files of [`write_repository`]. By default the full checkpoint, as `save_pretrained` writes it.

    Args:
        model ([`MPIQEModel`]): the model.
        repo_id (`str`): `"org/name"`; created if it does not exist.
        evaluation_results (`list[dict]`, *optional*): `{"dataset", "srcc", "plcc"}` each, optionally with
            `dataset_id`, `split`, `krcc`, `rmse`, `source`, `source_url`.
        adapter_only (`bool`, defaults to `False`): upload the adapter form (the trained weights, tens of MB, and
            the base CLIP's name) instead of the full model.
        image_processor ([`MPIQEImageProcessor`], *optional*): the processor to upload; when `None`, a default
            one with the CLIP's image size is uploaded unless the repo already has a `preprocessor_config.json`.
        training_recipe (`dict`, *optional*): how the model was trained (`learning_rate`, `num_train_epochs`,
            `max_train_steps`, `total_train_batch_size`, `crop_sampling`), stated in the card.
        commit_message, commit_description, private, token, revision, create_pr, max_shard_size, tags: as for
            transformers' `push_to_hub` (`tags` are added to the card's).

    Returns:
        the `CommitInfo` of the commit.
    """
    api = HfApi(token=token if isinstance(token, str) else None)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if image_processor is None and not api.file_exists(repo_id, "preprocessor_config.json", revision=revision):
        image_processor = MPIQEImageProcessor.default_for(model.config)
    with tempfile.TemporaryDirectory() as work_dir:
        write_repository(
            model,
            work_dir,
            repo_id=repo_id,
            adapter_only=adapter_only,
            image_processor=image_processor,
            evaluation_results=evaluation_results,
            tags=tags,
            training_recipe=training_recipe,
            max_shard_size=max_shard_size,
        )
        return api.upload_folder(
            folder_path=work_dir,
            repo_id=repo_id,
            commit_message=commit_message or ("Upload MP-IQE adapter" if adapter_only else "Upload MP-IQE model"),
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )
