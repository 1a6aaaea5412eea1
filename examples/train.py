#!/usr/bin/env python
"""Train MP-IQE (multi-modal prompt learning on a frozen CLIP) for blind image quality assessment with Accelerate.

    accelerate launch examples/train.py                      # embedded synthetic dataset, paper recipe
    accelerate launch examples/train.py --dataset_name koniq10k --data_dir /data/koniq10k \
        --label_file /data/LIQE/IQA_Database/koniq-10k --output_dir mpiqe-koniq
    torchrun --nproc_per_node 2 examples/train.py ...        # two CPU processes (MULTI_CPU over gloo)

Defaults follow the paper: per-crop training (every image visited 8 times an epoch, one random crop per visit),
batches of 64 crops (32 for LIVE/CSIQ/BID), Adam at lr 3e-5, 5 warm-up epochs then cosine, 30 epochs, lambda_1 1.0,
lambda_2 0.1 for LIVE/CSIQ else 0.5, the paper's random 80/20 split. See docs/training.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import GradientAccumulationPlugin, gather_object, set_seed
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm
from transformers import CLIPConfig, HfArgumentParser, get_cosine_schedule_with_warmup

from mpiqe_hf import MPIQEConfig, MPIQEImageProcessor, MPIQEModel, save_adapter
from mpiqe_hf.data import dataset_mos_range, iqa_info, skipped_samples
from mpiqe_hf.metrics import MIN_ITEMS
from mpiqe_hf.model_sources import (
    STANDIN_CLIP_NAME,
    check_model_source,
    resolve_clip_source,
)
from mpiqe_hf.testing_utils import hub_clip_config
from mpiqe_hf.training import (
    DataArguments,
    EpochShuffleSampler,
    IQATransform,
    ShuffledCropBatches,
    SplitPlan,
    check_number,
    check_output_folder,
    collate_iqa_batch,
    evaluate_model,
    iqa_split,
    keep_samples,
    label_coverage,
    make_samples,
    plan_split,
    run_script,
)


logger = get_logger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch16"
TRAINING_STATE_FILE = "training_state.json"
TRAINING_ARGS_FILE = "training_args.json"
LOSS_TERMS = ("loss", "scene_loss", "distortion_loss", "score_loss")
SHORT_NAMES = {"loss": "loss", "scene_loss": "scene", "distortion_loss": "distortion", "score_loss": "score"}
# The paper warms up for 5 of its 30 epochs; a warm-up asked for that would fill the whole run keeps this share.
PAPER_WARMUP_SHARE = 5 / 30
PAPER_LEARNING_RATE = 3e-5
PAPER_EPOCHS = 30
# The paper's learning rate is set for ViT-B/16, whose image-text space (where MP-IQE's decoder and score head run)
# is 512 wide. An Adam step moves a layer's output in proportion to its width: on a pretrained stand-in CLIP the
# paper's 3e-5 trained well at width 512 and under-fit at width 64, where 1e-3 trained well (docs/decisions.md,
# Table R2f).
PAPER_TEXT_WIDTH = 512
NARROW_LEARNING_RATE_AT_WIDTH_64 = 1e-3


@dataclass
class ModelArguments:
    """The model to train: a new MP-IQE on a CLIP, or a trained MP-IQE to fine-tune."""

    clip_model_name_or_path: str = field(
        default=DEFAULT_CLIP,
        metadata={
            "help": (
                f"Hub id or local folder holding a pretrained CLIPModel and its tokenizer; '{STANDIN_CLIP_NAME}' is the small "
                "stand-in shipped with mpiqe_hf (not CLIP), for runs offline in minutes."
            )
        },
    )
    clip_config_name: str | None = field(
        default=None,
        metadata={
            "help": (
                "Random-weight CLIP instead of a pretrained one: 'tiny' (hidden 32, 30-px crops) or a CLIPConfig JSON file / "
                "folder. For a look at the loop only: a random CLIP learns little."
            )
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": (
                "Fine-tune a trained MP-IQE (full or adapter checkpoint, local or Hub) instead of starting from a CLIP."
            )
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": (
                "MPIQEConfig fields for a new model, PretrainedConfig.update_from_string syntax: "
                "'visual_prompt_depth=1,text_prompt_length=4'."
            )
        },
    )
    num_crops: int = field(
        default=8,
        metadata={
            "help": (
                "Random crops per image and epoch in training; grid crops per image in evaluation (see --eval_num_crops)."
            )
        },
    )
    eval_num_crops: int | None = field(
        default=None, metadata={"help": "Grid crops in evaluation (default --num_crops)."}
    )
    crop_sampling: str = field(
        default="per_crop",
        metadata={
            "choices": ["per_crop", "per_image"],
            "help": (
                "per_crop (the paper): each epoch visits every image num_crops times, each visit one random crop and its own "
                "sample; the batch counts crops and the losses apply per crop. per_image: a sample is an image's num_crops "
                "crops, scored as their average; the batch counts images."
            ),
        },
    )
    score_loss_weight: float | None = field(
        default=None, metadata={"help": "lambda_2 (default: 0.1 for LIVE and CSIQ, else 0.5)."}
    )
    distortion_loss_weight: float = field(default=1.0, metadata={"help": "lambda_1."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": ("Recompute the CLIP layers' activations in the backward pass: less memory, more time.")},
    )

    def __post_init__(self):
        check_number("num_crops", self.num_crops, at_least=1)
        check_number("eval_num_crops", self.eval_num_crops, at_least=1)
        check_number("score_loss_weight", self.score_loss_weight, at_least=0)
        check_number("distortion_loss_weight", self.distortion_loss_weight, at_least=0)
        self.clip_model_name_or_path = resolve_clip_source(self.clip_model_name_or_path)


@dataclass
class TrainArguments:
    """The optimisation, checkpoints, logging and the Hub."""

    output_dir: str = "mpiqe-output"
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": (
                "Train into a --output_dir that is not empty, replacing the model, results and checkpoints of the same "
                "names there (without it, a non-empty --output_dir is refused unless --resume_from_checkpoint is given)."
            )
        },
    )
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={
            "help": (
                "Samples (crops, or images with --crop_sampling per_image) per process and step. Default: the paper's batch "
                "(32 for LIVE/CSIQ/BID, else 64) divided among processes and accumulation steps."
            )
        },
    )
    per_device_eval_batch_size: int | None = field(default=None, metadata={"help": "Images per evaluation batch."})
    learning_rate: float = PAPER_LEARNING_RATE
    weight_decay: float = 0.0
    num_train_epochs: int = PAPER_EPOCHS
    max_train_steps: int | None = field(default=None, metadata={"help": "Overrides --num_train_epochs."})
    gradient_accumulation_steps: int = 1
    num_warmup_epochs: float = 5.0
    num_warmup_steps: int | None = field(default=None, metadata={"help": "Overrides --num_warmup_epochs."})
    max_grad_norm: float | None = None
    seed: int = 42
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "choices": ["no", "fp16", "bf16"],
            "help": ("Overrides the `accelerate launch` setting; bf16 is measured in benchmarks/RESULTS.md."),
        },
    )
    tf32: bool = field(default=True, metadata={"help": "TF32 matrix products on GPUs that have them (Ampere+)."})
    cpu: bool = field(
        default=False,
        metadata={
            "help": (
                "Run on CPU. Implied under torchrun on a machine without CUDA, so that its processes form one MULTI_CPU "
                "run."
            )
        },
    )
    horizontal_flip: bool = field(
        default=True,
        metadata={
            "help": (
                "Flip each training crop left-right with probability 1/2, as DEIQT's and LIQE's training code do (the paper "
                "does not say; docs/decisions.md). --no_horizontal_flip turns it off."
            )
        },
    )
    checkpointing_steps: str | None = field(
        default=None,
        metadata={"help": ("'epoch' or a number of optimizer steps: save_state into output_dir/epoch_N or step_N.")},
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": ("A step_N/epoch_N folder, or 'latest' for the newest one in output_dir.")}
    )
    checkpoints_total_limit: int | None = field(
        default=None,
        metadata={
            "help": (
                "Keep only the newest N step_N/epoch_N checkpoints; older ones are deleted once a new one is written."
            )
        },
    )
    save_adapter_only: bool = field(
        default=False,
        metadata={
            "help": (
                "The final model, best/ and every checkpoint hold only MP-IQE's trained weights (tens of MB), not the frozen "
                "CLIP: the model is an adapter of the base CLIP, a checkpoint resumes on the same CLIP."
            )
        },
    )
    shuffle_buffer_size: int | None = field(
        default=None,
        metadata={
            "help": (
                "Per-crop training: crops held in the shuffle buffer a batch is drawn from (default 8 batches). Each image is "
                "decoded once an epoch and its crops wait there, so a batch mixes crops of up to this / --num_crops images."
            )
        },
    )
    eval_every_epoch: int = field(default=1, metadata={"help": "Evaluate every N epochs (and at the end)."})
    load_best_model_at_end: bool = field(
        default=False,
        metadata={
            "help": ("Save the best-validation-SRCC model as the final model (it is always in output_dir/best).")
        },
    )
    with_tracking: bool = field(default=False, metadata={"help": "Log with accelerate trackers."})
    report_to: str = field(default="all", metadata={"help": "Trackers for --with_tracking (tensorboard, wandb, ...)."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
    hub_private_repo: bool = False

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("--output_dir must name a folder.")
        check_number("per_device_train_batch_size", self.per_device_train_batch_size, at_least=1)
        check_number("per_device_eval_batch_size", self.per_device_eval_batch_size, at_least=1)
        check_number("learning_rate", self.learning_rate, at_least=0)
        check_number("weight_decay", self.weight_decay, at_least=0)
        check_number("num_train_epochs", self.num_train_epochs, at_least=1)
        check_number("max_train_steps", self.max_train_steps, at_least=1)
        check_number("gradient_accumulation_steps", self.gradient_accumulation_steps, at_least=1)
        check_number("num_warmup_epochs", self.num_warmup_epochs, at_least=0)
        check_number("num_warmup_steps", self.num_warmup_steps, at_least=0)
        check_number("max_grad_norm", self.max_grad_norm, above=0)
        check_number("eval_every_epoch", self.eval_every_epoch, at_least=1)
        if self.push_to_hub and self.hub_model_id is None:
            raise ValueError("--push_to_hub needs --hub_model_id.")
        if self.checkpointing_steps is not None and self.checkpointing_steps != "epoch":
            if not self.checkpointing_steps.isdigit() or int(self.checkpointing_steps) < 1:
                raise ValueError("--checkpointing_steps must be 'epoch' or a positive integer.")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"--checkpoints_total_limit must be at least 1, got {self.checkpoints_total_limit}.")
        if self.shuffle_buffer_size is not None and self.shuffle_buffer_size < 1:
            raise ValueError(f"--shuffle_buffer_size must be positive, got {self.shuffle_buffer_size}.")
        if self.with_tracking and self.report_to not in ("all", "none"):
            from accelerate.utils import is_tensorboard_available, is_wandb_available

            available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
            requested = [name.strip() for name in self.report_to.split(",")]
            missing = [name for name in requested if name in available and not available[name]]
            if missing:
                raise ValueError(
                    f"--report_to {self.report_to}: {', '.join(missing)} is not installed (pip install it)."
                )


def parse_args(argv=None):
    parser = HfArgumentParser(
        (DataArguments, ModelArguments, TrainArguments),
        description="Train MP-IQE with Accelerate (the MP-IQE paper's recipe by default).",
    )
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def config_overrides(text: str | None, clip_config: CLIPConfig) -> dict:
    """`key=value,...` -> MPIQEConfig values, converted by `PretrainedConfig.update_from_string` (which names an
    unknown key or a value of the wrong type)."""
    if not text:
        return {}
    probe = MPIQEConfig(clip_config=clip_config.to_dict(), visual_prompt_depth=1, window_size=1, decoder_heads=1)
    malformed = [item for item in text.split(",") if "=" not in item]
    if malformed:
        raise ValueError(
            f"--config_overrides {text!r}: {malformed[0]!r} is not field=value; write 'field=value,field=value' with "
            "MPIQEConfig fields."
        )
    try:
        probe.update_from_string(text)
    except ValueError as err:
        raise ValueError(
            f"--config_overrides {text!r}: {err}; write 'field=value,field=value' with MPIQEConfig fields and values "
            "of their types."
        ) from err
    keys = [item.split("=", 1)[0].strip() for item in text.split(",") if item.strip()]
    return {key: getattr(probe, key) for key in keys}


def build_model(model_args: ModelArguments, mos_range, score_loss_weight) -> MPIQEModel:
    data_fields = dict(
        mos_min=mos_range.mos_min,
        mos_max=mos_range.mos_max,
        mos_higher_is_better=bool(mos_range.higher_is_better),
        score_loss_weight=score_loss_weight,
        distortion_loss_weight=model_args.distortion_loss_weight,
    )
    if model_args.model_name_or_path is not None:
        # Fine-tuning: the trained prompts and heads, the new dataset's score range and loss weights.
        model = MPIQEModel.from_pretrained(model_args.model_name_or_path)
        for key, value in data_fields.items():
            setattr(model.config, key, value)
        return model
    if model_args.clip_config_name == "tiny":
        clip_config = hub_clip_config()
    elif model_args.clip_config_name is not None:
        try:
            clip_config = CLIPConfig.from_pretrained(model_args.clip_config_name)
        except OSError as err:
            raise ValueError(f"--clip_config_name {model_args.clip_config_name}: {err}") from err
    else:
        clip_config = CLIPConfig.from_pretrained(model_args.clip_model_name_or_path)
    overrides = config_overrides(model_args.config_overrides, clip_config)
    data_fields.update(overrides)
    vision = clip_config.vision_config
    # The paper prompts every layer (depth 12 of ViT-B/16); a smaller CLIP is prompted in all of its layers.
    data_fields.setdefault("visual_prompt_depth", min(12, vision.num_hidden_layers))
    data_fields.setdefault("window_size", min(4, vision.image_size // vision.patch_size))
    if clip_config.projection_dim % 8 != 0:
        data_fields.setdefault("decoder_heads", 1)
    if model_args.clip_config_name is not None:
        return MPIQEModel(MPIQEConfig(clip_config=clip_config.to_dict(), **data_fields))
    return MPIQEModel.from_clip(model_args.clip_model_name_or_path, **data_fields)


def check_sources(model_args: ModelArguments):
    """Fails in seconds, before anything is written, when a model the run needs cannot be had."""
    if model_args.model_name_or_path is not None:
        check_model_source(model_args.model_name_or_path, "the MP-IQE model to fine-tune")
    elif model_args.clip_config_name not in (None, "tiny") and not Path(model_args.clip_config_name).is_file():
        check_model_source(model_args.clip_config_name, "the CLIP configuration (--clip_config_name)")
    elif model_args.clip_config_name is None:
        alternatives = [
            f"for a run offline in minutes, --clip_model_name_or_path {STANDIN_CLIP_NAME} (a small "
            "stand-in shipped with mpiqe_hf, not CLIP)",
            "for a look at the training loop without pretrained weights, --clip_config_name tiny (a random CLIP)",
        ]
        check_model_source(
            model_args.clip_model_name_or_path, "the CLIP model (with its tokenizer)", alternatives=alternatives
        )


def recipe_defaults(ds):
    """`(name, batch size, lambda_2)` of the paper for the dataset `ds` (64 and 0.5 for other datasets)."""
    info = iqa_info(ds)
    return info.name, info.batch_size or 64, info.score_loss_weight or 0.5


def narrow_text_space_advice(learning_rate: float, text_width: int) -> str | None:
    """
    The warning for training at the paper's learning rate on a CLIP whose image-text space (`projection_dim`) is
    narrower than ViT-B/16's, with a learning rate for its width (1e-3 x 64 / width), or None.
    """
    if learning_rate != PAPER_LEARNING_RATE or text_width >= PAPER_TEXT_WIDTH:
        return None
    suggested = f"{NARROW_LEARNING_RATE_AT_WIDTH_64 * 64 / text_width:.0e}".replace("e-0", "e-")
    return (
        f"The paper's learning rate {PAPER_LEARNING_RATE:g} is set for ViT-B/16, whose image-text space is "
        f"{PAPER_TEXT_WIDTH} wide; this CLIP's is {text_width} wide, so each step moves MP-IQE's decoder and "
        f"score head less and training under-fits. Try --learning_rate {suggested} (docs/training.md, "
        '"Narrow CLIPs").'
    )


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints and outputs
# ---------------------------------------------------------------------------------------------------------------------


def read_training_state(checkpoint) -> dict:
    """A checkpoint's training_state.json; a ValueError naming the file when it is missing or unreadable."""
    state_file = Path(checkpoint) / TRAINING_STATE_FILE
    if not state_file.is_file():
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: not a checkpoint of this script (no {TRAINING_STATE_FILE}); "
            "pass a step_N or epoch_N folder that train.py wrote, or 'latest'."
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        int(state["completed_steps"]), int(state["epoch"]), int(state["batches_in_epoch"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{state_file}: not a training state written by train.py ({type(err).__name__}: {err}); resume from "
            "another checkpoint or start afresh with --overwrite_output_dir."
        ) from err
    return state


def _checkpoint_dirs(output_dir):
    found = []
    for path in Path(output_dir).glob("*_*"):
        match = re.fullmatch(r"(step|epoch)_(\d+)", path.name)
        if match and path.is_dir() and (path / TRAINING_STATE_FILE).is_file():
            state = read_training_state(path)
            found.append((state["completed_steps"], path.stat().st_mtime, path))
    return [path for *_, path in sorted(found)]


def resolve_checkpoint(args) -> Path | None:
    """The checkpoint folder --resume_from_checkpoint names ('latest': the newest in --output_dir), checked to hold a
    training state; None without the option."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = _checkpoint_dirs(args.output_dir) if Path(args.output_dir).is_dir() else []
        if not found:
            raise ValueError(
                f"--resume_from_checkpoint latest: no checkpoint (step_N or epoch_N folder) in {args.output_dir}; "
                "drop the option to start afresh (--overwrite_output_dir for a folder that is not empty)."
            )
        return found[-1]
    checkpoint = Path(args.resume_from_checkpoint)
    if not checkpoint.is_dir():
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: no such folder; pass a step_N or epoch_N folder that train.py "
            "wrote, or 'latest'."
        )
    read_training_state(checkpoint)
    checkpoint_weight_names(checkpoint)
    return checkpoint


def check_output_dir(args):
    """Refuses, before anything is loaded, an --output_dir that is a file, or one that is not empty (a new run would
    replace the model, results and checkpoints there) without --overwrite_output_dir or --resume_from_checkpoint;
    checks the checkpoint to resume from."""
    out = Path(args.output_dir)
    check_output_folder(out)
    resolve_checkpoint(args)
    if args.resume_from_checkpoint or args.overwrite_output_dir or not out.is_dir():
        return
    held = sorted(path.name for path in out.iterdir())
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise ValueError(
            f"--output_dir {out} is not empty ({shown}): a new run would replace what is there. Pass "
            "--overwrite_output_dir to replace it, --resume_from_checkpoint latest to continue the run that wrote it, "
            "or another --output_dir."
        )


def check_output_apart(data_args, model_args, args):
    """Refuses, before anything is loaded, an --output_dir that is, lies inside or holds a local input folder: the run
    writes config.json, model.safetensors, best/ and checkpoints there, over the model it fine-tunes or among the
    images it trains on (--overwrite_output_dir lets it)."""
    out = Path(os.path.realpath(args.output_dir))
    inputs = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--clip_model_name_or_path": model_args.clip_model_name_or_path,
        "--train_dir": data_args.train_dir,
        "--validation_dir": data_args.validation_dir,
        "--data_dir": data_args.data_dir,
    }
    for option, value in inputs.items():
        # Hub ids that are not local folders cannot be written over.
        if not value or not Path(value).is_dir():
            continue
        folder = Path(os.path.realpath(value))
        if out == folder or folder in out.parents or out in folder.parents:
            where = "is" if out == folder else "lies inside" if folder in out.parents else "holds"
            raise ValueError(
                f"--output_dir {args.output_dir} {where} {option} {value}: the run would write its model and "
                "checkpoints among its inputs; choose another --output_dir."
            )


# The options a resumed run may change: where and how often it writes, logs and uploads, and the hardware it runs on;
# every other option changes what is trained (see docs/training.md, "Resuming").
RESUMABLE_CHANGES = frozenset(
    [
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "dataloader_num_workers",
        "cache_dir",
        "verify_images",
        "per_device_eval_batch_size",
        "eval_every_epoch",
        "cpu",
        "tf32",
        "with_tracking",
        "report_to",
        "push_to_hub",
        "hub_model_id",
        "hub_token",
        "hub_private_repo",
    ]
)


def check_resumed_settings(data_args, model_args, args):
    """Refuses, before anything is loaded, to resume the run recorded in --output_dir/training_args.json with options
    outside `RESUMABLE_CHANGES` that differ from its: the run would go on silently as another, and its record be
    replaced."""
    recorded_file = Path(args.output_dir) / TRAINING_ARGS_FILE
    if not args.resume_from_checkpoint or not recorded_file.is_file():
        return
    try:
        recorded = json.loads(recorded_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{recorded_file}: not the JSON train.py writes ({err}); start afresh with --overwrite_output_dir."
        ) from None
    now = {**asdict(data_args), **asdict(model_args), **asdict(args)}
    changed = []
    for name, value in now.items():
        # The record holds the protocol and step counts the run resolved: an option left out follows them.
        resolved = name in ("split_protocol", "max_train_steps", "num_warmup_steps") and value is None
        if name in RESUMABLE_CHANGES or name not in recorded or resolved:
            continue
        value = json.loads(json.dumps(value, default=str))  # as recorded: tuples as lists
        if value != recorded[name]:
            changed.append(f"--{name} {_shown(recorded[name])} there, {_shown(value)} now")
    if changed:
        raise ValueError(
            f"--resume_from_checkpoint: the run in {args.output_dir} was trained with other options ("
            + "; ".join(changed)
            + "): resume with its options, or start a new run with --overwrite_output_dir or another --output_dir."
        )


def _shown(value) -> str:
    if value is None:
        return "unset"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def save_checkpoint(accelerator, output_dir, name, state, total_limit=None):
    """`save_state` into output_dir/name plus the loop's state; then, with `total_limit`, deletes the oldest
    checkpoints beyond it. The state file is written last: a folder without it (a save cut short) is no checkpoint."""
    path = Path(output_dir) / name
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2))
        if total_limit is not None:
            for old in _checkpoint_dirs(output_dir)[:-total_limit]:
                if old.resolve() != path.resolve():
                    shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _is_clip_weight(key: str) -> bool:
    """Whether a state-dict key (of the model or of its DDP wrapper) is one of the frozen CLIP's tensors."""
    parts = key.split(".")
    return parts[parts[0] == "module"] == "clip"


def keep_adapter_weights_only(models, weights, output_dir):
    """`save_state` pre-hook: the checkpoint's model file holds MP-IQE's trained weights, not the frozen CLIP, which
    the resumed run rebuilds from its source as the first run did (the adapter format's split, see
    `mpiqe_hf.publishing.save_adapter`)."""
    for state in weights:
        for key in [key for key in state if _is_clip_weight(key)]:
            del state[key]


def checkpoint_weight_names(checkpoint) -> set[str]:
    """The model weights' names a checkpoint holds (without DDP's `module.`); a ValueError naming the file when it
    has none or they cannot be read."""
    files = sorted(Path(checkpoint).glob("model*.safetensors"))
    if not files:
        raise ValueError(
            f"{checkpoint} has no model weights (model.safetensors): it is not a checkpoint of this script; pass a "
            "step_N or epoch_N folder that train.py wrote, or 'latest'."
        )
    try:
        with safe_open(str(files[0]), framework="pt") as f:
            saved = {key.removeprefix("module.") for key in f.keys()}  # noqa: SIM118 (a safe_open handle, no mapping)
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{files[0]}: not a readable safetensors file ({err}); resume from another checkpoint or start afresh "
            "with --overwrite_output_dir."
        ) from err
    return saved


