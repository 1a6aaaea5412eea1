#!/usr/bin/env python
"""Score saved MP-IQE models on an IQA dataset: the held-out part of a model's own split (default), the paper's
10-split median (Table 1) or cross-dataset (Table 3). Writes per-image predictions (CSV), a scatter plot of
predicted score vs MOS (PNG) and results.json; `--baselines` scores the same images with the zero-shot CLIP-IQA
baseline and a linear probe (ridge on the frozen CLIP image embedding, fitted on the training part of the split).

    # the held-out part of the split the model was trained on (read from its training_args.json)
    python examples/evaluate.py --model_name_or_path runs/koniq/split_1
    # the same, beside zero-shot CLIP-IQA and the linear probe on the same images
    python examples/evaluate.py --model_name_or_path runs/koniq/split_1 --baselines
    # the 10-split protocol: median SRCC/PLCC over the models in runs/koniq/split_*
    python examples/evaluate.py --protocol paper_splits --model_name_or_path runs/koniq
    # cross-dataset: models trained on LIVE Challenge scored on all of KonIQ-10k
    python examples/evaluate.py --protocol cross --model_name_or_path runs/livec \
        --dataset_name koniq10k --data_dir /data/koniq10k

Works under `accelerate launch` too (predictions are gathered with `gather_for_metrics`).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import statistics
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from transformers import AutoTokenizer, HfArgumentParser

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.baselines import linear_probe, predict_clip_iqa
from mpiqe_hf.data import skipped_samples, splits_by_content
from mpiqe_hf.metrics import compute_metrics
from mpiqe_hf.model_sources import check_model_source
from mpiqe_hf.training import (
    DataArguments,
    IQATransform,
    check_number,
    check_output_folder,
    collate_iqa_batch,
    iqa_split,
    load_split_sources,
    plan_split,
    predict,
    run_script,
)


logger = logging.getLogger(__name__)
TRAINING_ARGS_FILE = "training_args.json"
# DataArguments fields that name the data; when none is given, the data and split come from training_args.json.
SOURCE_FIELDS = (
    "dataset_name",
    "dataset_config_name",
    "dataset_split",
    "data_dir",
    "label_file",
    "train_dir",
    "validation_dir",
)
# DataArguments fields that always come from this command line, never from training.
EVALUATION_FIELDS = (
    "skip_bad_samples",
    "verify_images",
    "max_image_size",
    "max_eval_samples",
    "dataloader_num_workers",
)


@dataclass
class EvaluationArguments:
    model_name_or_path: list[str] = field(
        metadata={
            "help": (
                "Saved model folders or Hub ids; a folder without config.json stands for its model subfolders (split_1, ...)."
            )
        }
    )
    protocol: str = field(
        default="single",
        metadata={
            "choices": ["single", "paper_splits", "cross"],
            "help": (
                "single: each model on the held-out part of its split (or the whole dataset with --whole_dataset); "
                "paper_splits: each model on the held-out part of its own split, median reported; cross: each model on the "
                "whole dataset, median reported."
            ),
        },
    )
    whole_dataset: bool = field(
        default=False,
        metadata={
            "help": (
                "single: score every image of the dataset, training images included, instead of the held-out part."
            )
        },
    )
    num_crops: int | None = field(default=None, metadata={"help": "Grid crops per image (default: the processor's)."})
    per_device_eval_batch_size: int = 16
    baselines: bool = field(
        default=False,
        metadata={
            "aliases": ["--clip_iqa"],
            "help": (
                "Also score the same images with the baselines, on the model's own frozen CLIP, and print them beside the "
                "model: zero-shot CLIP-IQA ('Good photo.' vs 'Bad photo.') and a linear probe (ridge on the CLIP image "
                "embedding of the same crops, fitted on the training part of the model's split, its strength chosen by "
                "cross-validation there). --clip_iqa is the same option."
            ),
        },
    )
    clip_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": ("Where the CLIP tokenizer for CLIP-IQA is (default: the CLIP the model was trained from).")
        },
    )
    output_dir: str = "mpiqe-eval"

    def __post_init__(self):
        check_number("num_crops", self.num_crops, at_least=1)
        check_number("per_device_eval_batch_size", self.per_device_eval_batch_size, at_least=1)


def parse_args(argv=None):
    parser = HfArgumentParser(
        (EvaluationArguments, DataArguments),
        description="Evaluate MP-IQE models (held-out part, 10-split median, cross-dataset).",
    )
    try:
        eval_args, data_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))
    return eval_args, data_args


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_models(paths):
    """Expands folders that hold no model into their model subfolders (split_1, split_2, ... in natural order)."""
    models = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir() and not _is_model_dir(path):
            found = sorted((p for p in path.iterdir() if p.is_dir() and _is_model_dir(p)), key=_natural_key)
            if not found:
                raise ValueError(f"{path} holds neither a model (config.json) nor model subfolders.")
            models.extend(str(p) for p in found)
        else:
            check_model_source(str(entry), "the MP-IQE model")
            models.append(str(entry))
    return models


def training_args_of(model_path):
    """The model's training_args.json (train.py's options, its split among them), or {} where it has none."""
    file = Path(model_path) / TRAINING_ARGS_FILE
    if not file.is_file():
        return {}
    try:
        trained = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"{file}: not the JSON train.py writes ({err}); move it away and name the data to score "
            "(--validation_dir or --dataset_name)."
        ) from err
    if not isinstance(trained, dict):
        raise ValueError(f"{file}: not the JSON object train.py writes; move it away and name the data to score.")
    return trained


def check_data_is_known(models, cli_names_data: bool):
    """Without data on the command line, each model is scored on its own recorded split: a model without
    training_args.json (a Hub download, say) has none, and its training images are unknown."""
    if cli_names_data:
        return
    unknown = [model for model in models if not training_args_of(model)]
    if unknown:
        raise ValueError(
            f"{unknown[0]} has no {TRAINING_ARGS_FILE}, so which images it was trained on is unknown: name the images "
            "to score with --validation_dir FOLDER (every image of a metadata.csv folder) or --dataset_name NAME "
            "(its held-out part of --split_index K, or all of it with --whole_dataset)."
        )


def data_arguments_for(trained: dict, cli: DataArguments, cli_names_data: bool) -> DataArguments:
    """The data and split to score a model on: the command line's when it names data, else the model's own
    (`training_args.json`), with the evaluation options of the command line either way."""
    if cli_names_data or not trained:
        return cli
    known = {f.name for f in fields(DataArguments)}
    values = {key: value for key, value in trained.items() if key in known and key not in EVALUATION_FIELDS}
    values.update({key: getattr(cli, key) for key in EVALUATION_FIELDS})
    values["cache_dir"] = cli.cache_dir or trained.get("cache_dir")
    values["max_train_samples"] = None
    return DataArguments(**values)


def write_scatter(path, groups, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5))
    for label, mos, predicted in groups:
        axes.scatter(mos, predicted, s=10, alpha=0.6, label=label)
    axes.set_xlabel("MOS (dataset scale)")
    axes.set_ylabel("predicted score (model's training scale)")
    axes.set_title(title, fontsize=9)
    if 1 < len(groups) <= 10:
        axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def clip_iqa_tokenizer(eval_args, trained, model):
    source = (
        eval_args.clip_model_name_or_path
        or model.config.base_model_name_or_path
        or trained.get("clip_model_name_or_path")
    )
    if trained.get("clip_config_name") and not eval_args.clip_model_name_or_path:
        source = None  # a random CLIP has no tokenizer
    if not source:
        raise ValueError(
            "--baselines needs the CLIP tokenizer (for CLIP-IQA): this model was built on a random CLIP; "
            "pass --clip_model_name_or_path with a folder that holds a CLIP tokenizer."
        )
    check_model_source(source, "the CLIP tokenizer for CLIP-IQA (--baselines)")
    return AutoTokenizer.from_pretrained(source)


def score_baselines(clip, tokenizer, loader, train_part, accelerator, batch_size, num_workers):
    """CLIP-IQA and the linear probe on the images of `loader` (prepared), each `{"srcc", "plcc", "num_samples"}`
    (the probe's also `alpha` and `num_train_images`); `train_part` = `(transform, indices, content_ids or None)` of
    the training part the probe is fitted on, or None where no split is known (then the probe is None)."""
    results = {}
    clip_iqa = predict_clip_iqa(clip, tokenizer, loader, accelerator)
    results["clip_iqa"] = {**_correlations(clip_iqa), "num_samples": len(clip_iqa["score"])}
    results["linear_probe"] = None
    if train_part is not None:
        transform, indices, content_ids = train_part
        train_loader = accelerator.prepare(
            torch.utils.data.DataLoader(
                iqa_split(transform.dataset, indices, transform),
                batch_size=batch_size,
                collate_fn=collate_iqa_batch,
                num_workers=num_workers,
            )
        )
        probe = linear_probe(clip, train_loader, loader, accelerator, content_ids=content_ids)
        results["linear_probe"] = {
            **_correlations(probe),
            "num_samples": len(probe["score"]),
            "num_train_images": probe["num_train_images"],
            "alpha": probe["alpha"],
        }
    return results


def _correlations(predictions):
    metrics = compute_metrics(predictions["score"], predictions["mos"])
    return {"srcc": metrics["srcc"], "plcc": metrics["plcc"]}


BASELINE_LABELS = {
    "clip_iqa": "CLIP-IQA (zero-shot, same CLIP)",
    "linear_probe": "linear probe (ridge on the frozen CLIP image embedding, fitted on the training part)",
}


def scored_part(eval_args, data_args, trained, lone_folder, sources):
    """`(dataset, indices, description, split_index, plan)` of what a model is scored on: all of the data
    (cross-dataset, --whole_dataset, a lone folder) or the held-out part of its split (`plan`, else None)."""
    if lone_folder or eval_args.protocol == "cross" or eval_args.whole_dataset:
        ds = sources(data_args)[0]
        part = f"all of {data_args.dataset_name or data_args.train_dir or 'synthetic'}"
        if not lone_folder and eval_args.protocol == "single":
            part += " (training images included)"
        return ds, list(range(len(ds))), part, None, None
    plan = plan_split(data_args, seed=trained.get("seed", 0), loaded=sources(data_args))
    ds, indices, part_name = plan.held_out
    return ds, indices, f"the {part_name} part of {plan.description}", data_args.split_index, plan


def scoring_processor(model, model_path, eval_args, data_args):
    """The model's image processor, with this command's --num_crops and --max_image_size."""
    processor = MPIQEImageProcessor.from_pretrained_or_default(model_path, model.config)
    if eval_args.num_crops is not None:
        processor.num_crops = eval_args.num_crops
    if data_args.max_image_size is not None:  # else the scale the model was trained at, saved in its processor
        processor.max_image_size = data_args.max_image_size or None
    return processor


def probe_training_part(plan, trained, cli_data, data_args, processor, model, sources):
    """`(transform, indices, groups)` of the part the linear probe is fitted on (the model's own training part,
    also when it is scored on other data), or None where no training part is known."""
    split_args = data_args
    if plan is None and trained:  # scored on other data: the probe learns from the model's own training part
        split_args = data_arguments_for(trained, cli_data, cli_names_data=False)
        plan = plan_split(split_args, seed=trained.get("seed", 0), loaded=sources(split_args))
    if plan is None:
        return None
    train_ds = plan.train_ds
    # Cross-validation folds keep a reference content together where the split does.
    by_content = (
        not split_args.split_by_image and "content_id" in train_ds.column_names and splits_by_content(train_ds)
    )
    return (
        IQATransform(
            train_ds,
            processor,
            model.config.scene_classes,
            model.config.distortion_classes,
            random_crops=False,
            skip_bad_samples=data_args.skip_bad_samples,
        ),
        plan.train_idx,
        train_ds["content_id"] if by_content else None,
    )


def print_baselines(accelerator, metrics):
    for name, label in BASELINE_LABELS.items():
        base = metrics[name]
        accelerator.print(
            f"    {label} on the same images: "
            + (
                "— (no training part known: the model has no training_args.json)"
                if base is None
                else f"SRCC {base['srcc']:.4f}  PLCC {base['plcc']:.4f}"
                + (
                    f"  (ridge strength {base['alpha']:g}, fitted on {base['num_train_images']} images)"
                    if "alpha" in base
                    else ""
                )
            )
        )


def prediction_rows(model_path, split_index, ds, predictions, native, mos_native):
    """The rows of predictions.csv for one model's scores."""
    paths = [
        (image or {}).get("path")
        for image in ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))[
            predictions["index"].tolist()
        ]["image"]
    ]
    return [
        [
            model_path,
            split_index if split_index is not None else "",
            paths[row],
            f"{mos_native[row]:.6g}",
            f"{predictions['mos'][row]:.6g}",
            f"{native[row]:.6g}",
            f"{predictions['score'][row]:.6g}",
        ]
        for row in range(len(paths))
    ]


