#!/usr/bin/env python
"""Score saved MP-IQE models on an IQA dataset: one split, the paper's 10-split median (Table 1) or cross-dataset
(Table 3). Writes per-image predictions (CSV), a scatter plot of predicted score vs MOS (PNG) and results.json.

    # one model on the test part of its split (dataset and split read from the model's training_args.json)
    python examples/evaluate.py --model_name_or_path runs/koniq/split_1
    # the 10-split protocol: median SRCC/PLCC over the models in runs/koniq/split_*
    python examples/evaluate.py --protocol paper_splits --model_name_or_path runs/koniq
    # cross-dataset: models trained on LIVE Challenge scored on all of KonIQ-10k
    python examples/evaluate.py --protocol cross --model_name_or_path runs/livec \
        --dataset_name koniq10k --data_dir /data/koniq10k

Works under `accelerate launch` too (predictions are gathered with `gather_for_metrics`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import statistics
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from mpiqe_hf import MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.data import liqe_splits, load_iqa_dataset, paper_splits, skipped_samples
from mpiqe_hf.data.specs import canonical_dataset_name
from mpiqe_hf.metrics import compute_metrics
from mpiqe_hf.training import IQATransform, collate_iqa_batch, iqa_split, predict

logger = logging.getLogger(__name__)
TRAINING_ARGS_FILE = "training_args.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate MP-IQE models (single split, 10-split median, cross-dataset).")
    parser.add_argument("--model_name_or_path", nargs="+", required=True,
                        help="Saved model folders or Hub ids; a folder without config.json stands for its model "
                             "subfolders (split_1, split_2, ...).")
    parser.add_argument("--protocol", choices=["single", "paper_splits", "cross"], default="single",
                        help="single: each model on --split_index's test part (or the whole dataset); paper_splits: "
                             "each model on the test part of the split it was trained on, median reported; cross: "
                             "each model on the whole dataset, median reported.")
    parser.add_argument("--dataset_name", type=str, default=None,
                        help="As in train.py; default: the dataset the (first) model was trained on.")
    parser.add_argument("--data_dir", type=str, default=None)
    parser.add_argument("--label_file", type=str, default=None)
    parser.add_argument("--validation_dir", type=str, default=None, help="A metadata.csv folder to score whole.")
    parser.add_argument("--dataset_split", type=str, default=None, help="Split of a Hub dataset.")
    parser.add_argument("--cache_dir", type=str, default=None)
    parser.add_argument("--mos_range", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    parser.add_argument("--lower_is_better", action="store_true")
    parser.add_argument("--skip_bad_samples", action="store_true")
    parser.add_argument("--split_protocol", choices=["auto", "paper", "liqe"], default="auto",
                        help="Which splits define test parts (auto: liqe with --label_file, else paper).")
    parser.add_argument("--split_index", type=int, default=None,
                        help="single: score the test part of this split (1..10) instead of the whole dataset.")
    parser.add_argument("--split_seed", type=int, default=None, help="Seed of the paper splits (default: training's).")
    parser.add_argument("--num_crops", type=int, default=None, help="Grid crops per image (default: the processor's).")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--dataloader_num_workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--output_dir", type=str, default="mpiqe-eval")
    args = parser.parse_args(argv)
    if args.split_index is not None and not 1 <= args.split_index <= 10:
        parser.error("--split_index must be in 1..10.")
    return args


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def resolve_models(paths):
    """Expands folders without a config.json into their model subfolders (split_1, split_2, ... in natural order)."""
    models = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir() and not (path / "config.json").is_file():
            found = sorted((p for p in path.iterdir() if p.is_dir() and (p / "config.json").is_file()), key=_natural_key)
            if not found:
                raise ValueError(f"{path} holds neither a model (config.json) nor model subfolders.")
            models.extend(str(p) for p in found)
        else:
            models.append(str(entry))
    return models


def training_args_of(model_path):
    file = Path(model_path) / TRAINING_ARGS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def dataset_source(args, trained):
    """`(name, loader kwargs)`: from the command line, else from the first model's training arguments."""
    if args.validation_dir or args.dataset_name or args.label_file or args.data_dir:
        name = args.validation_dir or args.dataset_name or "synthetic"
        source = dict(data_dir=args.data_dir, label_file=args.label_file, cache_dir=args.cache_dir)
        if args.dataset_split:
            source["split"] = args.dataset_split
        folder = dict(mos_range=args.mos_range, higher_is_better=not args.lower_is_better)
    else:
        name = trained.get("train_dir") or trained.get("dataset_name") or "synthetic"
        source = dict(data_dir=trained.get("data_dir"), label_file=trained.get("label_file"),
                      cache_dir=args.cache_dir or trained.get("cache_dir"))
        if trained.get("dataset_split"):
            source["split"] = trained["dataset_split"]
        folder = dict(mos_range=trained.get("mos_range"), higher_is_better=not trained.get("lower_is_better", False))
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "metadata.csv")):
        source.update(folder)
        source = {k: v for k, v in source.items() if k not in ("data_dir", "label_file")}
    return name, source