def check_checkpoint_weights(checkpoint, model):
    """A checkpoint must hold every trained weight of `model`; an adapter-only one lacks only the frozen CLIP."""
    saved = checkpoint_weight_names(checkpoint)
    missing = sorted(name for name, p in model.named_parameters() if p.requires_grad and name not in saved)
    if missing:
        raise ValueError(
            f"{checkpoint} lacks {len(missing)} trained weight(s) of this model ({missing[0]}, ...): it "
            "was written by a run with another model configuration."
        )
    return all(not _is_clip_weight(key) for key in saved)


def save_model(accelerator, model, image_processor, directory, recorded_args, adapter_only=False):
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if adapter_only:
        save_adapter(unwrapped, directory, is_main_process=accelerator.is_main_process)
    else:
        unwrapped.save_pretrained(
            directory,
            is_main_process=accelerator.is_main_process,
            save_function=accelerator.save,
            state_dict=accelerator.get_state_dict(model),
        )
    if accelerator.is_main_process:
        image_processor.save_pretrained(directory)
        Path(directory, TRAINING_ARGS_FILE).write_text(json.dumps(recorded_args, indent=2, default=str))


def step_cost(model, accelerator, crops_per_sample, crop_size, batch_size) -> tuple[float, float]:
    """
    What a forward and backward pass costs on this machine, to say what the run will cost before it starts:
    `(seconds per pass, seconds per crop)`. A pass has a cost of its own (the prompts through the text encoder, the
    decoder's queries) beside its crops', so after one untimed pass it times a pass of one sample and one of
    `min(batch_size, 8)` samples and splits the time between the two. The RNG state is left as it was.
    """
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    model.train()

    def timed(samples):
        pixel_values = torch.randn(samples, crops_per_sample, 3, crop_size, crop_size, device=accelerator.device)
        mos = torch.rand(samples, device=accelerator.device)
        start = time.perf_counter()
        with accelerator.autocast():
            loss = model(pixel_values=pixel_values, mos=mos).loss
        loss.backward()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)
        return time.perf_counter() - start

    with torch.random.fork_rng(devices=devices):
        timed(1)
        larger = max(1, min(batch_size, 8))
        one, many = timed(1), timed(larger)
    model.zero_grad(set_to_none=True)
    if larger == 1:
        return 0.0, one / crops_per_sample
    per_crop = max(0.0, (many - one) / ((larger - 1) * crops_per_sample))
    return max(0.0, one - per_crop * crops_per_sample), per_crop


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------------------------------
# The run's parts
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The split and what the paper's recipe sets from the dataset: MOS range, batch sizes, lambda_2."""

    plan: SplitPlan
    skipped: list  # the bad rows the loaders left out, described
    mos_range: Any
    dataset_name: str
    score_loss_weight: float
    batch_size: int  # samples per process and step
    eval_batch_size: int
    samples_per_image: int  # an epoch's samples of each training image (its visits, per-crop)

    @property
    def num_train_samples(self) -> int:
        return len(self.plan.train_idx) * self.samples_per_image