def evaluate_one(model_path, eval_args, cli_data, cli_names_data, lone_folder, accelerator, sources):
    """Scores one model (and, with --baselines, the baselines on the same images): `(metrics, scatter group,
    prediction rows)`."""
    trained = training_args_of(model_path)
    data_args = data_arguments_for(trained, cli_data, cli_names_data)
    if eval_args.protocol == "paper_splits" and cli_names_data and trained.get("split_index"):
        data_args = DataArguments(**{**vars(data_args), "split_index": trained["split_index"]})
    ds, indices, part, split_index, plan = scored_part(eval_args, data_args, trained, lone_folder, sources)
    if data_args.max_eval_samples is not None:
        indices = indices[: data_args.max_eval_samples]
    accelerator.print(
        f"{model_path}: scoring {len(indices)} images, {part}; results to {Path(eval_args.output_dir).resolve()}"
    )

    model = MPIQEModel.from_pretrained(model_path)
    processor = scoring_processor(model, model_path, eval_args, data_args)
    transform = IQATransform(
        ds,
        processor,
        model.config.scene_classes,
        model.config.distortion_classes,
        random_crops=False,
        skip_bad_samples=data_args.skip_bad_samples,
    )
    loader = torch.utils.data.DataLoader(
        iqa_split(ds, indices, transform),
        batch_size=eval_args.per_device_eval_batch_size,
        collate_fn=collate_iqa_batch,
        num_workers=data_args.dataloader_num_workers,
    )
    train_part = None
    if eval_args.baselines:
        tokenizer = clip_iqa_tokenizer(eval_args, trained, model)
        train_part = probe_training_part(plan, trained, cli_data, data_args, processor, model, sources)
    model, loader = accelerator.prepare(model, loader)
    predictions = predict(model, loader, accelerator)
    model = accelerator.unwrap_model(model)
    for error in predictions["skipped"]:
        logger.warning(f"skipped an undecodable image: {error}")
    metrics = compute_metrics(predictions["score"], predictions["mos"])
    metrics.update(
        model=model_path,
        split_index=split_index,
        part=part,
        num_samples=int(len(predictions["score"])),
        skipped=predictions["skipped"],
    )
    line = f"{model_path}: SRCC {metrics['srcc']:.4f}  PLCC {metrics['plcc']:.4f}  ({metrics['num_samples']} images)"
    accelerator.print(line)
    if eval_args.baselines:
        metrics.update(
            score_baselines(
                model.clip,
                tokenizer,
                loader,
                train_part,
                accelerator,
                eval_args.per_device_eval_batch_size,
                data_args.dataloader_num_workers,
            )
        )
        print_baselines(accelerator, metrics)
    native = model.to_native_scale(torch.as_tensor(predictions["score"])).numpy()
    mos_native = np.asarray(ds.select_columns(["mos"])[predictions["index"].tolist()]["mos"], dtype=np.float64)
    group = (Path(model_path).name or model_path, mos_native, native)
    rows = prediction_rows(model_path, split_index, ds, predictions, native, mos_native)
    accelerator.free_memory()
    return metrics, group, rows


