#!/usr/bin/env python
"""Train MP-IQE (multi-modal prompt learning on a frozen CLIP) for blind image quality assessment with Accelerate.

    accelerate launch examples/train.py                      # embedded synthetic dataset, paper recipe
    accelerate launch examples/train.py --dataset_name koniq10k --data_dir /data/koniq10k \
        --label_file /data/LIQE/IQA_Database/koniq-10k --output_dir mpiqe-koniq

Defaults follow the paper (Adam, lr 3e-5, 5 warm-up epochs then cosine, 30 epochs, 8 random crops, batch 64 or 32
for LIVE/CSIQ/BID, lambda_2 0.1 for LIVE/CSIQ else 0.5). See docs/training.md for every dataset and protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import CLIPConfig, get_cosine_schedule_with_warmup

from mpiqe_hf import MPIQEConfig, MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.data import (
    dataset_mos_range,
    get_dataset_spec,
    iqa_info,
    liqe_splits,
    load_iqa_dataset,
    paper_splits,
    skipped_samples,
    subsample,
)
from mpiqe_hf.data.specs import canonical_dataset_name
from mpiqe_hf.training import EpochShuffleSampler, IQATrainingDataset, collate_iqa_batch, evaluate_model

logger = get_logger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch16"
TRAINING_STATE_FILE = "training_state.json"
TRAINING_ARGS_FILE = "training_args.json"


def tiny_clip_config() -> CLIPConfig:
    """A tiny random CLIP (hidden 32, 2+2 layers, 30-px images, 2-px patches) for smoke tests and CPU demos."""
    return CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=99,
            max_position_embeddings=77, bos_token_id=56, eos_token_id=57, pad_token_id=57,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
            patch_size=2,
        ),
        projection_dim=32,
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train MP-IQE with Accelerate (the MP-IQE paper's recipe by default).")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="Built-in name (koniq10k, kadid10k, live, csiq, livec, bid, synthetic), a folder with "
                           "metadata.csv, a save_to_disk folder or a Hub dataset. Default: synthetic (embedded).")
    data.add_argument("--dataset_config_name", type=str, default=None, help="Hub dataset configuration.")
    data.add_argument("--dataset_split", type=str, default=None, help="Split of a Hub dataset to load (e.g. train).")
    data.add_argument("--data_dir", type=str, default=None, help="Image root of a built-in dataset.")
    data.add_argument("--label_file", type=str, default=None,
                      help="A LIQE label file (*_clip.txt) or LIQE database folder; enables LIQE's splits2/<k>.")
    data.add_argument("--train_dir", type=str, default=None, help="Folder with metadata.csv and the training images.")
    data.add_argument("--validation_dir", type=str, default=None, help="Folder with metadata.csv for validation.")
    data.add_argument("--cache_dir", type=str, default=None, help="Cache for the synthetic dataset and Hub downloads.")
    data.add_argument("--split_protocol", choices=["auto", "paper", "liqe", "none"], default="auto",
                      help="paper: 80/20 random split (content-disjoint for synthetic datasets); liqe: LIQE's "
                           "splits2/<k> train/val/test; none: train on everything given, validate on --validation_dir."
                           " auto: liqe with --label_file, none with --validation_dir, paper otherwise.")
    data.add_argument("--split_index", type=int, default=1, help="Which of the 10 splits (1..10).")
    data.add_argument("--split_seed", type=int, default=0, help="Seed of the paper splits (see paper_splits).")
    data.add_argument("--split_by_image", action="store_true",
                      help="Paper splits at random over images even for synthetic datasets, whose splits are "
                           "otherwise disjoint by reference content (the test images' contents are never trained on).")
    data.add_argument("--train_fraction", type=float, default=1.0,
                      help="Use this fraction of the training split (0.2/0.4/0.6 for the data-efficiency study).")
    data.add_argument("--max_train_samples", type=int, default=None, help="Truncate the training split (debugging).")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Truncate the validation split (debugging).")
    data.add_argument("--mos_range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                      help="Native MOS range of --train_dir/--validation_dir folders (default: from the data).")
    data.add_argument("--lower_is_better", action="store_true", help="Folder MOS are DMOS (lower = better).")
    data.add_argument("--skip_bad_samples", action="store_true",
                      help="Leave out bad rows (missing/unreadable images, bad MOS, unknown labels) and report them; "
                           "implies --verify_images.")
    data.add_argument("--verify_images", action="store_true", help="Decode every image before training.")
    data.add_argument("--dataloader_num_workers", type=int, default=min(4, os.cpu_count() or 1))

    model = parser.add_argument_group("model")
    model.add_argument("--clip_model_name_or_path", type=str, default=DEFAULT_CLIP,
                       help="Hub id or local folder holding a CLIPModel and its tokenizer.")
    model.add_argument("--clip_config_name", type=str, default=None,
                       help="Random-weight CLIP instead of pretrained: 'tiny', or a CLIPConfig JSON file / folder. "
                            "Class names then use placeholder token ids (no tokenizer).")
    model.add_argument("--config_overrides", type=str, default=None,
                       help="MPIQEConfig overrides, e.g. 'visual_prompt_depth=1,text_prompt_length=4'.")
    model.add_argument("--num_crops", type=int, default=8, help="Random crops per image in training.")
    model.add_argument("--eval_num_crops", type=int, default=None, help="Grid crops in evaluation (default num_crops).")
    model.add_argument("--score_loss_weight", type=float, default=None,
                       help="lambda_2 (default: 0.1 for LIVE/CSIQ, else 0.5).")
    model.add_argument("--distortion_loss_weight", type=float, default=1.0, help="lambda_1.")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", type=str, default="mpiqe-output")
    train.add_argument("--per_device_train_batch_size", type=int, default=None,
                       help="Default: 32 for LIVE/CSIQ/BID, else 64 (the paper's batch).")
    train.add_argument("--per_device_eval_batch_size", type=int, default=None, help="Default: the train batch size.")
    train.add_argument("--learning_rate", type=float, default=3e-5)
    train.add_argument("--weight_decay", type=float, default=0.0)
    train.add_argument("--num_train_epochs", type=int, default=30)
    train.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--num_warmup_epochs", type=float, default=5.0)
    train.add_argument("--num_warmup_steps", type=int, default=None, help="Overrides --num_warmup_epochs.")
    train.add_argument("--max_grad_norm", type=float, default=None)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                       help="Overrides the `accelerate launch` setting.")
    train.add_argument("--checkpointing_steps", type=str, default=None,
                       help="'epoch' or a number of optimizer steps: save_state into output_dir/epoch_N or step_N.")
    train.add_argument("--resume_from_checkpoint", type=str, default=None,
                       help="A step_N/epoch_N folder, or 'latest' for the newest one in output_dir.")
    train.add_argument("--eval_every_epoch", type=int, default=1, help="Evaluate every N epochs (and at the end).")
    train.add_argument("--load_best_model_at_end", action="store_true",
                       help="Save the best-validation-SRCC model as the final model (it is always in output_dir/best).")
    train.add_argument("--with_tracking", action="store_true", help="Log with accelerate trackers.")
    train.add_argument("--report_to", type=str, default="all", help="Trackers for --with_tracking (tensorboard, ...).")
    train.add_argument("--push_to_hub", action="store_true")
    train.add_argument("--hub_model_id", type=str, default=None)
    train.add_argument("--hub_token", type=str, default=None)
    train.add_argument("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)

    if args.push_to_hub and args.hub_model_id is None:
        parser.error("--push_to_hub needs --hub_model_id.")
    if args.train_dir is None and args.validation_dir is not None:
        parser.error("--validation_dir needs --train_dir.")
    if args.train_dir is not None and args.dataset_name is not None:
        parser.error("Give either --dataset_name or --train_dir, not both.")
    if not 1 <= args.split_index <= 10:
        parser.error("--split_index must be in 1..10.")
    if not 0.0 < args.train_fraction <= 1.0:
        parser.error("--train_fraction must be in (0, 1].")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1:
            parser.error("--checkpointing_steps must be 'epoch' or a positive integer.")
    if args.skip_bad_samples:
        args.verify_images = True
    if args.with_tracking and args.report_to not in ("all", "none"):
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
        requested = [name.strip() for name in args.report_to.split(",")]
        missing = [name for name in requested if name in available and not available[name]]
        if missing:
            parser.error(f"--report_to {args.report_to}: {', '.join(missing)} is not installed (pip install it).")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def _load(name, args, **extra):
    kwargs = dict(cache_dir=args.cache_dir, skip_bad_samples=args.skip_bad_samples, verify_images=args.verify_images)
    if name is not None and os.path.isdir(name) and os.path.isfile(os.path.join(name, "metadata.csv")):
        kwargs.update(mos_range=args.mos_range, higher_is_better=not args.lower_is_better)
    kwargs.update(extra)
    return load_iqa_dataset(name, **kwargs)


def _truncate(indices, limit, seed):
    if limit is None or limit >= len(indices):
        return list(indices)
    rng = np.random.default_rng([int(seed), 104729])
    return sorted(rng.choice(np.asarray(indices), size=limit, replace=False).tolist())


def _by_content(args):
    """`paper_splits`' `by_content`: decided by the data (synthetic datasets repeat contents) unless overridden."""
    return False if args.split_by_image else None