def test_indices(ds, name, label_file, protocol, split_index, split_seed, split_by_image=False):
    if protocol == "auto":
        protocol = "liqe" if label_file else "paper"
    if protocol == "liqe":
        if not label_file:
            raise ValueError("LIQE splits need --label_file.")
        label_path = Path(label_file)
        source = label_path if label_path.is_dir() else label_path.parent
        source = canonical_dataset_name(name) if source.name == "splits2" else source
        return liqe_splits(source, split_index, dataset=ds)["test"]
    return paper_splits(ds, seed=split_seed, by_content=False if split_by_image else None)[split_index - 1][1]


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


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    models = resolve_models(args.model_name_or_path)
    trained_first = training_args_of(models[0])
    name, source = dataset_source(args, trained_first)
    with accelerator.main_process_first():
        ds = load_iqa_dataset(name, skip_bad_samples=args.skip_bad_samples, **source)
    for bad in skipped_samples(ds):
        logger.warning(f"skipped: {bad}")
    label_file = source.get("label_file")
    paths = [(image or {}).get("path") for image in ds.cast_column("image", _undecoded())["image"]]

    per_model, rows, groups = [], [], []
    for position, model_path in enumerate(models):
        trained = training_args_of(model_path)
        split_index = None
        if args.protocol == "paper_splits":
            split_index = trained.get("split_index") or position + 1
        elif args.protocol == "single":
            split_index = args.split_index
        if split_index is None:
            indices = list(range(len(ds)))
        else:
            seed = args.split_seed if args.split_seed is not None else trained.get("split_seed", 0)
            protocol = args.split_protocol
            if protocol == "auto" and trained.get("split_protocol") in ("paper", "liqe"):
                protocol = trained["split_protocol"]
            indices = test_indices(
                ds, name, label_file, protocol, split_index, seed, split_by_image=trained.get("split_by_image", False)
            )
        if args.max_eval_samples is not None:
            indices = indices[: args.max_eval_samples]

        model = MPIQEModel.from_pretrained(model_path)
        try:
            processor = MPIQEImageProcessor.from_pretrained(model_path)
        except OSError:
            processor = MPIQEImageProcessor(crop_size=model.config.clip_config.vision_config.image_size)
        if args.num_crops is not None:
            processor.num_crops = args.num_crops
        transform = IQATransform(ds, processor, model.config.scene_classes, model.config.distortion_classes,
                                 random_crops=False, skip_bad_samples=args.skip_bad_samples)
        dataset = iqa_split(ds, indices, transform)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.per_device_eval_batch_size,
                                             collate_fn=collate_iqa_batch, num_workers=args.dataloader_num_workers)
        model, loader = accelerator.prepare(model, loader)
        predictions = predict(model, loader, accelerator)
        model = accelerator.unwrap_model(model)
        metrics = compute_metrics(predictions["score"], predictions["mos"])
        metrics.update(model=model_path, split_index=split_index, num_samples=int(len(predictions["score"])))
        per_model.append(metrics)
        native = model.to_native_scale(torch.as_tensor(predictions["score"])).numpy()
        mos_native = np.asarray(ds.select_columns(["mos"])[predictions["index"].tolist()]["mos"], dtype=np.float64)
        label = Path(model_path).name or model_path
        groups.append((label, mos_native, native))
        for row, index in enumerate(predictions["index"].tolist()):
            rows.append([model_path, split_index if split_index is not None else "", paths[index],
                         f"{mos_native[row]:.6g}", f"{predictions['mos'][row]:.6g}", f"{native[row]:.6g}",
                         f"{predictions['score'][row]:.6g}"])
        accelerator.print(f"{model_path}: SRCC {metrics['srcc']:.4f}  PLCC {metrics['plcc']:.4f}  "
                          f"({metrics['num_samples']} images" + (f", split {split_index})" if split_index else ")"))
        accelerator.free_memory()

    summary = {
        "protocol": args.protocol,
        "dataset": name,
        "num_models": len(per_model),
        "median_srcc": statistics.median(m["srcc"] for m in per_model),
        "median_plcc": statistics.median(m["plcc"] for m in per_model),
        "median_plcc_logistic": statistics.median(m["plcc_logistic"] for m in per_model),
        "per_model": per_model,
    }
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["model", "split_index", "path", "mos", "mos_normalized", "predicted_mos",
                             "predicted_score"])
            writer.writerows(rows)
        title = (f"{name}: median SRCC {summary['median_srcc']:.3f}, PLCC {summary['median_plcc']:.3f} "
                 f"({len(per_model)} model{'s' if len(per_model) > 1 else ''}, {args.protocol})")
        write_scatter(out / "scatter.png", groups, title)
        (out / "results.json").write_text(json.dumps(summary, indent=2))
        what = {"paper_splits": f"median of {len(per_model)} splits", "cross": f"cross-dataset, median of "
                f"{len(per_model)} model(s)", "single": f"{len(per_model)} model(s), median"}[args.protocol]
        trained_on = trained_first.get("train_dir") or trained_first.get("dataset_name") or "synthetic"
        print(f"\n| training | testing | PLCC | SRCC |  ({what})\n|---|---|---|---|\n"
              f"| {Path(str(trained_on)).name} | {Path(str(name)).name} | {summary['median_plcc']:.3f} | "
              f"{summary['median_srcc']:.3f} |")
    accelerator.wait_for_everyone()
    return summary


def _undecoded():
    import datasets

    return datasets.Image(decode=False)


if __name__ == "__main__":
    main()