def summarize(eval_args, per_model) -> dict:
    """The medians over the models (and over the baselines' scores, with --baselines)."""
    summary = {
        "protocol": eval_args.protocol,
        "num_models": len(per_model),
        "median_srcc": statistics.median(m["srcc"] for m in per_model),
        "median_plcc": statistics.median(m["plcc"] for m in per_model),
        "median_plcc_logistic": statistics.median(m["plcc_logistic"] for m in per_model),
        "per_model": per_model,
    }
    for name in BASELINE_LABELS if eval_args.baselines else ():
        scored = [m[name] for m in per_model if m[name] is not None]
        for metric in ("srcc", "plcc"):
            summary[f"{name}_median_{metric}"] = statistics.median(b[metric] for b in scored) if scored else None
    return summary


def write_outputs(eval_args, summary, rows, groups):
    """predictions.csv, scatter.png and results.json in --output_dir; the table of medians on stdout."""
    per_model = summary["per_model"]
    out = Path(eval_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "split_index", "path", "mos", "mos_normalized", "predicted_mos", "predicted_score"])
        writer.writerows(rows)
    what = {
        "paper_splits": f"median of {len(per_model)} splits",
        "cross": f"cross-dataset, median of {len(per_model)} model(s)",
        "single": f"{len(per_model)} model(s), median",
    }[eval_args.protocol]
    title = f"median SRCC {summary['median_srcc']:.3f}, PLCC {summary['median_plcc']:.3f} ({what})"
    write_scatter(out / "scatter.png", groups, title)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table = f"\n| method | PLCC | SRCC |  ({what}; {per_model[0]['part']})\n|---|---|---|\n"
    for name, label in BASELINE_LABELS.items() if eval_args.baselines else ():
        cells = [summary[f"{name}_median_{m}"] for m in ("plcc", "srcc")]
        table += f"| {label} | " + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |\n"
    table += f"| MP-IQE | {summary['median_plcc']:.3f} | {summary['median_srcc']:.3f} |"
    print(table)