def load_splits(args):
    """Returns `(train_ds, train_idx, eval_ds, eval_idx, test_ds, test_idx, protocol)`; test may be None."""
    if args.train_dir is not None:
        train_ds = _load(args.train_dir, args)
        protocol = args.split_protocol
        if protocol == "auto":
            protocol = "none" if args.validation_dir else "paper"
        if protocol == "liqe":
            raise ValueError("--split_protocol liqe needs --label_file.")
        if protocol == "none":
            if args.validation_dir is None:
                raise ValueError("--split_protocol none needs --validation_dir.")
            eval_ds = _load(args.validation_dir, args)
            train_idx, eval_idx = list(range(len(train_ds))), list(range(len(eval_ds)))
            test = (None, None)
        else:
            train_idx, eval_idx = paper_splits(train_ds, seed=args.split_seed, by_content=_by_content(args))[
                args.split_index - 1
            ]
            eval_ds, test = train_ds, (None, None)
    else:
        name = args.dataset_name or "synthetic"
        extra = {}
        if args.dataset_config_name is not None:
            extra["name"] = args.dataset_config_name
        train_ds = _load(name, args, data_dir=args.data_dir, label_file=args.label_file, split=args.dataset_split,
                         **extra)
        eval_ds = train_ds
        protocol = args.split_protocol
        if protocol == "auto":
            protocol = "liqe" if args.label_file else "paper"
        if protocol == "liqe":
            if args.label_file is None:
                raise ValueError("--split_protocol liqe needs --label_file.")
            label_path = Path(args.label_file)
            source = label_path if label_path.is_dir() else label_path.parent
            source = canonical_dataset_name(name) if source.name == "splits2" else source
            parts = liqe_splits(source, args.split_index, dataset=train_ds)
            train_idx, eval_idx = parts["train"], parts["val"]
            test = (train_ds, parts["test"])
        elif protocol == "paper":
            train_idx, eval_idx = paper_splits(train_ds, seed=args.split_seed, by_content=_by_content(args))[
                args.split_index - 1
            ]
            test = (None, None)
        else:
            raise ValueError("--split_protocol none needs --train_dir and --validation_dir.")
    if args.train_fraction < 1.0:
        train_idx = subsample(train_idx, args.train_fraction, seed=args.split_seed)
    train_idx = _truncate(train_idx, args.max_train_samples, args.seed)
    eval_idx = _truncate(eval_idx, args.max_eval_samples, args.seed)
    test_ds, test_idx = test
    if test_idx is not None:
        test_idx = _truncate(test_idx, args.max_eval_samples, args.seed)
    return train_ds, train_idx, eval_ds, eval_idx, test_ds, test_idx, protocol


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def _parse_overrides(text):
    overrides = {}
    if not text:
        return overrides
    defaults = MPIQEConfig(clip_config=tiny_clip_config().to_dict(), visual_prompt_depth=1, window_size=1,
                           decoder_heads=1)
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"--config_overrides: expected key=value, got {item!r}.")
        key, value = (part.strip() for part in item.split("=", 1))
        if not hasattr(defaults, key):
            raise ValueError(f"--config_overrides: MPIQEConfig has no field {key!r}.")
        current = getattr(defaults, key)
        if isinstance(current, bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            overrides[key] = int(value)
        elif isinstance(current, float):
            overrides[key] = float(value)
        else:
            overrides[key] = value
    return overrides


def build_model(args, mos_range, score_loss_weight):
    overrides = _parse_overrides(args.config_overrides)
    overrides.setdefault("score_loss_weight", score_loss_weight)
    overrides.setdefault("distortion_loss_weight", args.distortion_loss_weight)
    overrides.update(mos_min=mos_range.mos_min, mos_max=mos_range.mos_max,
                     mos_higher_is_better=bool(mos_range.higher_is_better))
    if args.clip_config_name is not None:
        if args.clip_config_name == "tiny":
            clip_config = tiny_clip_config()
        else:
            clip_config = CLIPConfig.from_pretrained(args.clip_config_name)
    else:
        clip_config = CLIPConfig.from_pretrained(args.clip_model_name_or_path)
    vision = clip_config.vision_config
    # The paper prompts every layer (depth 12 of ViT-B/16); a smaller CLIP is prompted in all of its layers.
    overrides.setdefault("visual_prompt_depth", min(12, vision.num_hidden_layers))
    overrides.setdefault("window_size", min(4, vision.image_size // vision.patch_size))
    if clip_config.projection_dim % 8 != 0:
        overrides.setdefault("decoder_heads", 1)
    if args.clip_config_name is not None:
        return MPIQEModel(MPIQEConfig(clip_config=clip_config.to_dict(), **overrides))
    return MPIQEModel.from_clip(args.clip_model_name_or_path, **overrides)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def _checkpoint_dirs(output_dir):
    found = []
    for path in Path(output_dir).glob("*_*"):
        match = re.fullmatch(r"(step|epoch)_(\d+)", path.name)
        if match and path.is_dir() and (path / TRAINING_STATE_FILE).is_file():
            state = json.loads((path / TRAINING_STATE_FILE).read_text())
            found.append((state["completed_steps"], path.stat().st_mtime, path))
    return [path for *_, path in sorted(found)]


def save_checkpoint(accelerator, output_dir, name, state):
    path = Path(output_dir) / name
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()


def save_model(accelerator, model, image_processor, directory, args):
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(directory, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
                              state_dict=accelerator.get_state_dict(model))
    if accelerator.is_main_process:
        image_processor.save_pretrained(directory)
        Path(directory, TRAINING_ARGS_FILE).write_text(json.dumps(vars(args), indent=2, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    accelerator_kwargs = dict(gradient_accumulation_steps=args.gradient_accumulation_steps)
    if args.mixed_precision is not None:
        accelerator_kwargs["mixed_precision"] = args.mixed_precision
    if args.with_tracking:
        accelerator_kwargs.update(log_with=args.report_to, project_dir=args.output_dir)
    accelerator = Accelerator(**accelerator_kwargs)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()

    # Data (the main process builds caches first).
    with accelerator.main_process_first():
        train_ds, train_idx, eval_ds, eval_idx, test_ds, test_idx, protocol = load_splits(args)
    meta = dataclasses.asdict(iqa_info(train_ds))
    skipped = [str(bad) for ds in {id(train_ds): train_ds, id(eval_ds): eval_ds}.values() for bad in skipped_samples(ds)]
    if skipped:
        logger.warning(f"Skipped {len(skipped)} bad sample(s):\n  " + "\n  ".join(skipped))
    mos_range = dataset_mos_range(train_ds)
    spec = None
    name = meta.get("name")
    try:
        spec = get_dataset_spec(name) if name else None
    except (KeyError, ValueError):
        spec = None
    score_loss_weight = args.score_loss_weight
    if score_loss_weight is None:
        score_loss_weight = meta.get("score_loss_weight") or (spec.score_loss_weight if spec else 0.5)
    batch_size = args.per_device_train_batch_size
    if batch_size is None:
        batch_size = meta.get("batch_size") or (spec.batch_size if spec else 64)
    eval_batch_size = args.per_device_eval_batch_size or batch_size
    logger.info(f"Dataset {name!r} ({protocol} split {args.split_index}): {len(train_idx)} training, "
                f"{len(eval_idx)} validation" + (f", {len(test_idx)} test" if test_idx is not None else "")
                + f" images; batch {batch_size}, lambda_2 {score_loss_weight}, native MOS range {tuple(mos_range)}")

    # Model and image processing; crops have the CLIP input size.
    model = build_model(args, mos_range, score_loss_weight)
    crop_size = model.config.clip_config.vision_config.image_size
    image_processor = MPIQEImageProcessor(crop_size=crop_size, num_crops=args.eval_num_crops or args.num_crops)
    classes = dict(scene_classes=model.config.scene_classes, distortion_classes=model.config.distortion_classes)
    train_dataset = IQATrainingDataset(train_ds, image_processor, indices=train_idx, train=True, seed=args.seed,
                                       skip_bad_samples=args.skip_bad_samples, **classes)
    train_dataset.image_processor = MPIQEImageProcessor(crop_size=crop_size, num_crops=args.num_crops)
    eval_dataset = IQATrainingDataset(eval_ds, image_processor, indices=eval_idx, train=False, **classes)
    sampler = EpochShuffleSampler(len(train_dataset), seed=args.seed)
    loader_kwargs = dict(collate_fn=collate_iqa_batch, num_workers=args.dataloader_num_workers)
    train_dataloader = torch.utils.data.DataLoader(train_dataset, sampler=sampler, batch_size=batch_size,
                                                   **loader_kwargs)
    eval_dataloader = torch.utils.data.DataLoader(eval_dataset, batch_size=eval_batch_size, **loader_kwargs)
    test_dataloader = None
    if test_idx is not None:
        test_dataset = IQATrainingDataset(test_ds, image_processor, indices=test_idx, train=False, **classes)
        test_dataloader = torch.utils.data.DataLoader(test_dataset, batch_size=eval_batch_size, **loader_kwargs)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)

    # Steps: as in transformers' no_trainer examples, computed before and after `prepare` (sharding changes lengths).
    overrode_max_train_steps = args.max_train_steps is None
    steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    num_warmup_steps = args.num_warmup_steps
    if num_warmup_steps is None:
        num_warmup_steps = int(round(args.num_warmup_epochs * steps_per_epoch))
    lr_scheduler = get_cosine_schedule_with_warmup(
        optimizer,
        num_warmup_steps=num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    if test_dataloader is not None:
        test_dataloader = accelerator.prepare(test_dataloader)
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)

    if args.with_tracking:
        tracked = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("mpiqe", tracked)

    total_batch_size = batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(train_dataset)}, num epochs = {args.num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {batch_size}, total batch = {total_batch_size}")
    logger.info(f"  Gradient accumulation steps = {args.gradient_accumulation_steps}, "
                f"total optimization steps = {args.max_train_steps}, warm-up steps = {num_warmup_steps}")

    completed_steps, starting_epoch, resume_batches = 0, 0, 0
    best = {"srcc": -math.inf, "epoch": None, "step": None}
    history = []
    if args.resume_from_checkpoint:
        checkpoint = args.resume_from_checkpoint
        if checkpoint == "latest":
            found = _checkpoint_dirs(args.output_dir)
            if not found:
                raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {args.output_dir}.")
            checkpoint = str(found[-1])
        state_file = Path(checkpoint) / TRAINING_STATE_FILE
        if not state_file.is_file():
            raise ValueError(f"{checkpoint} is not a checkpoint of this script (no {TRAINING_STATE_FILE}).")
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
        accelerator.load_state(checkpoint)
        state = json.loads(state_file.read_text())
        completed_steps = state["completed_steps"]
        starting_epoch = state["epoch"]
        resume_batches = state["batches_in_epoch"]
        best = state.get("best", best)
        history = state.get("history", [])

    progress_bar = tqdm(range(args.max_train_steps), disable=not accelerator.is_local_main_process)
    progress_bar.update(completed_steps)
    checkpoint_every = int(args.checkpointing_steps) if (args.checkpointing_steps or "").isdigit() else None
    eval_metrics, train_loss = {}, float("nan")

    def training_state(epoch, batches_in_epoch):
        return {"completed_steps": completed_steps, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "best": best, "history": history}

    for epoch in range(starting_epoch, args.num_train_epochs):
        model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        loss_count = 0
        batches_in_epoch = 0
        dataloader = train_dataloader
        if epoch == starting_epoch and resume_batches:
            dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
            batches_in_epoch = resume_batches
        # The shuffling order and the random crops depend on (seed, epoch) only. Accelerate's dataloaders re-apply
        # their own iteration counter as the epoch when iterated, so the epoch is set through them too.
        dataloader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        train_dataset.set_epoch(epoch)
        for batch in dataloader:
            batch.pop("index")
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach().float()
            loss_count += 1
            batches_in_epoch += 1
            if accelerator.sync_gradients:
                progress_bar.update(1)
                completed_steps += 1
                progress_bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
                if args.with_tracking:
                    logs = {"train/loss": loss.item(), "train/lr": lr_scheduler.get_last_lr()[0]}
                    for key in ("scene_loss", "distortion_loss", "score_loss"):
                        if getattr(outputs, key, None) is not None:
                            logs[f"train/{key}"] = getattr(outputs, key).item()
                    accelerator.log(logs, step=completed_steps)
                if checkpoint_every and completed_steps % checkpoint_every == 0:
                    save_checkpoint(accelerator, args.output_dir, f"step_{completed_steps}",
                                    training_state(epoch, batches_in_epoch))
            if completed_steps >= args.max_train_steps:
                break
        if batches_in_epoch >= len(train_dataloader):
            next_epoch, next_batches = epoch + 1, 0
        else:
            next_epoch, next_batches = epoch, batches_in_epoch
        if loss_count:
            train_loss = accelerator.gather(loss_sum).sum().item() / (loss_count * accelerator.num_processes)
        finished = completed_steps >= args.max_train_steps or epoch + 1 == args.num_train_epochs
        if (epoch + 1) % args.eval_every_epoch == 0 or finished:
            eval_metrics = evaluate_model(model, eval_dataloader, accelerator)
            logger.info(f"epoch {epoch}: train loss {train_loss:.4f}, validation SRCC {eval_metrics['srcc']:.4f}, "
                        f"PLCC {eval_metrics['plcc']:.4f}")
            history.append({"epoch": epoch, "step": completed_steps, "train_loss": train_loss,
                            "srcc": eval_metrics["srcc"], "plcc": eval_metrics["plcc"]})
            if args.with_tracking:
                accelerator.log({"eval/srcc": eval_metrics["srcc"], "eval/plcc": eval_metrics["plcc"],
                                 "train/epoch_loss": train_loss, "epoch": epoch}, step=completed_steps)
            if eval_metrics["srcc"] > best["srcc"]:
                best = {"srcc": eval_metrics["srcc"], "plcc": eval_metrics["plcc"], "epoch": epoch,
                        "step": completed_steps}
                save_model(accelerator, model, image_processor, os.path.join(args.output_dir, "best"), args)
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, args.output_dir, f"epoch_{epoch}", training_state(next_epoch, next_batches))
        if completed_steps >= args.max_train_steps:
            break

    if args.with_tracking:
        accelerator.end_training()

    if args.load_best_model_at_end and best["epoch"] is not None and best["step"] != completed_steps:
        accelerator.wait_for_everyone()
        best_model = MPIQEModel.from_pretrained(os.path.join(args.output_dir, "best"))
        accelerator.unwrap_model(model).load_state_dict(best_model.state_dict())
        eval_metrics = evaluate_model(model, eval_dataloader, accelerator)
    save_model(accelerator, model, image_processor, args.output_dir, args)

    results = dict(eval_metrics)
    results.update(
        train_loss=train_loss, epoch=args.num_train_epochs if not history else history[-1]["epoch"],
        step=completed_steps, best_srcc=best["srcc"] if best["epoch"] is not None else None,
        best_epoch=best["epoch"], num_train_samples=len(train_idx), num_eval_samples=len(eval_idx),
        dataset=name, split_protocol=protocol, split_index=args.split_index, train_fraction=args.train_fraction,
        skipped_samples=skipped,
    )
    if test_dataloader is not None:
        test_metrics = evaluate_model(model, test_dataloader, accelerator)
        results.update({f"test_{key}": value for key, value in test_metrics.items()})
        logger.info(f"test SRCC {test_metrics['srcc']:.4f}, PLCC {test_metrics['plcc']:.4f}")
    if accelerator.is_main_process:
        Path(args.output_dir, "all_results.json").write_text(json.dumps(results, indent=2))
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=args.hub_token)
            repo_id = api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo).repo_id
            api.upload_folder(folder_path=args.output_dir, repo_id=repo_id, commit_message="Training finished",
                              ignore_patterns=["step_*", "epoch_*", "best/*", "runs/*", "mpiqe/*"])
    accelerator.wait_for_everyone()
    accelerator.print(json.dumps({k: results[k] for k in ("srcc", "plcc", "step") if k in results}))
    return results


if __name__ == "__main__":
    main()