@dataclass
class DataLoaders:
    train_transform: IQATransform
    train: Any  # ShuffledCropBatches (per-crop) or a DataLoader (per-image)
    eval: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader | None


@dataclass
class Schedule:
    """Steps after sharding: the global batch is batch_size x processes x accumulation samples."""

    total_batch_size: int
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int
    num_warmup_steps: int


@dataclass
class LoopState:
    """The loop's progress; `checkpoint_state` is what a checkpoint's training_state.json holds for a resume."""

    completed_steps: int = 0
    epoch: int = 0  # where the loop starts: 0, or the resumed checkpoint's epoch
    batches_in_epoch: int = 0  # batches of `epoch` already done
    best: dict = field(default_factory=lambda: {"srcc": -math.inf, "epoch": None, "step": None})
    history: list = field(default_factory=list)
    # This process's run only (not resumed):
    eval_metrics: dict = field(default_factory=dict)
    train_losses: dict = field(default_factory=lambda: {term: None for term in LOSS_TERMS})
    dropped: list = field(default_factory=list)
    batches_done: int = 0

    def checkpoint_state(self, epoch, batches_in_epoch) -> dict:
        return {
            "completed_steps": self.completed_steps,
            "epoch": epoch,
            "batches_in_epoch": batches_in_epoch,
            "best": self.best,
            "history": self.history,
        }