def main(argv=None):
    eval_args, cli_data = parse_args(argv)
    # Before the models are scored: the results are written only at the end.
    check_output_folder(eval_args.output_dir)
    cli_data.check_folders()
    cli_names_data = any(getattr(cli_data, name) is not None for name in SOURCE_FIELDS)
    # A lone --validation_dir is a folder of images to score, all of them.
    lone_folder = cli_data.validation_dir is not None and not (cli_data.train_dir or cli_data.dataset_name)
    if lone_folder:
        cli_data = DataArguments(**{**vars(cli_data), "dataset_name": cli_data.validation_dir, "validation_dir": None})
    accelerator = Accelerator()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    models = resolve_models(eval_args.model_name_or_path)
    check_data_is_known(models, cli_names_data)

    loaded = {}  # the datasets, loaded once per source

    def sources(data_args):
        key = json.dumps(
            {
                name: getattr(data_args, name)
                for name in SOURCE_FIELDS + ("split_protocol", "mos_range", "lower_is_better")
            }
        )
        if key not in loaded:
            with accelerator.main_process_first():
                loaded[key] = load_split_sources(data_args)
            for ds in loaded[key]:
                for bad in skipped_samples(ds) if ds is not None else []:
                    logger.warning(f"skipped: {bad}")
        return loaded[key]

    per_model, rows, groups = [], [], []
    for model_path in models:
        metrics, group, model_rows = evaluate_one(
            model_path, eval_args, cli_data, cli_names_data, lone_folder, accelerator, sources
        )
        per_model.append(metrics)
        groups.append(group)
        rows.extend(model_rows)

    summary = summarize(eval_args, per_model)
    if accelerator.is_main_process:
        write_outputs(eval_args, summary, rows, groups)
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    sys.exit(run_script(main, prog="evaluate.py"))