def make_accelerator(args: TrainArguments, per_crop: bool) -> Accelerator:
    # The seedable sampler shuffles with a generator seeded with `seed + epoch`: the same order on every process and
    # after a resume. Without CUDA, processes started by torchrun would each run alone unless forced onto the CPU.
    use_cpu = args.cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    # Per-crop batches come from a shuffle buffer, not straight from a DataLoader, so Accelerate cannot see where an
    # epoch ends; their count is a multiple of the accumulation steps instead, so that each epoch ends on a step.
    accelerator_kwargs = dict(
        cpu=use_cpu,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=not per_crop
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if args.mixed_precision is not None:
        accelerator_kwargs["mixed_precision"] = args.mixed_precision
    if args.with_tracking:
        accelerator_kwargs.update(log_with=args.report_to, project_dir=args.output_dir)
    accelerator = Accelerator(**accelerator_kwargs)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    return accelerator


def load_training_data(data_args, model_args, args, accelerator, per_crop) -> TrainingData:
    """The split (the main process builds caches first) and the recipe's values for its dataset."""
    with accelerator.main_process_first():
        plan = plan_split(data_args, seed=args.seed)
    skipped = [
        str(bad)
        for ds in {id(plan.train_ds): plan.train_ds, id(plan.eval_ds): plan.eval_ds}.values()
        for bad in skipped_samples(ds)
    ]
    if skipped:
        logger.warning(f"Skipped {len(skipped)} bad sample(s):\n  " + "\n  ".join(skipped))
    name, paper_batch, score_loss_weight = recipe_defaults(plan.train_ds)
    if model_args.score_loss_weight is not None:
        score_loss_weight = model_args.score_loss_weight
    samples_per_image = model_args.num_crops if per_crop else 1
    batch_size = args.per_device_train_batch_size
    if batch_size is None:
        batch_size = max(1, math.ceil(paper_batch / (accelerator.num_processes * args.gradient_accumulation_steps)))
    eval_batch_size = args.per_device_eval_batch_size or max(1, batch_size // samples_per_image)
    logger.info(
        f"Split protocol {plan.description}: {len(plan.train_idx)} training, {len(plan.eval_idx)} validation"
        + (f", {len(plan.test_idx)} test" if plan.test_idx is not None else "")
        + " images."
    )
    if len(plan.eval_idx) < MIN_ITEMS:  # checked now, not after hours of training
        raise ValueError(
            f"The validation split has {len(plan.eval_idx)} image(s); SRCC and PLCC need at least {MIN_ITEMS}. Give "
            "it more images (a larger --max_eval_samples, a larger dataset or --validation_dir)."
        )
    return TrainingData(
        plan,
        skipped,
        dataset_mos_range(plan.train_ds),
        name,
        score_loss_weight,
        batch_size,
        eval_batch_size,
        samples_per_image,
    )


def build_training_model(model_args, args, data: TrainingData):
    """`(model, loss_terms)`: the model to train, and which loss terms the training labels turn on."""
    model = build_model(model_args, data.mos_range, data.score_loss_weight)
    config = model.config
    if args.save_adapter_only and not config.base_model_name_or_path:
        raise ValueError(
            "--save_adapter_only saves the model as an adapter of a pretrained base CLIP, which this "
            "model lacks (a random CLIP from --clip_config_name): drop --save_adapter_only or train from "
            "--clip_model_name_or_path."
        )
    loss_terms = {
        "scene": bool(config.use_scene_prompts),
        "distortion": bool(config.use_distortion_prompts),
        "score": True,
    }
    coverage = label_coverage(data.plan.train_ds, data.plan.train_idx)
    for term, column in (("scene", "scene"), ("distortion", "distortion")):
        if loss_terms[term] and coverage[column] == 0:
            loss_terms[term] = False
            logger.warning(
                f"\n{'!' * 100}\n!! The training data carry no {column} labels: the {term} loss is OFF in this run, "
                f"so it is an ablation, not the paper's recipe.\n!! LIQE's label files carry scene and distortion "
                f"labels for the paper's six datasets: --label_file <LIQE IQA_Database folder>.\n{'!' * 100}"
            )
    logger.info(
        "Loss terms: "
        + ", ".join(f"{t} {'on' if on else 'OFF'}" for t, on in loss_terms.items())
        + f" ({coverage['scene']} images with scene labels, {coverage['distortion']} with distortion labels, "
        f"of {len(data.plan.train_idx)}); lambda_1 {config.distortion_loss_weight}, lambda_2 "
        f"{config.score_loss_weight}; native MOS range {tuple(data.mos_range)}."
    )
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, loss_terms


def build_dataloaders(data_args, model_args, args, accelerator, data, image_processor, config, per_crop):
    """The training batches (per-crop: through a shuffle buffer, its image loader prepared here) and the evaluation
    loaders (grid crops)."""
    plan = data.plan
    classes = dict(scene_classes=config.scene_classes, distortion_classes=config.distortion_classes)
    # Per-crop: an image is decoded once an epoch and yields the crops of all its visits, which a shuffle buffer
    # deals into batches of crops of many images (ShuffledCropBatches). Per-image: a sample is already an image.
    train_transform = IQATransform(
        plan.train_ds,
        image_processor,
        random_crops=True,
        seed=args.seed,
        crops_per_sample=1 if per_crop else model_args.num_crops,
        visits=model_args.num_crops if per_crop else None,
        horizontal_flip=args.horizontal_flip,
        skip_bad_samples=True,
        **classes,
    )
    loader_kwargs = dict(collate_fn=collate_iqa_batch, num_workers=data_args.dataloader_num_workers)
    if per_crop:
        images = make_samples(plan.train_idx).with_transform(train_transform)
        image_sampler = EpochShuffleSampler(len(images), seed=args.seed)
        image_loader = accelerator.prepare(
            torch.utils.data.DataLoader(
                images,
                sampler=image_sampler,
                batch_size=max(1, data.batch_size // model_args.num_crops),
                collate_fn=keep_samples,
                num_workers=data_args.dataloader_num_workers,
            )
        )
        train_dataloader = ShuffledCropBatches(
            image_loader,
            image_sampler,
            visits=model_args.num_crops,
            batch_size=data.batch_size,
            buffer_size=args.shuffle_buffer_size,
            seed=args.seed,
            process_index=accelerator.process_index,
            batches_multiple_of=args.gradient_accumulation_steps,
        )
    else:
        train_dataloader = torch.utils.data.DataLoader(
            iqa_split(plan.train_ds, plan.train_idx, train_transform),
            shuffle=True,
            batch_size=data.batch_size,
            **loader_kwargs,
        )

    def evaluation_loader(ds, indices):
        transform = IQATransform(
            ds, image_processor, random_crops=False, skip_bad_samples=data_args.skip_bad_samples, **classes
        )
        return torch.utils.data.DataLoader(
            iqa_split(ds, indices, transform), batch_size=data.eval_batch_size, **loader_kwargs
        )

    eval_dataloader = evaluation_loader(plan.eval_ds, plan.eval_idx)
    test_dataloader = evaluation_loader(plan.test_ds, plan.test_idx) if plan.test_idx is not None else None
    return DataLoaders(train_transform, train_dataloader, eval_dataloader, test_dataloader)


def plan_schedule(args, accelerator, data: TrainingData, loaders: DataLoaders, per_crop) -> Schedule:
    """Optimizer steps per epoch and in all, epochs, warm-up steps (clamped into the run)."""
    total_batch_size = data.batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    if per_crop:  # this process's share of the images, in batches of crops (a multiple of the accumulation steps)
        steps_per_epoch = len(loaders.train) // args.gradient_accumulation_steps
    else:
        steps_per_epoch = math.ceil(data.num_train_samples / total_batch_size)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    num_warmup_steps = args.num_warmup_steps
    if num_warmup_steps is None:
        num_warmup_steps = int(round(args.num_warmup_epochs * steps_per_epoch))
    if num_warmup_steps >= max_train_steps:
        clamped = int(round(PAPER_WARMUP_SHARE * max_train_steps))
        logger.warning(
            f"The warm-up ({num_warmup_steps} steps) is not shorter than the run ({max_train_steps} "
            f"steps): the learning rate would never reach {args.learning_rate:g}. Warm-up clamped to "
            f"{clamped} steps (the paper's 5/30 of the run)."
        )
        num_warmup_steps = clamped
    return Schedule(total_batch_size, steps_per_epoch, max_train_steps, num_epochs, num_warmup_steps)


def prepare_for_training(accelerator, model, optimizer, loaders: DataLoaders, lr_scheduler, per_crop):
    """`accelerator.prepare` of the model, optimizer, loaders and scheduler (per-crop: the image loader is prepared
    already); returns the prepared model, optimizer and scheduler and updates `loaders`."""
    if per_crop:
        model, optimizer, loaders.eval, lr_scheduler = accelerator.prepare(
            model, optimizer, loaders.eval, lr_scheduler
        )
    else:
        model, optimizer, loaders.train, loaders.eval, lr_scheduler = accelerator.prepare(
            model, optimizer, loaders.train, loaders.eval, lr_scheduler
        )
    if loaders.test is not None:
        loaders.test = accelerator.prepare(loaders.test)
    return model, optimizer, lr_scheduler


def log_training_plan(accelerator, model_args, data: TrainingData, schedule: Schedule, cost, per_crop):
    """What the run will do and cost, from `cost` = [`step_cost`]'s `(seconds per pass, seconds per crop)`, before
    it starts."""
    crops_per_sample = 1 if per_crop else model_args.num_crops
    crops_per_step = schedule.total_batch_size * crops_per_sample
    pass_seconds, crop_seconds = cost
    passes = schedule.max_train_steps * accelerator.gradient_accumulation_steps
    estimate = passes * (pass_seconds + crop_seconds * data.batch_size * crops_per_sample)
    logger.info(
        f"***** Running training *****\n"
        f"  {len(data.plan.train_idx)} images x {data.samples_per_image} sample(s) = {data.num_train_samples} samples "
        f"an epoch ({model_args.crop_sampling}); {schedule.num_epochs} epoch(s) of {schedule.steps_per_epoch} "
        f"optimizer steps = {schedule.max_train_steps} steps, warm-up {schedule.num_warmup_steps}\n"
        f"  batch: {data.batch_size} per process x {accelerator.num_processes} process(es) x "
        f"{accelerator.gradient_accumulation_steps} accumulation = {schedule.total_batch_size} samples "
        f"({crops_per_step} crops) a step\n"
        f"  cost: about {_duration(estimate)} of training on {accelerator.device} (measured forward+backward: "
        f"{pass_seconds:.3g} s a pass + {crop_seconds:.3g} s a crop), plus evaluation"
    )


def start_outputs(data_args, model_args, args, accelerator, data, loss_terms, schedule: Schedule) -> dict:
    """The output folder and the trackers; returns the arguments recorded with every saved model."""
    recorded_args = {
        **asdict(data_args),
        **asdict(model_args),
        **asdict(args),
        "split_protocol": data.plan.protocol,
        "split_description": data.plan.description,
        "loss_terms": loss_terms,
        "num_processes": accelerator.num_processes,
        "total_train_batch_size": schedule.total_batch_size,
        "max_train_steps": schedule.max_train_steps,
        "num_warmup_steps": schedule.num_warmup_steps,
    }
    recorded_args.pop("hub_token")
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    if args.with_tracking:
        tracked = {k: v for k, v in recorded_args.items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("mpiqe", tracked)
    return recorded_args


def resume(args, accelerator, model, max_train_steps) -> LoopState:
    """The loop's state: fresh, or loaded with `load_state` from --resume_from_checkpoint."""
    checkpoint = resolve_checkpoint(args)
    if checkpoint is None:
        return LoopState()
    accelerator.print(f"Resumed from checkpoint: {checkpoint}")
    # An adapter-only checkpoint (--save_adapter_only) lacks the frozen CLIP; this run built it as the first did.
    adapter_only = check_checkpoint_weights(checkpoint, accelerator.unwrap_model(model))
    try:
        accelerator.load_state(str(checkpoint), strict=not adapter_only)
    except (RuntimeError, OSError, EOFError, KeyError, pickle.UnpicklingError, SafetensorError) as err:
        # load_state's messages name tensors, not the option: a size mismatch means another model configuration.
        # Their first two lines: what failed to load, and the first tensor that did not fit.
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:2]) or type(err).__name__
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: cannot be loaded into this run ({detail}); it was written by "
            "a run with other options (model, optimizer or processes): resume with that run's options, or start "
            "afresh with --overwrite_output_dir."
        ) from err
    saved = read_training_state(checkpoint)
    state = LoopState(
        completed_steps=saved["completed_steps"], epoch=saved["epoch"], batches_in_epoch=saved["batches_in_epoch"]
    )
    state.best = saved.get("best", state.best)
    state.history = saved.get("history", [])
    if state.completed_steps >= max_train_steps:
        logger.info(f"The checkpoint has {state.completed_steps} of {max_train_steps} steps: nothing left to train.")
    return state


def train_one_epoch(
    epoch,
    state: LoopState,
    args,
    accelerator,
    model,
    optimizer,
    lr_scheduler,
    loaders: DataLoaders,
    schedule: Schedule,
    progress_bar,
    per_crop,
) -> int:
    """Trains `epoch` (from where a resume left it) until it ends or the run's last step; returns the batches of the
    epoch done. Sets `state.train_losses` to the epoch's mean of each loss term."""
    model.train()
    # Sums and counts of each loss term over this epoch's batches (a term is absent when no sample has its label).
    term_sums = torch.zeros(len(LOSS_TERMS), device=accelerator.device)
    term_counts = torch.zeros(len(LOSS_TERMS), device=accelerator.device)
    batches_in_epoch = state.batches_in_epoch if epoch == state.epoch else 0
    # The shuffling order and the random crops depend on (seed, epoch) only; the dataloader passes the epoch to
    # its sampler (Accelerate's seedable sampler, or the image sampler and the shuffle buffer of per-crop batches).
    loaders.train_transform.set_epoch(epoch)
    if per_crop:
        loaders.train.set_epoch(epoch)
        dataloader = loaders.train.iterate(batches_in_epoch)
    else:
        dataloader = loaders.train
        if batches_in_epoch:
            dataloader = accelerator.skip_first_batches(loaders.train, batches_in_epoch)
        dataloader.set_epoch(epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    checkpoint_every = int(args.checkpointing_steps) if (args.checkpointing_steps or "").isdigit() else None
    for batch in dataloader:
        batch.pop("index")
        state.dropped.extend(batch.pop("skipped"))
        with accelerator.accumulate(model):
            outputs = model(**batch)
            loss = outputs.loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        terms = {
            term: getattr(outputs, term).detach().float().item()
            for term in LOSS_TERMS
            if getattr(outputs, term, None) is not None
        }
        for position, term in enumerate(LOSS_TERMS):
            if term in terms:
                term_sums[position] += terms[term]
                term_counts[position] += 1
        batches_in_epoch += 1
        state.batches_done += 1
        if accelerator.sync_gradients:
            state.completed_steps += 1
            log_step(state, args, accelerator, lr_scheduler, progress_bar, terms)
            if checkpoint_every and state.completed_steps % checkpoint_every == 0:
                save_checkpoint(
                    accelerator,
                    args.output_dir,
                    f"step_{state.completed_steps}",
                    state.checkpoint_state(epoch, batches_in_epoch),
                    args.checkpoints_total_limit,
                )
        if state.completed_steps >= schedule.max_train_steps:
            break
    sums, counts = (accelerator.reduce(t, reduction="sum").tolist() for t in (term_sums, term_counts))
    if any(counts):
        state.train_losses = {
            term: total / count if count else None for term, total, count in zip(LOSS_TERMS, sums, counts)
        }
    return batches_in_epoch


def log_step(state: LoopState, args, accelerator, lr_scheduler, progress_bar, terms):
    """An optimizer step's loss terms and learning rate: on the progress bar and, with --with_tracking, logged."""
    progress_bar.update(1)
    progress_bar.set_postfix(
        {**{SHORT_NAMES[t]: f"{v:.4f}" for t, v in terms.items()}, "lr": f"{lr_scheduler.get_last_lr()[0]:.2e}"}
    )
    if args.with_tracking:
        logs = {f"train/{term}": value for term, value in terms.items()}
        logs["train/lr"] = lr_scheduler.get_last_lr()[0]
        accelerator.log(logs, step=state.completed_steps)


def evaluate_epoch(epoch, state: LoopState, args, accelerator, model, loaders, image_processor, recorded_args):
    """Validation after `epoch`: logged, added to the history, and saved into output_dir/best when it is the best."""
    state.eval_metrics = evaluate_model(model, loaders.eval, accelerator)
    metrics, losses = state.eval_metrics, state.train_losses
    described = ", ".join(f"{SHORT_NAMES[t]} {v:.4f}" for t, v in losses.items() if v is not None)
    logger.info(f"epoch {epoch}: train {described}; validation SRCC {metrics['srcc']:.4f}, PLCC {metrics['plcc']:.4f}")
    state.history.append(
        {
            "epoch": epoch,
            "step": state.completed_steps,
            **{f"train_{t}": v for t, v in losses.items()},
            "srcc": metrics["srcc"],
            "plcc": metrics["plcc"],
        }
    )
    if args.with_tracking:
        epoch_logs = {f"train/epoch_{t}": v for t, v in losses.items() if v is not None}
        accelerator.log(
            {"eval/srcc": metrics["srcc"], "eval/plcc": metrics["plcc"], "epoch": epoch, **epoch_logs},
            step=state.completed_steps,
        )
    if metrics["srcc"] > state.best["srcc"]:
        state.best = {"srcc": metrics["srcc"], "plcc": metrics["plcc"], "epoch": epoch, "step": state.completed_steps}
        save_model(
            accelerator,
            model,
            image_processor,
            os.path.join(args.output_dir, "best"),
            recorded_args,
            args.save_adapter_only,
        )


def finish(
    state: LoopState,
    data_args,
    model_args,
    args,
    accelerator,
    model,
    loaders,
    image_processor,
    data,
    schedule: Schedule,
    loss_terms,
    recorded_args,
) -> dict:
    """The final model (the best one with --load_best_model_at_end), its results (+ the test part's), the result
    files and the push to the Hub."""
    if args.load_best_model_at_end and state.best["epoch"] is not None and state.best["step"] != state.completed_steps:
        accelerator.wait_for_everyone()
        best_model = MPIQEModel.from_pretrained(os.path.join(args.output_dir, "best"))
        accelerator.unwrap_model(model).load_state_dict(best_model.state_dict())
        state.eval_metrics = evaluate_model(model, loaders.eval, accelerator)
    elif not state.eval_metrics:  # a finished run resumed from its last checkpoint: nothing trained or evaluated yet
        state.eval_metrics = evaluate_model(model, loaders.eval, accelerator)
    save_model(accelerator, model, image_processor, args.output_dir, recorded_args, args.save_adapter_only)

    dropped = [error for errors in gather_object([state.dropped]) for error in errors]
    batches_per_process = accelerator.gather(torch.tensor([state.batches_done], device=accelerator.device)).tolist()
    plan = data.plan
    results = dict(state.eval_metrics)
    results.update({f"train_{term}": value for term, value in state.train_losses.items()})
    results.update(
        epoch=state.history[-1]["epoch"] if state.history else None,
        step=state.completed_steps,
        max_train_steps=schedule.max_train_steps,
        steps_per_epoch=schedule.steps_per_epoch,
        total_train_batch_size=schedule.total_batch_size,
        best_srcc=state.best["srcc"] if state.best["epoch"] is not None else None,
        best_epoch=state.best["epoch"],
        num_train_samples=len(plan.train_idx),
        num_eval_samples=len(plan.eval_idx),
        crop_sampling=model_args.crop_sampling,
        num_train_samples_per_epoch=data.num_train_samples,
        dataset=data.dataset_name,
        split_protocol=plan.protocol,
        split_description=plan.description,
        split_index=data_args.split_index,
        train_fraction=data_args.train_fraction,
        loss_terms=loss_terms,
        num_processes=accelerator.num_processes,
        batches_per_process=batches_per_process,
        skipped_samples=data.skipped,
        dropped_samples=len(dropped),
        dropped_sample_errors=dropped,
    )
    if loaders.test is not None:
        test_metrics = evaluate_model(model, loaders.test, accelerator)
        results.update({f"test_{key}": value for key, value in test_metrics.items()})
        logger.info(f"test SRCC {test_metrics['srcc']:.4f}, PLCC {test_metrics['plcc']:.4f}")
    if accelerator.is_main_process:
        Path(args.output_dir, "all_results.json").write_text(json.dumps(results, indent=2))
        # Every evaluation's validation metrics, by epoch: run_protocol.py reports the best epoch from it.
        Path(args.output_dir, "eval_history.json").write_text(json.dumps(state.history, indent=2))
        if args.push_to_hub:
            push_results(
                args,
                accelerator,
                model,
                image_processor,
                data,
                schedule,
                results,
                model_args.crop_sampling,
                tested=loaders.test is not None,
            )
    accelerator.wait_for_everyone()
    return results


def push_results(args, accelerator, model, image_processor, data, schedule, results, crop_sampling, tested):
    """`push_to_hub` of the final model, its evaluation in the model card."""
    # The reported part: LIQE's test part, else the validation (held-out) part.
    prefix = "test_" if tested else ""
    evaluation = {
        "dataset": data.dataset_name,
        "split": f"{data.plan.description}, {data.plan.held_out[2]} part",
        **{key: results[prefix + key] for key in ("srcc", "plcc", "krcc", "rmse")},
    }
    accelerator.unwrap_model(model).push_to_hub(
        args.hub_model_id,
        evaluation_results=[evaluation],
        image_processor=image_processor,
        adapter_only=args.save_adapter_only,
        commit_message="Training finished",
        private=args.hub_private_repo,
        token=args.hub_token,
        training_recipe=dict(
            learning_rate=args.learning_rate,
            num_train_epochs=schedule.num_epochs,
            max_train_steps=schedule.max_train_steps,
            total_train_batch_size=schedule.total_batch_size,
            crop_sampling=crop_sampling,
        ),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def main(argv=None):
    data_args, model_args, args = parse_args(argv)
    check_output_apart(data_args, model_args, args)
    check_output_dir(args)
    check_resumed_settings(data_args, model_args, args)
    data_args.check_folders()
    check_sources(model_args)
    per_crop = model_args.crop_sampling == "per_crop"
    accelerator = make_accelerator(args, per_crop)
    ampere = accelerator.device.type == "cuda" and torch.cuda.get_device_capability(accelerator.device)[0] >= 8
    if args.tf32 and ampere:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        logger.info("TF32 matrix products on (--no_tf32 to turn them off).")
    set_seed(args.seed)

    # Data and model; crops have the CLIP input size.
    data = load_training_data(data_args, model_args, args, accelerator, per_crop)
    model, loss_terms = build_training_model(model_args, args, data)
    crop_size = model.config.clip_config.vision_config.image_size
    # Saved with the model: the pipeline and mpiqe-score then see images at the scale training saw them.
    image_processor = MPIQEImageProcessor(
        crop_size={"height": crop_size, "width": crop_size},
        num_crops=model_args.eval_num_crops or model_args.num_crops,
        max_image_size=data_args.resolved_max_image_size,
    )
    loaders = build_dataloaders(
        data_args, model_args, args, accelerator, data, image_processor, model.config, per_crop
    )

    # Optimizer and schedule.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = plan_schedule(args, accelerator, data, loaders, per_crop)
    advice = narrow_text_space_advice(args.learning_rate, model.config.clip_config.projection_dim)
    if advice is not None:
        logger.warning(advice)
    lr_scheduler = get_cosine_schedule_with_warmup(
        optimizer,
        num_warmup_steps=schedule.num_warmup_steps * accelerator.num_processes,
        num_training_steps=schedule.max_train_steps * accelerator.num_processes,
    )
    model.to(accelerator.device)
    cost = step_cost(model, accelerator, 1 if per_crop else model_args.num_crops, crop_size, data.batch_size)
    model, optimizer, lr_scheduler = prepare_for_training(
        accelerator, model, optimizer, loaders, lr_scheduler, per_crop
    )
    batches_per_epoch = len(loaders.train)
    if batches_per_epoch != schedule.steps_per_epoch * args.gradient_accumulation_steps:
        logger.warning(
            f"{batches_per_epoch} batches per process and epoch, {schedule.steps_per_epoch} steps expected."
        )
    if args.save_adapter_only:
        accelerator.register_save_state_pre_hook(keep_adapter_weights_only)
    log_training_plan(accelerator, model_args, data, schedule, cost, per_crop)
    recorded_args = start_outputs(data_args, model_args, args, accelerator, data, loss_terms, schedule)

    # Resume, then one epoch after another: train, evaluate, checkpoint.
    state = resume(args, accelerator, model, schedule.max_train_steps)
    progress_bar = tqdm(range(schedule.max_train_steps), disable=not accelerator.is_local_main_process)
    progress_bar.update(state.completed_steps)
    for epoch in range(state.epoch, schedule.num_epochs):
        if state.completed_steps >= schedule.max_train_steps:
            break
        batches_in_epoch = train_one_epoch(
            epoch, state, args, accelerator, model, optimizer, lr_scheduler, loaders, schedule, progress_bar, per_crop
        )
        finished = state.completed_steps >= schedule.max_train_steps or epoch + 1 == schedule.num_epochs
        if (epoch + 1) % args.eval_every_epoch == 0 or finished:
            evaluate_epoch(epoch, state, args, accelerator, model, loaders, image_processor, recorded_args)
        if args.checkpointing_steps == "epoch":
            ended = batches_in_epoch >= batches_per_epoch
            saved = state.checkpoint_state(epoch + 1 if ended else epoch, 0 if ended else batches_in_epoch)
            save_checkpoint(accelerator, args.output_dir, f"epoch_{epoch}", saved, args.checkpoints_total_limit)
    progress_bar.close()

    results = finish(
        state,
        data_args,
        model_args,
        args,
        accelerator,
        model,
        loaders,
        image_processor,
        data,
        schedule,
        loss_terms,
        recorded_args,
    )
    accelerator.print(json.dumps({k: results[k] for k in ("srcc", "plcc", "step") if k in results}))
    for tracker in accelerator.trackers:  # not end_training(): it would destroy the process group (see __main__)
        tracker.finish()
    return results


if __name__ == "__main__":
    status = run_script(
        main,
        prog="train.py",
        interrupted=(
            "interrupted: the checkpoints written so far stay in --output_dir (--checkpointing_steps N or epoch "
            "writes them); continue with --resume_from_checkpoint latest"
        ),
    )
    if status == 0 and torch.distributed.is_initialized():
        # Everything is written. Tearing down a gloo process group can hang or abort a finished process: freeing it
        # joins its worker threads while holding the GIL, which a worker may need to free its last collective's
        # tensors (seen in 1 of ~10 two-process CPU runs). Leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(status)
